//! Printing: tables for people, JSON for scripts.

use comfy_table::presets::NOTHING;
use comfy_table::{ContentArrangement, Table};
use serde::Serialize;

use crate::cli::Format;

pub fn json<T: Serialize + ?Sized>(value: &T) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).expect("API types always serialize")
    );
}

/// Prints `rows` as a table, or `value` as JSON.
pub fn show<T: Serialize + ?Sized>(
    format: Format,
    value: &T,
    header: &[&str],
    rows: Vec<Vec<String>>,
) {
    match format {
        Format::Json => json(value),
        Format::Table => {
            let mut t = Table::new();
            t.load_preset(NOTHING)
                .set_content_arrangement(ContentArrangement::Disabled)
                .set_header(header.iter().map(|h| h.to_uppercase()));
            for r in rows {
                t.add_row(r);
            }
            println!("{}", t.trim_fmt());
        }
    }
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `12s ago`, `5m ago`, `3h ago`, `2d ago`; `never` for 0.
pub fn ago(ts: u64) -> String {
    if ts == 0 {
        return "never".into();
    }
    let d = now().saturating_sub(ts);
    match d {
        0..60 => format!("{d}s ago"),
        60..3600 => format!("{}m ago", d / 60),
        3600..86400 => format!("{}h ago", d / 3600),
        _ => format!("{}d ago", d / 86400),
    }
}

/// Bytes per second, human-sized.
pub fn rate(bps: u64) -> String {
    match bps {
        0..1024 => format!("{bps} B/s"),
        1024..1_048_576 => format!("{:.1} KB/s", bps as f64 / 1024.0),
        _ => format!("{:.1} MB/s", bps as f64 / 1_048_576.0),
    }
}

pub fn duration(secs: u64) -> String {
    match secs {
        0..3600 => format!("{}m", secs / 60),
        3600..86400 => format!("{}h{}m", secs / 3600, secs % 3600 / 60),
        _ => format!("{}d{}h", secs / 86400, secs % 86400 / 3600),
    }
}

/// Parses `500ms`, `5s`, `2m`, `1h` (the same rules as the app format).
pub fn parse_duration(what: &str, s: &str) -> Result<std::time::Duration, crate::Exit> {
    gustavo_model::spec::Duration::parse(s)
        .map(std::time::Duration::from_millis)
        .map_err(|e| crate::Exit(crate::EXIT_USAGE, format!("--{what}: {e}")))
}
