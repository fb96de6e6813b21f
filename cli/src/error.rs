//! [`CliError`]: why a command failed, and the exit code each failure maps to.

use std::path::PathBuf;

use flotilla_revision::{ParseErrors, RenderError};

use flotilla_coordinator::rollout::SelectorError;

use crate::exit::{EXIT_BLOCKED, EXIT_ERROR, EXIT_USAGE};

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
    /// A selector outside its bounds, found before any call: exit code 2.
    #[error(transparent)]
    Selector(#[from] SelectorError),
    /// The coordinator refused the request's input (INVALID_ARGUMENT: a selector that
    /// matches no target, an unknown goal): exit code 2.
    #[error("{0}")]
    Usage(String),
    /// `rollout start` refused a downgrade that would block targets: exit code 6.
    #[error("{0}")]
    WouldBlock(String),
}

impl CliError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::WouldBlock(_) => EXIT_BLOCKED,
            CliError::Selector(_) | CliError::Usage(_) => EXIT_USAGE,
            _ => EXIT_ERROR,
        }
    }
}
