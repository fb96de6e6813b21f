//! Issue 8's comparison in one run: flotilla (release agent and coordinator processes)
//! against the raw SQL lower bound and a per-database sqlx-cli loop on PostgreSQL (fsync on),
//! against a plain sqlite3 loop on SQLite, the no-op reruns (10,000 SQLite targets at head),
//! coordinator CPU per target-step and agent idle RSS; the coordinator at 10,000 and 100,000
//! targets across 100 agents on both backends (`scale`, issue 30); a remote fleet behind a
//! 20 ms round trip against sqlx-cli and psql loops from the operator's side (`remote`);
//! 10,000 tenant schemas of one PostgreSQL database against a psql lower bound (`schemas`).
//! Prints Markdown tables and saves every figure to `<target>/bench/compare.json`.
//!
//! Run it through `scripts/bench.sh` (builds the release binaries and sqlx-cli first), or
//! `cargo bench -p flotilla-coordinator --bench compare -- [--pg-tenants 40,200] ...`;
//! every flag has a `FLOTILLA_BENCH_*` variable (`-- --help` lists them).

mod fixture;
mod fleet;
mod pg;
mod procs;
mod remote;
mod report;
mod scale;
mod schemas;
mod sqlite;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Parser;
use flotilla_core::Dialect;
use flotilla_testkit::{Postgres, PostgresOptions};
use serde_json::{Value, json};

use crate::fixture::Fixture;
use crate::pg::PgSettings;
use crate::procs::Bins;
use crate::remote::RemoteSettings;
use crate::scale::ScaleSettings;
use crate::schemas::SchemaSettings;
use crate::sqlite::SqliteSettings;

/// The target dir this bench was built in (`<target>/tmp` is cargo's CARGO_TARGET_TMPDIR).
fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .map_or_else(|| PathBuf::from("target"), Path::to_path_buf)
}

#[derive(Debug, Parser)]
#[command(
    name = "compare",
    about = "flotilla vs raw SQL, sqlx-cli and sqlite3 loops (issue 8)"
)]
struct Options {
    /// Directory holding the `flotilla` and `flotilla-agent` binaries under test
    /// (default: <target>/release)
    #[arg(long, env = "FLOTILLA_BENCH_BIN_DIR")]
    bin_dir: Option<PathBuf>,
    /// The sqlx-cli binary (default: <target>/tools/bin/sqlx)
    #[arg(long, env = "FLOTILLA_BENCH_SQLX")]
    sqlx: Option<PathBuf>,
    /// What to run: pg, sqlite, scale, remote, schemas (comma-separated)
    #[arg(
        long,
        env = "FLOTILLA_BENCH_ONLY",
        value_delimiter = ',',
        default_value = "pg,sqlite,scale,remote,schemas"
    )]
    only: Vec<String>,
    /// PostgreSQL tenant counts, one full comparison each
    #[arg(
        long,
        env = "FLOTILLA_BENCH_PG_TENANTS",
        value_delimiter = ',',
        default_value = "40,200"
    )]
    pg_tenants: Vec<usize>,
    /// psql sessions of the raw lower bound and sqlx-cli processes at once
    #[arg(long, env = "FLOTILLA_BENCH_PG_PARALLEL", default_value_t = 4)]
    pg_parallel: usize,
    /// flotilla --max-parallel values on PostgreSQL, each on fresh databases
    #[arg(
        long,
        env = "FLOTILLA_BENCH_PG_MAX_PARALLEL",
        value_delimiter = ',',
        default_value = "4,16"
    )]
    pg_max_parallel: Vec<u32>,
    /// Rounds of the PostgreSQL comparison (each method once per round, in rotating order,
    /// on fresh databases); the figures are medians
    #[arg(long, env = "FLOTILLA_BENCH_PG_ROUNDS", default_value_t = 3)]
    pg_rounds: usize,
    /// SQLite tenant files
    #[arg(long, env = "FLOTILLA_BENCH_SQLITE_TENANTS", default_value_t = 1000)]
    sqlite_tenants: usize,
    /// flotilla --max-parallel on SQLite
    #[arg(long, env = "FLOTILLA_BENCH_SQLITE_MAX_PARALLEL", default_value_t = 16)]
    sqlite_max_parallel: u32,
    /// sqlite3 processes at once in the plain loop (1 = one file after the other)
    #[arg(long, env = "FLOTILLA_BENCH_SQLITE_LOOP_PARALLEL", default_value_t = 1)]
    sqlite_loop_parallel: usize,
    /// SQLite targets of the large no-op check (0 = skip it)
    #[arg(long, env = "FLOTILLA_BENCH_NOOP_TARGETS", default_value_t = 10_000)]
    noop_targets: usize,
    /// Scale: target counts (SQLite files across the agents), one run per backend each
    #[arg(
        long,
        env = "FLOTILLA_BENCH_SCALE_TARGETS",
        value_delimiter = ',',
        default_value = "10000,100000"
    )]
    scale_targets: Vec<usize>,
    /// Scale: in-process agents, each on its own gRPC port
    #[arg(long, env = "FLOTILLA_BENCH_SCALE_AGENTS", default_value_t = 100)]
    scale_agents: usize,
    /// Scale: --max-parallel of the one-revision rollout
    #[arg(long, env = "FLOTILLA_BENCH_SCALE_MAX_PARALLEL", default_value_t = 64)]
    scale_max_parallel: u32,
    /// Scale: coordinator backends (embedded, etcd)
    #[arg(
        long,
        env = "FLOTILLA_BENCH_SCALE_BACKENDS",
        value_delimiter = ',',
        default_value = "embedded,etcd"
    )]
    scale_backends: Vec<String>,
    /// Remote fleet: PostgreSQL tenant databases
    #[arg(long, env = "FLOTILLA_BENCH_REMOTE_TENANTS", default_value_t = 200)]
    remote_tenants: usize,
    /// Remote fleet: one-way delay of the link in ms (the round trip is twice this)
    #[arg(long, env = "FLOTILLA_BENCH_REMOTE_DELAY_MS", default_value_t = 10)]
    remote_delay_ms: u64,
    /// Remote fleet: flotilla --max-parallel (the loops run --pg-parallel at a time)
    #[arg(long, env = "FLOTILLA_BENCH_REMOTE_MAX_PARALLEL", default_value_t = 16)]
    remote_max_parallel: u32,
    /// Schemas: tenant schemas in one PostgreSQL database
    #[arg(long, env = "FLOTILLA_BENCH_SCHEMA_TENANTS", default_value_t = 10_000)]
    schema_tenants: usize,
    /// Schemas: psql sessions of the raw lower bound (0 = one per CPU)
    #[arg(long, env = "FLOTILLA_BENCH_SCHEMA_SESSIONS", default_value_t = 0)]
    schema_sessions: usize,
    /// Schemas: flotilla --max-parallel
    #[arg(long, env = "FLOTILLA_BENCH_SCHEMA_MAX_PARALLEL", default_value_t = 16)]
    schema_max_parallel: u32,
    /// Schemas: leave the raw psql lower bound out (most of a 10,000-schema run); the
    /// flotilla rollout, no-op and validate are measured as usual, with no ratio to the bound
    #[arg(long, env = "FLOTILLA_BENCH_SCHEMA_SKIP_RAW")]
    schema_skip_raw: bool,
    /// Schemas: how many no-op rollouts to run after the rollout (the first is the one held
    /// against the limit; the others show how much it varies)
    #[arg(long, env = "FLOTILLA_BENCH_SCHEMA_NOOP_RUNS", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    schema_noop_runs: u32,
    /// Where to save the figures (default: <target>/bench/compare.json)
    #[arg(long, env = "FLOTILLA_BENCH_OUT")]
    out: Option<PathBuf>,
    /// Record a `perf` profile of the agent and the coordinator during every rollout into
    /// this dir (`<label>.perf.data` and a `perf report` summary `.txt`)
    #[arg(long, env = "FLOTILLA_BENCH_PERF", value_name = "DIR")]
    perf: Option<PathBuf>,
    /// Keep the work dir (databases, logs) instead of deleting it
    #[arg(long, env = "FLOTILLA_BENCH_KEEP")]
    keep: bool,
    /// Passed by `cargo bench`; ignored
    #[arg(long, hide = true)]
    bench: bool,
}

async fn first_line(program: &Path, a: &[&str], cwd: Option<&Path>) -> String {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(a).stdin(std::process::Stdio::null());
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    cmd.output()
        .await
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(str::to_owned))
        .unwrap_or_default()
}

/// The machine and the versions, saved with the figures.
async fn machine(bins: &Bins) -> Value {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let git = Path::new("git");
    let commit = first_line(git, &["rev-parse", "HEAD"], Some(repo)).await;
    let dirty = !first_line(git, &["status", "--porcelain"], Some(repo))
        .await
        .is_empty();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")?
                    .split_once(':')
                    .map(|(_, v)| v.trim().to_owned())
            })
        })
        .unwrap_or_default();
    json!({
        "nproc": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "cpu": cpu,
        "kernel": first_line(Path::new("uname"), &["-r"], None).await,
        "loadavg_at_start": std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
        "date_utc": first_line(Path::new("date"), &["-u", "+%Y-%m-%dT%H:%M:%SZ"], None).await,
        "git_commit": commit,
        "git_dirty": dirty,
        "flotilla": first_line(&bins.flotilla, &["--version"], None).await,
        "flotilla_bin_dir": bins.flotilla.parent().map(|p| p.display().to_string()),
        "psql": first_line(&bins.psql, &["--version"], None).await,
        "sqlx_cli": first_line(&bins.sqlx, &["--version"], None).await,
        "sqlite3": first_line(&bins.sqlite3, &["--version"], None).await,
    })
}

async fn main_async(o: Options) -> Result<()> {
    let target = target_dir();
    let want = |what: &str| o.only.iter().any(|w| w.trim() == what);
    let mut bins = Bins::find(
        &o.bin_dir.clone().unwrap_or_else(|| target.join("release")),
        &o.sqlx
            .clone()
            .unwrap_or_else(|| target.join("tools/bin/sqlx")),
        want("pg") || want("remote"),
        want("pg") || want("remote") || want("schemas"),
    )?;
    bins.profile_dir = o.perf.as_ref().map(std::path::absolute).transpose()?;
    let bench_dir = target.join("bench");
    std::fs::create_dir_all(&bench_dir)?;
    // On the target's disk, not a tmpfs: SQLite and the PostgreSQL baselines fsync for real.
    let work = tempfile::Builder::new()
        .prefix("compare-")
        .tempdir_in(&bench_dir)?;
    let machine = machine(&bins).await;
    println!(
        "flotilla benchmark: {} ({}), {} CPUs, binaries in {}",
        machine["git_commit"].as_str().unwrap_or("?"),
        if machine["git_dirty"] == true {
            "dirty"
        } else {
            "clean"
        },
        machine["nproc"],
        machine["flotilla_bin_dir"].as_str().unwrap_or("?"),
    );

    let mut pg_results = Vec::new();
    if want("pg") {
        let fx = Fixture::load(fixture::pg5_dir(), Dialect::Postgres)?;
        let server = Postgres::start_with(PostgresOptions {
            durable: true,
            ..PostgresOptions::default()
        })
        .await
        .context("start PostgreSQL")?;
        let settings = PgSettings {
            baseline_parallel: o.pg_parallel,
            max_parallel: o.pg_max_parallel.clone(),
            rounds: o.pg_rounds,
        };
        for &n in &o.pg_tenants {
            println!(
                "PostgreSQL, {n} tenants, {} revisions (fsync on):",
                fx.steps.len()
            );
            pg_results.push(pg::bench(&bins, &server, &fx, n, &settings, work.path()).await?);
        }
    }
    let mut sqlite_result = None;
    if want("sqlite") {
        let fx = Fixture::load(fixture::repo_migrations(), Dialect::Sqlite)?;
        println!(
            "SQLite, {} tenants, {} revisions:",
            o.sqlite_tenants,
            fx.steps.len()
        );
        let settings = SqliteSettings {
            tenants: o.sqlite_tenants,
            noop_targets: o.noop_targets,
            max_parallel: o.sqlite_max_parallel,
            loop_parallel: o.sqlite_loop_parallel,
        };
        sqlite_result = Some(sqlite::bench(&bins, &fx, &settings, work.path()).await?);
    }
    let mut scale_runs = Vec::new();
    if want("scale") {
        println!(
            "Scale: {} agents in-process over gRPC, SQLite targets, the coordinator a process:",
            o.scale_agents
        );
        let settings = ScaleSettings {
            sizes: o.scale_targets.clone(),
            agents: o.scale_agents,
            max_parallel: o.scale_max_parallel,
            backends: o.scale_backends.clone(),
        };
        scale_runs = scale::bench(&bins, &settings, work.path()).await?;
    }
    let mut remote_result = None;
    if want("remote") {
        let fx = Fixture::load(fixture::pg5_dir(), Dialect::Postgres)?;
        let settings = RemoteSettings {
            tenants: o.remote_tenants,
            one_way: std::time::Duration::from_millis(o.remote_delay_ms),
            baseline_parallel: o.pg_parallel,
            max_parallel: o.remote_max_parallel,
        };
        println!(
            "Remote fleet: PostgreSQL, {} tenants, {} revisions, {} ms round trip (fsync on):",
            o.remote_tenants,
            fx.steps.len(),
            2 * o.remote_delay_ms
        );
        remote_result = Some(remote::bench(&bins, &fx, &settings, work.path()).await?);
    }
    let mut schema_result = None;
    if want("schemas") {
        let fx = Fixture::load(fixture::pg5_dir(), Dialect::Postgres)?;
        let sessions = match o.schema_sessions {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let settings = SchemaSettings {
            tenants: o.schema_tenants,
            sessions,
            max_parallel: o.schema_max_parallel,
            skip_raw: o.schema_skip_raw,
            noop_runs: o.schema_noop_runs,
        };
        println!(
            "Schemas: PostgreSQL, {} tenant schemas in one database, {} revisions (fsync on):",
            o.schema_tenants,
            fx.steps.len()
        );
        schema_result = Some(schemas::bench(&bins, &fx, &settings, work.path()).await?);
    }

    println!();
    if !pg_results.is_empty() {
        println!("{}", report::pg_table(&pg_results, o.pg_parallel));
    }
    if let Some(r) = &sqlite_result {
        println!("{}", report::sqlite_table(r));
    }
    if !scale_runs.is_empty() {
        println!("{}", scale::table(&scale_runs));
    }
    if let Some(r) = &remote_result {
        println!("{}", remote::table(r));
    }
    if let Some(r) = &schema_result {
        println!("{}", schemas::table(r));
    }
    let mut more = scale::criteria(&scale_runs);
    more.extend(
        remote_result
            .as_ref()
            .map(remote::criteria)
            .unwrap_or_default(),
    );
    more.extend(
        schema_result
            .as_ref()
            .map(schemas::criteria)
            .unwrap_or_default(),
    );
    let (targets_table, targets_json) = report::targets(&pg_results, sqlite_result.as_ref(), more);
    println!("{targets_table}");

    let out = o
        .out
        .clone()
        .unwrap_or_else(|| bench_dir.join("compare.json"));
    let doc = json!({
        "machine": machine,
        "settings": {
            "pg_tenants": o.pg_tenants, "pg_parallel": o.pg_parallel, "pg_rounds": o.pg_rounds,
            "pg_max_parallel": o.pg_max_parallel, "sqlite_tenants": o.sqlite_tenants,
            "sqlite_max_parallel": o.sqlite_max_parallel,
            "sqlite_loop_parallel": o.sqlite_loop_parallel, "noop_targets": o.noop_targets,
            "scale_targets": o.scale_targets, "scale_agents": o.scale_agents,
            "scale_max_parallel": o.scale_max_parallel, "scale_backends": o.scale_backends,
            "remote_tenants": o.remote_tenants, "remote_delay_ms": o.remote_delay_ms,
            "remote_max_parallel": o.remote_max_parallel,
            "schema_tenants": o.schema_tenants, "schema_sessions": o.schema_sessions,
            "schema_max_parallel": o.schema_max_parallel,
            "schema_skip_raw": o.schema_skip_raw, "schema_noop_runs": o.schema_noop_runs,
        },
        "postgres": pg_results.iter().map(pg::PgResult::json).collect::<Vec<_>>(),
        "sqlite": sqlite_result.as_ref().map(sqlite::SqliteResult::json),
        "scale": scale_runs.iter().map(scale::ScaleRun::json).collect::<Vec<_>>(),
        "remote": remote_result.as_ref().map(remote::RemoteResult::json),
        "schemas": schema_result.as_ref().map(schemas::SchemaResult::json),
        "targets": targets_json,
    });
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&out, serde_json::to_vec_pretty(&doc)?)?;
    println!("saved {}", out.display());
    if o.keep {
        println!("kept {}", work.keep().display());
    }
    Ok(())
}

fn main() -> Result<()> {
    let options = Options::parse();
    tokio::runtime::Runtime::new()?.block_on(main_async(options))
}
