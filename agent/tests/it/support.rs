//! Helpers for the agent's integration tests: plans, agents on real targets, a loopback gRPC
//! server, and collecting a Migrate stream.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use flotilla_agent::config::{LockConfig, RetryConfig};
use flotilla_agent::{Agent, AgentConfig, EventStream, TargetConfig};
use flotilla_core::{Dialect, Secret, checksum};
use flotilla_proto::agent_service_client::AgentServiceClient;
use flotilla_proto::step_event::Event;
use flotilla_proto::{
    Direction, MigrateRequest, StatusRequest, Step, StepEvent, TargetStatus, ValidateRequest,
};
use futures::{Stream, StreamExt};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

/// An up step, transactional, with the right checksum.
pub(crate) fn up(revision: &str, sql: &str) -> Step {
    Step {
        revision: revision.into(),
        direction: Direction::Up as i32,
        sql: sql.into(),
        checksum: checksum(sql),
        transactional: true,
        up_checksum: String::new(),
        backup_tables: vec![],
        ..Default::default()
    }
}

pub(crate) fn migrate(target: &str, rollout: &str, token: u64, steps: Vec<Step>) -> MigrateRequest {
    MigrateRequest {
        target_id: target.into(),
        rollout_id: rollout.into(),
        fencing_token: token,
        steps,
        lock_wait_ms: 0,
        ..Default::default()
    }
}

pub(crate) fn target(id: &str, dialect: Dialect, url: &str) -> TargetConfig {
    TargetConfig {
        id: id.into(),
        dialect,
        url: Secret::new(url),
        labels: [("env".to_owned(), "test".to_owned())].into(),
    }
}

/// A test agent config: short retry delays, a 5s lock wait.
pub(crate) fn config(targets: Vec<TargetConfig>) -> AgentConfig {
    AgentConfig {
        agent_id: "agent-test".into(),
        targets,
        retry: RetryConfig {
            initial_delay: Duration::from_millis(50),
            max_delay: Duration::from_millis(500),
            max_attempts: 10,
            max_elapsed: Duration::from_secs(30),
        },
        lock: LockConfig {
            wait: Duration::from_secs(5),
            max_poll_interval: Duration::from_millis(50),
            ..LockConfig::default()
        },
        ..AgentConfig::default()
    }
}

pub(crate) async fn agent(targets: Vec<TargetConfig>) -> Result<Arc<Agent>> {
    Ok(Arc::new(Agent::new(config(targets)).await?))
}

/// Every event of a Migrate stream and the error status it ended with, if any.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    /// The step and lock events, in order.
    pub(crate) events: Vec<StepEvent>,
    /// The closing `MigrateFinished` event (kept apart: it is about the target, not a step).
    pub(crate) finished: Option<flotilla_proto::MigrateFinished>,
    pub(crate) error: Option<tonic::Status>,
}

impl Outcome {
    pub(crate) fn kinds(&self) -> Vec<String> {
        self.events
            .iter()
            .map(|e| format!("{}:{}", e.revision, kind(e)))
            .collect()
    }

    pub(crate) fn failed(&self) -> Option<&flotilla_proto::StepFailed> {
        self.events.iter().find_map(|e| match &e.event {
            Some(Event::Failed(f)) => Some(f),
            _ => None,
        })
    }

    /// The error status, or a test failure when the stream ended cleanly.
    pub(crate) fn err(&self) -> Result<&tonic::Status> {
        self.error
            .as_ref()
            .with_context(|| format!("expected an error; events {:?}", self.kinds()))
    }
}

pub(crate) fn kind(e: &StepEvent) -> &'static str {
    match &e.event {
        Some(Event::Started(_)) => "started",
        Some(Event::Retrying(_)) => "retrying",
        Some(Event::Succeeded(_)) => "succeeded",
        Some(Event::Failed(_)) => "failed",
        Some(Event::Skipped(_)) => "skipped",
        Some(Event::LockWaiting(_)) => "lock_waiting",
        Some(Event::LockAcquired(_)) => "lock_acquired",
        Some(Event::Finished(_)) => "finished",
        None => "none",
    }
}

/// Drain a stream of events (from the Agent API or a gRPC client).
pub(crate) async fn collect<S>(mut stream: S) -> Result<Outcome>
where
    S: Stream<Item = Result<StepEvent, tonic::Status>> + Unpin,
{
    let mut out = Outcome::default();
    let deadline = Duration::from_secs(60);
    loop {
        match tokio::time::timeout(deadline, stream.next()).await {
            Err(_) => bail!(
                "migrate stream still open after {deadline:?}; events {:?}",
                out.kinds()
            ),
            Ok(None) => return Ok(out),
            Ok(Some(Ok(StepEvent {
                event: Some(Event::Finished(f)),
                ..
            }))) => {
                ensure!(out.finished.is_none(), "two MigrateFinished events");
                out.finished = Some(f);
            }
            Ok(Some(Ok(ev))) => {
                ensure!(
                    out.finished.is_none(),
                    "an event after MigrateFinished: {ev:?}"
                );
                out.events.push(ev);
            }
            Ok(Some(Err(status))) => {
                out.error = Some(status);
                // The error is the last item.
                if let Ok(Some(extra)) = tokio::time::timeout(deadline, stream.next()).await {
                    bail!("item after the error status: {extra:?}");
                }
                return Ok(out);
            }
        }
    }
}

/// Run a Migrate call through the Agent API to completion.
pub(crate) async fn run(agent: &Agent, req: MigrateRequest) -> Result<Outcome> {
    match agent.migrate(req).await {
        Ok(stream) => collect(stream).await,
        Err(status) => Ok(Outcome {
            error: Some(status),
            ..Outcome::default()
        }),
    }
}

/// Wait for the next event of a stream, whatever it is.
pub(crate) async fn next_event(stream: &mut EventStream) -> Result<StepEvent> {
    match tokio::time::timeout(Duration::from_secs(30), stream.next()).await {
        Ok(Some(Ok(ev))) => Ok(ev),
        Ok(Some(Err(status))) => bail!("stream failed: {status:?}"),
        Ok(None) => bail!("stream ended"),
        Err(_) => bail!("no event within 30s"),
    }
}

/// The status of one target (no history).
pub(crate) async fn status(
    agent: &Agent,
    target: &str,
    include_history: bool,
) -> Result<TargetStatus> {
    let resp = agent
        .status(StatusRequest {
            target_ids: vec![target.into()],
            include_history,
            fencing_token: 0,
            ..Default::default()
        })
        .await?;
    let ts = resp
        .targets
        .into_iter()
        .next()
        .context("no target in the status response")?;
    if !ts.error.is_empty() {
        bail!("status of {target}: {}", ts.error);
    }
    Ok(ts)
}

/// The schema fingerprint of one target.
pub(crate) async fn fingerprint(agent: &Agent, target: &str) -> Result<String> {
    let resp = agent
        .validate(ValidateRequest {
            project: Default::default(),
            target_ids: vec![target.into()],
            expected: vec![],
            skip_fingerprint: false,
            include_catalog: false,
        })
        .await?;
    let tv = resp
        .targets
        .into_iter()
        .next()
        .context("no target in the validate response")?;
    if !tv.error.is_empty() {
        bail!("validate {target}: {}", tv.error);
    }
    Ok(tv.fingerprint)
}

/// The stable reason of an agent status.
pub(crate) fn reason(status: &tonic::Status) -> String {
    flotilla_agent::Reason::of_status(status)
        .unwrap_or_default()
        .to_owned()
}

/// The agent served over gRPC on a loopback port.
pub(crate) struct Server {
    pub(crate) addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    handle: JoinHandle<Result<(), flotilla_agent::ServeError>>,
}

impl Server {
    pub(crate) async fn start(agent: Arc<Agent>) -> Result<Server> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(flotilla_agent::serve(agent, listener, async move {
            let _ = rx.await;
        }));
        Ok(Server {
            addr,
            stop: Some(tx),
            handle,
        })
    }

    pub(crate) async fn client(&self) -> Result<AgentServiceClient<Channel>> {
        let client = AgentServiceClient::connect(format!("http://{}", self.addr))
            .await
            .context("connecting to the agent")?;
        // Above the agent's message limit: its own checks are what the tests see.
        Ok(client
            .max_decoding_message_size(128 << 20)
            .max_encoding_message_size(128 << 20))
    }

    /// Trigger shutdown without waiting.
    pub(crate) fn signal(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }

    /// Shut down and wait for `serve` to return.
    pub(crate) async fn stop(mut self) -> Result<()> {
        self.signal();
        tokio::time::timeout(Duration::from_secs(30), self.handle)
            .await
            .context("serve did not return within 30s")???;
        Ok(())
    }
}

/// A gRPC Migrate call to completion.
pub(crate) async fn run_grpc(
    client: &mut AgentServiceClient<Channel>,
    req: MigrateRequest,
) -> Result<Outcome> {
    match client.migrate(req).await {
        Ok(resp) => collect(resp.into_inner()).await,
        Err(status) => Ok(Outcome {
            error: Some(status),
            ..Outcome::default()
        }),
    }
}

/// Where test targets live: SQLite files in a temp dir, or a real server.
pub(crate) enum Backend {
    Sqlite(tempfile::TempDir, std::sync::atomic::AtomicUsize),
    Postgres(flotilla_testkit::Postgres),
    MariaDb(flotilla_testkit::MariaDb),
}

impl Backend {
    pub(crate) async fn start(dialect: Dialect) -> Result<Backend> {
        Ok(match dialect {
            Dialect::Sqlite => Backend::Sqlite(tempfile::tempdir()?, Default::default()),
            Dialect::Postgres => Backend::Postgres(flotilla_testkit::Postgres::start().await?),
            Dialect::Mysql => Backend::MariaDb(flotilla_testkit::MariaDb::start().await?),
        })
    }

    pub(crate) fn dialect(&self) -> Dialect {
        match self {
            Backend::Sqlite(..) => Dialect::Sqlite,
            Backend::Postgres(_) => Dialect::Postgres,
            Backend::MariaDb(_) => Dialect::Mysql,
        }
    }

    /// URL of a new, empty database.
    pub(crate) async fn fresh_url(&self) -> Result<String> {
        match self {
            Backend::Sqlite(dir, n) => {
                let i = n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Ok(format!(
                    "sqlite://{}?mode=rwc",
                    dir.path().join(format!("t{i}.db")).display()
                ))
            }
            Backend::Postgres(pg) => pg.fresh_database().await,
            Backend::MariaDb(my) => my.fresh_database().await,
        }
    }

    /// A new target on this backend.
    pub(crate) async fn fresh_target(&self, id: &str) -> Result<TargetConfig> {
        Ok(target(id, self.dialect(), &self.fresh_url().await?))
    }
}
