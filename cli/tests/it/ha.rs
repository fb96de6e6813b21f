//! High availability with real processes: two `flotilla coordinator` processes over a real
//! etcd; the leader is killed (SIGKILL) or frozen (SIGSTOP) mid-rollout; the standby takes
//! the lock, finishes the rollout, and nothing is applied twice; the stale leader is fenced.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use flotilla_coordinator::backend::{BackendConfig, open_backend};
use flotilla_coordinator::rollout::RolloutSpec;
use flotilla_coordinator::store::{StoreError, WriteOp};
use flotilla_proto as pb;
use flotilla_proto::coordinator_service_client::CoordinatorServiceClient;
use flotilla_testkit::{Etcd, eventually};
use tonic::transport::Channel;

use crate::harness::*;

const TTL_SECS: u64 = 2;

/// Two revisions; the first burns CPU so each target takes a while.
fn slow_two() -> Result<tempfile::TempDir> {
    let burn = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 400000) \
                SELECT count(*) FROM c;\nCREATE TABLE slow (id INTEGER PRIMARY KEY);";
    migrations(&[
        (
            "0001_slow.sql",
            &revision("0001_slow", None, burn, "DROP TABLE slow;"),
        ),
        (
            "0002_more.sql",
            &revision(
                "0002_more",
                Some("0001_slow"),
                "CREATE TABLE more (id INTEGER PRIMARY KEY);",
                "DROP TABLE more;",
            ),
        ),
    ])
}

struct Cluster {
    etcd: Etcd,
    prefix: String,
    dir: tempfile::TempDir,
    migrations: tempfile::TempDir,
    _targets: tempfile::TempDir,
    agents: Vec<TestAgent>,
}

impl Cluster {
    async fn start(targets: usize) -> Result<Cluster> {
        let etcd = Etcd::start().await?;
        let (tdir, all) = sqlite_targets("t", targets)?;
        let (a, b) = all.split_at(targets / 2);
        let agents = vec![
            TestAgent::start("agent-a", a.to_vec()).await?,
            TestAgent::start("agent-b", b.to_vec()).await?,
        ];
        Ok(Cluster {
            etcd,
            prefix: format!("/flotilla-ha-{}", uuid::Uuid::new_v4()),
            dir: tempfile::tempdir()?,
            migrations: slow_two()?,
            _targets: tdir,
            agents,
        })
    }

    /// Start a coordinator process; returns it and its API address.
    fn coordinator(&self, name: &str) -> Result<(Subprocess, String)> {
        let fleet = fleet_file(self.dir.path(), &self.agents.iter().collect::<Vec<_>>())?;
        let listen = free_addr();
        let ttl = format!("{TTL_SECS}s");
        let p = Subprocess::spawn(
            &[
                "--migrations",
                path(self.migrations.path())?,
                "coordinator",
                "--listen",
                &listen,
                "--etcd",
                &self.etcd.endpoint(),
                "--etcd-prefix",
                &self.prefix,
                "--lease-ttl",
                &ttl,
                "--fleet",
                path(&fleet)?,
                "--id",
                name,
            ],
            self.dir.path(),
            name,
        )?;
        Ok((p, format!("http://{listen}")))
    }

    async fn histories(&self) -> Result<BTreeMap<String, pb::TargetStatus>> {
        let mut all = BTreeMap::new();
        for a in &self.agents {
            all.extend(a.statuses(true).await?);
        }
        Ok(all)
    }
}

fn path(p: &Path) -> Result<&str> {
    p.to_str().context("non-utf8 temp path")
}

async fn client(addr: &str) -> Result<CoordinatorServiceClient<Channel>> {
    eventually("coordinator api up", Duration::from_secs(30), || async {
        Ok(CoordinatorServiceClient::connect(addr.to_owned())
            .await
            .ok())
    })
    .await
}

/// Start the rollout on the process that leads (retrying while it is not leader yet).
async fn start_rollout(c: &CoordinatorServiceClient<Channel>) -> Result<pb::Rollout> {
    let spec = RolloutSpec {
        canary: 0,
        max_parallel: 1,
        ..spec("head")
    }
    .to_proto();
    eventually(
        "leader accepts the rollout",
        Duration::from_secs(30),
        || {
            let mut c = c.clone();
            let spec = spec.clone();
            async move {
                match c
                    .start_rollout(pb::StartRolloutRequest { spec: Some(spec) })
                    .await
                {
                    Ok(r) => Ok(Some(r.into_inner())),
                    Err(s) if s.message().contains("NOT_LEADER") => Ok(None),
                    Err(s) => bail!("start rollout: {s}"),
                }
            }
        },
    )
    .await
}

async fn succeeded(
    c: &CoordinatorServiceClient<Channel>,
    id: &str,
    n: usize,
) -> Result<pb::Rollout> {
    crate::harness::rollout_when(
        c,
        id,
        &format!("{n} targets succeeded"),
        Duration::from_secs(60),
        |r| targets_in(r, pb::TargetState::Succeeded).len() >= n,
    )
    .await
}

/// Wait until the standby wrote the rollout with its own (larger) token.
async fn taken_over(
    c: &CoordinatorServiceClient<Channel>,
    id: &str,
    old_token: u64,
) -> Result<pb::Rollout> {
    eventually(
        "standby takes over the rollout",
        Duration::from_secs(30),
        || {
            let mut c = c.clone();
            let id = id.to_owned();
            async move {
                let r = match c.get_rollout(pb::GetRolloutRequest { id }).await {
                    Ok(r) => r.into_inner(),
                    Err(_) => return Ok(None),
                };
                Ok((r.fencing_token > old_token).then_some(r))
            }
        },
    )
    .await
}

fn assert_each_revision_once(h: &BTreeMap<String, pb::TargetStatus>) {
    for (id, st) in h {
        for rev in ["0001_slow", "0002_more"] {
            let n = st
                .history
                .iter()
                .filter(|r| r.revision == rev && r.status == "applied")
                .count();
            assert_eq!(n, 1, "{id}: {rev} applied {n} times: {:#?}", st.history);
        }
        assert!(!st.dirty, "{id} dirty");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn standby_takes_over_after_the_leader_is_killed() -> Result<()> {
    let cluster = Cluster::start(10).await?;
    let (mut a, a_addr) = cluster.coordinator("coord-a")?;
    let ca = client(&a_addr).await?;
    let r = start_rollout(&ca).await?;
    let (b, b_addr) = cluster.coordinator("coord-b")?;
    let cb = client(&b_addr).await?;
    succeeded(&ca, &r.id, 2).await?;

    signal(a.pid()?, "KILL")?;
    let killed = Instant::now();
    let _ = a.child.wait().await;
    let r2 = taken_over(&cb, &r.id, r.fencing_token).await?;
    let takeover = killed.elapsed();
    eprintln!("takeover after SIGKILL: {takeover:?} (lease TTL {TTL_SECS}s)");
    assert!(
        takeover < Duration::from_secs(TTL_SECS + 3),
        "standby took {takeover:?} to take over; log:\n{}",
        b.log_text()
    );
    let mut cb2 = cb.clone();
    let end = follow_to_end(&mut cb2, &r2.id).await?;
    assert_eq!(
        state(&end),
        pb::RolloutState::Succeeded,
        "{end:#?}\n{}",
        b.log_text()
    );
    assert_eq!(targets_in(&end, pb::TargetState::Succeeded).len(), 10);
    assert_each_revision_once(&cluster.histories().await?);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stale_leader_is_fenced_by_etcd_and_by_the_agents() -> Result<()> {
    let cluster = Cluster::start(8).await?;
    let (a, a_addr) = cluster.coordinator("coord-a")?;
    let ca = client(&a_addr).await?;
    let r = start_rollout(&ca).await?;
    let (b, b_addr) = cluster.coordinator("coord-b")?;
    let cb = client(&b_addr).await?;
    succeeded(&ca, &r.id, 1).await?;
    let stale = r.fencing_token;

    signal(a.pid()?, "STOP")?;
    taken_over(&cb, &r.id, stale).await?;
    signal(a.pid()?, "CONT")?;

    // The resumed leader notices it lost the lease and stops.
    eventually(
        "stale leader logs the loss",
        Duration::from_secs(20),
        || async { Ok(a.log_text().contains("leadership lost").then_some(())) },
    )
    .await
    .with_context(|| a.log_text())?;

    let mut cb2 = cb.clone();
    let end = follow_to_end(&mut cb2, &r.id).await?;
    assert_eq!(
        state(&end),
        pb::RolloutState::Succeeded,
        "{end:#?}\n{}",
        b.log_text()
    );
    assert!(end.fencing_token > stale);
    assert_each_revision_once(&cluster.histories().await?);

    // etcd refuses a write with the stale token.
    let (_lock, store) = open_backend(&BackendConfig {
        etcd_endpoints: vec![cluster.etcd.endpoint()],
        prefix: cluster.prefix.clone(),
        lease_ttl: Duration::from_secs(TTL_SECS),
        state_dir: cluster.dir.path().join("unused"),
        holder_id: "probe".into(),
    })
    .await?;
    let put = store
        .write(
            stale,
            vec![WriteOp::Put {
                key: "rollouts/probe".into(),
                value: b"{}".to_vec(),
            }],
        )
        .await;
    assert!(matches!(put, Err(StoreError::Fenced { .. })), "{put:?}");

    // Every agent refuses a step carrying the stale token, and nothing changes.
    for agent in &cluster.agents {
        let before = agent.statuses(true).await?;
        let mut c = agent.client().await?;
        for id in before.keys() {
            let sql = "CREATE TABLE stale (id INTEGER);";
            let req = pb::MigrateRequest {
                target_id: id.clone(),
                rollout_id: r.id.clone(),
                fencing_token: stale,
                steps: vec![pb::Step {
                    revision: "9999_stale".into(),
                    direction: pb::Direction::Up as i32,
                    sql: sql.into(),
                    checksum: flotilla_core::checksum(sql),
                    transactional: true,
                    up_checksum: String::new(),
                    backup_tables: vec![],
                    ..Default::default()
                }],
                lock_wait_ms: 0,
                ..Default::default()
            };
            let outcome = match c.migrate(req).await {
                Err(s) => Err(s),
                Ok(resp) => {
                    let mut stream = resp.into_inner();
                    loop {
                        match stream.message().await {
                            Ok(Some(_)) => continue,
                            Ok(None) => break Ok(()),
                            Err(s) => break Err(s),
                        }
                    }
                }
            };
            let err = outcome.expect_err("a stale token must be refused");
            assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{id}: {err:?}");
        }
        assert_eq!(
            agent.statuses(true).await?,
            before,
            "a refused step changed something"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_standby_forwards_write_calls_to_the_leader() -> Result<()> {
    let etcd = Etcd::start().await?;
    let (_t, targets) = sqlite_targets("t", 3)?;
    let agent = TestAgent::start("agent", targets).await?;
    let fleet = vec![(agent.id.clone(), agent.address.clone())];
    let prefix = format!("/flotilla-fwd-{}", uuid::Uuid::new_v4());
    let endpoint = etcd.endpoint();
    let leader =
        TestCoordinator::start_opts(&repo_migrations(), &fleet, Some(&endpoint), &prefix, true)
            .await?;
    let standby =
        TestCoordinator::start_opts(&repo_migrations(), &fleet, Some(&endpoint), &prefix, false)
            .await?;
    assert!(standby.engine.term().is_none(), "two leaders");
    eventually(
        "the standby knows the leader's address",
        Duration::from_secs(10),
        || async {
            Ok(standby
                .engine
                .leader_address()
                .await
                .filter(|a| a == &leader.address))
        },
    )
    .await?;

    // StartRollout sent to the standby runs on the leader; the standby can watch it too.
    let mut c = CoordinatorServiceClient::connect(standby.address.clone()).await?;
    let r = c
        .start_rollout(pb::StartRolloutRequest {
            spec: Some(spec("head").to_proto()),
        })
        .await?
        .into_inner();
    let end = follow_to_end(&mut c, &r.id).await?;
    assert_eq!(state(&end), pb::RolloutState::Succeeded, "{end:#?}");
    assert_eq!(targets_in(&end, pb::TargetState::Succeeded).len(), 3);
    assert!(standby.engine.term().is_none());

    // Control calls are forwarded as well: the leader's own answer comes back (a standby
    // would have said NOT_LEADER).
    let err = c
        .pause_rollout(pb::RolloutControlRequest { id: r.id.clone() })
        .await
        .expect_err("the rollout already ended");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("already ended"), "{}", err.message());

    // One hop only: a call that was already forwarded is not forwarded again.
    let mut req = tonic::Request::new(pb::StartRolloutRequest {
        spec: Some(spec("head").to_proto()),
    });
    req.metadata_mut().insert(
        "x-flotilla-forwarded",
        tonic::metadata::MetadataValue::from_static("1"),
    );
    let err = c.start_rollout(req).await.expect_err("not forwarded twice");
    assert_eq!(err.code(), tonic::Code::Unavailable);
    assert!(err.message().contains("NOT_LEADER"), "{}", err.message());
    Ok(())
}
