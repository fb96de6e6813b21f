//! An ephemeral single-member etcd cluster in a temp dir on free loopback ports.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use etcd_client::{Client, ConnectOptions};
use rustix::process::Signal;
use tempfile::TempDir;

use crate::process::{Spawn, find_binary, not_installed};
use crate::supervisor::Supervisor;
use crate::workdir;

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
    /// The member name, unique per server.
    name: String,
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
        let dir = workdir::server_dir("etcd")?;
        let data = dir.path().join("data");
        let log = dir.path().join("etcd.log");
        // Unique member name: tells our server apart from another one that holds the port.
        let name = dir
            .path()
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("testkit")
            .to_owned();
        let make_spawn = |ports: &[u16]| Spawn {
            program: etcd.clone(),
            args: server_args(&name, &data, ports[0], ports[1]),
            user: None,
            log: log.clone(),
        };
        let (server, ports) =
            Supervisor::start("etcd", Signal::KILL, 2, make_spawn, |ports: &[u16]| {
                probe(endpoint(ports[0]), name.clone())
            })
            .await?;
        Ok(Etcd {
            client_port: ports[0],
            server,
            name,
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

    /// Freezes etcd with SIGSTOP; returns once every etcd thread is stopped.
    pub fn pause(&self) -> anyhow::Result<()> {
        self.server.freeze(true)
    }

    /// Thaws etcd with SIGCONT; returns once its threads run again.
    pub fn resume(&self) -> anyhow::Result<()> {
        self.server.freeze(false)
    }

    /// Stops etcd (SIGTERM, also when paused; SIGKILL after 10 s) unless already stopped, starts
    /// it again on the same ports and data dir, and waits until it serves reads.
    pub async fn restart(&self) -> anyhow::Result<()> {
        let endpoint = self.endpoint();
        self.server
            .restart(Signal::TERM, Duration::from_secs(10), || {
                probe(endpoint.clone(), self.name.clone())
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

/// Succeeds once the etcd at `endpoint` serves linearizable reads and is member `name`.
async fn probe(endpoint: String, name: String) -> anyhow::Result<()> {
    let mut client = connect(&endpoint).await?;
    client.get("flotilla-testkit-ready", None).await?;
    let members = client.member_list().await?;
    if !members.members().iter().any(|m| m.name() == name) {
        // Another server holds the port; ours fails to bind and exits.
        bail!("address already in use: {endpoint} is served by another etcd");
    }
    Ok(())
}

fn server_args(name: &str, data: &Path, client_port: u16, peer_port: u16) -> Vec<String> {
    let client = format!("http://127.0.0.1:{client_port}");
    let peer = format!("http://127.0.0.1:{peer_port}");
    vec![
        format!("--name={name}"),
        format!("--data-dir={}", data.display()),
        format!("--listen-client-urls={client}"),
        format!("--advertise-client-urls={client}"),
        format!("--listen-peer-urls={peer}"),
        format!("--initial-advertise-peer-urls={peer}"),
        format!("--initial-cluster={name}={peer}"),
        "--initial-cluster-state=new".to_owned(),
        // A single member elects itself after one election timeout: keep start/restart short.
        "--heartbeat-interval=25".to_owned(),
        "--election-timeout=250".to_owned(),
        "--logger=zap".to_owned(),
        "--log-outputs=stderr".to_owned(),
    ]
}
