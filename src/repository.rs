//! The repository's identity record (`walseal.id`): which cluster the repository belongs to.
//!
//! Written once, sealed like every other object, on the first push of a segment. Every later
//! push compares the segment's system identifier and segment size with it, so two clusters
//! pointed at one prefix by mistake cannot mix their WAL.
//!
//! A push-only host (recipient only) cannot open `walseal.id`, so a plain copy,
//! `walseal.id.json`, is written next to it and used there instead. It guards against a
//! misconfiguration, not an attacker (who could as well delete objects); `verify`, on a host
//! that can open, reports a plain copy that disagrees with the sealed record.

use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};
use crate::keys::Keyring;
use crate::seal;
use crate::storage::{PutOutcome, Storage};

/// Object key of the identity record.
pub const IDENTITY_KEY: &str = "walseal.id";
/// Object key of its plain copy, for hosts that cannot open objects.
pub const PLAIN_IDENTITY_KEY: &str = "walseal.id.json";

/// The identity record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// Repository layout / format version.
    pub format_version: u32,
    /// PostgreSQL database system identifier (decimal string: it does not fit a JSON number).
    pub system_identifier: String,
    /// WAL segment size in bytes (refused at decode unless PostgreSQL allows it).
    #[serde(deserialize_with = "crate::wal::deserialize_segment_size")]
    pub wal_segment_size: u64,
    /// PostgreSQL major version, from the WAL page magic, if known.
    pub pg_version: Option<u32>,
}

/// Reads the identity record, if the repository has one.
///
/// # Errors
/// Storage errors; `Integrity`/`Key` if the record does not open.
pub async fn load(storage: &Storage, keyring: &Keyring) -> Result<Option<Identity>> {
    load_sealed(storage, keyring)
        .await?
        .map_err(|e| e.into_error(IDENTITY_KEY))
}

/// The sealed record, or the [`seal::SealError`] that kept it from opening.
async fn load_sealed(
    storage: &Storage,
    keyring: &Keyring,
) -> Result<std::result::Result<Option<Identity>, seal::SealError>> {
    let Some(sealed) = storage
        .get_bytes_max(IDENTITY_KEY, crate::repo::RECORD_MAX)
        .await?
    else {
        return Ok(Ok(None));
    };
    let plain = match seal::open_to_vec(keyring, IDENTITY_KEY, &sealed) {
        Ok(p) => p,
        Err(e) => return Ok(Err(e)),
    };
    parse(IDENTITY_KEY, &plain).map(|id| Ok(Some(id)))
}

/// Decodes an identity record (sealed plaintext or the plain copy; `key` names it in errors).
///
/// # Errors
/// `Integrity` if it is not an identity record walseal could have written.
pub fn parse(key: &str, bytes: &[u8]) -> Result<Identity> {
    serde_json::from_slice(bytes).map_err(|e| {
        Error::new(
            ErrorKind::Integrity,
            format!("{key}: unreadable identity record: {e}"),
        )
    })
}

fn encode(id: &Identity) -> Result<Vec<u8>> {
    serde_json::to_vec(id)
        .map_err(|e| Error::new(ErrorKind::Internal, format!("cannot encode identity: {e}")))
}

/// The identity as this host can know it: the sealed record, or (on a host that cannot open
/// what it seals, e.g. push-only) the plain copy.
///
/// # Errors
/// As [`load`] and [`load_plain`].
pub async fn load_any(storage: &Storage, keyring: &Keyring) -> Result<Option<Identity>> {
    match load_sealed(storage, keyring).await? {
        Ok(id) => Ok(id),
        Err(seal::SealError::PushOnly | seal::SealError::UnknownKey(_)) if !keyring.opens_own() => {
            load_plain(storage).await
        }
        Err(e) => Err(e.into_error(IDENTITY_KEY)),
    }
}

/// Reads the plain copy, if there is one.
///
/// # Errors
/// Storage errors; `Integrity` if it is not an identity record.
pub async fn load_plain(storage: &Storage) -> Result<Option<Identity>> {
    match storage
        .get_bytes_max(PLAIN_IDENTITY_KEY, crate::repo::RECORD_MAX)
        .await?
    {
        None => Ok(None),
        Some(bytes) => parse(PLAIN_IDENTITY_KEY, &bytes).map(Some),
    }
}

/// Writes the plain copy unless one exists; returns the copy now stored. (`verify` adds it
/// to repositories from before plain copies.)
pub async fn ensure_plain(storage: &Storage, id: &Identity) -> Result<Identity> {
    match storage
        .put_new(PLAIN_IDENTITY_KEY, encode(id)?.into())
        .await?
    {
        PutOutcome::Created => Ok(id.clone()),
        PutOutcome::AlreadyExists => load_plain(storage).await?.ok_or_else(|| {
            Error::new(
                ErrorKind::Storage,
                format!("{PLAIN_IDENTITY_KEY} exists but cannot be read back"),
            )
        }),
    }
}

/// Records `candidate` as the repository's identity if it has none; then checks that the
/// repository's identity matches it. A host that cannot open `walseal.id` (push-only) checks
/// against the plain copy instead.
///
/// # Errors
/// `Conflict` if the repository belongs to another system or segment size.
pub async fn ensure(
    storage: &Storage,
    keyring: &Keyring,
    candidate: &Identity,
) -> Result<Identity> {
    let current = match load_sealed(storage, keyring).await? {
        Ok(Some(id)) => id,
        Ok(None) => {
            let sealed = keyring.seal_to_vec(IDENTITY_KEY, &encode(candidate)?)?;
            match storage.put_new(IDENTITY_KEY, sealed.into()).await? {
                // The plain copy (normally new too) is what push-only hosts check: it must
                // agree, so it is what the candidate is compared with below.
                PutOutcome::Created => ensure_plain(storage, candidate).await?,
                // Another process recorded it first: use theirs.
                PutOutcome::AlreadyExists => match load_sealed(storage, keyring).await? {
                    Ok(Some(id)) => id,
                    Ok(None) => {
                        return Err(Error::new(
                            ErrorKind::Storage,
                            format!("{IDENTITY_KEY} exists but cannot be read back"),
                        ))
                    }
                    Err(seal::SealError::PushOnly | seal::SealError::UnknownKey(_))
                        if !keyring.opens_own() =>
                    {
                        ensure_plain(storage, candidate).await?
                    }
                    Err(e) => return Err(e.into_error(IDENTITY_KEY)),
                },
            }
        }
        // Push-only (or sealing to a recipient whose identity is elsewhere): the plain copy
        // stands in for the sealed record. Without one (a repository from before plain
        // copies) this host cannot check the cluster, so it refuses rather than record its
        // own guess.
        Err(seal::SealError::PushOnly | seal::SealError::UnknownKey(_)) if !keyring.opens_own() => load_plain(storage).await?.ok_or_else(|| {
            Error::new(
                ErrorKind::Config,
                format!(
                    "repository {} has a sealed identity record but no plain copy ({PLAIN_IDENTITY_KEY}), so this push-only host cannot check that it belongs to this cluster",
                    storage.display()
                ),
            )
            .hint("run `walseal verify` once on a host with the key or identity: it writes the plain copy")
        })?,
        Err(e) => return Err(e.into_error(IDENTITY_KEY)),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_segment_size_postgres_does_not_allow_is_refused_at_decode() {
        let record = |size: u64| {
            format!(
                r#"{{"format_version":1,"system_identifier":"7","wal_segment_size":{size},"pg_version":17}}"#
            )
        };
        for size in [0u64, 1000, 3 << 20, 2 << 30, u64::MAX] {
            let e = parse(PLAIN_IDENTITY_KEY, record(size).as_bytes()).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Integrity, "{size}");
        }
        let id = parse(PLAIN_IDENTITY_KEY, record(16 << 20).as_bytes()).unwrap();
        assert_eq!(id.wal_segment_size, 16 << 20);
    }
}
