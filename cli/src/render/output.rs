//! The two output forms' primitives: [`emit`] one pretty JSON document, [`write_table`]
//! rows as left-aligned columns.

use std::io::Write;

use serde_json::Value;

use crate::error::CliError;

/// Write `v` as one pretty JSON document and a newline.
pub(crate) fn emit(out: &mut (dyn Write + Send), v: &Value) -> Result<(), CliError> {
    serde_json::to_writer_pretty(&mut *out, v)?;
    writeln!(out).map_err(CliError::Output)
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
    for r in rows {
        let mut line = String::new();
        for (i, cell) in r.iter().enumerate() {
            if i + 1 == r.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            }
        }
        writeln!(out, "{}", line.trim_end()).map_err(CliError::Output)?;
    }
    Ok(())
}
