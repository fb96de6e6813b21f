//! Postgres: start, databases, restart, drop.

use flotilla_testkit::{Postgres, eventually_true};
use sqlx::{Connection, PgConnection};

use crate::{SOON, accepts, process_alive};

async fn select_one(url: &str) -> anyhow::Result<i32> {
    let mut conn = PgConnection::connect(url).await?;
    let (n,): (i32,) = sqlx::query_as("SELECT 1").fetch_one(&mut conn).await?;
    Ok(n)
}

#[tokio::test]
async fn fresh_databases_are_separate_and_usable() -> anyhow::Result<()> {
    let pg = Postgres::start().await?;
    assert!(pg.server_url().ends_with(&format!(":{}", pg.port())));
    let a = pg.fresh_database().await?;
    let b = pg.fresh_database().await?;
    assert_ne!(a, b);
    let mut conn_a = PgConnection::connect(&a).await?;
    sqlx::query("CREATE TABLE only_in_a (id int)")
        .execute(&mut conn_a)
        .await?;
    let mut conn_b = PgConnection::connect(&b).await?;
    let (count,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = 'only_in_a'",
    )
    .fetch_one(&mut conn_b)
    .await?;
    assert_eq!(count, 0);
    let named = pg.create_database("named_db").await?;
    assert!(named.ends_with("/named_db"));
    assert_eq!(select_one(&named).await?, 1);
    assert!(pg.create_database("bad name; drop").await.is_err());
    Ok(())
}

#[tokio::test]
async fn restart_keeps_port_and_data() -> anyhow::Result<()> {
    let pg = Postgres::start().await?;
    let url = pg.fresh_database().await?;
    let mut old = PgConnection::connect(&url).await?;
    sqlx::query("CREATE TABLE kept (id int)")
        .execute(&mut old)
        .await?;
    let pid = pg.pid();
    pg.restart().await?;
    assert_ne!(pg.pid(), pid);
    assert!(sqlx::query("SELECT 1").execute(&mut old).await.is_err());
    let mut new = PgConnection::connect(&url).await?;
    sqlx::query("SELECT * FROM kept").execute(&mut new).await?;
    Ok(())
}

#[tokio::test]
async fn drop_stops_the_server() -> anyhow::Result<()> {
    let pg = Postgres::start().await?;
    let (port, pid) = (pg.port(), pg.pid());
    assert!(accepts(port).await);
    drop(pg);
    assert!(
        !process_alive(pid),
        "postgres pid {pid} still alive after drop"
    );
    eventually_true("postgres port to close", SOON, || async move {
        Ok(!accepts(port).await)
    })
    .await
}
