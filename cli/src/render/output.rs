//! The two output forms' primitives: [`emit`] one pretty JSON document, [`write_table`]
//! rows as left-aligned columns. Each is written whole, with one `write_all`: standard
//! output is line-buffered, so writing a line at a time cost a system call per line (twelve
//! per target of a rollout's JSON, and a wake-up of whatever reads the pipe each time).

use std::io::Write;

use serde_json::Value;

use crate::error::CliError;

/// Write `v` as one pretty JSON document and a newline.
pub(crate) fn emit(out: &mut (dyn Write + Send), v: &Value) -> Result<(), CliError> {
    let mut text = serde_json::to_vec_pretty(v)?;
    text.push(b'\n');
    out.write_all(&text).map_err(CliError::Output)
}

/// A table row (usually the header) from string slices.
pub(crate) fn row(cells: &[&str]) -> Vec<String> {
    cells.iter().map(|s| (*s).to_owned()).collect()
}

/// Write rows as left-aligned columns.
pub(crate) fn write_table(
    out: &mut (dyn Write + Send),
    rows: &[Vec<String>],
) -> Result<(), CliError> {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut text = String::new();
    for r in rows {
        let mut line = String::new();
        for (i, cell) in r.iter().enumerate() {
            if i + 1 == r.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            }
        }
        text.push_str(line.trim_end());
        text.push('\n');
    }
    out.write_all(text.as_bytes()).map_err(CliError::Output)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that counts the writes it is given (each one a system call on stdout).
    #[derive(Default)]
    struct Writes {
        calls: usize,
        bytes: Vec<u8>,
    }

    impl Write for Writes {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.calls += 1;
            self.bytes.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_document_and_a_table_are_each_one_write() {
        let doc = serde_json::json!({
            "targets": (0..50).map(|i| serde_json::json!({"id": format!("t{i}"), "steps": [1, 2]})).collect::<Vec<_>>(),
        });
        let mut out = Writes::default();
        emit(&mut out, &doc).unwrap();
        assert_eq!(out.calls, 1);
        let text = String::from_utf8(out.bytes).unwrap();
        assert!(text.ends_with("}\n"));
        assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), doc);

        let rows = vec![
            row(&["TARGET", "STATE"]),
            row(&["t1", "succeeded"]),
            row(&["t22", "failed"]),
        ];
        let mut out = Writes::default();
        write_table(&mut out, &rows).unwrap();
        assert_eq!(out.calls, 1);
        assert_eq!(
            String::from_utf8(out.bytes).unwrap(),
            "TARGET  STATE\nt1      succeeded\nt22     failed\n"
        );
    }
}
