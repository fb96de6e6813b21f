//! Applies a Migrate request's steps to one target, in order, under the target's locks:
//! the step protocol (transactional vs dirty-marking), idempotency, and retries of transient
//! errors with exponential backoff and jitter (`backon`).
//!
//! Per step: read the target's state; refuse a dirty target or a stale token; skip a step
//! already applied (up) or not applied (down); else run it. A transient error is retried
//! after a backoff delay, on a new session for connection errors (re-taking the lock), and
//! the state is read again first, so a step whose commit happened but whose reply was lost
//! is recognised and not applied twice. The only transient error never retried is one
//! raised while a non-transactional step's SQL runs: it may be half-applied, so the target
//! stays dirty for an operator's `Repair` (except a lock wait timeout or deadlock, which
//! applied nothing of its statement on MySQL, nor on PostgreSQL outside a transaction block:
//! the step resumes there). Every step runs with its
//! lock-wait bound (`StepSpec::bounds`), so a lock timeout is one of the retried errors.
//!
//! Cancellation (agent shutdown, client gone) is checked between steps and during waits,
//! never inside a database call: the step in flight commits or rolls back.
//!
//! Here: the request's run over its steps, its session and cached state (`Link`), and the
//! backup before a step. Beside it: `executor/attempts.rs` (what a step span records about
//! its attempts), `executor/lock.rs` (lock waits), `executor/probe.rs`
//! (who holds the lock a step waits for), `executor/dirty.rs` (a
//! dirty-protocol step), `executor/group.rs` (a transactional run), `executor/step.rs` (how
//! far a step got and whether it is already done), `executor/report.rs` (events and metrics
//! at a step's and the run's end), `executor/events.rs` (the event stream).

mod attempts;
mod dirty;
mod events;
mod group;
mod lock;
mod probe;
mod report;
mod step;

use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub(crate) use events::{EventCtx, EventSink};
pub(crate) use lock::Locker;

use crate::config::{LockConfig, RetryConfig};
use crate::driver::{DriverError, Session, StepMeta, StepSpec};
use crate::error::AgentError;
use crate::target::Target;
use flotilla_core::Dialect;
use flotilla_core::history::TargetState;

/// Why an attempt stopped: a database error (transient ones may be retried) or a final one.
pub(crate) enum Failure {
    Driver(DriverError),
    Fatal(AgentError),
}

/// A validated step of a request.
#[derive(Debug, Clone)]
pub(crate) struct PlannedStep {
    pub(crate) spec: StepSpec,
    /// Expected checksum of the applied revision for a down step ("" = not checked).
    pub(crate) up_checksum: String,
    /// Mark dirty / run / mark clean instead of one transaction.
    pub(crate) dirty_protocol: bool,
    /// Tables to back up before the step (up steps only); such a step runs alone.
    pub(crate) backup_tables: Vec<String>,
}

/// Whether a step must use the dirty-marking protocol: non-transactional steps, and MySQL
/// steps whose statements commit implicitly (DDL).
pub(crate) fn needs_dirty_protocol(dialect: Dialect, sql: &str, transactional: bool) -> bool {
    !transactional
        || (dialect == Dialect::Mysql && crate::driver::mysql::mysql_needs_dirty_protocol(sql))
}

impl RetryConfig {
    /// Delays between attempts: exponential with jitter, capped at `max_delay`, at most
    /// `max_attempts - 1` of them (the time bound is checked by the caller).
    fn delays(&self) -> impl Iterator<Item = Duration> + use<> {
        let max = self.max_delay;
        ExponentialBuilder::default()
            .with_jitter()
            .with_min_delay(self.initial_delay)
            .with_max_delay(self.max_delay)
            .with_max_times(self.max_attempts.saturating_sub(1) as usize)
            .build()
            .map(move |d| d.min(max))
    }
}

/// Map a database error outside a step (status, stamp, repair) to an agent error.
pub(crate) fn driver_error(target: &str, e: DriverError) -> AgentError {
    match e {
        DriverError::StaleToken { offered, current } => AgentError::StaleToken {
            target: target.to_owned(),
            offered,
            current,
        },
        DriverError::Transient { class, message } => AgentError::Unavailable {
            target: target.to_owned(),
            message: format!("{class}: {message}"),
        },
        DriverError::Permanent { message } => AgentError::Database {
            target: target.to_owned(),
            message,
        },
        DriverError::Guard(g) => AgentError::Database {
            target: target.to_owned(),
            message: g.to_string(),
        },
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Runs one Migrate request against one target.
pub(crate) struct Executor {
    pub(crate) target: std::sync::Arc<Target>,
    /// Whose history, fence and migration lock on the target this run uses.
    pub(crate) project: flotilla_core::project::Project,
    pub(crate) meta: StepMeta,
    pub(crate) retry: RetryConfig,
    pub(crate) lock: LockConfig,
    /// Bound on each lock wait for this request.
    pub(crate) lock_wait: Duration,
    pub(crate) cancel: CancellationToken,
    pub(crate) sink: EventSink,
    /// `MigrateRequest.expected_state`: the state digest the plan was computed from ("" =
    /// no precondition). Checked once, under the lock, before the first step.
    pub(crate) expected_state: String,
    /// Consecutive transactional steps share one transaction (the default).
    pub(crate) group_transactions: bool,
    /// `MigrateRequest.report_fingerprint`: fingerprint the catalog for `MigrateFinished`.
    pub(crate) report_fingerprint: bool,
    /// `MigrateRequest.allow_foreign`: migrate a target that has another tool's version
    /// table and no Flotilla history. Without it such a target is refused under the lock,
    /// before any step (checked once, with the plan precondition).
    pub(crate) allow_foreign: bool,
}

/// Refusals of the request as a whole, found under the lock before any step ran: returned
/// as the stream's error, with no `StepFailed` event (nothing failed).
pub(crate) fn refused_before_steps(e: &AgentError) -> bool {
    matches!(
        e,
        AgentError::PlanStale { .. } | AgentError::ForeignHistory { .. }
    )
}

/// The request's session (with its locks) and the target's state as last read on it. The
/// state is kept up to date by the steps this request commits and dropped on any error, so
/// it is read again (under the same lock) before anything is retried.
#[derive(Default)]
pub(crate) struct Link {
    session: Option<Box<dyn Session>>,
    state: Option<TargetState>,
    /// Whether the plan precondition and the foreign-table check passed (and Flotilla's
    /// tables were made sure of, after them).
    checked: bool,
}

impl Link {
    /// Forget the cached state (after an error, or a step that changed it out of band).
    fn invalidate(&mut self) {
        self.state = None;
    }

    /// Drop the session (its connection broke); the next attempt reconnects and re-locks.
    async fn reconnect(&mut self) {
        self.state = None;
        if let Some(session) = self.session.take() {
            session.close().await;
        }
    }
}

impl Executor {
    /// Why the run stops before its next step: the agent shuts down, or the caller left.
    fn stopped(&self) -> AgentError {
        AgentError::Cancelled {
            target: self.target.id.clone(),
            client_left: !self.cancel.is_cancelled() && self.sink.is_closed(),
        }
    }

    fn locker<'a>(&'a self, events: &'a EventCtx) -> Locker<'a> {
        Locker {
            target: &self.target,
            project: &self.project,
            wait: self.lock_wait,
            max_poll: self.lock.max_poll_interval,
            cancel: &self.cancel,
            events: Some(events),
        }
    }

    /// Apply `steps` in order; the first failure stops the request (its `StepFailed` event is
    /// already streamed when this returns the error). Consecutive transactional steps run as
    /// one transaction unless the request asks for one per step; dirty-protocol steps run
    /// alone.
    pub(crate) async fn run(self, steps: Vec<PlannedStep>) -> Result<(), AgentError> {
        let Some(first) = steps.first() else {
            return Ok(());
        };
        let first_ctx = self
            .sink
            .for_step(&first.spec.revision, first.spec.direction);
        let guard = match self.locker(&first_ctx).lock_in_process().await {
            Ok(g) => g,
            Err(e) => {
                self.fail(&first_ctx, first, &e, false).await;
                return Err(e);
            }
        };
        let held = Instant::now();
        let mut link = Link::default();
        let mut result = Ok(());
        for unit in units(&steps, self.group_transactions) {
            let step = &unit[0];
            let ctx = self.sink.for_step(&step.spec.revision, step.spec.direction);
            if self.cancel.is_cancelled() || self.sink.is_closed() {
                let e = self.stopped();
                self.fail(&ctx, step, &e, false).await;
                result = Err(e);
                break;
            }
            if !step.backup_tables.is_empty()
                && let Err(e) = self.backup(&mut link, step, &ctx).await
            {
                if !refused_before_steps(&e) {
                    self.fail(&ctx, step, &e, false).await;
                }
                result = Err(e);
                break;
            }
            let outcome = if step.dirty_protocol {
                let span = attempts::step_span!(self, step);
                self.run_step(&mut link, step, &ctx).instrument(span).await
            } else {
                // Each step of the run gets its own `step` span (opened as it starts).
                self.run_group(&mut link, unit).await
            };
            if let Err(e) = outcome {
                result = Err(e);
                break;
            }
        }
        if result.is_ok()
            && let Some(last) = steps.last()
        {
            self.finished(&mut link, last).await;
        }
        if let Some(mut session) = link.session.take() {
            if let Err(e) = session.unlock().await {
                tracing::debug!(error = %e, "unlock failed; closing the connection releases it");
            }
            session.close().await;
        }
        drop(guard);
        metrics::histogram!("flotilla_agent_lock_held_seconds", "dialect" => self.target.dialect.as_str())
            .record(held.elapsed().as_secs_f64());
        result
    }

    /// The target's state on the request's session (connecting and locking first if needed),
    /// from the cache when nothing changed it since it was read. The first read checks the
    /// plan precondition.
    async fn state<'l>(
        &self,
        link: &'l mut Link,
        ctx: &EventCtx,
    ) -> Result<(&'l mut Box<dyn Session>, &'l mut TargetState), Failure> {
        if link.session.is_none() {
            link.state = None;
            // The request's first session creates Flotilla's tables only once the checks
            // below passed: a refused target is left exactly as it was.
            link.session = Some(self.locker(ctx).open_locked(link.checked).await?);
        }
        let Link {
            session,
            state,
            checked,
        } = link;
        let session = session
            .as_mut()
            .ok_or_else(|| Failure::Fatal(AgentError::Internal("no session".into())))?;
        if state.is_none() {
            *state = Some(session.read_state().await.map_err(Failure::Driver)?);
        }
        let state = state
            .as_mut()
            .ok_or_else(|| Failure::Fatal(AgentError::Internal("no state".into())))?;
        if !*checked {
            if !self.expected_state.is_empty() {
                let found = state.digest();
                if !found.eq_ignore_ascii_case(&self.expected_state) {
                    return Err(Failure::Fatal(AgentError::PlanStale {
                        target: self.target.id.clone(),
                        expected: self.expected_state.clone(),
                        found,
                    }));
                }
            }
            // Another tool migrated this target and Flotilla never did: a plan from base
            // would re-run what that tool ran. One query when it has no such table.
            if !self.allow_foreign && state.history.is_empty() {
                let foreign = session.foreign_tables().await.map_err(Failure::Driver)?;
                if let Some(t) = foreign.first() {
                    return Err(Failure::Fatal(AgentError::ForeignHistory {
                        target: self.target.id.clone(),
                        reason: t.blocked_reason(&self.target.id),
                    }));
                }
            }
            session.ensure_schema().await.map_err(Failure::Driver)?;
            *checked = true;
        }
        if self.meta.fencing_token < state.fence_token {
            return Err(Failure::Driver(DriverError::StaleToken {
                offered: self.meta.fencing_token,
                current: state.fence_token,
            }));
        }
        Ok((session, state))
    }

    /// Back up the step's tables on the request's session, under its lock, before the step
    /// runs; nothing when the step is already applied. A failure fails the step untouched.
    async fn backup(
        &self,
        link: &mut Link,
        step: &PlannedStep,
        ctx: &EventCtx,
    ) -> Result<(), AgentError> {
        let failed = |message: String| AgentError::BackupFailed {
            target: self.target.id.clone(),
            revision: step.spec.revision.clone(),
            message,
        };
        let (session, state) = match self.state(link, ctx).await {
            Ok(s) => s,
            Err(Failure::Fatal(e)) => return Err(e),
            Err(Failure::Driver(e @ DriverError::StaleToken { .. })) => {
                return Err(driver_error(&self.target.id, e));
            }
            Err(Failure::Driver(e)) => return Err(failed(e.to_string())),
        };
        let applied = state
            .applied()
            .iter()
            .any(|r| r.revision == step.spec.revision && r.checksum == step.spec.checksum);
        if applied {
            return Ok(());
        }
        let res = session
            .backup(&step.backup_tables, &step.spec.revision, &self.meta)
            .await;
        match res {
            Ok(records) => {
                for r in &records {
                    tracing::info!(table = %r.table, location = %r.location, rows = r.rows, bytes = r.bytes, "backed up");
                }
                Ok(())
            }
            Err(e) => {
                link.reconnect().await;
                Err(failed(e.to_string()))
            }
        }
    }
}

/// Split a request's steps into what runs together: a maximal run of consecutive
/// transactional steps (one transaction), or one dirty-protocol step. With `group` false
/// every step is its own unit.
fn units(steps: &[PlannedStep], group: bool) -> Vec<&[PlannedStep]> {
    let mut out = Vec::new();
    let mut start = 0;
    for i in 0..steps.len() {
        let next_joins = group
            && !steps[i].dirty_protocol
            && steps
                .get(i + 1)
                .is_some_and(|n| !n.dirty_protocol && n.backup_tables.is_empty());
        if !next_joins {
            out.push(&steps[start..=i]);
            start = i + 1;
        }
    }
    out
}
