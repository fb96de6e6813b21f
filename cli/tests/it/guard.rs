//! `-- migrate:check` through a rollout: the coordinator sends the revision's check and verify
//! with the step (covered by its checksum); the target whose data fails the check ends
//! `blocked` with the check's text and the offending row, untouched; the others apply.

use anyhow::{Context, Result, ensure};
use flotilla_coordinator::rollout::Budget;
use flotilla_proto as pb;
use sqlx::{Connection, SqliteConnection};

use crate::harness::*;

const REVISION: &str = "-- revision: 0001_login
-- description: one login per email
-- migrate:check
SELECT email, count(*) AS n FROM users GROUP BY email HAVING count(*) > 1;
-- migrate:up
ALTER TABLE users ADD COLUMN login VARCHAR(100);
UPDATE users SET login = email;
-- migrate:verify
SELECT count(*) = 0 FROM users WHERE login IS NULL;
-- migrate:down
ALTER TABLE users DROP COLUMN login;
";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_check_blocks_its_target_untouched_naming_the_row() -> Result<()> {
    let dir = migrations(&[("0001_login.sql", REVISION)])?;
    let (tmp, targets) = sqlite_targets("d", 2)?;
    for (id, rows) in [
        ("d01", "(1, 'ada@example.com'), (2, 'grace@example.com')"),
        ("d02", "(1, 'ada@example.com'), (2, 'ada@example.com')"),
    ] {
        let url = format!(
            "sqlite://{}?mode=rwc",
            tmp.path().join(format!("{id}.db")).display()
        );
        let mut c = SqliteConnection::connect(&url).await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "CREATE TABLE users (id INT PRIMARY KEY, email VARCHAR(100)); \
             INSERT INTO users (id, email) VALUES {rows};"
        )))
        .execute(&mut c)
        .await?;
        c.close().await?;
    }
    let agent = TestAgent::start("a1", targets).await?;
    let coord = TestCoordinator::start(dir.path(), &[&agent], None).await?;
    let mut s = spec("head");
    s.canary = 0;
    s.failure_budget = Budget::Count(1);
    let end = coord.rollout(s).await?;
    assert_eq!(
        targets_in(&end, pb::TargetState::Succeeded),
        ["d01"],
        "{end:#?}"
    );
    assert_eq!(
        targets_in(&end, pb::TargetState::Blocked),
        ["d02"],
        "{end:#?}"
    );
    let d02 = end
        .targets
        .iter()
        .find(|t| t.target_id == "d02")
        .context("d02")?;
    for part in [
        "the check of 0001_login failed",
        "GROUP BY email HAVING count(*) > 1",
        "returned a row (email=ada@example.com, n=2)",
    ] {
        ensure!(
            d02.message.contains(part),
            "{part:?} not in {:?}",
            d02.message
        );
    }
    let statuses = agent.statuses(true).await?;
    let blocked = statuses.get("d02").context("no status of d02")?;
    assert!(
        applied(blocked).is_empty() && !blocked.dirty,
        "the blocked target was touched: {blocked:?}"
    );
    let done = statuses.get("d01").context("no status of d01")?;
    assert_eq!(applied(done), ["0001_login"]);
    Ok(())
}
