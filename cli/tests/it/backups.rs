//! Backups before destructive steps, end to end: on PostgreSQL, MariaDB and SQLite a revision
//! dropping a column of a 1,000-row table runs after a backup; `flotilla backups restore`
//! brings the column's data back and the history shows the step and the restore. A backup
//! that cannot be written fails the target before its step, leaving it untouched.

use anyhow::{Context, Result};
use flotilla_core::Dialect;
use flotilla_proto as pb;
use serde_json::Value;
use sqlx::Connection;

use crate::harness::{
    TestAgent, TestCoordinator, migrations, run_cli, spec, state, target, targets_in,
};

const ROWS: usize = 1000;

/// 0001 creates `users` with 1,000 rows (`legacy` = 'v<id>'); 0002 drops `legacy` (allowed).
fn set() -> Vec<(&'static str, String)> {
    let values: Vec<String> = (1..=ROWS).map(|i| format!("({i}, 'v{i}')")).collect();
    vec![
        (
            "0001.sql",
            format!(
                "-- revision: 0001\n-- migrate:up\nCREATE TABLE users (id integer PRIMARY KEY, legacy varchar(32));\nINSERT INTO users (id, legacy) VALUES {};\n-- migrate:down\nDROP TABLE users;\n",
                values.join(", ")
            ),
        ),
        (
            "0002.sql",
            "-- revision: 0002\n-- revises: 0001\n-- lint: allow destructive\n-- migrate:up\nALTER TABLE users DROP COLUMN legacy;\n".to_owned(),
        ),
    ]
}

/// `SELECT COUNT(*) ...` on the target database.
async fn count(dialect: Dialect, url: &str, sql: &str) -> Result<i64> {
    Ok(match dialect {
        Dialect::Postgres => {
            let mut c = sqlx::PgConnection::connect(url).await?;
            sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
                .fetch_one(&mut c)
                .await?
        }
        Dialect::Mysql => {
            let mut c = sqlx::MySqlConnection::connect(url).await?;
            sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
                .fetch_one(&mut c)
                .await?
        }
        Dialect::Sqlite => {
            let mut c = sqlx::SqliteConnection::connect(url).await?;
            sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
                .fetch_one(&mut c)
                .await?
        }
    })
}

async fn cli_json(args: &[&str]) -> Result<Value> {
    let (code, out, err) = run_cli(args, None).await?;
    anyhow::ensure!(code == 0, "flotilla {args:?} exited {code}: {out}{err}");
    serde_json::from_str(&out).with_context(|| format!("json from {args:?}: {out}"))
}

async fn drop_column_backup_and_restore(dialect: Dialect, url: &str) -> Result<()> {
    let files = set();
    let files: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let dir = migrations(&files)?;
    let agent = TestAgent::start("a1", vec![target("t1", dialect, url, &[])]).await?;
    let coord = TestCoordinator::start(dir.path(), &[&agent], None).await?;

    let r = coord.rollout(spec("head")).await?;
    assert_eq!(state(&r), pb::RolloutState::Succeeded, "{r:?}");
    // The column is gone, the rows are still there.
    assert_eq!(
        count(dialect, url, "SELECT COUNT(*) FROM users").await?,
        ROWS as i64
    );
    assert!(
        count(dialect, url, "SELECT COUNT(legacy) FROM users")
            .await
            .is_err(),
        "legacy was dropped"
    );

    // One backup of users, 1,000 rows, taken by this rollout before 0002.
    let addr = coord.address.as_str();
    let list = cli_json(&["backups", "--coordinator", addr, "--output", "json", "list"]).await?;
    let backups = list["backups"].as_array().context("backups")?;
    assert_eq!(backups.len(), 1, "{list}");
    let b = &backups[0];
    assert_eq!(b["target"], "t1");
    assert_eq!(b["rollout"], r.id.as_str());
    assert_eq!(b["revision"], "0002");
    assert_eq!(b["table"], "users");
    assert_eq!(b["rows"], ROWS as u64);
    assert!(b["bytes"].as_u64().unwrap_or(0) > 0, "{b}");
    assert_eq!(b["restored_at"], Value::Null);

    // Restore: the column and its values are back.
    let restored = cli_json(&[
        "backups",
        "--coordinator",
        addr,
        "--output",
        "json",
        "restore",
        "--target",
        "t1",
        "--rollout",
        &r.id,
    ])
    .await?;
    assert_eq!(restored["rows"], ROWS as u64, "{restored}");
    let concat = match dialect {
        Dialect::Mysql => "CONCAT('v', id)",
        _ => "'v' || CAST(id AS varchar(16))",
    };
    let sql = format!("SELECT COUNT(*) FROM users WHERE legacy = {concat}");
    assert_eq!(count(dialect, url, &sql).await?, ROWS as i64);
    let list = cli_json(&["backups", "--coordinator", addr, "--output", "json", "list"]).await?;
    assert_ne!(list["backups"][0]["restored_at"], Value::Null, "{list}");

    // The history shows the step and the restore, in that order.
    let st = agent.statuses(true).await?;
    let rows: Vec<(String, String)> = st["t1"]
        .history
        .iter()
        .map(|h| (h.revision.clone(), h.status.clone()))
        .collect();
    assert_eq!(
        rows,
        [
            ("0001".to_owned(), "applied".to_owned()),
            ("0002".to_owned(), "applied".to_owned()),
            ("0002".to_owned(), "restored".to_owned()),
        ]
    );
    // A restore changes no applied set.
    assert_eq!(st["t1"].heads, ["0002"]);

    // Retention: keeping 0 rollouts removes the copy.
    let pruned = cli_json(&[
        "backups",
        "--coordinator",
        addr,
        "--output",
        "json",
        "prune",
        "--keep",
        "0",
    ])
    .await?;
    assert_eq!(
        pruned["removed"].as_array().map(Vec::len),
        Some(1),
        "{pruned}"
    );
    let list = cli_json(&["backups", "--coordinator", addr, "--output", "json", "list"]).await?;
    assert_eq!(list["backups"].as_array().map(Vec::len), Some(0), "{list}");
    Ok(())
}

#[tokio::test]
async fn drop_column_backup_and_restore_on_postgres() -> Result<()> {
    let pg = flotilla_testkit::Postgres::start().await?;
    drop_column_backup_and_restore(Dialect::Postgres, &pg.fresh_database().await?).await
}

#[tokio::test]
async fn drop_column_backup_and_restore_on_mariadb() -> Result<()> {
    let my = flotilla_testkit::MariaDb::start().await?;
    drop_column_backup_and_restore(Dialect::Mysql, &my.fresh_database().await?).await
}

#[tokio::test]
async fn drop_column_backup_and_restore_on_sqlite() -> Result<()> {
    let (_dir, url) = flotilla_testkit::sqlite_database()?;
    drop_column_backup_and_restore(Dialect::Sqlite, &url).await
}

#[tokio::test]
async fn a_backup_that_cannot_be_written_fails_the_target_before_its_step() -> Result<()> {
    let (dir, url) = flotilla_testkit::sqlite_database()?;
    // The backup directory's path is taken by a file: the backup cannot be written.
    std::fs::write(
        dir.path().join("test.db.flotilla-backups"),
        "not a directory",
    )?;
    let files = set();
    let files: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let mdir = migrations(&files)?;
    let agent = TestAgent::start("a1", vec![target("t1", Dialect::Sqlite, &url, &[])]).await?;
    let coord = TestCoordinator::start(mdir.path(), &[&agent], None).await?;
    let r = coord.rollout(spec("head")).await?;
    assert_eq!(state(&r), pb::RolloutState::Halted, "{r:?}");
    assert_eq!(targets_in(&r, pb::TargetState::Failed), ["t1"]);
    let msg = &r.targets[0].message;
    assert!(msg.contains("the backup before step 0002 failed"), "{msg}");
    assert!(msg.contains("flotilla-backups"), "{msg}");
    // Untouched: 0002 did not run, the column and its data are there, no history row.
    let st = agent.statuses(true).await?;
    let revs: Vec<&str> = st["t1"]
        .history
        .iter()
        .map(|h| h.revision.as_str())
        .collect();
    assert_eq!(revs, ["0001"]);
    assert!(!st["t1"].dirty);
    assert_eq!(
        count(Dialect::Sqlite, &url, "SELECT COUNT(legacy) FROM users").await?,
        ROWS as i64
    );
    Ok(())
}

#[tokio::test]
async fn a_backup_without_create_privilege_fails_the_target_before_its_step_on_postgres()
-> Result<()> {
    let pg = flotilla_testkit::Postgres::start().await?;
    let url = pg.fresh_database().await?;
    let files = set();
    let files: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let mdir = migrations(&files)?;
    // 0001 as the superuser.
    {
        let agent =
            TestAgent::start("a1", vec![target("t1", Dialect::Postgres, &url, &[])]).await?;
        let coord = TestCoordinator::start(mdir.path(), &[&agent], None).await?;
        let r = coord.rollout(spec("0001")).await?;
        assert_eq!(state(&r), pb::RolloutState::Succeeded, "{r:?}");
    }
    // A role that owns `users` (so it may drop the column) but may not create tables.
    let role = format!("app_{}", uuid::Uuid::new_v4().simple());
    let mut admin = sqlx::PgConnection::connect(&url).await?;
    for sql in [
        format!("CREATE ROLE {role} LOGIN"),
        format!("REVOKE CREATE ON SCHEMA public FROM PUBLIC, {role}"),
        format!("GRANT USAGE ON SCHEMA public TO {role}"),
        format!("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}"),
        format!("ALTER TABLE users OWNER TO {role}"),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&mut admin)
            .await?;
    }
    let app_url = url.replacen("postgres://postgres@", &format!("postgres://{role}@"), 1);
    let agent =
        TestAgent::start("a2", vec![target("t1", Dialect::Postgres, &app_url, &[])]).await?;
    let coord = TestCoordinator::start(mdir.path(), &[&agent], None).await?;
    let r = coord.rollout(spec("head")).await?;
    assert_eq!(state(&r), pb::RolloutState::Halted, "{r:?}");
    let msg = &r.targets[0].message;
    assert!(msg.contains("the backup before step 0002 failed"), "{msg}");
    assert!(msg.contains("permission denied"), "{msg}");
    let st = agent.statuses(true).await?;
    let revs: Vec<&str> = st["t1"]
        .history
        .iter()
        .map(|h| h.revision.as_str())
        .collect();
    assert_eq!(revs, ["0001"]);
    assert_eq!(
        count(Dialect::Postgres, &url, "SELECT COUNT(legacy) FROM users").await?,
        ROWS as i64
    );
    Ok(())
}

#[tokio::test]
async fn a_backup_without_create_privilege_fails_the_target_before_its_step_on_mariadb()
-> Result<()> {
    let my = flotilla_testkit::MariaDb::start().await?;
    let url = my.fresh_database().await?;
    let db = url.rsplit('/').next().context("database name")?.to_owned();
    let files = set();
    let files: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let mdir = migrations(&files)?;
    {
        let agent = TestAgent::start("a1", vec![target("t1", Dialect::Mysql, &url, &[])]).await?;
        let coord = TestCoordinator::start(mdir.path(), &[&agent], None).await?;
        let r = coord.rollout(spec("0001")).await?;
        assert_eq!(state(&r), pb::RolloutState::Succeeded, "{r:?}");
    }
    // May alter (drop the column) and write rows, may not create tables.
    let user = format!("app{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let mut admin = sqlx::MySqlConnection::connect(&url).await?;
    for sql in [
        format!("CREATE USER '{user}'@'%'"),
        format!("GRANT SELECT, INSERT, UPDATE, DELETE, ALTER ON `{db}`.* TO '{user}'@'%'"),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&mut admin)
            .await?;
    }
    let app_url = url.replacen("mysql://root@", &format!("mysql://{user}@"), 1);
    let agent = TestAgent::start("a2", vec![target("t1", Dialect::Mysql, &app_url, &[])]).await?;
    let coord = TestCoordinator::start(mdir.path(), &[&agent], None).await?;
    let r = coord.rollout(spec("head")).await?;
    assert_eq!(state(&r), pb::RolloutState::Halted, "{r:?}");
    let msg = &r.targets[0].message;
    assert!(msg.contains("the backup before step 0002 failed"), "{msg}");
    assert!(msg.contains("denied"), "{msg}");
    let st = agent.statuses(true).await?;
    let revs: Vec<&str> = st["t1"]
        .history
        .iter()
        .map(|h| h.revision.as_str())
        .collect();
    assert_eq!(revs, ["0001"]);
    assert!(!st["t1"].dirty);
    assert_eq!(
        count(Dialect::Mysql, &url, "SELECT COUNT(legacy) FROM users").await?,
        ROWS as i64
    );
    Ok(())
}
