//! `gustavo deployments list|get|delete`.

use anyhow::Result;

use crate::cli::{Cli, DeploymentsCmd, Format};
use crate::connect;
use crate::output::{ago, changed, data, show};

pub async fn run(cli: &Cli, cmd: &DeploymentsCmd) -> Result<()> {
    let client = connect::client(cli)?;
    let list = match cmd {
        DeploymentsCmd::List => client.list_deployments().await?,
        DeploymentsCmd::Get { name } => {
            let d = client.get_deployment(name).await?;
            if cli.output != Format::Table {
                data(cli.output, &d);
                return Ok(());
            }
            vec![d]
        }
        DeploymentsCmd::Delete { name } => {
            client.delete_deployment(name).await?;
            changed("deployment", name, "deleted", None);
            return Ok(());
        }
    };
    let now = crate::output::now();
    let rows = list
        .iter()
        .map(|v| {
            let d = &v.deployment;
            vec![
                d.name.clone(),
                d.app.clone(),
                d.state.as_str().to_string(),
                d.site.clone(),
                d.node.clone(),
                d.client_ip.clone(),
                d.address.to_string(),
                ago(d.renewed_at),
                if v.lease_ends_at > now {
                    format!("in {}", crate::output::duration(v.lease_ends_at - now))
                } else {
                    "ended".into()
                },
                match (v.tunnel.set_up, v.tunnel.latest_handshake) {
                    (false, _) => "not set up".into(),
                    (true, 0) => "up".into(),
                    (true, at) => format!("connected {}", ago(at)),
                },
            ]
        })
        .collect();
    show(
        cli.output,
        &list,
        &[
            "deployment",
            "app",
            "state",
            "site",
            "node",
            "client",
            "address",
            "renewed",
            "lease ends",
            "tunnel",
        ],
        rows,
    );
    // One deployment: the tunnel's state in words (why it is not up, or how it is).
    if let (DeploymentsCmd::Get { .. }, [v]) = (cmd, list.as_slice()) {
        outln!("tunnel: {}", v.tunnel.reason);
    }
    Ok(())
}
