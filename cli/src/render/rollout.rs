//! A rollout as people and JSON see it: [`rollout`] (state, goal, wave, counts, failed and
//! blocked targets, a waiting metric gate), [`rollouts`] (the `rollout list` table),
//! [`rollout_json`] and [`gate_line`].

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use serde_json::{Value, json};

use flotilla_proto as pb;

use super::format::rfc3339;
use super::names::{project_name, state_name, target_state_name};
use super::output::{emit, row, write_table};
use crate::error::CliError;

/// ` (trace ID)` when the rollout carries a trace id, else nothing.
pub(crate) fn trace_note(r: &pb::Rollout) -> String {
    if r.trace_id.is_empty() {
        String::new()
    } else {
        format!(" (trace {})", r.trace_id)
    }
}

/// A metric gate holding the next wave back, in one line: the wave it follows, the query,
/// the window and the time left.
pub(crate) fn gate_line(g: &pb::MetricGateWait) -> String {
    let d = |ms: u64| humantime::format_duration(Duration::from_secs(ms.div_ceil(1000)));
    format!(
        "metric gate after wave {}: waiting for `{}` to stay empty or 0, window {}, {} left, evaluations so far: {}",
        g.wave,
        g.query,
        d(g.window_ms),
        d(g.remaining_ms),
        g.evaluations
    )
}

fn gate_json(g: &pb::MetricGateWait) -> Value {
    json!({
        "wave": g.wave, "query": g.query, "window_ms": g.window_ms,
        "started_at": rfc3339(g.started_at_unix_ms), "ends_at": rfc3339(g.ends_at_unix_ms),
        "evaluations": g.evaluations, "remaining_ms": g.remaining_ms,
    })
}

/// One rollout: its JSON, or a few lines of text.
pub(crate) fn rollout(
    out: &mut (dyn Write + Send),
    json: bool,
    r: &pb::Rollout,
) -> Result<(), CliError> {
    if json {
        return emit(out, &rollout_json(r));
    }
    let o = |e| CliError::Output(e);
    writeln!(out, "rollout {}: {}", r.id, state_name(r.state)).map_err(o)?;
    writeln!(out, "  project: {}", rollout_project(r)).map_err(o)?;
    if let Some(s) = &r.spec {
        writeln!(out, "  goal: {} ({})", s.goal, r.goal_revision).map_err(o)?;
    }
    if !r.set_digest.is_empty() {
        writeln!(out, "  set: {}", r.set_digest).map_err(o)?;
    }
    writeln!(
        out,
        "  wave: {}/{}",
        (r.current_wave + 1).min(r.wave_count),
        r.wave_count
    )
    .map_err(o)?;
    if !r.trace_id.is_empty() {
        writeln!(out, "  trace id: {}", r.trace_id).map_err(o)?;
    }
    writeln!(out, "  fencing token: {}", r.fencing_token).map_err(o)?;
    writeln!(
        out,
        "  created: {}, updated: {}",
        rfc3339(r.created_at_unix_ms),
        rfc3339(r.updated_at_unix_ms)
    )
    .map_err(o)?;
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for t in &r.targets {
        *counts.entry(target_state_name(t.state)).or_default() += 1;
    }
    if !counts.is_empty() {
        let c = counts
            .iter()
            .map(|(k, v)| format!("{v} {k}"))
            .collect::<Vec<_>>()
            .join(", ");
        writeln!(out, "  targets: {c}").map_err(o)?;
    }
    for t in r
        .targets
        .iter()
        .filter(|t| matches!(target_state_name(t.state), "failed" | "blocked"))
    {
        writeln!(
            out,
            "  {} {}: {}",
            target_state_name(t.state),
            t.target_id,
            t.message
        )
        .map_err(o)?;
    }
    for t in r.targets.iter().filter(|t| t.waiting_for_agent) {
        writeln!(out, "  waiting {}: {}", t.target_id, t.message).map_err(o)?;
    }
    if let Some(g) = &r.metric_gate {
        writeln!(out, "  {}", gate_line(g)).map_err(o)?;
    }
    if !r.message.is_empty() {
        writeln!(out, "  {}", r.message).map_err(o)?;
    }
    Ok(())
}

/// `rollout list`: a JSON array, or one table row per rollout.
pub(crate) fn rollouts(
    out: &mut (dyn Write + Send),
    json: bool,
    rollouts: &[pb::Rollout],
) -> Result<(), CliError> {
    if json {
        return emit(
            out,
            &Value::Array(rollouts.iter().map(rollout_json).collect()),
        );
    }
    let mut rows = vec![row(&[
        "ID", "STATE", "PROJECT", "GOAL", "SET", "WAVE", "CREATED", "MESSAGE",
    ])];
    for r in rollouts {
        rows.push(vec![
            r.id.clone(),
            state_name(r.state).into(),
            rollout_project(r).to_owned(),
            r.spec.as_ref().map(|s| s.goal.clone()).unwrap_or_default(),
            short_digest(&r.set_digest).into(),
            format!(
                "{}/{}",
                (r.current_wave + 1).min(r.wave_count),
                r.wave_count
            ),
            rfc3339(r.created_at_unix_ms),
            r.message.clone(),
        ]);
    }
    write_table(out, &rows)
}

/// A set digest as a table shows it: its first 12 characters (`rollout get` prints it whole).
fn short_digest(d: &str) -> &str {
    d.get(..12).unwrap_or(d)
}

/// The project a rollout belongs to (`default` when its spec names none).
fn rollout_project(r: &pb::Rollout) -> &str {
    project_name(r.spec.as_ref().map_or("", |s| s.project.as_str()))
}

pub(crate) fn rollout_json(r: &pb::Rollout) -> Value {
    json!({
        "id": r.id, "state": state_name(r.state), "message": r.message,
        "project": rollout_project(r),
        "goal": r.spec.as_ref().map(|s| s.goal.clone()), "goal_revision": r.goal_revision,
        "current_wave": r.current_wave, "wave_count": r.wave_count, "trace_id": r.trace_id,
        "fencing_token": r.fencing_token, "graph_digest": r.graph_digest, "set_digest": r.set_digest,
        "created_at": rfc3339(r.created_at_unix_ms), "updated_at": rfc3339(r.updated_at_unix_ms),
        "created_at_unix_ms": r.created_at_unix_ms, "updated_at_unix_ms": r.updated_at_unix_ms,
        "metric_gate": r.metric_gate.as_ref().map(gate_json),
        "targets": r.targets.iter().map(|t| json!({
            "target": t.target_id, "agent": t.agent_id, "state": target_state_name(t.state), "wave": t.wave,
            "steps_done": t.steps_done, "steps_total": t.steps_total, "retries": t.retries,
            "message": t.message, "fingerprint": t.fingerprint,
            "waiting_for_agent": t.waiting_for_agent,
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_waiting_gate_reads_as_one_line_and_in_json() {
        let g = pb::MetricGateWait {
            wave: 0,
            query: "app_errors > 0".into(),
            window_ms: 120_000,
            started_at_unix_ms: 1_796_000_000_000,
            ends_at_unix_ms: 1_796_000_120_000,
            evaluations: 3,
            remaining_ms: 89_400,
        };
        expect_test::expect!["metric gate after wave 0: waiting for `app_errors > 0` to stay empty or 0, window 2m, 1m 30s left, evaluations so far: 3"]
            .assert_eq(&gate_line(&g));
        let r = pb::Rollout {
            metric_gate: Some(g),
            ..Default::default()
        };
        let v = rollout_json(&r);
        assert_eq!(v["metric_gate"]["ends_at"], "2026-11-30T00:55:20.000Z");
        assert_eq!(v["metric_gate"]["remaining_ms"], 89_400);
        assert_eq!(
            rollout_json(&pb::Rollout::default())["metric_gate"],
            Value::Null
        );
    }
}
