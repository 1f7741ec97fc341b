//! Secret env values, encrypted at rest. The server keeps a 256-bit key in
//! `<data-dir>/secret.key` (mode 0600, made on first start) and seals each secret with
//! AES-256-GCM from `ring`, bound to its app and variable name (the associated data), so a
//! sealed value copied into another app or variable does not open.
//!
//! Sealing happens at the store boundary ([`SealingStore`]): what reaches the disk is
//! sealed; memory holds the plaintext, because the server must hand it to the nodes that
//! run the app (their desired state). People see only `{hidden: true}` (see
//! [`crate::api`]), and the audit log never records bodies.

use std::path::Path;
use std::sync::Arc;

use gustavo_model::api::App;
use gustavo_model::spec::{AppSpec, EnvValue};
use gustavo_store::{Change, Snapshot, Store, StoreError};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

pub struct SecretBox {
    key: LessSafeKey,
    rng: SystemRandom,
}

fn aad(app: &str, var: &str) -> String {
    format!("gustavo/v1/{app}/{var}")
}

impl SecretBox {
    /// Reads the key, or makes one on first start.
    pub fn load_or_create(path: &Path) -> std::io::Result<SecretBox> {
        let rng = SystemRandom::new();
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut k = [0u8; 32];
                rng.fill(&mut k)
                    .map_err(|_| std::io::Error::other("no randomness for the secret key"))?;
                crate::auth::write_private(path, &hex::encode(k))?;
                hex::encode(k).into_bytes()
            }
            Err(e) => return Err(e),
        };
        let raw = hex::decode(String::from_utf8_lossy(&bytes).trim())
            .ok()
            .filter(|k| k.len() == 32)
            .ok_or_else(|| {
                std::io::Error::other(format!("{} is not a 256-bit hex key", path.display()))
            })?;
        let key = UnboundKey::new(&AES_256_GCM, &raw)
            .map_err(|_| std::io::Error::other("unusable secret key"))?;
        Ok(SecretBox {
            key: LessSafeKey::new(key),
            rng,
        })
    }

    /// `hex(nonce ‖ ciphertext ‖ tag)`.
    pub fn seal(&self, app: &str, var: &str, plain: &str) -> Result<String, String> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng
            .fill(&mut nonce)
            .map_err(|_| "no randomness for a nonce".to_string())?;
        let mut buf = plain.as_bytes().to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(app, var).as_bytes()),
                &mut buf,
            )
            .map_err(|_| "sealing failed".to_string())?;
        let mut out = nonce.to_vec();
        out.extend(buf);
        Ok(hex::encode(out))
    }

    pub fn open(&self, app: &str, var: &str, sealed: &str) -> Result<String, String> {
        let bytes = hex::decode(sealed).map_err(|_| "not hex".to_string())?;
        if bytes.len() < NONCE_LEN {
            return Err("too short".into());
        }
        let (nonce, ct) = bytes.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| "bad nonce".to_string())?;
        let mut ct = ct.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(aad(app, var).as_bytes()), &mut ct)
            .map_err(|_| "wrong key, or the value was altered or moved".to_string())?;
        String::from_utf8(plain.to_vec()).map_err(|_| "not UTF-8".to_string())
    }
}

/// A [`Store`] that seals secret env values on their way to disk and opens them on load.
pub struct SealingStore {
    pub inner: Arc<dyn Store>,
    pub secrets: Arc<SecretBox>,
}

impl SealingStore {
    /// Seals the secret env values of a spec that belongs to `app`.
    fn seal_spec(&self, app: &str, spec: &mut AppSpec) -> Result<(), StoreError> {
        for (var, v) in spec.env_vars.iter_mut() {
            if let EnvValue::Secret(plain) = v {
                let sealed =
                    self.secrets
                        .seal(app, var, plain)
                        .map_err(|reason| StoreError::Sealed {
                            what: format!("app `{app}` env `{var}`"),
                            reason,
                        })?;
                *v = EnvValue::Sealed(sealed);
            }
        }
        Ok(())
    }

    fn open_spec(&self, app: &str, spec: &mut AppSpec) -> Result<(), StoreError> {
        for (var, v) in spec.env_vars.iter_mut() {
            if let EnvValue::Sealed(sealed) = v {
                let plain =
                    self.secrets
                        .open(app, var, sealed)
                        .map_err(|reason| StoreError::Sealed {
                            what: format!("app `{app}` env `{var}`"),
                            reason,
                        })?;
                *v = EnvValue::Secret(plain);
            }
        }
        Ok(())
    }

    /// The app with every spec it holds sealed: its own, and the previous one a rollout
    /// keeps for the devices not yet in a wave.
    fn seal_app(&self, app: &App) -> Result<App, StoreError> {
        let mut out = app.clone();
        self.seal_spec(&app.name, &mut out.spec)?;
        if let Some(r) = &mut out.rollout {
            self.seal_spec(&app.name, &mut r.from.spec)?;
        }
        Ok(out)
    }

    fn open_app(&self, app: &mut App) -> Result<(), StoreError> {
        let name = app.name.clone();
        self.open_spec(&name, &mut app.spec)?;
        if let Some(r) = &mut app.rollout {
            self.open_spec(&name, &mut r.from.spec)?;
        }
        Ok(())
    }
}

fn has_secret(spec: &AppSpec) -> bool {
    spec.env_vars.values().any(EnvValue::is_secret)
}

/// How a sealed site key starts in the store.
const SEALED_KEY: &str = "sealed:";

/// Sites seal under their own scope, so no app of the same name can open their keys.
fn site_scope(name: &str) -> String {
    format!("site:{name}")
}

impl Store for SealingStore {
    fn load(&self) -> Result<Snapshot, StoreError> {
        let mut snap = self.inner.load()?;
        for app in &mut snap.apps {
            self.open_app(app)?;
        }
        for site in &mut snap.sites {
            if let Some(sealed) = site.wg_private_key.strip_prefix(SEALED_KEY) {
                site.wg_private_key = self
                    .secrets
                    .open(&site_scope(&site.name), "wg_private_key", sealed)
                    .map_err(|reason| StoreError::Sealed {
                        what: format!("site `{}` WireGuard key", site.name),
                        reason,
                    })?;
            }
        }
        Ok(snap)
    }

    fn history(&self, app: &str) -> Result<Vec<gustavo_model::api::AppRevision>, StoreError> {
        let mut h = self.inner.history(app)?;
        for r in &mut h {
            self.open_spec(app, &mut r.spec)?;
        }
        Ok(h)
    }

    fn commit(&self, revision: u64, changes: &[Change]) -> Result<(), StoreError> {
        let sealed = changes
            .iter()
            .map(|c| match c {
                Change::PutApp(a)
                    if has_secret(&a.spec)
                        || a.rollout.as_ref().is_some_and(|r| has_secret(&r.from.spec)) =>
                {
                    Ok(Change::PutApp(Box::new(self.seal_app(a)?)))
                }
                Change::PutRevision(r) if has_secret(&r.spec) => {
                    let mut r = r.clone();
                    self.seal_spec(&r.app.clone(), &mut r.spec)?;
                    Ok(Change::PutRevision(r))
                }
                // A site's WireGuard private key is sealed like a secret env value.
                Change::PutSite(site) if !site.wg_private_key.is_empty() => {
                    let mut out = site.clone();
                    let sealed = self
                        .secrets
                        .seal(
                            &site_scope(&site.name),
                            "wg_private_key",
                            &site.wg_private_key,
                        )
                        .map_err(|reason| StoreError::Sealed {
                            what: format!("site `{}` WireGuard key", site.name),
                            reason,
                        })?;
                    out.wg_private_key = format!("{SEALED_KEY}{sealed}");
                    Ok(Change::PutSite(out))
                }
                other => Ok(other.clone()),
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        self.inner.commit(revision, &sealed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_and_opens_bound_to_app_and_var() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret.key");
        let b = SecretBox::load_or_create(&path).unwrap();
        let s1 = b.seal("web", "PASS", "hunter2").unwrap();
        let s2 = b.seal("web", "PASS", "hunter2").unwrap();
        assert_ne!(s1, s2, "a fresh nonce every time");
        assert!(!s1.contains(&hex::encode("hunter2")));
        assert_eq!(b.open("web", "PASS", &s1).unwrap(), "hunter2");
        assert!(b.open("other", "PASS", &s1).is_err());
        assert!(b.open("web", "USER", &s1).is_err());
        // The same key after a restart; a different key cannot open.
        let again = SecretBox::load_or_create(&path).unwrap();
        assert_eq!(again.open("web", "PASS", &s1).unwrap(), "hunter2");
        let other = SecretBox::load_or_create(&dir.path().join("other.key")).unwrap();
        assert!(other.open("web", "PASS", &s1).is_err());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
