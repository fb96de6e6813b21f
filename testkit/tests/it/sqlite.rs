//! sqlite_database: a usable file that goes away with its guard.

use flotilla_testkit::sqlite_database;
use sqlx::{Connection, SqliteConnection};

#[tokio::test]
async fn creates_a_usable_database_removed_on_drop() -> anyhow::Result<()> {
    let (dir, url) = sqlite_database()?;
    let (other_dir, other_url) = sqlite_database()?;
    assert_ne!(url, other_url);
    let mut conn = SqliteConnection::connect(&url).await?;
    sqlx::query("CREATE TABLE t (id INTEGER)")
        .execute(&mut conn)
        .await?;
    conn.close().await?;
    let path = dir.path().to_path_buf();
    assert!(path.join("test.db").is_file());
    drop(dir);
    drop(other_dir);
    assert!(!path.exists());
    Ok(())
}
