//! Lock bounds beyond the PostgreSQL/MariaDB ALTER of `busy.rs`: a SQLite step held up by
//! another connection's write lock waits at most its bound (`busy_timeout`) per attempt and
//! is retried; a PostgreSQL `CREATE INDEX CONCURRENTLY` (non-transactional) that times out
//! waiting for an open transaction is retried, not left dirty, and ends with one valid index.

use std::time::{Duration, Instant};

use anyhow::{Result, bail, ensure};
use flotilla_core::Dialect;
use flotilla_proto::step_event::Event;
use flotilla_proto::{MigrateRequest, Step};
use sqlx::postgres::PgConnection;
use sqlx::sqlite::SqliteConnection;
use sqlx::{Connection, Executor};

use crate::support::{Backend, agent, migrate, next_event, run, status, target, up};

fn bounded(step: Step, bound_ms: u64) -> MigrateRequest {
    MigrateRequest {
        step_lock_timeout_ms: bound_ms,
        retry_max_attempts: 100,
        retry_max_elapsed_ms: 120_000,
        ..migrate("t1", "r2", 1, vec![step])
    }
}

/// Follow a Migrate stream sent at `sent`: how long each attempt that was retried took (from
/// its start, the request's or the end of the previous retry's delay, to its `StepRetrying`),
/// and the retries' error classes; once `release_after` retries were seen, `release` runs (the
/// blocker ends). Fails on a `StepFailed`.
async fn follow<F>(
    stream: &mut flotilla_agent::EventStream,
    sent: Instant,
    release_after: usize,
    release: F,
) -> Result<(Vec<Duration>, Vec<String>)>
where
    F: AsyncFnOnce() -> Result<()>,
{
    let (mut waits, mut classes) = (Vec::new(), Vec::new());
    let mut attempt_start = sent;
    let mut release = Some(release);
    loop {
        let ev = next_event(stream).await?;
        match ev.event {
            Some(Event::Retrying(r)) => {
                let now = Instant::now();
                waits.push(now.saturating_duration_since(attempt_start));
                attempt_start = now + Duration::from_millis(r.delay_ms);
                classes.push(r.error_class);
                if waits.len() == release_after
                    && let Some(f) = release.take()
                {
                    f().await?;
                }
            }
            Some(Event::Succeeded(_)) => return Ok((waits, classes)),
            Some(Event::Failed(f)) => bail!("the step failed: {f:?}"),
            _ => {}
        }
    }
}

#[tokio::test]
async fn sqlite_step_waits_at_most_its_busy_timeout_per_attempt_and_is_retried() -> Result<()> {
    let backend = Backend::start(Dialect::Sqlite).await?;
    let url = backend.fresh_url().await?;
    let agent = agent(vec![target("t1", Dialect::Sqlite, &url)]).await?;
    let first = run(
        &agent,
        migrate(
            "t1",
            "r1",
            1,
            vec![up(
                "0001_accounts",
                "CREATE TABLE accounts (id INT PRIMARY KEY);",
            )],
        ),
    )
    .await?;
    ensure!(first.error.is_none(), "{:?}", first.error);

    // Another connection holds the write lock (RESERVED) in an open transaction.
    let mut blocker = SqliteConnection::connect(&url).await?;
    blocker
        .execute("BEGIN IMMEDIATE; INSERT INTO accounts VALUES (1);")
        .await?;
    let bound = Duration::from_millis(300);
    let step = up("0002_note", "ALTER TABLE accounts ADD COLUMN note TEXT;");
    let sent = Instant::now();
    let mut stream = agent.migrate(bounded(step, 300)).await?;
    let (waits, classes) = follow(&mut stream, sent, 3, async || {
        blocker.execute("COMMIT").await?;
        Ok(())
    })
    .await?;
    println!("sqlite waits per attempt with a {bound:?} bound: {waits:?}");
    ensure!(waits.len() >= 3, "{waits:?}");
    assert!(classes.iter().all(|c| c == "busy"), "{classes:?}");
    for w in &waits {
        // Waited for the lock (not refused at once), and for the bound, not the session's 5 s.
        ensure!(*w >= bound - Duration::from_millis(50), "{waits:?}");
        ensure!(*w < bound + Duration::from_millis(1500), "{waits:?}");
    }
    let ts = status(&agent, "t1", true).await?;
    let rows: Vec<&str> = ts.history.iter().map(|r| r.revision.as_str()).collect();
    assert_eq!(rows, ["0001_accounts", "0002_note"]);
    assert!(!ts.dirty);
    Ok(())
}

#[tokio::test]
async fn postgres_create_index_concurrently_times_out_and_is_retried_not_left_dirty() -> Result<()>
{
    let backend = Backend::start(Dialect::Postgres).await?;
    let url = backend.fresh_url().await?;
    let mut setup = PgConnection::connect(&url).await?;
    setup
        .execute("CREATE TABLE accounts (id INT PRIMARY KEY, name TEXT); INSERT INTO accounts VALUES (1, 'ada')")
        .await?;
    let agent = agent(vec![target("t1", Dialect::Postgres, &url)]).await?;

    // An open transaction that wrote the table: CREATE INDEX CONCURRENTLY gets its own lock,
    // creates the (invalid) index, then waits for this transaction: the bound stops it there.
    let mut blocker = PgConnection::connect(&url).await?;
    blocker
        .execute("BEGIN; INSERT INTO accounts VALUES (2, 'grace')")
        .await?;
    let step = Step {
        transactional: false,
        ..up(
            "0001_name_index",
            "CREATE INDEX CONCURRENTLY accounts_name ON accounts (name);",
        )
    };
    let bound = Duration::from_millis(300);
    let sent = Instant::now();
    let mut stream = agent.migrate(bounded(step, 300)).await?;
    let (waits, classes) = follow(&mut stream, sent, 3, async || {
        blocker.execute("COMMIT").await?;
        Ok(())
    })
    .await?;
    println!("create index concurrently waits per attempt with a {bound:?} bound: {waits:?}");
    ensure!(waits.len() >= 3, "{waits:?}");
    assert!(classes.iter().all(|c| c == "lock_timeout"), "{classes:?}");
    for w in &waits {
        ensure!(*w < bound + Duration::from_millis(1500), "{waits:?}");
    }
    let ts = status(&agent, "t1", true).await?;
    assert!(!ts.dirty, "{ts:?}");
    let applied: Vec<(&str, &str)> = ts
        .history
        .iter()
        .map(|r| (r.revision.as_str(), r.status.as_str()))
        .collect();
    assert_eq!(applied, [("0001_name_index", "applied")]);
    let indexes: Vec<(String, bool)> = sqlx::query_as(
        "SELECT c.relname::text, i.indisvalid FROM pg_index i \
         JOIN pg_class c ON c.oid = i.indexrelid \
         WHERE i.indrelid = 'accounts'::regclass AND c.relname LIKE 'accounts_name%'",
    )
    .fetch_all(&mut setup)
    .await?;
    assert_eq!(indexes, [("accounts_name".to_owned(), true)]);
    Ok(())
}
