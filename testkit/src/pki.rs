//! A throwaway PKI for the TLS tests: a CA made with rcgen (ring provider) and leaf
//! certificates it signs, written as PEM files in a temp dir.
//!
//! Leaves name `localhost`, `127.0.0.1` and `::1` and carry both the serverAuth and clientAuth
//! key usages, so one leaf serves as a server identity and as a client certificate (as the
//! coordinator's and agents' do: they are servers and clients of each other).

use std::path::{Path, PathBuf};

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use tempfile::TempDir;

/// A CA and the directory its files (and its leaves') live in; deleted on drop.
pub struct Pki {
    dir: TempDir,
    ca: PathBuf,
    issuer: Issuer<'static, KeyPair>,
}

/// A leaf certificate and its private key, as PEM files.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Pki {
    /// A new CA with common name `name`; its certificate is `<dir>/<name>-ca.pem`.
    pub fn new(name: &str) -> anyhow::Result<Pki> {
        let dir = tempfile::Builder::new()
            .prefix("flotilla-pki-")
            .tempdir()
            .context("cannot create a temp dir for the test PKI")?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().context("generating the CA key")?;
        let cert = params.self_signed(&key).context("self-signing the CA")?;
        let ca = dir.path().join(format!("{name}-ca.pem"));
        std::fs::write(&ca, cert.pem())?;
        Ok(Pki {
            dir,
            ca,
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA certificate (PEM).
    pub fn ca(&self) -> &Path {
        &self.ca
    }

    /// The directory holding every file of this PKI.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A leaf signed by this CA, for `localhost`, `127.0.0.1`, `::1` and `name`, usable as a
    /// server and as a client certificate: `<dir>/<name>.pem` and `<dir>/<name>-key.pem`.
    pub fn leaf(&self, name: &str) -> anyhow::Result<CertFiles> {
        let mut params = CertificateParams::new(vec!["localhost".to_owned(), name.to_owned()])?;
        params
            .subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        params
            .subject_alt_names
            .push(SanType::IpAddress(std::net::Ipv6Addr::LOCALHOST.into()));
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().with_context(|| format!("generating the key of {name}"))?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .with_context(|| format!("signing {name}"))?;
        let files = CertFiles {
            cert: self.dir.path().join(format!("{name}.pem")),
            key: self.dir.path().join(format!("{name}-key.pem")),
        };
        std::fs::write(&files.cert, cert.pem())?;
        std::fs::write(&files.key, key.serialize_pem())?;
        Ok(files)
    }
}
