//! Migration sets travel with the command (issue 26): the CLI uploads the set of its
//! `--migrations` when the coordinator lacks it and plans with its digest. A new revision
//! rolls out without a coordinator restart, a broken set is refused at upload (file:line)
//! and nothing runs, old sets are collected, and a coordinator needs no set of its own.
//! `sets/etcd.rs`: takeover, forwarding and a 2,000-revision set on etcd.

mod etcd;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use flotilla_coordinator::backend::BackendConfig;
use flotilla_proto as pb;
use flotilla_revision::Bundle;
use serde_json::Value;

use crate::harness::*;

fn p(path: &Path) -> Result<&str> {
    path.to_str().context("non-utf8 temp path")
}

/// Set A: one quick revision.
fn set_a() -> Vec<(String, String)> {
    vec![(
        "0001_base.sql".into(),
        revision(
            "0001_base",
            None,
            "CREATE TABLE base (id INTEGER);",
            "DROP TABLE base;",
        ),
    )]
}

/// Set A plus a revision the coordinator was not started with; `slow` burns CPU in it so
/// each target takes a while.
fn set_a_plus_new(slow: bool) -> Vec<(String, String)> {
    let burn = if slow {
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 400000) \
         SELECT count(*) FROM c;\n"
    } else {
        ""
    };
    let mut files = set_a();
    files.push((
        "0002_new.sql".into(),
        revision(
            "0002_new",
            Some("0001_base"),
            &format!("{burn}CREATE TABLE new_one (id INTEGER);"),
            "DROP TABLE new_one;",
        ),
    ));
    files
}

fn dir_of(files: &[(String, String)]) -> Result<tempfile::TempDir> {
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(n, c)| (n.as_str(), c.as_str()))
        .collect();
    migrations(&refs)
}

fn digest_of(dir: &Path) -> Result<String> {
    Ok(Bundle::load_dir(dir)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .digest())
}

async fn applied_everywhere(agent: &TestAgent) -> Result<BTreeMap<String, Vec<String>>> {
    Ok(agent
        .statuses(false)
        .await?
        .into_iter()
        .map(|(id, s)| (id, applied(&s)))
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_revision_in_the_clis_set_rolls_out_without_a_coordinator_restart() -> Result<()> {
    let a = dir_of(&set_a())?;
    let b = dir_of(&set_a_plus_new(false))?;
    let (_t, targets) = sqlite_targets("t", 3)?;
    let agent = TestAgent::start("agent", targets).await?;
    let coord = TestCoordinator::start(a.path(), &[&agent], None).await?;

    // The coordinator's own set does not know 0002_new; the CLI's does.
    let (code, out, err) = run_cli(
        &[
            "--migrations",
            p(b.path())?,
            "--output",
            "json",
            "rollout",
            "start",
            "--coordinator",
            &coord.address,
            "--to",
            "head",
            "--wait",
        ],
        None,
    )
    .await?;
    assert_eq!(code, 0, "{out}{err}");
    for (id, revs) in applied_everywhere(&agent).await? {
        assert_eq!(revs, vec!["0001_base", "0002_new"], "{id}");
    }

    // The rollout records the set's digest; `rollout get` and `rollout list` show it.
    let digest = digest_of(b.path())?;
    let mut c = coord.client().await?;
    let list = c
        .list_rollouts(pb::ListRolloutsRequest {
            limit: 10,
            ..Default::default()
        })
        .await?
        .into_inner();
    let [rollout] = list.rollouts.as_slice() else {
        bail!("one rollout expected: {list:#?}");
    };
    assert_eq!(rollout.set_digest, digest);
    let (code, out, err) = run_cli(
        &[
            "rollout",
            "get",
            "--coordinator",
            &coord.address,
            &rollout.id,
        ],
        None,
    )
    .await?;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("set: {digest}")), "{out}");
    let (code, out, err) = run_cli(
        &[
            "--output",
            "json",
            "rollout",
            "get",
            "--coordinator",
            &coord.address,
            &rollout.id,
        ],
        None,
    )
    .await?;
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out)?;
    assert_eq!(v["set_digest"], Value::from(digest.clone()), "{v}");
    let (code, out, err) =
        run_cli(&["rollout", "list", "--coordinator", &coord.address], None).await?;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("SET") && out.contains(&digest[..12]), "{out}");

    // A command with the coordinator's own set (A) plans with A: status shows A's head.
    let (code, out, err) = run_cli(
        &[
            "--migrations",
            p(a.path())?,
            "--output",
            "json",
            "status",
            "--coordinator",
            &coord.address,
        ],
        None,
    )
    .await?;
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out)?;
    assert_eq!(v["graph_heads"], serde_json::json!(["0001_base"]), "{v}");
    assert_eq!(v["set_digest"], Value::from(digest_of(a.path())?), "{v}");
    // `--migrations=` names no set: the coordinator's default (A).
    let (code, out, err) = run_cli(
        &[
            "--migrations=",
            "--output",
            "json",
            "status",
            "--coordinator",
            &coord.address,
        ],
        None,
    )
    .await?;
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out)?;
    assert_eq!(v["set_digest"], Value::from(digest_of(a.path())?), "{v}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_set_is_refused_at_upload_with_file_and_line_and_nothing_runs() -> Result<()> {
    let a = dir_of(&set_a())?;
    let mut files = set_a_plus_new(false);
    files.push((
        "0003_broken.sql".into(),
        "-- revision: 0003_broken\n-- revises: 0002_new\n-- colour: blue\n-- migrate:up\nSELECT 1;\n"
            .into(),
    ));
    let broken = dir_of(&files)?;
    let (_t, targets) = sqlite_targets("t", 2)?;
    let agent = TestAgent::start("agent", targets).await?;
    let coord = TestCoordinator::start(a.path(), &[&agent], None).await?;

    let (code, out, err) = run_cli(
        &[
            "--migrations",
            p(broken.path())?,
            "rollout",
            "start",
            "--coordinator",
            &coord.address,
            "--to",
            "head",
            "--wait",
        ],
        None,
    )
    .await?;
    assert_ne!(code, 0, "{out}{err}");
    assert!(
        err.contains("SET_INVALID") && err.contains("0003_broken.sql:3"),
        "the refusal names the file and line: {err}"
    );
    // Nothing was stored, nothing started, nothing ran.
    let mut c = coord.client().await?;
    let has = c
        .has_set(pb::HasSetRequest {
            digest: digest_of(broken.path())?,
        })
        .await?
        .into_inner();
    assert!(!has.present);
    let list = c
        .list_rollouts(pb::ListRolloutsRequest {
            limit: 10,
            ..Default::default()
        })
        .await?
        .into_inner();
    assert!(list.rollouts.is_empty(), "{list:#?}");
    for (id, revs) in applied_everywhere(&agent).await? {
        assert!(revs.is_empty(), "{id}: {revs:?}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sets_no_rollout_names_are_collected_keeping_the_newest() -> Result<()> {
    let a = dir_of(&set_a())?;
    let b = dir_of(&set_a_plus_new(false))?;
    let variant = |table: &str| -> Result<tempfile::TempDir> {
        let mut files = set_a();
        files.push((
            "0002_other.sql".into(),
            revision(
                "0002_other",
                Some("0001_base"),
                &format!("CREATE TABLE {table} (id INTEGER);"),
                &format!("DROP TABLE {table};"),
            ),
        ));
        dir_of(&files)
    };
    let (c_dir, d_dir) = (variant("c")?, variant("d")?);
    let (_t, targets) = sqlite_targets("t", 2)?;
    let agent = TestAgent::start("agent", targets).await?;
    let coord = TestCoordinator::start_tweaked(a.path(), &[&agent], |e| e.keep_sets = 1).await?;
    // B is named by a rollout; C and D only planned with, D last.
    let cli = |dir: &Path, args: &[&str]| {
        let mut all = vec!["--migrations".to_owned(), dir.display().to_string()];
        all.extend(args.iter().map(|s| s.to_string()));
        all.extend(["--coordinator".to_owned(), coord.address.clone()]);
        async move {
            let refs: Vec<&str> = all.iter().map(String::as_str).collect();
            let (code, out, err) = run_cli(&refs, None).await?;
            anyhow::ensure!(code == 0, "{all:?}: {out}{err}");
            Ok(())
        }
    };
    cli(b.path(), &["rollout", "start", "--to", "head", "--wait"]).await?;
    cli(c_dir.path(), &["plan", "--to", "head"]).await?;
    cli(d_dir.path(), &["plan", "--to", "head"]).await?;

    let mut c = coord.client().await?;
    let mut present = BTreeMap::new();
    for (name, dir) in [
        ("a (default)", a.path()),
        ("b (rollout)", b.path()),
        ("c", c_dir.path()),
        ("d (newest)", d_dir.path()),
    ] {
        let has = c
            .has_set(pb::HasSetRequest {
                digest: digest_of(dir)?,
            })
            .await?
            .into_inner();
        present.insert(name, has.present);
    }
    assert_eq!(
        present,
        BTreeMap::from([
            ("a (default)", true),
            ("b (rollout)", true),
            ("c", false),
            ("d (newest)", true),
        ])
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_without_migrations_plans_only_with_uploaded_sets() -> Result<()> {
    use flotilla_coordinator::engine::EngineConfig;
    use flotilla_coordinator::server::{CoordinatorConfig, build, serve};
    use tokio_util::sync::CancellationToken;

    let b = dir_of(&set_a_plus_new(false))?;
    let (_t, targets) = sqlite_targets("t", 2)?;
    let agent = TestAgent::start("agent", targets).await?;
    let dir = tempfile::tempdir()?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = format!("http://{}", listener.local_addr()?);
    let config = CoordinatorConfig {
        migrations: None,
        project_migrations: vec![],
        backend: BackendConfig {
            etcd_endpoints: vec![],
            prefix: "/unused".into(),
            lease_ttl: Duration::from_secs(5),
            state_dir: dir.path().join("state"),
            holder_id: "no-default-set".into(),
        },
        fleet_file: Some(fleet_file(dir.path(), &[&agent])?),
        registration_ttl: Duration::from_secs(3),
        engine: EngineConfig::default(),
        tls: Default::default(),
    };
    let coord = build(&config, vec![], Default::default()).await?;
    let engine = coord.engine.clone();
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(serve(coord, listener, shutdown.clone()));
    let _stop = shutdown.clone().drop_guard();
    tokio::time::timeout(Duration::from_secs(20), engine.wait_leader()).await?;

    // No set named (no ./migrations where the CLI runs) and none by default: a plan is
    // refused, saying what to do.
    let (code, out, err) = run_cli(&["plan", "--coordinator", &address], None).await?;
    assert_ne!(code, 0, "{out}");
    assert!(
        err.contains("NO_SET") && err.contains("--migrations DIR"),
        "the refusal says what to do: {err}"
    );
    // The fleet's state needs no set: status answers without heads or drift, and `wait` for
    // "head" keeps waiting, saying why.
    let (code, out, err) = run_cli(
        &["--output", "json", "status", "--coordinator", &address],
        None,
    )
    .await?;
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out)?;
    assert_eq!(v["targets"].as_array().map(Vec::len), Some(2), "{v}");
    assert_eq!(v["graph_heads"], serde_json::json!([]), "{v}");
    let (code, out, err) = run_cli(
        &[
            "wait",
            "--coordinator",
            &address,
            "--revision",
            "head",
            "--timeout",
            "1s",
            "--interval",
            "100ms",
        ],
        None,
    )
    .await?;
    assert_eq!(code, 5, "{out}{err}");
    assert!(out.contains("no migration set to tell the head"), "{out}");
    // With the CLI's set, everything works: an operator stamp, then a rollout.
    let (code, out, err) = run_cli(
        &[
            "--migrations",
            p(b.path())?,
            "stamp",
            "--coordinator",
            &address,
            "--target",
            "t01",
            "--revision",
            "0001_base",
        ],
        None,
    )
    .await?;
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = run_cli(
        &[
            "--migrations",
            p(b.path())?,
            "rollout",
            "start",
            "--coordinator",
            &address,
            "--to",
            "head",
            "--wait",
            // t01 was stamped (no table created): its schema differs on purpose.
            "--no-fingerprint-gate",
        ],
        None,
    )
    .await?;
    assert_eq!(code, 0, "{out}{err}");
    for (id, revs) in applied_everywhere(&agent).await? {
        assert_eq!(revs, vec!["0001_base", "0002_new"], "{id}");
    }
    let stamped = agent.statuses(true).await?["t01"]
        .history
        .iter()
        .filter(|h| h.revision == "0001_base")
        .map(|h| h.status.clone())
        .collect::<Vec<_>>();
    assert_eq!(
        stamped,
        vec!["stamped"],
        "t01's 0001_base was stamped, not run"
    );
    shutdown.cancel();
    server.await??;
    Ok(())
}
