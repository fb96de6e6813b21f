//! The destructive-step refusal: a rollout (and a plan) of a revision that drops a column is
//! refused before anything runs unless the file allows it (`-- lint: allow destructive`) or
//! the spec says `allow_destructive`; the refusal names the revision, file:line and rule.

use anyhow::Result;
use flotilla_proto as pb;

use crate::harness::{
    TestAgent, TestCoordinator, applied, follow_to_end, migrations, rollout_when, run_cli, spec,
    sqlite_targets, state, target_state, targets_in,
};

const CREATE: &str = "-- revision: 0001\n-- migrate:up\nCREATE TABLE users (id integer PRIMARY KEY, legacy text);\nINSERT INTO users (id, legacy) VALUES (1, 'a'), (2, 'b');\n-- migrate:down\nDROP TABLE users;\n";

fn drop_column(allow: bool) -> String {
    format!(
        "-- revision: 0002\n-- revises: 0001\n{}-- migrate:up\nALTER TABLE users DROP COLUMN legacy;\n",
        if allow {
            "-- lint: allow destructive\n"
        } else {
            ""
        }
    )
}

async fn statuses(agent: &TestAgent) -> Result<Vec<Vec<String>>> {
    Ok(agent.statuses(false).await?.values().map(applied).collect())
}

#[tokio::test]
async fn destructive_rollout_is_refused_before_anything_runs_unless_allowed() -> Result<()> {
    let dir = migrations(&[("0001.sql", CREATE), ("0002.sql", &drop_column(false))])?;
    let (_tmp, targets) = sqlite_targets("d", 2)?;
    let agent = TestAgent::start("a1", targets).await?;
    let coord = TestCoordinator::start(dir.path(), &[&agent], None).await?;
    let mut c = coord.client().await?;

    // Up to 0001: nothing destructive in that plan.
    let r = coord.rollout(spec("0001")).await?;
    assert_eq!(state(&r), pb::RolloutState::Succeeded, "{r:?}");
    let before = c
        .list_rollouts(pb::ListRolloutsRequest {
            project: Default::default(),
            limit: 0,
        })
        .await?
        .into_inner()
        .rollouts
        .len();

    // Head: refused, naming the revision, file:line and rule; no rollout record, no step.
    let err = c
        .start_rollout(pb::StartRolloutRequest {
            spec: Some(spec("head").to_proto()),
        })
        .await
        .expect_err("a destructive rollout is refused");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    let msg = err.message();
    assert!(msg.starts_with("DESTRUCTIVE: "), "{msg}");
    let file = dir.path().join("0002.sql").display().to_string();
    assert!(msg.contains(&format!("revision 0002 (sqlite, 2 targets) {file}:4: destructive: dropping column legacy of users")), "{msg}");
    assert!(msg.contains("--allow-destructive"), "{msg}");
    let after = c
        .list_rollouts(pb::ListRolloutsRequest {
            project: Default::default(),
            limit: 0,
        })
        .await?
        .into_inner()
        .rollouts
        .len();
    assert_eq!(after, before, "no rollout record was written");
    assert_eq!(statuses(&agent).await?, vec![vec!["0001".to_owned()]; 2]);

    // Plan refuses the same way; with allow_destructive it shows the step.
    let err = c
        .plan(pb::PlanRequest {
            spec: Some(spec("head").to_proto()),
        })
        .await
        .expect_err("plan refuses too");
    assert!(err.message().starts_with("DESTRUCTIVE: "), "{err:?}");
    let mut allowed = spec("head");
    allowed.allow_destructive = true;
    let plan = c
        .plan(pb::PlanRequest {
            spec: Some(allowed.to_proto()),
        })
        .await?
        .into_inner();
    assert!(
        plan.targets
            .iter()
            .all(|t| t.steps.len() == 1 && t.steps[0].revision == "0002"),
        "{plan:?}"
    );

    // The CLI says so and exits non-zero, and runs nothing.
    let (code, out, errtext) = run_cli(
        &[
            "rollout",
            "start",
            "--coordinator",
            &coord.address,
            "--to",
            "head",
            "--wait",
        ],
        None,
    )
    .await?;
    assert_ne!(code, 0, "{out}{errtext}");
    assert!(
        errtext.contains("refusing to run destructive steps of 0002"),
        "{errtext}"
    );
    assert!(
        errtext.contains(&format!("{file}:4: destructive")),
        "{errtext}"
    );
    assert_eq!(statuses(&agent).await?, vec![vec!["0001".to_owned()]; 2]);

    // With the flag it proceeds.
    let r = coord.rollout(allowed).await?;
    assert_eq!(state(&r), pb::RolloutState::Succeeded, "{r:?}");
    assert_eq!(
        statuses(&agent).await?,
        vec![vec!["0001".to_owned(), "0002".to_owned()]; 2]
    );
    Ok(())
}

#[tokio::test]
async fn destructive_revision_with_the_allow_line_proceeds() -> Result<()> {
    let dir = migrations(&[("0001.sql", CREATE), ("0002.sql", &drop_column(true))])?;
    let (_tmp, targets) = sqlite_targets("d", 1)?;
    let agent = TestAgent::start("a1", targets).await?;
    let coord = TestCoordinator::start(dir.path(), &[&agent], None).await?;
    let r = coord.rollout(spec("head")).await?;
    assert_eq!(state(&r), pb::RolloutState::Succeeded, "{r:?}");
    assert_eq!(
        statuses(&agent).await?,
        vec![vec!["0001".to_owned(), "0002".to_owned()]]
    );
    Ok(())
}

/// StartRollout checks the plan it sees; a target that changes after that check (here
/// reverted by another tool while its Migrate waits for the migration lock) is re-planned
/// from its agent's report, and a re-plan that would run a not-allowed destructive step
/// leaves the target blocked and untouched instead of running a step nobody reviewed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replan_that_would_run_a_destructive_step_blocks_the_target() -> Result<()> {
    use flotilla_agent::driver::Driver;
    use sqlx::Connection;
    use std::time::Duration;

    let drop_with_down = format!(
        "{}-- migrate:down\nALTER TABLE users ADD COLUMN legacy text;\n",
        drop_column(false)
    );
    let add = "-- revision: 0003\n-- revises: 0002\n-- migrate:up\nALTER TABLE users ADD COLUMN nickname text;\n-- migrate:down\nALTER TABLE users DROP COLUMN nickname;\n";
    let dir = migrations(&[
        ("0001.sql", CREATE),
        ("0002.sql", &drop_with_down),
        ("0003.sql", add),
    ])?;
    let (tmp, targets) = sqlite_targets("d", 2)?;
    let agent = TestAgent::start("a1", targets).await?;
    let coord = TestCoordinator::start(dir.path(), &[&agent], None).await?;
    let mut c = coord.client().await?;
    // Both at 0002, the drop reviewed for that rollout.
    let mut reviewed = spec("0002");
    reviewed.allow_destructive = true;
    let r = coord.rollout(reviewed).await?;
    assert_eq!(state(&r), pb::RolloutState::Succeeded, "{r:?}");

    // d02's migration lock is held: its Migrate will wait for it.
    let path = tmp.path().join("d02.db");
    let url = format!("sqlite://{}", path.display());
    let driver = flotilla_agent::driver::sqlite::SqliteDriver::new(flotilla_core::Secret::new(
        url.as_str(),
    ))?;
    let mut holder = driver.connect(&Default::default()).await?;
    anyhow::ensure!(holder.try_lock().await?, "the lock was not free");

    // Head is 0003 only for both: nothing destructive, the rollout starts (d01 the canary).
    let started = c
        .start_rollout(pb::StartRolloutRequest {
            spec: Some(spec("head").to_proto()),
        })
        .await?
        .into_inner();
    rollout_when(
        &c,
        &started.id,
        "d02 running",
        Duration::from_secs(30),
        |r| {
            r.targets
                .iter()
                .any(|t| t.target_id == "d02" && target_state(t) == pb::TargetState::Running)
        },
    )
    .await?;
    // Another tool reverts 0002 on d02 (the column is back, its history row gone).
    {
        let mut conn = sqlx::SqliteConnection::connect(&url).await?;
        sqlx::raw_sql(
            "ALTER TABLE users ADD COLUMN legacy text; \
             DELETE FROM flotilla_history WHERE revision = '0002';",
        )
        .execute(&mut conn)
        .await?;
        conn.close().await?;
    }
    holder.unlock().await?;
    holder.close().await;

    let end = follow_to_end(&mut c, &started.id).await?;
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
        .expect("d02");
    assert!(
        d02.message.contains("destructive steps of 0002") && d02.message.contains("left untouched"),
        "{}",
        d02.message
    );
    // d02 kept its column and ran nothing: 0001 only, the revert as the other tool left it.
    let st = coord.engine.target_status("d02", false).await?.status;
    assert_eq!(applied(&st), ["0001"]);
    let mut conn = sqlx::SqliteConnection::connect(&url).await?;
    let legacy: i64 = sqlx::query_scalar("SELECT count(legacy) FROM users")
        .fetch_one(&mut conn)
        .await?;
    assert_eq!(
        legacy, 0,
        "the legacy column is still there (NULLs after the revert)"
    );
    let st = coord.engine.target_status("d01", false).await?.status;
    assert_eq!(applied(&st), ["0001", "0002", "0003"]);
    Ok(())
}
