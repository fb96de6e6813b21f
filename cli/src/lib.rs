//! The `flotilla` command line: the [`Cli`] parser and its [`Command`] enum. Offline
//! commands (working on the migration files only) live in [`offline`]; online commands (a
//! coordinator over gRPC) in [`online`]; the shared flags in [`args`], errors in [`error`],
//! exit codes in [`exit`], table and JSON output in `render`.
//!
//! Exit codes: 0 success, 1 error, 2 usage error (from clap), 3 `check`/`validate` found
//! problems, 4 rollout failed, 5 `wait` timed out, 6 targets blocked.

use clap::{Parser, Subcommand};

pub use flotilla_coordinator::telemetry::LogFormat;

pub mod args;
pub mod demo;
pub mod error;
pub mod exit;
pub mod import;
pub mod offline;
pub mod online;
pub mod progress;
mod render;
pub mod runtime;
pub mod serve;

pub use args::{GlobalArgs, OutputFormat};
pub use error::CliError;
pub use exit::{EXIT_ERROR, EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE, Outcome};
pub use offline::OfflineCommand;

/// What `flotilla --help` ends with: exit codes and logging.
fn after_help() -> String {
    format!(
        "Online commands take --coordinator and --tls-* before or after the command name.\n\nExit codes: 0 ok, 1 error, 2 usage error, 3 `check`/`validate` found problems, 4 rollout failed, halted or aborted, 5 `wait` timed out, 6 targets blocked (a refused downgrade, or a rollout that ended `blocked`)\n\n{}",
        flotilla_rpc::telemetry::LOG_HELP
    )
}

/// Flotilla: roll schema migrations out across a fleet of databases.
#[derive(Debug, Parser)]
#[command(name = "flotilla", version, about, propagate_version = true)]
#[command(
    after_help = after_help()
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    /// `--coordinator` and `--tls-*` before the command: handed to the online command.
    #[command(flatten)]
    pub client: online::GlobalClientArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    #[command(flatten)]
    Offline(OfflineCommand),
    #[command(flatten)]
    Online(online::OnlineCommand),
    /// Serve the coordinator: lead rollouts while holding the fleet lock, or stand by
    Coordinator(serve::ServeArgs),
    /// Run the whole system locally: SQLite tenants, embedded agents, a rollout to head
    Demo(demo::DemoArgs),
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
