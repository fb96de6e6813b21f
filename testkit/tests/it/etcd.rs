//! Etcd: put/get, pause/resume, stop/restart, drop.

use std::time::Duration;

use flotilla_testkit::{Etcd, eventually_true};

use crate::{SOON, accepts, process_alive};

#[tokio::test]
async fn put_get_and_restart_keeps_data() -> anyhow::Result<()> {
    let etcd = Etcd::start().await?;
    assert_eq!(etcd.endpoint(), format!("http://127.0.0.1:{}", etcd.port()));
    let mut client = etcd.client().await?;
    client.put("k", "v1", None).await?;
    let got = client.get("k", None).await?;
    assert_eq!(got.kvs()[0].value(), b"v1");

    let pid = etcd.pid();
    etcd.restart().await?;
    assert_ne!(etcd.pid(), pid);
    let mut client = etcd.client().await?;
    let got = client.get("k", None).await?;
    assert_eq!(got.kvs()[0].value(), b"v1");
    Ok(())
}

#[tokio::test]
async fn pause_blocks_requests_until_resume() -> anyhow::Result<()> {
    let etcd = Etcd::start().await?;
    let mut client = etcd.client().await?;
    client.put("k", "before", None).await?;
    etcd.pause()?;
    let paused = tokio::time::timeout(Duration::from_millis(500), client.get("k", None)).await;
    assert!(
        paused.is_err() || paused.is_ok_and(|r| r.is_err()),
        "paused etcd answered"
    );
    etcd.resume()?;
    let got = client.get("k", None).await?;
    assert_eq!(got.kvs()[0].value(), b"before");
    Ok(())
}

#[tokio::test]
async fn stop_kills_and_restart_revives() -> anyhow::Result<()> {
    let etcd = Etcd::start().await?;
    let (port, pid) = (etcd.port(), etcd.pid());
    etcd.stop();
    assert!(!process_alive(pid));
    assert!(!accepts(port).await);
    assert!(etcd.pause().is_err(), "pausing a stopped etcd must fail");
    etcd.restart().await?;
    etcd.client().await?.put("k", "v", None).await?;
    Ok(())
}

#[tokio::test]
async fn drop_stops_the_server_even_when_paused() -> anyhow::Result<()> {
    let etcd = Etcd::start().await?;
    let (port, pid) = (etcd.port(), etcd.pid());
    etcd.pause()?;
    drop(etcd);
    assert!(!process_alive(pid), "etcd pid {pid} still alive after drop");
    eventually_true("etcd port to close", SOON, || async move {
        Ok(!accepts(port).await)
    })
    .await
}

const ABORT_CHILD: &str = "FLOTILLA_TESTKIT_ABORT_CHILD";

/// Runs itself as a child test binary that starts etcd and aborts (no destructors run), then
/// checks that the parent-death signal took etcd down with it.
#[tokio::test]
async fn server_dies_when_the_test_binary_aborts() -> anyhow::Result<()> {
    if std::env::var_os(ABORT_CHILD).is_some() {
        let etcd = Etcd::start().await?;
        println!("ETCD_PID={}", etcd.pid());
        std::process::abort();
    }
    let output = tokio::process::Command::new(std::env::current_exe()?)
        .args([
            "--exact",
            "etcd::server_dies_when_the_test_binary_aborts",
            "--nocapture",
        ])
        .env(ABORT_CHILD, "1")
        .output()
        .await?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let pid: u32 = stdout
        .lines()
        .find_map(|line| line.strip_prefix("ETCD_PID="))
        .ok_or_else(|| {
            anyhow::anyhow!(
                "child printed no pid: {stdout}\n{}",
                String::from_utf8_lossy(&output.stderr)
            )
        })?
        .trim()
        .parse()?;
    assert!(
        !output.status.success(),
        "the child test binary did not abort"
    );
    eventually_true("etcd to die with its test binary", SOON, || async move {
        Ok(!process_alive(pid))
    })
    .await
}
