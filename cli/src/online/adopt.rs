//! `flotilla adopt [--from TOOL] [-l SELECTOR] [--dry-run | --retire-foreign]`: record, on each selected target,
//! the history another tool's version table shows (see `flotilla_coordinator::adopt`). Exit 3 when a target
//! is blocked.

use std::io::Write;

use clap::Args;
use serde_json::json;

use flotilla_proto as pb;

use super::client::{ClientArgs, rpc};
use super::spec::SelectArgs;
use crate::error::CliError;
use crate::exit::{EXIT_OK, EXIT_PROBLEMS};
use crate::import::Tool;
use crate::render::emit;

#[derive(Debug, Args)]
pub struct AdoptArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(flatten)]
    pub select: SelectArgs,
    /// Only this tool's version table (default: whichever one a target has)
    #[arg(long, value_enum, env = "FLOTILLA_ADOPT_FROM")]
    pub from: Option<Tool>,
    /// Show what would be adopted, write nothing
    #[arg(long, env = "FLOTILLA_ADOPT_DRY_RUN")]
    pub dry_run: bool,
    /// Also retire the other tool's version table (on targets adopted now or earlier), so a
    /// deploy job still running that tool fails at once instead of running DDL again
    #[arg(
        long,
        env = "FLOTILLA_ADOPT_RETIRE_FOREIGN",
        conflicts_with = "dry_run"
    )]
    pub retire_foreign: bool,
}

pub(super) async fn run(
    args: AdoptArgs,
    migrations: &std::path::Path,
    json: bool,
    out: &mut (dyn Write + Send),
) -> Result<u8, CliError> {
    let mut c = args.client.connect().await?;
    let set_digest = super::sets::ensure_set(&mut c, migrations).await?;
    let resp = c
        .adopt(pb::AdoptRequest {
            set_digest,
            selector: Some(args.select.selector()?.to_proto()),
            from: args.from.map(|t| t.as_str().to_owned()).unwrap_or_default(),
            dry_run: args.dry_run,
            retire_foreign: args.retire_foreign,
            project: args.client.project.clone(),
        })
        .await
        .map_err(rpc)?
        .into_inner();
    let blocked = resp
        .targets
        .iter()
        .filter(|t| t.outcome == "blocked")
        .count();
    if json {
        let targets: Vec<_> = resp
            .targets
            .iter()
            .map(|t| {
                json!({
                    "target": t.target_id,
                    "agent": t.agent_id,
                    "tool": t.tool,
                    "outcome": t.outcome,
                    "revisions": t.revisions,
                    "heads": t.heads,
                    "reason": t.reason,
                })
            })
            .collect();
        emit(out, &json!({ "targets": targets, "blocked": blocked }))?;
    } else {
        for t in &resp.targets {
            let what = if t.revisions.is_empty() {
                t.reason.clone()
            } else {
                adopted_summary(t.revisions.len(), &t.heads)
            };
            writeln!(
                out,
                "{:<24} {:<12} {:<15} {what}",
                t.target_id, t.outcome, t.tool
            )
            .map_err(CliError::Output)?;
        }
    }
    Ok(if blocked > 0 { EXIT_PROBLEMS } else { EXIT_OK })
}

/// "8 revisions; head: X" (or "heads: X, Y" for several branches): how many revisions a
/// target has recorded and where it is, not a list that reads as a range.
fn adopted_summary(count: usize, heads: &[String]) -> String {
    let noun = if count == 1 { "revision" } else { "revisions" };
    match heads {
        [] => format!("{count} {noun}"),
        [one] => format!("{count} {noun}; head: {one}"),
        many => format!("{count} {noun}; heads: {}", many.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::adopted_summary;

    #[test]
    fn the_summary_names_the_heads_not_a_range() {
        let heads = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(adopted_summary(8, &heads(&["c3"])), "8 revisions; head: c3");
        assert_eq!(
            adopted_summary(8, &heads(&["b2", "c3"])),
            "8 revisions; heads: b2, c3"
        );
        assert_eq!(adopted_summary(1, &heads(&["a1"])), "1 revision; head: a1");
    }
}
