//! What the executor knows about one step across attempts: how far it got, whether the
//! target shows it already done (idempotency), and the error a database failure ends it with.

use super::{Executor, Failure, PlannedStep, driver_error};
use crate::driver::DriverError;
use crate::driver::guard::GuardKind;
use crate::error::AgentError;
use flotilla_core::Direction;
use flotilla_core::history::{HistoryRow, TargetState};

/// How far a step got, carried across attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Progress {
    /// Nothing of this step was sent to the database.
    Fresh,
    /// The step's transaction (or its dirty mark) was sent: it may have committed.
    Sent,
    /// The dirty mark is committed; the first `done` statements of the SQL ran (MySQL: an
    /// earlier attempt stopped at a lock wait or deadlock, which applied nothing of its
    /// statement), the rest has not.
    Marked { row_id: i64, done: usize },
    /// The non-transactional SQL is running (an error here leaves the target dirty, except a
    /// MySQL lock wait or deadlock, which returns to `Marked`).
    Executing { row_id: i64, done: usize },
    /// The SQL ran; the dirty row remains to be marked clean.
    Executed { row_id: i64, duration_ms: u64 },
}

pub(super) enum Outcome {
    Applied,
    Skipped(&'static str),
}

impl Executor {
    /// The final error for a database error that is not retried.
    pub(super) fn step_error(
        &self,
        step: &PlannedStep,
        progress: Progress,
        e: DriverError,
    ) -> AgentError {
        let target = self.target.id.clone();
        let revision = step.spec.revision.clone();
        match (e, progress) {
            (e @ DriverError::StaleToken { .. }, _) => driver_error(&target, e),
            (DriverError::Guard(failure), _) if failure.kind == GuardKind::Check => {
                AgentError::CheckFailed {
                    target,
                    revision,
                    failure: Box::new(failure),
                    note: String::new(),
                }
            }
            // A verify runs after the statements: in the step's transaction (rolled back with
            // it), or after a dirty-protocol step's statements (the target stays dirty).
            (DriverError::Guard(failure), _) => AgentError::VerifyFailed {
                target,
                revision,
                failure: Box::new(failure),
                dirty: step.dirty_protocol,
                rolled_back: !step.dirty_protocol,
                note: String::new(),
            },
            (DriverError::Transient { class, message }, _) => AgentError::Sql {
                target,
                revision,
                message: format!(
                    "{class} error while the non-transactional step ran ({message}); it may be \
                     half-applied and the target is left dirty"
                ),
                dirty: true,
                rolled_back: false,
            },
            (DriverError::Permanent { message }, Progress::Sent) if !step.dirty_protocol => {
                AgentError::Sql {
                    target,
                    revision,
                    message,
                    dirty: false,
                    rolled_back: true,
                }
            }
            (
                DriverError::Permanent { message },
                Progress::Executing { .. } | Progress::Executed { .. },
            ) => AgentError::Sql {
                target,
                revision,
                message,
                dirty: true,
                rolled_back: false,
            },
            (DriverError::Permanent { message }, _) => AgentError::Database { target, message },
        }
    }

    pub(super) fn is_ours(&self, row: &HistoryRow, step: &PlannedStep) -> bool {
        row.revision == step.spec.revision
            && row.direction == step.spec.direction
            && row.rollout_id == self.meta.rollout_id
            && row.agent_id == self.meta.agent_id
            && row.fencing_token == self.meta.fencing_token
    }

    /// Whether the step is already done: skipped on a first look, applied (by an earlier
    /// attempt whose reply was lost) when it was sent before.
    pub(super) fn already_done(
        &self,
        state: &TargetState,
        step: &PlannedStep,
        sent: bool,
    ) -> Result<Option<Outcome>, Failure> {
        let spec = &step.spec;
        let applied = state
            .applied()
            .into_iter()
            .find(|r| r.revision == spec.revision);
        let mismatch = |applied: &str, requested: &str| {
            Failure::Fatal(AgentError::AppliedChecksumMismatch {
                target: self.target.id.clone(),
                revision: spec.revision.clone(),
                applied: applied.to_owned(),
                requested: requested.to_owned(),
            })
        };
        match (spec.direction, applied) {
            (Direction::Up, Some(row)) if row.checksum == spec.checksum => Ok(Some(if sent {
                Outcome::Applied
            } else {
                Outcome::Skipped("already applied")
            })),
            (Direction::Up, Some(row)) => Err(mismatch(&row.checksum, &spec.checksum)),
            (Direction::Down, None) => Ok(Some(if sent {
                Outcome::Applied
            } else {
                Outcome::Skipped("not applied")
            })),
            (Direction::Down, Some(row))
                if !step.up_checksum.is_empty() && row.checksum != step.up_checksum =>
            {
                Err(mismatch(&row.checksum, &step.up_checksum))
            }
            _ => Ok(None),
        }
    }
}
