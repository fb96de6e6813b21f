//! Flotilla coordinator library: revision graph and planner, fleet lock, rollout engine, API and CLI.

pub mod adopt;
pub mod api;
pub mod backend;
pub mod cli;
pub mod demo;
pub mod drift;
pub mod engine;
pub mod fleet;
pub mod import;
pub mod lock;
pub mod metrics;
pub mod registry;
pub mod revision;
pub mod rollout;
pub mod server;
pub mod store;
pub mod telemetry;
