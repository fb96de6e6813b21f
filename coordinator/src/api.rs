//! `CoordinatorService`: the gRPC API over the engine. Errors become `tonic::Status` in
//! exactly one place ([`status_of`]).

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use flotilla_agent::Direction;
use flotilla_proto as pb;
use flotilla_proto::coordinator_service_client::CoordinatorServiceClient;
use flotilla_proto::coordinator_service_server::CoordinatorService;

use crate::engine::{Control, Engine, EngineError, FleetEntry};
use crate::registry::Registration;
use crate::revision::Goal;
use crate::rollout::{RolloutSpec, Selector};

/// The one mapping from engine errors to gRPC status codes.
pub fn status_of(e: EngineError) -> Status {
    match &e {
        EngineError::NotLeader => Status::unavailable(format!("NOT_LEADER: {e}")),
        EngineError::NotFound(_) => Status::not_found(e.to_string()),
        EngineError::Conflict(_) => Status::failed_precondition(e.to_string()),
        EngineError::InvalidArgument(_) => Status::invalid_argument(e.to_string()),
        EngineError::Fenced(_) => Status::failed_precondition(format!("FENCED: {e}")),
        EngineError::Store(_) | EngineError::Unavailable(_) => Status::unavailable(e.to_string()),
        EngineError::WouldBlock(_) => Status::failed_precondition(format!("WOULD_BLOCK: {e}")),
        EngineError::Destructive(_) => Status::failed_precondition(format!("DESTRUCTIVE: {e}")),
    }
}

/// Metadata key marking a call a standby forwarded: the receiver never forwards it again.
const FORWARDED: &str = "x-flotilla-forwarded";

/// A write call for the leader, as a standby re-sends it: the message, the caller's trace
/// context, and the forwarded mark.
fn forwarded<T>(req: Request<T>) -> Request<T> {
    let md = req.metadata().clone();
    let mut out = Request::new(req.into_inner());
    for key in ["traceparent", "tracestate"] {
        if let Some(v) = md.get(key) {
            out.metadata_mut().insert(key, v.clone());
        }
    }
    out.metadata_mut()
        .insert(FORWARDED, tonic::metadata::MetadataValue::from_static("1"));
    out
}

pub struct Api {
    engine: Arc<Engine>,
    /// Extracts the caller's trace context: (traceparent, trace id) for a new rollout.
    trace_of: crate::server::TraceOf,
    /// How a standby dials the leader to forward write calls.
    leader_tls: flotilla_agent::tls::ClientTls,
}

impl Api {
    pub fn new(
        engine: Arc<Engine>,
        trace_of: crate::server::TraceOf,
        leader_tls: flotilla_agent::tls::ClientTls,
    ) -> Api {
        Api {
            engine,
            trace_of,
            leader_tls,
        }
    }

    /// On a standby, a client for the leader (write calls are forwarded there, one hop
    /// only); `None` when this coordinator leads and handles the call itself.
    async fn leader(
        &self,
        md: &tonic::metadata::MetadataMap,
    ) -> Result<Option<CoordinatorServiceClient<Channel>>, Status> {
        if self.engine.term().is_some() {
            return Ok(None);
        }
        let not_leader = || status_of(EngineError::NotLeader);
        if md.contains_key(FORWARDED) {
            return Err(not_leader());
        }
        let Some(address) = self.engine.leader_address().await else {
            return Err(not_leader());
        };
        let endpoint = self
            .leader_tls
            .endpoint(&address)
            .map_err(|e| {
                Status::unavailable(format!("NOT_LEADER: leader address {address:?}: {e}"))
            })?
            .connect_timeout(Duration::from_secs(5));
        let channel = endpoint.connect().await.map_err(|e| {
            Status::unavailable(format!(
                "NOT_LEADER: this coordinator is a standby and the leader at {address} is unreachable ({e}); retry"
            ))
        })?;
        Ok(Some(CoordinatorServiceClient::new(channel)))
    }

    /// Pause, resume or abort, then the rollout as it now stands.
    async fn control(&self, id: String, c: Control) -> Result<Response<pb::Rollout>, Status> {
        check_id("rollout id", &id)?;
        self.engine
            .control_rollout(&id, c)
            .await
            .map_err(status_of)?;
        Ok(Response::new(self.rollout(&id).await?))
    }

    /// For an operator call on one target (stamp, repair): this leader's term and the
    /// target as its agent reports it.
    async fn leader_target(
        &self,
        target_id: &str,
    ) -> Result<(crate::engine::Term, FleetEntry), Status> {
        check_id("target id", target_id)?;
        let term = self
            .engine
            .term()
            .ok_or_else(|| status_of(EngineError::NotLeader))?;
        let entry = self
            .engine
            .target_status(target_id, false)
            .await
            .map_err(status_of)?;
        Ok((term, entry))
    }

    async fn rollout(&self, id: &str) -> Result<pb::Rollout, Status> {
        self.engine.rollout_proto(id).await.map_err(status_of)
    }
}

/// Revisions of a target that the graph lacks or whose checksum differs.
pub fn drift_of(engine: &Engine, e: &FleetEntry) -> Vec<String> {
    let Some(dialect) = e.dialect() else {
        return vec![];
    };
    let graph = engine.graph();
    e.status
        .applied
        .iter()
        .filter_map(|a| match graph.get(&a.revision) {
            None => Some(format!("{}: unknown revision", a.revision)),
            Some(r) if r.up_checksum(dialect) != a.checksum => {
                Some(format!("{}: checksum differs", a.revision))
            }
            Some(_) => None,
        })
        .collect()
}

/// Add each schema-drifted target's one-line diff to its `drift` list.
pub fn add_schema_drift(
    targets: &mut [pb::FleetTarget],
    v: &crate::engine::validate::FleetValidation,
) {
    for d in &v.schema_drift {
        if let Some(t) = targets.iter_mut().find(|t| {
            t.status
                .as_ref()
                .is_some_and(|s| s.target_id == d.target_id)
        }) {
            t.drift.push(crate::engine::validate::drift_line(d));
        }
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

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::RolloutEvent, Status>> + Send>>;

#[tonic::async_trait]
impl CoordinatorService for Api {
    async fn plan(
        &self,
        req: Request<pb::PlanRequest>,
    ) -> Result<Response<pb::PlanResponse>, Status> {
        let spec = RolloutSpec::from_proto(&req.into_inner().spec.unwrap_or_default())
            .map_err(Status::invalid_argument)?;
        let goal: Goal = self.engine.goal(&spec.goal).map_err(status_of)?;
        let snap = self
            .engine
            .select(&spec.selector)
            .await
            .map_err(status_of)?;
        let graph = self.engine.graph();
        let mut targets = Vec::new();
        let mut refusal = crate::engine::destructive::Refusal::default();
        for e in &snap.targets {
            let mut tp = pb::TargetPlan {
                target_id: e.status.target_id.clone(),
                agent_id: e.agent.id().to_owned(),
                dialect: e.status.dialect,
                ..Default::default()
            };
            match crate::engine::snapshot::plan_target(
                graph,
                &e.status,
                e.dialect(),
                &goal,
                spec.allow_downgrade,
            ) {
                crate::engine::TargetPlanOutcome::Steps(steps) => {
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
                crate::engine::TargetPlanOutcome::Blocked(why) => tp.blocked_reason = why,
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
        }))
    }

    async fn start_rollout(
        &self,
        req: Request<pb::StartRolloutRequest>,
    ) -> Result<Response<pb::Rollout>, Status> {
        if let Some(mut leader) = self.leader(req.metadata()).await? {
            return leader.start_rollout(forwarded(req)).await;
        }
        let (traceparent, trace_id) = (self.trace_of)(req.metadata());
        let spec = RolloutSpec::from_proto(&req.into_inner().spec.unwrap_or_default())
            .map_err(Status::invalid_argument)?;
        let rec = self
            .engine
            .start(spec, traceparent, trace_id)
            .await
            .map_err(status_of)?;
        Ok(Response::new(self.rollout(&rec.id).await?))
    }

    type WatchRolloutStream = WatchStream;

    async fn watch_rollout(
        &self,
        req: Request<pb::WatchRolloutRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        let id = req.into_inner().id;
        check_id("rollout id", &id)?;
        let engine = self.engine.clone();
        let first = self.rollout(&id).await?;
        let stream = watch_stream(engine.clone(), id, first, engine.subscribe());
        Ok(Response::new(stream))
    }

    async fn get_rollout(
        &self,
        req: Request<pb::GetRolloutRequest>,
    ) -> Result<Response<pb::Rollout>, Status> {
        let id = req.into_inner().id;
        check_id("rollout id", &id)?;
        Ok(Response::new(self.rollout(&id).await?))
    }

    async fn list_rollouts(
        &self,
        req: Request<pb::ListRolloutsRequest>,
    ) -> Result<Response<pb::ListRolloutsResponse>, Status> {
        let limit = match req.into_inner().limit {
            0 => 50,
            n => n as usize,
        };
        let recs = self.engine.list().await.map_err(status_of)?;
        let rollouts = recs
            .into_iter()
            .take(limit)
            .map(|r| r.to_proto(&[]))
            .collect();
        Ok(Response::new(pb::ListRolloutsResponse { rollouts }))
    }

    async fn pause_rollout(
        &self,
        req: Request<pb::RolloutControlRequest>,
    ) -> Result<Response<pb::Rollout>, Status> {
        if let Some(mut leader) = self.leader(req.metadata()).await? {
            return leader.pause_rollout(forwarded(req)).await;
        }
        self.control(req.into_inner().id, Control::Pause).await
    }

    async fn resume_rollout(
        &self,
        req: Request<pb::RolloutControlRequest>,
    ) -> Result<Response<pb::Rollout>, Status> {
        if let Some(mut leader) = self.leader(req.metadata()).await? {
            return leader.resume_rollout(forwarded(req)).await;
        }
        self.control(req.into_inner().id, Control::Run).await
    }

    async fn abort_rollout(
        &self,
        req: Request<pb::RolloutControlRequest>,
    ) -> Result<Response<pb::Rollout>, Status> {
        if let Some(mut leader) = self.leader(req.metadata()).await? {
            return leader.abort_rollout(forwarded(req)).await;
        }
        self.control(req.into_inner().id, Control::Abort).await
    }

    async fn fleet_status(
        &self,
        req: Request<pb::FleetStatusRequest>,
    ) -> Result<Response<pb::FleetStatusResponse>, Status> {
        let req = req.into_inner();
        let selector = Selector::from_proto(req.selector.as_ref());
        let snap = self.engine.select(&selector).await.map_err(status_of)?;
        let mut targets: Vec<pb::FleetTarget> = snap
            .targets
            .iter()
            .map(|e| pb::FleetTarget {
                agent_id: e.agent.id().to_owned(),
                drift: drift_of(&self.engine, e),
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
        if req.include_schema {
            add_schema_drift(
                &mut targets,
                &self.engine.validate_fleet(&snap.targets).await,
            );
        }
        let graph = self.engine.graph();
        crate::metrics::record_fleet(&targets, req.include_schema);
        Ok(Response::new(pb::FleetStatusResponse {
            targets,
            graph_heads: graph.heads().iter().map(|h| h.to_string()).collect(),
            graph_digest: graph.digest(),
        }))
    }

    async fn fleet_validate(
        &self,
        req: Request<pb::FleetValidateRequest>,
    ) -> Result<Response<pb::FleetValidateResponse>, Status> {
        let selector = Selector::from_proto(req.into_inner().selector.as_ref());
        let snap = self.engine.select(&selector).await.map_err(status_of)?;
        let v = self.engine.validate_fleet(&snap.targets).await;
        metrics::gauge!("flotilla_fleet_drift_targets").set(v.drifted_targets().len() as f64);
        Ok(Response::new(pb::FleetValidateResponse {
            targets: v.targets,
            groups: v.groups,
            schema_drift: v.schema_drift,
        }))
    }

    async fn history(
        &self,
        req: Request<pb::HistoryRequest>,
    ) -> Result<Response<pb::HistoryResponse>, Status> {
        let id = req.into_inner().target_id;
        check_id("target id", &id)?;
        let e = self
            .engine
            .target_status(&id, true)
            .await
            .map_err(status_of)?;
        Ok(Response::new(pb::HistoryResponse {
            target: Some(e.status),
        }))
    }

    async fn stamp(
        &self,
        req: Request<pb::FleetStampRequest>,
    ) -> Result<Response<pb::TargetStatus>, Status> {
        if let Some(mut leader) = self.leader(req.metadata()).await? {
            return leader.stamp(forwarded(req)).await;
        }
        let req = req.into_inner();
        let (term, e) = self.leader_target(&req.target_id).await?;
        let dialect = e
            .dialect()
            .ok_or_else(|| Status::failed_precondition("target has no dialect"))?;
        let goal: Goal = self.engine.goal(&req.revision).map_err(status_of)?;
        let plan = crate::revision::plan(
            self.engine.graph(),
            &crate::engine::snapshot::history_of(&e.status),
            &goal,
            dialect,
        )
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
                        Direction::Down => self
                            .engine
                            .graph()
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
                    target_id: req.target_id.clone(),
                    fencing_token: term.token,
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

    async fn repair(
        &self,
        req: Request<pb::FleetRepairRequest>,
    ) -> Result<Response<pb::TargetStatus>, Status> {
        if let Some(mut leader) = self.leader(req.metadata()).await? {
            return leader.repair(forwarded(req)).await;
        }
        let req = req.into_inner();
        let (term, e) = self.leader_target(&req.target_id).await?;
        let revision = if req.revision.is_empty() {
            e.status.dirty_revision.clone()
        } else {
            req.revision.clone()
        };
        let resp = e
            .agent
            .repair(pb::RepairRequest {
                target_id: req.target_id,
                fencing_token: term.token,
                revision,
                applied: req.applied,
            })
            .await?;
        Ok(Response::new(resp.target.unwrap_or_default()))
    }

    async fn list_backups(
        &self,
        req: Request<pb::FleetBackupsRequest>,
    ) -> Result<Response<pb::ListBackupsResponse>, Status> {
        let req = req.into_inner();
        let mut out = pb::ListBackupsResponse::default();
        if req.target_id.is_empty() {
            for agent in self.engine.agents().await.map_err(status_of)? {
                match agent
                    .list_backups(pb::ListBackupsRequest { target_ids: vec![] })
                    .await
                {
                    Ok(r) => {
                        out.backups.extend(r.backups);
                        out.errors.extend(r.errors);
                    }
                    Err(e) => out
                        .errors
                        .push(format!("agent {}: {}", agent.id(), e.message())),
                }
            }
        } else {
            check_id("target id", &req.target_id)?;
            let e = self
                .engine
                .target_status(&req.target_id, false)
                .await
                .map_err(status_of)?;
            out = e
                .agent
                .list_backups(pb::ListBackupsRequest {
                    target_ids: vec![req.target_id],
                })
                .await?;
        }
        out.backups.sort_by(|a, b| {
            (a.created_at_unix_ms, &a.target_id).cmp(&(b.created_at_unix_ms, &b.target_id))
        });
        Ok(Response::new(out))
    }

    async fn restore_backup(
        &self,
        req: Request<pb::FleetRestoreBackupRequest>,
    ) -> Result<Response<pb::RestoreBackupResponse>, Status> {
        if let Some(mut leader) = self.leader(req.metadata()).await? {
            return leader.restore_backup(forwarded(req)).await;
        }
        let req = req.into_inner();
        check_id("rollout id", &req.rollout_id)?;
        let (term, e) = self.leader_target(&req.target_id).await?;
        let resp = e
            .agent
            .restore_backup(pb::RestoreBackupRequest {
                target_id: req.target_id,
                rollout_id: req.rollout_id,
                fencing_token: term.token,
            })
            .await?;
        Ok(Response::new(resp))
    }

    async fn prune_backups(
        &self,
        req: Request<pb::FleetPruneBackupsRequest>,
    ) -> Result<Response<pb::PruneBackupsResponse>, Status> {
        if let Some(mut leader) = self.leader(req.metadata()).await? {
            return leader.prune_backups(forwarded(req)).await;
        }
        let req = req.into_inner();
        let mut out = pb::PruneBackupsResponse::default();
        if req.target_id.is_empty() {
            for agent in self.engine.agents().await.map_err(status_of)? {
                match agent
                    .prune_backups(pb::PruneBackupsRequest {
                        target_ids: vec![],
                        keep: req.keep,
                    })
                    .await
                {
                    Ok(r) => {
                        out.removed.extend(r.removed);
                        out.errors.extend(r.errors);
                    }
                    Err(e) => out
                        .errors
                        .push(format!("agent {}: {}", agent.id(), e.message())),
                }
            }
        } else {
            let (_, e) = self.leader_target(&req.target_id).await?;
            out = e
                .agent
                .prune_backups(pb::PruneBackupsRequest {
                    target_ids: vec![req.target_id],
                    keep: req.keep,
                })
                .await?;
        }
        Ok(Response::new(out))
    }

    async fn adopt(
        &self,
        req: Request<pb::AdoptRequest>,
    ) -> Result<Response<pb::AdoptResponse>, Status> {
        if let Some(mut leader) = self.leader(req.metadata()).await? {
            return leader.adopt(forwarded(req)).await;
        }
        let req = req.into_inner();
        let from = match req.from.as_str() {
            "" => None,
            f if flotilla_agent::foreign::table_of(f).is_some() => Some(f),
            f => {
                return Err(Status::invalid_argument(format!(
                    "unknown tool {f:?}: use alembic, flyway, sqlx or golang-migrate"
                )));
            }
        };
        let term = self
            .engine
            .term()
            .ok_or_else(|| status_of(EngineError::NotLeader))?;
        let selector = Selector::from_proto(req.selector.as_ref());
        let targets = crate::adopt::adopt(&self.engine, term.token, &selector, from, req.dry_run)
            .await
            .map_err(status_of)?;
        Ok(Response::new(pb::AdoptResponse { targets }))
    }

    async fn register(
        &self,
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
        let registry = self.engine.registry();
        registry.register(&reg).await.map_err(Status::unavailable)?;
        let ttl = registry.ttl.as_millis() as u32;
        Ok(Response::new(pb::RegisterResponse {
            heartbeat_interval_ms: ttl / 3,
            ttl_ms: ttl,
        }))
    }

    async fn heartbeat(
        &self,
        req: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let id = req.into_inner().agent_id;
        check_id("agent id", &id)?;
        let known = self
            .engine
            .registry()
            .refresh(&id)
            .await
            .map_err(Status::unavailable)?;
        Ok(Response::new(pb::HeartbeatResponse { known }))
    }
}

/// The watch stream: the current state, then a new state on every change, until the
/// rollout ends. Wakes on a local change, or every second (the rollout may run on another
/// coordinator: this one may be a standby).
fn watch_stream(
    engine: Arc<Engine>,
    id: String,
    first: pb::Rollout,
    mut updates: tokio::sync::broadcast::Receiver<crate::engine::RolloutUpdate>,
) -> WatchStream {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        let mut last = first.clone();
        if tx
            .send(Ok(pb::RolloutEvent {
                rollout: Some(first),
            }))
            .await
            .is_err()
        {
            return;
        }
        // At most one read of the rollout per interval, however many targets changed:
        // building and sending the state is O(targets), updates arrive per step. The interval
        // grows with the rollout (100 ms up to 100 targets, 325 ms at 1,000, 1 s from 3,700):
        // a watcher of a large rollout gets a few states a second, not a stream of copies.
        // The rollout's end is read at once: `rollout start --wait` returns when it ends.
        let mut last_read = tokio::time::Instant::now();
        let ended = |u: &Result<crate::engine::RolloutUpdate, _>| matches!(u, Ok(u) if u.terminal && u.id == id);
        while !is_done(&last) {
            let mut end_seen = false;
            tokio::select! {
                _ = tx.closed() => return,
                u = updates.recv() => end_seen = ended(&u),
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            if !end_seen {
                let gap = tokio::time::sleep_until(last_read + min_gap(last.targets.len()));
                tokio::pin!(gap);
                loop {
                    tokio::select! {
                        () = &mut gap => break,
                        u = updates.recv() => {
                            let closed = matches!(u, Err(tokio::sync::broadcast::error::RecvError::Closed));
                            if closed || ended(&u) {
                                break;
                            }
                        }
                    }
                }
            }
            while !matches!(
                updates.try_recv(),
                Err(tokio::sync::broadcast::error::TryRecvError::Empty
                    | tokio::sync::broadcast::error::TryRecvError::Closed)
            ) {}
            last_read = tokio::time::Instant::now();
            match engine.rollout_proto(&id).await {
                Ok(now) => {
                    if now != last {
                        last = now.clone();
                        if tx
                            .send(Ok(pb::RolloutEvent { rollout: Some(now) }))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(status_of(e))).await;
                    return;
                }
            }
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

/// The least time between two reads of a watched rollout of `targets` targets.
fn min_gap(targets: usize) -> Duration {
    (Duration::from_millis(100) + Duration::from_micros(250) * targets.saturating_sub(100) as u32)
        .min(Duration::from_secs(1))
}

fn is_done(r: &pb::Rollout) -> bool {
    crate::rollout::RolloutState::from_proto(
        pb::RolloutState::try_from(r.state).unwrap_or_default(),
    )
    .is_terminal()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_watch_reads_large_rollouts_less_often() {
        assert_eq!(min_gap(0), Duration::from_millis(100));
        assert_eq!(min_gap(100), Duration::from_millis(100));
        assert_eq!(min_gap(1_000), Duration::from_millis(325));
        assert_eq!(min_gap(10_000), Duration::from_secs(1));
    }
}
