//! The migration sets the engine plans with: the default set (the coordinator's
//! `--migrations`, optional), a cache digest -> graph filled from the state store on a miss,
//! the upload of a set (validated, then stored through the fenced write path) and the
//! garbage collection of sets nothing refers to (`crate::sets` is the store layout).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use flotilla_revision::{Bundle, Graph};

use super::{Engine, EngineError, Term};
use crate::rollout::now_ms;
use crate::sets::{self, SetStoreError};

/// Graphs kept in memory besides the default one; a running rollout holds its own.
const CACHED_GRAPHS: usize = 16;

/// A set the coordinator was started with (`--migrations`).
#[derive(Clone)]
pub struct DefaultSet {
    pub digest: String,
    pub graph: Arc<Graph>,
    /// The set's canonical encoding, stored when this coordinator leads.
    encoded: Arc<Vec<u8>>,
}

impl DefaultSet {
    /// The default set: the coordinator's `--migrations` directory, validated like an
    /// upload. Its graph is read from the directory itself, so messages name the files by
    /// their paths there (an uploaded set's name them relative to the set).
    pub fn load(dir: &std::path::Path) -> Result<DefaultSet, DefaultSetError> {
        let bundle = Bundle::load_dir(dir)?;
        bundle
            .check()
            .map_err(|e| DefaultSetError::Invalid(invalid(e)))?;
        let graph = Graph::load_dir(dir)?;
        let encoded = bundle.encode();
        Ok(DefaultSet {
            digest: Bundle::digest_of(&encoded),
            graph: Arc::new(graph),
            encoded: Arc::new(encoded),
        })
    }
}

/// Why the coordinator's own `--migrations` cannot be its default set.
#[derive(Debug, thiserror::Error)]
pub enum DefaultSetError {
    #[error(transparent)]
    Load(#[from] flotilla_revision::ParseErrors),
    /// Every error of the set, file:line.
    #[error(transparent)]
    Invalid(EngineError),
}

/// Sets in memory.
#[derive(Default)]
pub(crate) struct SetCache {
    pub(crate) default: Option<DefaultSet>,
    graphs: Mutex<HashMap<String, Arc<Graph>>>,
    /// The set most recently planned with: what fleet gauges and operator calls without a
    /// set of their own compare targets with.
    latest: Mutex<Option<Arc<Graph>>>,
}

impl SetCache {
    pub(crate) fn new(default: Option<DefaultSet>) -> SetCache {
        SetCache {
            latest: Mutex::new(default.as_ref().map(|d| d.graph.clone())),
            default,
            graphs: Mutex::default(),
        }
    }

    fn get(&self, digest: &str) -> Option<Arc<Graph>> {
        if let Some(d) = &self.default
            && d.digest == digest
        {
            return Some(d.graph.clone());
        }
        let graphs = self.graphs.lock().unwrap_or_else(|p| p.into_inner());
        graphs.get(digest).cloned()
    }

    fn insert(&self, digest: &str, graph: Arc<Graph>) {
        let mut graphs = self.graphs.lock().unwrap_or_else(|p| p.into_inner());
        if graphs.len() >= CACHED_GRAPHS {
            graphs.clear();
        }
        graphs.insert(digest.to_owned(), graph);
    }
}

/// `bundle.check()` (parse, lint, checksum) on a blocking thread: a big set takes seconds
/// (about 3.5 s of a 50 MB seed), which on a runtime thread would hold every request and task
/// scheduled there, the lock's lease keep-alive included; on a coordinator with one CPU that
/// is the whole runtime.
pub(crate) async fn check_off_runtime(
    bundle: Bundle,
) -> Result<Result<Graph, Vec<flotilla_revision::Diagnostic>>, EngineError> {
    tokio::task::spawn_blocking(move || bundle.check())
        .await
        .map_err(EngineError::SetCheck)
}

/// A set refused at upload: every error, file:line first.
fn invalid(errors: Vec<flotilla_revision::Diagnostic>) -> EngineError {
    const SHOWN: usize = 20;
    let mut lines: Vec<String> = errors.iter().take(SHOWN).map(ToString::to_string).collect();
    if errors.len() > SHOWN {
        lines.push(format!("(and {} more)", errors.len() - SHOWN));
    }
    EngineError::SetInvalid(format!(
        "the migration set is invalid, nothing was stored; fix it (`flotilla check`) and retry:\n{}",
        lines.join("\n")
    ))
}

fn set_store_error(e: SetStoreError) -> EngineError {
    match e {
        SetStoreError::Store(e) => e.into(),
        corrupt @ SetStoreError::Corrupt { .. } => EngineError::SetCorrupt(corrupt.to_string()),
    }
}

impl Engine {
    /// The set `digest` names (empty: the default set) and its graph: from memory, else
    /// from the state store.
    pub async fn graph_of(&self, digest: &str) -> Result<(String, Arc<Graph>), EngineError> {
        let digest = if digest.is_empty() {
            match &self.sets.default {
                Some(d) => d.digest.clone(),
                None => return Err(EngineError::NoSet),
            }
        } else if sets::is_digest(digest) {
            digest.to_owned()
        } else {
            return Err(EngineError::InvalidArgument(format!(
                "set digest {digest:?} is not 64 lowercase hex characters"
            )));
        };
        let graph = match self.sets.get(&digest) {
            Some(g) => g,
            None => {
                let (_, encoded) = sets::read(self.store.as_ref(), &digest)
                    .await
                    .map_err(set_store_error)?
                    .ok_or_else(|| EngineError::SetUnknown(digest.clone()))?;
                let bundle = Bundle::decode(&encoded)
                    .map_err(|e| EngineError::SetCorrupt(format!("stored set {digest}: {e}")))?;
                let graph = Arc::new(check_off_runtime(bundle).await?.map_err(|errors| {
                    EngineError::SetCorrupt(format!(
                        "stored set {digest} no longer validates ({} errors); upload it again",
                        errors.len()
                    ))
                })?);
                self.sets.insert(&digest, graph.clone());
                graph
            }
        };
        *self.sets.latest.lock().unwrap_or_else(|p| p.into_inner()) = Some(graph.clone());
        Ok((digest, graph))
    }

    /// The set most recently planned with (else the default set, else an empty one): for
    /// calls that name no set (fleet gauges, stamp, adopt).
    pub fn graph(&self) -> Arc<Graph> {
        let latest = self.sets.latest.lock().unwrap_or_else(|p| p.into_inner());
        latest.clone().unwrap_or_default()
    }

    /// The default set's digest, if the coordinator has one.
    pub fn default_set(&self) -> Option<&str> {
        self.sets.default.as_ref().map(|d| d.digest.as_str())
    }

    /// Whether the state store holds set `digest`.
    pub async fn has_set(&self, digest: &str) -> Result<bool, EngineError> {
        if !sets::is_digest(digest) {
            return Ok(false);
        }
        Ok(sets::manifest(self.store.as_ref(), digest)
            .await
            .map_err(set_store_error)?
            .is_some())
    }

    /// Validate and store an uploaded set (leader only). `claimed` is the digest the client
    /// computed; it must match the bytes. Returns the digest, the number of revisions and
    /// whether the set was new to the store.
    pub async fn upload_set(
        &self,
        claimed: &str,
        encoded: Vec<u8>,
    ) -> Result<(String, u32, bool), EngineError> {
        let term = self.term().ok_or(EngineError::NotLeader)?;
        let digest = Bundle::digest_of(&encoded);
        if !claimed.is_empty() && claimed != digest {
            return Err(EngineError::InvalidArgument(format!(
                "the uploaded set hashes to {digest}, not {claimed}: it changed or was cut during the upload; retry"
            )));
        }
        let bundle =
            Bundle::decode(&encoded).map_err(|e| EngineError::InvalidArgument(e.to_string()))?;
        let graph = check_off_runtime(bundle).await?.map_err(invalid)?;
        let revisions = graph.len() as u32;
        let stored = self.store_set(&term, &digest, &encoded, revisions).await?;
        self.sets.insert(&digest, Arc::new(graph));
        if stored && let Err(e) = self.gc_sets(&term).await {
            tracing::warn!("cannot garbage-collect migration sets: {e}");
        }
        Ok((digest, revisions, stored))
    }

    /// Write a set unless the store holds it; true when written.
    async fn store_set(
        &self,
        term: &Term,
        digest: &str,
        encoded: &[u8],
        revisions: u32,
    ) -> Result<bool, EngineError> {
        if self.has_set(digest).await? {
            return Ok(false);
        }
        for ops in sets::store_writes(digest, encoded, revisions, now_ms()) {
            self.write(term, ops).await?;
        }
        tracing::info!(
            set = %digest,
            revisions,
            bytes = encoded.len(),
            "stored a migration set"
        );
        Ok(true)
    }

    /// On taking the lock: store the default set (so standbys and later leaders have it).
    pub(super) async fn register_default_set(&self, term: &Term) -> Result<(), EngineError> {
        if let Some(d) = self.sets.default.clone() {
            self.store_set(term, &d.digest, &d.encoded, d.graph.len() as u32)
                .await?;
        }
        Ok(())
    }

    /// Remove the sets no rollout record of any project names (nor a project's default
    /// set), except the `keep_sets` newest of them. Sets are shared by every project (keyed
    /// by digest), so this runs on the leading (`default`) engine, which knows its siblings.
    pub(super) async fn gc_sets(&self, term: &Term) -> Result<(), EngineError> {
        let mut referenced: HashSet<String> = HashSet::new();
        for (key, value) in self.store.list("rollouts/").await? {
            match serde_json::from_slice::<crate::rollout::RolloutRecord>(&value) {
                Ok(r) => {
                    referenced.insert(r.spec.set_digest);
                }
                // An unreadable record may name any set: collect nothing this time.
                Err(e) => {
                    tracing::warn!("not collecting migration sets: unreadable {key}: {e}");
                    return Ok(());
                }
            }
        }
        for engine in std::iter::once(self).chain(self.siblings().iter().map(AsRef::as_ref)) {
            if let Some(d) = &engine.sets.default {
                referenced.insert(d.digest.clone());
            }
        }
        let all = sets::manifests(self.store.as_ref()).await?;
        for m in sets::gc_victims(all, &referenced, self.config.keep_sets) {
            for ops in sets::delete_writes(&m) {
                self.write(term, ops).await?;
            }
            tracing::info!(set = %m.digest, "removed a migration set no rollout refers to");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(seed_rows: usize) -> Bundle {
        let mut seed = String::from("-- migrate:up\n");
        for i in 0..seed_rows {
            seed.push_str(&format!(
                "INSERT INTO t (id, name) VALUES ({i}, 'row {i}');\n"
            ));
        }
        seed.push_str("-- migrate:down\nDELETE FROM t;\n");
        Bundle::from_files(vec![
            (
                "0001_t.sql".into(),
                b"-- revision: 0001_t\n-- migrate:up\nCREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT);\n-- migrate:down\nDROP TABLE t;\n".to_vec(),
            ),
            (
                "0002_seed.sql".into(),
                format!("-- revision: 0002_seed\n-- revises: 0001_t\n{seed}").into_bytes(),
            ),
        ])
    }

    /// On a one-thread runtime the validation of a set must leave the thread free: the
    /// first poll of the check returns at once (work on a blocking thread), so another
    /// branch that is ready runs first. Checked inline, that first poll would run the whole
    /// validation and finish first.
    #[tokio::test(flavor = "current_thread")]
    async fn a_set_is_validated_off_the_runtime_thread() {
        let bundle = set(20_000);
        let expected = bundle.check().expect("a valid set");
        let check = check_off_runtime(bundle);
        tokio::pin!(check);
        let first = tokio::select! {
            biased;
            _ = &mut check => "check",
            () = std::future::ready(()) => "other",
        };
        assert_eq!(first, "other", "the check held the runtime thread");
        let graph = check.await.expect("no panic").expect("valid");
        assert_eq!(graph.len(), expected.len());
        assert_eq!(graph.digest(), expected.digest());

        let invalid = Bundle::from_files(vec![(
            "0001_bad.sql".into(),
            b"-- revision: 0001_bad\n-- revises: 9999_missing\n-- migrate:up\nSELECT 1;\n-- migrate:down\nSELECT 1;\n".to_vec(),
        )]);
        let errors = check_off_runtime(invalid)
            .await
            .expect("no panic")
            .expect_err("a parent that does not exist");
        assert!(!errors.is_empty());
    }
}
