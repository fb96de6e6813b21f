//! A transactional run of steps: consecutive transactional steps of one request applied in
//! ONE transaction (fence check and raise, each step's SQL and history row, one commit), or a
//! single step when the request asks for a transaction per step.
//!
//! Retries follow the single-step protocol: a transient error rolls the whole transaction
//! back (a broken connection may have committed it: the state is read again, under the lock,
//! and our history rows tell), then the run is tried again after a backoff delay. A permanent
//! error fails the step that raised it and reports that the steps before it in the same
//! transaction were rolled back with it.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use flotilla_proto::StepRetrying;
use flotilla_proto::StepStarted;
use flotilla_proto::step_event::Event;
use tracing::Instrument;

use super::events::EventCtx;
use super::probe::Seen;
use super::step::{Outcome, Progress};
use super::{Executor, Failure, Link, PlannedStep, millis};
use crate::driver::{DriverError, ErrorClass, StepObserver, StepSpec};
use crate::error::AgentError;
use flotilla_core::history::TargetState;

/// Streams `StepStarted` for the step the driver is about to run, or stops the run before
/// it once the agent shuts down or the client left (the steps before it commit).
struct Started<'a> {
    exec: &'a Executor,
    ctxs: Vec<&'a EventCtx>,
    /// Index in the unit of each step the driver runs.
    todo: &'a [usize],
    unit: &'a [PlannedStep],
    attempt: u32,
    spans: &'a StepSpans,
}

/// One `step` span per step of the unit, opened when the step first starts and closed when a
/// later step starts (or the unit ends): each step of a shared transaction is its own span in
/// the trace, and a retried step keeps the span it had (its retry events are on it). A span
/// records at its close how many attempts it covered and the time the failed ones and their
/// backoff took (`attempts.rs`).
struct StepSpans(std::sync::Mutex<SpanSlots>);

struct SpanSlots {
    /// Per step: its open span, with the attempt it opened in and that attempt's start
    /// (time since the unit's first attempt started).
    open: Vec<Option<(tracing::Span, u32, Duration)>>,
    created: Vec<bool>,
    /// The attempt running now, and when it started (since the first one started).
    now: (u32, Duration),
}

impl SpanSlots {
    fn close(&mut self, index: usize) {
        if let Some((span, attempt, since)) = self.open[index].take() {
            let (now, now_since) = self.now;
            super::attempts::record(
                &span,
                now.saturating_sub(attempt) + 1,
                now_since.saturating_sub(since),
            );
        }
    }
}

impl StepSpans {
    fn new(n: usize) -> Self {
        StepSpans(std::sync::Mutex::new(SpanSlots {
            open: (0..n).map(|_| None).collect(),
            created: vec![false; n],
            now: (1, Duration::ZERO),
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SpanSlots> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Attempt `attempt` of the unit starts, `since` after the first one did.
    fn attempt(&self, attempt: u32, since: Duration) {
        self.lock().now = (attempt, since);
    }

    fn start(&self, exec: &Executor, index: usize, step: &PlannedStep) {
        let mut g = self.lock();
        for i in 0..index {
            g.close(i);
        }
        if !g.created[index] {
            g.created[index] = true;
            let now = g.now;
            g.open[index] = Some((super::attempts::step_span!(exec, step), now.0, now.1));
        }
    }

    /// The span of step `index`, while it is open.
    fn get(&self, index: usize) -> Option<tracing::Span> {
        let g = self.lock();
        g.open
            .get(index)
            .and_then(|s| s.as_ref().map(|s| s.0.clone()))
    }
}

impl Drop for StepSpans {
    /// The unit ended: the spans still open close now, with what they covered.
    fn drop(&mut self) {
        let mut g = self.lock();
        for i in 0..g.open.len() {
            g.close(i);
        }
    }
}

#[async_trait]
impl StepObserver for Started<'_> {
    async fn started(&self, index: usize) -> bool {
        if index > 0 && (self.exec.cancel.is_cancelled() || self.exec.sink.is_closed()) {
            return false;
        }
        if let Some(&u) = self.todo.get(index) {
            self.spans.start(self.exec, u, &self.unit[u]);
        }
        if let Some(ctx) = self.ctxs.get(index) {
            ctx.emit(Event::Started(StepStarted {
                attempt: self.attempt,
            }))
            .await;
        }
        true
    }
}

/// What one attempt left behind for the next.
#[derive(Default)]
struct Carry {
    /// The transaction was sent: it may have committed.
    sent: bool,
    /// Steps already reported (skipped or applied), by index in the unit.
    reported: Vec<bool>,
    /// Who held the lock the attempts waited for, as last seen.
    seen: Seen,
}

impl Executor {
    /// Run `unit` (transactional steps) to success or failure; the failure's event is
    /// streamed before this returns the error.
    pub(super) async fn run_group(
        &self,
        link: &mut Link,
        unit: &[PlannedStep],
    ) -> Result<(), AgentError> {
        let ctxs: Vec<EventCtx> = unit
            .iter()
            .map(|s| self.sink.for_step(&s.spec.revision, s.spec.direction))
            .collect();
        let started = Instant::now();
        let mut delays = self.retry.delays();
        let mut attempt = 0u32;
        let spans = StepSpans::new(unit.len());
        let mut carry = Carry {
            sent: false,
            reported: vec![false; unit.len()],
            seen: Seen::default(),
        };
        loop {
            attempt += 1;
            spans.attempt(attempt, started.elapsed());
            let (index, failure, todo) = match self
                .group_attempt(link, unit, &ctxs, attempt, &mut carry, &spans)
                .await
            {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            link.invalidate();
            let (step, ctx) = (&unit[index], &ctxs[index]);
            let err = match failure {
                Failure::Fatal(e) if super::refused_before_steps(&e) => return Err(e),
                Failure::Fatal(e) => e,
                Failure::Driver(DriverError::Transient { class, message }) => {
                    if class == ErrorClass::Connection {
                        link.reconnect().await;
                    }
                    let next = delays
                        .next()
                        .filter(|d| started.elapsed() + *d <= self.retry.max_elapsed);
                    let Some(delay) = next else {
                        let last = DriverError::Transient { class, message };
                        let e = self.exhausted(
                            &step.spec.revision,
                            &step.spec.bounds,
                            attempt,
                            last,
                            &carry.seen,
                        );
                        let span = spans.get(index).unwrap_or_else(tracing::Span::current);
                        self.fail(ctx, step, &e, false).instrument(span).await;
                        return Err(e);
                    };
                    metrics::counter!("flotilla_agent_retries_total", "dialect" => self.target.dialect.as_str(), "error_class" => class.as_str())
                        .increment(1);
                    let span = spans.get(index).unwrap_or_else(tracing::Span::current);
                    span.in_scope(|| tracing::warn!(attempt, delay_ms = millis(delay), error_class = %class, error = %message, "transient error; retrying"));
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
                Failure::Driver(e) => {
                    let mut e = self.step_error(step, Progress::Sent, e);
                    let before: Vec<&str> = todo
                        .iter()
                        .filter(|&&i| i < index)
                        .map(|&i| unit[i].spec.revision.as_str())
                        .collect();
                    if !before.is_empty()
                        && let AgentError::Sql { message: note, .. }
                        | AgentError::CheckFailed { note, .. }
                        | AgentError::VerifyFailed { note, .. } = &mut e
                    {
                        note.push_str(&format!(
                            "; the steps before it in the same transaction ({}) were rolled back \
                             with it",
                            before.join(", ")
                        ));
                    }
                    e
                }
            };
            // In the step's span: the failure is recorded on it (status ERROR, `exception`).
            let span = spans.get(index).unwrap_or_else(tracing::Span::current);
            self.fail(ctx, step, &err, false).instrument(span).await;
            return Err(err);
        }
    }

    /// One attempt: read the state, report what is already done, apply the rest in one
    /// transaction. On error: the index of the step it belongs to, and the steps tried.
    async fn group_attempt(
        &self,
        link: &mut Link,
        unit: &[PlannedStep],
        ctxs: &[EventCtx],
        attempt: u32,
        carry: &mut Carry,
        spans: &StepSpans,
    ) -> Result<(), (usize, Failure, Vec<usize>)> {
        let (session, state) = self
            .state(link, &ctxs[0])
            .await
            .map_err(|f| (0, f, vec![]))?;
        let pending: Vec<usize> = (0..unit.len()).filter(|&i| !carry.reported[i]).collect();
        if carry.sent
            && let Some(&first) = pending.first()
            && self.committed(state, &unit[first])
        {
            // The commit went through before the connection broke: all of it did.
            for &i in &pending {
                let duration = committed_duration(state, self, &unit[i]);
                self.succeed(&ctxs[i], &unit[i], Outcome::Applied, duration, attempt)
                    .await;
                carry.reported[i] = true;
            }
            return Ok(());
        }
        if let Some(d) = state.dirty() {
            return Err((
                0,
                Failure::Fatal(AgentError::TargetDirty {
                    target: self.target.id.clone(),
                    revision: d.revision.clone(),
                }),
                vec![],
            ));
        }
        let mut todo = Vec::with_capacity(pending.len());
        for &i in &pending {
            match self
                .already_done(state, &unit[i], false)
                .map_err(|f| (i, f, vec![]))?
            {
                Some(outcome) => {
                    self.succeed(&ctxs[i], &unit[i], outcome, Duration::ZERO, attempt)
                        .await;
                    carry.reported[i] = true;
                }
                None => todo.push(i),
            }
        }
        if todo.is_empty() {
            return Ok(());
        }
        let specs: Vec<StepSpec> = todo.iter().map(|&i| unit[i].spec.clone()).collect();
        let observer = Started {
            exec: self,
            ctxs: todo.iter().map(|&i| &ctxs[i]).collect(),
            todo: &todo,
            unit,
            attempt,
            spans,
        };
        carry.sent = true;
        let bound = specs
            .iter()
            .map(|s| s.bounds.lock_timeout)
            .min()
            .unwrap_or_default();
        let waiter = session.backend_id();
        let applied = self
            .watched(
                waiter,
                bound,
                &mut carry.seen,
                session.apply_group(&specs, &self.meta, &observer),
            )
            .await;
        match applied {
            Ok(rows) => {
                for (&i, row) in todo.iter().zip(&rows) {
                    let duration = Duration::from_millis(row.duration_ms);
                    self.succeed(&ctxs[i], &unit[i], Outcome::Applied, duration, attempt)
                        .await;
                    carry.reported[i] = true;
                }
                state.fence_token = state.fence_token.max(self.meta.fencing_token);
                let ran = rows.len();
                state.history.extend(rows);
                if let Some(&next) = todo.get(ran) {
                    // Stopped between steps: what ran committed, the rest never started.
                    return Err((next, Failure::Fatal(self.stopped()), vec![]));
                }
                Ok(())
            }
            Err(g) => {
                let index = todo.get(g.index).copied().unwrap_or(todo[0]);
                Err((index, Failure::Driver(g.error), todo))
            }
        }
    }

    /// Whether this request's history row for `step` is in `state` (its transaction committed).
    fn committed(&self, state: &TargetState, step: &PlannedStep) -> bool {
        state.history.iter().any(|r| self.is_ours(r, step))
    }
}

/// The duration recorded on this request's history row for `step`.
fn committed_duration(state: &TargetState, exec: &Executor, step: &PlannedStep) -> Duration {
    state
        .history
        .iter()
        .rev()
        .find(|r| exec.is_ours(r, step))
        .map_or(Duration::ZERO, |r| Duration::from_millis(r.duration_ms))
}
