//! A target's state in its proto form (`TargetStatus`): what Status, Migrate's last event,
//! Stamp, Repair, Adopt and RestoreBackup report about a target.

use flotilla_proto::{AppliedRevision, TargetStatus};

use crate::target::Target;
use flotilla_core::history::{HistoryRow, TargetState};
use flotilla_rpc::convert::DialectProto;
use flotilla_rpc::convert::DirectionProto;

fn applied_revision(row: &HistoryRow) -> AppliedRevision {
    AppliedRevision {
        revision: row.revision.clone(),
        checksum: row.checksum.clone(),
        direction: row.direction.to_proto() as i32,
        status: row.status.as_str().to_owned(),
        applied_at_unix_ms: row.applied_at_ms,
        duration_ms: row.duration_ms,
        rollout_id: row.rollout_id.clone(),
        agent_id: row.agent_id.clone(),
        fencing_token: row.fencing_token,
    }
}

pub(crate) fn target_status(
    target: &Target,
    state: &TargetState,
    include_history: bool,
) -> TargetStatus {
    let mut ts = empty_status(target);
    let applied = state.applied();
    ts.applied = applied.iter().map(|r| applied_revision(r)).collect();
    // The agent does not know the revision graph: its head is the newest applied revision;
    // the coordinator derives the graph heads from `applied`.
    ts.heads = applied
        .last()
        .map(|r| r.revision.clone())
        .into_iter()
        .collect();
    if let Some(d) = state.dirty() {
        ts.dirty = true;
        ts.dirty_revision = d.revision.clone();
    }
    ts.last_step = state.last_step().map(applied_revision);
    ts.fence_token = state.fence_token;
    if include_history {
        ts.history = state.history.iter().map(applied_revision).collect();
    }
    ts
}

pub(crate) fn empty_status(target: &Target) -> TargetStatus {
    TargetStatus {
        target_id: target.id.clone(),
        dialect: target.dialect.to_proto() as i32,
        labels: target
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        host: target.driver.host(),
        ..TargetStatus::default()
    }
}
