//! The stable, machine-readable reason every error status of the agent carries (as the
//! message prefix and in the `flotilla-reason` metadata entry). Clients match on the reason,
//! never on the rest of the message.

use tonic::Status;

/// Metadata key holding the stable reason of an error status.
pub const REASON_METADATA_KEY: &str = "flotilla-reason";

/// Stable reasons, one per kind of failure. Their strings are a public contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    InvalidRequest,
    UnknownTarget,
    ChecksumMismatch,
    StaleFencingToken,
    TargetDirty,
    NotDirty,
    NotAdoptable,
    LockTimeout,
    RetriesExhausted,
    SqlError,
    DatabaseUnavailable,
    Cancelled,
    PlanStale,
    /// Another tool's version table and no Flotilla history: adopt the target first.
    ForeignHistory,
    BackupFailed,
    /// A `-- migrate:check` query did not pass: the step did not run (the target is blocked).
    CheckFailed,
    /// A `-- migrate:verify` query did not pass after the step: rolled back, or dirty.
    VerifyFailed,
    Config,
    Internal,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::InvalidRequest => "INVALID_REQUEST",
            Reason::UnknownTarget => "UNKNOWN_TARGET",
            Reason::ChecksumMismatch => "CHECKSUM_MISMATCH",
            Reason::StaleFencingToken => "STALE_FENCING_TOKEN",
            Reason::TargetDirty => "TARGET_DIRTY",
            Reason::NotDirty => "NOT_DIRTY",
            Reason::NotAdoptable => "NOT_ADOPTABLE",
            Reason::LockTimeout => "LOCK_TIMEOUT",
            Reason::RetriesExhausted => "RETRIES_EXHAUSTED",
            Reason::SqlError => "SQL_ERROR",
            Reason::DatabaseUnavailable => "DATABASE_UNAVAILABLE",
            Reason::Cancelled => "CANCELLED",
            Reason::PlanStale => "PLAN_STALE",
            Reason::ForeignHistory => "FOREIGN_HISTORY",
            Reason::BackupFailed => "BACKUP_FAILED",
            Reason::CheckFailed => "CHECK_FAILED",
            Reason::VerifyFailed => "VERIFY_FAILED",
            Reason::Config => "CONFIG",
            Reason::Internal => "INTERNAL",
        }
    }

    /// Parse the reason back out of a status produced by the agent (metadata first, then
    /// the message prefix).
    pub fn of_status(status: &Status) -> Option<&str> {
        if let Some(v) = status.metadata().get(REASON_METADATA_KEY) {
            return v.to_str().ok();
        }
        status.message().split_once(": ").map(|(r, _)| r)
    }
}
