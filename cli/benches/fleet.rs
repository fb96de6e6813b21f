//! Fleet benchmark: planner throughput on a large synthetic graph, and an embedded rollout of
//! many SQLite tenants (wall time, steps per second, the "already at goal" check, peak RSS).
//! Prints the figures and saves them to `<target>/bench/fleet.json`.
//!
//! `cargo bench -p flotilla-coordinator --bench fleet` (env `FLOTILLA_BENCH_TENANTS`, default
//! 200; `FLOTILLA_BENCH_TARGETS` for the planner, default 10000).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use flotilla_agent::config::DiscoverySource;
use flotilla_agent::{Agent, AgentConfig, AgentGrpc};
use flotilla_coordinator::backend::BackendConfig;
use flotilla_coordinator::engine::{Engine, EngineConfig};
use flotilla_coordinator::fleet::{AgentClient, LocalAgent};
use flotilla_coordinator::rollout::{RolloutSpec, TargetState, WaveSize};
use flotilla_coordinator::server::{CoordinatorConfig, build};
use flotilla_coordinator::telemetry::Hooks;
use flotilla_core::Dialect;
use flotilla_revision::{AppliedRevision, Goal, Graph, TargetHistory, plan};
use serde_json::json;
use tokio_util::sync::CancellationToken;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Peak resident set size of this process, in KiB (Linux).
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// A graph of `n` revisions: a trunk with a branch and merge every 10 revisions.
fn synthetic_graph(n: usize) -> Result<Graph> {
    let mut files = Vec::new();
    let mut prev = String::new();
    let mut i = 0;
    while i < n {
        let id = format!("r{i:05}");
        let revises = if prev.is_empty() {
            String::new()
        } else {
            format!("-- revises: {prev}\n")
        };
        let text = format!(
            "-- revision: {id}\n{revises}-- migrate:up\nCREATE TABLE t{i} (id INT);\n-- migrate:down\nDROP TABLE t{i};\n"
        );
        files.push((PathBuf::from(format!("{id}.sql")), text.into_bytes()));
        prev = id;
        i += 1;
        if i % 10 == 0 && i + 2 < n {
            let (a, b, m) = (
                format!("r{i:05}"),
                format!("r{:05}", i + 1),
                format!("r{:05}", i + 2),
            );
            for (x, t) in [(&a, i), (&b, i + 1)] {
                let text = format!(
                    "-- revision: {x}\n-- revises: {prev}\n-- migrate:up\nCREATE TABLE t{t} (id INT);\n-- migrate:down\nDROP TABLE t{t};\n"
                );
                files.push((PathBuf::from(format!("{x}.sql")), text.into_bytes()));
            }
            let text =
                format!("-- revision: {m}\n-- revises: {a}, {b}\n-- migrate:up\n-- migrate:down\n");
            files.push((PathBuf::from(format!("{m}.sql")), text.into_bytes()));
            prev = m;
            i += 3;
        }
    }
    Graph::from_sources(files).map_err(|e| anyhow::anyhow!("{e}"))
}

fn bench_planner(targets: usize) -> Result<serde_json::Value> {
    let revisions = 500;
    let t0 = Instant::now();
    let graph = synthetic_graph(revisions)?;
    let load = t0.elapsed();
    let order: Vec<(String, String)> = graph.expected(Dialect::Postgres);
    // Targets spread over every prefix of the history.
    let histories: Vec<TargetHistory> = (0..targets)
        .map(|i| {
            let k = i * order.len() / targets;
            TargetHistory {
                applied: order[..k]
                    .iter()
                    .map(|(r, c)| AppliedRevision {
                        revision: r.clone(),
                        checksum: c.clone(),
                    })
                    .collect(),
                dirty: None,
            }
        })
        .collect();
    let t1 = Instant::now();
    let mut steps = 0usize;
    for h in &histories {
        steps += plan(&graph, h, &Goal::Head, Dialect::Postgres)
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .steps
            .len();
    }
    let elapsed = t1.elapsed();
    let per_target_us = elapsed.as_secs_f64() * 1e6 / targets as f64;
    println!(
        "planner: {} revisions loaded in {:.1} ms; {targets} targets planned in {:.1} ms ({per_target_us:.1} µs/target, {steps} steps)",
        graph.len(),
        load.as_secs_f64() * 1e3,
        elapsed.as_secs_f64() * 1e3
    );
    Ok(json!({
        "revisions": graph.len(), "graph_load_ms": load.as_secs_f64() * 1e3,
        "targets": targets, "plan_total_ms": elapsed.as_secs_f64() * 1e3,
        "plan_per_target_us": per_target_us, "steps": steps,
    }))
}

async fn rollout_to_end(
    engine: &Arc<Engine>,
    spec: RolloutSpec,
) -> Result<(Duration, usize, usize)> {
    let mut updates = engine.subscribe();
    let t0 = Instant::now();
    let rec = engine.start(spec, String::new(), String::new()).await?;
    loop {
        let (r, targets) = engine.get(&rec.id).await?;
        if r.state.is_terminal() {
            let steps = targets.iter().map(|t| t.steps_done as usize).sum();
            let ok = targets
                .iter()
                .filter(|t| matches!(t.state, TargetState::Succeeded | TargetState::Skipped))
                .count();
            anyhow::ensure!(
                ok == targets.len(),
                "rollout ended {}: {}",
                r.state.as_str(),
                r.message
            );
            return Ok((t0.elapsed(), steps, targets.len()));
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), updates.recv()).await;
    }
}

async fn bench_rollout(dir: &Path, tenants: usize) -> Result<serde_json::Value> {
    let agents = 4;
    for n in 0..tenants {
        let shard = dir.join(format!("shard-{}", n % agents));
        std::fs::create_dir_all(&shard)?;
        std::fs::File::create(shard.join(format!("tenant_{n:05}.db")))?;
    }
    let mut embedded: Vec<Arc<dyn AgentClient>> = Vec::new();
    for i in 0..agents {
        let mut config = AgentConfig {
            agent_id: format!("bench-{i}"),
            ..AgentConfig::default()
        };
        config.discovery.sources.push(DiscoverySource::SqliteGlob {
            glob: dir
                .join(format!("shard-{i}"))
                .join("*.db")
                .to_string_lossy()
                .into_owned(),
            id_prefix: String::new(),
            labels: BTreeMap::new(),
        });
        let agent = Agent::new(config).await?;
        embedded.push(Arc::new(LocalAgent::new(
            &format!("bench-{i}"),
            Arc::new(AgentGrpc::new(Arc::new(agent))),
            None,
        )));
    }
    let config = CoordinatorConfig {
        migrations: Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations")),
        project_migrations: vec![],
        backend: BackendConfig {
            etcd_endpoints: vec![],
            prefix: "/bench".into(),
            lease_ttl: Duration::from_secs(10),
            state_dir: dir.join("state"),
            holder_id: "bench".into(),
        },
        fleet_file: None,
        registration_ttl: Duration::from_secs(15),
        engine: EngineConfig::default(),
        tls: Default::default(),
    };
    let coord = build(&config, embedded, Hooks::default()).await?;
    let engine = coord.engine.clone();
    let shutdown = CancellationToken::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let server = tokio::spawn(flotilla_coordinator::server::serve(
        coord,
        listener,
        shutdown.clone(),
    ));
    tokio::time::timeout(Duration::from_secs(30), engine.wait_leader())
        .await
        .context("lock")?;
    let spec = RolloutSpec {
        canary: 1,
        waves: vec![WaveSize::Percent(10), WaveSize::Percent(50)],
        max_parallel: 16,
        ..RolloutSpec::default()
    };
    let (wall, steps, targets) = rollout_to_end(&engine, spec.clone()).await?;
    let (noop, noop_steps, _) = rollout_to_end(&engine, spec).await?;
    shutdown.cancel();
    let _ = server.await;
    let steps_per_s = steps as f64 / wall.as_secs_f64();
    println!(
        "rollout: {targets} SQLite tenants, {steps} steps in {:.2} s ({steps_per_s:.0} steps/s, max_parallel 16); fleet already at head: {:.0} ms ({noop_steps} steps)",
        wall.as_secs_f64(),
        noop.as_secs_f64() * 1e3
    );
    Ok(json!({
        "tenants": targets, "agents": agents, "steps": steps, "wall_s": wall.as_secs_f64(),
        "steps_per_s": steps_per_s, "at_goal_check_ms": noop.as_secs_f64() * 1e3,
    }))
}

fn main() -> Result<()> {
    // `cargo bench` passes `--bench`; any other filter argument is ignored.
    let targets = env_usize("FLOTILLA_BENCH_TARGETS", 10_000);
    let tenants = env_usize("FLOTILLA_BENCH_TENANTS", 200);
    let mib = |k: Option<u64>| k.map_or("?".into(), |k| format!("{:.1}", k as f64 / 1024.0));
    // The rollout first, so its peak RSS is not the planner's synthetic histories.
    let dir = tempfile::tempdir()?;
    let rt = tokio::runtime::Runtime::new()?;
    let rollout = rt.block_on(bench_rollout(dir.path(), tenants))?;
    let rollout_rss = peak_rss_kib();
    println!("peak RSS after the rollout: {} MiB", mib(rollout_rss));
    let planner = bench_planner(targets)?;
    let rss = peak_rss_kib();
    println!(
        "peak RSS after the planner ({targets} synthetic histories held at once): {} MiB",
        mib(rss)
    );
    let out_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("../bench");
    std::fs::create_dir_all(&out_dir)?;
    let path = out_dir.join("fleet.json");
    let report = json!({
        "planner": planner, "rollout": rollout,
        "peak_rss_kib_rollout": rollout_rss, "peak_rss_kib_total": rss,
    });
    std::fs::write(&path, serde_json::to_vec_pretty(&report)?)?;
    println!("saved {}", path.canonicalize().unwrap_or(path).display());
    Ok(())
}
