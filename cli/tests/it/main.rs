//! System integration tests: the `flotilla` binary, coordinator and agents together, real servers via testkit.

mod adopt;
mod backups;
mod big_revision;
mod cli_online;
mod dashboards;
mod destructive;
mod drift;
mod ha;
mod harness;
mod lock;
mod observability;
mod outcomes;
mod reflection;
mod registry;
mod revision_apply;
mod revision_cli;
mod rollout;
mod store;
mod tls;
