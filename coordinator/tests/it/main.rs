//! Coordinator integration tests: one binary, one module per area, real servers via testkit.

mod adopt;
mod backups;
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
mod revision_lint;
mod revision_parse;
mod revision_plan;
mod revision_prop;
mod rollout;
mod store;
mod tls;
