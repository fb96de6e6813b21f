//! The `flotilla` binary as users run it: `wait` for init containers, `status`/`history`
//! JSON, and `demo` on a fresh directory (twice: the second run has nothing to do).

use anyhow::Result;
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
