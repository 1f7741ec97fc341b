//! What a spec file says, as written, for the two fields whose meaning depends on it.
//!
//! A YAML reader types the plain scalars it reads into untyped places: under the YAML 1.1
//! rules serde-saphyr follows there, `NO` is the boolean false, `1.10` the float 1.1, `0777`
//! the integer 777, `0o777` 511 and `0x50` 80. Two fields of the app format must not be
//! read that way:
//!
//! - an env value is the text the user wrote (`COUNTRY: NO` is `NO`, `V: 1.10` is `1.10`);
//! - a port is a decimal number or an error naming it (`0o777` is refused, not bound as 511).
//!
//! So the spec parser reads the document twice with the same parser and options — anchors,
//! aliases and merge keys resolve identically — once typed into [`crate::spec::AppSpec`] and
//! once here, keeping for every scalar under `env_vars` and `starting_ports` how the parser
//! typed it and where it stands; the text comes from the source at the scalar's span. Only
//! plain scalars the parser resolved to a boolean, number or null need it: strings (quoted,
//! block or plain) already arrive as the text YAML defines.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::{Location, Spanned};

use crate::spec::EnvValue;

/// A node of the document as the parser typed it; every child carries its location.
enum Node {
    /// A string, quoted or not.
    Text(String),
    /// A plain scalar read as a boolean or a number.
    Typed,
    Null,
    Map(Vec<(Spanned<Node>, Spanned<Node>)>),
    Seq(Vec<Spanned<Node>>),
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Node;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any YAML node")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Node, E> {
                Ok(Node::Text(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Node, E> {
                Ok(Node::Typed)
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Node, E> {
                Ok(Node::Typed)
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Node, E> {
                Ok(Node::Typed)
            }
            fn visit_i128<E: de::Error>(self, _: i128) -> Result<Node, E> {
                Ok(Node::Typed)
            }
            fn visit_u128<E: de::Error>(self, _: u128) -> Result<Node, E> {
                Ok(Node::Typed)
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Node, E> {
                Ok(Node::Typed)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Node, E> {
                Ok(Node::Null)
            }
            fn visit_none<E: de::Error>(self) -> Result<Node, E> {
                Ok(Node::Null)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
                Node::deserialize(d)
            }
            fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<Node, E> {
                Ok(Node::Typed)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Node, A::Error> {
                let mut out = Vec::new();
                while let Some(k) = m.next_key()? {
                    out.push((k, m.next_value()?));
                }
                Ok(Node::Map(out))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<Node, A::Error> {
                let mut out = Vec::new();
                while let Some(v) = s.next_element()? {
                    out.push(v);
                }
                Ok(Node::Seq(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// A scalar the parser typed, with its text and position.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Typed {
    /// The text as written; `None` if the source could not be sliced at the scalar's span.
    text: Option<String>,
    null: bool,
    line: u64,
    column: u64,
}

impl Typed {
    fn at(&self) -> String {
        format!("at line {}, column {}", self.line, self.column)
    }
}

/// An env value as written: only values that need their text are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Env {
    Plain(Typed),
    Secret(Typed),
}

/// One app of the file, as written.
#[derive(Debug, Default)]
struct App {
    env: BTreeMap<String, Env>,
    /// Every typed scalar under `starting_ports`, keys included.
    ports: Vec<Typed>,
}

/// The apps of a file, as written, by name.
#[derive(Debug, Default)]
pub(crate) struct Written(BTreeMap<String, App>);

/// Reads `yaml` with `options` (the typed parse's own).
pub(crate) fn read(yaml: &str, options: serde_saphyr::Options) -> Result<Written, String> {
    let doc: Spanned<Node> =
        serde_saphyr::from_str_with_options(yaml, options).map_err(|e| e.to_string())?;
    let mut out = Written::default();
    let Node::Map(apps) = doc.value else {
        return Ok(out);
    };
    for (name, spec) in apps {
        let Some(name) = key_text(yaml, &name) else {
            continue;
        };
        let mut app = App::default();
        if let Node::Map(fields) = spec.value {
            for (field, value) in fields {
                match key_text(yaml, &field).as_deref() {
                    Some("env_vars") => app.env = env(yaml, value),
                    Some("starting_ports") => typed_scalars(yaml, &value, &mut app.ports),
                    _ => {}
                }
            }
        }
        out.0.insert(name, app);
    }
    Ok(out)
}

/// The text of a scalar key: its string, or its source text when the parser typed it.
fn key_text(yaml: &str, k: &Spanned<Node>) -> Option<String> {
    match &k.value {
        Node::Text(s) => Some(s.clone()),
        Node::Typed => source(yaml, &k.defined),
        _ => None,
    }
}

fn env(yaml: &str, value: Spanned<Node>) -> BTreeMap<String, Env> {
    let mut out = BTreeMap::new();
    let Node::Map(vars) = value.value else {
        return out;
    };
    for (k, v) in vars {
        let Some(k) = key_text(yaml, &k) else {
            continue;
        };
        let written = match &v.value {
            Node::Typed | Node::Null => Env::Plain(typed(yaml, &v)),
            Node::Map(form) => match form.as_slice() {
                [(key, secret)]
                    if matches!(&key.value, Node::Text(s) if s == "secret")
                        && matches!(secret.value, Node::Typed | Node::Null) =>
                {
                    Env::Secret(typed(yaml, secret))
                }
                _ => continue,
            },
            _ => continue,
        };
        out.insert(k, written);
    }
    out
}

fn typed(yaml: &str, n: &Spanned<Node>) -> Typed {
    Typed {
        text: source(yaml, &n.defined),
        null: matches!(n.value, Node::Null),
        line: n.defined.line(),
        column: n.defined.column(),
    }
}

/// Every typed or null scalar in `n`, keys included.
fn typed_scalars(yaml: &str, n: &Spanned<Node>, out: &mut Vec<Typed>) {
    match &n.value {
        Node::Text(_) => {}
        Node::Typed | Node::Null => out.push(typed(yaml, n)),
        Node::Seq(items) => items.iter().for_each(|i| typed_scalars(yaml, i, out)),
        Node::Map(entries) => {
            for (k, v) in entries {
                typed_scalars(yaml, k, out);
                typed_scalars(yaml, v, out);
            }
        }
    }
}

/// The source text at a location's span (byte offsets are known for `&str` input).
fn source(yaml: &str, at: &Location) -> Option<String> {
    let span = at.span();
    let start = usize::try_from(span.byte_offset()?).ok()?;
    let len = usize::try_from(span.byte_len()?).ok()?;
    yaml.get(start..start.checked_add(len)?)
        .map(|s| s.trim().to_string())
}

impl Written {
    /// Refuses a port the parser typed from anything but decimal digits (`0o777`, `0x50`,
    /// `0777`, `1_000`, `8e1`), naming it as written. Strings are the typed parse's to check.
    pub(crate) fn check_ports(&self) -> Result<(), String> {
        for app in self.0.values() {
            for p in &app.ports {
                let text = p.text.as_deref().unwrap_or("?");
                crate::ports::port_text(text).map_err(|e| format!("{e} {}", p.at()))?;
            }
        }
        Ok(())
    }

    /// Puts back the text of env values the parser typed: `NO`, not `false`.
    pub(crate) fn restore_env(
        &self,
        app: &str,
        env: &mut BTreeMap<String, EnvValue>,
    ) -> Result<(), String> {
        let Some(written) = self.0.get(app) else {
            return Ok(());
        };
        for (k, v) in env.iter_mut() {
            let (text, at) = match (v, written.env.get(k)) {
                (EnvValue::Plain(text), Some(Env::Plain(w)))
                | (EnvValue::Secret(text), Some(Env::Secret(w))) => (text, w),
                _ => continue,
            };
            // Nulls are refused by the typed parse already; this is the same rule.
            if at.null {
                return Err(format!("env var `{k}` has no value {}", at.at()));
            }
            match &at.text {
                Some(t) => *text = t.clone(),
                None => {
                    return Err(format!(
                        "env var `{k}`: cannot read its value as written {}; quote it",
                        at.at()
                    ));
                }
            }
        }
        Ok(())
    }
}
