//! Flotilla agent library: configuration, target discovery, database drivers, the executor
//! and the gRPC service.

pub mod agent;
pub mod config;
pub mod driver;
pub mod error;
mod executor;
mod fence;
pub mod metrics;
pub mod register;
pub mod service;
mod status;
mod target;

pub use agent::{Agent, EventStream};
pub use config::{AgentConfig, TargetConfig};
pub use error::{AgentError, Reason};
pub use service::{AgentGrpc, ServeError, serve};
