//! `gustavo docker (--nodes LIST | -d GROUP) -- ARGS…`: the node's `docker` CLI with ARGS on
//! many nodes, as Cloudmesh's `cms docker ARGS --host=NAMES` — through the agents, as
//! `gustavo exec` does (the arguments are passed as they are, no shell).

use anyhow::Result;
use gustavo_model::exec::ExecKind;

use crate::cli::{Cli, ExecArgs};

pub async fn run(cli: &Cli, args: &ExecArgs) -> Result<()> {
    super::exec::run(cli, args, ExecKind::Docker).await
}
