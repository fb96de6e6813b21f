//! The `flotilla` binary as users run it: `wait` for init containers, `status`/`history`
//! JSON, and `demo` on a fresh directory (twice: the second run has nothing to do).

use anyhow::Result;
use flotilla_coordinator::rollout::RolloutSpec;
use flotilla_proto as pb;
use serde_json::Value;

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_returns_zero_at_the_revision_and_non_zero_on_timeout() -> Result<()> {
    let (_t, targets) = sqlite_targets("t", 3)?;
    let agent = TestAgent::start("agent", targets).await?;
    let coord = TestCoordinator::start(&repo_migrations(), &[&agent], None).await?;
    let addr = coord.address.clone();
    let wait = |rev: &'static str| {
        let addr = addr.clone();
        async move {
            run_cli(
                &[
                    "wait",
                    "--coordinator",
                    &addr,
                    "--revision",
                    rev,
                    "--timeout",
                    "1s",
                    "--interval",
                    "100ms",
                ],
                None,
            )
            .await
        }
    };
    let (code, out, _) = wait("head").await?;
    assert_eq!(code, 5, "wait before the rollout: {out}");
    assert!(out.contains("timed out"), "{out}");

    let r = coord.rollout(spec("0002_users")).await?;
    assert_eq!(state(&r), pb::RolloutState::Succeeded);
    assert_eq!(wait("0002_users").await?.0, 0);
    assert_eq!(wait("head").await?.0, 5, "only 0002 was rolled out");

    assert_eq!(
        state(&coord.rollout(spec("head")).await?),
        pb::RolloutState::Succeeded
    );
    let (code, out, err) = wait("head").await?;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("all 3 targets"), "{out}");

    // status --output json lists each target at head, without drift.
    let (code, out, err) = run_cli(
        &["--output", "json", "status", "--coordinator", &addr],
        None,
    )
    .await?;
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out)?;
    let targets = v["targets"].as_array().cloned().unwrap_or_default();
    assert_eq!(targets.len(), 3);
    for t in &targets {
        assert_eq!(t["heads"], v["graph_heads"], "{t}");
        assert_eq!(t["drift"].as_array().map(Vec::len), Some(0));
    }
    let (code, out, _) = run_cli(
        &[
            "--output",
            "json",
            "history",
            "--coordinator",
            &addr,
            "--target",
            "t01",
        ],
        None,
    )
    .await?;
    assert_eq!(code, 0);
    let h: Value = serde_json::from_str(&out)?;
    assert_eq!(h["history"].as_array().map(Vec::len), Some(10), "{h}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_start_wait_exits_non_zero_when_the_rollout_halts() -> Result<()> {
    let dir = migrations(&[(
        "0001_bad.sql",
        &revision(
            "0001_bad",
            None,
            "INSERT INTO nowhere VALUES (1);",
            "SELECT 1;",
        ),
    )])?;
    let (_t, targets) = sqlite_targets("t", 2)?;
    let agent = TestAgent::start("agent", targets).await?;
    let coord = TestCoordinator::start(dir.path(), &[&agent], None).await?;
    let (code, out, err) = run_cli(
        &[
            "rollout",
            "start",
            "--coordinator",
            &coord.address,
            "--wait",
        ],
        None,
    )
    .await?;
    assert_eq!(code, 4, "{out}{err}");
    assert!(out.contains("halted") && out.contains("nowhere"), "{out}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_completes_and_a_second_run_has_nothing_to_do() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let demo_dir = dir.path().join("demo");
    let migrations = repo_migrations();
    let args = [
        "--migrations",
        migrations.to_str().unwrap_or("migrations"),
        "demo",
        "--tenants",
        "12",
        "--agents",
        "3",
        "--dir",
        demo_dir.to_str().unwrap_or("demo"),
    ];
    let (code, out, err) = run_cli(&args, None).await?;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("summary: 12 targets, 12 at head; 120 steps applied"),
        "{out}"
    );
    let (code, out, err) = run_cli(&args, None).await?;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("nothing to do: all 12 targets are already at head"),
        "{out}"
    );
    assert!(out.contains("0 steps applied"), "{out}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn validate_repair_and_stamp_through_the_cli() -> Result<()> {
    use flotilla_core::Dialect;
    let my = flotilla_testkit::MariaDb::start().await?;
    let dir = migrations(&[
        (
            "0001_a.sql",
            &revision(
                "0001_a",
                None,
                "CREATE TABLE a (id INT PRIMARY KEY);",
                "DROP TABLE a;",
            ),
        ),
        (
            "0002_b.sql",
            &revision(
                "0002_b",
                Some("0001_a"),
                "ALTER TABLE missing ADD COLUMN x INT;",
                "SELECT 1;",
            ),
        ),
    ])?;
    let targets = vec![
        target("m1", Dialect::Mysql, &my.fresh_database().await?, &[]),
        target("m2", Dialect::Mysql, &my.fresh_database().await?, &[]),
    ];
    let (_s, lite) = sqlite_targets("s", 1)?;
    let agent = TestAgent::start("agent-my", targets).await?;
    let lite_agent = TestAgent::start("agent-lite", lite).await?;
    let coord = TestCoordinator::start(dir.path(), &[&agent, &lite_agent], None).await?;
    let addr = coord.address.clone();
    let cli = |args: Vec<&str>| {
        let mut full = vec!["--output", "json"];
        full.extend(args);
        let full: Vec<String> = full.into_iter().map(str::to_owned).collect();
        let addr = addr.clone();
        async move {
            let mut v: Vec<&str> = full.iter().map(String::as_str).collect();
            v.extend(["--coordinator", addr.as_str()]);
            run_cli(&v, None).await
        }
    };

    // MySQL DDL cannot roll back: both targets end dirty at 0002_b.
    let r = coord
        .rollout(RolloutSpec {
            canary: 0,
            failure_budget: flotilla_coordinator::rollout::Budget::Count(2),
            selector: flotilla_coordinator::rollout::Selector::parse("dialect=mysql")
                .map_err(anyhow::Error::msg)?,
            ..spec("head")
        })
        .await?;
    assert_eq!(state(&r), pb::RolloutState::CompletedWithFailures, "{r:#?}");
    assert!(
        r.targets.iter().all(|t| t.message.contains("dirty")),
        "{r:#?}"
    );

    let (code, out, err) = cli(vec!["validate", "-l", "dialect=mysql"]).await?;
    assert_eq!(
        code, 3,
        "validate must report the dirty targets: {out}{err}"
    );
    let v: Value = serde_json::from_str(&out)?;
    let kinds: Vec<String> = v["targets"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|t| t["issues"].as_array().cloned().unwrap_or_default())
        .map(|i| i["kind"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(kinds, ["ISSUE_KIND_DIRTY", "ISSUE_KIND_DIRTY"], "{v}");

    // The step did not apply on m1; say so. On m2 the operator fixed it by hand: applied.
    let (code, out, err) = cli(vec!["repair", "--target", "m1", "--not-applied"]).await?;
    assert_eq!(code, 0, "{out}{err}");
    let t: Value = serde_json::from_str(&out)?;
    assert_eq!(t["dirty"], false);
    assert_eq!(t["heads"], serde_json::json!(["0001_a"]));
    let (code, out, err) = cli(vec!["repair", "--target", "m2", "--applied"]).await?;
    assert_eq!(code, 0, "{out}{err}");
    let t: Value = serde_json::from_str(&out)?;
    assert_eq!(t["applied"], serde_json::json!(["0001_a", "0002_b"]));
    let (code, out, _) = cli(vec!["validate", "-l", "dialect=mysql"]).await?;
    assert_eq!(code, 0, "no drift left: {out}");

    // Stamp records revisions without running them.
    let (code, out, err) = cli(vec!["stamp", "--target", "s01", "--revision", "0002_b"]).await?;
    assert_eq!(code, 0, "{out}{err}");
    let t: Value = serde_json::from_str(&out)?;
    assert_eq!(t["applied"], serde_json::json!(["0001_a", "0002_b"]));
    let (_, out, _) = cli(vec!["history", "--target", "s01"]).await?;
    let h: Value = serde_json::from_str(&out)?;
    let statuses: Vec<&str> = h["history"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["status"].as_str())
        .collect();
    assert_eq!(statuses, ["stamped", "stamped"], "{h}");
    Ok(())
}
