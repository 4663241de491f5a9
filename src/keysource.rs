//! Where master keys come from besides key files: an environment variable, or a `key_command`
//! whose standard output is the key (how Vault, cloud KMS CLIs, `pass` or an HSM tool plug in).
//!
//! A key source prints either a whole key file (`walseal-key: 1` ...) or the 64 hex digits of
//! the secret. A command runs at most once per walseal process, with a timeout; its output is
//! held in wiped buffers and never appears in a message.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::Deserialize;
use zeroize::Zeroizing;

use crate::error::{Error, ErrorKind, Result};
use crate::keys::{self, MasterKey};

/// One `[[keys]]` entry of the config file: exactly one of `file`, `env`, `command`. Its
/// `Debug` masks the command (which may hold a token inline).
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySpec {
    /// Expected key id (checked when given).
    pub id: Option<String>,
    /// A key file (mode 0600).
    pub file: Option<PathBuf>,
    /// An environment variable holding the key.
    pub env: Option<String>,
    /// A shell command printing the key on standard output.
    pub command: Option<String>,
    /// Seconds the command may take (default 30).
    pub timeout_secs: Option<u64>,
    /// Environment variable holding a passphrase (with `salt` and `iterations`).
    pub passphrase_env: Option<String>,
    /// PBKDF2 salt, 32 bytes in hex (not secret).
    pub salt: Option<String>,
    /// PBKDF2 iterations.
    pub iterations: Option<u32>,
}

impl std::fmt::Debug for KeySpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySpec")
            .field("id", &self.id)
            .field("file", &self.file)
            .field("env", &self.env)
            .field(
                "command",
                &self.command.as_ref().map(|_| crate::redact::MASK),
            )
            .field("timeout_secs", &self.timeout_secs)
            .field("passphrase_env", &self.passphrase_env)
            .field("salt", &self.salt)
            .field("iterations", &self.iterations)
            .finish()
    }
}

impl KeySpec {
    fn describe(&self) -> String {
        match (&self.file, &self.env, &self.command, &self.passphrase_env) {
            (Some(f), None, None, None) => format!("key file {}", f.display()),
            (None, Some(v), None, None) => format!("environment variable {v}"),
            (None, None, Some(c), None) => {
                format!("key_command {:?}", crate::redact::redact_command(c))
            }
            (None, None, None, Some(v)) => format!("the passphrase in {v}"),
            _ => "a [[keys]] entry".to_string(),
        }
    }
}

fn config_error(msg: String) -> Error {
    Error::new(ErrorKind::Config, msg)
}

/// Parses a key as a key source prints it: key file text, or 64 hex digits.
///
/// # Errors
/// A static description (never the text itself).
pub fn parse_key_text(text: &str) -> std::result::Result<MasterKey, &'static str> {
    let trimmed = text.trim();
    if trimmed.len() == 64 && trimmed.bytes().all(|b| b.is_ascii_hexdigit()) {
        let mut secret = Zeroizing::new([0u8; keys::KEY_LEN]);
        keys::hex_decode_into(trimmed, secret.as_mut()).ok_or("not 64 hex digits")?;
        return Ok(MasterKey::from_bytes(secret));
    }
    MasterKey::from_file_text(text)
}

/// Loads the key a spec names.
///
/// # Errors
/// `Config` with what failed and how to fix it.
pub fn load(spec: &KeySpec) -> Result<MasterKey> {
    let what = spec.describe();
    let key = match (&spec.file, &spec.env, &spec.command) {
        (None, None, None) if spec.passphrase_env.is_some() => passphrase_key(spec, &what)?,
        (Some(file), None, None) => keys::load_key_file(file)?,
        (None, Some(var), None) => {
            let text = Zeroizing::new(std::env::var(var).map_err(|_| {
                config_error(format!("{what} is not set")).hint(format!(
                    "export {var} with the key (64 hex digits or a key file's text)"
                ))
            })?);
            parse_key_text(&text)
                .map_err(|why| config_error(format!("{what} does not hold a walseal key: {why}")))?
        }
        (None, None, Some(cmd)) => {
            let out = run_command(cmd, Duration::from_secs(spec.timeout_secs.unwrap_or(30)))?;
            parse_key_text(&out).map_err(|why| {
                config_error(format!("{what} printed something that is not a walseal key: {why}"))
                    .hint("the command must print the key file's text or the key's 64 hex digits on standard output")
            })?
        }
        _ => {
            return Err(config_error(
                "a [[keys]] entry must have exactly one of file, env or command".into(),
            )
            .hint("see docs/keys.md"))
        }
    };
    if let Some(id) = &spec.id {
        if !id.eq_ignore_ascii_case(&key.id().to_string()) && spec.passphrase_env.is_some() {
            return Err(config_error(format!(
                "{what} gives key id {}, not {id}: wrong passphrase",
                key.id()
            ))
            .hint("set the passphrase this key was made with"));
        }
        if !id.eq_ignore_ascii_case(&key.id().to_string()) {
            return Err(config_error(format!(
                "{what} gives key id {}, but the config says id = {id:?}",
                key.id()
            ))
            .hint("correct the id in the config, or the key source"));
        }
    }
    Ok(key)
}

/// Runs `sh -c cmd` with a timeout and returns its standard output.
fn run_command(cmd: &str, timeout: Duration) -> Result<Zeroizing<String>> {
    let what = format!("key_command {:?}", crate::redact::redact_command(cmd));
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| config_error(format!("cannot run {what}: {e}")))?;
    let mut stdout = child
        .stdout
        .take()
        .ok_or_else(|| config_error(format!("{what}: no stdout")))?;
    let mut stderr = child
        .stderr
        .take()
        .ok_or_else(|| config_error(format!("{what}: no stderr")))?;
    let out_reader = std::thread::spawn(move || {
        let mut buf = Zeroizing::new(Vec::new());
        let _ = stdout.read_to_end(&mut buf);
        buf
    });
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = (&mut stderr).take(4096).read_to_end(&mut buf);
        buf
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(config_error(format!("{what} did not finish within {} s and was stopped", timeout.as_secs()))
                    .hint("check that the command can run unattended (no prompt) and reach its key service; raise timeout_secs if it is just slow"));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(config_error(format!("{what}: {e}"))),
        }
    };
    let out = out_reader.join().unwrap_or_default();
    let err = err_reader.join().unwrap_or_default();
    if !status.success() {
        let first = String::from_utf8_lossy(&err)
            .lines()
            .next()
            .unwrap_or("")
            .chars()
            .take(200)
            .collect::<String>();
        return Err(config_error(format!(
            "{what} failed ({status}){}",
            if first.is_empty() {
                String::new()
            } else {
                format!(": {first}")
            }
        ))
        .hint("run the command by hand as this user to see why"));
    }
    String::from_utf8(out.to_vec())
        .map(Zeroizing::new)
        .map_err(|_| config_error(format!("{what} printed bytes that are not text")))
}

const PASSPHRASE_MIN: usize = 12;

fn pbkdf2(passphrase: &[u8], salt: &[u8], iterations: u32) -> MasterKey {
    let mut secret = Zeroizing::new([0u8; keys::KEY_LEN]);
    let iterations = std::num::NonZeroU32::new(iterations.max(1)).expect("at least one iteration");
    ring::pbkdf2::derive(
        ring::pbkdf2::PBKDF2_HMAC_SHA256,
        iterations,
        salt,
        passphrase,
        secret.as_mut(),
    );
    MasterKey::from_bytes(secret)
}

fn passphrase_key(spec: &KeySpec, what: &str) -> Result<MasterKey> {
    let var = spec.passphrase_env.as_deref().unwrap_or_default();
    let passphrase = Zeroizing::new(std::env::var(var).map_err(|_| {
        config_error(format!("{what}: {var} is not set")).hint(format!(
            "export {var} with the passphrase where walseal runs"
        ))
    })?);
    let (Some(salt_hex), Some(iterations)) = (&spec.salt, spec.iterations) else {
        return Err(config_error(format!(
            "{what}: a passphrase entry needs salt and iterations"
        ))
        .hint("use the entry `walseal keygen --passphrase` printed"));
    };
    let mut salt = [0u8; 32];
    keys::hex_decode_into(salt_hex, &mut salt)
        .ok_or_else(|| config_error(format!("{what}: salt is not 64 hex digits")))?;
    check_iterations(iterations, what)?;
    Ok(pbkdf2(
        passphrase.trim_end_matches(['\n', '\r']).as_bytes(),
        &salt,
        iterations,
    ))
}

/// The fewest PBKDF2-HMAC-SHA256 iterations walseal generates (OWASP, 2023); calibration on a
/// fast host may choose more, never fewer (docs/FORMAT.md §8).
pub const MIN_NEW_ITERATIONS: u32 = 600_000;
/// The most iterations calibration chooses.
const MAX_NEW_ITERATIONS: u32 = 50_000_000;
/// The fewest iterations accepted when reading an entry or an export: below is a mistake or an
/// attack, not a file walseal wrote.
pub const MIN_READ_ITERATIONS: u32 = 100_000;
/// The most iterations accepted when reading: more would let a hostile file hang walseal.
pub const MAX_READ_ITERATIONS: u32 = 100_000_000;

/// Refuses a work factor read from a passphrase entry or an export outside
/// [`MIN_READ_ITERATIONS`]..=[`MAX_READ_ITERATIONS`].
fn check_iterations(iterations: u32, what: &str) -> Result<()> {
    if iterations < MIN_READ_ITERATIONS {
        return Err(config_error(format!(
            "{what}: {iterations} iterations are too few (at least {MIN_READ_ITERATIONS})"
        ))
        .hint("use the entry or export walseal wrote; a lowered count makes the passphrase easy to guess"));
    }
    if iterations > MAX_READ_ITERATIONS {
        return Err(config_error(format!(
            "{what}: {iterations} iterations are too many (at most {MAX_READ_ITERATIONS})"
        ))
        .hint("use the entry or export walseal wrote"));
    }
    Ok(())
}

/// `walseal keygen --passphrase`: a new salt, an iteration count that costs about 0.5 s here
/// (at least [`MIN_NEW_ITERATIONS`]),
/// and the key's id, as a `[[keys]]` entry for the config file.
///
/// # Errors
/// `Usage` for a missing or short passphrase.
pub fn passphrase_keygen() -> Result<String> {
    let passphrase = read_passphrase(true)?;
    let (salt, iterations) = new_salt_and_iterations(&passphrase)?;
    let key = pbkdf2(passphrase.as_bytes(), &salt, iterations);
    Ok(format!(
        "[[keys]]\nid = \"{}\"\npassphrase_env = \"WALSEAL_PASSPHRASE\"\nsalt = \"{}\"\niterations = {iterations}\n",
        key.id(),
        keys::hex_encode(&salt)
    ))
}

/// The passphrase from WALSEAL_PASSPHRASE or the first line of standard input.
fn read_passphrase(new: bool) -> Result<Zeroizing<String>> {
    let passphrase = match std::env::var("WALSEAL_PASSPHRASE") {
        Ok(p) => Zeroizing::new(p),
        Err(_) => {
            let mut line = Zeroizing::new(String::new());
            std::io::stdin().read_line(&mut line).map_err(|e| {
                Error::new(ErrorKind::Usage, format!("cannot read the passphrase: {e}"))
            })?;
            Zeroizing::new(line.trim_end_matches(['\n', '\r']).to_string())
        }
    };
    if new && passphrase.chars().count() < PASSPHRASE_MIN {
        return Err(Error::new(
            ErrorKind::Usage,
            format!("the passphrase is shorter than {PASSPHRASE_MIN} characters"),
        )
        .hint("use a long passphrase (several words); it protects every backup"));
    }
    Ok(passphrase)
}

/// A random salt and an iteration count that costs about 0.5 s on this machine.
fn new_salt_and_iterations(passphrase: &str) -> Result<([u8; 32], u32)> {
    use ring::rand::SecureRandom;
    let mut salt = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut salt)
        .map_err(|_| Error::new(ErrorKind::Internal, "the system random generator failed"))?;
    let probe = 20_000u32;
    let start = Instant::now();
    let _ = pbkdf2(passphrase.as_bytes(), &salt, probe);
    let per = start.elapsed().as_secs_f64() / f64::from(probe);
    Ok((salt, calibrated(per)))
}

/// The iteration count for a new key or export, given the seconds one iteration takes here:
/// about 0.5 s of work, but never fewer than [`MIN_NEW_ITERATIONS`] (a loaded host measures
/// itself slow).
fn calibrated(per_iteration: f64) -> u32 {
    ((0.5 / per_iteration.max(1e-9)) as u32).clamp(MIN_NEW_ITERATIONS, MAX_NEW_ITERATIONS)
}

const EXPORT_TAG: &str = "walseal-key-export";
const EXPORT_NAME: &str = "walseal key export";

/// `walseal key export`: the key file sealed (docs/FORMAT.md) under a key derived from a
/// passphrase, as text safe to print or store with an escrow service.
///
/// # Errors
/// `Usage` for a short passphrase; `Conflict` if `output` exists.
pub fn export(id: crate::keys::KeyId, file_text: &str, output: &Path) -> Result<()> {
    let passphrase = read_passphrase(true)?;
    let (salt, iterations) = new_salt_and_iterations(&passphrase)?;
    let wrap = pbkdf2(passphrase.as_bytes(), &salt, iterations);
    // Not a repository object: its repository id is zero (docs/FORMAT.md §8).
    let sealed = crate::seal::seal_to_vec(
        &wrap,
        EXPORT_NAME,
        file_text.as_bytes(),
        &crate::seal::SealOptions::default(),
    )
    .map_err(|e| e.into_error(EXPORT_NAME))?;
    let text = format!(
        "# walseal key export: key {id} sealed under a passphrase. Import with `walseal key import`.\n{EXPORT_TAG}: 1\nid: {id}\nsalt: {}\niterations: {iterations}\nsealed: {}\n",
        keys::hex_encode(&salt),
        keys::hex_encode(&sealed)
    );
    write_new(output, text.as_bytes())
}

/// The fields of a key export.
struct Export {
    salt: [u8; 32],
    iterations: u32,
    sealed: Vec<u8>,
}

/// Decodes an export's text (`what` names it in errors).
fn parse_export(text: &str, what: &str) -> Result<Export> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .map(str::trim)
    };
    let bad = || config_error(format!("{what} is not a walseal key export"));
    if field(EXPORT_TAG) != Some("1") {
        return Err(bad());
    }
    let mut salt = [0u8; 32];
    keys::hex_decode_into(field("salt").ok_or_else(bad)?, &mut salt).ok_or_else(bad)?;
    let iterations: u32 = field("iterations")
        .and_then(|i| i.parse().ok())
        .ok_or_else(bad)?;
    check_iterations(iterations, what)?;
    let sealed_hex = field("sealed").ok_or_else(bad)?;
    let mut sealed = vec![0u8; sealed_hex.len() / 2];
    keys::hex_decode_into(sealed_hex, &mut sealed).ok_or_else(bad)?;
    Ok(Export {
        salt,
        iterations,
        sealed,
    })
}

/// `walseal key import`: opens an export with its passphrase and writes the key file (0600).
///
/// # Errors
/// `Key` for a wrong passphrase; `Config` for a malformed export; `Conflict` if `output` exists.
pub fn import(input: &Path, output: &Path) -> Result<crate::keys::KeyId> {
    let text = std::fs::read_to_string(input)
        .map_err(|e| crate::error::local_io(format!("cannot read {}", input.display()), &e))?;
    let Export {
        salt,
        iterations,
        sealed,
    } = parse_export(&text, &input.display().to_string())?;
    let passphrase = read_passphrase(false)?;
    let wrap = pbkdf2(passphrase.as_bytes(), &salt, iterations);
    // Exports from before format 2 are version 1; they are in no repository, so binding
    // does not apply.
    let ring = crate::keys::Keyring::new(vec![wrap])?.allowing_legacy(true);
    let plain = Zeroizing::new(
        crate::seal::open_to_vec(&ring, EXPORT_NAME, &sealed).map_err(|e| match e {
            crate::seal::SealError::UnknownKey(_) => Error::new(
                ErrorKind::Key,
                format!("wrong passphrase for {}", input.display()),
            )
            .hint("use the passphrase given at export"),
            other => other.into_error(EXPORT_NAME),
        })?,
    );
    let plain = Zeroizing::new(String::from_utf8_lossy(&plain).into_owned());
    // A master key file or an identity file (walseal keygen --recipient).
    if plain.contains("walseal-identity:") {
        let identity = crate::recipient::Identity::from_file_text(&plain)
            .map_err(|why| config_error(format!("exported identity is invalid: {why}")))?;
        write_new(output, identity.to_file_text().as_bytes())?;
        return Ok(identity.recipient().id());
    }
    let key = MasterKey::from_file_text(&plain)
        .map_err(|why| config_error(format!("exported key is invalid: {why}")))?;
    write_new(output, key.to_file_text().as_bytes())?;
    Ok(key.id())
}

fn write_new(path: &Path, data: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                Error::new(
                    ErrorKind::Conflict,
                    format!("{} already exists; refusing to overwrite", path.display()),
                )
            } else {
                crate::error::local_io(format!("cannot create {}", path.display()), &e)
            }
        })?;
    f.write_all(data)
        .and_then(|()| f.sync_all())
        .map_err(|e| crate::error::local_io(format!("cannot write {}", path.display()), &e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_work_factors_never_fall_below_the_floor() {
        // A loaded host: 0.5 s buys only 50 000 iterations.
        assert_eq!(calibrated(1e-5), 600_000);
        assert_eq!(calibrated(0.5 / 2_000_000.0), 2_000_000);
        assert!((600_000..=100_000_000).contains(&calibrated(1e-12)));
        assert!((600_000..=100_000_000).contains(&calibrated(f64::NAN)));
        assert_eq!(calibrated(10.0), 600_000);
    }

    #[test]
    fn work_factors_read_are_bounded_both_ways() {
        for bad in [0, 1, 99_999, 100_000_001, u32::MAX] {
            let e = check_iterations(bad, "entry").unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Config, "{bad}");
        }
        for good in [100_000, 600_000, 100_000_000] {
            check_iterations(good, "entry").unwrap();
        }
    }

    #[test]
    fn exports_with_a_weak_or_hostile_work_factor_are_refused() {
        let text = |iterations: u64| {
            format!(
                "{EXPORT_TAG}: 1\nid: {}\nsalt: {}\niterations: {iterations}\nsealed: 00ff\n",
                "0".repeat(32),
                "ab".repeat(32)
            )
        };
        for bad in [0, 1, 99_999, 100_000_001, 4_000_000_000] {
            let e = parse_export(&text(bad), "export").err().unwrap();
            assert_eq!(e.kind(), ErrorKind::Config, "{bad}");
        }
        let e = parse_export(&text(600_000), "export").ok().unwrap();
        assert_eq!((e.iterations, e.sealed), (600_000, vec![0, 0xff]));
    }
}
