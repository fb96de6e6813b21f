//! Schema-per-tenant PostgreSQL (issue 30, must-show 1): N tenant schemas (default 10,000) in
//! one database, the 5-revision set of `fixtures/pg5/`. The raw lower bound: one psql session
//! per CPU, each taking its share of the schemas in turn, `SET search_path` and the set in one
//! transaction per schema. Flotilla: one release agent discovering the schemas
//! (`schema_pattern`, its default pool of 4 connections), one coordinator (embedded backend),
//! `rollout start --wait --canary 0`; then the no-op rollout and `flotilla validate` (history
//! and the fingerprint of every schema). Each method gets its own fresh database, created and
//! `CHECKPOINT`ed untimed before it runs. `--schema-skip-raw` leaves the raw bound out (it
//! takes most of a 10,000-schema run): no ratio to it is reported then.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use flotilla_testkit::{Postgres, PostgresOptions};
use serde_json::{Value, json};

use crate::fixture::Fixture;
use crate::fleet::{Fleet, RolloutRun};
use crate::pg::{psql, psql_file_args};
use crate::procs::{Bins, run_all, run_ok, tree_cpu_seconds};

/// Settings of the schemas section.
#[derive(Debug, Clone)]
pub(crate) struct SchemaSettings {
    pub(crate) tenants: usize,
    /// psql sessions of the raw lower bound (default: one per CPU).
    pub(crate) sessions: usize,
    /// flotilla `--max-parallel`.
    pub(crate) max_parallel: u32,
    /// Leave the raw lower bound out (`--schema-skip-raw`).
    pub(crate) skip_raw: bool,
    /// No-op rollouts after the rollout (`--schema-noop-runs`, at least 1).
    pub(crate) noop_runs: u32,
}

/// The figures of the schemas section.
#[derive(Debug, Clone)]
pub(crate) struct SchemaResult {
    pub(crate) tenants: usize,
    pub(crate) revisions: usize,
    pub(crate) sessions: usize,
    /// None with `--schema-skip-raw`.
    pub(crate) raw: Option<Duration>,
    pub(crate) flotilla: RolloutRun,
    /// The first no-op rollout after the rollout (held against the limit).
    pub(crate) noop: RolloutRun,
    /// The no-op rollouts after the first (`--schema-noop-runs` above 1).
    pub(crate) noop_again: Vec<RolloutRun>,
    pub(crate) validate: Duration,
    /// PostgreSQL's CPU (postmaster and backends) during the rollout, each no-op rollout in
    /// order, and validate, in seconds.
    pub(crate) server_cpu_s: ServerCpu,
}

/// PostgreSQL's CPU seconds during each phase.
#[derive(Debug, Clone, Default)]
pub(crate) struct ServerCpu {
    pub(crate) rollout: f64,
    pub(crate) noop: Vec<f64>,
    pub(crate) validate: f64,
}

impl SchemaResult {
    pub(crate) fn ratio(&self) -> Option<f64> {
        self.raw
            .map(|raw| self.flotilla.wall.as_secs_f64() / raw.as_secs_f64())
    }

    pub(crate) fn json(&self) -> Value {
        json!({
            "tenants": self.tenants,
            "revisions": self.revisions,
            "raw_sessions": self.sessions,
            "raw_psql_s": self.raw.map(|d| d.as_secs_f64()),
            "flotilla": self.flotilla.json(),
            "flotilla_vs_raw": self.ratio(),
            "noop_rollout": self.noop.json(),
            "noop_rollout_again": self.noop_again.iter().map(RolloutRun::json).collect::<Vec<_>>(),
            "validate_s": self.validate.as_secs_f64(),
            "postgres_cpu_s": {
                "rollout": self.server_cpu_s.rollout,
                "noop": self.server_cpu_s.noop,
                "validate": self.server_cpu_s.validate,
            },
        })
    }
}

fn schema_names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("tenant_{i:05}")).collect()
}

async fn psql_file(bins: &Bins, pg: &Postgres, db: &str, file: &Path) -> Result<()> {
    let a = psql_file_args(pg.port(), db, file);
    run_ok(&bins.psql, &a).await.map(|_| ())
}

/// A fresh database `db` holding the N tenant schemas (1,000 per transaction), then a
/// `CHECKPOINT`. Untimed.
async fn prepare(bins: &Bins, pg: &Postgres, db: &str, n: usize, dir: &Path) -> Result<()> {
    pg.create_database(db).await?;
    let mut script = String::new();
    for chunk in schema_names(n).chunks(1000) {
        script.push_str("BEGIN;\n");
        for s in chunk {
            script.push_str(&format!("CREATE SCHEMA {s};\n"));
        }
        script.push_str("COMMIT;\n");
    }
    script.push_str("CHECKPOINT;\n");
    let file = dir.join(format!("{db}-schemas.sql"));
    std::fs::write(&file, script)?;
    psql_file(bins, pg, db, &file)
        .await
        .context("create schemas")
}

/// The set was applied in the first and the last schema (3 sample users each).
async fn check_applied(bins: &Bins, pg: &Postgres, db: &str, n: usize) -> Result<()> {
    let names = schema_names(n);
    for s in [names.first(), names.last()].into_iter().flatten() {
        let found = psql(
            bins,
            pg,
            db,
            &format!("SELECT count(last_seen_at IS NULL) FROM {s}.users"),
        )
        .await?;
        ensure!(found == "3", "{db}.{s}: expected 3 users, found {found:?}");
    }
    Ok(())
}

/// The raw lower bound: `sessions` psql processes, each running its share of the schemas:
/// `SET search_path` then the set in one transaction, per schema.
async fn raw(
    bins: &Bins,
    pg: &Postgres,
    fx: &Fixture,
    db: &str,
    n: usize,
    sessions: usize,
    dir: &Path,
) -> Result<Duration> {
    let up = dir.join("pg5-one-transaction.sql");
    std::fs::write(&up, fx.one_transaction()?)?;
    let names = schema_names(n);
    let mut argv = Vec::new();
    for s in 0..sessions.max(1) {
        let mut script = String::from("\\set ON_ERROR_STOP on\n");
        for schema in names.iter().skip(s).step_by(sessions.max(1)) {
            script.push_str(&format!(
                "SET search_path TO {schema};\n\\i {}\n",
                up.display()
            ));
        }
        let file = dir.join(format!("schemas-session-{s}.sql"));
        std::fs::write(&file, script)?;
        argv.push(psql_file_args(pg.port(), db, &file));
    }
    run_all(&bins.psql, argv, sessions).await
}

fn agent_toml(pg: &Postgres, db: &str) -> String {
    format!(
        "[[discover]]\ndialect = \"postgres\"\nurl = \"{}/{db}\"\nschema_pattern = \"tenant\\\\_%\"\n",
        pg.server_url()
    )
}

pub(crate) async fn bench(
    bins: &Bins,
    fx: &Fixture,
    s: &SchemaSettings,
    work: &Path,
) -> Result<SchemaResult> {
    let n = s.tenants;
    let dir = work.join(format!("schemas-{n}"));
    std::fs::create_dir_all(&dir)?;
    let pg = Postgres::start_with(PostgresOptions {
        durable: true,
        ..PostgresOptions::default()
    })
    .await
    .context("start PostgreSQL")?;
    let steps = fx.steps.len();

    let raw_time = if s.skip_raw {
        println!("  raw psql lower bound skipped (--schema-skip-raw)");
        None
    } else {
        let t0 = Instant::now();
        prepare(bins, &pg, "schemas_raw", n, &dir).await?;
        println!(
            "  created {n} schemas in {:.1} s (untimed)",
            t0.elapsed().as_secs_f64()
        );
        let raw_time = raw(bins, &pg, fx, "schemas_raw", n, s.sessions, &dir)
            .await
            .context("raw lower bound")?;
        check_applied(bins, &pg, "schemas_raw", n).await?;
        println!(
            "  raw psql, {} sessions, SET search_path + 1 txn per schema: {:.2} s",
            s.sessions,
            raw_time.as_secs_f64()
        );
        Some(raw_time)
    };

    prepare(bins, &pg, "schemas_flotilla", n, &dir).await?;
    let fleet_dir = dir.join("flotilla");
    let fleet = Fleet::start(
        bins,
        "bench-schemas-agent",
        &agent_toml(&pg, "schemas_flotilla"),
        n,
        &fx.dir,
        &fleet_dir.join("state"),
        &fleet_dir,
    )
    .await?;
    let server = pg.pid();
    let result = async {
        let mut cpu = ServerCpu::default();
        let c0 = tree_cpu_seconds(server)?;
        let flotilla = fleet
            .rollout(&format!("schemas{n}"), s.max_parallel, n * steps)
            .await?;
        cpu.rollout = tree_cpu_seconds(server)? - c0;
        check_applied(bins, &pg, "schemas_flotilla", n).await?;
        let vs_raw = raw_time.map_or(String::new(), |raw| {
            format!(
                " ({:.2}x raw)",
                flotilla.wall.as_secs_f64() / raw.as_secs_f64()
            )
        });
        println!(
            "  flotilla rollout --canary 0 --max-parallel {}: {:.2} s{vs_raw} (PostgreSQL {:.1} s CPU)",
            s.max_parallel,
            flotilla.wall.as_secs_f64(),
            cpu.rollout,
        );
        let mut noops = Vec::new();
        for k in 0..s.noop_runs {
            let c0 = tree_cpu_seconds(server)?;
            let noop = fleet
                .rollout(&format!("schemas{n}-noop{k}"), s.max_parallel, 0)
                .await
                .context("no-op rollout")?;
            cpu.noop.push(tree_cpu_seconds(server)? - c0);
            println!(
                "  no-op rollout{}: {:.2} s (CPU: coordinator {:.2} s, agent {:.2} s, PostgreSQL {:.2} s)",
                if k == 0 { "" } else { " again" },
                noop.wall.as_secs_f64(),
                noop.coordinator_cpu_s,
                noop.agent_cpu_s,
                cpu.noop[k as usize],
            );
            noops.push(noop);
        }
        let c0 = tree_cpu_seconds(server)?;
        let validate = fleet.validate().await.context("validate")?;
        cpu.validate = tree_cpu_seconds(server)? - c0;
        println!(
            "  flotilla validate: {:.2} s (PostgreSQL {:.2} s CPU)",
            validate.as_secs_f64(),
            cpu.validate
        );
        anyhow::Ok((flotilla, noops, validate, cpu))
    }
    .await;
    fleet.stop().await?;
    let (flotilla, mut noops, validate, server_cpu_s) = result?;
    let noop = noops.remove(0);
    Ok(SchemaResult {
        tenants: n,
        revisions: steps,
        sessions: s.sessions,
        raw: raw_time,
        flotilla,
        noop,
        noop_again: noops,
        validate,
        server_cpu_s,
    })
}

/// The table.
pub(crate) fn table(r: &SchemaResult) -> String {
    let s = |d: Duration| format!("{:.2} s", d.as_secs_f64());
    let rows = [
        (
            format!(
                "raw psql, {} sessions (1 per CPU), SET search_path + 1 txn per schema",
                r.sessions
            ),
            r.raw.map_or("skipped (--schema-skip-raw)".to_owned(), s),
        ),
        (
            format!(
                "flotilla rollout --canary 0 --max-parallel {}",
                r.flotilla.max_parallel
            ),
            match r.ratio() {
                Some(ratio) => format!("{} ({ratio:.2}x raw)", s(r.flotilla.wall)),
                None => s(r.flotilla.wall),
            },
        ),
        (
            "coordinator / agent CPU per target-step".to_owned(),
            format!(
                "{:.0} / {:.0} µs",
                r.flotilla.coordinator_us_per_step(),
                r.flotilla.agent_us_per_step()
            ),
        ),
        (
            "no-op: flotilla rollout".to_owned(),
            if r.noop_again.is_empty() {
                s(r.noop.wall)
            } else {
                let again: Vec<String> = r.noop_again.iter().map(|a| s(a.wall)).collect();
                format!("{} (again: {})", s(r.noop.wall), again.join(", "))
            },
        ),
        (
            "no-op: flotilla validate (every schema's fingerprint)".to_owned(),
            s(r.validate),
        ),
    ];
    let mut out = format!(
        "| PostgreSQL schemas: {} tenant schemas in one database, {} revisions | |\n|---|---|\n",
        r.tenants, r.revisions
    );
    for (label, value) in rows {
        out.push_str(&format!("| {label} | {value} |\n"));
    }
    out
}

/// Issue 30's targets for schemas, as (what, value, limit, unit).
pub(crate) fn criteria(r: &SchemaResult) -> Vec<(String, f64, f64, &'static str)> {
    let ratio = r.ratio().map(|ratio| {
        (
            format!("schemas {}: flotilla / raw psql (≤ 1.3x)", r.tenants),
            ratio,
            1.3,
            "x",
        )
    });
    ratio
        .into_iter()
        .chain([
            (
                format!("schemas {}: no-op rollout", r.tenants),
                r.noop.wall.as_secs_f64(),
                1.0,
                "s",
            ),
            (
                format!("schemas {}: validate", r.tenants),
                r.validate.as_secs_f64(),
                10.0,
                "s",
            ),
        ])
        .collect()
}
