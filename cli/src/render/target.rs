//! One target as people and JSON see it: [`target`] (after `stamp` and `repair`),
//! [`history`] (its applied revisions) and the target status JSON `status` also uses.

use std::io::Write;

use serde_json::{Value, json};

use flotilla_proto as pb;

use super::format::{revision_of, rfc3339, short};
use super::names::{dialect_name, direction_name};
use super::output::{emit, row, write_table};
use crate::error::CliError;

/// A target's heads and whether it is dirty, or its JSON.
pub(crate) fn target(
    out: &mut (dyn Write + Send),
    json: bool,
    t: &pb::TargetStatus,
) -> Result<(), CliError> {
    if json {
        return emit(out, &target_status_json(t));
    }
    writeln!(
        out,
        "{}: heads {} dirty {}",
        t.target_id,
        revision_of(t),
        t.dirty
    )
    .map_err(CliError::Output)
}

/// A target's migration history: JSON, or one table row per applied step.
pub(crate) fn history(
    out: &mut (dyn Write + Send),
    json: bool,
    t: &pb::TargetStatus,
) -> Result<(), CliError> {
    if json {
        return emit(
            out,
            &json!({ "target": t.target_id, "history": t.history.iter().map(applied_json).collect::<Vec<_>>() }),
        );
    }
    let mut rows = vec![row(&[
        "ID",
        "REVISION",
        "DIR",
        "STATUS",
        "APPLIED AT",
        "DURATION",
        "ROLLOUT",
        "AGENT",
        "TOKEN",
        "CHECKSUM",
    ])];
    for (i, h) in t.history.iter().enumerate() {
        rows.push(vec![
            (i + 1).to_string(),
            h.revision.clone(),
            direction_name(h.direction).into(),
            h.status.clone(),
            rfc3339(h.applied_at_unix_ms),
            format!("{}ms", h.duration_ms),
            h.rollout_id.clone(),
            h.agent_id.clone(),
            h.fencing_token.to_string(),
            short(&h.checksum).into(),
        ]);
    }
    write_table(out, &rows)
}

fn applied_json(a: &pb::AppliedRevision) -> Value {
    json!({
        "revision": a.revision, "checksum": a.checksum, "direction": direction_name(a.direction),
        "status": a.status, "applied_at": rfc3339(a.applied_at_unix_ms), "applied_at_unix_ms": a.applied_at_unix_ms, "duration_ms": a.duration_ms,
        "rollout_id": a.rollout_id, "agent_id": a.agent_id, "fencing_token": a.fencing_token,
    })
}

pub(super) fn target_status_json(s: &pb::TargetStatus) -> Value {
    json!({
        "target": s.target_id, "dialect": dialect_name(s.dialect), "labels": s.labels, "host": s.host,
        "heads": s.heads, "applied": s.applied.iter().map(|a| &a.revision).collect::<Vec<_>>(),
        "dirty": s.dirty, "dirty_revision": s.dirty_revision, "fence_token": s.fence_token, "error": s.error,
    })
}
