//! Whom the agent trusts. Over `https` the agent trusts exactly one CA:
//! - given with `--ca-file` (checked against the join token's fingerprint when it has one);
//! - or fetched from the server (`GET /api/v1/ca`) at join and accepted only if its SHA-256
//!   matches the fingerprint inside the join token, so joining over an untrusted network
//!   needs nothing but the token, and a server with another CA is refused.
//!
//! The CA is then kept in `node.json` beside the node's credential, and every later
//! connection checks the server against it alone.

use gustavo_client::{Client, ClientError, ca_fingerprint, fetch_pinned_ca};
use gustavo_model::access::JoinToken;

use crate::persist::{Identity, Persist};
use crate::{AgentConfig, AgentError};

fn is_tls(server: &str) -> bool {
    server.starts_with("https://")
}

/// A client for registering with the join token, and the CA it trusts.
pub async fn join_client(
    cfg: &AgentConfig,
    token: &str,
) -> Result<(Client, Option<String>), AgentError> {
    let jt = JoinToken::parse(token).map_err(AgentError::BadToken)?;
    if !is_tls(&cfg.server) {
        return Ok((Client::new(&cfg.server, &jt.secret), None));
    }
    let ca = match (&cfg.ca_pem, &jt.ca_fingerprint) {
        (Some(pem), want) => {
            if let Some(want) = want {
                let got = ca_fingerprint(pem).map_err(AgentError::Untrusted)?;
                if !got.eq_ignore_ascii_case(want) {
                    return Err(AgentError::Untrusted(ClientError::CaMismatch {
                        url: "--ca-file".into(),
                        want: want.clone(),
                        got,
                    }));
                }
            }
            pem.clone()
        }
        (None, Some(want)) => {
            let mut wait = std::time::Duration::from_millis(500);
            loop {
                match fetch_pinned_ca(&cfg.server, want).await {
                    Ok(pem) => break pem,
                    Err(e @ ClientError::Unreachable { .. }) => {
                        tracing::warn!(error = %e, "cannot fetch the server's CA yet; retrying");
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(std::time::Duration::from_secs(15));
                    }
                    Err(e) => return Err(AgentError::Untrusted(e)),
                }
            }
        }
        (None, None) => return Err(AgentError::NoCa),
    };
    tracing::info!(
        fingerprint = %ca_fingerprint(&ca).unwrap_or_default(),
        "trusting the server's CA"
    );
    let client =
        Client::with_ca(&cfg.server, &jt.secret, Some(&ca)).map_err(AgentError::Untrusted)?;
    Ok((client, Some(ca)))
}

/// A client acting as the node, trusting the CA kept with its identity.
pub fn node_client(cfg: &AgentConfig, id: &Identity) -> Result<Client, AgentError> {
    let ca = id.ca.as_deref().or(cfg.ca_pem.as_deref());
    if is_tls(&cfg.server) && ca.is_none() {
        return Err(AgentError::NoCa);
    }
    Client::with_ca(&cfg.server, &id.token, ca).map_err(AgentError::Untrusted)
}

/// Replaces the node's credential with a new one from the server and saves it; the old
/// one is dead once the server answers. Retries while the server is unreachable.
pub async fn rotate(
    dir: &dyn Persist,
    client: &Client,
    id: Identity,
) -> Result<Identity, AgentError> {
    let mut wait = std::time::Duration::from_millis(500);
    loop {
        match client.rotate(&id.node).await {
            Ok(r) => {
                let new = Identity {
                    token: r.token,
                    ..id
                };
                dir.save_identity(&new)
                    .map_err(|source| AgentError::DataDir {
                        path: dir.describe(),
                        source,
                    })?;
                tracing::info!(node = %new.node, "rotated the node credential");
                return Ok(new);
            }
            Err(e @ ClientError::Api { .. }) => {
                return Err(AgentError::Refused {
                    server: client.base().to_string(),
                    answer: e,
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot rotate the credential yet; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(std::time::Duration::from_secs(15));
            }
        }
    }
}
