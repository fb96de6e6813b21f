//! `flotilla fence takeover --yes`: move a fleet to this coordinator's lock backend after a
//! change of backend (embedded to etcd, or an etcd cluster recreated from scratch), whose
//! fencing tokens the targets would otherwise refuse. The leader raises its backend's
//! fencing epoch above every epoch the targets accepted (see `flotilla_core::fencing`); from
//! then on every coordinator of any other backend is refused by every target.

use std::io::Write;

use clap::{Args, Subcommand};
use serde_json::json;

use flotilla_proto as pb;

use super::client::{ClientArgs, rpc};
use crate::error::CliError;
use crate::exit::EXIT_OK;
use crate::render::emit;

#[derive(Debug, Subcommand)]
pub enum FenceCommand {
    /// Make this coordinator's lock backend the one the fleet follows (stop the coordinators
    /// of the old backend first: they are refused by every target afterwards)
    Takeover(TakeoverArgs),
}

#[derive(Debug, Args)]
pub struct TakeoverArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Confirm: coordinators of every other lock backend become powerless over this fleet
    #[arg(long)]
    pub yes: bool,
}

pub(super) async fn run(
    cmd: FenceCommand,
    json: bool,
    out: &mut (dyn Write + Send),
) -> Result<u8, CliError> {
    let FenceCommand::Takeover(args) = cmd;
    if !args.yes {
        return Err(CliError::Refused(
            "fence takeover makes the coordinators of every other lock backend powerless over \
             this fleet: stop them first, then run it again with --yes"
                .into(),
        ));
    }
    let mut c = args.client.connect().await?;
    let resp = c
        .fence_takeover(pb::FenceTakeoverRequest { confirm: true })
        .await
        .map_err(rpc)?
        .into_inner();
    if json {
        emit(
            out,
            &json!({
                "changed": resp.changed,
                "highest_accepted": resp.highest_accepted,
                "previous_token": resp.previous_token,
                "token": resp.token,
                "epoch": resp.epoch,
                "targets": resp.targets,
            }),
        )?;
    } else if resp.changed {
        writeln!(
            out,
            "fence taken over: {} targets read, highest accepted token {}; the leader's token \
             is now {} (fencing epoch {}, was {})",
            resp.targets, resp.highest_accepted, resp.token, resp.epoch, resp.previous_token
        )
        .map_err(CliError::Output)?;
    } else {
        writeln!(
            out,
            "nothing to take over: the fleet already follows this lock backend ({} targets \
             read, highest accepted token {}, the leader's token {})",
            resp.targets, resp.highest_accepted, resp.token
        )
        .map_err(CliError::Output)?;
    }
    Ok(EXIT_OK)
}
