//! Coordinator integration tests: one binary, one module per area, real servers via testkit.

mod lock;
mod store;
