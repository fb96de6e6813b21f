//! Flotilla under test: one release `flotilla-agent` process and one release `flotilla
//! coordinator` process (embedded backend), driven through the `flotilla` CLI like a user
//! would, with the CPU time of each process measured apart.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::procs::{Bins, Profile, Service, args, run};

/// An agent and a coordinator serving it.
pub(crate) struct Fleet {
    pub(crate) agent: Service,
    pub(crate) coordinator: Service,
    bins: Bins,
    migrations: PathBuf,
    /// Record a `perf` profile of both processes during each rollout into this dir.
    profile_dir: Option<PathBuf>,
}

/// One `flotilla rollout start --wait`, timed, with the CPU each process spent on it.
#[derive(Debug, Clone)]
pub(crate) struct RolloutRun {
    pub(crate) max_parallel: u32,
    pub(crate) wall: Duration,
    pub(crate) targets: usize,
    pub(crate) steps: usize,
    pub(crate) coordinator_cpu_s: f64,
    pub(crate) agent_cpu_s: f64,
}

impl RolloutRun {
    /// Coordinator CPU per target-step (per target when no step ran), in µs.
    pub(crate) fn coordinator_us_per_step(&self) -> f64 {
        self.coordinator_cpu_s * 1e6 / self.steps.max(self.targets).max(1) as f64
    }

    pub(crate) fn agent_us_per_step(&self) -> f64 {
        self.agent_cpu_s * 1e6 / self.steps.max(self.targets).max(1) as f64
    }

    pub(crate) fn json(&self) -> Value {
        json!({
            "max_parallel": self.max_parallel,
            "wall_s": self.wall.as_secs_f64(),
            "targets": self.targets,
            "steps": self.steps,
            "coordinator_cpu_s": self.coordinator_cpu_s,
            "agent_cpu_s": self.agent_cpu_s,
            "coordinator_cpu_us_per_step": self.coordinator_us_per_step(),
            "agent_cpu_us_per_step": self.agent_us_per_step(),
        })
    }
}

impl Fleet {
    /// Starts the agent with `agent_toml` (it must serve `targets` targets), then a
    /// coordinator with its state in `state_dir` and the agent in its fleet file.
    pub(crate) async fn start(
        bins: &Bins,
        name: &str,
        agent_toml: &str,
        targets: usize,
        migrations: &Path,
        state_dir: &Path,
        dir: &Path,
    ) -> Result<Fleet> {
        let agent = Fleet::start_agent(bins, name, agent_toml, targets, dir).await?;
        let address = agent.address.clone();
        Fleet::with_agent(bins, agent, &address, migrations, state_dir, dir).await
    }

    /// The agent of [`Fleet::start`] alone (so a caller can put a link in front of it).
    pub(crate) async fn start_agent(
        bins: &Bins,
        name: &str,
        agent_toml: &str,
        targets: usize,
        dir: &Path,
    ) -> Result<Service> {
        std::fs::create_dir_all(dir)?;
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(&config, agent_toml)?;
        Service::agent(bins, &config, name, dir, targets).await
    }

    /// A coordinator for `agent`, which it reaches at `address` (the agent's own, or a proxy's).
    pub(crate) async fn with_agent(
        bins: &Bins,
        agent: Service,
        address: &str,
        migrations: &Path,
        state_dir: &Path,
        dir: &Path,
    ) -> Result<Fleet> {
        let fleet = dir.join("fleet.toml");
        std::fs::write(
            &fleet,
            format!(
                "[[agents]]\nid = \"{}\"\naddress = \"{address}\"\n",
                agent.name
            ),
        )?;
        let coordinator = Service::coordinator(bins, migrations, &fleet, state_dir, dir).await?;
        Ok(Fleet {
            agent,
            coordinator,
            bins: bins.clone(),
            migrations: migrations.to_owned(),
            profile_dir: bins.profile_dir.clone(),
        })
    }

    fn cli_args(&self, command: &[&str]) -> Vec<String> {
        let mut a = args(&[
            "--migrations",
            &self.migrations.display().to_string(),
            "--output",
            "json",
        ]);
        a.extend(args(command));
        a.extend(args(&["--coordinator", &self.coordinator.address]));
        a
    }

    /// `flotilla rollout start --to head --canary 0 --max-parallel P --wait`; the rollout
    /// must succeed with `expect_steps` steps in all. `label` names its profile, if any.
    pub(crate) async fn rollout(
        &self,
        label: &str,
        max_parallel: u32,
        expect_steps: usize,
    ) -> Result<RolloutRun> {
        let mp = max_parallel.to_string();
        let a = self.cli_args(&[
            "rollout",
            "start",
            "--to",
            "head",
            "--canary",
            "0",
            "--max-parallel",
            &mp,
            "--wait",
        ]);
        let perf = match &self.profile_dir {
            Some(dir) => Some(
                Profile::start(dir, label, &[self.coordinator.pid()?, self.agent.pid()?]).await?,
            ),
            None => None,
        };
        let (c0, a0) = (self.coordinator.cpu_seconds()?, self.agent.cpu_seconds()?);
        let ran = run(&self.bins.flotilla, &a).await?;
        let (c1, a1) = (self.coordinator.cpu_seconds()?, self.agent.cpu_seconds()?);
        if let Some(perf) = perf {
            perf.finish().await?;
        }
        let out: Value = serde_json::from_str(&ran.stdout).with_context(|| {
            format!(
                "rollout start exited {} without a JSON report: {}{}",
                ran.code, ran.stdout, ran.stderr
            )
        })?;
        let targets = out["targets"].as_array().map_or(0, Vec::len);
        let steps: u64 = out["targets"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t["steps_done"].as_u64())
            .sum();
        if ran.code != 0 || out["state"] != "succeeded" {
            bail!(
                "rollout ended {} (exit {}): {}",
                out["state"],
                ran.code,
                out["message"]
            );
        }
        if steps as usize != expect_steps {
            bail!("rollout ran {steps} steps on {targets} targets, expected {expect_steps}");
        }
        Ok(RolloutRun {
            max_parallel,
            wall: ran.wall,
            targets,
            steps: steps as usize,
            coordinator_cpu_s: c1 - c0,
            agent_cpu_s: a1 - a0,
        })
    }

    /// `flotilla validate` (history vs checksums and schema fingerprints of every target):
    /// its wall time; it must find no problem.
    pub(crate) async fn validate(&self) -> Result<Duration> {
        let ran = run(&self.bins.flotilla, &self.cli_args(&["validate"])).await?;
        if ran.code != 0 {
            // The report lists every target: name the ones with something to say.
            let report: Value = serde_json::from_str(&ran.stdout).unwrap_or(Value::Null);
            let bad: Vec<String> = report["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|t| {
                    t["error"].as_str().is_some_and(|e| !e.is_empty())
                        || t["issues"].as_array().is_some_and(|i| !i.is_empty())
                })
                .map(|t| format!("{} {} {}", t["target"], t["error"], t["issues"]))
                .collect();
            bail!(
                "validate exited {}: {} targets with an error or issue, first: {}; schema drift: {}; {}",
                ran.code,
                bad.len(),
                bad.iter().take(5).cloned().collect::<Vec<_>>().join(" | "),
                report["schema_drift"]
                    .to_string()
                    .chars()
                    .take(1000)
                    .collect::<String>(),
                ran.stderr
            );
        }
        Ok(ran.wall)
    }

    pub(crate) async fn stop(self) -> Result<()> {
        self.coordinator.stop().await?;
        self.agent.stop().await
    }
}
