//! Flotilla coordinator library: revision graph and planner, fleet lock, rollout engine, API and CLI.

pub mod cli;
pub mod revision;

pub mod backend;
pub mod lock;
pub mod store;
