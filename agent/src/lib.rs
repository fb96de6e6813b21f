//! Flotilla agent library: configuration, target discovery, database drivers and the gRPC service.

pub mod catalog;
pub mod driver;
pub mod history;
pub mod types;

pub use types::{Dialect, Direction, Secret, checksum, is_valid_revision_id};
