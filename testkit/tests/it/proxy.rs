//! FaultProxy in front of a real Postgres: forward, cut, refuse, count, drop.

use std::net::SocketAddr;

use flotilla_testkit::{FaultProxy, Postgres, eventually_true};
use sqlx::{Connection, PgConnection};

use crate::{SOON, accepts};

async fn query_ok(conn: &mut PgConnection) -> anyhow::Result<()> {
    sqlx::query("SELECT 1").execute(conn).await?;
    Ok(())
}

#[tokio::test]
async fn cut_refuse_and_recover() -> anyhow::Result<()> {
    let pg = Postgres::start().await?;
    let db = pg.fresh_database().await?;
    let upstream: SocketAddr = ([127, 0, 0, 1], pg.port()).into();
    let proxy = FaultProxy::start(upstream).await?;
    assert_eq!(proxy.addr().port(), proxy.port());
    assert_eq!(proxy.upstream(), upstream);
    let name = db.rsplit('/').next().unwrap_or_default();
    let via_proxy = format!("postgres://postgres@127.0.0.1:{}/{name}", proxy.port());

    let mut conn = PgConnection::connect(&via_proxy).await?;
    query_ok(&mut conn).await?;
    assert_eq!(proxy.connections_accepted(), 1);

    proxy.cut_all();
    assert!(
        query_ok(&mut conn).await.is_err(),
        "query on a cut connection succeeded"
    );

    let mut after_cut = PgConnection::connect(&via_proxy).await?;
    query_ok(&mut after_cut).await?;
    assert_eq!(proxy.connections_accepted(), 2);

    proxy.set_refusing(true);
    assert!(
        PgConnection::connect(&via_proxy).await.is_err(),
        "refusing proxy let a connection through"
    );
    assert_eq!(proxy.connections_accepted(), 3);
    // Refusing affects new connections only.
    query_ok(&mut after_cut).await?;

    proxy.set_refusing(false);
    let mut again = PgConnection::connect(&via_proxy).await?;
    query_ok(&mut again).await?;
    Ok(())
}

#[tokio::test]
async fn unreachable_upstream_closes_the_client() -> anyhow::Result<()> {
    // A port nothing listens on.
    let upstream: SocketAddr = ([127, 0, 0, 1], flotilla_testkit::free_port()).into();
    let proxy = FaultProxy::start(upstream).await?;
    let url = format!("postgres://postgres@127.0.0.1:{}/postgres", proxy.port());
    assert!(PgConnection::connect(&url).await.is_err());
    assert_eq!(proxy.connections_accepted(), 1);
    Ok(())
}

#[tokio::test]
async fn drop_closes_listener_and_connections() -> anyhow::Result<()> {
    let pg = Postgres::start().await?;
    let proxy = FaultProxy::start(([127, 0, 0, 1], pg.port()).into()).await?;
    let port = proxy.port();
    let mut conn =
        PgConnection::connect(&format!("postgres://postgres@127.0.0.1:{port}/postgres")).await?;
    query_ok(&mut conn).await?;
    drop(proxy);
    assert!(
        query_ok(&mut conn).await.is_err(),
        "connection survived the proxy"
    );
    eventually_true("proxy port to close", SOON, || async move {
        Ok(!accepts(port).await)
    })
    .await
}
