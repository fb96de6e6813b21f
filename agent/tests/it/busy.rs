//! Safe on a busy database: a step whose table is held by an open transaction waits at most
//! its lock bound per attempt, is rolled back and retried, and the application's queries on
//! that table never queue behind it for longer than the bound; when the retry budget runs out,
//! the target fails naming the blocker and is left clean.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use flotilla_core::Dialect;
use flotilla_proto::step_event::Event;
use flotilla_proto::{FailureReason, MigrateRequest};
use sqlx::mysql::MySqlConnection;
use sqlx::postgres::PgConnection;
use sqlx::{AssertSqlSafe, Connection};

use crate::support::{Backend, agent, collect, migrate, next_event, reason, status, up};

const REVISION: &str = "0002_note";
const ALTER: &str = "ALTER TABLE accounts ADD COLUMN note VARCHAR(20);";

/// A plain connection, as an application or a blocking transaction holds one.
enum Db {
    Pg(PgConnection),
    My(MySqlConnection),
}

impl Db {
    async fn connect(dialect: Dialect, url: &str) -> Result<Db> {
        Ok(match dialect {
            Dialect::Postgres => Db::Pg(PgConnection::connect(url).await?),
            Dialect::Mysql => Db::My(MySqlConnection::connect(url).await?),
            Dialect::Sqlite => bail!("sqlite has no server sessions to block with"),
        })
    }

    async fn exec(&mut self, sql: &str) -> Result<()> {
        match self {
            Db::Pg(c) => sqlx::raw_sql(AssertSqlSafe(sql))
                .execute(c)
                .await
                .map(|_| ())?,
            Db::My(c) => sqlx::raw_sql(AssertSqlSafe(sql))
                .execute(c)
                .await
                .map(|_| ())?,
        }
        Ok(())
    }

    async fn int(&mut self, sql: &'static str) -> Result<i64> {
        Ok(match self {
            Db::Pg(c) => sqlx::query_scalar::<_, i64>(sql).fetch_one(c).await?,
            Db::My(c) => sqlx::query_scalar::<_, i64>(sql).fetch_one(c).await?,
        })
    }

    /// The server's id of this session (`pg_backend_pid()`, `CONNECTION_ID()`).
    async fn pid(&mut self) -> Result<i64> {
        match self {
            Db::Pg(_) => self.int("SELECT pg_backend_pid()::bigint").await,
            Db::My(_) => self.int("SELECT CAST(CONNECTION_ID() AS SIGNED)").await,
        }
    }
}

/// A table with rows, and a session whose open transaction read it: it holds the table's
/// ACCESS SHARE lock (PostgreSQL) or its metadata lock (MariaDB) until it commits.
struct Busy {
    url: String,
    blocker: Db,
    blocker_pid: i64,
}

async fn busy(backend: &Backend) -> Result<Busy> {
    let dialect = backend.dialect();
    let url = backend.fresh_url().await?;
    let mut setup = Db::connect(dialect, &url).await?;
    setup
        .exec("CREATE TABLE accounts (id INT PRIMARY KEY, name VARCHAR(50))")
        .await?;
    setup
        .exec("INSERT INTO accounts (id, name) VALUES (1, 'ada'), (2, 'grace'), (3, 'edsger')")
        .await?;
    let mut blocker = Db::connect(dialect, &url).await?;
    let blocker_pid = blocker.pid().await?;
    blocker.exec("BEGIN").await?;
    blocker.exec("SELECT count(*) FROM accounts").await?;
    Ok(Busy {
        url,
        blocker,
        blocker_pid,
    })
}

/// The application: one session querying the table in a loop until `stop`; returns the worst
/// latency of one query and how many ran.
fn application(
    dialect: Dialect,
    url: String,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Result<(Duration, u32)>> {
    tokio::spawn(async move {
        let mut db = Db::connect(dialect, &url).await?;
        let (mut worst, mut n) = (Duration::ZERO, 0u32);
        while !stop.load(Ordering::Relaxed) {
            let t0 = Instant::now();
            db.int("SELECT count(*) FROM accounts").await?;
            worst = worst.max(t0.elapsed());
            n += 1;
        }
        Ok((worst, n))
    })
}

fn request(bound_ms: u64, attempts: u32) -> MigrateRequest {
    MigrateRequest {
        step_lock_timeout_ms: bound_ms,
        retry_max_attempts: attempts,
        retry_max_elapsed_ms: 60_000,
        ..migrate("t1", "r1", 1, vec![up(REVISION, ALTER)])
    }
}

/// Issue 28, must-show 1: the ALTER waits at most the bound per attempt and retries; the
/// application's worst query latency stays under bound + 200 ms; after the blocker commits
/// (once the agent retried 3 times) the step completes, applied once.
async fn step_waits_at_most_its_bound_and_retries(
    dialect: Dialect,
    bound_ms: u64,
    effective: Duration,
) -> Result<()> {
    let backend = Backend::start(dialect).await?;
    let mut busy = busy(&backend).await?;
    let agent = agent(vec![crate::support::target("t1", dialect, &busy.url)]).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let app = application(dialect, busy.url.clone(), stop.clone());

    let mut stream = agent
        .migrate(request(bound_ms, 100))
        .await
        .map_err(|s| anyhow::anyhow!("migrate refused: {s:?}"))?;
    let mut retries = Vec::new();
    while retries.len() < 3 {
        let ev = next_event(&mut stream).await?;
        match ev.event {
            Some(Event::Retrying(r)) => retries.push(r),
            Some(Event::Succeeded(_) | Event::Failed(_)) => {
                bail!("the step ended while the blocker held the table: {ev:?}")
            }
            _ => {}
        }
    }
    busy.blocker.exec("COMMIT").await?;
    let rest = collect(stream).await?;
    stop.store(true, Ordering::Relaxed);
    let (worst, queries) = app.await??;
    ensure!(rest.error.is_none(), "migrate failed: {:?}", rest.error);
    let succeeded = rest
        .events
        .iter()
        .find_map(|e| match &e.event {
            Some(Event::Succeeded(s)) => Some(*s),
            _ => None,
        })
        .context("no StepSucceeded")?;
    for e in &rest.events {
        if let Some(Event::Retrying(r)) = &e.event {
            retries.push(r.clone());
        }
    }
    eprintln!(
        "{dialect}: lock bound {effective:?}: worst application query latency {worst:?} over \
         {queries} queries; {} retries, applied on attempt {}",
        retries.len(),
        succeeded.attempts
    );
    ensure!(
        retries.iter().all(|r| r.error_class == "lock_timeout"),
        "retried for another reason: {retries:?}"
    );
    ensure!(
        succeeded.attempts as usize == retries.len() + 1 && succeeded.attempts >= 4,
        "attempts {} after {} retries",
        succeeded.attempts,
        retries.len()
    );
    ensure!(
        worst <= effective + Duration::from_millis(200),
        "an application query waited {worst:?}, more than the bound {effective:?} + 200 ms"
    );
    ensure!(queries > 0, "the application ran no query");

    let ts = status(&agent, "t1", true).await?;
    ensure!(!ts.dirty, "target left dirty: {ts:?}");
    let applied = ts
        .history
        .iter()
        .filter(|h| h.revision == REVISION)
        .map(|h| h.status.as_str())
        .collect::<Vec<_>>();
    ensure!(applied == ["applied"], "history of {REVISION}: {applied:?}");
    let mut check = Db::connect(dialect, &busy.url).await?;
    check.exec("SELECT note FROM accounts").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_step_waits_at_most_its_bound_and_retries() -> Result<()> {
    step_waits_at_most_its_bound_and_retries(Dialect::Postgres, 300, Duration::from_millis(300))
        .await
}

/// MariaDB waits whole seconds: a 300 ms bound waits 1 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mariadb_step_waits_at_most_its_bound_and_retries() -> Result<()> {
    step_waits_at_most_its_bound_and_retries(Dialect::Mysql, 300, Duration::from_secs(1)).await
}

/// Issue 28, must-show 2: out of retries, the target fails with the blocker's pid (and, on
/// PostgreSQL, its query) in the message; nothing of the step is applied and the target is
/// not dirty (MariaDB's dirty mark of the DDL step is abandoned).
async fn retry_budget_exhausted_names_the_blocker(dialect: Dialect) -> Result<()> {
    let backend = Backend::start(dialect).await?;
    let mut busy = busy(&backend).await?;
    if dialect == Dialect::Mysql {
        // The plugin that shows who holds a metadata lock (shipped with MariaDB).
        let mut root = Db::connect(dialect, &busy.url).await?;
        root.exec("INSTALL SONAME 'metadata_lock_info'").await?;
    }
    let agent = agent(vec![crate::support::target("t1", dialect, &busy.url)]).await?;
    let out = collect(
        agent
            .migrate(request(300, 3))
            .await
            .map_err(|s| anyhow::anyhow!("migrate refused: {s:?}"))?,
    )
    .await?;
    let err = out.err()?;
    assert_eq!(reason(err), "LOCK_TIMEOUT", "{err:?}");
    let failed = out.failed().context("no StepFailed")?;
    assert_eq!(failed.reason, FailureReason::LockTimeout as i32);
    assert!(!failed.dirty, "{failed:?}");
    let within = if dialect == Dialect::Mysql {
        "1s"
    } else {
        "300ms"
    };
    let expected = format!(
        "could not get the lock on {} within {within}, 3 attempts, blocked by pid {}",
        if dialect == Dialect::Mysql {
            format!(
                "{}.accounts",
                busy.url.rsplit('/').next().unwrap_or_default()
            )
        } else {
            "accounts".to_owned()
        },
        busy.blocker_pid
    );
    assert!(
        failed.message.contains(&expected),
        "expected {expected:?} in {:?}",
        failed.message
    );
    if dialect == Dialect::Postgres {
        assert!(
            failed
                .message
                .contains("running SELECT count(*) FROM accounts"),
            "{}",
            failed.message
        );
    }
    eprintln!("{dialect}: {}", failed.message);
    let ts = status(&agent, "t1", true).await?;
    ensure!(!ts.dirty, "target left dirty: {ts:?}");
    ensure!(
        !ts.history
            .iter()
            .any(|h| h.revision == REVISION && h.status != "abandoned"),
        "history: {:?}",
        ts.history
    );
    busy.blocker.exec("COMMIT").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_retry_budget_exhausted_names_the_blocker() -> Result<()> {
    retry_budget_exhausted_names_the_blocker(Dialect::Postgres).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mariadb_retry_budget_exhausted_names_the_blocker() -> Result<()> {
    retry_budget_exhausted_names_the_blocker(Dialect::Mysql).await
}

/// MariaDB DDL runs under the dirty protocol: a two-statement step whose second statement
/// waits on the held table is not left dirty but retried from that statement (the first, a
/// CREATE TABLE, is not run again, or the retry would fail on "table exists").
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mariadb_ddl_step_resumes_after_its_done_statements() -> Result<()> {
    let backend = Backend::start(Dialect::Mysql).await?;
    let mut busy = busy(&backend).await?;
    let agent = agent(vec![crate::support::target(
        "t1",
        Dialect::Mysql,
        &busy.url,
    )])
    .await?;
    let step = up(
        REVISION,
        "CREATE TABLE audit (id INT PRIMARY KEY);\nALTER TABLE accounts ADD COLUMN note VARCHAR(20);",
    );
    let mut stream = agent
        .migrate(MigrateRequest {
            step_lock_timeout_ms: 300,
            retry_max_attempts: 100,
            retry_max_elapsed_ms: 60_000,
            ..migrate("t1", "r1", 1, vec![step])
        })
        .await
        .map_err(|s| anyhow::anyhow!("migrate refused: {s:?}"))?;
    let mut retries = 0;
    while retries < 2 {
        let ev = next_event(&mut stream).await?;
        match ev.event {
            Some(Event::Retrying(r)) => {
                ensure!(r.error_class == "lock_timeout", "{r:?}");
                retries += 1;
            }
            Some(Event::Succeeded(_) | Event::Failed(_)) => {
                bail!("the step ended while the blocker held the table: {ev:?}")
            }
            _ => {}
        }
    }
    // Meanwhile the target is dirty (the step is under way), with the first statement done.
    let mut check = Db::connect(Dialect::Mysql, &busy.url).await?;
    check.exec("SELECT id FROM audit").await?;
    busy.blocker.exec("COMMIT").await?;
    let rest = collect(stream).await?;
    ensure!(rest.error.is_none(), "migrate failed: {:?}", rest.kinds());
    let ts = status(&agent, "t1", true).await?;
    ensure!(!ts.dirty, "target left dirty: {ts:?}");
    let rows = ts
        .history
        .iter()
        .filter(|h| h.revision == REVISION)
        .map(|h| h.status.as_str())
        .collect::<Vec<_>>();
    ensure!(rows == ["applied"], "history of {REVISION}: {rows:?}");
    check.exec("SELECT note FROM accounts").await?;
    Ok(())
}
