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
    /// The server's address. On the server's own machine it is found by itself.
    #[arg(long, global = true, env = "GUSTAVO_SERVER")]
    pub server: Option<String>,
    /// A bearer token: the admin token for the CLI, the join token for `agent`.
    #[arg(long, global = true, env = "GUSTAVO_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// How to print results.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Format::Table)]
    pub output: Format,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the control plane (and, unless --no-agent, an agent for this machine).
    Server(ServerArgs),
    /// Run the agent that makes this device's containers match the server's wishes.
    Agent(AgentArgs),
    /// Create, update and delete apps.
    #[command(subcommand)]
    Apps(AppsCmd),
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
    /// How often each agent sends vitals.
    #[arg(long, default_value = "10s")]
    pub heartbeat: String,
    /// How long to hold steady state before the changes.
    #[arg(long, default_value = "30s")]
    pub duration: String,
    /// Agents sharing one HTTP/2 connection.
    #[arg(long, default_value_t = 100)]
    pub per_connection: usize,
    /// Time a simulated pull or container start takes.
    #[arg(long, default_value = "10ms")]
    pub sim_delay: String,
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
}

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// This device's name (default: the host name).
    #[arg(long, env = "GUSTAVO_NODE_NAME")]
    pub name: Option<String>,
    /// A device group to join; repeat for several.
    #[arg(
        long = "group",
        short = 'g',
        env = "GUSTAVO_GROUPS",
        value_delimiter = ','
    )]
    pub groups: Vec<String>,
    /// A label `key=value`; repeat for several.
    #[arg(long = "label", short = 'l')]
    pub labels: Vec<String>,
    /// Where the credential and the desired-state cache live.
    #[arg(long, env = "GUSTAVO_AGENT_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// How often vitals are sent, e.g. 5s.
    #[arg(long, default_value = "5s")]
    pub heartbeat: String,
    /// How often containers are relisted even when nothing signals a change, e.g. 10s.
    #[arg(long, default_value = "10s")]
    pub resync: String,
}

#[derive(Debug, Args)]
pub struct WaitArgs {
    /// Wait until every device of the app's groups runs the change.
    #[arg(long)]
    pub wait: bool,
    /// Give up waiting after this long, e.g. 120s or 5m.
    #[arg(long, default_value = "300s")]
    pub timeout: String,
}

#[derive(Debug, Subcommand)]
pub enum AppsCmd {
    /// Register an app from a YAML file and attach it to device groups.
    Create {
        #[arg(short = 'n', long)]
        name: String,
        #[arg(short = 'f', long)]
        file: PathBuf,
        /// Device group to attach to (created on demand); repeat for several.
        #[arg(short = 'd', long = "device-group")]
        groups: Vec<String>,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Replace an app's spec from a YAML file.
    Update {
        #[arg(short = 'n', long)]
        name: String,
        #[arg(short = 'f', long)]
        file: PathBuf,
        /// Replace the app's device groups with these.
        #[arg(short = 'd', long = "device-group")]
        groups: Vec<String>,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Delete an app: its containers leave every device.
    Delete {
        #[arg(short = 'n', long)]
        name: String,
        /// Do not ask for confirmation.
        #[arg(short = 'y', long)]
        yes: bool,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// List apps.
    List,
    /// Show one app.
    Get {
        #[arg(short = 'n', long)]
        name: String,
    },
    /// Start a stopped app.
    Start {
        #[arg(short = 'n', long)]
        name: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Stop an app: its containers are removed, the app is kept.
    Stop {
        #[arg(short = 'n', long)]
        name: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Recreate every container of an app.
    Restart {
        #[arg(short = 'n', long)]
        name: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum GroupsCmd {
    /// List device groups.
    List,
    /// Show one device group.
    Get {
        #[arg(short = 'n', long)]
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum NodesCmd {
    /// List registered devices.
    List,
    /// Remove a device: its credential stops working at once.
    Remove { name: String },
}

/// `-d GROUP -h HOST`, as the seed's CLI has them (so `-h` is not help here).
#[derive(Debug, Args)]
pub struct CacheFilter {
    /// Only devices of this group.
    #[arg(short = 'd', long = "device-group")]
    pub group: Option<String>,
    /// Only this device.
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
