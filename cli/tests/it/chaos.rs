//! Issue 29's fault-injection suite: real faults injected into running rollouts, and the
//! invariants checked in the databases themselves. Each fault runs `FLOTILLA_CHAOS_ROUNDS`
//! rounds (default 2; `scripts/chaos.sh --rounds N` runs more): a fresh fleet (two PostgreSQL
//! and two MariaDB databases behind one `flotilla-agent` process, `flotilla coordinator`
//! processes over etcd), a rollout of six revisions, the fault injected while a target is
//! running, then the rollout must end `succeeded` by itself with every revision's ledger row
//! written exactly once, one `applied` history row per revision, nothing dirty.
//!
//! Faults (`fault.rs`): etcd killed and restarted within the lease, PostgreSQL crashed
//! (immediate shutdown) and restarted, MariaDB killed and restarted, the agent process killed
//! and restarted, the leading coordinator frozen (SIGSTOP) past its lease and thawed after
//! the standby took over. `leadership.rs` measures how soon a coordinator leads again after
//! an 8 s etcd outage with the README's 10 s lease.

mod fault;
mod fleet;
mod invariants;
mod leadership;
mod report;

use anyhow::Result;

use fault::Fault;

/// Run the fault's rounds, publish its row, then hold every round to the invariants.
async fn rounds_of(fault: Fault) -> Result<()> {
    let servers = fleet::Servers::start().await?;
    let mut tally = report::Tally::new(fault.name());
    for round in 1..=report::rounds() {
        let outcome = fleet::run_round(&servers, fault, round).await?;
        tally.add(&outcome);
    }
    tally.publish()?;
    tally.check()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcd_killed_and_restarted_within_the_lease() -> Result<()> {
    rounds_of(Fault::Etcd).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_crashed_and_restarted() -> Result<()> {
    rounds_of(Fault::Postgres).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mariadb_killed_and_restarted() -> Result<()> {
    rounds_of(Fault::MariaDb).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agent_killed_and_restarted() -> Result<()> {
    rounds_of(Fault::Agent).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_frozen_past_its_lease() -> Result<()> {
    rounds_of(Fault::Leader).await
}
