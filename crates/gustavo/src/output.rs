//! Printing: tables for people, JSON or YAML for scripts, and one line per change:
//! `<kind> <name> <what> (revision N)`, e.g. `app web created (revision 3)`.
//!
//! Everything goes through [`outln!`], which ends the program quietly when stdout is closed
//! early (`gustavo nodes list | head -1`) instead of panicking on a broken pipe.

/// `println!` for command output: a closed stdout ends the program with success.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout().lock(), $($arg)*) {
            $crate::output::stdout_failed(e);
        }
    }};
}

/// What to do when stdout cannot be written: a reader that went away is not an error.
pub fn stdout_failed(e: std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    eprintln!("error: cannot write the output: {e}");
    std::process::exit(1);
}

use comfy_table::presets::NOTHING;
use comfy_table::{ContentArrangement, Table};
use serde::Serialize;

use crate::cli::Format;

pub fn json<T: Serialize + ?Sized>(value: &T) {
    outln!(
        "{}",
        serde_json::to_string_pretty(value).expect("API types always serialize")
    );
}

/// Prints `value` as JSON or YAML (`-o json`, `-o yaml`); with `-o table`, as JSON too.
pub fn data<T: Serialize + ?Sized>(format: Format, value: &T) {
    match format {
        Format::Yaml => {
            let v = serde_json::to_value(value).expect("API types always serialize");
            let text = gustavo_model::appfile::to_yaml(&v);
            outln!("{}", text.trim_end());
        }
        _ => json(value),
    }
}

/// The one line a change prints: `app web created (revision 3)`. Scripts use `-o json`.
pub fn changed(kind: &str, name: &str, what: &str, revision: Option<u64>) {
    match revision {
        Some(r) => outln!("{kind} {name} {what} (revision {r})"),
        None => outln!("{kind} {name} {what}"),
    }
}

/// Prints `rows` as a table, or `value` as JSON or YAML.
pub fn show<T: Serialize + ?Sized>(
    format: Format,
    value: &T,
    header: &[&str],
    rows: Vec<Vec<String>>,
) {
    match format {
        Format::Json | Format::Yaml => data(format, value),
        Format::Table => {
            let mut t = Table::new();
            t.load_preset(NOTHING)
                .set_content_arrangement(ContentArrangement::Disabled)
                .set_header(header.iter().map(|h| h.to_uppercase()));
            for r in rows {
                t.add_row(r);
            }
            outln!("{}", t.trim_fmt());
        }
    }
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// When a node was last heard from, as [`ago`]; the server keeps that in memory only, so
/// 0 is "not since the server started", not "never".
pub fn last_seen(ts: u64) -> String {
    if ts == 0 {
        return "not since the server started".into();
    }
    ago(ts)
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

/// Asks a yes/no question on a terminal (true: go on); without a terminal to ask on, the
/// answer is yes, as a script that passed no `-y` expects.
pub fn confirm(question: &str) -> bool {
    use std::io::{BufRead, IsTerminal, Write};
    if !std::io::stdin().is_terminal() {
        return true;
    }
    eprint!("{question} [y/N] ");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).is_ok() && matches!(line.trim(), "y" | "Y" | "yes")
}
