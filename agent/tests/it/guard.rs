//! `-- migrate:check` and `-- migrate:verify` on real databases: a check that finds duplicate
//! emails fails the step before anything of it runs (the target untouched, the message names
//! the row); a verify that fails rolls the step back (PostgreSQL, SQLite, transactional) or
//! leaves the target dirty with the reason (MariaDB DDL); guards that pass let the step apply
//! with the checksum that covers them.

use anyhow::{Context, Result, bail, ensure};
use flotilla_core::{Dialect, step_checksum};
use flotilla_proto::{FailureReason, Step};
use sqlx::mysql::MySqlConnection;
use sqlx::postgres::PgConnection;
use sqlx::sqlite::SqliteConnection;
use sqlx::{AssertSqlSafe, Connection};
use tonic::Code;

use crate::support::{Backend, agent, migrate, reason, run, status, target, up};

/// Two users share an email (the duplicate the check looks for).
const SEED: &str = "INSERT INTO users (id, email) VALUES (1, 'ada@example.com'), \
                    (2, 'grace@example.com'), (3, 'ada@example.com')";
const DUPLICATES: &str =
    "SELECT email, count(*) AS n FROM users GROUP BY email HAVING count(*) > 1 ORDER BY email;";
const ADD_LOGIN: &str = "ALTER TABLE users ADD COLUMN login VARCHAR(100);";

/// A plain connection to a target, for setting it up and looking at it.
enum Db {
    Pg(PgConnection),
    My(MySqlConnection),
    Lite(SqliteConnection),
}

impl Db {
    async fn connect(dialect: Dialect, url: &str) -> Result<Db> {
        Ok(match dialect {
            Dialect::Postgres => Db::Pg(PgConnection::connect(url).await?),
            Dialect::Mysql => Db::My(MySqlConnection::connect(url).await?),
            Dialect::Sqlite => Db::Lite(SqliteConnection::connect(url).await?),
        })
    }

    async fn exec(&mut self, sql: &str) -> Result<(), sqlx::Error> {
        let q = sqlx::raw_sql(AssertSqlSafe(sql.to_owned()));
        match self {
            Db::Pg(c) => q.execute(c).await.map(|_| ()),
            Db::My(c) => q.execute(c).await.map(|_| ()),
            Db::Lite(c) => q.execute(c).await.map(|_| ()),
        }
    }

    /// Whether `users` has the `login` column the steps add.
    async fn has_login(&mut self) -> bool {
        self.exec("SELECT login FROM users").await.is_ok()
    }
}

/// A target whose `users` table holds a duplicate email, an agent serving it, and a
/// connection to look at it.
async fn seeded(backend: &Backend) -> Result<(std::sync::Arc<flotilla_agent::Agent>, Db)> {
    let url = backend.fresh_url().await?;
    let mut db = Db::connect(backend.dialect(), &url).await?;
    db.exec("CREATE TABLE users (id INT PRIMARY KEY, email VARCHAR(100))")
        .await?;
    db.exec(SEED).await?;
    let agent = agent(vec![target("t1", backend.dialect(), &url)]).await?;
    Ok((agent, db))
}

/// An up step with guards and the checksum that covers them.
fn guarded(revision: &str, sql: &str, check: &str, verify: &str) -> Step {
    Step {
        check_sql: check.into(),
        verify_sql: verify.into(),
        checksum: step_checksum(sql, check, verify),
        ..up(revision, sql)
    }
}

/// Must-show 3, the check: the duplicate blocks the step (and the step before it in the same
/// transaction, where there is one); nothing is applied; once the data is fixed the same
/// request applies.
async fn check_finds_duplicate_emails(dialect: Dialect) -> Result<()> {
    let backend = Backend::start(dialect).await?;
    let (agent, mut db) = seeded(&backend).await?;
    let before = up("0001_audit", "CREATE TABLE audit (id INT);");
    let step = guarded("0002_login", ADD_LOGIN, DUPLICATES, "");
    let req = migrate("t1", "r1", 1, vec![before.clone(), step.clone()]);

    let out = run(&agent, req.clone()).await?;
    let err = out.err()?;
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert_eq!(reason(err), "CHECK_FAILED");
    let failed = out.failed().context("no StepFailed event")?;
    assert_eq!(
        failed.reason,
        FailureReason::CheckFailed as i32,
        "{failed:?}"
    );
    assert!(!failed.dirty, "{failed:?}");
    for part in [
        "the check of 0002_login failed",
        "returned a row (email=ada@example.com, n=2)",
        "GROUP BY email HAVING count(*) > 1",
        "the step did not run",
    ] {
        ensure!(
            failed.message.contains(part),
            "{part:?} not in {:?}",
            failed.message
        );
    }
    let ts = status(&agent, "t1", true).await?;
    assert!(!ts.dirty, "{ts:?}");
    assert!(!db.has_login().await, "the checked step ran");
    match dialect {
        // MariaDB runs the DDL steps alone (each commits implicitly): the first one stays.
        Dialect::Mysql => {
            let applied: Vec<&str> = ts.history.iter().map(|r| r.revision.as_str()).collect();
            assert_eq!(applied, ["0001_audit"], "{ts:?}");
        }
        // The steps before it in the same transaction are rolled back with it.
        Dialect::Postgres | Dialect::Sqlite => {
            assert!(ts.history.is_empty(), "{:?}", ts.history);
            ensure!(db.exec("SELECT * FROM audit").await.is_err(), "0001 stayed");
            ensure!(
                failed.message.contains("(0001_audit) were rolled back"),
                "{}",
                failed.message
            );
        }
    }

    db.exec("UPDATE users SET email = 'edsger@example.com' WHERE id = 3")
        .await?;
    let again = run(&agent, migrate("t1", "r2", 1, vec![before, step.clone()])).await?;
    if let Some(e) = &again.error {
        bail!("the fixed target still failed: {e:?} {:?}", again.kinds());
    }
    assert!(db.has_login().await);
    let ts = status(&agent, "t1", true).await?;
    let row = ts
        .history
        .iter()
        .find(|r| r.revision == "0002_login")
        .context("0002_login not recorded")?;
    assert_eq!(row.checksum, step.checksum, "the checksum covers the check");
    assert_ne!(row.checksum, flotilla_core::checksum(ADD_LOGIN));
    Ok(())
}

#[tokio::test]
async fn postgres_check_blocks_a_target_with_duplicate_emails() -> Result<()> {
    check_finds_duplicate_emails(Dialect::Postgres).await
}

#[tokio::test]
async fn sqlite_check_blocks_a_target_with_duplicate_emails() -> Result<()> {
    check_finds_duplicate_emails(Dialect::Sqlite).await
}

#[tokio::test]
async fn mariadb_check_blocks_a_target_with_duplicate_emails() -> Result<()> {
    check_finds_duplicate_emails(Dialect::Mysql).await
}

/// The step adds a column every row leaves NULL; the verify wants none NULL.
fn unverified() -> Step {
    guarded(
        "0002_login",
        ADD_LOGIN,
        "",
        "SELECT count(*) = 0 AS all_set FROM users WHERE login IS NULL;",
    )
}

/// Must-show 3, the verify on a transactional dialect: the step is rolled back.
async fn failed_verify_rolls_the_step_back(dialect: Dialect) -> Result<()> {
    let backend = Backend::start(dialect).await?;
    let (agent, mut db) = seeded(&backend).await?;
    let out = run(&agent, migrate("t1", "r1", 1, vec![unverified()])).await?;
    let err = out.err()?;
    assert_eq!(err.code(), Code::Aborted, "{err:?}");
    assert_eq!(reason(err), "VERIFY_FAILED");
    let failed = out.failed().context("no StepFailed event")?;
    assert_eq!(failed.reason, FailureReason::VerifyFailed as i32);
    assert!(failed.rolled_back && !failed.dirty, "{failed:?}");
    for part in [
        "the verify of 0002_login failed after the step ran",
        "returned false",
        "the step was rolled back",
    ] {
        ensure!(
            failed.message.contains(part),
            "{part:?} not in {:?}",
            failed.message
        );
    }
    assert!(!db.has_login().await, "the step was not rolled back");
    let ts = status(&agent, "t1", true).await?;
    assert!(!ts.dirty && ts.history.is_empty(), "{ts:?}");

    // A verify that holds: applied.
    let ok = guarded(
        "0002_login",
        ADD_LOGIN,
        "",
        "SELECT count(*) = 3 FROM users WHERE login IS NULL;",
    );
    let again = run(&agent, migrate("t1", "r2", 1, vec![ok])).await?;
    ensure!(again.error.is_none(), "{:?}", again.error);
    assert!(db.has_login().await);
    Ok(())
}

#[tokio::test]
async fn postgres_failed_verify_rolls_the_step_back() -> Result<()> {
    failed_verify_rolls_the_step_back(Dialect::Postgres).await
}

#[tokio::test]
async fn sqlite_failed_verify_rolls_the_step_back() -> Result<()> {
    failed_verify_rolls_the_step_back(Dialect::Sqlite).await
}

/// Must-show 3, the verify after MariaDB DDL (which commits implicitly): the target is left
/// dirty with the reason, and stays so until repaired.
#[tokio::test]
async fn mariadb_failed_verify_leaves_the_target_dirty_with_the_reason() -> Result<()> {
    let backend = Backend::start(Dialect::Mysql).await?;
    let (agent, mut db) = seeded(&backend).await?;
    let out = run(&agent, migrate("t1", "r1", 1, vec![unverified()])).await?;
    let err = out.err()?;
    assert_eq!(reason(err), "VERIFY_FAILED", "{err:?}");
    let failed = out.failed().context("no StepFailed event")?;
    assert_eq!(failed.reason, FailureReason::VerifyFailed as i32);
    assert!(failed.dirty && !failed.rolled_back, "{failed:?}");
    for part in [
        "the verify of 0002_login failed after the step ran",
        "`SELECT count(*) = 0 AS all_set FROM users WHERE login IS NULL` returned false",
        "the target is left dirty",
    ] {
        ensure!(
            failed.message.contains(part),
            "{part:?} not in {:?}",
            failed.message
        );
    }
    assert!(db.has_login().await, "the DDL ran (and cannot be undone)");
    let ts = status(&agent, "t1", false).await?;
    assert!(ts.dirty, "{ts:?}");
    assert_eq!(ts.dirty_revision, "0002_login");

    // Nothing more runs on it until an operator repairs it.
    let again = run(&agent, migrate("t1", "r2", 1, vec![unverified()])).await?;
    assert_eq!(reason(again.err()?), "TARGET_DIRTY");
    Ok(())
}

/// A guard on a down step is refused before anything runs, and so is a checksum that does
/// not cover the guards.
#[tokio::test]
async fn guards_are_validated_with_the_request() -> Result<()> {
    let backend = Backend::start(Dialect::Sqlite).await?;
    let (agent, _db) = seeded(&backend).await?;
    let mut down = guarded("0002_login", "SELECT 1;", DUPLICATES, "");
    down.direction = flotilla_proto::Direction::Down as i32;
    let out = run(&agent, migrate("t1", "r1", 1, vec![down])).await?;
    let err = out.err()?;
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("steps[0].check_sql"), "{err:?}");

    let unchecked = Step {
        checksum: flotilla_core::checksum(ADD_LOGIN),
        ..guarded("0002_login", ADD_LOGIN, DUPLICATES, "")
    };
    let out = run(&agent, migrate("t1", "r1", 1, vec![unchecked])).await?;
    assert_eq!(reason(out.err()?), "CHECKSUM_MISMATCH");
    Ok(())
}
