//! [`Agent`]: the embedding API. It owns the targets, the root cancellation token and the
//! tasks running migrations; the gRPC service (`service.rs`) is a thin wrapper around it, and
//! the coordinator can run agents in-process by calling these methods directly.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use flotilla_proto::{
    MigrateRequest, RepairRequest, RepairResponse, StampRequest, StampResponse, StepEvent,
};
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::Status;
use tracing::Instrument;

use crate::config::AgentConfig;
use crate::driver::{Session, StepMeta};
use crate::error::AgentError;
use crate::executor::{
    EventSink, Executor, Locker, PlannedStep, driver_error, needs_dirty_protocol,
};
use crate::fence::FenceMemory;
use crate::service::validate as check;
use crate::status::target_status;
use crate::target::{Target, Targets};
use flotilla_core::history::TargetState;
use flotilla_core::project::Project;

mod adopt;
mod backups;
mod status;
mod validate;

/// The stream of events a `migrate` call returns; it ends with `Err(status)` after a
/// `StepFailed` event when a step fails.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<StepEvent, Status>> + Send + 'static>>;

/// Events buffered per Migrate call before the executor waits for the client.
const EVENT_BUFFER: usize = 64;

/// `TargetStatus.error_class` of a target whose read did not answer within the status
/// timeout: worth reading again, like a transient database error.
pub const STATUS_TIMEOUT_CLASS: &str = "timeout";

/// A Flotilla agent serving a set of targets.
pub struct Agent {
    config: AgentConfig,
    targets: Targets,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    /// The agent-wide fence: tokens some target committed, and fresh announcements (Status).
    /// Requests with a lower token are refused for every target, including targets whose own
    /// fence row has not seen the newer token yet. See `fence.rs`.
    fence: Arc<FenceMemory>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("agent_id", &self.config.agent_id)
            .finish_non_exhaustive()
    }
}

/// A read-only session (no lock, nothing created: a target without Flotilla's tables reads
/// as one at base).
async fn open_session(target: &Target, project: &Project) -> Result<Box<dyn Session>, AgentError> {
    target
        .driver
        .connect_read(project)
        .await
        .map_err(|e| driver_error(&target.id, e))
}

async fn stamp_locked(
    s: &mut dyn Session,
    target: &str,
    pairs: &[(String, String)],
    direction: flotilla_core::Direction,
    meta: &StepMeta,
) -> Result<TargetState, AgentError> {
    let state = s.read_state().await.map_err(|e| driver_error(target, e))?;
    if let Some(d) = state.dirty() {
        return Err(AgentError::TargetDirty {
            target: target.to_owned(),
            revision: d.revision.clone(),
        });
    }
    s.stamp(pairs, direction, meta)
        .await
        .map_err(|e| driver_error(target, e))?;
    s.read_state().await.map_err(|e| driver_error(target, e))
}

async fn repair_locked(
    s: &mut dyn Session,
    target: &str,
    revision: &str,
    applied: bool,
    meta: &StepMeta,
) -> Result<TargetState, AgentError> {
    let state = s.read_state().await.map_err(|e| driver_error(target, e))?;
    if state.dirty().is_none_or(|d| d.revision != revision) {
        return Err(AgentError::NotDirty {
            target: target.to_owned(),
            revision: revision.to_owned(),
        });
    }
    s.repair(revision, applied, meta)
        .await
        .map_err(|e| driver_error(target, e))?;
    s.read_state().await.map_err(|e| driver_error(target, e))
}

impl Agent {
    /// Validate the config, open the drivers and run the first discovery scan.
    pub async fn new(config: AgentConfig) -> Result<Agent, AgentError> {
        config.validate()?;
        let fence = Arc::new(FenceMemory::new(config.fence.announcement_ttl));
        let targets = Targets::new(
            config.targets.clone(),
            config.discovery.sources.clone(),
            config.discovery.refresh_interval,
        )
        .await?;
        Ok(Agent {
            config,
            targets,
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            fence,
        })
    }

    /// Refuse a token lower than the agent-wide fence (FAILED_PRECONDITION). Remembers
    /// nothing: a token is remembered only once a target committed it.
    fn check_fence(&self, target: &str, token: u64) -> Result<(), Status> {
        self.fence.check(target, token).map_err(|e| e.to_status())
    }

    /// The lowest fencing token this agent accepts right now, for any target: the highest
    /// token one of its targets committed, or a fresh announcement if higher.
    pub fn fence_floor(&self) -> u64 {
        self.fence.floor()
    }

    pub fn agent_id(&self) -> &str {
        &self.config.agent_id
    }

    pub fn config(&self) -> &AgentConfig {
        &self.config
    }

    /// Ids of the targets currently served.
    pub async fn target_ids(&self) -> Vec<String> {
        self.targets
            .all()
            .await
            .iter()
            .map(|t| t.id.clone())
            .collect()
    }

    /// The connection pools of discovered PostgreSQL schemas: each one's database, its bound,
    /// the connections open now and the most ever open at once.
    pub fn schema_pools(&self) -> Vec<(String, crate::driver::postgres::PoolStats)> {
        self.targets.pool_stats()
    }

    /// The root cancellation token: cancelling it stops every migration before its next
    /// step (the step in flight commits or rolls back).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Cancel and wait (up to `grace`) for the migrations in flight; false if time ran out.
    pub async fn shutdown(&self, grace: Duration) -> bool {
        self.shutdown.cancel();
        self.tasks.close();
        tokio::time::timeout(grace, self.tasks.wait()).await.is_ok()
    }

    fn meta(&self, rollout_id: &str, fencing_token: u64) -> StepMeta {
        StepMeta {
            rollout_id: rollout_id.to_owned(),
            agent_id: self.config.agent_id.clone(),
            fencing_token,
        }
    }

    fn ensure_running(&self, target: &str) -> Result<(), AgentError> {
        if self.shutdown.is_cancelled() {
            return Err(AgentError::Cancelled {
                target: target.to_owned(),
                client_left: false,
            });
        }
        Ok(())
    }

    /// Apply the request's steps to its target; see `agent.proto` for the stream's contract.
    /// Request errors (invalid, unknown target, checksum mismatch) are returned before any
    /// event; everything after that is streamed.
    pub async fn migrate(&self, req: MigrateRequest) -> Result<EventStream, Status> {
        let mut steps = check::migrate_request(&req)?;
        let project = check::project(&req.project)?;
        for (spec, _) in &mut steps {
            if spec.bounds.lock_timeout.is_zero() {
                spec.bounds.lock_timeout = self.config.lock.step_timeout;
            }
        }
        // The rollout's retry budget, where it sets one, replaces the agent's.
        let mut retry = self.config.retry.clone();
        if req.retry_max_attempts > 0 {
            retry.max_attempts = req.retry_max_attempts;
        }
        if req.retry_max_elapsed_ms > 0 {
            retry.max_elapsed = Duration::from_millis(req.retry_max_elapsed_ms);
        }
        let target = self.targets.lookup(&req.target_id).await?;
        self.ensure_running(&target.id)?;
        self.check_fence(&target.id, req.fencing_token)?;
        let planned: Vec<PlannedStep> = steps
            .into_iter()
            .zip(&req.steps)
            .map(|((spec, up_checksum), s)| PlannedStep {
                dirty_protocol: needs_dirty_protocol(target.dialect, &spec.sql, spec.transactional),
                backup_tables: if spec.direction == flotilla_core::Direction::Up {
                    s.backup_tables.clone()
                } else {
                    vec![]
                },
                spec,
                up_checksum,
            })
            .collect();
        let lock_wait = match req.lock_wait_ms {
            0 => self.config.lock.wait,
            ms => Duration::from_millis(u64::from(ms)),
        };
        let (tx, rx) = mpsc::channel(EVENT_BUFFER);
        let fence = self.fence.clone();
        let token = req.fencing_token;
        let span = tracing::info_span!(
            "migrate",
            flotilla.target = %target.id,
            flotilla.rollout.id = %req.rollout_id,
            flotilla.project = %project,
            flotilla.fencing_token = req.fencing_token,
            flotilla.steps = planned.len(),
            db.system = target.dialect.db_system(),
        );
        let exec = Executor {
            sink: EventSink::new(
                tx.clone(),
                target.id.clone(),
                req.quiet
                    .then(|| planned.first().map(|p| p.spec.revision.clone()))
                    .flatten(),
            ),
            target,
            project,
            meta: self.meta(&req.rollout_id, req.fencing_token),
            retry,
            lock: self.config.lock.clone(),
            lock_wait,
            cancel: self.shutdown.child_token(),
            expected_state: req.expected_state.clone(),
            allow_foreign: req.allow_foreign,
            group_transactions: !req.transaction_per_step,
            report_fingerprint: req.report_fingerprint,
        };
        self.tasks.spawn(async move {
            let failed = async {
                let e = exec.run(planned).await.err()?;
                flotilla_rpc::telemetry::record_failure(&tracing::Span::current(), &e.to_string());
                Some(e.to_status())
            }
            .instrument(span)
            .await;
            // The `migrate` span has closed by now; only then does the stream end (here, or
            // when `tx` drops), so the server span that covers the stream outlasts it.
            if let Some(status) = failed {
                let _ = tx.send(Err(status)).await;
            }
        });
        // A succeeded step committed the token with the target's fence row.
        let events = ReceiverStream::new(rx).inspect(move |ev| {
            if let Ok(StepEvent {
                event: Some(flotilla_proto::step_event::Event::Succeeded(_)),
                ..
            }) = ev
            {
                fence.accepted(token);
            }
        });
        Ok(Box::pin(events))
    }

    /// The targets a request names (all when empty), rescanning discovery when all are asked.
    async fn select(&self, ids: &[String]) -> Result<Vec<Arc<Target>>, AgentError> {
        if ids.is_empty() {
            self.targets.refresh_if_stale().await;
            return Ok(self.targets.all().await);
        }
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            out.push(self.targets.lookup(id).await?);
        }
        Ok(out)
    }

    /// Take the target's locks (in-process, then database) for an operator write; the
    /// database lock is released when the session is closed.
    async fn locked(
        &self,
        target: &Target,
        project: &Project,
    ) -> Result<(tokio::sync::OwnedMutexGuard<()>, Box<dyn Session>), AgentError> {
        self.ensure_running(&target.id)?;
        let cancel = self.shutdown.child_token();
        let locker = Locker {
            target,
            project,
            wait: self.config.lock.wait,
            max_poll: self.config.lock.max_poll_interval,
            cancel: &cancel,
            events: None,
        };
        let guard = locker.lock_in_process().await?;
        let session = locker.open_locked(true).await.map_err(|f| match f {
            crate::executor::Failure::Driver(e) => driver_error(&target.id, e),
            crate::executor::Failure::Fatal(e) => e,
        })?;
        Ok((guard, session))
    }

    async fn release(mut session: Box<dyn Session>) {
        let _ = session.unlock().await;
        session.close().await;
    }

    /// Record revisions as applied (up) or removed (down) without running SQL. Fenced.
    pub async fn stamp(&self, req: StampRequest) -> Result<StampResponse, Status> {
        let direction = check::stamp_request(&req)?;
        let project = check::project(&req.project)?;
        let target = self.targets.lookup(&req.target_id).await?;
        self.check_fence(&target.id, req.fencing_token)?;
        let meta = self.meta(&req.rollout_id, req.fencing_token);
        let pairs: Vec<(String, String)> = req
            .revisions
            .iter()
            .map(|r| (r.revision.clone(), r.checksum.clone()))
            .collect();
        let (guard, mut session) = self.locked(&target, &project).await?;
        let res = stamp_locked(session.as_mut(), &target.id, &pairs, direction, &meta).await;
        Self::release(session).await;
        drop(guard);
        let status = res?;
        self.fence.accepted(status.fence_token);
        tracing::info!(target = %target.id, revisions = pairs.len(), %direction, "stamped");
        Ok(StampResponse {
            target: Some(target_status(&target, &status, false)),
        })
    }

    /// Resolve the target's dirty step: it counts as applied, or as not applied. Fenced.
    pub async fn repair(&self, req: RepairRequest) -> Result<RepairResponse, Status> {
        check::repair_request(&req)?;
        let project = check::project(&req.project)?;
        let target = self.targets.lookup(&req.target_id).await?;
        self.check_fence(&target.id, req.fencing_token)?;
        let meta = self.meta("", req.fencing_token);
        let (guard, mut session) = self.locked(&target, &project).await?;
        let res = repair_locked(
            session.as_mut(),
            &target.id,
            &req.revision,
            req.applied,
            &meta,
        )
        .await;
        Self::release(session).await;
        drop(guard);
        let status = res?;
        self.fence.accepted(status.fence_token);
        tracing::info!(target = %target.id, revision = %req.revision, applied = req.applied, "repaired");
        Ok(RepairResponse {
            target: Some(target_status(&target, &status, false)),
        })
    }
}
