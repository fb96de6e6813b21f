//! TLS for Flotilla's gRPC links (rustls with the ring provider, through tonic), shared by the
//! agent and the coordinator: PEM files are read and checked once at startup into a
//! [`ServerTls`] (identity, optional client CA = mTLS) or a [`ClientTls`] (CA, optional client
//! identity, optional verification name), and [`check_listen`] applies the plaintext policy.
//!
//! Policy: a server with no TLS configured refuses a non-loopback listen address unless
//! plaintext was asked for explicitly (`--plaintext`); loopback listeners may stay plaintext.
//! Clients use TLS for `https://` URLs (server CA from `--tls-ca`, else the webpki roots) and
//! refuse an `http://` URL when a CA is configured. Key material never reaches a log, a
//! `Debug` output or an error message.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, Server, ServerTlsConfig};

/// Bound on one TLS handshake, server and client side.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why TLS settings are unusable, or why a listener or URL is refused.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("tls: cannot read the {what} {}: {source}", path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("tls: the {what} {} is not usable: {message}", path.display())]
    Invalid {
        what: &'static str,
        path: PathBuf,
        message: String,
    },
    #[error("tls: {0}")]
    Settings(&'static str),
    #[error(
        "refusing to serve plaintext gRPC on {addr}, which is not a loopback address: give \
         --tls-cert and --tls-key (and --tls-client-ca to require client certificates), or \
         --plaintext (FLOTILLA_PLAINTEXT=true) to accept unencrypted connections"
    )]
    PlaintextRefused { addr: SocketAddr },
    #[error("tls: give either TLS settings (--tls-cert, --tls-key) or --plaintext, not both")]
    PlaintextWithTls,
    #[error(
        "{url} is a plaintext http:// address but a TLS CA is configured (--tls-ca): use an \
         https:// URL, or drop the TLS settings"
    )]
    PlaintextUrl { url: String },
    #[error("bad address {url:?}: {message}")]
    Address { url: String, message: String },
}

/// How a server's connections are protected; logged at startup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportMode {
    /// TLS, and every client must present a certificate the client CA signed.
    MutualTls,
    /// TLS without client certificates.
    Tls,
    /// Plaintext on a loopback address (tests, the demo).
    PlaintextLoopback,
    /// Plaintext on a non-loopback address, asked for with `--plaintext`.
    PlaintextExplicit,
}

impl TransportMode {
    pub fn as_str(self) -> &'static str {
        match self {
            TransportMode::MutualTls => "mtls",
            TransportMode::Tls => "tls",
            TransportMode::PlaintextLoopback => "plaintext (loopback)",
            TransportMode::PlaintextExplicit => "PLAINTEXT (--plaintext)",
        }
    }
}

impl fmt::Display for TransportMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The policy: which mode a server listening on `addr` runs in, or why it must not start.
pub fn check_listen(
    addr: SocketAddr,
    tls: Option<&ServerTls>,
    plaintext: bool,
) -> Result<TransportMode, TlsError> {
    match (tls, plaintext) {
        (Some(_), true) => Err(TlsError::PlaintextWithTls),
        (Some(t), false) if t.is_mutual() => Ok(TransportMode::MutualTls),
        (Some(_), false) => Ok(TransportMode::Tls),
        (None, _) if addr.ip().is_loopback() => Ok(TransportMode::PlaintextLoopback),
        (None, true) => Ok(TransportMode::PlaintextExplicit),
        (None, false) => Err(TlsError::PlaintextRefused { addr }),
    }
}

/// The rustls provider is ring, installed explicitly so that no other provider a dependency
/// might enable is picked (rustls refuses to choose when two are compiled in).
fn install_ring_provider() {
    // Err only means a provider is already installed (ours, by an earlier call).
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

fn invalid(what: &'static str, path: &Path, message: impl Into<String>) -> TlsError {
    TlsError::Invalid {
        what,
        path: path.to_owned(),
        message: message.into(),
    }
}

/// A PEM error, said without quoting the file (which may hold a key).
fn pem_problem(e: &pem::Error) -> &'static str {
    match e {
        pem::Error::MissingSectionEnd { .. } => "a PEM section has no END line",
        pem::Error::IllegalSectionStart { .. } => "a PEM section has a malformed BEGIN line",
        pem::Error::Base64Decode(_) => "a PEM section is not valid base64",
        pem::Error::NoItemsFound => "no PEM item of the expected type",
        pem::Error::SectionTooLarge => "a PEM section is too large",
        _ => "malformed PEM",
    }
}

/// Read a PEM certificate chain (at least one certificate).
fn read_certs(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    let bytes = read(what, path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(what, path, pem_problem(&e)))?;
    if certs.is_empty() {
        return Err(invalid(
            what,
            path,
            "no certificate found (expected PEM `BEGIN CERTIFICATE`)",
        ));
    }
    Ok(bytes)
}

/// Read a PEM CA bundle: every certificate must be a usable trust anchor (rustls would
/// otherwise skip a bad one silently and fail every handshake later).
fn read_ca(what: &'static str, path: &Path) -> Result<Certificate, TlsError> {
    let bytes = read_certs(what, path)?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&bytes) {
        let cert = cert.map_err(|e| invalid(what, path, pem_problem(&e)))?;
        roots
            .add(cert)
            .map_err(|e| invalid(what, path, format!("not a usable CA certificate: {e}")))?;
    }
    Ok(Certificate::from_pem(bytes))
}

/// Read a PEM private key (PKCS#8, PKCS#1 or SEC1). Errors never quote the file.
fn read_key(path: &Path) -> Result<Vec<u8>, TlsError> {
    const WHAT: &str = "private key";
    let bytes = read(WHAT, path)?;
    match PrivateKeyDer::from_pem_slice(&bytes) {
        Ok(_) => Ok(bytes),
        Err(pem::Error::NoItemsFound) => Err(invalid(
            WHAT,
            path,
            "no private key found (expected PEM PKCS#8, PKCS#1 or SEC1)",
        )),
        Err(e) => Err(invalid(WHAT, path, pem_problem(&e))),
    }
}

/// An error's message with its causes (tonic wraps rustls errors as sources; a refused
/// handshake is only explained by the innermost one). A cause whose words are already in the
/// message is left out: wrappers that repeat their source (hyper's `tcp connect error`) would
/// otherwise say it twice.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let text = c.to_string();
        if !text.is_empty() && !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cur = c.source();
    }
    s
}

/// The TLS flags of both servers (`flotilla coordinator`, `flotilla-agent`): their own
/// identity (served, and presented as the client certificate when they dial the other side),
/// client verification (mTLS), and how to verify the peer they dial.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct PeerTlsArgs {
    /// Serve TLS with this certificate chain (PEM); also the client certificate presented to
    /// the peer this process dials (agents for the coordinator, the coordinator for an agent)
    #[arg(
        long,
        env = "FLOTILLA_TLS_CERT",
        value_name = "PEM",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,
    /// Private key of --tls-cert (PEM)
    #[arg(
        long,
        env = "FLOTILLA_TLS_KEY",
        value_name = "PEM",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,
    /// Require clients to present a certificate signed by this CA (PEM): mutual TLS
    #[arg(
        long,
        env = "FLOTILLA_TLS_CLIENT_CA",
        value_name = "PEM",
        requires = "tls_cert"
    )]
    pub tls_client_ca: Option<PathBuf>,
    /// CA (PEM) the dialed peer's certificate must chain to, for https:// addresses (default:
    /// the webpki roots)
    #[arg(long, env = "FLOTILLA_TLS_CA", value_name = "PEM")]
    pub tls_ca: Option<PathBuf>,
    /// Name to verify the dialed peer's certificate against (default: the address's host)
    #[arg(long, env = "FLOTILLA_TLS_DOMAIN", value_name = "NAME")]
    pub tls_domain: Option<String>,
    /// Serve plaintext gRPC on a non-loopback address (without TLS that is refused)
    #[arg(long, env = "FLOTILLA_PLAINTEXT", conflicts_with = "tls_cert")]
    pub plaintext: bool,
}

impl PeerTlsArgs {
    /// The serving side, read and checked from the files.
    pub fn server(&self) -> Result<Option<ServerTls>, TlsError> {
        ServerTls::from_files(
            self.tls_cert.as_deref(),
            self.tls_key.as_deref(),
            self.tls_client_ca.as_deref(),
        )
    }

    /// The dialing side: `--tls-ca`, `--tls-domain`, and the own certificate as client
    /// certificate.
    pub fn client(&self) -> Result<ClientTls, TlsError> {
        ClientTls::load(
            self.tls_ca.as_deref(),
            self.tls_cert.as_deref(),
            self.tls_key.as_deref(),
            self.tls_domain.as_deref(),
        )
    }
}

/// A server's TLS identity, and the CA its clients' certificates must chain to (mTLS).
#[derive(Clone)]
pub struct ServerTls {
    identity: Identity,
    client_ca: Option<Certificate>,
    cert_path: PathBuf,
    client_ca_path: Option<PathBuf>,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("cert", &self.cert_path)
            .field("client_ca", &self.client_ca_path)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// From the flags: nothing given = no TLS; `--tls-cert` and `--tls-key` = TLS; plus
    /// `--tls-client-ca` = mTLS.
    pub fn from_files(
        cert: Option<&Path>,
        key: Option<&Path>,
        client_ca: Option<&Path>,
    ) -> Result<Option<ServerTls>, TlsError> {
        match (cert, key) {
            (Some(cert), Some(key)) => Self::load(cert, key, client_ca).map(Some),
            (None, None) if client_ca.is_some() => Err(TlsError::Settings(
                "--tls-client-ca needs the server's own --tls-cert and --tls-key",
            )),
            (None, None) => Ok(None),
            _ => Err(TlsError::Settings(
                "--tls-cert and --tls-key must be given together",
            )),
        }
    }

    /// Read and check the files: the certificate chain and key parse and belong together,
    /// the client CA is a usable trust anchor.
    pub fn load(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<ServerTls, TlsError> {
        install_ring_provider();
        let cert_pem = read_certs("certificate", cert)?;
        let key_pem = read_key(key)?;
        let ca = client_ca
            .map(|p| read_ca("client CA certificate", p))
            .transpose()?;
        let tls = ServerTls {
            identity: Identity::from_pem(cert_pem, key_pem),
            client_ca: ca,
            cert_path: cert.to_owned(),
            client_ca_path: client_ca.map(Path::to_owned),
        };
        // Builds the rustls server config now, so a key that does not match the
        // certificate is a startup error naming the files.
        Server::builder().tls_config(tls.config()).map_err(|e| {
            invalid(
                "certificate",
                cert,
                format!("with key {}: {}", key.display(), error_chain(&e)),
            )
        })?;
        Ok(tls)
    }

    /// Whether clients must present a certificate signed by the client CA.
    pub fn is_mutual(&self) -> bool {
        self.client_ca.is_some()
    }

    /// The certificate file (for logs).
    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }

    /// The client CA file, when clients must present certificates (for logs).
    pub fn client_ca_path(&self) -> Option<&Path> {
        self.client_ca_path.as_deref()
    }

    /// The server's own identity, which it also presents when it dials its peers as a client.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The tonic server configuration.
    pub fn config(&self) -> ServerTlsConfig {
        let cfg = ServerTlsConfig::new()
            .identity(self.identity.clone())
            .timeout(HANDSHAKE_TIMEOUT);
        match &self.client_ca {
            Some(ca) => cfg.client_ca_root(ca.clone()),
            None => cfg,
        }
    }

    /// A server builder that terminates TLS with this identity.
    pub fn server(&self) -> Result<Server, TlsError> {
        install_ring_provider();
        Server::builder().tls_config(self.config()).map_err(|e| {
            invalid(
                "certificate",
                &self.cert_path,
                format!("cannot serve TLS: {}", error_chain(&e)),
            )
        })
    }
}

/// How a client verifies servers and authenticates itself. `Default` = no CA (https URLs
/// are checked against the webpki roots), no client certificate.
#[derive(Clone, Default)]
pub struct ClientTls {
    ca: Option<Certificate>,
    identity: Option<Identity>,
    domain: Option<String>,
    ca_path: Option<PathBuf>,
    cert_path: Option<PathBuf>,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls")
            .field("ca", &self.ca_path)
            .field("cert", &self.cert_path)
            .field("domain", &self.domain)
            .finish_non_exhaustive()
    }
}

impl ClientTls {
    /// From the flags `--tls-ca`, `--tls-cert`/`--tls-key` (client identity) and
    /// `--tls-domain`; every file is read and checked now.
    pub fn load(
        ca: Option<&Path>,
        cert: Option<&Path>,
        key: Option<&Path>,
        domain: Option<&str>,
    ) -> Result<ClientTls, TlsError> {
        install_ring_provider();
        let identity = match (cert, key) {
            (Some(c), Some(k)) => Some(Identity::from_pem(
                read_certs("client certificate", c)?,
                read_key(k)?,
            )),
            (None, None) => None,
            _ => {
                return Err(TlsError::Settings(
                    "--tls-cert and --tls-key must be given together",
                ));
            }
        };
        let tls = ClientTls {
            ca: ca.map(|p| read_ca("CA certificate", p)).transpose()?,
            identity,
            domain: domain.filter(|d| !d.is_empty()).map(str::to_owned),
            ca_path: ca.map(Path::to_owned),
            cert_path: cert.map(Path::to_owned),
        };
        if let Some(d) = &tls.domain
            && rustls_pki_types::ServerName::try_from(d.as_str()).is_err()
        {
            return Err(TlsError::Settings(
                "--tls-domain is not a valid DNS name or IP address",
            ));
        }
        // Builds the rustls client config now: a client key that does not match its
        // certificate is a startup error naming the files.
        if let (Some(c), Some(k)) = (cert, key) {
            tls.tls_endpoint(Endpoint::from_static("https://localhost"))
                .map_err(|e| {
                    invalid(
                        "client certificate",
                        c,
                        format!("with key {}: {e}", k.display()),
                    )
                })?;
        }
        Ok(tls)
    }

    /// The same settings presenting `identity` (a server's own) as the client certificate.
    pub fn with_identity(mut self, identity: Identity, cert_path: &Path) -> ClientTls {
        self.identity = Some(identity);
        self.cert_path = Some(cert_path.to_owned());
        self
    }

    /// Whether a client certificate is presented.
    pub fn has_identity(&self) -> bool {
        self.identity.is_some()
    }

    /// Whether a CA or a verification name was given (TLS was asked for).
    pub fn has_ca(&self) -> bool {
        self.ca.is_some()
    }

    /// One line for logs: which CA, which client certificate (paths only).
    pub fn describe(&self) -> String {
        let ca = match &self.ca_path {
            Some(p) => format!("CA {}", p.display()),
            None => "webpki roots".to_owned(),
        };
        let cert = match &self.cert_path {
            Some(p) => format!("client certificate {}", p.display()),
            None => "no client certificate".to_owned(),
        };
        format!("https:// with {ca}, {cert}")
    }

    fn tls_endpoint(&self, endpoint: Endpoint) -> Result<Endpoint, String> {
        let mut cfg = ClientTlsConfig::new().timeout(HANDSHAKE_TIMEOUT);
        cfg = match &self.ca {
            Some(ca) => cfg.ca_certificate(ca.clone()),
            None => cfg.with_webpki_roots(),
        };
        if let Some(id) = &self.identity {
            cfg = cfg.identity(id.clone());
        }
        if let Some(d) = &self.domain {
            cfg = cfg.domain_name(d.clone());
        }
        endpoint.tls_config(cfg).map_err(|e| error_chain(&e))
    }

    /// An endpoint for `url`: TLS for `https://`, plaintext for `http://` (refused when a CA
    /// is configured, since then TLS was clearly meant).
    pub fn endpoint(&self, url: &str) -> Result<Endpoint, TlsError> {
        let address = |message: String| TlsError::Address {
            url: url.to_owned(),
            message,
        };
        let endpoint =
            Endpoint::from_shared(url.to_owned()).map_err(|e| address(error_chain(&e)))?;
        if url.starts_with("https://") {
            self.tls_endpoint(endpoint).map_err(address)
        } else if url.starts_with("http://") {
            if self.ca.is_some() {
                return Err(TlsError::PlaintextUrl {
                    url: url.to_owned(),
                });
            }
            Ok(endpoint)
        } else {
            Err(address("expected an http:// or https:// URL".to_owned()))
        }
    }
}

#[cfg(test)]
mod chain_tests {
    use super::error_chain;

    #[derive(Debug)]
    struct Layer(&'static str, Option<Box<Layer>>);

    impl std::fmt::Display for Layer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Layer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|l| l as _)
        }
    }

    #[test]
    fn causes_already_said_are_left_out() {
        let e = Layer(
            "transport error",
            Some(Box::new(Layer(
                "tcp connect error: Connection refused",
                Some(Box::new(Layer(
                    "tcp connect error",
                    Some(Box::new(Layer("Connection refused", None))),
                ))),
            ))),
        );
        assert_eq!(
            error_chain(&e),
            "transport error: tcp connect error: Connection refused"
        );
        let plain = Layer("a", Some(Box::new(Layer("b", None))));
        assert_eq!(error_chain(&plain), "a: b");
    }

    #[tokio::test]
    async fn a_refused_connection_says_so_once() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or(1);
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
            .expect("a valid url");
        let err = endpoint
            .connect()
            .await
            .expect_err("nothing listens on the port");
        let text = error_chain(&err);
        assert!(text.contains("Connection refused"), "{text}");
        assert_eq!(
            text.matches("tcp connect error").count(),
            1,
            "said once: {text}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_policy() {
        let lo: SocketAddr = ([127, 0, 0, 1], 7400).into();
        let lo6: SocketAddr = (std::net::Ipv6Addr::LOCALHOST, 7400).into();
        let any: SocketAddr = ([0, 0, 0, 0], 7400).into();
        assert_eq!(
            check_listen(lo, None, false).ok(),
            Some(TransportMode::PlaintextLoopback)
        );
        assert_eq!(
            check_listen(lo6, None, false).ok(),
            Some(TransportMode::PlaintextLoopback)
        );
        assert_eq!(
            check_listen(any, None, true).ok(),
            Some(TransportMode::PlaintextExplicit)
        );
        let refused = check_listen(any, None, false).map_err(|e| e.to_string());
        assert!(
            matches!(&refused, Err(m) if m.contains("0.0.0.0:7400") && m.contains("--plaintext")),
            "{refused:?}"
        );
    }

    #[test]
    fn files_are_named_in_errors() {
        let missing = Path::new("/nonexistent/flotilla/cert.pem");
        let err = ServerTls::from_files(Some(missing), Some(missing), None)
            .map(|_| ())
            .map_err(|e| e.to_string());
        assert!(
            matches!(&err, Err(m) if m.contains("/nonexistent/flotilla/cert.pem")),
            "{err:?}"
        );
        let half = ServerTls::from_files(Some(missing), None, None).map(|_| ());
        assert!(matches!(half, Err(TlsError::Settings(_))));
        let ca_only = ServerTls::from_files(None, None, Some(missing)).map(|_| ());
        assert!(matches!(ca_only, Err(TlsError::Settings(_))));
    }

    #[test]
    fn key_errors_do_not_quote_the_file() -> Result<(), std::io::Error> {
        let dir = tempfile::tempdir()?;
        let key = dir.path().join("key.pem");
        std::fs::write(
            &key,
            "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleS1tYXRlcmlhbA!!\n-----END PRIVATE KEY-----\n",
        )?;
        let err = read_key(&key).map(|_| ()).map_err(|e| e.to_string());
        assert!(
            matches!(&err, Err(m) if m.contains("key.pem") && !m.contains("c2VjcmV0")),
            "{err:?}"
        );
        Ok(())
    }

    #[test]
    fn a_key_that_does_not_match_its_certificate_is_refused() -> anyhow::Result<()> {
        let pki = flotilla_testkit::Pki::new("mismatch")?;
        let (a, b) = (pki.leaf("a")?, pki.leaf("b")?);
        assert!(ServerTls::load(&a.cert, &a.key, Some(pki.ca())).is_ok());
        let server = ServerTls::load(&a.cert, &b.key, None).map(|_| ());
        let client = ClientTls::load(None, Some(&a.cert), Some(&b.key), None).map(|_| ());
        for err in [server, client] {
            let msg = err.as_ref().map_err(ToString::to_string);
            assert!(
                matches!(&msg, Err(m) if m.contains("a.pem") && m.contains("b-key.pem")),
                "{msg:?}"
            );
        }
        // A CA file holding a key instead of a certificate is named.
        let ca = ClientTls::load(Some(&a.key), None, None, None).map(|_| ());
        let msg = ca.map_err(|e| e.to_string());
        assert!(
            matches!(&msg, Err(m) if m.contains("a-key.pem") && !m.contains("PRIVATE")),
            "{msg:?}"
        );
        Ok(())
    }

    #[test]
    fn urls() {
        let plain = ClientTls::default();
        assert!(plain.endpoint("http://127.0.0.1:7600").is_ok());
        assert!(plain.endpoint("https://localhost:7600").is_ok());
        assert!(matches!(
            plain.endpoint("ftp://x"),
            Err(TlsError::Address { .. })
        ));
    }
}
