//! Rollout calls: the dry plan, start, get and list, and pause/resume/abort of a running
//! rollout. Start and the controls are write calls: a standby forwards them to the leader.

use tonic::{Request, Response, Status};

use flotilla_proto as pb;

use super::forward::{forwarded, leader};
use super::{Api, check_id, status_of};
use crate::engine::Control;
use crate::engine::destructive::Refusal;
use crate::engine::preflight::empty_selection;
use crate::engine::snapshot::{TargetPlanOutcome, plan_target};
use crate::rollout::RolloutSpec;
use flotilla_revision::Goal;
use flotilla_rpc::convert::DirectionProto;

/// The rollout as the API shows it.
pub(super) async fn rollout(api: &Api, id: &str) -> Result<pb::Rollout, Status> {
    let engine = api.projects.of_rollout(id).await.map_err(status_of)?;
    engine.rollout_proto(id).await.map_err(status_of)
}

pub(super) async fn plan(
    api: &Api,
    req: Request<pb::PlanRequest>,
) -> Result<Response<pb::PlanResponse>, Status> {
    let spec = RolloutSpec::from_proto(&req.into_inner().spec.unwrap_or_default())
        .map_err(Status::invalid_argument)?;
    let engine = api.project(&spec.project)?;
    let (set_digest, graph) = engine.graph_of(&spec.set_digest).await.map_err(status_of)?;
    let graph = graph.as_ref();
    let goal: Goal = engine.goal(graph, &spec.goal).map_err(status_of)?;
    let snap = engine.snapshot(false).await.map_err(status_of)?;
    let fleet_size = snap.targets.len();
    let mut snap = snap;
    snap.targets.retain(|e| e.matches(&spec.selector));
    if snap.targets.is_empty() && snap.unreachable.is_empty() {
        return Err(status_of(empty_selection(
            &spec.selector,
            Some(fleet_size),
            &[],
            "nothing to plan",
        )));
    }
    let mut targets = Vec::new();
    let mut refusal = Refusal::default();
    for e in &snap.targets {
        let mut tp = pb::TargetPlan {
            target_id: e.status.target_id.clone(),
            agent_id: e.agent.id().to_owned(),
            dialect: e.status.dialect,
            ..Default::default()
        };
        match plan_target(
            graph,
            &e.status,
            e.dialect(),
            &goal,
            spec.allow_downgrade,
            spec.allow_foreign,
        ) {
            TargetPlanOutcome::Steps(steps) => {
                if let Some(d) = e.dialect() {
                    refusal.add(graph, d, &steps);
                }
                tp.steps = steps
                    .iter()
                    .map(|s| pb::PlannedStep {
                        revision: s.revision.clone(),
                        direction: s.direction.to_proto() as i32,
                        checksum: s.checksum.clone(),
                        transactional: s.transactional,
                    })
                    .collect();
            }
            TargetPlanOutcome::Blocked(why) => tp.blocked_reason = why,
        }
        targets.push(tp);
    }
    if !spec.allow_destructive
        && let Some(e) = refusal.error(graph)
    {
        return Err(status_of(e));
    }
    for (agent, err) in snap.unreachable {
        targets.push(pb::TargetPlan {
            agent_id: agent.clone(),
            blocked_reason: format!("agent {agent} unreachable: {err}"),
            ..Default::default()
        });
    }
    Ok(Response::new(pb::PlanResponse {
        targets,
        graph_digest: graph.digest(),
        set_digest,
    }))
}

pub(super) async fn start(
    api: &Api,
    req: Request<pb::StartRolloutRequest>,
) -> Result<Response<pb::Rollout>, Status> {
    if let Some(mut leader) = leader(api, req.metadata()).await? {
        return leader.start_rollout(forwarded(req)).await;
    }
    let (traceparent, trace_id) = (api.trace_of)(req.metadata());
    let spec = RolloutSpec::from_proto(&req.into_inner().spec.unwrap_or_default())
        .map_err(Status::invalid_argument)?;
    let rec = api
        .project(&spec.project)?
        .start(spec, traceparent, trace_id)
        .await
        .map_err(status_of)?;
    Ok(Response::new(rollout(api, &rec.id).await?))
}

pub(super) async fn get(
    api: &Api,
    req: Request<pb::GetRolloutRequest>,
) -> Result<Response<pb::Rollout>, Status> {
    let id = req.into_inner().id;
    check_id("rollout id", &id)?;
    Ok(Response::new(rollout(api, &id).await?))
}

pub(super) async fn list(
    api: &Api,
    req: Request<pb::ListRolloutsRequest>,
) -> Result<Response<pb::ListRolloutsResponse>, Status> {
    let req = req.into_inner();
    let limit = match req.limit {
        0 => 50,
        n => n as usize,
    };
    let recs = api.project(&req.project)?.list().await.map_err(status_of)?;
    let rollouts = recs
        .into_iter()
        .take(limit)
        .map(|r| r.to_proto(&[]))
        .collect();
    Ok(Response::new(pb::ListRolloutsResponse { rollouts }))
}

pub(super) async fn pause(
    api: &Api,
    req: Request<pb::RolloutControlRequest>,
) -> Result<Response<pb::Rollout>, Status> {
    if let Some(mut leader) = leader(api, req.metadata()).await? {
        return leader.pause_rollout(forwarded(req)).await;
    }
    control(api, req.into_inner().id, Control::Pause).await
}

pub(super) async fn resume(
    api: &Api,
    req: Request<pb::RolloutControlRequest>,
) -> Result<Response<pb::Rollout>, Status> {
    if let Some(mut leader) = leader(api, req.metadata()).await? {
        return leader.resume_rollout(forwarded(req)).await;
    }
    control(api, req.into_inner().id, Control::Run).await
}

pub(super) async fn abort(
    api: &Api,
    req: Request<pb::RolloutControlRequest>,
) -> Result<Response<pb::Rollout>, Status> {
    if let Some(mut leader) = leader(api, req.metadata()).await? {
        return leader.abort_rollout(forwarded(req)).await;
    }
    control(api, req.into_inner().id, Control::Abort).await
}

/// Pause, resume or abort, then the rollout as it now stands.
async fn control(api: &Api, id: String, c: Control) -> Result<Response<pb::Rollout>, Status> {
    check_id("rollout id", &id)?;
    api.projects
        .of_rollout(&id)
        .await
        .map_err(status_of)?
        .control_rollout(&id, c)
        .await
        .map_err(status_of)?;
    Ok(Response::new(rollout(api, &id).await?))
}
