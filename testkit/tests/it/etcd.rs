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
