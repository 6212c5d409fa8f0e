//! Text people read: aligned tables, ages, next runs and dates, and
//! strings from the table made safe for a terminal.

/// Text from the table or gearmand as a terminal may show it: control
/// characters (ESC, newline, ...) written as `\n`, `\t`, `\x1B`, so a
/// function name or key cannot move the cursor, recolour the screen or
/// fake a line of the report.
pub fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\x{:02X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out
}

/// `word`, or `words` when `n` is not 1.
pub fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        word.to_string()
    } else {
        format!("{word}s")
    }
}

/// A table's first row: the column names in capitals.
pub fn header(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| n.to_uppercase()).collect()
}

/// Aligns columns: those in `right` (numbers, ages) to the right, the
/// others to the left.
pub fn table(rows: &[Vec<String>], right: &[usize]) -> Vec<String> {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let width: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .map(|r| r.get(c).map_or(0, |s| s.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    rows.iter()
        .map(|r| {
            let cells: Vec<String> = r
                .iter()
                .enumerate()
                .map(|(c, s)| {
                    if right.contains(&c) {
                        format!("{s:>w$}", w = width[c])
                    } else {
                        format!("{s:<w$}", w = width[c])
                    }
                })
                .collect();
            cells.join("  ").trim_end().to_string()
        })
        .collect()
}

/// An arg as a listing shows it: its size and its first bytes.
pub fn arg_text(bytes: u64, preview: &str) -> String {
    let shown: String = preview
        .chars()
        .take(32)
        .map(|c| if c.is_control() { '.' } else { c })
        .collect();
    let more = if (shown.len() as u64) < bytes {
        "…"
    } else {
        ""
    };
    format!("{bytes} B {shown:?}{more}")
}

/// `12s ago`, `now`, `in 5m00s`, `never`.
pub fn next_run(due_in: Option<i64>) -> String {
    match due_in {
        None => "never".into(),
        Some(0) => "now".into(),
        Some(s) if s < 0 => format!("{} ago", age(s.unsigned_abs())),
        Some(s) => format!("in {}", age(s as u64)),
    }
}

/// `45s`, `3m05s`, `2h10m`, `3d04h`.
pub fn age(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m{:02}s", secs / 60, secs % 60),
        3600..86400 => format!("{}h{:02}m", secs / 3600, secs % 3600 / 60),
        _ => format!("{}d{:02}h", secs / 86400, secs % 86400 / 3600),
    }
}

/// Unix time as `2026-01-02 03:04:05 UTC`.
pub fn utc(unix: u32) -> String {
    garivini::admin::utc_date(u64::from(unix))
}
