//! Migration sets on the etcd backend: a standby that takes over mid-rollout plans with the
//! rollout's set from the store, an upload sent to a standby is stored by the leader, and a
//! set of 2,000 revisions (20 MB of SQL) is stored in chunks under etcd's value limit.

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

use super::{digest_of, dir_of, p, set_a, set_a_plus_new};
use crate::harness::*;

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
