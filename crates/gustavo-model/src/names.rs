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
