//! One chaos round: the servers the rounds share, a fresh fleet per round (databases, a
//! `flotilla-agent` process, `flotilla coordinator` processes), and the round itself: start
//! a rollout, inject the fault mid-rollout, wait for the end, check the databases.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use flotilla_proto as pb;
use flotilla_proto::coordinator_service_client::CoordinatorServiceClient;
use flotilla_testkit::{Etcd, MariaDb, Postgres, Program, eventually, free_port};
use tokio::time::Instant;

use super::fault::Fault;
use super::invariants;
use super::report::RoundOutcome;
use crate::harness::{migrations, spec, state};
use crate::observability::{agent_bin, flotilla_bin};

/// The chaos coordinators' lease: etcd's outage (`fault.rs`) fits in it.
const LEASE_TTL: &str = "5s";

/// Revisions of the round's set: `0001` creates the ledger, each later one writes its row.
pub(super) const REVISIONS: u32 = 6;

/// How long a round may take from the fault to the rollout's end before it counts as not
/// completed (it would have needed an operator).
const END_DEADLINE: Duration = Duration::from_secs(150);

/// The servers every round of a fault uses (databases get fresh names per round).
pub(super) struct Servers {
    pub(super) pg: Postgres,
    pub(super) my: MariaDb,
    pub(super) etcd: Etcd,
}

impl Servers {
    pub(super) async fn start() -> Result<Servers> {
        let (pg, my, etcd) = tokio::try_join!(Postgres::start(), MariaDb::start(), Etcd::start())?;
        Ok(Servers { pg, my, etcd })
    }
}

/// The set: `ledger` in 0001; revision N > 1 inserts the row `N` (and sleeps a quarter of
/// a second on PostgreSQL and MariaDB, so faults land mid-rollout).
fn migration_set() -> Result<tempfile::TempDir> {
    let mut files = vec![(
        "0001.sql".to_owned(),
        "-- revision: 0001\n-- migrate:up\nCREATE TABLE ledger (rev VARCHAR(16) NOT NULL);\n\
         -- migrate:down\nDROP TABLE ledger;\n"
            .to_owned(),
    )];
    for n in 2..=REVISIONS {
        let insert = format!("INSERT INTO ledger (rev) VALUES ('{n:04}');");
        files.push((
            format!("{n:04}.sql"),
            format!(
                "-- revision: {n:04}\n-- revises: {:04}\n\
                 -- migrate:up\n{insert}\n\
                 -- migrate:up postgres\n{insert}\nSELECT pg_sleep(0.25);\n\
                 -- migrate:up mysql\n{insert}\nSELECT SLEEP(0.25);\n\
                 -- migrate:down\nDELETE FROM ledger WHERE rev = '{n:04}';\n",
                n - 1
            ),
        ));
    }
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(n, t)| (n.as_str(), t.as_str()))
        .collect();
    migrations(&refs)
}

/// A fresh fleet: two PostgreSQL and two MariaDB databases served by one agent process,
/// and the coordinators (the first leads; a standby is started for the leader fault).
pub(super) struct Round {
    pub(super) agent: Program,
    coordinators: Vec<(Program, String)>,
    /// `(target id, url)`.
    pub(super) targets: Vec<(String, String)>,
    etcd: String,
    prefix: String,
    dir: tempfile::TempDir,
    migrations: tempfile::TempDir,
}

impl Round {
    async fn start(servers: &Servers, n: u32) -> Result<Round> {
        let targets = vec![
            ("my1".to_owned(), servers.my.fresh_database().await?),
            ("my2".to_owned(), servers.my.fresh_database().await?),
            ("pg1".to_owned(), servers.pg.fresh_database().await?),
            ("pg2".to_owned(), servers.pg.fresh_database().await?),
        ];
        let port = free_port();
        let mut args = vec![
            "--agent-id".to_owned(),
            "chaos-agent".to_owned(),
            "--listen".to_owned(),
            format!("127.0.0.1:{port}"),
        ];
        for (id, url) in &targets {
            args.extend(["--target".to_owned(), format!("{id}={url}")]);
        }
        let agent = Program::start("flotilla-agent", &agent_bin()?, &args, port).await?;
        let dir = tempfile::tempdir()?;
        std::fs::write(
            dir.path().join("fleet.toml"),
            format!("[[agents]]\nid = \"chaos-agent\"\naddress = \"http://127.0.0.1:{port}\"\n"),
        )?;
        let mut round = Round {
            agent,
            coordinators: Vec::new(),
            targets,
            etcd: servers.etcd.endpoint(),
            prefix: format!("/flotilla-chaos-{n}-{}", uuid::Uuid::new_v4()),
            dir,
            migrations: migration_set()?,
        };
        round.start_coordinator("coord-a").await?;
        Ok(round)
    }

    /// Start a `flotilla coordinator` process named `id` on this round's etcd prefix.
    async fn start_coordinator(&mut self, id: &str) -> Result<()> {
        let port = free_port();
        let args: Vec<String> = [
            "--migrations",
            path(self.migrations.path())?,
            "coordinator",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--etcd",
            &self.etcd,
            "--etcd-prefix",
            &self.prefix,
            "--lease-ttl",
            LEASE_TTL,
            "--fleet",
            path(&self.dir.path().join("fleet.toml"))?,
            "--id",
            id,
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        let coordinator =
            Program::start("flotilla coordinator", &flotilla_bin(), &args, port).await?;
        self.coordinators
            .push((coordinator, format!("http://127.0.0.1:{port}")));
        Ok(())
    }

    /// The coordinator that took the lock first (it started the rollout).
    pub(super) fn leader(&self) -> Result<&Program> {
        self.coordinators
            .first()
            .map(|(p, _)| p)
            .context("no coordinator started")
    }

    /// Start the rollout to head on the first coordinator (once it leads): canary first, one
    /// target at a time, so the fault meets one running target.
    async fn start_rollout(&self) -> Result<String> {
        let addr = &self.coordinators[0].1;
        let spec = flotilla_coordinator::rollout::RolloutSpec {
            max_parallel: 1,
            fingerprint_gate: false,
            ..spec("head")
        }
        .to_proto();
        eventually(
            "the leader starts the rollout",
            Duration::from_secs(30),
            || {
                let spec = spec.clone();
                async move {
                    let mut c = CoordinatorServiceClient::connect(addr.clone()).await?;
                    match c
                        .start_rollout(pb::StartRolloutRequest { spec: Some(spec) })
                        .await
                    {
                        Ok(r) => Ok(Some(r.into_inner().id)),
                        Err(s) if s.message().contains("NOT_LEADER") => Ok(None),
                        Err(s) => bail!("start rollout: {s}"),
                    }
                }
            },
        )
        .await
    }

    /// The rollout as the first coordinator that answers within a second reports it (a
    /// frozen one does not answer).
    async fn get(&self, id: &str) -> Result<pb::Rollout> {
        let mut last = None;
        // Newest first: while the first leader is frozen, the standby answers.
        for (_, addr) in self.coordinators.iter().rev() {
            let call = async {
                let mut c = CoordinatorServiceClient::connect(addr.clone()).await?;
                let r = c
                    .get_rollout(pb::GetRolloutRequest { id: id.to_owned() })
                    .await?;
                anyhow::Ok(r.into_inner())
            };
            match tokio::time::timeout(Duration::from_secs(1), call).await {
                Ok(Ok(r)) => return Ok(r),
                Ok(Err(e)) => last = Some(e),
                Err(_) => last = Some(anyhow::anyhow!("{addr} did not answer within 1s")),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no coordinator")))
    }

    /// Poll the rollout until `until` holds; the moment and the state it held in.
    async fn when(
        &self,
        id: &str,
        what: &str,
        within: Duration,
        until: impl Fn(&pb::Rollout) -> bool,
    ) -> Result<(Instant, pb::Rollout)> {
        let until = &until;
        eventually(what, within, || async move {
            let r = self.get(id).await?;
            Ok(until(&r).then(|| (Instant::now(), r)))
        })
        .await
    }

    fn logs(&self) -> String {
        let mut out = format!("--- agent ---\n{}\n", self.agent.log());
        for (p, addr) in &self.coordinators {
            out.push_str(&format!("--- coordinator {addr} ---\n{}\n", p.log()));
        }
        out
    }
}

fn path(p: &Path) -> Result<&str> {
    p.to_str().context("non-utf8 temp path")
}

/// Steps the rollout's records count as done.
fn steps(r: &pb::Rollout) -> u32 {
    r.targets.iter().map(|t| t.steps_done).sum()
}

fn ended(r: &pb::Rollout) -> bool {
    !matches!(
        state(r),
        pb::RolloutState::Pending
            | pb::RolloutState::Running
            | pb::RolloutState::Paused
            | pb::RolloutState::Unspecified
    )
}

/// One round of `fault` on a fresh fleet.
pub(super) async fn run_round(servers: &Servers, fault: Fault, n: u32) -> Result<RoundOutcome> {
    let mut round = Round::start(servers, n).await?;
    let id = round.start_rollout().await?;
    if fault == Fault::Leader {
        round.start_coordinator("coord-b").await?;
    }
    let (_, at) = round
        .when(
            &id,
            "the moment to inject the fault",
            Duration::from_secs(60),
            |r| fault.ready(r) || ended(r),
        )
        .await
        .with_context(|| round.logs())?;
    if ended(&at) {
        bail!("round {n}: the rollout ended before the fault: {at:#?}");
    }
    let before = round.get(&id).await?;
    let injected = Instant::now();
    let healed = fault.inject(servers, &round).await?;
    // Progress after the heal is the recovery; for the frozen leader, progress recorded by
    // the standby (a higher token) after the freeze.
    let (base, token) = if fault == Fault::Leader {
        (steps(&before), before.fencing_token)
    } else {
        let (_, now) = round
            .when(&id, "the rollout answers", END_DEADLINE, |_| true)
            .await?;
        (steps(&now), 0)
    };
    let recovered = round
        .when(&id, "progress after the fault", END_DEADLINE, |r| {
            (steps(r) > base && r.fencing_token > token) || ended(r)
        })
        .await
        .ok()
        .map(|(at, _)| at.saturating_duration_since(healed));
    fault.after_recovery(&round)?;
    let end = round
        .when(&id, "the rollout's end", END_DEADLINE, ended)
        .await
        .ok()
        .map(|(_, r)| r);
    let completed = end
        .as_ref()
        .is_some_and(|r| state(r) == pb::RolloutState::Succeeded);
    if !completed {
        eprintln!(
            "chaos: {} round {n} did not complete by itself: {end:#?}\n{}",
            fault.name(),
            round.logs()
        );
    }
    let findings = invariants::check(&round.targets, completed).await?;
    Ok(RoundOutcome {
        completed,
        down: healed.saturating_duration_since(injected),
        recover: recovered,
        findings,
    })
}
