//! The last state the coordinator saw of each target: replaced wholesale for every agent
//! that answers a fleet `Status`, and per target by the `MigrateFinished` event that closes
//! each successful Migrate. After a rollout the fleet gauges are recorded from here, so a
//! rollout costs no extra round of Status (and no catalog reads) once it ended: the agents
//! reported each target's state, under its migration lock, as the last step committed.
//!
//! What is kept is what planning and the fleet gauges read, in a compact form: per target its
//! agent and identity (dialect, labels, host), and a *state* (applied revisions with their
//! checksums, direction and status, heads, the dirty revision, the error, other tools'
//! tables) shared with every target in the same state — a fleet of 100,000 tenants at one
//! revision holds one. Per-row times, rollout and agent ids, the last step and the history
//! log are not kept: nothing that reads the view uses them.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use flotilla_proto as pb;
use prost::Message;

use crate::fleet::AgentClient;

use super::snapshot::{FleetEntry, FleetSnapshot};

/// One target as last seen.
struct Seen {
    agent: Arc<dyn AgentClient>,
    dialect: i32,
    labels: HashMap<String, String>,
    host: String,
    /// Shared with every target in the same state; its identity fields are empty.
    state: Arc<pb::TargetStatus>,
}

impl Seen {
    fn entry(&self, target_id: &str) -> FleetEntry {
        FleetEntry {
            agent: self.agent.clone(),
            status: pb::TargetStatus {
                target_id: target_id.to_owned(),
                dialect: self.dialect,
                labels: self.labels.clone(),
                host: self.host.clone(),
                ..(*self.state).clone()
            },
        }
    }
}

#[derive(Default)]
struct Inner {
    entries: BTreeMap<String, Seen>,
    /// One copy of each distinct state, by its encoding.
    states: HashMap<Vec<u8>, Arc<pb::TargetStatus>>,
    /// `states.len()` after the last sweep of states no target holds any more.
    swept_at: usize,
}

impl Inner {
    /// `status` without its identity and what the view does not keep, shared.
    fn intern(&mut self, status: &pb::TargetStatus) -> Arc<pb::TargetStatus> {
        let state = pb::TargetStatus {
            applied: status
                .applied
                .iter()
                .map(|a| pb::AppliedRevision {
                    revision: a.revision.clone(),
                    checksum: a.checksum.clone(),
                    direction: a.direction,
                    status: a.status.clone(),
                    ..Default::default()
                })
                .collect(),
            heads: status.heads.clone(),
            dirty: status.dirty,
            dirty_revision: status.dirty_revision.clone(),
            error: status.error.clone(),
            foreign: status.foreign.clone(),
            error_class: status.error_class.clone(),
            ..Default::default()
        };
        let key = state.encode_to_vec();
        if let Some(shared) = self.states.get(&key) {
            return shared.clone();
        }
        if self.states.len() >= self.swept_at.max(64) * 2 {
            self.states.retain(|_, s| Arc::strong_count(s) > 1);
            self.swept_at = self.states.len();
        }
        let shared = Arc::new(state);
        self.states.insert(key, shared.clone());
        shared
    }

    fn insert(&mut self, agent: &Arc<dyn AgentClient>, status: &pb::TargetStatus) {
        let state = self.intern(status);
        let seen = Seen {
            agent: agent.clone(),
            dialect: status.dialect,
            labels: status.labels.clone(),
            host: status.host.clone(),
            state,
        };
        match self.entries.get_mut(status.target_id.as_str()) {
            Some(slot) => *slot = seen,
            None => {
                self.entries.insert(status.target_id.clone(), seen);
            }
        }
    }
}

#[derive(Default)]
pub(crate) struct FleetView {
    inner: Mutex<Inner>,
}

impl FleetView {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A fleet snapshot: for each agent that answered, its targets replace what was known of
    /// that agent (targets it no longer serves are forgotten); unreachable agents' targets
    /// keep their last known state.
    pub(crate) fn record_snapshot(&self, snap: &FleetSnapshot, answered: &[String]) {
        let answered: HashSet<&str> = answered.iter().map(String::as_str).collect();
        let mut inner = self.inner();
        inner
            .entries
            .retain(|_, e| !answered.contains(e.agent.id()));
        for e in &snap.targets {
            inner.insert(&e.agent, &e.status);
        }
    }

    /// One target's state as its Migrate (or a planning read) reported it.
    pub(crate) fn record_target(&self, agent: &Arc<dyn AgentClient>, status: &pb::TargetStatus) {
        self.inner().insert(agent, status);
    }

    /// The last state seen of `target_id` on agent `agent_id` (identity fields empty: take
    /// them from a listing), if that agent served it then.
    pub(crate) fn state_of(
        &self,
        target_id: &str,
        agent_id: &str,
    ) -> Option<Arc<pb::TargetStatus>> {
        let inner = self.inner();
        inner
            .entries
            .get(target_id)
            .filter(|s| s.agent.id() == agent_id)
            .map(|s| s.state.clone())
    }

    /// Every known target, by id.
    pub(crate) fn targets(&self) -> Vec<FleetEntry> {
        self.inner()
            .entries
            .iter()
            .map(|(id, s)| s.entry(id))
            .collect()
    }

    /// Readable targets by revision (`metrics::count_revision`), counted in place (the fleet
    /// gauges after a rollout that migrated nothing need no copy of every target); None while
    /// no target is known.
    pub(crate) fn revision_counts(&self) -> Option<BTreeMap<String, u64>> {
        let inner = self.inner();
        if inner.entries.is_empty() {
            return None;
        }
        let mut by_revision = BTreeMap::new();
        for seen in inner.entries.values() {
            crate::metrics::count_revision(&mut by_revision, &seen.state);
        }
        Some(by_revision)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.inner().entries.is_empty()
    }

    /// Distinct states held (for tests).
    #[cfg(test)]
    fn states(&self) -> usize {
        let mut inner = self.inner();
        inner.states.retain(|_, s| Arc::strong_count(s) > 1);
        inner.states.len()
    }
}

/// Revisions of a target that the graph lacks or whose checksum differs.
pub fn drift_of(graph: &flotilla_revision::Graph, e: &FleetEntry) -> Vec<String> {
    let Some(dialect) = e.dialect() else {
        return vec![];
    };
    e.status
        .applied
        .iter()
        .filter_map(|a| match graph.get(&a.revision) {
            None => Some(format!("{}: unknown revision", a.revision)),
            Some(r) if r.up_checksum(dialect) != a.checksum => {
                Some(format!("{}: checksum differs", a.revision))
            }
            Some(_) => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(id: &str, rollout: &str, revisions: &[&str]) -> pb::TargetStatus {
        pb::TargetStatus {
            target_id: id.into(),
            dialect: pb::Dialect::Sqlite as i32,
            labels: [("tier".to_owned(), id.to_owned())].into(),
            host: format!("{id}.host"),
            applied: revisions
                .iter()
                .map(|r| pb::AppliedRevision {
                    revision: (*r).into(),
                    checksum: format!("sum-{r}"),
                    status: "applied".into(),
                    applied_at_unix_ms: 1_700_000_000_000,
                    rollout_id: rollout.into(),
                    agent_id: "a1".into(),
                    ..Default::default()
                })
                .collect(),
            heads: revisions
                .last()
                .map(|r| (*r).to_owned())
                .into_iter()
                .collect(),
            fence_token: 7,
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn targets_in_one_state_share_it_and_keep_their_identity() {
        let view = FleetView::default();
        // Never called: the view only keeps it.
        let agent: Arc<dyn AgentClient> = Arc::new(
            crate::fleet::RemoteAgent::new(
                "a1",
                "http://127.0.0.1:9",
                None,
                &flotilla_rpc::tls::ClientTls::default(),
            )
            .expect("address"),
        );
        for (i, rollout) in ["r1", "r2", "r3"].iter().enumerate() {
            view.record_target(&agent, &status(&format!("t{i}"), rollout, &["0001"]));
        }
        view.record_target(&agent, &status("t9", "r1", &["0001", "0002"]));
        // Rows that differ only in what the view does not keep are one state.
        assert_eq!(view.states(), 2);
        let t1 = view.targets().into_iter().nth(1).expect("t1");
        assert_eq!(t1.status.target_id, "t1");
        assert_eq!(t1.status.host, "t1.host");
        assert_eq!(t1.status.labels["tier"], "t1");
        assert_eq!(t1.status.heads, vec!["0001".to_owned()]);
        assert_eq!(t1.status.applied[0].checksum, "sum-0001");
        assert!(t1.status.applied[0].rollout_id.is_empty());
        let state = view.state_of("t9", "a1").expect("t9 seen");
        assert_eq!(state.applied.len(), 2);
        assert!(state.target_id.is_empty());
        assert!(view.state_of("t9", "another agent").is_none());
        drop(state);
        // A snapshot from the agent replaces what it served: t9 is gone with its state.
        let snap = FleetSnapshot {
            targets: vec![FleetEntry {
                agent: agent.clone(),
                status: status("t0", "r1", &["0001"]),
            }],
            unreachable: vec![],
        };
        view.record_snapshot(&snap, &["a1".to_owned()]);
        assert_eq!(view.targets().len(), 1);
        assert_eq!(view.states(), 1);
    }
}
