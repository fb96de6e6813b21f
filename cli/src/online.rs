//! Online commands: they talk to a coordinator over gRPC (`--coordinator`, env
//! `FLOTILLA_COORDINATOR`). `plan`, `rollout ...`, `status`, `validate`, `history`, `stamp`,
//! `repair`, `adopt` and `wait` (the Kubernetes init-container gate).
//!
//! This file holds the command enum and dispatches; each topic has its own file: `rollout`
//! (start, follow and control rollouts), `fleet` (plan, status, validate, wait), `target`
//! (history, stamp, repair), `adopt`, `backups`, `habits` (current, reset). `client` connects,
//! `spec` turns selection and rollout flags into a selector and a spec; output is in
//! `crate::render`.

use std::io::Write;
use std::time::Duration;

use clap::Subcommand;

use crate::args::{GlobalArgs, OutputFormat};
use crate::error::CliError;

mod adopt;
mod backups;
mod client;
mod fence;
mod fleet;
mod habits;
mod rollout;
mod sets;
mod spec;
mod target;

pub use client::{ClientArgs, DEFAULT_COORDINATOR, GlobalClientArgs, connect, connect_with};
pub use rollout::{RolloutCommand, follow};
pub use spec::{SelectArgs, SpecArgs};

pub use crate::args::parse_duration;
pub use crate::exit::{EXIT_BLOCKED, EXIT_ROLLOUT_FAILED, EXIT_TIMEOUT};

#[derive(Debug, Subcommand)]
pub enum OnlineCommand {
    /// Show what a rollout would do to every selected target, touching nothing
    Plan {
        #[command(flatten)]
        client: ClientArgs,
        #[command(flatten)]
        spec: SpecArgs,
    },
    /// Start, follow and control rollouts
    #[command(subcommand)]
    Rollout(RolloutCommand),
    /// Fencing across lock backends: `fence takeover --yes` after a change of backend
    #[command(subcommand)]
    Fence(fence::FenceCommand),
    /// Record the history another tool's version table shows (alembic_version,
    /// flyway_schema_history, _sqlx_migrations, schema_migrations) as adopted, running nothing
    Adopt(adopt::AdoptArgs),
    /// The backups agents take before destructive steps: list, restore, prune
    Backups(backups::BackupsArgs),
    /// The fleet table: target, agent, dialect, labels, revision, dirty, drift
    Status {
        #[command(flatten)]
        client: ClientArgs,
        #[command(flatten)]
        select: SelectArgs,
    },
    /// Fleet-wide drift report: history problems, and schema drift (a target whose schema
    /// differs from the canary's or the majority's at the same revisions) with its diff
    Validate {
        #[command(flatten)]
        client: ClientArgs,
        #[command(flatten)]
        select: SelectArgs,
    },
    /// A target's full migration history; without --target, the revision graph newest first
    /// (offline, like `alembic history`; --verbose adds parents, paths and checksums)
    History {
        #[command(flatten)]
        client: ClientArgs,
        #[arg(long, env = "FLOTILLA_HISTORY_TARGET")]
        target: Option<String>,
        /// Without --target: every revision's details
        #[arg(long, short = 'v', env = "FLOTILLA_HISTORY_VERBOSE")]
        verbose: bool,
    },
    /// Each target's current revision(s), or a fleet summary (like `alembic current`)
    Current(habits::CurrentArgs),
    /// Development reset of one target: downgrade it to base, after confirmation
    Reset(habits::ResetArgs),
    /// Record a target as being at a revision without running SQL
    Stamp {
        #[command(flatten)]
        client: ClientArgs,
        #[arg(long)]
        target: String,
        #[arg(long)]
        revision: String,
    },
    /// Resolve a dirty step: did it apply (--applied) or not (--not-applied)?
    Repair {
        #[command(flatten)]
        client: ClientArgs,
        #[arg(long)]
        target: String,
        /// The dirty revision (default: the one the target reports)
        #[arg(long)]
        revision: Option<String>,
        #[arg(
            long,
            conflicts_with = "not_applied",
            required_unless_present = "not_applied"
        )]
        applied: bool,
        #[arg(long)]
        not_applied: bool,
    },
    /// Wait until every selected target has a revision applied (Kubernetes init containers)
    Wait {
        #[command(flatten)]
        client: ClientArgs,
        /// The revision to wait for (`head` = every graph head)
        #[arg(long, env = "FLOTILLA_WAIT_REVISION")]
        revision: String,
        #[command(flatten)]
        select: SelectArgs,
        /// Give up after this long (e.g. 90s, 5m)
        #[arg(long, default_value = "5m", value_parser = parse_duration, env = "FLOTILLA_WAIT_TIMEOUT")]
        timeout: Duration,
        /// Pause between two checks
        #[arg(long, default_value = "2s", value_parser = parse_duration)]
        interval: Duration,
    },
}

/// Run an online command; returns the exit code.
pub async fn run(
    cmd: OnlineCommand,
    global: &GlobalArgs,
    out: &mut (dyn Write + Send),
) -> Result<u8, CliError> {
    let json = global.output == OutputFormat::Json;
    match cmd {
        OnlineCommand::Plan { client, spec } => {
            fleet::plan(&client, &spec, &global.migrations, json, out).await
        }
        OnlineCommand::Rollout(cmd) => rollout::run(cmd, &global.migrations, json, out).await,
        OnlineCommand::Fence(cmd) => fence::run(cmd, json, out).await,
        OnlineCommand::Adopt(args) => adopt::run(args, &global.migrations, json, out).await,
        OnlineCommand::Backups(args) => backups::run(args, json, out).await,
        OnlineCommand::Status { client, select } => {
            fleet::status(&client, &select, &global.migrations, json, out).await
        }
        OnlineCommand::Validate { client, select } => {
            fleet::validate(&client, &select, &global.migrations, json, out).await
        }
        OnlineCommand::History {
            client,
            target,
            verbose,
        } => target::history(&client, target, verbose, global, json, out).await,
        OnlineCommand::Current(args) => habits::current(args, global, out).await,
        OnlineCommand::Reset(args) => habits::reset(args, global, out).await,
        OnlineCommand::Stamp {
            client,
            target,
            revision,
        } => target::stamp(&client, target, revision, &global.migrations, json, out).await,
        OnlineCommand::Repair {
            client,
            target,
            revision,
            applied,
            not_applied: _,
        } => target::repair(&client, target, revision, applied, json, out).await,
        OnlineCommand::Wait {
            client,
            revision,
            select,
            timeout,
            interval,
        } => {
            let selector = select.selector()?;
            fleet::wait(
                &client,
                &global.migrations,
                &revision,
                selector,
                timeout,
                interval,
                json,
                out,
            )
            .await
        }
    }
}
