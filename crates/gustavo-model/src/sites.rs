//! Edge sites (Sinfonia's "cloudlets") and recipes.
//!
//! A **site** is a node, or a group of nodes, with what a client-facing matcher needs to
//! know about it: where it is (one or several `[lat, lon]` points), which client networks
//! are "local" to it, which clients it accepts or rejects, static resource figures, and the
//! WireGuard identity clients connect to. Live resource ratios come from the nodes' vitals
//! at match time, not from here.
//!
//! A **recipe** is the `recipe:` block of an app: the app is then deployed once per client
//! (a deployment on a lease, see `lease`) on one of its groups' sites, instead of on every
//! member.
//!
//! Also here: CIDR networks and the geodesic distance between two points (Vincenty's
//! inverse formula on the WGS-84 ellipsoid, which is what geopy's default gives to well
//! under a metre; a great-circle fallback where Vincenty does not converge, nearly
//! antipodal points).

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::spec::ByteSize;

/// An IP network, `10.0.0.0/8` or `2001:db8::/32`; a bare address is a /32 (/128).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let t = text.trim();
        let (a, p) = match t.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (t, None),
        };
        let addr: IpAddr = a
            .parse()
            .map_err(|_| format!("`{text}` is not a network (want 10.0.0.0/8 or fd00::/8)"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("`{text}`: the prefix length must be 0-{max}"))?,
        };
        Ok(Cidr { addr, prefix })
    }

    /// Whether `ip` is inside (an IPv4 client never matches an IPv6 network, except that
    /// an IPv4-mapped IPv6 address counts as its IPv4 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }

    /// The host addresses of an IPv4 network, without its network and broadcast
    /// addresses (for /31 and /32: every address). `None` for IPv6.
    pub fn v4_hosts(&self) -> Option<(u32, u32)> {
        let IpAddr::V4(n) = self.addr else {
            return None;
        };
        let size = 1u64 << (32 - u32::from(self.prefix));
        let base = u32::from(n)
            & u32::MAX
                .checked_shl(32 - u32::from(self.prefix))
                .unwrap_or(0);
        if size <= 2 {
            return Some((base, (u64::from(base) + size - 1) as u32));
        }
        Some((base + 1, (u64::from(base) + size - 2) as u32))
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Serialize for Cidr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Cidr::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A point on Earth: `[lat, lon]` in degrees, as Sinfonia writes it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GeoPoint {
    pub lat: f64,
    pub lon: f64,
}

impl GeoPoint {
    pub fn new(lat: f64, lon: f64) -> Result<GeoPoint, String> {
        if !(lat.is_finite() && (-90.0..=90.0).contains(&lat)) {
            return Err(format!("latitude {lat} is outside [-90, 90]"));
        }
        if !(lon.is_finite() && (-180.0..=180.0).contains(&lon)) {
            return Err(format!("longitude {lon} is outside [-180, 180]"));
        }
        Ok(GeoPoint { lat, lon })
    }

    /// `"lat,lon"` (the `X-Location` header and `--location`).
    pub fn parse(text: &str) -> Result<GeoPoint, String> {
        let bad = || format!("location `{text}` must be `lat,lon` in degrees, e.g. 40.44,-79.94");
        let (a, b) = text.split_once(',').ok_or_else(bad)?;
        let lat: f64 = a.trim().parse().map_err(|_| bad())?;
        let lon: f64 = b.trim().parse().map_err(|_| bad())?;
        GeoPoint::new(lat, lon)
    }

    /// Geodesic distance in km on the WGS-84 ellipsoid.
    pub fn distance_km(&self, other: &GeoPoint) -> f64 {
        vincenty_km(self, other).unwrap_or_else(|| haversine_km(self, other))
    }
}

impl Serialize for GeoPoint {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        [self.lat, self.lon].serialize(s)
    }
}

impl<'de> Deserialize<'de> for GeoPoint {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Vec::<f64>::deserialize(d)?;
        match v[..] {
            [lat, lon] => GeoPoint::new(lat, lon).map_err(serde::de::Error::custom),
            _ => Err(serde::de::Error::custom(format!(
                "a location is [lat, lon], got {} numbers",
                v.len()
            ))),
        }
    }
}

fn haversine_km(a: &GeoPoint, b: &GeoPoint) -> f64 {
    const R: f64 = 6371.0088;
    let (p1, p2) = (a.lat.to_radians(), b.lat.to_radians());
    let dp = p2 - p1;
    let dl = (b.lon - a.lon).to_radians();
    let h = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    2.0 * R * h.sqrt().min(1.0).asin()
}

/// Vincenty's inverse formula; `None` when it does not converge.
fn vincenty_km(p: &GeoPoint, q: &GeoPoint) -> Option<f64> {
    const A: f64 = 6_378_137.0;
    const F: f64 = 1.0 / 298.257_223_563;
    const B: f64 = A * (1.0 - F);
    if p.lat == q.lat && p.lon == q.lon {
        return Some(0.0);
    }
    let l = (q.lon - p.lon).to_radians();
    let u1 = ((1.0 - F) * p.lat.to_radians().tan()).atan();
    let u2 = ((1.0 - F) * q.lat.to_radians().tan()).atan();
    let (su1, cu1) = u1.sin_cos();
    let (su2, cu2) = u2.sin_cos();
    let mut lambda = l;
    for _ in 0..200 {
        let (sl, cl) = lambda.sin_cos();
        let sin_sigma = ((cu2 * sl).powi(2) + (cu1 * su2 - su1 * cu2 * cl).powi(2)).sqrt();
        if sin_sigma == 0.0 {
            return Some(0.0);
        }
        let cos_sigma = su1 * su2 + cu1 * cu2 * cl;
        let sigma = sin_sigma.atan2(cos_sigma);
        let sin_alpha = cu1 * cu2 * sl / sin_sigma;
        let cos2_alpha = 1.0 - sin_alpha * sin_alpha;
        let cos_2sm = if cos2_alpha == 0.0 {
            0.0
        } else {
            cos_sigma - 2.0 * su1 * su2 / cos2_alpha
        };
        let c = F / 16.0 * cos2_alpha * (4.0 + F * (4.0 - 3.0 * cos2_alpha));
        let prev = lambda;
        lambda = l
            + (1.0 - c)
                * F
                * sin_alpha
                * (sigma
                    + c * sin_sigma * (cos_2sm + c * cos_sigma * (-1.0 + 2.0 * cos_2sm * cos_2sm)));
        if (lambda - prev).abs() < 1e-12 {
            let u_sq = cos2_alpha * (A * A - B * B) / (B * B);
            let a =
                1.0 + u_sq / 16384.0 * (4096.0 + u_sq * (-768.0 + u_sq * (320.0 - 175.0 * u_sq)));
            let b = u_sq / 1024.0 * (256.0 + u_sq * (-128.0 + u_sq * (74.0 - 47.0 * u_sq)));
            let delta_sigma = b
                * sin_sigma
                * (cos_2sm
                    + b / 4.0
                        * (cos_sigma * (-1.0 + 2.0 * cos_2sm * cos_2sm)
                            - b / 6.0
                                * cos_2sm
                                * (-3.0 + 4.0 * sin_sigma * sin_sigma)
                                * (-3.0 + 4.0 * cos_2sm * cos_2sm)));
            return Some(B * a * (sigma - delta_sigma) / 1000.0);
        }
    }
    None
}

/// The least round-trip time light in fibre (about 200,000 km/s) needs over `km`.
pub fn min_rtt_ms(km: f64) -> f64 {
    2.0 * km / 200.0
}

/// An edge site as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Site {
    pub name: String,
    /// The node this site is (exclusive with `group`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The group whose members make up this site.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Sinfonia's `endpoint` (its tier-2 URL), kept for `GET /cloudlets/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub locations: Vec<GeoPoint>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub local_networks: Vec<Cidr>,
    /// Clients in ANY of these are accepted; empty accepts every client.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub accepted_clients: Vec<Cidr>,
    /// Clients in any of these are refused (checked first).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rejected_clients: Vec<Cidr>,
    /// Static figures from the file (`cpu_ratio`, …); live vitals win at match time.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub resources: BTreeMap<String, f64>,
    /// `host:port` clients send their tunnel to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel_endpoint: Option<String>,
    /// The site's WireGuard public key (standard base64).
    #[serde(default)]
    pub wg_public_key: String,
    /// Its private key, for the agent that will run the site's interface.
    #[serde(default)]
    pub wg_private_key: String,
    #[serde(default)]
    pub revision: u64,
    #[serde(default)]
    pub updated_at: u64,
}

/// Requirements a recipe puts on the site that runs it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Requirements {
    /// Free cores (cores × idle fraction) the node must have.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<f64>,
    /// Free memory, e.g. `512m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<ByteSize>,
    /// GPUs the node must have (its `gpu` label, a count).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<u32>,
    /// The most round-trip time light in fibre would need between client and site.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_rtt_ms: Option<f64>,
    /// The node's `arch` label (`x86_64`, `aarch64`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch: Option<String>,
}

/// An app's `recipe:` block.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// The UUID clients ask for (lower-case canonical form).
    #[serde(deserialize_with = "uuid_text")]
    pub uuid: String,
    /// Clients without a token may deploy it (rate-limited); private ones need a token.
    #[serde(default)]
    pub public: bool,
    #[serde(default)]
    pub requires: Requirements,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
}

impl Recipe {
    pub fn validate(&self) -> Result<(), String> {
        parse_uuid(&self.uuid)?;
        let r = &self.requires;
        if let Some(c) = r.cpu
            && !(c.is_finite() && c >= 0.0)
        {
            return Err(format!("recipe.requires.cpu: {c} is not a number of cores"));
        }
        if let Some(t) = r.max_rtt_ms
            && !(t.is_finite() && t > 0.0)
        {
            return Err(format!("recipe.requires.max_rtt_ms: {t} must be above 0"));
        }
        if let Some(a) = &r.arch
            && (a.is_empty() || a.len() > 64)
        {
            return Err("recipe.requires.arch: 1-64 characters".into());
        }
        Ok(())
    }
}

/// A UUID in its canonical lower-case hyphenated form; anything else is refused.
pub fn parse_uuid(text: &str) -> Result<String, String> {
    let t = text.trim().to_ascii_lowercase();
    let groups: Vec<&str> = t.split('-').collect();
    let ok = groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.chars().all(|c| c.is_ascii_hexdigit()));
    if ok {
        Ok(t)
    } else {
        let shown: String = text.chars().take(60).collect();
        Err(format!(
            "`{shown}` is not a UUID (want 8-4-4-4-12 hex digits)"
        ))
    }
}

fn uuid_text<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    parse_uuid(&s).map_err(serde::de::Error::custom)
}

impl Site {
    /// The rules a value of this type does not enforce by itself.
    pub fn validate(&self) -> Result<(), String> {
        crate::names::validate("site", &self.name).map_err(|e| e.to_string())?;
        match (&self.node, &self.group) {
            (Some(_), Some(_)) => return Err("a site is a node or a group, not both".into()),
            (None, None) => {
                return Err(format!(
                    "site `{}` names neither a node nor a group",
                    self.name
                ));
            }
            (Some(n), None) => crate::names::validate("node", n).map_err(|e| e.to_string())?,
            (None, Some(g)) => crate::names::validate("group", g).map_err(|e| e.to_string())?,
        }
        if self.locations.len() > 64
            || self.local_networks.len() > 256
            || self.accepted_clients.len() > 256
            || self.rejected_clients.len() > 256
            || self.resources.len() > 64
        {
            return Err("a site has at most 64 locations and 256 networks per list".into());
        }
        if let Some(e) = &self.tunnel_endpoint
            && (e.is_empty() || e.len() > 255 || e.chars().any(char::is_whitespace))
        {
            return Err(format!("tunnel endpoint `{e}` must be host:port"));
        }
        Ok(())
    }
}

/// A site as `GET /api/v1/sites` shows it: the record without its private key, its nodes
/// and their live figures.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SiteView {
    #[serde(flatten)]
    pub site: Site,
    /// The site's nodes that exist, and whether each is ready.
    pub nodes: Vec<SiteNode>,
    /// `cpu_ratio` and `mem_ratio` (busy fractions, averaged over ready nodes with
    /// vitals), over the file's static figures.
    pub live: std::collections::BTreeMap<String, f64>,
    /// Live deployments on the site.
    pub deployments: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SiteNode {
    pub name: String,
    pub ready: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_contains() {
        let n = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(n.contains("10.1.2.3".parse().unwrap()));
        assert!(!n.contains("11.0.0.1".parse().unwrap()));
        assert!(n.contains("::ffff:10.0.0.1".parse().unwrap()));
        assert!(
            Cidr::parse("0.0.0.0/0")
                .unwrap()
                .contains("8.8.8.8".parse().unwrap())
        );
        let v6 = Cidr::parse("fd00::/8").unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert!(!v6.contains("10.0.0.1".parse().unwrap()));
        assert_eq!(Cidr::parse("1.2.3.4").unwrap().prefix, 32);
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("ten").is_err());
        assert_eq!(
            Cidr::parse("10.5.0.0/16").unwrap().v4_hosts(),
            Some((0x0a05_0001, 0x0a05_fffe))
        );
    }

    #[test]
    fn geodesic_distance_matches_known_values() {
        // CMU to a point in Pittsburgh's east end, and New York to London (geopy's
        // geodesic: 3.45 km and 5585.23 km).
        let cmu = GeoPoint::new(40.4439, -79.9444).unwrap();
        let home = GeoPoint::new(40.4465, -79.9032).unwrap();
        let d = cmu.distance_km(&home);
        assert!((d - 3.495).abs() < 0.05, "{d}");
        let ny = GeoPoint::new(40.7128, -74.0060).unwrap();
        let london = GeoPoint::new(51.5074, -0.1278).unwrap();
        let d = ny.distance_km(&london);
        assert!((d - 5585.2).abs() < 1.0, "{d}");
        // Nearly antipodal: Vincenty may not converge; the fallback still answers.
        let a = GeoPoint::new(0.0, 0.0).unwrap();
        let b = GeoPoint::new(0.5, 179.7).unwrap();
        assert!(a.distance_km(&b) > 19_000.0);
        assert_eq!(a.distance_km(&a), 0.0);
    }

    #[test]
    fn locations_parse_and_refuse() {
        assert_eq!(
            GeoPoint::parse("40.44, -79.94").unwrap(),
            GeoPoint::new(40.44, -79.94).unwrap()
        );
        assert!(GeoPoint::parse("91,0").is_err());
        assert!(GeoPoint::parse("0").is_err());
        assert!(GeoPoint::parse("a,b").is_err());
        assert!(serde_json::from_str::<GeoPoint>("[1, 2, 3]").is_err());
    }

    #[test]
    fn uuids() {
        assert_eq!(
            parse_uuid("737B5001-D27A-413F-9806-ABF9BFCE6746").unwrap(),
            "737b5001-d27a-413f-9806-abf9bfce6746"
        );
        assert!(parse_uuid("00000000-0000-0000-0000-00000000000").is_err());
        assert!(parse_uuid("not-a-uuid").is_err());
    }
}
