//! Image references, checked against the grammar of Docker's reference format (the
//! distribution project's `reference` package), so the server refuses what the engine would
//! refuse — or misread — later:
//!
//! ```text
//! reference   := name [":" tag] ["@" digest]
//! name        := [domain "/"] path                      at most 255 characters
//! domain      := host [":" port]                        port: decimal digits
//! host        := component ("." component)* | "[" IPv6 "]"
//! component   := [A-Za-z0-9] | [A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9]
//! path        := path-part ("/" path-part)*
//! path-part   := [a-z0-9]+ (separator [a-z0-9]+)*       separator: "." | "_" | "__" | "-"+
//! tag         := [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}
//! digest      := algorithm ":" hex                      sha256: 64 hex digits, sha512: 128,
//!                                                       others: at least 32
//! ```
//!
//! The first `/`-separated part is the domain when it contains `.` or `:` or is `localhost`
//! (Docker's rule); otherwise the whole name is a path on Docker Hub.

use std::net::Ipv6Addr;

/// The longest name (domain and path) Docker accepts.
pub const MAX_NAME_LEN: usize = 255;

/// An image reference split into its parts. `registry` is `None` for Docker Hub names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    pub registry: Option<String>,
    pub repository: String,
    /// `latest` when the reference has neither tag nor digest.
    pub tag: String,
    pub digest: Option<String>,
}

impl ImageRef {
    /// Splits a reference without checking it; see [`validate_image`] for the check.
    pub fn parse(s: &str) -> ImageRef {
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => (r, Some(d.to_string())),
            None => (s, None),
        };
        let (registry, path) = split_domain(rest);
        let last_slash = path.rfind('/').map(|i| i + 1).unwrap_or(0);
        let (repository, tag) = match path[last_slash..].rfind(':') {
            Some(i) => (
                path[..last_slash + i].to_string(),
                path[last_slash + i + 1..].to_string(),
            ),
            None => (path.to_string(), String::new()),
        };
        let tag = if tag.is_empty() && digest.is_none() {
            "latest".to_string()
        } else {
            tag
        };
        ImageRef {
            registry: registry.map(str::to_string),
            repository,
            tag,
            digest,
        }
    }

    /// The reference Docker is asked for: always with a tag or digest.
    pub fn canonical(&self) -> String {
        let mut s = String::new();
        if let Some(r) = &self.registry {
            s.push_str(r);
            s.push('/');
        }
        s.push_str(&self.repository);
        if !self.tag.is_empty() {
            s.push(':');
            s.push_str(&self.tag);
        }
        if let Some(d) = &self.digest {
            s.push('@');
            s.push_str(d);
        }
        s
    }
}

/// `registry:5000/a/b` → (Some(`registry:5000`), `a/b`); `a/b` → (None, `a/b`).
fn split_domain(s: &str) -> (Option<&str>, &str) {
    match s.split_once('/') {
        Some((first, path)) if first.contains(['.', ':']) || first == "localhost" => {
            (Some(first), path)
        }
        _ => (None, s),
    }
}

/// Checks an image reference against the grammar in the module header. The error names
/// the reference and the part that is wrong.
pub fn validate_image(s: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("docker_image `{}`: {why}", s.escape_debug()));
    if s.is_empty() {
        return Err("docker_image is empty".into());
    }
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return bad("it contains whitespace or a control character");
    }
    let (rest, digest) = match s.split_once('@') {
        Some((r, d)) => (r, Some(d)),
        None => (s, None),
    };
    if let Some(d) = digest
        && let Err(why) = check_digest(d)
    {
        return bad(&why);
    }
    let (domain, path_and_tag) = split_domain(rest);
    // The tag is after the last `:` of the last path part (a domain's port comes before `/`).
    let last_slash = path_and_tag.rfind('/').map(|i| i + 1).unwrap_or(0);
    let (path, tag) = match path_and_tag[last_slash..].rfind(':') {
        Some(i) => (
            &path_and_tag[..last_slash + i],
            Some(&path_and_tag[last_slash + i + 1..]),
        ),
        None => (path_and_tag, None),
    };
    if let Some(d) = domain
        && let Err(why) = check_domain(d)
    {
        return bad(&why);
    }
    if let Err(why) = check_path(path) {
        return bad(&why);
    }
    if let Some(t) = tag
        && let Err(why) = check_tag(t)
    {
        return bad(&why);
    }
    let name_len = domain.map(|d| d.len() + 1).unwrap_or(0) + path.len();
    if name_len > MAX_NAME_LEN {
        return bad(&format!(
            "the name is longer than {MAX_NAME_LEN} characters"
        ));
    }
    Ok(())
}

fn check_domain(d: &str) -> Result<(), String> {
    let (host, port) = match d.strip_prefix('[') {
        Some(v6) => {
            let (ip, rest) = v6
                .split_once(']')
                .ok_or_else(|| format!("the registry `{d}` has an unclosed `[`"))?;
            if ip.parse::<Ipv6Addr>().is_err() {
                return Err(format!("the registry `{d}`: `{ip}` is not an IPv6 address"));
            }
            match rest {
                "" => (None, None),
                r => match r.strip_prefix(':') {
                    Some(p) => (None, Some(p)),
                    None => return Err(format!("the registry `{d}` is malformed")),
                },
            }
        }
        None => match d.split_once(':') {
            Some((h, p)) => (Some(h), Some(p)),
            None => (Some(d), None),
        },
    };
    if let Some(h) = host {
        let component_ok = |c: &str| {
            !c.is_empty()
                && c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !c.starts_with('-')
                && !c.ends_with('-')
        };
        if !h.split('.').all(component_ok) {
            return Err(format!(
                "the registry `{d}` is not a host name, IPv4 address or [IPv6] address"
            ));
        }
    }
    if let Some(p) = port
        && (p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(format!("the registry `{d}` has a bad port `{p}`"));
    }
    Ok(())
}

/// `path-part ("/" path-part)*`, each part lowercase letters and digits joined by
/// separators.
fn check_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("the repository is empty".into());
    }
    if path.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(format!("the repository `{path}` must be lowercase"));
    }
    for part in path.split('/') {
        if !path_part_ok(part) {
            return Err(format!(
                "`{part}` in the repository `{path}` is not lowercase letters and digits joined by `.`, `_`, `__` or `-`"
            ));
        }
    }
    Ok(())
}

fn path_part_ok(part: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let b = part.as_bytes();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    // Between alphanumeric runs: one `.`, one `_`, `__`, or any number of `-`.
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &part[start..i];
        let ok = matches!(sep, "." | "_" | "__") || sep.bytes().all(|c| c == b'-');
        if !ok {
            return false;
        }
    }
    true
}

fn check_tag(t: &str) -> Result<(), String> {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let ok = !t.is_empty()
        && t.len() <= 128
        && word(t.as_bytes()[0])
        && t.bytes().all(|b| word(b) || b == b'.' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "the tag `{t}` must be 1-128 of [A-Za-z0-9_.-], not starting with `.` or `-`"
        ))
    }
}

fn check_digest(d: &str) -> Result<(), String> {
    let Some((algo, hex)) = d.split_once(':') else {
        return Err(format!(
            "the digest `{d}` must be ALGORITHM:HEX, e.g. sha256:…"
        ));
    };
    let algo_ok = !algo.is_empty()
        && algo.split(['+', '.', '-', '_']).all(|c| {
            c.bytes().next().is_some_and(|b| b.is_ascii_alphabetic())
                && c.bytes().all(|b| b.is_ascii_alphanumeric())
        });
    if !algo_ok {
        return Err(format!("the digest algorithm `{algo}` is malformed"));
    }
    let want = match algo {
        "sha256" => Some(64),
        "sha512" => Some(128),
        _ => None,
    };
    let hex_ok = match want {
        // Registries write sha256 and sha512 digests in lowercase hex.
        Some(n) => hex.len() == n && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
        None => hex.len() >= 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
    };
    if !hex_ok {
        return Err(match want {
            Some(n) => format!("a {algo} digest is {n} lowercase hex digits"),
            None => format!("the digest of `{algo}` must be at least 32 hex digits"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_references() {
        let r = ImageRef::parse("172.31.17.1:5000/test_linreg");
        assert_eq!(r.registry.as_deref(), Some("172.31.17.1:5000"));
        assert_eq!(r.repository, "test_linreg");
        assert_eq!(r.canonical(), "172.31.17.1:5000/test_linreg:latest");
        let r = ImageRef::parse("localhost:5000/a/b:v2");
        assert_eq!((r.repository.as_str(), r.tag.as_str()), ("a/b", "v2"));
        let r = ImageRef::parse("busybox");
        assert_eq!(r.registry, None);
        assert_eq!(r.canonical(), "busybox:latest");
    }

    #[test]
    fn accepts_what_docker_accepts() {
        let sha = "a".repeat(64);
        for ok in [
            "busybox",
            "busybox:1.36",
            "library/busybox:latest",
            "gustavo-test/busybox:latest",
            "172.31.17.1:5000/test_linreg",
            "localhost:5000/a/b:v2",
            "localhost/x",
            "registry.example.org/team/app_x:v1.2-rc_3",
            "[::1]:5000/web",
            "[fe80::1]/web:v1",
            "my-registry.io:443/a__b/c---d/e.f",
            &format!("busybox@sha256:{sha}"),
            &format!("r.io/web:v1@sha256:{sha}"),
            &format!("web@sha512:{}", "0".repeat(128)),
            &format!("web@multihash+base58:{}", "0".repeat(32)),
        ] {
            assert_eq!(validate_image(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn refuses_what_docker_refuses() {
        let cases = [
            ("", "empty"),
            ("../../etc/passwd", "registry `..`"),
            ("./x", "registry `.`"),
            ("a//b", "``"),
            ("/abs", "repository"),
            ("x@sha256:zz", "sha256 digest is 64"),
            (&format!("x@sha256:{}", "A".repeat(64)), "64 lowercase hex"),
            ("x@sha256", "ALGORITHM:HEX"),
            ("x@:abc", "algorithm"),
            ("X/Y", "lowercase"),
            ("a b", "whitespace"),
            ("a\0b", "control"),
            ("web:", "tag ``"),
            ("web:.v1", "tag `.v1`"),
            (&format!("web:{}", "v".repeat(129)), "1-128"),
            ("web:v1:v2", "`web:v1`"),
            ("a.-b/x", "registry"),
            ("host:port/x", "bad port `port`"),
            ("[::zz]:5000/x", "IPv6"),
            ("a..b", "`a..b`"),
            ("a_-b", "`a_-b`"),
            ("-a", "`-a`"),
            ("a___b", "`a___b`"),
            (&format!("r.io/{}", "a".repeat(251)), "255"),
        ];
        for (bad, want) in cases {
            let e = validate_image(bad).unwrap_err();
            assert!(e.contains(want), "{bad:?} gave {e}");
            assert!(e.starts_with("docker_image"), "{e}");
        }
    }
}
