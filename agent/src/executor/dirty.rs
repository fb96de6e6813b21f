//! A dirty-protocol step (non-transactional, or MySQL DDL): mark the target dirty, run the
//! SQL, mark the row clean, each its own commit, with retries of transient errors. An error
//! while the SQL runs leaves the target dirty for an operator's `Repair`, except a statement
//! that failed on its lock wait or a deadlock (MySQL 1205/1213; PostgreSQL 55P03/40P01 outside
//! a transaction block, `CREATE INDEX CONCURRENTLY` included: `driver/postgres/concurrently.rs`):
//! it applied nothing, so the step is retried from that statement (the ones before it are done). When the retry
//! budget runs out with no statement done, the dirty row is abandoned: the target is clean.
//! A `-- migrate:check` runs before the dirty mark (a failure leaves the target untouched); a
//! `-- migrate:verify` runs after the statements, before the mark clean (a failure leaves the
//! target dirty, the reason in the step's failure).

use std::time::Instant;

use flotilla_proto::step_event::Event;
use flotilla_proto::{StepRetrying, StepStarted};

use super::attempts;
use super::events::EventCtx;
use super::probe::Seen;
use super::step::{Outcome, Progress};
use super::{Executor, Failure, Link, PlannedStep, millis};
use crate::driver::guard::GuardKind;
use crate::driver::{DriverError, ErrorClass};
use crate::error::AgentError;
use flotilla_core::history::RowStatus;

impl Executor {
    pub(super) async fn run_step(
        &self,
        link: &mut Link,
        step: &PlannedStep,
        ctx: &EventCtx,
    ) -> Result<(), AgentError> {
        let started = Instant::now();
        let mut delays = self.retry.delays();
        let mut attempt = 0u32;
        let mut progress = Progress::Fresh;
        let mut seen = Seen::default();
        // On the step span (current here): the attempts and the time lost before the last.
        let record = |attempt: u32, last_start: Instant| {
            attempts::record(
                &tracing::Span::current(),
                attempt,
                last_start.duration_since(started),
            );
        };
        loop {
            attempt += 1;
            let last_start = Instant::now();
            let res = self
                .attempt(link, step, attempt, &mut progress, ctx, &mut seen)
                .await;
            // A dirty-protocol step changes the state in several commits: read it afresh.
            link.invalidate();
            let err = match res {
                Ok(outcome) => {
                    record(attempt, last_start);
                    self.succeed(ctx, step, outcome, started.elapsed(), attempt)
                        .await;
                    return Ok(());
                }
                Err(Failure::Fatal(e)) if super::refused_before_steps(&e) => return Err(e),
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
                        let last = DriverError::Transient { class, message };
                        let mut e = self.exhausted(
                            &step.spec.revision,
                            &step.spec.bounds,
                            attempt,
                            last,
                            &seen,
                        );
                        let dirty = match progress {
                            Progress::Executed { .. } => true,
                            Progress::Marked { row_id, done: 0 } => {
                                !self.abandon(link, step, row_id, ctx).await
                            }
                            Progress::Marked { done, .. } => {
                                e = AgentError::Sql {
                                    target: self.target.id.clone(),
                                    revision: step.spec.revision.clone(),
                                    message: format!(
                                        "{e}; but statements 1 to {done} of the step ran before \
                                         and stay applied, so the target is left dirty"
                                    ),
                                    dirty: true,
                                    rolled_back: false,
                                };
                                true
                            }
                            _ => false,
                        };
                        record(attempt, last_start);
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
                            AgentError::Cancelled { target: self.target.id.clone(), client_left: false }
                        }
                    }
                }
                Err(Failure::Driver(e)) => self.step_error(step, progress, e),
            };
            let dirty = matches!(
                progress,
                Progress::Executing { .. } | Progress::Executed { .. }
            );
            record(attempt, last_start);
            self.fail(ctx, step, &err, dirty).await;
            return Err(err);
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
        seen: &mut Seen,
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
                    *progress = Progress::Marked {
                        row_id: d.id,
                        done: 0,
                    };
                } else {
                    if let Some(outcome) = self.already_done(state, step, sent)? {
                        return Ok(outcome);
                    }
                    ctx.emit(Event::Started(StepStarted { attempt })).await;
                    // Under the migration lock, before anything of the step is written.
                    if !step.spec.check.is_empty() {
                        session
                            .guard(&step.spec, GuardKind::Check)
                            .await
                            .map_err(Failure::Driver)?;
                    }
                    *progress = Progress::Sent;
                    let row_id = session
                        .mark_dirty(&step.spec, &self.meta)
                        .await
                        .map_err(Failure::Driver)?;
                    *progress = Progress::Marked { row_id, done: 0 };
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
        if let Progress::Marked { row_id, done } = *progress {
            *progress = Progress::Executing { row_id, done };
            let t0 = Instant::now();
            let waiter = session.backend_id();
            let ran = self
                .watched(
                    waiter,
                    step.spec.bounds.lock_timeout,
                    seen,
                    session.run_statements(&step.spec, done),
                )
                .await;
            if let Err(f) = ran {
                *progress = if f.resumable {
                    Progress::Marked {
                        row_id,
                        done: f.done,
                    }
                } else {
                    Progress::Executing {
                        row_id,
                        done: f.done,
                    }
                };
                return Err(Failure::Driver(f.error));
            }
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
                // Every attempt that reaches the mark clean verifies first (a retry after a
                // broken connection too): a failure leaves the target dirty.
                if !step.spec.verify.is_empty() {
                    session
                        .guard(&step.spec, GuardKind::Verify)
                        .await
                        .map_err(Failure::Driver)?;
                }
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

    /// Turn this step's dirty row (`row_id`, no statement of it ran) into `abandoned`, so the
    /// target is not left dirty by a step that applied nothing. False when that failed (the
    /// target then stays dirty for an operator).
    async fn abandon(
        &self,
        link: &mut Link,
        step: &PlannedStep,
        row_id: i64,
        ctx: &EventCtx,
    ) -> bool {
        let res = match self.state(link, ctx).await {
            Ok((session, state)) => {
                let ours = state.dirty().is_some_and(|d| d.id == row_id);
                if !ours {
                    return state.dirty().is_none();
                }
                session
                    .repair(&step.spec.revision, false, &self.meta)
                    .await
                    .map_err(|e| e.to_string())
            }
            Err(Failure::Driver(e)) => Err(e.to_string()),
            Err(Failure::Fatal(e)) => Err(e.to_string()),
        };
        link.invalidate();
        match res {
            Ok(()) => {
                tracing::info!(
                    row_id,
                    "no statement of the step ran: its dirty mark is abandoned"
                );
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not abandon the dirty mark; the target stays dirty");
                false
            }
        }
    }
}
