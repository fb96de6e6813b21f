//! The metric gate between waves: after the canary and after each wave but the last, the
//! rollout's PromQL query is evaluated against Prometheus throughout its window (every
//! `evaluation_interval`, and once more at the window's end); the next wave starts only if
//! every evaluation returned an empty result or only zeros. A non-zero value (NaN included),
//! an error answer or an unreachable Prometheus halts the rollout, naming the query, the
//! value and series, the time and the wave: a gate that cannot be evaluated never passes.
//!
//! While it evaluates, the rollout record carries a [`GateWait`] (window, evaluations, time
//! left), written after each evaluation, so `rollout watch` shows it. A pause stops the gate;
//! on resume its window starts again from the beginning. An abort ends it at once. A new
//! leader resumes at the gated wave and runs the whole window again.

use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::prometheus::{PrometheusClient, QueryError, Sample};
use crate::rollout::metric_gate::evaluation_interval;
use crate::rollout::{GateWait, MetricGate, RolloutRecord, RolloutSpec, RolloutState, now_ms};

use super::{Control, Engine, EngineError, Term};

/// How a metric gate ended.
pub(super) enum GateEnd {
    /// The window passed: the next wave may start.
    Passed,
    /// The rollout must halt, for this reason.
    Halted(String),
    /// The rollout was aborted while the gate waited.
    Aborted,
}

/// "the canary (wave 0)" or "wave N", as gate messages name the wave they follow.
fn wave_name(rec: &RolloutRecord, wave: u32) -> String {
    if wave == 0 && rec.spec.canary > 0 {
        "the canary (wave 0)".into()
    } else {
        format!("wave {wave}")
    }
}

fn rfc3339(unix_ms: i64) -> String {
    let at = std::time::UNIX_EPOCH + Duration::from_millis(u64::try_from(unix_ms).unwrap_or(0));
    humantime::format_rfc3339_millis(at).to_string()
}

fn human(d: Duration) -> String {
    humantime::format_duration(Duration::from_millis(d.as_millis() as u64)).to_string()
}

/// The halt message of a sample that is not 0.
fn offending(gate: &MetricGate, after: &str, s: &Sample) -> String {
    format!(
        "metric gate after {after}: `{}` returned {} for {} at {}; the next wave did not start: \
         find out why, then start a new rollout",
        gate.query,
        s.raw,
        s.series(),
        rfc3339(s.at_unix_ms)
    )
}

/// The halt message of a query that could not be evaluated.
fn unevaluated(gate: &MetricGate, after: &str, e: &QueryError) -> String {
    format!(
        "metric gate after {after}: `{}` could not be evaluated at {}: {e}; a gate that cannot \
         be evaluated never passes: the next wave did not start",
        gate.query,
        rfc3339(now_ms())
    )
}

impl Engine {
    /// At the start of a rollout with a metric gate: the Prometheus it asks (the spec's, else
    /// this coordinator's `--gate-prometheus`) is recorded in the spec, and the query is
    /// evaluated once, so a bad query or an unreachable Prometheus refuses the start before
    /// anything runs instead of halting the rollout after its canary.
    pub(super) async fn check_metric_gate(
        &self,
        spec: &mut RolloutSpec,
    ) -> Result<(), EngineError> {
        let Some(gate) = spec.metric_gate.as_mut() else {
            return Ok(());
        };
        if gate.prometheus_url.is_empty() {
            gate.prometheus_url = self.config.gate_prometheus.clone().ok_or_else(|| {
                EngineError::InvalidArgument(
                    "the rollout has a metric gate but no Prometheus to ask: pass \
                     --gate-prometheus URL to `rollout start`, or start the coordinator with \
                     --gate-prometheus"
                        .into(),
                )
            })?;
        }
        let client = PrometheusClient::new(&gate.prometheus_url)
            .map_err(|e| EngineError::InvalidArgument(e.to_string()))?;
        match client.query(&gate.query).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_bad_query() => Err(EngineError::InvalidArgument(format!(
                "metric gate: {e}; fix --gate-query, nothing was started"
            ))),
            Err(e) => Err(EngineError::Unavailable(format!(
                "metric gate: {e}; check --gate-prometheus, nothing was started"
            ))),
        }
    }

    /// After `wave` (not the last): hold the next wave until the gate's window passed with
    /// every evaluation empty or 0.
    pub(super) async fn metric_gate(
        &self,
        term: &Term,
        rec: &mut RolloutRecord,
        wave: u32,
        control: &mut watch::Receiver<Control>,
    ) -> Result<GateEnd, EngineError> {
        let Some(gate) = rec.spec.metric_gate.clone() else {
            return Ok(GateEnd::Passed);
        };
        if wave + 1 >= rec.wave_count {
            return Ok(GateEnd::Passed);
        }
        let after = wave_name(rec, wave);
        let client = match PrometheusClient::new(&gate.prometheus_url) {
            Ok(c) => c,
            Err(e) => return Ok(GateEnd::Halted(unevaluated(&gate, &after, &e))),
        };
        let window = gate.window();
        let interval = evaluation_interval(window);
        'window: loop {
            // Paused: nothing is evaluated; the window starts again on resume.
            loop {
                let c = *control.borrow_and_update();
                match c {
                    Control::Run => break,
                    Control::Abort => return Ok(GateEnd::Aborted),
                    Control::Pause => {
                        // One write: watchers never see the pause without its reason.
                        if rec.state != RolloutState::Paused {
                            rec.state = RolloutState::Paused;
                            rec.metric_gate = None;
                            rec.message = format!(
                                "paused during the metric gate after {after}: its window of {} \
                                 starts again on resume",
                                human(window)
                            );
                            self.put_rollout(term, rec).await?;
                            super::report::refresh_rollouts(self).await;
                        }
                        tokio::select! {
                            _ = term.cancel.cancelled() => return Err(EngineError::Fenced(term.token)),
                            changed = control.changed() => if changed.is_err() {
                                return Err(EngineError::Fenced(term.token));
                            },
                        }
                    }
                }
            }
            self.sync_paused(term, rec, control).await?;
            let started = Instant::now();
            let deadline = started + window;
            let started_at_ms = now_ms();
            let mut wait = GateWait {
                wave,
                started_at_ms,
                ends_at_ms: started_at_ms + gate.window_ms as i64,
                evaluations: 0,
                remaining_ms: gate.window_ms,
            };
            rec.metric_gate = Some(wait.clone());
            rec.message = format!(
                "metric gate after {after}: waiting {} for `{}` to stay empty or 0 (evaluated every {})",
                human(window),
                gate.query,
                human(interval)
            );
            self.put_rollout(term, rec).await?;
            loop {
                let answer = tokio::select! {
                    _ = term.cancel.cancelled() => return Err(EngineError::Fenced(term.token)),
                    answer = client.query(&gate.query) => answer,
                };
                let halt = match answer {
                    Err(e) => Some(unevaluated(&gate, &after, &e)),
                    Ok(samples) => samples
                        .iter()
                        .find(|s| s.value != 0.0)
                        .map(|s| offending(&gate, &after, s)),
                };
                if let Some(why) = halt {
                    rec.metric_gate = None;
                    return Ok(GateEnd::Halted(why));
                }
                wait.evaluations += 1;
                let now = Instant::now();
                if now >= deadline {
                    rec.metric_gate = None;
                    rec.message = format!(
                        "metric gate after {after} passed: `{}` stayed empty or 0 for {} ({} evaluations)",
                        gate.query,
                        human(window),
                        wait.evaluations
                    );
                    self.put_rollout(term, rec).await?;
                    return Ok(GateEnd::Passed);
                }
                let left = deadline - now;
                wait.remaining_ms = left.as_millis() as u64;
                rec.metric_gate = Some(wait.clone());
                self.put_rollout(term, rec).await?;
                tokio::select! {
                    _ = term.cancel.cancelled() => return Err(EngineError::Fenced(term.token)),
                    _ = tokio::time::sleep(interval.min(left)) => {}
                    changed = control.changed() => {
                        if changed.is_err() {
                            return Err(EngineError::Fenced(term.token));
                        }
                        if *control.borrow() != Control::Run {
                            continue 'window;
                        }
                    }
                }
            }
        }
    }
}
