//! Migrate: plans applied once, failures rolled back, fencing, checksums, the dirty protocol.

use anyhow::{Context, Result, ensure};
use flotilla_core::Dialect;
use flotilla_proto::step_event::Event;
use flotilla_proto::{FailureReason, RepairRequest};
use tonic::Code;

use crate::support::{
    Backend, Server, agent, fingerprint, migrate, reason, run, run_grpc, status, up,
};

fn plan() -> Vec<flotilla_proto::Step> {
    vec![
        up(
            "0001_users",
            "CREATE TABLE users (id INTEGER PRIMARY KEY, name VARCHAR(50) NOT NULL);",
        ),
        up(
            "0002_orders",
            "CREATE TABLE orders (id INTEGER PRIMARY KEY, user_id INTEGER NOT NULL);",
        ),
        up(
            "0003_email",
            "ALTER TABLE users ADD COLUMN email VARCHAR(100);",
        ),
    ]
}

/// Issue test 1: a 3-step plan over gRPC, recorded in the history; sent again, nothing changes.
async fn plan_applied_once(dialect: Dialect) -> Result<()> {
    let backend = Backend::start(dialect).await?;
    let agent = agent(vec![backend.fresh_target("t1").await?]).await?;
    let server = Server::start(agent.clone()).await?;
    let mut client = server.client().await?;

    let out = run_grpc(&mut client, migrate("t1", "rollout-1", 7, plan())).await?;
    ensure!(
        out.error.is_none(),
        "first run failed: {:?} {:?}",
        out.error,
        out.kinds()
    );
    let succeeded: Vec<_> = out
        .events
        .iter()
        .filter(|e| matches!(e.event, Some(Event::Succeeded(_))))
        .map(|e| e.revision.as_str())
        .collect();
    assert_eq!(
        succeeded,
        ["0001_users", "0002_orders", "0003_email"],
        "{:?}",
        out.kinds()
    );

    let ts = status(&agent, "t1", true).await?;
    let fp = fingerprint(&agent, "t1").await?;
    assert_eq!(ts.history.len(), 3, "{:?}", ts.history);
    for (row, step) in ts.history.iter().zip(plan()) {
        assert_eq!(row.revision, step.revision);
        assert_eq!(row.checksum, step.checksum);
        assert_eq!(row.status, "applied");
        assert_eq!(row.rollout_id, "rollout-1");
        assert_eq!(row.agent_id, "agent-test");
        assert_eq!(row.fencing_token, 7);
        assert!(row.applied_at_unix_ms > 1_600_000_000_000, "{row:?}");
        assert!(row.duration_ms < 60_000, "{row:?}");
    }
    assert_eq!(ts.fence_token, 7);
    assert_eq!(ts.heads, ["0003_email"]);
    assert!(!ts.dirty);

    let again = run_grpc(&mut client, migrate("t1", "rollout-2", 7, plan())).await?;
    ensure!(
        again.error.is_none(),
        "second run failed: {:?}",
        again.error
    );
    let kinds: Vec<_> = again
        .events
        .iter()
        .filter(|e| !e.revision.is_empty() && !matches!(e.event, Some(Event::LockAcquired(_))))
        .map(|e| format!("{}:{}", e.revision, crate::support::kind(e)))
        .collect();
    assert_eq!(
        kinds,
        [
            "0001_users:skipped",
            "0002_orders:skipped",
            "0003_email:skipped"
        ]
    );
    let after = status(&agent, "t1", true).await?;
    assert_eq!(
        after.history, ts.history,
        "sending the plan again changed the history"
    );
    assert_eq!(fingerprint(&agent, "t1").await?, fp);
    server.stop().await
}

/// The closing `MigrateFinished` event reports what a Status (and, when asked, a Validate)
/// would say right after the run, so a coordinator needs neither call.
async fn finished_event_reports_the_state_left(dialect: Dialect) -> Result<()> {
    let backend = Backend::start(dialect).await?;
    let agent = agent(vec![backend.fresh_target("t1").await?]).await?;
    let steps = plan();
    let first = run(&agent, migrate("t1", "rollout-1", 3, steps[..2].to_vec())).await?;
    ensure!(first.error.is_none(), "first run failed: {:?}", first.error);
    let finished = first.finished.context("no MigrateFinished event")?;
    let reported = finished
        .status
        .context("MigrateFinished without a status")?;
    assert_eq!(
        reported,
        status(&agent, "t1", false).await?,
        "the reported state is what Status reads"
    );
    let applied: Vec<&str> = reported
        .applied
        .iter()
        .map(|a| a.revision.as_str())
        .collect();
    assert_eq!(applied, ["0001_users", "0002_orders"]);
    assert_eq!(reported.fence_token, 3);
    assert!(
        finished.fingerprint.is_empty(),
        "no fingerprint unless asked: {}",
        finished.fingerprint
    );

    // Asked for the fingerprint: the one Validate computes for the schema the run left.
    let req = flotilla_proto::MigrateRequest {
        report_fingerprint: true,
        ..migrate("t1", "rollout-2", 4, steps)
    };
    let second = run(&agent, req).await?;
    ensure!(
        second.error.is_none(),
        "second run failed: {:?}",
        second.error
    );
    let finished = second.finished.context("no MigrateFinished event")?;
    let reported = finished
        .status
        .context("MigrateFinished without a status")?;
    assert_eq!(reported.heads, ["0003_email"]);
    assert_eq!(reported, status(&agent, "t1", false).await?);
    assert_eq!(finished.fingerprint, fingerprint(&agent, "t1").await?);
    assert_ne!(
        finished.fingerprint,
        fingerprint_of_first_two(dialect).await?,
        "the fingerprint is of the schema after the last step"
    );

    // A run whose step fails ends with the error, not with a MigrateFinished report.
    let failing = run(
        &agent,
        migrate(
            "t1",
            "rollout-3",
            5,
            vec![up("0004_bad", "CREATE TABLE users (id INTEGER);")],
        ),
    )
    .await?;
    assert!(failing.error.is_some(), "{:?}", failing.kinds());
    assert!(failing.finished.is_none(), "{:?}", failing.finished);
    Ok(())
}

/// The fingerprint of a fresh target with only the plan's first two steps.
async fn fingerprint_of_first_two(dialect: Dialect) -> Result<String> {
    let backend = Backend::start(dialect).await?;
    let agent = agent(vec![backend.fresh_target("t2").await?]).await?;
    let out = run(&agent, migrate("t2", "rollout-1", 1, plan()[..2].to_vec())).await?;
    ensure!(out.error.is_none(), "{:?}", out.error);
    fingerprint(&agent, "t2").await
}

#[tokio::test]
async fn sqlite_finished_event_reports_the_state_left() -> Result<()> {
    finished_event_reports_the_state_left(Dialect::Sqlite).await
}

#[tokio::test]
async fn postgres_finished_event_reports_the_state_left() -> Result<()> {
    finished_event_reports_the_state_left(Dialect::Postgres).await
}

#[tokio::test]
async fn sqlite_plan_is_applied_once() -> Result<()> {
    plan_applied_once(Dialect::Sqlite).await
}

#[tokio::test]
async fn postgres_plan_is_applied_once() -> Result<()> {
    plan_applied_once(Dialect::Postgres).await
}

/// A quiet request leaves out what its caller knows: the lock taken and the first step's
/// start; the later steps' starts, every outcome (a failure too) and the closing report
/// come as ever. Without it, all of them.
#[tokio::test]
async fn quiet_leaves_out_the_lock_and_the_first_start() -> Result<()> {
    let backend = Backend::start(Dialect::Sqlite).await?;
    let agent = agent(vec![
        backend.fresh_target("t1").await?,
        backend.fresh_target("t2").await?,
    ])
    .await?;
    let quiet = |target: &str, steps| flotilla_proto::MigrateRequest {
        quiet: true,
        transaction_per_step: true,
        ..migrate(target, "r1", 1, steps)
    };
    let out = run(&agent, quiet("t1", plan()[..2].to_vec())).await?;
    ensure!(out.error.is_none(), "{:?}", out.error);
    assert_eq!(
        out.kinds(),
        [
            "0001_users:succeeded",
            "0002_orders:started",
            "0002_orders:succeeded"
        ]
    );
    assert!(out.finished.is_some(), "the closing report still comes");
    let bad = up("0003_bad", "INSERT INTO no_such_table VALUES (1);");
    let failed = run(&agent, quiet("t1", vec![bad])).await?;
    assert_eq!(failed.kinds(), ["0003_bad:failed"]);
    assert!(failed.err().is_ok());

    let loud = flotilla_proto::MigrateRequest {
        transaction_per_step: true,
        ..migrate("t2", "r1", 1, plan()[..2].to_vec())
    };
    let loud = run(&agent, loud).await?;
    ensure!(loud.error.is_none(), "{:?}", loud.error);
    assert_eq!(
        loud.kinds(),
        [
            "0001_users:lock_acquired",
            "0001_users:started",
            "0001_users:succeeded",
            "0002_orders:started",
            "0002_orders:succeeded"
        ]
    );
    assert!(loud.finished.is_some());
    Ok(())
}

/// Issue test 2: a failing step of a transactional plan leaves the target as it was.
async fn failing_step_rolls_back(dialect: Dialect) -> Result<()> {
    let backend = Backend::start(dialect).await?;
    let agent = agent(vec![backend.fresh_target("t1").await?]).await?;
    let first = run(&agent, migrate("t1", "r1", 1, plan()[..1].to_vec())).await?;
    ensure!(first.error.is_none(), "{:?}", first.error);
    let before = status(&agent, "t1", true).await?;
    let fp_before = fingerprint(&agent, "t1").await?;

    let bad = up(
        "0002_bad",
        "CREATE TABLE half_done (id INTEGER); INSERT INTO no_such_table VALUES (1);",
    );
    let out = run(&agent, migrate("t1", "r2", 1, vec![bad, plan()[1].clone()])).await?;
    let err = out.err()?;
    assert_eq!(err.code(), Code::Aborted, "{err:?}");
    assert_eq!(reason(err), "SQL_ERROR");
    assert!(err.message().contains("0002_bad"), "{}", err.message());
    assert!(err.message().contains("no_such_table"), "{}", err.message());
    let failed = out.failed().context("no StepFailed event")?;
    assert_eq!(failed.reason, FailureReason::SqlError as i32);
    assert!(failed.rolled_back && !failed.dirty, "{failed:?}");
    assert!(failed.message.contains("0002_bad") && failed.message.contains("no_such_table"));
    assert!(
        !out.events.iter().any(|e| e.revision == "0002_orders"),
        "the step after the failure ran: {:?}",
        out.kinds()
    );

    let after = status(&agent, "t1", true).await?;
    assert_eq!(after.history, before.history);
    assert!(!after.dirty);
    assert_eq!(
        fingerprint(&agent, "t1").await?,
        fp_before,
        "the failed step left schema changes"
    );
    Ok(())
}

#[tokio::test]
async fn sqlite_failing_step_rolls_back() -> Result<()> {
    failing_step_rolls_back(Dialect::Sqlite).await
}

#[tokio::test]
async fn postgres_failing_step_rolls_back() -> Result<()> {
    failing_step_rolls_back(Dialect::Postgres).await
}

/// A PostgreSQL failure keeps the server's DETAIL line: which key is duplicated.
#[tokio::test]
async fn postgres_failure_message_keeps_the_detail_line() -> Result<()> {
    let backend = Backend::start(Dialect::Postgres).await?;
    let agent = agent(vec![backend.fresh_target("t1").await?]).await?;
    let setup = up(
        "0001_accounts",
        "CREATE TABLE accounts (id INTEGER PRIMARY KEY, email VARCHAR(100));\n\
         INSERT INTO accounts VALUES (1, 'a@example.com'), (2, 'a@example.com');",
    );
    let first = run(&agent, migrate("t1", "r1", 1, vec![setup])).await?;
    ensure!(first.error.is_none(), "{:?}", first.error);
    let unique = up(
        "0002_unique_email",
        "CREATE UNIQUE INDEX ux_accounts_email ON accounts (email);",
    );
    let out = run(&agent, migrate("t1", "r2", 1, vec![unique])).await?;
    let failed = out.failed().context("no StepFailed event")?;
    for part in [
        "could not create unique index \"ux_accounts_email\"",
        "sqlstate 23505",
        "detail: Key (email)=(a@example.com) is duplicated.",
    ] {
        assert!(
            failed.message.contains(part),
            "{part:?} in {}",
            failed.message
        );
    }
    Ok(())
}

/// Issue test 3: a failing DDL step on MariaDB marks the target dirty; Repair clears it.
#[tokio::test]
async fn mariadb_failing_ddl_leaves_target_dirty_until_repair() -> Result<()> {
    let backend = Backend::start(Dialect::Mysql).await?;
    let agent = agent(vec![backend.fresh_target("t1").await?]).await?;
    let bad = up(
        "0001_half",
        "CREATE TABLE half_done (id INT PRIMARY KEY); CREATE TABLE broken (id INT REFERENCES nowhere_at_all(id) BOGUS);",
    );
    let out = run(&agent, migrate("t1", "r1", 1, vec![bad])).await?;
    let err = out.err()?;
    assert_eq!(err.code(), Code::Aborted, "{err:?}");
    assert!(err.message().contains("0001_half"), "{}", err.message());
    let failed = out.failed().context("no StepFailed")?;
    assert!(failed.dirty && !failed.rolled_back, "{failed:?}");

    let ts = status(&agent, "t1", false).await?;
    assert!(ts.dirty);
    assert_eq!(ts.dirty_revision, "0001_half");
    let v = agent
        .validate(flotilla_proto::ValidateRequest {
            project: Default::default(),
            target_ids: vec!["t1".into()],
            expected: vec![],
            skip_fingerprint: true,
            include_catalog: false,
        })
        .await?;
    let kinds: Vec<_> = v.targets[0]
        .issues
        .iter()
        .map(|i| (i.revision.as_str(), i.kind))
        .collect();
    assert_eq!(
        kinds,
        [("0001_half", flotilla_proto::IssueKind::Dirty as i32)]
    );

    let next = run(
        &agent,
        migrate(
            "t1",
            "r2",
            1,
            vec![up("0002_next", "CREATE TABLE next_one (id INT);")],
        ),
    )
    .await?;
    let err = next.err()?;
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(reason(err), "TARGET_DIRTY");
    assert!(
        err.message().contains("0001_half") && err.message().contains("repair"),
        "{}",
        err.message()
    );
    let failed = next.failed().context("no StepFailed")?;
    assert_eq!(failed.reason, FailureReason::TargetDirty as i32);

    let repaired = agent
        .repair(RepairRequest {
            project: Default::default(),
            target_id: "t1".into(),
            fencing_token: 1,
            revision: "0001_half".into(),
            applied: false,
        })
        .await?;
    let ts = repaired.target.context("repair returned no target")?;
    assert!(!ts.dirty, "{ts:?}");
    assert!(ts.applied.is_empty());

    let ok = run(
        &agent,
        migrate(
            "t1",
            "r3",
            1,
            vec![up("0002_next", "CREATE TABLE next_one (id INT);")],
        ),
    )
    .await?;
    ensure!(ok.error.is_none(), "{:?}", ok.error);
    assert_eq!(status(&agent, "t1", false).await?.heads, ["0002_next"]);
    Ok(())
}

/// Issue test 4: a lower fencing token is refused and changes nothing; a higher one works.
#[tokio::test]
async fn lower_fencing_token_is_refused() -> Result<()> {
    let backend = Backend::start(Dialect::Sqlite).await?;
    let agent = agent(vec![backend.fresh_target("t1").await?]).await?;
    let server = Server::start(agent.clone()).await?;
    let mut client = server.client().await?;
    let steps = plan();

    let first = run_grpc(&mut client, migrate("t1", "r5", 5, steps[..1].to_vec())).await?;
    ensure!(first.error.is_none(), "{:?}", first.error);
    let before = status(&agent, "t1", true).await?;
    let fp = fingerprint(&agent, "t1").await?;

    let stale = run_grpc(&mut client, migrate("t1", "r3", 3, steps[1..].to_vec())).await?;
    let err = stale.err()?;
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert_eq!(reason(err), "STALE_FENCING_TOKEN");
    assert!(
        err.message().contains("3") && err.message().contains("5"),
        "{}",
        err.message()
    );
    // The agent remembers the highest token it has seen, so the stale request is refused
    // before any step starts: no step event at all.
    assert!(stale.events.is_empty(), "{:?}", stale.events);
    let after = status(&agent, "t1", true).await?;
    assert_eq!(after.history, before.history);
    assert_eq!(after.fence_token, 5);
    assert_eq!(fingerprint(&agent, "t1").await?, fp);

    let newer = run_grpc(&mut client, migrate("t1", "r9", 9, steps[1..].to_vec())).await?;
    ensure!(newer.error.is_none(), "{:?}", newer.error);
    let ts = status(&agent, "t1", false).await?;
    assert_eq!(ts.fence_token, 9);
    assert_eq!(ts.applied.len(), 3);
    server.stop().await
}

/// Issue test 7: a step whose checksum does not match its SQL is refused before anything runs;
/// a revision applied with another checksum is refused too.
#[tokio::test]
async fn checksum_mismatch_is_refused() -> Result<()> {
    let backend = Backend::start(Dialect::Sqlite).await?;
    let agent = agent(vec![backend.fresh_target("t1").await?]).await?;
    let mut steps = plan();
    steps[1].sql.push_str(" -- edited");
    let out = run(&agent, migrate("t1", "r1", 1, steps)).await?;
    let err = out.err()?;
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(reason(err), "CHECKSUM_MISMATCH");
    assert!(err.message().contains("0002_orders"), "{}", err.message());
    assert!(
        out.events.is_empty(),
        "events before the refusal: {:?}",
        out.kinds()
    );
    assert!(
        status(&agent, "t1", true).await?.history.is_empty(),
        "something ran"
    );

    let ok = run(&agent, migrate("t1", "r1", 1, plan()[..1].to_vec())).await?;
    ensure!(ok.error.is_none(), "{:?}", ok.error);
    let edited = up("0001_users", "CREATE TABLE users (id INTEGER PRIMARY KEY);");
    let out = run(&agent, migrate("t1", "r2", 1, vec![edited])).await?;
    let err = out.err()?;
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(reason(err), "CHECKSUM_MISMATCH");
    assert!(err.message().contains("edited"), "{}", err.message());
    Ok(())
}

/// Down steps: applied revisions are removed, unapplied ones skipped.
#[tokio::test]
async fn down_steps_remove_and_skip() -> Result<()> {
    let backend = Backend::start(Dialect::Sqlite).await?;
    let agent = agent(vec![backend.fresh_target("t1").await?]).await?;
    let ok = run(&agent, migrate("t1", "r1", 1, plan()[..2].to_vec())).await?;
    ensure!(ok.error.is_none(), "{:?}", ok.error);
    let down = |rev: &str, sql: &str, up_sql: &str| flotilla_proto::Step {
        direction: flotilla_proto::Direction::Down as i32,
        up_checksum: flotilla_core::checksum(up_sql),
        backup_tables: vec![],
        ..up(rev, sql)
    };
    let steps = vec![
        down(
            "0003_email",
            "ALTER TABLE users DROP COLUMN email;",
            &plan()[2].sql,
        ),
        down("0002_orders", "DROP TABLE orders;", &plan()[1].sql),
    ];
    let out = run(&agent, migrate("t1", "r2", 1, steps)).await?;
    ensure!(out.error.is_none(), "{:?}", out.error);
    let kinds = out.kinds();
    assert!(
        kinds.contains(&"0003_email:skipped".to_owned()),
        "{kinds:?}"
    );
    assert!(
        kinds.contains(&"0002_orders:succeeded".to_owned()),
        "{kinds:?}"
    );
    let ts = status(&agent, "t1", false).await?;
    assert_eq!(ts.heads, ["0001_users"]);
    Ok(())
}

#[tokio::test]
async fn mariadb_plan_is_applied_once() -> Result<()> {
    plan_applied_once(Dialect::Mysql).await
}

/// `StatusRequest.identities_only` lists the targets without touching their databases: an
/// unreachable target lists without an error, a migrated one without its state.
#[tokio::test]
async fn status_identities_only_reads_no_database() -> Result<()> {
    let backend = Backend::start(Dialect::Sqlite).await?;
    let unreachable = crate::support::target(
        "t2",
        Dialect::Postgres,
        "postgres://nobody@127.0.0.1:1/none?connect_timeout=1",
    );
    let agent = agent(vec![backend.fresh_target("t1").await?, unreachable]).await?;
    let out = run(&agent, migrate("t1", "rollout-1", 2, plan())).await?;
    ensure!(out.error.is_none(), "{:?}", out.error);
    let req = |identities_only| flotilla_proto::StatusRequest {
        identities_only,
        ..Default::default()
    };
    let full = agent.status(req(false)).await?;
    let t2 = full
        .targets
        .iter()
        .find(|t| t.target_id == "t2")
        .context("t2")?;
    assert!(!t2.error.is_empty(), "t2 is unreachable: {t2:?}");

    let listed = agent.status(req(true)).await?;
    let ids: Vec<&str> = listed
        .targets
        .iter()
        .map(|t| t.target_id.as_str())
        .collect();
    assert_eq!(ids, ["t1", "t2"]);
    for (t, read) in listed.targets.iter().zip(&full.targets) {
        assert!(t.error.is_empty(), "{t:?}");
        assert!(
            t.applied.is_empty() && t.heads.is_empty() && t.last_step.is_none(),
            "{t:?}"
        );
        assert_eq!(t.fence_token, 0);
        assert_eq!(
            (&t.dialect, &t.labels, &t.host),
            (&read.dialect, &read.labels, &read.host),
            "identities as a full Status reports them"
        );
    }
    Ok(())
}
