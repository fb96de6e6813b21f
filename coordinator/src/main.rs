//! `flotilla`: the coordinator server and CLI.

fn main() {}
