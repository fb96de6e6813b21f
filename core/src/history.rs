//! The per-target history log (`flotilla_history`) and the state derived from it: the
//! applied set, heads, the dirty step. Pure: drivers read rows, this module interprets them.

use crate::types::Direction;

/// Status of one history row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RowStatus {
    /// The step ran and committed.
    Applied,
    /// A non-transactional step started and did not finish cleanly; blocks the target.
    Dirty,
    /// Recorded by `Stamp` without running SQL; counts like `Applied`.
    Stamped,
    /// A dirty step that `Repair` declared not applied; ignored.
    Abandoned,
    /// Recorded by `Adopt` from another tool's version table, without running SQL; counts
    /// like `Applied`.
    Adopted,
    /// `RestoreBackup` put back the data a step's backup saved; changes no applied set.
    Restored,
}

impl RowStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RowStatus::Applied => "applied",
            RowStatus::Dirty => "dirty",
            RowStatus::Stamped => "stamped",
            RowStatus::Abandoned => "abandoned",
            RowStatus::Adopted => "adopted",
            RowStatus::Restored => "restored",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "applied" => RowStatus::Applied,
            "dirty" => RowStatus::Dirty,
            "stamped" => RowStatus::Stamped,
            "abandoned" => RowStatus::Abandoned,
            "adopted" => RowStatus::Adopted,
            "restored" => RowStatus::Restored,
            _ => return None,
        })
    }

    /// Whether the row changes the applied set.
    pub fn counts(self) -> bool {
        matches!(
            self,
            RowStatus::Applied | RowStatus::Stamped | RowStatus::Adopted
        )
    }
}

/// One row of `flotilla_history`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HistoryRow {
    pub id: i64,
    pub revision: String,
    pub checksum: String,
    pub direction: Direction,
    pub status: RowStatus,
    pub applied_at_ms: i64,
    pub duration_ms: u64,
    pub rollout_id: String,
    pub agent_id: String,
    pub fencing_token: u64,
}

/// Everything the agent knows about a target from its own tables.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TargetState {
    /// Rows in id order.
    pub history: Vec<HistoryRow>,
    /// Highest fencing token the target has accepted (0 when none yet).
    pub fence_token: u64,
}

impl TargetState {
    /// The applied set in application order: replay of applied/stamped rows, where an up row
    /// adds the revision and a down row removes it.
    pub fn applied(&self) -> Vec<&HistoryRow> {
        let mut applied: Vec<&HistoryRow> = Vec::new();
        for row in &self.history {
            if !row.status.counts() {
                continue;
            }
            applied.retain(|r| r.revision != row.revision);
            if row.direction == Direction::Up {
                applied.push(row);
            }
        }
        applied
    }

    /// Whether `revision` is currently applied.
    pub fn is_applied(&self, revision: &str) -> bool {
        self.applied().iter().any(|r| r.revision == revision)
    }

    /// The unresolved dirty row, if any (the newest one).
    pub fn dirty(&self) -> Option<&HistoryRow> {
        self.history
            .iter()
            .rev()
            .find(|r| r.status == RowStatus::Dirty)
    }

    /// The newest row that changed the applied set.
    pub fn last_step(&self) -> Option<&HistoryRow> {
        self.history.iter().rev().find(|r| r.status.counts())
    }

    /// [`state_digest`] of this state: what a plan computed from it was based on.
    pub fn digest(&self) -> String {
        state_digest(
            self.applied()
                .into_iter()
                .map(|r| (r.revision.as_str(), r.checksum.as_str())),
            self.dirty().map(|r| r.revision.as_str()),
        )
    }
}

/// The digest of a target's state as a planner sees it: the applied set (revision and
/// checksum, order-independent) and the dirty revision, if any. A coordinator sends the
/// digest of the state it planned from (`MigrateRequest.expected_state`); the agent compares
/// it with the target's state under the migration lock and refuses a stale plan, so a plan
/// never runs against a state it was not computed from.
pub fn state_digest<'a>(
    applied: impl IntoIterator<Item = (&'a str, &'a str)>,
    dirty: Option<&str>,
) -> String {
    use sha2::{Digest, Sha256};
    let mut pairs: Vec<(&str, &str)> = applied.into_iter().collect();
    pairs.sort_unstable();
    let mut h = Sha256::new();
    for (revision, checksum) in pairs {
        h.update(revision.as_bytes());
        h.update([0]);
        h.update(checksum.as_bytes());
        h.update([b'\n']);
    }
    if let Some(d) = dirty {
        h.update(b"dirty\0");
        h.update(d.as_bytes());
    }
    hex::encode(h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: i64, rev: &str, dir: Direction, status: RowStatus) -> HistoryRow {
        HistoryRow {
            id,
            revision: rev.into(),
            checksum: format!("c{rev}"),
            direction: dir,
            status,
            applied_at_ms: id,
            duration_ms: 1,
            rollout_id: "r".into(),
            agent_id: "a".into(),
            fencing_token: 1,
        }
    }

    #[test]
    fn applied_set_replays_up_and_down() {
        use Direction::*;
        use RowStatus::*;
        let st = TargetState {
            history: vec![
                row(1, "a", Up, Applied),
                row(2, "b", Up, Applied),
                row(3, "c", Up, Stamped),
                row(4, "b", Down, Applied),
                row(5, "d", Up, Abandoned),
                row(6, "e", Up, Dirty),
            ],
            fence_token: 1,
        };
        let ids: Vec<_> = st.applied().iter().map(|r| r.revision.as_str()).collect();
        assert_eq!(ids, ["a", "c"]);
        assert_eq!(st.dirty().map(|r| r.revision.as_str()), Some("e"));
        assert_eq!(st.last_step().map(|r| r.id), Some(4));
        assert!(!st.is_applied("d"));
    }

    #[test]
    fn state_digest_ignores_order_and_sees_checksums_and_dirt() {
        let a = state_digest([("a", "1"), ("b", "2")], None);
        assert_eq!(a, state_digest([("b", "2"), ("a", "1")], None));
        assert_ne!(a, state_digest([("a", "1"), ("b", "3")], None));
        assert_ne!(a, state_digest([("a", "1")], None));
        assert_ne!(a, state_digest([("a", "1"), ("b", "2")], Some("c")));
        assert_ne!(
            state_digest([("ab", "1")], None),
            state_digest([("a", "b1")], None)
        );
    }
}
