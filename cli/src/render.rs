//! How online commands print: left-aligned tables for people, one pretty JSON document for
//! `--output json`, and the names proto enums print as (rollout and target states, dialects,
//! directions). Used by `online`, `progress` and `demo`; it writes only to the `out` it is
//! given and decides no exit code.

mod fleet;
mod format;
mod names;
mod output;
mod rollout;
mod target;

pub(crate) use fleet::{fleet_status, plan, validate, write_fleet_table};
pub(crate) use format::{abbreviate, rfc3339};
pub(crate) use names::{state_name, target_state_name};
pub(crate) use output::{emit, row, write_table};
pub(crate) use rollout::{gate_line, rollout, rollout_json, rollouts, trace_note};
pub(crate) use target::{history, target};
