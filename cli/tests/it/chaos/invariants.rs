//! The invariants a round is held to, read from the databases themselves (not from what
//! the agent or the coordinator report): each revision's ledger row written exactly once,
//! one `applied` history row per revision, no dirty row.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use sqlx::{Connection, MySqlConnection, PgConnection};

use super::fleet::REVISIONS;

/// What the databases showed after a round.
#[derive(Debug, Default, Clone)]
pub(super) struct Findings {
    /// Ledger rows or `applied` history rows of one revision beyond the first.
    pub(super) double: u32,
    /// Revisions recorded as applied whose ledger row is missing, or (for a rollout that
    /// reported success) revisions neither applied nor written.
    pub(super) lost: u32,
    /// History rows left `dirty`.
    pub(super) dirty: u32,
    /// What each finding is, for the failure message.
    pub(super) notes: Vec<String>,
}

/// Count per key of `(key, count)` rows; an absent table reads as no rows.
type Counts = BTreeMap<String, i64>;

async fn counts(url: &str, sql: &'static str) -> Result<Counts> {
    let rows: Result<Vec<(String, i64)>, sqlx::Error> = if url.starts_with("postgres") {
        let mut c = PgConnection::connect(url).await?;
        let rows = sqlx::query_as(sql).fetch_all(&mut c).await;
        c.close().await.ok();
        rows
    } else {
        let mut c = MySqlConnection::connect(url).await?;
        let rows = sqlx::query_as(sql).fetch_all(&mut c).await;
        c.close().await.ok();
        rows
    };
    match rows {
        Ok(rows) => Ok(rows.into_iter().collect()),
        Err(sqlx::Error::Database(e))
            if e.code().as_deref() == Some("42P01") || e.code().as_deref() == Some("42S02") =>
        {
            Ok(Counts::new())
        }
        Err(e) => Err(e).with_context(|| format!("reading {sql}")),
    }
}

/// Check every `(target id, url)`; `completed`: the rollout reported success, so every
/// revision must be there.
pub(super) async fn check(targets: &[(String, String)], completed: bool) -> Result<Findings> {
    let mut f = Findings::default();
    for (id, url) in targets {
        let ledger = counts(url, "SELECT rev, COUNT(*) FROM ledger GROUP BY rev").await?;
        let applied = counts(
            url,
            "SELECT revision, COUNT(*) FROM flotilla_history WHERE status = 'applied' \
             GROUP BY revision",
        )
        .await?;
        let dirty = counts(
            url,
            "SELECT revision, COUNT(*) FROM flotilla_history WHERE status = 'dirty' \
             GROUP BY revision",
        )
        .await?;
        for (rev, n) in &dirty {
            f.dirty += *n as u32;
            f.notes.push(format!("{id}: {rev} dirty"));
        }
        for n in 1..=REVISIONS {
            let rev = format!("{n:04}");
            let in_history = applied.get(&rev).copied().unwrap_or(0);
            let rows = ledger.get(&rev).copied().unwrap_or(0);
            if in_history > 1 {
                f.double += (in_history - 1) as u32;
                f.notes
                    .push(format!("{id}: {rev} has {in_history} applied rows"));
            }
            if n == 1 {
                continue; // 0001 creates the ledger and writes no row
            }
            if rows > 1 {
                f.double += (rows - 1) as u32;
                f.notes
                    .push(format!("{id}: {rev} wrote {rows} ledger rows"));
            }
            if rows == 0 && (in_history > 0 || completed) {
                f.lost += 1;
                f.notes.push(format!(
                    "{id}: {rev} has no ledger row ({in_history} applied history rows)"
                ));
            }
        }
    }
    Ok(f)
}
