//! The repository as a whole: `walseal init` creates it, and every command starts from
//! [`Repository::open`], which bundles the storage, the keyring and the repository id.
//!
//! Why a record and an explicit `init`: an unmounted directory or a mistyped bucket prefix
//! must not silently become a new, empty repository on the next `wal-push` (the real one would
//! get a gap), so writing commands refuse a location without the record. And every object
//! carries the repository id the record holds (`docs/FORMAT.md` §3), so an object copied from
//! another repository sealed under the same key does not open here.
//!
//! `walseal.repo` is sealed like every object; `walseal.repo.json` is the same record in
//! clear for hosts that cannot open objects (push-only). It holds nothing secret.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::error::{Error, ErrorKind, Result};
use crate::keys::{hex_decode_into, hex_encode, Keyring};
use crate::seal::{self, RepositoryId, SealError};
use crate::storage::{Create, PutOutcome, Storage};

/// Object key of the sealed repository record.
pub const RECORD_KEY: &str = "walseal.repo";
/// Object key of its plain copy.
pub const PLAIN_RECORD_KEY: &str = "walseal.repo.json";
/// Largest repository or identity record (sealed or plain) walseal reads: it writes a few
/// hundred bytes.
pub const RECORD_MAX: u64 = 64 << 10;

/// The repository record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// Layout version of the repository: 2.
    pub format_version: u32,
    /// The repository id, 32 lower-case hex digits.
    pub repository_id: String,
    /// When `walseal init` ran (RFC 3339, UTC).
    pub created: String,
}

impl Record {
    /// Decodes and validates a record.
    ///
    /// # Errors
    /// `Integrity` naming the object if it is not a valid record.
    pub fn decode(key: &str, bytes: &[u8]) -> Result<(Self, RepositoryId)> {
        let bad = |why: String| {
            Error::new(
                ErrorKind::Integrity,
                format!("{key}: not a valid repository record: {why}"),
            )
            .hint("restore the record from a copy of the repository, or run `walseal verify` to see what else is damaged")
        };
        if bytes.len() > 4096 {
            return Err(bad("too large".into()));
        }
        let record: Record = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
        if record.format_version != 2 {
            return Err(bad(format!("format_version {}", record.format_version)));
        }
        let id = parse_id(&record.repository_id)
            .ok_or_else(|| bad("repository_id is not 32 hex digits".into()))?;
        Ok((record, id))
    }
}

/// Parses a repository id (32 hex digits, as `walseal init` prints it).
pub fn parse_id(text: &str) -> Option<RepositoryId> {
    let text = text.trim();
    if text.len() != 32 {
        return None;
    }
    let mut id = [0u8; 16];
    hex_decode_into(text, &mut id)?;
    (id != [0u8; 16]).then_some(id)
}

/// What a command needs of the repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Open objects (restore, wal-fetch, list, verify, retain, rekey): needs a master key or
    /// an identity.
    Open,
    /// Seal new objects (wal-push, backup): push-only hosts may.
    Seal,
}

/// An opened repository: storage, the keyring bound to the repository id, and the id.
#[derive(Debug, Clone)]
pub struct Repository {
    /// Where the objects are.
    pub storage: Storage,
    /// The keys, bound to this repository.
    pub keyring: Arc<Keyring>,
    /// The repository id.
    pub id: RepositoryId,
}

impl Repository {
    /// The keyring the configuration names, without touching the storage (not bound to a
    /// repository: for local state only, never for sealing or opening objects).
    ///
    /// # Errors
    /// As [`Repository::from_config`].
    pub fn keyring_only(cfg: &Config) -> Result<Keyring> {
        Keyring::from_config(cfg)
    }

    /// Loads the keyring, opens the storage and reads the repository record; `what` names
    /// the command in errors.
    ///
    /// # Errors
    /// `Key` (push-only host asked to open), `NoRepository` (no record: run `walseal init`),
    /// `Integrity` (a record that does not open or disagrees), storage and config errors.
    pub async fn open(cfg: &Config, access: Access, what: &str) -> Result<Self> {
        let mut keyring = Keyring::from_config(cfg)?;
        if access == Access::Open {
            keyring.require_open(what)?;
        }
        let storage = Storage::open(cfg, Create::No).map_err(no_location)?;
        let id = read_id(&storage, &keyring).await?;
        if let Some(pinned) = &cfg.repository_id {
            let pinned = parse_id(pinned).ok_or_else(|| {
                Error::new(
                    ErrorKind::Config,
                    "repository_id (WALSEAL_REPOSITORY_ID) is not 32 hex digits",
                )
                .hint("use the id `walseal init` printed (also in walseal.repo.json)")
            })?;
            if pinned != id {
                return Err(Error::new(
                    ErrorKind::NoRepository,
                    format!(
                        "{} holds repository {}, not the configured repository_id {}",
                        storage.display(),
                        hex_encode(&id),
                        hex_encode(&pinned)
                    ),
                )
                .hint("check the repository URL (WALSEAL_REPO); if the repository was replaced, find out by whom before trusting it"));
            }
        }
        keyring.bind(id);
        Ok(Repository {
            storage,
            keyring: Arc::new(keyring),
            id,
        })
    }
}

/// Loading keys from the configuration lives here, above `keys`: key sources (files,
/// environment, commands, passphrases), identities, signers and the audit log's MAC key are
/// all the repository layer's business, and `keys` imports none of them.
impl Keyring {
    /// The keyring the configuration names: `--key-file`/`WALSEAL_KEY_FILE` (or `key_file`),
    /// then every `[[keys]]` entry, in order; identities from `WALSEAL_IDENTITY_FILE` (or
    /// `identity_file`); the recipient from `WALSEAL_RECIPIENT` (or `recipient`).
    ///
    /// # Errors
    /// As the key sources; `Config` if no key is configured.
    pub fn from_config(cfg: &Config) -> Result<Self> {
        let mut keys = Vec::new();
        for p in &cfg.key_files {
            keys.push(crate::keys::load_key_file(p)?);
        }
        for spec in &cfg.keys {
            keys.push(crate::keysource::load(spec)?);
        }
        let mut identities = Vec::new();
        for p in &cfg.identity_files {
            identities.push(crate::recipient::load_identity_file(p)?);
        }
        let recipient = cfg
            .recipient
            .as_deref()
            .map(crate::recipient::Recipient::parse)
            .transpose()?;
        let mut trusted = Vec::new();
        for list in &cfg.trusted_signers {
            trusted.extend(crate::signer::SignerPublic::parse_list(list)?);
        }
        let mut keyring = Keyring::with(keys, identities, recipient)?
            .trust(trusted)
            .allowing_legacy(cfg.allow_legacy);
        if let Some(path) = &cfg.signer_file {
            keyring = keyring.with_signer(crate::signer::load_signer_file(path)?);
        }
        keyring.set_compression(cfg.compression.0, cfg.compression.1);
        crate::audit::remember(&keyring);
        Ok(keyring)
    }
}

/// A missing local repository directory is "no repository", with the same fix.
fn no_location(e: Error) -> Error {
    if e.kind() == ErrorKind::Config && e.message().contains("repository directory") {
        Error::new(ErrorKind::NoRepository, e.message().to_string())
            .hint("is the file system mounted? For a new repository run `walseal init`")
    } else {
        e
    }
}

/// Reads the repository id: from the sealed record where this host can open it, else from the
/// plain copy (which must agree with the sealed record's header).
async fn read_id(storage: &Storage, keyring: &Keyring) -> Result<RepositoryId> {
    let Some(sealed) = storage.get_bytes_max(RECORD_KEY, RECORD_MAX).await? else {
        return Err(missing(storage).await);
    };
    let mut cursor = &sealed[..];
    let header = seal::Header::read(&mut cursor).map_err(|e| e.into_error(RECORD_KEY))?;
    match seal::open_to_vec(keyring, RECORD_KEY, &sealed) {
        Ok(plain) => {
            let (_, id) = Record::decode(RECORD_KEY, &plain)?;
            if id != header.repository {
                return Err(Error::new(
                    ErrorKind::Integrity,
                    format!("{RECORD_KEY}: the record names another repository than its header"),
                ));
            }
            Ok(id)
        }
        // A host that cannot open the record (push-only, or an identity host of a repository
        // initialised under a master key): the plain copy, which must name the id the sealed
        // record's header carries. (Replacing both is replacing the repository: only a
        // pinned repository_id catches that, see docs/threat-model.md.)
        // Not on a host with a master key: there the record must open (a planted record with
        // a made-up key id must not send it to the unauthenticated copy).
        Err(SealError::PushOnly | SealError::UnknownKey(_))
            if plain_copy_allowed(keyring, &header) =>
        {
            let plain = storage.get_bytes_max(PLAIN_RECORD_KEY, RECORD_MAX).await?.ok_or_else(|| {
                Error::new(
                    ErrorKind::NoRepository,
                    format!("{} has {RECORD_KEY} but not {PLAIN_RECORD_KEY}, which this push-only host needs", storage.display()),
                )
                .hint("run `walseal init` again: it completes an interrupted initialisation")
            })?;
            let (_, id) = Record::decode(PLAIN_RECORD_KEY, &plain)?;
            if id != header.repository {
                return Err(Error::new(
                    ErrorKind::Integrity,
                    format!("{PLAIN_RECORD_KEY} names another repository than {RECORD_KEY}"),
                )
                .hint("run `walseal verify` on a host with the key or identity"));
            }
            Ok(id)
        }
        Err(e) => Err(e.into_error(RECORD_KEY)),
    }
}

/// Whether a host that cannot open the sealed record may take the id from the plain copy: a
/// host without a master key (push-only, or an identity host of a repository initialised
/// under a master key), or one that seals to a recipient the record is sealed to (it holds
/// master keys of older objects only). A host with a master key is never sent to the copy
/// by a planted record naming some other key.
fn plain_copy_allowed(keyring: &Keyring, header: &seal::Header) -> bool {
    keyring.first_master().is_none()
        || (!keyring.opens_own() && header.key_ids().contains(&keyring.active().id()))
}

/// The error for a location without a repository record, naming the likely cause.
async fn missing(storage: &Storage) -> Error {
    let v1 = storage
        .exists(crate::repository::IDENTITY_KEY)
        .await
        .unwrap_or(false);
    if v1 {
        Error::new(
            ErrorKind::NoRepository,
            format!(
                "{} holds a walseal repository from before walseal 0.2, which has no repository record",
                storage.display()
            ),
        )
        .hint("run `walseal init` once to give it a repository id; read its older objects with allow_legacy = true until `walseal rekey` has converted them")
    } else {
        Error::new(
            ErrorKind::NoRepository,
            format!("there is no walseal repository at {}", storage.display()),
        )
        .hint("for a new repository run `walseal init`; otherwise check the URL (WALSEAL_REPO) and that the file system or bucket is the right one and mounted")
    }
}

/// What `walseal init` did.
#[derive(Debug, Clone, Serialize)]
pub struct InitReport {
    /// The repository URL.
    pub repo: String,
    /// The new repository id.
    pub repository_id: String,
    /// Whether the location held a format-1 repository that was adopted.
    pub adopted_v1: bool,
}

/// Creates the repository record at the configured location.
///
/// # Errors
/// `Conflict` if there is a repository already, or other files; storage and key errors.
pub async fn init(cfg: &Config) -> Result<InitReport> {
    let mut keyring = Keyring::from_config(cfg)?;
    let storage = Storage::open(cfg, Create::Yes)?;
    if storage.exists(RECORD_KEY).await? {
        let existing = Repository::open(cfg, Access::Seal, "init").await;
        let id = existing.map_or_else(|_| "unreadable".to_string(), |r| hex_encode(&r.id));
        return Err(Error::new(
            ErrorKind::Conflict,
            format!(
                "{} is already a walseal repository (id {id})",
                storage.display()
            ),
        )
        .hint("nothing to do; to start afresh use a new, empty location"));
    }
    let adopted_v1 = storage.exists(crate::repository::IDENTITY_KEY).await?;
    if !adopted_v1 && !storage.is_empty_except(PLAIN_RECORD_KEY).await? {
        return Err(Error::new(
            ErrorKind::Conflict,
            format!(
                "{} holds files but no walseal repository; refusing to create one there",
                storage.display()
            ),
        )
        .hint("use an empty directory, bucket or prefix of its own"));
    }
    let (json, id) = plain_record(&storage).await?;
    keyring.bind(id);
    // The sealed record holds the very bytes of the plain copy.
    let sealed = keyring.seal_to_vec(RECORD_KEY, &json)?;
    match storage.put_new(RECORD_KEY, sealed.into()).await? {
        PutOutcome::Created => {}
        PutOutcome::AlreadyExists => {
            return Err(Error::new(
                ErrorKind::Conflict,
                format!(
                    "another `walseal init` created the repository at {} meanwhile",
                    storage.display()
                ),
            ))
        }
    }
    if adopted_v1 {
        convert_identity(&storage, keyring).await?;
    }
    Ok(InitReport {
        repo: storage.display().to_string(),
        repository_id: hex_encode(&id),
        adopted_v1,
    })
}

/// Rewrites an adopted repository's format-1 `walseal.id` in format 2, so that `wal-push`
/// (which reads it for every segment) goes on without `allow_legacy`. Only where this host can
/// open it; a push-only host uses the plain copy anyway.
async fn convert_identity(storage: &Storage, keyring: Keyring) -> Result<()> {
    use crate::repository::IDENTITY_KEY;
    if !keyring.can_open() {
        return Ok(());
    }
    let keyring = keyring.allowing_legacy(true);
    let Some((sealed, version)) = storage.get_versioned(IDENTITY_KEY).await? else {
        return Ok(());
    };
    match seal::rewrap(&sealed, &keyring, keyring.active(), IDENTITY_KEY, None) {
        Ok(Some(new)) => {
            storage
                .replace_if_unchanged(IDENTITY_KEY, new.into(), &version)
                .await?;
            Ok(())
        }
        Ok(None) | Err(SealError::LegacyUnsigned) => Ok(()),
        Err(e) => Err(e.into_error(IDENTITY_KEY)),
    }
}

/// Writes the plain record first (so a crash leaves nothing a push-only host would half
/// trust) with a new id, or takes the one an interrupted `init` left; returns its bytes.
async fn plain_record(storage: &Storage) -> Result<(Vec<u8>, RepositoryId)> {
    let mut id = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut id)
        .map_err(|_| Error::new(ErrorKind::Internal, "the system random generator failed"))?;
    let record = Record {
        format_version: 2,
        repository_id: hex_encode(&id),
        created: crate::time::format_pg(crate::time::now()),
    };
    let json = serde_json::to_vec(&record)
        .map_err(|e| Error::new(ErrorKind::Internal, format!("cannot encode record: {e}")))?;
    match storage
        .put_new(PLAIN_RECORD_KEY, json.clone().into())
        .await?
    {
        PutOutcome::Created => Ok((json, id)),
        PutOutcome::AlreadyExists => {
            let bytes = storage
                .get_bytes_max(PLAIN_RECORD_KEY, RECORD_MAX)
                .await?
                .unwrap_or_default();
            let (_, id) = Record::decode(PLAIN_RECORD_KEY, &bytes)?;
            Ok((bytes, id))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_decode_only_when_valid() {
        let ok = br#"{"format_version":2,"repository_id":"00112233445566778899aabbccddeeff","created":"x"}"#;
        let (_, id) = Record::decode("k", ok).unwrap();
        assert_eq!(hex_encode(&id), "00112233445566778899aabbccddeeff");
        for bad in [
            &br#"{"format_version":1,"repository_id":"00112233445566778899aabbccddeeff","created":"x"}"#[..],
            br#"{"format_version":2,"repository_id":"0011","created":"x"}"#,
            br#"{"format_version":2,"repository_id":"00000000000000000000000000000000","created":"x"}"#,
            br#"{"format_version":2,"repository_id":"00112233445566778899aabbccddeeff","created":"x","extra":1}"#,
            b"not json",
        ] {
            let e = Record::decode("k", bad).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Integrity, "{e}");
        }
        assert!(Record::decode("k", &vec![b' '; 5000]).is_err());
    }
}
