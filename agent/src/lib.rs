//! Flotilla agent library: configuration, target discovery, database drivers and the gRPC service.

pub mod agent;
pub mod backup;
pub mod catalog;
pub mod config;
pub mod driver;
pub mod error;
mod executor;
mod fence;
pub mod foreign;
pub mod history;
pub mod register;
pub mod service;
mod target;
pub mod telemetry;
pub mod tls;
pub mod types;

pub use agent::{Agent, EventStream};
pub use config::{AgentConfig, TargetConfig};
pub use error::{AgentError, Reason};
pub use service::{AgentGrpc, ServeError, serve};
pub use types::{Dialect, Direction, Secret, checksum, is_valid_revision_id};
