//! Big revisions through the whole system (issue 30): a plan larger than the agent's gRPC
//! message limit is sent in several Migrate requests and every seed row lands, on PostgreSQL
//! (a non-transactional seed, split statement by statement by the agent) and SQLite; a request
//! the agent's limit refuses fails the target with a message naming the limit, nothing applied.
//! The limits are set small here so the seeds stay small; the defaults take 64 MiB sections.

use std::fmt::Write as _;

use anyhow::{Context, Result, ensure};
use flotilla_core::Dialect;
use flotilla_proto as pb;
use flotilla_testkit::Postgres;
use sqlx::Connection;

use crate::harness::*;

/// The agent's gRPC message limit in these tests.
const AGENT_LIMIT: usize = 256 * 1024;
/// Rows per seed revision: each seed is about 150 KB, so two do not fit one request.
const ROWS: usize = 2_000;

/// A seed revision of `ROWS` rows numbered from `first`; `transactional: false` when asked.
fn seed(id: &str, parent: &str, first: usize, transactional: bool) -> String {
    let mut s = format!("-- revision: {id}\n-- revises: {parent}\n");
    if !transactional {
        s.push_str("-- transactional: false\n");
    }
    s.push_str("-- migrate:up\n");
    for i in first..first + ROWS {
        writeln!(
            s,
            "INSERT INTO seed (id, note) VALUES ({i}, 'row {i}; a note that is long enough to weigh something');"
        )
        .expect("write to a string");
    }
    writeln!(
        s,
        "-- migrate:down\nDELETE FROM seed WHERE id >= {first} AND id < {};",
        first + ROWS
    )
    .expect("write to a string");
    s
}

fn seed_set() -> Result<tempfile::TempDir> {
    let files = [
        (
            "0001_table.sql".to_owned(),
            revision(
                "0001_table",
                None,
                "CREATE TABLE seed (id int PRIMARY KEY, note text NOT NULL);",
                "DROP TABLE seed;",
            ),
        ),
        (
            "0002_seed.sql".to_owned(),
            seed("0002_seed", "0001_table", 0, true),
        ),
        (
            "0003_seed.sql".to_owned(),
            seed("0003_seed", "0002_seed", ROWS, false),
        ),
        (
            "0004_seed.sql".to_owned(),
            seed("0004_seed", "0003_seed", 2 * ROWS, true),
        ),
    ];
    let total: usize = files.iter().map(|(_, t)| t.len()).sum();
    ensure!(
        total > AGENT_LIMIT,
        "the set ({total} bytes) must not fit one request"
    );
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(n, t)| (n.as_str(), t.as_str()))
        .collect();
    migrations(&refs)
}

async fn rows(dialect: Dialect, url: &str) -> Result<(i64, i64)> {
    let q = "SELECT count(*), CAST(coalesce(sum(id), 0) AS BIGINT) FROM seed";
    Ok(match dialect {
        Dialect::Postgres => {
            let mut c = sqlx::PgConnection::connect(url).await?;
            sqlx::query_as(q).fetch_one(&mut c).await?
        }
        _ => {
            let mut c = sqlx::SqliteConnection::connect(url).await?;
            sqlx::query_as(q).fetch_one(&mut c).await?
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_plan_larger_than_one_request_is_sent_in_several() -> Result<()> {
    let pg = Postgres::start().await?;
    let pg_url = pg.fresh_database().await?;
    let (_lite, mut targets) = sqlite_targets("lite_", 1)?;
    let lite_url = targets[0].url.expose().to_owned();
    targets.push(target("pg_1", Dialect::Postgres, &pg_url, &[]));
    let agent = TestAgent::start_tweaked("agent-big", targets, |c| {
        c.server.max_message_bytes = AGENT_LIMIT;
    })
    .await?;
    let set = seed_set()?;
    let coord = TestCoordinator::start_tweaked(set.path(), &[&agent], |e| {
        e.migrate_request_bytes = AGENT_LIMIT / 2;
    })
    .await?;

    let r = coord.rollout(spec("head")).await?;
    let failed: Vec<&str> = r
        .targets
        .iter()
        .map(|t| t.message.as_str())
        .filter(|m| !m.is_empty())
        .collect();
    assert_eq!(state(&r), pb::RolloutState::Succeeded, "{failed:?}");
    assert_eq!(targets_in(&r, pb::TargetState::Succeeded).len(), 2);
    for t in &r.targets {
        assert_eq!((t.steps_done, t.steps_total), (4, 4), "{}", t.target_id);
    }
    let statuses = agent.statuses(false).await?;
    for id in ["lite_01", "pg_1"] {
        let s = statuses.get(id).context("a status per target")?;
        assert_eq!(
            applied(s),
            ["0001_table", "0002_seed", "0003_seed", "0004_seed"],
            "{id}"
        );
    }
    // Every row of every seed, none twice: n rows numbered 0..n.
    let n = (3 * ROWS) as i64;
    assert_eq!(
        rows(Dialect::Sqlite, &lite_url).await?,
        (n, n * (n - 1) / 2)
    );
    assert_eq!(
        rows(Dialect::Postgres, &pg_url).await?,
        (n, n * (n - 1) / 2)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_over_the_agents_limit_fails_naming_it() -> Result<()> {
    let (_lite, targets) = sqlite_targets("lite_", 1)?;
    let lite_url = targets[0].url.expose().to_owned();
    let agent = TestAgent::start_tweaked("agent-small", targets, |c| {
        c.server.max_message_bytes = AGENT_LIMIT;
    })
    .await?;
    let set = seed_set()?;
    // The coordinator's default packs up to 64 MiB per request: more than this agent takes.
    let coord = TestCoordinator::start_tweaked(set.path(), &[&agent], |_| {}).await?;

    let r = coord.rollout(spec("head")).await?;
    assert!(
        matches!(
            state(&r),
            pb::RolloutState::Halted | pb::RolloutState::Failed
        ),
        "{:?}",
        state(&r)
    );
    let t = r.targets.first().context("one target")?;
    assert_eq!(target_state(t), pb::TargetState::Failed);
    assert!(
        t.message
            .contains("refused the Migrate request as too large")
            && t.message
                .contains(&format!("the limit is: {AGENT_LIMIT} bytes"))
            && t.message.contains("server.max_message_bytes"),
        "{}",
        t.message
    );
    let status = agent.statuses(false).await?;
    assert!(applied(status.get("lite_01").context("a status")?).is_empty());
    // Nothing ran: not even the table exists.
    assert!(rows(Dialect::Sqlite, &lite_url).await.is_err());
    Ok(())
}
