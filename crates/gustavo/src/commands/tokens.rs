//! `gustavo tokens create|list|revoke`: join tokens for agents.

use anyhow::Result;
use gustavo_model::auth_api::CreateJoinToken;

use crate::cli::{Cli, Format, TokensCmd};
use crate::connect;
use crate::output::{ago, changed, parse_duration, show};

/// `in 3h`, `expired 2m ago`, or `never`.
pub fn expiry(t: Option<u64>) -> String {
    match t {
        None => "never".into(),
        Some(t) if t > crate::output::now() => {
            format!("in {}", crate::output::duration(t - crate::output::now()))
        }
        Some(t) => ago(t),
    }
}

pub async fn run(cli: &Cli, cmd: &TokensCmd) -> Result<()> {
    let client = connect::client(cli)?;
    match cmd {
        TokensCmd::Create {
            group,
            ttl,
            description,
        } => {
            let ttl_s = ttl
                .as_deref()
                .map(|t| parse_duration("ttl", t).map(|d| d.as_secs().max(1)))
                .transpose()?;
            let t = client
                .create_join_token(&CreateJoinToken {
                    group: group.clone(),
                    ttl_s,
                    description: description.clone(),
                })
                .await?;
            match cli.output {
                Format::Table => {
                    outln!("{}", t.token);
                    eprintln!(
                        "join token {} created (group: {}, expires: {}); it is shown only now",
                        t.info.id,
                        t.info.group.as_deref().unwrap_or("any"),
                        expiry(t.info.expires_at)
                    );
                }
                f => crate::output::data(f, &t),
            }
        }
        TokensCmd::List => {
            let list = client.list_join_tokens().await?;
            let rows = list
                .iter()
                .map(|t| {
                    vec![
                        t.id.clone(),
                        t.state.clone(),
                        t.group.clone().unwrap_or_else(|| "-".into()),
                        ago(t.created_at),
                        expiry(t.expires_at),
                        t.description.clone(),
                    ]
                })
                .collect();
            show(
                cli.output,
                &list,
                &["id", "state", "group", "created", "expires", "description"],
                rows,
            );
        }
        TokensCmd::Revoke { id } => {
            client.revoke_join_token(id).await?;
            match cli.output {
                Format::Table => changed("join token", id, "revoked", None),
                f => crate::output::data(f, &serde_json::json!({"revoked": id})),
            }
        }
    }
    Ok(())
}
