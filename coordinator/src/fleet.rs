//! How the coordinator talks to agents: one [`AgentClient`] trait, two transports — gRPC to
//! a remote agent, or in-process calls to an embedded agent through the same tonic service
//! trait (so both see the same requests, metadata included).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;
use tonic::transport::Channel;
use tonic::{Request, Status};

use flotilla_proto as pb;
use flotilla_proto::agent_service_client::AgentServiceClient;
use flotilla_proto::agent_service_server::AgentService;
use flotilla_rpc::tls::ClientTls;

mod calls;

/// The step events of one Migrate call.
pub type EventStream = BoxStream<'static, Result<pb::StepEvent, Status>>;

/// Hook that decorates every outgoing agent request (trace context, auth).
pub type RequestHook = Arc<dyn Fn(&mut tonic::metadata::MetadataMap) + Send + Sync>;

/// One agent, however it is reached.
#[async_trait]
pub trait AgentClient: Send + Sync + 'static {
    fn id(&self) -> &str;
    /// Where it is reached: a URL, or `embedded`.
    fn address(&self) -> &str;
    async fn status(&self, req: pb::StatusRequest) -> Result<pb::StatusResponse, Status>;
    async fn migrate(&self, req: pb::MigrateRequest) -> Result<EventStream, Status>;
    async fn validate(&self, req: pb::ValidateRequest) -> Result<pb::ValidateResponse, Status>;
    async fn stamp(&self, req: pb::StampRequest) -> Result<pb::StampResponse, Status>;
    async fn repair(&self, req: pb::RepairRequest) -> Result<pb::RepairResponse, Status>;
    async fn detect_foreign(
        &self,
        req: pb::DetectForeignRequest,
    ) -> Result<pb::DetectForeignResponse, Status>;
    async fn adopt(&self, req: pb::AdoptTargetRequest) -> Result<pb::StampResponse, Status>;
    async fn list_backups(
        &self,
        req: pb::ListBackupsRequest,
    ) -> Result<pb::ListBackupsResponse, Status>;
    async fn restore_backup(
        &self,
        req: pb::RestoreBackupRequest,
    ) -> Result<pb::RestoreBackupResponse, Status>;
    async fn prune_backups(
        &self,
        req: pb::PruneBackupsRequest,
    ) -> Result<pb::PruneBackupsResponse, Status>;
}

fn request<T>(msg: T, hook: &Option<RequestHook>) -> Request<T> {
    let mut r = Request::new(msg);
    if let Some(h) = hook {
        h(r.metadata_mut());
    }
    r
}

/// An agent address that cannot be dialed ([`RemoteAgent::new`]).
#[derive(Debug, thiserror::Error)]
#[error("agent {id}: {source}")]
pub struct AgentAddressError {
    pub id: String,
    #[source]
    pub source: flotilla_rpc::tls::TlsError,
}

/// An agent reached over gRPC (TLS for `https://` addresses, per the coordinator's
/// `ClientTls`). The channel connects lazily and reconnects by itself.
pub struct RemoteAgent {
    id: String,
    address: String,
    client: AgentServiceClient<Channel>,
    /// Its Migrate calls, many on one stream (`calls.rs`).
    calls: calls::MigrateCalls,
    hook: Option<RequestHook>,
}

impl RemoteAgent {
    /// `address` like `https://10.0.0.5:7400`. Fails for a malformed address, or an
    /// `http://` one while a TLS CA is configured.
    pub fn new(
        id: &str,
        address: &str,
        hook: Option<RequestHook>,
        tls: &ClientTls,
    ) -> Result<RemoteAgent, AgentAddressError> {
        let endpoint = tls
            .endpoint(address)
            .map_err(|source| AgentAddressError {
                id: id.to_owned(),
                source,
            })?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_while_idle(true);
        let client =
            AgentServiceClient::new(endpoint.connect_lazy()).max_decoding_message_size(64 << 20);
        Ok(RemoteAgent {
            id: id.to_owned(),
            address: address.to_owned(),
            calls: calls::MigrateCalls::new(client.clone()),
            client,
            hook,
        })
    }
}

#[async_trait]
impl AgentClient for RemoteAgent {
    fn id(&self) -> &str {
        &self.id
    }
    fn address(&self) -> &str {
        &self.address
    }
    async fn status(&self, req: pb::StatusRequest) -> Result<pb::StatusResponse, Status> {
        Ok(self
            .client
            .clone()
            .status(request(req, &self.hook))
            .await?
            .into_inner())
    }
    async fn migrate(&self, req: pb::MigrateRequest) -> Result<EventStream, Status> {
        let mut metadata = tonic::metadata::MetadataMap::new();
        if let Some(h) = &self.hook {
            h(&mut metadata);
        }
        self.calls.migrate(req, metadata).await
    }
    async fn validate(&self, req: pb::ValidateRequest) -> Result<pb::ValidateResponse, Status> {
        Ok(self
            .client
            .clone()
            .validate(request(req, &self.hook))
            .await?
            .into_inner())
    }
    async fn stamp(&self, req: pb::StampRequest) -> Result<pb::StampResponse, Status> {
        Ok(self
            .client
            .clone()
            .stamp(request(req, &self.hook))
            .await?
            .into_inner())
    }
    async fn repair(&self, req: pb::RepairRequest) -> Result<pb::RepairResponse, Status> {
        Ok(self
            .client
            .clone()
            .repair(request(req, &self.hook))
            .await?
            .into_inner())
    }
    async fn detect_foreign(
        &self,
        req: pb::DetectForeignRequest,
    ) -> Result<pb::DetectForeignResponse, Status> {
        Ok(self
            .client
            .clone()
            .detect_foreign(request(req, &self.hook))
            .await?
            .into_inner())
    }
    async fn adopt(&self, req: pb::AdoptTargetRequest) -> Result<pb::StampResponse, Status> {
        Ok(self
            .client
            .clone()
            .adopt(request(req, &self.hook))
            .await?
            .into_inner())
    }
    async fn list_backups(
        &self,
        req: pb::ListBackupsRequest,
    ) -> Result<pb::ListBackupsResponse, Status> {
        Ok(self
            .client
            .clone()
            .list_backups(request(req, &self.hook))
            .await?
            .into_inner())
    }
    async fn restore_backup(
        &self,
        req: pb::RestoreBackupRequest,
    ) -> Result<pb::RestoreBackupResponse, Status> {
        Ok(self
            .client
            .clone()
            .restore_backup(request(req, &self.hook))
            .await?
            .into_inner())
    }
    async fn prune_backups(
        &self,
        req: pb::PruneBackupsRequest,
    ) -> Result<pb::PruneBackupsResponse, Status> {
        Ok(self
            .client
            .clone()
            .prune_backups(request(req, &self.hook))
            .await?
            .into_inner())
    }
}

/// An agent running in this process (the demo, small setups), called through its tonic
/// service implementation without a network hop.
pub struct LocalAgent<S> {
    id: String,
    service: Arc<S>,
    hook: Option<RequestHook>,
}

impl<S: AgentService> LocalAgent<S> {
    pub fn new(id: &str, service: Arc<S>, hook: Option<RequestHook>) -> LocalAgent<S> {
        LocalAgent {
            id: id.to_owned(),
            service,
            hook,
        }
    }
}

#[async_trait]
impl<S: AgentService> AgentClient for LocalAgent<S> {
    fn id(&self) -> &str {
        &self.id
    }
    fn address(&self) -> &str {
        "embedded"
    }
    async fn status(&self, req: pb::StatusRequest) -> Result<pb::StatusResponse, Status> {
        Ok(self
            .service
            .status(request(req, &self.hook))
            .await?
            .into_inner())
    }
    async fn migrate(&self, req: pb::MigrateRequest) -> Result<EventStream, Status> {
        Ok(self
            .service
            .migrate(request(req, &self.hook))
            .await?
            .into_inner()
            .boxed())
    }
    async fn validate(&self, req: pb::ValidateRequest) -> Result<pb::ValidateResponse, Status> {
        Ok(self
            .service
            .validate(request(req, &self.hook))
            .await?
            .into_inner())
    }
    async fn stamp(&self, req: pb::StampRequest) -> Result<pb::StampResponse, Status> {
        Ok(self
            .service
            .stamp(request(req, &self.hook))
            .await?
            .into_inner())
    }
    async fn repair(&self, req: pb::RepairRequest) -> Result<pb::RepairResponse, Status> {
        Ok(self
            .service
            .repair(request(req, &self.hook))
            .await?
            .into_inner())
    }
    async fn detect_foreign(
        &self,
        req: pb::DetectForeignRequest,
    ) -> Result<pb::DetectForeignResponse, Status> {
        Ok(self
            .service
            .detect_foreign(request(req, &self.hook))
            .await?
            .into_inner())
    }
    async fn adopt(&self, req: pb::AdoptTargetRequest) -> Result<pb::StampResponse, Status> {
        Ok(self
            .service
            .adopt(request(req, &self.hook))
            .await?
            .into_inner())
    }
    async fn list_backups(
        &self,
        req: pb::ListBackupsRequest,
    ) -> Result<pb::ListBackupsResponse, Status> {
        Ok(self
            .service
            .list_backups(request(req, &self.hook))
            .await?
            .into_inner())
    }
    async fn restore_backup(
        &self,
        req: pb::RestoreBackupRequest,
    ) -> Result<pb::RestoreBackupResponse, Status> {
        Ok(self
            .service
            .restore_backup(request(req, &self.hook))
            .await?
            .into_inner())
    }
    async fn prune_backups(
        &self,
        req: pb::PruneBackupsRequest,
    ) -> Result<pb::PruneBackupsResponse, Status> {
        Ok(self
            .service
            .prune_backups(request(req, &self.hook))
            .await?
            .into_inner())
    }
}

/// Whether a unary RPC error is worth retrying against the same agent (it may be restarting
/// or briefly unreachable), as opposed to a refusal that will not change.
pub fn is_retryable(status: &Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
    )
}
