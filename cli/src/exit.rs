//! The process exit codes of every command, and [`Outcome`], how a command that did not
//! fail ended.
//!
//! Exit codes: 0 success, 1 error, 2 usage error (from clap), 3 `check`/`validate` found
//! problems, 4 rollout failed, 5 `wait` timed out, 6 targets blocked.

/// Exit code: the command succeeded.
pub const EXIT_OK: u8 = 0;
/// Exit code: the command failed (message on stderr).
pub const EXIT_ERROR: u8 = 1;
/// Exit code: bad flags or arguments (clap's own code), a selector outside its bounds, or
/// input the coordinator refused (a selector matching no target, an unknown goal).
pub const EXIT_USAGE: u8 = 2;
/// Exit code: `flotilla check` found errors (or warnings with `--strict`).
pub const EXIT_PROBLEMS: u8 = 3;
/// Exit code: the rollout failed, halted or was aborted (`rollout start --wait`, `watch`).
pub const EXIT_ROLLOUT_FAILED: u8 = 4;
/// Exit code: `flotilla wait` timed out before the targets reached the revision.
pub const EXIT_TIMEOUT: u8 = 5;
/// Exit code: selected targets are blocked. `rollout start` refused a downgrade that would
/// block targets (nothing ran), or a rollout ended `blocked` (`--wait`, `watch`).
pub const EXIT_BLOCKED: u8 = 6;

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
