//! Agent integration tests: one test binary, one module per area.

mod busy;
mod discovery;
mod drivers;
mod fault;
mod grpc;
mod guard;
mod hostile;
mod hostile_prop;
mod lock_bounds;
mod locking;
mod migrate;
mod projects;
mod schemas;
mod support;
mod tls;
mod validate;
