//! Operator calls on one target, run by the leader with its fencing token: `stamp` (record
//! revisions as applied or reverted without running them) and `repair` (clear a dirty
//! revision). Write calls: a standby forwards them to the leader.

use tonic::{Request, Response, Status};

use flotilla_core::Direction;
use flotilla_proto as pb;

use super::forward::{forwarded, leader};
use super::{Api, status_of};
use crate::engine::snapshot::history_of;
use flotilla_revision::Goal;
use flotilla_rpc::convert::DirectionProto;

pub(super) async fn stamp(
    api: &Api,
    req: Request<pb::FleetStampRequest>,
) -> Result<Response<pb::TargetStatus>, Status> {
    if let Some(mut leader) = leader(api, req.metadata()).await? {
        return leader.stamp(forwarded(req)).await;
    }
    let req = req.into_inner();
    let engine = api.project(&req.project)?;
    let (term, e) = api.leader_target(&engine, &req.target_id).await?;
    let dialect = e
        .dialect()
        .ok_or_else(|| Status::failed_precondition("target has no dialect"))?;
    let (_, graph) = engine.graph_of(&req.set_digest).await.map_err(status_of)?;
    let goal: Goal = engine.goal(&graph, &req.revision).map_err(status_of)?;
    let plan = flotilla_revision::plan(&graph, &history_of(&e.status), &goal, dialect)
        .map_err(|b| Status::failed_precondition(b.to_string()))?;
    let mut last = e.status.clone();
    for direction in [Direction::Down, Direction::Up] {
        let revisions: Vec<pb::ExpectedRevision> = plan
            .steps
            .iter()
            .filter(|s| s.direction == direction)
            .map(|s| pb::ExpectedRevision {
                revision: s.revision.clone(),
                checksum: match direction {
                    Direction::Up => s.checksum.clone(),
                    Direction::Down => graph
                        .get(&s.revision)
                        .map(|r| r.up_checksum(dialect))
                        .unwrap_or_default(),
                },
            })
            .collect();
        if revisions.is_empty() {
            continue;
        }
        let resp = e
            .agent
            .stamp(pb::StampRequest {
                project: engine.wire_project(),
                target_id: req.target_id.clone(),
                fencing_token: term.agent_token(),
                revisions,
                direction: direction.to_proto() as i32,
                rollout_id: "stamp".into(),
            })
            .await?;
        if let Some(t) = resp.target {
            last = t;
        }
    }
    Ok(Response::new(last))
}

pub(super) async fn repair(
    api: &Api,
    req: Request<pb::FleetRepairRequest>,
) -> Result<Response<pb::TargetStatus>, Status> {
    if let Some(mut leader) = leader(api, req.metadata()).await? {
        return leader.repair(forwarded(req)).await;
    }
    let req = req.into_inner();
    let engine = api.project(&req.project)?;
    let (term, e) = api.leader_target(&engine, &req.target_id).await?;
    let revision = if req.revision.is_empty() {
        e.status.dirty_revision.clone()
    } else {
        req.revision.clone()
    };
    let resp = e
        .agent
        .repair(pb::RepairRequest {
            project: engine.wire_project(),
            target_id: req.target_id,
            fencing_token: term.agent_token(),
            revision,
            applied: req.applied,
        })
        .await?;
    Ok(Response::new(resp.target.unwrap_or_default()))
}
