//! The app file written back: an app as the YAML that `apps create -f` and `apps update -f`
//! read, so `gustavo apps get NAME -o yaml > app.yml` round-trips into `apps update -f`.
//!
//! The text is produced from the spec's own serialized form (the one the API carries, which
//! [`crate::spec`] guarantees its deserializer accepts back), by a small block-style writer
//! rather than a general YAML serializer, for one reason: every string is written
//! double-quoted. A plain scalar is re-typed by a YAML reader — `NO` becomes a boolean in
//! YAML 1.1, `1.10` the float 1.1, `0777` an octal or the integer 777 — so a value that was
//! text stays text only when it is quoted. Numbers and booleans are written bare.
//!
//! [`to_yaml`] also serves `-o yaml` for any other API answer.

use serde_json::Value;

use crate::spec::{AppSpec, SpecError};

/// The app file holding one app: `name:` and its spec beneath.
///
/// Secret env values cannot be shown: they come back as `{hidden: true}` with a comment,
/// and the server refuses that form on update until the value is written again as
/// `{secret: VALUE}`.
pub fn app_file(name: &str, spec: &AppSpec) -> Result<String, SpecError> {
    let v = serde_json::to_value(spec)?;
    let Value::Object(m) = &v else {
        return Ok(format!("{}: {}\n", key(name), scalar(&v)));
    };
    // The seed's field order first, as people write the file; anything newer after it.
    let rank = |k: &str| {
        SEED_ORDER
            .iter()
            .position(|f| *f == k)
            .unwrap_or(usize::MAX)
    };
    let mut entries: Vec<_> = m.iter().collect();
    entries.sort_by_key(|(k, _)| rank(k));
    let mut out = String::new();
    out.push_str(&key(name));
    out.push_str(":\n");
    write_entries(&mut out, entries, 4);
    Ok(out)
}

/// The fields in the order of the seed's example file.
const SEED_ORDER: &[&str] = &[
    "docker_image",
    "env_vars",
    "networks",
    "volumes",
    "starting_ports",
    "running",
    "rolling_restart",
    "containers_per",
    "privileged",
    "devices",
];

/// Any JSON value as block-style YAML, strings quoted (for `-o yaml`).
pub fn to_yaml(v: &Value) -> String {
    let mut out = String::new();
    match v {
        Value::Object(m) if !m.is_empty() => write_map_body(&mut out, v, 0),
        Value::Array(a) if !a.is_empty() => write_seq(&mut out, a, 0),
        other => {
            out.push_str(&scalar(other));
            out.push('\n');
        }
    }
    out
}

/// The lines of a non-empty map's entries at `indent`.
fn write_map_body(out: &mut String, v: &Value, indent: usize) {
    if let Value::Object(m) = v {
        write_entries(out, m.iter().collect(), indent);
    }
}

fn write_entries(out: &mut String, entries: Vec<(&String, &Value)>, indent: usize) {
    let pad = " ".repeat(indent);
    for (k, v) in entries {
        out.push_str(&pad);
        out.push_str(&key(k));
        out.push(':');
        match v {
            Value::Object(inner) if inner.is_empty() => out.push_str(" {}\n"),
            Value::Array(inner) if inner.is_empty() => out.push_str(" []\n"),
            // A one-entry map of a scalar reads best inline: `containers_per: {server: 1}`,
            // `PASS: {hidden: true}`.
            Value::Object(inner) if inner.len() == 1 && inner.values().all(is_scalar) => {
                let (ik, iv) = inner.iter().next().expect("one entry, checked above");
                out.push_str(&format!(" {{{}: {}}}", key(ik), scalar(iv)));
                if ik == "hidden" {
                    out.push_str("  # a secret: write {secret: VALUE} again before updating");
                }
                out.push('\n');
            }
            Value::Object(_) => {
                out.push('\n');
                write_map_body(out, v, indent + 2);
            }
            Value::Array(items) => {
                out.push('\n');
                write_seq(out, items, indent + 2);
            }
            s => {
                out.push(' ');
                out.push_str(&scalar(s));
                out.push('\n');
            }
        }
    }
}

/// The items of a non-empty sequence at `indent`.
fn write_seq(out: &mut String, items: &[Value], indent: usize) {
    let pad = " ".repeat(indent);
    for item in items {
        match item {
            Value::Object(m) if !m.is_empty() => {
                // The map's first line takes the dash's place: `- "9000": 9000`.
                let mut body = String::new();
                write_map_body(&mut body, item, indent + 2);
                out.push_str(&pad);
                out.push_str("- ");
                out.push_str(&body[indent + 2..]);
            }
            Value::Array(a) if !a.is_empty() => {
                out.push_str(&pad);
                out.push_str("-\n");
                write_seq(out, a, indent + 2);
            }
            Value::Object(_) => {
                out.push_str(&pad);
                out.push_str("- {}\n");
            }
            Value::Array(_) => {
                out.push_str(&pad);
                out.push_str("- []\n");
            }
            s => {
                out.push_str(&pad);
                out.push_str("- ");
                out.push_str(&scalar(s));
                out.push('\n');
            }
        }
    }
}

fn is_scalar(v: &Value) -> bool {
    !matches!(v, Value::Object(_) | Value::Array(_))
}

fn scalar(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => quote(s),
        // Not reached: callers pass scalars only; an empty flow form is still valid YAML.
        Value::Array(_) => "[]".into(),
        Value::Object(_) => "{}".into(),
    }
}

/// A map key: bare when no YAML reader could take it for anything but this string.
fn key(k: &str) -> String {
    let plain = k
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        && !matches!(
            k.to_ascii_lowercase().as_str(),
            "y" | "yes" | "n" | "no" | "true" | "false" | "on" | "off" | "null"
        );
    if plain { k.to_string() } else { quote(k) }
}

/// A YAML double-quoted scalar. Escapes what YAML does not allow raw (controls, DEL, C1,
/// surrogates' neighbours, the BOM, the Unicode line separators), so any string survives.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\0' => out.push_str("\\0"),
            c if printable(c) => out.push(c),
            c if (c as u32) <= 0xFF => out.push_str(&format!("\\x{:02X}", c as u32)),
            c if (c as u32) <= 0xFFFF => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push_str(&format!("\\U{:08X}", c as u32)),
        }
    }
    out.push('"');
    out
}

/// YAML's `c-printable`, less the characters some readers treat as line breaks or marks.
fn printable(c: char) -> bool {
    matches!(c as u32,
        0x20..=0x7E | 0xA0..=0x2027 | 0x202A..=0xD7FF | 0xE000..=0xFEFE | 0xFF00..=0xFFFD
            | 0x10000..=0x10FFFF)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{EnvValue, parse_one};

    const FULL: &str = r#"
test_linreg:
    docker_image: "172.31.17.1:5000/test_linreg:v1"
    env_vars:
        CACHE: "64"
        COUNTRY: "NO"
        V: "1.10"
        O: "0777"
        EMPTY: ""
        QUOTES: "say \"hi\"\\ \t tab\nnewline é ✓"
        "NO": "key that YAML 1.1 reads as false"
    networks: ["nebula", "edge"]
    volumes: ["/tmp/:/tmp/1", "/var/tmp/:/var/tmp/1:rw", "data:/data"]
    starting_ports:
      - 9000: 9000
      - 30303: 30304
      - "127.0.0.1:9001/udp": "53/udp"
    running: False
    rolling_restart: True
    containers_per: {cpu: 1.5}
    privileged: True
    devices: ["/dev/null:/dev/xnull:rw"]
    command: "sh -c 'echo hi; sleep 1'"
    entrypoint: ["/bin/sh", "-c"]
    cpus: 0.5
    memory: 64m
    restart: on-failure
    labels: {tier: web, "yes": "no"}
    healthcheck: {test: ["wget", "-q", "http://127.0.0.1/"], interval: 2s, retries: 5}
"#;

    #[test]
    fn a_full_spec_round_trips_through_the_app_file() {
        let spec = parse_one(FULL, "test_linreg").unwrap();
        let text = app_file("test_linreg", &spec).unwrap();
        let back = parse_one(&text, "test_linreg").unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(back, spec, "{text}");
        // Text stays text: the values a YAML reader would re-type are quoted.
        for v in [r#""NO""#, r#""1.10""#, r#""0777""#, r#""64""#] {
            assert!(text.contains(v), "{v} is not quoted in\n{text}");
        }
        assert_eq!(back.env_vars["COUNTRY"], "NO");
        assert_eq!(back.env_vars["O"], "0777");
        // Numbers and booleans stay bare; one-entry maps read inline.
        assert!(text.contains("    running: false\n"), "{text}");
        assert!(text.contains("    containers_per: {cpu: 1.5}\n"), "{text}");
        assert!(text.contains("      - \"9000\": 9000\n"), "{text}");
    }

    #[test]
    fn the_seed_file_round_trips_and_defaults_are_written_out() {
        let seed = "a:\n  docker_image: x\n";
        let spec = parse_one(seed, "a").unwrap();
        let text = app_file("a", &spec).unwrap();
        assert_eq!(parse_one(&text, "a").unwrap(), spec);
        assert!(text.starts_with("a:\n    docker_image: \"x\"\n"), "{text}");
        assert!(text.contains("    env_vars: {}\n"), "{text}");
    }

    #[test]
    fn names_that_yaml_would_retype_are_quoted() {
        let spec = parse_one("a:\n  docker_image: x\n", "a").unwrap();
        for name in ["no", "123", "true", "Off"] {
            let text = app_file(name, &spec).unwrap();
            assert!(text.starts_with(&format!("\"{name}\":\n")), "{text}");
            assert_eq!(parse_one(&text, name).unwrap(), spec);
        }
    }

    #[test]
    fn secrets_are_shown_hidden_with_a_hint() {
        let spec = parse_one(
            "a:\n  docker_image: x\n  env_vars: {P: {secret: hunter2}}\n",
            "a",
        )
        .unwrap();
        let mut shown = spec.clone();
        for v in shown.env_vars.values_mut() {
            *v = v.redacted();
        }
        let text = app_file("a", &shown).unwrap();
        assert!(!text.contains("hunter2"));
        assert!(text.contains("P: {hidden: true}  # a secret"), "{text}");
        // It still parses (the server, not the parser, refuses the hidden form).
        assert_eq!(
            parse_one(&text, "a").unwrap().env_vars["P"],
            EnvValue::Hidden
        );
    }

    #[test]
    fn any_value_prints_as_yaml() {
        let v = serde_json::json!([
            {"name": "g", "apps": ["a", "b"], "nodes": [], "revision": 3},
            {"name": "h", "apps": [], "nodes": ["n"], "revision": 4}
        ]);
        let text = to_yaml(&v);
        assert!(
            text.starts_with("- apps:\n    - \"a\"\n    - \"b\"\n  name: \"g\"\n  nodes: []\n"),
            "{text}"
        );
        assert_eq!(to_yaml(&serde_json::json!([])), "[]\n");
        assert_eq!(to_yaml(&serde_json::json!("x")), "\"x\"\n");
    }
}
