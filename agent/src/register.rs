//! Self-registration with a coordinator: `Register` at start (id, advertised address, every
//! target with dialect, labels and host), then `Heartbeat` at the interval the coordinator
//! asks for; register again when the coordinator has forgotten the agent (its registration
//! lease lapsed). Unreachable coordinators are retried with backoff; the agent keeps serving.
//! An `https://` coordinator is reached over TLS (`RegisterConfig::tls`: CA, client
//! certificate for mTLS, verification name). `flotilla_agent_registered` says whether the
//! coordinator currently knows the agent.

use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio_util::sync::CancellationToken;

use flotilla_proto as pb;
use flotilla_proto::coordinator_service_client::CoordinatorServiceClient;

use crate::Agent;
use flotilla_rpc::tls::{ClientTls, TlsError};

/// Where to register and what address the coordinator should dial back.
#[derive(Debug, Clone, Default)]
pub struct RegisterConfig {
    /// Coordinator gRPC URL, e.g. `http://flotilla-coordinator:7600`.
    pub coordinator: String,
    /// This agent's gRPC URL as the coordinator reaches it, e.g. `http://10.0.0.5:7400`.
    pub advertise: String,
    /// How to reach an `https://` coordinator (default: webpki roots, no client certificate).
    pub tls: ClientTls,
}

#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error("coordinator address: {0}")]
    Address(#[from] TlsError),
    #[error("advertised address {0:?} must be an http:// or https:// URL")]
    Advertise(String),
}

/// The registration request for the agent's current targets.
async fn request(agent: &Agent, advertise: &str) -> pb::RegisterRequest {
    let targets = match agent
        .status(pb::StatusRequest {
            target_ids: vec![],
            include_history: false,
            fencing_token: 0,
            ..Default::default()
        })
        .await
    {
        Ok(resp) => resp
            .targets
            .into_iter()
            .map(|t| pb::AgentTarget {
                target_id: t.target_id,
                dialect: t.dialect,
                labels: t.labels,
                host: t.host,
            })
            .collect(),
        Err(e) => {
            tracing::warn!("registering without target details: {}", e.message());
            Vec::new()
        }
    };
    pb::RegisterRequest {
        agent_id: agent.agent_id().to_owned(),
        address: advertise.to_owned(),
        targets,
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
    }
}

/// Keep the agent registered until `cancel`.
pub async fn run(
    agent: Arc<Agent>,
    config: RegisterConfig,
    cancel: CancellationToken,
) -> Result<(), RegisterError> {
    // Before anything can refuse the configuration: an agent told to register that never
    // does must say so (the FlotillaAgentNotRegistered alert reads this gauge).
    registered(false);
    if !(config.advertise.starts_with("http://") || config.advertise.starts_with("https://")) {
        return Err(RegisterError::Advertise(config.advertise));
    }
    let endpoint = config
        .tls
        .endpoint(&config.coordinator)?
        .connect_timeout(Duration::from_secs(5));
    let transport = if config.coordinator.starts_with("https://") {
        config.tls.describe()
    } else {
        "plaintext".to_owned()
    };
    tracing::info!(coordinator = %config.coordinator, %transport, "registering with the coordinator");
    let mut client = CoordinatorServiceClient::new(endpoint.connect_lazy());
    let backoff = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(10))
        .with_jitter()
        .without_max_times();
    let mut delays = backoff.build();
    loop {
        let req = request(&agent, &config.advertise).await;
        let targets = req.targets.len();
        let interval = match client.register(req).await {
            Ok(resp) => {
                registered(true);
                delays = backoff.build();
                let resp = resp.into_inner();
                tracing::info!(coordinator = %config.coordinator, targets, "registered with the coordinator");
                Duration::from_millis(u64::from(resp.heartbeat_interval_ms.max(100)))
            }
            Err(e) => {
                registered(false);
                let delay = delays.next().unwrap_or(Duration::from_secs(10));
                tracing::warn!(
                    coordinator = %config.coordinator,
                    "cannot register with the coordinator ({}): this agent keeps serving its \
                     targets and tries again in {delay:?}",
                    why(&e)
                );
                tokio::select! {
                    _ = cancel.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(delay) => continue,
                }
            }
        };
        // Heartbeat until the coordinator forgets us or cannot be reached.
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                _ = tokio::time::sleep(interval) => {}
            }
            let hb = client
                .heartbeat(pb::HeartbeatRequest {
                    agent_id: agent.agent_id().to_owned(),
                })
                .await;
            match hb {
                Ok(r) if r.get_ref().known => {}
                Ok(_) => {
                    registered(false);
                    tracing::info!("the coordinator forgot this agent: registering again");
                    break;
                }
                Err(e) => {
                    registered(false);
                    tracing::warn!(
                        coordinator = %config.coordinator,
                        "the coordinator did not answer the heartbeat ({}): it may have stopped \
                         or be unreachable; this agent keeps serving its targets and registers \
                         again when it answers",
                        why(&e)
                    );
                    break;
                }
            }
        }
    }
}

/// A failed call in a few words: the status's message and its transport cause.
fn why(e: &tonic::Status) -> String {
    match std::error::Error::source(e) {
        Some(cause) => format!("{}: {}", e.message(), flotilla_rpc::tls::error_chain(cause)),
        None => e.message().to_owned(),
    }
}

/// `flotilla_agent_registered`: 1 while the coordinator knows this agent (registered, last
/// heartbeat answered), 0 while registering fails or must be redone.
fn registered(yes: bool) {
    metrics::gauge!("flotilla_agent_registered").set(if yes { 1.0 } else { 0.0 });
}
