//! `gustavo hosts install|check`: the pure parts — what a host is (`[user@]host[:port]`),
//! the facts a probe script prints and how they are read, the service files (systemd unit,
//! plain init script) as text, and which architecture a binary must be for a host.
//!
//! The steps that use them run in the CLI (`commands/hosts.rs`) over SSH.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};
use thiserror::Error;

/// Where the installed pieces live on a host.
pub const BINARY_PATH: &str = "/usr/local/bin/gustavo";
pub const UNIT_PATH: &str = "/etc/systemd/system/gustavo-agent.service";
pub const INIT_PATH: &str = "/etc/init.d/gustavo-agent";
pub const TOKEN_PATH: &str = "/etc/gustavo/join-token";
pub const DATA_DIR: &str = "/var/lib/gustavo-agent";
pub const LOG_PATH: &str = "/var/log/gustavo-agent.log";
pub const PID_PATH: &str = "/run/gustavo-agent.pid";

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HostError {
    #[error("host `{0}`: empty user before `@`")]
    EmptyUser(String),
    #[error("host `{0}`: no host name")]
    EmptyHost(String),
    #[error("host `{0}`: port `{1}` is not a number from 1 to 65535")]
    BadPort(String, String),
    #[error(
        "`{0}`: only letters, digits and `-_.:/=@,+` may appear in an agent setting (it goes into a service file)"
    )]
    UnsafeArg(String),
}

/// One host of a host list: `[user@]host[:port]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// As written in the list, for tables.
    pub spec: String,
    pub user: Option<String>,
    pub host: String,
    pub port: Option<u16>,
}

impl Host {
    pub fn parse(spec: &str) -> Result<Host, HostError> {
        let (user, rest) = match spec.split_once('@') {
            Some(("", _)) => return Err(HostError::EmptyUser(spec.into())),
            Some((u, r)) => (Some(u.to_string()), r),
            None => (None, spec),
        };
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) => {
                let port = p
                    .parse::<u16>()
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| HostError::BadPort(spec.into(), p.into()))?;
                (h, Some(port))
            }
            None => (rest, None),
        };
        if host.is_empty() {
            return Err(HostError::EmptyHost(spec.into()));
        }
        Ok(Host {
            spec: spec.into(),
            user,
            host: host.into(),
            port,
        })
    }
}

/// The shell script that prints a host's facts as `key=value` lines. Run as root (through
/// sudo) where it can be, so it may look into the agent's data dir.
pub fn probe_script() -> String {
    format!(
        r#"echo "os=$(uname -s)"; echo "arch=$(uname -m)"; echo "uid=$(id -u)"
echo "hostname=$(hostname 2>/dev/null || cat /etc/hostname)"
if [ -r /etc/os-release ]; then (. /etc/os-release; echo "distro=$PRETTY_NAME"); fi
if [ -d /run/systemd/system ]; then echo init=systemd; else echo init=sysv; fi
for m in apt-get dnf yum zypper apk; do if command -v $m >/dev/null 2>&1; then echo "pkg=$m"; break; fi; done
if command -v docker >/dev/null 2>&1; then echo "docker=$(docker --version 2>/dev/null)"
  docker info --format '{{{{.ServerVersion}}}}' >/tmp/.gustavo-docker-info 2>/dev/null && echo "engine=$(cat /tmp/.gustavo-docker-info)"; rm -f /tmp/.gustavo-docker-info; fi
if [ -f {bin} ]; then echo "binary=$(sha256sum {bin} | cut -d' ' -f1)"; echo "version=$({bin} --version 2>/dev/null)"; fi
if [ -f {unit} ]; then echo "service=$(sha256sum {unit} | cut -d' ' -f1)"; elif [ -f {init} ]; then echo "service=$(sha256sum {init} | cut -d' ' -f1)"; fi
if [ -s {data}/node.json ]; then echo joined=yes; fi
if [ -s {token} ]; then echo token=yes; fi
if [ -d /run/systemd/system ]; then systemctl is-active --quiet gustavo-agent 2>/dev/null && echo running=yes
elif [ -f {pid} ] && kill -0 "$(cat {pid})" 2>/dev/null; then echo running=yes; fi
"#,
        bin = BINARY_PATH,
        unit = UNIT_PATH,
        init = INIT_PATH,
        data = DATA_DIR,
        token = TOKEN_PATH,
        pid = PID_PATH,
    )
}

/// What a probe found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    pub os: String,
    pub arch: String,
    pub uid: Option<u32>,
    pub hostname: String,
    pub distro: String,
    pub systemd: bool,
    /// The package manager: apt-get, dnf, yum, zypper or apk.
    pub pkg: Option<String>,
    /// `docker --version`, when the CLI is there.
    pub docker: Option<String>,
    /// The engine's version, when it answers.
    pub engine: Option<String>,
    /// SHA-256 of the installed binary.
    pub binary: Option<String>,
    pub version: Option<String>,
    /// SHA-256 of the installed service file.
    pub service: Option<String>,
    pub joined: bool,
    pub token: bool,
    pub running: bool,
}

impl Facts {
    pub fn parse(text: &str) -> Facts {
        let kv: BTreeMap<&str, &str> = text
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim(), v.trim()))
            .collect();
        let get = |k: &str| kv.get(k).filter(|v| !v.is_empty()).map(|v| v.to_string());
        Facts {
            os: get("os").unwrap_or_default(),
            arch: get("arch").unwrap_or_default(),
            uid: get("uid").and_then(|u| u.parse().ok()),
            hostname: get("hostname").unwrap_or_default(),
            distro: get("distro").unwrap_or_default(),
            systemd: get("init").as_deref() == Some("systemd"),
            pkg: get("pkg"),
            docker: get("docker"),
            engine: get("engine"),
            binary: get("binary"),
            version: get("version"),
            service: get("service"),
            joined: get("joined").is_some(),
            token: get("token").is_some(),
            running: get("running").is_some(),
        }
    }

    pub fn is_linux(&self) -> bool {
        self.os == "Linux"
    }
}

/// The Rust architecture name (`std::env::consts::ARCH`) a binary must be built for to run
/// on a host whose `uname -m` says `machine`.
pub fn rust_arch(machine: &str) -> &str {
    match machine {
        "x86_64" | "amd64" => "x86_64",
        "aarch64" | "arm64" | "armv8l" => "aarch64",
        m if m.starts_with("armv7") || m.starts_with("armv6") => "arm",
        "i386" | "i486" | "i586" | "i686" => "x86",
        "riscv64" => "riscv64",
        other => other,
    }
}

/// The package installing Docker from the host's own distribution, and the command line.
pub fn docker_install_command(pkg: &str, reinstall: bool) -> Option<String> {
    Some(match pkg {
        // Lists may be missing or stale on a fresh host: refresh once if the first try fails.
        "apt-get" => {
            let re = if reinstall { " --reinstall" } else { "" };
            format!(
                "export DEBIAN_FRONTEND=noninteractive; apt-get install -y -q{re} docker.io \
                 || {{ apt-get update -q && apt-get install -y -q{re} docker.io; }}"
            )
        }
        "dnf" => format!(
            "dnf {} -y moby-engine || dnf {} -y docker",
            if reinstall { "reinstall" } else { "install" },
            if reinstall { "reinstall" } else { "install" }
        ),
        "yum" => format!(
            "yum {} -y docker",
            if reinstall { "reinstall" } else { "install" }
        ),
        "zypper" => format!(
            "zypper --non-interactive install {}docker",
            if reinstall { "--force " } else { "" }
        ),
        "apk" => "apk add docker".to_string(),
        _ => return None,
    })
}

/// What the installed agent is started with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentService {
    pub binary: String,
    pub server: String,
    pub group: String,
    /// More flags (`--allow-exec`).
    pub extra: Vec<String>,
}

impl AgentService {
    /// The agent's command line, each part checked to be safe in a unit file and in `sh`.
    pub fn args(&self) -> Result<Vec<String>, HostError> {
        let mut args = vec![
            "agent".to_string(),
            "--server".into(),
            self.server.clone(),
            "--token-file".into(),
            TOKEN_PATH.into(),
            "--group".into(),
            self.group.clone(),
            "--data-dir".into(),
            DATA_DIR.into(),
        ];
        args.extend(self.extra.iter().cloned());
        for a in std::iter::once(&self.binary).chain(&args) {
            let safe = !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.:/=@,+".contains(c));
            if !safe {
                return Err(HostError::UnsafeArg(a.clone()));
            }
        }
        Ok(args)
    }

    /// A systemd unit: restarted whenever it stops, after the network and Docker.
    pub fn systemd_unit(&self) -> Result<String, HostError> {
        let args = self.args()?.join(" ");
        Ok(format!(
            "# Installed by `gustavo hosts install`; a later run rewrites it.\n\
             [Unit]\n\
             Description=Gustavo edge agent\n\
             Wants=network-online.target\n\
             After=network-online.target docker.service\n\
             \n\
             [Service]\n\
             ExecStart={bin} {args}\n\
             Restart=always\n\
             RestartSec=5\n\
             \n\
             [Install]\n\
             WantedBy=multi-user.target\n",
            bin = self.binary,
        ))
    }

    /// A plain init script for hosts without systemd (start, stop, restart, status), with
    /// a pid file; enabled at boot by `update-rc.d` / `chkconfig` / `rc-update` where present.
    pub fn init_script(&self) -> Result<String, HostError> {
        let args = self.args()?.join(" ");
        Ok(format!(
            r#"#!/bin/sh
### BEGIN INIT INFO
# Provides:          gustavo-agent
# Required-Start:    $network $remote_fs
# Required-Stop:     $network $remote_fs
# Default-Start:     2 3 4 5
# Default-Stop:      0 1 6
# Short-Description: Gustavo edge agent
### END INIT INFO
# Installed by `gustavo hosts install`; a later run rewrites it.
PIDFILE={pid}
LOG={log}
running() {{ [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }}
start() {{
    running && return 0
    setsid {bin} {args} >>"$LOG" 2>&1 </dev/null &
    echo $! >"$PIDFILE"
}}
stop() {{
    if running; then
        kill "$(cat "$PIDFILE")"
        i=0
        while running && [ $i -lt 20 ]; do sleep 0.5; i=$((i + 1)); done
        running && kill -9 "$(cat "$PIDFILE")"
    fi
    rm -f "$PIDFILE"
}}
case "$1" in
    start) start ;;
    stop) stop ;;
    restart) stop; start ;;
    status) if running; then echo running; else echo stopped; exit 3; fi ;;
    *) echo "usage: $0 start|stop|restart|status" >&2; exit 2 ;;
esac
"#,
            pid = PID_PATH,
            log = LOG_PATH,
            bin = self.binary,
        ))
    }
}

/// SHA-256 of some bytes, as hex (what `sha256sum` prints).
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// `s` single-quoted for `sh`.
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_with_users_and_ports() {
        let h = Host::parse("pi@red01:2222").unwrap();
        assert_eq!(
            (h.user.as_deref(), h.host.as_str(), h.port),
            (Some("pi"), "red01", Some(2222))
        );
        let h = Host::parse("10.0.0.5").unwrap();
        assert_eq!((h.user, h.port), (None, None));
        assert!(matches!(Host::parse("@x"), Err(HostError::EmptyUser(_))));
        assert!(matches!(Host::parse("u@"), Err(HostError::EmptyHost(_))));
        assert!(matches!(Host::parse("x:0"), Err(HostError::BadPort(..))));
        assert!(matches!(Host::parse("x:ssh"), Err(HostError::BadPort(..))));
    }

    #[test]
    fn facts_from_a_probe() {
        let f = Facts::parse(
            "os=Linux\narch=aarch64\nuid=1000\nhostname=red01\ndistro=Debian GNU/Linux 12 (bookworm)\n\
             init=sysv\npkg=apt-get\ndocker=Docker version 20.10.24+dfsg1, build 297e128\n\
             engine=20.10.24+dfsg1\njoined=yes\nrunning=yes\nnoise without equals\n",
        );
        assert!(f.is_linux());
        assert_eq!(f.uid, Some(1000));
        assert_eq!(rust_arch(&f.arch), "aarch64");
        assert!(!f.systemd && f.joined && f.running && !f.token);
        assert_eq!(f.pkg.as_deref(), Some("apt-get"));
        assert_eq!(f.engine.as_deref(), Some("20.10.24+dfsg1"));
        assert_eq!(f.binary, None);
        let f = Facts::parse("os=Darwin\ninit=systemd\n");
        assert!(!f.is_linux() && f.systemd && f.docker.is_none());
    }

    #[test]
    fn architectures() {
        assert_eq!(rust_arch("x86_64"), "x86_64");
        assert_eq!(rust_arch("armv7l"), "arm");
        assert_eq!(rust_arch("arm64"), "aarch64");
        assert_eq!(rust_arch("mips"), "mips");
    }

    fn svc() -> AgentService {
        AgentService {
            binary: BINARY_PATH.into(),
            server: "https://10.0.0.1:7420".into(),
            group: "edge".into(),
            extra: vec!["--allow-exec".into()],
        }
    }

    #[test]
    fn service_files_carry_the_agent_command() {
        let unit = svc().systemd_unit().unwrap();
        assert!(unit.contains(
            "ExecStart=/usr/local/bin/gustavo agent --server https://10.0.0.1:7420 \
             --token-file /etc/gustavo/join-token --group edge --data-dir /var/lib/gustavo-agent --allow-exec\n"
        ));
        assert!(unit.contains("Restart=always"));
        let init = svc().init_script().unwrap();
        assert!(init.starts_with("#!/bin/sh\n"));
        assert!(
            init.contains("setsid /usr/local/bin/gustavo agent --server https://10.0.0.1:7420")
        );
        // The same settings give the same text, so a second run sees nothing to change.
        assert_eq!(
            sha256_hex(init.as_bytes()),
            sha256_hex(svc().init_script().unwrap().as_bytes())
        );
    }

    #[test]
    fn unsafe_settings_are_refused() {
        let mut s = svc();
        s.extra = vec!["--label".into(), "a=b; rm -rf /".into()];
        assert!(matches!(s.systemd_unit(), Err(HostError::UnsafeArg(a)) if a.contains("rm")));
        let mut s = svc();
        s.server = "https://x/$(id)".into();
        assert!(s.init_script().is_err());
    }

    #[test]
    fn docker_from_the_distribution() {
        let apt = docker_install_command("apt-get", false).unwrap();
        assert!(apt.contains("apt-get install -y -q docker.io"));
        assert!(
            docker_install_command("apt-get", true)
                .unwrap()
                .contains("--reinstall")
        );
        assert!(docker_install_command("pacman", false).is_none());
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
    }
}
