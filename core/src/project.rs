//! Projects: several applications share one coordinator and one agent fleet, each with its own
//! rollouts and its own history on every target. A project name is part of table names and
//! lock keys, so it is a short lowercase identifier; the empty name means [`DEFAULT_PROJECT`].
//!
//! Per target, project `default` keeps the tables every earlier version wrote
//! (`flotilla_history`, `flotilla_fence`), so a database migrated before projects existed is
//! read as project `default` without any change to it; another project `p` has its own pair
//! (`flotilla_history_p`, `flotilla_fence_p`). Everything named `flotilla_*` is kept out of
//! the schema catalog, so neither project's tables are drift to the other.

use std::fmt;

/// The project of every request that names none, and of everything written before projects.
pub const DEFAULT_PROJECT: &str = "default";

/// Longest project name: `flotilla_history_` + 40 characters fits every dialect's identifier
/// limit (PostgreSQL 63, MySQL 64) with room to spare.
pub const MAX_PROJECT_LEN: usize = 40;

/// A validated project name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Project(String);

/// A project name that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid project name {name:?}: use 1 to {MAX_PROJECT_LEN} characters of a-z, 0-9 and _, \
     starting with a letter (or leave it empty for `default`)"
)]
pub struct InvalidProject {
    pub name: String,
}

impl Project {
    /// `name` as a project; empty means `default`.
    pub fn parse(name: &str) -> Result<Project, InvalidProject> {
        if name.is_empty() {
            return Ok(Project::default());
        }
        let mut chars = name.chars();
        let first_ok = chars.next().is_some_and(|c| c.is_ascii_lowercase());
        let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !first_ok || !rest_ok || name.len() > MAX_PROJECT_LEN {
            return Err(InvalidProject {
                name: name.to_owned(),
            });
        }
        Ok(Project(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_default(&self) -> bool {
        self.0 == DEFAULT_PROJECT
    }

    /// The project's history table on a target.
    pub fn history_table(&self) -> String {
        self.table("flotilla_history")
    }

    /// The project's fence table on a target.
    pub fn fence_table(&self) -> String {
        self.table("flotilla_fence")
    }

    fn table(&self, base: &str) -> String {
        if self.is_default() {
            base.to_owned()
        } else {
            format!("{base}_{}", self.0)
        }
    }
}

impl Default for Project {
    fn default() -> Self {
        Project(DEFAULT_PROJECT.to_owned())
    }
}

impl fmt::Display for Project {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_is_default_and_keeps_the_pre_project_tables() {
        let p = Project::parse("").unwrap();
        assert!(p.is_default());
        assert_eq!(p.history_table(), "flotilla_history");
        assert_eq!(p.fence_table(), "flotilla_fence");
        assert_eq!(Project::parse("default").unwrap(), p);
    }

    #[test]
    fn another_project_has_its_own_tables() {
        let p = Project::parse("billing_2").unwrap();
        assert_eq!(p.history_table(), "flotilla_history_billing_2");
        assert_eq!(p.fence_table(), "flotilla_fence_billing_2");
    }

    #[test]
    fn names_that_cannot_be_identifiers_are_refused() {
        for bad in [
            "Billing",
            "2fa",
            "a-b",
            "a b",
            "a;drop",
            "_x",
            &"a".repeat(41),
        ] {
            let err = Project::parse(bad).unwrap_err();
            assert!(err.to_string().contains("invalid project name"), "{bad}");
        }
        assert!(Project::parse(&"a".repeat(40)).is_ok());
    }
}
