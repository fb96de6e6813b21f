//! Fleet harness for the coordinator tests: agents serving real targets on loopback, a
//! coordinator in-process (library) or as a `flotilla` subprocess, custom migration sets,
//! and helpers to run a rollout to its end.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use flotilla_agent::config::{LockConfig, RetryConfig};
use flotilla_agent::{Agent, AgentConfig, TargetConfig};
use flotilla_coordinator::backend::BackendConfig;
use flotilla_coordinator::engine::{Engine, EngineConfig};
use flotilla_coordinator::rollout::RolloutSpec;
use flotilla_coordinator::server::{CoordinatorConfig, build, serve};
use flotilla_coordinator::telemetry::Hooks;
use flotilla_core::{Dialect, Secret};
use flotilla_proto as pb;
use flotilla_proto::agent_service_client::AgentServiceClient;
use flotilla_proto::coordinator_service_client::CoordinatorServiceClient;
use flotilla_rpc::convert::DirectionProto;
use flotilla_rpc::tls::ServerTls;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

/// The repository's example migrations.
pub(crate) fn repo_migrations() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations")
}

/// A migrations directory with the given `(file name, contents)`.
pub(crate) fn migrations(files: &[(&str, &str)]) -> Result<tempfile::TempDir> {
    let dir = tempfile::tempdir()?;
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text)?;
    }
    Ok(dir)
}

/// A one-revision migration file.
pub(crate) fn revision(id: &str, parent: Option<&str>, up: &str, down: &str) -> String {
    let revises = parent
        .map(|p| format!("-- revises: {p}\n"))
        .unwrap_or_default();
    format!("-- revision: {id}\n{revises}-- migrate:up\n{up}\n-- migrate:down\n{down}\n")
}

pub(crate) fn target(
    id: &str,
    dialect: Dialect,
    url: &str,
    labels: &[(&str, &str)],
) -> TargetConfig {
    TargetConfig {
        id: id.into(),
        dialect,
        url: Secret::new(url),
        labels: labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    }
}

/// SQLite targets `prefix01..prefixNN` in one temp dir.
pub(crate) fn sqlite_targets(
    prefix: &str,
    n: usize,
) -> Result<(tempfile::TempDir, Vec<TargetConfig>)> {
    let dir = tempfile::tempdir()?;
    let targets = (1..=n)
        .map(|i| {
            let id = format!("{prefix}{i:02}");
            let url = format!(
                "sqlite://{}?mode=rwc",
                dir.path().join(format!("{id}.db")).display()
            );
            target(
                &id,
                Dialect::Sqlite,
                &url,
                &[("tier", if i % 2 == 0 { "gold" } else { "silver" })],
            )
        })
        .collect();
    Ok((dir, targets))
}

/// An agent serving its targets over gRPC on 127.0.0.1:0 (`https://` with `start_tls`).
pub(crate) struct TestAgent {
    pub(crate) id: String,
    pub(crate) address: String,
    pub(crate) agent: Arc<Agent>,
    config: AgentConfig,
    shutdown: CancellationToken,
    handle: Option<JoinHandle<()>>,
}

impl TestAgent {
    pub(crate) async fn start(id: &str, targets: Vec<TargetConfig>) -> Result<TestAgent> {
        Self::start_with(id, targets, None, |_| {}).await
    }

    /// Like `start`, with the test's configuration changed by `tweak` before the agent starts.
    pub(crate) async fn start_tweaked(
        id: &str,
        targets: Vec<TargetConfig>,
        tweak: impl FnOnce(&mut AgentConfig),
    ) -> Result<TestAgent> {
        Self::start_with(id, targets, None, tweak).await
    }

    /// An agent serving TLS (mTLS when `tls` has a client CA) at `https://127.0.0.1:PORT`.
    pub(crate) async fn start_tls(
        id: &str,
        targets: Vec<TargetConfig>,
        tls: ServerTls,
    ) -> Result<TestAgent> {
        Self::start_with(id, targets, Some(tls), |_| {}).await
    }

    async fn start_with(
        id: &str,
        targets: Vec<TargetConfig>,
        tls: Option<ServerTls>,
        tweak: impl FnOnce(&mut AgentConfig),
    ) -> Result<TestAgent> {
        let scheme = if tls.is_some() { "https" } else { "http" };
        let mut config = AgentConfig {
            agent_id: id.into(),
            targets,
            retry: RetryConfig {
                initial_delay: Duration::from_millis(20),
                max_delay: Duration::from_millis(300),
                max_attempts: 8,
                max_elapsed: Duration::from_secs(20),
            },
            lock: LockConfig {
                wait: Duration::from_secs(20),
                ..LockConfig::default()
            },
            ..AgentConfig::default()
        };
        config.server.tls = tls;
        tweak(&mut config);
        let agent = Arc::new(Agent::new(config.clone()).await.context("agent config")?);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = format!("{scheme}://{}", listener.local_addr()?);
        let shutdown = CancellationToken::new();
        let s = shutdown.clone();
        let a = agent.clone();
        let handle = tokio::spawn(async move {
            if let Err(e) = flotilla_agent::serve(a, listener, s.cancelled_owned()).await {
                eprintln!("agent server: {e}");
            }
        });
        Ok(TestAgent {
            id: id.into(),
            address,
            agent,
            config,
            shutdown,
            handle: Some(handle),
        })
    }

    pub(crate) async fn client(&self) -> Result<AgentServiceClient<Channel>> {
        Ok(AgentServiceClient::connect(self.address.clone()).await?)
    }

    /// Stops serving, as a pod going away does: graceful (open connections are closed once
    /// their requests end), then the port is free. The agent and its address are kept.
    pub(crate) async fn stop(&mut self) -> Result<()> {
        self.shutdown.cancel();
        if let Some(h) = self.handle.take() {
            tokio::time::timeout(Duration::from_secs(30), h)
                .await
                .context("the agent server did not stop within 30s")??;
        }
        Ok(())
    }

    /// A new agent process, as a restarted pod: the same configuration (targets, id) served
    /// on the same address (after `stop`).
    pub(crate) async fn restart(&mut self) -> Result<()> {
        self.agent = Arc::new(
            Agent::new(self.config.clone())
                .await
                .context("agent config")?,
        );
        let addr: std::net::SocketAddr = self
            .address
            .trim_start_matches("http://")
            .trim_start_matches("https://")
            .parse()?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot bind {addr} again"))?;
        self.shutdown = CancellationToken::new();
        let s = self.shutdown.clone();
        let a = self.agent.clone();
        self.handle = Some(tokio::spawn(async move {
            if let Err(e) = flotilla_agent::serve(a, listener, s.cancelled_owned()).await {
                eprintln!("agent server: {e}");
            }
        }));
        Ok(())
    }

    /// Every target's status, by target id.
    pub(crate) async fn statuses(
        &self,
        include_history: bool,
    ) -> Result<BTreeMap<String, pb::TargetStatus>> {
        let resp = self
            .agent
            .status(pb::StatusRequest {
                target_ids: vec![],
                include_history,
                fencing_token: 0,
                ..Default::default()
            })
            .await
            .map_err(|s| anyhow::anyhow!("status: {}", s.message()))?;
        Ok(resp
            .targets
            .into_iter()
            .map(|t| (t.target_id.clone(), t))
            .collect())
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(h) = self.handle.take() {
            h.abort();
        }
    }
}

/// A static fleet file listing the agents.
pub(crate) fn fleet_file(dir: &Path, agents: &[&TestAgent]) -> Result<PathBuf> {
    let entries: Vec<(String, String)> = agents
        .iter()
        .map(|a| (a.id.clone(), a.address.clone()))
        .collect();
    fleet_file_of(dir, &entries)
}

/// A static fleet file from `(agent id, address)` pairs (e.g. an address behind a proxy).
pub(crate) fn fleet_file_of(dir: &Path, agents: &[(String, String)]) -> Result<PathBuf> {
    let mut text = String::new();
    for (id, address) in agents {
        text.push_str(&format!(
            "[[agents]]\nid = \"{id}\"\naddress = \"{address}\"\n\n"
        ));
    }
    let path = dir.join("fleet.toml");
    std::fs::write(&path, text)?;
    Ok(path)
}

/// A coordinator running in this process (library), serving on 127.0.0.1:0.
pub(crate) struct TestCoordinator {
    pub(crate) address: String,
    pub(crate) engine: Arc<Engine>,
    shutdown: CancellationToken,
    handle: Option<JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl TestCoordinator {
    /// Embedded backend in a temp dir (or etcd when `etcd` is given), agents from a fleet file.
    pub(crate) async fn start(
        migrations: &Path,
        agents: &[&TestAgent],
        etcd: Option<&str>,
    ) -> Result<TestCoordinator> {
        let entries: Vec<(String, String)> = agents
            .iter()
            .map(|a| (a.id.clone(), a.address.clone()))
            .collect();
        Self::start_with(migrations, &entries, etcd).await
    }

    /// Like `start`, with the fleet given as `(agent id, address)` pairs.
    pub(crate) async fn start_with(
        migrations: &Path,
        agents: &[(String, String)],
        etcd: Option<&str>,
    ) -> Result<TestCoordinator> {
        let prefix = format!("/flotilla-test-{}", uuid::Uuid::new_v4());
        Self::start_opts(migrations, agents, etcd, &prefix, true).await
    }

    /// Like `start` (embedded backend), with the engine's configuration changed by `tweak`.
    pub(crate) async fn start_tweaked(
        migrations: &Path,
        agents: &[&TestAgent],
        tweak: impl FnOnce(&mut EngineConfig),
    ) -> Result<TestCoordinator> {
        let entries: Vec<(String, String)> = agents
            .iter()
            .map(|a| (a.id.clone(), a.address.clone()))
            .collect();
        let prefix = format!("/flotilla-test-{}", uuid::Uuid::new_v4());
        Self::start_full(migrations, &entries, None, &prefix, true, tweak).await
    }

    /// The general form: `prefix` shared by coordinators of one etcd-backed fleet; with
    /// `wait_leader` false the coordinator may start as a standby. Each advertises its
    /// address (standbys forward write calls to the leader).
    pub(crate) async fn start_opts(
        migrations: &Path,
        agents: &[(String, String)],
        etcd: Option<&str>,
        prefix: &str,
        wait_leader: bool,
    ) -> Result<TestCoordinator> {
        Self::start_full(migrations, agents, etcd, prefix, wait_leader, |_| {}).await
    }

    async fn start_full(
        migrations: &Path,
        agents: &[(String, String)],
        etcd: Option<&str>,
        prefix: &str,
        wait_leader: bool,
        tweak: impl FnOnce(&mut EngineConfig),
    ) -> Result<TestCoordinator> {
        let dir = tempfile::tempdir()?;
        let state_dir = dir.path().join("state");
        Self::start_at(
            migrations,
            agents,
            etcd,
            prefix,
            wait_leader,
            (dir, state_dir),
            tweak,
        )
        .await
    }

    /// An embedded coordinator whose state lives in `state_dir` (kept by the caller, so a
    /// later coordinator can resume the same backend).
    pub(crate) async fn start_embedded_in(
        migrations: &Path,
        agents: &[&TestAgent],
        state_dir: &Path,
    ) -> Result<TestCoordinator> {
        let entries: Vec<(String, String)> = agents
            .iter()
            .map(|a| (a.id.clone(), a.address.clone()))
            .collect();
        let dir = tempfile::tempdir()?;
        Self::start_at(
            migrations,
            &entries,
            None,
            "/flotilla",
            true,
            (dir, state_dir.to_owned()),
            |_| {},
        )
        .await
    }

    async fn start_at(
        migrations: &Path,
        agents: &[(String, String)],
        etcd: Option<&str>,
        prefix: &str,
        wait_leader: bool,
        (dir, state_dir): (tempfile::TempDir, PathBuf),
        tweak: impl FnOnce(&mut EngineConfig),
    ) -> Result<TestCoordinator> {
        let fleet = fleet_file_of(dir.path(), agents)?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = format!("http://{}", listener.local_addr()?);
        let mut config = CoordinatorConfig {
            migrations: Some(migrations.to_owned()),
            project_migrations: vec![],
            backend: BackendConfig {
                etcd_endpoints: etcd.map(|e| vec![e.to_owned()]).unwrap_or_default(),
                prefix: prefix.to_owned(),
                lease_ttl: Duration::from_secs(5),
                state_dir,
                holder_id: format!("test-coordinator-{}", uuid::Uuid::new_v4()),
            },
            fleet_file: Some(fleet),
            registration_ttl: Duration::from_secs(3),
            engine: EngineConfig {
                agent_attempts: 6,
                agent_backoff_min: Duration::from_millis(100),
                agent_backoff_max: Duration::from_millis(500),
                lock_retry: Duration::from_millis(200),
                advertise: Some(address.clone()),
                ..EngineConfig::default()
            },
            tls: Default::default(),
        };
        tweak(&mut config.engine);
        let coord = build(&config, vec![], Hooks::default()).await?;
        let engine = coord.engine.clone();
        let shutdown = CancellationToken::new();
        let s = shutdown.clone();
        let handle = tokio::spawn(async move {
            if let Err(e) = serve(coord, listener, s).await {
                eprintln!("coordinator server: {e}");
            }
        });
        if wait_leader {
            tokio::time::timeout(Duration::from_secs(20), engine.wait_leader())
                .await
                .context("the test coordinator did not take the lock")?;
        }
        Ok(TestCoordinator {
            address,
            engine,
            shutdown,
            handle: Some(handle),
            _dir: dir,
        })
    }

    pub(crate) async fn client(&self) -> Result<CoordinatorServiceClient<Channel>> {
        Ok(CoordinatorServiceClient::connect(self.address.clone()).await?)
    }

    /// Start a rollout and follow it to its end; the final state.
    pub(crate) async fn rollout(&self, spec: RolloutSpec) -> Result<pb::Rollout> {
        let mut c = self.client().await?;
        let r = c
            .start_rollout(pb::StartRolloutRequest {
                spec: Some(spec.to_proto()),
            })
            .await?
            .into_inner();
        follow_to_end(&mut c, &r.id).await
    }
}

impl Drop for TestCoordinator {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(h) = self.handle.take() {
            h.abort();
        }
    }
}

/// Watch a rollout until it ends (bounded).
pub(crate) async fn follow_to_end(
    c: &mut CoordinatorServiceClient<Channel>,
    id: &str,
) -> Result<pb::Rollout> {
    let mut stream = c
        .watch_rollout(pb::WatchRolloutRequest { id: id.into() })
        .await?
        .into_inner();
    let mut last = None;
    let res = tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(ev) = stream.message().await? {
            last = ev.rollout;
        }
        anyhow::Ok(())
    })
    .await;
    match res {
        Ok(r) => r?,
        Err(_) => bail!("rollout {id} did not end within 120s; last state: {last:?}"),
    }
    last.context("watch ended without a state")
}

/// Poll rollout `id` until `until` holds (bounded by `within`); the state it held in.
pub(crate) async fn rollout_when(
    c: &CoordinatorServiceClient<Channel>,
    id: &str,
    what: &str,
    within: Duration,
    until: impl Fn(&pb::Rollout) -> bool,
) -> Result<pb::Rollout> {
    let until = &until;
    flotilla_testkit::eventually(what, within, || {
        let mut c = c.clone();
        let id = id.to_owned();
        async move {
            let r = c
                .get_rollout(pb::GetRolloutRequest { id })
                .await?
                .into_inner();
            Ok(until(&r).then_some(r))
        }
    })
    .await
}

pub(crate) fn state(r: &pb::Rollout) -> pb::RolloutState {
    pb::RolloutState::try_from(r.state).unwrap_or_default()
}

pub(crate) fn target_state(t: &pb::TargetProgress) -> pb::TargetState {
    pb::TargetState::try_from(t.state).unwrap_or_default()
}

/// Target ids of a rollout in a given state.
pub(crate) fn targets_in(r: &pb::Rollout, s: pb::TargetState) -> Vec<String> {
    r.targets
        .iter()
        .filter(|t| target_state(t) == s)
        .map(|t| t.target_id.clone())
        .collect()
}

/// A default spec: canary 1, no fingerprint gate unless asked, budget 0.
pub(crate) fn spec(goal: &str) -> RolloutSpec {
    RolloutSpec {
        goal: goal.into(),
        max_parallel: 4,
        ..RolloutSpec::default()
    }
}

/// The applied revisions of a status.
pub(crate) fn applied(s: &pb::TargetStatus) -> Vec<String> {
    s.applied.iter().map(|a| a.revision.clone()).collect()
}

/// A `flotilla` subprocess (the real binary) with stdout/stderr to files in `dir`.
pub(crate) struct Subprocess {
    pub(crate) child: tokio::process::Child,
    pub(crate) log: PathBuf,
}

impl Subprocess {
    pub(crate) fn spawn(args: &[&str], dir: &Path, name: &str) -> Result<Subprocess> {
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log)?;
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_flotilla"))
            .args(args)
            .env("FLOTILLA_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .kill_on_drop(true)
            .spawn()
            .context("spawn flotilla")?;
        Ok(Subprocess { child, log })
    }

    pub(crate) fn pid(&self) -> Result<i32> {
        self.child
            .id()
            .map(|p| p as i32)
            .context("process already exited")
    }

    pub(crate) fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Send a signal to a process (by name: KILL, STOP, CONT, TERM).
pub(crate) fn signal(pid: i32, sig: &str) -> Result<()> {
    let st = std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()?;
    if !st.success() {
        bail!("kill -{sig} {pid} failed");
    }
    Ok(())
}

/// Run the `flotilla` binary to completion, in `cwd` (default: this crate's directory):
/// (exit code, stdout, stderr).
pub(crate) async fn run_cli(args: &[&str], cwd: Option<&Path>) -> Result<(i32, String, String)> {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_flotilla"));
    // The crate's directory by default (as `cargo test` runs): it has no `migrations/`, so a
    // command without --migrations names no set and the coordinator uses its own.
    cmd.args(args)
        .stdin(Stdio::null())
        .current_dir(cwd.unwrap_or(Path::new(env!("CARGO_MANIFEST_DIR"))));
    let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .context("flotilla timed out")??;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// A free loopback address for a subprocess to listen on.
pub(crate) fn free_addr() -> String {
    format!("127.0.0.1:{}", flotilla_testkit::free_port())
}

/// Migrate `target_id` to `goal` through its agent directly, as another client would
/// (rollout id `by-hand`); fails if any step fails.
pub(crate) async fn migrate_by_hand(
    agent: &TestAgent,
    migrations: &Path,
    target_id: &str,
    goal: &flotilla_revision::Goal,
    token: u64,
) -> Result<()> {
    use flotilla_revision::{Graph, TargetHistory, plan};
    use futures::StreamExt;

    let graph = Graph::load_dir(migrations).map_err(|e| anyhow::anyhow!("{e}"))?;
    let steps = plan(&graph, &TargetHistory::default(), goal, Dialect::Sqlite)
        .map_err(|b| anyhow::anyhow!("{b}"))?
        .steps;
    let req = pb::MigrateRequest {
        target_id: target_id.into(),
        rollout_id: "by-hand".into(),
        fencing_token: token,
        steps: wire_steps(&steps),
        ..Default::default()
    };
    let mut events = agent.agent.migrate(req).await?;
    while let Some(ev) = events.next().await {
        let ev = ev?;
        anyhow::ensure!(
            !matches!(ev.event, Some(pb::step_event::Event::Failed(_))),
            "{ev:?}"
        );
    }
    Ok(())
}

/// A plan's steps as a Migrate request carries them (no guards, no backups).
pub(crate) fn wire_steps(steps: &[flotilla_revision::PlannedStep]) -> Vec<pb::Step> {
    steps
        .iter()
        .map(|s| pb::Step {
            revision: s.revision.clone(),
            direction: s.direction.to_proto() as i32,
            sql: s.sql.clone(),
            checksum: s.checksum.clone(),
            transactional: s.transactional,
            ..Default::default()
        })
        .collect()
}

/// Two revisions, `0001_a` then `0002_b`, for the planning tests.
pub(crate) fn two_revisions() -> Result<tempfile::TempDir> {
    migrations(&[
        (
            "0001_a.sql",
            &revision(
                "0001_a",
                None,
                "CREATE TABLE a (id INTEGER);",
                "DROP TABLE a;",
            ),
        ),
        (
            "0002_b.sql",
            &revision(
                "0002_b",
                Some("0001_a"),
                "CREATE TABLE b (id INTEGER);",
                "DROP TABLE b;",
            ),
        ),
    ])
}

/// The coordinator's planning snapshot of every target towards `goal`.
pub(crate) async fn planning_snapshot(
    coord: &TestCoordinator,
    goal: &flotilla_revision::Goal,
) -> Result<flotilla_coordinator::engine::FleetSnapshot> {
    Ok(coord
        .engine
        .planning_snapshot(
            &coord.engine.graph(),
            &flotilla_coordinator::rollout::Selector::default(),
            goal,
            false,
            false,
        )
        .await?)
}
