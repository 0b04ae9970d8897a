//! Secrets at rest: AES-256-GCM under the device key file, stored in the sled store.
//!
//! The key file (`store.key_file`) holds 32 random bytes, created 0600 at first use. Each
//! encryption draws a fresh random 96-bit nonce (unique across restarts without a
//! counter), and `terminal/name` is bound as associated data so a sealed value cannot be
//! moved to another slot. Values are never logged; `Secret` redacts itself in `Debug`.

use std::io::Write;
use std::path::{Path, PathBuf};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use thiserror::Error;
use zeroize::Zeroizing;

use crate::store::{Store, StoreError};

const NONCE_LEN: usize = 12;

#[derive(Debug, Error)]
pub enum SecretError {
    #[error("device key {path}: {source}")]
    KeyIo { path: PathBuf, source: std::io::Error },
    #[error("device key {path} must hold exactly 32 bytes (it holds {len}); restore it or re-provision the secrets")]
    KeyLength { path: PathBuf, len: usize },
    #[error(
        "secret {slot} cannot be decrypted with this device key (wrong key file or damaged value)"
    )]
    Decrypt { slot: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A secret value in memory: wiped on drop, never printed.
pub struct Secret(Zeroizing<Vec<u8>>);

impl Secret {
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    pub fn expose_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.0).ok()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret(***)")
    }
}

#[derive(Clone)]
pub struct Secrets {
    store: Store,
    cipher: Aes256Gcm,
}

impl Secrets {
    /// Load the device key (creating it 0600 if missing) and bind it to the store.
    pub fn open(key_file: &Path, store: Store) -> Result<Secrets, SecretError> {
        let key = load_or_create_key(key_file)?;
        let cipher = Aes256Gcm::new_from_slice(&key)
            .map_err(|_| SecretError::KeyLength { path: key_file.to_path_buf(), len: key.len() })?;
        Ok(Secrets { store, cipher })
    }

    /// Encrypt and store a secret, durably.
    pub async fn set(&self, terminal: &str, name: &str, value: &[u8]) -> Result<(), SecretError> {
        let sealed = self.seal(terminal, name, value);
        self.store.put_secret(terminal, name, &sealed)?;
        self.store.commit().await?;
        Ok(())
    }

    pub fn get(&self, terminal: &str, name: &str) -> Result<Option<Secret>, SecretError> {
        match self.store.get_secret(terminal, name)? {
            None => Ok(None),
            Some(sealed) => self.open_sealed(terminal, name, &sealed).map(Some),
        }
    }

    fn seal(&self, terminal: &str, name: &str, value: &[u8]) -> Vec<u8> {
        let nonce: [u8; NONCE_LEN] = rand::random();
        let aad = slot(terminal, name);
        // Encryption with a valid key and in-memory buffers cannot fail.
        let ct = self
            .cipher
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: value, aad: aad.as_bytes() })
            .unwrap_or_default();
        let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        out
    }

    fn open_sealed(
        &self, terminal: &str, name: &str, sealed: &[u8],
    ) -> Result<Secret, SecretError> {
        let slot = slot(terminal, name);
        if sealed.len() < NONCE_LEN + 16 {
            return Err(SecretError::Decrypt { slot });
        }
        let (nonce, ct) = sealed.split_at(NONCE_LEN);
        self.cipher
            .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad: slot.as_bytes() })
            .map(|v| Secret(Zeroizing::new(v)))
            .map_err(|_| SecretError::Decrypt { slot })
    }
}

/// Create the device key (32 random bytes, 0600) if it does not exist yet; check it if
/// it does. Returns whether it was created (`posbridge provision`).
pub fn ensure_key(path: &Path) -> Result<bool, SecretError> {
    let existed = path.exists();
    load_or_create_key(path)?;
    Ok(!existed)
}

fn slot(terminal: &str, name: &str) -> String {
    format!("{terminal}/{name}")
}

fn load_or_create_key(path: &Path) -> Result<Zeroizing<Vec<u8>>, SecretError> {
    let io = |source| SecretError::KeyIo { path: path.to_path_buf(), source };
    match std::fs::read(path) {
        Ok(bytes) if bytes.len() == 32 => Ok(Zeroizing::new(bytes)),
        Ok(bytes) => Err(SecretError::KeyLength { path: path.to_path_buf(), len: bytes.len() }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(io)?;
            }
            let key: Zeroizing<[u8; 32]> = Zeroizing::new(rand::random());
            let mut f = {
                use std::os::unix::fs::OpenOptionsExt;
                std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(io)?
            };
            f.write_all(key.as_ref()).map_err(io)?;
            f.sync_all().map_err(io)?;
            tracing::info!(path = %path.display(), "created device key for secrets at rest");
            Ok(Zeroizing::new(key.to_vec()))
        }
        Err(e) => Err(io(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn round_trip_and_binding() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, _) = Store::open(&dir.path().join("store")).expect("store");
        let key = dir.path().join("device.key");
        let s = Secrets::open(&key, store.clone()).expect("open");
        s.set("kaspi-1", "token", b"s3cr3t-value").await.expect("set");
        let got = s.get("kaspi-1", "token").expect("get").expect("present");
        assert_eq!(got.expose(), b"s3cr3t-value");
        assert_eq!(format!("{got:?}"), "Secret(***)");
        // Encrypted at rest: the plaintext is nowhere in the stored bytes.
        let raw = store.get_secret("kaspi-1", "token").expect("raw").expect("present");
        assert!(!raw.windows(12).any(|w| w == b"s3cr3t-value"));
        // Bound to its slot: moved elsewhere it does not decrypt.
        store.put_secret("kaspi-2", "token", &raw).expect("copy");
        assert!(matches!(s.get("kaspi-2", "token"), Err(SecretError::Decrypt { .. })));
        // Key file is private, and a second seal uses a fresh nonce.
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        s.set("kaspi-1", "token", b"s3cr3t-value").await.expect("set again");
        let raw2 = store.get_secret("kaspi-1", "token").expect("raw").expect("present");
        assert_ne!(raw[..NONCE_LEN], raw2[..NONCE_LEN]);
    }

    #[tokio::test]
    async fn wrong_key_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, _) = Store::open(&dir.path().join("store")).expect("store");
        let a = Secrets::open(&dir.path().join("a.key"), store.clone()).expect("a");
        a.set("t", "api_key", b"x").await.expect("set");
        let b = Secrets::open(&dir.path().join("b.key"), store).expect("b");
        let e = b.get("t", "api_key").expect_err("wrong key");
        assert!(e.to_string().contains("wrong key file"));
        std::fs::write(dir.path().join("short.key"), b"abc").expect("write");
        let (store2, _) = Store::open(&dir.path().join("s2")).expect("store");
        assert!(matches!(
            Secrets::open(&dir.path().join("short.key"), store2),
            Err(SecretError::KeyLength { len: 3, .. })
        ));
    }
}
