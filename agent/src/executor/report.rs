//! What the end of a step and of a run report: the `StepFailed`/`StepSucceeded`/
//! `StepSkipped` events, the step metrics and logs, and the run's closing `MigrateFinished`.

use std::time::Duration;

use flotilla_proto::step_event::Event;
use flotilla_proto::{StepFailed, StepSkipped, StepSucceeded};

use super::events::EventCtx;
use super::step::Outcome;
use super::{Executor, Link, PlannedStep, millis};
use crate::error::AgentError;

impl Executor {
    /// The last event of a run whose steps all succeeded: the target's state as this
    /// request's session knows it (still under the lock) and, when asked, its catalog
    /// fingerprint, so the coordinator needs neither a Status nor a Validate call. A failure
    /// to read either only leaves the event out (or the fingerprint empty): the steps stand.
    pub(super) async fn finished(&self, link: &mut Link, last: &PlannedStep) {
        let Some(session) = link.session.as_mut() else {
            return;
        };
        // Still under the lock: the next Status of this target can be answered without
        // opening it again.
        session.remember_state().await;
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
        let status = crate::status::target_status(&self.target, state, false);
        self.sink
            .for_step(&last.spec.revision, last.spec.direction)
            .emit(Event::Finished(flotilla_proto::MigrateFinished {
                status: Some(status),
                fingerprint,
            }))
            .await;
    }

    pub(super) async fn fail(
        &self,
        ctx: &EventCtx,
        step: &PlannedStep,
        e: &AgentError,
        dirty: bool,
    ) {
        let rolled_back = matches!(
            e,
            AgentError::Sql {
                rolled_back: true,
                ..
            } | AgentError::VerifyFailed {
                rolled_back: true,
                ..
            }
        );
        let dirty = dirty
            || matches!(
                e,
                AgentError::Sql { dirty: true, .. } | AgentError::VerifyFailed { dirty: true, .. }
            );
        metrics::counter!(
            "flotilla_agent_steps_total",
            "dialect" => self.target.dialect.as_str(),
            "direction" => step.spec.direction.as_str(),
            "outcome" => "failed",
        )
        .increment(1);
        tracing::warn!(error = %e, dirty, rolled_back, "step failed");
        // The step's span, when the failure is a step's (the `migrate` span records the
        // request's failure itself, once).
        let span = tracing::Span::current();
        if span.metadata().is_some_and(|m| m.name() == "step") {
            flotilla_rpc::telemetry::record_failure(&span, &e.to_string());
        }
        ctx.emit(Event::Failed(StepFailed {
            reason: e.failure_reason() as i32,
            message: e.to_string(),
            dirty,
            rolled_back,
        }))
        .await;
    }

    pub(super) async fn succeed(
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
}
