//! Reaching the coordinator: [`ClientArgs`] (`--coordinator`, `--tls-*`), [`connect`] /
//! [`connect_with`], and the mapping of a failed call's `tonic::Status` to a [`CliError`].

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use tonic::transport::Channel;

use flotilla_proto::coordinator_service_client::CoordinatorServiceClient;
use flotilla_rpc::tls::{ClientTls, error_chain};

use crate::error::CliError;

/// How to reach the coordinator: `https://` URLs use TLS.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// Coordinator gRPC address (https:// for TLS)
    #[arg(
        long,
        global = true,
        env = "FLOTILLA_COORDINATOR",
        default_value = "http://127.0.0.1:7600",
        value_name = "URL"
    )]
    pub coordinator: String,
    /// CA (PEM) the coordinator's certificate must chain to (default: the webpki roots)
    #[arg(long, global = true, env = "FLOTILLA_TLS_CA", value_name = "PEM")]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for a coordinator that requires one (mTLS)
    #[arg(long, global = true, env = "FLOTILLA_TLS_CERT", value_name = "PEM")]
    pub tls_cert: Option<PathBuf>,
    /// Private key of --tls-cert (PEM)
    #[arg(long, global = true, env = "FLOTILLA_TLS_KEY", value_name = "PEM")]
    pub tls_key: Option<PathBuf>,
    /// Name to verify the coordinator's certificate against (default: the URL's host)
    #[arg(long, global = true, env = "FLOTILLA_TLS_DOMAIN", value_name = "NAME")]
    pub tls_domain: Option<String>,
    /// The project whose rollouts, locks and target histories a command works on (several
    /// applications share one coordinator and fleet)
    #[arg(
        long,
        global = true,
        env = "FLOTILLA_PROJECT",
        default_value = flotilla_core::project::DEFAULT_PROJECT,
        value_name = "NAME",
        value_parser = parse_project
    )]
    pub project: String,
}

/// A `--project` value: a valid project name.
fn parse_project(raw: &str) -> Result<String, String> {
    flotilla_core::project::Project::parse(raw)
        .map(|p| p.to_string())
        .map_err(|e| e.to_string())
}

impl ClientArgs {
    /// The TLS settings, files read and checked. TLS flags with an `http://` coordinator are
    /// refused rather than silently ignored.
    pub fn tls(&self) -> Result<ClientTls, CliError> {
        let any = self.tls_ca.is_some()
            || self.tls_cert.is_some()
            || self.tls_key.is_some()
            || self.tls_domain.is_some();
        if any && !self.coordinator.starts_with("https://") {
            return Err(CliError::Refused(format!(
                "--coordinator {} is not an https:// URL, but TLS flags are set (--tls-*): \
                 use https://, or drop the TLS flags",
                self.coordinator
            )));
        }
        ClientTls::load(
            self.tls_ca.as_deref(),
            self.tls_cert.as_deref(),
            self.tls_key.as_deref(),
            self.tls_domain.as_deref(),
        )
        .map_err(|e| CliError::Refused(e.to_string()))
    }

    /// Connect to the coordinator these flags name.
    pub async fn connect(&self) -> Result<CoordinatorServiceClient<Channel>, CliError> {
        connect_with(&self.coordinator, &self.tls()?).await
    }
}

/// Connect to the coordinator with default TLS settings (webpki roots for `https://`).
pub async fn connect(addr: &str) -> Result<CoordinatorServiceClient<Channel>, CliError> {
    connect_with(addr, &ClientTls::default()).await
}

/// Connect to the coordinator: TLS per `tls` for `https://`, plaintext for `http://`.
pub async fn connect_with(
    addr: &str,
    tls: &ClientTls,
) -> Result<CoordinatorServiceClient<Channel>, CliError> {
    let endpoint = tls
        .endpoint(addr)
        .map_err(|e| CliError::Refused(format!("coordinator: {e}")))?
        .connect_timeout(Duration::from_secs(5));
    let channel = endpoint.connect().await.map_err(|e| {
        CliError::Refused(format!("cannot reach the coordinator at {addr}: {}; is `flotilla coordinator` running? (set --coordinator or FLOTILLA_COORDINATOR; for TLS see --tls-ca, --tls-cert, --tls-key)", error_chain(&e)))
    })?;
    Ok(CoordinatorServiceClient::new(channel).max_decoding_message_size(256 << 20))
}

/// A failed call as a [`CliError`]: the status's message, its source chain and its code.
pub(crate) fn rpc(e: tonic::Status) -> CliError {
    // A transport failure (e.g. the server refused our certificate after the handshake)
    // keeps its explanation in the status's source.
    let cause = std::error::Error::source(&e)
        .map(|c| format!(": {}", error_chain(c)))
        .unwrap_or_default();
    CliError::Refused(format!("{}{cause} ({:?})", e.message(), e.code()))
}

/// A refused Plan or StartRollout: input the coordinator refused (INVALID_ARGUMENT: a
/// selector matching no target, an unknown goal) exits 2, a downgrade that would block
/// targets 6.
pub(crate) fn refused_spec(e: tonic::Status) -> CliError {
    match e.message().strip_prefix("WOULD_BLOCK: ") {
        Some(why) if e.code() == tonic::Code::FailedPrecondition => {
            CliError::WouldBlock(why.to_owned())
        }
        _ if e.code() == tonic::Code::InvalidArgument => CliError::Usage(e.message().to_owned()),
        _ => rpc(e),
    }
}
