//! mTLS between the CLI, the coordinator and agents, with real certificates (a test CA made
//! with rcgen) and real handshakes: a rollout end to end over mTLS (CLI → coordinator,
//! coordinator → agent, agent registration → coordinator); clients without a certificate, or
//! that do not trust the server's CA, are refused; a plaintext server on a non-loopback
//! address refuses to start unless `--plaintext` is given.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use flotilla_agent::register::{self, RegisterConfig};
use flotilla_proto as pb;
use flotilla_proto::agent_service_client::AgentServiceClient;
use flotilla_rpc::tls::{ClientTls, ServerTls};
use flotilla_testkit::{Pki, eventually};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::harness::*;

fn path(p: &std::path::Path) -> Result<&str> {
    p.to_str().context("non-UTF-8 temp path")
}

/// Run the CLI with `args` followed by `flags` (coordinator URL and TLS flags).
async fn cli(args: &[&str], flags: &[String]) -> Result<(i32, String, String)> {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(flags.iter().map(String::as_str));
    run_cli(&all, None).await
}

/// `Status` on an agent with the given client settings: the whole error chain on failure.
async fn agent_status(address: &str, tls: &ClientTls) -> Result<usize, String> {
    let attempt = async {
        let channel = tls
            .endpoint(address)?
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await?;
        let resp = AgentServiceClient::new(channel)
            .status(pb::StatusRequest::default())
            .await?;
        anyhow::Ok(resp.into_inner().targets.len())
    };
    attempt.await.map_err(|e| format!("{e:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_over_mtls_between_cli_coordinator_and_agents() -> Result<()> {
    let pki = Pki::new("fleet")?;
    let agent_cert = pki.leaf("agent")?;
    let reg_cert = pki.leaf("agent-reg")?;
    let coord_cert = pki.leaf("coordinator")?;
    let cli_cert = pki.leaf("cli")?;

    // A fleet-file agent and a self-registering one, both requiring client certificates.
    let (_t1, targets) = sqlite_targets("tls", 2)?;
    let agent = TestAgent::start_tls(
        "agent-tls",
        targets,
        ServerTls::load(&agent_cert.cert, &agent_cert.key, Some(pki.ca()))?,
    )
    .await?;
    assert!(agent.address.starts_with("https://"), "{}", agent.address);
    let (_t2, targets) = sqlite_targets("reg", 1)?;
    let reg_agent = TestAgent::start_tls(
        "agent-reg",
        targets,
        ServerTls::load(&reg_cert.cert, &reg_cert.key, Some(pki.ca()))?,
    )
    .await?;

    // The coordinator binary: mTLS API, and its certificate as the client certificate for
    // agents, which it verifies with the same CA.
    let dir = tempfile::tempdir()?;
    let fleet = fleet_file(dir.path(), &[&agent])?;
    let listen = free_addr();
    let state_dir = dir.path().join("state");
    let migrations = repo_migrations();
    let coordinator = Subprocess::spawn(
        &[
            "--migrations",
            path(&migrations)?,
            "coordinator",
            "--listen",
            &listen,
            "--state-dir",
            path(&state_dir)?,
            "--fleet",
            path(&fleet)?,
            "--registration-ttl",
            "10s",
            "--tls-cert",
            path(&coord_cert.cert)?,
            "--tls-key",
            path(&coord_cert.key)?,
            "--tls-client-ca",
            path(pki.ca())?,
            "--tls-ca",
            path(pki.ca())?,
        ],
        dir.path(),
        "coordinator",
    )?;
    let url = format!("https://{listen}");

    // The second agent registers over mTLS with its own certificate.
    let stop = CancellationToken::new();
    let registration = tokio::spawn(register::run(
        reg_agent.agent.clone(),
        RegisterConfig {
            coordinator: url.clone(),
            advertise: reg_agent.address.clone(),
            tls: ClientTls::load(
                Some(pki.ca()),
                Some(&reg_cert.cert),
                Some(&reg_cert.key),
                None,
            )?,
        },
        stop.clone(),
    ));

    let tls_flags = vec![
        "--coordinator".to_owned(),
        url.clone(),
        "--tls-ca".to_owned(),
        path(pki.ca())?.to_owned(),
        "--tls-cert".to_owned(),
        path(&cli_cert.cert)?.to_owned(),
        "--tls-key".to_owned(),
        path(&cli_cert.key)?.to_owned(),
    ];

    // Both agents' targets show up (the coordinator reached both over mTLS).
    let status = eventually(
        "fleet of 3 targets over mtls",
        Duration::from_secs(60),
        || {
            let tls_flags = &tls_flags;
            async move {
                let (code, out, _) = cli(&["--output", "json", "status"], tls_flags).await?;
                if code != 0 {
                    return Ok(None);
                }
                let v: Value = serde_json::from_str(&out)?;
                let n = v["targets"].as_array().map(Vec::len).unwrap_or(0);
                Ok((n == 3).then_some(v))
            }
        },
    )
    .await
    .with_context(|| format!("coordinator log:\n{}", coordinator.log_text()))?;
    for t in status["targets"].as_array().into_iter().flatten() {
        assert!(t["error"].as_str().unwrap_or("").is_empty(), "{t}");
    }

    let (code, out, err) = cli(&["rollout", "start", "--to", "head", "--wait"], &tls_flags).await?;
    assert_eq!(code, 0, "rollout over mtls\n{out}\n{err}");

    let (code, out, err) = cli(&["--output", "json", "status"], &tls_flags).await?;
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out)?;
    let targets = v["targets"].as_array().cloned().unwrap_or_default();
    assert_eq!(targets.len(), 3, "{v}");
    for t in &targets {
        assert_eq!(t["heads"], v["graph_heads"], "{t}");
    }
    for (id, status) in agent.statuses(false).await? {
        assert!(!status.applied.is_empty(), "{id} got nothing applied");
    }

    // The CLI without a client certificate is refused by the mTLS coordinator, and the
    // coordinator's log says which transport it serves.
    let (code, _, err) = run_cli(
        &["status", "--coordinator", &url, "--tls-ca", path(pki.ca())?],
        None,
    )
    .await?;
    // The alert or a closed connection, depending on timing (see the test below): either
    // way the CLI says what happened and what to do, not "broken pipe".
    assert_eq!(code, 1, "status without a client certificate: {err}");
    assert!(
        err.contains("the server requires a client certificate")
            && err.contains("--tls-cert")
            && err.contains("--tls-key"),
        "{err}"
    );
    eprintln!("refused as expected: {err}");
    // TLS flags with an http:// URL are refused, not ignored.
    let (code, _, err) = run_cli(
        &[
            "status",
            "--coordinator",
            &format!("http://{listen}"),
            "--tls-ca",
            path(pki.ca())?,
        ],
        None,
    )
    .await?;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("https://"), "{err}");
    let log = coordinator.log_text();
    assert!(log.contains("transport=mtls"), "{log}");
    assert!(!log.contains("PRIVATE KEY"), "key material in the log");

    stop.cancel();
    registration.await??;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_refuses_clients_without_a_certificate_or_trust() -> Result<()> {
    let pki = Pki::new("fleet")?;
    let server = pki.leaf("agent")?;
    let client = pki.leaf("coordinator")?;
    let rogue = Pki::new("rogue")?;
    let rogue_client = rogue.leaf("coordinator")?;

    let (_t, targets) = sqlite_targets("m", 2)?;
    let agent = TestAgent::start_tls(
        "agent-mtls",
        targets,
        ServerTls::load(&server.cert, &server.key, Some(pki.ca()))?,
    )
    .await?;

    // The control: CA and a client certificate from the same PKI.
    let good = ClientTls::load(Some(pki.ca()), Some(&client.cert), Some(&client.key), None)?;
    assert_eq!(agent_status(&agent.address, &good).await, Ok(2));

    // No client certificate: the server aborts the handshake. With TLS 1.3 the client may
    // see the alert (CertificateRequired) or only the closed connection, depending on timing,
    // so only the failure is asserted; the control above differs in the certificate alone.
    let anonymous = ClientTls::load(Some(pki.ca()), None, None, None)?;
    let err = agent_status(&agent.address, &anonymous).await;
    ensure!(err.is_err(), "no client certificate: {err:?}");
    eprintln!("refused as expected: {err:?}");

    // A client certificate from a CA the server does not trust.
    let stranger = ClientTls::load(
        Some(pki.ca()),
        Some(&rogue_client.cert),
        Some(&rogue_client.key),
        None,
    )?;
    let err = agent_status(&agent.address, &stranger).await;
    ensure!(err.is_err(), "untrusted client certificate: {err:?}");
    eprintln!("refused as expected: {err:?}");

    // A client that does not trust the server's CA refuses the server.
    let distrustful = ClientTls::load(
        Some(rogue.ca()),
        Some(&client.cert),
        Some(&client.key),
        None,
    )?;
    let err = agent_status(&agent.address, &distrustful).await;
    ensure!(
        matches!(&err, Err(m) if m.contains("UnknownIssuer") || m.contains("invalid peer certificate")),
        "server from an untrusted CA: {err:?}"
    );
    eprintln!("refused as expected: {err:?}");

    // Plaintext against a TLS server fails too.
    let err = agent_status(
        &agent.address.replace("https://", "http://"),
        &ClientTls::default(),
    )
    .await;
    ensure!(
        err.is_err(),
        "plaintext client against a TLS agent: {err:?}"
    );

    // The verification name can be overridden (the leaf also names "agent").
    let by_name = ClientTls::load(
        Some(pki.ca()),
        Some(&client.cert),
        Some(&client.key),
        Some("agent"),
    )?;
    assert_eq!(agent_status(&agent.address, &by_name).await, Ok(2));
    let wrong_name = ClientTls::load(
        Some(pki.ca()),
        Some(&client.cert),
        Some(&client.key),
        Some("someone-else"),
    )?;
    let err = agent_status(&agent.address, &wrong_name).await;
    ensure!(
        matches!(&err, Err(m) if m.contains("NotValidForName") || m.contains("not valid for name")),
        "wrong verification name: {err:?}"
    );
    eprintln!("refused as expected: {err:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_on_a_non_loopback_address_needs_the_flag() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let migrations = repo_migrations();
    let state_dir = dir.path().join("state");
    let port = flotilla_testkit::free_port();
    let listen = format!("0.0.0.0:{port}");
    let args = |extra: &[&'static str]| -> Result<Vec<String>> {
        let mut a = vec![
            "--migrations".to_owned(),
            path(&migrations)?.to_owned(),
            "coordinator".to_owned(),
            "--listen".to_owned(),
            listen.clone(),
            "--state-dir".to_owned(),
            path(&state_dir)?.to_owned(),
        ];
        a.extend(extra.iter().map(|s| (*s).to_owned()));
        Ok(a)
    };

    let refused = args(&[])?;
    let refused: Vec<&str> = refused.iter().map(String::as_str).collect();
    let (code, _, err) = run_cli(&refused, None).await?;
    assert_eq!(code, 1, "plaintext on 0.0.0.0 without --plaintext: {err}");
    assert!(
        err.contains("refusing to serve plaintext") && err.contains("--plaintext"),
        "{err}"
    );
    assert!(
        !state_dir.join("state.db").exists(),
        "refused before touching the backend"
    );

    // Half a TLS identity is a usage error naming the missing flag.
    let half = args(&["--tls-cert", "/nonexistent/cert.pem"])?;
    let half: Vec<&str> = half.iter().map(String::as_str).collect();
    let (code, _, err) = run_cli(&half, None).await?;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--tls-key"), "{err}");

    // A certificate file that does not exist is named.
    let missing = args(&[
        "--tls-cert",
        "/nonexistent/cert.pem",
        "--tls-key",
        "/nonexistent/key.pem",
    ])?;
    let missing: Vec<&str> = missing.iter().map(String::as_str).collect();
    let (code, _, err) = run_cli(&missing, None).await?;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("/nonexistent/cert.pem"), "{err}");

    let explicit = args(&["--plaintext"])?;
    let explicit: Vec<&str> = explicit.iter().map(String::as_str).collect();
    let mut server = Subprocess::spawn(&explicit, dir.path(), "plaintext")?;
    eventually(
        "the --plaintext coordinator accepts",
        Duration::from_secs(30),
        || async move {
            Ok(tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .ok()
                .map(|_| ()))
        },
    )
    .await
    .with_context(|| server.log_text())?;
    // The port accepts as soon as it is bound, before the server logs its transport.
    let log = {
        let server = &server;
        eventually(
            "the coordinator logs its transport",
            Duration::from_secs(30),
            || async move {
                let log = server.log_text();
                Ok(log.contains("coordinator API transport").then_some(log))
            },
        )
        .await
        .with_context(|| server.log_text())?
    };
    assert!(log.contains("PLAINTEXT (--plaintext)"), "{log}");
    server.child.kill().await?;
    Ok(())
}
