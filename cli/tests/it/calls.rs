//! A rollout's Migrate calls to a remote agent travel on one `MigrateCalls` stream, each with
//! its own outcome; an agent that does not serve the stream gets one Migrate call per target;
//! an agent that stops ends the stream without holding its shutdown, and the next rollout
//! opens a new one.
//!
//! The agent is a real `flotilla_agent::Agent` behind a counting `AgentService` that hands
//! every call to the agent's own service and counts what arrived how.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context, Result};
use flotilla_agent::AgentGrpc;
use flotilla_agent::service::calls::{CallEvents, serve as serve_calls};
use flotilla_proto as pb;
use flotilla_proto::agent_service_server::{AgentService, AgentServiceServer};
use sqlx::Connection;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::harness::*;

#[derive(Default)]
struct Counts {
    /// Migrate calls that came as calls of their own.
    unary: AtomicUsize,
    /// Migrate calls that came on a MigrateCalls stream.
    on_streams: AtomicUsize,
    /// MigrateCalls streams opened (or refused, when not served).
    streams: AtomicUsize,
    /// Migrate calls (either way) that asked for quiet (`MigrateRequest.quiet`).
    quiet: AtomicUsize,
    /// Status reads of one target: what a target is re-planned from before a Migrate.
    one_target_reads: AtomicUsize,
}

#[derive(Clone)]
struct Counting {
    inner: AgentGrpc,
    counts: Arc<Counts>,
    /// Serve MigrateCalls (else UNIMPLEMENTED, as an older agent answers).
    serves_calls: bool,
    /// This copy serves the calls of a stream.
    on_stream: bool,
    shutdown: CancellationToken,
}

use flotilla_agent::EventStream as Events;

#[tonic::async_trait]
impl AgentService for Counting {
    type MigrateStream = Events;
    type MigrateCallsStream = CallEvents;

    async fn migrate(&self, req: Request<pb::MigrateRequest>) -> Result<Response<Events>, Status> {
        let count = if self.on_stream {
            &self.counts.on_streams
        } else {
            &self.counts.unary
        };
        count.fetch_add(1, Ordering::SeqCst);
        if req.get_ref().quiet {
            self.counts.quiet.fetch_add(1, Ordering::SeqCst);
        }
        self.inner.migrate(req).await
    }
    async fn migrate_calls(
        &self,
        req: Request<Streaming<pb::MigrateCall>>,
    ) -> Result<Response<CallEvents>, Status> {
        self.counts.streams.fetch_add(1, Ordering::SeqCst);
        if !self.serves_calls {
            return Err(Status::unimplemented(
                "flotilla.v1.AgentService/MigrateCalls",
            ));
        }
        let on_stream = Counting {
            on_stream: true,
            ..self.clone()
        };
        Ok(Response::new(serve_calls(
            Arc::new(on_stream),
            req.into_inner(),
            self.shutdown.clone(),
        )))
    }
    async fn validate(
        &self,
        req: Request<pb::ValidateRequest>,
    ) -> Result<Response<pb::ValidateResponse>, Status> {
        self.inner.validate(req).await
    }
    async fn status(
        &self,
        req: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        if req.get_ref().target_ids.len() == 1 {
            self.counts.one_target_reads.fetch_add(1, Ordering::SeqCst);
        }
        self.inner.status(req).await
    }
    async fn stamp(
        &self,
        req: Request<pb::StampRequest>,
    ) -> Result<Response<pb::StampResponse>, Status> {
        self.inner.stamp(req).await
    }
    async fn repair(
        &self,
        req: Request<pb::RepairRequest>,
    ) -> Result<Response<pb::RepairResponse>, Status> {
        self.inner.repair(req).await
    }
    async fn detect_foreign(
        &self,
        req: Request<pb::DetectForeignRequest>,
    ) -> Result<Response<pb::DetectForeignResponse>, Status> {
        self.inner.detect_foreign(req).await
    }
    async fn adopt(
        &self,
        req: Request<pb::AdoptTargetRequest>,
    ) -> Result<Response<pb::StampResponse>, Status> {
        self.inner.adopt(req).await
    }
    async fn list_backups(
        &self,
        req: Request<pb::ListBackupsRequest>,
    ) -> Result<Response<pb::ListBackupsResponse>, Status> {
        self.inner.list_backups(req).await
    }
    async fn restore_backup(
        &self,
        req: Request<pb::RestoreBackupRequest>,
    ) -> Result<Response<pb::RestoreBackupResponse>, Status> {
        self.inner.restore_backup(req).await
    }
    async fn prune_backups(
        &self,
        req: Request<pb::PruneBackupsRequest>,
    ) -> Result<Response<pb::PruneBackupsResponse>, Status> {
        self.inner.prune_backups(req).await
    }
}

/// A counting agent over `agent`'s service at `http://127.0.0.1:PORT`, stopped on drop.
struct Served {
    address: String,
    counts: Arc<Counts>,
    stop: CancellationToken,
    handle: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

async fn serve_counting(agent: &TestAgent, serves_calls: bool) -> Result<Served> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = format!("http://{}", listener.local_addr()?);
    let counts = Arc::new(Counts::default());
    let stop = CancellationToken::new();
    let service = Counting {
        inner: AgentGrpc::new(agent.agent.clone()),
        counts: counts.clone(),
        serves_calls,
        on_stream: false,
        shutdown: stop.clone(),
    };
    let s = stop.clone();
    let handle = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AgentServiceServer::new(service))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                s.cancelled_owned(),
            ),
    );
    Ok(Served {
        address,
        counts,
        stop,
        handle,
    })
}

impl Drop for Served {
    fn drop(&mut self) {
        self.stop.cancel();
        self.handle.abort();
    }
}

/// Ten targets on one stream: each call gets its own events and end (one fails and is rolled
/// back, the others succeed), none comes as a call of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rollout_sends_its_calls_on_one_stream_each_with_its_own_outcome() -> Result<()> {
    let set = two_revisions()?;
    let (dir, targets) = sqlite_targets("c", 10)?;
    // `c04` already has a table `a`: its first step fails there, and only there.
    let mut conn = sqlx::SqliteConnection::connect(&format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("c04.db").display()
    ))
    .await?;
    sqlx::raw_sql("CREATE TABLE a (x INTEGER)")
        .execute(&mut conn)
        .await?;
    drop(conn);
    let agent = TestAgent::start("agent-calls", targets).await?;
    let served = serve_counting(&agent, true).await?;
    let coord = TestCoordinator::start_with(
        set.path(),
        &[("agent-calls".into(), served.address.clone())],
        None,
    )
    .await?;
    let mut s = spec("head");
    s.max_parallel = 5;
    s.failure_budget = flotilla_coordinator::rollout::Budget::Count(5);
    let r = coord.rollout(s).await?;

    let failed = targets_in(&r, pb::TargetState::Failed);
    assert_eq!(failed, vec!["c04".to_owned()], "{r:#?}");
    let c04 = r.targets.iter().find(|t| t.target_id == "c04").unwrap();
    assert!(
        c04.message.contains("rolled back"),
        "the failed call's own message: {}",
        c04.message
    );
    let mut ok = targets_in(&r, pb::TargetState::Succeeded);
    ok.sort();
    assert_eq!(ok.len(), 9, "{r:#?}");
    let statuses = agent.statuses(false).await?;
    for id in &ok {
        assert_eq!(applied(&statuses[id]), vec!["0001_a", "0002_b"], "{id}");
    }
    assert!(applied(&statuses["c04"]).is_empty());

    assert_eq!(
        served.counts.streams.load(Ordering::SeqCst),
        1,
        "one stream"
    );
    assert_eq!(
        served.counts.on_streams.load(Ordering::SeqCst),
        10,
        "every target's call on it"
    );
    // Each call sent the plan made when the rollout was planned, with the state it was made
    // from as its precondition: no target was read again first.
    assert_eq!(
        served.counts.one_target_reads.load(Ordering::SeqCst),
        0,
        "targets re-read before their call"
    );
    assert_eq!(served.counts.unary.load(Ordering::SeqCst), 0);
    assert_eq!(
        served.counts.quiet.load(Ordering::SeqCst),
        10,
        "a rollout asks for quiet calls"
    );
    Ok(())
}

/// A first step that counts to ten million (long enough to be seen running), then a quick one.
fn slow_then_quick() -> Result<tempfile::TempDir> {
    migrations(&[
        (
            "0001_slow.sql",
            &revision(
                "0001_slow",
                None,
                "CREATE TABLE slow AS WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 10000000) SELECT count(*) AS c FROM n;",
                "DROP TABLE slow;",
            ),
        ),
        (
            "0002_quick.sql",
            &revision(
                "0002_quick",
                Some("0001_slow"),
                "CREATE TABLE quick (id INTEGER);",
                "DROP TABLE quick;",
            ),
        ),
    ])
}

/// Without the agent's start event for the first step (a rollout asks for quiet calls), a
/// running target's record still names the step it runs: the first one sent, and none once
/// it is done.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_running_target_names_its_step_without_start_events() -> Result<()> {
    let set = slow_then_quick()?;
    let (_dir, targets) = sqlite_targets("q", 1)?;
    let agent = TestAgent::start("agent-quiet", targets).await?;
    let served = serve_counting(&agent, true).await?;
    let coord = TestCoordinator::start_with(
        set.path(),
        &[("agent-quiet".into(), served.address.clone())],
        None,
    )
    .await?;
    let mut c = coord.client().await?;
    let r = c
        .start_rollout(pb::StartRolloutRequest {
            spec: Some(spec("head").to_proto()),
        })
        .await?
        .into_inner();
    let q01 = |r: &pb::Rollout| r.targets.iter().find(|t| t.target_id == "q01").cloned();
    let running = rollout_when(
        &c,
        &r.id,
        "q01 running with its step named",
        std::time::Duration::from_secs(60),
        |r| {
            q01(r).is_some_and(|t| {
                target_state(&t) == pb::TargetState::Running && !t.current_revision.is_empty()
            })
        },
    )
    .await?;
    let t = q01(&running).context("q01")?;
    assert_eq!(
        (t.current_revision.as_str(), t.steps_done),
        ("0001_slow", 0)
    );
    let end = follow_to_end(&mut c, &r.id).await?;
    let t = q01(&end).context("q01")?;
    assert_eq!(target_state(&t), pb::TargetState::Succeeded, "{end:#?}");
    assert_eq!((t.current_revision.as_str(), t.steps_done), ("", 2));
    assert_eq!(served.counts.quiet.load(Ordering::SeqCst), 1);
    Ok(())
}

/// An agent that does not serve MigrateCalls (an older one) is asked once, then gets one
/// Migrate call per target, and the rollout is the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_agent_without_the_stream_gets_a_call_per_target() -> Result<()> {
    let set = two_revisions()?;
    let (_dir, targets) = sqlite_targets("u", 6)?;
    let agent = TestAgent::start("agent-unary", targets).await?;
    let served = serve_counting(&agent, false).await?;
    let coord = TestCoordinator::start_with(
        set.path(),
        &[("agent-unary".into(), served.address.clone())],
        None,
    )
    .await?;
    let r = coord.rollout(spec("head")).await?;
    assert_eq!(state(&r), pb::RolloutState::Succeeded, "{r:#?}");
    assert_eq!(targets_in(&r, pb::TargetState::Succeeded).len(), 6);
    assert_eq!(
        served.counts.streams.load(Ordering::SeqCst),
        1,
        "asked once"
    );
    assert_eq!(served.counts.unary.load(Ordering::SeqCst), 6);
    assert_eq!(served.counts.on_streams.load(Ordering::SeqCst), 0);
    Ok(())
}

/// The stream stays open after a rollout; stopping the agent ends it (the stop does not wait
/// on it), and after a restart the next rollout opens a new stream and runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stopped_agent_ends_the_stream_and_the_next_rollout_opens_another() -> Result<()> {
    let set = two_revisions()?;
    let (_dir, targets) = sqlite_targets("r", 4)?;
    let mut agent = TestAgent::start("agent-restart", targets).await?;
    let coord = TestCoordinator::start(set.path(), &[&agent], None).await?;
    let r = coord.rollout(spec("0001_a")).await?;
    assert_eq!(state(&r), pb::RolloutState::Succeeded, "{r:#?}");
    // Bounded inside (30 s): an open stream that held the graceful stop would fail here.
    agent.stop().await?;
    agent.restart().await?;
    let r = coord.rollout(spec("head")).await?;
    assert_eq!(state(&r), pb::RolloutState::Succeeded, "{r:#?}");
    let statuses = agent.statuses(false).await?;
    for (id, s) in &statuses {
        assert_eq!(applied(s), vec!["0001_a", "0002_b"], "{id}");
    }
    Ok(())
}

/// A caller that lets go of its call (here: drops the events after the first step started)
/// is told to the agent at once, as a Migrate's client hanging up is: the run stops before
/// its next step, while the stream serves on. Without the cancel, the agent would run the
/// second step for nobody.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_call_let_go_stops_before_its_next_step() -> Result<()> {
    use flotilla_coordinator::fleet::{AgentClient, RemoteAgent};
    use flotilla_revision::{Goal, Graph, TargetHistory, plan};
    use futures::StreamExt;

    // The first step is long enough to let go during it, the second quick.
    let set = slow_then_quick()?;
    let (_dir, targets) = sqlite_targets("g", 1)?;
    let agent = TestAgent::start("agent-letgo", targets).await?;
    let served = serve_counting(&agent, true).await?;
    let remote = RemoteAgent::new(
        "agent-letgo",
        &served.address,
        None,
        &flotilla_rpc::tls::ClientTls::default(),
    )?;
    let graph = Graph::load_dir(set.path()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let steps = plan(
        &graph,
        &TargetHistory::default(),
        &Goal::Head,
        flotilla_core::Dialect::Sqlite,
    )
    .map_err(|b| anyhow::anyhow!("{b}"))?
    .steps;
    let req = pb::MigrateRequest {
        target_id: "g01".into(),
        rollout_id: "let-go".into(),
        fencing_token: 1,
        transaction_per_step: true,
        steps: wire_steps(&steps),
        ..Default::default()
    };
    let mut events = remote
        .migrate(req)
        .await
        .map_err(|s| anyhow::anyhow!("{s}"))?;
    loop {
        let ev = events
            .next()
            .await
            .context("the call ended early")?
            .map_err(|s| anyhow::anyhow!("{s}"))?;
        if matches!(ev.event, Some(pb::step_event::Event::Started(_))) {
            anyhow::ensure!(ev.revision == "0001_slow", "{ev:?}");
            break;
        }
    }
    drop(events);
    // The second step, sent again on its own: it waits for the first run's lock, so it runs
    // once that run has ended. Applied by it, not skipped, means the first run stopped
    // before its second step.
    let quick = pb::MigrateRequest {
        target_id: "g01".into(),
        rollout_id: "let-go".into(),
        fencing_token: 1,
        steps: wire_steps(&steps[1..]),
        ..Default::default()
    };
    let mut second = agent
        .agent
        .migrate(quick)
        .await
        .map_err(|s| anyhow::anyhow!("{s}"))?;
    let mut outcome = None;
    while let Some(ev) = second.next().await {
        match ev.map_err(|s| anyhow::anyhow!("{s}"))?.event {
            Some(pb::step_event::Event::Succeeded(_)) => outcome = Some("applied"),
            Some(pb::step_event::Event::Skipped(_)) => {
                outcome = Some("skipped: the first run went on")
            }
            _ => {}
        }
    }
    assert_eq!(outcome, Some("applied"));
    let s = agent.statuses(true).await?;
    assert_eq!(applied(&s["g01"]), vec!["0001_slow", "0002_quick"]);
    assert_eq!(served.counts.streams.load(Ordering::SeqCst), 1);
    Ok(())
}
