//! The app format: the seed's YAML (one file, top-level keys are app names) plus the
//! extensions Nebula's users asked for. Parsing and validation happen in one step, inside
//! deserialization, so every bad value is reported with its line and column by the YAML
//! parser (or by serde_json when the same spec arrives as JSON over the API).
//!
//! Every type here serializes to a form its own deserializer accepts, so a spec survives a
//! round trip through the store unchanged.
//!
//! Env values and ports depend on how they were written (`NO` is text, not false; `0o777` is
//! not a port): a YAML file gets a second pass for them, in the private module `written`.
//! Image references and port bindings have their grammars in [`crate::image`] and
//! [`crate::ports`]. The server re-checks a spec with [`AppSpec::validate`] and the groups of
//! a request with [`validate_groups`].

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, Visitor};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use thiserror::Error;

pub use crate::image::{ImageRef, validate_image};
pub use crate::ports::{PortMapping, Ports, Protocol};

/// Why a spec file or body was refused.
#[derive(Debug, Error)]
pub enum SpecError {
    #[error("{0}")]
    Yaml(String),
    #[error("invalid app spec: {0}")]
    Json(#[from] serde_json::Error),
    #[error("the file defines no apps")]
    Empty,
    #[error("app `{wanted}` is not in the file (it defines: {found})")]
    NotInFile { wanted: String, found: String },
    /// A spec that breaks a rule of the format (see [`AppSpec::validate`]).
    #[error("{0}")]
    Invalid(String),
}

/// One app: a container template and how many replicas each device runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppSpec {
    /// `registry:port/name[:tag]`; no tag means `latest`.
    #[serde(deserialize_with = "image_ref")]
    pub docker_image: String,
    /// Values are plain (`K: v`) or secret (`K: {secret: v}`): see [`EnvValue`].
    #[serde(default, deserialize_with = "env_map")]
    pub env_vars: BTreeMap<String, EnvValue>,
    #[serde(default)]
    pub volumes: Vec<Volume>,
    /// Replica `i` (0-based) binds every host port plus `i`.
    #[serde(default)]
    pub starting_ports: Ports,
    #[serde(default = "yes")]
    pub running: bool,
    #[serde(default = "default_networks", deserialize_with = "networks")]
    pub networks: Vec<String>,
    #[serde(default)]
    pub rolling_restart: bool,
    /// Containers on every member of the app's groups (the seed's meaning); unset means
    /// one each. Exclusive with `replicas`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub containers_per: Option<ContainersPer>,
    /// Place this many containers in total on the best-scoring eligible nodes of the
    /// app's groups instead of on every member (see `schedule`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u32>,
    /// With `replicas`: at most this many on one node (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_per_node: Option<u32>,
    /// With `replicas`: only nodes carrying every one of these labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    #[serde(default)]
    pub privileged: bool,
    #[serde(default)]
    pub devices: Vec<Device>,
    /// Overrides the image's CMD. A string is split like a shell would (no shell runs it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Command>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Command>,
    /// The working directory inside the container (`docker run -w`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// The user the command runs as, `NAME`, `UID` or `UID:GID` (`docker run -u`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Under node pressure, lower priorities are throttled and stopped first (default 0).
    #[serde(default, skip_serializing_if = "is_zero_i32")]
    pub priority: i32,
    /// Never stopped (nor throttled) by node pressure.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub critical: bool,
    /// CPU limit in cores, e.g. `0.5`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<Cpus>,
    /// Memory limit, e.g. `256m`, `1g`, or bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<ByteSize>,
    #[serde(default)]
    pub restart: RestartPolicy,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<HealthCheck>,
    /// Staged updates: a new revision goes to the devices in waves (see `rollout`).
    /// Without it every device takes a change at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<crate::rollout::RolloutPolicy>,
    /// Deploy once per client (Sinfonia's recipe) on one site of the app's groups instead
    /// of on every member: see `sites` and `lease`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipe: Option<crate::sites::Recipe>,
}

pub(crate) fn yes() -> bool {
    true
}

/// Nebula's documented default: every container joins the `nebula` bridge.
pub(crate) fn default_networks() -> Vec<String> {
    vec!["nebula".to_string()]
}

impl AppSpec {
    /// Checks the rules of the format that a value of this type does not enforce by itself:
    /// the image reference, env names and values, volumes, port conflicts and networks.
    /// Parsing (YAML or JSON) already applies them; the server calls this too before it
    /// stores a spec, so no surface that builds a spec can skip them.
    pub fn validate(&self) -> Result<(), SpecError> {
        let invalid = SpecError::Invalid;
        validate_image(&self.docker_image).map_err(invalid)?;
        for (k, v) in &self.env_vars {
            check_env_name(k).map_err(invalid)?;
            check_env_value(k, v).map_err(invalid)?;
        }
        for v in &self.volumes {
            Volume::parse(&v.0).map_err(invalid)?;
        }
        self.starting_ports
            .check()
            .map_err(|e| invalid(format!("starting_ports: {e}")))?;
        check_networks(&self.networks).map_err(invalid)?;
        self.check_placement().map_err(invalid)?;
        if let Some(r) = &self.recipe {
            if self.replicas.is_some() || self.containers_per.is_some() {
                return Err(invalid(
                    "recipe cannot be combined with replicas or containers_per: a recipe app \
                     runs one instance per client deployment"
                        .into(),
                ));
            }
            r.validate().map_err(invalid)?;
        }
        if let Some(r) = &self.rollout {
            r.validate().map_err(invalid)?;
        }
        Ok(())
    }

    /// Whether the app is deployed per client (a `recipe:` block) rather than run on the
    /// members of its groups.
    pub fn is_recipe(&self) -> bool {
        self.recipe.is_some()
    }

    /// How many containers each member runs (apps without `replicas`).
    pub fn per_node(&self) -> ContainersPer {
        self.containers_per.unwrap_or_default()
    }

    /// Whether the app is placed by the scheduler (`replicas`) rather than run on every
    /// member of its groups.
    pub fn is_replicated(&self) -> bool {
        self.replicas.is_some()
    }

    fn check_placement(&self) -> Result<(), String> {
        match self.replicas {
            Some(_) if self.containers_per.is_some() => Err(
                "replicas and containers_per cannot both be set: replicas places N containers \
                 in total on the best nodes, containers_per runs them on every member"
                    .into(),
            ),
            Some(n) if n > MAX_REPLICAS => {
                Err(format!("replicas: at most {MAX_REPLICAS}, got {n}"))
            }
            None if self.max_per_node.is_some() || !self.node_selector.is_empty() => {
                Err("max_per_node and node_selector only apply with replicas".into())
            }
            _ if self.max_per_node == Some(0) => Err("max_per_node must be at least 1".into()),
            _ => {
                for (k, v) in &self.node_selector {
                    if k.is_empty() || k.len() > 128 || v.len() > 1024 {
                        return Err(format!(
                            "node_selector `{k}`: keys 1-128 and values up to 1024 characters"
                        ));
                    }
                }
                Ok(())
            }
        }
    }
}

/// The most replicas one replicated app may ask for.
pub const MAX_REPLICAS: u32 = 10_000;

/// The most device groups one app or one node may be attached to, and so the most one
/// request may name.
pub const MAX_GROUPS: usize = 64;

/// Checks the device groups of one request: at most [`MAX_GROUPS`], each a valid name.
/// Returns them without duplicates, in order.
pub fn validate_groups(groups: &[String]) -> Result<Vec<String>, String> {
    if groups.len() > MAX_GROUPS {
        return Err(format!(
            "groups: at most {MAX_GROUPS} device groups, got {}",
            groups.len()
        ));
    }
    let mut out: Vec<String> = Vec::with_capacity(groups.len());
    for g in groups {
        crate::names::validate("group", g).map_err(|e| e.to_string())?;
        if !out.contains(g) {
            out.push(g.clone());
        }
    }
    Ok(out)
}

/// The largest spec file accepted.
pub const MAX_SPEC_BYTES: usize = 4 * 1024 * 1024;

/// Limits for spec files: far above any real spec, far below what would hurt. An alias
/// bomb ("billion laughs") or a deeply nested document is refused before it costs memory
/// or stack, and errors carry line and column but no quoted source line, which could hold
/// a secret.
pub(crate) fn yaml_options() -> serde_saphyr::Options {
    // The types are non-exhaustive: start from the defaults and tighten.
    let mut budget = serde_saphyr::Budget::default();
    budget.max_depth = 32;
    budget.max_aliases = 1_000;
    budget.max_anchors = 1_000;
    budget.max_nodes = 200_000;
    budget.max_documents = 1;
    budget.max_total_scalar_bytes = MAX_SPEC_BYTES;
    let mut aliases = serde_saphyr::options::AliasLimits::default();
    aliases.max_total_replayed_events = 100_000;
    aliases.max_replay_stack_depth = 16;
    aliases.max_alias_expansions_per_anchor = 1_000;
    let mut o = serde_saphyr::Options::default();
    o.with_snippet = false;
    o.budget = Some(budget);
    o.alias_limits = aliases;
    // `.inf` and `.nan` reach the visitor as floats: an env value keeps its text (see
    // `written`), and numeric fields refuse them by their own range checks.
    o.non_finite_float_policy = serde_saphyr::NonFiniteFloatPolicy::PassThrough;
    o
}

/// A parse error as a person can act on it. serde-saphyr names a wrong value's type and
/// place but not its key (`invalid u32 at line 3, column 13`); when that line is a block
/// mapping entry (`key: value`, also as a sequence item) and the place is in its value, the
/// key is put first: ``replicas: invalid u32 at line 3, column 13``.
pub(crate) fn yaml_error(e: serde_saphyr::Error, yaml: &str) -> String {
    let msg = e.to_string();
    if msg.contains('`') {
        return msg;
    }
    match key_at(&msg, yaml) {
        Some(key) => format!("`{key}`: {msg}"),
        None => msg,
    }
}

/// The key of the mapping entry whose value holds the place `… at line L, column C` names.
fn key_at<'a>(msg: &str, yaml: &'a str) -> Option<&'a str> {
    let (_, place) = msg.rsplit_once(" at line ")?;
    let (line, column) = place.split_once(", column ")?;
    let digits = |s: &str| -> Option<usize> {
        let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        s[..end].parse().ok()
    };
    let (line, column) = (digits(line)?, digits(column)?);
    let text = yaml.lines().nth(line.checked_sub(1)?)?;
    let body = text.trim_start();
    let indent = text.len() - body.len();
    let (body, indent) = match body.strip_prefix("- ") {
        Some(rest) => (rest.trim_start(), text.len() - rest.trim_start().len()),
        None => (body, indent),
    };
    let colon = body.find(": ")?;
    let key = &body[..colon];
    let plain = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    // Columns count from 1; the value starts after `key: `.
    (plain && column > indent + colon + 1).then_some(key)
}

/// Parses a spec file and returns its apps in file order.
pub fn parse_file(yaml: &str) -> Result<Vec<(String, AppSpec)>, SpecError> {
    if yaml.len() > MAX_SPEC_BYTES {
        return Err(SpecError::Yaml(format!(
            "the file is larger than {} KiB",
            MAX_SPEC_BYTES / 1024
        )));
    }
    // The file as written (see `written`): its ports are checked first, so `0o777` is
    // named as written rather than as the 511 the typed parse would make of it.
    let written = crate::written::read(yaml, yaml_options());
    if let Ok(w) = &written {
        w.check_ports().map_err(SpecError::Yaml)?;
    }
    let apps: Vec<(AppName, AppSpec)> =
        serde_saphyr::from_str_with_options::<OrderedApps>(yaml, yaml_options())
            .map_err(|e| SpecError::Yaml(yaml_error(e, yaml)))?
            .0;
    // The same parser read the same text: it cannot fail once and succeed once.
    let written = written.map_err(SpecError::Yaml)?;
    if apps.is_empty() {
        return Err(SpecError::Empty);
    }
    apps.into_iter()
        .map(|(n, mut s)| {
            written
                .restore_env(&n.0, &mut s.env_vars)
                .map_err(SpecError::Yaml)?;
            s.check_placement()
                .map_err(|e| SpecError::Yaml(format!("app `{}`: {e}", n.0)))?;
            if let Some(r) = &s.rollout {
                r.validate()
                    .map_err(|e| SpecError::Yaml(format!("app `{}`: {e}", n.0)))?;
            }
            Ok((n.0, s))
        })
        .collect()
}

/// Parses a spec file and picks the app called `name` (the CLI's `-n`).
pub fn parse_one(yaml: &str, name: &str) -> Result<AppSpec, SpecError> {
    crate::names::pick(parse_file(yaml)?, name)
        .map_err(|(wanted, found)| SpecError::NotInFile { wanted, found })
}

/// Parses one spec sent as JSON over the API.
pub fn parse_json(body: &[u8]) -> Result<AppSpec, SpecError> {
    Ok(serde_json::from_slice(body)?)
}

/// The file's top level, kept in order and with names checked where they stand.
struct OrderedApps(Vec<(AppName, AppSpec)>);

impl<'de> Deserialize<'de> for OrderedApps {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OrderedApps;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map from app name to app spec")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<OrderedApps, A::Error> {
                let mut out: Vec<(AppName, AppSpec)> = Vec::new();
                while let Some(name) = m.next_key::<AppName>()? {
                    if out.iter().any(|(n, _)| n.0 == name.0) {
                        return Err(de::Error::custom(format!(
                            "app `{}` is defined twice",
                            name.0
                        )));
                    }
                    let spec = m.next_value::<AppSpec>()?;
                    out.push((name, spec));
                }
                Ok(OrderedApps(out))
            }
            fn visit_unit<E: de::Error>(self) -> Result<OrderedApps, E> {
                Ok(OrderedApps(Vec::new()))
            }
        }
        d.deserialize_any(V)
    }
}

struct AppName(String);

impl<'de> Deserialize<'de> for AppName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        crate::names::validate("app", &s).map_err(de::Error::custom)?;
        Ok(AppName(s))
    }
}

pub(crate) fn image_ref<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    validate_image(&s).map_err(de::Error::custom)?;
    Ok(s)
}

/// The env vars: names and values checked (see [`check_env_name`], [`check_env_value`]),
/// and a value required (see [`EnvVisitor`]).
pub(crate) fn env_map<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, EnvValue>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = BTreeMap<String, EnvValue>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a map of env var names to values")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some(k) = m.next_key::<String>()? {
                check_env_name(&k).map_err(de::Error::custom)?;
                let v = m.next_value_seed(EnvSeed(&k))?;
                check_env_value(&k, &v).map_err(de::Error::custom)?;
                if out.insert(k.clone(), v).is_some() {
                    return Err(de::Error::custom(format!("env var `{k}` is set twice")));
                }
            }
            Ok(out)
        }
    }
    d.deserialize_map(V)
}

/// An env var name: not empty, no `=`, no control characters (NUL would cut it short).
pub fn check_env_name(k: &str) -> Result<(), String> {
    if k.is_empty() {
        return Err("an env var name is empty".into());
    }
    if k.contains('=') {
        return Err(format!("env var name `{k}` contains `=`"));
    }
    if let Some(c) = k.chars().find(|c| c.is_control()) {
        return Err(format!(
            "env var name `{}` contains the control character U+{:04X}",
            k.escape_debug(),
            u32::from(c)
        ));
    }
    Ok(())
}

/// An env value: no control characters but tab and newline (multi-line values such as
/// certificates are legitimate; a NUL would silently cut the value short in the container).
/// The error names the variable and the character, never the value: it may be a secret.
pub fn check_env_value(k: &str, v: &EnvValue) -> Result<(), String> {
    let (EnvValue::Plain(text) | EnvValue::Secret(text)) = v else {
        return Ok(());
    };
    match text
        .chars()
        .find(|&c| c.is_control() && c != '\t' && c != '\n')
    {
        Some(c) => Err(format!(
            "env var `{k}`: the value contains the control character U+{:04X} (only tab and newline are allowed)",
            u32::from(c)
        )),
        None => Ok(()),
    }
}

/// One env value. In YAML and JSON:
///
/// ```yaml
/// env_vars:
///   CACHE: "64"                 # plain: stored, shown and logged as is
///   DB_PASS: {secret: hunter2}  # secret: encrypted at rest, never shown back
/// ```
///
/// The server keeps a secret sealed in its store (`{sealed: …}`, written only by the
/// server), plain in memory so it can deliver it to the nodes that run the app, and shows
/// it to people only as `{hidden: true}`.
#[derive(Clone, PartialEq, Eq)]
pub enum EnvValue {
    Plain(String),
    Secret(String),
    /// Ciphertext, as the server stores it.
    Sealed(String),
    /// What the API shows in place of a secret.
    Hidden,
}

impl EnvValue {
    pub fn is_secret(&self) -> bool {
        !matches!(self, EnvValue::Plain(_))
    }

    /// A copy safe to show: secrets become [`EnvValue::Hidden`].
    pub fn redacted(&self) -> EnvValue {
        match self {
            EnvValue::Plain(v) => EnvValue::Plain(v.clone()),
            _ => EnvValue::Hidden,
        }
    }
}

impl fmt::Debug for EnvValue {
    // Never print a secret, even in a debug dump or a panic message.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EnvValue::Plain(v) => write!(f, "{v:?}"),
            EnvValue::Secret(_) => f.write_str("Secret(***)"),
            EnvValue::Sealed(_) => f.write_str("Sealed(…)"),
            EnvValue::Hidden => f.write_str("Hidden"),
        }
    }
}

impl From<&str> for EnvValue {
    fn from(v: &str) -> EnvValue {
        EnvValue::Plain(v.to_string())
    }
}

impl PartialEq<&str> for EnvValue {
    fn eq(&self, other: &&str) -> bool {
        matches!(self, EnvValue::Plain(v) if v == other)
    }
}

impl Serialize for EnvValue {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            EnvValue::Plain(v) => s.serialize_str(v),
            EnvValue::Secret(v) => {
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("secret", v)?;
                m.end()
            }
            EnvValue::Sealed(v) => {
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("sealed", v)?;
                m.end()
            }
            EnvValue::Hidden => {
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("hidden", &true)?;
                m.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for EnvValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(EnvVisitor(None))
    }
}

/// The value of env var `.0`: errors name the variable, and are raised while the value is
/// read, so the YAML parser gives them the value's own line and column.
struct EnvSeed<'a>(&'a str);

impl<'de> DeserializeSeed<'de> for EnvSeed<'_> {
    type Value = EnvValue;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<EnvValue, D::Error> {
        d.deserialize_any(EnvVisitor(Some(self.0)))
    }
}

struct EnvVisitor<'a>(Option<&'a str>);

impl<'de> Visitor<'de> for EnvVisitor<'_> {
    type Value = EnvValue;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string, number or boolean, or {secret: VALUE}")
    }
    // YAML reads `~`, `null` and nothing at all as null; an env var without a value
    // is more likely a mistake than a wish for the empty string.
    fn visit_unit<E: de::Error>(self) -> Result<EnvValue, E> {
        let name = self.0.map(|k| format!(" `{k}`")).unwrap_or_default();
        Err(E::custom(format!(
            "env var{name} has no value (`~`, `null` or nothing); write \"\" for an empty string"
        )))
    }
    fn visit_none<E: de::Error>(self) -> Result<EnvValue, E> {
        self.visit_unit()
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<EnvValue, E> {
        Ok(EnvValue::Plain(v.to_string()))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<EnvValue, E> {
        Ok(EnvValue::Plain(v.to_string()))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<EnvValue, E> {
        Ok(EnvValue::Plain(v.to_string()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<EnvValue, E> {
        Ok(EnvValue::Plain(v.to_string()))
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<EnvValue, E> {
        Ok(EnvValue::Plain(v.to_string()))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<EnvValue, A::Error> {
        // Errors here never quote the value: it may be a secret.
        let Some(key) = m.next_key::<String>()? else {
            return Err(de::Error::custom(
                "an empty map is not an env value; write {secret: VALUE}",
            ));
        };
        let v = match key.as_str() {
            "secret" => EnvValue::Secret(
                m.next_value::<Scalar>()
                    .map_err(|_| de::Error::custom("`secret` takes a string, number or boolean"))?
                    .0,
            ),
            "sealed" => EnvValue::Sealed(
                m.next_value::<String>()
                    .map_err(|_| de::Error::custom("`sealed` takes a string"))?,
            ),
            "hidden" => {
                m.next_value::<bool>()?;
                EnvValue::Hidden
            }
            other => {
                return Err(de::Error::custom(format!(
                    "unknown env value form `{other}`: write {{secret: VALUE}}"
                )));
            }
        };
        if m.next_key::<String>()?.is_some() {
            return Err(de::Error::custom(
                "an env value map takes exactly one key, `secret`",
            ));
        }
        Ok(v)
    }
}

/// A YAML/JSON scalar taken as text.
struct Scalar(String);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

pub(crate) fn networks<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let list = Vec::<String>::deserialize(d)?;
    if list.is_empty() {
        return Ok(default_networks());
    }
    check_networks(&list).map_err(de::Error::custom)?;
    Ok(list)
}

/// Network names as Docker takes them; `host` and `none` are modes and stand alone.
pub fn check_networks(list: &[String]) -> Result<(), String> {
    for (i, n) in list.iter().enumerate() {
        let ok = !n.is_empty()
            && n.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
        if !ok {
            return Err(format!("network name `{}` is invalid", n.escape_debug()));
        }
        if (n == "host" || n == "none") && (i != 0 || list.len() != 1) {
            return Err(format!(
                "network `{n}` is a mode: it must be the only network listed"
            ));
        }
    }
    Ok(())
}

/// How the container attaches to the network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NetworkMode {
    Host,
    None,
    /// User-defined bridges, created on the device when missing; the first is joined at
    /// creation, the rest connected after.
    Bridges(Vec<String>),
}

impl NetworkMode {
    pub fn from_list(list: &[String]) -> NetworkMode {
        match list.first().map(String::as_str) {
            Some("host") => NetworkMode::Host,
            Some("none") => NetworkMode::None,
            _ => NetworkMode::Bridges(list.to_vec()),
        }
    }
}

/// A `docker run -v` string: `host:container[:options]`, host an absolute path or a named
/// volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume(pub String);

impl Volume {
    pub fn host(&self) -> &str {
        self.0.split(':').next().unwrap_or_default()
    }
    /// A host path, as opposed to a named volume.
    pub fn is_host_path(&self) -> bool {
        self.host().starts_with('/')
    }
}

impl Serialize for Volume {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Volume {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Volume::parse(&s).map_err(de::Error::custom)
    }
}

impl Volume {
    /// Checks a `host:container[:options]` string. The host side is an absolute path or the
    /// name of a volume (`[A-Za-z0-9][A-Za-z0-9_.-]+`, Docker's rule): a relative path
    /// such as `./data` would be taken by Docker for a volume name, or refused.
    pub fn parse(s: &str) -> Result<Volume, String> {
        let bad = |why: &str| Err(format!("volume `{}`: {why}", s.escape_debug()));
        if s.chars().any(char::is_control) {
            return bad("it contains a control character");
        }
        let parts: Vec<&str> = s.split(':').collect();
        if !(2..=3).contains(&parts.len()) {
            return bad("expected host:container[:options]");
        }
        let host = parts[0];
        if host.is_empty() {
            return bad("the host side is empty");
        }
        let volume_name = host.len() >= 2
            && host.starts_with(|c: char| c.is_ascii_alphanumeric())
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
        if !host.starts_with('/') && !volume_name {
            return bad(&format!(
                "the host side `{host}` must be an absolute path or a volume name ([A-Za-z0-9][A-Za-z0-9_.-]+)"
            ));
        }
        if !parts[1].starts_with('/') {
            return bad("the container path must be absolute");
        }
        if let Some(opts) = parts.get(2) {
            let known = [
                "ro", "rw", "z", "Z", "shared", "slave", "private", "rshared", "rslave",
                "rprivate", "nocopy",
            ];
            if let Some(o) = opts.split(',').find(|o| !known.contains(o)) {
                return bad(&format!("unknown option `{o}`"));
            }
        }
        Ok(Volume(s.to_string()))
    }
}

/// A `docker run --device` string: `host[:container[:permissions]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub host: String,
    pub container: String,
    pub permissions: String,
}

impl Serialize for Device {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!(
            "{}:{}:{}",
            self.host, self.container, self.permissions
        ))
    }
}

impl<'de> Deserialize<'de> for Device {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let parts: Vec<&str> = s.split(':').collect();
        let bad = |why: &str| de::Error::custom(format!("device `{s}`: {why}"));
        if parts.len() > 3 || !parts[0].starts_with('/') {
            return Err(bad("expected /host/path[:/container/path[:rwm]]"));
        }
        let container = parts.get(1).copied().unwrap_or(parts[0]);
        if !container.starts_with('/') {
            return Err(bad("the container path must be absolute"));
        }
        let permissions = parts.get(2).copied().unwrap_or("rwm");
        if permissions.is_empty() || !permissions.chars().all(|c| "rwm".contains(c)) {
            return Err(bad("permissions must be made of r, w and m"));
        }
        Ok(Device {
            host: parts[0].to_string(),
            container: container.to_string(),
            permissions: permissions.to_string(),
        })
    }
}

/// `containers_per`: exactly one of `server`/`instance` (N per device), `cpu` (N per core)
/// or `memory`/`mem` (one per N MB of the device's memory).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ContainersPer {
    Server(u32),
    Cpu(f64),
    MemoryMb(u64),
}

impl Default for ContainersPer {
    fn default() -> Self {
        ContainersPer::Server(1)
    }
}

/// The most replicas one app may ask of one device, whatever the device's size.
pub const MAX_REPLICAS_PER_NODE: u32 = 1000;

impl ContainersPer {
    /// How many replicas a device with `cpus` cores and `memory_mb` of memory runs.
    pub fn replicas(&self, cpus: u32, memory_mb: u64) -> u32 {
        let n = match *self {
            ContainersPer::Server(n) => n,
            ContainersPer::Cpu(per_core) => (f64::from(cpus) * per_core).floor() as u32,
            ContainersPer::MemoryMb(mb) => (memory_mb / mb.max(1)) as u32,
        };
        n.min(MAX_REPLICAS_PER_NODE)
    }
}

impl Serialize for ContainersPer {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(1))?;
        match *self {
            ContainersPer::Server(n) => m.serialize_entry("server", &n)?,
            ContainersPer::Cpu(n) => m.serialize_entry("cpu", &n)?,
            ContainersPer::MemoryMb(n) => m.serialize_entry("memory", &n)?,
        }
        m.end()
    }
}

impl<'de> Deserialize<'de> for ContainersPer {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let m = BTreeMap::<String, f64>::deserialize(d)?;
        if m.len() != 1 {
            return Err(de::Error::custom(
                "containers_per takes exactly one of server, instance, cpu, memory",
            ));
        }
        let (k, v) = m.into_iter().next().expect("one entry, checked above");
        if !v.is_finite() || v < 0.0 {
            return Err(de::Error::custom(format!(
                "containers_per.{k} must be a non-negative number"
            )));
        }
        let whole = |v: f64| -> Result<u64, D::Error> {
            if v.fract() != 0.0 {
                return Err(de::Error::custom(format!(
                    "containers_per.{k} must be a whole number"
                )));
            }
            Ok(v as u64)
        };
        match k.as_str() {
            "server" | "instance" => {
                let n = whole(v)?;
                if n > u64::from(MAX_REPLICAS_PER_NODE) {
                    return Err(de::Error::custom(format!(
                        "containers_per.{k} is at most {MAX_REPLICAS_PER_NODE}"
                    )));
                }
                Ok(ContainersPer::Server(n as u32))
            }
            "cpu" => Ok(ContainersPer::Cpu(v)),
            "memory" | "mem" => match whole(v)? {
                0 => Err(de::Error::custom(
                    "containers_per.memory must be at least 1 (MB)",
                )),
                n => Ok(ContainersPer::MemoryMb(n)),
            },
            other => Err(de::Error::custom(format!(
                "unknown containers_per key `{other}`, expected server, instance, cpu or memory"
            ))),
        }
    }
}

/// A command line: a list, or a string split the way a shell splits words.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Command(pub Vec<String>);

impl<'de> Deserialize<'de> for Command {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Line(String),
            Words(Vec<String>),
        }
        let words = match Raw::deserialize(d)
            .map_err(|_| de::Error::custom("expected a command string or a list of strings"))?
        {
            Raw::Line(s) => split_words(&s).map_err(de::Error::custom)?,
            Raw::Words(w) => w,
        };
        if words.is_empty() {
            return Err(de::Error::custom("the command is empty"));
        }
        Ok(Command(words))
    }
}

/// Splits a command line into words: whitespace separates, single quotes keep everything,
/// double quotes keep everything but `\"` and `\\`, a backslash outside quotes escapes.
pub fn split_words(s: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => cur.push(c),
                        None => return Err(format!("unclosed single quote in `{s}`")),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\')) => cur.push(c),
                            Some(c) => {
                                cur.push('\\');
                                cur.push(c);
                            }
                            None => return Err(format!("unclosed double quote in `{s}`")),
                        },
                        Some(c) => cur.push(c),
                        None => return Err(format!("unclosed double quote in `{s}`")),
                    }
                }
            }
            '\\' => {
                in_word = true;
                if let Some(c) = chars.next() {
                    cur.push(c);
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    Ok(words)
}

/// A CPU limit in cores.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(transparent)]
pub struct Cpus(pub f64);

impl Cpus {
    /// Docker's `NanoCpus`.
    pub fn nano(&self) -> i64 {
        (self.0 * 1e9).round() as i64
    }
}

impl<'de> Deserialize<'de> for Cpus {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = f64::deserialize(d)?;
        if !v.is_finite() || !(0.01..=1024.0).contains(&v) {
            return Err(de::Error::custom(format!(
                "cpus {v} must be between 0.01 and 1024"
            )));
        }
        Ok(Cpus(v))
    }
}

/// A size in bytes, written as a number of bytes or with a binary unit: `512k`, `256m`, `1g`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct ByteSize(pub u64);

/// Docker refuses memory limits under 6 MiB.
pub const MIN_MEMORY: u64 = 6 * 1024 * 1024;

impl ByteSize {
    pub fn parse(s: &str) -> Result<u64, String> {
        let t = s.trim().to_ascii_lowercase();
        let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(digits_end);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("size `{s}` must start with a whole number"))?;
        let mult: u64 = match unit.trim() {
            "" | "b" => 1,
            "k" | "kb" | "ki" | "kib" => 1 << 10,
            "m" | "mb" | "mi" | "mib" => 1 << 20,
            "g" | "gb" | "gi" | "gib" => 1 << 30,
            u => {
                return Err(format!(
                    "size `{s}` has an unknown unit `{u}` (use k, m or g)"
                ));
            }
        };
        n.checked_mul(mult)
            .ok_or_else(|| format!("size `{s}` is too large"))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let Scalar(s) = Scalar::deserialize(d)?;
        let n = ByteSize::parse(&s).map_err(de::Error::custom)?;
        if n < MIN_MEMORY {
            return Err(de::Error::custom(format!(
                "memory `{s}` is below Docker's minimum of 6m"
            )));
        }
        Ok(ByteSize(n))
    }
}

/// What happens when a container exits. The agent honours it too: with `no`, an exited
/// container is left alone; with `on-failure`, only a non-zero exit is restarted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    No,
    Always,
    #[default]
    UnlessStopped,
    OnFailure,
}

impl RestartPolicy {
    pub fn as_docker(&self) -> &'static str {
        match self {
            RestartPolicy::No => "no",
            RestartPolicy::Always => "always",
            RestartPolicy::UnlessStopped => "unless-stopped",
            RestartPolicy::OnFailure => "on-failure",
        }
    }
}

/// A container health check, run by Docker inside the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// A string runs through the image's shell (`CMD-SHELL`); a list runs directly (`CMD`).
    pub test: HealthTest,
    #[serde(default = "default_interval")]
    pub interval: Duration,
    #[serde(default = "default_timeout")]
    pub timeout: Duration,
    #[serde(default = "default_retries")]
    pub retries: u32,
    #[serde(default = "default_start_period")]
    pub start_period: Duration,
}

fn default_interval() -> Duration {
    Duration(10_000)
}
fn default_timeout() -> Duration {
    Duration(5_000)
}
fn default_retries() -> u32 {
    3
}
fn default_start_period() -> Duration {
    Duration(0)
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum HealthTest {
    Shell(String),
    Exec(Vec<String>),
}

impl HealthTest {
    /// Docker's `Healthcheck.Test` array.
    pub fn as_docker(&self) -> Vec<String> {
        match self {
            HealthTest::Shell(s) => vec!["CMD-SHELL".into(), s.clone()],
            HealthTest::Exec(v) => std::iter::once("CMD".to_string())
                .chain(v.iter().cloned())
                .collect(),
        }
    }
}

/// A duration in milliseconds, written `500ms`, `5s`, `2m`, `1h` or as whole seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Duration(pub u64);

impl Duration {
    pub fn parse(s: &str) -> Result<u64, String> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("duration `{s}` must start with a whole number"))?;
        let mult = match unit {
            "ms" => 1,
            "" | "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            u => {
                return Err(format!(
                    "duration `{s}` has an unknown unit `{u}` (use ms, s, m or h)"
                ));
            }
        };
        n.checked_mul(mult)
            .ok_or_else(|| format!("duration `{s}` is too large"))
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{}ms", self.0))
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let Scalar(s) = Scalar::deserialize(d)?;
        Duration::parse(&s).map(Duration).map_err(de::Error::custom)
    }
}

fn is_zero_i32(v: &i32) -> bool {
    *v == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: &str = r#"
test_linreg:
    docker_image: "172.31.17.1:5000/test_linreg"
    env_vars:
        CACHE: "64"
        NETRESTRICT: "0.0.0.0/0"
    networks:
        - "nebula"
    volumes:
      - "/tmp/:/tmp/1"
      - "/var/tmp/:/var/tmp/1:rw"
    starting_ports:
      - 9000: 9000
      - 30303: 30303
    running: True
    rolling_restart: True
    containers_per:
        server: 1
    privileged: False
    devices: []
"#;

    #[test]
    fn parses_the_seed_file() {
        let spec = parse_one(SEED, "test_linreg").unwrap();
        assert_eq!(spec.docker_image, "172.31.17.1:5000/test_linreg");
        assert_eq!(spec.env_vars["CACHE"], "64");
        assert_eq!(spec.volumes.len(), 2);
        assert_eq!(
            spec.starting_ports.0,
            vec![PortMapping::tcp(9000, 9000), PortMapping::tcp(30303, 30303)]
        );
        assert!(spec.running && spec.rolling_restart && !spec.privileged);
        assert_eq!(spec.per_node(), ContainersPer::Server(1));
        assert_eq!(spec.networks, vec!["nebula"]);
        assert_eq!(spec.restart, RestartPolicy::UnlessStopped);
    }

    #[test]
    fn round_trips_through_json() {
        let yaml = format!(
            "{SEED}    command: \"sh -c 'echo hi'\"\n    cpus: 0.5\n    memory: 64m\n    restart: on-failure\n    labels: {{tier: web}}\n    healthcheck: {{test: \"true\", interval: 2s}}\n    devices: [\"/dev/null:/dev/xnull:rw\"]\n"
        )
        .replace("    devices: []\n", "");
        let spec = parse_one(&yaml, "test_linreg").unwrap();
        let json = serde_json::to_vec(&spec).unwrap();
        assert_eq!(parse_json(&json).unwrap(), spec);
        assert_eq!(spec.command.unwrap().0, vec!["sh", "-c", "echo hi"]);
        assert_eq!(spec.memory, Some(ByteSize(64 << 20)));
    }

    fn err(yaml: &str) -> String {
        parse_file(yaml).unwrap_err().to_string()
    }

    #[test]
    fn unknown_field_is_named_with_its_line() {
        let e = err("a:\n  docker_image: x\n  docker_imag: y\n");
        assert!(e.contains("unknown field `docker_imag`"), "{e}");
        assert!(e.contains("line 3, column 3"), "{e}");
    }

    #[test]
    fn bad_values_carry_line_and_column() {
        let cases = [
            (
                "a:\n  docker_image: x\n  starting_ports:\n    - 9000: 99999\n",
                "out of range",
            ),
            ("a:\n  docker_image: x\n  running: maybe\n", "line 3"),
            (
                "a:\n  docker_image: x\n  containers_per: {gpu: 1}\n",
                "unknown containers_per key `gpu`",
            ),
            ("a:\n  docker_image: x\n  memory: 12q\n", "unknown unit"),
            (
                "a:\n  docker_image: x\n  volumes: [\"/tmp\"]\n",
                "volume `/tmp`",
            ),
            ("a:\n  docker_image: X/Y\n", "lowercase"),
            (
                "a:\n  docker_image: x\n  networks: [nebula, host]\n",
                "only network",
            ),
            ("a:\n  docker_image: x\n  cpus: 0\n", "cpus"),
            ("a:\n  docker_image: x\n  cpus: .inf\n", "cpus"),
            (
                "a:\n  docker_image: x\n  containers_per: {cpu: .nan}\n",
                "non-negative",
            ),
            ("a.b:\n  docker_image: x\n", "invalid app name"),
        ];
        for (yaml, want) in cases {
            let e = err(yaml);
            assert!(e.contains(want), "{yaml:?} gave {e}");
            assert!(e.contains("line "), "{yaml:?} gave no position: {e}");
        }
    }

    #[test]
    fn a_wrong_type_names_its_key() {
        let e = err("a:\n  docker_image: x\n  replicas: \"two\"\n");
        assert!(e.starts_with("`replicas`: "), "{e}");
        assert!(e.contains("line 3"), "{e}");
        let e = err("a:\n  docker_image: x\n  running: maybe\n");
        assert!(e.starts_with("`running`: "), "{e}");
        // Not a `key: value` line: left as it was.
        let e = err("a:\n  docker_image: x\n  replicas:\n    - 1\n");
        assert!(!e.starts_with('`'), "{e}");
    }

    #[test]
    fn missing_image_and_empty_files_are_refused() {
        assert!(err("a:\n  running: true\n").contains("docker_image"));
        assert!(matches!(parse_file(""), Err(SpecError::Empty)));
        assert!(matches!(
            parse_one(SEED, "other"),
            Err(SpecError::NotInFile { .. })
        ));
    }

    #[test]
    fn ports_accept_every_nebula_form() {
        let spec = parse_one(
            "a:\n  docker_image: x\n  starting_ports: [80, {\"81\": \"8080\"}, {82: 8082}]\n",
            "a",
        )
        .unwrap();
        let hosts: Vec<_> = spec
            .starting_ports
            .0
            .iter()
            .map(|p| (p.host, p.container))
            .collect();
        assert_eq!(hosts, vec![(80, 80), (81, 8080), (82, 8082)]);
    }

    #[test]
    fn secret_env_values() {
        let spec = parse_one(
            "a:\n  docker_image: x\n  env_vars: {PLAIN: 1, PASS: {secret: hunter2}}\n",
            "a",
        )
        .unwrap();
        assert_eq!(spec.env_vars["PLAIN"], "1");
        assert_eq!(spec.env_vars["PASS"], EnvValue::Secret("hunter2".into()));
        // JSON keeps the form, so the CLI can send it and the server read it back.
        let json = serde_json::to_string(&spec).unwrap();
        assert!(json.contains(r#""PASS":{"secret":"hunter2"}"#), "{json}");
        assert_eq!(parse_json(json.as_bytes()).unwrap(), spec);
        // Shown redacted, and never in a debug dump.
        let shown = serde_json::to_string(&spec.env_vars["PASS"].redacted()).unwrap();
        assert_eq!(shown, r#"{"hidden":true}"#);
        assert!(!format!("{spec:?}").contains("hunter2"));
        // Bad forms are refused with their position, without quoting the value.
        let e = err("a:\n  docker_image: x\n  env_vars: {P: {secrett: hunter2}}\n");
        assert!(
            e.contains("unknown env value form") && e.contains("line 3"),
            "{e}"
        );
        assert!(!e.contains("hunter2"), "{e}");
        let e = err("a:\n  docker_image: x\n  env_vars: {P: {secret: [hunter2]}}\n");
        assert!(!e.contains("hunter2"), "{e}");
    }

    #[test]
    fn yaml_bombs_and_deep_nesting_are_refused() {
        let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 0..9 {
            let prev = if i == 0 {
                "a".to_string()
            } else {
                format!("l{}", i - 1)
            };
            bomb.push_str(&format!(
                "l{i}: &l{i} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"
            ));
        }
        // Refused by the parser's budget, not by expanding 10^10 nodes first (a run that
        // expanded them would never finish: nextest's timeout, not a timing assert, says so).
        assert!(parse_file(&bomb).is_err());
        let deep = format!(
            "a:\n  docker_image: x\n  labels: {}{}\n",
            "[".repeat(5000),
            "]".repeat(5000)
        );
        assert!(parse_file(&deep).is_err());
        let big = format!(
            "a:\n  docker_image: x\n  labels: {{k: \"{}\"}}\n",
            "x".repeat(MAX_SPEC_BYTES)
        );
        assert!(err(&big).contains("larger than"));
    }

    #[test]
    fn containers_per_counts() {
        assert_eq!(ContainersPer::Server(3).replicas(4, 1024), 3);
        assert_eq!(ContainersPer::Cpu(1.5).replicas(4, 1024), 6);
        assert_eq!(ContainersPer::MemoryMb(256).replicas(4, 1024), 4);
    }

    /// Issue 7 D: env values are the text written, whatever YAML 1.1 would make of it.
    #[test]
    fn env_values_are_the_text_written() {
        let yaml = "a:\n  docker_image: x\n  env_vars:\n    COUNTRY: NO\n    V: 1.10\n    O: 0777\n    Y: yes\n    T: True\n    H: 0x50\n    U: 1_000\n    F: 1e3\n    N: -0.0\n    I: .inf\n    Q: \"NO\"\n    S: 'it''s'\n    E: \"\"\n    B: |\n      line one\n      line two\n    P: {secret: 0777}\n    PLAIN: hello world\n";
        let spec = parse_one(yaml, "a").unwrap();
        let env = |k: &str| spec.env_vars[k].clone();
        for (k, v) in [
            ("COUNTRY", "NO"),
            ("V", "1.10"),
            ("O", "0777"),
            ("Y", "yes"),
            ("T", "True"),
            ("H", "0x50"),
            ("U", "1_000"),
            ("F", "1e3"),
            ("N", "-0.0"),
            ("I", ".inf"),
            ("Q", "NO"),
            ("S", "it's"),
            ("E", ""),
            ("B", "line one\nline two\n"),
            ("PLAIN", "hello world"),
        ] {
            assert_eq!(env(k), EnvValue::Plain(v.into()), "{k}");
        }
        assert_eq!(env("P"), EnvValue::Secret("0777".into()));
        // And through JSON (what the CLI sends) unchanged.
        let back = parse_json(&serde_json::to_vec(&spec).unwrap()).unwrap();
        assert_eq!(back, spec);
    }

    #[test]
    fn env_values_keep_their_text_through_anchors_and_merge_keys() {
        let yaml = "base: &base\n  docker_image: x\n  env_vars: {A: NO, B: &b 010}\nother:\n  <<: *base\n  docker_image: y\nthird:\n  docker_image: z\n  env_vars: {C: *b}\n";
        let apps = parse_file(yaml).unwrap();
        for (name, spec) in &apps[..2] {
            assert_eq!(spec.env_vars["A"], "NO", "{name}");
            assert_eq!(spec.env_vars["B"], "010", "{name}");
        }
        assert_eq!(apps[2].1.env_vars["C"], "010");
    }

    #[test]
    fn null_env_values_are_refused_naming_the_key() {
        for v in ["~", "null", "", "Null"] {
            let e = err(&format!(
                "a:\n  docker_image: x\n  env_vars:\n    FIRST: x\n    KEY: {v}\n    LAST: y\n"
            ));
            assert!(e.contains("env var `KEY` has no value"), "{v:?}: {e}");
            assert!(e.contains("line 5"), "{v:?}: {e}");
        }
        let e = parse_json(br#"{"docker_image": "x", "env_vars": {"KEY": null}}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("env var `KEY` has no value"), "{e}");
    }

    #[test]
    fn env_names_and_values_refuse_control_characters() {
        let json = |env: &str| {
            parse_json(format!(r#"{{"docker_image": "x", "env_vars": {env}}}"#).as_bytes())
                .map_err(|e| e.to_string())
        };
        let e = json(r#"{"K": "a\u0000b"}"#).unwrap_err();
        assert!(e.contains("env var `K`") && e.contains("U+0000"), "{e}");
        let e = json(r#"{"K": {"secret": "hunter2\u001b"}}"#).unwrap_err();
        assert!(e.contains("env var `K`") && e.contains("U+001B"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
        let e = json(r#"{"K\u0000": "v"}"#).unwrap_err();
        assert!(e.contains("env var name `K\\0`"), "{e}");
        let e = json(r#"{"A=B": "v"}"#).unwrap_err();
        assert!(e.contains("contains `=`"), "{e}");
        let e = json(r#"{"": "v"}"#).unwrap_err();
        assert!(e.contains("name is empty"), "{e}");
        // Tab and newline are text.
        let spec = json(r#"{"K": "a\tb\nc"}"#).unwrap();
        assert_eq!(spec.env_vars["K"], "a\tb\nc");
        // YAML too, with the position.
        let e = err("a:\n  docker_image: x\n  env_vars: {K: \"a\\x07\"}\n");
        assert!(e.contains("U+0007") && e.contains("line 3"), "{e}");
    }

    /// Issue 7 D: a port is a decimal number or an error naming it as written.
    #[test]
    fn ports_are_decimal_as_written() {
        for (ports, name) in [
            ("[0o777]", "0o777"),
            ("[0x50]", "0x50"),
            ("[0777]", "0777"),
            ("[1_000]", "1_000"),
            ("[8e1]", "8e1"),
            ("[{0x50: 80}]", "0x50"),
            ("[{80: 0o120}]", "0o120"),
            ("[\"0x50\"]", "0x50"),
            ("[{\"0777\": 80}]", "0777"),
            ("[true]", "true"),
        ] {
            let e = err(&format!(
                "a:\n  docker_image: x\n  starting_ports: {ports}\n"
            ));
            assert!(e.contains(&format!("port `{name}`")), "{ports}: {e}");
            assert!(e.contains("line 3"), "{ports}: {e}");
        }
        // Through an alias, the text is the anchor's.
        let e = err("a:\n  docker_image: x\n  labels: {p: &p 0x50}\n  starting_ports: [*p]\n");
        assert!(e.contains("port `0x50`") && e.contains("line 3"), "{e}");
    }

    /// Issue 7 item 5: `[ip:]host_port[/proto]` on the host side, as Docker takes it.
    #[test]
    fn ports_bind_addresses_and_protocols() {
        let spec = parse_one(
            "a:\n  docker_image: x\n  starting_ports:\n    - \"127.0.0.1:9000\": 9000\n    - \"[::1]:9001/udp\": 9001\n    - 53: 53/udp\n    - \"127.0.0.1:8443:443\"\n    - 9999\n",
            "a",
        )
        .unwrap();
        let shown: Vec<String> = spec
            .starting_ports
            .0
            .iter()
            .map(|p| p.to_string())
            .collect();
        assert_eq!(
            shown,
            vec![
                "127.0.0.1:9000:9000/tcp",
                "[::1]:9001:9001/udp",
                "53:53/udp",
                "127.0.0.1:8443:443/tcp",
                "9999:9999/tcp"
            ]
        );
        let back = parse_json(&serde_json::to_vec(&spec).unwrap()).unwrap();
        assert_eq!(back, spec);
        let e = err("a:\n  docker_image: x\n  starting_ports: [\"127.0.0.1:80\", 80]\n");
        assert!(e.contains("overlap") && e.contains("line 3"), "{e}");
    }

    /// Issue 7 item 2: what the API refused only in the CLI is refused in the format itself.
    #[test]
    fn json_specs_get_the_same_checks() {
        let cases = [
            (
                r#""docker_image": "../../etc/passwd""#,
                "docker_image `../../etc/passwd`",
            ),
            (r#""docker_image": "x@sha256:zz""#, "sha256 digest is 64"),
            (
                r#""docker_image": "x", "volumes": ["data/x:/data"]"#,
                "volume `data/x:/data`: the host side `data/x` must be an absolute path",
            ),
            (
                r#""docker_image": "x", "volumes": ["./data:/data"]"#,
                "volume `./data:/data`",
            ),
            (
                r#""docker_image": "x", "volumes": ["../up:/data"]"#,
                "volume `../up:/data`",
            ),
            (
                r#""docker_image": "x", "starting_ports": ["0x50"]"#,
                "port `0x50`",
            ),
        ];
        for (body, want) in cases {
            let e = parse_json(format!("{{{body}}}").as_bytes())
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{body} gave {e}");
        }
        for ok in ["data:/data", "/srv/data:/data:ro", "my_vol.1:/v"] {
            assert!(
                parse_json(format!(r#"{{"docker_image": "x", "volumes": ["{ok}"]}}"#).as_bytes())
                    .is_ok(),
                "{ok}"
            );
        }
    }

    #[test]
    fn validate_rechecks_a_spec_built_in_code() {
        let good = parse_one("a:\n  docker_image: x\n", "a").unwrap();
        assert!(good.validate().is_ok());
        let mut bad = good.clone();
        bad.docker_image = "x@sha256:zz".into();
        assert!(bad.validate().unwrap_err().to_string().contains("sha256"));
        let mut bad = good.clone();
        bad.env_vars.insert("K".into(), "a\0".into());
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("env var `K`")
        );
        let mut bad = good.clone();
        bad.volumes.push(Volume("rel/path:/x".into()));
        assert!(bad.validate().unwrap_err().to_string().contains("volume"));
        let mut bad = good.clone();
        bad.starting_ports = Ports(vec![PortMapping::tcp(80, 80), PortMapping::tcp(80, 81)]);
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("listed twice")
        );
        let mut bad = good;
        bad.networks = vec!["host".into(), "nebula".into()];
        assert!(bad.validate().unwrap_err().to_string().contains("mode"));
    }

    #[test]
    fn groups_are_capped_checked_and_deduplicated() {
        let many: Vec<String> = (0..=MAX_GROUPS).map(|i| format!("g{i}")).collect();
        let e = validate_groups(&many).unwrap_err();
        assert!(e.contains("at most 64") && e.contains("got 65"), "{e}");
        assert_eq!(
            validate_groups(&many[..MAX_GROUPS]).unwrap().len(),
            MAX_GROUPS
        );
        assert_eq!(
            validate_groups(&["a".into(), "b".into(), "a".into()]).unwrap(),
            vec!["a", "b"]
        );
        assert!(
            validate_groups(&["a.b".into()])
                .unwrap_err()
                .contains("invalid group name")
        );
    }

    #[test]
    fn split_words_handles_quotes() {
        assert_eq!(
            split_words(r#"sh -c "echo \"a b\"" 'x y' z\ w"#).unwrap(),
            vec!["sh", "-c", "echo \"a b\"", "x y", "z w"]
        );
        assert!(split_words("'open").is_err());
    }
}
