//! `CoordinatorService`: the gRPC API over the engine. This file is the service itself —
//! each call delegates to the file of its topic — and the one place errors of the layers
//! below become `tonic::Status` ([`status_of`] for the engine's, `registry_status` for the
//! registry's). The topic files only check their input (`INVALID_ARGUMENT`) and forward.
//!
//! - `rollouts.rs`: plan, start, get, list, pause/resume/abort; `watch.rs`: `WatchRollout`;
//! - `fleet.rs`: fleet status and validation, a target's history;
//! - `targets.rs`: operator calls on one target (stamp, repair); `backups.rs`: backups;
//! - `adopt.rs`: adopting another tool's version table; `agents.rs`: register, heartbeat;
//! - `sets.rs`: has and upload a migration set;
//! - `forward.rs`: a standby forwards write calls to the leader (one hop only).
//!
//! Calls that reach agents run in a server span (`telemetry::api_span`), so each is one
//! trace with the agents' spans inside it.
//!
//! **Architecture invariant:** write calls (start, pause/resume/abort, stamp, repair,
//! restore, prune, adopt, upload set) act only on the leader: a standby forwards them, or answers
//! `NOT_LEADER`; every call that reaches an agent carries the current term's fencing token.

mod adopt;
mod agents;
mod backups;
mod fence;
mod fleet;
mod forward;
mod rollouts;
mod sets;
mod targets;
mod watch;

use std::sync::Arc;

use tonic::{Request, Response, Status};
use tracing::Instrument;

use flotilla_proto as pb;
use flotilla_proto::coordinator_service_server::CoordinatorService;

use crate::engine::projects::ProjectEngines;
use crate::engine::{Engine, EngineError, FleetEntry, Term};
use crate::telemetry::api_span;

pub use fleet::add_schema_drift;

/// The one mapping from engine errors to gRPC status codes.
pub fn status_of(e: EngineError) -> Status {
    match &e {
        EngineError::NotLeader => Status::unavailable(format!("NOT_LEADER: {e}")),
        EngineError::NotFound(_) => Status::not_found(e.to_string()),
        EngineError::Conflict(_) => Status::failed_precondition(e.to_string()),
        EngineError::InvalidArgument(_) | EngineError::InvalidGoal { .. } => {
            Status::invalid_argument(e.to_string())
        }
        EngineError::Fenced(_) => Status::failed_precondition(format!("FENCED: {e}")),
        EngineError::Store(_)
        | EngineError::Encode(_)
        | EngineError::Decode { .. }
        | EngineError::WriteBehind(_)
        | EngineError::TargetTask(_)
        | EngineError::SetCheck(_)
        | EngineError::Unavailable(_)
        | EngineError::Gate { .. } => Status::unavailable(e.to_string()),
        EngineError::WouldBlock(_) => Status::failed_precondition(format!("WOULD_BLOCK: {e}")),
        EngineError::Destructive(_) => Status::failed_precondition(format!("DESTRUCTIVE: {e}")),
        EngineError::SetInvalid(_) => Status::invalid_argument(format!("SET_INVALID: {e}")),
        EngineError::SetUnknown(_) => Status::failed_precondition(format!("SET_UNKNOWN: {e}")),
        EngineError::NoSet => Status::failed_precondition(format!("NO_SET: {e}")),
        EngineError::SetCorrupt(_) => Status::data_loss(format!("SET_CORRUPT: {e}")),
    }
}

/// The mapping from registry errors (registrations live in the state store): retry later.
fn registry_status(e: impl std::error::Error) -> Status {
    Status::unavailable(e.to_string())
}

pub struct Api {
    /// Project `default`'s engine: it leads, and answers what no project scopes (agents,
    /// fence takeover, where the leader is).
    engine: Arc<Engine>,
    /// Every project's engine, for the calls a project scopes.
    projects: Arc<ProjectEngines>,
    /// Extracts the caller's trace context: (traceparent, trace id) for a new rollout.
    trace_of: crate::telemetry::TraceOf,
    /// How a standby dials the leader to forward write calls.
    leader_tls: flotilla_rpc::tls::ClientTls,
}

impl Api {
    pub fn new(
        projects: Arc<ProjectEngines>,
        trace_of: crate::telemetry::TraceOf,
        leader_tls: flotilla_rpc::tls::ClientTls,
    ) -> Api {
        Api {
            engine: projects.default_engine().clone(),
            projects,
            trace_of,
            leader_tls,
        }
    }

    /// The engine of the project a request names (empty: `default`).
    fn project(&self, name: &str) -> Result<Arc<Engine>, Status> {
        self.projects.get(name).map_err(status_of)
    }

    /// For an operator call on one target (stamp, repair, backups): this leader's term and
    /// the target as its agent reports it.
    async fn leader_target(
        &self,
        engine: &Engine,
        target_id: &str,
    ) -> Result<(Term, FleetEntry), Status> {
        check_id("target id", target_id)?;
        let term = engine
            .term()
            .ok_or_else(|| status_of(EngineError::NotLeader))?;
        let entry = engine
            .target_status(target_id, false)
            .await
            .map_err(status_of)?;
        Ok((term, entry))
    }
}

fn check_id(what: &str, id: &str) -> Result<(), Status> {
    if id.is_empty() || id.len() > 256 {
        return Err(Status::invalid_argument(format!(
            "{what} must be 1 to 256 characters"
        )));
    }
    Ok(())
}

#[tonic::async_trait]
impl CoordinatorService for Api {
    async fn plan(
        &self,
        req: Request<pb::PlanRequest>,
    ) -> Result<Response<pb::PlanResponse>, Status> {
        let span = api_span("CoordinatorService/Plan", req.metadata());
        rollouts::plan(self, req).instrument(span).await
    }

    async fn start_rollout(
        &self,
        req: Request<pb::StartRolloutRequest>,
    ) -> Result<Response<pb::Rollout>, Status> {
        rollouts::start(self, req).await
    }

    type WatchRolloutStream = watch::WatchStream;

    async fn watch_rollout(
        &self,
        req: Request<pb::WatchRolloutRequest>,
    ) -> Result<Response<watch::WatchStream>, Status> {
        watch::watch_rollout(self, req).await
    }

    async fn get_rollout(
        &self,
        req: Request<pb::GetRolloutRequest>,
    ) -> Result<Response<pb::Rollout>, Status> {
        rollouts::get(self, req).await
    }

    async fn list_rollouts(
        &self,
        req: Request<pb::ListRolloutsRequest>,
    ) -> Result<Response<pb::ListRolloutsResponse>, Status> {
        rollouts::list(self, req).await
    }

    async fn pause_rollout(
        &self,
        req: Request<pb::RolloutControlRequest>,
    ) -> Result<Response<pb::Rollout>, Status> {
        rollouts::pause(self, req).await
    }

    async fn resume_rollout(
        &self,
        req: Request<pb::RolloutControlRequest>,
    ) -> Result<Response<pb::Rollout>, Status> {
        rollouts::resume(self, req).await
    }

    async fn abort_rollout(
        &self,
        req: Request<pb::RolloutControlRequest>,
    ) -> Result<Response<pb::Rollout>, Status> {
        rollouts::abort(self, req).await
    }

    async fn fleet_status(
        &self,
        req: Request<pb::FleetStatusRequest>,
    ) -> Result<Response<pb::FleetStatusResponse>, Status> {
        let span = api_span("CoordinatorService/FleetStatus", req.metadata());
        fleet::status(self, req).instrument(span).await
    }

    async fn fleet_validate(
        &self,
        req: Request<pb::FleetValidateRequest>,
    ) -> Result<Response<pb::FleetValidateResponse>, Status> {
        let span = api_span("CoordinatorService/FleetValidate", req.metadata());
        fleet::validate(self, req).instrument(span).await
    }

    async fn history(
        &self,
        req: Request<pb::HistoryRequest>,
    ) -> Result<Response<pb::HistoryResponse>, Status> {
        let span = api_span("CoordinatorService/History", req.metadata());
        fleet::history(self, req).instrument(span).await
    }

    async fn stamp(
        &self,
        req: Request<pb::FleetStampRequest>,
    ) -> Result<Response<pb::TargetStatus>, Status> {
        let span = api_span("CoordinatorService/Stamp", req.metadata());
        targets::stamp(self, req).instrument(span).await
    }

    async fn repair(
        &self,
        req: Request<pb::FleetRepairRequest>,
    ) -> Result<Response<pb::TargetStatus>, Status> {
        let span = api_span("CoordinatorService/Repair", req.metadata());
        targets::repair(self, req).instrument(span).await
    }

    async fn list_backups(
        &self,
        req: Request<pb::FleetBackupsRequest>,
    ) -> Result<Response<pb::ListBackupsResponse>, Status> {
        let span = api_span("CoordinatorService/ListBackups", req.metadata());
        backups::list(self, req).instrument(span).await
    }

    async fn restore_backup(
        &self,
        req: Request<pb::FleetRestoreBackupRequest>,
    ) -> Result<Response<pb::RestoreBackupResponse>, Status> {
        let span = api_span("CoordinatorService/RestoreBackup", req.metadata());
        backups::restore(self, req).instrument(span).await
    }

    async fn prune_backups(
        &self,
        req: Request<pb::FleetPruneBackupsRequest>,
    ) -> Result<Response<pb::PruneBackupsResponse>, Status> {
        let span = api_span("CoordinatorService/PruneBackups", req.metadata());
        backups::prune(self, req).instrument(span).await
    }

    async fn adopt(
        &self,
        req: Request<pb::AdoptRequest>,
    ) -> Result<Response<pb::AdoptResponse>, Status> {
        let span = api_span("CoordinatorService/Adopt", req.metadata());
        adopt::adopt(self, req).instrument(span).await
    }

    async fn register(
        &self,
        req: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        agents::register(self, req).await
    }

    async fn heartbeat(
        &self,
        req: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        agents::heartbeat(self, req).await
    }

    async fn fence_takeover(
        &self,
        req: Request<pb::FenceTakeoverRequest>,
    ) -> Result<Response<pb::FenceTakeoverResponse>, Status> {
        let span = api_span("CoordinatorService/FenceTakeover", req.metadata());
        fence::takeover(self, req).instrument(span).await
    }

    async fn has_set(
        &self,
        req: Request<pb::HasSetRequest>,
    ) -> Result<Response<pb::HasSetResponse>, Status> {
        sets::has(self, req).await
    }

    async fn upload_set(
        &self,
        req: Request<tonic::Streaming<pb::SetChunk>>,
    ) -> Result<Response<pb::UploadSetResponse>, Status> {
        sets::upload(self, req).await
    }
}
