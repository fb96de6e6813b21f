//! The form a cached status read is kept in. Every target of a fleet repeats the same
//! revisions, checksums, rollout ids and agent ids, so a cached state holds shared copies of
//! them (one per distinct string across all targets) instead of four `String`s per history
//! row: an agent serving thousands of files keeps about 1 KB per target instead of 2.7 KB.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use flotilla_core::Direction;
use flotilla_core::history::{HistoryRow, RowStatus, TargetState};

/// One distinct copy of each string the cached states hold. Entries nobody else holds any
/// more are dropped whenever the set has doubled since the last sweep, so it stays in
/// proportion to what the caches use.
#[derive(Default)]
struct Strings {
    set: HashSet<Arc<str>>,
    swept_at: usize,
}

static STRINGS: Mutex<Option<Strings>> = Mutex::new(None);

fn intern(strings: &mut Strings, s: &str) -> Arc<str> {
    if let Some(shared) = strings.set.get(s) {
        return shared.clone();
    }
    if strings.set.len() >= strings.swept_at.max(64) * 2 {
        strings.set.retain(|s| Arc::strong_count(s) > 1);
        strings.swept_at = strings.set.len();
    }
    let shared: Arc<str> = Arc::from(s);
    strings.set.insert(shared.clone());
    shared
}

#[derive(Debug)]
struct Row {
    id: i64,
    revision: Arc<str>,
    checksum: Arc<str>,
    direction: Direction,
    status: RowStatus,
    applied_at_ms: i64,
    duration_ms: u64,
    rollout_id: Arc<str>,
    agent_id: Arc<str>,
    fencing_token: u64,
}

/// A [`TargetState`] with its strings shared.
#[derive(Debug)]
pub(super) struct CachedState {
    rows: Box<[Row]>,
    fence_token: u64,
}

impl CachedState {
    pub(super) fn new(state: &TargetState) -> CachedState {
        let mut guard = STRINGS.lock().unwrap_or_else(|p| p.into_inner());
        let strings = guard.get_or_insert_with(Strings::default);
        let rows = state
            .history
            .iter()
            .map(|r| Row {
                id: r.id,
                revision: intern(strings, &r.revision),
                checksum: intern(strings, &r.checksum),
                direction: r.direction,
                status: r.status,
                applied_at_ms: r.applied_at_ms,
                duration_ms: r.duration_ms,
                rollout_id: intern(strings, &r.rollout_id),
                agent_id: intern(strings, &r.agent_id),
                fencing_token: r.fencing_token,
            })
            .collect();
        CachedState {
            rows,
            fence_token: state.fence_token,
        }
    }

    pub(super) fn state(&self) -> TargetState {
        TargetState {
            history: self
                .rows
                .iter()
                .map(|r| HistoryRow {
                    id: r.id,
                    revision: r.revision.to_string(),
                    checksum: r.checksum.to_string(),
                    direction: r.direction,
                    status: r.status,
                    applied_at_ms: r.applied_at_ms,
                    duration_ms: r.duration_ms,
                    rollout_id: r.rollout_id.to_string(),
                    agent_id: r.agent_id.to_string(),
                    fencing_token: r.fencing_token,
                })
                .collect(),
            fence_token: self.fence_token,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: i64, revision: &str, rollout: &str) -> HistoryRow {
        HistoryRow {
            id,
            revision: revision.into(),
            checksum: "c".repeat(64),
            direction: Direction::Up,
            status: RowStatus::Applied,
            applied_at_ms: 1_700_000_000_000 + id,
            duration_ms: 3,
            rollout_id: rollout.into(),
            agent_id: "agent-1".into(),
            fencing_token: 7,
        }
    }

    #[test]
    fn a_cached_state_reads_back_as_it_was_and_shares_its_strings() {
        let a = TargetState {
            history: vec![row(1, "0001_a", "r1"), row(2, "0002_b", "r1")],
            fence_token: 9,
        };
        let b = TargetState {
            history: vec![row(5, "0001_a", "r2")],
            fence_token: 0,
        };
        let (ca, cb) = (CachedState::new(&a), CachedState::new(&b));
        assert_eq!(ca.state(), a);
        assert_eq!(cb.state(), b);
        assert!(Arc::ptr_eq(&ca.rows[0].revision, &cb.rows[0].revision));
        assert!(Arc::ptr_eq(&ca.rows[0].checksum, &ca.rows[1].checksum));
        assert!(!Arc::ptr_eq(&ca.rows[0].rollout_id, &cb.rows[0].rollout_id));
    }

    #[test]
    fn strings_no_cached_state_holds_are_swept() {
        let mut strings = Strings::default();
        let kept = intern(&mut strings, "kept");
        for i in 0..1000 {
            let _ = intern(&mut strings, &format!("gone-{i}"));
        }
        assert!(strings.set.len() < 200, "{}", strings.set.len());
        assert!(Arc::ptr_eq(&kept, &intern(&mut strings, "kept")));
    }
}
