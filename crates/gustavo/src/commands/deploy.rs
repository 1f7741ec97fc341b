//! `gustavo deploy UUID [--client-key K] [--location lat,lon] [--client-ip IP]
//! [--results N] [--explain]`: Sinfonia's deploy call made with this user's token, or the
//! matcher chain's ranking with the reason for every site.

use anyhow::Result;
use gustavo_client::sinfonia::DeployHints;
use gustavo_model::sites::{GeoPoint, parse_uuid};
use gustavo_model::wireguard::{KeyPair, PublicKey};

use crate::cli::{Cli, DeployArgs, Format};
use crate::output::{data, show};
use crate::{EXIT_USAGE, Exit, connect};

pub async fn run(cli: &Cli, args: &DeployArgs) -> Result<()> {
    let usage = |m: String| anyhow::Error::from(Exit(EXIT_USAGE, m));
    let uuid = parse_uuid(&args.uuid).map_err(usage)?;
    if let Some(l) = &args.location {
        GeoPoint::parse(l).map_err(|e| usage(format!("--location: {e}")))?;
    }
    if let Some(ip) = &args.client_ip {
        ip.parse::<std::net::IpAddr>()
            .map_err(|_| usage(format!("--client-ip `{ip}` is not an IP address")))?;
    }
    if !(1..=3).contains(&args.results) {
        return Err(usage("--results must be 1 to 3".into()));
    }
    let client = connect::client(cli)?;
    if args.explain {
        let e = client
            .explain(&uuid, args.client_ip.as_deref(), args.location.as_deref())
            .await?;
        if cli.output != Format::Table {
            data(cli.output, &e);
            return Ok(());
        }
        outln!(
            "recipe {} (app {}), client {}{}; chain: {}",
            e.uuid,
            e.app,
            e.client_ip,
            e.client_location
                .map(|l| format!(" at {},{}", l.lat, l.lon))
                .unwrap_or_default(),
            e.ranking
                .chain
                .iter()
                .map(|m| serde_json::to_value(m)
                    .ok()
                    .and_then(|v| v.as_str().map(String::from))
                    .unwrap_or_default())
                .collect::<Vec<_>>()
                .join(" → ")
        );
        let mut rows: Vec<Vec<String>> = e
            .ranking
            .kept
            .iter()
            .enumerate()
            .map(|(i, k)| {
                vec![
                    (i + 1).to_string(),
                    k.site.clone(),
                    k.node.clone(),
                    k.reasons.join("; "),
                ]
            })
            .collect();
        rows.extend(e.ranking.dropped.iter().map(|d| {
            vec![
                "dropped".into(),
                d.site.clone(),
                String::new(),
                format!("{}: {}", d.matcher, d.reason),
            ]
        }));
        show(cli.output, &e, &["rank", "site", "node", "why"], rows);
        return Ok(());
    }
    let (key, pair) = match &args.client_key {
        Some(k) => (
            PublicKey::parse(k).map_err(|e| usage(format!("--client-key: {e}")))?,
            None,
        ),
        None => {
            let pair = KeyPair::from_secret(rand::random());
            (pair.public, Some(pair))
        }
    };
    let hints = DeployHints {
        client_ip: args.client_ip.clone(),
        location: args.location.clone(),
        results: Some(args.results),
    };
    let deployments = client
        .sinfonia_deploy(&uuid, &key.to_urlsafe(), &hints)
        .await?;
    if cli.output != Format::Table {
        data(cli.output, &deployments);
        return Ok(());
    }
    for d in &deployments {
        let t = &d.tunnel_config;
        outln!(
            "# deployment {} ({}), created {}",
            d.deployment_name,
            d.status,
            d.created
        );
        outln!("[Interface]");
        match &pair {
            Some(p) => outln!("PrivateKey = {}", p.private_base64()),
            None => outln!("# PrivateKey = <the private key of {}>", d.application_key),
        }
        outln!("Address = {}", t.address.join(", "));
        if !t.dns.is_empty() {
            outln!("DNS = {}", t.dns.join(", "));
        }
        outln!("\n[Peer]");
        outln!("PublicKey = {}", t.public_key);
        outln!("AllowedIPs = {}", t.allowed_ips.join(", "));
        if !t.endpoint.is_empty() {
            outln!("Endpoint = {}", t.endpoint);
        }
        outln!("PersistentKeepalive = 30\n");
    }
    eprintln!(
        "note: `gustavo deployments get NAME` shows whether the site's side of a tunnel is up"
    );
    Ok(())
}
