//! Commands from `gustavo exec` / `gustavo docker`, run on this device.
//!
//! They arrive in the desired state's `exec` list (the long-poll answers at once when one
//! waits), run beside the reconciler, and their outcome is posted back. Running commands is
//! remote code execution as the agent's user, so it is off unless this device opted in
//! (`gustavo agent --allow-exec`, or `allow-exec = true` in its config file): the server
//! cannot turn it on, and without it every command is answered `refused` unrun.
//!
//! A shell command is its arguments joined by spaces run by `sh -c` (as pdsh and ssh do); a
//! Docker command runs the `docker` CLI with its arguments as they are. The command gets no
//! stdin, runs in its own process group, and the whole group is killed at the timeout. At
//! most [`MAX_OUTPUT`] bytes of each stream are kept; the rest is read and dropped, so a
//! chatty command never blocks on a full pipe.

use std::process::Stdio;
use std::time::{Duration, Instant};

use gustavo_model::exec::{ExecCommand, ExecKind, ExecReply, ExecStatus, MAX_OUTPUT, keep_output};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;

/// Commands one agent runs at once; more wait their turn.
pub const MAX_RUNNING: usize = 8;

/// Runs `cmd` if this device allows commands, and says how it went.
pub async fn run(cmd: &ExecCommand, allowed: bool) -> ExecReply {
    if !allowed {
        return ExecReply::bare(ExecStatus::Refused, "agent started without --allow-exec");
    }
    let mut command = match cmd.kind {
        ExecKind::Shell => {
            let mut c = Command::new("sh");
            c.arg("-c").arg(cmd.args.join(" "));
            c
        }
        ExecKind::Docker => {
            let mut c = Command::new("docker");
            c.args(&cmd.args);
            c
        }
    };
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let started = Instant::now();
    let program = match cmd.kind {
        ExecKind::Shell => "sh",
        ExecKind::Docker => "docker",
    };
    let mut child = match command.spawn() {
        Ok(c) => c,
        Err(e) => {
            return ExecReply::bare(ExecStatus::Error, &format!("cannot start `{program}`: {e}"));
        }
    };
    let pid = child.id();
    let (Some(out), Some(err)) = (child.stdout.take(), child.stderr.take()) else {
        return ExecReply::bare(ExecStatus::Error, "internal: no pipes to the command");
    };
    let timeout = Duration::from_secs(cmd.timeout_s);
    let all = async {
        let (o, e, status) = tokio::join!(drain(out), drain(err), child.wait());
        (o, e, status)
    };
    match tokio::time::timeout(timeout, all).await {
        Ok((o, e, status)) => {
            let (stdout, cut_o) = keep_output(&o);
            let (stderr, cut_e) = keep_output(&e);
            let (status, exit_code) = match status {
                Ok(s) => match s.code() {
                    Some(code) => (ExecStatus::Exited, Some(code)),
                    // Killed by a signal: the shell's convention, 128 + signal.
                    None => {
                        use std::os::unix::process::ExitStatusExt;
                        (ExecStatus::Exited, s.signal().map(|sig| 128 + sig))
                    }
                },
                Err(e) => {
                    return ExecReply::bare(ExecStatus::Error, &format!("waiting for it: {e}"));
                }
            };
            ExecReply {
                status,
                exit_code,
                stdout,
                stderr,
                truncated: cut_o || cut_e,
                duration_ms: started.elapsed().as_millis() as u64,
            }
        }
        Err(_) => {
            kill_group(pid).await;
            ExecReply {
                duration_ms: started.elapsed().as_millis() as u64,
                ..ExecReply::bare(
                    ExecStatus::Timeout,
                    &format!("still running after {} s; killed", cmd.timeout_s),
                )
            }
        }
    }
}

/// Reads a stream to its end, keeping the first [`MAX_OUTPUT`] + 1 bytes (the extra byte
/// tells `keep_output` it was cut).
async fn drain(mut r: impl AsyncRead + Unpin) -> Vec<u8> {
    let mut kept = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return kept,
            Ok(n) => {
                let room = (MAX_OUTPUT + 1).saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
}

/// Kills the command's whole process group (a shell's children too). The agent forbids
/// `unsafe`, so the signal is sent by `kill(1)`; `kill_on_drop` still gets the direct child
/// if that fails.
async fn kill_group(pid: Option<u32>) {
    let Some(pid) = pid else { return };
    let _ = Command::new("kill")
        .arg("-KILL")
        .arg("--")
        .arg(format!("-{pid}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shell(line: &str, timeout_s: u64) -> ExecCommand {
        ExecCommand {
            id: "t".into(),
            kind: ExecKind::Shell,
            args: vec![line.into()],
            timeout_s,
        }
    }

    #[tokio::test]
    async fn runs_a_shell_line_and_keeps_both_streams() {
        let r = run(&shell("echo out; echo err >&2; exit 3", 10), true).await;
        assert_eq!(r.status, ExecStatus::Exited);
        assert_eq!(r.exit_code, Some(3));
        assert_eq!(r.stdout, "out\n");
        assert_eq!(r.stderr, "err\n");
        assert!(!r.truncated);
    }

    #[tokio::test]
    async fn refuses_without_opt_in() {
        let r = run(&shell("touch /tmp/should-not-exist", 10), false).await;
        assert_eq!(r.status, ExecStatus::Refused);
        assert!(r.stderr.contains("--allow-exec"));
    }

    #[tokio::test]
    async fn kills_the_whole_group_at_the_timeout() {
        let marker = std::env::temp_dir().join(format!("gustavo-exec-{}", std::process::id()));
        let line = format!("(sleep 3; touch {}) & sleep 30", marker.display());
        let r = run(&shell(&line, 1), true).await;
        assert_eq!(r.status, ExecStatus::Timeout);
        // The background child was in the group too: it never gets to touch the marker.
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert!(!marker.exists());
    }

    #[tokio::test]
    async fn caps_output_without_blocking() {
        let r = run(&shell("head -c 200000 /dev/zero | tr '\\0' x", 20), true).await;
        assert_eq!(r.exit_code, Some(0));
        assert!(r.truncated);
        assert_eq!(r.stdout.len(), MAX_OUTPUT);
    }

    #[tokio::test]
    async fn a_missing_program_is_an_error_or_127() {
        let r = run(&shell("no-such-program-gustavo", 10), true).await;
        assert_eq!(r.exit_code, Some(127));
        assert!(r.stderr.contains("not found"));
    }
}
