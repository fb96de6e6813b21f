//! `flotilla-agent`: parses flags/env/TOML into a config, sets up logging and serves the agent
//! until SIGTERM or SIGINT.

use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use flotilla_agent::config::{AgentConfig, Args};
use flotilla_agent::register::{self, RegisterConfig};
use flotilla_agent::{Agent, serve};
use flotilla_rpc::telemetry::{self, TelemetryConfig};

/// jemalloc, configured at build time (.cargo/config.toml): the idle agent gives freed pages
/// back, where glibc's per-thread arenas kept most of what a status read of every target
/// left behind.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let telemetry = telemetry::init(TelemetryConfig {
        service_name: "flotilla-agent",
        log_format: args.log_format,
        log_filter: telemetry::log_filter("info")?,
        stderr: false,
    })?;
    tracing::info!(export = %telemetry.export(), "trace export");
    let result = run(&args).await;
    telemetry.shutdown().await;
    result
}

async fn run(args: &Args) -> anyhow::Result<()> {
    // Listen for SIGTERM/SIGINT before anything else starts: a signal that arrives while the
    // agent starts up then stops it cleanly, not by the default action.
    let shutdown = shutdown_signal()?;
    if let Some(addr) = args.metrics_addr {
        telemetry::install_metrics(addr)?;
        flotilla_agent::metrics::describe();
        tracing::info!(%addr, "serving Prometheus metrics on /metrics");
    }
    let config = AgentConfig::load(args)?;
    let listen = config.server.listen;
    // Checked before anything starts: no TLS on a non-loopback address needs --plaintext.
    let server = &config.server;
    flotilla_rpc::tls::check_listen(listen, server.tls.as_ref(), server.plaintext)?;
    let scheme = if server.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let registration = match &args.coordinator {
        Some(coordinator) => Some(RegisterConfig {
            coordinator: coordinator.clone(),
            advertise: args
                .advertise_address
                .clone()
                .unwrap_or_else(|| format!("{scheme}://{listen}")),
            tls: args.coordinator_tls()?,
        }),
        None => None,
    };
    let agent = Arc::new(Agent::new(config).await.context("starting the agent")?);
    tracing::info!(targets = ?agent.target_ids().await, "targets");
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let stop_registering = tokio_util::sync::CancellationToken::new();
    if let Some(config) = registration {
        let (agent, cancel) = (agent.clone(), stop_registering.clone());
        tokio::spawn(async move {
            if let Err(e) = register::run(agent, config, cancel).await {
                tracing::error!("registration disabled: {e}");
            }
        });
    }
    let result = serve(agent, listener, shutdown).await;
    stop_registering.cancel();
    result?;
    Ok(())
}

/// Resolves on the first SIGINT (Ctrl-C) or SIGTERM (Kubernetes pod stop). The handlers are
/// installed when this is called, not when the future is first polled.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut int = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => tracing::info!("SIGINT received"),
            _ = term.recv() => tracing::info!("SIGTERM received"),
        }
    })
}
