//! Template data dirs (initdb / install-db output), built once per machine and copied per server.
//!
//! Templates live in `$FLOTILLA_TESTKIT_CACHE`, else `$CARGO_TARGET_DIR/testkit-cache`, else
//! `<target dir of the test binary>/testkit-cache`, else `$TMPDIR/flotilla-testkit-cache`.
//! A template is built in a staging dir and renamed into place under a file lock, so a template
//! dir that exists is complete. Set `FLOTILLA_TESTKIT_NO_CACHE=1` to initialize every server
//! from scratch.

use std::future::Future;
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::process::{Spawn, log_tail, run_to_completion};

/// Fills `dest` (which does not exist yet) with a fresh data dir.
///
/// With the cache enabled, `init` runs once per machine and `key` (which should change with the
/// server binary and its init options), into a staging dir; afterwards `dest` is a copy.
pub(crate) async fn materialize<F, Fut>(
    kind: &str,
    key: &str,
    dest: &Path,
    init: F,
) -> anyhow::Result<()>
where
    F: FnOnce(PathBuf) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    if std::env::var_os("FLOTILLA_TESTKIT_NO_CACHE").is_some_and(|v| v != "0" && !v.is_empty()) {
        return init(dest.to_path_buf()).await;
    }
    let root = cache_root();
    let template = root.join(format!("{kind}-{key}"));
    if !template.is_dir() {
        build_template(kind, &root, &template, init).await?;
    }
    copy_dir(&template, dest).await
}

async fn build_template<F, Fut>(
    kind: &str,
    root: &Path,
    template: &Path,
    init: F,
) -> anyhow::Result<()>
where
    F: FnOnce(PathBuf) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    std::fs::create_dir_all(root)
        .with_context(|| format!("cannot create testkit cache dir {}", root.display()))?;
    let lock_path = root.join(format!("{kind}.lock"));
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("cannot open {}", lock_path.display()))?;
    // Held until the end of this function; other processes building the same kind wait here.
    let lock = tokio::task::spawn_blocking(move || lock.lock().map(|()| lock))
        .await
        .context("cache lock task failed")?
        .with_context(|| format!("cannot lock {}", lock_path.display()))?;
    if template.is_dir() {
        return Ok(()); // built by another process while we waited
    }
    let staging = tempfile::Builder::new()
        .prefix(&format!(".staging-{kind}-"))
        .tempdir_in(root)
        .with_context(|| format!("cannot create a staging dir in {}", root.display()))?;
    let data = staging.path().join("data");
    init(data.clone()).await?;
    std::fs::rename(&data, template)
        .with_context(|| format!("cannot move {} to {}", data.display(), template.display()))?;
    drop(lock);
    Ok(())
}

/// Copies a data dir preserving ownership and modes (`cp -a`, reflinks where supported).
pub(crate) async fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    let log = to.with_extension("cp.log");
    let spawn = Spawn {
        program: PathBuf::from("cp"),
        args: vec![
            "-a".into(),
            "--reflink=auto".into(),
            from.display().to_string(),
            to.display().to_string(),
        ],
        user: None,
        log: log.clone(),
    };
    let result = run_to_completion("copying a template data dir", &spawn).await;
    if result.is_ok() {
        let _ = std::fs::remove_file(&log);
    }
    result.with_context(|| log_tail(&log, 10))
}

fn cache_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("FLOTILLA_TESTKIT_CACHE") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(dir).join("testkit-cache");
    }
    // Test binaries live in <target>/<profile>/deps/; the target dir holds CACHEDIR.TAG.
    let from_exe = std::env::current_exe().ok().and_then(|exe| {
        exe.ancestors()
            .find(|dir| dir.join("CACHEDIR.TAG").is_file())
            .map(|target| target.join("testkit-cache"))
    });
    from_exe.unwrap_or_else(|| std::env::temp_dir().join("flotilla-testkit-cache"))
}
