//! Master keys: generation, the key file, and the keyring that opens objects.
//!
//! A master key is 32 random bytes. Its id is derived from it
//! (`HMAC-SHA256(key, "walseal/v1 key id")[..16]`), so a key file whose secret does not match
//! its id is caught when it is loaded, and an object that names a key id we hold but does not
//! open is known to be damaged rather than "the wrong key". Secrets live in [`Zeroizing`]
//! buffers, are wiped on drop, and never appear in `Debug` or `Display`.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use crate::error::{local_io, Error, ErrorKind, Result};
use std::sync::Arc;

use crate::recipient::{Identity, Recipient};
use crate::seal::{RepositoryId, SealOptions};
use crate::signer::{Signer, SignerPublic};

/// Length of a master key in bytes.
pub const KEY_LEN: usize = 32;
/// Length of a key id in bytes.
pub const KEY_ID_LEN: usize = 16;
const KEY_ID_LABEL: &[u8] = b"walseal/v1 key id";
const FILE_TAG: &str = "walseal-key";

/// The id of a master key: 16 bytes derived from the key, shown as 32 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyId(pub [u8; KEY_ID_LEN]);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex_encode(&self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

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

/// A parsed secret file (key file or identity file): its one named field and its secret.
pub(crate) struct SecretText<'t> {
    /// The named field (`id:` or `recipient:`), if present.
    pub(crate) field: Option<&'t str>,
    /// The 32-byte secret.
    pub(crate) secret: Zeroizing<[u8; KEY_LEN]>,
}

/// Parses the `name: value` lines of a secret file: `tag: 1`, `field: ...` and `secret:` (64
/// hex digits); `#` lines and blank lines are skipped, any other field is refused.
pub(crate) fn parse_secret_text<'t>(
    text: &'t str,
    tag: &str,
    field: &str,
    not_ours: &'static str,
) -> std::result::Result<SecretText<'t>, &'static str> {
    let (mut version, mut named, mut secret_hex) = (None, None, None);
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (k, v) = line.split_once(':').ok_or("a line is not `name: value`")?;
        match k.trim() {
            k if k == tag => version = Some(v.trim()),
            k if k == field => named = Some(v.trim()),
            "secret" => secret_hex = Some(v.trim()),
            _ => return Err("unknown field"),
        }
    }
    if version != Some("1") {
        return Err(not_ours);
    }
    let mut secret = Zeroizing::new([0u8; KEY_LEN]);
    hex_decode_into(secret_hex.ok_or("missing `secret:` line")?, secret.as_mut())
        .ok_or("`secret:` is not 64 hex digits")?;
    Ok(SecretText {
        field: named,
        secret,
    })
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

/// Writes a new secret file (a key or an identity: `what`) with mode 0600 and fsyncs it and
/// its directory. Never overwrites.
///
/// # Errors
/// `Conflict` if the file exists; `LocalIo` if it cannot be written.
pub(crate) fn write_secret_file(path: &Path, text: &str, what: &str) -> Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| {
            if e.kind() == io::ErrorKind::AlreadyExists {
                Error::new(
                    ErrorKind::Conflict,
                    format!("{} already exists; walseal keygen never overwrites a {what}", path.display()),
                )
                .hint(format!("choose another file name, or remove the old {what} only if nothing was sealed under it"))
            } else {
                local_io(format!("cannot create {what} file {}", path.display()), &e)
            }
        })?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| local_io(format!("cannot write {what} file {}", path.display()), &e))?;
    sync_parent(path)
}

/// Reads a secret file (a key or an identity: `what`), refusing one that group or others can
/// access or that is too large to be one; `fix` says where the file should come from.
///
/// # Errors
/// `Config` for a missing, unreadable, too-open or too-large file.
pub(crate) fn read_secret_file(path: &Path, what: &str, fix: &str) -> Result<Zeroizing<String>> {
    let mut file = File::open(path).map_err(|e| {
        Error::new(
            ErrorKind::Config,
            format!("cannot open {what} file {}: {e}", path.display()),
        )
        .hint(fix)
    })?;
    let meta = file.metadata().map_err(|e| {
        Error::new(
            ErrorKind::Config,
            format!("cannot stat {what} file {}: {e}", path.display()),
        )
    })?;
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(Error::new(
            ErrorKind::Config,
            format!(
                "{what} file {} is accessible by group or others (mode {mode:04o}); refusing to use it",
                path.display()
            ),
        )
        .hint(format!("chmod 600 {}", path.display())));
    }
    if meta.len() > 4096 {
        return Err(Error::new(
            ErrorKind::Config,
            format!(
                "{} is not a walseal {what} file (too large)",
                path.display()
            ),
        ));
    }
    let mut text = Zeroizing::new(String::new());
    file.read_to_string(&mut text).map_err(|e| {
        Error::new(
            ErrorKind::Config,
            format!("cannot read {what} file {}: {e}", path.display()),
        )
    })?;
    Ok(text)
}

/// Loads a secret file of kind `what` (key, identity, signer) with `parse`, naming the
/// setting to fix (`fix`) and the command that makes one (`made_by`) in errors.
///
/// # Errors
/// As [`read_secret_file`]; `Config` if `parse` refuses the text.
pub(crate) fn load_secret_file<T>(
    path: &Path,
    what: &str,
    fix: &str,
    made_by: &str,
    parse: impl FnOnce(&str) -> std::result::Result<T, &'static str>,
) -> Result<T> {
    let text = read_secret_file(path, what, fix)?;
    parse(&text).map_err(|why| {
        Error::new(
            ErrorKind::Config,
            format!("{what} file {} is invalid: {why}", path.display()),
        )
        .hint(format!("use a file written by `{made_by}`"))
    })
}

/// Decodes the text form of a public key, `prefix` ‖ 64 hex digits ‖ 8 hex digits of
/// checksum; returns the key and the checksum bytes, or why it is not one.
pub(crate) fn decode_public_text(
    text: &str,
    prefix: &str,
) -> std::result::Result<([u8; 32], [u8; 4]), String> {
    let text = text.trim();
    if !text.is_ascii() {
        return Err("it has characters other than letters and digits".into());
    }
    let hex = text
        .strip_prefix(prefix)
        .ok_or_else(|| format!("it does not start with `{prefix}`"))?;
    if hex.len() != 72 {
        return Err(format!("it has {} characters instead of 76", text.len()));
    }
    let mut public = [0u8; 32];
    let mut check = [0u8; 4];
    hex_decode_into(&hex[..64], &mut public)
        .and_then(|()| hex_decode_into(&hex[64..], &mut check))
        .ok_or_else(|| format!("it is not hex after `{prefix}`"))?;
    Ok((public, check))
}

/// Fsyncs the directory holding `path`, so a new file's name is durable.
///
/// # Errors
/// `LocalIo`.
pub(crate) fn sync_parent(path: &Path) -> Result<()> {
    if let Some(dir) = path.parent() {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| local_io(format!("cannot sync directory {}", dir.display()), &e))?;
    }
    Ok(())
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

    /// How new objects of this repository are sealed: its id, and the signer when sealing
    /// to a recipient.
    ///
    /// # Errors
    /// `Internal` if the keyring is not bound to a repository; `Config` if it seals to a
    /// recipient without a signer.
    pub fn seal_options(&self) -> Result<SealOptions> {
        let repository = self.repository.ok_or_else(|| {
            Error::new(
                ErrorKind::Internal,
                "sealing before the repository was opened",
            )
        })?;
        if matches!(self.active(), Sealer::Recipient(_)) && self.signer.is_none() {
            return Err(crate::seal::SealError::NeedSigner.into_error("sealing to the recipient"));
        }
        Ok(SealOptions {
            repository,
            signer: self.signer.clone(),
            ..SealOptions::default()
        })
    }

    /// Seals a small object of this repository with [`Keyring::seal_options`].
    ///
    /// # Errors
    /// As [`Keyring::seal_options`] and sealing.
    pub fn seal_to_vec(&self, name: &str, data: &[u8]) -> Result<Vec<u8>> {
        crate::seal::seal_to_vec(self.active(), name, data, &self.seal_options()?)
            .map_err(|e| e.into_error(name))
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

    /// The keyring the configuration names: `--key-file`/`WALSEAL_KEY_FILE` (or `key_file`),
    /// then every `[[keys]]` entry, in order; identities from `WALSEAL_IDENTITY_FILE` (or
    /// `identity_file`); the recipient from `WALSEAL_RECIPIENT` (or `recipient`).
    ///
    /// # Errors
    /// As the key sources; `Config` if no key is configured.
    pub fn from_config(cfg: &crate::config::Config) -> Result<Self> {
        let mut keys = Vec::new();
        for p in &cfg.key_files {
            keys.push(load_key_file(p)?);
        }
        for spec in &cfg.keys {
            keys.push(crate::keysource::load(spec)?);
        }
        let mut identities = Vec::new();
        for p in &cfg.identity_files {
            identities.push(crate::recipient::load_identity_file(p)?);
        }
        let recipient = cfg.recipient.as_deref().map(Recipient::parse).transpose()?;
        let mut trusted = Vec::new();
        for list in &cfg.trusted_signers {
            trusted.extend(SignerPublic::parse_list(list)?);
        }
        let mut keyring = Self::with(keys, identities, recipient)?
            .trust(trusted)
            .allowing_legacy(cfg.allow_legacy);
        if let Some(path) = &cfg.signer_file {
            keyring = keyring.with_signer(crate::signer::load_signer_file(path)?);
        }
        crate::audit::remember(&keyring);
        Ok(keyring)
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

/// Lower-case hex of `bytes`.
pub fn hex_encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    s
}

/// Decodes hex (either case) into `out`, which must match its length exactly.
pub fn hex_decode_into(hex: &str, out: &mut [u8]) -> Option<()> {
    let hex = hex.as_bytes();
    if hex.len() != out.len() * 2 {
        return None;
    }
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    for (i, pair) in hex.chunks_exact(2).enumerate() {
        out[i] = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

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
