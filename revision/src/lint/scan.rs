//! A small lexical scan of SQL (comments, string literals, quoted identifiers and dollar
//! quotes are skipped) into statements with their first line and whether a `;` ends them.
//! Used by `render` and by the `missing_semicolon` check; the rules themselves parse SQL
//! (`sql.rs`). One pass over the text, nothing allocated per word: seed files are megabytes.

/// A statement found by the lexical scan: its first line in the file (of its first word).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Statement {
    /// Words (keywords, identifiers, numbers) in the statement; never 0 in `scan`'s output.
    pub(crate) words: usize,
    pub(crate) line: usize,
    pub(crate) terminated: bool,
}

/// Lexical scan of `sql` whose first line is line `first_line`.
pub(crate) fn scan(sql: &str, first_line: usize) -> Vec<Statement> {
    let b = sql.as_bytes();
    let mut out = Vec::new();
    let mut cur = Statement {
        words: 0,
        line: first_line,
        terminated: false,
    };
    let mut line = first_line;
    let mut i = 0;
    // Advance past b[i..j], counting line breaks.
    let skip_to = |i: usize, j: usize, line: &mut usize| {
        *line += b[i..j].iter().filter(|c| **c == b'\n').count();
        j
    };
    while i < b.len() {
        let c = b[i];
        let rest = &b[i..];
        if c == b'\n' {
            line += 1;
            i += 1;
        } else if rest.starts_with(b"--") {
            let end = rest
                .iter()
                .position(|c| *c == b'\n')
                .map_or(b.len(), |p| i + p);
            i = skip_to(i, end, &mut line);
        } else if rest.starts_with(b"/*") {
            let end = find(rest, b"*/", 2).map_or(b.len(), |p| i + p + 2);
            i = skip_to(i, end, &mut line);
        } else if c == b'\'' || c == b'"' || c == b'`' {
            // Quoted: a doubled quote is an escaped quote.
            let mut j = i + 1;
            while j < b.len() {
                if b[j] == c {
                    if b.get(j + 1) == Some(&c) {
                        j += 2;
                        continue;
                    }
                    break;
                }
                j += 1;
            }
            i = skip_to(i, (j + 1).min(b.len()), &mut line);
        } else if c == b'$' {
            let tag_len = rest[1..]
                .iter()
                .position(|c| !(c.is_ascii_alphanumeric() || *c == b'_'))
                .filter(|&p| rest.get(1 + p) == Some(&b'$'));
            match tag_len {
                Some(p) => {
                    let tag = &rest[..p + 2];
                    let end = find(rest, tag, tag.len()).map_or(b.len(), |q| i + q + tag.len());
                    i = skip_to(i, end, &mut line);
                }
                None => i += 1,
            }
        } else if c == b';' {
            cur.terminated = true;
            out.push(std::mem::replace(
                &mut cur,
                Statement {
                    words: 0,
                    line,
                    terminated: false,
                },
            ));
            i += 1;
        } else if c.is_ascii_alphanumeric() || c == b'_' {
            let len = rest
                .iter()
                .position(|c| !(c.is_ascii_alphanumeric() || *c == b'_'))
                .unwrap_or(rest.len());
            if cur.words == 0 {
                cur.line = line;
            }
            cur.words += 1;
            i += len;
        } else {
            i += 1;
        }
    }
    if cur.words > 0 {
        out.push(cur);
    }
    out.retain(|s| s.words > 0);
    out
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    hay.get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(sql: &str) -> Vec<(usize, usize, bool)> {
        scan(sql, 1)
            .into_iter()
            .map(|s| (s.line, s.words, s.terminated))
            .collect()
    }

    #[test]
    fn scan_skips_comments_strings_and_dollar_quotes() {
        let sql = "-- DROP TABLE x;\nCREATE TABLE t (a text default 'x;y', \"b;\" int); /* ; */\nDO $f$ BEGIN; DROP TABLE z; END $f$;\nSELECT 1";
        assert_eq!(words(sql), [(2, 7, true), (3, 1, true), (4, 2, false),]);
    }
}
