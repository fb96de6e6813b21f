//! `flotilla-agent`: parses flags, sets up logging and serves the agent.

fn main() {}
