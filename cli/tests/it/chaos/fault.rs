//! The faults the suite injects, when each is injected, and how it is healed.

use std::time::Duration;

use anyhow::Result;
use flotilla_proto as pb;
use tokio::time::Instant;

use super::fleet::{Round, Servers};
use crate::harness::target_state;

/// How long etcd is down: well within the chaos coordinators' lease (`fleet::LEASE_TTL`).
const ETCD_DOWN: Duration = Duration::from_millis(1500);
/// How long a database server is down before it is started again.
const DATABASE_DOWN: Duration = Duration::from_secs(2);
/// How long the agent process is away before it is started again (a quick pod restart; the
/// 20 s case is `blips.rs`).
const AGENT_DOWN: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fault {
    /// etcd SIGKILLed, started again on its data dir within the lease.
    Etcd,
    /// PostgreSQL immediate shutdown (a crash: recovery on start), then started again.
    Postgres,
    /// MariaDB SIGKILLed (InnoDB recovers on start), then started again.
    MariaDb,
    /// The `flotilla-agent` process SIGKILLed mid-step, then started again.
    Agent,
    /// The leading coordinator SIGSTOPped until the standby took over, then SIGCONTed.
    Leader,
}

impl Fault {
    pub(super) fn name(self) -> &'static str {
        match self {
            Fault::Etcd => "etcd kill + restart",
            Fault::Postgres => "postgres crash + restart",
            Fault::MariaDb => "mariadb kill + restart",
            Fault::Agent => "agent kill + restart",
            Fault::Leader => "leader SIGSTOP past lease",
        }
    }

    /// Whether `r` is at the moment this fault is injected: a target whose steps go through
    /// the faulted part is running (a PostgreSQL target for PostgreSQL, ...), after the
    /// canary succeeded.
    pub(super) fn ready(self, r: &pb::Rollout) -> bool {
        let kind = match self {
            Fault::Postgres => "pg",
            Fault::MariaDb => "my",
            Fault::Etcd | Fault::Agent | Fault::Leader => "",
        };
        let succeeded = r
            .targets
            .iter()
            .any(|t| target_state(t) == pb::TargetState::Succeeded);
        let running = r
            .targets
            .iter()
            .any(|t| target_state(t) == pb::TargetState::Running && t.target_id.starts_with(kind));
        succeeded && running
    }

    /// Inject the fault; returns when it is healed (the server or process is back), with
    /// that moment. A frozen leader is not thawed here: the fleet heals itself (a standby
    /// takes over), so the moment is the injection; [`Fault::after_recovery`] thaws it.
    pub(super) async fn inject(self, servers: &Servers, round: &Round) -> Result<Instant> {
        match self {
            Fault::Etcd => {
                servers.etcd.stop();
                tokio::time::sleep(ETCD_DOWN).await;
                servers.etcd.restart().await?;
            }
            Fault::Postgres => {
                servers.pg.stop();
                tokio::time::sleep(DATABASE_DOWN).await;
                servers.pg.restart().await?;
            }
            Fault::MariaDb => {
                servers.my.stop();
                tokio::time::sleep(DATABASE_DOWN).await;
                servers.my.restart().await?;
            }
            Fault::Agent => {
                round.agent.kill();
                tokio::time::sleep(AGENT_DOWN).await;
                round.agent.restart().await?;
            }
            Fault::Leader => round.leader()?.freeze(true)?,
        }
        Ok(Instant::now())
    }

    /// Undo what outlives the recovery: the frozen leader continues (and finds itself
    /// deposed: its lease is gone, the standby's token fences it).
    pub(super) fn after_recovery(self, round: &Round) -> Result<()> {
        if self == Fault::Leader {
            round.leader()?.freeze(false)?;
        }
        Ok(())
    }
}
