//! Which targets a rollout, a plan or a fleet call is about: the [`Selector`] (labels and
//! target ids), its bounds and how a selector is named in messages.
//!
//! Bounds are those Kubernetes puts on labels, so a selector that fits a label selector
//! fits here: a target id at most [`MAX_TARGET_ID`] bytes, a label key [`MAX_LABEL_KEY`],
//! a value [`MAX_LABEL_VALUE`], at most [`MAX_ENTRIES`] labels and as many ids, no control
//! characters (NUL included). Both the CLI (before any call) and the API check them.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use flotilla_proto as pb;

/// Longest target id a selector may name, in bytes (a DNS subdomain, like Kubernetes names).
pub const MAX_TARGET_ID: usize = 253;
/// Longest label key, in bytes.
pub const MAX_LABEL_KEY: usize = 63;
/// Longest label value, in bytes.
pub const MAX_LABEL_VALUE: usize = 1024;
/// Most labels, and most target ids, one selector may hold.
pub const MAX_ENTRIES: usize = 256;

/// A selector outside its bounds. Offending text is shown escaped (`{:?}`) and cut to
/// [`SHOWN`] characters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    #[error("selector {part} is not key=value (e.g. -l tier=gold,region=eu)")]
    NotKeyValue { part: String },
    #[error(
        "selector has {count} {what}, at most {MAX_ENTRIES} are allowed: select by a label instead"
    )]
    TooMany { what: &'static str, count: usize },
    #[error("selector {what} {shown} is {len} bytes, at most {max} are allowed")]
    TooLong {
        what: &'static str,
        shown: String,
        len: usize,
        max: usize,
    },
    #[error("selector {what} is empty: give a non-empty {what}")]
    Empty { what: &'static str },
    #[error("selector {what} {shown} contains a control character: remove it")]
    Control { what: &'static str, shown: String },
}

/// How many characters of an offending value a message shows.
pub const SHOWN: usize = 64;

/// `s` escaped for a message (quotes, control characters as `\u{..}`), cut to [`SHOWN`]
/// characters with the number of bytes left out.
pub fn shown(s: &str) -> String {
    match s.char_indices().nth(SHOWN) {
        None => flotilla_core::text::quoted(s),
        Some((cut, _)) => format!(
            "{}... ({} more bytes)",
            flotilla_core::text::quoted(&s[..cut]),
            s.len() - cut
        ),
    }
}

/// Label selector: every `match_labels` entry must match; `target_ids`, when not empty,
/// restricts to those targets. The implicit labels `dialect` and `agent` can be matched too.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Selector {
    pub match_labels: BTreeMap<String, String>,
    pub target_ids: Vec<String>,
}

fn check_text(
    what: &'static str,
    s: &str,
    max: usize,
    empty_ok: bool,
) -> Result<(), SelectorError> {
    if s.is_empty() && !empty_ok {
        return Err(SelectorError::Empty { what });
    }
    if s.len() > max {
        return Err(SelectorError::TooLong {
            what,
            shown: shown(s),
            len: s.len(),
            max,
        });
    }
    if s.chars().any(char::is_control) {
        return Err(SelectorError::Control {
            what,
            shown: shown(s),
        });
    }
    Ok(())
}

impl Selector {
    pub fn matches(
        &self,
        target_id: &str,
        labels: &HashMap<String, String>,
        dialect: &str,
        agent: &str,
    ) -> bool {
        if !self.target_ids.is_empty() && !self.target_ids.iter().any(|t| t == target_id) {
            return false;
        }
        self.match_labels.iter().all(|(k, v)| match k.as_str() {
            "dialect" if !labels.contains_key("dialect") => v == dialect,
            "agent" if !labels.contains_key("agent") => v == agent,
            _ => labels.get(k) == Some(v),
        })
    }

    /// Parse `k=v,k2=v2` (the CLI form); the result is checked ([`Selector::check`]).
    pub fn parse(s: &str) -> Result<Selector, SelectorError> {
        let mut sel = Selector::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| SelectorError::NotKeyValue { part: shown(part) })?;
            sel.match_labels
                .insert(k.trim().to_owned(), v.trim().to_owned());
        }
        sel.check()?;
        Ok(sel)
    }

    /// The bounds (module doc): the first field outside them.
    pub fn check(&self) -> Result<(), SelectorError> {
        if self.match_labels.len() > MAX_ENTRIES {
            return Err(SelectorError::TooMany {
                what: "labels",
                count: self.match_labels.len(),
            });
        }
        if self.target_ids.len() > MAX_ENTRIES {
            return Err(SelectorError::TooMany {
                what: "target ids",
                count: self.target_ids.len(),
            });
        }
        for (k, v) in &self.match_labels {
            check_text("label key", k, MAX_LABEL_KEY, false)?;
            check_text("label value", v, MAX_LABEL_VALUE, true)?;
        }
        for id in &self.target_ids {
            check_text("target id", id, MAX_TARGET_ID, false)?;
        }
        Ok(())
    }

    /// The selector as the user gave it, for messages: `-l "k=v,..." --target "id" ...`
    /// (escaped), or `no selector (every target)`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if !self.match_labels.is_empty() {
            let labels = self
                .match_labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",");
            parts.push(format!("-l {}", shown(&labels)));
        }
        for id in &self.target_ids {
            parts.push(format!("--target {}", shown(id)));
        }
        if parts.is_empty() {
            "no selector (every target)".into()
        } else {
            parts.join(" ")
        }
    }

    pub fn to_proto(&self) -> pb::Selector {
        pb::Selector {
            match_labels: self.match_labels.clone().into_iter().collect(),
            target_ids: self.target_ids.clone(),
        }
    }

    /// A request's selector, checked against the bounds (none: every target).
    pub fn from_proto(p: Option<&pb::Selector>) -> Result<Selector, SelectorError> {
        let sel = p
            .map(|p| Selector {
                match_labels: p.match_labels.clone().into_iter().collect(),
                target_ids: p.target_ids.clone(),
            })
            .unwrap_or_default();
        sel.check()?;
        Ok(sel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selector_matches_labels_and_implicit_keys() {
        let sel = Selector::parse("tier=gold, dialect=sqlite").unwrap();
        let mut labels = HashMap::new();
        labels.insert("tier".to_owned(), "gold".to_owned());
        assert!(sel.matches("t1", &labels, "sqlite", "a1"));
        assert!(!sel.matches("t1", &labels, "postgres", "a1"));
        labels.insert("tier".to_owned(), "silver".to_owned());
        assert!(!sel.matches("t1", &labels, "sqlite", "a1"));
        assert!(Selector::parse("nonsense").is_err());
    }

    fn ids(ids: &[&str]) -> Selector {
        Selector {
            target_ids: ids.iter().map(|s| s.to_string()).collect(),
            ..Selector::default()
        }
    }

    fn label(k: &str, v: &str) -> Selector {
        Selector {
            match_labels: [(k.to_owned(), v.to_owned())].into(),
            ..Selector::default()
        }
    }

    #[test]
    fn bounds_name_the_field_and_escape_it() {
        let cases: Vec<(Selector, &str)> = vec![
            (ids(&[&"x".repeat(254)]), "selector target id \"xxxx"),
            (
                ids(&["a\0b"]),
                "selector target id \"a\\0b\" contains a control character",
            ),
            (ids(&[""]), "selector target id is empty"),
            (label(&"k".repeat(64), "v"), "selector label key \"kkkk"),
            (label("k", &"v".repeat(1025)), "selector label value \"vvvv"),
            (label("", "v"), "selector label key is empty"),
            (label("k", "a\0"), "selector label value \"a\\0\" contains"),
            (
                Selector {
                    match_labels: (0..257).map(|i| (format!("k{i}"), "v".into())).collect(),
                    ..Selector::default()
                },
                "selector has 257 labels, at most 256",
            ),
            (
                ids(&vec!["t"; 257]),
                "selector has 257 target ids, at most 256",
            ),
            (
                ids(&["t\u{1b}[31m"]),
                "\"t\\u{1b}[31m\" contains a control character",
            ),
        ];
        for (sel, want) in cases {
            let err = sel.check().unwrap_err().to_string();
            assert!(err.contains(want), "{err:?} should contain {want:?}");
            assert!(err.len() < 300, "message too long: {err}");
        }
        assert!(ids(&[&"x".repeat(253)]).check().is_ok());
        assert!(Selector::parse(&format!("{}={}", "k".repeat(63), "v".repeat(1024))).is_ok());
        assert!(Selector::parse("tier=").is_ok());
    }

    #[test]
    fn describe_names_labels_and_ids_as_given() {
        let mut sel = Selector::parse("tier=gold").unwrap();
        sel.target_ids = vec!["t1".into(), "t\n2".into()];
        assert_eq!(
            sel.describe(),
            r#"-l "tier=gold" --target "t1" --target "t\n2""#
        );
        assert_eq!(Selector::default().describe(), "no selector (every target)");
    }
}
