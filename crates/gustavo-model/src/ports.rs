//! Port bindings: the `starting_ports` of the app format and the bindings a container gets.
//!
//! The forms accepted, Nebula's first, then Docker's `-p` (without ranges or random host
//! ports):
//!
//! ```yaml
//! starting_ports:
//!   - 80                         # host 80 → container 80, TCP, every host address
//!   - {8080: 80}                 # host 8080 → container 80
//!   - {"127.0.0.1:9000": 9000}   # host side [IP:]PORT[/PROTO]
//!   - {"[::1]:9001/udp": 9001}   # IPv6 in brackets; the protocol on either side
//!   - {5353: "5353/udp"}         # container side PORT[/PROTO]
//!   - "127.0.0.1:8443:443/tcp"   # one string, as `docker run -p`: [IP:]HOST[:CONTAINER][/PROTO]
//! ```
//!
//! A port is written in decimal, 1–65535, with no sign and no leading zero: `0x50`, `0o777`
//! or `0777` are refused rather than read as 80, 511 or 777. (In a YAML file the parser
//! would already have turned a plain `0o777` into 511; the private module `written` checks
//! the text as written, this module checks the strings.) The protocol is `tcp` (the default), `udp`
//! or `sctp`; when both sides name one they must agree.
//!
//! Two bindings conflict when they share protocol and host port and their host addresses
//! overlap (equal, or either one is every address); conflicts are refused.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, SerializeSeq, Serializer};
use serde::{Deserialize, Serialize};

/// A transport protocol Docker can publish.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub fn as_str(&self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }

    fn is_tcp(&self) -> bool {
        *self == Protocol::Tcp
    }

    fn parse(s: &str) -> Option<Protocol> {
        match s {
            "tcp" => Some(Protocol::Tcp),
            "udp" => Some(Protocol::Udp),
            "sctp" => Some(Protocol::Sctp),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One host → container port binding.
///
/// The defaults (every host address, TCP) are left out of the serialized form, so a binding
/// written before addresses and protocols existed serializes — and hashes, see
/// [`crate::desired::ContainerSpec::hash`] — exactly as it did then.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMapping {
    /// The host address to bind; `None` binds every address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<IpAddr>,
    pub host: u16,
    pub container: u16,
    #[serde(default, skip_serializing_if = "Protocol::is_tcp")]
    pub protocol: Protocol,
}

impl PortMapping {
    /// A TCP binding on every host address.
    pub fn tcp(host: u16, container: u16) -> PortMapping {
        PortMapping {
            host_ip: None,
            host,
            container,
            protocol: Protocol::Tcp,
        }
    }

    /// Docker's key for the container side: `80/tcp`.
    pub fn container_key(&self) -> String {
        format!("{}/{}", self.container, self.protocol)
    }

    /// The host side as written in a spec: `[IP:]PORT`, IPv6 in brackets.
    fn host_text(&self) -> String {
        match self.host_ip {
            None => self.host.to_string(),
            Some(IpAddr::V4(ip)) => format!("{ip}:{}", self.host),
            Some(IpAddr::V6(ip)) => format!("[{ip}]:{}", self.host),
        }
    }

    /// Whether both bind the same host port for the same protocol on overlapping addresses.
    fn conflicts_with(&self, other: &PortMapping) -> bool {
        let every = |ip: Option<IpAddr>| ip.is_none_or(|ip| ip.is_unspecified());
        self.protocol == other.protocol
            && self.host == other.host
            && (every(self.host_ip) || every(other.host_ip) || self.host_ip == other.host_ip)
    }
}

impl fmt::Display for PortMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}/{}",
            self.host_text(),
            self.container,
            self.protocol
        )
    }
}

/// `starting_ports`: a list of bindings, in the forms of the module header.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ports(pub Vec<PortMapping>);

impl Ports {
    /// Refuses two bindings of one host port (see the module header).
    pub fn check(&self) -> Result<(), String> {
        // Grouped by (protocol, port) so a long list costs n log n, not n².
        let mut by_port: BTreeMap<(Protocol, u16), Vec<&PortMapping>> = BTreeMap::new();
        for p in &self.0 {
            let same = by_port.entry((p.protocol, p.host)).or_default();
            if let Some(q) = same.iter().find(|q| q.conflicts_with(p)) {
                return Err(if q.host_ip == p.host_ip {
                    format!("host port {} is listed twice", describe_host(p))
                } else {
                    format!(
                        "host ports {} and {} overlap",
                        describe_host(q),
                        describe_host(p)
                    )
                });
            }
            same.push(p);
        }
        Ok(())
    }
}

/// `9000`, `9000/udp`, `127.0.0.1:9000`: how errors name a host binding.
fn describe_host(p: &PortMapping) -> String {
    if p.protocol.is_tcp() {
        p.host_text()
    } else {
        format!("{}/{}", p.host_text(), p.protocol)
    }
}

impl Serialize for Ports {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // Each binding as `{HOST: CONTAINER}`: `{"9000": 9000}` for plain TCP, as Nebula
        // wrote it; `{"127.0.0.1:53": "53/udp"}` otherwise.
        struct Container(PortMapping);
        impl Serialize for Container {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                if self.0.protocol.is_tcp() {
                    s.serialize_u16(self.0.container)
                } else {
                    s.serialize_str(&self.0.container_key())
                }
            }
        }
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for p in &self.0 {
            seq.serialize_element(&OneEntry(p.host_text(), Container(*p)))?;
        }
        seq.end()
    }
}

struct OneEntry<K, V>(K, V);

impl<K: Serialize, V: Serialize> Serialize for OneEntry<K, V> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(1))?;
        m.serialize_entry(&self.0, &self.1)?;
        m.end()
    }
}

impl<'de> Deserialize<'de> for Ports {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Ports;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list of ports or {host: container} maps")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Ports, A::Error> {
                let mut out = Vec::new();
                while let Some(item) = seq.next_element::<PortItem>()? {
                    out.extend(item.0);
                }
                let ports = Ports(out);
                ports.check().map_err(de::Error::custom)?;
                Ok(ports)
            }
        }
        d.deserialize_seq(V)
    }
}

struct PortItem(Vec<PortMapping>);

impl<'de> Deserialize<'de> for PortItem {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = PortItem;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(
                    "a port, a \"[ip:]host[:container][/proto]\" string or a {host: container} map",
                )
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<PortItem, E> {
                let p = port_number(v).map_err(E::custom)?;
                Ok(PortItem(vec![PortMapping::tcp(p, p)]))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<PortItem, E> {
                Err(E::custom(format!("port {v} is out of range 1-65535")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<PortItem, E> {
                parse_binding(v)
                    .map(|p| PortItem(vec![p]))
                    .map_err(E::custom)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<PortItem, A::Error> {
                let mut out = Vec::new();
                while let Some(host) = m.next_key::<Side>()? {
                    let container = m.next_value::<Side>()?;
                    out.push(join(&host, &container).map_err(de::Error::custom)?);
                }
                if out.is_empty() {
                    return Err(de::Error::custom("empty port map"));
                }
                Ok(PortItem(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// One side of a `{host: container}` map: `[IP:]PORT[/PROTO]` (the address only on the
/// host side, checked in [`join`]).
struct Side {
    text: String,
    ip: Option<IpAddr>,
    port: u16,
    protocol: Option<Protocol>,
}

impl<'de> Deserialize<'de> for Side {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Side;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a port number 1-65535, or \"[ip:]port[/proto]\"")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Side, E> {
                Ok(Side {
                    text: v.to_string(),
                    ip: None,
                    port: port_number(v).map_err(E::custom)?,
                    protocol: None,
                })
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Side, E> {
                Err(E::custom(format!("port {v} is out of range 1-65535")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Side, E> {
                parse_side(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// One side of a map entry: `[IP:]PORT[/PROTO]`.
fn parse_side(s: &str) -> Result<Side, String> {
    let (rest, protocol) = split_protocol(s)?;
    let (ip, port) = split_address(s, rest)?;
    if port.contains(':') {
        return Err(format!(
            "port `{s}` is not [ip:]port[/proto] (write an IPv6 address in brackets)"
        ));
    }
    Ok(Side {
        text: s.to_string(),
        ip,
        port: port_text(port)?,
        protocol,
    })
}

/// `{host: container}` into one binding.
fn join(host: &Side, container: &Side) -> Result<PortMapping, String> {
    if container.ip.is_some() {
        return Err(format!(
            "port `{}`: a host address belongs on the host side (the key)",
            container.text
        ));
    }
    let protocol = match (host.protocol, container.protocol) {
        (Some(a), Some(b)) if a != b => {
            return Err(format!(
                "ports `{}` and `{}` name different protocols",
                host.text, container.text
            ));
        }
        (a, b) => a.or(b).unwrap_or_default(),
    };
    Ok(PortMapping {
        host_ip: host.ip,
        host: host.port,
        container: container.port,
        protocol,
    })
}

/// A list item written as one string, as `docker run -p` takes it:
/// `[IP:]HOST[:CONTAINER][/PROTO]`. Without a container port, the container port is the
/// host port (Nebula's meaning of a bare port, not Docker's random host port).
pub fn parse_binding(s: &str) -> Result<PortMapping, String> {
    let (rest, protocol) = split_protocol(s)?;
    let (ip, rest) = split_address(s, rest)?;
    let (host, container) = match rest.split(':').collect::<Vec<_>>().as_slice() {
        [p] => {
            let p = port_text(p)?;
            (p, p)
        }
        [h, c] => (port_text(h)?, port_text(c)?),
        _ => {
            return Err(format!(
                "port `{s}` is not [ip:]host[:container][/proto] (write an IPv6 address in brackets)"
            ));
        }
    };
    Ok(PortMapping {
        host_ip: ip,
        host,
        container,
        protocol: protocol.unwrap_or_default(),
    })
}

/// `9000/udp` → (`9000`, udp).
fn split_protocol(s: &str) -> Result<(&str, Option<Protocol>), String> {
    match s.rsplit_once('/') {
        None => Ok((s, None)),
        Some((rest, proto)) => Protocol::parse(proto)
            .map(|p| (rest, Some(p)))
            .ok_or_else(|| {
                format!("port `{s}`: unknown protocol `{proto}` (use tcp, udp or sctp)")
            }),
    }
}

/// Splits a leading host address off `s`: `[IPv6]:REST` or `IPv4:REST` (an address is known
/// by its brackets or its dots; a bare IPv6 address would be ambiguous with the `:` between
/// ports). `whole` is the text errors quote.
fn split_address<'a>(whole: &str, s: &'a str) -> Result<(Option<IpAddr>, &'a str), String> {
    if let Some(v6) = s.strip_prefix('[') {
        let (ip, rest) = v6
            .split_once(']')
            .ok_or_else(|| format!("port `{whole}`: unclosed `[`"))?;
        let ip = ip
            .parse::<Ipv6Addr>()
            .map_err(|_| format!("port `{whole}`: `{ip}` is not an IPv6 address"))?;
        let rest = rest
            .strip_prefix(':')
            .ok_or_else(|| format!("port `{whole}`: expected `:PORT` after the address"))?;
        return Ok((Some(IpAddr::V6(ip)), rest));
    }
    match s.split_once(':') {
        Some((ip, rest)) if ip.contains('.') => {
            let ip = ip
                .parse::<Ipv4Addr>()
                .map_err(|_| format!("port `{whole}`: `{ip}` is not an IPv4 address"))?;
            Ok((Some(IpAddr::V4(ip)), rest))
        }
        _ => Ok((None, s)),
    }
}

fn port_number(v: u64) -> Result<u16, String> {
    match u16::try_from(v) {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(format!("port {v} is out of range 1-65535")),
    }
}

/// A port as text: decimal digits, no sign, no leading zero, 1–65535.
pub fn port_text(v: &str) -> Result<u16, String> {
    let decimal = !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) && !v.starts_with('0');
    if !decimal {
        return Err(format!(
            "port `{v}` is not a decimal number 1-65535 (no sign, prefix or leading zero)"
        ));
    }
    // Any run of digits too long for u64 is out of range as well.
    v.parse::<u64>()
        .map_err(|_| format!("port {v} is out of range 1-65535"))
        .and_then(port_number)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ports(json: &str) -> Result<Ports, String> {
        serde_json::from_str::<Ports>(json).map_err(|e| e.to_string())
    }

    fn v4(a: u8, b: u8, c: u8, d: u8) -> Option<IpAddr> {
        Some(IpAddr::V4(Ipv4Addr::new(a, b, c, d)))
    }

    #[test]
    fn host_side_takes_an_address_and_a_protocol() {
        let p = ports(
            r#"[{"127.0.0.1:9000": 9000}, {"[::1]:9001/udp": 9001}, {"5353": "5353/udp"},
                {"10.0.0.1:8080/sctp": "80/sctp"}]"#,
        )
        .unwrap();
        assert_eq!(
            p.0,
            vec![
                PortMapping {
                    host_ip: v4(127, 0, 0, 1),
                    ..PortMapping::tcp(9000, 9000)
                },
                PortMapping {
                    host_ip: Some(IpAddr::V6(Ipv6Addr::LOCALHOST)),
                    protocol: Protocol::Udp,
                    ..PortMapping::tcp(9001, 9001)
                },
                PortMapping {
                    protocol: Protocol::Udp,
                    ..PortMapping::tcp(5353, 5353)
                },
                PortMapping {
                    host_ip: v4(10, 0, 0, 1),
                    protocol: Protocol::Sctp,
                    ..PortMapping::tcp(8080, 80)
                },
            ]
        );
    }

    #[test]
    fn one_string_items_read_like_docker_run_p() {
        let cases = [
            ("80", PortMapping::tcp(80, 80)),
            ("8080:80", PortMapping::tcp(8080, 80)),
            (
                "53/udp",
                PortMapping {
                    protocol: Protocol::Udp,
                    ..PortMapping::tcp(53, 53)
                },
            ),
            (
                "127.0.0.1:9000",
                PortMapping {
                    host_ip: v4(127, 0, 0, 1),
                    ..PortMapping::tcp(9000, 9000)
                },
            ),
            (
                "127.0.0.1:8443:443/tcp",
                PortMapping {
                    host_ip: v4(127, 0, 0, 1),
                    ..PortMapping::tcp(8443, 443)
                },
            ),
            (
                "[::1]:8443:443/udp",
                PortMapping {
                    host_ip: Some(IpAddr::V6(Ipv6Addr::LOCALHOST)),
                    protocol: Protocol::Udp,
                    ..PortMapping::tcp(8443, 443)
                },
            ),
        ];
        for (s, want) in cases {
            assert_eq!(parse_binding(s), Ok(want), "{s}");
        }
    }

    #[test]
    fn ports_are_decimal_or_an_error_naming_them() {
        for (bad, want) in [
            ("0x50", "port `0x50` is not a decimal number"),
            ("0o777", "port `0o777` is not a decimal number"),
            ("0777", "port `0777` is not a decimal number"),
            ("+80", "port `+80`"),
            ("", "port `` is not"),
            ("0", "port `0`"),
            ("65536", "port 65536 is out of range"),
            ("99999999999999999999999", "out of range"),
            ("80/quic", "unknown protocol `quic`"),
            ("::1:80", "is not [ip:]host"),
            ("1.2.3:80", "`1.2.3` is not an IPv4 address"),
            ("[::1:80", "unclosed `[`"),
            ("[::1]80", "expected `:PORT`"),
            ("a:b:c:d", "is not [ip:]host"),
            ("8000-8010", "port `8000-8010`"),
        ] {
            let e = parse_binding(bad).unwrap_err();
            assert!(e.contains(want), "{bad:?} gave {e}");
        }
        for (json, want) in [
            (r#"[{"0x50": 80}]"#, "port `0x50`"),
            (r#"[{"80": "127.0.0.1:80"}]"#, "belongs on the host side"),
            (r#"[{"53/udp": "53/tcp"}]"#, "name different protocols"),
            (r#"[{"8080:80": 80}]"#, "is not [ip:]port[/proto]"),
            (r#"[-1]"#, "out of range"),
            (r#"[{}]"#, "empty port map"),
        ] {
            let e = ports(json).unwrap_err();
            assert!(e.contains(want), "{json} gave {e}");
        }
    }

    #[test]
    fn conflicts_need_the_same_protocol_port_and_an_overlapping_address() {
        // TCP and UDP on one port, or one port on two addresses, are fine.
        assert!(ports(r#"[53, "53/udp", "127.0.0.1:80", "127.0.0.2:80"]"#).is_ok());
        for (json, want) in [
            (r#"[9000, {"9000": 80}]"#, "host port 9000 is listed twice"),
            (
                r#"["53/udp", {"53": "53/udp"}]"#,
                "host port 53/udp is listed twice",
            ),
            (
                r#"["127.0.0.1:80", 80]"#,
                "host ports 127.0.0.1:80 and 80 overlap",
            ),
            (
                r#"["0.0.0.0:80", "127.0.0.1:80"]"#,
                "host ports 0.0.0.0:80 and 127.0.0.1:80 overlap",
            ),
            (r#"["[::1]:80", "[::1]:80"]"#, "[::1]:80 is listed twice"),
        ] {
            let e = ports(json).unwrap_err();
            assert!(e.contains(want), "{json} gave {e}");
        }
    }

    #[test]
    fn serialized_form_reads_back_and_keeps_nebulas_form() {
        let p = ports(r#"[80, {"8080": 80}, "127.0.0.1:53/udp", "[::1]:9000:90/sctp"]"#).unwrap();
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(
            json,
            r#"[{"80":80},{"8080":80},{"127.0.0.1:53":"53/udp"},{"[::1]:9000":"90/sctp"}]"#
        );
        assert_eq!(ports(&json).unwrap(), p);
        // A plain binding serializes as it did before addresses and protocols existed.
        assert_eq!(
            serde_json::to_string(&PortMapping::tcp(9000, 80)).unwrap(),
            r#"{"host":9000,"container":80}"#
        );
        let udp = PortMapping {
            host_ip: v4(127, 0, 0, 1),
            protocol: Protocol::Udp,
            ..PortMapping::tcp(53, 53)
        };
        let back: PortMapping =
            serde_json::from_str(&serde_json::to_string(&udp).unwrap()).unwrap();
        assert_eq!(back, udp);
        assert_eq!(udp.container_key(), "53/udp");
    }
}
