//! `flotilla coordinator`: serve the coordinator (lead or stand by) until SIGTERM/SIGINT.
//! TLS: `--tls-cert`/`--tls-key` (+ `--tls-client-ca` for mTLS) for the API; the same
//! certificate is the client certificate for agents, verified with `--tls-ca`. Without TLS a
//! non-loopback `--listen` needs `--plaintext`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use flotilla_rpc::tls::check_listen;
use tokio_util::sync::CancellationToken;

use crate::args::{GlobalArgs, parse_duration};
use crate::error::CliError;
use flotilla_coordinator::backend::{BackendConfig, DEFAULT_PREFIX, default_holder_id};
use flotilla_coordinator::engine::EngineConfig;
use flotilla_coordinator::rollout::metric_gate::check_url;
use flotilla_coordinator::server::{CoordinatorConfig, TlsConfig, build, serve};
use flotilla_coordinator::sets::DEFAULT_KEEP_SETS;
use flotilla_coordinator::telemetry::Hooks;
use flotilla_core::project::Project;

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address the gRPC API listens on
    #[arg(long, env = "FLOTILLA_LISTEN", default_value = "127.0.0.1:7600")]
    pub listen: SocketAddr,
    /// etcd endpoints (comma-separated); none = the embedded file lock + SQLite state
    #[arg(
        long = "etcd",
        env = "FLOTILLA_ETCD_ENDPOINTS",
        value_delimiter = ',',
        value_name = "URL"
    )]
    pub etcd: Vec<String>,
    /// Key prefix in etcd
    #[arg(long, env = "FLOTILLA_ETCD_PREFIX", default_value = DEFAULT_PREFIX)]
    pub etcd_prefix: String,
    /// etcd lease TTL of the fleet lock
    #[arg(long, env = "FLOTILLA_LEASE_TTL", default_value = "10s", value_parser = parse_duration)]
    pub lease_ttl: Duration,
    /// Embedded mode: directory of the lock file and the SQLite state store
    #[arg(long, env = "FLOTILLA_STATE_DIR", default_value = ".flotilla/state")]
    pub state_dir: PathBuf,
    /// Static fleet file (TOML, [[agents]] id + address)
    #[arg(long, env = "FLOTILLA_FLEET", value_name = "FILE")]
    pub fleet: Option<PathBuf>,
    /// How long an agent registration lives without a heartbeat
    #[arg(long, env = "FLOTILLA_REGISTRATION_TTL", default_value = "15s", value_parser = parse_duration)]
    pub registration_ttl: Duration,
    /// This coordinator's id in the lock (default: host name and pid)
    #[arg(long, env = "FLOTILLA_ID")]
    pub id: Option<String>,
    /// The API address other coordinators reach this one at (e.g. http://10.0.0.7:7600); the
    /// leader records it so standbys forward write calls to it. Default: the --listen
    /// address unless it is 0.0.0.0/[::] (then standbys answer NOT_LEADER)
    #[arg(
        long,
        env = "FLOTILLA_COORDINATOR_ADVERTISE_ADDRESS",
        value_name = "URL"
    )]
    pub advertise_address: Option<String>,
    /// Attempts at an agent call while a rollout is planned (a target whose agent cannot be
    /// reached during the rollout waits for it: `rollout start --agent-wait`)
    #[arg(long, env = "FLOTILLA_AGENT_ATTEMPTS", default_value_t = 5)]
    pub agent_attempts: u32,
    /// Another project this coordinator serves, as NAME or NAME=DIR (repeatable; the env var
    /// is comma-separated): `--project NAME` calls have their own rollouts and each target's
    /// own history of that project; DIR is its default set (else the CLI uploads its set).
    /// `--migrations` is project `default`'s
    #[arg(
        long = "project-migrations",
        env = "FLOTILLA_PROJECT_MIGRATIONS",
        value_delimiter = ',',
        value_name = "NAME[=DIR]",
        value_parser = parse_project_migrations
    )]
    pub project_migrations: Vec<(Project, Option<PathBuf>)>,
    /// Serve Prometheus metrics on this address (`/metrics`); off when unset
    #[arg(long, env = "FLOTILLA_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// The Prometheus a rollout's metric gate asks when `rollout start` gives no
    /// --gate-prometheus (http://host:port[/prefix])
    #[arg(long, env = "FLOTILLA_GATE_PROMETHEUS", value_name = "URL")]
    pub gate_prometheus: Option<String>,
    /// Migration sets no rollout refers to that are kept (newest first); older ones are
    /// removed from the state store
    #[arg(long, env = "FLOTILLA_KEEP_SETS", default_value_t = DEFAULT_KEEP_SETS as u64,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub keep_sets: u64,
    /// Threads of the coordinator's async runtime (blocking work, such as a set's
    /// validation, has threads of its own): one spends the least CPU per target-step
    #[arg(long, env = "FLOTILLA_WORKER_THREADS", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub worker_threads: u16,
    #[command(flatten)]
    pub tls: flotilla_rpc::tls::PeerTlsArgs,
}

impl ServeArgs {
    /// The validated config; TLS files are read and checked here.
    pub fn config(&self, global: &GlobalArgs) -> Result<CoordinatorConfig, CliError> {
        let tls = TlsConfig {
            server: self
                .tls
                .server()
                .map_err(|e| CliError::Refused(e.to_string()))?,
            plaintext: self.tls.plaintext,
            agents: self
                .tls
                .client()
                .map_err(|e| CliError::Refused(e.to_string()))?,
        };
        // Refuse a plaintext non-loopback listener before touching the backend.
        check_listen(self.listen, tls.server.as_ref(), tls.plaintext)
            .map_err(|e| CliError::Refused(e.to_string()))?;
        let gate_prometheus = self
            .gate_prometheus
            .as_deref()
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(|u| check_url(u).map(|()| u.to_owned()))
            .transpose()
            .map_err(CliError::Refused)?;
        Ok(CoordinatorConfig {
            migrations: default_set_dir(global),
            project_migrations: self.project_migrations.clone(),
            backend: BackendConfig {
                etcd_endpoints: self
                    .etcd
                    .iter()
                    .filter(|e| !e.trim().is_empty())
                    .cloned()
                    .collect(),
                prefix: self.etcd_prefix.clone(),
                lease_ttl: self.lease_ttl,
                state_dir: self.state_dir.clone(),
                holder_id: self.id.clone().unwrap_or_else(default_holder_id),
            },
            fleet_file: self.fleet.clone(),
            registration_ttl: self.registration_ttl,
            engine: EngineConfig {
                agent_attempts: self.agent_attempts.max(1),
                advertise: self.advertise_address.clone().or_else(|| {
                    let scheme = if tls.server.is_some() {
                        "https"
                    } else {
                        "http"
                    };
                    (!self.listen.ip().is_unspecified())
                        .then(|| format!("{scheme}://{}", self.listen))
                }),
                gate_prometheus,
                keep_sets: self.keep_sets as usize,
                ..EngineConfig::default()
            },
            tls,
        })
    }
}

/// The coordinator's default migration set: `--migrations` when that directory exists. The
/// flag's default (`migrations`) may be absent, and `--migrations=` (empty) asks for none:
/// the coordinator then plans only with the sets the CLI uploads. Another directory must
/// exist (its load fails otherwise).
fn default_set_dir(global: &GlobalArgs) -> Option<PathBuf> {
    let dir = &global.migrations;
    let implicit = dir.as_path() == std::path::Path::new(crate::args::DEFAULT_MIGRATIONS);
    let none = dir.as_os_str().is_empty() || (implicit && !dir.is_dir());
    (!none).then(|| dir.clone())
}

/// `NAME` or `NAME=DIR` of `--project-migrations`: a project this coordinator serves, with
/// its default migration set when a directory is given (else every call uploads its set).
fn parse_project_migrations(raw: &str) -> Result<(Project, Option<PathBuf>), String> {
    let (name, dir) = match raw.split_once('=') {
        Some((name, dir)) => (name, Some(dir)),
        None => (raw, None),
    };
    let project = Project::parse(name.trim()).map_err(|e| e.to_string())?;
    if project.is_default() {
        return Err("project default's migrations are --migrations; name another project".into());
    }
    match dir.map(str::trim) {
        Some("") => Err(format!(
            "{raw:?}: the migrations directory is empty; give NAME or NAME=DIR"
        )),
        Some(dir) => Ok((project, Some(PathBuf::from(dir)))),
        None => Ok((project, None)),
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

pub async fn run(args: ServeArgs, global: &GlobalArgs, hooks: Hooks) -> Result<u8, CliError> {
    let config = args.config(global)?;
    if let Some(addr) = args.metrics_addr {
        flotilla_coordinator::telemetry::install_metrics(addr)
            .map_err(|e| CliError::Refused(e.to_string()))?;
        flotilla_coordinator::metrics::describe();
        tracing::info!(%addr, "serving Prometheus metrics on /metrics");
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| CliError::Refused(format!("cannot listen on {}: {e}", args.listen)))?;
    let coord = build(&config, vec![], hooks)
        .await
        .map_err(|e| CliError::Refused(e.to_string()))?;
    tracing::info!(
        listen = %args.listen,
        backend = if config.backend.is_embedded() { "embedded" } else { "etcd" },
        "coordinator serving; waiting for the fleet lock"
    );
    let shutdown = CancellationToken::new();
    let trigger = shutdown.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down: cancelling rollout work and releasing the lock");
        trigger.cancel();
    });
    serve(coord, listener, shutdown)
        .await
        .map_err(|e| CliError::Refused(e.to_string()))?;
    Ok(0)
}
