//! System integration tests: the `flotilla` binary, coordinator and agents together, real servers via testkit.

mod adopt;
mod backups;
mod blips;
mod busy;
mod cli_online;
mod dashboards;
mod destructive;
mod drift;
mod etcd_blip;
mod fence;
mod foreign;
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
mod selection;
mod span_status;
mod store;
mod tls;
