//! The `flotilla-agent` binary's transport flags: mTLS with `--tls-cert/--tls-key/
//! --tls-client-ca` (real certificates from a test CA, real handshakes), and the plaintext
//! policy: a non-loopback listener without TLS is refused unless `FLOTILLA_PLAINTEXT=true`.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use flotilla_rpc::tls::ClientTls;
use flotilla_testkit::{Pki, eventually, free_port};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// `flotilla-agent` with one SQLite target, output to `<dir>/agent.log`.
fn agent_command(dir: &Path, args: &[&str]) -> Result<tokio::process::Command> {
    let log = std::fs::File::create(dir.join("agent.log"))?;
    let url = format!("sqlite://{}?mode=rwc", dir.join("t1.db").display());
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_flotilla-agent"));
    cmd.args(["--agent-id", "tls-agent", "--target", &format!("t1={url}")])
        .args(args)
        .env_remove("FLOTILLA_PLAINTEXT")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true);
    Ok(cmd)
}

fn log_of(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default()
}

/// Health `Check` over `url` with the given client settings.
async fn health(url: &str, tls: &ClientTls) -> Result<()> {
    let channel = tls
        .endpoint(url)?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await?;
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await?;
    Ok(())
}

#[tokio::test]
async fn agent_binary_serves_mtls() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let pki = Pki::new("agent-test")?;
    let server = pki.leaf("agent")?;
    let client = pki.leaf("coordinator")?;
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let path = |p: &Path| p.to_str().map(str::to_owned).context("non-UTF-8 path");
    let (cert, key, ca) = (path(&server.cert)?, path(&server.key)?, path(pki.ca())?);
    let child = agent_command(
        dir.path(),
        &[
            "--listen",
            &listen,
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--tls-client-ca",
            &ca,
        ],
    )?
    .spawn()?;

    let url = format!("https://{listen}");
    let good = ClientTls::load(Some(pki.ca()), Some(&client.cert), Some(&client.key), None)?;
    eventually("the agent serves mtls", Duration::from_secs(30), || async {
        Ok(health(&url, &good).await.ok())
    })
    .await
    .with_context(|| log_of(dir.path()))?;

    let anonymous = ClientTls::load(Some(pki.ca()), None, None, None)?;
    let refused = health(&url, &anonymous).await;
    ensure!(
        refused.is_err(),
        "a client without a certificate was served"
    );
    let plaintext = health(&format!("http://{listen}"), &ClientTls::default()).await;
    ensure!(plaintext.is_err(), "a plaintext client was served");

    let log = log_of(dir.path());
    ensure!(log.contains("transport=mtls"), "{log}");
    ensure!(!log.contains("PRIVATE KEY"), "key material in the log");
    drop(child); // kill_on_drop
    Ok(())
}

#[tokio::test]
async fn agent_binary_refuses_plaintext_on_a_non_loopback_address() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let port = free_port();
    let listen = format!("0.0.0.0:{port}");

    let status = tokio::time::timeout(
        Duration::from_secs(60),
        agent_command(dir.path(), &["--listen", &listen])?.status(),
    )
    .await
    .context("flotilla-agent did not exit")??;
    let log = log_of(dir.path());
    ensure!(status.code() == Some(1), "exit {status:?}: {log}");
    ensure!(
        log.contains("refusing to serve plaintext") && log.contains("--plaintext"),
        "{log}"
    );

    // FLOTILLA_PLAINTEXT=true is the explicit request.
    let child = agent_command(dir.path(), &["--listen", &listen])?
        .env("FLOTILLA_PLAINTEXT", "true")
        .spawn()?;
    eventually(
        "the --plaintext agent serves",
        Duration::from_secs(30),
        || async {
            let url = format!("http://127.0.0.1:{port}");
            Ok(health(&url, &ClientTls::default()).await.ok())
        },
    )
    .await
    .with_context(|| log_of(dir.path()))?;
    let log = log_of(dir.path());
    ensure!(log.contains("PLAINTEXT (--plaintext)"), "{log}");
    drop(child); // kill_on_drop
    Ok(())
}
