//! Fresh SQLite database files in temp dirs.

use anyhow::Context;
use tempfile::TempDir;

/// Creates a temp dir for a SQLite database and returns it with the database URL.
///
/// The URL is `sqlite://<dir>/test.db?mode=rwc`: the file is created on first connect. Keep the
/// [`TempDir`] alive as long as the database is used; dropping it deletes the file.
pub fn sqlite_database() -> anyhow::Result<(TempDir, String)> {
    let dir = tempfile::Builder::new()
        .prefix("flotilla-sqlite-")
        .tempdir()
        .context("cannot create a temp dir for sqlite")?;
    let path = dir.path().join("test.db");
    let url = format!("sqlite://{}?mode=rwc", path.display());
    Ok((dir, url))
}
