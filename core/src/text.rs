//! Input echoed in messages: [`quoted`] and [`escaped`] show a string a user (or a file, or
//! a request) supplied with every character that could rewrite a terminal or reorder the
//! text around it escaped as `\u{..}`: control characters (C0, DEL, C1: ANSI escape
//! sequences), the bidi embeddings and overrides U+202A–U+202E and isolates U+2066–U+2069,
//! and the marks U+200E, U+200F, U+061C. Every user-visible error that repeats input
//! (selectors, goals, revision ids, file names, target and rollout ids) goes through them.

use std::borrow::Cow;
use std::fmt::Write;

/// Whether `c` must not reach a terminal as it is.
pub fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}' | '\u{061C}'
        )
}

/// `s` with its unsafe characters escaped as `\u{..}` (borrowed when there is none). For
/// text shown without quotes (file paths).
pub fn escaped(s: &str) -> Cow<'_, str> {
    if !s.chars().any(is_unsafe) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        push(&mut out, c);
    }
    Cow::Owned(out)
}

/// `s` in double quotes, `"` and `\` escaped too (what `{:?}` shows for a string, with the
/// bidi controls escaped whatever the Rust version's printable table says).
pub fn quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => push(&mut out, c),
        }
    }
    out.push('"');
    out
}

fn push(out: &mut String, c: char) {
    match c {
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        '\0' => out.push_str("\\0"),
        c if is_unsafe(c) => {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        }
        c => out.push(c),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_and_bidi_overrides_are_escaped() {
        let cases = [
            ("plain_id-1.2", "\"plain_id-1.2\"", "plain_id-1.2"),
            ("a\u{1b}[2Jb", "\"a\\u{1b}[2Jb\"", "a\\u{1b}[2Jb"),
            (
                "x\u{202e}gpj.sql",
                "\"x\\u{202e}gpj.sql\"",
                "x\\u{202e}gpj.sql",
            ),
            (
                "\u{202a}\u{2066}\u{2069}",
                "\"\\u{202a}\\u{2066}\\u{2069}\"",
                "\\u{202a}\\u{2066}\\u{2069}",
            ),
            ("tab\there\n", "\"tab\\there\\n\"", "tab\\there\\n"),
            ("a\0b", "\"a\\0b\"", "a\\0b"),
            ("say \"hi\" \\", "\"say \\\"hi\\\" \\\\\"", "say \"hi\" \\"),
            ("héllo", "\"héllo\"", "héllo"),
        ];
        for (input, want_quoted, want_escaped) in cases {
            assert_eq!(quoted(input), want_quoted, "{input:?}");
            assert_eq!(escaped(input), want_escaped, "{input:?}");
            assert!(!quoted(input).chars().any(is_unsafe));
        }
    }
}
