//! Per-server temp dirs: in RAM where possible, removed on drop, and swept when a run was killed.
//!
//! Dirs are created in `$FLOTILLA_TESTKIT_TMPDIR`, else `/dev/shm` (tmpfs: copying a data dir
//! there takes tens of milliseconds instead of a second on a busy disk), else the system temp
//! dir. Each holds a `testkit.pid` file naming the test process; the first server started by a
//! process removes dirs whose process is gone (left behind by a test binary that was killed).

use std::path::{Path, PathBuf};
use std::sync::Once;

use anyhow::Context;
use tempfile::TempDir;

const PREFIX: &str = "flotilla-testkit-";
const PID_FILE: &str = "testkit.pid";

/// Creates a fresh temp dir for one server of `kind` (`postgres`, `mariadb`, `etcd`, ...).
pub(crate) fn server_dir(kind: &str) -> anyhow::Result<TempDir> {
    let base = base_dir();
    static SWEEP: Once = Once::new();
    SWEEP.call_once(|| sweep_stale(&base));
    let dir = tempfile::Builder::new()
        .prefix(&format!("{PREFIX}{kind}-"))
        .tempdir_in(&base)
        .with_context(|| format!("cannot create a temp dir for {kind} in {}", base.display()))?;
    std::fs::write(dir.path().join(PID_FILE), std::process::id().to_string())
        .with_context(|| format!("cannot write {PID_FILE} in {}", dir.path().display()))?;
    Ok(dir)
}

fn base_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("FLOTILLA_TESTKIT_TMPDIR") {
        return PathBuf::from(dir);
    }
    let shm = Path::new("/dev/shm");
    let writable = std::fs::metadata(shm).is_ok_and(|m| m.is_dir() && !m.permissions().readonly());
    if writable {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

/// Removes testkit dirs in `base` whose owning process no longer exists.
fn sweep_stale(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let is_ours = entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(PREFIX));
        if !is_ours {
            continue;
        }
        let path = entry.path();
        let owner = std::fs::read_to_string(path.join(PID_FILE))
            .ok()
            .and_then(|pid| pid.trim().parse::<u32>().ok());
        // A dir without a readable pid file may still be being created: leave it.
        if let Some(pid) = owner
            && !Path::new(&format!("/proc/{pid}")).exists()
        {
            tracing::debug!("removing stale testkit dir {}", path.display());
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}
