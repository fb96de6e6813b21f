//! Fleet calls: every target's state with its drift (and schema drift on request), fleet
//! validation, and one target's history. Read-only: any coordinator answers them.

use tonic::{Request, Response, Status};

use flotilla_proto as pb;

use super::{Api, check_id, status_of};
use crate::engine::EngineError;
use crate::engine::validate::{FleetValidation, drift_line};
use crate::engine::view::drift_of;
use crate::rollout::Selector;

/// Add each schema-drifted target's one-line diff to its `drift` list.
pub fn add_schema_drift(targets: &mut [pb::FleetTarget], v: &FleetValidation) {
    for d in &v.schema_drift {
        if let Some(t) = targets.iter_mut().find(|t| {
            t.status
                .as_ref()
                .is_some_and(|s| s.target_id == d.target_id)
        }) {
            t.drift.push(drift_line(d));
        }
    }
}

pub(super) async fn status(
    api: &Api,
    req: Request<pb::FleetStatusRequest>,
) -> Result<Response<pb::FleetStatusResponse>, Status> {
    let req = req.into_inner();
    let selector = Selector::from_proto(req.selector.as_ref())
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    let engine = api.project(&req.project)?;
    // The fleet's state needs no set: without one (none named, no default) the answer has
    // no heads and no drift, rather than no answer (`wait` on a pinned revision works).
    let set = match engine.graph_of(&req.set_digest).await {
        Ok(set) => Some(set),
        Err(EngineError::NoSet) => None,
        Err(e) => return Err(status_of(e)),
    };
    let snap = engine.select(&selector).await.map_err(status_of)?;
    let mut targets: Vec<pb::FleetTarget> = snap
        .targets
        .iter()
        .map(|e| pb::FleetTarget {
            agent_id: e.agent.id().to_owned(),
            drift: set
                .as_ref()
                .map(|(_, g)| drift_of(g, e))
                .unwrap_or_default(),
            status: Some(e.status.clone()),
        })
        .collect();
    for (agent, err) in snap.unreachable {
        targets.push(pb::FleetTarget {
            agent_id: agent,
            status: Some(pb::TargetStatus {
                error: format!("agent unreachable: {err}"),
                ..Default::default()
            }),
            drift: vec![],
        });
    }
    let Some((set_digest, graph)) = set else {
        return Ok(Response::new(pb::FleetStatusResponse {
            project: engine.project().to_string(),
            targets,
            ..Default::default()
        }));
    };
    if req.include_schema {
        add_schema_drift(
            &mut targets,
            &engine.validate_fleet(&graph, &snap.targets).await,
        );
    }
    crate::metrics::record_fleet(engine.project(), &targets, req.include_schema);
    Ok(Response::new(pb::FleetStatusResponse {
        project: engine.project().to_string(),
        targets,
        graph_heads: graph.heads().iter().map(|h| h.to_string()).collect(),
        graph_digest: graph.digest(),
        set_digest,
    }))
}

pub(super) async fn validate(
    api: &Api,
    req: Request<pb::FleetValidateRequest>,
) -> Result<Response<pb::FleetValidateResponse>, Status> {
    let req = req.into_inner();
    let selector = Selector::from_proto(req.selector.as_ref())
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    let engine = api.project(&req.project)?;
    let (_, graph) = engine.graph_of(&req.set_digest).await.map_err(status_of)?;
    let snap = engine.select(&selector).await.map_err(status_of)?;
    let v = engine.validate_fleet(&graph, &snap.targets).await;
    metrics::gauge!("flotilla_fleet_drift_targets", "project" => engine.project().to_string())
        .set(v.drifted_targets().len() as f64);
    Ok(Response::new(pb::FleetValidateResponse {
        targets: v.targets,
        groups: v.groups,
        schema_drift: v.schema_drift,
    }))
}

pub(super) async fn history(
    api: &Api,
    req: Request<pb::HistoryRequest>,
) -> Result<Response<pb::HistoryResponse>, Status> {
    let req = req.into_inner();
    let id = req.target_id;
    check_id("target id", &id)?;
    let e = api
        .project(&req.project)?
        .target_status(&id, true)
        .await
        .map_err(status_of)?;
    Ok(Response::new(pb::HistoryResponse {
        target: Some(e.status),
    }))
}
