//! Issue 31, what operators read must be true and safe: input echoed in errors has its
//! control and bidi characters escaped (selectors, goals, rollout and target ids, file
//! names); the online flags work before the command (`flotilla --coordinator X status`); an
//! agent whose coordinator died says so and that it keeps serving, not that it shuts down.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use flotilla_testkit::{eventually, free_port};

use super::observability::{Proc, agent_bin, flotilla_bin, s, sqlite_url};
use crate::harness::*;

/// Right-to-left override, left-to-right isolate, pop directional isolate, ESC.
const HOSTILE: [char; 4] = ['\u{202e}', '\u{2066}', '\u{2069}', '\u{1b}'];

fn assert_escaped(what: &str, err: &str, escape: &str) -> Result<()> {
    ensure!(
        !err.chars().any(|c| HOSTILE.contains(&c)),
        "{what}: raw control or bidi character in {err:?}"
    );
    ensure!(err.contains(escape), "{what}: {escape} not in {err:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echoed_input_is_escaped_and_online_flags_work_before_the_command() -> Result<()> {
    let (_t, targets) = sqlite_targets("esc", 2)?;
    let agent = TestAgent::start("agent-esc", targets).await?;
    let coord = TestCoordinator::start(&repo_migrations(), &[&agent], None).await?;
    let addr = coord.address.clone();
    let repo = repo_migrations().display().to_string();

    // Global in spirit: --coordinator before the command, as before it after.
    let (code, out, err) = run_cli(
        &[
            "--coordinator",
            &addr,
            "--output",
            "json",
            "--migrations",
            &repo,
            "status",
        ],
        None,
    )
    .await?;
    ensure!(code == 0, "--coordinator before `status`: {out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out)?;
    ensure!(v["targets"].as_array().map(Vec::len) == Some(2), "{out}");
    let (code, out, err) = run_cli(
        &[
            "--coordinator",
            &addr,
            "rollout",
            "list",
            "--output",
            "json",
        ],
        None,
    )
    .await?;
    ensure!(code == 0, "--coordinator before `rollout list`: {out}{err}");
    // A TLS flag before the command reaches the command too (and is checked there).
    let (code, _, err) = run_cli(
        &[
            "--coordinator",
            &addr,
            "--tls-ca",
            "/nonexistent.pem",
            "status",
        ],
        None,
    )
    .await?;
    ensure!(
        code == 1 && err.contains("https://"),
        "--tls-ca before `status` must be refused with an http:// URL: {err}"
    );

    let (code, _, err) = run_cli(
        &[
            "--coordinator",
            "http://127.0.0.1:1/\u{202e}x",
            "--tls-ca",
            "/nonexistent.pem",
            "status",
        ],
        None,
    )
    .await?;
    ensure!(code == 1, "{err}");
    assert_escaped("coordinator URL", &err, r#""http://127.0.0.1:1/\u{202e}x""#)?;

    // A rollout id, a goal, a selector, a target id.
    let (code, _, err) = run_cli(
        &["--coordinator", &addr, "rollout", "get", "r\u{202e}4321"],
        None,
    )
    .await?;
    ensure!(code != 0, "{err}");
    assert_escaped("rollout id", &err, r#""r\u{202e}4321" not found"#)?;

    let (code, _, err) = run_cli(
        &[
            "plan",
            "--coordinator",
            &addr,
            "--to",
            "0001\u{2066}x\u{2069}",
        ],
        None,
    )
    .await?;
    ensure!(code != 0, "{err}");
    assert_escaped("goal", &err, r#""0001\u{2066}x\u{2069}""#)?;

    let (code, _, err) = run_cli(
        &["plan", "--coordinator", &addr, "-l", "tier=gold\u{202e}dlo"],
        None,
    )
    .await?;
    ensure!(code == 2, "{err}");
    assert_escaped("selector", &err, r#""tier=gold\u{202e}dlo""#)?;

    let (code, _, err) = run_cli(
        &[
            "stamp",
            "--coordinator",
            &addr,
            "--target",
            "esc\u{1b}[2J01",
            "--revision",
            "0001_tenants",
        ],
        None,
    )
    .await?;
    ensure!(code != 0, "{err}");
    assert_escaped("target id", &err, r#""esc\u{1b}[2J01" not found"#)?;

    // A file name and a revision id from a migration file (offline).
    let dir = migrations(&[(
        "0001_\u{202e}lqs.txt.sql",
        "-- revision: a\u{202e}b\n-- migrate:up\nSELECT 1;\n",
    )])?;
    let (code, out, err) = run_cli(
        &["--migrations", &dir.path().display().to_string(), "check"],
        None,
    )
    .await?;
    ensure!(code != 0, "{out}{err}");
    // `check` reports its findings on stdout.
    let err = format!("{out}{err}");
    assert_escaped("file name", &err, r"0001_\u{202e}lqs.txt.sql")?;
    assert_escaped("revision id", &err, r#""a\u{202e}b""#)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_whose_coordinator_died_says_so_and_keeps_serving() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let listen = format!("127.0.0.1:{}", free_port());
    let mut coordinator = Proc::spawn(
        &flotilla_bin(),
        &[
            s("--migrations"),
            repo_migrations().display().to_string(),
            s("coordinator"),
            s("--listen"),
            listen.clone(),
            s("--state-dir"),
            dir.path().join("state").display().to_string(),
            s("--registration-ttl"),
            s("3s"),
            s("--id"),
            s("text-coordinator"),
        ],
        &[("FLOTILLA_LOG", s("info"))],
        dir.path(),
        "coordinator",
        None,
    )?;
    wait_for_log(&coordinator, "took the fleet lock").await?;
    let agent_port = free_port();
    let agent = Proc::spawn(
        &agent_bin()?,
        &[
            s("--agent-id"),
            s("text-agent"),
            s("--listen"),
            format!("127.0.0.1:{agent_port}"),
            s("--target"),
            format!("t1={}", sqlite_url(dir.path(), "t1")),
            s("--coordinator"),
            format!("http://{listen}"),
        ],
        &[("FLOTILLA_LOG", s("info"))],
        dir.path(),
        "agent",
        None,
    )?;
    wait_for_log(&agent, "registered with the coordinator").await?;

    coordinator.kill().await?;
    let line = eventually("the agent to notice", Duration::from_secs(30), || {
        let log = agent.log_text();
        async move {
            Ok(log
                .lines()
                .find(|l| l.contains("did not answer the heartbeat"))
                .map(str::to_owned))
        }
    })
    .await
    .with_context(|| agent.log_text())?;
    ensure!(line.contains("keeps serving its targets"), "{line}");
    // It goes on trying to register (and says so), and it still serves.
    let again = eventually("a failed registration", Duration::from_secs(30), || {
        let log = agent.log_text();
        async move {
            Ok(log
                .lines()
                .find(|l| l.contains("cannot register with the coordinator"))
                .map(str::to_owned))
        }
    })
    .await
    .with_context(|| agent.log_text())?;
    ensure!(
        again.contains("keeps serving its targets") && again.contains("tries again in"),
        "{again}"
    );
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{agent_port}"))?
            .connect()
            .await?;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let r = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await?
        .into_inner();
    ensure!(
        r.status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
        "{r:?}"
    );
    let log = agent.stop().await?;
    let before_stop = log.split("SIGTERM received").next().unwrap_or_default();
    ensure!(
        !before_stop.contains("shutting down"),
        "the agent claimed to shut down while its coordinator was gone:\n{before_stop}"
    );
    Ok(())
}

async fn wait_for_log(p: &Proc, text: &str) -> Result<()> {
    eventually(
        &format!("{text:?} in the log"),
        Duration::from_secs(30),
        || {
            let log = p.log_text();
            async move { Ok(log.contains(text).then_some(())) }
        },
    )
    .await
    .with_context(|| p.log_text())
}
