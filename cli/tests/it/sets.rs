//! Migration sets travel with the command (issue 26): the CLI uploads the set of its
//! `--migrations` when the coordinator lacks it and plans with its digest. A new revision
//! rolls out without a coordinator restart, a standby that takes over mid-rollout reads the
//! rollout's set from etcd, a broken set is refused at upload (file:line) and nothing runs,
//! and a set of 2,000 revisions is stored in chunks under etcd's value limit.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use flotilla_coordinator::backend::{BackendConfig, open_backend};
use flotilla_coordinator::sets::{CHUNK_BYTES, chunk_key, read};
use flotilla_proto as pb;
use flotilla_proto::coordinator_service_client::CoordinatorServiceClient;
use flotilla_revision::Bundle;
use flotilla_testkit::{Etcd, eventually};
use serde_json::Value;
use tonic::transport::Channel;

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
        .list_rollouts(pb::ListRolloutsRequest { limit: 10 })
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
        .list_rollouts(pb::ListRolloutsRequest { limit: 10 })
        .await?
        .into_inner();
    assert!(list.rollouts.is_empty(), "{list:#?}");
    for (id, revs) in applied_everywhere(&agent).await? {
        assert!(revs.is_empty(), "{id}: {revs:?}");
    }
    Ok(())
}

/// A `flotilla coordinator` process on etcd started with `set`.
fn coordinator_process(
    etcd: &Etcd,
    prefix: &str,
    dir: &Path,
    set: &Path,
    fleet: &Path,
    name: &str,
) -> Result<(Subprocess, String)> {
    let listen = free_addr();
    let proc = Subprocess::spawn(
        &[
            "--migrations",
            p(set)?,
            "coordinator",
            "--listen",
            &listen,
            "--etcd",
            &etcd.endpoint(),
            "--etcd-prefix",
            prefix,
            "--lease-ttl",
            "2s",
            "--fleet",
            p(fleet)?,
            "--id",
            name,
        ],
        dir,
        name,
    )?;
    Ok((proc, format!("http://{listen}")))
}

async fn connect(addr: &str) -> Result<CoordinatorServiceClient<Channel>> {
    eventually("coordinator api up", Duration::from_secs(30), || async {
        Ok(CoordinatorServiceClient::connect(addr.to_owned())
            .await
            .ok())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_standby_that_takes_over_mid_rollout_has_the_rollouts_set() -> Result<()> {
    let etcd = Etcd::start().await?;
    let prefix = format!("/flotilla-sets-{}", uuid::Uuid::new_v4());
    let dir = tempfile::tempdir()?;
    let a = dir_of(&set_a())?;
    let b = dir_of(&set_a_plus_new(true))?;
    let (_t, targets) = sqlite_targets("t", 8)?;
    let (left, right) = targets.split_at(4);
    let agents = [
        TestAgent::start("agent-a", left.to_vec()).await?,
        TestAgent::start("agent-b", right.to_vec()).await?,
    ];
    let fleet = fleet_file(dir.path(), &agents.iter().collect::<Vec<_>>())?;

    let (mut leader, leader_addr) =
        coordinator_process(&etcd, &prefix, dir.path(), a.path(), &fleet, "coord-a")?;
    let cl = connect(&leader_addr).await?;
    // Started through the CLI with set B, which neither coordinator was started with.
    let start = || async {
        run_cli(
            &[
                "--migrations",
                p(b.path())?,
                "--output",
                "json",
                "rollout",
                "start",
                "--coordinator",
                &leader_addr,
                "--to",
                "head",
                "--canary",
                "0",
                "--max-parallel",
                "1",
            ],
            None,
        )
        .await
    };
    let started: Value = eventually(
        "the leader starts the rollout",
        Duration::from_secs(30),
        || async {
            let (code, out, err) = start().await?;
            if code == 0 {
                return Ok(Some(serde_json::from_str::<Value>(&out)?));
            }
            if err.contains("NOT_LEADER") {
                return Ok(None);
            }
            bail!("rollout start: {out}{err}")
        },
    )
    .await?;
    let id = started["id"].as_str().context("rollout id")?.to_owned();
    let token = started["fencing_token"].as_u64().context("token")?;
    let (standby, standby_addr) =
        coordinator_process(&etcd, &prefix, dir.path(), a.path(), &fleet, "coord-b")?;
    let cs = connect(&standby_addr).await?;
    rollout_when(
        &cl,
        &id,
        "2 targets succeeded",
        Duration::from_secs(60),
        |r| targets_in(r, pb::TargetState::Succeeded).len() >= 2,
    )
    .await?;

    signal(leader.pid()?, "KILL")?;
    let _ = leader.child.wait().await;
    eventually("the standby takes over", Duration::from_secs(30), || {
        let mut cs = cs.clone();
        let id = id.clone();
        async move {
            Ok(match cs.get_rollout(pb::GetRolloutRequest { id }).await {
                Ok(r) => (r.get_ref().fencing_token > token).then_some(()),
                Err(_) => None,
            })
        }
    })
    .await?;
    let mut cs2 = cs.clone();
    let end = follow_to_end(&mut cs2, &id).await?;
    assert_eq!(
        state(&end),
        pb::RolloutState::Succeeded,
        "{end:#?}\n{}",
        standby.log_text()
    );
    assert_eq!(end.set_digest, digest_of(b.path())?);
    // A target the killed leader finished but had not recorded yet is found at the goal
    // by the standby (skipped); every other one succeeded, none failed.
    let done = targets_in(&end, pb::TargetState::Succeeded).len()
        + targets_in(&end, pb::TargetState::Skipped).len();
    assert_eq!(done, 8, "{end:#?}");
    for agent in &agents {
        for (tid, s) in agent.statuses(true).await? {
            assert_eq!(applied(&s), vec!["0001_base", "0002_new"], "{tid}");
            let new = s
                .history
                .iter()
                .filter(|h| h.revision == "0002_new" && h.status == "applied")
                .count();
            assert_eq!(new, 1, "{tid}: 0002_new applied {new} times");
        }
    }
    Ok(())
}

/// `n` revisions in a chain, each with about `pad` bytes of SQL.
fn chain(n: usize, pad: usize) -> Result<tempfile::TempDir> {
    let dir = tempfile::tempdir()?;
    let comment = format!("-- {}\n", "x".repeat(pad.saturating_sub(4)));
    for i in 1..=n {
        let id = format!("r{i:05}");
        let parent = (i > 1).then(|| format!("r{:05}", i - 1));
        let text = revision(
            &id,
            parent.as_deref(),
            &format!("{comment}CREATE TABLE t{i} (id INTEGER);"),
            &format!("DROP TABLE t{i};"),
        );
        std::fs::write(dir.path().join(format!("{id}.sql")), text)?;
    }
    Ok(dir)
}

/// 2,000 revisions, 20 MB of SQL (issue 26's size): uploaded, stored on etcd, planned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_of_2000_revisions_is_stored_in_chunks_on_etcd_and_read_back_intact() -> Result<()> {
    let etcd = Etcd::start().await?;
    let prefix = format!("/flotilla-sets-{}", uuid::Uuid::new_v4());
    let a = dir_of(&set_a())?;
    let big = chain(2000, 10_000)?;
    let bundle = Bundle::load_dir(big.path()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let encoded = bundle.encode();
    assert!(
        encoded.len() > 20_000_000,
        "the set must exceed etcd's 1.5 MiB value limit: {} bytes",
        encoded.len()
    );
    let (_t, targets) = sqlite_targets("t", 2)?;
    let agent = TestAgent::start("agent", targets).await?;
    let entries = vec![(agent.id.clone(), agent.address.clone())];
    let coord =
        TestCoordinator::start_opts(a.path(), &entries, Some(&etcd.endpoint()), &prefix, true)
            .await?;

    let started = std::time::Instant::now();
    let (code, out, err) = run_cli(
        &[
            "--migrations",
            p(big.path())?,
            "--output",
            "json",
            "plan",
            "--coordinator",
            &coord.address,
            "--to",
            "head",
        ],
        None,
    )
    .await?;
    assert_eq!(code, 0, "{err}");
    eprintln!(
        "2,000 revisions, {} bytes encoded, {} chunks: upload + plan in {:?}",
        encoded.len(),
        encoded.len().div_ceil(CHUNK_BYTES),
        started.elapsed()
    );
    let plan: Value = serde_json::from_str(&out)?;
    let digest = bundle.digest();
    assert_eq!(plan["set_digest"], Value::from(digest.clone()));
    for t in plan["targets"].as_array().context("targets")? {
        assert_eq!(
            t["steps"].as_array().map(Vec::len),
            Some(2000),
            "{}",
            t["target"]
        );
    }

    // In etcd: chunks under the value limit, and the set reads back byte for byte.
    let (_lock, store) = open_backend(&BackendConfig {
        etcd_endpoints: vec![etcd.endpoint()],
        prefix: prefix.clone(),
        lease_ttl: Duration::from_secs(5),
        state_dir: tempfile::tempdir()?.path().join("unused"),
        holder_id: "probe".into(),
    })
    .await?;
    // (Chunk by chunk: one range read of the whole set would pass etcd's 4 MiB response
    // limit, which is why the coordinator reads them so too.)
    let n = encoded.len().div_ceil(CHUNK_BYTES) as u32;
    assert!(n >= 39, "{n} chunks");
    for i in 0..n {
        let chunk = store
            .get(&chunk_key(&digest, i))
            .await?
            .with_context(|| format!("chunk {i} of {n}"))?;
        assert!(
            chunk.len() <= CHUNK_BYTES,
            "chunk {i}: {} bytes",
            chunk.len()
        );
    }
    assert!(store.get(&chunk_key(&digest, n)).await?.is_none());
    let (manifest, back) = read(store.as_ref(), &digest)
        .await?
        .context("the set is stored")?;
    assert_eq!(manifest.revisions, 2000);
    assert!(
        back == encoded,
        "the stored set differs from the uploaded one"
    );
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_sent_to_a_standby_is_stored_by_the_leader() -> Result<()> {
    let etcd = Etcd::start().await?;
    let prefix = format!("/flotilla-sets-{}", uuid::Uuid::new_v4());
    let a = dir_of(&set_a())?;
    let b = dir_of(&set_a_plus_new(false))?;
    let (_t, targets) = sqlite_targets("t", 2)?;
    let agent = TestAgent::start("agent", targets).await?;
    let entries = vec![(agent.id.clone(), agent.address.clone())];
    let leader =
        TestCoordinator::start_opts(a.path(), &entries, Some(&etcd.endpoint()), &prefix, true)
            .await?;
    let standby =
        TestCoordinator::start_opts(a.path(), &entries, Some(&etcd.endpoint()), &prefix, false)
            .await?;
    assert!(
        standby.engine.term().is_none(),
        "the second coordinator stands by"
    );

    let (code, out, err) = run_cli(
        &[
            "--migrations",
            p(b.path())?,
            "--output",
            "json",
            "plan",
            "--coordinator",
            &standby.address,
            "--to",
            "head",
        ],
        None,
    )
    .await?;
    assert_eq!(code, 0, "{out}{err}");
    let plan: Value = serde_json::from_str(&out)?;
    let digest = digest_of(b.path())?;
    assert_eq!(plan["set_digest"], Value::from(digest.clone()));
    for t in plan["targets"].as_array().context("targets")? {
        assert_eq!(t["steps"].as_array().map(Vec::len), Some(2), "{t}");
    }
    let has = leader
        .client()
        .await?
        .has_set(pb::HasSetRequest { digest })
        .await?
        .into_inner();
    assert!(
        has.present,
        "the leader stored the set the standby forwarded"
    );
    Ok(())
}
