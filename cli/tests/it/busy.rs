//! Safe on a busy database, end to end: `flotilla rollout start --lock-timeout ...
//! --retry-attempts N` against PostgreSQL targets, one of which an open transaction holds. The
//! revision's `-- lock-timeout:` header wins over the rollout's flag; the held target fails
//! naming its blocker and is left untouched; the failure budget halts the rollout.

use anyhow::{Context, Result};
use flotilla_core::Dialect;
use flotilla_testkit::Postgres;
use sqlx::postgres::PgConnection;
use sqlx::{Connection, Executor};

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_held_table_fails_its_target_naming_the_blocker_within_the_header_bound() -> Result<()> {
    let pg = Postgres::start().await?;
    let busy_url = pg.fresh_database().await?;
    let free_url = pg.fresh_database().await?;
    for url in [&busy_url, &free_url] {
        let mut c = PgConnection::connect(url).await?;
        c.execute("CREATE TABLE accounts (id INT PRIMARY KEY); INSERT INTO accounts VALUES (1)")
            .await?;
    }
    let mut blocker = PgConnection::connect(&busy_url).await?;
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut blocker)
        .await?;
    blocker
        .execute("BEGIN; SELECT count(*) FROM accounts")
        .await?;
    let dir = migrations(&[(
        "0001_note.sql",
        "-- revision: 0001_note\n-- lock-timeout: 300ms\n-- migrate:up\n\
         ALTER TABLE accounts ADD COLUMN note TEXT;\n-- migrate:down\n\
         ALTER TABLE accounts DROP COLUMN note;\n",
    )])?;
    let agent = TestAgent::start(
        "agent",
        vec![
            target("busy", Dialect::Postgres, &busy_url, &[]),
            target("free", Dialect::Postgres, &free_url, &[]),
        ],
    )
    .await?;
    let coord = TestCoordinator::start(dir.path(), &[&agent], None).await?;
    // The rollout asks for a minute per lock wait; the revision's header (300 ms) wins.
    let (code, out, err) = run_cli(
        &[
            "rollout",
            "start",
            "--coordinator",
            &coord.address,
            "--canary",
            "0",
            "--max-parallel",
            "2",
            "--lock-timeout",
            "1m",
            "--retry-attempts",
            "2",
            "--wait",
        ],
        None,
    )
    .await?;
    assert_eq!(code, 4, "halted by the failure budget: {out}{err}");
    let id = out
        .split_whitespace()
        .nth(1)
        .context("no rollout id in the output")?;
    let (code, out, err) = run_cli(
        &[
            "rollout",
            "get",
            id,
            "--coordinator",
            &coord.address,
            "--output",
            "json",
        ],
        None,
    )
    .await?;
    assert_eq!(code, 0, "{out}{err}");
    let expected = format!(
        "could not get the lock on accounts within 300ms, 2 attempts, blocked by pid {pid} \
         (idle in transaction) running BEGIN; SELECT count(*) FROM accounts"
    );
    assert!(
        out.contains(&expected) || err.contains(&expected),
        "expected {expected:?} in: {out}{err}"
    );
    let statuses = agent.statuses(true).await?;
    let busy = statuses.get("busy").context("no status of busy")?;
    assert!(
        applied(busy).is_empty() && !busy.dirty,
        "the held target was touched: {busy:?}"
    );
    blocker.execute("COMMIT").await?;
    Ok(())
}
