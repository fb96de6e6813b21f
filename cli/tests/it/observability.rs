//! Issue 5, observability, with the real binaries as subprocesses (so the process-wide
//! tracer provider, propagator and metrics recorder of each are their own, configured from
//! the environment exactly as in production):
//! 1. a rollout over two agents is one trace, exported over OTLP/gRPC to a receiver in this
//!    test: every span shares the trace id `rollout get` prints, agent step spans descend from
//!    the coordinator's target spans, and a forced retry shows up as a span event;
//! 2. `/metrics` of the coordinator and the agents after a rollout has the right values and
//!    passes `promtool check metrics`;
//! 3. with no `OTEL_*` variable, agent, coordinator and CLI connect to nothing but each other
//!    (every `connect(2)` traced with strace).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::Span;
use sqlx::Connection;

use flotilla_proto as pb;
use flotilla_proto::coordinator_service_client::CoordinatorServiceClient;
use flotilla_testkit::{FaultProxy, Postgres, eventually, eventually_true, free_port};

pub(super) const DEADLINE: Duration = Duration::from_secs(90);

// ---- an OTLP/gRPC trace receiver ----

/// A span as received, with the `service.name` of its resource.
#[derive(Clone, Debug)]
pub(super) struct Received {
    pub(super) service: String,
    pub(super) span: Span,
}

impl Received {
    pub(super) fn trace_id(&self) -> String {
        hex::encode(&self.span.trace_id)
    }
    pub(super) fn attr(&self, key: &str) -> Option<String> {
        attr(&self.span.attributes, key)
    }
}

pub(super) fn attr(attrs: &[KeyValue], key: &str) -> Option<String> {
    let v = attrs
        .iter()
        .find(|kv| kv.key == key)?
        .value
        .as_ref()?
        .value
        .as_ref()?;
    Some(match v {
        any_value::Value::StringValue(s) => s.clone(),
        any_value::Value::IntValue(i) => i.to_string(),
        any_value::Value::BoolValue(b) => b.to_string(),
        any_value::Value::DoubleValue(d) => d.to_string(),
        other => format!("{other:?}"),
    })
}

#[derive(Clone, Default)]
pub(super) struct Receiver {
    spans: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    pub(super) fn spans(&self) -> Vec<Received> {
        self.spans.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut out = self.spans.lock().unwrap_or_else(|p| p.into_inner());
        for rs in req.into_inner().resource_spans {
            let service = rs
                .resource
                .as_ref()
                .and_then(|r| attr(&r.attributes, "service.name"))
                .unwrap_or_default();
            for ss in rs.scope_spans {
                out.extend(ss.spans.into_iter().map(|span| Received {
                    service: service.clone(),
                    span,
                }));
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// The receiver on 127.0.0.1:<free port>; served until the test's runtime ends.
pub(super) async fn start_receiver() -> Result<(SocketAddr, Receiver)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let receiver = Receiver::default();
    let server = tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(receiver.clone()))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
    tokio::spawn(server);
    Ok((addr, receiver))
}

// ---- subprocesses ----

pub(super) fn flotilla_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_flotilla"))
}

/// `flotilla-agent`, built beside `flotilla` by `cargo test --workspace` (scripts/test.sh).
pub(super) fn agent_bin() -> Result<PathBuf> {
    let path = flotilla_bin().with_file_name("flotilla-agent");
    ensure!(
        path.exists(),
        "{} is missing: build it with `cargo build -p flotilla-agent` (or run the tests with \
         `cargo test --workspace`, as scripts/test.sh does)",
        path.display()
    );
    Ok(path)
}

fn strace_bin() -> Result<PathBuf> {
    let out = std::process::Command::new("sh")
        .args(["-c", "command -v strace"])
        .output()?;
    let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    ensure!(
        out.status.success() && !path.is_empty(),
        "strace is not installed: run scripts/install-deps.sh --test (apt-get install strace)"
    );
    Ok(PathBuf::from(path))
}

/// A command with none of the caller's `OTEL_*`, `FLOTILLA_*` or `RUST_LOG` variables.
fn clean_command(program: &Path) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(program);
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if k.starts_with("OTEL_") || k.starts_with("FLOTILLA_") || k == "RUST_LOG" {
            cmd.env_remove(k.as_ref());
        }
    }
    cmd
}

/// A long-running subprocess (agent, coordinator), its output in a log file.
pub(super) struct Proc {
    name: String,
    child: tokio::process::Child,
    log: PathBuf,
    /// Wrapped in strace: the traced process is strace's child.
    traced: bool,
}

impl Proc {
    pub(super) fn spawn(
        program: &Path,
        args: &[String],
        env: &[(&str, String)],
        dir: &Path,
        name: &str,
        strace_to: Option<&Path>,
    ) -> Result<Proc> {
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log)?;
        let mut cmd = match strace_to {
            Some(out) => {
                let mut cmd = clean_command(&strace_bin()?);
                cmd.args(["-f", "-qq", "-e", "trace=connect", "-o"])
                    .arg(out)
                    .arg("--")
                    .arg(program);
                cmd
            }
            None => clean_command(program),
        };
        cmd.args(args)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning {name} ({})", program.display()))?;
        Ok(Proc {
            name: name.to_owned(),
            child,
            log,
            traced: strace_to.is_some(),
        })
    }

    pub(super) fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The pid of the process itself (strace's child when traced).
    async fn target_pid(&self) -> Result<u32> {
        let pid = self.child.id().context("process already reaped")?;
        if !self.traced {
            return Ok(pid);
        }
        eventually("the traced process to start", DEADLINE, || async move {
            let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))?;
            Ok(children
                .split_whitespace()
                .next()
                .and_then(|c| c.parse().ok()))
        })
        .await
    }

    /// SIGKILL (a process that dies without a word), and reap it.
    pub(super) async fn kill(&mut self) -> Result<()> {
        self.child.kill().await?;
        Ok(())
    }

    /// SIGTERM, then wait for a clean exit (spans and metrics flushed); returns the log.
    pub(super) async fn stop(mut self) -> Result<String> {
        let pid = self.target_pid().await?;
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()?;
        ensure!(status.success(), "kill -TERM {pid} ({}) failed", self.name);
        let exit = tokio::time::timeout(DEADLINE, self.child.wait())
            .await
            .with_context(|| {
                format!(
                    "{} did not exit after SIGTERM:\n{}",
                    self.name,
                    self.log_text()
                )
            })??;
        let log = self.log_text();
        ensure!(exit.success(), "{} exited with {exit}:\n{log}", self.name);
        Ok(log)
    }
}

/// Run the `flotilla` CLI to its end; (stdout, stderr).
pub(super) async fn cli(
    args: &[String],
    env: &[(&str, String)],
    strace_to: Option<&Path>,
) -> Result<(String, String)> {
    let mut cmd = match strace_to {
        Some(out) => {
            let mut cmd = clean_command(&strace_bin()?);
            cmd.args(["-f", "-qq", "-e", "trace=connect", "-o"])
                .arg(out)
                .arg("--")
                .arg(flotilla_bin());
            cmd
        }
        None => clean_command(&flotilla_bin()),
    };
    cmd.args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(DEADLINE, cmd.output())
        .await
        .context("flotilla CLI timed out")??;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    ensure!(
        out.status.success(),
        "flotilla {args:?} exited with {}:\n{stdout}\n{stderr}",
        out.status
    );
    Ok((stdout, stderr))
}

pub(super) fn s(v: impl ToString) -> String {
    v.to_string()
}

pub(super) struct Fleet {
    pub(super) agents: Vec<(String, u16, Proc)>,
    pub(super) coordinator: Proc,
    pub(super) coordinator_url: String,
}

/// Start agents (`id`, targets `ID=URL`, extra args, env) and a coordinator with a static
/// fleet file pointing at them; wait until the coordinator leads.
#[allow(clippy::type_complexity)]
pub(super) async fn start_fleet(
    dir: &Path,
    migrations: &Path,
    agents: &[(&str, Vec<String>, Vec<String>, Vec<(&str, String)>)],
    coordinator_args: &[String],
    coordinator_env: &[(&str, String)],
    strace: bool,
) -> Result<Fleet> {
    let mut started = Vec::new();
    let mut fleet_toml = String::new();
    for (id, targets, extra, env) in agents {
        let port = free_port();
        let mut args = vec![
            s("--agent-id"),
            s(id),
            s("--listen"),
            format!("127.0.0.1:{port}"),
        ];
        for t in targets {
            args.extend([s("--target"), t.clone()]);
        }
        args.extend(extra.iter().cloned());
        let trace = strace.then(|| dir.join(format!("{id}.strace")));
        let proc = Proc::spawn(&agent_bin()?, &args, env, dir, id, trace.as_deref())?;
        fleet_toml.push_str(&format!(
            "[[agents]]\nid = \"{id}\"\naddress = \"http://127.0.0.1:{port}\"\n\n"
        ));
        started.push((id.to_string(), port, proc));
    }
    for (id, port, proc) in &started {
        eventually(&format!("agent {id} serving"), DEADLINE, || async move {
            // gRPC health, not Status: the probe must not add a trace of its own.
            let channel =
                tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))?
                    .connect()
                    .await?;
            let mut c = tonic_health::pb::health_client::HealthClient::new(channel);
            let r = c
                .check(tonic_health::pb::HealthCheckRequest {
                    service: String::new(),
                })
                .await?
                .into_inner();
            Ok(
                (r.status
                    == tonic_health::pb::health_check_response::ServingStatus::Serving as i32)
                    .then_some(()),
            )
        })
        .await
        .with_context(|| proc.log_text())?;
    }
    let fleet_file = dir.join("fleet.toml");
    std::fs::write(&fleet_file, fleet_toml)?;
    let port = free_port();
    let mut args = vec![
        s("--migrations"),
        migrations.display().to_string(),
        s("coordinator"),
        s("--listen"),
        format!("127.0.0.1:{port}"),
        s("--state-dir"),
        dir.join("state").display().to_string(),
        s("--fleet"),
        fleet_file.display().to_string(),
        s("--id"),
        s("obs-coordinator"),
    ];
    args.extend(coordinator_args.iter().cloned());
    let trace = strace.then(|| dir.join("coordinator.strace"));
    let coordinator = Proc::spawn(
        &flotilla_bin(),
        &args,
        coordinator_env,
        dir,
        "coordinator",
        trace.as_deref(),
    )?;
    eventually_true("the coordinator to lead", DEADLINE, || {
        let log = coordinator.log_text();
        async move { Ok(log.contains("took the fleet lock")) }
    })
    .await
    .with_context(|| coordinator.log_text())?;
    Ok(Fleet {
        agents: started,
        coordinator,
        coordinator_url: format!("http://127.0.0.1:{port}"),
    })
}

impl Fleet {
    pub(super) async fn stop(self) -> Result<(String, Vec<String>)> {
        let coordinator = self.coordinator.stop().await?;
        let mut agents = Vec::new();
        for (_, _, p) in self.agents {
            agents.push(p.stop().await?);
        }
        Ok((coordinator, agents))
    }
}

/// `flotilla rollout start` (no wait); the rollout id.
pub(super) async fn start_rollout(
    migrations: &Path,
    coordinator: &str,
    env: &[(&str, String)],
    strace_to: Option<&Path>,
) -> Result<String> {
    let args = [
        s("--migrations"),
        migrations.display().to_string(),
        s("--output"),
        s("json"),
        s("rollout"),
        s("start"),
        s("--coordinator"),
        s(coordinator),
    ];
    let (stdout, _) = cli(&args, env, strace_to).await?;
    let v: serde_json::Value = serde_json::from_str(&stdout).with_context(|| stdout.clone())?;
    v["id"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("no rollout id in {stdout}"))
}

/// Wait for the rollout to end; it must have succeeded.
pub(super) async fn wait_succeeded(coordinator: &str, id: &str) -> Result<pb::Rollout> {
    let mut c = CoordinatorServiceClient::connect(coordinator.to_owned()).await?;
    let r = eventually("the rollout to end", DEADLINE, || {
        let mut c = c.clone();
        async move {
            let r = c
                .get_rollout(pb::GetRolloutRequest { id: id.to_owned() })
                .await?
                .into_inner();
            let done = !matches!(
                pb::RolloutState::try_from(r.state),
                Ok(pb::RolloutState::Pending
                    | pb::RolloutState::Running
                    | pb::RolloutState::Paused)
            );
            Ok(done.then_some(r))
        }
    })
    .await?;
    ensure!(
        r.state == pb::RolloutState::Succeeded as i32,
        "rollout did not succeed: {r:#?}"
    );
    let _ = c
        .list_rollouts(pb::ListRolloutsRequest {
            project: Default::default(),
            limit: 1,
        })
        .await?;
    Ok(r)
}

pub(super) fn migrations_dir(dir: &Path) -> Result<PathBuf> {
    let m = dir.join("migrations");
    std::fs::create_dir_all(&m)?;
    // Slow on PostgreSQL, so the test can cut its connection while the step runs.
    std::fs::write(
        m.join("0001_slow.sql"),
        "-- revision: 0001_slow\n-- migrate:up\nCREATE TABLE obs_one (id INTEGER PRIMARY KEY);\n\
         -- migrate:up postgres\nSELECT pg_sleep(2);\nCREATE TABLE obs_one (id INTEGER PRIMARY KEY);\n\
         -- migrate:down\nDROP TABLE obs_one;\n",
    )?;
    std::fs::write(
        m.join("0002_two.sql"),
        "-- revision: 0002_two\n-- revises: 0001_slow\n-- migrate:up\nCREATE TABLE obs_two (id INTEGER PRIMARY KEY);\n\
         -- migrate:down\nDROP TABLE obs_two;\n",
    )?;
    Ok(m)
}

pub(super) fn sqlite_url(dir: &Path, name: &str) -> String {
    format!(
        "sqlite://{}?mode=rwc",
        dir.join(format!("{name}.db")).display()
    )
}

// ---- 1. one trace per rollout ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_is_one_trace_across_cli_coordinator_and_agents() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let migrations = migrations_dir(dir.path())?;
    let (otlp, receiver) = start_receiver().await?;
    let endpoint = format!("http://{otlp}");

    let pg = Postgres::start().await?;
    let direct = pg.create_database("obs_trace").await?;
    let proxy = FaultProxy::start(SocketAddr::from(([127, 0, 0, 1], pg.port()))).await?;
    let via_proxy = format!("postgres://postgres@{}/obs_trace", proxy.addr());

    let otel = |service: Option<&str>| {
        let mut env = vec![("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.clone())];
        if let Some(name) = service {
            env.push(("OTEL_SERVICE_NAME", name.to_owned()));
        }
        env.push((
            "OTEL_RESOURCE_ATTRIBUTES",
            s("deployment.environment=obs-test"),
        ));
        env.push(("OTEL_TRACES_SAMPLER", s("parentbased_always_on")));
        env
    };
    let retry = vec![s("--retry-initial-delay-ms"), s("50")];
    let fleet = start_fleet(
        dir.path(),
        &migrations,
        &[
            (
                "obs-a",
                vec![format!("pg1={via_proxy}")],
                retry.clone(),
                otel(Some("obs-agent-a")),
            ),
            (
                "obs-b",
                vec![format!("sq1={}", sqlite_url(dir.path(), "sq1"))],
                retry,
                otel(Some("obs-agent-b")),
            ),
        ],
        &[],
        &otel(None),
        false,
    )
    .await?;

    // Start the rollout from the CLI (it starts the trace); cut the PostgreSQL connection
    // while the slow step runs, forcing one retry in agent obs-a.
    let id = start_rollout(&migrations, &fleet.coordinator_url, &otel(None), None).await?;
    eventually_true("the slow step to run on pg1", DEADLINE, || {
        let direct = direct.clone();
        async move {
            let mut conn = sqlx::PgConnection::connect(&direct).await?;
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' \
                 AND query LIKE '%pg_sleep(2)%' AND pid <> pg_backend_pid()",
            )
            .fetch_one(&mut conn)
            .await?;
            conn.close().await?;
            Ok(n > 0)
        }
    })
    .await?;
    proxy.cut_all();
    let r = wait_succeeded(&fleet.coordinator_url, &id).await?;
    let pg1 = r
        .targets
        .iter()
        .find(|t| t.target_id == "pg1")
        .context("no pg1")?;
    assert!(
        pg1.retries >= 1,
        "the forced retry was not reported: {pg1:?}"
    );

    // `rollout get` prints the trace id.
    let (out, _) = cli(
        &[
            s("rollout"),
            s("get"),
            id.clone(),
            s("--coordinator"),
            fleet.coordinator_url.clone(),
        ],
        &[],
        None,
    )
    .await?;
    let trace_id = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("trace id:"))
        .map(|t| t.trim().to_owned())
        .with_context(|| format!("`rollout get` printed no trace id:\n{out}"))?;
    assert_eq!(trace_id.len(), 32, "{trace_id}");
    assert_eq!(trace_id, r.trace_id);

    // Stopping the processes flushes their spans.
    fleet.stop().await?;
    let spans = receiver.spans();
    check_trace(&spans, &trace_id)
}

fn check_trace(spans: &[Received], trace_id: &str) -> Result<()> {
    let summary = || {
        spans
            .iter()
            .map(|r| {
                format!(
                    "{} {} {} parent={}",
                    r.service,
                    r.trace_id(),
                    r.span.name,
                    hex::encode(&r.span.parent_span_id)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    ensure!(!spans.is_empty(), "the receiver got no span");
    let by_id: BTreeMap<Vec<u8>, &Received> =
        spans.iter().map(|r| (r.span.span_id.clone(), r)).collect();
    let parent = |r: &Received| by_id.get(&r.span.parent_span_id).copied();
    fn root_of<'a>(by_id: &BTreeMap<Vec<u8>, &'a Received>, mut r: &'a Received) -> &'a Received {
        while let Some(p) = by_id.get(&r.span.parent_span_id) {
            r = p;
        }
        r
    }
    // One trace for the rollout. The only other traces allowed are the coordinator's
    // leadership work before it (announcing its fencing token to the agents).
    for r in spans.iter().filter(|r| r.trace_id() != trace_id) {
        let root = root_of(&by_id, r);
        ensure!(
            root.span.name == "announce_token" && root.service == "flotilla-coordinator",
            "span {} ({}) is outside the rollout's trace {trace_id}:\n{}",
            r.span.name,
            r.service,
            summary()
        );
    }
    let announce: Vec<&Received> = spans.iter().filter(|r| r.trace_id() != trace_id).collect();
    let spans: Vec<Received> = spans
        .iter()
        .filter(|r| r.trace_id() == trace_id)
        .cloned()
        .collect();
    let spans = spans.as_slice();
    ensure!(
        announce.len() <= 3,
        "the token announcement is one span and a Status per agent: {announce:?}"
    );
    let named = |name: &str| {
        spans
            .iter()
            .filter(move |r| r.span.name == name)
            .collect::<Vec<_>>()
    };

    // Who exported what, with the resource from OTEL_SERVICE_NAME / the default name.
    let services: BTreeSet<&str> = spans.iter().map(|r| r.service.as_str()).collect();
    for want in [
        "flotilla",
        "flotilla-coordinator",
        "obs-agent-a",
        "obs-agent-b",
    ] {
        ensure!(
            services.contains(want),
            "no span from service {want}: {services:?}"
        );
    }

    // CLI → StartRollout → rollout → wave → target.
    let roots: Vec<_> = spans
        .iter()
        .filter(|r| r.span.parent_span_id.is_empty())
        .collect();
    ensure!(roots.len() == 1, "expected one root span:\n{}", summary());
    let root = roots[0];
    assert_eq!(
        (root.service.as_str(), root.span.name.as_str()),
        ("flotilla", "flotilla rollout start")
    );
    let start = named("CoordinatorService/StartRollout");
    ensure!(
        start.len() == 1 && parent(start[0]).is_some_and(|p| p.span.span_id == root.span.span_id),
        "{}",
        summary()
    );
    let rollout = named("rollout");
    ensure!(rollout.len() == 1, "{}", summary());
    ensure!(
        parent(rollout[0]).is_some_and(|p| p.span.name == "CoordinatorService/StartRollout"),
        "{}",
        summary()
    );
    let waves = named("wave");
    ensure!(
        waves.len() == 2,
        "expected a canary wave and one more:\n{}",
        summary()
    );
    for w in &waves {
        ensure!(
            parent(w).is_some_and(|p| p.span.name == "rollout"),
            "{}",
            summary()
        );
    }
    let targets = named("target");
    let target_ids: BTreeSet<String> = targets
        .iter()
        .filter_map(|t| t.attr("flotilla.target"))
        .collect();
    assert_eq!(target_ids, BTreeSet::from([s("pg1"), s("sq1")]));
    for t in &targets {
        assert_eq!(t.service, "flotilla-coordinator");
        ensure!(
            parent(t).is_some_and(|p| p.span.name == "wave"),
            "{}",
            summary()
        );
    }

    // Agent steps: step → migrate → AgentService/Migrate → the coordinator's target span of
    // the same target; two revisions on each of the two targets.
    let steps = named("step");
    assert_eq!(steps.len(), 4, "{}", summary());
    for step in &steps {
        let target = step
            .attr("flotilla.target")
            .context("step without target")?;
        assert_eq!(
            step.service,
            if target == "pg1" {
                "obs-agent-a"
            } else {
                "obs-agent-b"
            }
        );
        let migrate = parent(step).context("step without parent")?;
        assert_eq!(migrate.span.name, "migrate");
        let rpc = parent(migrate).context("migrate without parent")?;
        assert_eq!(rpc.span.name, "AgentService/Migrate");
        let coord = parent(rpc).context("the agent's Migrate span has no parent in the trace")?;
        assert_eq!(coord.span.name, "target", "{}", summary());
        assert_eq!(coord.service, "flotilla-coordinator");
        assert_eq!(
            coord.attr("flotilla.target").as_deref(),
            Some(target.as_str())
        );
    }

    // The forced retry is an event of pg1's first step span: attempt, delay, error class.
    let slow = steps
        .iter()
        .find(|r| {
            r.attr("flotilla.target").as_deref() == Some("pg1")
                && r.attr("flotilla.revision").as_deref() == Some("0001_slow")
        })
        .context("no step span for pg1 0001_slow")?;
    let retry = slow
        .span
        .events
        .iter()
        .find(|e| e.name.contains("retrying"))
        .with_context(|| format!("no retry event on the step span: {:?}", slow.span.events))?;
    assert_eq!(
        attr(&retry.attributes, "error_class").as_deref(),
        Some("connection"),
        "{retry:?}"
    );
    assert_eq!(
        attr(&retry.attributes, "attempt").as_deref(),
        Some("1"),
        "{retry:?}"
    );
    ensure!(attr(&retry.attributes, "delay_ms").is_some(), "{retry:?}");
    // The step span says what the retry cost: two attempts, and the failed one with its
    // backoff (at least the delay) before the second, so its duration is explained.
    assert_eq!(
        slow.attr("flotilla.attempts").as_deref(),
        Some("2"),
        "{:?}",
        slow.span.attributes
    );
    let delay: u64 = attr(&retry.attributes, "delay_ms")
        .context("delay_ms")?
        .parse()?;
    let waited: u64 = slow
        .attr("flotilla.retry_wait_ms")
        .with_context(|| format!("no flotilla.retry_wait_ms: {:?}", slow.span.attributes))?
        .parse()?;
    ensure!(
        waited >= delay,
        "retry wait {waited} ms < the backoff delay {delay} ms"
    );
    for other in steps.iter().filter(|r| r.span.span_id != slow.span.span_id) {
        assert_eq!(
            (
                other.attr("flotilla.attempts").as_deref(),
                other.attr("flotilla.retry_wait_ms").as_deref()
            ),
            (Some("1"), Some("0")),
            "{:?}",
            other.attr("flotilla.revision")
        );
        ensure!(
            !other
                .span
                .events
                .iter()
                .any(|e| e.name.contains("retrying")),
            "unexpected retry on {:?}",
            other.attr("flotilla.revision")
        );
    }
    Ok(())
}

// ---- 2. Prometheus /metrics ----

type Labels<'a> = &'a [(&'a str, &'a str)];

/// The value of the sample `name` whose labels include `labels`.
pub(crate) fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, rest) = match series.split_once('{') {
                Some((m, rest)) => (m, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let all = metric == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.split(',').any(|kv| kv == format!("{k}=\"{v}\"")));
            if all { value.parse().ok() } else { None }
        })
}

pub(crate) async fn scrape(port: u16) -> Result<String> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    let text = String::from_utf8(raw)?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("malformed http response")?;
    ensure!(head.starts_with("HTTP/1.1 200"), "{head}");
    ensure!(
        !head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "chunked response: {head}"
    );
    Ok(body.to_owned())
}

pub(super) fn promtool_check(name: &str, text: &str) -> Result<()> {
    use std::io::Write;
    let mut child = match std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!(
                "promtool is not installed: run scripts/install-deps.sh --test (Debian package `prometheus`)"
            )
        }
        Err(e) => return Err(e.into()),
    };
    child
        .stdin
        .take()
        .context("promtool stdin")?
        .write_all(text.as_bytes())?;
    let out = child.wait_with_output()?;
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        out.status.success() && report.trim().is_empty(),
        "promtool check metrics failed for the {name}'s /metrics ({}):\n{report}\n---\n{text}",
        out.status
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_after_a_rollout_have_the_right_values_and_pass_promtool() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let migrations = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../migrations"));
    let revisions = flotilla_revision::Graph::load_dir(&migrations)?.len();
    let (ma, mb, mc) = (free_port(), free_port(), free_port());
    let metrics = |p: u16| vec![s("--metrics-addr"), format!("127.0.0.1:{p}")];
    let targets = |names: &[&str]| {
        names
            .iter()
            .map(|n| format!("{n}={}", sqlite_url(dir.path(), n)))
            .collect::<Vec<_>>()
    };
    let fleet = start_fleet(
        dir.path(),
        &migrations,
        &[
            ("met-a", targets(&["t1", "t2"]), metrics(ma), vec![]),
            ("met-b", targets(&["t3", "t4"]), metrics(mb), vec![]),
        ],
        &metrics(mc),
        &[],
        false,
    )
    .await?;
    let id = start_rollout(&migrations, &fleet.coordinator_url, &[], None).await?;
    wait_succeeded(&fleet.coordinator_url, &id).await?;

    for port in [ma, mb] {
        let text = scrape(port).await?;
        let up = [("dialect", "sqlite"), ("direction", "up")];
        let succeeded = sample(
            &text,
            "flotilla_agent_steps_total",
            &[up[0], up[1], ("outcome", "succeeded")],
        );
        assert_eq!(
            succeeded,
            Some((revisions * 2) as f64),
            "steps succeeded = revisions x targets:\n{text}"
        );
        assert_eq!(
            sample(&text, "flotilla_agent_step_duration_seconds_count", &up),
            Some((revisions * 2) as f64),
            "{text}"
        );
        ensure!(
            text.contains("flotilla_agent_step_duration_seconds_bucket{"),
            "not a histogram:\n{text}"
        );
        assert_eq!(
            sample(&text, "flotilla_agent_lock_held_seconds_count", &[up[0]]),
            Some(2.0),
            "{text}"
        );
        ensure!(
            sample(&text, "flotilla_agent_lock_wait_seconds_count", &[up[0]])
                .is_some_and(|n| n >= 2.0),
            "{text}"
        );
        ensure!(
            text.contains("# HELP flotilla_agent_steps_total "),
            "{text}"
        );
        promtool_check("agent", &text)?;
    }

    // The fleet gauges are refreshed once the rollout ended: wait for them.
    let text = eventually("the coordinator's fleet gauges", DEADLINE, || async move {
        let text = scrape(mc).await?;
        Ok((sample(&text, "flotilla_fleet_version_skew", &[]) == Some(1.0)).then_some(text))
    })
    .await?;
    let want: &[(&str, Labels, f64)] = &[
        (
            "flotilla_coordinator_rollouts",
            &[("state", "succeeded")],
            1.0,
        ),
        (
            "flotilla_coordinator_rollouts",
            &[("state", "running")],
            0.0,
        ),
        (
            "flotilla_coordinator_rollouts_finished_total",
            &[("state", "succeeded")],
            1.0,
        ),
        (
            "flotilla_coordinator_rollout_targets",
            &[("state", "succeeded")],
            4.0,
        ),
        (
            "flotilla_coordinator_rollout_targets",
            &[("state", "pending")],
            0.0,
        ),
        (
            "flotilla_coordinator_rollout_targets",
            &[("state", "running")],
            0.0,
        ),
        (
            "flotilla_coordinator_targets_finished_total",
            &[("state", "succeeded")],
            4.0,
        ),
        ("flotilla_coordinator_lock_held", &[], 1.0),
        ("flotilla_coordinator_lock_acquired_total", &[], 1.0),
        ("flotilla_fleet_version_skew", &[], 1.0),
        ("flotilla_fleet_drift_targets", &[], 0.0),
    ];
    for (name, labels, value) in want {
        assert_eq!(
            sample(&text, name, labels),
            Some(*value),
            "{name}{labels:?}:\n{text}"
        );
    }
    let at_one_revision: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("flotilla_fleet_targets{") && l.ends_with(" 4"))
        .collect();
    assert_eq!(
        at_one_revision.len(),
        1,
        "all 4 targets at one revision:\n{text}"
    );
    promtool_check("coordinator", &text)?;
    fleet.stop().await?;
    Ok(())
}

// ---- 3. no OTEL_* variables: nothing connects anywhere ----

/// Every IPv4/IPv6 `connect(2)` in an strace log: (address, port).
fn connects(strace_log: &Path) -> Result<Vec<(String, u16)>> {
    let text =
        std::fs::read_to_string(strace_log).with_context(|| strace_log.display().to_string())?;
    let mut out = Vec::new();
    for line in text
        .lines()
        .filter(|l| l.contains("connect(") && l.contains("sa_family=AF_INET"))
    {
        let port = line
            .split("sin6_port=htons(")
            .nth(1)
            .or_else(|| line.split("sin_port=htons(").nth(1))
            .and_then(|r| r.split(')').next())
            .and_then(|p| p.parse().ok())
            .with_context(|| format!("unparsed strace line: {line}"))?;
        let addr = line
            .split("inet_addr(\"")
            .nth(1)
            .or_else(|| line.split("AF_INET6, \"").nth(1))
            .and_then(|r| r.split('"').next())
            .unwrap_or("?")
            .to_owned();
        out.push((addr, port));
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_otel_variables_nothing_connects_anywhere() -> Result<()> {
    strace_bin()?;
    let dir = tempfile::tempdir()?;
    let migrations = migrations_dir(dir.path())?;
    let fleet = start_fleet(
        dir.path(),
        &migrations,
        &[(
            "quiet-a",
            vec![format!("q1={}", sqlite_url(dir.path(), "q1"))],
            vec![],
            vec![],
        )],
        &[],
        &[],
        true,
    )
    .await?;
    let agent_port = fleet.agents[0].1;
    let coordinator_port: u16 = fleet
        .coordinator_url
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .context("coordinator port")?;
    let cli_trace = dir.path().join("cli.strace");
    let id = start_rollout(&migrations, &fleet.coordinator_url, &[], Some(&cli_trace)).await?;
    let r = wait_succeeded(&fleet.coordinator_url, &id).await?;
    assert!(
        r.trace_id.len() == 32,
        "trace ids are made even with export off: {:?}",
        r.trace_id
    );
    let (coordinator_log, agent_logs) = fleet.stop().await?;

    // The configuration path said so.
    for log in agent_logs.iter().chain([&coordinator_log]) {
        ensure!(
            log.contains("trace export export=off (OTEL_EXPORTER_OTLP_ENDPOINT unset)"),
            "{log}"
        );
    }
    // And the processes did: the agent (SQLite only) connects nowhere, the coordinator only
    // to its agent, the CLI only to the coordinator.
    let agent = connects(&dir.path().join("quiet-a.strace"))?;
    assert_eq!(agent, vec![], "the agent connected somewhere");
    let coordinator = connects(&dir.path().join("coordinator.strace"))?;
    ensure!(
        !coordinator.is_empty(),
        "strace saw no connect of the coordinator (to its agent)"
    );
    for (addr, port) in &coordinator {
        ensure!(
            addr == "127.0.0.1" && *port == agent_port,
            "the coordinator connected to {addr}:{port}"
        );
    }
    let cli = connects(&cli_trace)?;
    ensure!(!cli.is_empty(), "strace saw no connect of the CLI");
    for (addr, port) in &cli {
        ensure!(
            addr == "127.0.0.1" && *port == coordinator_port,
            "the CLI connected to {addr}:{port}"
        );
    }
    Ok(())
}
