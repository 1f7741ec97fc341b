//! `gustavo exec` and `gustavo docker`: one command on many nodes, through their agents.
//!
//! The wire types of the three legs — the CLI asks the server ([`ExecRun`]), the server hands
//! each node its part on the desired-state long-poll ([`ExecCommand`], in
//! `DesiredState::exec`), the agent posts what happened ([`ExecReply`]) — and the pure rules
//! the legs share: the limits, how a command line is written for the audit log, how output is
//! cut for a table.

use serde::{Deserialize, Serialize};

/// The most nodes one run runs on at once.
pub const MAX_PARALLEL: u32 = 256;
/// The longest a command may run on a node.
pub const MAX_TIMEOUT_S: u64 = 3600;
/// Output kept per stream and node; the rest is dropped (and `truncated` set).
pub const MAX_OUTPUT: usize = 64 * 1024;
/// The most arguments of one command.
pub const MAX_ARGS: usize = 256;
/// Seconds a node online by its last request has to take a command before it counts as
/// offline (an agent is back on its long-poll within milliseconds of each answer).
pub const PICKUP_S: u64 = 5;
/// Seconds past a command's timeout that the server waits for the agent's answer.
pub const GRACE_S: u64 = 10;

/// What runs: a shell command line, or the node's `docker` CLI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExecKind {
    /// The arguments joined by spaces and run by `sh -c`, as pdsh and ssh do.
    Shell,
    /// `docker ARGS…`, each argument passed as it is (no shell).
    Docker,
}

/// `POST /api/v1/exec` (admin): what to run where.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecRun {
    /// Node names (already expanded from a host list); with `group`, both are taken.
    #[serde(default)]
    pub nodes: Vec<String>,
    /// Every node of this device group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    pub kind: ExecKind,
    pub args: Vec<String>,
    /// Per node, from the moment the agent has it.
    pub timeout_s: u64,
    /// Nodes running at once.
    pub parallel: u32,
}

impl ExecRun {
    /// Checks the limits; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.nodes.is_empty() && self.group.is_none() {
            return Err("name nodes (--nodes) or a device group (-d)".into());
        }
        if self.args.is_empty() || self.args.iter().all(|a| a.trim().is_empty()) {
            return Err("args: no command given".into());
        }
        if self.args.len() > MAX_ARGS {
            return Err(format!("args: at most {MAX_ARGS} arguments"));
        }
        if self.args.iter().any(|a| a.contains('\0')) {
            return Err("args: an argument contains a NUL byte".into());
        }
        if self.timeout_s == 0 || self.timeout_s > MAX_TIMEOUT_S {
            return Err(format!(
                "timeout: {} s is outside 1..={MAX_TIMEOUT_S} s",
                self.timeout_s
            ));
        }
        if self.parallel == 0 || self.parallel > MAX_PARALLEL {
            return Err(format!(
                "parallel: {} is outside 1..={MAX_PARALLEL}",
                self.parallel
            ));
        }
        Ok(())
    }

    /// The command as a person would type it, for tables and the audit log.
    pub fn command_line(&self) -> String {
        command_line(self.kind, &self.args)
    }
}

/// One node's part of a run, handed to its agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecCommand {
    /// Names the run on this node; the reply is posted under it.
    pub id: String,
    pub kind: ExecKind,
    pub args: Vec<String>,
    pub timeout_s: u64,
}

/// How a command ended on one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExecStatus {
    /// It ran and exited (with `exit_code`, zero or not).
    Exited,
    /// The node does not allow commands (`gustavo agent` without `--allow-exec`).
    Refused,
    /// It was still running at the timeout, and was killed.
    Timeout,
    /// The node is offline or did not pick the command up.
    Offline,
    /// It could not be started (no such program, no `docker` CLI…); `stderr` says why.
    Error,
}

impl ExecStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ExecStatus::Exited => "exited",
            ExecStatus::Refused => "refused",
            ExecStatus::Timeout => "timeout",
            ExecStatus::Offline => "offline",
            ExecStatus::Error => "error",
        }
    }
}

/// `POST /api/v1/nodes/{node}/exec/{id}`: the agent's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecReply {
    pub status: ExecStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub stdout: String,
    #[serde(default)]
    pub stderr: String,
    /// Some output was dropped past [`MAX_OUTPUT`].
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
    #[serde(default)]
    pub duration_ms: u64,
}

impl ExecReply {
    /// An answer with no output: refused, offline, timed out before a word.
    pub fn bare(status: ExecStatus, why: &str) -> ExecReply {
        ExecReply {
            status,
            exit_code: None,
            stdout: String::new(),
            stderr: why.into(),
            truncated: false,
            duration_ms: 0,
        }
    }
}

/// One row of a run's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecNodeResult {
    pub node: String,
    #[serde(flatten)]
    pub reply: ExecReply,
}

impl ExecNodeResult {
    /// Ran and exited 0.
    pub fn ok(&self) -> bool {
        self.reply.status == ExecStatus::Exited && self.reply.exit_code == Some(0)
    }

    /// What a table shows: stdout, else stderr, else the status — Cloudmesh's `Response`.
    pub fn response(&self) -> &str {
        let out = self.reply.stdout.trim();
        if !out.is_empty() {
            return out;
        }
        let err = self.reply.stderr.trim();
        if !err.is_empty() {
            return err;
        }
        ""
    }
}

/// The answer to `POST /api/v1/exec`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecAnswer {
    pub command: String,
    pub results: Vec<ExecNodeResult>,
}

/// `kind` and `args` as one line a person could paste into a shell: arguments with
/// anything but plain characters are single-quoted.
pub fn command_line(kind: ExecKind, args: &[String]) -> String {
    let quoted = args.iter().map(|a| quote(a));
    match kind {
        // The shell gets the arguments joined by spaces; show exactly that text.
        ExecKind::Shell => args.join(" "),
        ExecKind::Docker => std::iter::once("docker".to_string())
            .chain(quoted)
            .collect::<Vec<_>>()
            .join(" "),
    }
}

fn quote(a: &str) -> String {
    let plain = !a.is_empty()
        && a.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c));
    if plain {
        a.to_string()
    } else {
        format!("'{}'", a.replace('\'', r"'\''"))
    }
}

/// Output for a table cell: lines joined by ` ⏎ `, control characters dropped, cut to
/// `width` characters with `…` at the cut.
pub fn cut(text: &str, width: usize) -> String {
    let flat: String = text
        .trim()
        .lines()
        .map(str::trim_end)
        .collect::<Vec<_>>()
        .join(" ⏎ ")
        .chars()
        .filter(|c| !c.is_control())
        .collect();
    if flat.chars().count() <= width {
        return flat;
    }
    let mut s: String = flat.chars().take(width.saturating_sub(1)).collect();
    s.push('…');
    s
}

/// Keeps at most [`MAX_OUTPUT`] bytes of `bytes` as text (lossy UTF-8); true when cut.
pub fn keep_output(bytes: &[u8]) -> (String, bool) {
    let cut = bytes.len() > MAX_OUTPUT;
    let b = &bytes[..bytes.len().min(MAX_OUTPUT)];
    (String::from_utf8_lossy(b).into_owned(), cut)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run() -> ExecRun {
        ExecRun {
            nodes: vec!["a".into()],
            group: None,
            kind: ExecKind::Shell,
            args: vec!["uptime".into()],
            timeout_s: 30,
            parallel: 16,
        }
    }

    #[test]
    fn limits_name_the_field() {
        assert!(run().validate().is_ok());
        let mut r = run();
        r.nodes.clear();
        assert!(r.validate().unwrap_err().contains("--nodes"));
        r.group = Some("g".into());
        assert!(r.validate().is_ok());
        let mut r = run();
        r.args = vec![" ".into()];
        assert!(r.validate().unwrap_err().starts_with("args"));
        let mut r = run();
        r.timeout_s = 0;
        assert!(r.validate().unwrap_err().starts_with("timeout"));
        r.timeout_s = MAX_TIMEOUT_S + 1;
        assert!(r.validate().unwrap_err().starts_with("timeout"));
        let mut r = run();
        r.parallel = 0;
        assert!(r.validate().unwrap_err().starts_with("parallel"));
        let mut r = run();
        r.args = vec!["a\0b".into()];
        assert!(r.validate().unwrap_err().contains("NUL"));
    }

    #[test]
    fn command_lines() {
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            command_line(ExecKind::Shell, &s(&["uname", "-a;", "id"])),
            "uname -a; id"
        );
        assert_eq!(
            command_line(
                ExecKind::Docker,
                &s(&["ps", "--format", "{{.Names}} x", "it's"])
            ),
            r"docker ps --format '{{.Names}} x' 'it'\''s'"
        );
        assert_eq!(command_line(ExecKind::Docker, &s(&[""])), "docker ''");
    }

    #[test]
    fn cells_are_one_line_and_cut() {
        assert_eq!(cut("a\nb\n", 48), "a ⏎ b");
        assert_eq!(cut("\x1b[31mred", 48), "[31mred");
        assert_eq!(cut("abcdef", 4), "abc…");
        assert_eq!(cut("héllo", 5), "héllo");
    }

    #[test]
    fn response_is_stdout_else_stderr() {
        let mut r = ExecNodeResult {
            node: "a".into(),
            reply: ExecReply::bare(ExecStatus::Exited, "oops\n"),
        };
        assert_eq!(r.response(), "oops");
        r.reply.stdout = " out \n".into();
        assert_eq!(r.response(), "out");
        assert!(!r.ok());
        r.reply.exit_code = Some(0);
        assert!(r.ok());
    }

    #[test]
    fn output_is_capped() {
        let big = vec![b'x'; MAX_OUTPUT + 10];
        let (s, cut) = keep_output(&big);
        assert!(cut);
        assert_eq!(s.len(), MAX_OUTPUT);
        assert_eq!(keep_output(b"hi"), ("hi".to_string(), false));
    }

    #[test]
    fn wire_shapes() {
        let r = ExecNodeResult {
            node: "a".into(),
            reply: ExecReply::bare(ExecStatus::Offline, "offline"),
        };
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["status"], "offline");
        assert_eq!(v["node"], "a");
        let back: ExecNodeResult = serde_json::from_value(v).unwrap();
        assert_eq!(back, r);
    }
}
