//! How the simulations and benchmarks print and find things: text tables for people, and the
//! repository's data files found from any working directory.

use std::path::PathBuf;

pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<w$}  "));
            }
        }
        s.trim_end().to_string()
    };
    let mut out = vec![line(headers.to_vec())];
    for row in rows {
        out.push(line(row.iter().map(String::as_str).collect()));
    }
    out.join("\n")
}

/// A data file as given, or, when a relative path is not found from here, the same path under
/// the repository the binary was built from: `gpucloud sim` works from any directory of a clone.
pub fn data_file(path: &std::path::Path) -> PathBuf {
    if path.exists() || path.is_absolute() {
        return path.to_path_buf();
    }
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(path);
    if repo.exists() { repo } else { path.to_path_buf() }
}
