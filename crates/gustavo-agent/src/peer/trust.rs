//! Trust between peers: a cluster CA shared by every device of a peer cluster.
//!
//! `gustavo peer init` makes the CA (certificate and key in one PEM file, mode 0600);
//! `gustavo peer join FILE` puts a copy in the agent's data dir. At every start a peer signs
//! itself a fresh certificate for `<node>.gustavo-peer` with it, and every connection
//! between peers is TLS 1.3 with both sides' certificates checked against the CA: a device
//! without the cluster's CA can neither call a peer nor answer one. The CA's fingerprint
//! goes in the mDNS record, so devices of other clusters are ignored before any connection.

use std::path::Path;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

/// The DNS suffix of peers' certificate names.
pub const NAME_SUFFIX: &str = "gustavo-peer";

/// A peer cluster's CA, as `peer init` writes it and `peer join` copies it.
pub struct ClusterCa {
    pub cert_pem: String,
    key_pem: String,
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// The CA's parameters; the same every time, so a loaded CA's key can sign again
/// (`Issuer` takes the issuer's name and key identifier from them).
fn ca_params() -> Result<CertificateParams, String> {
    let mut p = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    p.distinguished_name
        .push(DnType::CommonName, "gustavo peer cluster");
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(p)
}

const CERT_BEGIN: &str = "-----BEGIN CERTIFICATE-----";
const CERT_END: &str = "-----END CERTIFICATE-----";

impl ClusterCa {
    /// A new CA for a new cluster.
    pub fn generate() -> Result<ClusterCa, String> {
        let key = KeyPair::generate().map_err(err)?;
        let cert = ca_params()?.self_signed(&key).map_err(err)?;
        Ok(ClusterCa {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// The file's text: the certificate, then the key.
    pub fn to_pem(&self) -> String {
        format!("{}{}", self.cert_pem, self.key_pem)
    }

    /// Reads a cluster file; says what is missing.
    pub fn parse(text: &str) -> Result<ClusterCa, String> {
        let (Some(start), Some(end)) = (text.find(CERT_BEGIN), text.find(CERT_END)) else {
            return Err("no certificate in it (make one with `gustavo peer init`)".into());
        };
        let cert_pem = format!("{}\n", &text[start..end + CERT_END.len()]);
        CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(err)?;
        let key = PrivateKeyDer::from_pem_slice(text.as_bytes())
            .map_err(|_| "no private key in it (make one with `gustavo peer init`)")?;
        let key_pem = KeyPair::try_from(&key).map_err(err)?.serialize_pem();
        let ca = ClusterCa { cert_pem, key_pem };
        // The key must be the certificate's: a peer signed with another key fails later.
        let id = ca.identity("check")?;
        let verifier = id.client_verifier()?;
        verifier
            .verify_client_cert(&id.cert, &[], rustls::pki_types::UnixTime::now())
            .map_err(|e| format!("the key is not the certificate's ({e})"))?;
        Ok(ca)
    }

    pub fn load(path: &Path) -> Result<ClusterCa, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        ClusterCa::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Hex SHA-256 of the CA certificate (its first 16 characters go in mDNS records).
    pub fn fingerprint(&self) -> String {
        let der = CertificateDer::from_pem_slice(self.cert_pem.as_bytes())
            .map(|d| d.to_vec())
            .unwrap_or_default();
        hex::encode(Sha256::digest(der))
    }

    /// A certificate for peer `node`, signed by the CA, good for serving and for calling.
    pub fn identity(&self, node: &str) -> Result<Identity, String> {
        let ca_key = KeyPair::from_pem(&self.key_pem).map_err(err)?;
        let issuer = Issuer::new(ca_params()?, &ca_key);
        let key = KeyPair::generate().map_err(err)?;
        let mut p = CertificateParams::new(vec![format!("{node}.{NAME_SUFFIX}")]).map_err(err)?;
        p.distinguished_name.push(DnType::CommonName, node);
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.use_authority_key_identifier_extension = true;
        let cert = p.signed_by(&key, &issuer).map_err(err)?;
        Ok(Identity {
            cert: cert.der().clone(),
            key: PrivateKeyDer::try_from(key.serialize_der()).map_err(err)?,
            ca: CertificateDer::from_pem_slice(self.cert_pem.as_bytes()).map_err(err)?,
        })
    }
}

impl std::fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCa")
            .field("fingerprint", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

/// One peer's certificate and key, and the cluster CA it trusts.
pub struct Identity {
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
    ca: CertificateDer<'static>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl Identity {
    fn roots(&self) -> Result<rustls::RootCertStore, String> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.clone()).map_err(err)?;
        Ok(roots)
    }

    /// Accepts client certificates signed by the cluster CA.
    fn client_verifier(
        &self,
    ) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, String> {
        rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(self.roots()?),
            provider(),
        )
        .build()
        .map_err(err)
    }

    /// TLS 1.3 only, a client certificate from the cluster CA required.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, String> {
        let verifier = self.client_verifier()?;
        let mut c = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(err)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![self.cert.clone()], self.key.clone_key())
            .map_err(err)?;
        c.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(c))
    }

    /// TLS 1.3 only, presenting this peer's certificate, trusting only the cluster CA.
    pub fn client_config(&self) -> Result<rustls::ClientConfig, String> {
        rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(err)?
            .with_root_certificates(self.roots()?)
            .with_client_auth_cert(vec![self.cert.clone()], self.key.clone_key())
            .map_err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_file_round_trips_and_signs_peers() {
        let ca = ClusterCa::generate().unwrap();
        let other = ClusterCa::generate().unwrap();
        let again = ClusterCa::parse(&ca.to_pem()).unwrap();
        assert_eq!(ca.fingerprint(), again.fingerprint());
        assert_eq!(ca.fingerprint().len(), 64);
        let id = again.identity("pi-1").unwrap();
        id.server_config().unwrap();
        id.client_config().unwrap();
        assert!(ClusterCa::parse("junk").is_err());
        // Another cluster's key with this certificate is refused.
        let mixed = format!("{}{}", ca.cert_pem, other.key_pem);
        assert!(
            ClusterCa::parse(&mixed)
                .unwrap_err()
                .contains("not the certificate")
        );
        assert!(
            ClusterCa::parse(&ca.cert_pem)
                .unwrap_err()
                .contains("private key")
        );
    }
}
