//! An ephemeral Prometheus server in a temp dir on a free loopback port, scraping the given
//! targets at a short interval.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use rustix::process::Signal;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::process::{Spawn, find_binary, not_installed};
use crate::supervisor::Supervisor;
use crate::workdir;

/// A Prometheus server for one test (Debian's `prometheus`), scraping `targets` (job `app`)
/// every `scrape_interval`.
///
/// [`Prometheus::url`] is its base URL for the HTTP API. [`Prometheus::stop`] kills it (the
/// gate's "Prometheus down"); dropping it kills the server and removes its storage dir.
#[derive(Debug)]
pub struct Prometheus {
    port: u16,
    server: Supervisor,
    // Declared last: removed after the server is gone.
    _dir: TempDir,
}

impl Prometheus {
    /// Starts Prometheus and waits until it reports ready (`/-/ready`).
    pub async fn start(
        targets: &[String],
        scrape_interval: Duration,
    ) -> anyhow::Result<Prometheus> {
        let prometheus = find_binary(
            "prometheus",
            &[PathBuf::from("/usr/bin"), "/usr/local/bin".into()],
        )
        .ok_or_else(|| not_installed("prometheus", "apt-get install prometheus"))?;
        let dir = workdir::server_dir("prometheus")?;
        let config = dir.path().join("prometheus.yml");
        std::fs::write(&config, config_text(targets, scrape_interval))
            .with_context(|| format!("cannot write {}", config.display()))?;
        let data = dir.path().join("data");
        let log = dir.path().join("prometheus.log");
        let make_spawn = |ports: &[u16]| Spawn {
            program: prometheus.clone(),
            args: server_args(&config, &data, ports[0]),
            user: None,
            log: log.clone(),
        };
        let (server, ports) = Supervisor::start(
            "prometheus",
            Signal::TERM,
            1,
            make_spawn,
            |ports: &[u16]| probe(ports[0]),
        )
        .await?;
        Ok(Prometheus {
            port: ports[0],
            server,
            _dir: dir,
        })
    }

    /// The base URL of the HTTP API: `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Kills Prometheus (SIGTERM, SIGKILL after 5 s) and waits until it is gone.
    pub fn stop(&self) {
        self.server.kill();
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        self.server.kill();
    }
}

/// The YAML configuration: one job, `app`, scraping `targets` (`host:port`).
fn config_text(targets: &[String], every: Duration) -> String {
    let ms = every.as_millis().max(1);
    let targets = targets
        .iter()
        .map(|t| format!("'{t}'"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "global:\n  scrape_interval: {ms}ms\n  evaluation_interval: {ms}ms\n\
         scrape_configs:\n  - job_name: app\n    scrape_interval: {ms}ms\n    scrape_timeout: {ms}ms\n\
         \x20   static_configs:\n      - targets: [{targets}]\n"
    )
}

fn server_args(config: &Path, data: &Path, port: u16) -> Vec<String> {
    vec![
        format!("--config.file={}", config.display()),
        format!("--storage.tsdb.path={}", data.display()),
        format!("--web.listen-address=127.0.0.1:{port}"),
        "--log.level=warn".to_owned(),
    ]
}

/// Succeeds once `/-/ready` answers 200 on `port`.
async fn probe(port: u16) -> anyhow::Result<()> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .with_context(|| format!("cannot connect to 127.0.0.1:{port}"))?;
    stream
        .write_all(b"GET /-/ready HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .await?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await?;
    let answer = String::from_utf8_lossy(&answer);
    let status = answer.lines().next().unwrap_or_default();
    if !status.contains(" 200 ") {
        bail!("not ready yet: {status}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configuration_scrapes_every_target_at_the_interval() {
        let text = config_text(
            &["127.0.0.1:1".to_owned(), "127.0.0.1:2".to_owned()],
            Duration::from_millis(200),
        );
        assert_eq!(
            text,
            "global:\n  scrape_interval: 200ms\n  evaluation_interval: 200ms\n\
             scrape_configs:\n  - job_name: app\n    scrape_interval: 200ms\n    scrape_timeout: 200ms\n\
             \x20   static_configs:\n      - targets: ['127.0.0.1:1', '127.0.0.1:2']\n"
        );
    }
}
