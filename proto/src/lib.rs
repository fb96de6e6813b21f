//! Flotilla's gRPC contract (`flotilla.v1`): the generated messages and services, no logic.

#![allow(unreachable_pub, clippy::all, clippy::pedantic, missing_docs)]

/// `flotilla.v1`: agent and coordinator services and their messages.
pub mod v1 {
    tonic::include_proto!("flotilla.v1");
}

/// Encoded `FileDescriptorSet` of every Flotilla proto, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("flotilla_descriptor");

pub use v1::*;
