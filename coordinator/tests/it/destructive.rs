//! The destructive-step refusal: a rollout (and a plan) of a revision that drops a column is
//! refused before anything runs unless the file allows it (`-- lint: allow destructive`) or
//! the spec says `allow_destructive`; the refusal names the revision, file:line and rule.

use anyhow::Result;
use flotilla_proto as pb;

use crate::harness::{
    TestAgent, TestCoordinator, applied, migrations, run_cli, spec, sqlite_targets, state,
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
        .list_rollouts(pb::ListRolloutsRequest { limit: 0 })
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
        .list_rollouts(pb::ListRolloutsRequest { limit: 0 })
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
