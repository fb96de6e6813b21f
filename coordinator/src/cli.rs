//! The `flotilla` command line: global flags, the command enum and exit codes. Offline
//! commands (working on the migration files only) live in [`offline`]; online commands are
//! added to [`Command`] next to them.
//!
//! Exit codes: 0 success, 1 error, 2 usage error (from clap), 3 `check`/`validate` found
//! problems, 4 rollout failed, 5 `wait` timed out, 6 targets blocked.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::revision::{ParseErrors, RenderError};
pub use crate::telemetry::LogFormat;

pub mod offline;
pub mod online;
pub mod progress;
pub mod serve;

pub use offline::OfflineCommand;

/// Exit code: the command succeeded.
pub const EXIT_OK: u8 = 0;
/// Exit code: the command failed (message on stderr).
pub const EXIT_ERROR: u8 = 1;
/// Exit code: bad flags or arguments (clap's own code).
pub const EXIT_USAGE: u8 = 2;
/// Exit code: `flotilla check` found errors (or warnings with `--strict`).
pub const EXIT_PROBLEMS: u8 = 3;

/// Flotilla: roll schema migrations out across a fleet of databases.
#[derive(Debug, Parser)]
#[command(name = "flotilla", version, about, propagate_version = true)]
#[command(
    after_help = "Exit codes: 0 ok, 1 error, 2 usage error, 3 `check`/`validate` found problems, 4 rollout failed, halted or aborted, 5 `wait` timed out, 6 targets blocked (a refused downgrade, or a rollout that ended `blocked`)"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every command accepts.
#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// Directory holding the migration files (searched recursively for *.sql)
    #[arg(
        long,
        global = true,
        env = "FLOTILLA_MIGRATIONS",
        default_value = "migrations",
        value_name = "DIR"
    )]
    pub migrations: PathBuf,
    /// Output format
    #[arg(
        long,
        global = true,
        env = "FLOTILLA_OUTPUT",
        value_enum,
        default_value_t = OutputFormat::Human
    )]
    pub output: OutputFormat,
    /// Log format (logs go to stderr; both carry trace ids inside a span)
    #[arg(
        long,
        global = true,
        env = "FLOTILLA_LOG_FORMAT",
        value_enum,
        default_value_t = LogFormat::Human
    )]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Readable text
    Human,
    /// One JSON document on stdout
    Json,
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
    Demo(crate::demo::DemoArgs),
}

/// How a command that did not fail ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// `check` found problems: exit code 3.
    Problems,
}

impl Outcome {
    pub fn exit_code(self) -> u8 {
        match self {
            Outcome::Success => EXIT_OK,
            Outcome::Problems => EXIT_PROBLEMS,
        }
    }
}

/// Why a CLI command failed (exit code 1).
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Invalid(#[from] ParseErrors),
    #[error(transparent)]
    Render(#[from] RenderError),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write output: {0}")]
    Output(#[source] std::io::Error),
    #[error("cannot encode json: {0}")]
    Json(#[from] serde_json::Error),
    #[error("{0}")]
    Refused(String),
    /// `rollout start` refused a downgrade that would block targets: exit code 6.
    #[error("{0}")]
    WouldBlock(String),
}

impl CliError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::WouldBlock(_) => online::EXIT_BLOCKED,
            _ => EXIT_ERROR,
        }
    }
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
