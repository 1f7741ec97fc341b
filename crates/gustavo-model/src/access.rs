//! Who may do what: roles, Nebula-style grants, join tokens that pin the server's CA, and
//! the dangerous spec fields a policy must allow. Pure rules, no I/O, so every decision is
//! unit-tested here and the server only asks.
//!
//! A person has one **role** — what kind of thing they may do — and the **grants** of the
//! user groups they belong to — which objects they may do it to:
//! - `admin`: everything, grants or not (users, tokens, policies, audit, nodes included);
//! - `operator`: read what a grant gives `ro` or `rw`, change apps where it gives `rw`;
//! - `viewer`: read what a grant gives, never change anything (`rw` counts as `ro`).
//!
//! A grant names apps or device groups (`*` means all), with `ro` or `rw`; `rw` implies
//! `ro` (in Nebula it did not), and several user groups add up to the highest level (in
//! Nebula the last one won). A grant on a device group covers every app attached to it and
//! every node in it.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::spec::{AppSpec, ImageRef};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Viewer,
    Operator,
    Admin,
}

impl Role {
    pub fn parse(s: &str) -> Result<Role, String> {
        match s {
            "admin" => Ok(Role::Admin),
            "operator" => Ok(Role::Operator),
            "viewer" => Ok(Role::Viewer),
            _ => Err(format!(
                "unknown role `{s}`: expected admin, operator or viewer"
            )),
        }
    }
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Viewer => "viewer",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A grant's level; `Rw` implies `Ro`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Access {
    Ro,
    Rw,
}

impl Access {
    pub fn parse(s: &str) -> Result<Access, String> {
        match s {
            "ro" => Ok(Access::Ro),
            "rw" => Ok(Access::Rw),
            _ => Err(format!("unknown access `{s}`: expected ro or rw")),
        }
    }
    pub fn as_str(&self) -> &'static str {
        match self {
            Access::Ro => "ro",
            Access::Rw => "rw",
        }
    }
}

/// The grants of one user group, or of a user (the union of their groups).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grants {
    #[serde(default)]
    pub apps: BTreeMap<String, Access>,
    #[serde(default)]
    pub device_groups: BTreeMap<String, Access>,
}

/// The name that grants everything of its kind.
pub const ANY: &str = "*";

fn raise(slot: &mut Option<Access>, a: Option<&Access>) {
    if let Some(a) = a {
        *slot = Some(slot.map_or(*a, |s| s.max(*a)));
    }
}

impl Grants {
    /// Adds another group's grants, keeping the highest level per object.
    pub fn merge(&mut self, other: &Grants) {
        for (k, v) in &other.apps {
            let e = self.apps.entry(k.clone()).or_insert(*v);
            *e = (*e).max(*v);
        }
        for (k, v) in &other.device_groups {
            let e = self.device_groups.entry(k.clone()).or_insert(*v);
            *e = (*e).max(*v);
        }
    }

    /// Access to a device group.
    pub fn group(&self, name: &str) -> Option<Access> {
        let mut a = None;
        raise(&mut a, self.device_groups.get(name));
        raise(&mut a, self.device_groups.get(ANY));
        a
    }

    /// Access to an app attached to `groups`: by its own name or through any of its groups.
    pub fn app(&self, name: &str, groups: &[String]) -> Option<Access> {
        let mut a = None;
        raise(&mut a, self.apps.get(name));
        raise(&mut a, self.apps.get(ANY));
        for g in groups {
            raise(&mut a, self.group(g).as_ref());
        }
        a
    }
}

/// A person acting through the API: role plus grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    pub name: String,
    pub role: Role,
    pub grants: Grants,
}

impl Subject {
    /// The level this person effectively has, with the role as a ceiling.
    fn cap(&self, a: Option<Access>) -> Option<Access> {
        match self.role {
            Role::Admin => Some(Access::Rw),
            Role::Operator => a,
            Role::Viewer => a.map(|_| Access::Ro),
        }
    }
    pub fn app_access(&self, name: &str, groups: &[String]) -> Option<Access> {
        self.cap(self.grants.app(name, groups))
    }
    pub fn group_access(&self, name: &str) -> Option<Access> {
        self.cap(self.grants.group(name))
    }
    pub fn can_read_app(&self, name: &str, groups: &[String]) -> bool {
        self.app_access(name, groups).is_some()
    }
    pub fn can_write_app(&self, name: &str, groups: &[String]) -> bool {
        self.app_access(name, groups) == Some(Access::Rw)
    }
    pub fn can_read_group(&self, name: &str) -> bool {
        self.group_access(name).is_some()
    }
    pub fn can_write_group(&self, name: &str) -> bool {
        self.group_access(name) == Some(Access::Rw)
    }
    /// A node is visible through any of its groups.
    pub fn can_read_node(&self, groups: &[String]) -> bool {
        self.role == Role::Admin || groups.iter().any(|g| self.can_read_group(g))
    }
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }
}

/// A spec field that can take over the device, allowed only to admins or by policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Privilege {
    Privileged,
    Devices,
    HostNetwork,
    HostVolumes,
}

impl Privilege {
    pub const ALL: [Privilege; 4] = [
        Privilege::Privileged,
        Privilege::Devices,
        Privilege::HostNetwork,
        Privilege::HostVolumes,
    ];
    pub fn parse(s: &str) -> Result<Privilege, String> {
        Privilege::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| {
                format!("unknown privilege `{s}`: expected privileged, devices, host-network or host-volumes")
            })
    }
    pub fn as_str(&self) -> &'static str {
        match self {
            Privilege::Privileged => "privileged",
            Privilege::Devices => "devices",
            Privilege::HostNetwork => "host-network",
            Privilege::HostVolumes => "host-volumes",
        }
    }
}

/// The dangerous fields a spec uses.
pub fn privileges_of(spec: &AppSpec) -> Vec<Privilege> {
    let mut out = Vec::new();
    if spec.privileged {
        out.push(Privilege::Privileged);
    }
    if !spec.devices.is_empty() {
        out.push(Privilege::Devices);
    }
    if spec.networks.first().map(String::as_str) == Some("host") {
        out.push(Privilege::HostNetwork);
    }
    if spec.volumes.iter().any(|v| v.is_host_path()) {
        out.push(Privilege::HostVolumes);
    }
    out
}

/// What the server allows on one device group, beyond the safe default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupPolicy {
    pub group: String,
    /// Dangerous fields allowed to non-admins for apps on this group.
    #[serde(default)]
    pub allow: Vec<Privilege>,
    /// When non-empty, only these images may run on the group: a repository
    /// (`registry/name`, any tag) or a full reference with a digest (`…@sha256:…`).
    #[serde(default)]
    pub images: Vec<String>,
}

/// Whether `image` matches one allowlist entry: a digest entry matches exactly that digest,
/// a repository entry matches any tag or digest of that repository.
pub fn image_allowed(entry: &str, image: &str) -> bool {
    let want = ImageRef::parse(entry);
    let got = ImageRef::parse(image);
    if want.registry != got.registry || want.repository != got.repository {
        return false;
    }
    match &want.digest {
        Some(d) => got.digest.as_deref() == Some(d.as_str()),
        None => {
            // `repo` alone allows every tag; `repo:tag` only that tag.
            let entry_has_tag = entry.rsplit('/').next().is_some_and(|l| l.contains(':'));
            !entry_has_tag || want.tag == got.tag
        }
    }
}

/// Checks an app's spec against the policies of every group it is attached to. Admins pass
/// the dangerous-field check (never the image allowlist: that is a property of the group).
/// Returns a message naming the first problem.
pub fn check_spec(
    spec: &AppSpec,
    groups: &[String],
    policies: &BTreeMap<String, GroupPolicy>,
    admin: bool,
) -> Result<(), String> {
    for g in groups {
        let policy = policies.get(g);
        if !admin {
            for p in privileges_of(spec) {
                if !policy.is_some_and(|pol| pol.allow.contains(&p)) {
                    return Err(format!(
                        "`{}` is refused on device group `{g}`: only an admin may use it, unless the group's policy allows it",
                        p.as_str()
                    ));
                }
            }
        }
        if let Some(pol) = policy.filter(|p| !p.images.is_empty())
            && !pol
                .images
                .iter()
                .any(|e| image_allowed(e, &spec.docker_image))
        {
            return Err(format!(
                "image `{}` is not on the allowlist of device group `{g}`",
                spec.docker_image
            ));
        }
    }
    Ok(())
}

/// A join token: the secret an agent presents, plus (when the server uses TLS) the
/// SHA-256 fingerprint of the server's CA, so the agent can check whom it joins before
/// trusting it. Written `G10<64 hex>::<secret>` (after k3s's `K10<hash>::…`); a bare
/// secret (no fingerprint) is accepted for plain-HTTP servers and with `--ca-file`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinToken {
    pub ca_fingerprint: Option<String>,
    pub secret: String,
}

pub const JOIN_TOKEN_PREFIX: &str = "G10";

impl JoinToken {
    pub fn parse(s: &str) -> Result<JoinToken, String> {
        let s = s.trim();
        if let Some(rest) = s.strip_prefix(JOIN_TOKEN_PREFIX)
            && let Some((fp, secret)) = rest.split_once("::")
        {
            let fp = fp.to_ascii_lowercase();
            if fp.len() != 64 || !fp.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err("the join token's CA fingerprint must be 64 hex digits".into());
            }
            if secret.is_empty() {
                return Err("the join token has no secret after `::`".into());
            }
            return Ok(JoinToken {
                ca_fingerprint: Some(fp),
                secret: secret.to_string(),
            });
        }
        if s.is_empty() {
            return Err("the join token is empty".into());
        }
        Ok(JoinToken {
            ca_fingerprint: None,
            secret: s.to_string(),
        })
    }
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.ca_fingerprint {
            Some(fp) => write!(f, "{JOIN_TOKEN_PREFIX}{fp}::{}", self.secret),
            None => f.write_str(&self.secret),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grants(apps: &[(&str, Access)], groups: &[(&str, Access)]) -> Grants {
        Grants {
            apps: apps.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            device_groups: groups.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        }
    }

    fn subject(role: Role, g: Grants) -> Subject {
        Subject {
            name: "u".into(),
            role,
            grants: g,
        }
    }

    #[test]
    fn rw_implies_ro_and_groups_add_up() {
        let mut g = grants(&[("web", Access::Ro)], &[]);
        g.merge(&grants(&[("web", Access::Rw)], &[("edge", Access::Ro)]));
        g.merge(&grants(&[("web", Access::Ro)], &[]));
        let op = subject(Role::Operator, g);
        assert!(op.can_read_app("web", &[]));
        assert!(op.can_write_app("web", &[]));
        assert!(op.can_read_app("other", &["edge".into()]));
        assert!(!op.can_write_app("other", &["edge".into()]));
        assert!(!op.can_read_app("other", &["lab".into()]));
    }

    #[test]
    fn roles_cap_grants() {
        let g = grants(&[], &[(ANY, Access::Rw)]);
        assert!(!subject(Role::Viewer, g.clone()).can_write_app("a", &["x".into()]));
        assert!(subject(Role::Viewer, g.clone()).can_read_app("a", &["x".into()]));
        assert!(subject(Role::Operator, g).can_write_group("x"));
        let admin = subject(Role::Admin, Grants::default());
        assert!(admin.can_write_app("a", &[]) && admin.can_read_node(&[]));
        assert!(!subject(Role::Operator, Grants::default()).can_read_app("a", &["x".into()]));
    }

    #[test]
    fn join_tokens_round_trip() {
        let fp = "ab".repeat(32);
        let t = JoinToken::parse(&format!("G10{fp}::gus_join_x")).unwrap();
        assert_eq!(t.ca_fingerprint.as_deref(), Some(fp.as_str()));
        assert_eq!(t.secret, "gus_join_x");
        assert_eq!(JoinToken::parse(&t.to_string()).unwrap(), t);
        assert_eq!(JoinToken::parse("plain").unwrap().ca_fingerprint, None);
        assert!(JoinToken::parse("G10abc::x").is_err());
        assert!(JoinToken::parse(&format!("G10{fp}::")).is_err());
    }

    #[test]
    fn image_allowlist_entries() {
        assert!(image_allowed("127.0.0.1:5000/web", "127.0.0.1:5000/web:v2"));
        assert!(image_allowed("127.0.0.1:5000/web", "127.0.0.1:5000/web"));
        assert!(!image_allowed(
            "127.0.0.1:5000/web",
            "127.0.0.1:5000/webx:v2"
        ));
        assert!(!image_allowed("127.0.0.1:5000/web", "evil.io/web:v2"));
        assert!(image_allowed("web:v1", "web:v1"));
        assert!(!image_allowed("web:v1", "web:v2"));
        let d = "sha256:".to_string() + &"a".repeat(64);
        assert!(image_allowed(
            &format!("r.io/web@{d}"),
            &format!("r.io/web:v1@{d}")
        ));
        assert!(!image_allowed(&format!("r.io/web@{d}"), "r.io/web:v1"));
    }

    #[test]
    fn dangerous_fields_need_admin_or_policy() {
        let spec = crate::spec::parse_one(
            "a:\n  docker_image: x\n  privileged: true\n  volumes: [\"/etc:/host\"]\n",
            "a",
        )
        .unwrap();
        assert_eq!(
            privileges_of(&spec),
            vec![Privilege::Privileged, Privilege::HostVolumes]
        );
        let groups = vec!["g".to_string()];
        let mut policies = BTreeMap::new();
        assert!(check_spec(&spec, &groups, &policies, true).is_ok());
        let e = check_spec(&spec, &groups, &policies, false).unwrap_err();
        assert!(e.contains("privileged"), "{e}");
        policies.insert(
            "g".into(),
            GroupPolicy {
                group: "g".into(),
                allow: vec![Privilege::Privileged, Privilege::HostVolumes],
                images: vec!["y".into()],
            },
        );
        let e = check_spec(&spec, &groups, &policies, false).unwrap_err();
        assert!(e.contains("allowlist"), "{e}");
        policies.get_mut("g").unwrap().images = vec!["x".into()];
        assert!(check_spec(&spec, &groups, &policies, false).is_ok());
    }
}
