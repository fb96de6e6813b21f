//! Targets a planning read could not read for a transient cause (the database restarting,
//! a connection refused or reset, a read that did not answer in time: the agent sets
//! `TargetStatus.error_class`) are read again with backoff within the rollout's agent wait,
//! instead of being planned `blocked` on one failed read. A permanent error (a missing
//! privilege) is planned blocked at once; a target still unreadable when the wait runs out
//! is blocked with a message that says how long it was tried.

use std::collections::BTreeMap;
use std::time::Duration;

use backon::BackoffBuilder;
use tokio::time::Instant;

use super::snapshot::FleetSnapshot;
use super::{Engine, EngineError, Term};
use crate::rollout::RolloutRecord;

/// Whether a planning read of this target failed for a reason a later read may not have.
fn transiently_unreadable(status: &flotilla_proto::TargetStatus) -> bool {
    !status.error.is_empty() && !status.error_class.is_empty()
}

impl Engine {
    /// Read the targets of `snap` that were transiently unreadable again (one `Status` per
    /// agent per round, with backoff) until they are read, or `wait` has passed since the
    /// first read, or the term ends. The entries read replace the failed ones. While it
    /// waits, the rollout's message says which targets it waits for (`rollout get`/`watch`).
    pub(super) async fn reread_unreadable(
        &self,
        term: &Term,
        rec: &mut RolloutRecord,
        snap: &mut FleetSnapshot,
        wait: Duration,
    ) -> Result<(), EngineError> {
        let since = Instant::now();
        let mut delays = self.agent_wait_backoff().build();
        let mut announced = false;
        loop {
            let mut by_agent: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for entry in snap
                .targets
                .iter()
                .filter(|e| transiently_unreadable(&e.status))
            {
                by_agent
                    .entry(entry.agent.id().to_owned())
                    .or_default()
                    .push(entry.status.target_id.clone());
            }
            if by_agent.is_empty() {
                return Ok(());
            }
            let waited = since.elapsed();
            if waited >= wait {
                let waited = flotilla_core::bounds::format_duration(Duration::from_secs(
                    waited.as_secs().max(1),
                ));
                for entry in &mut snap.targets {
                    if transiently_unreadable(&entry.status) {
                        entry.status.error = format!(
                            "{} (read again for {waited}, the rollout's agent wait; start a \
                             new rollout once the database answers, or raise --agent-wait)",
                            entry.status.error
                        );
                    }
                }
                return Ok(());
            }
            if !announced {
                announced = true;
                let ids: Vec<&str> = by_agent.values().flatten().map(String::as_str).collect();
                tracing::warn!(
                    rollout = %rec.id,
                    targets = %ids.join(", "),
                    "targets could not be read while planning (transient); reading them again within the rollout's agent wait"
                );
                let first = snap
                    .targets
                    .iter()
                    .find(|e| transiently_unreadable(&e.status))
                    .map(|e| e.status.error.clone())
                    .unwrap_or_default();
                rec.message = format!(
                    "planning: {} target(s) could not be read ({}: {first}); reading them again \
                     for up to {}, the rollout's agent wait",
                    ids.len(),
                    ids.join(", "),
                    flotilla_core::bounds::format_duration(wait)
                );
                self.put_rollout(term, rec).await?;
            }
            let pause = delays
                .next()
                .unwrap_or(self.config.agent_backoff_max)
                .min(wait - waited);
            tokio::select! {
                _ = term.cancel.cancelled() => return Err(EngineError::Fenced(term.token)),
                () = tokio::time::sleep(pause) => {}
            }
            let token = term.agent_token();
            for (agent_id, ids) in by_agent {
                let Some(agent) = snap
                    .targets
                    .iter()
                    .find(|e| e.agent.id() == agent_id)
                    .map(|e| e.agent.clone())
                else {
                    continue;
                };
                // An agent that cannot be reached now leaves its targets as they were.
                let Ok(read) = self.read_for_planning(&agent, ids, token).await else {
                    continue;
                };
                for fresh in read {
                    if let Some(old) = snap.targets.iter_mut().find(|e| {
                        e.agent.id() == agent_id && e.status.target_id == fresh.status.target_id
                    }) {
                        *old = fresh;
                    }
                }
            }
        }
    }
}
