//! Migration sets in the state store, keyed by digest ([`flotilla_revision::Bundle`]): the
//! layout, the fenced writes that store a set, reading one back, and which sets garbage
//! collection removes (pure).
//!
//! Layout: `sets/manifest/<digest>` (JSON [`SetManifest`]) and
//! `sets/chunks/<digest>/<nnnnnn>`, the set's canonical encoding cut into [`CHUNK_BYTES`]
//! pieces. etcd refuses values and transactions over 1.5 MiB by default, so each chunk is its
//! own fenced write and the manifest is written last: a set without its manifest does not
//! exist for readers, and a half-written one is written again (same keys, same bytes) by the
//! next upload. Reading checks the SHA-256 of the chunks against the digest.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::store::{StateStore, StoreError, WriteOp};

/// Bytes of one chunk of a stored set: a third of etcd's default request limit (1.5 MiB).
pub const CHUNK_BYTES: usize = 512 * 1024;
/// The largest set the coordinator accepts (its encoding): 256 MiB.
pub const MAX_SET_BYTES: usize = 256 << 20;
/// How many sets no rollout refers to are kept, newest first (`--keep-sets`); sets a
/// rollout record names and the coordinator's default set are always kept.
pub const DEFAULT_KEEP_SETS: usize = 10;
/// Deletes per fenced write when a set is removed (etcd allows 128 operations per txn).
const DELETES_PER_WRITE: usize = 64;

const MANIFEST_PREFIX: &str = "sets/manifest/";

/// What the store knows about one set; written after its chunks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetManifest {
    pub digest: String,
    /// Length of the encoding.
    pub bytes: u64,
    pub chunks: u32,
    pub revisions: u32,
    pub stored_at_ms: i64,
}

/// Why a stored set cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum SetStoreError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("stored set {digest}: {what}; upload the set again")]
    Corrupt { digest: String, what: String },
}

pub fn manifest_key(digest: &str) -> String {
    format!("{MANIFEST_PREFIX}{digest}")
}

pub fn chunk_key(digest: &str, i: u32) -> String {
    format!("sets/chunks/{digest}/{i:06}")
}

/// A digest as the store keys it: 64 lowercase hex characters.
pub fn is_digest(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The fenced writes that store `encoded` under `digest`, in order: one per chunk, then the
/// manifest.
pub fn store_writes(
    digest: &str,
    encoded: &[u8],
    revisions: u32,
    now_ms: i64,
) -> Vec<Vec<WriteOp>> {
    let mut writes: Vec<Vec<WriteOp>> = encoded
        .chunks(CHUNK_BYTES)
        .enumerate()
        .map(|(i, c)| {
            vec![WriteOp::Put {
                key: chunk_key(digest, i as u32),
                value: c.to_vec(),
            }]
        })
        .collect();
    let manifest = SetManifest {
        digest: digest.to_owned(),
        bytes: encoded.len() as u64,
        chunks: writes.len() as u32,
        revisions,
        stored_at_ms: now_ms,
    };
    writes.push(vec![WriteOp::Put {
        key: manifest_key(digest),
        value: serde_json::to_vec(&manifest).unwrap_or_default(),
    }]);
    writes
}

/// The fenced writes that remove a set: the manifest first (readers stop seeing it), then
/// its chunks in batches.
pub fn delete_writes(m: &SetManifest) -> Vec<Vec<WriteOp>> {
    let mut writes = vec![vec![WriteOp::Delete {
        key: manifest_key(&m.digest),
    }]];
    let keys: Vec<String> = (0..m.chunks).map(|i| chunk_key(&m.digest, i)).collect();
    for batch in keys.chunks(DELETES_PER_WRITE) {
        writes.push(
            batch
                .iter()
                .map(|k| WriteOp::Delete { key: k.clone() })
                .collect(),
        );
    }
    writes
}

/// The manifest of `digest`, if the set is stored.
pub async fn manifest(
    store: &dyn StateStore,
    digest: &str,
) -> Result<Option<SetManifest>, SetStoreError> {
    let Some(raw) = store.get(&manifest_key(digest)).await? else {
        return Ok(None);
    };
    serde_json::from_slice(&raw)
        .map(Some)
        .map_err(|e| SetStoreError::Corrupt {
            digest: digest.to_owned(),
            what: format!("unreadable manifest ({e})"),
        })
}

/// Every stored set's manifest (unreadable ones are skipped with a warning).
pub async fn manifests(store: &dyn StateStore) -> Result<Vec<SetManifest>, StoreError> {
    let mut out = Vec::new();
    for (key, value) in store.list(MANIFEST_PREFIX).await? {
        match serde_json::from_slice::<SetManifest>(&value) {
            Ok(m) => out.push(m),
            Err(e) => tracing::warn!("skipping unreadable set manifest {key}: {e}"),
        }
    }
    Ok(out)
}

/// The encoding of a stored set, its chunks joined and checked against the digest; `None`
/// when the set is not stored.
pub async fn read(
    store: &dyn StateStore,
    digest: &str,
) -> Result<Option<(SetManifest, Vec<u8>)>, SetStoreError> {
    let Some(m) = manifest(store, digest).await? else {
        return Ok(None);
    };
    let corrupt = |what: String| SetStoreError::Corrupt {
        digest: digest.to_owned(),
        what,
    };
    let mut encoded = Vec::with_capacity(m.bytes as usize);
    for i in 0..m.chunks {
        let chunk = store
            .get(&chunk_key(digest, i))
            .await?
            .ok_or_else(|| corrupt(format!("chunk {i} of {} is missing", m.chunks)))?;
        encoded.extend_from_slice(&chunk);
    }
    if encoded.len() as u64 != m.bytes {
        return Err(corrupt(format!(
            "{} bytes stored, the manifest says {}",
            encoded.len(),
            m.bytes
        )));
    }
    let actual = flotilla_revision::Bundle::digest_of(&encoded);
    if actual != digest {
        return Err(corrupt(format!("its bytes hash to {actual}")));
    }
    Ok(Some((m, encoded)))
}

/// The sets garbage collection removes: every set not in `referenced`, except the `keep`
/// newest of them (by the time they were stored, then digest).
pub fn gc_victims(
    mut manifests: Vec<SetManifest>,
    referenced: &HashSet<String>,
    keep: usize,
) -> Vec<SetManifest> {
    manifests.retain(|m| !referenced.contains(&m.digest));
    manifests.sort_by(|a, b| {
        b.stored_at_ms
            .cmp(&a.stored_at_ms)
            .then(a.digest.cmp(&b.digest))
    });
    manifests.into_iter().skip(keep).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(digest: &str, at: i64) -> SetManifest {
        SetManifest {
            digest: digest.into(),
            bytes: 0,
            chunks: 0,
            revisions: 0,
            stored_at_ms: at,
        }
    }

    #[test]
    fn gc_keeps_referenced_sets_and_the_newest_others() {
        let all = vec![m("a", 1), m("b", 2), m("c", 3), m("d", 4), m("e", 5)];
        let referenced: HashSet<String> = ["a".to_owned()].into();
        let victims: Vec<String> = gc_victims(all, &referenced, 2)
            .into_iter()
            .map(|m| m.digest)
            .collect();
        assert_eq!(victims, vec!["c", "b"]);
    }

    #[test]
    fn a_set_is_written_in_chunks_under_the_etcd_limit_with_its_manifest_last() {
        let encoded = vec![7u8; CHUNK_BYTES * 2 + 10];
        let writes = store_writes("d", &encoded, 3, 42);
        assert_eq!(writes.len(), 4);
        for w in &writes[..3] {
            let [WriteOp::Put { key, value }] = w.as_slice() else {
                panic!("one put per chunk: {w:?}");
            };
            assert!(key.starts_with("sets/chunks/d/"), "{key}");
            assert!(value.len() <= CHUNK_BYTES);
        }
        let [WriteOp::Put { key, value }] = writes[3].as_slice() else {
            panic!("the manifest: {:?}", writes[3]);
        };
        assert_eq!(key, "sets/manifest/d");
        let manifest: SetManifest = serde_json::from_slice(value).unwrap();
        assert_eq!((manifest.chunks, manifest.bytes), (3, encoded.len() as u64));
        let deletes = delete_writes(&manifest);
        assert_eq!(deletes[0], vec![WriteOp::Delete { key: key.clone() }]);
        assert_eq!(deletes.iter().map(Vec::len).sum::<usize>(), 4);
    }
}
