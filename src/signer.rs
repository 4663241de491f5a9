//! Sender authentication for push-only hosts: Ed25519 signers (`docs/FORMAT.md` §2, §4).
//!
//! A recipient (`wsr1…`) is public, so anyone who has it could seal an object for any name. A
//! push-only database host therefore also holds a *signer*, an Ed25519 secret, and signs every
//! object it seals to a recipient; readers accept a recipient-sealed object only when a signer
//! they trust signed it. The signature covers a commitment to the object's data key, so a
//! forgery is refused from the header, before any of its plaintext is released, and the
//! SHA-256 of the payload, so not even a holder of the data key can change the content.
//!
//! The signer's public half is written `wss1` + 64 hex digits + 8 hex digits of checksum (the
//! first four bytes of its signer id), like a recipient.

use std::fmt;
use std::path::Path;

use ring::digest;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{self, Ed25519KeyPair, KeyPair};
use zeroize::Zeroizing;

use crate::error::{Error, ErrorKind, Result};
use crate::secret::{decode_public_text, hex_encode, KeyId, KEY_ID_LEN};

const SIGNER_ID_LABEL: &[u8] = b"walseal/v2 signer id";
const PREFIX: &str = "wss1";
const FILE_TAG: &str = "walseal-signer";

/// Length of an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;

/// The public half of a signer: what readers trust (`trusted_signers`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SignerPublic {
    public: [u8; 32],
    id: KeyId,
}

impl SignerPublic {
    /// The signer for raw Ed25519 public key bytes.
    pub fn from_bytes(public: [u8; 32]) -> Self {
        let d = digest::digest(&digest::SHA256, &[SIGNER_ID_LABEL, &public[..]].concat());
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&d.as_ref()[..KEY_ID_LEN]);
        SignerPublic {
            public,
            id: KeyId(id),
        }
    }

    /// The signer id: `SHA-256("walseal/v2 signer id" ‖ public)[..16]`.
    pub fn id(&self) -> KeyId {
        self.id
    }

    /// Whether `sig` is this signer's signature of `message`.
    pub fn verify(&self, message: &[u8], sig: &[u8]) -> bool {
        signature::UnparsedPublicKey::new(&signature::ED25519, &self.public)
            .verify(message, sig)
            .is_ok()
    }

    /// Parses the `wss1…` text form.
    ///
    /// # Errors
    /// `Config` naming what is wrong.
    pub fn parse(text: &str) -> Result<Self> {
        let bad = |why: &str| {
            Error::new(ErrorKind::Config, format!("the signer is invalid: {why}"))
                .hint("copy the whole `wss1…` line that `walseal keygen --signer` printed (also in the signer file's `signer:` line)")
        };
        let (public, check) = decode_public_text(text, PREFIX).map_err(|why| bad(&why))?;
        let s = SignerPublic::from_bytes(public);
        if s.id.0[..4] != check {
            return Err(bad("its checksum does not match (a character was changed)"));
        }
        Ok(s)
    }

    /// Parses a list of signers separated by `:`, `,` or white space.
    ///
    /// # Errors
    /// As [`SignerPublic::parse`].
    pub fn parse_list(text: &str) -> Result<Vec<Self>> {
        text.split(|c: char| c == ':' || c == ',' || c.is_whitespace())
            .filter(|s| !s.is_empty())
            .map(Self::parse)
            .collect()
    }
}

impl fmt::Display for SignerPublic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{PREFIX}{}{}",
            hex_encode(&self.public),
            hex_encode(&self.id.0[..4])
        )
    }
}

impl fmt::Debug for SignerPublic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SignerPublic({self})")
    }
}

/// An Ed25519 signing secret. The seed is wiped on drop; `Debug` shows only the public half.
pub struct Signer {
    seed: Zeroizing<[u8; 32]>,
    public: SignerPublic,
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signer {{ public: {} }}", self.public)
    }
}

impl Signer {
    /// The signer for a 32-byte Ed25519 seed.
    ///
    /// # Errors
    /// `Internal` if ring refuses the seed (it accepts every 32-byte seed).
    pub fn from_seed(seed: Zeroizing<[u8; 32]>) -> Result<Self> {
        let pair = Self::pair_of(&seed)?;
        let mut public = [0u8; 32];
        public.copy_from_slice(pair.public_key().as_ref());
        Ok(Signer {
            seed,
            public: SignerPublic::from_bytes(public),
        })
    }

    fn pair_of(seed: &[u8; 32]) -> Result<Ed25519KeyPair> {
        Ed25519KeyPair::from_seed_unchecked(seed)
            .map_err(|_| Error::new(ErrorKind::Internal, "Ed25519 refused a 32-byte seed"))
    }

    /// A new random signer.
    ///
    /// # Errors
    /// Only if the system random generator fails.
    pub fn generate() -> Result<Self> {
        let mut seed = Zeroizing::new([0u8; 32]);
        SystemRandom::new()
            .fill(seed.as_mut())
            .map_err(|_| Error::new(ErrorKind::Internal, "the system random generator failed"))?;
        Self::from_seed(seed)
    }

    /// The seed, for key derivation inside this crate only.
    pub(crate) fn seed(&self) -> &[u8; 32] {
        &self.seed
    }

    /// The public half.
    pub fn public(&self) -> &SignerPublic {
        &self.public
    }

    /// Signs `message`.
    ///
    /// # Errors
    /// As [`Signer::from_seed`].
    pub fn sign(&self, message: &[u8]) -> Result<[u8; SIGNATURE_LEN]> {
        let sig = Self::pair_of(&self.seed)?.sign(message);
        let mut out = [0u8; SIGNATURE_LEN];
        out.copy_from_slice(sig.as_ref());
        Ok(out)
    }

    pub(crate) fn to_file_text(&self) -> Zeroizing<String> {
        let secret = Zeroizing::new(hex_encode(self.seed.as_ref()));
        Zeroizing::new(format!(
            "# walseal signer (Ed25519). The database host signs what it seals to a recipient with it;\n\
             # readers trust its public half (the `signer:` line, in trusted_signers). Whoever holds\n\
             # this file can sign objects that readers accept: keep it mode 0600 on the database host.\n\
             {FILE_TAG}: 1\nsigner: {}\nsecret: {}\n",
            self.public,
            secret.as_str()
        ))
    }

    pub(crate) fn from_file_text(text: &str) -> std::result::Result<Self, &'static str> {
        let parsed = crate::secret::parse_secret_text(
            text,
            FILE_TAG,
            "signer",
            "not a walseal signer file (missing `walseal-signer: 1`)",
        )?;
        let signer = Signer::from_seed(parsed.secret).map_err(|_| "the secret is not usable")?;
        let stated = parsed.field.ok_or("missing `signer:` line")?;
        if stated != signer.public.to_string() {
            return Err("`signer:` does not match the secret (the file was edited or damaged)");
        }
        Ok(signer)
    }
}

/// Writes a new signer to `path` (mode 0600, never overwriting) and returns its public half.
///
/// # Errors
/// `Conflict` if the file exists; `LocalIo` if it cannot be written.
pub fn keygen(path: &Path) -> Result<SignerPublic> {
    let signer = Signer::generate()?;
    crate::secret::write_secret_file(path, &signer.to_file_text(), "signer")?;
    Ok(signer.public)
}

/// Loads a signer file, refusing one that group or others can access.
///
/// # Errors
/// `Config` for a missing, unreadable, too-open or malformed file.
pub fn load_signer_file(path: &Path) -> Result<Signer> {
    crate::secret::load_secret_file(
        path,
        "signer",
        "set WALSEAL_SIGNER_FILE (or signer_file in the config) to a file made by `walseal keygen --signer`",
        "walseal keygen --signer",
        Signer::from_file_text,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn signer_text_round_trips_and_catches_typos() {
        let s = Signer::from_seed(Zeroizing::new([7u8; 32])).unwrap();
        let text = s.public().to_string();
        assert_eq!(text.len(), 76);
        assert_eq!(SignerPublic::parse(&text).unwrap(), *s.public());
        for i in 4..text.len() {
            let mut b = text.clone().into_bytes();
            b[i] = if b[i] == b'0' { b'1' } else { b'0' };
            let changed = String::from_utf8(b).unwrap();
            assert!(SignerPublic::parse(&changed).is_err(), "position {i}");
        }
        assert!(SignerPublic::parse(&text.replace("wss1", "wsr1")).is_err());
        assert!(SignerPublic::parse(&format!("wss1é{}", &text[6..])).is_err());
        let two = format!("{text}, {text}:{text}");
        assert_eq!(SignerPublic::parse_list(&two).unwrap().len(), 3);
    }

    #[test]
    fn signatures_verify_only_for_their_message_and_signer() {
        let a = Signer::from_seed(Zeroizing::new([1u8; 32])).unwrap();
        let b = Signer::from_seed(Zeroizing::new([2u8; 32])).unwrap();
        let sig = a.sign(b"message").unwrap();
        assert!(a.public().verify(b"message", &sig));
        assert!(!a.public().verify(b"messagf", &sig));
        assert!(!b.public().verify(b"message", &sig));
        assert!(!format!("{a:?}").contains("0101"));
    }

    #[test]
    fn signer_file_round_trips_and_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("signer");
        let p = keygen(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        assert_eq!(*load_signer_file(&path).unwrap().public(), p);
        assert_eq!(keygen(&path).unwrap_err().kind(), ErrorKind::Conflict);
        let text = std::fs::read_to_string(&path).unwrap();
        let line = text.lines().find(|l| l.starts_with("secret:")).unwrap();
        let edited = text.replace(line, &format!("secret: {}", "ab".repeat(32)));
        assert!(Signer::from_file_text(&edited).is_err());
    }
}
