//! The command line, declared with clap. Global flags say where the server is and how to
//! print; each subcommand's arguments sit beside its name here and its code in `commands/`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "gustavo",
    version,
    about = "Run containerised apps across a fleet of edge devices"
)]
pub struct Cli {
    /// A config file. For the CLI: the client config (server, CA, token), as the server
    /// writes to <data-dir>/client.toml and `gustavo login` to ~/.config/gustavo/client.toml.
    /// For `server` and `agent`: their TOML settings, keys named like their flags
    /// (GUSTAVO_SERVER_CONFIG / GUSTAVO_AGENT_CONFIG; GUSTAVO_CONFIG is the CLI's only).
    #[arg(long, global = true, env = "GUSTAVO_CONFIG")]
    pub config: Option<PathBuf>,
    /// The server's address. On the server's own machine it is found by itself.
    #[arg(long, global = true, env = "GUSTAVO_SERVER")]
    pub server: Option<String>,
    /// A bearer token: a user's or the admin's for the CLI, the join token for `agent`.
    #[arg(long, global = true, env = "GUSTAVO_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The CA certificate (PEM) that vouches for the server, instead of the config's.
    #[arg(long, global = true, env = "GUSTAVO_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// How to print results: a table for people, or JSON or YAML for scripts. For
    /// `apps get`, `yaml` is the app file, ready for `apps update -f`.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Format::Table)]
    pub output: Format,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
    Yaml,
}

// Parsed once per process: the size of the server's many flags costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the control plane (and, unless --no-agent, an agent for this machine).
    Server(ServerArgs),
    /// Run the agent that makes this device's containers match the server's wishes.
    Agent(AgentArgs),
    /// Create, update and delete apps.
    #[command(subcommand)]
    Apps(AppsCmd),
    /// Staged rollouts of apps with a `rollout:` block: follow, pause, resume, abort.
    #[command(subcommand)]
    Rollouts(RolloutsCmd),
    /// Device groups.
    #[command(subcommand)]
    Groups(GroupsCmd),
    /// Registered devices.
    #[command(subcommand)]
    Nodes(NodesCmd),
    /// Obtain status of various workers on the platform.
    #[command(subcommand)]
    Cache(CacheCmd),
    /// Benchmarks.
    #[command(subcommand)]
    Bench(BenchCmd),
    /// Join tokens for agents.
    #[command(subcommand)]
    Tokens(TokensCmd),
    /// People who may use the API.
    #[command(subcommand)]
    Users(UsersCmd),
    /// User groups and their grants on apps and device groups.
    #[command(subcommand, name = "user-groups")]
    UserGroups(UserGroupsCmd),
    /// What non-admins may run on a device group (dangerous fields, image allowlist).
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// Log in with a password; the token is kept in ~/.config/gustavo/client.toml.
    Login(LoginArgs),
    /// Forget this machine's login (and revoke its token).
    Logout,
    /// Who the server thinks you are.
    Whoami,
    /// Read the audit log: every change, who made it, from where, allowed or refused.
    Audit(AuditArgs),
    /// What the control plane did and saw: nodes offline, lost and back, cordons and
    /// drains, replicas placed, apps changed (kept in the server's memory).
    Events {
        /// Keep printing new events as they happen (Ctrl-C to stop).
        #[arg(long, short = 'f')]
        follow: bool,
        /// Only events after this id.
        #[arg(long, default_value_t = 0)]
        after: u64,
    },
    /// Run-to-completion jobs: once on the best node, or on a schedule on every member.
    #[command(subcommand)]
    Jobs(JobsCmd),
    /// Run a shell command on many nodes through their agents (admin; nodes opt in with
    /// `gustavo agent --allow-exec`): `gustavo exec --nodes 'red[01-05]' -- uptime`.
    Exec(ExecArgs),
    /// Run `docker ARGS…` on many nodes through their agents, as `gustavo exec` does:
    /// `gustavo docker -d edge -- ps`.
    Docker(ExecArgs),
    /// Install Docker and the agent on hosts over SSH, and check them.
    #[command(subcommand)]
    Hosts(HostsCmd),
    /// Edge sites (Sinfonia's cloudlets): import a cloudlets.yaml, list them.
    #[command(subcommand)]
    Sites(SitesCmd),
    /// Deploy a recipe app's backend for one client on the best site (Sinfonia's deploy
    /// call), or with --explain show how the sites rank and why.
    Deploy(DeployArgs),
    /// Per-client deployments and their leases.
    #[command(subcommand)]
    Deployments(DeploymentsCmd),
    /// Peer mode (devices that run services for each other with no server): make a
    /// cluster, join a device to it, list a device's peers.
    #[command(subcommand)]
    Peer(PeerCmd),
    /// Print a shell completion script: `gustavo completion bash > /etc/bash_completion.d/gustavo`.
    Completion {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// Where and how `gustavo exec` / `gustavo docker` run.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["nodes", "group"])))]
pub struct ExecArgs {
    /// The nodes: a host list such as `red[01-05],blue` (pdsh / Cloudmesh syntax).
    #[arg(long, value_name = "LIST")]
    pub nodes: Option<String>,
    /// Every node of this device group.
    #[arg(short = 'd', long = "device-group", value_name = "GROUP")]
    pub group: Option<String>,
    /// How many nodes run it at once.
    #[arg(long, default_value_t = 16)]
    pub parallel: u32,
    /// How long it may run on each node, e.g. 30s or 5m; then it is killed.
    #[arg(long, default_value = "30s")]
    pub timeout: String,
    /// The output column's width in the table (`-o json` has the whole output).
    #[arg(long, default_value_t = 48)]
    pub width: usize,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "ARGS")]
    pub args: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum HostsCmd {
    /// Install Docker (from the host's own packages, where missing), the gustavo binary and
    /// an agent service on hosts over SSH; with --join, join them to this cluster.
    Install(HostsInstallArgs),
    /// Over SSH: reachable, OS and arch, Docker version, agent installed and running, and
    /// (from the server) joined and last seen.
    Check(HostsSshArgs),
}

/// How to reach hosts over SSH (the system's `ssh`, host keys always checked).
#[derive(Debug, Args)]
pub struct HostsSshArgs {
    /// The hosts: a host list such as `pi@red[01-05],blue` (`user@` per host wins over --user).
    #[arg(value_name = "LIST")]
    pub hosts: String,
    /// The SSH user (default: ssh's own choice).
    #[arg(long)]
    pub user: Option<String>,
    /// The private key to log in with.
    #[arg(long, value_name = "PATH")]
    pub ssh_key: Option<PathBuf>,
    /// The SSH port.
    #[arg(long, default_value_t = 22)]
    pub port: u16,
    /// The known_hosts file host keys are checked against (default: ssh's own).
    #[arg(long, value_name = "PATH")]
    pub known_hosts: Option<PathBuf>,
    /// Accept and remember the key of a host seen for the first time (a changed key is
    /// still refused). Without it an unknown host is refused.
    #[arg(long)]
    pub accept_new_host_keys: bool,
    /// How many hosts are worked on at once.
    #[arg(long, default_value_t = 16)]
    pub parallel: usize,
    /// How long one step (one SSH command or copy) may take, e.g. 10m.
    #[arg(long, default_value = "10m")]
    pub step_timeout: String,
    /// How long to wait for an SSH connection, e.g. 10s.
    #[arg(long, default_value = "10s")]
    pub connect_timeout: String,
    /// A file holding the sudo password (mode 0600), for users whose sudo asks for one;
    /// otherwise it is prompted for once, when needed and a terminal is there.
    #[arg(long, value_name = "PATH")]
    pub sudo_password_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct HostsInstallArgs {
    #[command(flatten)]
    pub ssh: HostsSshArgs,
    /// Join the hosts to this cluster (a join token is made for the run).
    #[arg(long)]
    pub join: bool,
    /// Reinstall Docker, the binary and the service even where present.
    #[arg(long)]
    pub force: bool,
    /// The device group the joined hosts go in.
    #[arg(long = "group", short = 'g', default_value = "default")]
    pub group: String,
    /// The server URL as the hosts reach it (default: the one this CLI uses).
    #[arg(long, value_name = "URL")]
    pub join_server: Option<String>,
    /// The gustavo binary to copy (default: this one, when the host's architecture matches).
    #[arg(long, value_name = "PATH")]
    pub binary: Option<PathBuf>,
    /// Extra flags for the installed agent, e.g. `--allow-exec`; repeat for several.
    #[arg(long = "agent-arg", value_name = "FLAG", allow_hyphen_values = true)]
    pub agent_args: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum SitesCmd {
    /// Create or replace sites from Sinfonia's multi-document cloudlets.yaml. A document's
    /// `node:` or `group:` says which of our nodes it is (default: the node named like
    /// the site).
    Import {
        /// The cloudlets file.
        file: PathBuf,
    },
    /// List sites with their nodes, live load and deployments.
    List,
    /// Delete a site (refused while deployments live on it).
    Delete {
        /// The site's name.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum PeerCmd {
    /// Make a new peer cluster: its CA (certificate and key, one PEM file, mode 0600).
    /// Copy the file to every device and run `gustavo peer join FILE` there.
    Init {
        /// Where to write the cluster file.
        #[arg(long, default_value = "gustavo-peer-cluster.pem", value_name = "FILE")]
        out: PathBuf,
    },
    /// Join this device to a peer cluster: keeps the cluster file in the agent's data dir.
    Join {
        /// The file `gustavo peer init` wrote.
        file: PathBuf,
        /// The agent's data dir (as `gustavo agent --data-dir`).
        #[arg(long, env = "GUSTAVO_AGENT_DATA_DIR")]
        data_dir: Option<PathBuf>,
    },
    /// This device and its peers as its agent sees them: address, score, last seen.
    List {
        /// The agent's local listener.
        #[arg(long, default_value = "127.0.0.1:7421", value_name = "ADDR")]
        agent: String,
    },
}

#[derive(Debug, Args)]
pub struct DeployArgs {
    /// The recipe's UUID.
    pub uuid: String,
    /// The client's WireGuard public key (base64); default: a new key pair, whose private
    /// key goes into the printed wg.conf.
    #[arg(long)]
    pub client_key: Option<String>,
    /// Where the client is: `lat,lon`.
    #[arg(long)]
    pub location: Option<String>,
    /// The client's address (default: this machine's, as the server sees it).
    #[arg(long)]
    pub client_ip: Option<String>,
    /// How many sites to deploy on (at most 3).
    #[arg(long, default_value_t = 1)]
    pub results: usize,
    /// Show the ranking and the reasons instead of deploying.
    #[arg(long)]
    pub explain: bool,
}

#[derive(Debug, Subcommand)]
pub enum DeploymentsCmd {
    /// List deployments with their lease state.
    List,
    /// Show one deployment, with its tunnel config.
    Get {
        /// The deployment's name.
        name: String,
    },
    /// Tear a deployment down now.
    Delete {
        /// The deployment's name.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokensCmd {
    /// Make a join token; it is printed once.
    Create {
        /// Put nodes joining with it in exactly this device group.
        #[arg(long)]
        group: Option<String>,
        /// How long it stays valid, e.g. 24h (default: no expiry).
        #[arg(long)]
        ttl: Option<String>,
        /// A note shown by `tokens list`.
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List join tokens (never their secrets).
    List,
    /// Revoke a join token by its id; nodes that joined with it keep their own credential.
    Revoke {
        /// The token's id, as `tokens list` shows it.
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum UsersCmd {
    /// Create a user. The password is read from stdin (one line), or prompted for.
    Create {
        /// The user's name.
        name: String,
        /// admin, operator or viewer.
        #[arg(long, default_value = "viewer")]
        role: String,
        /// A user group whose grants apply; repeat for several.
        #[arg(long = "group", short = 'g')]
        groups: Vec<String>,
    },
    /// List users.
    List,
    /// Delete a user; their tokens stop working at once.
    Delete {
        /// The user's name.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum UserGroupsCmd {
    /// Create or replace a user group's grants.
    Set {
        /// The user group's name.
        name: String,
        /// `APP=ro|rw` (`*` for every app); repeat for several.
        #[arg(long = "app")]
        apps: Vec<String>,
        /// `GROUP=ro|rw` (`*` for every device group); repeat for several.
        #[arg(long = "device-group", short = 'd')]
        device_groups: Vec<String>,
    },
    /// List user groups with their grants and members.
    List,
    /// Delete a user group.
    Delete {
        /// The user group's name.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum PolicyCmd {
    /// Set a device group's policy (replacing the old one).
    Set {
        /// The device group the policy is for.
        group: String,
        /// privileged, devices, host-network or host-volumes; repeat or comma-separate.
        #[arg(long, value_delimiter = ',')]
        allow: Vec<String>,
        /// An allowed image: a repository (any tag) or a reference with @digest; repeat.
        #[arg(long = "image")]
        images: Vec<String>,
    },
    /// List policies.
    List,
    /// Remove a device group's policy (back to: admins only, any image).
    Delete {
        /// The device group whose policy goes.
        group: String,
    },
}

#[derive(Debug, Args)]
pub struct LoginArgs {
    /// The user name.
    #[arg(long, short = 'u')]
    pub user: String,
    /// Read the password from stdin instead of prompting.
    #[arg(long)]
    pub password_stdin: bool,
    /// How long the session lasts, e.g. 12h (at most 30 days).
    #[arg(long)]
    pub ttl: Option<String>,
}

#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Only entries newer than this, e.g. 1h, 30m, or Unix seconds.
    #[arg(long)]
    pub since: Option<String>,
    /// Only this actor: a user name, `admin`, `node:NAME`…
    #[arg(long)]
    pub user: Option<String>,
    /// Only objects starting with this: `app:web` (one app), `app:` (every app), `node:cam-1`.
    #[arg(long)]
    pub object: Option<String>,
    /// At most this many entries (the newest).
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
}

#[derive(Debug, Subcommand)]
pub enum BenchCmd {
    /// Simulate a fleet of agents against one server and measure it. Without --server it
    /// starts a server of its own.
    Fleet(FleetArgs),
}

#[derive(Debug, Args)]
pub struct FleetArgs {
    /// How many simulated agents.
    #[arg(long, default_value_t = 1000)]
    pub agents: usize,
    /// The longest time between two vitals reports of each agent (the agent's --heartbeat).
    #[arg(long, default_value = "60s")]
    pub heartbeat: String,
    /// How many updates between the create and the delete (each is timed).
    #[arg(long, default_value_t = 3)]
    pub updates: usize,
    /// Apps every agent runs while the one timed is changed: this many less one are
    /// created (and waited for) before the idle window.
    #[arg(long, default_value_t = 1)]
    pub apps: usize,
    /// Apps of a group no simulated agent is in, created before the idle window: what the
    /// server's other groups' apps cost each agent's change.
    #[arg(long, default_value_t = 0)]
    pub other_apps: usize,
    /// Run the benchmark's own server pinned to these CPUs (`taskset -c LIST`), e.g. 0; run
    /// the benchmark itself under `taskset -c 1` to keep the simulated fleet off them.
    #[arg(long)]
    pub server_cpus: Option<String>,
    /// How long to hold steady state before the changes.
    #[arg(long, default_value = "30s")]
    pub duration: String,
    /// Agents sharing one HTTP/2 connection.
    #[arg(long, default_value_t = 100)]
    pub per_connection: usize,
    /// Time a simulated pull or container start takes.
    #[arg(long, default_value = "10ms")]
    pub sim_delay: String,
    /// Simulated agents long-poll (`POST …/sync`) instead of holding one stream each.
    #[arg(long)]
    pub no_stream: bool,
    /// Give up on a phase after this long.
    #[arg(long, default_value = "600s")]
    pub timeout: String,
    /// The join token, with --server.
    #[arg(long)]
    pub join_token: Option<String>,
    /// Agents are named PREFIX-00001…
    #[arg(long, default_value = "sim")]
    pub prefix: String,
    /// Also write the JSON report to this file.
    #[arg(long)]
    pub save: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ServerArgs {
    /// Print the settings this server would run with (defaults < --config file <
    /// GUSTAVO_* environment < flags), secrets hidden, and exit.
    #[arg(long)]
    pub print_config: bool,
    /// Where the database and tokens live.
    #[arg(long, env = "GUSTAVO_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, env = "GUSTAVO_LISTEN", default_value = "0.0.0.0:7420")]
    pub listen: SocketAddr,
    /// Do not run an agent for this machine.
    #[arg(long, env = "GUSTAVO_NO_AGENT")]
    pub no_agent: bool,
    /// Name of this machine's agent (default: the host name).
    #[arg(long)]
    pub agent_name: Option<String>,
    /// Device groups of this machine's agent.
    #[arg(long = "agent-group", default_value = "default")]
    pub agent_groups: Vec<String>,
    /// Largest request body, in bytes.
    #[arg(long, default_value_t = 1024 * 1024)]
    pub body_limit: usize,
    /// Serve plain HTTP instead of TLS. Tokens then cross the network in clear.
    #[arg(long, env = "GUSTAVO_INSECURE_HTTP")]
    pub insecure_http: bool,
    /// Serve this certificate chain (PEM) instead of one signed by the server's own CA.
    #[arg(long, requires = "tls_key", conflicts_with = "insecure_http")]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// An extra name or address for the generated certificate; repeat for several.
    #[arg(long = "tls-san")]
    pub tls_sans: Vec<String>,
    /// How long a client may take to finish the TLS handshake, from its connection.
    #[arg(long, default_value = "10s")]
    pub handshake_timeout: String,
    /// How long a client may take to send a request's headers: for the first request of a
    /// connection counted from the connection (TLS handshake included), for later ones from
    /// their first byte.
    #[arg(long, default_value = "10s")]
    pub header_timeout: String,
    /// How long a client may take to send a request's body, from the end of its headers;
    /// past it the answer is 408 and the connection is closed.
    #[arg(long, default_value = "30s")]
    pub body_timeout: String,
    /// How long a connection with no request in progress stays open (HTTP/1.1 keep-alive,
    /// HTTP/2 with no open stream). Long-polls are requests in progress.
    #[arg(long, default_value = "60s")]
    pub idle_timeout: String,
    /// The most client connections open at once (default: what the open-file limit allows
    /// after a reserve, at most 16384). At the cap, connections that presented no credential
    /// are closed first to make room.
    #[arg(long, env = "GUSTAVO_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// How long a node may be silent before the replicas placed on it are placed elsewhere
    /// (it shows offline after three missed heartbeats, 15 s at least, before that).
    #[arg(long, default_value = "18s")]
    pub replica_grace: String,
    /// How long a job callback is retried (with backoff, up to a minute apart) before it
    /// is given up.
    #[arg(long, default_value = "24h")]
    pub callback_expiry: String,
    /// Placement score: weight of each free core (cores × idle fraction).
    #[arg(long, default_value_t = 1.0)]
    pub score_cpu: f64,
    /// Placement score: weight of each free GB of memory.
    #[arg(long, default_value_t = 1.0)]
    pub score_memory: f64,
    /// Placement score: weight of each free GB of disk.
    #[arg(long, default_value_t = 0.01)]
    pub score_disk: f64,
    /// Per-client deployments: how long a lease lasts after the client's last request.
    #[arg(long, default_value = "300s")]
    pub lease_duration: String,
    /// Per-client deployments: how long an expired lease's backend keeps running (state
    /// Expiring; a request brings it back) before it is removed.
    #[arg(long, default_value = "60s")]
    pub lease_grace: String,
    /// Where clients' WireGuard tunnel addresses come from (IPv4 network).
    #[arg(long, default_value = "10.5.0.0/16")]
    pub client_network: String,
    /// DNS server or search domain handed to deploy clients; repeat for several.
    #[arg(long = "client-dns")]
    pub client_dns: Vec<String>,
    /// The site matcher chain, in order (network, location, resources, random).
    #[arg(long, default_value = "network,location,resources,random")]
    pub matchers: String,
    /// Deploy requests without a token, per client key and address, per minute.
    #[arg(long, default_value_t = 30)]
    pub anonymous_deploys_per_minute: u32,
    /// Node pressure for nodes whose groups set none: `on` (the defaults), `off`, or
    /// settings such as `cpu=80/65,memory=80/70,load=1.5/1.0,disk=90/85,samples=3,
    /// hold-down=30s,stop-interval=10s,throttle-cpus=0.5,throttle-memory=1.25` (unnamed ones keep their default).
    #[arg(long, default_value = "on")]
    pub pressure: String,
    /// Watch the agentless hosts of FRACTAL's nodes.yaml through their Glances API from
    /// the start (as `gustavo nodes import` does).
    #[arg(long, value_name = "FILE")]
    pub watch: Option<PathBuf>,
    /// Where the client certificate for watched hosts' Docker APIs is: a directory with
    /// `ca.pem`, `cert.pem` and `key.pem` (Docker's DOCKER_CERT_PATH layout). Without it,
    /// hosts with `orchestrator: docker` are watched only.
    #[arg(long, value_name = "DIR")]
    pub docker_cert_path: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// Print the settings this agent would run with (defaults < --config file <
    /// GUSTAVO_* environment < flags), secrets hidden, and exit.
    #[arg(long)]
    pub print_config: bool,
    /// This device's name (default: the host name).
    #[arg(long, env = "GUSTAVO_NODE_NAME")]
    pub name: Option<String>,
    /// A device group to join; repeat for several.
    #[arg(
        long = "group",
        short = 'g',
        env = "GUSTAVO_GROUPS",
        value_delimiter = ',',
        default_value = "default"
    )]
    pub groups: Vec<String>,
    /// A label `key=value`; repeat for several.
    #[arg(long = "label", short = 'l')]
    pub labels: Vec<String>,
    /// Where the credential and the desired-state cache live.
    #[arg(long, env = "GUSTAVO_AGENT_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// The longest time between two vitals reports, e.g. 60s; they go sooner when they
    /// change meaningfully (CPU by 20 points, memory or disk by 10 % of their size, a
    /// pressure level). Liveness does not depend on it: the open long-poll is.
    #[arg(long, default_value = "60s")]
    pub heartbeat: String,
    /// How often containers are relisted even when nothing signals a change, e.g. 10s.
    #[arg(long, default_value = "10s")]
    pub resync: String,
    /// Replace this node's credential with a new one at start (the old one stops working).
    #[arg(long)]
    pub rotate: bool,
    /// The local listener (/health, /metrics): IP:PORT, or `off`. Default 127.0.0.1:7421,
    /// skipped with a warning if that port is taken.
    #[arg(long, env = "GUSTAVO_AGENT_LISTEN")]
    pub listen: Option<String>,
    /// Read the join token from this file (mode 0600 or stricter), so it is not on the
    /// command line for `ps` to show. `GUSTAVO_TOKEN` works too.
    #[arg(long, env = "GUSTAVO_TOKEN_FILE", value_name = "PATH")]
    pub token_file: Option<PathBuf>,
    /// Serve Samsung Edge Orchestration's service API (POST
    /// /api/v1/orchestration/services) on IP:PORT; the seed's is 127.0.0.1:56001. Callers
    /// must be on this device (loopback or one of its addresses). Off by default.
    #[arg(long, env = "GUSTAVO_SAMSUNG_LISTEN", value_name = "ADDR")]
    pub samsung_listen: Option<String>,
    /// A bearer token callers of the Samsung API must send (default: none, as the seed).
    #[arg(long, env = "GUSTAVO_SAMSUNG_TOKEN", value_name = "TOKEN")]
    pub samsung_token: Option<String>,
    /// An image (REPO, REPO:TAG or REPO@DIGEST) the Samsung API may run; repeat for
    /// several. Default: any, as the seed (the device groups' policies still apply).
    #[arg(long = "samsung-image", value_name = "IMAGE")]
    pub samsung_images: Vec<String>,
    /// A program `ExecutionType: native` may run on this device (its path or name);
    /// repeat for several. Default: none, so native requests are refused.
    #[arg(long = "samsung-native", value_name = "PROGRAM")]
    pub samsung_native: Vec<String>,
    /// Serve a Glances-compatible REST API (`/api/4` as Glances 4.5.8, `/api/3` as Glances
    /// 3.3) on IP or IP:PORT (port 61208 when left out), for FRACTAL, Home Assistant and
    /// other Glances collectors. No authentication: bind it to loopback or a trusted
    /// network. Off by default.
    #[arg(long, env = "GUSTAVO_GLANCES_LISTEN", value_name = "ADDR")]
    pub glances_listen: Option<String>,
    /// Run commands sent by `gustavo exec` / `gustavo docker` as this agent's user (remote
    /// code execution for the cluster's admins; off by default, refused when off).
    #[arg(long)]
    pub allow_exec: bool,
    /// Long-poll the server (`POST …/sync`, a request a minute when idle and two per change)
    /// instead of holding one HTTP/2 stream open. The agent long-polls anyway over HTTP/1.1
    /// or against a server without streams.
    #[arg(long)]
    pub no_stream: bool,
    /// Run the site's WireGuard interface for Sinfonia clients when deployments are placed
    /// here: `auto` (the kernel's WireGuard, else wireguard-go through /dev/net/tun; needs
    /// root or CAP_NET_ADMIN) or `off` (deployments here say their tunnel is not set up).
    #[arg(long, env = "GUSTAVO_WIREGUARD", default_value = "auto", value_parser = ["auto", "off"])]
    pub wireguard: String,
    /// The name of that interface (at most 15 characters).
    #[arg(long, default_value = "gustavo-wg", value_name = "NAME")]
    pub wireguard_interface: String,
    /// The UDP port that interface listens on (clients' Endpoint).
    #[arg(long, default_value_t = 51820, value_name = "PORT")]
    pub wireguard_port: u16,
    /// Peer mode: find this device's peers on the LAN (mDNS) and run services among them
    /// with no server (the cluster file from `gustavo peer join` is needed). Without
    /// `--server` the device is a peer only; with it, also its server's agent.
    #[arg(long)]
    pub peer: bool,
    /// The peer port (TLS 1.3, peers' certificates required).
    #[arg(long, default_value = "0.0.0.0:7422", value_name = "ADDR")]
    pub peer_listen: String,
    /// Announce and browse peers over mDNS (`_gustavo._tcp`): `on` or `off`.
    #[arg(long, default_value = "on", value_parser = ["on", "off"])]
    pub peer_mdns: String,
    /// A peer named by hand, `NAME@IP:PORT` (repeatable), for networks without multicast.
    #[arg(long = "peer-static", value_name = "NAME@ADDR")]
    pub peer_static: Vec<String>,
}

#[derive(Debug, Args)]
pub struct WaitArgs {
    /// Wait until every device of the app's groups runs the change.
    #[arg(long)]
    pub wait: bool,
    /// Give up waiting after this long, e.g. 120s or 5m.
    // Checked as the command line is read: a bad value found after the change was made
    // would say "usage error" about a change that happened.
    #[arg(long, default_value = "300s", value_parser = wait_timeout)]
    pub timeout: std::time::Duration,
}

fn wait_timeout(s: &str) -> Result<std::time::Duration, String> {
    gustavo_model::spec::Duration::parse(s)
        .map(std::time::Duration::from_millis)
        .map_err(|e| e.to_string())
}

/// An app's name: positional (`apps get web`) or, as the seed's CLI took it, `-n web`.
#[derive(Debug, Args)]
pub struct AppName {
    /// The app's name.
    #[arg(
        value_name = "NAME",
        required_unless_present = "name",
        conflicts_with = "name"
    )]
    pub app: Option<String>,
    /// The app's name, as the seed's CLI took it (the same as NAME).
    #[arg(short = 'n', long = "name", value_name = "NAME")]
    pub name: Option<String>,
}

impl AppName {
    pub fn get(&self) -> &str {
        // clap requires exactly one of the two.
        self.app
            .as_deref()
            .or(self.name.as_deref())
            .unwrap_or_default()
    }
}

#[derive(Debug, Subcommand)]
pub enum JobsCmd {
    /// Run a job from a YAML file (the app format plus retries, retry_backoff, deadline,
    /// callback_url and schedule): once on the best node, or with `schedule` on every
    /// member of its device groups.
    Run {
        #[command(flatten)]
        name: AppName,
        /// The job file (YAML; `-` for stdin); the job called NAME is taken.
        #[arg(short = 'f', long, value_name = "FILE")]
        file: PathBuf,
        /// A device group to run it on; repeat for several. Default: `default`.
        #[arg(short = 'd', long = "device-group", value_name = "GROUP")]
        groups: Vec<String>,
        /// Wait until a one-shot job succeeds (exit 0) or fails (exit 1).
        #[arg(long)]
        wait: bool,
        /// Give up waiting after this long.
        #[arg(long, default_value = "600s")]
        timeout: String,
    },
    /// List jobs.
    List,
    /// Show a job, its state and its recent runs.
    Get {
        #[command(flatten)]
        name: AppName,
    },
    /// Print the output (its last lines) of a job's run: the newest, or the one given.
    Logs {
        #[command(flatten)]
        name: AppName,
        /// The run: an attempt number, or a scheduled run's time (as `jobs get` shows).
        #[arg(long)]
        run: Option<u64>,
        /// Only runs on this node.
        #[arg(long)]
        node: Option<String>,
    },
    /// Delete a job: its runs stop on every device.
    Delete {
        #[command(flatten)]
        name: AppName,
    },
    /// Job callbacks not delivered yet, with their attempts and last error (admin).
    Callbacks,
}

#[derive(Debug, Subcommand)]
pub enum AppsCmd {
    /// Register an app from a YAML file and attach it to device groups.
    Create {
        #[command(flatten)]
        name: AppName,
        /// The app file (YAML; `-` for stdin). It may define several apps: the one called
        /// NAME is taken. At most 4 MiB.
        #[arg(short = 'f', long, value_name = "FILE")]
        file: PathBuf,
        /// A device group to attach the app to (created on demand); repeat for several.
        /// Default: `default`.
        #[arg(short = 'd', long = "device-group", value_name = "GROUP")]
        groups: Vec<String>,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Replace an app's spec from a YAML file (`apps get NAME -o yaml` writes one).
    Update {
        #[command(flatten)]
        name: AppName,
        /// The app file (YAML; `-` for stdin); the app called NAME is taken. At most 4 MiB.
        #[arg(short = 'f', long, value_name = "FILE")]
        file: PathBuf,
        /// Replace the app's device groups with these; repeat for several. Default: keep
        /// them.
        #[arg(short = 'd', long = "device-group", value_name = "GROUP")]
        groups: Vec<String>,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Delete an app: its containers leave every device.
    Delete {
        #[command(flatten)]
        name: AppName,
        /// Do not ask for confirmation.
        #[arg(short = 'y', long)]
        yes: bool,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// List apps.
    List,
    /// Show one app; `-o yaml` prints its app file, ready for `apps update -f`.
    Get {
        #[command(flatten)]
        name: AppName,
    },
    /// Start a stopped app.
    Start {
        #[command(flatten)]
        name: AppName,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Stop an app: its containers are removed, the app is kept.
    Stop {
        #[command(flatten)]
        name: AppName,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Recreate every container of an app.
    Restart {
        #[command(flatten)]
        name: AppName,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Every revision of an app: when, who, image and digest, and how it ended.
    History {
        #[command(flatten)]
        name: AppName,
    },
    /// Put an older revision back on every device at once (default: the one before).
    Rollback {
        #[command(flatten)]
        name: AppName,
        /// The revision to go back to (see `apps history`).
        #[arg(long, value_name = "REVISION")]
        to: Option<u64>,
        #[command(flatten)]
        wait: WaitArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum RolloutsCmd {
    /// Where an app's staged rollout stands: waves, devices done, failed and waiting.
    Get {
        #[command(flatten)]
        name: AppName,
    },
    /// Start no new wave until resumed (devices already in a wave go on).
    Pause {
        #[command(flatten)]
        name: AppName,
    },
    /// Go on with the next wave (after `pause: manual`, `rollouts pause`, or a halt).
    Resume {
        #[command(flatten)]
        name: AppName,
    },
    /// Stop the rollout and put the previous revision back on every device.
    Abort {
        #[command(flatten)]
        name: AppName,
    },
}

/// A device group's name: positional, or `-n NAME`.
#[derive(Debug, Args)]
pub struct GroupName {
    /// The device group's name.
    #[arg(
        value_name = "NAME",
        required_unless_present = "name",
        conflicts_with = "name"
    )]
    pub group: Option<String>,
    /// The device group's name (the same as NAME).
    #[arg(short = 'n', long = "name", value_name = "NAME")]
    pub name: Option<String>,
}

impl GroupName {
    pub fn get(&self) -> &str {
        // clap requires exactly one of the two.
        self.group
            .as_deref()
            .or(self.name.as_deref())
            .unwrap_or_default()
    }
}

#[derive(Debug, Subcommand)]
pub enum GroupsCmd {
    /// List device groups.
    List,
    /// Show one device group.
    Get {
        #[command(flatten)]
        name: GroupName,
    },
    /// Delete a device group that no app and no device uses any more.
    Delete {
        #[command(flatten)]
        name: GroupName,
    },
    /// Set the node pressure thresholds of a group's devices, e.g. `--settings
    /// cpu=80/65,memory=80/70,load=1.5/1.0,disk=90/85,samples=3,hold-down=30s,
    /// stop-interval=10s,throttle-cpus=0.5,throttle-memory=1.25` (HIGH/LOW; unnamed ones keep their default).
    /// A group that does not exist yet is made.
    #[command(name = "set-pressure")]
    SetPressure {
        #[command(flatten)]
        name: GroupName,
        /// The thresholds, KEY=VALUE separated by commas.
        #[arg(long)]
        settings: String,
    },
    /// Clear a group's node pressure thresholds: its devices use the server's.
    #[command(name = "clear-pressure")]
    ClearPressure {
        #[command(flatten)]
        name: GroupName,
    },
}

#[derive(Debug, Subcommand)]
pub enum NodesCmd {
    /// List registered devices.
    List,
    /// One device in full: status, pressure level and why, what pressure did.
    Get {
        /// The device's name.
        name: String,
    },
    /// Watch agentless hosts through their Glances API, from FRACTAL's nodes.yaml: they
    /// show in `cache hosts` and `cache vitals` and get pressure levels; with
    /// `orchestrator: docker` the server acts on their containers through the Docker API
    /// over TLS. Nothing is ever placed on them. Importing again updates them.
    Import {
        /// FRACTAL's nodes.yaml (`- node: {hostname, IP, port, orchestrator?,
        /// resources?}`; Gustavo also reads `docker: URL` and `scope: KEY=VALUE`).
        file: PathBuf,
        /// Pressure thresholds for these hosts, as `groups set-pressure --settings`
        /// takes them; default: the server's.
        #[arg(long, value_name = "SETTINGS")]
        pressure: Option<String>,
    },
    /// Remove a device: its credential stops working at once.
    Remove {
        /// The device's name.
        name: String,
        /// Do not ask for confirmation.
        #[arg(short = 'y', long)]
        yes: bool,
    },
    /// Each device's placement score and its parts, best first.
    Score {
        /// Also say why a device would not take this app's replicas.
        #[arg(long = "for", value_name = "APP")]
        app: Option<String>,
    },
    /// Take no new replicas on a device; what it runs stays.
    Cordon {
        /// The device's name.
        name: String,
    },
    /// Cordon a device and move its replicas off, one at a time, each running elsewhere
    /// before the old copy stops.
    Drain {
        /// The device's name.
        name: String,
        /// Wait until no replica is left on it.
        #[arg(long)]
        wait: bool,
        /// Give up waiting after this long, e.g. 120s or 5m.
        #[arg(long, default_value = "300s")]
        timeout: String,
    },
    /// Let a cordoned or drained device take new replicas again.
    Uncordon {
        /// The device's name.
        name: String,
    },
}

/// `-d GROUP -h HOST`, as the seed's CLI has them (so `-h` is not help here).
#[derive(Debug, Args)]
pub struct CacheFilter {
    /// Only devices of this group.
    #[arg(short = 'd', long = "device-group")]
    pub group: Option<String>,
    /// Only these devices: a host list such as `red[01-05],blue`.
    #[arg(short = 'h', long = "host")]
    pub host: Option<String>,
    /// Print help.
    #[arg(long, action = clap::ArgAction::Help)]
    pub help: Option<bool>,
}

#[derive(Debug, Subcommand)]
pub enum CacheCmd {
    /// Fetch all hosts.
    #[command(disable_help_flag = true)]
    Hosts(CacheFilter),
    /// Acquire vitals for devices.
    #[command(disable_help_flag = true)]
    Vitals(CacheFilter),
    /// Check container images on host and device_groups.
    #[command(disable_help_flag = true)]
    Containers(CacheFilter),
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    /// Issue 7: every flag and argument of every command says what it is for in `--help`.
    #[test]
    fn issue_7_every_argument_is_described() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path} {id}"));
                }
            }
            for sub in cmd.get_subcommands() {
                if sub.get_about().is_none() && sub.get_name() != "help" {
                    missing.push(format!("{path} {} (the command)", sub.get_name()));
                }
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "gustavo", &mut missing);
        assert!(missing.is_empty(), "undescribed: {missing:#?}");
    }

    #[test]
    fn names_are_positional_or_dash_n() {
        for args in [
            &["gustavo", "apps", "get", "web"][..],
            &["gustavo", "apps", "get", "-n", "web"],
        ] {
            let cli = Cli::try_parse_from(args).unwrap();
            let Command::Apps(AppsCmd::Get { name }) = cli.command else {
                panic!("{args:?}")
            };
            assert_eq!(name.get(), "web");
        }
        assert!(Cli::try_parse_from(["gustavo", "apps", "get"]).is_err());
        assert!(Cli::try_parse_from(["gustavo", "apps", "get", "a", "-n", "b"]).is_err());
        let cli = Cli::try_parse_from(["gustavo", "groups", "delete", "g"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Groups(GroupsCmd::Delete { .. })
        ));
    }
}
