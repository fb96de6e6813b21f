//! The coordinator at scale (issue 30): N targets across 100 agents, a one-revision rollout
//! and a no-op rollout, on the embedded backend and on etcd.
//!
//! The agents are real `flotilla_agent::Agent`s, each served over gRPC on its own loopback
//! port by this process (100 agent processes would cost 100 runtimes and logs for nothing
//! the coordinator sees); their targets are SQLite files, empty at the start (a SQLite
//! database at base), on tmpfs (`/dev/shm`) when there is one: a file target is the cheapest
//! real target there is, and tmpfs keeps 100,000 commits from measuring the disk. The
//! coordinator is a release `flotilla coordinator` process, so its CPU (`/proc/PID/stat`,
//! user + system) and peak RSS are its own; the agents' CPU is this process's. The peak RSS
//! of each rollout is measured during that rollout: the coordinator's `VmHWM` is reset to its
//! current RSS before it starts (`5` written to `/proc/PID/clear_refs`) and read when it ends,
//! and `VmRSS` is also sampled every 10 ms meanwhile (the figure is the larger; where the
//! kernel refuses the reset, the sampled one). The no-op rollout runs twice: first right
//! after the rollout (every agent reads every file it changed), then again (the agents answer
//! from their status cache of unchanged files), which leaves mostly the coordinator's own
//! time. With `--perf DIR` each rollout records a `perf` profile of the coordinator.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use flotilla_agent::config::DiscoverySource;
use flotilla_agent::{Agent, AgentConfig};
use flotilla_testkit::Etcd;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::procs::{Bins, Profile, Service, args, cpu_seconds, run, status_kib};

/// Settings of the scale section.
#[derive(Debug, Clone)]
pub(crate) struct ScaleSettings {
    /// Target counts, one run per backend each.
    pub(crate) sizes: Vec<usize>,
    pub(crate) agents: usize,
    /// `--max-parallel` of the one-revision rollout.
    pub(crate) max_parallel: u32,
    /// `embedded`, `etcd`.
    pub(crate) backends: Vec<String>,
}

/// One timed rollout.
#[derive(Debug, Clone)]
pub(crate) struct Phase {
    pub(crate) wall: Duration,
    pub(crate) steps: usize,
    pub(crate) coordinator_cpu_s: f64,
    /// The agents (this process).
    pub(crate) agents_cpu_s: f64,
    /// The coordinator's peak RSS during this rollout.
    pub(crate) peak_rss_kib: u64,
}

impl Phase {
    /// Coordinator CPU per target-step (per target when no step ran), in µs.
    pub(crate) fn coordinator_us(&self, targets: usize) -> f64 {
        self.coordinator_cpu_s * 1e6 / self.steps.max(targets).max(1) as f64
    }

    fn json(&self, targets: usize) -> Value {
        json!({
            "wall_s": self.wall.as_secs_f64(),
            "steps": self.steps,
            "coordinator_cpu_s": self.coordinator_cpu_s,
            "coordinator_cpu_us_per_target_step": self.coordinator_us(targets),
            "agents_cpu_s": self.agents_cpu_s,
            "coordinator_peak_rss_kib": self.peak_rss_kib,
        })
    }
}

/// The figures of one backend at one size.
#[derive(Debug, Clone)]
pub(crate) struct ScaleRun {
    pub(crate) backend: String,
    pub(crate) targets: usize,
    pub(crate) agents: usize,
    pub(crate) max_parallel: u32,
    pub(crate) rollout: Phase,
    pub(crate) noop: Phase,
    /// The no-op again, the agents' status caches warm.
    pub(crate) noop_again: Phase,
    /// Coordinator `VmHWM` at the end (its peak over its whole life, rollouts included).
    pub(crate) peak_rss_kib: u64,
    /// Coordinator `VmRSS` once the fleet was known, before the first rollout.
    pub(crate) idle_rss_kib: u64,
}

impl ScaleRun {
    /// The coordinator's peak RSS during any of the rollouts.
    pub(crate) fn rollout_peak_kib(&self) -> u64 {
        [&self.rollout, &self.noop, &self.noop_again]
            .iter()
            .map(|p| p.peak_rss_kib)
            .max()
            .unwrap_or(0)
    }

    pub(crate) fn json(&self) -> Value {
        json!({
            "backend": self.backend,
            "targets": self.targets,
            "agents": self.agents,
            "max_parallel": self.max_parallel,
            "rollout_one_revision": self.rollout.json(self.targets),
            "noop": self.noop.json(self.targets),
            "noop_again": self.noop_again.json(self.targets),
            "coordinator_lifetime_peak_rss_kib": self.peak_rss_kib,
            "coordinator_rollout_peak_rss_kib": self.rollout_peak_kib(),
            "coordinator_idle_rss_kib": self.idle_rss_kib,
        })
    }
}

/// The one-revision set the rollout applies.
fn write_migrations(dir: &Path) -> Result<PathBuf> {
    let m = dir.join("scale-migrations");
    std::fs::create_dir_all(&m)?;
    std::fs::write(
        m.join("0001_scale.sql"),
        "-- revision: 0001_scale\n-- description: one table per tenant\n-- migrate:up\n\
         CREATE TABLE scale_marker (id INTEGER PRIMARY KEY, note TEXT);\n\
         -- migrate:down\nDROP TABLE scale_marker;\n",
    )?;
    Ok(m)
}

/// Where the tenant files go: tmpfs when the machine has one.
fn files_root(work: &Path) -> Result<tempfile::TempDir> {
    let shm = Path::new("/dev/shm");
    let parent = if shm.is_dir() { shm } else { work };
    Ok(tempfile::Builder::new()
        .prefix("flotilla-scale-")
        .tempdir_in(parent)?)
}

/// `agents` in-process agents over gRPC on loopback, agent `a` serving the files
/// `shard-a/*.db` (`targets` empty files in all); stopped when `stop` is cancelled.
async fn start_agents(
    root: &Path,
    agents: usize,
    targets: usize,
    stop: &CancellationToken,
) -> Result<Vec<String>> {
    for a in 0..agents {
        std::fs::create_dir_all(root.join(format!("shard-{a:03}")))?;
    }
    for t in 0..targets {
        let file = root
            .join(format!("shard-{:03}", t % agents))
            .join(format!("t{t:06}.db"));
        std::fs::File::create(&file).with_context(|| file.display().to_string())?;
    }
    let mut addresses = Vec::with_capacity(agents);
    for a in 0..agents {
        let mut config = AgentConfig {
            agent_id: format!("scale-{a:03}"),
            ..AgentConfig::default()
        };
        config.discovery.sources.push(DiscoverySource::SqliteGlob {
            glob: root
                .join(format!("shard-{a:03}"))
                .join("*.db")
                .display()
                .to_string(),
            id_prefix: String::new(),
            labels: BTreeMap::new(),
        });
        let agent = Arc::new(
            Agent::new(config)
                .await
                .with_context(|| format!("agent scale-{a:03}"))?,
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        addresses.push(format!("http://{}", listener.local_addr()?));
        let stop = stop.clone();
        tokio::spawn(async move {
            if let Err(e) =
                flotilla_agent::serve(agent, listener, async move { stop.cancelled().await }).await
            {
                eprintln!("scale agent {a}: {e}");
            }
        });
    }
    Ok(addresses)
}

fn fleet_toml(addresses: &[String]) -> String {
    addresses
        .iter()
        .enumerate()
        .map(|(a, addr)| format!("[[agents]]\nid = \"scale-{a:03}\"\naddress = \"{addr}\"\n"))
        .collect()
}

/// `flotilla rollout start --to head --canary 0 --max-parallel P --wait`, timed, with the CPU
/// of the coordinator and of this process; it must succeed with `expect_steps` steps.
/// The coordinator's peak RSS over a phase: `VmHWM` reset at the start (when the kernel
/// allows it) and read at the end, and `VmRSS` sampled every 10 ms; the larger of the two.
struct PeakRss {
    pid: u32,
    reset: bool,
    sampler: tokio::task::JoinHandle<u64>,
    stop: CancellationToken,
}

impl PeakRss {
    fn start(pid: u32) -> PeakRss {
        let reset = std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok();
        let stop = CancellationToken::new();
        let done = stop.clone();
        let sampler = tokio::spawn(async move {
            let mut peak = 0;
            loop {
                peak = peak.max(status_kib(pid, "VmRSS").unwrap_or(0));
                tokio::select! {
                    _ = done.cancelled() => return peak,
                    _ = tokio::time::sleep(Duration::from_millis(10)) => {}
                }
            }
        });
        PeakRss {
            pid,
            reset,
            sampler,
            stop,
        }
    }

    async fn finish(self) -> Result<u64> {
        self.stop.cancel();
        let sampled = self.sampler.await?;
        let hwm = if self.reset {
            status_kib(self.pid, "VmHWM")?
        } else {
            0
        };
        Ok(sampled.max(hwm))
    }
}

async fn rollout(
    bins: &Bins,
    migrations: &Path,
    coordinator: &Service,
    max_parallel: u32,
    expect_steps: usize,
    label: &str,
) -> Result<Phase> {
    let a = args(&[
        "--migrations",
        &migrations.display().to_string(),
        "--output",
        "json",
        "rollout",
        "start",
        "--to",
        "head",
        "--canary",
        "0",
        "--max-parallel",
        &max_parallel.to_string(),
        "--wait",
        "--coordinator",
        &coordinator.address,
    ]);
    let me = std::process::id();
    let profile = match &bins.profile_dir {
        Some(dir) => Some(Profile::start(dir, label, &[coordinator.pid()?]).await?),
        None => None,
    };
    let peak = PeakRss::start(coordinator.pid()?);
    let (c0, a0) = (coordinator.cpu_seconds()?, cpu_seconds(me)?);
    let ran = run(&bins.flotilla, &a).await?;
    let (c1, a1) = (coordinator.cpu_seconds()?, cpu_seconds(me)?);
    let peak_rss_kib = peak.finish().await?;
    if let Some(p) = profile {
        p.finish().await?;
    }
    let out: Value = serde_json::from_str(&ran.stdout).with_context(|| {
        format!(
            "rollout start exited {} without a JSON report: {}{}",
            ran.code,
            ran.stdout.chars().take(2000).collect::<String>(),
            ran.stderr
        )
    })?;
    if ran.code != 0 || out["state"] != "succeeded" {
        bail!(
            "rollout ended {} (exit {}): {}",
            out["state"],
            ran.code,
            out["message"]
        );
    }
    let steps: u64 = out["targets"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["steps_done"].as_u64())
        .sum();
    ensure!(
        steps as usize == expect_steps,
        "rollout ran {steps} steps, expected {expect_steps}"
    );
    Ok(Phase {
        wall: ran.wall,
        steps: steps as usize,
        coordinator_cpu_s: c1 - c0,
        agents_cpu_s: a1 - a0,
        peak_rss_kib,
    })
}

/// One backend at one size: fresh files, agents and coordinator; the one-revision rollout,
/// then the no-op rollout.
async fn one(
    bins: &Bins,
    s: &ScaleSettings,
    backend: &str,
    etcd: Option<&Etcd>,
    n: usize,
    work: &Path,
) -> Result<ScaleRun> {
    let dir = work.join(format!("scale-{backend}-{n}"));
    std::fs::create_dir_all(&dir)?;
    let migrations = write_migrations(&dir)?;
    let files = files_root(work)?;
    let stop = CancellationToken::new();
    let t0 = Instant::now();
    let addresses = start_agents(files.path(), s.agents, n, &stop).await?;
    println!(
        "  {backend}, {n} targets: {} agents up in {:.1} s (untimed)",
        s.agents,
        t0.elapsed().as_secs_f64()
    );
    let fleet = dir.join("fleet.toml");
    std::fs::write(&fleet, fleet_toml(&addresses))?;
    let backend_args = match (backend, etcd) {
        ("embedded", _) => args(&["--state-dir", &dir.join("state").display().to_string()]),
        ("etcd", Some(etcd)) => args(&[
            "--etcd",
            &etcd.endpoint(),
            "--etcd-prefix",
            &format!("/scale-{n}"),
            "--state-dir",
            &dir.join("state").display().to_string(),
        ]),
        _ => bail!("unknown backend {backend:?}: give embedded or etcd"),
    };
    let coordinator = Service::coordinator_with(bins, &migrations, &fleet, &backend_args, &dir)
        .await
        .context("start the coordinator")?;
    let idle_rss_kib = coordinator.rss_kib()?;
    let result = async {
        let label = format!("scale-{backend}-{n}");
        let rollout = rollout(
            bins,
            &migrations,
            &coordinator,
            s.max_parallel,
            n,
            &format!("{label}-rollout"),
        )
        .await?;
        println!(
            "  {backend}, {n} targets: one-revision rollout {:.2} s (coordinator {:.0} µs/target-step, {} peak; agents {:.1} s CPU)",
            rollout.wall.as_secs_f64(),
            rollout.coordinator_us(n),
            mib(rollout.peak_rss_kib),
            rollout.agents_cpu_s
        );
        let noop = rollout_noop(bins, &migrations, &coordinator, s.max_parallel, &format!("{label}-noop")).await?;
        println!(
            "  {backend}, {n} targets: no-op rollout {:.2} s (coordinator {:.0} µs/target, {} peak; agents {:.1} s CPU)",
            noop.wall.as_secs_f64(),
            noop.coordinator_us(n),
            mib(noop.peak_rss_kib),
            noop.agents_cpu_s
        );
        let noop_again = rollout_noop(bins, &migrations, &coordinator, s.max_parallel, &format!("{label}-noop-again")).await?;
        println!(
            "  {backend}, {n} targets: no-op again {:.2} s (coordinator {:.0} µs/target, {} peak; agents {:.1} s CPU)",
            noop_again.wall.as_secs_f64(),
            noop_again.coordinator_us(n),
            mib(noop_again.peak_rss_kib),
            noop_again.agents_cpu_s
        );
        let peak_rss_kib = coordinator.peak_rss_kib()?;
        println!(
            "  {backend}, {n} targets: coordinator peak RSS over its life {} (idle with the fleet known: {})",
            mib(peak_rss_kib),
            mib(idle_rss_kib)
        );
        anyhow::Ok(ScaleRun {
            backend: backend.to_owned(),
            targets: n,
            agents: s.agents,
            max_parallel: s.max_parallel,
            rollout,
            noop,
            noop_again,
            peak_rss_kib,
            idle_rss_kib,
        })
    }
    .await;
    coordinator.stop().await?;
    stop.cancel();
    result
}

async fn rollout_noop(
    bins: &Bins,
    migrations: &Path,
    coordinator: &Service,
    max_parallel: u32,
    label: &str,
) -> Result<Phase> {
    rollout(bins, migrations, coordinator, max_parallel, 0, label)
        .await
        .context("no-op rollout")
}

/// Every backend at every size.
pub(crate) async fn bench(bins: &Bins, s: &ScaleSettings, work: &Path) -> Result<Vec<ScaleRun>> {
    ensure!(s.agents > 0, "--scale-agents must be at least 1");
    let etcd = if s.backends.iter().any(|b| b == "etcd") {
        Some(Etcd::start().await.context("start etcd")?)
    } else {
        None
    };
    let mut runs = Vec::new();
    for &n in &s.sizes {
        ensure!(
            n >= s.agents,
            "--scale-targets {n} is fewer than the agents"
        );
        for backend in &s.backends {
            runs.push(one(bins, s, backend.trim(), etcd.as_ref(), n, work).await?);
        }
    }
    Ok(runs)
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// The table: one row per backend and size.
pub(crate) fn table(runs: &[ScaleRun]) -> String {
    let mut out = String::from(
        "| scale: backend, targets (agents) | one-revision rollout | no-op rollout (again) | coordinator CPU per target-step (rollout / no-op / again) | coordinator peak RSS during the rollout (no-op) |\n|---|---|---|---|---|\n",
    );
    for r in runs {
        out.push_str(&format!(
            "| {}, {} ({}) | {:.2} s | {:.2} s ({:.2} s) | {:.0} / {:.0} / {:.0} µs | {} ({}) |\n",
            r.backend,
            r.targets,
            r.agents,
            r.rollout.wall.as_secs_f64(),
            r.noop.wall.as_secs_f64(),
            r.noop_again.wall.as_secs_f64(),
            r.rollout.coordinator_us(r.targets),
            r.noop.coordinator_us(r.targets),
            r.noop_again.coordinator_us(r.targets),
            mib(r.rollout.peak_rss_kib),
            mib(r.noop.peak_rss_kib.max(r.noop_again.peak_rss_kib)),
        ));
    }
    out
}

/// Issue 30's targets for the scale runs: (what, value, limit, unit).
pub(crate) fn criteria(runs: &[ScaleRun]) -> Vec<(String, f64, f64, &'static str)> {
    let mut c = Vec::new();
    for r in runs {
        let (b, n) = (&r.backend, r.targets);
        if n >= 100_000 {
            c.push((
                format!("scale {b} {n}: no-op rollout (agents read every file)"),
                r.noop.wall.as_secs_f64(),
                10.0,
                "s",
            ));
            c.push((
                format!("scale {b} {n}: no-op rollout again (agents' caches warm)"),
                r.noop_again.wall.as_secs_f64(),
                10.0,
                "s",
            ));
        }
        let rss_limit = if n <= 10_000 { 64.0 } else { 400.0 };
        c.push((
            format!("scale {b} {n}: coordinator peak RSS during the rollouts"),
            r.rollout_peak_kib() as f64 / 1024.0,
            rss_limit,
            "MiB",
        ));
        c.push((
            format!("scale {b} {n}: coordinator CPU per target-step"),
            r.rollout.coordinator_us(n),
            100.0,
            "µs",
        ));
    }
    c
}
