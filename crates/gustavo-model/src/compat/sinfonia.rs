//! Sinfonia's wire shapes (its `sinfonia_tier1.yaml` / `sinfonia_tier2.yaml` OpenAPI
//! files) and its `cloudlets.yaml` seed file.
//!
//! The real `sinfonia-tier3` client validates every deploy answer against its bundled
//! `sinfonia_tier2.yaml`: an array of `CloudletDeployment` with `UUID`, `ApplicationKey`,
//! `Status` and `TunnelConfig` required, `Created` a date-time, keys 32-byte base64. The
//! field names here are exactly those.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::lease::Deployment;
use crate::sites::{Cidr, GeoPoint, Site};

/// `WireguardConfig`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TunnelConfig {
    #[serde(rename = "publicKey")]
    pub public_key: String,
    #[serde(rename = "allowedIPs")]
    pub allowed_ips: Vec<String>,
    pub endpoint: String,
    pub address: Vec<String>,
    pub dns: Vec<String>,
}

/// `CloudletDeployment`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CloudletDeployment {
    #[serde(rename = "DeploymentName")]
    pub deployment_name: String,
    #[serde(rename = "UUID")]
    pub uuid: String,
    #[serde(rename = "ApplicationKey")]
    pub application_key: String,
    #[serde(rename = "Status")]
    pub status: String,
    #[serde(rename = "Created")]
    pub created: String,
    #[serde(rename = "TunnelConfig")]
    pub tunnel_config: TunnelConfig,
}

/// What a site's tunnel looks like to its clients.
#[derive(Debug, Clone, PartialEq)]
pub struct TunnelSettings {
    pub site_public_key: String,
    pub endpoint: String,
    pub allowed_ips: Vec<String>,
    pub dns: Vec<String>,
}

impl CloudletDeployment {
    pub fn from_deployment(d: &Deployment, t: &TunnelSettings) -> CloudletDeployment {
        let prefix = if d.address.is_ipv4() { 32 } else { 128 };
        CloudletDeployment {
            deployment_name: d.name.clone(),
            uuid: d.uuid.clone(),
            application_key: d.key.clone(),
            status: d.state.as_str().to_string(),
            created: rfc3339(d.created_at),
            tunnel_config: TunnelConfig {
                public_key: t.site_public_key.clone(),
                allowed_ips: t.allowed_ips.clone(),
                endpoint: t.endpoint.clone(),
                address: vec![format!("{}/{prefix}", d.address)],
                dns: t.dns.clone(),
            },
        }
    }
}

/// `CloudletInfo` (tier 1's `GET /cloudlets/`, and what a tier 2 posts to it).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CloudletInfo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    #[serde(default)]
    pub endpoint: String,
    #[serde(default)]
    pub locations: Vec<GeoPoint>,
    #[serde(default)]
    pub local_networks: Vec<Cidr>,
    #[serde(default)]
    pub accepted_clients: Vec<Cidr>,
    #[serde(default)]
    pub rejected_clients: Vec<Cidr>,
    #[serde(default)]
    pub resources: BTreeMap<String, f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_update: Option<String>,
}

/// `DeploymentRecipe` (tier 1's `GET /recipe/{uuid}/`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeploymentRecipe {
    pub chart: String,
    pub version: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    #[serde(default)]
    pub values: BTreeMap<String, serde_json::Value>,
}

/// One document of `cloudlets.yaml` (Sinfonia's schema, plus `node` or `group` to say
/// which of our nodes the site is, and `tunnel_endpoint`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloudletDoc {
    #[serde(default)]
    pub name: Option<String>,
    pub endpoint: String,
    #[serde(default)]
    pub location: Option<GeoPoint>,
    #[serde(default)]
    pub locations: Vec<GeoPoint>,
    #[serde(default)]
    pub local_networks: Vec<Cidr>,
    #[serde(default)]
    pub accepted_clients: Vec<Cidr>,
    #[serde(default)]
    pub rejected_clients: Vec<Cidr>,
    #[serde(default)]
    pub resources: BTreeMap<String, f64>,
    #[serde(default)]
    pub node: Option<String>,
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub tunnel_endpoint: Option<String>,
}

/// Turns a display name (`Orchestrator@CMU`) into a site name (`Orchestrator-CMU`).
pub fn site_name(text: &str) -> String {
    crate::names::sanitize(text)
}

/// The host of a URL (`http://host:port/path` → `host`), without brackets.
fn url_host(url: &str) -> Option<&str> {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority
        .rsplit_once('@')
        .map(|(_, h)| h)
        .unwrap_or(authority);
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next()?
    } else {
        authority.split(':').next()?
    };
    (!host.is_empty()).then_some(host)
}

/// Parses Sinfonia's multi-document `cloudlets.yaml` into sites (without keys or
/// revision). A document without `node`/`group` is the node named like the site.
pub fn parse_cloudlets(yaml: &str) -> Result<Vec<Site>, String> {
    if yaml.len() > crate::spec::MAX_SPEC_BYTES {
        return Err("the file is larger than 4 MiB".into());
    }
    let docs: Vec<CloudletDoc> =
        serde_saphyr::from_multiple(yaml).map_err(|e| format!("cloudlets file: {e}"))?;
    let mut out: Vec<Site> = Vec::new();
    for (i, d) in docs.into_iter().enumerate() {
        let n = i + 1;
        if !d.endpoint.ends_with("/deploy") || !d.endpoint.contains("/api/v") {
            return Err(format!(
                "document {n}: endpoint `{}` must end in /api/v<N>/deploy (Sinfonia's rule)",
                d.endpoint
            ));
        }
        let host = url_host(&d.endpoint)
            .ok_or_else(|| format!("document {n}: endpoint `{}` has no host", d.endpoint))?;
        let name = site_name(d.name.as_deref().unwrap_or(host));
        let mut locations: Vec<GeoPoint> = d.location.into_iter().collect();
        for l in d.locations {
            if !locations.contains(&l) {
                locations.push(l);
            }
        }
        // Sinfonia's default for local networks: the endpoint's global addresses. Only a
        // literal address is used here (no DNS lookups in the model).
        let local_networks = if d.local_networks.is_empty() {
            host.parse::<std::net::IpAddr>()
                .ok()
                .filter(|ip| !ip.is_loopback() && !ip.is_unspecified())
                .map(|ip| Cidr {
                    addr: ip,
                    prefix: if ip.is_ipv4() { 32 } else { 128 },
                })
                .into_iter()
                .collect()
        } else {
            d.local_networks
        };
        let (node, group) = match (d.node, d.group) {
            (None, None) => (Some(name.clone()), None),
            other => other,
        };
        let site = Site {
            name,
            node,
            group,
            endpoint: Some(d.endpoint.clone()),
            locations,
            local_networks,
            // `0.0.0.0/0` (Sinfonia's default) and "empty" both accept everyone.
            accepted_clients: d.accepted_clients,
            rejected_clients: d.rejected_clients,
            resources: d
                .resources
                .into_iter()
                .filter(|(_, v)| v.is_finite())
                .collect(),
            tunnel_endpoint: d.tunnel_endpoint,
            wg_public_key: String::new(),
            wg_private_key: String::new(),
            revision: 0,
            updated_at: 0,
        };
        site.validate().map_err(|e| format!("document {n}: {e}"))?;
        if out.iter().any(|s| s.name == site.name) {
            return Err(format!("document {n}: site `{}` appears twice", site.name));
        }
        out.push(site);
    }
    if out.is_empty() {
        return Err("the cloudlets file holds no documents".into());
    }
    Ok(out)
}

/// Unix seconds as RFC 3339 UTC (`2026-12-03T08:29:58Z`), what `format: date-time` wants.
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The README's example, verbatim.
    const README: &str = "\
name: Orchestrator@CMU
endpoint: http://cloudlet.elijah.cs.cmu.edu/api/v1/deploy
local_networks:
  - 128.2.0.0/16
  - 128.237.0.0/16
location: [40.4439, -79.9444]
accepted_clients:
  - 0.0.0.0/0
resources:
  cpu_ratio: 0.1
  mem_ratio: 0.5
  gpu_ratio: 0.0
  net_tx_rate: 11000
  net_rx_rate: 1000
---
name: Orchestrator@Home
endpoint: http://localhost:5000/api/v1/deploy
location: [40.4465, -79.9032]
local_networks:
  - 192.168.0.0/16
accepted_clients:
  - 192.168.0.0/16
";

    #[test]
    fn reads_the_readme_example() {
        let sites = parse_cloudlets(README).unwrap();
        assert_eq!(sites.len(), 2);
        assert_eq!(sites[0].name, "Orchestrator-CMU");
        assert_eq!(sites[0].node.as_deref(), Some("Orchestrator-CMU"));
        assert_eq!(sites[0].local_networks.len(), 2);
        assert_eq!(sites[0].resources["net_tx_rate"], 11000.0);
        assert_eq!(sites[1].accepted_clients[0].to_string(), "192.168.0.0/16");
        assert_eq!(sites[1].locations[0].lat, 40.4465);
    }

    #[test]
    fn our_extensions_and_defaults() {
        let sites = parse_cloudlets(
            "endpoint: https://10.1.2.3:5000/api/v1/deploy\ngroup: edge\nlocations: [[1, 2], [3, 4]]\nlocation: [1, 2]\n",
        )
        .unwrap();
        assert_eq!(sites[0].name, "10-1-2-3");
        assert_eq!(sites[0].group.as_deref(), Some("edge"));
        assert_eq!(sites[0].node, None);
        assert_eq!(sites[0].locations.len(), 2);
        assert_eq!(sites[0].local_networks[0].to_string(), "10.1.2.3/32");
    }

    #[test]
    fn refuses_what_sinfonia_refuses() {
        let e = parse_cloudlets("name: x\nendpoint: http://h/api/v1\n").unwrap_err();
        assert!(e.contains("/api/v<N>/deploy"), "{e}");
        let e =
            parse_cloudlets("endpoint: http://h/api/v1/deploy\nlocation: [100, 0]\n").unwrap_err();
        assert!(e.contains("latitude"), "{e}");
        let e = parse_cloudlets("endpoint: http://h/api/v1/deploy\ncolour: red\n").unwrap_err();
        assert!(e.contains("colour"), "{e}");
        assert!(parse_cloudlets("").is_err());
    }

    #[test]
    fn dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_796_287_798), "2026-12-03T08:49:58Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn deployment_shape() {
        let d = Deployment {
            name: "hello-0011aabb".into(),
            app: "hello".into(),
            uuid: "00000000-0000-0000-0000-000000000000".into(),
            key: "k".into(),
            site: "s".into(),
            node: "n".into(),
            client_ip: "1.2.3.4".into(),
            client_location: None,
            address: "10.5.0.9".parse().unwrap(),
            state: crate::lease::LeaseState::Deployed,
            created_at: 0,
            renewed_at: 0,
            since: 0,
            renewals: 0,
            revision: 1,
            slot: 0,
        };
        let t = TunnelSettings {
            site_public_key: "pk".into(),
            endpoint: "h:51820".into(),
            allowed_ips: vec!["10.5.0.0/16".into()],
            dns: vec!["10.5.0.1".into()],
        };
        let v = serde_json::to_value(CloudletDeployment::from_deployment(&d, &t)).unwrap();
        assert_eq!(v["Status"], "Deployed");
        assert_eq!(v["TunnelConfig"]["address"][0], "10.5.0.9/32");
        assert_eq!(v["TunnelConfig"]["allowedIPs"][0], "10.5.0.0/16");
        assert_eq!(v["DeploymentName"], "hello-0011aabb");
    }
}
