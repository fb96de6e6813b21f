//! The fleet as people and JSON see it: [`plan`] (the steps a rollout would run),
//! [`fleet_status`] / [`write_fleet_table`] (the fleet table) and [`validate`] (revision and
//! fingerprint groups, history problems and schema drift).

use std::collections::BTreeMap;
use std::io::Write;

use serde_json::{Value, json};

use flotilla_proto as pb;

use super::format::{abbreviate, revision_of, short};
use super::names::{dialect_name, direction_name, project_name};
use super::output::{emit, row, write_table};
use super::target::target_status_json;
use crate::error::CliError;

/// `plan`: JSON, or one row per target with its steps (`+rev` up, `-rev` down).
pub(crate) fn plan(
    out: &mut (dyn Write + Send),
    json: bool,
    resp: &pb::PlanResponse,
) -> Result<(), CliError> {
    if json {
        return emit(out, &plan_json(resp));
    }
    let mut rows = vec![row(&["TARGET", "AGENT", "DIALECT", "STEPS", "NOTE"])];
    for t in &resp.targets {
        let steps = t
            .steps
            .iter()
            .map(|s| {
                format!(
                    "{}{}",
                    if s.direction == pb::Direction::Down as i32 {
                        "-"
                    } else {
                        "+"
                    },
                    s.revision
                )
            })
            .collect::<Vec<_>>()
            .join(" ");
        rows.push(vec![
            t.target_id.clone(),
            t.agent_id.clone(),
            dialect_name(t.dialect).into(),
            if steps.is_empty() && t.blocked_reason.is_empty() {
                "(at goal)".into()
            } else {
                steps
            },
            if t.blocked_reason.is_empty() {
                String::new()
            } else {
                format!("BLOCKED: {}", t.blocked_reason)
            },
        ]);
    }
    write_table(out, &rows)
}

/// `status`: JSON, or the fleet table.
pub(crate) fn fleet_status(
    out: &mut (dyn Write + Send),
    json: bool,
    resp: &pb::FleetStatusResponse,
) -> Result<(), CliError> {
    if json {
        emit(out, &fleet_json(resp))
    } else {
        writeln!(out, "project: {}", project_name(&resp.project)).map_err(CliError::Output)?;
        write_fleet_table(out, resp)
    }
}

/// The fleet table: target, agent, dialect, labels, revision, dirty, drift.
pub(crate) fn write_fleet_table(
    out: &mut (dyn Write + Send),
    resp: &pb::FleetStatusResponse,
) -> Result<(), CliError> {
    let mut rows = vec![row(&[
        "TARGET", "AGENT", "DIALECT", "LABELS", "REVISION", "DIRTY", "DRIFT",
    ])];
    for t in &resp.targets {
        let Some(s) = &t.status else { continue };
        let labels = s
            .labels
            .iter()
            .collect::<BTreeMap<_, _>>()
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        rows.push(vec![
            if s.target_id.is_empty() {
                "-".into()
            } else {
                s.target_id.clone()
            },
            t.agent_id.clone(),
            dialect_name(s.dialect).into(),
            labels,
            if s.error.is_empty() {
                revision_of(s)
            } else {
                format!("ERROR: {}", s.error)
            },
            if s.dirty {
                format!("yes ({})", s.dirty_revision)
            } else {
                "no".into()
            },
            if t.drift.is_empty() {
                "-".into()
            } else {
                t.drift.join("; ")
            },
        ]);
    }
    write_table(out, &rows)
}

/// `validate`: JSON, or the groups and then the drift (`drift`: whether there is any).
pub(crate) fn validate(
    out: &mut (dyn Write + Send),
    json: bool,
    resp: &pb::FleetValidateResponse,
    drift: bool,
) -> Result<(), CliError> {
    if json {
        return emit(out, &validate_json(resp));
    }
    writeln!(
        out,
        "{} targets in {} groups (revision, fingerprint):",
        resp.targets.len(),
        resp.groups.len()
    )
    .map_err(CliError::Output)?;
    for g in &resp.groups {
        writeln!(
            out,
            "  {:<40} {}  {} targets: {}",
            g.heads,
            short(&g.fingerprint),
            g.target_ids.len(),
            abbreviate(&g.target_ids, 6)
        )
        .map_err(CliError::Output)?;
    }
    if drift {
        writeln!(out, "drift:").map_err(CliError::Output)?;
        for t in resp
            .targets
            .iter()
            .filter(|t| !t.issues.is_empty() || !t.error.is_empty())
        {
            for i in &t.issues {
                writeln!(out, "  {}: {} {}", t.target_id, i.revision, i.message)
                    .map_err(CliError::Output)?;
            }
            if !t.error.is_empty() {
                writeln!(out, "  {}: {}", t.target_id, t.error).map_err(CliError::Output)?;
            }
        }
        write_schema_drift(out, &resp.schema_drift)?;
    } else {
        writeln!(out, "no drift").map_err(CliError::Output)?;
    }
    Ok(())
}

/// Each schema-drifted target with its reference and the differences, one per line.
fn write_schema_drift(
    out: &mut (dyn Write + Send),
    drift: &[pb::SchemaDrift],
) -> Result<(), CliError> {
    let o = CliError::Output;
    for d in drift {
        writeln!(
            out,
            "  {}: schema differs from {} ({} at {}, fingerprint {} vs {}):",
            d.target_id,
            d.reference_target_id,
            d.dialect,
            d.heads,
            short(&d.fingerprint),
            short(&d.reference_fingerprint)
        )
        .map_err(o)?;
        if !d.error.is_empty() {
            writeln!(out, "    {}", d.error).map_err(o)?;
        }
        for c in &d.changes {
            writeln!(out, "    {}", c.description).map_err(o)?;
        }
    }
    Ok(())
}

fn fleet_json(r: &pb::FleetStatusResponse) -> Value {
    json!({
        "project": project_name(&r.project),
        "graph_heads": r.graph_heads, "graph_digest": r.graph_digest, "set_digest": r.set_digest,
        "targets": r.targets.iter().map(|t| {
            let mut v = t.status.as_ref().map(target_status_json).unwrap_or(json!({}));
            v["agent"] = json!(t.agent_id);
            v["drift"] = json!(t.drift);
            v
        }).collect::<Vec<_>>(),
    })
}

fn validate_json(r: &pb::FleetValidateResponse) -> Value {
    json!({
        "groups": r.groups.iter().map(|g| json!({ "heads": g.heads, "fingerprint": g.fingerprint, "targets": g.target_ids })).collect::<Vec<_>>(),
        "schema_drift": r.schema_drift.iter().map(|d| json!({
            "target": d.target_id, "dialect": d.dialect, "heads": d.heads, "fingerprint": d.fingerprint,
            "reference_target": d.reference_target_id, "reference_fingerprint": d.reference_fingerprint,
            "error": d.error,
            "changes": d.changes.iter().map(|c| json!({ "table": c.table, "object": c.object, "name": c.name, "change": c.change, "description": c.description })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "targets": r.targets.iter().map(|t| json!({
            "target": t.target_id, "fingerprint": t.fingerprint, "applied": t.applied, "error": t.error,
            "issues": t.issues.iter().map(|i| json!({ "revision": i.revision, "kind": pb::IssueKind::try_from(i.kind).map(|k| k.as_str_name()).unwrap_or("?"), "message": i.message })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

fn plan_json(r: &pb::PlanResponse) -> Value {
    json!({
        "graph_digest": r.graph_digest, "set_digest": r.set_digest,
        "targets": r.targets.iter().map(|t| json!({
            "target": t.target_id, "agent": t.agent_id, "dialect": dialect_name(t.dialect), "blocked": t.blocked_reason,
            "steps": t.steps.iter().map(|s| json!({ "revision": s.revision, "direction": direction_name(s.direction), "checksum": s.checksum, "transactional": s.transactional })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}
