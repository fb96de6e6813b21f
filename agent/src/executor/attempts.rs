//! What a `step` span records about its attempts, so a trace shows the time a step lost to
//! transient errors (lock timeouts, busy databases, cut connections), not only its last
//! attempt: `flotilla.attempts` (how many attempts the step's span covers) and
//! `flotilla.retry_wait_ms` (how long the failed ones and the backoff delays after them took,
//! before the last attempt started). Both fields are declared `Empty` where the span is
//! created (`STEP_FIELDS`) and recorded once, when the step ends.

use std::time::Duration;

/// Record the attempts on `span` (a `step` span created with both fields).
pub(super) fn record(span: &tracing::Span, attempts: u32, retry_wait: Duration) {
    span.record("flotilla.attempts", attempts);
    span.record("flotilla.retry_wait_ms", super::millis(retry_wait));
}

/// A `step` span for `step` of `exec`, with the attempt fields to record at its end.
macro_rules! step_span {
    ($exec:expr, $step:expr) => {
        tracing::info_span!(
            "step",
            flotilla.target = %$exec.target.id,
            flotilla.revision = %$step.spec.revision,
            flotilla.direction = %$step.spec.direction,
            flotilla.rollout.id = %$exec.meta.rollout_id,
            db.system = $exec.target.dialect.db_system(),
            flotilla.attempts = tracing::field::Empty,
            flotilla.retry_wait_ms = tracing::field::Empty,
        )
    };
}
pub(super) use step_span;
