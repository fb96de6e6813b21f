//! The engine's errors, mapped to gRPC codes in one place (`api.rs`'s `status_of`), and the
//! messages for what was not found.

use std::sync::Arc;

use crate::store::StoreError;

/// Engine errors, mapped to gRPC codes in one place (`api.rs`'s `status_of`).
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(
        "this coordinator is not the leader; retry against the leader or wait for it to take the lock"
    )]
    NotLeader,
    /// What was not found, as the message shows it (input escaped: `rollout_not_found`,
    /// `target_not_found`).
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    InvalidArgument(String),
    /// A goal that does not parse.
    #[error("goal {}: {source}", flotilla_core::text::quoted(goal))]
    InvalidGoal {
        goal: String,
        #[source]
        source: flotilla_revision::InvalidGoal,
    },
    #[error("leadership lost: fencing token {0} is stale")]
    Fenced(u64),
    /// The state store failed (a fenced refusal is [`EngineError::Fenced`] instead).
    #[error("state store: {0}")]
    Store(#[source] StoreError),
    /// A record could not be encoded for the store.
    #[error("state store: {0}")]
    Encode(#[source] serde_json::Error),
    /// A stored record (`what`: the rollout or the key) could not be decoded.
    #[error("state store: {what}: {source}")]
    Decode {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    /// A background write of target records failed earlier (see `engine/batch.rs`); every
    /// later write of that rollout in this term reports it.
    #[error("state store: {0}")]
    WriteBehind(#[source] Arc<EngineError>),
    /// A target's task panicked or was cancelled.
    #[error("state store: target task failed: {0}")]
    TargetTask(#[source] tokio::task::JoinError),
    /// A set's validation, run off the runtime (`sets::check_off_runtime`), panicked.
    #[error("set validation failed: {0}")]
    SetCheck(#[source] tokio::task::JoinError),
    #[error("{0}")]
    Unavailable(String),
    /// The wave gate could not ask an agent for its targets' fingerprints.
    #[error("fingerprint gate: agent {agent_id}: {}", .source.message())]
    Gate {
        agent_id: String,
        #[source]
        source: Box<tonic::Status>,
    },
    /// `StartRollout` refused: the plan would block selected targets (a downgrade).
    #[error("{0}")]
    WouldBlock(String),
    /// `StartRollout` / `Plan` refused: revisions to apply have destructive findings that
    /// are not allowed.
    #[error("{0}")]
    Destructive(String),
    /// An uploaded (or the default) set does not validate: every error, file:line.
    #[error("{0}")]
    SetInvalid(String),
    /// A request names a set the state store does not hold.
    #[error(
        "the coordinator has no migration set {0}: upload it first (the CLI does when given --migrations DIR)"
    )]
    SetUnknown(String),
    /// A request names no set and the coordinator has no default one.
    #[error(
        "no migration set: run the command with --migrations DIR (the CLI uploads the set), or start the coordinator with --migrations"
    )]
    NoSet,
    /// A stored set cannot be read back intact.
    #[error("{0}")]
    SetCorrupt(String),
}

/// `NotFound` for a rollout id as given (escaped).
pub(crate) fn rollout_not_found(id: &str) -> String {
    format!(
        "rollout {} not found: `flotilla rollout list` shows the rollouts",
        flotilla_core::text::quoted(id)
    )
}

/// `NotFound` for a target id as given (escaped).
pub(crate) fn target_not_found(id: &str) -> String {
    format!(
        "target {} not found: no agent serves it (`flotilla status` lists the targets)",
        flotilla_core::text::quoted(id)
    )
}

impl From<StoreError> for EngineError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Fenced { token } => EngineError::Fenced(token),
            other => EngineError::Store(other),
        }
    }
}
