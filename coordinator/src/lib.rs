//! Flotilla coordinator library: revision graph and planner, fleet lock, rollout engine, API and CLI.

pub mod cli;
pub mod revision;
pub mod backend;
pub mod lock;
pub mod store;
pub mod api;
pub mod engine;
pub mod fleet;
pub mod metrics;
pub mod registry;
pub mod rollout;
pub mod server;
pub mod telemetry;
pub mod demo;
