//! MariaDb: start, databases, restart, drop.

use flotilla_testkit::{MariaDb, eventually_true};
use sqlx::{Connection, MySqlConnection};

use crate::{SOON, accepts, process_alive};

async fn select_one(url: &str) -> anyhow::Result<i64> {
    let mut conn = MySqlConnection::connect(url).await?;
    let (n,): (i64,) = sqlx::query_as("SELECT 1").fetch_one(&mut conn).await?;
    Ok(n)
}

#[tokio::test]
async fn fresh_databases_are_separate_and_usable() -> anyhow::Result<()> {
    let my = MariaDb::start().await?;
    assert!(my.server_url().ends_with(&format!(":{}", my.port())));
    let a = my.fresh_database().await?;
    let b = my.fresh_database().await?;
    assert_ne!(a, b);
    let mut conn_a = MySqlConnection::connect(&a).await?;
    sqlx::query("CREATE TABLE only_in_a (id int)")
        .execute(&mut conn_a)
        .await?;
    let mut conn_b = MySqlConnection::connect(&b).await?;
    let (count,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = 'only_in_a' AND table_schema = DATABASE()",
    )
    .fetch_one(&mut conn_b)
    .await?;
    assert_eq!(count, 0);
    let named = my.create_database("named_db").await?;
    assert!(named.ends_with("/named_db"));
    assert_eq!(select_one(&named).await?, 1);
    assert!(my.create_database("bad name; drop").await.is_err());
    Ok(())
}

#[tokio::test]
async fn restart_keeps_port_and_data() -> anyhow::Result<()> {
    let my = MariaDb::start().await?;
    let url = my.fresh_database().await?;
    let mut old = MySqlConnection::connect(&url).await?;
    sqlx::query("CREATE TABLE kept (id int)")
        .execute(&mut old)
        .await?;
    let pid = my.pid();
    my.restart().await?;
    assert_ne!(my.pid(), pid);
    assert!(sqlx::query("SELECT 1").execute(&mut old).await.is_err());
    let mut new = MySqlConnection::connect(&url).await?;
    sqlx::query("SELECT * FROM kept").execute(&mut new).await?;
    Ok(())
}

#[tokio::test]
async fn drop_stops_the_server() -> anyhow::Result<()> {
    let my = MariaDb::start().await?;
    let (port, pid) = (my.port(), my.pid());
    assert!(accepts(port).await);
    drop(my);
    assert!(
        !process_alive(pid),
        "mariadb pid {pid} still alive after drop"
    );
    eventually_true("mariadb port to close", SOON, || async move {
        Ok(!accepts(port).await)
    })
    .await
}

#[tokio::test]
async fn root_can_create_users_that_connect_over_tcp() -> anyhow::Result<()> {
    let my = MariaDb::start().await?;
    let db = my.fresh_database().await?;
    let name = db.rsplit('/').next().unwrap_or_default().to_owned();
    let mut root = MySqlConnection::connect(&my.server_url()).await?;
    sqlx::query("CREATE USER 'app'@'%' IDENTIFIED BY 'secret'")
        .execute(&mut root)
        .await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "GRANT ALL ON `{name}`.* TO 'app'@'%'"
    )))
    .execute(&mut root)
    .await?;
    let app_url = format!("mysql://app:secret@127.0.0.1:{}/{name}", my.port());
    assert_eq!(select_one(&app_url).await?, 1);
    let wrong = format!("mysql://app:wrong@127.0.0.1:{}/{name}", my.port());
    assert!(MySqlConnection::connect(&wrong).await.is_err());
    Ok(())
}
