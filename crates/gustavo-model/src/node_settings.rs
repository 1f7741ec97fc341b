//! The server's own settings that travel in every node's desired state: the default node
//! pressure thresholds (`server --pressure`) and the client network a site's tunnel address
//! comes from (`server --client-network`).
//!
//! A node is sent its desired state again only when its revision moves, and a server
//! setting is not a stored change: changed across a restart, it would reach a node only
//! with the next change to something else. So the server keeps a fingerprint of these
//! settings in its store beside the revision they took effect at, and a start whose
//! settings fingerprint differently moves every node's revision once (see the server's
//! `state.rs`). A start with the same settings moves nothing.
//!
//! Whatever else of the server's config a node's desired state comes to be built from
//! belongs here, so it is covered by the fingerprint.

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::pressure::Thresholds;
use crate::sites::Cidr;

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct NodeSettings {
    /// Pressure thresholds for nodes whose groups set none; none: pressure is off for them.
    pub pressure: Option<Thresholds>,
    /// Where clients' tunnel addresses come from; the site's own address is its first.
    /// None: nodes run no tunnels (the server always sets one).
    pub client_network: Option<Cidr>,
}

impl NodeSettings {
    /// A fingerprint of the settings, stable across builds and platforms: the first eight
    /// bytes of the SHA-256 of their JSON (fields in declaration order). Adding a setting
    /// changes it, so the first start of a server that sends more moves every node once.
    pub fn fingerprint(&self) -> u64 {
        let json = serde_json::to_vec(self).expect("settings always serialize");
        let digest = Sha256::digest(&json);
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        u64::from_be_bytes(first)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pressure: Option<Thresholds>, network: &str) -> NodeSettings {
        NodeSettings {
            pressure,
            client_network: Some(Cidr::parse(network).unwrap()),
        }
    }

    #[test]
    fn the_same_settings_fingerprint_the_same() {
        let a = settings(Some(Thresholds::default()), "10.5.0.0/16");
        assert_eq!(a.fingerprint(), a.clone().fingerprint());
        assert_eq!(
            a.fingerprint(),
            settings(Some(Thresholds::parse("cpu=80/65").unwrap()), "10.5.0.0/16").fingerprint(),
            "thresholds spelled differently but equal are the same settings"
        );
    }

    #[test]
    fn every_setting_moves_the_fingerprint() {
        let on = settings(Some(Thresholds::default()), "10.5.0.0/16");
        let off = settings(None, "10.5.0.0/16");
        let tighter = settings(Some(Thresholds::parse("cpu=50/40").unwrap()), "10.5.0.0/16");
        let other_network = settings(Some(Thresholds::default()), "10.6.0.0/16");
        let prints = [&on, &off, &tighter, &other_network].map(NodeSettings::fingerprint);
        for (i, a) in prints.iter().enumerate() {
            for b in &prints[i + 1..] {
                assert_ne!(a, b, "{prints:?}");
            }
        }
    }
}
