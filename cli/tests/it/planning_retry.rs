//! Issue 29: a database that cannot be read while a rollout is planned (connections refused,
//! as while it restarts) is read again within the rollout's agent wait; once it answers, its
//! target is planned and migrated like the others instead of ending the rollout `blocked`.
//! One that stays away past the wait is blocked with a message that says how long it was
//! tried.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Result, ensure};
use flotilla_core::Dialect;
use flotilla_proto as pb;
use flotilla_testkit::{FaultProxy, Postgres, eventually_true};

use crate::harness::*;

/// A PostgreSQL target `pg` reached through a proxy that refuses connections, one SQLite
/// target `lite`, and a rollout to head started with `agent_wait`.
struct Planning {
    _pg: Postgres,
    proxy: FaultProxy,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
    agent: TestAgent,
    coord: TestCoordinator,
    id: String,
}

async fn start(agent_wait: Duration) -> Result<Planning> {
    let pg = Postgres::start().await?;
    let url = pg.fresh_database().await?;
    let proxy = FaultProxy::start(SocketAddr::from(([127, 0, 0, 1], pg.port()))).await?;
    proxy.set_refusing(true);
    let through_proxy = url.replace(&format!(":{}/", pg.port()), &format!(":{}/", proxy.port()));
    let (lite_dir, mut targets) = sqlite_targets("lite", 1)?;
    targets.push(target("pg", Dialect::Postgres, &through_proxy, &[]));
    let agent = TestAgent::start("agent", targets).await?;
    let migrations = two_revisions()?;
    let coord = TestCoordinator::start(migrations.path(), &[&agent], None).await?;
    let mut c = coord.client().await?;
    let mut spec = spec("head").to_proto();
    spec.agent_wait_ms = agent_wait.as_millis() as u64;
    spec.canary = 0;
    let r = c
        .start_rollout(pb::StartRolloutRequest { spec: Some(spec) })
        .await?
        .into_inner();
    Ok(Planning {
        _pg: pg,
        proxy,
        _dirs: (lite_dir, migrations),
        agent,
        coord,
        id: r.id,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_database_refusing_connections_while_planning_is_read_again() -> Result<()> {
    let p = start(Duration::from_secs(60)).await?;
    // The planner keeps reading it: more connection attempts than one read makes.
    let proxy = &p.proxy;
    eventually_true(
        "the planner reads the refusing database again",
        Duration::from_secs(30),
        || async move { Ok(proxy.connections_accepted() >= 4) },
    )
    .await?;
    let mut c = p.coord.client().await?;
    let mid = rollout_when(
        &c,
        &p.id,
        "the rollout says it is planning",
        Duration::from_secs(10),
        |r| r.message.starts_with("planning: "),
    )
    .await?;
    ensure!(
        targets_in(&mid, pb::TargetState::Blocked).is_empty(),
        "no target is blocked while it is read again: {mid:#?}"
    );
    ensure!(
        mid.message
            .starts_with("planning: 1 target(s) could not be read (pg: ")
            && mid.message.contains("for up to 1m"),
        "the rollout says what it waits for: {mid:#?}"
    );
    p.proxy.set_refusing(false);
    let end = follow_to_end(&mut c, &p.id).await?;
    assert_eq!(state(&end), pb::RolloutState::Succeeded, "{end:#?}");
    assert_eq!(
        targets_in(&end, pb::TargetState::Succeeded),
        ["lite01", "pg"],
        "{end:#?}"
    );
    let statuses = p.agent.statuses(false).await?;
    assert_eq!(applied(&statuses["pg"]), ["0001_a", "0002_b"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_database_away_past_the_agent_wait_is_blocked_saying_so() -> Result<()> {
    let p = start(Duration::from_secs(2)).await?;
    let mut c = p.coord.client().await?;
    let end = follow_to_end(&mut c, &p.id).await?;
    assert_eq!(state(&end), pb::RolloutState::Blocked, "{end:#?}");
    let pg = end
        .targets
        .iter()
        .find(|t| t.target_id == "pg")
        .expect("pg is in the rollout");
    assert_eq!(target_state(pg), pb::TargetState::Blocked, "{pg:?}");
    assert!(
        pg.message.contains("read again for ") && pg.message.contains("--agent-wait"),
        "{pg:?}"
    );
    assert_eq!(targets_in(&end, pb::TargetState::Succeeded), ["lite01"]);
    Ok(())
}
