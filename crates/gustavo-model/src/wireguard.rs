//! WireGuard keys: X25519 key pairs (x25519-dalek) and their base64 text forms.
//!
//! A Sinfonia client names itself by its WireGuard public key in the deploy URL, "preferably
//! web-safe": the real client sends URL-safe base64 without padding (43 characters), other
//! clients standard base64 with padding (44). Both name the same 32 bytes, so a key is
//! stored and compared in one canonical form (standard base64, what `wg` prints).
//!
//! No randomness here: the caller passes the 32 secret bytes in (the server and the CLI
//! take them from the OS generator), so the derivation is tested with fixed vectors.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
#[error("`{shown}` is not a WireGuard key: {why}")]
pub struct KeyError {
    shown: String,
    why: &'static str,
}

/// A WireGuard public key (32 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey(pub [u8; 32]);

impl PublicKey {
    /// Parses standard or URL-safe base64, with or without padding.
    pub fn parse(text: &str) -> Result<PublicKey, KeyError> {
        let shown: String = text.chars().take(60).collect();
        let err = |why| KeyError {
            shown: shown.clone(),
            why,
        };
        let t = text.trim_end_matches('=');
        if t.len() != 43 {
            return Err(err(
                "a key is 32 bytes: 43 base64 characters (44 with the `=`)",
            ));
        }
        let urlsafe: String = t
            .chars()
            .map(|c| match c {
                '+' => '-',
                '/' => '_',
                c => c,
            })
            .collect();
        let bytes = URL_SAFE_NO_PAD
            .decode(urlsafe.as_bytes())
            .map_err(|_| err("not base64"))?;
        let arr: [u8; 32] = bytes.try_into().map_err(|_| err("not 32 bytes"))?;
        Ok(PublicKey(arr))
    }

    /// Standard base64 with padding, as `wg` prints it.
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }

    /// URL-safe base64 without padding, as the Sinfonia client puts it in a URL.
    pub fn to_urlsafe(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.0)
    }
}

impl std::fmt::Display for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_base64())
    }
}

/// A key pair made from 32 secret bytes (clamped by X25519 itself).
#[derive(Clone)]
pub struct KeyPair {
    secret: x25519_dalek::StaticSecret,
    pub public: PublicKey,
}

impl KeyPair {
    pub fn from_secret(bytes: [u8; 32]) -> KeyPair {
        let secret = x25519_dalek::StaticSecret::from(bytes);
        let public = PublicKey(*x25519_dalek::PublicKey::from(&secret).as_bytes());
        KeyPair { secret, public }
    }

    /// The private key in standard base64 (a `wg.conf` `PrivateKey`).
    pub fn private_base64(&self) -> String {
        STANDARD.encode(self.secret.to_bytes())
    }

    /// Reads a private key written by [`KeyPair::private_base64`] (or `wg genkey`).
    pub fn from_private_base64(text: &str) -> Result<KeyPair, KeyError> {
        let p = PublicKey::parse(text)?;
        Ok(KeyPair::from_secret(p.0))
    }
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyPair")
            .field("public", &self.public.to_base64())
            .finish_non_exhaustive()
    }
}

/// The WireGuard interface a site's node runs for its clients (part of the node's desired
/// state): the site's key pair, the site's address in the client pool, one peer per live
/// deployment of that site on the node.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DesiredTunnel {
    pub site: String,
    /// The site's private key (standard base64). Travels only to the site's own nodes,
    /// over their authenticated channel.
    pub private_key: String,
    /// The site's side of the tunnel, `10.5.0.1/16`: the pool's first host, never given to
    /// a client.
    pub address: String,
    pub peers: Vec<TunnelPeer>,
}

/// One client of a site's tunnel.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TunnelPeer {
    /// The deployment it belongs to.
    pub deployment: String,
    /// The client's public key (standard base64).
    pub public_key: String,
    /// The client's tunnel address, `10.5.0.7/32`.
    pub allowed_ip: String,
}

/// What a node reports of its tunnel (in heartbeats).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TunnelStatus {
    /// The site whose tunnel the node runs (empty: none asked for).
    #[serde(default)]
    pub site: String,
    #[serde(default)]
    pub interface: String,
    /// The UDP port the interface listens on (clients' `Endpoint`).
    #[serde(default)]
    pub listen_port: u16,
    /// Kernel module, or `wireguard-go` through /dev/net/tun.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub implementation: String,
    /// Why the tunnel is not up (none: it is).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<PeerStatus>,
}

/// One peer as `wg show IF dump` lists it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PeerStatus {
    pub public_key: String,
    /// Unix seconds of the last handshake (0: never).
    #[serde(default)]
    pub latest_handshake: u64,
    #[serde(default)]
    pub rx_bytes: u64,
    #[serde(default)]
    pub tx_bytes: u64,
}

impl TunnelStatus {
    pub fn peer(&self, public_key: &str) -> Option<&PeerStatus> {
        self.peers.iter().find(|p| p.public_key == public_key)
    }
}

/// The interface's configuration in wg(8)'s format, for `wg syncconf` (which adds, changes
/// and removes peers to match it and leaves live sessions of unchanged peers alone).
pub fn sync_config(t: &DesiredTunnel, listen_port: u16) -> String {
    let mut out = format!(
        "[Interface]\nPrivateKey = {}\nListenPort = {listen_port}\n",
        t.private_key
    );
    for p in &t.peers {
        out.push_str(&format!(
            "\n[Peer]\nPublicKey = {}\nAllowedIPs = {}\n",
            p.public_key, p.allowed_ip
        ));
    }
    out
}

/// Reads `wg show IF dump`: a line for the interface (private key, public key, port,
/// fwmark), then one per peer (public key, preshared key, endpoint, allowed IPs, latest
/// handshake, bytes received, bytes sent, keepalive), tab-separated.
pub fn parse_dump(text: &str) -> Result<(u16, Vec<PeerStatus>), String> {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let head = lines.next().ok_or("`wg show dump` printed nothing")?;
    let fields: Vec<&str> = head.split('\t').collect();
    let port = fields
        .get(2)
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| format!("`wg show dump`: no listen port in {head:?}"))?;
    let mut peers = Vec::new();
    for l in lines {
        let f: Vec<&str> = l.split('\t').collect();
        if f.len() < 7 {
            return Err(format!(
                "`wg show dump`: a peer line with {} fields",
                f.len()
            ));
        }
        let num = |i: usize| f[i].parse::<u64>().unwrap_or(0);
        peers.push(PeerStatus {
            public_key: f[0].to_string(),
            latest_handshake: num(4),
            rx_bytes: num(5),
            tx_bytes: num(6),
        });
    }
    Ok((port, peers))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc7748_vector() {
        // RFC 7748 §6.1: Alice's private key and public key.
        let secret =
            hex::decode("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
                .unwrap();
        let pair = KeyPair::from_secret(secret.try_into().unwrap());
        assert_eq!(
            hex::encode(pair.public.0),
            "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
        );
        let again = KeyPair::from_private_base64(&pair.private_base64()).unwrap();
        assert_eq!(again.public, pair.public);
    }

    #[test]
    fn both_alphabets_with_or_without_padding_name_one_key() {
        let k = PublicKey([0xfb; 32]);
        let std = k.to_base64();
        let url = k.to_urlsafe();
        assert!(std.contains('+') || std.contains('/'));
        assert_eq!(url.len(), 43);
        assert_eq!(PublicKey::parse(&std).unwrap(), k);
        assert_eq!(PublicKey::parse(&url).unwrap(), k);
        assert_eq!(PublicKey::parse(std.trim_end_matches('=')).unwrap(), k);
    }

    #[test]
    fn config_and_dump_round_trip() {
        let t = DesiredTunnel {
            site: "s".into(),
            private_key: "cHJpdmF0ZQ==".into(),
            address: "10.5.0.1/16".into(),
            peers: vec![TunnelPeer {
                deployment: "d".into(),
                public_key: "cGVlcg==".into(),
                allowed_ip: "10.5.0.2/32".into(),
            }],
        };
        let c = sync_config(&t, 51820);
        assert!(c.starts_with("[Interface]\nPrivateKey = cHJpdmF0ZQ==\nListenPort = 51820\n"));
        assert!(c.contains("[Peer]\nPublicKey = cGVlcg==\nAllowedIPs = 10.5.0.2/32\n"));
        let dump = "priv\tpub\t51820\toff\ncGVlcg==\t(none)\t10.0.0.2:40000\t10.5.0.2/32\t1700000000\t1234\t5678\t30\n";
        let (port, peers) = parse_dump(dump).unwrap();
        assert_eq!(port, 51820);
        assert_eq!(
            peers,
            vec![PeerStatus {
                public_key: "cGVlcg==".into(),
                latest_handshake: 1_700_000_000,
                rx_bytes: 1234,
                tx_bytes: 5678,
            }]
        );
        assert!(parse_dump("").is_err());
        assert!(parse_dump("a\tb\t1\toff\nshort\tline\n").is_err());
    }

    #[test]
    fn refuses_junk() {
        assert!(PublicKey::parse("").is_err());
        assert!(PublicKey::parse("not-a-key").is_err());
        assert!(PublicKey::parse(&"!".repeat(43)).is_err());
        let e = PublicKey::parse(&"A".repeat(50)).unwrap_err();
        assert!(e.to_string().contains("32 bytes"), "{e}");
    }
}
