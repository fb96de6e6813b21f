//! The agent's error type and the one place it becomes a `tonic::Status`.
//!
//! Every status the agent returns carries a stable, machine-readable reason twice: as the
//! prefix of the message (`"LOCK_TIMEOUT: target t1: ..."`) and in the `flotilla-reason`
//! metadata entry. Clients match on the reason, never on the rest of the message.

use std::time::Duration;

use flotilla_core::fencing::epoch_of;
use flotilla_proto::FailureReason;
use tonic::{Code, Status};

use crate::config::ConfigError;

pub use flotilla_rpc::reason::{REASON_METADATA_KEY, Reason};

/// Everything that can go wrong in the agent, with the ids an operator needs.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("invalid request: {field}: {message}")]
    InvalidRequest { field: String, message: String },
    #[error(
        "unknown target {}: this agent does not serve it",
        flotilla_core::text::quoted(target)
    )]
    UnknownTarget { target: String },
    #[error(
        "target {target}: step {revision} declares checksum {declared} but its sql hashes to \
         {computed}: refusing to run it"
    )]
    ChecksumMismatch {
        target: String,
        revision: String,
        declared: String,
        computed: String,
    },
    #[error(
        "target {target}: revision {revision} was applied with checksum {applied} but the \
         request carries {requested}: the migration was edited after it was applied"
    )]
    AppliedChecksumMismatch {
        target: String,
        revision: String,
        applied: String,
        requested: String,
    },
    #[error("target {target}: {}", stale_token_reason(*offered, *current))]
    StaleToken {
        target: String,
        offered: u64,
        current: u64,
    },
    #[error(
        "target {target} is dirty: step {revision} did not finish cleanly; inspect the database, \
         then run repair for {revision} saying whether it counts as applied"
    )]
    TargetDirty { target: String, revision: String },
    #[error("target {target}: revision {revision} has no dirty step to repair")]
    NotDirty { target: String, revision: String },
    #[error("target {target} cannot be adopted: {reason}")]
    NotAdoptable { target: String, reason: String },
    #[error(
        "target {target}: could not take the migration lock within {}ms: another migration \
         holds it; retry later or raise the lock wait",
        waited.as_millis()
    )]
    LockTimeout { target: String, waited: Duration },
    #[error(
        "target {target}: step {revision} failed after {attempts} attempts with transient \
         errors: {last_error}"
    )]
    RetriesExhausted {
        target: String,
        revision: String,
        attempts: u32,
        last_error: String,
    },
    #[error(
        "target {target}: step {revision}: could not get {what} within {}, {attempts} attempts, \
         {blocked}; each attempt was rolled back, nothing of the step is applied: retry when \
         the blocking transaction ends (or end it)",
        flotilla_core::bounds::format_duration(*within)
    )]
    StepLockTimeout {
        target: String,
        revision: String,
        /// "the lock on accounts" or "a lock".
        what: String,
        within: Duration,
        attempts: u32,
        /// Who held it, as last seen ("blocked by pid 12 running ...").
        blocked: String,
    },
    #[error("target {target}: step {revision} failed: {message}")]
    Sql {
        target: String,
        revision: String,
        message: String,
        dirty: bool,
        rolled_back: bool,
    },
    /// A `-- migrate:check` query did not pass: the step did not run.
    #[error(
        "target {target}: the check of {revision} failed: {failure}; the step did not run and \
         the target is left as it was{note}: fix the data (or the check), then run the rollout \
         again"
    )]
    CheckFailed {
        target: String,
        revision: String,
        #[source]
        failure: Box<crate::driver::guard::GuardFailure>,
        /// What else the failure undid ("; the steps before it ... were rolled back").
        note: String,
    },
    /// A `-- migrate:verify` query did not pass after the step ran.
    #[error(
        "target {target}: the verify of {revision} failed after the step ran: {failure}{}{note}",
        if *dirty {
            "; the step cannot be rolled back (it is not transactional, or mysql ddl), so the \
             target is left dirty: inspect it, fix it, then run repair"
        } else {
            "; the step was rolled back"
        }
    )]
    VerifyFailed {
        target: String,
        revision: String,
        #[source]
        failure: Box<crate::driver::guard::GuardFailure>,
        dirty: bool,
        rolled_back: bool,
        note: String,
    },
    #[error(
        "target {target}: the backup before step {revision} failed, so the step did not run \
         and the target is untouched: {message}"
    )]
    BackupFailed {
        target: String,
        revision: String,
        message: String,
    },
    #[error(
        "target {target}: the plan is stale: it was computed from state {expected} but the \
         target is at {found}; re-plan from a fresh status"
    )]
    PlanStale {
        target: String,
        expected: String,
        found: String,
    },
    /// The target has another tool's version table and no Flotilla history, and the request
    /// does not say `allow_foreign`: nothing ran.
    #[error("target {target}: {reason}")]
    ForeignHistory { target: String, reason: String },
    #[error("target {target}: database error: {message}")]
    Database { target: String, message: String },
    #[error("target {target}: database unavailable: {message}")]
    Unavailable { target: String, message: String },
    /// The run stopped before a step: the agent shuts down, or the caller (the coordinator)
    /// stopped listening, which is not the agent's end: it keeps serving.
    #[error("target {target}: {}", if *client_left {
        "the caller stopped listening (the coordinator ended the call, or it or its connection \
         died): the steps that ran are committed and nothing more was started; the agent keeps \
         serving, and the coordinator re-plans this target from its state when it retries"
    } else {
        "the agent is shutting down; nothing more was started"
    })]
    Cancelled { target: String, client_left: bool },
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("target discovery failed: {0}")]
    Discovery(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl AgentError {
    pub(crate) fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        AgentError::InvalidRequest {
            field: field.into(),
            message: message.into(),
        }
    }

    pub fn reason(&self) -> Reason {
        match self {
            AgentError::InvalidRequest { .. } => Reason::InvalidRequest,
            AgentError::UnknownTarget { .. } => Reason::UnknownTarget,
            AgentError::ChecksumMismatch { .. } | AgentError::AppliedChecksumMismatch { .. } => {
                Reason::ChecksumMismatch
            }
            AgentError::StaleToken { .. } => Reason::StaleFencingToken,
            AgentError::TargetDirty { .. } => Reason::TargetDirty,
            AgentError::NotDirty { .. } => Reason::NotDirty,
            AgentError::NotAdoptable { .. } => Reason::NotAdoptable,
            AgentError::LockTimeout { .. } | AgentError::StepLockTimeout { .. } => {
                Reason::LockTimeout
            }
            AgentError::RetriesExhausted { .. } => Reason::RetriesExhausted,
            AgentError::Sql { .. } | AgentError::Database { .. } => Reason::SqlError,
            AgentError::BackupFailed { .. } => Reason::BackupFailed,
            AgentError::CheckFailed { .. } => Reason::CheckFailed,
            AgentError::VerifyFailed { .. } => Reason::VerifyFailed,
            AgentError::Unavailable { .. } => Reason::DatabaseUnavailable,
            AgentError::Cancelled { .. } => Reason::Cancelled,
            AgentError::PlanStale { .. } => Reason::PlanStale,
            AgentError::ForeignHistory { .. } => Reason::ForeignHistory,
            AgentError::Config(_) | AgentError::Discovery(_) => Reason::Config,
            AgentError::Internal(_) => Reason::Internal,
        }
    }

    pub fn code(&self) -> Code {
        match self {
            AgentError::InvalidRequest { .. } | AgentError::ChecksumMismatch { .. } => {
                Code::InvalidArgument
            }
            AgentError::UnknownTarget { .. } => Code::NotFound,
            AgentError::AppliedChecksumMismatch { .. }
            | AgentError::StaleToken { .. }
            | AgentError::TargetDirty { .. }
            | AgentError::NotDirty { .. }
            | AgentError::PlanStale { .. }
            | AgentError::ForeignHistory { .. }
            | AgentError::BackupFailed { .. }
            | AgentError::CheckFailed { .. }
            | AgentError::NotAdoptable { .. } => Code::FailedPrecondition,
            AgentError::LockTimeout { .. } | AgentError::StepLockTimeout { .. } => {
                Code::DeadlineExceeded
            }
            AgentError::RetriesExhausted { .. }
            | AgentError::Unavailable { .. }
            | AgentError::Cancelled { .. } => Code::Unavailable,
            AgentError::Sql { .. }
            | AgentError::Database { .. }
            | AgentError::VerifyFailed { .. } => Code::Aborted,
            AgentError::Config(_) | AgentError::Discovery(_) | AgentError::Internal(_) => {
                Code::Internal
            }
        }
    }

    /// The `FailureReason` of the `StepFailed` event streamed before this error.
    pub fn failure_reason(&self) -> FailureReason {
        match self {
            AgentError::ChecksumMismatch { .. } | AgentError::AppliedChecksumMismatch { .. } => {
                FailureReason::ChecksumMismatch
            }
            AgentError::StaleToken { .. } => FailureReason::StaleFencingToken,
            AgentError::TargetDirty { .. } => FailureReason::TargetDirty,
            AgentError::LockTimeout { .. } | AgentError::StepLockTimeout { .. } => {
                FailureReason::LockTimeout
            }
            AgentError::RetriesExhausted { .. } | AgentError::Unavailable { .. } => {
                FailureReason::RetriesExhausted
            }
            AgentError::Cancelled { .. } => FailureReason::Cancelled,
            AgentError::BackupFailed { .. } => FailureReason::BackupFailed,
            AgentError::CheckFailed { .. } => FailureReason::CheckFailed,
            AgentError::VerifyFailed { .. } => FailureReason::VerifyFailed,
            AgentError::InvalidRequest { .. } | AgentError::UnknownTarget { .. } => {
                FailureReason::InvalidStep
            }
            AgentError::Sql { .. }
            | AgentError::Database { .. }
            | AgentError::NotDirty { .. }
            | AgentError::PlanStale { .. }
            | AgentError::ForeignHistory { .. }
            | AgentError::NotAdoptable { .. }
            | AgentError::Config(_)
            | AgentError::Discovery(_)
            | AgentError::Internal(_) => FailureReason::SqlError,
        }
    }

    /// The single mapping from agent errors to gRPC statuses (code + stable reason).
    pub fn to_status(&self) -> Status {
        let reason = self.reason().as_str();
        let mut status = Status::new(self.code(), format!("{reason}: {self}"));
        if let Ok(v) = reason.parse() {
            status.metadata_mut().insert(REASON_METADATA_KEY, v);
        }
        status
    }
}

impl From<AgentError> for Status {
    fn from(e: AgentError) -> Status {
        e.to_status()
    }
}

/// Why a token was refused: the same lock backend's newer term, or another backend's
/// (a lower fencing epoch, `flotilla_core::fencing`), each with what to do.
fn stale_token_reason(offered: u64, current: u64) -> String {
    let (ours, theirs) = (epoch_of(offered), epoch_of(current));
    if ours < theirs {
        format!(
            "stale fencing token {offered} (fencing epoch {ours}): this fleet follows fencing \
             epoch {theirs} (token {current} was accepted or announced), which \
             `flotilla fence takeover` gave another lock backend; this coordinator's lock \
             backend is not the one the fleet follows: stop this coordinator, or, if its \
             backend is to lead from now on, stop the others and run \
             `flotilla fence takeover --yes` against it"
        )
    } else {
        format!(
            "stale fencing token {offered}: token {current} was already accepted or announced; \
             another coordinator holds the lock (if none holds {current}: after a change of \
             lock backend or a recreated etcd cluster, run `flotilla fence takeover --yes` \
             against the coordinator that is to lead; otherwise see README \
             \"Recovering from a poisoned fencing token\")"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_carries_code_and_reason() {
        let e = AgentError::LockTimeout {
            target: "t1".into(),
            waited: Duration::from_millis(250),
        };
        let s = e.to_status();
        assert_eq!(s.code(), Code::DeadlineExceeded);
        assert!(
            s.message().starts_with("LOCK_TIMEOUT: target t1: "),
            "{}",
            s.message()
        );
        assert!(s.message().contains("250ms"));
        assert_eq!(Reason::of_status(&s), Some("LOCK_TIMEOUT"));
    }

    #[test]
    fn a_stale_token_says_whether_another_backend_took_over() {
        let same = AgentError::StaleToken {
            target: "t1".into(),
            offered: 5,
            current: 7,
        }
        .to_string();
        assert!(
            same.contains("another coordinator holds the lock"),
            "{same}"
        );
        let other = AgentError::StaleToken {
            target: "t1".into(),
            offered: 7,
            current: (1 << 40) | 2,
        }
        .to_string();
        assert!(
            other.contains("fencing epoch 0")
                && other.contains("follows fencing epoch 1")
                && other.contains("flotilla fence takeover --yes"),
            "{other}"
        );
    }
}
