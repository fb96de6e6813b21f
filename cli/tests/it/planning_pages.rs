//! A planning read of an agent with more targets than one Status asks about
//! (`PLANNING_PAGE`): the pages together report every target once, each as it is.

use anyhow::Result;
use flotilla_coordinator::engine::PLANNING_PAGE;
use flotilla_coordinator::rollout::RolloutSpec;
use flotilla_proto as pb;
use flotilla_revision::Goal;

use crate::harness::*;

/// Three planning pages of SQLite targets at base but three, one on each page (the first, a
/// middle and the last), moved to head behind the coordinator's back; and the coordinator.
struct Paged {
    _set: tempfile::TempDir,
    _files: tempfile::TempDir,
    _agent: TestAgent,
    coord: TestCoordinator,
    ids: Vec<String>,
    moved: Vec<String>,
}

async fn paged(agent_id: &str) -> Result<Paged> {
    let set = two_revisions()?;
    let n = 2 * PLANNING_PAGE + 3;
    let (files, targets) = sqlite_targets("t", n)?;
    let agent = TestAgent::start(agent_id, targets).await?;
    let ids: Vec<String> = (1..=n).map(|i| format!("t{i:02}")).collect();
    let moved = vec![
        ids[0].clone(),
        ids[PLANNING_PAGE + 1].clone(),
        ids[n - 1].clone(),
    ];
    for id in &moved {
        migrate_by_hand(&agent, set.path(), id, &Goal::Head, 1).await?;
    }
    let coord = TestCoordinator::start(set.path(), &[&agent], None).await?;
    Ok(Paged {
        _set: set,
        _files: files,
        _agent: agent,
        coord,
        ids,
        moved,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_planning_read_beyond_one_page_reports_every_target_once() -> Result<()> {
    // Bound whole: the agent and the files live as long as the test.
    let fleet = paged("agent-pages").await?;
    let (coord, ids, moved) = (&fleet.coord, &fleet.ids, &fleet.moved);
    // Planned towards base: nothing plans to steps from the sample, so every target is read.
    let snap = planning_snapshot(coord, &Goal::Base).await?;
    let mut read: Vec<&str> = snap
        .targets
        .iter()
        .map(|e| e.status.target_id.as_str())
        .collect();
    read.sort_unstable();
    let mut want: Vec<&str> = ids.iter().map(String::as_str).collect();
    want.sort_unstable();
    assert_eq!(read, want, "every target once");
    for e in &snap.targets {
        let id = &e.status.target_id;
        let expected: Vec<String> = if moved.contains(id) {
            vec!["0001_a".into(), "0002_b".into()]
        } else {
            vec![]
        };
        assert_eq!(applied(&e.status), expected, "{id}");
        assert!(e.status.error.is_empty(), "{id}: {}", e.status.error);
    }
    Ok(())
}

/// A rollout over several pages whose targets are mostly at the goal: the ones at the goal
/// are skipped, one target on each page runs, and every target ends with exactly one
/// record, in the store as the watch showed it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn targets_at_the_goal_on_every_page_are_recorded_once_and_the_rest_run() -> Result<()> {
    let fleet = paged("agent-skips").await?;
    let (coord, ids, moved) = (&fleet.coord, &fleet.ids, &fleet.moved);
    let n = ids.len();

    let r = coord
        .rollout(RolloutSpec {
            allow_downgrade: true,
            ..spec("base")
        })
        .await?;
    assert_eq!(state(&r), pb::RolloutState::Succeeded, "{}", r.message);
    let mut ran = targets_in(&r, pb::TargetState::Succeeded);
    ran.sort_unstable();
    let mut want = moved.clone();
    want.sort_unstable();
    assert_eq!(ran, want, "only the targets above base ran");
    assert_eq!(targets_in(&r, pb::TargetState::Skipped).len(), n - 3);
    assert!(
        r.message
            .contains(&format!("{} already at the goal", n - 3)),
        "{}",
        r.message
    );

    // The store holds one record per target, each as the watch showed it.
    let (_, stored) = coord.engine.get(&r.id).await?;
    assert_eq!(stored.len(), n, "one record per target");
    let shown: std::collections::HashMap<&str, i32> = r
        .targets
        .iter()
        .map(|t| (t.target_id.as_str(), t.state))
        .collect();
    for t in &stored {
        assert_eq!(
            Some(&(t.state.to_proto() as i32)),
            shown.get(t.target_id.as_str()),
            "{}",
            t.target_id
        );
        if t.state == flotilla_coordinator::rollout::TargetState::Skipped {
            assert_eq!(t.message, "already at the goal", "{}", t.target_id);
        }
    }
    Ok(())
}
