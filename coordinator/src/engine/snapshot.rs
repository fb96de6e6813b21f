//! The fleet as the agents report it (one `Status` call per agent, not per target) and the
//! plan of every selected target against the revision graph.

use std::sync::Arc;

use backon::{ExponentialBuilder, Retryable};
use futures::future::join_all;

use flotilla_agent::{Dialect, Direction};
use flotilla_proto as pb;

use crate::fleet::{AgentClient, is_retryable};
use crate::revision::{self, Goal, Graph, TargetHistory};
use crate::rollout::Selector;

use super::{Engine, EngineError};

/// One target as its agent reported it.
#[derive(Clone)]
pub struct FleetEntry {
    pub agent: Arc<dyn AgentClient>,
    pub status: pb::TargetStatus,
}

impl FleetEntry {
    pub fn dialect(&self) -> Option<Dialect> {
        pb::Dialect::try_from(self.status.dialect)
            .ok()
            .and_then(Dialect::from_proto)
    }
}

/// The fleet at one moment: every reachable target, and the agents that could not be asked.
#[derive(Clone, Default)]
pub struct FleetSnapshot {
    pub targets: Vec<FleetEntry>,
    pub unreachable: Vec<(String, String)>,
}

/// The plan for one target, or why it is left alone.
#[derive(Debug, Clone)]
pub enum TargetPlanOutcome {
    Steps(Vec<revision::PlannedStep>),
    Blocked(String),
}

/// The target's history as the planner wants it.
pub fn history_of(status: &pb::TargetStatus) -> TargetHistory {
    TargetHistory {
        applied: status
            .applied
            .iter()
            .map(|a| revision::AppliedRevision {
                revision: a.revision.clone(),
                checksum: a.checksum.clone(),
            })
            .collect(),
        dirty: status.dirty.then(|| status.dirty_revision.clone()),
    }
}

/// The digest of the state a plan from `status` is based on (the Migrate precondition).
pub fn state_digest_of(status: &pb::TargetStatus) -> String {
    flotilla_agent::history::state_digest(
        status
            .applied
            .iter()
            .map(|a| (a.revision.as_str(), a.checksum.as_str())),
        status.dirty.then_some(status.dirty_revision.as_str()),
    )
}

/// Plan one target; a plan with down steps needs `allow_downgrade`.
pub fn plan_target(
    graph: &Graph,
    status: &pb::TargetStatus,
    dialect: Option<Dialect>,
    goal: &Goal,
    allow_downgrade: bool,
) -> TargetPlanOutcome {
    if !status.error.is_empty() {
        return TargetPlanOutcome::Blocked(format!("unreachable: {}", status.error));
    }
    let Some(dialect) = dialect else {
        return TargetPlanOutcome::Blocked("agent reported no dialect".into());
    };
    match revision::plan(graph, &history_of(status), goal, dialect) {
        Ok(plan) => {
            if !allow_downgrade && plan.steps.iter().any(|s| s.direction == Direction::Down) {
                let downs = plan
                    .steps
                    .iter()
                    .filter(|s| s.direction == Direction::Down)
                    .count();
                return TargetPlanOutcome::Blocked(format!(
                    "the goal is below the target's revisions ({downs} down steps); start a downgrade rollout with --allow-downgrade"
                ));
            }
            TargetPlanOutcome::Steps(plan.steps)
        }
        Err(blocked) => TargetPlanOutcome::Blocked(blocked.to_string()),
    }
}

impl Engine {
    /// Ask every agent for the state of all its targets: one `Status` RPC per agent, in
    /// parallel, retried with backoff while the agent is unreachable.
    pub async fn snapshot(&self, include_history: bool) -> Result<FleetSnapshot, EngineError> {
        let agents = self.agents().await?;
        let backoff = self.agent_backoff();
        // While leading, every Status announces the term's token to the agents.
        let token = self.term().map(|t| t.token).unwrap_or(0);
        let calls = agents.iter().map(|agent| {
            let agent = agent.clone();
            async move {
                let res = (|| {
                    let agent = agent.clone();
                    async move {
                        agent
                            .status(pb::StatusRequest {
                                target_ids: vec![],
                                include_history,
                                fencing_token: token,
                            })
                            .await
                    }
                })
                .retry(backoff)
                .when(is_retryable)
                .await;
                (agent, res)
            }
        });
        let mut snap = FleetSnapshot::default();
        for (agent, res) in join_all(calls).await {
            match res {
                Ok(resp) => {
                    for status in resp.targets {
                        snap.targets.push(FleetEntry {
                            agent: agent.clone(),
                            status,
                        });
                    }
                }
                Err(e) => snap
                    .unreachable
                    .push((agent.id().to_owned(), e.message().to_owned())),
            }
        }
        snap.targets
            .sort_by(|a, b| a.status.target_id.cmp(&b.status.target_id));
        Ok(snap)
    }

    /// The snapshot restricted to `selector`.
    pub async fn select(&self, selector: &Selector) -> Result<FleetSnapshot, EngineError> {
        let mut snap = self.snapshot(false).await?;
        snap.targets.retain(|e| {
            let dialect = e.dialect().map(Dialect::as_str).unwrap_or("");
            selector.matches(&e.status.target_id, &e.status.labels, dialect, e.agent.id())
        });
        Ok(snap)
    }

    /// Status of one target from its agent (which agent: found through the registry).
    pub async fn target_status(
        &self,
        target_id: &str,
        include_history: bool,
    ) -> Result<FleetEntry, EngineError> {
        // Ask every agent about this one target only (agents that do not serve it answer
        // NOT_FOUND): one cheap call each instead of reading every target of the fleet.
        let agents = self.agents().await?;
        let token = self.term().map(|t| t.token).unwrap_or(0);
        let calls = agents.iter().map(|agent| async move {
            let req = pb::StatusRequest {
                target_ids: vec![target_id.to_owned()],
                include_history,
                fencing_token: token,
            };
            (agent.clone(), agent.status(req).await)
        });
        let mut unreachable = Vec::new();
        for (agent, res) in join_all(calls).await {
            match res {
                Ok(resp) => {
                    if let Some(status) =
                        resp.targets.into_iter().find(|t| t.target_id == target_id)
                    {
                        return Ok(FleetEntry { agent, status });
                    }
                }
                Err(e) if e.code() == tonic::Code::NotFound => {}
                Err(e) => unreachable.push(format!("{} ({})", agent.id(), e.message())),
            }
        }
        if unreachable.is_empty() {
            Err(EngineError::NotFound(format!("target {target_id}")))
        } else {
            Err(EngineError::Unavailable(format!(
                "target {target_id} not found on the reachable agents; unreachable: {}",
                unreachable.join(", ")
            )))
        }
    }

    /// Backoff for retrying one agent.
    pub(crate) fn agent_backoff(&self) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_min_delay(self.config.agent_backoff_min)
            .with_max_delay(self.config.agent_backoff_max)
            .with_max_times(self.config.agent_attempts.saturating_sub(1) as usize)
            .with_jitter()
    }
}
