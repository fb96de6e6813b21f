//! Integration tests of the test kit against real servers.

mod etcd;
mod eventually;
mod mariadb;
mod postgres;
mod proxy;
mod proxy_delay;
mod sqlite;

use std::time::Duration;

/// Deadline for conditions that should hold almost at once.
const SOON: Duration = Duration::from_secs(10);

/// Whether something accepts TCP connections on 127.0.0.1:`port`.
async fn accepts(port: u16) -> bool {
    tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_ok()
}

/// Whether a process with this pid exists (a zombie counts as gone).
fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the field after the parenthesized command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}
