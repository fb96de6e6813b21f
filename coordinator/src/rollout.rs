//! The rollout model: the spec a user asks for, and the records the engine persists for a
//! rollout and each of its targets (JSON in the state store), with their proto forms.
//!
//! Per-target state machine: pending → running(step) → succeeded | failed | skipped | blocked.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use flotilla_core::Direction;
use flotilla_core::project::Project;
use flotilla_proto as pb;

pub mod metric_gate;
pub mod selector;
pub mod waves;

pub use metric_gate::{DEFAULT_GATE_WINDOW, GateWait, MetricGate};
pub use selector::{Selector, SelectorError};
pub use waves::{Budget, WaveSize, assign_waves};

/// Store key of a rollout record.
pub fn rollout_key(id: &str) -> String {
    format!("rollouts/{id}")
}

/// Store key prefix of a rollout's target records.
pub fn targets_prefix(id: &str) -> String {
    format!("targets/{id}/")
}

/// Store key of one target record.
pub fn target_key(id: &str, target: &str) -> String {
    format!("targets/{id}/{target}")
}

/// Targets migrated at once when a rollout does not say (`--max-parallel`, and 0 in a
/// StartRollout request).
pub const DEFAULT_MAX_PARALLEL: u32 = 8;

/// How long a target waits for its unreachable agent before it fails, when a rollout does
/// not say (`--agent-wait`, and 0 in a StartRollout request): long enough for a pod restart.
pub const DEFAULT_AGENT_WAIT: Duration = Duration::from_secs(120);

/// The longest `--agent-wait` a rollout accepts.
pub const MAX_AGENT_WAIT: Duration = Duration::from_secs(24 * 3600);

fn default_agent_wait_ms() -> u64 {
    DEFAULT_AGENT_WAIT.as_millis() as u64
}

/// What a user asks for when starting a rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutSpec {
    /// `head`, a revision id, `base`, `-N` or `+N`.
    pub goal: String,
    pub selector: Selector,
    pub canary: u32,
    pub waves: Vec<WaveSize>,
    /// At least 1 once the spec came through [`RolloutSpec::from_proto`] (0 there means
    /// [`DEFAULT_MAX_PARALLEL`]); the engine clamps a stored 0 to 1.
    pub max_parallel: u32,
    pub max_parallel_per_host: u32,
    pub failure_budget: Budget,
    pub fingerprint_gate: bool,
    pub allow_downgrade: bool,
    /// Start even when the plan blocks selected targets because of a downgrade.
    #[serde(default)]
    pub allow_blocked: bool,
    /// One transaction per step (default: one per run of transactional steps per target).
    #[serde(default)]
    pub transaction_per_step: bool,
    /// Run revisions with destructive lint findings that their files do not allow.
    #[serde(default)]
    pub allow_destructive: bool,
    /// Bound on each lock wait of a step, in milliseconds (0 = each agent's default); a
    /// revision's `-- lock-timeout:` header wins over it.
    #[serde(default)]
    pub lock_timeout_ms: u64,
    /// Retry budget per step: attempts, the first included (0 = each agent's default).
    #[serde(default)]
    pub retry_max_attempts: u32,
    /// Retry budget per step: total time in milliseconds (0 = each agent's default).
    #[serde(default)]
    pub retry_max_elapsed_ms: u64,
    /// Run on targets that have another tool's version table and no Flotilla history
    /// (otherwise blocked: adopt them first).
    #[serde(default)]
    pub allow_foreign: bool,
    /// How long a target waits for its unreachable agent ([`DEFAULT_AGENT_WAIT`]); records
    /// written before the field existed read as the default.
    #[serde(default = "default_agent_wait_ms")]
    pub agent_wait_ms: u64,
    /// The query that must stay empty or 0 for a window after each wave but the last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric_gate: Option<MetricGate>,
    /// The migration set (its digest); empty in a request = the coordinator's default set,
    /// which the engine writes here when it records the rollout. Records written before the
    /// field existed read as empty: the default set.
    #[serde(default)]
    pub set_digest: String,
    /// The project the rollout belongs to (`flotilla_core::project`); records written before
    /// projects existed have none and read as `default`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub project: String,
}

impl Default for RolloutSpec {
    fn default() -> Self {
        RolloutSpec {
            goal: "head".into(),
            selector: Selector::default(),
            canary: 1,
            waves: vec![],
            max_parallel: DEFAULT_MAX_PARALLEL,
            max_parallel_per_host: 0,
            failure_budget: Budget::Count(0),
            fingerprint_gate: true,
            allow_downgrade: false,
            allow_blocked: false,
            transaction_per_step: false,
            allow_destructive: false,
            lock_timeout_ms: 0,
            retry_max_attempts: 0,
            retry_max_elapsed_ms: 0,
            allow_foreign: false,
            agent_wait_ms: default_agent_wait_ms(),
            metric_gate: None,
            set_digest: String::new(),
            project: String::new(),
        }
    }
}

impl RolloutSpec {
    pub fn to_proto(&self) -> pb::RolloutSpec {
        pb::RolloutSpec {
            goal: self.goal.clone(),
            selector: Some(self.selector.to_proto()),
            canary: self.canary,
            waves: self.waves.iter().map(WaveSize::to_proto).collect(),
            max_parallel: self.max_parallel,
            max_parallel_per_host: self.max_parallel_per_host,
            failure_budget: Some(self.failure_budget.to_proto()),
            fingerprint_gate: self.fingerprint_gate,
            allow_downgrade: self.allow_downgrade,
            allow_blocked: self.allow_blocked,
            transaction_per_step: self.transaction_per_step,
            allow_destructive: self.allow_destructive,
            lock_timeout_ms: self.lock_timeout_ms,
            retry_max_attempts: self.retry_max_attempts,
            retry_max_elapsed_ms: self.retry_max_elapsed_ms,
            allow_foreign: self.allow_foreign,
            agent_wait_ms: self.agent_wait_ms,
            metric_gate: self.metric_gate.as_ref().map(MetricGate::to_proto),
            set_digest: self.set_digest.clone(),
            project: self.project().to_string(),
        }
    }

    /// The rollout's project (`default` when it names none).
    pub fn project(&self) -> Project {
        Project::parse(&self.project).unwrap_or_default()
    }

    /// How long a target waits for its unreachable agent.
    pub fn agent_wait(&self) -> Duration {
        Duration::from_millis(self.agent_wait_ms)
    }

    /// Validate and convert a request's spec.
    pub fn from_proto(p: &pb::RolloutSpec) -> Result<RolloutSpec, String> {
        let goal = if p.goal.trim().is_empty() {
            "head".to_owned()
        } else {
            p.goal.trim().to_owned()
        };
        if goal.len() > 140 {
            return Err("goal is longer than 140 characters".into());
        }
        let waves = p
            .waves
            .iter()
            .map(WaveSize::from_proto)
            .collect::<Result<Vec<_>, _>>()?;
        if waves.len() > 1000 {
            return Err("more than 1000 waves".into());
        }
        // PostgreSQL's lock_timeout is 32-bit milliseconds.
        if p.lock_timeout_ms > i32::MAX as u64 {
            return Err(format!(
                "lock timeout {} ms is longer than {} ms",
                p.lock_timeout_ms,
                i32::MAX
            ));
        }
        if p.agent_wait_ms > MAX_AGENT_WAIT.as_millis() as u64 {
            return Err(format!(
                "agent wait {} ms is longer than {} hours; give a shorter --agent-wait",
                p.agent_wait_ms,
                MAX_AGENT_WAIT.as_secs() / 3600
            ));
        }
        let project = Project::parse(&p.project).map_err(|e| e.to_string())?;
        let failure_budget = match &p.failure_budget {
            Some(b) => Budget::from_proto(b)?,
            None => Budget::Count(0),
        };
        Ok(RolloutSpec {
            goal,
            selector: Selector::from_proto(p.selector.as_ref()).map_err(|e| e.to_string())?,
            canary: p.canary,
            waves,
            max_parallel: if p.max_parallel == 0 {
                DEFAULT_MAX_PARALLEL
            } else {
                p.max_parallel
            },
            max_parallel_per_host: p.max_parallel_per_host,
            failure_budget,
            fingerprint_gate: p.fingerprint_gate,
            allow_downgrade: p.allow_downgrade,
            allow_blocked: p.allow_blocked,
            transaction_per_step: p.transaction_per_step,
            allow_destructive: p.allow_destructive,
            lock_timeout_ms: p.lock_timeout_ms,
            retry_max_attempts: p.retry_max_attempts,
            retry_max_elapsed_ms: p.retry_max_elapsed_ms,
            allow_foreign: p.allow_foreign,
            agent_wait_ms: if p.agent_wait_ms == 0 {
                default_agent_wait_ms()
            } else {
                p.agent_wait_ms
            },
            metric_gate: MetricGate::from_proto(p.metric_gate.as_ref())?,
            set_digest: p.set_digest.trim().to_owned(),
            // Stored empty for `default`: its records read as they always did.
            project: if project.is_default() {
                String::new()
            } else {
                project.to_string()
            },
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutState {
    Pending,
    Running,
    Paused,
    Succeeded,
    /// Every target ran; some failed within the failure budget.
    CompletedWithFailures,
    /// Every runnable target ran (failures within the budget); some selected targets were
    /// blocked and never touched.
    Blocked,
    Failed,
    Halted,
    Aborted,
}

impl RolloutState {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            RolloutState::Succeeded
                | RolloutState::CompletedWithFailures
                | RolloutState::Blocked
                | RolloutState::Failed
                | RolloutState::Halted
                | RolloutState::Aborted
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RolloutState::Pending => "pending",
            RolloutState::Running => "running",
            RolloutState::Paused => "paused",
            RolloutState::Succeeded => "succeeded",
            RolloutState::CompletedWithFailures => "completed_with_failures",
            RolloutState::Blocked => "blocked",
            RolloutState::Failed => "failed",
            RolloutState::Halted => "halted",
            RolloutState::Aborted => "aborted",
        }
    }

    pub fn to_proto(self) -> pb::RolloutState {
        match self {
            RolloutState::Pending => pb::RolloutState::Pending,
            RolloutState::Running => pb::RolloutState::Running,
            RolloutState::Paused => pb::RolloutState::Paused,
            RolloutState::Succeeded => pb::RolloutState::Succeeded,
            RolloutState::CompletedWithFailures => pb::RolloutState::CompletedWithFailures,
            RolloutState::Blocked => pb::RolloutState::Blocked,
            RolloutState::Failed => pb::RolloutState::Failed,
            RolloutState::Halted => pb::RolloutState::Halted,
            RolloutState::Aborted => pb::RolloutState::Aborted,
        }
    }

    pub fn from_proto(p: pb::RolloutState) -> RolloutState {
        match p {
            pb::RolloutState::Unspecified | pb::RolloutState::Pending => RolloutState::Pending,
            pb::RolloutState::Running => RolloutState::Running,
            pb::RolloutState::Paused => RolloutState::Paused,
            pb::RolloutState::Succeeded => RolloutState::Succeeded,
            pb::RolloutState::CompletedWithFailures => RolloutState::CompletedWithFailures,
            pb::RolloutState::Blocked => RolloutState::Blocked,
            pb::RolloutState::Failed => RolloutState::Failed,
            pb::RolloutState::Halted => RolloutState::Halted,
            pb::RolloutState::Aborted => RolloutState::Aborted,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetState {
    Pending,
    Running,
    Succeeded,
    Failed,
    Skipped,
    Blocked,
}

impl TargetState {
    pub fn is_terminal(self) -> bool {
        !matches!(self, TargetState::Pending | TargetState::Running)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TargetState::Pending => "pending",
            TargetState::Running => "running",
            TargetState::Succeeded => "succeeded",
            TargetState::Failed => "failed",
            TargetState::Skipped => "skipped",
            TargetState::Blocked => "blocked",
        }
    }

    pub fn to_proto(self) -> pb::TargetState {
        match self {
            TargetState::Pending => pb::TargetState::Pending,
            TargetState::Running => pb::TargetState::Running,
            TargetState::Succeeded => pb::TargetState::Succeeded,
            TargetState::Failed => pb::TargetState::Failed,
            TargetState::Skipped => pb::TargetState::Skipped,
            TargetState::Blocked => pb::TargetState::Blocked,
        }
    }
}

/// A planned step as recorded for a target (the SQL is not stored: it is re-derived from the
/// graph, whose digest the rollout records).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRecord {
    pub revision: String,
    pub direction: Direction,
    pub checksum: String,
    pub transactional: bool,
}

/// One target of a rollout, persisted at every transition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetRecord {
    pub target_id: String,
    pub agent_id: String,
    pub dialect: flotilla_core::Dialect,
    pub host: String,
    pub wave: u32,
    pub state: TargetState,
    pub steps: Vec<StepRecord>,
    pub steps_done: u32,
    pub current_revision: String,
    pub retries: u32,
    pub message: String,
    pub fingerprint: String,
    /// The state digest (`flotilla_core::history::state_digest`) `steps` were planned from;
    /// sent as the Migrate precondition so a stale plan is refused instead of re-read first.
    /// Empty for a target planned with nothing to run (skipped or blocked).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub planned_from: String,
    /// The target's agent cannot be reached and the target waits for it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub waiting_for_agent: bool,
}

impl TargetRecord {
    pub fn to_proto(&self) -> pb::TargetProgress {
        pb::TargetProgress {
            target_id: self.target_id.clone(),
            agent_id: self.agent_id.clone(),
            state: self.state.to_proto() as i32,
            wave: self.wave,
            current_revision: self.current_revision.clone(),
            steps_done: self.steps_done,
            steps_total: self.steps.len() as u32,
            retries: self.retries,
            message: self.message.clone(),
            fingerprint: self.fingerprint.clone(),
            waiting_for_agent: self.waiting_for_agent,
        }
    }
}

/// A rollout, persisted at every transition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutRecord {
    pub id: String,
    pub spec: RolloutSpec,
    pub state: RolloutState,
    /// True once every target record has been written (planning is done).
    pub planned: bool,
    pub current_wave: u32,
    pub wave_count: u32,
    pub message: String,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub trace_id: String,
    /// W3C `traceparent` of the rollout's root span, so a new leader continues the trace.
    #[serde(default)]
    pub traceparent: String,
    pub fencing_token: u64,
    pub graph_digest: String,
    /// The goal resolved to revision ids (heads of the goal), for display.
    pub goal_revision: String,
    /// The canary's schema fingerprint per dialect, once known (the reference of the gate).
    #[serde(default)]
    pub canary_fingerprint: std::collections::BTreeMap<String, String>,
    /// Set while the metric gate holds the next wave back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric_gate: Option<GateWait>,
}

impl RolloutRecord {
    pub fn to_proto(&self, targets: &[TargetRecord]) -> pb::Rollout {
        pb::Rollout {
            id: self.id.clone(),
            spec: Some(self.spec.to_proto()),
            state: self.state.to_proto() as i32,
            current_wave: self.current_wave,
            wave_count: self.wave_count,
            targets: targets.iter().map(TargetRecord::to_proto).collect(),
            message: self.message.clone(),
            created_at_unix_ms: self.created_at_ms,
            updated_at_unix_ms: self.updated_at_ms,
            trace_id: self.trace_id.clone(),
            fencing_token: self.fencing_token,
            graph_digest: self.graph_digest.clone(),
            goal_revision: self.goal_revision.clone(),
            metric_gate: self
                .metric_gate
                .as_ref()
                .zip(self.spec.metric_gate.as_ref())
                .map(|(wait, gate)| wait.to_proto(gate)),
            set_digest: self.spec.set_digest.clone(),
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_round_trips_through_proto() {
        let spec = RolloutSpec {
            waves: vec![WaveSize::Count(2), WaveSize::Percent(50)],
            failure_budget: Budget::Percent(10),
            ..RolloutSpec::default()
        };
        assert_eq!(RolloutSpec::from_proto(&spec.to_proto()).unwrap(), spec);
    }

    #[test]
    fn a_spec_stored_before_projects_is_default_and_default_is_stored_as_before() {
        // A record's spec as coordinators before projects wrote it: no project field.
        let mut old = serde_json::to_value(RolloutSpec::default()).unwrap();
        old.as_object_mut().unwrap().remove("project");
        let spec: RolloutSpec = serde_json::from_value(old).unwrap();
        assert!(spec.project().is_default());
        // Default's specs are still written without the field; another project's with it.
        let wire = |name: &str| pb::RolloutSpec {
            project: name.into(),
            ..RolloutSpec::default().to_proto()
        };
        let default = RolloutSpec::from_proto(&wire("default")).unwrap();
        assert!(
            serde_json::to_value(&default)
                .unwrap()
                .get("project")
                .is_none()
        );
        let billing = RolloutSpec::from_proto(&wire("billing")).unwrap();
        assert_eq!(
            serde_json::to_value(&billing).unwrap()["project"],
            "billing"
        );
        assert_eq!(billing.to_proto().project, "billing");
        assert_eq!(default.to_proto().project, "default");
        let err = RolloutSpec::from_proto(&wire("Billing!")).unwrap_err();
        assert!(err.contains("invalid project name"), "{err}");
    }

    #[test]
    fn agent_wait_defaults_once_and_is_bounded() {
        let mut p = RolloutSpec::default().to_proto();
        p.agent_wait_ms = 0;
        let spec = RolloutSpec::from_proto(&p).unwrap();
        assert_eq!(spec.agent_wait(), DEFAULT_AGENT_WAIT);
        p.agent_wait_ms = 20_000;
        assert_eq!(
            RolloutSpec::from_proto(&p).unwrap().agent_wait(),
            Duration::from_secs(20)
        );
        p.agent_wait_ms = MAX_AGENT_WAIT.as_millis() as u64 + 1;
        let err = RolloutSpec::from_proto(&p).unwrap_err();
        assert!(err.contains("--agent-wait"), "{err}");
        // A record written before the field existed reads as the default.
        let mut json = serde_json::to_value(RolloutSpec::default()).unwrap();
        json.as_object_mut().unwrap().remove("agent_wait_ms");
        let old: RolloutSpec = serde_json::from_value(json).unwrap();
        assert_eq!(old.agent_wait(), DEFAULT_AGENT_WAIT);
    }
}
