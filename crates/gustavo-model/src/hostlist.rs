//! Host lists in pdsh / Slurm / Cloudmesh syntax (`red[01-05]`, `red,blue[1-3]`, `n[1-3,7]-eth0`),
//! expanded to the names they stand for.
//!
//! The rules are python-hostlist's (which Cloudmesh's `Parameter.expand` delegates to):
//! - a list is items separated by commas outside brackets; spaces around items are ignored;
//! - an item is text with any number of bracket groups; each group is a comma-separated list of
//!   numbers and ranges `lo-hi`, and several groups multiply out, leftmost slowest
//!   (`x[1-2]y[a-b]` is not a range: only digits);
//! - a range keeps the width of its low end: `[01-10]` gives `01` … `10`, `[1-10]` gives `1` … `10`,
//!   `[001-3]` gives `001` … `003`;
//! - duplicates are removed and the first occurrence's order is kept.
//!
//! Unlike python-hostlist an empty item (`a,,b`, a trailing comma) is an error rather than
//! silently dropped: a typo in a list of hosts to install should not go unnoticed. A list
//! expanding to more than [`MAX_HOSTS`] names is refused before anything is built.

use thiserror::Error;

/// The most names one host list may expand to.
pub const MAX_HOSTS: usize = 100_000;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HostListError {
    #[error("host list is empty")]
    Empty,
    #[error("host list `{list}`: empty name (two commas in a row, or a comma at an end)")]
    EmptyItem { list: String },
    #[error("host list `{list}`: `[` without a closing `]`")]
    Unclosed { list: String },
    #[error("host list `{list}`: `]` without an opening `[`")]
    UnopenedBracket { list: String },
    #[error("host list `{list}`: brackets cannot nest")]
    Nested { list: String },
    #[error("host list `{list}`: empty brackets `[]`")]
    EmptyBrackets { list: String },
    #[error("host list `{list}`: `{range}` is not a number or a range `lo-hi` of numbers")]
    BadRange { list: String, range: String },
    #[error("host list `{list}`: range `{range}` runs backwards")]
    Backwards { list: String, range: String },
    #[error("host list `{list}`: `{ch}` is not allowed in a host name")]
    BadChar { list: String, ch: char },
    #[error("host list `{list}` expands to more than {MAX_HOSTS} names")]
    TooMany { list: String },
}

/// Expand a host list to its names, deduplicated, in first-seen order.
pub fn expand(list: &str) -> Result<Vec<String>, HostListError> {
    let trimmed = list.trim();
    if trimmed.is_empty() {
        return Err(HostListError::Empty);
    }
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for item in split_top(list)? {
        let item = item.trim();
        if item.is_empty() {
            return Err(HostListError::EmptyItem { list: list.into() });
        }
        for name in expand_item(list, item)? {
            if seen.insert(name.clone()) {
                out.push(name);
                if out.len() > MAX_HOSTS {
                    return Err(HostListError::TooMany { list: list.into() });
                }
            }
        }
    }
    Ok(out)
}

/// Expand several host lists (as given to repeated options) into one deduplicated list.
pub fn expand_all<S: AsRef<str>>(lists: &[S]) -> Result<Vec<String>, HostListError> {
    let joined: Vec<&str> = lists.iter().map(|s| s.as_ref()).collect();
    expand(&joined.join(","))
}

/// Split on commas that are outside brackets, checking the brackets balance.
fn split_top(list: &str) -> Result<Vec<&str>, HostListError> {
    let mut parts = Vec::new();
    let mut depth = 0u32;
    let mut start = 0;
    for (i, ch) in list.char_indices() {
        match ch {
            '[' if depth > 0 => return Err(HostListError::Nested { list: list.into() }),
            '[' => depth = 1,
            ']' if depth == 0 => return Err(HostListError::UnopenedBracket { list: list.into() }),
            ']' => depth = 0,
            ',' if depth == 0 => {
                parts.push(&list[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth > 0 {
        return Err(HostListError::Unclosed { list: list.into() });
    }
    parts.push(&list[start..]);
    Ok(parts)
}

fn check_text(list: &str, text: &str) -> Result<(), HostListError> {
    match text
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '@' | ':')))
    {
        Some(ch) => Err(HostListError::BadChar {
            list: list.into(),
            ch,
        }),
        None => Ok(()),
    }
}

/// One item: literal text and bracket groups, multiplied out left to right.
fn expand_item(list: &str, item: &str) -> Result<Vec<String>, HostListError> {
    let mut names = vec![String::new()];
    let mut rest = item;
    while !rest.is_empty() {
        let Some(open) = rest.find('[') else {
            check_text(list, rest)?;
            for n in &mut names {
                n.push_str(rest);
            }
            break;
        };
        let literal = &rest[..open];
        check_text(list, literal)?;
        // split_top proved every `[` has its `]` and none nest.
        let close = open + rest[open..].find(']').unwrap_or(rest.len() - open);
        let values = expand_group(list, &rest[open + 1..close])?;
        if names.len().saturating_mul(values.len()) > MAX_HOSTS {
            return Err(HostListError::TooMany { list: list.into() });
        }
        names = names
            .iter()
            .flat_map(|n| values.iter().map(move |v| format!("{n}{literal}{v}")))
            .collect();
        rest = &rest[close + 1..];
    }
    Ok(names)
}

/// The inside of one bracket group: `01-03,07`.
fn expand_group(list: &str, group: &str) -> Result<Vec<String>, HostListError> {
    if group.trim().is_empty() {
        return Err(HostListError::EmptyBrackets { list: list.into() });
    }
    let mut values = Vec::new();
    for range in group.split(',') {
        let range = range.trim();
        let bad = || HostListError::BadRange {
            list: list.into(),
            range: range.into(),
        };
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        match range.split_once('-') {
            None if digits(range) => values.push(range.to_string()),
            Some((lo, hi)) if digits(lo) && digits(hi) => {
                let (a, b): (u64, u64) = (
                    lo.parse().map_err(|_| bad())?,
                    hi.parse().map_err(|_| bad())?,
                );
                if b < a {
                    return Err(HostListError::Backwards {
                        list: list.into(),
                        range: range.into(),
                    });
                }
                if b - a >= MAX_HOSTS as u64 || values.len() + (b - a) as usize >= MAX_HOSTS {
                    return Err(HostListError::TooMany { list: list.into() });
                }
                let width = lo.len();
                values.extend((a..=b).map(|i| format!("{i:0width$}")));
            }
            _ => return Err(bad()),
        }
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn x(s: &str) -> Vec<String> {
        expand(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn cloudmesh_examples() {
        assert_eq!(
            x("red[01-05]"),
            ["red01", "red02", "red03", "red04", "red05"]
        );
        assert_eq!(x("red,red[01-03]"), ["red", "red01", "red02", "red03"]);
        assert_eq!(x("red,blue[1-3]"), ["red", "blue1", "blue2", "blue3"]);
        assert_eq!(x("[01-03,07]"), ["01", "02", "03", "07"]);
    }

    /// The examples of pdsh(1)'s "HOSTLIST EXPRESSIONS" section and python-hostlist's docs.
    #[test]
    fn pdsh_documented_examples() {
        // "foo[1-5]" / "host[1-5,7]"
        assert_eq!(
            x("host[1-5,7]"),
            ["host1", "host2", "host3", "host4", "host5", "host7"]
        );
        // "foo[01-05]" keeps the zero padding
        assert_eq!(
            x("foo[01-05]"),
            ["foo01", "foo02", "foo03", "foo04", "foo05"]
        );
        // "foo[7,9-10]"
        assert_eq!(x("foo[7,9-10]"), ["foo7", "foo9", "foo10"]);
        // "foo[0-3]-eth0": text after the brackets
        assert_eq!(
            x("foo[0-3]-eth0"),
            ["foo0-eth0", "foo1-eth0", "foo2-eth0", "foo3-eth0"]
        );
        // "foo[1-3].bar.com"
        assert_eq!(x("foo[1-2].bar.com"), ["foo1.bar.com", "foo2.bar.com"]);
        // python-hostlist: "n[1-3,5],m[01-02]"
        assert_eq!(
            x("n[1-3,5],m[01-02]"),
            ["n1", "n2", "n3", "n5", "m01", "m02"]
        );
        // several groups multiply out, leftmost slowest: "x[1-2]y[3-4]"
        assert_eq!(x("x[1-2]y[3-4]"), ["x1y3", "x1y4", "x2y3", "x2y4"]);
    }

    #[test]
    fn padding_follows_the_low_end() {
        assert_eq!(x("n[1-10]").last().unwrap(), "n10");
        assert_eq!(x("n[8-10]"), ["n8", "n9", "n10"]);
        assert_eq!(x("n[098-101]"), ["n098", "n099", "n100", "n101"]);
        assert_eq!(x("n[001-3]"), ["n001", "n002", "n003"]);
    }

    #[test]
    fn duplicates_removed_first_order_kept() {
        assert_eq!(x("b,a,b,a[1-2],a1"), ["b", "a", "a1", "a2"]);
        assert_eq!(x("n[1-3,2-4]"), ["n1", "n2", "n3", "n4"]);
        assert_eq!(x(" a , b "), ["a", "b"]);
        assert_eq!(
            expand_all(&["a,b", "b,c[1-2]"]).unwrap(),
            ["a", "b", "c1", "c2"]
        );
    }

    #[test]
    fn users_and_ports_pass_through() {
        assert_eq!(x("pi@red[1-2]"), ["pi@red1", "pi@red2"]);
        assert_eq!(x("root@10.0.0.[1-2]"), ["root@10.0.0.1", "root@10.0.0.2"]);
    }

    #[test]
    fn named_errors() {
        use HostListError as E;
        let e = |s: &str| expand(s).unwrap_err();
        assert_eq!(e(""), E::Empty);
        assert_eq!(e("  "), E::Empty);
        assert!(matches!(e("a,,b"), E::EmptyItem { .. }));
        assert!(matches!(e("a,"), E::EmptyItem { .. }));
        assert!(matches!(e("red[01-05"), E::Unclosed { .. }));
        assert!(matches!(e("red01-05]"), E::UnopenedBracket { .. }));
        assert!(matches!(e("r[1-[2]]"), E::Nested { .. }));
        assert!(matches!(e("r[]"), E::EmptyBrackets { .. }));
        assert!(matches!(e("r[a-c]"), E::BadRange { range, .. } if range == "a-c"));
        assert!(matches!(e("r[1-]"), E::BadRange { .. }));
        assert!(matches!(e("r[1-2-3]"), E::BadRange { .. }));
        assert!(matches!(e("r[5-1]"), E::Backwards { range, .. } if range == "5-1"));
        assert!(matches!(e("r[0-100000]"), E::TooMany { .. }));
        assert!(matches!(e("r[0-999]s[0-999]"), E::TooMany { .. }));
        assert!(matches!(e("a b"), E::BadChar { ch: ' ', .. }));
        assert!(matches!(e("a;rm"), E::BadChar { ch: ';', .. }));
        assert_eq!(
            e("red[5-1]").to_string(),
            "host list `red[5-1]`: range `5-1` runs backwards"
        );
    }
}
