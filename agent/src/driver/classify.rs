//! Error classification: sqlx errors become [`DriverError::Transient`] (worth a retry, with a
//! class) or [`DriverError::Permanent`], with the database's own message and code
//! (PostgreSQL's DETAIL and HINT lines too) and never the connection URL.

use sqlx::error::DatabaseError;
use sqlx::mysql::MySqlDatabaseError;
use sqlx::postgres::PgDatabaseError;

use crate::driver::{DriverError, ErrorClass};
use flotilla_core::Dialect;

/// Classify `err` from a `dialect` connection; `context` says what was being done
/// ("apply 0003_users up") and prefixes the message.
pub(crate) fn classify(dialect: Dialect, context: &str, err: sqlx::Error) -> DriverError {
    let (class, detail) = match &err {
        sqlx::Error::Database(db) => classify_database(dialect, db.as_ref()),
        sqlx::Error::Io(e) => (
            Some(ErrorClass::Connection),
            format!("connection error: {e}"),
        ),
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => {
            (Some(ErrorClass::Connection), err.to_string())
        }
        // A configuration error may quote parts of the URL: keep only its kind.
        sqlx::Error::Configuration(_) => (None, "invalid connection options".to_owned()),
        sqlx::Error::Tls(e) => (None, format!("tls error: {e}")),
        other => (None, other.to_string()),
    };
    let message = if context.is_empty() {
        detail
    } else {
        format!("{context}: {detail}")
    };
    match class {
        Some(class) => DriverError::Transient { class, message },
        None => DriverError::Permanent { message },
    }
}

/// A classifier closure for `map_err`.
pub(crate) fn on(dialect: Dialect, context: &str) -> impl FnOnce(sqlx::Error) -> DriverError + '_ {
    move |e| classify(dialect, context, e)
}

fn classify_database(dialect: Dialect, db: &dyn DatabaseError) -> (Option<ErrorClass>, String) {
    let message = db.message().trim().to_owned();
    match dialect {
        Dialect::Postgres => {
            let pg = db.try_downcast_ref::<PgDatabaseError>();
            let code = match pg {
                Some(pg) => pg.code().to_owned(),
                None => db.code().map(|c| c.into_owned()).unwrap_or_default(),
            };
            // The DETAIL and HINT lines say what the message alone does not (which key is
            // duplicated, which row violates the constraint): keep them, as psql shows them.
            let mut text = format!("{message} (sqlstate {code})");
            if let Some(detail) = pg.and_then(|pg| pg.detail()) {
                text.push_str(&format!("; detail: {}", detail.trim()));
            }
            if let Some(hint) = pg.and_then(|pg| pg.hint()) {
                text.push_str(&format!("; hint: {}", hint.trim()));
            }
            (postgres_class(&code), text)
        }
        Dialect::Mysql => match db.try_downcast_ref::<MySqlDatabaseError>() {
            Some(my) => {
                let number = my.number();
                let state = my.code().unwrap_or("HY000");
                (
                    mysql_class(number),
                    format!("{message} (error {number}, sqlstate {state})"),
                )
            }
            None => (None, message),
        },
        Dialect::Sqlite => {
            let code = db.code().and_then(|c| c.parse::<i32>().ok()).unwrap_or(0);
            (
                sqlite_class(code),
                format!("{message} (sqlite code {code})"),
            )
        }
    }
}

/// Every class a `dialect`'s errors can be retried for: what the classifiers below return,
/// plus the connection errors (I/O, pool) every dialect can meet and the driver-made ones
/// (a lost connection, SQLite's busy timeout). The retry counter is created at 0 for each.
pub(crate) fn transient_classes(dialect: Dialect) -> &'static [ErrorClass] {
    match dialect {
        Dialect::Postgres => &[
            ErrorClass::Connection,
            ErrorClass::Serialization,
            ErrorClass::Deadlock,
            ErrorClass::LockTimeout,
        ],
        Dialect::Mysql => &[
            ErrorClass::Connection,
            ErrorClass::Deadlock,
            ErrorClass::LockTimeout,
        ],
        Dialect::Sqlite => &[ErrorClass::Connection, ErrorClass::Busy],
    }
}

/// PostgreSQL SQLSTATE → transient class.
pub(crate) fn postgres_class(sqlstate: &str) -> Option<ErrorClass> {
    match sqlstate {
        s if s.starts_with("08") => Some(ErrorClass::Connection),
        // admin/crash shutdown, cannot connect now, too many connections
        "57P01" | "57P02" | "57P03" | "53300" => Some(ErrorClass::Connection),
        "40001" => Some(ErrorClass::Serialization),
        "40P01" => Some(ErrorClass::Deadlock),
        "55P03" => Some(ErrorClass::LockTimeout),
        _ => None,
    }
}

/// MySQL/MariaDB error number → transient class.
pub(crate) fn mysql_class(number: u16) -> Option<ErrorClass> {
    match number {
        1213 => Some(ErrorClass::Deadlock),
        1205 => Some(ErrorClass::LockTimeout),
        // server gone / lost connection / too many connections / shutdown / killed
        2006 | 2013 | 1040 | 1053 | 1927 => Some(ErrorClass::Connection),
        _ => None,
    }
}

/// SQLite (extended) result code → transient class: SQLITE_BUSY (5) and SQLITE_LOCKED (6)
/// with all their extended codes.
pub(crate) fn sqlite_class(code: i32) -> Option<ErrorClass> {
    match code & 0xff {
        5 | 6 => Some(ErrorClass::Busy),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_to_classes() {
        assert_eq!(postgres_class("08006"), Some(ErrorClass::Connection));
        assert_eq!(postgres_class("57P01"), Some(ErrorClass::Connection));
        assert_eq!(postgres_class("40001"), Some(ErrorClass::Serialization));
        assert_eq!(postgres_class("40P01"), Some(ErrorClass::Deadlock));
        assert_eq!(postgres_class("55P03"), Some(ErrorClass::LockTimeout));
        assert_eq!(postgres_class("42601"), None);
        assert_eq!(mysql_class(1213), Some(ErrorClass::Deadlock));
        assert_eq!(mysql_class(1205), Some(ErrorClass::LockTimeout));
        assert_eq!(mysql_class(2013), Some(ErrorClass::Connection));
        assert_eq!(mysql_class(1064), None);
        assert_eq!(sqlite_class(5), Some(ErrorClass::Busy));
        assert_eq!(sqlite_class(517), Some(ErrorClass::Busy)); // SQLITE_BUSY_SNAPSHOT
        assert_eq!(sqlite_class(262), Some(ErrorClass::Busy)); // SQLITE_LOCKED_SHAREDCACHE
        assert_eq!(sqlite_class(1), None);
    }

    #[test]
    fn every_class_a_classifier_returns_is_listed_for_its_dialect() {
        let listed =
            |d: Dialect, c: Option<ErrorClass>| c.is_none_or(|c| transient_classes(d).contains(&c));
        for code in [
            "08006", "57P01", "57P02", "57P03", "53300", "40001", "40P01", "55P03",
        ] {
            assert!(listed(Dialect::Postgres, postgres_class(code)), "{code}");
        }
        for number in [1213, 1205, 2006, 2013, 1040, 1053, 1927] {
            assert!(listed(Dialect::Mysql, mysql_class(number)), "{number}");
        }
        for code in [5, 6, 261, 262, 517] {
            assert!(listed(Dialect::Sqlite, sqlite_class(code)), "{code}");
        }
        for d in Dialect::ALL {
            assert!(
                transient_classes(d).contains(&ErrorClass::Connection),
                "{d:?}"
            );
        }
    }

    #[test]
    fn io_errors_are_transient_connection_errors() {
        let e = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let d = classify(Dialect::Postgres, "connect", sqlx::Error::Io(e));
        assert_eq!(d.class(), Some(ErrorClass::Connection));
        assert!(
            d.to_string()
                .starts_with("transient connection error: connect: ")
        );
    }
}
