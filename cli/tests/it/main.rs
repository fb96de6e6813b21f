//! System integration tests: the `flotilla` binary, coordinator and agents together, real servers via testkit.

mod adopt;
mod backups;
mod busy;
mod blips;
mod cli_online;
mod dashboards;
mod destructive;
mod drift;
mod fence;
mod foreign;
mod etcd_blip;
mod ha;
mod harness;
mod lock;
mod metrics_truth;
mod observability;
mod outcomes;
mod reflection;
mod registry;
mod revision_apply;
mod revision_cli;
mod rollout;
mod span_status;
mod selection;
mod store;
mod tls;
