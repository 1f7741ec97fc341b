//! `gustavo hosts install|check LIST`: hosts over SSH.

use anyhow::Result;

use crate::cli::{Cli, HostsCmd};

pub async fn run(_cli: &Cli, _cmd: &HostsCmd) -> Result<()> {
    anyhow::bail!("not yet")
}
