//! Which schemas of a pool's database were last seen with a project's Flotilla tables (its
//! history and fence tables): a Status read of such schemas reads the tables straight away
//! instead of first asking the catalog which of them exist (`batch.rs`).
//!
//! It is a hint, never a state: a schema is remembered when a read found both tables or a
//! session committed with them (`session.rs`, on close), and forgotten as soon as a read of
//! the tables fails. What a Status reports always comes from the tables themselves; the hint
//! only decides whether one catalog query comes first. A schema whose tables were dropped by
//! hand costs one failed statement (logged by the server as an error), then is read the
//! ordinary way and forgotten.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use flotilla_core::project::Project;

/// Per project (by its history table's name), the schemas seen with its tables.
#[derive(Debug, Default)]
pub(crate) struct TablesSeen {
    seen: Mutex<HashMap<String, HashSet<String>>>,
    /// Catalog lookups the Status reads of the pool's schemas ran (they were not all seen).
    lookups: AtomicUsize,
}

impl TablesSeen {
    /// `schema` has `project`'s history and fence tables.
    pub(crate) fn remember(&self, project: &Project, schema: &str) {
        self.lock()
            .entry(project.history_table())
            .or_default()
            .insert(schema.to_owned());
    }

    /// A read of `schemas`' tables failed: they may be gone.
    pub(crate) fn forget(&self, project: &Project, schemas: &[String]) {
        if let Some(set) = self.lock().get_mut(&project.history_table()) {
            for s in schemas {
                set.remove(s);
            }
        }
    }

    /// Whether every one of `schemas` was last seen with `project`'s tables.
    pub(crate) fn all(&self, project: &Project, schemas: &[String]) -> bool {
        self.lock()
            .get(&project.history_table())
            .is_some_and(|set| schemas.iter().all(|s| set.contains(s)))
    }

    /// A Status read looked its schemas' tables up in the catalog.
    pub(crate) fn looked_up(&self) {
        self.lookups.fetch_add(1, Ordering::Relaxed);
    }

    #[cfg(test)]
    pub(crate) fn lookups(&self) -> usize {
        self.lookups.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, HashSet<String>>> {
        // A panic while holding the lock leaves a set that is still a valid hint.
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }
}
