//! Schema drift that means drift: a target altered by hand at the same revisions as the
//! others is named by `validate` (exit 3) with the exact column / index, counted by the
//! `flotilla_fleet_drift_targets` metric and marked in `status`; the wave gate stops a
//! rollout whose later wave's schema differs from the canary's, with the diff.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use flotilla_proto as pb;
use flotilla_testkit::{eventually, free_port};
use serde_json::Value;

use crate::harness::*;
use crate::observability::{sample, scrape};

const DEADLINE: Duration = Duration::from_secs(60);

fn accounts_set() -> Result<tempfile::TempDir> {
    migrations(&[
        (
            "0001_accounts.sql",
            &revision(
                "0001_accounts",
                None,
                "CREATE TABLE accounts (id INTEGER PRIMARY KEY, email TEXT NOT NULL);\n\
                 CREATE INDEX accounts_email ON accounts (email);",
                "DROP TABLE accounts;",
            ),
        ),
        (
            "0002_notes.sql",
            &revision(
                "0002_notes",
                Some("0001_accounts"),
                "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT);",
                "DROP TABLE notes;",
            ),
        ),
    ])
}

/// Run SQL on one SQLite target file by hand, as an operator would.
async fn by_hand(db: &Path, sql: &'static str) -> Result<()> {
    let opts = sqlx::sqlite::SqliteConnectOptions::new().filename(db);
    let mut conn = sqlx::ConnectOptions::connect(&opts).await?;
    sqlx::Executor::execute(&mut conn, sql).await?;
    sqlx::Connection::close(conn).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_altered_target_is_drift_in_validate_status_and_the_metric() -> Result<()> {
    let dir = accounts_set()?;
    let (tdir, targets) = sqlite_targets("t", 3)?;
    let agent = TestAgent::start("agent", targets).await?;
    let work = tempfile::tempdir()?;
    let fleet = fleet_file(work.path(), &[&agent])?;
    let (listen, metrics_port) = (free_addr(), free_port());
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let state = work.path().join("state");
    let path = |p: &Path| p.to_str().map(str::to_owned).context("utf-8 path");
    let _coordinator = Subprocess::spawn(
        &[
            "--migrations",
            &path(dir.path())?,
            "coordinator",
            "--listen",
            &listen,
            "--state-dir",
            &path(&state)?,
            "--fleet",
            &path(&fleet)?,
            "--metrics-addr",
            &metrics_addr,
        ],
        work.path(),
        "coordinator",
    )?;
    let addr = format!("http://{listen}");
    let cli = |args: &[&str]| {
        let mut v: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
        v.extend(["--coordinator".to_owned(), addr.clone()]);
        async move {
            let v: Vec<&str> = v.iter().map(String::as_str).collect();
            run_cli(&v, None).await
        }
    };
    eventually("the coordinator to answer", DEADLINE, || async {
        Ok((cli(&["status"]).await?.0 == 0).then_some(()))
    })
    .await?;
    let (code, out, err) = cli(&["rollout", "start", "--wait"]).await?;
    assert_eq!(code, 0, "{out}{err}");
    let drift_metric = || async move {
        let text = scrape(metrics_port).await?;
        Ok::<_, anyhow::Error>(sample(&text, "flotilla_fleet_drift_targets", &[]))
    };
    let (code, out, err) = cli(&["validate"]).await?;
    assert_eq!(code, 0, "identical schemas at one revision: {out}{err}");
    assert!(out.contains("no drift"), "{out}");
    assert_eq!(drift_metric().await?, Some(0.0));

    // The classic drift: a column added by hand at the same revision as the others.
    let t02 = tdir.path().join("t02.db");
    by_hand(&t02, "ALTER TABLE accounts ADD COLUMN extra int").await?;
    let (code, out, err) = cli(&["validate"]).await?;
    assert_eq!(code, 3, "{out}{err}");
    assert!(
        out.contains("t02: schema differs from t01")
            && out.contains("table accounts: column extra added (int)"),
        "{out}"
    );
    assert!(!out.contains("no drift"), "{out}");
    let (code, out, _) = cli(&["--output", "json", "validate"]).await?;
    assert_eq!(code, 3);
    let v: Value = serde_json::from_str(&out)?;
    let drift = v["schema_drift"].as_array().cloned().unwrap_or_default();
    assert_eq!(drift.len(), 1, "{v}");
    assert_eq!(drift[0]["target"], "t02");
    assert_eq!(drift[0]["reference_target"], "t01");
    let change = &drift[0]["changes"][0];
    assert_eq!(
        (
            &change["table"],
            &change["object"],
            &change["name"],
            &change["change"]
        ),
        (
            &Value::from("accounts"),
            &Value::from("column"),
            &Value::from("extra"),
            &Value::from("added")
        ),
        "{v}"
    );
    assert_eq!(drift_metric().await?, Some(1.0), "validate sets the metric");

    // status marks it (table and JSON), and sets the metric the same way.
    let (code, out, err) = cli(&["status"]).await?;
    assert_eq!(code, 0, "{err}");
    let t02_line = out
        .lines()
        .find(|l| l.starts_with("t02"))
        .context("t02 row")?;
    assert!(
        t02_line.contains("schema differs from t01's: table accounts: column extra added"),
        "{out}"
    );
    assert!(
        out.lines()
            .filter(|l| l.starts_with("t01") || l.starts_with("t03"))
            .all(|l| l.trim_end().ends_with('-')),
        "only t02 drifts: {out}"
    );
    let (_, out, _) = cli(&["--output", "json", "status"]).await?;
    let v: Value = serde_json::from_str(&out)?;
    let drifts: Vec<(String, usize)> = v["targets"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            let n = t["drift"].as_array().map(Vec::len).unwrap_or(0);
            (t["target"].as_str().unwrap_or("").to_owned(), n)
        })
        .collect();
    assert_eq!(
        drifts,
        [
            ("t01".to_owned(), 0),
            ("t02".to_owned(), 1),
            ("t03".to_owned(), 0)
        ],
        "{v}"
    );
    assert_eq!(drift_metric().await?, Some(1.0), "status says the same");

    // Undone, there is no drift; then, separately, an index dropped by hand.
    by_hand(&t02, "ALTER TABLE accounts DROP COLUMN extra").await?;
    let (code, out, err) = cli(&["validate"]).await?;
    assert_eq!(code, 0, "the column is gone again: {out}{err}");
    assert_eq!(drift_metric().await?, Some(0.0));
    by_hand(&t02, "DROP INDEX accounts_email").await?;
    let (code, out, err) = cli(&["validate"]).await?;
    assert_eq!(code, 3, "{out}{err}");
    assert!(
        out.contains("t02: schema differs from t01")
            && out.contains("table accounts: index accounts_email removed (on (email))"),
        "{out}"
    );
    assert_eq!(drift_metric().await?, Some(1.0));
    let (_, out, _) = cli(&["status"]).await?;
    let t02_line = out
        .lines()
        .find(|l| l.starts_with("t02"))
        .context("t02 row")?;
    assert!(t02_line.contains("index accounts_email removed"), "{out}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wave_gate_stops_a_rollout_whose_later_wave_differs_from_the_canary() -> Result<()> {
    let dir = accounts_set()?;
    let (tdir, targets) = sqlite_targets("t", 3)?;
    let agent = TestAgent::start("agent", targets).await?;
    let coord = TestCoordinator::start(dir.path(), &[&agent], None).await?;
    let r = coord.rollout(spec("0001_accounts")).await?;
    assert_eq!(state(&r), pb::RolloutState::Succeeded, "{r:#?}");
    // t03 was altered by hand: after the next migration its schema is not the canary's.
    by_hand(
        &tdir.path().join("t03.db"),
        "ALTER TABLE accounts ADD COLUMN extra int",
    )
    .await?;
    let r = coord.rollout(spec("0002_notes")).await?;
    assert_eq!(state(&r), pb::RolloutState::Halted, "{r:#?}");
    assert!(
        r.message.contains("fingerprint gate after wave 1")
            && r.message
                .contains("t03 differs from t01: table accounts: column extra added (int)"),
        "{}",
        r.message
    );
    assert!(!r.message.contains("t02 differs"), "{}", r.message);
    Ok(())
}
