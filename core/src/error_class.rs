//! The classes of transient database errors: what a retry is worth trying for, as retry
//! events, metrics and the coordinator's view report them.

use std::fmt;

/// Classes of transient errors: retried with backoff, reported on retry events and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// Connection refused, reset, closed, or the server is shutting down / starting up.
    Connection,
    /// Serialization failure (PostgreSQL 40001).
    Serialization,
    /// Deadlock detected (PostgreSQL 40P01, MySQL 1213).
    Deadlock,
    /// Lock wait timeout (PostgreSQL 55P03, MySQL 1205).
    LockTimeout,
    /// SQLITE_BUSY / SQLITE_LOCKED.
    Busy,
}

impl ErrorClass {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Connection => "connection",
            ErrorClass::Serialization => "serialization",
            ErrorClass::Deadlock => "deadlock",
            ErrorClass::LockTimeout => "lock_timeout",
            ErrorClass::Busy => "busy",
        }
    }
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
