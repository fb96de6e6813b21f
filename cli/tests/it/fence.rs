//! Fencing across lock backends (`flotilla fence takeover`): a fleet led by an embedded
//! coordinator moves to etcd only through the documented step; afterwards the old backend is
//! refused by every target, and so is an etcd cluster recreated from scratch until it takes
//! over in turn. Real etcd, SQLite targets behind a real agent.

use std::path::Path;

use anyhow::{Result, ensure};
use flotilla_coordinator::rollout::{Budget, RolloutSpec};
use flotilla_proto as pb;
use flotilla_testkit::Etcd;

use crate::harness::{TestAgent, TestCoordinator, migrations, revision, run_cli, sqlite_targets};

fn four_revisions() -> Result<tempfile::TempDir> {
    let files: Vec<(String, String)> = (1..=4)
        .map(|i| {
            let id = format!("000{i}_t{i}");
            let parent = (i > 1).then(|| format!("000{}_t{}", i - 1, i - 1));
            (
                format!("{id}.sql"),
                revision(
                    &id,
                    parent.as_deref(),
                    &format!("CREATE TABLE t{i} (id INTEGER);"),
                    &format!("DROP TABLE t{i};"),
                ),
            )
        })
        .collect();
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(n, t)| (n.as_str(), t.as_str()))
        .collect();
    migrations(&refs)
}

/// Every target attempted (no canary, no failure budget to halt on).
fn to(goal: &str) -> RolloutSpec {
    RolloutSpec {
        goal: goal.into(),
        canary: 0,
        failure_budget: Budget::Count(100),
        ..RolloutSpec::default()
    }
}

fn succeeded(r: &pb::Rollout) -> bool {
    r.state == pb::RolloutState::Succeeded as i32
}

/// Every target of `r` failed with the other-backend refusal.
fn refused_by_every_target(r: &pb::Rollout, what: &str) -> Result<()> {
    ensure!(!succeeded(r), "{what}: the rollout succeeded: {r:?}");
    ensure!(!r.targets.is_empty(), "{what}: no targets: {r:?}");
    for t in &r.targets {
        ensure!(
            t.state == pb::TargetState::Failed as i32
                && t.message.contains("STALE_FENCING_TOKEN")
                && t.message.contains("fencing epoch")
                && t.message.contains("flotilla fence takeover --yes"),
            "{what}: target {} was not refused with the other-backend message: {t:?}",
            t.target_id
        );
    }
    Ok(())
}

async fn takeover(coord: &TestCoordinator) -> Result<String> {
    let (code, stdout, stderr) = run_cli(
        &[
            "fence",
            "takeover",
            "--yes",
            "--coordinator",
            &coord.address,
        ],
        None::<&Path>,
    )
    .await?;
    ensure!(code == 0, "fence takeover exited {code}: {stdout}{stderr}");
    Ok(stdout)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fleet_changes_lock_backend_only_through_a_takeover() -> Result<()> {
    let set = four_revisions()?;
    let (_files, targets) = sqlite_targets("fence", 3)?;
    let agent = TestAgent::start("fence-agent", targets).await?;
    let state = tempfile::tempdir()?;

    // The embedded coordinator leads two rollouts, over several terms: its token (bumped at
    // every acquisition) grows past what a new etcd cluster's first leader gets (about 2).
    for goal in ["0001_t1", "0002_t2", "0002_t2", "0002_t2", "0002_t2"] {
        let embedded =
            TestCoordinator::start_embedded_in(set.path(), &[&agent], state.path()).await?;
        let r = embedded.rollout(to(goal)).await?;
        ensure!(succeeded(&r), "embedded rollout to {goal}: {r:?}");
    }

    // A new etcd cluster: its leader's tokens are below what the targets accepted.
    let etcd = Etcd::start().await?;
    let first = TestCoordinator::start(set.path(), &[&agent], Some(&etcd.endpoint())).await?;
    let etcd_token = first.engine.term().map(|t| t.token).unwrap_or_default();
    ensure!(
        etcd_token < 5,
        "the new etcd leader's token is {etcd_token}"
    );
    let r = first.rollout(to("0003_t3")).await?;
    ensure!(!succeeded(&r), "etcd before the takeover: {r:?}");
    for t in &r.targets {
        ensure!(
            t.message.contains("STALE_FENCING_TOKEN")
                && t.message.contains("flotilla fence takeover --yes"),
            "the refusal does not say what to do: {t:?}"
        );
    }
    // Without --yes nothing happens.
    let (code, _, stderr) = run_cli(
        &["fence", "takeover", "--coordinator", &first.address],
        None::<&Path>,
    )
    .await?;
    ensure!(
        code != 0 && stderr.contains("--yes"),
        "takeover without --yes: {code} {stderr}"
    );
    let out = takeover(&first).await?;
    ensure!(
        out.contains("fence taken over") && out.contains("fencing epoch 1"),
        "{out}"
    );
    let r = first.rollout(to("0003_t3")).await?;
    ensure!(succeeded(&r), "etcd after the takeover: {r:?}");
    // A second takeover has nothing to do.
    ensure!(takeover(&first).await?.contains("nothing to take over"));
    drop(first);

    // The old embedded coordinator, restarted on its state dir: refused by every target.
    let embedded = TestCoordinator::start_embedded_in(set.path(), &[&agent], state.path()).await?;
    let r = embedded.rollout(to("0004_t4")).await?;
    refused_by_every_target(&r, "the old embedded coordinator")?;
    drop(embedded);

    // The etcd cluster recreated from scratch: refused until it takes over in turn.
    drop(etcd);
    let etcd = Etcd::start().await?;
    let second = TestCoordinator::start(set.path(), &[&agent], Some(&etcd.endpoint())).await?;
    let r = second.rollout(to("0004_t4")).await?;
    refused_by_every_target(&r, "a recreated etcd cluster")?;
    let out = takeover(&second).await?;
    ensure!(out.contains("fencing epoch 2"), "{out}");
    let r = second.rollout(to("0004_t4")).await?;
    ensure!(
        succeeded(&r),
        "the recreated cluster after its takeover: {r:?}"
    );

    // Each revision ran once on every target.
    let mut c = agent.client().await?;
    let status = c
        .status(pb::StatusRequest {
            include_history: true,
            ..Default::default()
        })
        .await?
        .into_inner();
    for t in &status.targets {
        let ups: Vec<&str> = t
            .history
            .iter()
            .filter(|h| h.direction == pb::Direction::Up as i32)
            .map(|h| h.revision.as_str())
            .collect();
        ensure!(
            ups == ["0001_t1", "0002_t2", "0003_t3", "0004_t4"],
            "target {}: {ups:?}",
            t.target_id
        );
    }
    Ok(())
}
