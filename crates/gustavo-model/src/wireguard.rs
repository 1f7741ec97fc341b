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
    fn refuses_junk() {
        assert!(PublicKey::parse("").is_err());
        assert!(PublicKey::parse("not-a-key").is_err());
        assert!(PublicKey::parse(&"!".repeat(43)).is_err());
        let e = PublicKey::parse(&"A".repeat(50)).unwrap_err();
        assert!(e.to_string().contains("32 bytes"), "{e}");
    }
}
