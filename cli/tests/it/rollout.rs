//! Rollout engine against real agents and databases: a mixed fleet to head over etcd,
//! canary halt, failure budget, pause/resume/abort, blocked targets, downgrade.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::Result;
use flotilla_coordinator::rollout::{Budget, RolloutSpec, WaveSize};
use flotilla_core::Dialect;
use flotilla_proto as pb;
use flotilla_revision::Graph;
use flotilla_testkit::{Etcd, MariaDb, Postgres};

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mixed_fleet_rolls_to_head_over_etcd() -> Result<()> {
    let (pg, my, etcd) = tokio::try_join!(Postgres::start(), MariaDb::start(), Etcd::start())?;
    let pg_targets = vec![
        target(
            "pg_tenant_a",
            Dialect::Postgres,
            &pg.fresh_database().await?,
            &[("tier", "gold")],
        ),
        target(
            "pg_tenant_b",
            Dialect::Postgres,
            &pg.fresh_database().await?,
            &[("tier", "silver")],
        ),
    ];
    let my_targets = vec![
        target(
            "my_tenant_a",
            Dialect::Mysql,
            &my.fresh_database().await?,
            &[("tier", "gold")],
        ),
        target(
            "my_tenant_b",
            Dialect::Mysql,
            &my.fresh_database().await?,
            &[("tier", "silver")],
        ),
    ];
    let (_lite_dir, lite_targets) = sqlite_targets("lite_tenant_", 2)?;
    let a1 = TestAgent::start("agent-pg", pg_targets).await?;
    let a2 = TestAgent::start("agent-mariadb", my_targets).await?;
    let a3 = TestAgent::start("agent-sqlite", lite_targets).await?;
    let coord =
        TestCoordinator::start(&repo_migrations(), &[&a1, &a2, &a3], Some(&etcd.endpoint()))
            .await?;

    let r = coord
        .rollout(RolloutSpec {
            waves: vec![WaveSize::Percent(50)],
            ..spec("head")
        })
        .await?;
    assert_eq!(state(&r), pb::RolloutState::Succeeded, "{r:#?}");
    assert_eq!(targets_in(&r, pb::TargetState::Succeeded).len(), 6);

    let graph = Graph::load_dir(&repo_migrations())?;
    let all: BTreeSet<String> = graph.revisions().map(|r| r.id.clone()).collect();
    let mut checksums_by_dialect: BTreeMap<i32, BTreeMap<String, String>> = BTreeMap::new();
    for agent in [&a1, &a2, &a3] {
        for (id, st) in agent.statuses(true).await? {
            let applied: BTreeSet<String> = applied(&st).into_iter().collect();
            assert_eq!(applied, all, "{id} is not at head");
            // every revision applied exactly once
            for rev in &all {
                let n = st
                    .history
                    .iter()
                    .filter(|h| &h.revision == rev && h.status == "applied")
                    .count();
                assert_eq!(n, 1, "{id}: {rev} applied {n} times");
            }
            let sums: BTreeMap<String, String> = st
                .applied
                .iter()
                .map(|a| (a.revision.clone(), a.checksum.clone()))
                .collect();
            match checksums_by_dialect.get(&st.dialect) {
                Some(other) => assert_eq!(
                    &sums, other,
                    "{id}: checksums differ from its dialect's others"
                ),
                None => {
                    checksums_by_dialect.insert(st.dialect, sums);
                }
            }
            assert!(
                st.applied
                    .iter()
                    .all(|a| a.fencing_token == r.fencing_token),
                "{id}: token"
            );
        }
    }
    assert_eq!(checksums_by_dialect.len(), 3);
    // A second rollout finds the whole fleet at the goal from one Status per agent.
    let again = coord.rollout(spec("head")).await?;
    assert_eq!(state(&again), pb::RolloutState::Succeeded);
    assert_eq!(
        targets_in(&again, pb::TargetState::Skipped).len(),
        6,
        "{again:#?}"
    );
    Ok(())
}

fn failing_set() -> Result<tempfile::TempDir> {
    migrations(&[
        (
            "0001_a.sql",
            &revision(
                "0001_a",
                None,
                "CREATE TABLE a (id INTEGER PRIMARY KEY);",
                "DROP TABLE a;",
            ),
        ),
        (
            "0002_b.sql",
            &revision(
                "0002_b",
                Some("0001_a"),
                "INSERT INTO missing_table VALUES (1);",
                "SELECT 1;",
            ),
        ),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_canary_halts_before_any_other_target_is_touched() -> Result<()> {
    let dir = failing_set()?;
    let (_d, targets) = sqlite_targets("t", 6)?;
    let agent = TestAgent::start("agent", targets).await?;
    let coord = TestCoordinator::start(dir.path(), &[&agent], None).await?;
    let r = coord
        .rollout(RolloutSpec {
            failure_budget: Budget::Count(10),
            ..spec("head")
        })
        .await?;
    assert_eq!(state(&r), pb::RolloutState::Halted, "{r:#?}");
    assert!(r.message.contains("canary failed"), "{}", r.message);
    assert_eq!(targets_in(&r, pb::TargetState::Failed), ["t01"]);
    let failed = r.targets.iter().find(|t| t.target_id == "t01").unwrap();
    assert!(
        failed.message.contains("0002_b") && failed.message.contains("missing_table"),
        "{}",
        failed.message
    );
    // Both steps ran in one transaction (the default): 0002_b's failure rolled back
    // 0001_a with it, and the message says so.
    assert!(
        failed.message.contains("rolled back with it") && failed.message.contains("0001_a"),
        "{}",
        failed.message
    );
    let statuses = agent.statuses(true).await?;
    assert!(
        applied(&statuses["t01"]).is_empty(),
        "{:?}",
        statuses["t01"]
    );
    for (id, st) in statuses.iter().filter(|(id, _)| id.as_str() != "t01") {
        assert!(st.history.is_empty(), "{id} was touched: {:?}", st.history);
    }
    assert_eq!(targets_in(&r, pb::TargetState::Pending).len(), 5);
    Ok(())
}

/// With a transaction per step, the canary keeps what committed before the failing step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_per_step_keeps_the_steps_before_a_failure() -> Result<()> {
    let dir = failing_set()?;
    let (_d, targets) = sqlite_targets("t", 2)?;
    let agent = TestAgent::start("agent", targets).await?;
    let coord = TestCoordinator::start(dir.path(), &[&agent], None).await?;
    let r = coord
        .rollout(RolloutSpec {
            transaction_per_step: true,
            ..spec("head")
        })
        .await?;
    assert_eq!(state(&r), pb::RolloutState::Halted, "{r:#?}");
    let statuses = agent.statuses(true).await?;
    // The canary keeps 0001_a (committed) and nothing of 0002_b (rolled back).
    assert_eq!(applied(&statuses["t01"]), ["0001_a"]);
    assert!(statuses["t02"].history.is_empty(), "{:?}", statuses["t02"]);
    Ok(())
}

/// 20 targets; t03 and t04 already hold a table the second revision creates, so it fails there.
async fn budget_fleet() -> Result<(tempfile::TempDir, tempfile::TempDir, TestAgent)> {
    let dir = migrations(&[
        (
            "0001_a.sql",
            &revision(
                "0001_a",
                None,
                "CREATE TABLE a (id INTEGER PRIMARY KEY);",
                "DROP TABLE a;",
            ),
        ),
        (
            "0002_w.sql",
            &revision(
                "0002_w",
                Some("0001_a"),
                "CREATE TABLE widgets (id INTEGER PRIMARY KEY);",
                "DROP TABLE widgets;",
            ),
        ),
    ])?;
    let (tdir, targets) = sqlite_targets("t", 20)?;
    for id in ["t03", "t04"] {
        let path = tdir.path().join(format!("{id}.db"));
        let opts = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true);
        let mut conn = sqlx::ConnectOptions::connect(&opts).await?;
        sqlx::Executor::execute(&mut conn, "CREATE TABLE widgets (x TEXT)").await?;
    }
    let agent = TestAgent::start("agent", targets).await?;
    Ok((dir, tdir, agent))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_within_the_budget_complete_and_are_reported() -> Result<()> {
    let (dir, _t, agent) = budget_fleet().await?;
    let coord = TestCoordinator::start(dir.path(), &[&agent], None).await?;
    let r = coord
        .rollout(RolloutSpec {
            failure_budget: Budget::Count(3),
            waves: vec![WaveSize::Count(5)],
            ..spec("head")
        })
        .await?;
    assert_eq!(state(&r), pb::RolloutState::CompletedWithFailures, "{r:#?}");
    assert_eq!(targets_in(&r, pb::TargetState::Failed), ["t03", "t04"]);
    assert_eq!(targets_in(&r, pb::TargetState::Succeeded).len(), 18);
    assert!(r.message.contains("2 failed"), "{}", r.message);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_over_the_budget_halt_the_rollout() -> Result<()> {
    let (dir, _t, agent) = budget_fleet().await?;
    let coord = TestCoordinator::start(dir.path(), &[&agent], None).await?;
    let r = coord
        .rollout(RolloutSpec {
            failure_budget: Budget::Count(1),
            waves: vec![WaveSize::Count(5)],
            ..spec("head")
        })
        .await?;
    assert_eq!(state(&r), pb::RolloutState::Halted, "{r:#?}");
    assert!(
        r.message.contains("failure budget exceeded"),
        "{}",
        r.message
    );
    assert_eq!(targets_in(&r, pb::TargetState::Failed), ["t03", "t04"]);
    // Waves after the one that broke the budget were never started.
    let statuses = agent.statuses(true).await?;
    for i in 7..=20 {
        let id = format!("t{i:02}");
        assert!(
            statuses[&id].history.is_empty(),
            "{id} was touched after the halt"
        );
        assert!(targets_in(&r, pb::TargetState::Pending).contains(&id));
    }
    Ok(())
}

/// A revision whose SQLite step burns a few hundred milliseconds of CPU, so targets take time.
fn slow_set() -> Result<tempfile::TempDir> {
    let burn = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 300000) \
                SELECT count(*) FROM c;\nCREATE TABLE slow (id INTEGER PRIMARY KEY);";
    migrations(&[(
        "0001_slow.sql",
        &revision("0001_slow", None, burn, "DROP TABLE slow;"),
    )])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_stops_new_targets_and_resume_finishes() -> Result<()> {
    let dir = slow_set()?;
    let (_t, targets) = sqlite_targets("t", 8)?;
    let agent = TestAgent::start("agent", targets).await?;
    let coord = TestCoordinator::start(dir.path(), &[&agent], None).await?;
    let mut c = coord.client().await?;
    let r = c
        .start_rollout(pb::StartRolloutRequest {
            spec: Some(
                RolloutSpec {
                    canary: 0,
                    max_parallel: 1,
                    ..spec("head")
                }
                .to_proto(),
            ),
        })
        .await?
        .into_inner();
    c.pause_rollout(pb::RolloutControlRequest { id: r.id.clone() })
        .await?;
    // Paused, and the target in flight (if any) has finished.
    let paused = rollout_when(
        &c,
        &r.id,
        "rollout paused and idle",
        Duration::from_secs(30),
        |r| {
            state(r) == pb::RolloutState::Paused
                && targets_in(r, pb::TargetState::Running).is_empty()
        },
    )
    .await?;
    let done = targets_in(&paused, pb::TargetState::Succeeded).len();
    assert!(
        done < 8,
        "pause came too late to observe: {done} targets done"
    );
    // What the agents report matches: nothing beyond the finished targets was touched.
    let touched = agent
        .statuses(false)
        .await?
        .values()
        .filter(|s| !s.applied.is_empty())
        .count();
    assert_eq!(touched, done);

    c.resume_rollout(pb::RolloutControlRequest { id: r.id.clone() })
        .await?;
    let end = follow_to_end(&mut c, &r.id).await?;
    assert_eq!(state(&end), pb::RolloutState::Succeeded, "{end:#?}");
    assert_eq!(targets_in(&end, pb::TargetState::Succeeded).len(), 8);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_ends_cleanly_and_leaves_the_rest_untouched() -> Result<()> {
    let dir = slow_set()?;
    let (_t, targets) = sqlite_targets("t", 6)?;
    let agent = TestAgent::start("agent", targets).await?;
    let coord = TestCoordinator::start(dir.path(), &[&agent], None).await?;
    let mut c = coord.client().await?;
    let r = c
        .start_rollout(pb::StartRolloutRequest {
            spec: Some(
                RolloutSpec {
                    canary: 0,
                    max_parallel: 1,
                    ..spec("head")
                }
                .to_proto(),
            ),
        })
        .await?
        .into_inner();
    c.pause_rollout(pb::RolloutControlRequest { id: r.id.clone() })
        .await?;
    c.abort_rollout(pb::RolloutControlRequest { id: r.id.clone() })
        .await?;
    let end = follow_to_end(&mut c, &r.id).await?;
    assert_eq!(state(&end), pb::RolloutState::Aborted, "{end:#?}");
    let skipped = targets_in(&end, pb::TargetState::Skipped);
    assert!(!skipped.is_empty(), "abort came too late: {end:#?}");
    let statuses = agent.statuses(true).await?;
    for id in &skipped {
        assert!(
            statuses[id].history.is_empty(),
            "{id} was touched after abort"
        );
    }
    // No target is left half-way: each is at base or at the goal, none dirty or running.
    assert!(targets_in(&end, pb::TargetState::Running).is_empty());
    assert!(statuses.values().all(|s| !s.dirty));
    // A new rollout can start once the aborted one ended.
    let next = coord.rollout(spec("head")).await?;
    assert_eq!(state(&next), pb::RolloutState::Succeeded);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_applied_revision_blocks_only_that_target() -> Result<()> {
    let (tdir, targets) = sqlite_targets("t", 4)?;
    let agent = TestAgent::start("agent", targets).await?;
    let coord = TestCoordinator::start(&repo_migrations(), &[&agent], None).await?;
    let first = coord
        .rollout(RolloutSpec {
            allow_downgrade: false,
            ..spec("0002_users")
        })
        .await?;
    assert_eq!(state(&first), pb::RolloutState::Succeeded, "{first:#?}");
    // Someone edited 0001 on t02 after it was applied: its recorded checksum no longer matches.
    let path = tdir.path().join("t02.db");
    let opts = sqlx::sqlite::SqliteConnectOptions::new().filename(&path);
    let mut conn = sqlx::ConnectOptions::connect(&opts).await?;
    sqlx::Executor::execute(
        &mut conn,
        "UPDATE flotilla_history SET checksum = 'abc' WHERE revision = '0001_tenants'",
    )
    .await?;
    let before = agent.statuses(true).await?["t02"].history.len();

    let r = coord.rollout(spec("head")).await?;
    assert_eq!(targets_in(&r, pb::TargetState::Blocked), ["t02"], "{r:#?}");
    let blocked = r.targets.iter().find(|t| t.target_id == "t02").unwrap();
    assert!(
        blocked.message.contains("0001_tenants") && blocked.message.contains("checksum"),
        "{}",
        blocked.message
    );
    assert_eq!(targets_in(&r, pb::TargetState::Succeeded).len(), 3);
    // A blocked target never reached the goal: the rollout is not `succeeded`.
    assert_eq!(state(&r), pb::RolloutState::Blocked);
    assert!(r.message.contains("1 blocked"), "{}", r.message);
    assert_eq!(
        agent.statuses(true).await?["t02"].history.len(),
        before,
        "t02 was touched"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_downgrade_rollout_takes_the_fleet_back() -> Result<()> {
    let (_t, targets) = sqlite_targets("t", 4)?;
    let agent = TestAgent::start("agent", targets).await?;
    let coord = TestCoordinator::start(&repo_migrations(), &[&agent], None).await?;
    assert_eq!(
        state(&coord.rollout(spec("head")).await?),
        pb::RolloutState::Succeeded
    );
    // Without --allow-downgrade the rollout is refused up front: nothing is touched.
    let before = agent.statuses(true).await?;
    let refused = coord
        .client()
        .await?
        .start_rollout(pb::StartRolloutRequest {
            spec: Some(spec("0005_audit_logs").to_proto()),
        })
        .await
        .expect_err("a downgrade without allow_downgrade must be refused");
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );
    assert!(
        refused.message().starts_with("WOULD_BLOCK")
            && refused.message().contains("4 of the 4 selected targets")
            && refused.message().contains("--allow-downgrade"),
        "{}",
        refused.message()
    );
    assert_eq!(
        agent.statuses(true).await?,
        before,
        "nothing may be touched"
    );
    let r = coord
        .rollout(RolloutSpec {
            allow_downgrade: true,
            ..spec("0005_audit_logs")
        })
        .await?;
    assert_eq!(state(&r), pb::RolloutState::Succeeded, "{r:#?}");
    let graph = Graph::load_dir(&repo_migrations())?;
    let want: BTreeSet<String> = graph.ancestors("0005_audit_logs").into_iter().collect();
    for (id, st) in agent.statuses(true).await? {
        let have: BTreeSet<String> = applied(&st).into_iter().collect();
        assert_eq!(have, want, "{id}");
        assert!(
            st.history
                .iter()
                .any(|h| h.direction == pb::Direction::Down as i32),
            "{id} has no down rows"
        );
    }
    Ok(())
}

/// (start, end) of each target's applied step, from the agent's history (applied_at is the
/// end, duration_ms the step's own time).
async fn step_intervals(agent: &TestAgent) -> Result<Vec<(i64, i64)>> {
    let mut v: Vec<(i64, i64)> = agent
        .statuses(true)
        .await?
        .values()
        .flat_map(|s| s.history.iter())
        .filter(|h| h.status == "applied")
        .map(|h| {
            (
                h.applied_at_unix_ms - h.duration_ms as i64,
                h.applied_at_unix_ms,
            )
        })
        .collect();
    v.sort();
    Ok(v)
}

fn overlapping(v: &[(i64, i64)]) -> usize {
    // allow 5 ms for clock granularity between one step's end and the next one's start
    v.windows(2).filter(|w| w[1].0 + 5 < w[0].1).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn max_parallel_per_host_serializes_targets_on_one_server() -> Result<()> {
    let pg = Postgres::start().await?;
    let dir = migrations(&[(
        "0001_slow.sql",
        &revision(
            "0001_slow",
            None,
            "SELECT pg_sleep(0.3);\nCREATE TABLE s (id INT);",
            "DROP TABLE s;",
        ),
    )])?;
    let mut limited = Vec::new();
    let mut free = Vec::new();
    for i in 1..=4 {
        limited.push(target(
            &format!("a{i}"),
            Dialect::Postgres,
            &pg.fresh_database().await?,
            &[],
        ));
        free.push(target(
            &format!("b{i}"),
            Dialect::Postgres,
            &pg.fresh_database().await?,
            &[],
        ));
    }
    // One host, at most one target at a time on it: the four steps never overlap.
    let agent = TestAgent::start("agent-a", limited).await?;
    let coord = TestCoordinator::start(dir.path(), &[&agent], None).await?;
    let r = coord
        .rollout(RolloutSpec {
            canary: 0,
            max_parallel: 4,
            max_parallel_per_host: 1,
            ..spec("head")
        })
        .await?;
    assert_eq!(state(&r), pb::RolloutState::Succeeded, "{r:#?}");
    let v = step_intervals(&agent).await?;
    assert_eq!(v.len(), 4);
    assert_eq!(overlapping(&v), 0, "steps overlapped on one host: {v:?}");
    drop(coord);

    // Without the per-host limit the same fleet runs them side by side.
    let agent = TestAgent::start("agent-b", free).await?;
    let coord = TestCoordinator::start(dir.path(), &[&agent], None).await?;
    let r = coord
        .rollout(RolloutSpec {
            canary: 0,
            max_parallel: 4,
            ..spec("head")
        })
        .await?;
    assert_eq!(state(&r), pb::RolloutState::Succeeded, "{r:#?}");
    let v = step_intervals(&agent).await?;
    assert!(
        overlapping(&v) > 0,
        "expected parallel steps without a per-host limit: {v:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unreachable_agent_is_retried_before_its_targets_fail() -> Result<()> {
    let (_ta, a_targets) = sqlite_targets("a", 1)?;
    let (_tb, b_targets) = sqlite_targets("b", 2)?;
    let agent_a = TestAgent::start("agent-a", a_targets).await?;
    let agent_b = TestAgent::start("agent-b", b_targets).await?;
    let b_addr: std::net::SocketAddr = agent_b.address.trim_start_matches("http://").parse()?;
    let proxy = flotilla_testkit::FaultProxy::start(b_addr).await?;
    let fleet = vec![
        (agent_a.id.clone(), agent_a.address.clone()),
        (agent_b.id.clone(), format!("http://{}", proxy.addr())),
    ];
    let coord = TestCoordinator::start_with(&repo_migrations(), &fleet, None).await?;
    let mut c = coord.client().await?;
    // Canary a01 on agent-a, then agent-b's two targets in the next wave.
    let r = c
        .start_rollout(pb::StartRolloutRequest {
            spec: Some(spec("head").to_proto()),
        })
        .await?
        .into_inner();
    c.pause_rollout(pb::RolloutControlRequest { id: r.id.clone() })
        .await?;
    rollout_when(
        &c,
        &r.id,
        "rollout planned and paused",
        Duration::from_secs(20),
        |r| state(r) == pb::RolloutState::Paused && r.wave_count == 2,
    )
    .await?;
    // agent-b becomes unreachable: open connections cut, new ones refused.
    proxy.set_refusing(true);
    proxy.cut_all();
    c.resume_rollout(pb::RolloutControlRequest { id: r.id.clone() })
        .await?;
    rollout_when(
        &c,
        &r.id,
        "a retry against the unreachable agent",
        Duration::from_secs(20),
        |r| {
            r.targets
                .iter()
                .any(|t| t.agent_id == "agent-b" && t.retries > 0)
        },
    )
    .await?;
    proxy.set_refusing(false);
    let end = follow_to_end(&mut c, &r.id).await?;
    assert_eq!(state(&end), pb::RolloutState::Succeeded, "{end:#?}");
    assert_eq!(targets_in(&end, pb::TargetState::Succeeded).len(), 3);
    assert!(
        end.targets
            .iter()
            .filter(|t| t.agent_id == "agent-b")
            .any(|t| t.retries > 0)
    );
    for (id, st) in agent_b.statuses(true).await? {
        let n = st.history.iter().filter(|h| h.status == "applied").count();
        assert_eq!(n, 10, "{id}: each revision exactly once");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_goal_is_refused_before_anything_starts() -> Result<()> {
    let (_t, targets) = sqlite_targets("t", 2)?;
    let agent = TestAgent::start("agent", targets).await?;
    let coord = TestCoordinator::start(&repo_migrations(), &[&agent], None).await?;
    let mut c = coord.client().await?;
    let spec = Some(spec("9999_no_such_revision").to_proto());
    let err = c
        .start_rollout(pb::StartRolloutRequest { spec: spec.clone() })
        .await
        .expect_err("an unknown goal must be refused");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("no such revision"),
        "{}",
        err.message()
    );
    let err = c
        .plan(pb::PlanRequest { spec })
        .await
        .expect_err("plan too");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let list = c
        .list_rollouts(pb::ListRolloutsRequest {
            project: Default::default(),
            limit: 0,
        })
        .await?
        .into_inner();
    assert!(list.rollouts.is_empty(), "{list:?}");
    assert!(
        agent
            .statuses(true)
            .await?
            .values()
            .all(|s| s.history.is_empty())
    );
    Ok(())
}

/// A rollout plans runnable targets from what the coordinator last saw of them; a target
/// changed since (here migrated by another client after the coordinator read it) is refused
/// as a stale plan by its agent, re-planned from a fresh report and ends skipped: no step
/// runs twice, and the other target is migrated.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_target_changed_since_the_coordinator_saw_it_is_replanned() -> Result<()> {
    use flotilla_revision::Goal;

    let set = two_revisions()?;
    let (_dir, targets) = sqlite_targets("t", 2)?;
    let agent = TestAgent::start("agent-view", targets).await?;
    let coord = TestCoordinator::start(set.path(), &[&agent], None).await?;
    // The coordinator's view: both targets at base.
    let seen = coord.engine.snapshot(false).await?;
    assert_eq!(seen.targets.len(), 2);
    assert!(seen.targets.iter().all(|e| e.status.applied.is_empty()));

    // Another client migrates t01 to head behind the coordinator's back.
    let token = coord.engine.term().map(|t| t.token).unwrap_or(1);
    migrate_by_hand(&agent, set.path(), "t01", &Goal::Head, token).await?;

    let r = coord
        .rollout(RolloutSpec {
            canary: 0,
            ..spec("head")
        })
        .await?;
    assert_eq!(state(&r), pb::RolloutState::Succeeded, "{r:#?}");
    assert_eq!(targets_in(&r, pb::TargetState::Skipped), ["t01"], "{r:#?}");
    assert_eq!(
        targets_in(&r, pb::TargetState::Succeeded),
        ["t02"],
        "{r:#?}"
    );
    for id in ["t01", "t02"] {
        let st = coord.engine.target_status(id, true).await?.status;
        assert_eq!(applied(&st), ["0001_a", "0002_b"], "{id}");
        let rollouts: Vec<&str> = st.history.iter().map(|h| h.rollout_id.as_str()).collect();
        let want = if id == "t01" {
            "by-hand"
        } else {
            r.id.as_str()
        };
        assert_eq!(rollouts, [want, want], "{id}: each step ran once");
    }
    Ok(())
}

/// The applied revisions each target of a planning snapshot was planned from, by id.
async fn planned_from(coord: &TestCoordinator) -> Result<BTreeMap<String, Vec<String>>> {
    let snap = planning_snapshot(coord, &flotilla_revision::Goal::Head).await?;
    Ok(snap
        .targets
        .iter()
        .map(|e| (e.status.target_id.clone(), applied(&e.status)))
        .collect())
}

/// A fresh coordinator reads the first targets of an agent it has never seen and, when they
/// share one state that plans to steps, plans the others from it without reading them; the
/// Migrate re-checks that state under the lock, so the two targets that were not in it (one
/// at head, one half way) are re-planned: each step runs once. A second fresh coordinator,
/// whose sample is at the goal, reads every target (a no-op check never guesses).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn targets_beyond_the_planning_sample_are_planned_from_its_shared_state() -> Result<()> {
    use flotilla_coordinator::engine::PLANNING_SAMPLE;
    use flotilla_revision::Goal;

    let set = two_revisions()?;
    let n = PLANNING_SAMPLE + 4;
    let (_dir, targets) = sqlite_targets("t", n)?;
    let agent = TestAgent::start("agent-sample", targets).await?;
    let ids: Vec<String> = (1..=n).map(|i| format!("t{i:02}")).collect();
    let (at_head, half_way) = (&ids[n - 2], &ids[n - 1]);
    // Behind any coordinator's back: one target of the rest to head, one to 0001_a.
    migrate_by_hand(&agent, set.path(), at_head, &Goal::Head, 1).await?;
    migrate_by_hand(
        &agent,
        set.path(),
        half_way,
        &Goal::Revision("0001_a".into()),
        1,
    )
    .await?;

    let coord = TestCoordinator::start(set.path(), &[&agent], None).await?;
    let planned = planned_from(&coord).await?;
    assert_eq!(planned.len(), n);
    assert!(
        planned.values().all(Vec::is_empty),
        "the sample (all at base) stands for the rest, the two changed ones included: {planned:?}"
    );
    let r = coord
        .rollout(RolloutSpec {
            canary: 0,
            ..spec("head")
        })
        .await?;
    assert_eq!(state(&r), pb::RolloutState::Succeeded, "{r:#?}");
    assert_eq!(
        targets_in(&r, pb::TargetState::Skipped),
        [at_head.as_str()],
        "{r:#?}"
    );
    assert_eq!(
        targets_in(&r, pb::TargetState::Succeeded).len(),
        n - 1,
        "{r:#?}"
    );
    for id in &ids {
        let st = coord.engine.target_status(id, true).await?.status;
        assert_eq!(applied(&st), ["0001_a", "0002_b"], "{id}");
        let rollouts: Vec<&str> = st.history.iter().map(|h| h.rollout_id.as_str()).collect();
        let want: Vec<&str> = if id == at_head {
            vec!["by-hand", "by-hand"]
        } else if id == half_way {
            vec!["by-hand", r.id.as_str()]
        } else {
            vec![r.id.as_str(), r.id.as_str()]
        };
        assert_eq!(rollouts, want, "{id}: each step ran once");
    }
    drop(coord);

    let again = TestCoordinator::start(set.path(), &[&agent], None).await?;
    let planned = planned_from(&again).await?;
    assert_eq!(planned.len(), n);
    assert!(
        planned.values().all(|a| a == &["0001_a", "0002_b"]),
        "a sample at the goal has every target read: {planned:?}"
    );
    Ok(())
}

/// A sample that does not share one state (here one sampled target is half way) plans
/// nothing from it: every target is read, so the one at head is known to be at head.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_mixed_planning_sample_has_every_target_read() -> Result<()> {
    use flotilla_coordinator::engine::PLANNING_SAMPLE;
    use flotilla_revision::Goal;

    let set = two_revisions()?;
    let n = PLANNING_SAMPLE + 2;
    let (_dir, targets) = sqlite_targets("t", n)?;
    let agent = TestAgent::start("agent-mixed", targets).await?;
    migrate_by_hand(
        &agent,
        set.path(),
        "t01",
        &Goal::Revision("0001_a".into()),
        1,
    )
    .await?;
    let last = format!("t{n:02}");
    migrate_by_hand(&agent, set.path(), &last, &Goal::Head, 1).await?;

    let coord = TestCoordinator::start(set.path(), &[&agent], None).await?;
    let planned = planned_from(&coord).await?;
    assert_eq!(planned.len(), n);
    assert_eq!(planned["t01"], ["0001_a"]);
    assert_eq!(planned[&last], ["0001_a", "0002_b"], "read, not guessed");
    assert!(
        planned
            .iter()
            .filter(|(id, _)| *id != "t01" && **id != last)
            .all(|(_, a)| a.is_empty())
    );
    Ok(())
}
