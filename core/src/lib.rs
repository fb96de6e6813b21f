//! Flotilla's shared vocabulary: dialects, step directions, revision ids and checksums,
//! history rows and target state, the schema catalog and its fingerprint, the SQL statement
//! splitter, other tools' version tables, backup records, the classes of transient errors,
//! the size limits of a step and how input is shown in messages (`text`).
//!
//! **Architecture invariant:** this crate has no I/O policy. It depends on no async
//! runtime, no database driver and no gRPC stack (`cargo tree -p flotilla-core`), so both
//! sides of the wire and the pure planner can share it.

pub mod backup;
pub mod bounds;
pub mod catalog;
pub mod error_class;
pub mod fencing;
pub mod foreign;
pub mod history;
pub mod limits;
pub mod project;
pub mod split;
pub mod text;
pub mod types;

pub use types::{
    Dialect, Direction, Secret, UnknownDialect, checksum, is_valid_revision_id, step_checksum,
};
