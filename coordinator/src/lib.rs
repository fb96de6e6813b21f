//! Flotilla coordinator library: the fenced fleet lock and state store (etcd or embedded),
//! the rollout engine, the fleet view, the gRPC API and the server.

pub mod adopt;
pub mod api;
pub mod backend;
pub mod drift;
mod embedded;
pub mod engine;
mod etcd;
mod fence;
pub mod fleet;
pub mod lock;
pub mod metrics;
pub mod prometheus;
pub mod registry;
pub mod rollout;
pub mod server;
pub mod sets;
pub mod store;
pub mod telemetry;
