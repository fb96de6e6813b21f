//! Issue 29, rollouts ride out infrastructure blips: an agent that is down for longer than
//! the old attempt limit allowed (a pod restart) is waited for, by time, and its targets
//! complete; an agent that stays away past the rollout's agent wait fails its targets with a
//! message that says so.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use flotilla_proto as pb;
use tokio::time::Instant;

use crate::harness::*;

/// How long agent-b is down: far past what the old limit rode out (the harness's coordinator
/// had 6 attempts with 100-500 ms backoff, under 4 s in all, jitter included).
const DOWN: Duration = Duration::from_secs(20);

/// The harness coordinator's `agent_attempts`: the old code failed a target after this many
/// failed calls, i.e. after `OLD_ATTEMPTS - 1` retries.
const OLD_ATTEMPTS: u32 = 6;

/// Start a rollout to head (canary a01 on agent-a, then agent-b's targets), paused once
/// planned so the test can take agent-b away before its targets run.
async fn start_paused(
    c: &mut flotilla_proto::coordinator_service_client::CoordinatorServiceClient<
        tonic::transport::Channel,
    >,
    agent_wait: Duration,
) -> Result<String> {
    let mut spec = spec("head").to_proto();
    spec.agent_wait_ms = agent_wait.as_millis() as u64;
    let r = c
        .start_rollout(pb::StartRolloutRequest { spec: Some(spec) })
        .await?
        .into_inner();
    c.pause_rollout(pb::RolloutControlRequest { id: r.id.clone() })
        .await?;
    rollout_when(
        c,
        &r.id,
        "rollout planned and paused",
        Duration::from_secs(20),
        |r| state(r) == pb::RolloutState::Paused && r.wave_count == 2,
    )
    .await?;
    Ok(r.id)
}

fn waiting_on_b(r: &pb::Rollout) -> Option<&pb::TargetProgress> {
    r.targets
        .iter()
        .find(|t| t.agent_id == "agent-b" && t.waiting_for_agent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn targets_wait_for_an_agent_down_for_20s_and_complete() -> Result<()> {
    let (_ta, a_targets) = sqlite_targets("a", 1)?;
    let (_tb, b_targets) = sqlite_targets("b", 2)?;
    let agent_a = TestAgent::start("agent-a", a_targets).await?;
    let mut agent_b = TestAgent::start("agent-b", b_targets).await?;
    let coord = TestCoordinator::start(&repo_migrations(), &[&agent_a, &agent_b], None).await?;
    let mut c = coord.client().await?;
    let id = start_paused(&mut c, Duration::from_secs(120)).await?;

    // agent-b goes away (its server stops; the address refuses connections).
    agent_b.stop().await?;
    let down_since = Instant::now();
    c.resume_rollout(pb::RolloutControlRequest { id: id.clone() })
        .await?;
    let r = rollout_when(
        &c,
        &id,
        "an agent-b target waiting for its agent",
        Duration::from_secs(20),
        |r| waiting_on_b(r).is_some(),
    )
    .await?;
    let t = waiting_on_b(&r).context("no waiting target")?;
    ensure!(
        t.message
            .starts_with("waiting for agent agent-b (unreachable for "),
        "{t:?}"
    );
    ensure!(
        target_state(t) == pb::TargetState::Running,
        "a waiting target is running: {t:?}"
    );
    // What `rollout get` (and the watch's progress lines) print for it.
    let (code, out, err) = run_cli(
        &["rollout", "get", &id, "--coordinator", &coord.address],
        None,
    )
    .await?;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!(
            "waiting {}: waiting for agent agent-b",
            t.target_id
        )),
        "{out}"
    );

    // Down past the old limit: more failed calls than it allowed, and still running.
    tokio::time::sleep_until(down_since + DOWN).await;
    let mid = c
        .get_rollout(pb::GetRolloutRequest { id: id.clone() })
        .await?
        .into_inner();
    assert_eq!(state(&mid), pb::RolloutState::Running, "{mid:#?}");
    let retries = mid
        .targets
        .iter()
        .filter(|t| t.agent_id == "agent-b")
        .map(|t| t.retries)
        .max()
        .unwrap_or(0);
    assert!(
        retries >= OLD_ATTEMPTS,
        "{retries} retries in {DOWN:?}: the old code failed the target after {} retries",
        OLD_ATTEMPTS - 1
    );

    agent_b.restart().await?;
    let end = follow_to_end(&mut c, &id).await?;
    assert_eq!(state(&end), pb::RolloutState::Succeeded, "{end:#?}");
    assert_eq!(
        targets_in(&end, pb::TargetState::Succeeded).len(),
        3,
        "{end:#?}"
    );
    assert!(end.targets.iter().all(|t| !t.waiting_for_agent), "{end:#?}");
    for (target, st) in agent_b.statuses(true).await? {
        let n = st.history.iter().filter(|h| h.status == "applied").count();
        assert_eq!(n, 10, "{target}: each revision exactly once");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_agent_away_past_the_agent_wait_fails_its_targets() -> Result<()> {
    let (_ta, a_targets) = sqlite_targets("a", 1)?;
    let (_tb, b_targets) = sqlite_targets("b", 2)?;
    let agent_a = TestAgent::start("agent-a", a_targets).await?;
    let mut agent_b = TestAgent::start("agent-b", b_targets).await?;
    let coord = TestCoordinator::start(&repo_migrations(), &[&agent_a, &agent_b], None).await?;
    let mut c = coord.client().await?;
    let id = start_paused(&mut c, Duration::from_secs(2)).await?;
    agent_b.stop().await?;
    c.resume_rollout(pb::RolloutControlRequest { id: id.clone() })
        .await?;
    let end = follow_to_end(&mut c, &id).await?;
    assert_eq!(state(&end), pb::RolloutState::Halted, "{end:#?}");
    let failed: Vec<_> = end
        .targets
        .iter()
        .filter(|t| target_state(t) == pb::TargetState::Failed)
        .collect();
    ensure!(!failed.is_empty(), "{end:#?}");
    for t in failed {
        assert_eq!(t.agent_id, "agent-b");
        assert!(
            t.message.starts_with("agent agent-b unreachable for ")
                && t.message.contains("--agent-wait"),
            "{t:?}"
        );
        assert!(!t.waiting_for_agent, "{t:?}");
    }
    Ok(())
}
