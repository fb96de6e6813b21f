//! Dialect-independent pieces of the drivers: clock, token conversions, history row decoding
//! and the fence decision, so the three drivers agree on them.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::driver::{DriverError, StepMeta};
use flotilla_core::Direction;
use flotilla_core::Secret;
use flotilla_core::history::{HistoryRow, RowStatus};
use flotilla_core::project::Project;

/// How long a driver waits for a connection (TCP + handshake + authentication).
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long `close` spends releasing the migration lock before dropping the connection.
pub(crate) const CLOSE_UNLOCK_TIMEOUT: Duration = Duration::from_secs(2);

/// The columns of `flotilla_history` in the order [`history_row`] expects them.
pub(crate) const HISTORY_COLUMNS: &str = "id, revision, checksum, direction, status, applied_at, \
     duration_ms, rollout_id, agent_id, fencing_token";

/// The columns of [`HISTORY_COLUMNS`] a plan needs (the applied set, in order, and the dirty
/// revision): the first five.
pub(crate) const APPLIED_SET_COLUMNS: &str = "id, revision, checksum, direction, status";

/// Flotilla's SQL is written with the default project's table names (`flotilla_history`,
/// `flotilla_fence`); this is the same SQL on `project`'s tables (unchanged for `default`).
/// Project names are validated identifiers (`flotilla_core::project`), so nothing is quoted.
pub(crate) fn in_project(project: &Project, sql: &str) -> String {
    if project.is_default() {
        return sql.to_owned();
    }
    sql.replace("flotilla_history", &project.history_table())
        .replace("flotilla_fence", &project.fence_table())
}

/// Wall clock in unix milliseconds (0 if the clock is before 1970).
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Milliseconds of a duration, saturating.
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Tokens and durations are stored as signed BIGINT.
pub(crate) fn to_db(value: u64, what: &str) -> Result<i64, DriverError> {
    i64::try_from(value).map_err(|_| DriverError::Permanent {
        message: format!("{what} {value} does not fit in a signed 64-bit column"),
    })
}

/// Negative values read back from BIGINT columns are treated as 0 (they are never written).
pub(crate) fn from_db(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

/// The fence decision: a lower token than the stored one is refused, an equal one (same
/// coordinator term) or a higher one is accepted.
pub(crate) fn check_fence(offered: u64, stored: i64) -> Result<(), DriverError> {
    let current = from_db(stored);
    if offered < current {
        return Err(DriverError::StaleToken { offered, current });
    }
    Ok(())
}

/// The error for a missing fence row (the schema was not created, or the row was deleted).
pub(crate) fn missing_fence() -> DriverError {
    DriverError::Permanent {
        message: "flotilla_fence has no row with id 1: run ensure_schema on the target first"
            .into(),
    }
}

/// Raw values of one history row, as every dialect can read them.
pub(crate) struct RawHistoryRow {
    pub(crate) id: i64,
    pub(crate) revision: String,
    pub(crate) checksum: String,
    pub(crate) direction: String,
    pub(crate) status: String,
    pub(crate) applied_at: i64,
    pub(crate) duration_ms: i64,
    pub(crate) rollout_id: String,
    pub(crate) agent_id: String,
    pub(crate) fencing_token: i64,
}

/// Interpret a raw history row; unknown status or direction text is a permanent error.
pub(crate) fn history_row(raw: RawHistoryRow) -> Result<HistoryRow, DriverError> {
    let direction = match raw.direction.trim() {
        "up" => Direction::Up,
        "down" => Direction::Down,
        other => {
            return Err(DriverError::Permanent {
                message: format!(
                    "flotilla_history row {} has unknown direction {other:?}",
                    raw.id
                ),
            });
        }
    };
    let status = RowStatus::parse(raw.status.trim()).ok_or_else(|| DriverError::Permanent {
        message: format!(
            "flotilla_history row {} has unknown status {:?}",
            raw.id, raw.status
        ),
    })?;
    Ok(HistoryRow {
        id: raw.id,
        revision: raw.revision,
        checksum: raw.checksum.trim().to_owned(),
        direction,
        status,
        applied_at_ms: raw.applied_at,
        duration_ms: from_db(raw.duration_ms),
        rollout_id: raw.rollout_id,
        agent_id: raw.agent_id,
        fencing_token: from_db(raw.fencing_token),
    })
}

/// A history row about to be inserted (id 0 until the database assigns one).
pub(crate) fn new_row(
    revision: &str,
    checksum: &str,
    direction: Direction,
    status: RowStatus,
    duration_ms: u64,
    meta: &StepMeta,
) -> HistoryRow {
    HistoryRow {
        id: 0,
        revision: revision.to_owned(),
        checksum: checksum.to_owned(),
        direction,
        status,
        applied_at_ms: now_ms(),
        duration_ms,
        rollout_id: meta.rollout_id.clone(),
        agent_id: meta.agent_id.clone(),
        fencing_token: meta.fencing_token,
    }
}

/// Error for `repair` when there is nothing to repair.
pub(crate) fn no_dirty_row(revision: &str) -> DriverError {
    DriverError::Permanent {
        message: format!("revision {revision} has no dirty history row to repair"),
    }
}

/// The URL of database `db` on the server of `server_url`: same scheme, credentials, host
/// and query options, path replaced by the (percent-encoded) database name.
pub(crate) fn url_with_path(
    server_url: &Secret,
    db: &str,
    dialect: &str,
) -> Result<Secret, DriverError> {
    let mut url = url::Url::parse(server_url.expose()).map_err(|e| DriverError::Permanent {
        message: format!("invalid {dialect} server url: {e}"),
    })?;
    url.path_segments_mut()
        .map_err(|()| DriverError::Permanent {
            message: format!("invalid {dialect} server url: it cannot carry a database name"),
        })?
        .clear()
        .push(db);
    Ok(Secret::new(String::from(url)))
}

/// Collapse runs of whitespace to one space and trim: stable text for expressions.
pub(crate) fn squash_ws(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fence_accepts_equal_and_higher() {
        assert!(check_fence(5, 5).is_ok());
        assert!(check_fence(6, 5).is_ok());
        assert!(matches!(
            check_fence(4, 5),
            Err(DriverError::StaleToken {
                offered: 4,
                current: 5
            })
        ));
    }

    #[test]
    fn database_url_keeps_credentials_and_options() {
        let server = Secret::new("postgres://u:p%40ss@h:5433/postgres?sslmode=disable");
        let url = url_with_path(&server, "tenant/1", "postgres").map(|s| s.expose().to_owned());
        assert_eq!(
            url.ok().as_deref(),
            Some("postgres://u:p%40ss@h:5433/tenant%2F1?sslmode=disable")
        );
        let bare = Secret::new("mysql://root@127.0.0.1:3306");
        let url = url_with_path(&bare, "t1", "mysql").map(|s| s.expose().to_owned());
        assert_eq!(url.ok().as_deref(), Some("mysql://root@127.0.0.1:3306/t1"));
        let err = url_with_path(&Secret::new("not a url hunter2"), "t", "mysql").err();
        assert!(err.is_some_and(|e| !e.to_string().contains("hunter2")));
    }

    #[test]
    fn whitespace_is_squashed() {
        assert_eq!(squash_ws("  a\n\t b  c "), "a b c");
    }
}
