//! An ephemeral single-member etcd cluster in a temp dir on free loopback ports.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use etcd_client::{Client, ConnectOptions};
use rustix::process::Signal;
use tempfile::TempDir;

use crate::process::{Spawn, Supervisor, find_binary, not_installed};

/// A single-member etcd server for one test.
///
/// Clients connect to [`Etcd::endpoint`] without TLS or auth. Faults: [`Etcd::stop`] kills it,
/// [`Etcd::pause`]/[`Etcd::resume`] freeze and thaw it (SIGSTOP/SIGCONT: connections stay open
/// but nothing answers, leases are not expired meanwhile), [`Etcd::restart`] brings it back with
/// its data. Dropping it kills the server and removes its data dir; the server also dies with
/// the test binary.
#[derive(Debug)]
pub struct Etcd {
    client_port: u16,
    server: Supervisor,
    // Declared last: removed after the server is gone.
    _dir: TempDir,
}

impl Etcd {
    /// Starts etcd and waits until it serves a linearizable read (it has elected itself leader).
    pub async fn start() -> anyhow::Result<Etcd> {
        let etcd = find_binary(
            "etcd",
            &[PathBuf::from("/usr/bin"), "/usr/local/bin".into()],
        )
        .ok_or_else(|| not_installed("etcd", "apt-get install etcd-server"))?;
        let dir = tempfile::Builder::new()
            .prefix("flotilla-etcd-")
            .tempdir()
            .context("cannot create a temp dir for etcd")?;
        let data = dir.path().join("data");
        let log = dir.path().join("etcd.log");
        let make_spawn = |ports: &[u16]| Spawn {
            program: etcd.clone(),
            args: server_args(&data, ports[0], ports[1]),
            user: None,
            log: log.clone(),
        };
        let (server, ports) =
            Supervisor::start("etcd", Signal::KILL, 2, make_spawn, |ports: &[u16]| {
                probe(endpoint(ports[0]))
            })
            .await?;
        Ok(Etcd {
            client_port: ports[0],
            server,
            _dir: dir,
        })
    }

    /// The client URL: `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        endpoint(self.client_port)
    }

    /// The client port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.client_port
    }

    /// The etcd process id (of the last process when stopped).
    pub fn pid(&self) -> u32 {
        self.server.pid()
    }

    /// A client connected to this server (1 s connect timeout, 5 s request timeout).
    pub async fn client(&self) -> anyhow::Result<Client> {
        connect(&self.endpoint()).await
    }

    /// Kills etcd (SIGKILL) and waits until it is gone; [`Etcd::restart`] starts it again.
    pub fn stop(&self) {
        self.server.kill();
    }

    /// Freezes etcd with SIGSTOP.
    pub fn pause(&self) -> anyhow::Result<()> {
        self.server.signal(Signal::STOP)
    }

    /// Thaws etcd with SIGCONT.
    pub fn resume(&self) -> anyhow::Result<()> {
        self.server.signal(Signal::CONT)
    }

    /// Stops etcd (SIGTERM, also when paused; SIGKILL after 10 s) unless already stopped, starts
    /// it again on the same ports and data dir, and waits until it serves reads.
    pub async fn restart(&self) -> anyhow::Result<()> {
        let endpoint = self.endpoint();
        self.server
            .restart(Signal::TERM, Duration::from_secs(10), || {
                probe(endpoint.clone())
            })
            .await
    }
}

impl Drop for Etcd {
    /// SIGKILL, also when paused.
    fn drop(&mut self) {
        self.server.kill();
    }
}

fn endpoint(port: u16) -> String {
    format!("http://127.0.0.1:{port}")
}

async fn connect(endpoint: &str) -> anyhow::Result<Client> {
    let options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(1))
        .with_timeout(Duration::from_secs(5));
    Client::connect([endpoint], Some(options))
        .await
        .with_context(|| format!("cannot connect to etcd at {endpoint}"))
}

async fn probe(endpoint: String) -> anyhow::Result<()> {
    let mut client = connect(&endpoint).await?;
    client.get("flotilla-testkit-ready", None).await?;
    Ok(())
}

fn server_args(data: &Path, client_port: u16, peer_port: u16) -> Vec<String> {
    let client = format!("http://127.0.0.1:{client_port}");
    let peer = format!("http://127.0.0.1:{peer_port}");
    vec![
        "--name=testkit".to_owned(),
        format!("--data-dir={}", data.display()),
        format!("--listen-client-urls={client}"),
        format!("--advertise-client-urls={client}"),
        format!("--listen-peer-urls={peer}"),
        format!("--initial-advertise-peer-urls={peer}"),
        format!("--initial-cluster=testkit={peer}"),
        "--initial-cluster-state=new".to_owned(),
        "--logger=zap".to_owned(),
        "--log-outputs=stderr".to_owned(),
    ]
}
