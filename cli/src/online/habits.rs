//! Commands for Alembic habits: `flotilla current` (like `alembic current`, per target or a
//! fleet summary) and `flotilla reset` (a development reset of one target down to base, with
//! confirmation). `history --verbose` is the offline `history` (cli/offline/history.rs) and
//! `alembic downgrade -1` is `flotilla rollout start --to -1`.

use std::collections::BTreeMap;
use std::io::{BufRead, IsTerminal, Write};

use clap::Args;
use serde_json::json;

use flotilla_proto as pb;

use super::client::{ClientArgs, rpc};
use super::rollout::follow;
use super::sets::ensure_set;
use super::spec::SelectArgs;
use crate::args::{GlobalArgs, OutputFormat};
use crate::error::CliError;
use crate::render::emit;
use flotilla_coordinator::rollout::{RolloutSpec, Selector};
use flotilla_revision::Graph;

#[derive(Debug, Args)]
pub struct CurrentArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(flatten)]
    pub select: SelectArgs,
    /// Only the fleet summary: how many targets are at each revision
    #[arg(long, env = "FLOTILLA_CURRENT_SUMMARY")]
    pub summary: bool,
}

#[derive(Debug, Args)]
pub struct ResetArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// The one target to reset (a development database)
    #[arg(long, env = "FLOTILLA_RESET_TARGET")]
    pub target: String,
    /// Do not ask: downgrade it to base
    #[arg(long, env = "FLOTILLA_RESET_YES")]
    pub yes: bool,
}

/// A target's current revisions: the applied revisions no other applied one descends from
/// (with the local migrations, when they load), else what the agent reports.
fn current_of(s: &pb::TargetStatus, graph: Option<&Graph>) -> Vec<String> {
    let applied: Vec<&str> = s.applied.iter().map(|a| a.revision.as_str()).collect();
    let mut heads: Vec<String> = match graph {
        Some(g) if applied.iter().all(|a| g.contains(a)) => applied
            .iter()
            .filter(|r| {
                !applied
                    .iter()
                    .any(|o| o != *r && g.ancestors(o).contains(**r))
            })
            .map(|r| (*r).to_owned())
            .collect(),
        _ => s.heads.clone(),
    };
    heads.sort();
    heads
}

pub(super) async fn current(
    args: CurrentArgs,
    global: &GlobalArgs,
    out: &mut (dyn Write + Send),
) -> Result<u8, CliError> {
    let json = global.output == OutputFormat::Json;
    let graph = Graph::load_dir(&global.migrations).ok();
    let mut c = args.client.connect().await?;
    let set_digest = ensure_set(&mut c, &global.migrations).await?;
    let resp = c
        .fleet_status(pb::FleetStatusRequest {
            selector: Some(args.select.selector()?.to_proto()),
            // `current` shows revisions: no catalog comparison.
            include_schema: false,
            set_digest,
            project: args.client.project.clone(),
        })
        .await
        .map_err(rpc)?
        .into_inner();
    let mut graph_heads = resp.graph_heads.clone();
    graph_heads.sort();
    let mut rows = Vec::new();
    let mut summary: BTreeMap<String, usize> = BTreeMap::new();
    for t in &resp.targets {
        let Some(s) = &t.status else { continue };
        let current = if s.error.is_empty() {
            current_of(s, graph.as_ref())
        } else {
            vec![]
        };
        let label = match (s.error.is_empty(), current.is_empty()) {
            (false, _) => "unreachable".to_owned(),
            (true, true) => "base".to_owned(),
            (true, false) => current.join(","),
        };
        let at_head = s.error.is_empty() && current == graph_heads;
        *summary
            .entry(if at_head {
                format!("{label} (head)")
            } else {
                label.clone()
            })
            .or_default() += 1;
        rows.push((
            s.target_id.clone(),
            t.agent_id.clone(),
            current,
            label,
            at_head,
            s.error.clone(),
        ));
    }
    if json {
        let targets: Vec<_> = rows
            .iter()
            .map(|(id, agent, current, _, at_head, error)| {
                json!({"target": id, "agent": agent, "current": current, "at_head": at_head, "error": error})
            })
            .collect();
        emit(
            out,
            &json!({"targets": targets, "summary": summary, "graph_heads": graph_heads}),
        )?;
        return Ok(0);
    }
    if !args.summary {
        for (id, _, _, label, at_head, _) in &rows {
            let head = if *at_head { " (head)" } else { "" };
            writeln!(out, "{id}: {label}{head}").map_err(CliError::Output)?;
        }
    }
    if args.summary || rows.len() > 1 {
        writeln!(out, "{} targets:", rows.len()).map_err(CliError::Output)?;
        for (rev, n) in &summary {
            writeln!(out, "  {n:>5}  {rev}").map_err(CliError::Output)?;
        }
    }
    Ok(0)
}

pub(super) async fn reset(
    args: ResetArgs,
    global: &GlobalArgs,
    out: &mut (dyn Write + Send),
) -> Result<u8, CliError> {
    let json = global.output == OutputFormat::Json;
    if !args.yes {
        let stdin = std::io::stdin();
        if !stdin.is_terminal() {
            return Err(CliError::Refused(format!(
                "reset downgrades target {} to base (every down section runs): pass --yes to confirm",
                args.target
            )));
        }
        eprint!(
            "reset downgrades target {} to base, running every down section. Type the target id to confirm: ",
            args.target
        );
        let mut line = String::new();
        stdin
            .lock()
            .read_line(&mut line)
            .map_err(CliError::Output)?;
        if line.trim() != args.target {
            return Err(CliError::Refused(
                "not confirmed: nothing was changed".into(),
            ));
        }
    }
    let spec = RolloutSpec {
        goal: "base".into(),
        selector: Selector {
            target_ids: vec![args.target.clone()],
            ..Selector::default()
        },
        canary: 0,
        max_parallel: 1,
        fingerprint_gate: false,
        allow_downgrade: true,
        project: args.client.project.clone(),
        ..RolloutSpec::default()
    };
    let mut c = args.client.connect().await?;
    // The down sections come from the set the CLI has.
    let spec = RolloutSpec {
        set_digest: ensure_set(&mut c, &global.migrations).await?,
        ..spec
    };
    let r = c
        .start_rollout(pb::StartRolloutRequest {
            spec: Some(spec.to_proto()),
        })
        .await
        .map_err(rpc)?
        .into_inner();
    if !json {
        writeln!(out, "reset {}: rollout {} to base", args.target, r.id)
            .map_err(CliError::Output)?;
    }
    follow(&mut c, &r.id, json, out).await
}
