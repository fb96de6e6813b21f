//! A dirty-protocol step (non-transactional, or MySQL DDL): mark the target dirty, run the
//! SQL, mark the row clean, each its own commit, with retries of transient errors. An error
//! while the SQL runs leaves the target dirty for an operator's `Repair`.

use std::time::Instant;

use flotilla_proto::step_event::Event;
use flotilla_proto::{StepRetrying, StepStarted};

use super::events::EventCtx;
use super::step::{Outcome, Progress};
use super::{Executor, Failure, Link, PlannedStep, millis};
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
