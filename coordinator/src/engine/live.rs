//! The rollouts this coordinator is running, as it last wrote them: watchers (`rollout
//! watch`, `rollout start --wait`) and `GetRollout` read them here instead of reading and
//! decoding every target record from the store on each change, which was most of the
//! coordinator's CPU in a large rollout.
//!
//! Why this is the store's state, not a guess: an entry is seeded from the store once the
//! rollout is planned, and changed only after a fenced write of the same term succeeded
//! (`put_rollout`, `write_records`), before watchers are notified. It is used only while that
//! term is the current one; a standby or a new leader reads the store. An entry whose run
//! ended before its rollout did ends with the run. The entry of a rollout that ended stays,
//! unchanged (nothing writes a finished rollout), until the next rollout of this engine
//! starts: the watchers its end wakes (`rollout start --wait`) read its last state here
//! instead of every target record from the store.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use flotilla_proto as pb;

use crate::rollout::{RolloutRecord, TargetRecord};

struct Live {
    /// The term whose writes these are.
    token: u64,
    rec: RolloutRecord,
    /// By (wave, target id): the order `Engine::get` returns them in (the wave of a target
    /// is fixed once planned). Kept as the API shows them, not as whole records: the plan's
    /// steps and digest are not shown.
    targets: BTreeMap<(u32, String), pb::TargetProgress>,
    /// The run ended with the rollout: kept until the next rollout starts.
    ended: bool,
}

#[derive(Default)]
pub(crate) struct LiveRollouts {
    live: Mutex<HashMap<String, Live>>,
}

impl LiveRollouts {
    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<String, Live>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Start serving `rec` and its planned `targets` (just read from the store) in term `token`.
    pub(crate) fn start(&self, token: u64, rec: &RolloutRecord, targets: &[TargetRecord]) {
        let targets = targets
            .iter()
            .map(|t| ((t.wave, t.target_id.clone()), t.to_proto()))
            .collect();
        self.forget_ended();
        self.live().insert(
            rec.id.clone(),
            Live {
                token,
                rec: rec.clone(),
                targets,
                ended: false,
            },
        );
    }

    /// Let the entries of finished rollouts go: a new rollout is about to be planned (or
    /// served), and they are not to add to its memory.
    pub(crate) fn forget_ended(&self) {
        self.live().retain(|_, l| !l.ended);
    }

    /// `rec` was written in term `token`.
    pub(crate) fn put_rollout(&self, token: u64, rec: &RolloutRecord) {
        if let Some(l) = self.live().get_mut(&rec.id).filter(|l| l.token == token) {
            l.rec = rec.clone();
        }
    }

    /// Target records of `rollout` were written in term `token`.
    pub(crate) fn put_targets(&self, token: u64, rollout: &str, records: &[TargetRecord]) {
        let mut live = self.live();
        let Some(l) = live.get_mut(rollout) else {
            return;
        };
        if l.token != token {
            return;
        }
        for t in records {
            match l.targets.get_mut(&(t.wave, t.target_id.clone())) {
                Some(slot) => *slot = t.to_proto(),
                None => {
                    // Not planned in this wave: the entry no longer mirrors the store.
                    live.remove(rollout);
                    return;
                }
            }
        }
    }

    /// The run of `id` ended (or its term did). When the rollout ended with it (its last
    /// written state is terminal) the entry stays, as the only finished one; else the store
    /// answers from now on.
    pub(crate) fn end(&self, id: &str) {
        let mut live = self.live();
        live.retain(|other, l| other == id || !l.ended);
        match live.get_mut(id) {
            Some(l) if l.rec.state.is_terminal() => l.ended = true,
            Some(_) => {
                live.remove(id);
            }
            None => {}
        }
    }

    /// The record of rollout `id` as last written, if this coordinator runs it in term
    /// `token`.
    pub(crate) fn record(&self, id: &str, token: u64) -> Option<RolloutRecord> {
        let live = self.live();
        live.get(id)
            .filter(|l| l.token == token)
            .map(|l| l.rec.clone())
    }

    /// Rollout `id` as last written, if this coordinator runs it in term `token`.
    pub(crate) fn proto(&self, id: &str, token: Option<u64>) -> Option<pb::Rollout> {
        let live = self.live();
        let l = live.get(id).filter(|l| Some(l.token) == token)?;
        let mut p = l.rec.to_proto(&[]);
        p.targets = l.targets.values().cloned().collect();
        Some(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::{RolloutSpec, RolloutState, TargetState};
    use flotilla_core::Dialect;

    fn rollout() -> RolloutRecord {
        RolloutRecord {
            id: "r1".into(),
            spec: RolloutSpec::default(),
            state: RolloutState::Running,
            planned: true,
            current_wave: 0,
            wave_count: 2,
            message: String::new(),
            created_at_ms: 1,
            updated_at_ms: 1,
            trace_id: String::new(),
            traceparent: String::new(),
            fencing_token: 7,
            graph_digest: String::new(),
            goal_revision: String::new(),
            canary_fingerprint: Default::default(),
            metric_gate: None,
        }
    }

    fn target(id: &str, wave: u32, state: TargetState) -> TargetRecord {
        TargetRecord {
            target_id: id.into(),
            agent_id: "a".into(),
            dialect: Dialect::Sqlite,
            host: String::new(),
            wave,
            state,
            steps: vec![],
            steps_done: 0,
            current_revision: String::new(),
            retries: 0,
            message: String::new(),
            fingerprint: String::new(),
            planned_from: String::new(),
            waiting_for_agent: false,
        }
    }

    #[test]
    fn serves_the_writes_of_its_term_in_wave_order_and_nothing_else() {
        let live = LiveRollouts::default();
        let rec = rollout();
        live.start(
            7,
            &rec,
            &[
                target("b", 0, TargetState::Pending),
                target("a", 1, TargetState::Pending),
            ],
        );
        live.put_targets(7, "r1", &[target("a", 1, TargetState::Succeeded)]);
        // A write of another term (a stale leader) is not this entry's.
        live.put_targets(6, "r1", &[target("b", 0, TargetState::Failed)]);
        let p = live.proto("r1", Some(7)).expect("live");
        let ids: Vec<(&str, i32)> = p
            .targets
            .iter()
            .map(|t| (t.target_id.as_str(), t.state))
            .collect();
        assert_eq!(
            ids,
            vec![
                ("b", TargetState::Pending.to_proto() as i32),
                ("a", TargetState::Succeeded.to_proto() as i32)
            ]
        );
        // Not leading in that term any more, or not leading at all: the store answers.
        assert!(live.proto("r1", Some(8)).is_none());
        assert!(live.proto("r1", None).is_none());

        let mut done = rec.clone();
        done.state = RolloutState::Succeeded;
        live.put_rollout(7, &done);
        assert_eq!(
            live.proto("r1", Some(7)).expect("live").state,
            RolloutState::Succeeded.to_proto() as i32
        );
        // A record that was not planned into the entry ends it rather than be left out.
        live.put_targets(7, "r1", &[target("c", 0, TargetState::Pending)]);
        assert!(live.proto("r1", Some(7)).is_none());
        live.start(7, &rec, &[]);
        live.end("r1");
        assert!(live.proto("r1", Some(7)).is_none());
    }

    #[test]
    fn a_finished_rollout_is_served_until_the_next_one_starts() {
        let live = LiveRollouts::default();
        let mut done = rollout();
        done.state = RolloutState::Succeeded;
        live.start(7, &done, &[target("a", 0, TargetState::Succeeded)]);
        live.end("r1");
        let p = live.proto("r1", Some(7)).expect("kept");
        assert_eq!(p.state, RolloutState::Succeeded.to_proto() as i32);
        assert_eq!(p.targets.len(), 1);
        // Only in its term.
        assert!(live.proto("r1", Some(8)).is_none());
        // The next rollout lets it go, whether it is planned or started.
        let mut next = rollout();
        next.id = "r2".into();
        live.start(7, &next, &[]);
        assert!(live.proto("r1", Some(7)).is_none());
        assert!(live.proto("r2", Some(7)).is_some());
        live.start(7, &done, &[]);
        live.end("r1");
        live.forget_ended();
        assert!(live.proto("r1", Some(7)).is_none());
        // A run that ended before its rollout did (the term ended): the store answers.
        live.end("r2");
        assert!(live.proto("r2", Some(7)).is_none());
    }
}
