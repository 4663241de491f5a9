//! Public-key mode: X25519 identities and recipients (`docs/FORMAT.md` §2, §4).
//!
//! An *identity* is an X25519 secret; its *recipient* is the public key. A host configured with
//! only the recipient can seal objects (each gets an ephemeral key agreement) but open none, so
//! a stolen database host exposes no past backups. The identity stays on restore hosts.
//!
//! The recipient is written `wsr1` + 64 hex digits (the public key) + 8 hex digits (the first
//! four bytes of its recipient id, a checksum that catches a mistyped or truncated recipient).

use std::fmt;
use std::path::Path;

use ring::digest;
use ring::rand::{SecureRandom, SystemRandom};
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use crate::error::{Error, ErrorKind, Result};
use crate::secret::{decode_public_text, hex_encode, KeyId, KEY_ID_LEN};

const RECIPIENT_ID_LABEL: &[u8] = b"walseal/v1 recipient id";
const DIGEST_LABEL: &[u8] = b"walseal/v1 content digest";
const PREFIX: &str = "wsr1";
const FILE_TAG: &str = "walseal-identity";

/// An X25519 public key that objects can be sealed to.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Recipient {
    public: [u8; 32],
    id: KeyId,
}

impl Recipient {
    /// The recipient for raw public key bytes.
    pub fn from_bytes(public: [u8; 32]) -> Self {
        let d = digest::digest(&digest::SHA256, &[RECIPIENT_ID_LABEL, &public[..]].concat());
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&d.as_ref()[..KEY_ID_LEN]);
        Recipient {
            public,
            id: KeyId(id),
        }
    }

    /// The public key bytes.
    pub fn bytes(&self) -> &[u8; 32] {
        &self.public
    }

    /// The recipient id: `SHA-256("walseal/v1 recipient id" ‖ public)[..16]`.
    pub fn id(&self) -> KeyId {
        self.id
    }

    /// Parses the `wsr1…` text form.
    ///
    /// # Errors
    /// `Config` naming what is wrong (never echoing more than the prefix).
    pub fn parse(text: &str) -> Result<Self> {
        let bad = |why: &str| {
            Error::new(ErrorKind::Config, format!("the recipient is invalid: {why}"))
                .hint("copy the whole `wsr1…` line that `walseal keygen --recipient` printed (also in the identity file's `recipient:` line)")
        };
        let (public, check) = decode_public_text(text, PREFIX).map_err(|why| bad(&why))?;
        let r = Recipient::from_bytes(public);
        if r.id.0[..4] != check {
            return Err(bad("its checksum does not match (a character was changed)"));
        }
        // A low-order point gives every sender the same (all-zero) shared secret: refuse it
        // here rather than on every seal.
        let probe = Identity::from_bytes(Zeroizing::new([0x5a; 32]));
        if probe.agree(&r.public).is_none() {
            return Err(bad("it is not a usable X25519 public key"));
        }
        Ok(r)
    }

    /// The key of the content digest (`docs/FORMAT.md` §4, kind 0x03).
    pub(crate) fn digest_key(&self) -> ring::hmac::Key {
        let d = digest::digest(&digest::SHA256, &[DIGEST_LABEL, &self.public[..]].concat());
        ring::hmac::Key::new(ring::hmac::HMAC_SHA256, d.as_ref())
    }

    /// Starts a content digest of an object's plaintext for this recipient.
    pub fn content_digest(&self) -> ContentDigest {
        ContentDigest(ring::hmac::Context::with_key(&self.digest_key()))
    }
}

/// HMAC-SHA256 of an object's content under a key derived from the recipient (public): lets
/// a host that cannot open objects tell whether an archived object holds the same content.
pub struct ContentDigest(ring::hmac::Context);

impl ContentDigest {
    /// Adds content.
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    /// The digest.
    pub fn finish(self) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(self.0.sign().as_ref());
        out
    }
}

impl fmt::Display for Recipient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{PREFIX}{}{}",
            hex_encode(&self.public),
            hex_encode(&self.id.0[..4])
        )
    }
}

impl fmt::Debug for Recipient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Recipient({self})")
    }
}

/// An X25519 secret that opens objects sealed to its recipient. Wiped on drop; `Debug` shows
/// only the recipient.
pub struct Identity {
    secret: StaticSecret,
    recipient: Recipient,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identity {{ recipient: {} }}", self.recipient)
    }
}

impl Identity {
    /// The identity for raw secret bytes.
    pub fn from_bytes(secret: Zeroizing<[u8; 32]>) -> Self {
        let secret = StaticSecret::from(*secret);
        let recipient = Recipient::from_bytes(PublicKey::from(&secret).to_bytes());
        Identity { secret, recipient }
    }

    /// A new random identity.
    ///
    /// # Errors
    /// Only if the system random generator fails.
    pub fn generate() -> Result<Self> {
        let mut bytes = Zeroizing::new([0u8; 32]);
        SystemRandom::new()
            .fill(bytes.as_mut())
            .map_err(|_| Error::new(ErrorKind::Internal, "the system random generator failed"))?;
        Ok(Self::from_bytes(bytes))
    }

    /// The matching recipient.
    pub fn recipient(&self) -> &Recipient {
        &self.recipient
    }

    /// The secret bytes, for key derivation inside this crate only (wiped on drop).
    pub(crate) fn secret_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.secret.to_bytes())
    }

    /// X25519 with `public` (an ephemeral key from a slot); `None` for a non-contributory
    /// (all-zero) result, which only a malicious slot produces.
    pub(crate) fn agree(&self, public: &[u8; 32]) -> Option<Zeroizing<[u8; 32]>> {
        let shared = self.secret.diffie_hellman(&PublicKey::from(*public));
        shared
            .was_contributory()
            .then(|| Zeroizing::new(*shared.as_bytes()))
    }

    pub(crate) fn to_file_text(&self) -> Zeroizing<String> {
        let secret = Zeroizing::new(hex_encode(self.secret.as_bytes()));
        Zeroizing::new(format!(
            "# walseal identity (X25519). Anyone holding this file can read every object sealed to its\n\
             # recipient; without it those objects cannot be opened. Keep it mode 0600, off the database\n\
             # host, with a copy in escrow (walseal key export works on it too).\n\
             {FILE_TAG}: 1\nrecipient: {}\nsecret: {}\n",
            self.recipient,
            secret.as_str()
        ))
    }

    pub(crate) fn from_file_text(text: &str) -> std::result::Result<Self, &'static str> {
        let parsed = crate::secret::parse_secret_text(
            text,
            FILE_TAG,
            "recipient",
            "not a walseal identity file (missing `walseal-identity: 1`)",
        )?;
        let identity = Identity::from_bytes(parsed.secret);
        let stated = parsed.field.ok_or("missing `recipient:` line")?;
        if stated != identity.recipient.to_string() {
            return Err("`recipient:` does not match the secret (the file was edited or damaged)");
        }
        Ok(identity)
    }
}

/// Writes a new identity to `path` (mode 0600, never overwriting) and returns its recipient.
///
/// # Errors
/// `Conflict` if the file exists; `LocalIo` if it cannot be written.
pub fn keygen(path: &Path) -> Result<Recipient> {
    let identity = Identity::generate()?;
    crate::secret::write_secret_file(path, &identity.to_file_text(), "identity")?;
    Ok(identity.recipient)
}

/// Loads an identity file, refusing one that group or others can access.
///
/// # Errors
/// `Config` for a missing, unreadable, too-open or malformed file.
pub fn load_identity_file(path: &Path) -> Result<Identity> {
    crate::secret::load_secret_file(
        path,
        "identity",
        "set WALSEAL_IDENTITY_FILE (or identity_file in the config) to a file made by `walseal keygen --recipient`",
        "walseal keygen --recipient",
        Identity::from_file_text,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn recipient_text_round_trips_and_catches_typos() {
        let id = Identity::from_bytes(Zeroizing::new([5u8; 32]));
        let text = id.recipient().to_string();
        assert_eq!(text.len(), 76);
        assert_eq!(Recipient::parse(&text).unwrap(), *id.recipient());
        // One changed digit anywhere fails the checksum (or the hex).
        for i in 4..text.len() {
            let mut b = text.clone().into_bytes();
            b[i] = if b[i] == b'0' { b'1' } else { b'0' };
            let changed = String::from_utf8(b).unwrap();
            assert!(Recipient::parse(&changed).is_err(), "position {i}");
        }
        assert!(Recipient::parse(&text[..70]).is_err());
        // Non-ASCII of the right byte length, and a low-order point with a valid checksum.
        assert!(Recipient::parse(&format!("wsr1é{}", &text[6..])).is_err());
        let zero = Recipient::from_bytes([0u8; 32]).to_string();
        let err = Recipient::parse(&zero).unwrap_err().to_string();
        assert!(err.contains("not a usable"), "{err}");
        assert!(Recipient::parse(&text.replace("wsr1", "wsr2")).is_err());
    }

    #[test]
    fn identity_file_round_trips_and_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("id");
        let r = keygen(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        assert_eq!(*load_identity_file(&path).unwrap().recipient(), r);
        assert_eq!(keygen(&path).unwrap_err().kind(), ErrorKind::Conflict);
        let text = std::fs::read_to_string(&path).unwrap();
        let secret_line = text.lines().find(|l| l.starts_with("secret:")).unwrap();
        let edited = text.replace(secret_line, &format!("secret: {}", "ab".repeat(32)));
        assert!(Identity::from_file_text(&edited).is_err());
    }

    #[test]
    fn agreement_matches_and_debug_hides_the_secret() {
        let a = Identity::from_bytes(Zeroizing::new([0x11; 32]));
        let b = Identity::from_bytes(Zeroizing::new([0x22; 32]));
        assert_eq!(
            *a.agree(b.recipient().bytes()).unwrap(),
            *b.agree(a.recipient().bytes()).unwrap()
        );
        assert!(a.agree(&[0u8; 32]).is_none());
        assert!(!format!("{a:?}").contains("1111"));
    }
}
