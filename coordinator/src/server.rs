//! Running a coordinator: load the default migration set (if any), open the backend (etcd or embedded),
//! build the registry and engine, lead while holding the lock, and serve the gRPC API
//! (plus health and reflection) on a listener the caller passes in, over TLS or mTLS when
//! configured ([`TlsConfig`]; plaintext only on loopback or when asked for).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use flotilla_proto::coordinator_service_server::CoordinatorServiceServer;
use flotilla_rpc::tls::{ClientTls, ServerTls, TransportMode, check_listen};

use crate::api::Api;
use crate::backend::{BackendConfig, BackendError, open_backend};
use crate::engine::projects::ProjectEngines;
use crate::engine::{DefaultSet, Engine, EngineConfig};
use crate::fleet::{AgentAddressError, AgentClient, RemoteAgent};
use crate::registry::{FleetFile, FleetFileError, Registry};
use crate::telemetry::Hooks;
use flotilla_core::project::Project;

/// A validated coordinator configuration.
#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    /// The default migration set (`--migrations`), for requests that name none; `None`:
    /// every request must name a set the CLI uploaded.
    pub migrations: Option<PathBuf>,
    /// Other projects (each a project of its own; see `engine/projects.rs`), with their
    /// default migration sets when given (`None`: the CLI uploads every set).
    pub project_migrations: Vec<(Project, Option<PathBuf>)>,
    pub backend: BackendConfig,
    pub fleet_file: Option<PathBuf>,
    /// How long an agent registration lives without a heartbeat.
    pub registration_ttl: Duration,
    pub engine: EngineConfig,
    pub tls: TlsConfig,
}

/// Transport security of the API server and of the connections to agents.
#[derive(Debug, Clone, Default)]
pub struct TlsConfig {
    /// The API's TLS identity (and client CA = mTLS); `None` = plaintext, which `serve`
    /// allows on loopback addresses only unless `plaintext` is set.
    pub server: Option<ServerTls>,
    /// Plaintext on a non-loopback address was asked for explicitly (`--plaintext`).
    pub plaintext: bool,
    /// How agents are dialed: CA, client certificate (mTLS), verification name.
    pub agents: ClientTls,
}

/// Why a coordinator could not be built or stopped serving.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The migrations directory does not load or validate.
    #[error(transparent)]
    Migrations(#[from] crate::engine::sets::DefaultSetError),
    /// The fleet lock and state store could not be opened.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The fleet file cannot be read or parsed.
    #[error(transparent)]
    Fleet(#[from] FleetFileError),
    /// An agent of the fleet file has an address that cannot be dialed.
    #[error(transparent)]
    Agent(#[from] AgentAddressError),
    #[error("grpc server: cannot read the listener's address: {0}")]
    ListenerAddress(#[source] std::io::Error),
    #[error("grpc server: {0}")]
    Reflection(#[source] tonic_reflection::server::Error),
    #[error("grpc server: {0}")]
    Serve(#[source] tonic::transport::Error),
    #[error(transparent)]
    Tls(#[from] flotilla_rpc::tls::TlsError),
}

/// Everything a running coordinator is made of; built by [`build`], served by [`serve`].
pub struct Coordinator {
    /// Project `default`'s engine (the one that leads).
    pub engine: Arc<Engine>,
    /// Every project's engine.
    pub projects: Arc<ProjectEngines>,
    lock: Arc<dyn crate::lock::FleetLock>,
    hooks: Hooks,
    tls: TlsConfig,
}

/// Load the graph, open the backend and build the engine. `embedded` agents run in-process.
pub async fn build(
    config: &CoordinatorConfig,
    embedded: Vec<Arc<dyn AgentClient>>,
    hooks: Hooks,
) -> Result<Coordinator, ServerError> {
    let default_set = match &config.migrations {
        Some(dir) => Some(DefaultSet::load(dir)?),
        None => None,
    };
    let mut project_sets = Vec::new();
    for (project, dir) in &config.project_migrations {
        let set = match dir {
            Some(dir) => Some(DefaultSet::load(dir)?),
            None => None,
        };
        project_sets.push((project.clone(), set));
    }
    let (lock, store) = open_backend(&config.backend).await?;
    let mut agents = embedded;
    if let Some(path) = &config.fleet_file {
        let file = FleetFile::load(path)?;
        for a in file.agents {
            let client = RemoteAgent::new(
                &a.id,
                &a.address,
                hooks.agent_request.clone(),
                &config.tls.agents,
            )?;
            agents.push(Arc::new(client));
        }
    }
    let registry = Arc::new(Registry::new(
        agents,
        store.clone(),
        hooks.agent_request.clone(),
        config.tls.agents.clone(),
        config.registration_ttl,
    ));
    let engine = Engine::new(default_set, store, registry, config.engine.clone());
    let projects = ProjectEngines::new(engine.clone(), project_sets);
    Ok(Coordinator {
        engine,
        projects,
        lock,
        hooks,
        tls: config.tls.clone(),
    })
}

/// Lead (or stand by) and serve the API on `listener` until `shutdown`; then stop the
/// rollout work, release the lock and drain the server.
pub async fn serve(
    coord: Coordinator,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), ServerError> {
    let Coordinator {
        engine,
        projects,
        lock,
        hooks,
        tls,
    } = coord;
    let addr = listener
        .local_addr()
        .map_err(ServerError::ListenerAddress)?;
    let mode = check_listen(addr, tls.server.as_ref(), tls.plaintext)?;
    let mut builder = match &tls.server {
        Some(server) => server.server()?,
        None => tonic::transport::Server::builder(),
    };
    if mode == TransportMode::PlaintextExplicit {
        tracing::warn!(%addr, "serving plaintext gRPC on a non-loopback address (--plaintext)");
    }
    tracing::info!(
        %addr,
        transport = %mode,
        cert = ?tls.server.as_ref().map(|t| t.cert_path()),
        client_ca = ?tls.server.as_ref().and_then(|t| t.client_ca_path()),
        agents_https = %tls.agents.describe(),
        "coordinator API transport"
    );
    let lead = tokio::spawn(engine.clone().lead(lock, shutdown.clone()));

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<CoordinatorServiceServer<Api>>()
        .await;
    // Reflection lists only what this server serves (not the agent's service).
    let (reflection_v1, reflection_v1alpha) = flotilla_rpc::reflection::serving(
        <CoordinatorServiceServer<Api> as tonic::server::NamedService>::NAME,
    )
    .map_err(ServerError::Reflection)?;
    let trace_of = hooks.trace_of.clone().unwrap_or_else(|| {
        Arc::new(|_: &tonic::metadata::MetadataMap| (String::new(), String::new()))
    });
    let api = Api::new(projects, trace_of, tls.agents.clone());
    let incoming = flotilla_rpc::listener::incoming(listener);
    let result = builder
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(CoordinatorServiceServer::new(api))
        .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
        .await
        .map_err(ServerError::Serve);
    let _ = lead.await;
    result
}
