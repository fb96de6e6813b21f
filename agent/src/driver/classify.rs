//! Error classification: sqlx errors become [`DriverError::Transient`] (worth a retry, with a
//! class) or [`DriverError::Permanent`], with the database's own message and code
//! (PostgreSQL's DETAIL and HINT lines too) and never the connection URL.
//!
//! The class follows the error's cause, not only its sqlx kind: a connection that closes or
//! resets at any phase of connecting (TCP, PostgreSQL's SSL request, the TLS handshake, the
//! startup and authentication exchange) or later is a server going away (a restart, a
//! failover, a pod moving), and is retried on every dialect.
//!
//! | sqlx error | cause (example) | class |
//! |---|---|---|
//! | `Io` (refused, reset, aborted, broken pipe, EOF, ...) | server down or restarting, connection closed during startup or auth, MySQL's handshake cut | transient `connection` |
//! | `Io` (`InvalidData`) whose source is a `rustls::Error` | certificate or TLS protocol refused in the handshake | permanent (`tls error`) |
//! | `Protocol("unexpected response from SSLRequest: 0x00")` | PostgreSQL closed the connection before answering the SSL request (sqlx read no byte) | transient `connection` |
//! | `Protocol` (anything else) | a peer that does not speak the protocol | permanent |
//! | `Tls` whose source chain holds a connection-kind `io::Error` | connection closed or reset during TLS negotiation | transient `connection` |
//! | `Tls` (anything else) | server without TLS when it is required, bad certificate | permanent (`tls error`) |
//! | `PoolTimedOut`, `PoolClosed` | no connection available now | transient `connection` |
//! | `Database` | by code: [`postgres_class`], [`mysql_class`], [`sqlite_class`] | transient class or permanent |
//! | `Configuration` | bad options (may quote the URL: only its kind is kept) | permanent |
//! | anything else | | permanent |

use std::error::Error as StdError;
use std::io;

use sqlx::error::DatabaseError;
use sqlx::mysql::MySqlDatabaseError;
use sqlx::postgres::PgDatabaseError;

use crate::driver::{DriverError, ErrorClass};
use flotilla_core::Dialect;

/// What sqlx reports when PostgreSQL closed the connection instead of answering the SSL
/// request: it read no byte, so the "response" is the zero its buffer started with. sqlx
/// appends where it raised the error (` (sqlx_postgres::connection::tls:95)`).
const SSL_REQUEST_CLOSED: &str = "unexpected response from SSLRequest: 0x00";

/// Classify `err` from a `dialect` connection; `context` says what was being done
/// ("apply 0003_users up") and prefixes the message.
pub(crate) fn classify(dialect: Dialect, context: &str, err: sqlx::Error) -> DriverError {
    let (class, detail) = match &err {
        sqlx::Error::Database(db) => classify_database(dialect, db.as_ref()),
        sqlx::Error::Io(e) if is_tls_refusal(e) => (None, format!("tls error: {e}")),
        sqlx::Error::Io(e) => (
            Some(ErrorClass::Connection),
            format!("connection error: {e}"),
        ),
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => {
            (Some(ErrorClass::Connection), err.to_string())
        }
        sqlx::Error::Protocol(message) if message.starts_with(SSL_REQUEST_CLOSED) => (
            Some(ErrorClass::Connection),
            "connection closed by the server during the ssl request".to_owned(),
        ),
        // A configuration error may quote parts of the URL: keep only its kind.
        sqlx::Error::Configuration(_) => (None, "invalid connection options".to_owned()),
        sqlx::Error::Tls(e) => match connection_io_cause(e.as_ref()) {
            Some(io) => (
                Some(ErrorClass::Connection),
                format!("connection error during tls negotiation: {io}"),
            ),
            None => (None, format!("tls error: {e}")),
        },
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

/// Whether an I/O error is rustls refusing the peer (a certificate or protocol error), which
/// a retry cannot fix; rustls reports those as `InvalidData` wrapping its own error.
fn is_tls_refusal(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::InvalidData
        && e.get_ref()
            .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some())
}

/// The first `io::Error` of a connection kind in `err`'s source chain (itself included).
fn connection_io_cause<'e>(err: &'e (dyn StdError + 'static)) -> Option<&'e io::Error> {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<io::Error>()
            && is_connection_kind(io.kind())
        {
            return Some(io);
        }
        cur = e.source();
    }
    None
}

/// I/O error kinds that mean the connection went away or could not be made.
fn is_connection_kind(kind: io::ErrorKind) -> bool {
    use io::ErrorKind::*;
    matches!(
        kind,
        ConnectionRefused
            | ConnectionReset
            | ConnectionAborted
            | NotConnected
            | BrokenPipe
            | UnexpectedEof
            | TimedOut
            | Interrupted
    )
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

    /// Each row of the module's table, in order.
    fn check(err: sqlx::Error) -> (Option<ErrorClass>, String) {
        let d = classify(Dialect::Postgres, "connect", err);
        (d.class(), d.to_string())
    }

    fn io(kind: io::ErrorKind) -> sqlx::Error {
        sqlx::Error::Io(io::Error::new(kind, "test"))
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

    #[test]
    fn connection_closed_or_reset_during_startup_or_auth_is_transient_on_every_dialect() {
        for dialect in [Dialect::Postgres, Dialect::Mysql, Dialect::Sqlite] {
            for kind in [
                io::ErrorKind::ConnectionReset,
                io::ErrorKind::UnexpectedEof,
                io::ErrorKind::BrokenPipe,
                io::ErrorKind::ConnectionAborted,
            ] {
                let d = classify(dialect, "connect", io(kind));
                assert_eq!(
                    d.class(),
                    Some(ErrorClass::Connection),
                    "{dialect:?} {kind:?}"
                );
            }
        }
    }

    #[test]
    fn tls_certificate_refused_in_the_handshake_is_permanent() {
        let rustls_err = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let e = sqlx::Error::Io(io::Error::new(io::ErrorKind::InvalidData, rustls_err));
        let (class, message) = check(e);
        assert_eq!(class, None, "{message}");
        assert!(message.starts_with("connect: tls error: "), "{message}");
    }

    #[test]
    fn invalid_data_without_a_tls_cause_stays_transient() {
        assert_eq!(
            check(io(io::ErrorKind::InvalidData)).0,
            Some(ErrorClass::Connection)
        );
    }

    #[test]
    fn ssl_request_closed_by_the_server_is_transient_on_every_dialect() {
        for dialect in [Dialect::Postgres, Dialect::Mysql, Dialect::Sqlite] {
            let e = sqlx::Error::Protocol(format!(
                "{SSL_REQUEST_CLOSED} (sqlx_postgres::connection::tls:95)"
            ));
            let d = classify(dialect, "connect to postgres", e);
            assert_eq!(d.class(), Some(ErrorClass::Connection), "{dialect:?}");
            assert_eq!(
                d.to_string(),
                "transient connection error: connect to postgres: connection closed by the \
                 server during the ssl request"
            );
        }
    }

    #[test]
    fn other_protocol_errors_are_permanent() {
        for message in [
            "unexpected response from SSLRequest: 0x48 (sqlx_postgres::connection::tls:95)",
            "expected SASLFinal but received Ok (sqlx_postgres::connection::sasl:164)",
        ] {
            let (class, text) = check(sqlx::Error::Protocol(message.to_owned()));
            assert_eq!(class, None, "{message}");
            assert!(text.ends_with(message), "{text}");
        }
    }

    #[test]
    fn tls_error_caused_by_a_reset_connection_is_transient() {
        let reset = io::Error::new(io::ErrorKind::ConnectionReset, "reset by peer");
        let (class, message) = check(sqlx::Error::Tls(Box::new(reset)));
        assert_eq!(class, Some(ErrorClass::Connection), "{message}");
        assert!(message.contains("during tls negotiation"), "{message}");
    }

    #[test]
    fn tls_error_with_a_reset_deeper_in_its_chain_is_transient() {
        #[derive(Debug, thiserror::Error)]
        #[error("handshake failed")]
        struct Handshake(#[source] io::Error);
        let wrapped = Handshake(io::Error::new(io::ErrorKind::UnexpectedEof, "eof"));
        let (class, _) = check(sqlx::Error::Tls(Box::new(wrapped)));
        assert_eq!(class, Some(ErrorClass::Connection));
    }

    #[test]
    fn other_tls_errors_are_permanent() {
        let (class, message) = check(sqlx::Error::Tls("server does not support TLS".into()));
        assert_eq!(class, None);
        assert_eq!(message, "connect: tls error: server does not support TLS");
    }

    #[test]
    fn pool_timeouts_are_transient() {
        assert_eq!(
            check(sqlx::Error::PoolTimedOut).0,
            Some(ErrorClass::Connection)
        );
        assert_eq!(
            check(sqlx::Error::PoolClosed).0,
            Some(ErrorClass::Connection)
        );
    }

    #[test]
    fn configuration_errors_are_permanent_and_do_not_quote_the_options() {
        let e = sqlx::Error::Configuration("bad url postgres://u:secret@h/db".into());
        let (class, message) = check(e);
        assert_eq!(class, None);
        assert_eq!(message, "connect: invalid connection options");
    }
}
