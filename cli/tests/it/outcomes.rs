//! Rollout outcomes a pipeline can trust: a downgrade that would block targets is refused up
//! front (exit 6, nothing touched); with `--allow-blocked` the rest proceed and the rollout
//! ends `blocked` (exit 6). Times print as RFC 3339.

use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use flotilla_coordinator::rollout::{RolloutSpec, Selector};
use flotilla_proto as pb;
use serde_json::Value;

use crate::harness::*;

/// 0001 → 0002 → 0003_irreversible (no down), and 0002 → 0004_reversible: two heads.
fn branchy_set() -> Result<tempfile::TempDir> {
    let irreversible = "-- revision: 0003_irreversible\n-- revises: 0002_b\n\
                        -- migrate:up\nCREATE TABLE c (id INTEGER PRIMARY KEY);\n";
    migrations(&[
        (
            "0001_a.sql",
            &revision(
                "0001_a",
                None,
                "CREATE TABLE a (id INTEGER);",
                "DROP TABLE a;",
            ),
        ),
        (
            "0002_b.sql",
            &revision(
                "0002_b",
                Some("0001_a"),
                "CREATE TABLE b (id INTEGER);",
                "DROP TABLE b;",
            ),
        ),
        ("0003_irreversible.sql", irreversible),
        (
            "0004_reversible.sql",
            &revision(
                "0004_reversible",
                Some("0002_b"),
                "CREATE TABLE d (id INTEGER);",
                "DROP TABLE d;",
            ),
        ),
    ])
}

fn only(goal: &str, ids: &[&str]) -> RolloutSpec {
    RolloutSpec {
        selector: Selector {
            target_ids: ids.iter().map(|s| (*s).to_owned()).collect(),
            ..Selector::default()
        },
        ..spec(goal)
    }
}

/// Every whitespace-separated token of `text` that parses as an RFC 3339 time.
fn rfc3339_times(text: &str) -> Vec<SystemTime> {
    text.split_whitespace()
        .filter_map(|w| humantime::parse_rfc3339(w).ok())
        .collect()
}

/// A time within the last hour (the test's own doing), not the epoch or a raw number.
fn recent(t: SystemTime) -> bool {
    SystemTime::now()
        .duration_since(t)
        .is_ok_and(|d| d < Duration::from_secs(3600))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocking_downgrade_is_refused_then_allowed_and_ends_blocked() -> Result<()> {
    let dir = branchy_set()?;
    let (_t, targets) = sqlite_targets("t", 4)?;
    let agent = TestAgent::start("agent", targets).await?;
    let coord = TestCoordinator::start(dir.path(), &[&agent], None).await?;
    let addr = coord.address.clone();
    // t01 takes the reversible branch; t02..t04 the irreversible one.
    let r = coord.rollout(only("0004_reversible", &["t01"])).await?;
    assert_eq!(state(&r), pb::RolloutState::Succeeded, "{r:#?}");
    let r = coord
        .rollout(only("0003_irreversible", &["t02", "t03", "t04"]))
        .await?;
    assert_eq!(state(&r), pb::RolloutState::Succeeded, "{r:#?}");
    let before = agent.statuses(true).await?;

    // Down to 0002_b: three of four targets would have to undo 0003_irreversible.
    let down = [
        "rollout",
        "start",
        "--coordinator",
        &addr,
        "--to",
        "0002_b",
        "--allow-downgrade",
        "--wait",
    ];
    let (code, out, err) = run_cli(&down, None).await?;
    assert_eq!(code, 6, "refused up front: {out}{err}");
    for want in [
        "3 of the 4 selected targets",
        "t02",
        "t04",
        "0003_irreversible",
        "--allow-blocked",
    ] {
        assert!(err.contains(want), "{want:?} missing from: {err}");
    }
    assert!(!err.contains("t01:"), "t01 can go down: {err}");
    assert_eq!(
        agent.statuses(true).await?,
        before,
        "nothing may be touched"
    );
    let mut c = coord.client().await?;
    let listed = c
        .list_rollouts(pb::ListRolloutsRequest {
            project: Default::default(),
            limit: 0,
        })
        .await?
        .into_inner();
    assert_eq!(
        listed.rollouts.len(),
        2,
        "no rollout was recorded: {listed:?}"
    );

    // With --allow-blocked the rest proceed; the rollout ends `blocked`, exit 6.
    let mut allowed = vec!["--output", "json"];
    allowed.extend(down);
    allowed.push("--allow-blocked");
    let (code, out, err) = run_cli(&allowed, None).await?;
    assert_eq!(code, 6, "ends blocked: {out}{err}");
    let v: Value = serde_json::from_str(&out).with_context(|| out.clone())?;
    assert_eq!(v["state"], "blocked", "{v}");
    let states: Vec<(String, String)> = v["targets"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            (
                t["target"].as_str().unwrap_or("").to_owned(),
                t["state"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    assert_eq!(
        states,
        [
            ("t01".to_owned(), "succeeded".to_owned()),
            ("t02".to_owned(), "blocked".to_owned()),
            ("t03".to_owned(), "blocked".to_owned()),
            ("t04".to_owned(), "blocked".to_owned()),
        ],
        "{v}"
    );
    let after = agent.statuses(true).await?;
    assert_eq!(applied(&after["t01"]), ["0001_a", "0002_b"]);
    for id in ["t02", "t03", "t04"] {
        assert_eq!(after[id], before[id], "{id} was touched");
    }

    // Times are RFC 3339: rollout list (human and JSON) and history.
    let (code, out, err) = run_cli(&["rollout", "list", "--coordinator", &addr], None).await?;
    assert_eq!(code, 0, "{err}");
    let times = rfc3339_times(&out);
    assert_eq!(times.len(), 3, "one CREATED time per rollout: {out}");
    assert!(times.into_iter().all(recent), "{out}");
    assert!(
        !out.contains(" 17") && !out.contains(" 18"),
        "epoch milliseconds: {out}"
    );
    let (_, out, _) = run_cli(
        &[
            "--output",
            "json",
            "rollout",
            "list",
            "--coordinator",
            &addr,
        ],
        None,
    )
    .await?;
    let list: Value = serde_json::from_str(&out)?;
    for r in list.as_array().into_iter().flatten() {
        let at = r["created_at"].as_str().context("created_at")?;
        assert!(humantime::parse_rfc3339(at).is_ok_and(recent), "{r}");
        assert!(
            r["created_at_unix_ms"].as_i64().is_some_and(|ms| ms > 0),
            "{r}"
        );
    }
    let (code, out, err) = run_cli(
        &["history", "--coordinator", &addr, "--target", "t01"],
        None,
    )
    .await?;
    assert_eq!(code, 0, "{err}");
    let times = rfc3339_times(&out);
    assert_eq!(times.len(), 4, "3 up rows and 1 down row: {out}");
    assert!(times.into_iter().all(recent), "{out}");
    let (_, out, _) = run_cli(
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
    let h: Value = serde_json::from_str(&out)?;
    for row in h["history"].as_array().into_iter().flatten() {
        let at = row["applied_at"].as_str().context("applied_at")?;
        assert!(humantime::parse_rfc3339(at).is_ok_and(recent), "{row}");
    }
    Ok(())
}
