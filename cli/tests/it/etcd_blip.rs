//! Issue 29: an etcd outage does not stop a rollout. Killed mid-rollout and started again
//! within the lease: the leader keeps its term, the target records that could not be written
//! are retried (no new step starts meanwhile), and the rollout completes by itself, each
//! revision applied once. Down for longer than the lease: the leader's term ends (it says
//! so to a control call), and once etcd is back it leads again and completes the rollout.

use std::time::Duration;

use anyhow::{Context, Result};
use flotilla_proto as pb;
use flotilla_testkit::Etcd;

use crate::harness::*;

/// A step that takes a noticeable time on SQLite (a recursive count), so the rollout is
/// still running when etcd goes away.
fn slow_up(table: &str) -> String {
    format!(
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 300000) \
         SELECT count(*) FROM c;\nCREATE TABLE {table} (id INTEGER PRIMARY KEY);"
    )
}

/// The fleet of both tests: eight SQLite targets, three slow revisions, one target at a time.
async fn start_slow_rollout(
    etcd: &Etcd,
) -> Result<(
    tempfile::TempDir,
    tempfile::TempDir,
    TestAgent,
    TestCoordinator,
    String,
)> {
    let files = [
        (
            "0001.sql",
            revision("0001", None, &slow_up("one"), "DROP TABLE one;"),
        ),
        (
            "0002.sql",
            revision("0002", Some("0001"), &slow_up("two"), "DROP TABLE two;"),
        ),
        (
            "0003.sql",
            revision("0003", Some("0002"), &slow_up("three"), "DROP TABLE three;"),
        ),
    ];
    let dir = migrations(
        &files
            .iter()
            .map(|(n, t)| (*n, t.as_str()))
            .collect::<Vec<_>>(),
    )?;
    let (tdir, targets) = sqlite_targets("t", 8)?;
    let agent = TestAgent::start("agent", targets).await?;
    let coord = TestCoordinator::start(dir.path(), &[&agent], Some(&etcd.endpoint())).await?;
    let mut c = coord.client().await?;
    let r = c
        .start_rollout(pb::StartRolloutRequest {
            spec: Some(
                flotilla_coordinator::rollout::RolloutSpec {
                    max_parallel: 1,
                    fingerprint_gate: false,
                    ..spec("head")
                }
                .to_proto(),
            ),
        })
        .await?
        .into_inner();
    Ok((dir, tdir, agent, coord, r.id))
}

async fn check_each_revision_once(agent: &TestAgent) -> Result<()> {
    for (id, st) in agent.statuses(true).await? {
        let applied: Vec<_> = st
            .history
            .iter()
            .filter(|h| h.status == "applied")
            .map(|h| h.revision.clone())
            .collect();
        assert_eq!(
            applied,
            ["0001", "0002", "0003"],
            "{id}: each revision once"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcd_down_past_the_lease_the_leader_comes_back_and_completes() -> Result<()> {
    let etcd = Etcd::start().await?;
    let (_dir, _tdir, agent, coord, id) = start_slow_rollout(&etcd).await?;
    let mut c = coord.client().await?;
    let first = coord.engine.term().context("no term")?.token;
    rollout_when(&c, &id, "a target done", Duration::from_secs(30), |r| {
        !targets_in(r, pb::TargetState::Succeeded).is_empty()
    })
    .await?;
    etcd.stop();
    // The lease (5 s in the harness) runs out: the term ends.
    let engine = coord.engine.clone();
    flotilla_testkit::eventually_true("the term ended", Duration::from_secs(20), || {
        let engine = engine.clone();
        async move { Ok(engine.term().is_none()) }
    })
    .await?;
    let err = c
        .resume_rollout(pb::RolloutControlRequest { id: id.clone() })
        .await
        .expect_err("a coordinator without the lock cannot resume");
    assert!(
        err.message().contains("not the leader"),
        "resume must say this coordinator does not lead: {err:?}"
    );
    etcd.restart().await?;
    let back = std::time::Instant::now();
    flotilla_testkit::eventually_true("leading again", Duration::from_secs(30), || {
        let engine = engine.clone();
        async move { Ok(engine.term().is_some()) }
    })
    .await?;
    eprintln!(
        "leading again {} ms after etcd answered",
        back.elapsed().as_millis()
    );
    let end = follow_to_end(&mut c, &id).await?;
    assert_eq!(state(&end), pb::RolloutState::Succeeded, "{end:#?}");
    // A target whose Migrate ended while the term was ending may be found at the goal by
    // the new term (re-planned from the agent's report: skipped, not applied again).
    let done = targets_in(&end, pb::TargetState::Succeeded).len()
        + targets_in(&end, pb::TargetState::Skipped).len();
    assert_eq!(done, 8, "{end:#?}");
    let second = coord
        .engine
        .term()
        .context("no term after etcd came back")?
        .token;
    assert!(second > first, "a new term: {first} then {second}");
    check_each_revision_once(&agent).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_etcd_restart_within_the_lease_does_not_stop_the_rollout() -> Result<()> {
    let etcd = Etcd::start().await?;
    let (_dir, _tdir, agent, coord, id) = start_slow_rollout(&etcd).await?;
    let token = coord.engine.term().context("no term")?.token;
    let mut c = coord.client().await?;
    let mid = rollout_when(&c, &id, "a target done", Duration::from_secs(30), |r| {
        !targets_in(r, pb::TargetState::Succeeded).is_empty()
    })
    .await?;

    // etcd dies mid-rollout (SIGKILL) and comes back on its data dir, within the lease.
    etcd.stop();
    let pending = targets_in(&mid, pb::TargetState::Pending).len();
    assert!(
        pending > 0,
        "the rollout ended before etcd went away: {mid:#?}"
    );
    // A write of the rollout's records failed (it is being retried) ...
    let engine = coord.engine.clone();
    flotilla_testkit::eventually_true(
        "a failed write of rollout records",
        Duration::from_secs(10),
        || {
            let engine = engine.clone();
            async move { Ok(!engine.records_writable()) }
        },
    )
    .await?;
    // ... and the controls still answer: pause reaches the rollout, resume undoes it.
    c.pause_rollout(pb::RolloutControlRequest { id: id.clone() })
        .await
        .context("pause while etcd is down")?;
    c.resume_rollout(pb::RolloutControlRequest { id: id.clone() })
        .await
        .context("resume while etcd is down")?;
    etcd.restart().await?;

    let end = follow_to_end(&mut c, &id).await?;
    assert_eq!(state(&end), pb::RolloutState::Succeeded, "{end:#?}");
    assert_eq!(
        targets_in(&end, pb::TargetState::Succeeded).len(),
        8,
        "{end:#?}"
    );
    assert_eq!(
        coord.engine.term().map(|t| t.token),
        Some(token),
        "the leader kept its term"
    );
    check_each_revision_once(&agent).await?;
    // The records are in the store, not only in the leader's memory.
    let stored = coord
        .engine
        .get(&id)
        .await
        .map(|(rec, _)| rec.state)
        .context("read the rollout back")?;
    assert_eq!(
        stored,
        flotilla_coordinator::rollout::RolloutState::Succeeded
    );
    Ok(())
}
