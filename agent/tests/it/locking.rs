//! Issue test 5: two clients migrating the same target never interleave; lock waits are
//! bounded and a timeout is a clear LOCK_TIMEOUT.

use anyhow::{Context, Result, ensure};
use flotilla_agent::driver::{Driver, Session};
use flotilla_core::{Dialect, Secret};
use flotilla_proto::step_event::Event;
use flotilla_proto::{FailureReason, MigrateRequest};
use tonic::Code;

use crate::support::{Backend, agent, collect, kind, migrate, next_event, reason, run, status, up};

fn plan() -> Vec<flotilla_proto::Step> {
    vec![
        up("0001_a", "CREATE TABLE a (id INTEGER PRIMARY KEY);"),
        up("0002_b", "CREATE TABLE b (id INTEGER PRIMARY KEY);"),
        up("0003_c", "CREATE TABLE c (id INTEGER PRIMARY KEY);"),
    ]
}

/// A driver for a test target, to hold its database lock from outside the agent.
pub(crate) fn driver_for(dialect: Dialect, url: &str) -> Result<Box<dyn Driver>> {
    let url = Secret::new(url);
    Ok(match dialect {
        Dialect::Sqlite => Box::new(flotilla_agent::driver::sqlite::SqliteDriver::new(url)?),
        Dialect::Postgres => Box::new(flotilla_agent::driver::postgres::PostgresDriver::new(url)?),
        Dialect::Mysql => Box::new(flotilla_agent::driver::mysql::MysqlDriver::new(url)?),
    })
}

/// Take the target's migration lock on a session of our own.
async fn hold_lock(dialect: Dialect, url: &str) -> Result<Box<dyn Session>> {
    let driver = driver_for(dialect, url)?;
    let mut s = driver.connect(&Default::default()).await?;
    s.ensure_schema().await?;
    ensure!(s.try_lock().await?, "the lock was not free");
    Ok(s)
}

async fn expect_lock_waiting(stream: &mut flotilla_agent::EventStream) -> Result<u64> {
    let ev = next_event(stream).await?;
    match ev.event {
        Some(Event::LockWaiting(w)) => Ok(w.wait_limit_ms),
        _ => anyhow::bail!("expected LockWaiting first, got {}", kind(&ev)),
    }
}

async fn never_interleave(dialect: Dialect) -> Result<()> {
    let backend = Backend::start(dialect).await?;
    let t = backend.fresh_target("t1").await?;
    let url = t.url.expose().to_owned();
    let agent = agent(vec![t]).await?;

    // Someone else holds the database lock: both requests must wait.
    let mut holder = hold_lock(dialect, &url).await?;
    let mut a = agent.migrate(migrate("t1", "rollout-a", 1, plan())).await?;
    let mut b = agent.migrate(migrate("t1", "rollout-b", 1, plan())).await?;
    assert_eq!(expect_lock_waiting(&mut a).await?, 5000);
    assert_eq!(expect_lock_waiting(&mut b).await?, 5000);
    holder.unlock().await?;
    holder.close().await;

    let (a, b) = tokio::join!(collect(a), collect(b));
    let (a, b) = (a?, b?);
    ensure!(
        a.error.is_none() && b.error.is_none(),
        "a: {:?} b: {:?}",
        a.error,
        b.error
    );
    let count =
        |o: &crate::support::Outcome, k: &str| o.events.iter().filter(|e| kind(e) == k).count();
    let (applier, other) = if count(&a, "succeeded") > 0 {
        (&a, &b)
    } else {
        (&b, &a)
    };
    assert_eq!(count(applier, "succeeded"), 3, "{:?}", applier.kinds());
    assert_eq!(count(other, "skipped"), 3, "{:?}", other.kinds());
    assert_eq!(count(other, "succeeded"), 0, "{:?}", other.kinds());

    let ts = status(&agent, "t1", true).await?;
    assert_eq!(ts.history.len(), 3, "{:?}", ts.history);
    let rollouts: std::collections::BTreeSet<_> =
        ts.history.iter().map(|r| r.rollout_id.as_str()).collect();
    assert_eq!(rollouts.len(), 1, "rows of both rollouts: {rollouts:?}");
    Ok(())
}

#[tokio::test]
async fn sqlite_concurrent_migrations_never_interleave() -> Result<()> {
    never_interleave(Dialect::Sqlite).await
}

#[tokio::test]
async fn postgres_concurrent_migrations_never_interleave() -> Result<()> {
    never_interleave(Dialect::Postgres).await
}

#[tokio::test]
async fn mariadb_concurrent_migrations_never_interleave() -> Result<()> {
    never_interleave(Dialect::Mysql).await
}

#[tokio::test]
async fn lock_wait_is_bounded() -> Result<()> {
    let backend = Backend::start(Dialect::Sqlite).await?;
    let t = backend.fresh_target("t1").await?;
    let url = t.url.expose().to_owned();
    let agent = agent(vec![t]).await?;
    let holder = hold_lock(Dialect::Sqlite, &url).await?;

    // The database lock is held elsewhere: the wait ends after lock_wait_ms.
    let req = MigrateRequest {
        lock_wait_ms: 300,
        ..migrate("t1", "r1", 1, plan())
    };
    let started = std::time::Instant::now();
    let out = run(&agent, req).await?;
    let err = out.err()?;
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert_eq!(reason(err), "LOCK_TIMEOUT");
    assert!(
        err.message().contains("t1") && err.message().contains("300ms"),
        "{}",
        err.message()
    );
    assert!(started.elapsed() >= std::time::Duration::from_millis(300));
    assert_eq!(
        out.failed().map(|f| f.reason),
        Some(FailureReason::LockTimeout as i32)
    );
    assert_eq!(
        out.kinds().first().map(String::as_str),
        Some("0001_a:lock_waiting")
    );

    // A first request waits on the database lock; a second one, to the same agent, waits on
    // the in-process lock and gives up after its own bound.
    let mut first = agent.migrate(migrate("t1", "r2", 1, plan())).await?;
    expect_lock_waiting(&mut first).await?;
    let second = MigrateRequest {
        lock_wait_ms: 200,
        ..migrate("t1", "r3", 1, plan())
    };
    let out = run(&agent, second).await?;
    assert_eq!(reason(out.err()?), "LOCK_TIMEOUT");

    holder.close().await;
    let first = collect(first).await?;
    ensure!(first.error.is_none(), "{:?}", first.error);
    let ts = status(&agent, "t1", true).await?;
    assert!(
        ts.history.iter().all(|r| r.rollout_id == "r2"),
        "{:?}",
        ts.history
    );
    assert_eq!(ts.history.len(), 3);
    Ok(())
}

/// An agent stopping while a migration waits for its lock cancels it cleanly.
#[tokio::test]
async fn shutdown_cancels_a_waiting_migration() -> Result<()> {
    let backend = Backend::start(Dialect::Sqlite).await?;
    let t = backend.fresh_target("t1").await?;
    let url = t.url.expose().to_owned();
    let agent = agent(vec![t]).await?;
    let holder = hold_lock(Dialect::Sqlite, &url).await?;
    let mut server = crate::support::Server::start(agent.clone()).await?;
    let mut client = server.client().await?;
    let mut stream = client
        .migrate(migrate("t1", "r1", 1, plan()))
        .await?
        .into_inner();
    let first = stream.message().await?.context("no first event")?;
    assert_eq!(kind(&first), "lock_waiting");
    server.signal();
    let out = collect(stream).await?;
    let err = out.err()?;
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert_eq!(reason(err), "CANCELLED");
    assert_eq!(
        out.failed().map(|f| f.reason),
        Some(FailureReason::Cancelled as i32)
    );
    server.stop().await?;
    holder.close().await;
    assert!(status(&agent, "t1", true).await?.history.is_empty());
    Ok(())
}
