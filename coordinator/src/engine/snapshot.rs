//! The fleet as the agents report it (one `Status` call per agent, not per target) and the
//! plan of every selected target against the revision graph.

use std::sync::Arc;

use backon::{ExponentialBuilder, Retryable};
use futures::StreamExt;
use futures::future::join_all;

use flotilla_core::{Dialect, Direction};
use flotilla_proto as pb;

use crate::fleet::{AgentClient, is_retryable};
use crate::rollout::Selector;
use flotilla_revision::{Goal, Graph, TargetHistory};

use super::{Engine, EngineError};
use flotilla_core::foreign::ForeignTable;
use flotilla_rpc::convert::{DialectProto, ForeignProto};

/// Label marking a canary target (also the wave-0 preference of rollouts).
pub const CANARY_LABEL: &str = "flotilla.io/canary";

/// One target as its agent reported it.
#[derive(Clone)]
pub struct FleetEntry {
    pub agent: Arc<dyn AgentClient>,
    pub status: pb::TargetStatus,
}

impl FleetEntry {
    /// Labelled `flotilla.io/canary=true`: a canary first, and the drift reference.
    pub fn is_canary(&self) -> bool {
        self.status
            .labels
            .get(CANARY_LABEL)
            .is_some_and(|v| v == "true")
    }

    pub fn dialect(&self) -> Option<Dialect> {
        pb::Dialect::try_from(self.status.dialect)
            .ok()
            .and_then(Dialect::from_proto)
    }

    /// Whether `selector` selects this target (labels, id, implicit `dialect` and `agent`).
    pub fn matches(&self, selector: &Selector) -> bool {
        let dialect = self.dialect().map(Dialect::as_str).unwrap_or("");
        selector.matches(
            &self.status.target_id,
            &self.status.labels,
            dialect,
            self.agent.id(),
        )
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
    Steps(Vec<flotilla_revision::PlannedStep>),
    Blocked(String),
}

/// The target's history as the planner wants it.
pub fn history_of(status: &pb::TargetStatus) -> TargetHistory {
    TargetHistory {
        applied: status
            .applied
            .iter()
            .map(|a| flotilla_revision::AppliedRevision {
                revision: a.revision.clone(),
                checksum: a.checksum.clone(),
            })
            .collect(),
        dirty: status.dirty.then(|| status.dirty_revision.clone()),
    }
}

/// The digest of the state a plan from `status` is based on (the Migrate precondition).
pub fn state_digest_of(status: &pb::TargetStatus) -> String {
    flotilla_core::history::state_digest(
        status
            .applied
            .iter()
            .map(|a| (a.revision.as_str(), a.checksum.as_str())),
        status.dirty.then_some(status.dirty_revision.as_str()),
    )
}

/// Why a target is left alone because another tool manages it: the agent reports other
/// tools' version tables only for a target without Flotilla history, where a plan from base
/// would re-run what that tool ran. `None` with `allow_foreign`.
pub fn foreign_block(status: &pb::TargetStatus, allow_foreign: bool) -> Option<String> {
    if allow_foreign {
        return None;
    }
    let table = status.foreign.first()?;
    Some(ForeignTable::from_proto(table).blocked_reason(&status.target_id))
}

/// Plan one target; a plan with down steps needs `allow_downgrade`, a target that another
/// tool manages ([`foreign_block`]) `allow_foreign`.
pub fn plan_target(
    graph: &Graph,
    status: &pb::TargetStatus,
    dialect: Option<Dialect>,
    goal: &Goal,
    allow_downgrade: bool,
    allow_foreign: bool,
) -> TargetPlanOutcome {
    if !status.error.is_empty() {
        return TargetPlanOutcome::Blocked(format!("unreachable: {}", status.error));
    }
    if let Some(why) = foreign_block(status, allow_foreign) {
        return TargetPlanOutcome::Blocked(why);
    }
    let Some(dialect) = dialect else {
        return TargetPlanOutcome::Blocked("agent reported no dialect".into());
    };
    match flotilla_revision::plan(graph, &history_of(status), goal, dialect) {
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

/// One planning pass's plans, computed once per distinct (dialect, state): a fleet shares a
/// few states (10,000 tenants at head are one), and planning is a pure function of the graph,
/// the state (its digest covers the applied revisions, their checksums and order, and the
/// dirty revision), the goal and `allow_downgrade`, the last two fixed for the pass.
pub struct PlanMemo<'a> {
    graph: &'a Graph,
    goal: &'a Goal,
    allow_downgrade: bool,
    allow_foreign: bool,
    plans: std::collections::HashMap<(Dialect, String), TargetPlanOutcome>,
}

impl<'a> PlanMemo<'a> {
    pub fn new(
        graph: &'a Graph,
        goal: &'a Goal,
        allow_downgrade: bool,
        allow_foreign: bool,
    ) -> Self {
        PlanMemo {
            graph,
            goal,
            allow_downgrade,
            allow_foreign,
            plans: Default::default(),
        }
    }

    /// [`plan_target`] for this pass's graph, goal and `allow_downgrade`.
    pub fn plan(
        &mut self,
        status: &pb::TargetStatus,
        dialect: Option<Dialect>,
    ) -> TargetPlanOutcome {
        self.plan_keyed(status, dialect).0
    }

    /// [`Self::plan`], with the state digest it was memoized under ([`state_digest_of`];
    /// `None` for a target not memoized), so a caller that needs the digest too does not
    /// hash the state again.
    pub fn plan_keyed(
        &mut self,
        status: &pb::TargetStatus,
        dialect: Option<Dialect>,
    ) -> (TargetPlanOutcome, Option<String>) {
        // Other tools' tables are not part of the state digest: such targets are not memoized.
        let Some(d) = dialect.filter(|_| status.error.is_empty() && status.foreign.is_empty())
        else {
            let outcome = plan_target(
                self.graph,
                status,
                dialect,
                self.goal,
                self.allow_downgrade,
                self.allow_foreign,
            );
            return (outcome, None);
        };
        let (graph, goal) = (self.graph, self.goal);
        let (allow_downgrade, allow_foreign) = (self.allow_downgrade, self.allow_foreign);
        let digest = state_digest_of(status);
        let outcome = self
            .plans
            .entry((d, digest.clone()))
            .or_insert_with(|| {
                plan_target(graph, status, dialect, goal, allow_downgrade, allow_foreign)
            })
            .clone();
        (outcome, Some(digest))
    }
}

/// Unknown targets of one agent beyond this many may be planned from the state the first
/// this many share (see [`Engine::planning_snapshot`]).
pub const PLANNING_SAMPLE: usize = 16;

/// Targets one planning Status asks an agent about (`Engine::read_for_planning`).
pub const PLANNING_PAGE: usize = 1000;

/// `state` (another target's report, or this one's last) as the state of `listing`'s target:
/// the identity is the listing's, the applied set and dirty revision are `state`'s.
fn planned_like(listing: &pb::TargetStatus, state: &pb::TargetStatus) -> pb::TargetStatus {
    pb::TargetStatus {
        target_id: listing.target_id.clone(),
        dialect: listing.dialect,
        labels: listing.labels.clone(),
        host: listing.host.clone(),
        ..state.clone()
    }
}

/// The state every one of the `expected` sampled targets reported, if they all answered
/// without an error and with one dialect, applied set and dirty revision.
fn shared_state<'a>(
    sample: &[&'a pb::TargetStatus],
    expected: usize,
) -> Option<&'a pb::TargetStatus> {
    let first = *sample.first()?;
    let digest = state_digest_of(first);
    // A sample target with another tool's table does not share the state of a clean one.
    let same = |s: &&pb::TargetStatus| {
        s.error.is_empty()
            && s.foreign.is_empty()
            && s.dialect == first.dialect
            && state_digest_of(s) == digest
    };
    (sample.len() == expected && sample.iter().all(same)).then_some(first)
}

impl Engine {
    /// Ask every agent for the state of all its targets: one `Status` RPC per agent, in
    /// parallel, retried with backoff while the agent is unreachable.
    pub async fn snapshot(&self, include_history: bool) -> Result<FleetSnapshot, EngineError> {
        self.ask_fleet(pb::StatusRequest {
            include_history,
            ..Default::default()
        })
        .await
    }

    /// Every agent's targets as listed, none read (`identities_only`: ids, dialects,
    /// labels, hosts; no database is touched). The view is left as it is.
    pub async fn listing(&self) -> Result<FleetSnapshot, EngineError> {
        self.ask_fleet(pb::StatusRequest {
            identities_only: true,
            ..Default::default()
        })
        .await
    }

    /// `req` to every agent in parallel (with this term's token, if leading), retried with
    /// backoff while an agent is unreachable; what full reads report goes into the view.
    async fn ask_fleet(&self, req: pb::StatusRequest) -> Result<FleetSnapshot, EngineError> {
        let agents = self.agents().await?;
        // While leading, every Status announces the term's token to the agents.
        let token = self.term().map(|t| t.agent_token()).unwrap_or(0);
        let identities_only = req.identities_only;
        let req = &req;
        let calls = agents.iter().map(|agent| async move {
            let req = pb::StatusRequest {
                fencing_token: token,
                project: self.wire_project(),
                ..req.clone()
            };
            (agent.clone(), self.status_of_agent(agent, req).await)
        });
        let mut snap = FleetSnapshot::default();
        let mut answered = Vec::new();
        for (agent, res) in join_all(calls).await {
            match res {
                Ok(resp) => {
                    answered.push(agent.id().to_owned());
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
        if !identities_only {
            self.view.record_snapshot(&snap, &answered);
        }
        Ok(snap)
    }

    /// Announce `token` to every agent, reading no database: a Status that only lists the
    /// targets (`identities_only`). The agent raises its fence on any Status carrying a
    /// token, before it reads anything, so this refuses the previous leader's steps on every
    /// target as a full Status would; a new leader of 10,000 targets no longer reads each
    /// database just to pass a number on. The view is left as it is: planning reads every
    /// target it does not know (and re-checks the ones it does under the migration lock).
    /// Returns the agents that could not be reached, with the error.
    pub(crate) async fn announce(&self, token: u64) -> Result<Vec<(String, String)>, EngineError> {
        let agents = self.agents().await?;
        let calls = agents.iter().map(|agent| async move {
            let req = pb::StatusRequest {
                identities_only: true,
                fencing_token: token,
                ..Default::default()
            };
            (
                agent.id().to_owned(),
                self.status_of_agent(agent, req).await,
            )
        });
        Ok(join_all(calls)
            .await
            .into_iter()
            .filter_map(|(agent, res)| res.err().map(|e| (agent, e.message().to_owned())))
            .collect())
    }

    /// `req` to one agent, retried with backoff while it is unreachable.
    pub(super) async fn status_of_agent(
        &self,
        agent: &Arc<dyn AgentClient>,
        req: pb::StatusRequest,
    ) -> Result<pb::StatusResponse, tonic::Status> {
        (|| {
            let (agent, req) = (agent.clone(), req.clone());
            async move { agent.status(req).await }
        })
        .retry(self.agent_backoff())
        .when(is_retryable)
        .await
    }

    /// The fleet a rollout is planned from, reading as few databases as is safe. Each agent
    /// lists its targets without reading them (`identities_only`); a selected target whose
    /// last known state (the view: the last Status, or the report closing its last Migrate)
    /// plans to one or more steps is planned from that state: the Migrate carries its
    /// digest as `expected_state`, the agent re-checks it under the migration lock and a
    /// stale plan is re-planned from the agent's fresh report, so an old view can cost an
    /// extra round trip but never a wrong step. Known targets that do not plan to steps (at
    /// the goal, blocked, in error) are read fresh, so no target is reported at the goal or
    /// blocked on an old report.
    ///
    /// Targets the coordinator has not seen are read too, with one exception: when an agent
    /// has more than [`PLANNING_SAMPLE`] of them, the first [`PLANNING_SAMPLE`] are read
    /// first, and if they all answered with one state (same dialect, applied set and dirty
    /// revision) that plans to steps, the others are planned from that state the same way
    /// a view entry is: checked under the lock by their Migrate, re-planned if it differs.
    /// A fleet being moved from one version to the next is then read once (by the Migrate's
    /// own connection) instead of twice. A sample at the goal, mixed or in error has the
    /// others read as before, so a no-op check still reads every target and locks none.
    pub async fn planning_snapshot(
        &self,
        graph: &Graph,
        selector: &Selector,
        goal: &Goal,
        allow_downgrade: bool,
        allow_foreign: bool,
    ) -> Result<FleetSnapshot, EngineError> {
        let agents = self.agents().await?;
        let token = self.term().map(|t| t.agent_token()).unwrap_or(0);
        let memo =
            std::sync::Mutex::new(PlanMemo::new(graph, goal, allow_downgrade, allow_foreign));
        let memo = &memo;
        let plans_to_steps = |status: &pb::TargetStatus, dialect: Option<Dialect>| {
            let plan = memo
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .plan(status, dialect);
            matches!(plan, TargetPlanOutcome::Steps(steps) if !steps.is_empty())
        };
        let plans_to_steps = &plans_to_steps;
        let calls = agents.iter().map(|agent| async move {
            let listed = self
                .status_of_agent(
                    agent,
                    pb::StatusRequest {
                        identities_only: true,
                        fencing_token: token,
                        ..Default::default()
                    },
                )
                .await?;
            let mut planned = Vec::new();
            let mut recheck = Vec::new();
            let mut unknown = Vec::new();
            for listing in listed.targets {
                let dialect = pb::Dialect::try_from(listing.dialect)
                    .ok()
                    .and_then(Dialect::from_proto);
                let dialect_name = dialect.map(Dialect::as_str).unwrap_or("");
                if !selector.matches(
                    &listing.target_id,
                    &listing.labels,
                    dialect_name,
                    agent.id(),
                ) {
                    continue;
                }
                let Some(seen) = self.view.state_of(&listing.target_id, agent.id()) else {
                    unknown.push(listing);
                    continue;
                };
                let from_view = Some(seen)
                    .filter(|k| k.error.is_empty())
                    .map(|k| planned_like(&listing, &k))
                    .filter(|status| plans_to_steps(status, dialect));
                match from_view {
                    Some(status) => planned.push(FleetEntry {
                        agent: agent.clone(),
                        status,
                    }),
                    None => recheck.push(listing.target_id),
                }
            }
            let rest = if unknown.len() > PLANNING_SAMPLE {
                unknown.split_off(PLANNING_SAMPLE)
            } else {
                Vec::new()
            };
            let sample_ids: std::collections::HashSet<&str> =
                unknown.iter().map(|l| l.target_id.as_str()).collect();
            recheck.extend(unknown.iter().map(|l| l.target_id.clone()));
            let read = self.read_for_planning(agent, recheck, token).await?;
            let sample: Vec<&pb::TargetStatus> = read
                .iter()
                .map(|e| &e.status)
                .filter(|s| sample_ids.contains(s.target_id.as_str()))
                .collect();
            let shared = (!rest.is_empty())
                .then(|| shared_state(&sample, sample_ids.len()))
                .flatten()
                .filter(|s| {
                    let dialect = pb::Dialect::try_from(s.dialect)
                        .ok()
                        .and_then(Dialect::from_proto);
                    plans_to_steps(s, dialect)
                })
                .cloned();
            planned.extend(read);
            let mut unread = Vec::new();
            let mut from_sample = 0usize;
            for listing in rest {
                match &shared {
                    Some(state) if state.dialect == listing.dialect => {
                        from_sample += 1;
                        planned.push(FleetEntry {
                            agent: agent.clone(),
                            status: planned_like(&listing, state),
                        });
                    }
                    _ => unread.push(listing.target_id),
                }
            }
            if from_sample > 0 {
                tracing::info!(
                    agent = agent.id(),
                    targets = from_sample,
                    sample = sample_ids.len(),
                    "planned targets from the state their sample shares; each Migrate re-checks it under the lock"
                );
            }
            planned.extend(self.read_for_planning(agent, unread, token).await?);
            Ok::<_, tonic::Status>(planned)
        });
        let mut snap = FleetSnapshot::default();
        for (agent, res) in agents.iter().zip(join_all(calls).await) {
            match res {
                Ok(entries) => snap.targets.extend(entries),
                Err(e) => snap
                    .unreachable
                    .push((agent.id().to_owned(), e.message().to_owned())),
            }
        }
        snap.targets
            .sort_by(|a, b| a.status.target_id.cmp(&b.status.target_id));
        Ok(snap)
    }

    /// Read `target_ids` on `agent` and record what they reported in the view: one Status
    /// per [`PLANNING_PAGE`] targets, the next one asked for while the last is decoded and
    /// recorded (two at a time, in order). An agent serving 10,000 schemas then answers in
    /// ten messages of about a megabyte instead of one of ten, whose buffers both sides
    /// grew by doubling and gave back to the kernel page by page (in the no-op of 10,000
    /// schemas a fifth of the coordinator's CPU was page faults and `madvise` on them).
    pub(super) async fn read_for_planning(
        &self,
        agent: &Arc<dyn AgentClient>,
        target_ids: Vec<String>,
        token: u64,
    ) -> Result<Vec<FleetEntry>, tonic::Status> {
        let pages: Vec<Vec<String>> = target_ids
            .chunks(PLANNING_PAGE)
            .map(<[String]>::to_vec)
            .collect();
        let mut reads = futures::stream::iter(pages)
            .map(|target_ids| {
                self.status_of_agent(
                    agent,
                    pb::StatusRequest {
                        target_ids,
                        fencing_token: token,
                        project: self.wire_project(),
                        // A plan needs the applied set; each Migrate checks the fence itself.
                        without_fence: true,
                        applied_set_only: true,
                        ..Default::default()
                    },
                )
            })
            .buffered(2);
        let mut entries = Vec::with_capacity(target_ids.len());
        while let Some(read) = reads.next().await {
            entries.extend(read?.targets.into_iter().map(|status| {
                self.view.record_target(agent, &status);
                FleetEntry {
                    agent: agent.clone(),
                    status,
                }
            }));
        }
        Ok(entries)
    }

    /// The snapshot restricted to `selector`.
    pub async fn select(&self, selector: &Selector) -> Result<FleetSnapshot, EngineError> {
        let mut snap = self.snapshot(false).await?;
        snap.targets.retain(|e| e.matches(selector));
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
        let token = self.term().map(|t| t.agent_token()).unwrap_or(0);
        let calls = agents.iter().map(|agent| async move {
            let req = pb::StatusRequest {
                target_ids: vec![target_id.to_owned()],
                include_history,
                fencing_token: token,
                project: self.wire_project(),
                ..Default::default()
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
                // Not served there, or not even a valid target id (so served nowhere).
                Err(e)
                    if matches!(
                        e.code(),
                        tonic::Code::NotFound | tonic::Code::InvalidArgument
                    ) => {}
                Err(e) => unreachable.push(format!("{} ({})", agent.id(), e.message())),
            }
        }
        if unreachable.is_empty() {
            Err(EngineError::NotFound(super::target_not_found(target_id)))
        } else {
            Err(EngineError::Unavailable(format!(
                "target {} not found on the reachable agents; unreachable: {}",
                flotilla_core::text::quoted(target_id),
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
