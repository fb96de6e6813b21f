//! Reaching the coordinator: [`ClientArgs`] (`--coordinator`, `--tls-*`), [`connect`] /
//! [`connect_with`], and the mapping of a failed call's `tonic::Status` to a [`CliError`].

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use tonic::transport::Channel;

use flotilla_proto::coordinator_service_client::CoordinatorServiceClient;
use flotilla_rpc::tls::{ClientTls, error_chain};

use crate::error::CliError;

/// Where online commands look for the coordinator unless told (`--coordinator`).
pub const DEFAULT_COORDINATOR: &str = "http://127.0.0.1:7600";

/// How to reach the coordinator: `https://` URLs use TLS.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// Coordinator gRPC address (https:// for TLS)
    #[arg(
        long,
        global = true,
        env = "FLOTILLA_COORDINATOR",
        default_value = DEFAULT_COORDINATOR,
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

/// The same flags accepted before the command (`flotilla --coordinator URL status`): the
/// top-level parser's copies, hidden (each online command lists its own), with the same ids,
/// so clap hands a value given here to the command's [`ClientArgs`]. Never read directly.
#[derive(Debug, Clone, Args)]
pub struct GlobalClientArgs {
    #[arg(long, global = true, hide = true, env = "FLOTILLA_COORDINATOR", default_value = DEFAULT_COORDINATOR)]
    coordinator: String,
    #[arg(long, global = true, hide = true, env = "FLOTILLA_TLS_CA")]
    tls_ca: Option<PathBuf>,
    #[arg(long, global = true, hide = true, env = "FLOTILLA_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    #[arg(long, global = true, hide = true, env = "FLOTILLA_TLS_KEY")]
    tls_key: Option<PathBuf>,
    #[arg(long, global = true, hide = true, env = "FLOTILLA_TLS_DOMAIN")]
    tls_domain: Option<String>,
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
                flotilla_core::text::quoted(&self.coordinator)
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
    if addr.starts_with("https://") && !tls.has_identity() {
        check_client_certificate(channel.clone(), addr).await?;
    }
    Ok(CoordinatorServiceClient::new(channel).max_decoding_message_size(256 << 20))
}

/// A TLS 1.3 server that requires a client certificate refuses a client without one only
/// after the handshake, when the client believes it is connected: its first call then fails
/// with the `CertificateRequired` alert or, depending on timing, only a closed connection
/// ("broken pipe", "operation was canceled"). So a client with no certificate asks the
/// server's gRPC health first and says what happened; a server that answers anything at
/// all (even an error status) did not refuse the certificate.
async fn check_client_certificate(channel: Channel, addr: &str) -> Result<(), CliError> {
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let req = tonic_health::pb::HealthCheckRequest {
        service: String::new(),
    };
    let Err(status) = health.check(req).await else {
        return Ok(());
    };
    let Some(cause) = std::error::Error::source(&status) else {
        return Ok(());
    };
    let chain = error_chain(cause);
    if refused_for_certificate(&chain) {
        return Err(CliError::Refused(format!(
            "the coordinator at {addr} closed the connection after the TLS handshake: the server \
             requires a client certificate (mTLS) and none was given: pass --tls-cert and \
             --tls-key (FLOTILLA_TLS_CERT, FLOTILLA_TLS_KEY) with a certificate signed by the CA \
             the coordinator trusts for clients ({chain})"
        )));
    }
    Ok(())
}

/// Whether a transport failure right after the handshake is how TLS refuses a client
/// without a certificate: the alert itself, or the connection closed under the call.
fn refused_for_certificate(chain: &str) -> bool {
    let chain = chain.to_ascii_lowercase();
    [
        "certificaterequired",
        "certificate required",
        "broken pipe",
        "connection reset",
        "operation was canceled",
        "connection closed",
        "unexpected eof",
    ]
    .iter()
    .any(|p| chain.contains(p))
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
