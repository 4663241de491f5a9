//! Master keys: generation, the key file, and the keyring that opens objects.
//!
//! A master key is 32 random bytes. Its id is derived from it
//! (`HMAC-SHA256(key, "walseal/v1 key id")[..16]`), so a key file whose secret does not match
//! its id is caught when it is loaded, and an object that names a key id we hold but does not
//! open is known to be damaged rather than "the wrong key". Secrets live in [`Zeroizing`]
//! buffers, are wiped on drop, and never appear in `Debug` or `Display`.

use std::fmt;
use std::path::{Path, PathBuf};

use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use std::sync::Arc;

use crate::error::{Error, ErrorKind, Result};
pub use crate::secret::{hex_decode_into, hex_encode, KeyId, KEY_ID_LEN};
pub(crate) use crate::secret::{load_secret_file, parse_secret_text, write_secret_file};

use crate::recipient::{Identity, Recipient};
use crate::signer::{Signer, SignerPublic};

/// A repository id (`docs/FORMAT.md` §1): 16 random bytes made by `walseal init`.
pub type RepositoryId = [u8; 16];

/// Length of a master key in bytes.
pub const KEY_LEN: usize = 32;
const KEY_ID_LABEL: &[u8] = b"walseal/v1 key id";
const FILE_TAG: &str = "walseal-key";

/// A 256-bit master key. Wiped from memory on drop; `Debug` shows only the id.
pub struct MasterKey {
    id: KeyId,
    secret: Zeroizing<[u8; KEY_LEN]>,
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MasterKey {{ id: {} }}", self.id)
    }
}

impl MasterKey {
    /// Wraps raw key bytes, deriving the id.
    pub fn from_bytes(secret: Zeroizing<[u8; KEY_LEN]>) -> Self {
        let mac_key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_ref());
        let tag = hmac::sign(&mac_key, KEY_ID_LABEL);
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&tag.as_ref()[..KEY_ID_LEN]);
        MasterKey {
            id: KeyId(id),
            secret,
        }
    }

    /// A new random key.
    ///
    /// # Errors
    /// Fails only if the operating system's random generator fails.
    pub fn generate() -> Result<Self> {
        let mut secret = Zeroizing::new([0u8; KEY_LEN]);
        SystemRandom::new()
            .fill(secret.as_mut())
            .map_err(|_| Error::new(ErrorKind::Internal, "the system random generator failed"))?;
        Ok(Self::from_bytes(secret))
    }

    /// The key's id.
    pub fn id(&self) -> KeyId {
        self.id
    }

    /// The secret bytes, for key derivation inside this crate only.
    pub(crate) fn secret(&self) -> &[u8; KEY_LEN] {
        &self.secret
    }

    /// The key file text. The returned buffer is wiped on drop.
    pub(crate) fn to_file_text(&self) -> Zeroizing<String> {
        let secret_hex = Zeroizing::new(hex_encode(self.secret.as_ref()));
        Zeroizing::new(format!(
            "# walseal master key. Anyone holding this file can read every object sealed under it;\n\
             # without it those objects cannot be opened. Keep it mode 0600 and keep a copy off this host.\n\
             {FILE_TAG}: 1\nid: {}\nsecret: {}\n",
            self.id,
            secret_hex.as_str()
        ))
    }

    /// Parses key file text (see `docs/FORMAT.md`, "Key file").
    pub(crate) fn from_file_text(text: &str) -> std::result::Result<Self, &'static str> {
        let parsed = parse_secret_text(
            text,
            FILE_TAG,
            "id",
            "not a walseal key file (missing `walseal-key: 1`)",
        )?;
        let key = MasterKey::from_bytes(parsed.secret);
        let id = parsed.field.ok_or("missing `id:` line")?;
        if !id.eq_ignore_ascii_case(&key.id.to_string()) {
            return Err("`id:` does not match the secret (the file was edited or damaged)");
        }
        Ok(key)
    }
}

/// Writes a new random master key to `path` with mode 0600. Refuses to overwrite.
///
/// # Errors
/// `Conflict` if the file exists; `LocalIo` if it cannot be written.
pub fn keygen(path: &Path) -> Result<KeyId> {
    let key = MasterKey::generate()?;
    write_secret_file(path, &key.to_file_text(), "key")?;
    Ok(key.id())
}

/// Loads a key file, refusing one that group or others can access.
///
/// # Errors
/// `Config` for a missing, unreadable, too-open or malformed key file.
pub fn load_key_file(path: &Path) -> Result<MasterKey> {
    load_secret_file(
        path,
        "key",
        "set WALSEAL_KEY_FILE (or key_file in the config) to a key made by `walseal keygen`, readable by this user",
        "walseal keygen",
        MasterKey::from_file_text,
    )
}

/// What new objects are sealed to: a master key (symmetric) or a recipient (public key).
#[derive(Debug, Clone, Copy)]
pub enum Sealer<'a> {
    /// A master-key slot (kind 0x01).
    Master(&'a MasterKey),
    /// An X25519 recipient slot (kind 0x02) plus a content-digest slot (kind 0x03).
    Recipient(&'a Recipient),
}

impl Sealer<'_> {
    /// The id a slot for this sealer carries.
    pub fn id(&self) -> KeyId {
        match self {
            Sealer::Master(k) => k.id(),
            Sealer::Recipient(r) => r.id(),
        }
    }
}

impl<'a> From<&'a MasterKey> for Sealer<'a> {
    fn from(k: &'a MasterKey) -> Self {
        Sealer::Master(k)
    }
}

impl<'a> From<&'a Recipient> for Sealer<'a> {
    fn from(r: &'a Recipient) -> Self {
        Sealer::Recipient(r)
    }
}

/// The keys this process may use. Master keys seal and open; identities open objects sealed
/// to their recipient; a configured recipient seals only. New objects go to the configured
/// recipient if there is one, else to the first master key, else to the first identity's
/// recipient.
///
/// It also carries the reading policy every open applies (`docs/FORMAT.md` §4): the
/// repository id objects must carry (once [`Keyring::bind`] is called), whether format-1
/// objects are accepted, and the signers trusted for objects sealed to a recipient.
#[derive(Debug)]
pub struct Keyring {
    keys: Vec<MasterKey>,
    identities: Vec<Identity>,
    recipient: Option<Recipient>,
    signer: Option<Arc<Signer>>,
    trusted: Vec<SignerPublic>,
    allow_legacy: bool,
    repository: Option<RepositoryId>,
    /// How new objects are compressed (`compression` setting), and the zstd level.
    compression: (crate::seal::Compression, i32),
}

impl Keyring {
    /// A keyring from loaded master keys; the first one is active.
    ///
    /// # Errors
    /// `Config` if `keys` is empty.
    pub fn new(keys: Vec<MasterKey>) -> Result<Self> {
        Self::with(keys, Vec::new(), None)
    }

    /// A keyring from master keys, identities and a recipient.
    ///
    /// # Errors
    /// `Config` if all are empty.
    pub fn with(
        keys: Vec<MasterKey>,
        identities: Vec<Identity>,
        recipient: Option<Recipient>,
    ) -> Result<Self> {
        if keys.is_empty() && identities.is_empty() && recipient.is_none() {
            return Err(no_key_error());
        }
        Ok(Keyring {
            keys,
            identities,
            recipient,
            signer: None,
            trusted: Vec::new(),
            allow_legacy: false,
            repository: None,
            compression: (crate::seal::Compression::Lz4, 3),
        })
    }

    /// A keyring holding no key that trusts only `signer` (for a sealer's self-check).
    pub(crate) fn trusting(signer: SignerPublic) -> Self {
        Keyring {
            keys: Vec::new(),
            identities: Vec::new(),
            recipient: None,
            signer: None,
            trusted: vec![signer],
            allow_legacy: false,
            repository: None,
            compression: (crate::seal::Compression::Lz4, 3),
        }
    }

    /// Adds the signer this host signs with (it also trusts it).
    #[must_use]
    pub fn with_signer(mut self, signer: Signer) -> Self {
        self.signer = Some(Arc::new(signer));
        self
    }

    /// Adds signers whose recipient-sealed objects are accepted.
    #[must_use]
    pub fn trust(mut self, signers: impl IntoIterator<Item = SignerPublic>) -> Self {
        self.trusted.extend(signers);
        self
    }

    /// Accepts format-1 objects (not bound to a repository, not signed).
    #[must_use]
    pub fn allowing_legacy(mut self, allow: bool) -> Self {
        self.allow_legacy = allow;
        self
    }

    /// Binds the keyring to a repository: objects must carry its id, new ones get it.
    pub fn bind(&mut self, repository: RepositoryId) {
        self.repository = Some(repository);
    }

    /// The repository id objects must carry, once bound.
    pub fn repository(&self) -> Option<RepositoryId> {
        self.repository
    }

    /// Whether format-1 objects are accepted.
    pub fn allow_legacy(&self) -> bool {
        self.allow_legacy
    }

    /// The signer this host signs with, if any.
    pub fn signer(&self) -> Option<&Signer> {
        self.signer.as_deref()
    }

    /// The trusted signer with this id (this host's own signer is trusted too).
    pub fn trusted_signer(&self, id: &KeyId) -> Option<&SignerPublic> {
        self.trusted
            .iter()
            .chain(self.signer.as_ref().map(|s| s.public()))
            .find(|p| p.id() == *id)
    }

    /// The signer, shared (for [`crate::seal::SealOptions`]).
    /// A key for the MACs over walseal's own files in pg_wal (push-ahead records, the
    /// prefetch spool's sidecars), derived from the first secret this host holds (a master
    /// key, else an identity, else the signer) and `context`; `None` on a host that holds
    /// none (a bare recipient).
    pub(crate) fn local_state_key(&self, context: &[u8]) -> Option<hmac::Key> {
        let secret: Zeroizing<[u8; 32]> = match (
            self.keys.first(),
            self.identities.first(),
            self.signer.as_deref(),
        ) {
            (Some(k), _, _) => Zeroizing::new(*k.secret()),
            (None, Some(i), _) => i.secret_bytes(),
            (None, None, Some(s)) => Zeroizing::new(*s.seed()),
            (None, None, None) => return None,
        };
        let outer = hmac::Key::new(hmac::HMAC_SHA256, secret.as_ref());
        let mut ctx = hmac::Context::with_key(&outer);
        ctx.update(b"walseal/v1 local state\0");
        ctx.update(context);
        let derived = Zeroizing::new(ctx.sign().as_ref().to_vec());
        Some(hmac::Key::new(hmac::HMAC_SHA256, &derived))
    }

    /// Sets how new objects are compressed (`compression` setting).
    pub fn set_compression(&mut self, compression: crate::seal::Compression, zstd_level: i32) {
        self.compression = (compression, zstd_level);
    }

    /// How new objects are compressed, and the zstd level.
    pub fn compression(&self) -> (crate::seal::Compression, i32) {
        self.compression
    }

    pub(crate) fn signer_arc(&self) -> Option<Arc<Signer>> {
        self.signer.clone()
    }

    /// Loads every key file in order; the first is active.
    ///
    /// # Errors
    /// As [`load_key_file`]; `Config` if `paths` is empty.
    pub fn load(paths: &[PathBuf]) -> Result<Self> {
        Self::new(
            paths
                .iter()
                .map(|p| load_key_file(p))
                .collect::<Result<Vec<_>>>()?,
        )
    }

    /// What new objects are sealed to.
    pub fn active(&self) -> Sealer<'_> {
        // `with` refuses a keyring with none of the three.
        match (&self.recipient, self.keys.first(), self.identities.first()) {
            (Some(r), _, _) => Sealer::Recipient(r),
            (None, Some(k), _) => Sealer::Master(k),
            (None, None, Some(i)) => Sealer::Recipient(i.recipient()),
            (None, None, None) => unreachable!("Keyring::with refuses an empty keyring"),
        }
    }

    /// The first master key, if any (the audit log's MAC key derives from it).
    pub fn first_master(&self) -> Option<&MasterKey> {
        self.keys.first()
    }

    /// The master key with this id, if held.
    pub fn get(&self, id: &KeyId) -> Option<&MasterKey> {
        self.keys.iter().find(|k| k.id == *id)
    }

    /// The identity whose recipient has this id, if held.
    pub fn identity(&self, id: &KeyId) -> Option<&Identity> {
        self.identities.iter().find(|i| i.recipient().id() == *id)
    }

    /// The sealer with this id: a master key, or the recipient of a held identity or the
    /// configured recipient.
    pub fn sealer(&self, id: &KeyId) -> Option<Sealer<'_>> {
        if let Some(k) = self.get(id) {
            return Some(Sealer::Master(k));
        }
        if let Some(i) = self.identity(id) {
            return Some(Sealer::Recipient(i.recipient()));
        }
        self.recipient
            .as_ref()
            .filter(|r| r.id() == *id)
            .map(Sealer::Recipient)
    }

    /// Whether this keyring can open anything (false on a push-only host).
    pub fn can_open(&self) -> bool {
        !self.keys.is_empty() || !self.identities.is_empty()
    }

    /// Whether this keyring can open what it seals now: false on a push-only host, and on one
    /// that seals to a recipient whose identity it does not hold (even if it holds master keys
    /// for older objects).
    pub fn opens_own(&self) -> bool {
        match self.active() {
            Sealer::Master(_) => true,
            Sealer::Recipient(r) => self.identity(&r.id()).is_some(),
        }
    }

    /// Fails with a clear error on a push-only host (recipient only).
    ///
    /// # Errors
    /// `Key` if the keyring holds neither a master key nor an identity.
    pub fn require_open(&self, what: &str) -> Result<()> {
        if self.can_open() {
            return Ok(());
        }
        Err(push_only_error(what))
    }

    /// The ids that can open objects, for error messages and reports.
    pub fn ids(&self) -> Vec<KeyId> {
        self.keys
            .iter()
            .map(|k| k.id)
            .chain(self.identities.iter().map(|i| i.recipient().id()))
            .collect()
    }
}

/// The error for opening on a push-only host.
pub fn push_only_error(what: &str) -> Error {
    Error::new(
        ErrorKind::Key,
        format!("{what} needs an identity: this host holds only a recipient (push-only mode) and can seal but not open"),
    )
    .hint("run it on a host given the identity (WALSEAL_IDENTITY_FILE=FILE, made by `walseal keygen --recipient`) or a master key")
}

/// The error for "no key configured".
pub fn no_key_error() -> Error {
    Error::new(ErrorKind::Config, "no key configured")
        .hint("create one with `walseal keygen -o FILE` and set WALSEAL_KEY_FILE=FILE (or key_file in the config); a push-only host sets WALSEAL_RECIPIENT instead")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    #[test]
    fn keygen_then_load_round_trips_and_refuses_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        let id = keygen(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        assert_eq!(load_key_file(&path).unwrap().id(), id);
        let err = keygen(&path).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Conflict);
    }

    #[test]
    fn group_readable_key_is_refused_with_chmod_hint() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        keygen(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let err = load_key_file(&path).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }

    #[test]
    fn edited_secret_is_detected_by_id() {
        let key = MasterKey::from_bytes(Zeroizing::new([7u8; 32]));
        let text = key.to_file_text().replace("0707", "0708");
        assert!(MasterKey::from_file_text(&text).is_err());
        assert_eq!(
            MasterKey::from_file_text(&key.to_file_text()).unwrap().id(),
            key.id()
        );
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let key = MasterKey::from_bytes(Zeroizing::new([0xab; 32]));
        let shown = format!("{key:?}");
        let ring = format!("{:?}", Keyring::new(vec![key]).unwrap());
        let shown = format!("{shown} {ring}");
        assert!(!shown.contains("abababab"), "{shown}");
    }
}
