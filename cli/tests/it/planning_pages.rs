//! A planning read of an agent with more targets than one Status asks about
//! (`PLANNING_PAGE`): the pages together report every target once, each as it is.

use anyhow::Result;
use flotilla_coordinator::engine::PLANNING_PAGE;
use flotilla_revision::Goal;

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_planning_read_beyond_one_page_reports_every_target_once() -> Result<()> {
    let set = two_revisions()?;
    let n = 2 * PLANNING_PAGE + 3;
    let (_dir, targets) = sqlite_targets("t", n)?;
    let agent = TestAgent::start("agent-pages", targets).await?;
    let ids: Vec<String> = (1..=n).map(|i| format!("t{i:02}")).collect();
    // Behind the coordinator's back: the first, a middle and the last target to head.
    let moved = [&ids[0], &ids[PLANNING_PAGE + 1], &ids[n - 1]];
    for id in moved {
        migrate_by_hand(&agent, set.path(), id, &Goal::Head, 1).await?;
    }

    let coord = TestCoordinator::start(set.path(), &[&agent], None).await?;
    // Planned towards base: nothing plans to steps from the sample, so every target is read.
    let snap = planning_snapshot(&coord, &Goal::Base).await?;
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
        let expected: Vec<String> = if moved.contains(&id) {
            vec!["0001_a".into(), "0002_b".into()]
        } else {
            vec![]
        };
        assert_eq!(applied(&e.status), expected, "{id}");
        assert!(e.status.error.is_empty(), "{id}: {}", e.status.error);
    }
    Ok(())
}
