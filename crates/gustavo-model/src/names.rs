//! Names of apps, groups and nodes. They end up inside Docker container names
//! (`<node>.<app>.<replica>`), so they are restricted to characters Docker accepts and
//! must not contain the `.` separator.

use thiserror::Error;

/// A name that cannot be used, and why.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("invalid {kind} name `{name}`: {why}")]
pub struct NameError {
    pub kind: &'static str,
    pub name: String,
    pub why: &'static str,
}

/// Makes a valid name out of any text (a display name, a host name): characters outside
/// `[A-Za-z0-9_-]` become `-`, at most 63 are kept, and leading `-`/`_` are dropped. The
/// result may be empty.
pub fn sanitize(text: &str) -> String {
    let out: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    out.trim_start_matches(['-', '_']).to_string()
}

/// Picks the entry called `name` from a file's `(name, value)` entries; when it is not there,
/// the error carries the names that are (`wanted`, `found`) for the caller's own error type.
pub fn pick<T>(entries: Vec<(String, T)>, name: &str) -> Result<T, (String, String)> {
    let found = entries
        .iter()
        .map(|(n, _)| n.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    entries
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v)
        .ok_or_else(|| (name.to_string(), found))
}

/// Checks an app, group or node name: 1–63 characters of `[A-Za-z0-9_-]`, starting with a
/// letter or digit.
pub fn validate(kind: &'static str, name: &str) -> Result<(), NameError> {
    let err = |why| {
        Err(NameError {
            kind,
            name: name.to_string(),
            why,
        })
    };
    if name.is_empty() {
        return err("it is empty");
    }
    if name.len() > 63 {
        return err("it is longer than 63 characters");
    }
    if !name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric())
    {
        return err("it must start with a letter or digit");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return err("only letters, digits, `_` and `-` are allowed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_makes_valid_names() {
        assert_eq!(sanitize("Orchestrator@CMU"), "Orchestrator-CMU");
        assert_eq!(sanitize("-_pi 4.local"), "pi-4-local");
        assert_eq!(sanitize(&"x".repeat(80)).len(), 63);
        assert_eq!(sanitize("@@"), "");
    }

    #[test]
    fn pick_names_what_the_file_has() {
        let entries = vec![("a".to_string(), 1), ("b".to_string(), 2)];
        assert_eq!(pick(entries.clone(), "b"), Ok(2));
        assert_eq!(pick(entries, "c"), Err(("c".into(), "a, b".into())));
    }

    #[test]
    fn accepts_seed_names() {
        assert!(validate("app", "test_linreg").is_ok());
        assert!(validate("group", "bca").is_ok());
        assert!(validate("node", "pi-01").is_ok());
    }

    #[test]
    fn rejects_separators_and_junk() {
        assert!(validate("app", "a.b").is_err());
        assert!(validate("app", "").is_err());
        assert!(validate("app", "-x").is_err());
        assert!(validate("app", "a b").is_err());
        assert!(validate("app", &"x".repeat(64)).is_err());
    }
}
