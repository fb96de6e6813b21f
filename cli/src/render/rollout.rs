//! A rollout as people and JSON see it: [`rollout`] (state, goal, wave, counts, failed and
//! blocked targets), [`rollouts`] (the `rollout list` table) and [`rollout_json`].

use std::collections::BTreeMap;
use std::io::Write;

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
        "ID", "STATE", "PROJECT", "GOAL", "WAVE", "CREATED", "MESSAGE",
    ])];
    for r in rollouts {
        rows.push(vec![
            r.id.clone(),
            state_name(r.state).into(),
            rollout_project(r).to_owned(),
            r.spec.as_ref().map(|s| s.goal.clone()).unwrap_or_default(),
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
        "fencing_token": r.fencing_token, "graph_digest": r.graph_digest,
        "created_at": rfc3339(r.created_at_unix_ms), "updated_at": rfc3339(r.updated_at_unix_ms),
        "created_at_unix_ms": r.created_at_unix_ms, "updated_at_unix_ms": r.updated_at_unix_ms,
        "targets": r.targets.iter().map(|t| json!({
            "target": t.target_id, "agent": t.agent_id, "state": target_state_name(t.state), "wave": t.wave,
            "steps_done": t.steps_done, "steps_total": t.steps_total, "retries": t.retries,
            "message": t.message, "fingerprint": t.fingerprint,
            "waiting_for_agent": t.waiting_for_agent,
        })).collect::<Vec<_>>(),
    })
}
