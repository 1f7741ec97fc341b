//! Config files for the long-running roles: `gustavo server --config FILE` and
//! `gustavo agent --config FILE` (TOML).
//!
//! Precedence, lowest first: built-in defaults < the file < `GUSTAVO_*` environment
//! variables < flags. Keys are named like the role's flags (`listen = "0.0.0.0:7420"`,
//! `data-dir` or `data_dir`); a flag that repeats takes a list (`group = ["a", "b"]`); a
//! switch takes a boolean. An unknown key is an error naming it.
//!
//! How: the file is turned into the flags it stands for, and those flags are parsed by the
//! same clap definition as the command line, so a value in a file is checked exactly as the
//! same value given as a flag. A key whose flag was given on the command line, or whose
//! environment variable is set, is left out: those win.
//!
//! The file comes from `--config` on the command line, or `GUSTAVO_SERVER_CONFIG` /
//! `GUSTAVO_AGENT_CONFIG`. `GUSTAVO_CONFIG` is the CLI's client config (server, CA, token)
//! and is not read by these roles: exporting it for the CLI must not reconfigure a server.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, CommandFactory};

use crate::cli::Cli;
use crate::{EXIT_USAGE, Exit};

/// A config file bigger than this is refused unread.
const MAX_BYTES: u64 = 1024 * 1024;

/// Flags a config file may not set: they are about this invocation, not the role.
const NOT_IN_FILES: &[&str] = &["config", "output", "help", "version", "print-config"];

/// Flags whose values are secrets: never printed by `--print-config`.
const SECRET: &[&str] = &["token", "samsung-token"];

/// The file this run read and the flags it stood for, for [`blame`].
static READ: std::sync::OnceLock<(PathBuf, Vec<String>)> = std::sync::OnceLock::new();

/// A usage error about a flag (`--heartbeat: …`) whose value came from the config file,
/// said as an error in that file: clap checks a value's shape, but some values (durations,
/// addresses) are read later by the role, which knows only the flag.
pub fn blame(msg: &str) -> Option<String> {
    let (path, flags) = READ.get()?;
    let rest = msg.strip_prefix("--")?;
    let end = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .unwrap_or(rest.len());
    let (flag, why) = rest.split_at(end);
    let why = why.strip_prefix(':').unwrap_or(why).trim_start();
    flags
        .iter()
        .any(|f| f == flag)
        .then(|| format!("config file {}: `{flag}` {why}", path.display()))
}

/// The roles that read a config file, and the environment variable naming it.
fn role_env(role: &str) -> Option<&'static str> {
    match role {
        "server" => Some("GUSTAVO_SERVER_CONFIG"),
        "agent" => Some("GUSTAVO_AGENT_CONFIG"),
        _ => None,
    }
}

/// The global flags a role's file may set: the agent's server, join token and CA; none for
/// the server (they are the CLI's).
fn globals<'a>(role: &str, cmd: &'a clap::Command) -> impl Iterator<Item = &'a clap::Arg> {
    let agent = role == "agent";
    cmd.get_arguments()
        .filter(move |a| agent && a.is_global_set())
}

/// Returns the argument list with the role's config file folded in as flags (unchanged
/// for other commands, or when there is no file). A bad file is an error naming the file
/// and the key; the caller exits 64 before anything is bound.
pub fn fold_in(argv: Vec<OsString>) -> Result<Vec<OsString>, Exit> {
    // A command line clap refuses is reported by the normal parse, as usual.
    let Ok(matches) = Cli::command().try_get_matches_from(&argv) else {
        return Ok(argv);
    };
    let Some((role, sub)) = matches.subcommand() else {
        return Ok(argv);
    };
    let Some(env_name) = role_env(role) else {
        return Ok(argv);
    };
    let path = match sub.value_source("config") {
        Some(ValueSource::CommandLine) => sub.get_one::<PathBuf>("config").cloned(),
        _ => std::env::var_os(env_name).map(PathBuf::from),
    };
    let Some(path) = path else {
        return Ok(argv);
    };
    let table = read(&path)?;
    let flags = to_flags(role, sub, &table).map_err(|e| bad(&path, e))?;
    let set: Vec<String> = flags
        .iter()
        .filter_map(|f| f.to_str()?.strip_prefix("--").map(str::to_string))
        .collect();
    let mut out = argv;
    out.extend(flags);
    // The values are checked by clap as flags; say which file they came from.
    if let Err(e) = Cli::command().try_get_matches_from(&out) {
        let msg = e.render().to_string();
        // clap's advice to try --help is about flags, not a file.
        let msg = msg.split("\n\n").next().unwrap_or_default();
        let msg = msg.trim().trim_start_matches("error: ");
        return Err(bad(&path, msg.to_string()));
    }
    let _ = READ.set((path, set));
    Ok(out)
}

fn bad(path: &Path, msg: String) -> Exit {
    Exit(EXIT_USAGE, format!("config file {}: {msg}", path.display()))
}

fn read(path: &Path) -> Result<toml::Table, Exit> {
    let meta = std::fs::metadata(path).map_err(|e| bad(path, e.to_string()))?;
    if meta.len() > MAX_BYTES {
        return Err(bad(
            path,
            format!("{} bytes is over the {MAX_BYTES}-byte limit", meta.len()),
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| bad(path, e.to_string()))?;
    text.parse::<toml::Table>()
        .map_err(|e| bad(path, e.to_string().trim().to_string()))
}

/// The flags a config table stands for, leaving out keys set on the command line or in
/// the environment. Pure apart from reading clap's definition.
fn to_flags(role: &str, sub: &ArgMatches, table: &toml::Table) -> Result<Vec<OsString>, String> {
    let cmd = Cli::command();
    let role_cmd = cmd.find_subcommand(role).expect("the role is a subcommand");
    let known: Vec<&clap::Arg> = role_cmd
        .get_arguments()
        .chain(globals(role, &cmd))
        .filter(|a| a.get_long().is_some_and(|l| !NOT_IN_FILES.contains(&l)))
        .collect();
    let mut out = Vec::new();
    for (key, value) in table {
        let long = key.replace('_', "-");
        let Some(arg) = known.iter().find(|a| a.get_long() == Some(long.as_str())) else {
            let mut names: Vec<&str> = known.iter().filter_map(|a| a.get_long()).collect();
            names.sort_unstable();
            return Err(format!(
                "unknown key `{key}` (known keys: {})",
                names.join(", ")
            ));
        };
        let id = arg.get_id().as_str();
        if matches!(
            sub.value_source(id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        ) {
            continue;
        }
        let flag = OsString::from(format!("--{long}"));
        let switch = matches!(arg.get_action(), ArgAction::SetTrue);
        let repeats = matches!(arg.get_action(), ArgAction::Append);
        match value {
            toml::Value::Boolean(b) if switch => {
                if *b {
                    out.push(flag);
                }
            }
            _ if switch => return Err(format!("`{key}` takes true or false")),
            toml::Value::Array(items) if repeats => {
                for item in items {
                    out.push(flag.clone());
                    out.push(scalar(key, item)?.into());
                }
            }
            toml::Value::Array(_) => return Err(format!("`{key}` takes one value, not a list")),
            v => {
                out.push(flag);
                out.push(scalar(key, v)?.into());
            }
        }
    }
    Ok(out)
}

fn scalar(key: &str, v: &toml::Value) -> Result<String, String> {
    match v {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(i) => Ok(i.to_string()),
        toml::Value::Float(f) => Ok(f.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        _ => Err(format!("`{key}` takes a string, number or boolean")),
    }
}

/// `--print-config`: the role's settings after defaults, file, environment and flags, as a
/// config file would hold them, each with where it came from; secrets hidden.
pub fn print(role: &str) -> String {
    let cmd = Cli::command();
    let typed: Vec<OsString> = std::env::args_os().collect();
    let argv = fold_in(typed.clone()).unwrap_or_else(|_| typed.clone());
    // What was typed, and what it became with the file folded in: a value given as a flag
    // in both was typed; one given as a flag only in the second came from the file.
    let (Ok(typed), Ok(matches)) = (
        cmd.clone().try_get_matches_from(&typed),
        cmd.clone().try_get_matches_from(&argv),
    ) else {
        return String::new();
    };
    let (Some((_, typed)), Some((_, sub))) = (typed.subcommand(), matches.subcommand()) else {
        return String::new();
    };
    let role_cmd = cmd.find_subcommand(role).expect("the role is a subcommand");
    let mut lines = vec![format!("# gustavo {role}: effective settings")];
    let args = role_cmd
        .get_arguments()
        .chain(globals(role, &cmd))
        .filter(|a| a.get_long().is_some_and(|l| !NOT_IN_FILES.contains(&l)));
    for arg in args {
        let long = arg.get_long().expect("filtered on long");
        let id = arg.get_id().as_str();
        let raw: Vec<String> = sub
            .get_raw(id)
            .map(|vs| vs.map(|v| v.to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        let source = match sub.value_source(id) {
            Some(ValueSource::CommandLine)
                if typed.value_source(id) == Some(ValueSource::CommandLine) =>
            {
                "flag"
            }
            Some(ValueSource::CommandLine) => "config file",
            Some(ValueSource::EnvVariable) => "environment",
            _ => "default",
        };
        let value = if SECRET.contains(&long) && !raw.is_empty() {
            "\"<hidden>\"".to_string()
        } else if matches!(arg.get_action(), ArgAction::SetTrue) {
            sub.get_flag(id).to_string()
        } else if matches!(arg.get_action(), ArgAction::Append) {
            let items: Vec<String> = raw.iter().map(|v| quote(v)).collect();
            format!("[{}]", items.join(", "))
        } else if let Some(v) = raw.first() {
            quote(v)
        } else {
            lines.push(format!("# {long} = (unset)"));
            continue;
        };
        lines.push(format!("{long} = {value}  # {source}"));
    }
    lines.join("\n")
}

fn quote(v: &str) -> String {
    if !v.is_empty() && v.len() < 19 && v.bytes().all(|b| b.is_ascii_digit()) {
        return v.to_string();
    }
    toml::Value::String(v.to_string()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(args: &[&str]) -> ArgMatches {
        Cli::command().try_get_matches_from(args).unwrap()
    }

    fn flags(args: &[&str], file: &str) -> Result<Vec<String>, String> {
        let m = matches(args);
        let (role, sub) = m.subcommand().unwrap();
        let table: toml::Table = file.parse().unwrap();
        to_flags(role, sub, &table)
            .map(|v| v.into_iter().map(|s| s.into_string().unwrap()).collect())
    }

    #[test]
    fn keys_become_flags_and_flags_win() {
        let got = flags(
            &["gustavo", "server", "--body-limit", "4096"],
            "listen = \"127.0.0.1:9\"\nbody_limit = 2048\nno-agent = true\ninsecure-http = false\n",
        )
        .unwrap();
        assert_eq!(got, ["--listen", "127.0.0.1:9", "--no-agent"]);
    }

    #[test]
    fn lists_repeat_and_globals_are_allowed_for_the_agent() {
        let got = flags(
            &["gustavo", "agent"],
            "server = \"https://s:7420\"\nlabel = [\"a=1\", \"b=2\"]\n",
        )
        .unwrap();
        assert_eq!(
            got,
            [
                "--label",
                "a=1",
                "--label",
                "b=2",
                "--server",
                "https://s:7420"
            ]
        );
    }

    #[test]
    fn unknown_keys_and_wrong_shapes_are_named() {
        let e = flags(&["gustavo", "server"], "listne = \"x\"\n").unwrap_err();
        assert!(e.contains("unknown key `listne`"), "{e}");
        assert!(e.contains("listen"), "{e}");
        let e = flags(&["gustavo", "server"], "no-agent = \"yes\"\n").unwrap_err();
        assert!(e.contains("true or false"), "{e}");
        let e = flags(&["gustavo", "server"], "listen = [\"a\"]\n").unwrap_err();
        assert!(e.contains("not a list"), "{e}");
        let e = flags(&["gustavo", "server"], "config = \"x\"\n").unwrap_err();
        assert!(e.contains("unknown key `config`"), "{e}");
    }
}
