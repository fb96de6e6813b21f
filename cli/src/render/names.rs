//! The names proto enums print as, in tables, JSON and progress lines: rollout and target
//! states, dialects, step directions.

use flotilla_coordinator::rollout::RolloutState;
use flotilla_proto as pb;

pub(crate) fn dialect_name(d: i32) -> &'static str {
    match pb::Dialect::try_from(d).unwrap_or_default() {
        pb::Dialect::Postgres => "postgres",
        pb::Dialect::Mysql => "mysql",
        pb::Dialect::Sqlite => "sqlite",
        pb::Dialect::Unspecified => "-",
    }
}

pub(crate) fn direction_name(d: i32) -> &'static str {
    match pb::Direction::try_from(d).unwrap_or_default() {
        pb::Direction::Up => "up",
        pb::Direction::Down => "down",
        pb::Direction::Unspecified => "-",
    }
}

pub(crate) fn state_name(s: i32) -> &'static str {
    RolloutState::from_proto(pb::RolloutState::try_from(s).unwrap_or_default()).as_str()
}

pub(crate) fn target_state_name(s: i32) -> &'static str {
    match pb::TargetState::try_from(s).unwrap_or_default() {
        pb::TargetState::Unspecified | pb::TargetState::Pending => "pending",
        pb::TargetState::Running => "running",
        pb::TargetState::Succeeded => "succeeded",
        pb::TargetState::Failed => "failed",
        pb::TargetState::Skipped => "skipped",
        pb::TargetState::Blocked => "blocked",
    }
}

/// A project as printed: `default` for the empty name (records from before projects).
pub(crate) fn project_name(p: &str) -> &str {
    if p.is_empty() {
        flotilla_core::project::DEFAULT_PROJECT
    } else {
        p
    }
}
