//! Agent self-registration: `Register` records a leased registration (it lapses without
//! heartbeats), `Heartbeat` extends it. Any coordinator answers: registrations are unfenced
//! leased keys, never rollout state.

use tonic::{Request, Response, Status};

use flotilla_proto as pb;

use super::{Api, check_id, registry_status};
use crate::registry::Registration;

pub(super) async fn register(
    api: &Api,
    req: Request<pb::RegisterRequest>,
) -> Result<Response<pb::RegisterResponse>, Status> {
    let req = req.into_inner();
    check_id("agent id", &req.agent_id)?;
    if !(req.address.starts_with("http://") || req.address.starts_with("https://")) {
        return Err(Status::invalid_argument(
            "agent address must be an http:// or https:// URL",
        ));
    }
    let reg = Registration {
        id: req.agent_id,
        address: req.address,
        agent_version: req.agent_version,
        targets: req.targets.into_iter().map(|t| t.target_id).collect(),
    };
    let registry = api.engine.registry();
    registry.register(&reg).await.map_err(registry_status)?;
    let ttl = registry.ttl.as_millis() as u32;
    Ok(Response::new(pb::RegisterResponse {
        heartbeat_interval_ms: ttl / 3,
        ttl_ms: ttl,
    }))
}

pub(super) async fn heartbeat(
    api: &Api,
    req: Request<pb::HeartbeatRequest>,
) -> Result<Response<pb::HeartbeatResponse>, Status> {
    let id = req.into_inner().agent_id;
    check_id("agent id", &id)?;
    let known = api
        .engine
        .registry()
        .refresh(&id)
        .await
        .map_err(registry_status)?;
    Ok(Response::new(pb::HeartbeatResponse { known }))
}
