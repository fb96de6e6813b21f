//! `flotilla demo`: the whole system on one machine with nothing installed — a fleet of
//! SQLite tenant databases behind a few embedded agents, the embedded lock and state store,
//! a coordinator serving on loopback, and a canary-then-waves rollout of `migrations/` to
//! head with live progress, the fleet table and a summary. A second run has nothing to do.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use tokio_util::sync::CancellationToken;

use flotilla_agent::config::DiscoverySource;
use flotilla_agent::{Agent, AgentConfig, AgentGrpc};
use flotilla_proto as pb;

use crate::args::{GlobalArgs, OutputFormat};
use crate::error::CliError;
use crate::online::{self, follow};
use crate::render::{self, write_fleet_table};
use flotilla_coordinator::backend::BackendConfig;
use flotilla_coordinator::engine::EngineConfig;
use flotilla_coordinator::fleet::{AgentClient, LocalAgent};
use flotilla_coordinator::rollout::{Budget, RolloutSpec, WaveSize};
use flotilla_coordinator::server::{CoordinatorConfig, build, serve};

#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Number of SQLite tenant databases
    #[arg(long, default_value_t = 100, env = "FLOTILLA_DEMO_TENANTS")]
    pub tenants: u32,
    /// Number of embedded agents the tenants are spread over
    #[arg(long, default_value_t = 4)]
    pub agents: u32,
    /// Where the tenants and the coordinator state live
    #[arg(long, default_value = ".flotilla/demo", env = "FLOTILLA_DEMO_DIR")]
    pub dir: PathBuf,
    /// Targets migrated at once
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_parallel: u32,
    /// Print every target in the fleet table (default: the first 20 and a summary)
    #[arg(long)]
    pub all: bool,
    /// Serve Prometheus metrics on this address (`/metrics`) while the demo runs; off by default
    #[arg(long, env = "FLOTILLA_METRICS_ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CliError + '_ {
    move |source| CliError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Create the tenant files (empty files are empty SQLite databases) spread over shards.
fn create_tenants(dir: &Path, tenants: u32, agents: u32) -> Result<u32, CliError> {
    let mut created = 0;
    for n in 1..=tenants {
        let shard = dir.join("tenants").join(format!("shard-{}", n % agents));
        std::fs::create_dir_all(&shard).map_err(io_err(&shard))?;
        let file = shard.join(format!("tenant_{n:04}.db"));
        if !file.exists() {
            std::fs::File::create(&file).map_err(io_err(&file))?;
            created += 1;
        }
    }
    Ok(created)
}

pub async fn run(
    args: DemoArgs,
    global: &GlobalArgs,
    out: &mut (dyn Write + Send),
) -> Result<u8, CliError> {
    let started = Instant::now();
    let json = global.output == OutputFormat::Json;
    if args.tenants == 0 || args.agents == 0 {
        return Err(CliError::Refused(
            "--tenants and --agents must be at least 1".into(),
        ));
    }
    let agents_n = args.agents.min(args.tenants);
    std::fs::create_dir_all(&args.dir).map_err(io_err(&args.dir))?;
    let dir = args.dir.canonicalize().map_err(io_err(&args.dir))?;
    let created = create_tenants(&dir, args.tenants, agents_n)?;
    if let Some(addr) = args.metrics_addr {
        flotilla_coordinator::telemetry::install_metrics(addr)
            .map_err(|e| CliError::Refused(e.to_string()))?;
        flotilla_coordinator::metrics::describe();
        flotilla_agent::metrics::describe();
    }
    let hooks = flotilla_coordinator::telemetry::hooks();

    let mut embedded: Vec<Arc<dyn AgentClient>> = Vec::new();
    for i in 0..agents_n {
        let id = format!("demo-agent-{i}");
        let mut labels = BTreeMap::new();
        labels.insert("shard".to_owned(), i.to_string());
        labels.insert("env".to_owned(), "demo".to_owned());
        let mut config = AgentConfig {
            agent_id: id.clone(),
            ..AgentConfig::default()
        };
        config.discovery.sources.push(DiscoverySource::SqliteGlob {
            glob: dir
                .join("tenants")
                .join(format!("shard-{i}"))
                .join("*.db")
                .to_string_lossy()
                .into_owned(),
            id_prefix: String::new(),
            labels,
        });
        let agent = Agent::new(config)
            .await
            .map_err(|e| CliError::Refused(format!("agent {id}: {e}")))?;
        let service = Arc::new(AgentGrpc::new(Arc::new(agent)));
        embedded.push(Arc::new(LocalAgent::new(
            &id,
            service,
            hooks.agent_request.clone(),
        )));
    }

    let config = CoordinatorConfig {
        migrations: Some(global.migrations.clone()),
        project_migrations: vec![],
        backend: BackendConfig {
            etcd_endpoints: vec![],
            prefix: flotilla_coordinator::backend::DEFAULT_PREFIX.into(),
            lease_ttl: flotilla_coordinator::backend::DEFAULT_LEASE_TTL,
            state_dir: dir.join("state"),
            holder_id: "flotilla-demo".into(),
        },
        fleet_file: None,
        registration_ttl: Duration::from_secs(15),
        engine: EngineConfig::default(),
        tls: Default::default(),
    };
    let coord = build(&config, embedded, hooks)
        .await
        .map_err(|e| CliError::Refused(e.to_string()))?;
    let engine = coord.engine.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| CliError::Refused(format!("cannot listen on loopback: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| CliError::Refused(e.to_string()))?;
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(serve(coord, listener, shutdown.clone()));
    let result = drive(
        &args,
        &engine,
        &format!("http://{addr}"),
        created,
        started,
        json,
        out,
    )
    .await;
    shutdown.cancel();
    let _ = server.await;
    result
}

async fn drive(
    args: &DemoArgs,
    engine: &flotilla_coordinator::engine::Engine,
    addr: &str,
    created: u32,
    started: Instant,
    json: bool,
    out: &mut (dyn Write + Send),
) -> Result<u8, CliError> {
    let o = CliError::Output;
    tokio::time::timeout(Duration::from_secs(30), engine.wait_leader())
        .await
        .map_err(|_| {
            CliError::Refused("the demo coordinator did not get the lock within 30s".into())
        })?;
    let mut client = online::connect(addr).await?;
    let heads = engine.graph().heads().join(",");
    if !json {
        writeln!(
            out,
            "flotilla demo: {} SQLite tenants ({created} new) behind {} embedded agents; goal: head ({heads}), {} revisions",
            args.tenants,
            args.agents.min(args.tenants),
            engine.graph().len()
        )
        .map_err(o)?;
    }
    let spec = RolloutSpec {
        goal: "head".into(),
        canary: 1,
        waves: vec![WaveSize::Percent(10), WaveSize::Percent(50)],
        max_parallel: args.max_parallel,
        failure_budget: Budget::Count(0),
        ..RolloutSpec::default()
    };
    let plan = client
        .plan(pb::PlanRequest {
            spec: Some(spec.to_proto()),
        })
        .await
        .map_err(|e| CliError::Refused(e.message().to_owned()))?
        .into_inner();
    let pending = plan.targets.iter().filter(|t| !t.steps.is_empty()).count();
    let blocked = plan
        .targets
        .iter()
        .filter(|t| !t.blocked_reason.is_empty())
        .count();
    let mut code = 0;
    let mut summary = serde_json::Map::new();
    if pending == 0 {
        let msg = format!(
            "nothing to do: all {} targets are already at head ({heads}){}",
            plan.targets.len() - blocked,
            if blocked > 0 {
                format!("; {blocked} blocked")
            } else {
                String::new()
            }
        );
        if !json {
            writeln!(out, "{msg}").map_err(o)?;
        }
        summary.insert("nothing_to_do".into(), true.into());
    } else {
        let r = client
            .start_rollout(pb::StartRolloutRequest {
                spec: Some(spec.to_proto()),
            })
            .await
            .map_err(|e| CliError::Refused(e.message().to_owned()))?
            .into_inner();
        if !json {
            writeln!(
                out,
                "rollout {}: canary 1, then waves of 10% and 50%, then the rest",
                r.id
            )
            .map_err(o)?;
        }
        let mut sink = std::io::sink();
        code = follow(
            &mut client,
            &r.id,
            false,
            if json { &mut sink } else { &mut *out },
        )
        .await?;
        let r = client
            .get_rollout(pb::GetRolloutRequest { id: r.id })
            .await
            .map_err(|e| CliError::Refused(e.message().to_owned()))?
            .into_inner();
        let steps: u32 = r.targets.iter().map(|t| t.steps_done).sum();
        let retries: u32 = r.targets.iter().map(|t| t.retries).sum();
        summary.insert("rollout".into(), render::rollout_json(&r));
        summary.insert("steps".into(), steps.into());
        summary.insert("retries".into(), retries.into());
        summary.insert("nothing_to_do".into(), false.into());
    }
    let fleet = client
        .fleet_status(pb::FleetStatusRequest {
            selector: None,
            include_schema: false,
            ..Default::default()
        })
        .await
        .map_err(|e| CliError::Refused(e.message().to_owned()))?
        .into_inner();
    let wall = started.elapsed();
    let at_head = fleet
        .targets
        .iter()
        .filter(|t| {
            t.status
                .as_ref()
                .is_some_and(|s| s.heads == fleet.graph_heads && !s.dirty)
        })
        .count();
    summary.insert("targets".into(), fleet.targets.len().into());
    summary.insert("at_head".into(), at_head.into());
    summary.insert("wall_time_ms".into(), (wall.as_millis() as u64).into());
    if json {
        render::emit(out, &serde_json::Value::Object(summary))?;
        return Ok(code);
    }
    writeln!(out).map_err(o)?;
    if args.all || fleet.targets.len() <= 20 {
        write_fleet_table(out, &fleet)?;
    } else {
        let mut shown = fleet.clone();
        shown.targets.truncate(20);
        write_fleet_table(out, &shown)?;
        writeln!(
            out,
            "… {} more targets (--all shows every one)",
            fleet.targets.len() - 20
        )
        .map_err(o)?;
    }
    writeln!(out).map_err(o)?;
    writeln!(
        out,
        "summary: {} targets, {at_head} at head; {} steps applied, {} retries; wall time {:.2}s",
        fleet.targets.len(),
        summary.get("steps").and_then(|v| v.as_u64()).unwrap_or(0),
        summary.get("retries").and_then(|v| v.as_u64()).unwrap_or(0),
        wall.as_secs_f64()
    )
    .map_err(o)?;
    Ok(code)
}
