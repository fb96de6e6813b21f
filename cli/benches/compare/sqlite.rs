//! SQLite: N tenant files x the repository's 10 revisions, flotilla (one agent process
//! globbing the files, one coordinator process) against a plain `sqlite3` loop applying
//! the same rendered SQL per file; the no-op rerun at N and at 10,000 targets (copies of a
//! file flotilla migrated carry its `flotilla_history`, so every copy is at head); agent
//! idle RSS with one target and with N.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};

use crate::fixture::Fixture;
use crate::fleet::{Fleet, RolloutRun};
use crate::procs::{Bins, Service, args, run_all, run_ok, sync};

#[derive(Debug, Clone)]
pub(crate) struct SqliteSettings {
    pub(crate) tenants: usize,
    /// Targets of the large no-op check (copies of a migrated tenant).
    pub(crate) noop_targets: usize,
    pub(crate) max_parallel: u32,
    /// sqlite3 processes at once in the plain loop (1 = one after the other).
    pub(crate) loop_parallel: usize,
}

#[derive(Debug, Clone)]
pub(crate) struct SqliteResult {
    pub(crate) tenants: usize,
    pub(crate) revisions: usize,
    pub(crate) loop_parallel: usize,
    pub(crate) sqlite3_loop: Duration,
    pub(crate) rollout: RolloutRun,
    pub(crate) noop: RolloutRun,
    pub(crate) validate: Duration,
    /// The no-op rollout over `noop_targets` targets (None when not larger than `tenants`).
    pub(crate) noop_big: Option<RolloutRun>,
    pub(crate) agent_rss_one_kib: u64,
    pub(crate) agent_rss_tenants_kib: u64,
    pub(crate) agent_rss_big_kib: Option<u64>,
    pub(crate) agent_peak_rss_rollout_kib: u64,
    pub(crate) coordinator_peak_rss_kib: u64,
}

impl SqliteResult {
    pub(crate) fn ratio_to_loop(&self) -> f64 {
        self.rollout.wall.as_secs_f64() / self.sqlite3_loop.as_secs_f64()
    }

    pub(crate) fn json(&self) -> Value {
        json!({
            "tenants": self.tenants,
            "revisions": self.revisions,
            "sqlite3_loop_parallel": self.loop_parallel,
            "sqlite3_loop_s": self.sqlite3_loop.as_secs_f64(),
            "flotilla": self.rollout.json(),
            "flotilla_ratio_to_sqlite3_loop": self.ratio_to_loop(),
            "noop": {
                "flotilla_rollout": self.noop.json(),
                "flotilla_validate_s": self.validate.as_secs_f64(),
            },
            "noop_big": self.noop_big.as_ref().map(RolloutRun::json),
            "agent_idle_rss_kib": {
                "one_target": self.agent_rss_one_kib,
                "tenants": self.agent_rss_tenants_kib,
                "noop_targets": self.agent_rss_big_kib,
            },
            "agent_peak_rss_kib_during_rollout": self.agent_peak_rss_rollout_kib,
            "coordinator_peak_rss_kib": self.coordinator_peak_rss_kib,
        })
    }
}

fn tenant(dir: &Path, i: usize) -> PathBuf {
    dir.join(format!("tenant_{i:05}.db"))
}

fn glob_toml(dir: &Path) -> String {
    format!("[[discover]]\nglob = \"{}/*.db\"\n", dir.display())
}

/// `sqlite3 -bail FILE ".read SCRIPT"` for every file, `parallel` at a time.
async fn sqlite3_loop(
    bins: &Bins,
    fx: &Fixture,
    n: usize,
    dir: &Path,
    parallel: usize,
) -> Result<Duration> {
    let files = dir.join("loop");
    std::fs::create_dir_all(&files)?;
    let script = dir.join("rendered-sqlite.sql");
    std::fs::write(&script, fx.rendered()?)?;
    let read = format!(".read {}", script.display());
    sync().await?;
    let argv = (0..n)
        .map(|i| args(&["-bail", &tenant(&files, i).display().to_string(), &read]))
        .collect();
    let wall = run_all(&bins.sqlite3, argv, parallel).await?;
    // The loop really migrated: the last revision's column is there.
    let check = run_ok(
        &bins.sqlite3,
        &args(&[
            &tenant(&files, n - 1).display().to_string(),
            "SELECT count(last_login_at IS NULL) FROM users",
        ]),
    )
    .await?;
    ensure!(
        check.stdout.trim() == "4",
        "the sqlite3 loop did not apply the set"
    );
    Ok(wall)
}

/// VmRSS of a fresh agent serving what `toml` names, after it answered one Status.
async fn idle_rss(bins: &Bins, toml: &str, targets: usize, name: &str, dir: &Path) -> Result<u64> {
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(&config, toml)?;
    let agent = Service::agent(bins, &config, name, dir, targets).await?;
    let rss = agent.rss_kib()?;
    agent.stop().await?;
    Ok(rss)
}

pub(crate) async fn bench(
    bins: &Bins,
    fx: &Fixture,
    s: &SqliteSettings,
    work: &Path,
) -> Result<SqliteResult> {
    let n = s.tenants;
    ensure!(n > 0, "--sqlite-tenants must be at least 1");
    let dir = work.join("sqlite");
    let files = dir.join("tenants");
    std::fs::create_dir_all(&files)?;
    let steps = fx.steps.len();

    let sqlite3_loop = sqlite3_loop(bins, fx, n, &dir, s.loop_parallel)
        .await
        .context("sqlite3 loop")?;
    println!(
        "  plain sqlite3 loop ({} at a time), {n} files x {steps} revisions: {:.2} s",
        s.loop_parallel,
        sqlite3_loop.as_secs_f64()
    );

    // Empty files are empty SQLite databases (as `flotilla demo` creates them).
    for i in 0..n {
        std::fs::File::create(tenant(&files, i))?;
    }
    let state = dir.join("state");
    let fleet = Fleet::start(
        bins,
        "bench-sqlite",
        &glob_toml(&files),
        n,
        &fx.dir,
        &state,
        &dir.join("fleet"),
    )
    .await?;
    sync().await?;
    let rollout = fleet
        .rollout(&format!("sqlite{n}"), s.max_parallel, n * steps)
        .await?;
    println!(
        "  flotilla rollout --canary 0 --max-parallel {}: {:.2} s (coordinator {:.0} µs/step, agent {:.0} µs/step)",
        s.max_parallel,
        rollout.wall.as_secs_f64(),
        rollout.coordinator_us_per_step(),
        rollout.agent_us_per_step()
    );
    let agent_peak_rss_rollout_kib = fleet.agent.peak_rss_kib()?;
    let noop = fleet
        .rollout(&format!("sqlite{n}-noop"), s.max_parallel, 0)
        .await
        .context("no-op rollout")?;
    let validate = fleet.validate().await?;
    println!(
        "  no-op flotilla rollout, {n} targets: {:.2} s; flotilla validate: {:.2} s",
        noop.wall.as_secs_f64(),
        validate.as_secs_f64()
    );
    let mut coordinator_peak_rss_kib = fleet.coordinator.peak_rss_kib()?;
    fleet.stop().await?;

    let rss_dir = dir.join("rss");
    std::fs::create_dir_all(&rss_dir)?;
    let one = format!(
        "[[targets]]\nid = \"one\"\nurl = \"sqlite://{}\"\n",
        tenant(&files, 0).display()
    );
    let agent_rss_one_kib = idle_rss(bins, &one, 1, "rss-one", &rss_dir).await?;
    let agent_rss_tenants_kib =
        idle_rss(bins, &glob_toml(&files), n, "rss-tenants", &rss_dir).await?;
    println!(
        "  agent idle RSS: {:.1} MiB with 1 target, {:.1} MiB with {n}",
        agent_rss_one_kib as f64 / 1024.0,
        agent_rss_tenants_kib as f64 / 1024.0
    );

    let (mut noop_big, mut agent_rss_big_kib) = (None, None);
    if s.noop_targets > n {
        let t0 = Instant::now();
        let source = tenant(&files, 0);
        let wal = PathBuf::from(format!("{}-wal", source.display()));
        for i in n..s.noop_targets {
            let copy = tenant(&files, i);
            std::fs::copy(&source, &copy)?;
            if wal.exists() {
                std::fs::copy(&wal, format!("{}-wal", copy.display()))?;
            }
        }
        println!(
            "  copied a migrated tenant to {} files in {:.1} s",
            s.noop_targets - n,
            t0.elapsed().as_secs_f64()
        );
        // The same state dir: the fencing token keeps growing past the one in the copies.
        let fleet = Fleet::start(
            bins,
            "bench-sqlite-big",
            &glob_toml(&files),
            s.noop_targets,
            &fx.dir,
            &state,
            &dir.join("fleet-big"),
        )
        .await?;
        agent_rss_big_kib = Some(fleet.agent.rss_kib()?);
        sync().await?;
        let r = fleet
            .rollout(&format!("sqlite{}-noop", s.noop_targets), s.max_parallel, 0)
            .await
            .context("no-op rollout")?;
        println!(
            "  no-op flotilla rollout, {} targets at head: {:.2} s (coordinator {:.0} µs/target)",
            s.noop_targets,
            r.wall.as_secs_f64(),
            r.coordinator_us_per_step()
        );
        coordinator_peak_rss_kib = coordinator_peak_rss_kib.max(fleet.coordinator.peak_rss_kib()?);
        noop_big = Some(r);
        fleet.stop().await?;
    }
    Ok(SqliteResult {
        tenants: n,
        revisions: steps,
        loop_parallel: s.loop_parallel,
        sqlite3_loop,
        rollout,
        noop,
        validate,
        noop_big,
        agent_rss_one_kib,
        agent_rss_tenants_kib,
        agent_rss_big_kib,
        agent_peak_rss_rollout_kib,
        coordinator_peak_rss_kib,
    })
}
