//! `flotilla adopt`: move targets that another tool (Alembic, Flyway, sqlx, golang-migrate)
//! migrated onto Flotilla without running anything. Each agent reports the version tables its
//! targets have (`DetectForeign`); [`decide`] (pure) maps what a table records onto the
//! revision graph (which must hold the imported revisions, same ids); the agent then records
//! that history as `adopted` rows, fenced with the leader's token (`Adopt`). A table naming a
//! revision the graph lacks blocks its target; the others adopt. A rollout afterwards applies
//! only what each target lacks.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use flotilla_core::foreign::table_of;
use flotilla_proto as pb;

use crate::engine::{Engine, EngineError};
use crate::fleet::AgentClient;
use crate::rollout::Selector;
use flotilla_revision::Graph;
use flotilla_rpc::convert::DialectProto;

/// What to do with one target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Record these revisions (parents first) as adopted from `tool`.
    Adopt {
        tool: String,
        revisions: Vec<String>,
    },
    /// Not adoptable until someone fixes it.
    Blocked { tool: String, reason: String },
    /// Nothing to adopt.
    Skipped { tool: String, reason: String },
}

/// Map a target's foreign version tables onto the graph. `from`: only that tool's table.
pub fn decide(graph: &Graph, target: &pb::TargetForeign, from: Option<&str>) -> Decision {
    let skipped = |tool: &str, reason: String| Decision::Skipped {
        tool: tool.to_owned(),
        reason,
    };
    let blocked = |tool: &str, reason: String| Decision::Blocked {
        tool: tool.to_owned(),
        reason,
    };
    if !target.error.is_empty() {
        return skipped("", format!("cannot read the target: {}", target.error));
    }
    let tables: Vec<&pb::ForeignVersionTable> = target
        .tables
        .iter()
        .filter(|t| from.is_none_or(|f| t.tool == f))
        .collect();
    let t = match tables.as_slice() {
        [] => {
            return skipped(
                from.unwrap_or(""),
                format!(
                    "no version table of {}",
                    from.unwrap_or("alembic, flyway, sqlx or golang-migrate")
                ),
            );
        }
        [t] => *t,
        several => {
            let names: Vec<&str> = several.iter().map(|t| t.tool.as_str()).collect();
            return blocked(
                "",
                format!(
                    "several version tables ({}): choose one with --from",
                    names.join(", ")
                ),
            );
        }
    };
    let tool = t.tool.as_str();
    if target.history_rows > 0 {
        return skipped(
            tool,
            format!(
                "already managed by Flotilla ({} flotilla_history rows)",
                target.history_rows
            ),
        );
    }
    if !t.error.is_empty() {
        return blocked(tool, format!("cannot read {}: {}", t.table, t.error));
    }
    if t.dirty {
        return blocked(
            tool,
            format!(
                "{} records a failed or half-applied migration: fix it with {tool} first",
                t.table
            ),
        );
    }
    let mut unknown: Vec<&str> = t
        .versions
        .iter()
        .chain(&t.up_to)
        .map(String::as_str)
        .filter(|v| !graph.contains(v))
        .collect();
    unknown.sort_unstable();
    unknown.dedup();
    if !unknown.is_empty() {
        return blocked(
            tool,
            format!(
                "{} names revision {} that the migrations do not have: import the {tool} revisions again (flotilla import {tool}) or fix {}",
                t.table,
                unknown.join(", "),
                t.table
            ),
        );
    }
    let mut applied: BTreeSet<String> = t.versions.iter().cloned().collect();
    for head in &t.up_to {
        applied.extend(graph.ancestors(head));
    }
    if applied.is_empty() {
        return skipped(
            tool,
            format!(
                "{} records no applied revision: a rollout applies everything",
                t.table
            ),
        );
    }
    let revisions: Vec<String> = graph
        .revisions()
        .filter(|r| applied.contains(&r.id))
        .map(|r| r.id.clone())
        .collect();
    for id in &revisions {
        let parents = graph.get(id).map(|r| r.parents.as_slice()).unwrap_or(&[]);
        if let Some(p) = parents.iter().find(|p| !applied.contains(*p)) {
            return blocked(
                tool,
                format!(
                    "{} records revision {id} but not its parent {p}: fix {} first",
                    t.table, t.table
                ),
            );
        }
    }
    Decision::Adopt {
        tool: tool.to_owned(),
        revisions,
    }
}

/// The revisions of `set` that no other revision of `set` revises, in `set`'s order.
pub fn heads_of(graph: &Graph, set: &[String]) -> Vec<String> {
    let parents: BTreeSet<&str> = set
        .iter()
        .filter_map(|id| graph.get(id))
        .flat_map(|r| r.parents.iter().map(String::as_str))
        .collect();
    set.iter()
        .filter(|id| !parents.contains(id.as_str()))
        .cloned()
        .collect()
}

fn outcome(target: &str, agent: &str, d: Decision, dry_run: bool) -> pb::AdoptedTarget {
    let mut out = pb::AdoptedTarget {
        target_id: target.to_owned(),
        agent_id: agent.to_owned(),
        ..Default::default()
    };
    match d {
        Decision::Adopt { tool, revisions } => {
            out.tool = tool;
            out.outcome = if dry_run { "would_adopt" } else { "adopted" }.into();
            out.revisions = revisions;
        }
        Decision::Blocked { tool, reason } => {
            out.tool = tool;
            out.outcome = "blocked".into();
            out.reason = reason;
        }
        Decision::Skipped { tool, reason } => {
            out.tool = tool;
            out.outcome = "skipped".into();
            out.reason = reason;
        }
    }
    out
}

/// An agent and its selected targets with their dialects.
type AgentTargets = (Arc<dyn AgentClient>, Vec<(String, i32)>);

/// Adopt every selected target (the leader's term supplies the fencing token).
pub async fn adopt(
    engine: &Engine,
    graph: &Graph,
    token: u64,
    selector: &Selector,
    from: Option<&str>,
    dry_run: bool,
    retire: bool,
) -> Result<Vec<pb::AdoptedTarget>, EngineError> {
    let snap = engine.select(selector).await?;
    // Per agent: the client and its selected targets with their dialects.
    let mut by_agent: BTreeMap<String, AgentTargets> = BTreeMap::new();
    for e in &snap.targets {
        by_agent
            .entry(e.agent.id().to_owned())
            .or_insert_with(|| (e.agent.clone(), vec![]))
            .1
            .push((e.status.target_id.clone(), e.status.dialect));
    }
    let mut out = Vec::new();
    for (agent_id, err) in &snap.unreachable {
        out.push(pb::AdoptedTarget {
            agent_id: agent_id.clone(),
            outcome: "skipped".into(),
            reason: format!("agent unreachable: {err}"),
            ..Default::default()
        });
    }
    for (agent_id, (agent, targets)) in by_agent {
        let ids: Vec<String> = targets.iter().map(|(id, _)| id.clone()).collect();
        let report = match agent
            .detect_foreign(pb::DetectForeignRequest {
                project: engine.wire_project(),
                target_ids: ids.clone(),
            })
            .await
        {
            Ok(r) => r,
            Err(e) => {
                out.extend(ids.into_iter().map(|id| pb::AdoptedTarget {
                    target_id: id,
                    agent_id: agent_id.clone(),
                    outcome: "skipped".into(),
                    reason: format!("agent {agent_id}: {}", e.message()),
                    ..Default::default()
                }));
                continue;
            }
        };
        let dialects: BTreeMap<&str, i32> =
            targets.iter().map(|(id, d)| (id.as_str(), *d)).collect();
        for tf in &report.targets {
            let d = decide(graph, tf, from);
            // Adopt now, or (adopted earlier, with `retire`) only retire its version table.
            let (tool, revisions) = match (&d, dry_run) {
                (Decision::Adopt { tool, revisions }, false) => (tool, revisions.as_slice()),
                (Decision::Skipped { tool, .. }, false)
                    if retire && tf.history_rows > 0 && !tool.is_empty() =>
                {
                    (tool, &[][..])
                }
                _ => {
                    out.push(outcome(&tf.target_id, &agent_id, d, dry_run));
                    continue;
                }
            };
            let dialect = dialects
                .get(tf.target_id.as_str())
                .and_then(|d| pb::Dialect::try_from(*d).ok())
                .and_then(flotilla_core::Dialect::from_proto);
            let Some(dialect) = dialect else {
                out.push(outcome(
                    &tf.target_id,
                    &agent_id,
                    Decision::Skipped {
                        tool: tool.clone(),
                        reason: "the agent reports no dialect for it".into(),
                    },
                    dry_run,
                ));
                continue;
            };
            let req = pb::AdoptTargetRequest {
                project: engine.wire_project(),
                target_id: tf.target_id.clone(),
                fencing_token: token,
                tool: tool.clone(),
                revisions: revisions
                    .iter()
                    .filter_map(|id| graph.get(id))
                    .map(|r| pb::ExpectedRevision {
                        revision: r.id.clone(),
                        checksum: r.up_checksum(dialect),
                    })
                    .collect(),
                retire_foreign: retire,
            };
            let done = agent.adopt(req).await;
            let mut o = match done {
                Ok(_) => outcome(&tf.target_id, &agent_id, d.clone(), dry_run),
                Err(e) => {
                    let blocked = Decision::Blocked {
                        tool: tool.clone(),
                        reason: e.message().to_owned(),
                    };
                    outcome(&tf.target_id, &agent_id, blocked, dry_run)
                }
            };
            if retire && o.outcome != "blocked" {
                if revisions.is_empty() {
                    o.outcome = "retired".into();
                }
                o.reason = format!("{} retired", table_of(&o.tool).unwrap_or(""));
            }
            out.push(o);
        }
    }
    for o in &mut out {
        o.heads = heads_of(graph, &o.revisions);
    }
    out.sort_by(|a, b| (&a.target_id, &a.agent_id).cmp(&(&b.target_id, &b.agent_id)));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn graph() -> Graph {
        let files = [("a", ""), ("b", "a"), ("c", "a"), ("m", "b, c")]
            .iter()
            .map(|(id, parents)| {
                (
                    PathBuf::from(format!("{id}.sql")),
                    format!("-- revision: {id}\n-- revises: {parents}\n-- migrate:up\nSELECT 1;\n")
                        .into_bytes(),
                )
            })
            .collect();
        Graph::from_sources(files).unwrap()
    }

    fn table(tool: &str, versions: &[&str], up_to: &[&str]) -> pb::ForeignVersionTable {
        pb::ForeignVersionTable {
            tool: tool.into(),
            table: flotilla_core::foreign::table_of(tool).unwrap_or("t").into(),
            versions: versions.iter().map(|s| s.to_string()).collect(),
            up_to: up_to.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn target(tables: Vec<pb::ForeignVersionTable>) -> pb::TargetForeign {
        pb::TargetForeign {
            target_id: "t".into(),
            tables,
            ..Default::default()
        }
    }

    fn adopt(revs: &[&str]) -> Decision {
        Decision::Adopt {
            tool: "alembic".into(),
            revisions: revs.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn heads_stand_for_their_ancestors() {
        let g = graph();
        let t = target(vec![table("alembic", &[], &["b", "c"])]);
        assert_eq!(decide(&g, &t, None), adopt(&["a", "b", "c"]));
        let t = target(vec![table("alembic", &[], &["m"])]);
        assert_eq!(decide(&g, &t, None), adopt(&["a", "b", "c", "m"]));
    }

    #[test]
    fn unknown_revisions_block_and_gaps_block() {
        let g = graph();
        let t = target(vec![table("alembic", &[], &["zz9"])]);
        let Decision::Blocked { reason, .. } = decide(&g, &t, None) else {
            panic!("not blocked");
        };
        assert!(
            reason.contains("alembic_version names revision zz9"),
            "{reason}"
        );
        let t = target(vec![table("sqlx", &["a", "m"], &[])]);
        assert!(matches!(decide(&g, &t, None), Decision::Blocked { .. }));
    }

    #[test]
    fn managed_empty_several_and_from() {
        let g = graph();
        let mut t = target(vec![table("sqlx", &["a"], &[])]);
        t.history_rows = 2;
        assert!(matches!(decide(&g, &t, None), Decision::Skipped { .. }));
        let t = target(vec![table("flyway", &[], &[])]);
        assert!(matches!(decide(&g, &t, None), Decision::Skipped { .. }));
        let t = target(vec![
            table("flyway", &["a"], &[]),
            table("alembic", &[], &["b"]),
        ]);
        assert!(matches!(decide(&g, &t, None), Decision::Blocked { .. }));
        assert_eq!(decide(&g, &t, Some("alembic")), adopt(&["a", "b"]));
    }
}
