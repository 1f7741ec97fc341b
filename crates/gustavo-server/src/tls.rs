//! TLS by default. On first start the server makes its own certificate authority (`ca.crt`,
//! `ca.key`, mode 0600) in the data dir; on every start it signs a fresh serving certificate
//! for the names it is reached by (host name, `localhost`, `127.0.0.1`, `::1`, the listen
//! address when it is specific, and every `--tls-san`). Clients trust the CA, never a
//! public root: the CLI gets it from `client.toml`, agents from `GET /api/v1/ca` checked
//! against the fingerprint carried by their join token (as k3s does).
//!
//! With `--tls-cert`/`--tls-key` the server serves the given chain instead; the last
//! certificate of that chain is what `GET /api/v1/ca` hands out and what join tokens pin.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::auth::write_private;

#[derive(Debug, Error)]
pub enum TlsError {
    #[error("cannot use {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot make a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{path} holds no usable {what}")]
    Pem { path: String, what: &'static str },
    #[error("the TLS certificate or key is unusable: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("--tls-san `{0}` is neither a DNS name nor an IP address")]
    BadSan(String),
}

/// How the server secures its port.
#[derive(Debug, Clone)]
pub enum TlsMode {
    /// The server's own CA in the data dir signs a serving certificate for these extra
    /// names (on top of the ones it finds itself).
    Generated { extra_sans: Vec<String> },
    /// A certificate chain and key given by the operator (PEM files).
    Files { cert: PathBuf, key: PathBuf },
    /// Plain HTTP: only with an explicit `--insecure-http`.
    Insecure,
}

/// What a TLS server needs, plus the CA clients should trust.
pub struct TlsMaterial {
    pub config: Arc<rustls::ServerConfig>,
    /// The CA (PEM) that clients trust and join tokens pin.
    pub ca_pem: String,
    /// Hex SHA-256 of the CA certificate's DER encoding.
    pub ca_fingerprint: String,
    /// The names the serving certificate is valid for (generated mode only).
    pub sans: Vec<String>,
}

/// SHA-256 of a certificate's DER encoding, as 64 hex digits.
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TlsError + '_ {
    move |source| TlsError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = std::fs::read(path).map_err(io_err(path))?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.display().to_string(),
            what: "certificate",
        });
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = std::fs::read(path).map_err(io_err(path))?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|_| TlsError::Pem {
        path: path.display().to_string(),
        what: "private key",
    })
}

fn pem_of(der: &[u8]) -> String {
    // rcgen writes PEM for its own certificates; for a DER from a file, wrap it the same way.
    let b64 = base64_encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// Standard base64 with padding; small enough not to pull in a crate for one PEM.
fn base64_encode(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for c in bytes.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        out.push(T[(n >> 18) as usize & 63] as char);
        out.push(T[(n >> 12) as usize & 63] as char);
        out.push(if c.len() > 1 {
            T[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        out.push(if c.len() > 2 {
            T[n as usize & 63] as char
        } else {
            '='
        });
    }
    out
}

fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The names a generated serving certificate covers.
pub fn default_sans(host: &str, listen: SocketAddr, extra: &[String]) -> Vec<String> {
    let mut sans: Vec<String> = vec![
        host.to_string(),
        "localhost".into(),
        "127.0.0.1".into(),
        "::1".into(),
    ];
    if !listen.ip().is_unspecified() {
        sans.push(listen.ip().to_string());
    }
    sans.extend(extra.iter().cloned());
    let mut out: Vec<String> = Vec::new();
    for s in sans {
        if !s.is_empty() && !out.contains(&s) {
            out.push(s);
        }
    }
    out
}

/// Checks a `--tls-san` before anything is created.
pub fn validate_san(s: &str) -> Result<(), TlsError> {
    if s.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    let ok = !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '*')
        });
    if ok {
        Ok(())
    } else {
        Err(TlsError::BadSan(s.to_string()))
    }
}

/// The CA's parameters. Signing needs only its name and key, so the same parameters
/// rebuild the issuer from the stored key on every start.
fn ca_params() -> Result<CertificateParams, TlsError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, "gustavo cluster CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(params)
}

/// Loads the CA from the data dir, creating it on first start.
fn load_or_create_ca(dir: &Path) -> Result<(String, KeyPair), TlsError> {
    let cert_path = dir.join("ca.crt");
    let key_path = dir.join("ca.key");
    if cert_path.exists() && key_path.exists() {
        let pem = std::fs::read_to_string(&cert_path).map_err(io_err(&cert_path))?;
        let key_pem = std::fs::read_to_string(&key_path).map_err(io_err(&key_path))?;
        let key = KeyPair::from_pem(&key_pem).map_err(|_| TlsError::Pem {
            path: key_path.display().to_string(),
            what: "private key",
        })?;
        return Ok((pem, key));
    }
    let key = KeyPair::generate()?;
    let cert = ca_params()?.self_signed(&key)?;
    // The key first: a CA certificate without its key would be useless on the next start.
    write_private(&key_path, &key.serialize_pem()).map_err(io_err(&key_path))?;
    write_private(&cert_path, &cert.pem()).map_err(io_err(&cert_path))?;
    tracing::info!(path = %cert_path.display(), "created the cluster CA");
    Ok((cert.pem(), key))
}

/// Sets up TLS for `mode`; `None` for plain HTTP.
pub fn load(
    mode: &TlsMode,
    data_dir: &Path,
    host: &str,
    listen: SocketAddr,
) -> Result<Option<TlsMaterial>, TlsError> {
    match mode {
        TlsMode::Insecure => Ok(None),
        TlsMode::Files { cert, key } => {
            let chain = read_certs(cert)?;
            let key = read_key(key)?;
            let root = chain.last().expect("read_certs returns at least one");
            let ca_pem = pem_of(root);
            let ca_fingerprint = fingerprint(root);
            Ok(Some(TlsMaterial {
                config: server_config(chain, key)?,
                ca_pem,
                ca_fingerprint,
                sans: Vec::new(),
            }))
        }
        TlsMode::Generated { extra_sans } => {
            for s in extra_sans {
                validate_san(s)?;
            }
            let (ca_pem, ca_key) = load_or_create_ca(data_dir)?;
            let ca_der =
                CertificateDer::from_pem_slice(ca_pem.as_bytes()).map_err(|_| TlsError::Pem {
                    path: data_dir.join("ca.crt").display().to_string(),
                    what: "certificate",
                })?;
            let issuer = Issuer::new(ca_params()?, &ca_key);
            let sans = default_sans(host, listen, extra_sans);
            let mut params = CertificateParams::new(sans.clone())?;
            params
                .distinguished_name
                .push(DnType::CommonName, "gustavo server");
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            params.key_usages = vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment,
            ];
            params.use_authority_key_identifier_extension = true;
            // A fresh serving key on every start: nothing but the CA has to be kept, and a
            // changed --tls-san takes effect at once.
            let key = KeyPair::generate()?;
            let cert = params.signed_by(&key, &issuer)?;
            let key_der =
                PrivateKeyDer::try_from(key.serialize_der()).map_err(|_| TlsError::Pem {
                    path: "generated key".into(),
                    what: "private key",
                })?;
            Ok(Some(TlsMaterial {
                config: server_config(vec![cert.der().clone(), ca_der.clone()], key_der)?,
                ca_fingerprint: fingerprint(&ca_der),
                ca_pem,
                sans,
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_known_values() {
        assert_eq!(base64_encode(b""), "");
        assert_eq!(base64_encode(b"f"), "Zg==");
        assert_eq!(base64_encode(b"fo"), "Zm8=");
        assert_eq!(base64_encode(b"foo"), "Zm9v");
        assert_eq!(base64_encode(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn the_ca_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let listen: SocketAddr = "0.0.0.0:7420".parse().unwrap();
        let mode = TlsMode::Generated {
            extra_sans: vec!["edge.example".into()],
        };
        let a = load(&mode, dir.path(), "box", listen).unwrap().unwrap();
        let b = load(&mode, dir.path(), "box", listen).unwrap().unwrap();
        assert_eq!(a.ca_fingerprint, b.ca_fingerprint);
        assert_eq!(a.ca_fingerprint.len(), 64);
        assert!(a.sans.contains(&"edge.example".to_string()));
        assert!(a.sans.contains(&"::1".to_string()));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("ca.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn sans_are_checked() {
        assert!(validate_san("10.0.0.1").is_ok());
        assert!(validate_san("edge-1.example.org").is_ok());
        assert!(validate_san("bad name").is_err());
        let s = default_sans("h", "10.1.2.3:1".parse().unwrap(), &["h".into()]);
        assert_eq!(s, vec!["h", "localhost", "127.0.0.1", "::1", "10.1.2.3"]);
    }
}
