//! Tables for people, JSON for scripts.

use serde::Serialize;

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

pub fn json<T: Serialize>(value: &T) -> String {
    serde_json::to_string_pretty(value).unwrap_or_default()
}

pub fn or_dash(v: Option<impl ToString>) -> String {
    v.map(|x| x.to_string()).unwrap_or_else(|| "-".into())
}

pub fn gpu_list(gpus: &[u32]) -> String {
    if gpus.is_empty() { "-".into() } else { gpus.iter().map(u32::to_string).collect::<Vec<_>>().join(",") }
}

#[cfg(test)]
mod tests {
    #[test]
    fn aligns_columns() {
        let t =
            super::table(&["ID", "STATE"], &[vec!["i-1".into(), "running".into()], vec!["i-22".into(), "x".into()]]);
        assert_eq!(t, "ID    STATE\ni-1   running\ni-22  x");
    }
}
