//! The remote fleet (issue 30): the operator's host and the databases are a long link apart
//! (testkit's TCP proxy delaying every chunk both ways, 10 ms each way = 20 ms round trip by
//! default). Flotilla runs its agent beside the databases (agent -> PostgreSQL direct) and its
//! coordinator on the operator's side (coordinator -> agent through the delayed link); the
//! peers run from the operator's side through the same delay: a psql loop (one `psql -1 -f`
//! per database) and a sqlx-cli loop (`sqlx migrate run` per database), a few at a time.
//! Every method gets its own fresh databases on one PostgreSQL server (fsync on).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use flotilla_testkit::{FaultProxy, Postgres, PostgresOptions};
use serde_json::{Value, json};

use crate::fixture::Fixture;
use crate::fleet::{Fleet, RolloutRun};
use crate::pg::{agent_toml, check_applied, drop_all, names, prepare, psql_file_args, sqlx_loop};
use crate::procs::{Bins, run_all};

/// Settings of the remote section.
#[derive(Debug, Clone)]
pub(crate) struct RemoteSettings {
    pub(crate) tenants: usize,
    /// One-way delay of the link (the round trip is twice this).
    pub(crate) one_way: Duration,
    /// psql and sqlx-cli processes at once.
    pub(crate) baseline_parallel: usize,
    /// flotilla `--max-parallel`.
    pub(crate) max_parallel: u32,
}

/// The figures of the remote section.
#[derive(Debug, Clone)]
pub(crate) struct RemoteResult {
    pub(crate) tenants: usize,
    pub(crate) revisions: usize,
    pub(crate) rtt: Duration,
    pub(crate) baseline_parallel: usize,
    pub(crate) psql: Duration,
    pub(crate) sqlx: Duration,
    pub(crate) sqlx_noop: Duration,
    pub(crate) flotilla: RolloutRun,
    pub(crate) flotilla_noop: RolloutRun,
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64()
}

impl RemoteResult {
    /// How many times faster flotilla's full rollout is than the sqlx-cli loop.
    pub(crate) fn speedup_vs_sqlx(&self) -> f64 {
        ratio(self.sqlx, self.flotilla.wall)
    }

    pub(crate) fn speedup_vs_psql(&self) -> f64 {
        ratio(self.psql, self.flotilla.wall)
    }

    pub(crate) fn noop_speedup_vs_sqlx(&self) -> f64 {
        ratio(self.sqlx_noop, self.flotilla_noop.wall)
    }

    pub(crate) fn json(&self) -> Value {
        json!({
            "tenants": self.tenants,
            "revisions": self.revisions,
            "rtt_ms": self.rtt.as_secs_f64() * 1e3,
            "baseline_parallel": self.baseline_parallel,
            "psql_loop_s": self.psql.as_secs_f64(),
            "sqlx_cli_loop_s": self.sqlx.as_secs_f64(),
            "flotilla": self.flotilla.json(),
            "flotilla_speedup_vs_sqlx_cli": self.speedup_vs_sqlx(),
            "flotilla_speedup_vs_psql": self.speedup_vs_psql(),
            "noop": {
                "sqlx_cli_loop_s": self.sqlx_noop.as_secs_f64(),
                "flotilla_rollout": self.flotilla_noop.json(),
                "flotilla_speedup_vs_sqlx_cli": self.noop_speedup_vs_sqlx(),
            },
        })
    }
}

/// A delayed link in front of `upstream`.
async fn link(upstream: SocketAddr, one_way: Duration) -> Result<FaultProxy> {
    let proxy = FaultProxy::start(upstream).await?;
    proxy.set_delay(one_way);
    Ok(proxy)
}

/// `psql -1 -f <the set>` once per database through the link, `parallel` at a time.
async fn psql_loop(
    bins: &Bins,
    fx: &Fixture,
    port: u16,
    dbs: &[String],
    parallel: usize,
    dir: &Path,
) -> Result<Duration> {
    let up = dir.join("pg5-remote.sql");
    // The set in one transaction, as the raw lower bound sends it.
    std::fs::write(&up, fx.one_transaction()?)?;
    let argv = dbs.iter().map(|db| psql_file_args(port, db, &up)).collect();
    run_all(&bins.psql, argv, parallel).await
}

pub(crate) async fn bench(
    bins: &Bins,
    fx: &Fixture,
    s: &RemoteSettings,
    work: &Path,
) -> Result<RemoteResult> {
    let n = s.tenants;
    let p = s.baseline_parallel;
    let dir = work.join(format!("remote-{n}"));
    std::fs::create_dir_all(&dir)?;
    let pg = Postgres::start_with(PostgresOptions {
        durable: true,
        ..PostgresOptions::default()
    })
    .await
    .context("start PostgreSQL")?;
    let pg_link = link(SocketAddr::from(([127, 0, 0, 1], pg.port())), s.one_way).await?;
    let rtt = s.one_way * 2;

    let dbs = names(n, "rpsql");
    prepare(bins, &pg, &dbs).await?;
    let psql = psql_loop(bins, fx, pg_link.port(), &dbs, p, &dir)
        .await
        .context("psql loop")?;
    check_applied(bins, &pg, &dbs).await?;
    println!(
        "  psql loop (psql -1 -f per database, {p} at a time): {:.2} s",
        psql.as_secs_f64()
    );
    drop_all(bins, &pg, &dbs, &dir).await?;

    let source = dir.join("sqlx-migrations");
    let link_url = format!("postgres://postgres@127.0.0.1:{}", pg_link.port());
    fx.write_sqlx_dir(&source)?;
    let dbs = names(n, "rsqlx");
    prepare(bins, &pg, &dbs).await?;
    let sqlx = sqlx_loop(bins, &link_url, &source, &dbs, p)
        .await
        .context("sqlx-cli loop")?;
    check_applied(bins, &pg, &dbs).await?;
    let sqlx_noop = sqlx_loop(bins, &link_url, &source, &dbs, p)
        .await
        .context("sqlx-cli no-op loop")?;
    println!(
        "  sqlx-cli loop, {p} at a time: {:.2} s; no-op: {:.2} s",
        sqlx.as_secs_f64(),
        sqlx_noop.as_secs_f64()
    );
    drop_all(bins, &pg, &dbs, &dir).await?;

    let set = "rflot";
    let dbs = names(n, set);
    prepare(bins, &pg, &dbs).await?;
    let fleet_dir = dir.join(set);
    let agent = Fleet::start_agent(
        bins,
        "bench-remote-agent",
        &agent_toml(&pg, &format!("b{n}_{set}_tenant_%")),
        n,
        &fleet_dir,
    )
    .await?;
    let agent_addr: SocketAddr = agent
        .address
        .trim_start_matches("http://")
        .parse()
        .context("agent address")?;
    let agent_link = link(agent_addr, s.one_way).await?;
    let fleet = Fleet::with_agent(
        bins,
        agent,
        &format!("http://{}", agent_link.addr()),
        &fx.dir,
        &fleet_dir.join("state"),
        &fleet_dir,
    )
    .await?;
    let steps = fx.steps.len();
    let result = async {
        let flotilla = fleet
            .rollout(&format!("remote{n}"), s.max_parallel, n * steps)
            .await?;
        check_applied(bins, &pg, &dbs).await?;
        let flotilla_noop = fleet
            .rollout(&format!("remote{n}-noop"), s.max_parallel, 0)
            .await
            .context("no-op rollout")?;
        println!(
            "  flotilla rollout --canary 0 --max-parallel {}: {:.2} s; no-op: {:.2} s",
            s.max_parallel,
            flotilla.wall.as_secs_f64(),
            flotilla_noop.wall.as_secs_f64()
        );
        anyhow::Ok((flotilla, flotilla_noop))
    }
    .await;
    fleet.stop().await?;
    let (flotilla, flotilla_noop) = result?;
    drop_all(bins, &pg, &dbs, &dir).await?;
    Ok(RemoteResult {
        tenants: n,
        revisions: steps,
        rtt,
        baseline_parallel: p,
        psql,
        sqlx,
        sqlx_noop,
        flotilla,
        flotilla_noop,
    })
}

/// The table.
pub(crate) fn table(r: &RemoteResult) -> String {
    let rtt = r.rtt.as_secs_f64() * 1e3;
    let p = r.baseline_parallel;
    let s = |d: Duration| format!("{:.2} s", d.as_secs_f64());
    let rows = [
        (
            format!("psql loop from the operator (psql -1 -f per DB, {p} at a time)"),
            s(r.psql),
        ),
        (
            format!("sqlx-cli loop from the operator ({p} at a time)"),
            s(r.sqlx),
        ),
        (
            format!(
                "flotilla rollout --canary 0 --max-parallel {} (agent beside the DBs)",
                r.flotilla.max_parallel
            ),
            format!(
                "{} ({:.1}x faster than sqlx-cli, {:.1}x than psql)",
                s(r.flotilla.wall),
                r.speedup_vs_sqlx(),
                r.speedup_vs_psql()
            ),
        ),
        ("no-op: sqlx-cli loop".to_owned(), s(r.sqlx_noop)),
        (
            "no-op: flotilla rollout".to_owned(),
            format!(
                "{} ({:.1}x faster than sqlx-cli)",
                s(r.flotilla_noop.wall),
                r.noop_speedup_vs_sqlx()
            ),
        ),
    ];
    let mut out = format!(
        "| remote fleet: PostgreSQL, {} tenants, {} revisions, {rtt:.0} ms RTT | |\n|---|---|\n",
        r.tenants, r.revisions
    );
    for (label, value) in rows {
        out.push_str(&format!("| {label} | {value} |\n"));
    }
    out
}

/// Issue 30's targets for the remote fleet, as (what, value, limit, unit): time ratios
/// flotilla / peer, at most 1/5 (full rollout) and 1/10 (no-op).
pub(crate) fn criteria(r: &RemoteResult) -> Vec<(String, f64, f64, &'static str)> {
    vec![
        (
            format!(
                "remote {}: flotilla / sqlx-cli loop (≥ 5x faster)",
                r.tenants
            ),
            1.0 / r.speedup_vs_sqlx(),
            0.2,
            "x",
        ),
        (
            format!(
                "remote {}: no-op flotilla / no-op sqlx-cli loop (≥ 10x faster)",
                r.tenants
            ),
            1.0 / r.noop_speedup_vs_sqlx(),
            0.1,
            "x",
        ),
    ]
}
