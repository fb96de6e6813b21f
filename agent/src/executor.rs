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
//! stays dirty for an operator's `Repair`.
//!
//! Cancellation (agent shutdown, client gone) is checked between steps and during waits,
//! never inside a database call: the step in flight commits or rolls back.

mod group;
mod lock;

use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use flotilla_proto::step_event::Event;
use flotilla_proto::{
    StepEvent, StepFailed, StepRetrying, StepSkipped, StepStarted, StepSucceeded,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tracing::Instrument;

pub(crate) use lock::Locker;

use crate::config::{LockConfig, RetryConfig};
use crate::driver::{DriverError, ErrorClass, Session, StepMeta, StepSpec};
use crate::error::AgentError;
use crate::history::{HistoryRow, RowStatus, TargetState};
use crate::target::Target;
use crate::types::{Dialect, Direction};

/// Where a Migrate call's events go (the gRPC stream).
#[derive(Clone)]
pub(crate) struct EventSink {
    tx: mpsc::Sender<Result<StepEvent, Status>>,
    target_id: String,
}

impl EventSink {
    pub(crate) fn new(tx: mpsc::Sender<Result<StepEvent, Status>>, target_id: String) -> Self {
        EventSink { tx, target_id }
    }

    /// Whether the client stopped listening.
    pub(crate) fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    pub(crate) fn for_step(&self, revision: &str, direction: Direction) -> EventCtx {
        EventCtx {
            sink: self.clone(),
            revision: revision.to_owned(),
            direction,
        }
    }
}

/// An event sink bound to the step the events are about.
pub(crate) struct EventCtx {
    sink: EventSink,
    revision: String,
    direction: Direction,
}

impl EventCtx {
    pub(crate) async fn emit(&self, event: Event) {
        let ev = StepEvent {
            target_id: self.sink.target_id.clone(),
            revision: self.revision.clone(),
            direction: self.direction.to_proto() as i32,
            event: Some(event),
        };
        // A closed stream means the client left; the executor notices between steps.
        let _ = self.sink.tx.send(Ok(ev)).await;
    }
}

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
    }
}

/// How far a step got, carried across attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Progress {
    /// Nothing of this step was sent to the database.
    Fresh,
    /// The step's transaction (or its dirty mark) was sent: it may have committed.
    Sent,
    /// The dirty mark is committed; the SQL has not run.
    Marked { row_id: i64 },
    /// The non-transactional SQL is running (an error here leaves the target dirty).
    Executing { row_id: i64 },
    /// The SQL ran; the dirty row remains to be marked clean.
    Executed { row_id: i64, duration_ms: u64 },
}

enum Outcome {
    Applied,
    Skipped(&'static str),
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Runs one Migrate request against one target.
pub(crate) struct Executor {
    pub(crate) target: std::sync::Arc<Target>,
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
}

/// The request's session (with its locks) and the target's state as last read on it. The
/// state is kept up to date by the steps this request commits and dropped on any error, so
/// it is read again (under the same lock) before anything is retried.
#[derive(Default)]
pub(crate) struct Link {
    session: Option<Box<dyn Session>>,
    state: Option<TargetState>,
    /// Whether the plan precondition was checked.
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
    fn locker<'a>(&'a self, events: &'a EventCtx) -> Locker<'a> {
        Locker {
            target: &self.target,
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
                let e = AgentError::Cancelled {
                    target: self.target.id.clone(),
                };
                self.fail(&ctx, step, &e, false).await;
                result = Err(e);
                break;
            }
            if !step.backup_tables.is_empty()
                && let Err(e) = self.backup(&mut link, step, &ctx).await
            {
                self.fail(&ctx, step, &e, false).await;
                result = Err(e);
                break;
            }
            let outcome = if step.dirty_protocol {
                let span = tracing::info_span!(
                    "step",
                    target = %self.target.id,
                    revision = %step.spec.revision,
                    direction = %step.spec.direction,
                );
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

    /// The last event of a run whose steps all succeeded: the target's state as this
    /// request's session knows it (still under the lock) and, when asked, its catalog
    /// fingerprint, so the coordinator needs neither a Status nor a Validate call. A failure
    /// to read either only leaves the event out (or the fingerprint empty): the steps stand.
    async fn finished(&self, link: &mut Link, last: &PlannedStep) {
        let Some(session) = link.session.as_mut() else {
            return;
        };
        if link.state.is_none() {
            match session.read_state().await {
                Ok(state) => link.state = Some(state),
                Err(e) => {
                    tracing::warn!(target_id = %self.target.id, error = %e, "cannot read the state after the run");
                    return;
                }
            }
        }
        let fingerprint = if self.report_fingerprint {
            match session.catalog().await {
                Ok(catalog) => catalog.fingerprint(),
                Err(e) => {
                    tracing::warn!(target_id = %self.target.id, error = %e, "cannot fingerprint the catalog after the run");
                    String::new()
                }
            }
        } else {
            String::new()
        };
        let Some(state) = link.state.as_ref() else {
            return;
        };
        let status = crate::agent::target_status(&self.target, state, false);
        self.sink
            .for_step(&last.spec.revision, last.spec.direction)
            .emit(Event::Finished(flotilla_proto::MigrateFinished {
                status: Some(status),
                fingerprint,
            }))
            .await;
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
            link.session = Some(self.locker(ctx).open_locked().await?);
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
            *checked = true;
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

    async fn fail(&self, ctx: &EventCtx, step: &PlannedStep, e: &AgentError, dirty: bool) {
        let rolled_back = matches!(
            e,
            AgentError::Sql {
                rolled_back: true,
                ..
            }
        );
        let dirty = dirty || matches!(e, AgentError::Sql { dirty: true, .. });
        metrics::counter!(
            "flotilla_agent_steps_total",
            "dialect" => self.target.dialect.as_str(),
            "direction" => step.spec.direction.as_str(),
            "outcome" => "failed",
        )
        .increment(1);
        tracing::warn!(error = %e, dirty, rolled_back, "step failed");
        ctx.emit(Event::Failed(StepFailed {
            reason: e.failure_reason() as i32,
            message: e.to_string(),
            dirty,
            rolled_back,
        }))
        .await;
    }

    async fn run_step(
        &self,
        link: &mut Link,
        step: &PlannedStep,
        ctx: &EventCtx,
    ) -> Result<(), AgentError> {
        let started = Instant::now();
        let mut delays = self.retry.delays();
        let mut attempt = 0u32;
        let mut progress = Progress::Fresh;
        loop {
            attempt += 1;
            let res = self.attempt(link, step, attempt, &mut progress, ctx).await;
            // A dirty-protocol step changes the state in several commits: read it afresh.
            link.invalidate();
            let err = match res {
                Ok(outcome) => {
                    self.succeed(ctx, step, outcome, started.elapsed(), attempt)
                        .await;
                    return Ok(());
                }
                Err(Failure::Fatal(e @ AgentError::PlanStale { .. })) => return Err(e),
                Err(Failure::Fatal(e)) => e,
                Err(Failure::Driver(DriverError::Transient { class, message }))
                    if !matches!(progress, Progress::Executing { .. }) =>
                {
                    if class == ErrorClass::Connection {
                        link.reconnect().await;
                    }
                    let next = delays
                        .next()
                        .filter(|d| started.elapsed() + *d <= self.retry.max_elapsed);
                    let Some(delay) = next else {
                        let e = AgentError::RetriesExhausted {
                            target: self.target.id.clone(),
                            revision: step.spec.revision.clone(),
                            attempts: attempt,
                            last_error: format!("{class}: {message}"),
                        };
                        let dirty = matches!(progress, Progress::Executed { .. });
                        self.fail(ctx, step, &e, dirty).await;
                        return Err(e);
                    };
                    metrics::counter!("flotilla_agent_retries_total", "dialect" => self.target.dialect.as_str(), "error_class" => class.as_str())
                        .increment(1);
                    tracing::warn!(attempt, delay_ms = millis(delay), error_class = %class, error = %message, "transient error; retrying");
                    ctx.emit(Event::Retrying(StepRetrying {
                        attempt,
                        delay_ms: millis(delay),
                        error: message,
                        error_class: class.as_str().to_owned(),
                    }))
                    .await;
                    tokio::select! {
                        () = tokio::time::sleep(delay) => continue,
                        () = self.cancel.cancelled() => {
                            AgentError::Cancelled { target: self.target.id.clone() }
                        }
                    }
                }
                Err(Failure::Driver(e)) => self.step_error(step, progress, e),
            };
            let dirty = matches!(
                progress,
                Progress::Executing { .. } | Progress::Executed { .. }
            );
            self.fail(ctx, step, &err, dirty).await;
            return Err(err);
        }
    }

    async fn succeed(
        &self,
        ctx: &EventCtx,
        step: &PlannedStep,
        outcome: Outcome,
        elapsed: Duration,
        attempts: u32,
    ) {
        let dialect = self.target.dialect.as_str();
        let direction = step.spec.direction.as_str();
        let (label, event) = match outcome {
            Outcome::Applied => {
                metrics::histogram!("flotilla_agent_step_duration_seconds", "dialect" => dialect, "direction" => direction)
                    .record(elapsed.as_secs_f64());
                tracing::info!(duration_ms = millis(elapsed), attempts, "step applied");
                let ev = StepSucceeded {
                    duration_ms: millis(elapsed),
                    attempts,
                };
                ("succeeded", Event::Succeeded(ev))
            }
            Outcome::Skipped(reason) => {
                tracing::info!(reason, "step skipped");
                (
                    "skipped",
                    Event::Skipped(StepSkipped {
                        reason: reason.to_owned(),
                    }),
                )
            }
        };
        metrics::counter!("flotilla_agent_steps_total", "dialect" => dialect, "direction" => direction, "outcome" => label)
            .increment(1);
        ctx.emit(event).await;
    }

    /// The final error for a database error that is not retried.
    fn step_error(&self, step: &PlannedStep, progress: Progress, e: DriverError) -> AgentError {
        let target = self.target.id.clone();
        let revision = step.spec.revision.clone();
        match (e, progress) {
            (e @ DriverError::StaleToken { .. }, _) => driver_error(&target, e),
            (DriverError::Transient { class, message }, _) => AgentError::Sql {
                target,
                revision,
                message: format!(
                    "{class} error while the non-transactional step ran ({message}); it may be \
                     half-applied and the target is left dirty"
                ),
                dirty: true,
                rolled_back: false,
            },
            (DriverError::Permanent { message }, Progress::Sent) if !step.dirty_protocol => {
                AgentError::Sql {
                    target,
                    revision,
                    message,
                    dirty: false,
                    rolled_back: true,
                }
            }
            (
                DriverError::Permanent { message },
                Progress::Executing { .. } | Progress::Executed { .. },
            ) => AgentError::Sql {
                target,
                revision,
                message,
                dirty: true,
                rolled_back: false,
            },
            (DriverError::Permanent { message }, _) => AgentError::Database { target, message },
        }
    }

    fn is_ours(&self, row: &HistoryRow, step: &PlannedStep) -> bool {
        row.revision == step.spec.revision
            && row.direction == step.spec.direction
            && row.rollout_id == self.meta.rollout_id
            && row.agent_id == self.meta.agent_id
            && row.fencing_token == self.meta.fencing_token
    }

    /// Whether the step is already done: skipped on a first look, applied (by an earlier
    /// attempt whose reply was lost) when it was sent before.
    fn already_done(
        &self,
        state: &TargetState,
        step: &PlannedStep,
        sent: bool,
    ) -> Result<Option<Outcome>, Failure> {
        let spec = &step.spec;
        let applied = state
            .applied()
            .into_iter()
            .find(|r| r.revision == spec.revision);
        let mismatch = |applied: &str, requested: &str| {
            Failure::Fatal(AgentError::AppliedChecksumMismatch {
                target: self.target.id.clone(),
                revision: spec.revision.clone(),
                applied: applied.to_owned(),
                requested: requested.to_owned(),
            })
        };
        match (spec.direction, applied) {
            (Direction::Up, Some(row)) if row.checksum == spec.checksum => Ok(Some(if sent {
                Outcome::Applied
            } else {
                Outcome::Skipped("already applied")
            })),
            (Direction::Up, Some(row)) => Err(mismatch(&row.checksum, &spec.checksum)),
            (Direction::Down, None) => Ok(Some(if sent {
                Outcome::Applied
            } else {
                Outcome::Skipped("not applied")
            })),
            (Direction::Down, Some(row))
                if !step.up_checksum.is_empty() && row.checksum != step.up_checksum =>
            {
                Err(mismatch(&row.checksum, &step.up_checksum))
            }
            _ => Ok(None),
        }
    }

    /// One attempt at a dirty-protocol step (transactional steps go through `run_group`).
    async fn attempt(
        &self,
        link: &mut Link,
        step: &PlannedStep,
        attempt: u32,
        progress: &mut Progress,
        ctx: &EventCtx,
    ) -> Result<Outcome, Failure> {
        let (session, state) = self.state(link, ctx).await?;
        let state = &*state;
        match *progress {
            Progress::Fresh | Progress::Sent => {
                let sent = *progress == Progress::Sent;
                if let Some(d) = state.dirty() {
                    if !(sent && step.dirty_protocol && self.is_ours(d, step)) {
                        return Err(Failure::Fatal(AgentError::TargetDirty {
                            target: self.target.id.clone(),
                            revision: d.revision.clone(),
                        }));
                    }
                    // Our dirty mark committed before the connection broke; the SQL never ran.
                    *progress = Progress::Marked { row_id: d.id };
                } else {
                    if let Some(outcome) = self.already_done(state, step, sent)? {
                        return Ok(outcome);
                    }
                    ctx.emit(Event::Started(StepStarted { attempt })).await;
                    *progress = Progress::Sent;
                    let row_id = session
                        .mark_dirty(&step.spec, &self.meta)
                        .await
                        .map_err(Failure::Driver)?;
                    *progress = Progress::Marked { row_id };
                }
            }
            Progress::Executed { row_id, .. } => {
                match state
                    .history
                    .iter()
                    .find(|r| r.id == row_id)
                    .map(|r| r.status)
                {
                    Some(RowStatus::Applied) => return Ok(Outcome::Applied),
                    Some(RowStatus::Dirty) => {}
                    _ => {
                        return Err(Failure::Fatal(AgentError::Internal(format!(
                            "target {}: the dirty row of step {} changed while the agent was \
                             reconnecting",
                            self.target.id, step.spec.revision
                        ))));
                    }
                }
            }
            Progress::Marked { .. } | Progress::Executing { .. } => {}
        }
        if let Progress::Marked { row_id } = *progress {
            *progress = Progress::Executing { row_id };
            let t0 = Instant::now();
            session
                .execute_non_transactional(&step.spec.sql)
                .await
                .map_err(Failure::Driver)?;
            *progress = Progress::Executed {
                row_id,
                duration_ms: millis(t0.elapsed()),
            };
        }
        match *progress {
            Progress::Executed {
                row_id,
                duration_ms,
            } => {
                session
                    .mark_clean(row_id, duration_ms)
                    .await
                    .map_err(Failure::Driver)?;
                Ok(Outcome::Applied)
            }
            other => Err(Failure::Fatal(AgentError::Internal(format!(
                "step protocol reached an unexpected state {other:?}"
            )))),
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
