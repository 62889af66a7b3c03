//! Values encrypted at rest with the site's store key, on either backend.
//!
//! [`EncryptedStore`] wraps a [`Store`]: every value it writes is sealed
//! with AES-256-GCM under the current key of a [`StoreKey`], with a fresh
//! random 96-bit nonce and the value's own key name as associated data (so
//! a value copied to another key does not open), and every value it reads
//! is opened again. Keys (names), revisions and the shape of transactions
//! are not hidden: the store orders and compares them. What someone who
//! copies the redb file or an etcd snapshot gets is the key names and
//! ciphertext.
//!
//! A sealed value is `WLE1`, the key's id (4 bytes, big-endian), the
//! nonce (12 bytes), then the ciphertext and its tag.
//!
//! The key file holds one key per line, `<id> <64 hex digits>`, `#`
//! comments allowed; the last line's key seals new values and every key
//! listed opens old ones. Rotation: append a line with a new id, restart
//! the replicas, run [`EncryptedStore::rekey`] (`wardline-control-plane
//! --rekey`), then drop the old line. The file must be readable by its
//! owner only.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use futures_util::StreamExt as _;
use rand::RngCore as _;

use crate::{KeyValue, Op, Store, StoreError, TxnOutcome, WatchEvent, WatchStream};

const MAGIC: &[u8; 4] = b"WLE1";
const NONCE_BYTES: usize = 12;
const HEADER: usize = MAGIC.len() + 4 + NONCE_BYTES;

/// The site's store keys: the current one seals, all open.
#[derive(Clone)]
pub struct StoreKey {
    keys: BTreeMap<u32, Aes256Gcm>,
    current: u32,
}

impl std::fmt::Debug for StoreKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreKey")
            .field("ids", &self.keys.keys().collect::<Vec<_>>())
            .field("current", &self.current)
            .finish()
    }
}

fn key_error(path: &Path, message: impl std::fmt::Display) -> StoreError {
    StoreError::InvalidRequest(format!("store key file {}: {message}", path.display()))
}

impl StoreKey {
    /// Reads the key file at `path`, refusing one that others can read.
    pub fn load(path: &Path) -> Result<StoreKey, StoreError> {
        use std::os::unix::fs::PermissionsExt as _;
        let meta = std::fs::metadata(path).map_err(|source| StoreError::Io {
            operation: "reading the store key file",
            path: path.to_owned(),
            source,
        })?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(key_error(
                path,
                format!("is readable by others (mode {mode:04o}); make it 0600"),
            ));
        }
        let text = std::fs::read_to_string(path).map_err(|source| StoreError::Io {
            operation: "reading the store key file",
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }

    fn parse(path: &Path, text: &str) -> Result<StoreKey, StoreError> {
        let mut keys = BTreeMap::new();
        let mut current = None;
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |why: &str| key_error(path, format!("line {}: {why}", n + 1));
            let (id, digits) = line
                .split_once(char::is_whitespace)
                .ok_or_else(|| bad("expected `<id> <64 hex digits>`"))?;
            let id: u32 = id.parse().map_err(|_| bad("the id is not a number"))?;
            let bytes = hex::decode(digits.trim())
                .ok()
                .filter(|b| b.len() == 32)
                .ok_or_else(|| bad("the key is not 64 hex digits"))?;
            let cipher = Aes256Gcm::new_from_slice(&bytes)
                .map_err(|_| bad("the key is not 32 bytes (64 hex digits)"))?;
            if keys.insert(id, cipher).is_some() {
                return Err(bad("this id is listed twice"));
            }
            current = Some(id);
        }
        let current = current.ok_or_else(|| key_error(path, "holds no key"))?;
        Ok(StoreKey { keys, current })
    }

    /// Writes a new key file at `path` (0600) with one random key, or, if
    /// it exists, appends a new random key with the next id: the new
    /// current key. Returns its id.
    pub fn generate(path: &Path) -> Result<u32, StoreError> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let next = match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(path, &text)?
                .keys
                .keys()
                .max()
                .map_or(1, |m| m + 1),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 1,
            Err(source) => {
                return Err(StoreError::Io {
                    operation: "reading the store key file",
                    path: path.to_owned(),
                    source,
                });
            }
        };
        let mut key = [0u8; 32];
        rand::rng().fill_bytes(&mut key);
        let io = |source| StoreError::Io {
            operation: "writing the store key file",
            path: path.to_owned(),
            source,
        };
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .map_err(io)?;
        writeln!(file, "{next} {}", hex::encode(key)).map_err(io)?;
        file.sync_all().map_err(io)?;
        Ok(next)
    }

    /// The id of the key that seals new values.
    pub fn current(&self) -> u32 {
        self.current
    }

    /// `value` sealed with the current key, bound to `name` (the key it is
    /// stored under): it opens only under that name.
    pub fn seal(&self, name: &str, value: &[u8]) -> Result<Vec<u8>, StoreError> {
        let cipher = &self.keys[&self.current];
        let mut nonce = [0u8; NONCE_BYTES];
        rand::rng().fill_bytes(&mut nonce);
        let sealed = cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: value,
                    aad: name.as_bytes(),
                },
            )
            .map_err(|_| StoreError::Backend(format!("encrypting the value of {name:?}")))?;
        let mut out = Vec::with_capacity(HEADER + sealed.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.current.to_be_bytes());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// The key id a stored value was sealed with, if it is sealed.
    fn sealed_with(stored: &[u8]) -> Option<u32> {
        (stored.len() >= HEADER && &stored[..4] == MAGIC)
            .then(|| u32::from_be_bytes([stored[4], stored[5], stored[6], stored[7]]))
    }

    /// What [`StoreKey::seal`] sealed under `name`, with whichever key of
    /// the file it was sealed with.
    pub fn open(&self, name: &str, stored: &[u8]) -> Result<Vec<u8>, StoreError> {
        let id = Self::sealed_with(stored).ok_or_else(|| {
            StoreError::Backend(format!(
                "the stored value of {name:?} is not encrypted with the site's store key (written without --store-key?); run --rekey to encrypt it"
            ))
        })?;
        let cipher = self.keys.get(&id).ok_or_else(|| {
            StoreError::Backend(format!(
                "the stored value of {name:?} is sealed with store key {id}, which the key file does not hold"
            ))
        })?;
        cipher
            .decrypt(
                Nonce::from_slice(&stored[8..HEADER]),
                Payload {
                    msg: &stored[HEADER..],
                    aad: name.as_bytes(),
                },
            )
            .map_err(|_| {
                StoreError::Backend(format!(
                    "the stored value of {name:?} does not open with store key {id}: altered, or copied from another key"
                ))
            })
    }
}

/// A [`Store`] whose values are encrypted at rest.
pub struct EncryptedStore {
    inner: Arc<dyn Store>,
    key: Arc<StoreKey>,
}

impl EncryptedStore {
    pub fn new(inner: Arc<dyn Store>, key: StoreKey) -> EncryptedStore {
        EncryptedStore {
            inner,
            key: Arc::new(key),
        }
    }

    fn open_kv(key: &StoreKey, mut kv: KeyValue) -> Result<KeyValue, StoreError> {
        kv.value = key.open(&kv.key, &kv.value)?;
        Ok(kv)
    }

    /// Seals again, with the current key, every value under `prefix` that
    /// is sealed with another key or not at all; each in a transaction
    /// that holds only if the value did not change meanwhile. Returns how
    /// many were rewritten.
    pub async fn rekey(&self, prefix: &str) -> Result<usize, StoreError> {
        let mut done = 0;
        for kv in self.inner.range(prefix).await? {
            if StoreKey::sealed_with(&kv.value) == Some(self.key.current) {
                continue;
            }
            let plain = match StoreKey::sealed_with(&kv.value) {
                Some(_) => self.key.open(&kv.key, &kv.value)?,
                None => kv.value.clone(),
            };
            let outcome = self
                .inner
                .txn(
                    vec![crate::Compare::ModRevision {
                        key: kv.key.clone(),
                        revision: kv.mod_revision,
                    }],
                    vec![Op::Put {
                        value: self.key.seal(&kv.key, &plain)?,
                        key: kv.key,
                    }],
                )
                .await?;
            if outcome.succeeded {
                done += 1;
            }
        }
        Ok(done)
    }
}

#[async_trait::async_trait]
impl Store for EncryptedStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        self.inner
            .get(key)
            .await?
            .map(|kv| Self::open_kv(&self.key, kv))
            .transpose()
    }

    async fn range(&self, prefix: &str) -> Result<Vec<KeyValue>, StoreError> {
        self.inner
            .range(prefix)
            .await?
            .into_iter()
            .map(|kv| Self::open_kv(&self.key, kv))
            .collect()
    }

    async fn txn(
        &self,
        compares: Vec<crate::Compare>,
        ops: Vec<Op>,
    ) -> Result<TxnOutcome, StoreError> {
        let ops = ops
            .into_iter()
            .map(|op| match op {
                Op::Put { key, value } => Ok(Op::Put {
                    value: self.key.seal(&key, &value)?,
                    key,
                }),
                delete => Ok(delete),
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        self.inner.txn(compares, ops).await
    }

    async fn revision(&self) -> Result<u64, StoreError> {
        self.inner.revision().await
    }

    async fn watch(&self, prefix: &str, after_revision: u64) -> Result<WatchStream, StoreError> {
        let key = self.key.clone();
        let events = self.inner.watch(prefix, after_revision).await?;
        Ok(Box::pin(events.map(move |event| match event? {
            WatchEvent::Put(kv) => Ok(WatchEvent::Put(Self::open_kv(&key, kv)?)),
            delete => Ok(delete),
        })))
    }

    async fn compact(&self, revision: u64) -> Result<(), StoreError> {
        self.inner.compact(revision).await
    }
}

/// Where a replica's store key file is by default.
pub fn default_key_path() -> PathBuf {
    PathBuf::from("/etc/wardline/store.key")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(text: &str) -> Result<StoreKey, StoreError> {
        StoreKey::parse(Path::new("store.key"), text)
    }

    const K1: &str = "1 000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    const K2: &str = "2 1f1e1d1c1b1a191817161514131211100f0e0d0c0b0a09080706050403020100";

    #[test]
    fn a_value_opens_under_its_own_name_only() {
        let k = key(K1).unwrap();
        let sealed = k.seal("/wardline/a", b"allow ws to ehr").unwrap();
        assert!(!sealed.windows(5).any(|w| w == b"allow"));
        assert_eq!(k.open("/wardline/a", &sealed).unwrap(), b"allow ws to ehr");
        let err = k.open("/wardline/b", &sealed).unwrap_err().to_string();
        assert!(err.contains("copied from another key"), "{err}");
        let mut altered = sealed.clone();
        *altered.last_mut().unwrap() ^= 1;
        assert!(k.open("/wardline/a", &altered).is_err());
        let err = k
            .open("/wardline/a", b"{\"plain\":1}")
            .unwrap_err()
            .to_string();
        assert!(err.contains("not encrypted"), "{err}");
    }

    #[test]
    fn rotation_keeps_old_values_readable_and_seals_with_the_last_key() {
        let old = key(K1).unwrap();
        let sealed = old.seal("/k", b"v").unwrap();
        let both = key(&format!("{K1}\n# rotated\n{K2}\n")).unwrap();
        assert_eq!(both.current(), 2);
        assert_eq!(both.open("/k", &sealed).unwrap(), b"v");
        assert_eq!(
            StoreKey::sealed_with(&both.seal("/k", b"v").unwrap()),
            Some(2)
        );
        let only_new = key(K2).unwrap();
        let err = only_new.open("/k", &sealed).unwrap_err().to_string();
        assert!(
            err.contains("store key 1, which the key file does not hold"),
            "{err}"
        );
    }

    #[test]
    fn bad_key_files_are_refused_by_line() {
        for (text, why) in [
            ("", "holds no key"),
            ("1 abcd", "line 1: the key is not 64 hex digits"),
            ("x 00", "line 1: the id is not a number"),
            (
                &format!("{K1}\n{K1}") as &str,
                "line 2: this id is listed twice",
            ),
        ] {
            let err = key(text).unwrap_err().to_string();
            assert!(err.contains(why), "{text:?}: {err}");
        }
    }
}
