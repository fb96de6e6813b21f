//! Agent integration tests: one test binary, one module per area.

mod drivers;
mod support;
mod migrate;
mod grpc;
mod locking;
mod validate;
mod fault;
mod discovery;
