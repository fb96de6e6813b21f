//! `flotilla backups list [--target T]`, `backups restore --target T --rollout R`,
//! `backups prune --keep N [--target T]`: the backups agents take before destructive steps
//! (see `flotilla_core::backup`), through the coordinator.

use std::io::Write;

use clap::{Args, Subcommand};
use serde_json::{Value, json};

use flotilla_proto as pb;

use super::client::{ClientArgs, rpc};
use crate::error::CliError;
use crate::exit::{EXIT_OK, EXIT_PROBLEMS};
use crate::render::{emit, rfc3339, row, write_table};

#[derive(Debug, Args)]
pub struct BackupsArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: BackupsCommand,
}

#[derive(Debug, Subcommand)]
pub enum BackupsCommand {
    /// Every backup (target, rollout, revision, table, rows, size, time)
    List {
        /// Only this target's backups
        #[arg(long)]
        target: Option<String>,
    },
    /// Put back the data one rollout's backups saved on a target, recorded in its history
    Restore {
        #[arg(long)]
        target: String,
        /// The rollout whose backups to restore (see `backups list`)
        #[arg(long)]
        rollout: String,
    },
    /// Keep the backups of the newest N rollouts on each target, remove the rest
    Prune {
        #[arg(long, env = "FLOTILLA_BACKUP_KEEP")]
        keep: u32,
        /// Only this target
        #[arg(long)]
        target: Option<String>,
    },
}

fn backup_json(b: &pb::Backup) -> Value {
    json!({
        "target": b.target_id,
        "rollout": b.rollout_id,
        "revision": b.revision,
        "table": b.table,
        "location": b.location,
        "rows": b.rows,
        "bytes": b.bytes,
        "created_at": rfc3339(b.created_at_unix_ms),
        "restored_at": (b.restored_at_unix_ms != 0).then(|| rfc3339(b.restored_at_unix_ms)),
    })
}

fn write_backups(out: &mut (dyn Write + Send), backups: &[pb::Backup]) -> Result<(), CliError> {
    let mut rows = vec![row(&[
        "TARGET", "ROLLOUT", "REVISION", "TABLE", "ROWS", "BYTES", "CREATED", "RESTORED",
        "LOCATION",
    ])];
    for b in backups {
        rows.push(vec![
            b.target_id.clone(),
            b.rollout_id.clone(),
            b.revision.clone(),
            b.table.clone(),
            b.rows.to_string(),
            b.bytes.to_string(),
            rfc3339(b.created_at_unix_ms),
            rfc3339(b.restored_at_unix_ms),
            b.location.clone(),
        ]);
    }
    write_table(out, &rows)
}

fn write_errors(out: &mut (dyn Write + Send), errors: &[String]) -> Result<(), CliError> {
    for e in errors {
        writeln!(out, "error: {e}").map_err(CliError::Output)?;
    }
    Ok(())
}

pub(super) async fn run(
    args: BackupsArgs,
    json: bool,
    out: &mut (dyn Write + Send),
) -> Result<u8, CliError> {
    let mut c = args.client.connect().await?;
    match args.command {
        BackupsCommand::List { target } => {
            let r = c
                .list_backups(pb::FleetBackupsRequest {
                    project: args.client.project.clone(),
                    target_id: target.unwrap_or_default(),
                })
                .await
                .map_err(rpc)?
                .into_inner();
            if json {
                emit(
                    out,
                    &json!({
                        "backups": r.backups.iter().map(backup_json).collect::<Vec<_>>(),
                        "errors": r.errors,
                    }),
                )?;
            } else {
                write_backups(out, &r.backups)?;
                write_errors(out, &r.errors)?;
            }
            Ok(if r.errors.is_empty() {
                EXIT_OK
            } else {
                EXIT_PROBLEMS
            })
        }
        BackupsCommand::Restore { target, rollout } => {
            let r = c
                .restore_backup(pb::FleetRestoreBackupRequest {
                    project: args.client.project.clone(),
                    target_id: target.clone(),
                    rollout_id: rollout.clone(),
                })
                .await
                .map_err(rpc)?
                .into_inner();
            if json {
                emit(
                    out,
                    &json!({
                        "target": target,
                        "rollout": rollout,
                        "rows": r.rows,
                        "restored": r.restored.iter().map(backup_json).collect::<Vec<_>>(),
                    }),
                )?;
            } else {
                let tables: Vec<&str> = r.restored.iter().map(|b| b.table.as_str()).collect();
                writeln!(
                    out,
                    "restored {} ({} rows written) on {target} from rollout {rollout}",
                    tables.join(", "),
                    r.rows
                )
                .map_err(CliError::Output)?;
            }
            Ok(EXIT_OK)
        }
        BackupsCommand::Prune { keep, target } => {
            let r = c
                .prune_backups(pb::FleetPruneBackupsRequest {
                    project: args.client.project.clone(),
                    target_id: target.unwrap_or_default(),
                    keep,
                })
                .await
                .map_err(rpc)?
                .into_inner();
            if json {
                emit(
                    out,
                    &json!({
                        "removed": r.removed.iter().map(backup_json).collect::<Vec<_>>(),
                        "errors": r.errors,
                    }),
                )?;
            } else {
                writeln!(out, "removed {} backups", r.removed.len()).map_err(CliError::Output)?;
                write_errors(out, &r.errors)?;
            }
            Ok(if r.errors.is_empty() {
                EXIT_OK
            } else {
                EXIT_PROBLEMS
            })
        }
    }
}
