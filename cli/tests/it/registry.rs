//! Agents that register themselves over the API (leased in etcd) are rolled out to, and drop
//! out of the fleet once they stop heartbeating.

use std::time::{Duration, Instant};

use anyhow::Result;
use flotilla_agent::register::{self, RegisterConfig};
use flotilla_proto as pb;
use flotilla_testkit::{Etcd, eventually};
use tokio_util::sync::CancellationToken;

use crate::harness::*;

async fn fleet_targets(coord: &TestCoordinator) -> Result<Vec<(String, String)>> {
    let mut c = coord.client().await?;
    let resp = c
        .fleet_status(pb::FleetStatusRequest {
            project: Default::default(),
            selector: None,
            include_schema: false,
            ..Default::default()
        })
        .await?
        .into_inner();
    Ok(resp
        .targets
        .into_iter()
        .map(|t| {
            (
                t.agent_id,
                t.status.map(|s| s.target_id).unwrap_or_default(),
            )
        })
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registered_agents_join_the_fleet_and_drop_out_when_they_stop() -> Result<()> {
    let etcd = Etcd::start().await?;
    let coord = TestCoordinator::start(&repo_migrations(), &[], Some(&etcd.endpoint())).await?;
    let (_t, targets) = sqlite_targets("reg", 2)?;
    let agent = TestAgent::start("agent-reg", targets).await?;
    assert!(fleet_targets(&coord).await?.is_empty());

    let stop = CancellationToken::new();
    let config = RegisterConfig {
        coordinator: coord.address.clone(),
        advertise: agent.address.clone(),
        ..RegisterConfig::default()
    };
    let task = tokio::spawn(register::run(agent.agent.clone(), config, stop.clone()));
    eventually("agent registered", Duration::from_secs(20), || async {
        let t = fleet_targets(&coord).await?;
        Ok((t.len() == 2).then_some(t))
    })
    .await?;

    let r = coord.rollout(spec("head")).await?;
    assert_eq!(state(&r), pb::RolloutState::Succeeded, "{r:#?}");
    assert_eq!(
        targets_in(&r, pb::TargetState::Succeeded),
        ["reg01", "reg02"]
    );
    assert!(r.targets.iter().all(|t| t.agent_id == "agent-reg"));

    // Heartbeats keep it registered past the TTL (3s in the harness).
    let joined = Instant::now();
    eventually(
        "registration outlives one TTL",
        Duration::from_secs(20),
        || async {
            let t = fleet_targets(&coord).await?;
            anyhow::ensure!(t.len() == 2, "dropped out while heartbeating");
            Ok((joined.elapsed() > Duration::from_secs(4)).then_some(()))
        },
    )
    .await?;

    stop.cancel();
    task.await??;
    let stopped = Instant::now();
    eventually("agent dropped out", Duration::from_secs(20), || async {
        Ok(fleet_targets(&coord).await?.is_empty().then_some(()))
    })
    .await?;
    eprintln!(
        "registration lapsed {:?} after the last heartbeat stopped (ttl 3s)",
        stopped.elapsed()
    );
    Ok(())
}
