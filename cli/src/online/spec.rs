//! Which targets and what to do with them: [`SelectArgs`] (`--selector`, `--target`) builds a
//! [`Selector`], [`SpecArgs`] (goal, waves, parallelism, budget, permissions) a
//! [`RolloutSpec`] for `plan` and `rollout start`.

use std::time::Duration;

use clap::Args;

use flotilla_coordinator::rollout::{
    Budget, DEFAULT_AGENT_WAIT, DEFAULT_MAX_PARALLEL, MetricGate, RolloutSpec, Selector, WaveSize,
};

use crate::args::parse_duration;
use crate::error::CliError;

/// A flag's duration in wire milliseconds (0 = not given).
fn ms(d: Option<Duration>) -> u64 {
    flotilla_core::bounds::to_wire_ms(d)
}

/// Which targets: `--selector tier=gold,region=eu` and/or `--target ID` (repeatable).
#[derive(Debug, Clone, Args, Default)]
pub struct SelectArgs {
    /// Label selector: key=value[,key=value]; `dialect` and `agent` match implicitly
    #[arg(long, short = 'l', env = "FLOTILLA_SELECTOR", value_name = "SELECTOR")]
    pub selector: Option<String>,
    /// Only these targets (repeatable)
    #[arg(long = "target", value_name = "ID")]
    pub targets: Vec<String>,
}

impl SelectArgs {
    /// The selector, checked against its bounds before any call (exit 2 when outside).
    pub fn selector(&self) -> Result<Selector, CliError> {
        let mut sel = match &self.selector {
            Some(s) => Selector::parse(s)?,
            None => Selector::default(),
        };
        sel.target_ids = self.targets.clone();
        sel.check()?;
        Ok(sel)
    }
}

/// What a rollout should do.
#[derive(Debug, Clone, Args)]
pub struct SpecArgs {
    /// Goal: head, base, a revision id, -N or +N
    #[arg(
        long = "to",
        default_value = "head",
        env = "FLOTILLA_GOAL",
        allow_hyphen_values = true
    )]
    pub goal: String,
    #[command(flatten)]
    pub select: SelectArgs,
    /// Targets in the canary wave (0 = no canary)
    #[arg(long, default_value_t = 1, env = "FLOTILLA_CANARY")]
    pub canary: u32,
    /// Wave sizes after the canary, e.g. --wave 10% --wave 50% (the rest forms a last wave)
    #[arg(
        long = "wave",
        value_name = "N|P%",
        env = "FLOTILLA_WAVES",
        value_delimiter = ','
    )]
    pub waves: Vec<String>,
    /// Targets migrated at once
    #[arg(long, default_value_t = DEFAULT_MAX_PARALLEL, env = "FLOTILLA_MAX_PARALLEL",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_parallel: u32,
    /// Targets migrated at once on one database host (0 = no limit)
    #[arg(long, default_value_t = 0, env = "FLOTILLA_MAX_PARALLEL_PER_HOST")]
    pub max_parallel_per_host: u32,
    /// Failed targets tolerated before the rollout halts: N or P%
    #[arg(long, default_value = "0", env = "FLOTILLA_FAILURE_BUDGET")]
    pub failure_budget: String,
    /// Do not compare schema fingerprints with the canary's after each wave
    #[arg(long, env = "FLOTILLA_NO_FINGERPRINT_GATE")]
    pub no_fingerprint_gate: bool,
    /// Allow down steps (implied by --to base and --to -N)
    #[arg(long, env = "FLOTILLA_ALLOW_DOWNGRADE")]
    pub allow_downgrade: bool,
    /// Start even if the downgrade blocks some targets (irreversible revisions): migrate the
    /// rest, leave those untouched; the rollout then ends `blocked` (exit 6)
    #[arg(long, env = "FLOTILLA_ALLOW_BLOCKED")]
    pub allow_blocked: bool,
    /// One transaction per step, instead of one per target for consecutive transactional
    /// steps (where a failing step also rolls back the steps before it)
    #[arg(long, env = "FLOTILLA_TRANSACTION_PER_STEP")]
    pub transaction_per_step: bool,
    /// Run revisions with destructive lint findings (drop table/column/schema, truncate)
    /// that their file does not allow with `-- lint: allow destructive`
    #[arg(long, env = "FLOTILLA_ALLOW_DESTRUCTIVE")]
    pub allow_destructive: bool,
    /// Bound on each lock wait of a step (e.g. 500ms; default: each agent's, 2s); a
    /// revision's `-- lock-timeout:` header wins. A step that hits it rolls back and retries
    #[arg(long, value_parser = parse_duration, env = "FLOTILLA_LOCK_TIMEOUT")]
    pub lock_timeout: Option<Duration>,
    /// Retry budget per step: attempts, the first included (default: each agent's, 8)
    #[arg(long, env = "FLOTILLA_RETRY_ATTEMPTS", value_parser = clap::value_parser!(u32).range(1..))]
    pub retry_attempts: Option<u32>,
    /// Retry budget per step: total time (e.g. 30s; default: each agent's, 60s)
    #[arg(long, value_parser = parse_duration, env = "FLOTILLA_RETRY_MAX_TIME")]
    pub retry_max_time: Option<Duration>,
    /// Migrate targets that have another tool's version table (alembic_version,
    /// flyway_schema_history, _sqlx_migrations, schema_migrations) and no Flotilla history,
    /// from base, after review; otherwise they are blocked: `flotilla adopt` them first
    #[arg(long, env = "FLOTILLA_ALLOW_FOREIGN")]
    pub allow_foreign: bool,
    /// How long a target waits, retrying, while its agent cannot be reached (a pod restart)
    /// before it fails, e.g. 5m [default: the coordinator's, 2m]
    #[arg(long, env = "FLOTILLA_AGENT_WAIT", value_name = "DURATION", value_parser = parse_duration)]
    pub agent_wait: Option<Duration>,
    /// Metric gate: a PromQL query that must return an empty result or 0 throughout
    /// --gate-window after the canary and after each wave but the last; otherwise (or when
    /// Prometheus cannot answer) the rollout halts, e.g. 'sum(rate(http_errors_total[1m])) > 0'
    #[arg(long, env = "FLOTILLA_GATE_QUERY", value_name = "PROMQL")]
    pub gate_query: Option<String>,
    /// How long the gate query must stay empty or 0 after each wave, e.g. 2m [default: 2m]
    #[arg(long, env = "FLOTILLA_GATE_WINDOW", value_name = "DURATION", value_parser = parse_duration)]
    pub gate_window: Option<Duration>,
    /// The Prometheus the gate asks, http://host:port[/prefix] [default: the coordinator's
    /// --gate-prometheus]
    #[arg(long, env = "FLOTILLA_GATE_PROMETHEUS", value_name = "URL")]
    pub gate_prometheus: Option<String>,
}

impl SpecArgs {
    /// The spec of a rollout of `project` (`--project`).
    pub fn spec(&self, project: &str) -> Result<RolloutSpec, CliError> {
        let waves = self
            .waves
            .iter()
            .map(|w| WaveSize::parse(w))
            .collect::<Result<Vec<_>, _>>()
            .map_err(CliError::Refused)?;
        let implied_down = self.goal == "base" || self.goal.starts_with('-');
        let metric_gate = self.metric_gate()?;
        Ok(RolloutSpec {
            goal: self.goal.clone(),
            selector: self.select.selector()?,
            canary: self.canary,
            waves,
            max_parallel: self.max_parallel,
            max_parallel_per_host: self.max_parallel_per_host,
            failure_budget: Budget::parse(&self.failure_budget).map_err(CliError::Refused)?,
            fingerprint_gate: !self.no_fingerprint_gate,
            allow_downgrade: self.allow_downgrade || implied_down,
            allow_blocked: self.allow_blocked,
            transaction_per_step: self.transaction_per_step,
            allow_destructive: self.allow_destructive,
            lock_timeout_ms: ms(self.lock_timeout),
            retry_max_attempts: self.retry_attempts.unwrap_or(0),
            retry_max_elapsed_ms: ms(self.retry_max_time),
            allow_foreign: self.allow_foreign,
            agent_wait_ms: match self.agent_wait {
                Some(wait) if wait.is_zero() => {
                    return Err(CliError::Refused(
                        "--agent-wait must be longer than 0; give e.g. 2m".into(),
                    ));
                }
                Some(wait) => u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                None => DEFAULT_AGENT_WAIT.as_millis() as u64,
            },
            metric_gate,
            // Filled in by the command once it knows the set it sends.
            set_digest: String::new(),
            project: project.to_owned(),
        })
    }

    /// The gate flags, checked like the coordinator checks them (a URL without a query is
    /// ignored: `FLOTILLA_GATE_PROMETHEUS` may be set for the coordinator in the same place).
    fn metric_gate(&self) -> Result<Option<MetricGate>, CliError> {
        let query = self
            .gate_query
            .as_deref()
            .map(str::trim)
            .unwrap_or_default();
        if query.is_empty() {
            if self.gate_window.is_some() {
                return Err(CliError::Refused(
                    "--gate-window needs a --gate-query 'PROMQL' to evaluate".into(),
                ));
            }
            return Ok(None);
        }
        if self.gate_window.is_some_and(|w| w.is_zero()) {
            return Err(CliError::Refused(
                "--gate-window must be longer than 0; give e.g. 2m".into(),
            ));
        }
        let wire = flotilla_proto::MetricGate {
            query: query.to_owned(),
            window_ms: ms(self.gate_window),
            prometheus_url: self.gate_prometheus.clone().unwrap_or_default(),
        };
        MetricGate::from_proto(Some(&wire)).map_err(CliError::Refused)
    }
}
