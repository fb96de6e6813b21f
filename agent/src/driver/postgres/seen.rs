//! Which schemas of a pool's database were last seen with a project's Flotilla tables (its
//! history and fence tables): a Status read of such schemas reads the tables straight away
//! instead of first asking the catalog which of them exist (`batch.rs`).
//!
//! It is a hint, never a state: a schema is remembered when a read found both tables or a
//! session committed with them (`session.rs`, on close), and forgotten as soon as a read of
//! the tables fails. What a Status reports always comes from the tables themselves; the hint
//! only decides whether one catalog query comes first. A schema whose tables were dropped by
//! hand costs one failed statement (logged by the server as an error), then is read the
//! ordinary way and forgotten. Each discovery rescan keeps only the schemas it still lists.

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

    /// Keep only `schemas` (what discovery lists now): the hint holds no more schemas than
    /// the pool's source has, however many came and went.
    pub(crate) fn keep_only(&self, schemas: &[String]) {
        let now: HashSet<&str> = schemas.iter().map(String::as_str).collect();
        for set in self.lock().values_mut() {
            set.retain(|s| now.contains(s.as_str()));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_hint_is_per_project_and_keeps_only_what_discovery_still_lists() {
        let seen = TablesSeen::default();
        let (default, billing) = (Project::default(), Project::parse("billing").unwrap());
        for s in ["t1", "t2", "t3"] {
            seen.remember(&default, s);
        }
        assert!(seen.all(&default, &names(&["t1", "t2", "t3"])));
        assert!(
            !seen.all(&billing, &names(&["t1"])),
            "another project's tables"
        );
        seen.forget(&default, &names(&["t2"]));
        assert!(!seen.all(&default, &names(&["t1", "t2"])));
        // t3 was dropped: a rescan lists t1 and a new t4.
        seen.keep_only(&names(&["t1", "t4"]));
        assert!(seen.all(&default, &names(&["t1"])));
        assert!(!seen.all(&default, &names(&["t3"])));
        assert_eq!(seen.lock().values().map(HashSet::len).sum::<usize>(), 1);
    }
}
