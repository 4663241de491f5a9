//! The repository's identity record (`walseal.id`): which cluster the repository belongs to.
//!
//! Written once, sealed like every other object, on the first push of a segment. Every later
//! push compares the segment's system identifier and segment size with it, so two clusters
//! pointed at one prefix by mistake cannot mix their WAL.

use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};
use crate::keys::Keyring;
use crate::seal;
use crate::storage::{PutOutcome, Storage};

/// Object key of the identity record.
pub const IDENTITY_KEY: &str = "walseal.id";

/// The identity record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// Repository layout / format version.
    pub format_version: u32,
    /// PostgreSQL database system identifier (decimal string: it does not fit a JSON number).
    pub system_identifier: String,
    /// WAL segment size in bytes.
    pub wal_segment_size: u64,
    /// PostgreSQL major version, from the WAL page magic, if known.
    pub pg_version: Option<u32>,
}

/// Reads the identity record, if the repository has one.
///
/// # Errors
/// Storage errors; `Integrity`/`Key` if the record does not open.
pub async fn load(storage: &Storage, keyring: &Keyring) -> Result<Option<Identity>> {
    let Some(sealed) = storage.get_bytes(IDENTITY_KEY).await? else {
        return Ok(None);
    };
    let plain = seal::open_to_vec(keyring, IDENTITY_KEY, &sealed)
        .map_err(|e| e.into_error(IDENTITY_KEY))?;
    serde_json::from_slice(&plain).map(Some).map_err(|e| {
        Error::new(
            ErrorKind::Integrity,
            format!("{IDENTITY_KEY}: unreadable identity record: {e}"),
        )
    })
}

/// Records `candidate` as the repository's identity if it has none; then checks that the
/// repository's identity matches it.
///
/// # Errors
/// `Conflict` if the repository belongs to another system or segment size.
pub async fn ensure(
    storage: &Storage,
    keyring: &Keyring,
    candidate: &Identity,
) -> Result<Identity> {
    let current = match load(storage, keyring).await? {
        Some(id) => id,
        None => {
            let json = serde_json::to_vec(candidate).map_err(|e| {
                Error::new(ErrorKind::Internal, format!("cannot encode identity: {e}"))
            })?;
            let sealed = seal::seal_to_vec(keyring.active(), IDENTITY_KEY, &json)
                .map_err(|e| e.into_error(IDENTITY_KEY))?;
            match storage.put_new(IDENTITY_KEY, sealed.into()).await? {
                PutOutcome::Created => candidate.clone(),
                // Another process recorded it first: use theirs.
                PutOutcome::AlreadyExists => load(storage, keyring).await?.ok_or_else(|| {
                    Error::new(
                        ErrorKind::Storage,
                        format!("{IDENTITY_KEY} exists but cannot be read back"),
                    )
                })?,
            }
        }
    };
    if current.system_identifier != candidate.system_identifier {
        return Err(Error::new(
            ErrorKind::Conflict,
            format!(
                "repository {} belongs to system {}, this segment to {}",
                storage.display(),
                current.system_identifier,
                candidate.system_identifier
            ),
        )
        .hint("give each cluster its own repository or prefix (WALSEAL_REPO); never share one between clusters"));
    }
    if current.wal_segment_size != candidate.wal_segment_size {
        return Err(Error::new(
            ErrorKind::Conflict,
            format!(
                "repository {} holds {}-byte WAL segments, this segment is {} bytes",
                storage.display(),
                current.wal_segment_size,
                candidate.wal_segment_size
            ),
        )
        .hint("use a separate repository for a cluster with another wal_segment_size"));
    }
    Ok(current)
}
