//! The gRPC server: `flotilla.v1.AgentService` as a thin wrapper over [`Agent`], plus gRPC
//! health checking (SERVING) and reflection (v1 and v1alpha, so grpcurl works; it lists only
//! the services served, `flotilla_rpc::reflection`), and
//! [`serve`], which runs them on a given listener until a given shutdown future resolves,
//! over TLS or mTLS when `server.tls` is set (plaintext only on loopback or with
//! `server.plaintext`, see `tls::check_listen`).
//!
//! Errors become statuses in exactly one place, `AgentError::to_status` (`error.rs`).

use flotilla_rpc::listener::incoming;
use flotilla_rpc::reflection;
use flotilla_rpc::span_stream::InSpan;
pub mod calls;
pub mod validate;

use std::future::Future;
use std::sync::Arc;

use flotilla_proto::agent_service_server::{AgentService, AgentServiceServer};
use flotilla_proto::{
    MigrateRequest, RepairRequest, RepairResponse, StampRequest, StampResponse, StatusRequest,
    StatusResponse, ValidateRequest, ValidateResponse,
};
use tokio::net::TcpListener;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::agent::{Agent, EventStream};

/// Why the server could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("grpc reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("grpc server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error(transparent)]
    Tls(#[from] flotilla_rpc::tls::TlsError),
    #[error("grpc server: cannot read the listener's address: {0}")]
    Listener(#[source] std::io::Error),
}

/// `AgentService` over an [`Agent`].
#[derive(Debug, Clone)]
pub struct AgentGrpc {
    agent: Arc<Agent>,
}

impl AgentGrpc {
    pub fn new(agent: Arc<Agent>) -> Self {
        AgentGrpc { agent }
    }
}

/// The server span of one call: a child of the caller's span when the request carries W3C
/// trace context (`traceparent`), so agent spans join the coordinator's rollout trace.
macro_rules! server_span {
    ($req:expr, $name:literal $(, $($field:tt)*)?) => {{
        let span = tracing::info_span!(
            "rpc",
            otel.name = concat!("AgentService/", $name),
            otel.kind = "server",
            $($($field)*)?
        );
        flotilla_rpc::telemetry::set_remote_parent(&span, flotilla_rpc::telemetry::extract($req.metadata()));
        span
    }};
}

/// The failure a Migrate stream item reports: a failed step's message, or the request's
/// error status.
fn step_failure(item: &Result<flotilla_proto::StepEvent, Status>) -> Option<String> {
    match item {
        Ok(ev) => match &ev.event {
            Some(flotilla_proto::step_event::Event::Failed(f)) => Some(f.message.clone()),
            _ => None,
        },
        Err(status) => Some(status.message().to_owned()),
    }
}

#[tonic::async_trait]
impl AgentService for AgentGrpc {
    type MigrateStream = EventStream;
    type MigrateCallsStream = calls::CallEvents;

    async fn migrate(&self, req: Request<MigrateRequest>) -> Result<Response<EventStream>, Status> {
        let span = server_span!(req, "Migrate", flotilla.target = %req.get_ref().target_id, flotilla.rollout.id = %req.get_ref().rollout_id);
        let events = self
            .agent
            .migrate(req.into_inner())
            .instrument(span.clone())
            .await?;
        // The server span covers the stream, not only the call that returned it.
        Ok(Response::new(Box::pin(InSpan::new(
            events,
            span,
            step_failure,
        ))))
    }

    async fn migrate_calls(
        &self,
        req: Request<tonic::Streaming<flotilla_proto::MigrateCall>>,
    ) -> Result<Response<calls::CallEvents>, Status> {
        Ok(Response::new(calls::serve(
            Arc::new(self.clone()),
            req.into_inner(),
            self.agent.shutdown_token(),
        )))
    }

    async fn validate(
        &self,
        req: Request<ValidateRequest>,
    ) -> Result<Response<ValidateResponse>, Status> {
        let span = server_span!(req, "Validate");
        self.agent
            .validate(req.into_inner())
            .instrument(span)
            .await
            .map(Response::new)
    }

    async fn status(
        &self,
        req: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        let span = server_span!(req, "Status");
        self.agent
            .status(req.into_inner())
            .instrument(span)
            .await
            .map(Response::new)
    }

    async fn stamp(&self, req: Request<StampRequest>) -> Result<Response<StampResponse>, Status> {
        let span = server_span!(req, "Stamp", flotilla.target = %req.get_ref().target_id);
        self.agent
            .stamp(req.into_inner())
            .instrument(span)
            .await
            .map(Response::new)
    }

    async fn repair(
        &self,
        req: Request<RepairRequest>,
    ) -> Result<Response<RepairResponse>, Status> {
        let span = server_span!(req, "Repair", flotilla.target = %req.get_ref().target_id, flotilla.revision = %req.get_ref().revision);
        self.agent
            .repair(req.into_inner())
            .instrument(span)
            .await
            .map(Response::new)
    }

    async fn detect_foreign(
        &self,
        req: Request<flotilla_proto::DetectForeignRequest>,
    ) -> Result<Response<flotilla_proto::DetectForeignResponse>, Status> {
        let span = server_span!(req, "DetectForeign");
        self.agent
            .detect_foreign(req.into_inner())
            .instrument(span)
            .await
            .map(Response::new)
    }

    async fn list_backups(
        &self,
        req: Request<flotilla_proto::ListBackupsRequest>,
    ) -> Result<Response<flotilla_proto::ListBackupsResponse>, Status> {
        let span = server_span!(req, "ListBackups");
        self.agent
            .list_backups(req.into_inner())
            .instrument(span)
            .await
            .map(Response::new)
    }

    async fn restore_backup(
        &self,
        req: Request<flotilla_proto::RestoreBackupRequest>,
    ) -> Result<Response<flotilla_proto::RestoreBackupResponse>, Status> {
        let span = server_span!(req, "RestoreBackup", flotilla.target = %req.get_ref().target_id, flotilla.rollout.id = %req.get_ref().rollout_id);
        self.agent
            .restore_backup(req.into_inner())
            .instrument(span)
            .await
            .map(Response::new)
    }

    async fn prune_backups(
        &self,
        req: Request<flotilla_proto::PruneBackupsRequest>,
    ) -> Result<Response<flotilla_proto::PruneBackupsResponse>, Status> {
        let span = server_span!(req, "PruneBackups");
        self.agent
            .prune_backups(req.into_inner())
            .instrument(span)
            .await
            .map(Response::new)
    }

    async fn adopt(
        &self,
        req: Request<flotilla_proto::AdoptTargetRequest>,
    ) -> Result<Response<StampResponse>, Status> {
        let span = server_span!(req, "Adopt", flotilla.target = %req.get_ref().target_id, flotilla.tool = %req.get_ref().tool);
        self.agent
            .adopt(req.into_inner())
            .instrument(span)
            .await
            .map(Response::new)
    }
}

/// Serve the agent on `listener` until `shutdown` resolves. Then: health turns NOT_SERVING,
/// the agent's root token is cancelled (migrations stop before their next step; the step in
/// flight commits or rolls back), the server drains open streams, and the agent's tasks are
/// awaited for up to `server.shutdown_grace`.
pub async fn serve(
    agent: Arc<Agent>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<AgentServiceServer<AgentGrpc>>().await;
    let (reflection_v1, reflection_v1alpha) =
        reflection::serving(<AgentServiceServer<AgentGrpc> as tonic::server::NamedService>::NAME)?;
    let max = agent.config().server.max_message_bytes;
    let service = AgentServiceServer::new(AgentGrpc::new(agent.clone()))
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let addr = listener.local_addr().map_err(ServeError::Listener)?;
    let server = &agent.config().server;
    let mode = flotilla_rpc::tls::check_listen(addr, server.tls.as_ref(), server.plaintext)?;
    let mut builder = match &server.tls {
        Some(tls) => tls.server()?,
        None => tonic::transport::Server::builder(),
    };
    if mode == flotilla_rpc::tls::TransportMode::PlaintextExplicit {
        tracing::warn!(%addr, "serving plaintext gRPC on a non-loopback address (--plaintext)");
    }
    tracing::info!(
        agent_id = %agent.agent_id(),
        %addr,
        transport = %mode,
        cert = ?server.tls.as_ref().map(|t| t.cert_path()),
        client_ca = ?server.tls.as_ref().and_then(|t| t.client_ca_path()),
        "agent serving"
    );

    let token = agent.shutdown_token();
    let signal = async move {
        shutdown.await;
        tracing::info!("shutting down: finishing the steps in flight");
        health
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
        health
            .set_not_serving::<AgentServiceServer<AgentGrpc>>()
            .await;
        token.cancel();
    };
    let result = builder
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(service)
        .serve_with_incoming_shutdown(incoming(listener), signal)
        .await;
    let grace = agent.config().server.shutdown_grace;
    if !agent.shutdown(grace).await {
        tracing::warn!(
            grace_ms = grace.as_millis() as u64,
            "migrations still running after the grace period"
        );
    }
    result?;
    tracing::info!("agent stopped");
    Ok(())
}
