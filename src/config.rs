//! Configuration: TOML file < environment < flags, resolved once into [`Config`].
//!
//! `archive_command` runs with PostgreSQL's environment, so every setting can come from a
//! `VAR=value walseal ...` prefix inside the command, from `--config`, or both.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::cli::GlobalArgs;
use crate::error::{Error, ErrorKind, Result};
use crate::seal::Compression;

/// The config file, as written by the user. Its `Debug` masks the `[storage]` values and the
/// credentials in `repo`.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Repository URL.
    pub repo: Option<String>,
    /// Key file(s), `:`-separated; the first is active.
    pub key_file: Option<String>,
    /// Identity file(s), `:`-separated.
    pub identity_file: Option<String>,
    /// Recipient that new objects are sealed to (push-only hosts).
    pub recipient: Option<String>,
    /// Signer file (Ed25519) for objects sealed to a recipient.
    pub signer_file: Option<PathBuf>,
    /// Signers whose recipient-sealed objects are accepted (`wss1…`).
    #[serde(default)]
    pub trusted_signers: Vec<String>,
    /// Accept format-1 objects (migration).
    pub allow_legacy: Option<bool>,
    /// Pinned repository id.
    pub repository_id: Option<String>,
    /// Allow plain-http endpoints.
    pub allow_http: Option<bool>,
    /// Log level.
    pub log_level: Option<String>,
    /// Audit log file.
    pub audit_log: Option<PathBuf>,
    /// Storage options passed to object_store (e.g. `aws_endpoint`, `aws_region`).
    #[serde(default)]
    pub storage: BTreeMap<String, String>,
    /// More key sources (file, environment variable, command), after `key_file`.
    #[serde(default)]
    pub keys: Vec<crate::keysource::KeySpec>,
    /// Attempts after the first for a failing storage request.
    pub storage_retries: Option<usize>,
    /// Give up on a storage request after this many seconds (all retries included).
    pub storage_timeout_secs: Option<u64>,
    /// Compression of new objects: `lz4`, `zstd`, `zstd:LEVEL` or `none`.
    pub compression: Option<String>,
    /// wal-push: segments archived per call at most (push-ahead).
    pub push_parallel: Option<u64>,
    /// wal-fetch: segments prefetched ahead.
    pub fetch_prefetch: Option<u64>,
}

/// Resolved settings. Its `Debug` masks the `[storage]` values (access keys, account keys,
/// SAS tokens) and the credentials in `repo`: a configuration may be logged.
#[derive(Clone)]
pub struct Config {
    /// Repository URL, if configured.
    pub repo: Option<String>,
    /// Key files in order; the first is active.
    pub key_files: Vec<PathBuf>,
    /// Identity files (X25519 secrets).
    pub identity_files: Vec<PathBuf>,
    /// Recipient new objects are sealed to, as written (`wsr1…`).
    pub recipient: Option<String>,
    /// Signer file, if any.
    pub signer_file: Option<PathBuf>,
    /// Trusted signers, as written (`wss1…`).
    pub trusted_signers: Vec<String>,
    /// Format-1 objects accepted.
    pub allow_legacy: bool,
    /// Pinned repository id (32 hex digits), if any.
    pub repository_id: Option<String>,
    /// Plain http allowed.
    pub allow_http: bool,
    /// Log level filter.
    pub log_level: String,
    /// Audit log file, if any.
    pub audit_log: Option<PathBuf>,
    /// Extra storage options.
    pub storage: BTreeMap<String, String>,
    /// `[[keys]]` entries of the config file.
    pub keys: Vec<crate::keysource::KeySpec>,
    /// Storage retries.
    pub storage_retries: usize,
    /// Total storage timeout per request.
    pub storage_timeout: Duration,
    /// Compression of new objects, and the zstd level.
    pub compression: (Compression, i32),
    /// wal-push: segments archived per call at most (1: no push-ahead).
    pub push_parallel: usize,
    /// wal-fetch: segments prefetched ahead (0: none).
    pub fetch_prefetch: usize,
}

/// Default of `push_parallel`.
pub const DEFAULT_PUSH_PARALLEL: usize = 4;
/// Default of `fetch_prefetch`.
pub const DEFAULT_FETCH_PREFETCH: usize = 8;

/// Parses a `compression` setting: `lz4`, `none`, `zstd` (level 3) or `zstd:LEVEL` (1-19).
///
/// # Errors
/// `Config` naming the value and what is accepted.
pub fn parse_compression(text: &str) -> Result<(Compression, i32)> {
    let t = text.trim().to_ascii_lowercase();
    let level = |l: &str| {
        l.parse::<i32>()
            .ok()
            .filter(|l| crate::seal::ZSTD_LEVELS.contains(l))
    };
    match t.as_str() {
        "lz4" => Ok((Compression::Lz4, 3)),
        "none" => Ok((Compression::None, 3)),
        "zstd" => Ok((Compression::Zstd, 3)),
        _ => match t.strip_prefix("zstd:").and_then(level) {
            Some(l) => Ok((Compression::Zstd, l)),
            None => Err(Error::new(
                ErrorKind::Config,
                format!("compression {text:?} is not one walseal knows"),
            )
            .hint("use lz4, none, zstd or zstd:LEVEL with LEVEL from 1 to 19")),
        },
    }
}

/// `[storage]` keys with their values masked.
struct MaskedValues<'a>(&'a BTreeMap<String, String>);

impl fmt::Debug for MaskedValues<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.keys().map(|k| (k, crate::redact::MASK)))
            .finish()
    }
}

fn masked_repo(repo: &Option<String>) -> Option<String> {
    repo.as_deref().map(crate::redact::redact_url)
}

impl fmt::Debug for FileConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileConfig")
            .field("repo", &masked_repo(&self.repo))
            .field("key_file", &self.key_file)
            .field("identity_file", &self.identity_file)
            .field("recipient", &self.recipient)
            .field("allow_http", &self.allow_http)
            .field("log_level", &self.log_level)
            .field("audit_log", &self.audit_log)
            .field("storage", &MaskedValues(&self.storage))
            .field("keys", &self.keys)
            .field("storage_retries", &self.storage_retries)
            .field("storage_timeout_secs", &self.storage_timeout_secs)
            .finish()
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("repo", &masked_repo(&self.repo))
            .field("key_files", &self.key_files)
            .field("identity_files", &self.identity_files)
            .field("recipient", &self.recipient)
            .field("signer_file", &self.signer_file)
            .field("trusted_signers", &self.trusted_signers)
            .field("allow_legacy", &self.allow_legacy)
            .field("repository_id", &self.repository_id)
            .field("allow_http", &self.allow_http)
            .field("log_level", &self.log_level)
            .field("audit_log", &self.audit_log)
            .field("storage", &MaskedValues(&self.storage))
            .field("keys", &self.keys)
            .field("storage_retries", &self.storage_retries)
            .field("storage_timeout", &self.storage_timeout)
            .field("compression", &self.compression)
            .field("push_parallel", &self.push_parallel)
            .field("fetch_prefetch", &self.fetch_prefetch)
            .finish()
    }
}

impl Config {
    /// Resolves flags and environment (already merged by clap) over the config file.
    ///
    /// # Errors
    /// `Config` if the file cannot be read or parsed.
    pub fn resolve(args: &GlobalArgs) -> Result<Self> {
        let file = match &args.config {
            Some(path) => load_file(path)?,
            None => FileConfig::default(),
        };
        let paths = |list: Option<String>| -> Vec<PathBuf> {
            list.map(|s| {
                s.split(':')
                    .filter(|p| !p.is_empty())
                    .map(PathBuf::from)
                    .collect()
            })
            .unwrap_or_default()
        };
        Ok(Config {
            repo: args.repo.clone().or(file.repo),
            key_files: paths(args.key_file.clone().or(file.key_file)),
            identity_files: paths(args.identity_file.clone().or(file.identity_file)),
            recipient: args
                .recipient
                .clone()
                .or(file.recipient)
                .filter(|r| !r.trim().is_empty()),
            signer_file: args.signer_file.clone().or(file.signer_file),
            trusted_signers: match &args.trusted_signers {
                Some(list) => vec![list.clone()],
                None => file.trusted_signers,
            },
            allow_legacy: args.allow_legacy.or(file.allow_legacy).unwrap_or(false),
            repository_id: args
                .repository_id
                .clone()
                .or(file.repository_id)
                .filter(|r| !r.trim().is_empty()),
            allow_http: args.allow_http.or(file.allow_http).unwrap_or(false),
            log_level: args
                .log_level
                .clone()
                .or(file.log_level)
                .unwrap_or_else(|| "warn".into()),
            audit_log: args.audit_log.clone().or(file.audit_log),
            storage: file.storage,
            keys: file.keys,
            storage_retries: args
                .storage_retries
                .and_then(|n| usize::try_from(n).ok())
                .or(file.storage_retries)
                .unwrap_or(3),
            storage_timeout: Duration::from_secs(
                args.storage_timeout
                    .or(file.storage_timeout_secs)
                    .unwrap_or(60),
            ),
            compression: match args.compression.as_deref().or(file.compression.as_deref()) {
                Some(text) => parse_compression(text)?,
                None => (Compression::Lz4, 3),
            },
            push_parallel: bounded(
                "push_parallel",
                args.push_parallel.or(file.push_parallel),
                1..=16,
                DEFAULT_PUSH_PARALLEL,
            )?,
            fetch_prefetch: bounded(
                "fetch_prefetch",
                args.fetch_prefetch.or(file.fetch_prefetch),
                0..=64,
                DEFAULT_FETCH_PREFETCH,
            )?,
        })
    }

    /// The repository URL or a clear error.
    ///
    /// # Errors
    /// `Config` if none is set.
    pub fn repo_url(&self) -> Result<&str> {
        self.repo.as_deref().ok_or_else(|| {
            Error::new(ErrorKind::Config, "no repository configured")
                .hint("set WALSEAL_REPO (e.g. file:///var/lib/walseal or s3://bucket/prefix) or repo in the config file")
        })
    }
}

/// A count setting within `range`, else its default.
fn bounded(
    name: &str,
    value: Option<u64>,
    range: std::ops::RangeInclusive<u64>,
    default: usize,
) -> Result<usize> {
    match value {
        None => Ok(default),
        Some(v) if range.contains(&v) => Ok(usize::try_from(v).unwrap_or(default)),
        Some(v) => {
            Err(
                Error::new(ErrorKind::Config, format!("{name} = {v} is out of range")).hint(
                    format!("set {name} from {} to {}", range.start(), range.end()),
                ),
            )
        }
    }
}

fn load_file(path: &Path) -> Result<FileConfig> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::new(
            ErrorKind::Config,
            format!("cannot read config file {}: {e}", path.display()),
        )
        .hint("check --config / WALSEAL_CONFIG and the file's permissions")
    })?;
    toml::from_str(&text).map_err(|e| {
        let msg = e.message().replace('\n', " ");
        Error::new(
            ErrorKind::Config,
            format!("config file {} is invalid: {msg}", path.display()),
        )
        .hint("see README, Configuration, for the accepted keys")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(config: Option<PathBuf>) -> GlobalArgs {
        GlobalArgs {
            config,
            repo: None,
            key_file: None,
            identity_file: None,
            recipient: None,
            signer_file: None,
            trusted_signers: None,
            allow_legacy: None,
            repository_id: None,
            allow_http: None,
            storage_timeout: None,
            storage_retries: None,
            log_level: None,
            audit_log: None,
            compression: None,
            push_parallel: None,
            fetch_prefetch: None,
        }
    }

    #[test]
    fn file_values_are_used_and_flags_override_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.toml");
        std::fs::write(&path, "repo = \"file:///a\"\nkey_file = \"/k1:/k2\"\nallow_http = true\nstorage_timeout_secs = 9\n[storage]\naws_region = \"x\"\n").unwrap();
        let c = Config::resolve(&args(Some(path.clone()))).unwrap();
        assert_eq!(c.repo.as_deref(), Some("file:///a"));
        assert_eq!(
            c.key_files,
            vec![PathBuf::from("/k1"), PathBuf::from("/k2")]
        );
        assert!(c.allow_http);
        assert_eq!(c.storage["aws_region"], "x");
        assert_eq!(c.storage_timeout, Duration::from_secs(9));
        assert_eq!(c.storage_retries, 3);
        let mut a = args(Some(path));
        a.repo = Some("file:///b".into());
        a.allow_http = Some(false);
        a.storage_timeout = Some(4);
        a.storage_retries = Some(0);
        let c = Config::resolve(&a).unwrap();
        assert_eq!(c.repo.as_deref(), Some("file:///b"));
        assert!(!c.allow_http);
        assert_eq!(c.storage_timeout, Duration::from_secs(4));
        assert_eq!(c.storage_retries, 0);
    }

    #[test]
    fn debug_output_hides_storage_credentials_and_url_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.toml");
        std::fs::write(
            &path,
            "repo = \"az://c/p?sv=2024&sig=SIGSECRET\"\n[storage]\naws_secret_access_key = \"AWSSECRET\"\nazure_storage_account_key = \"AZSECRET\"\n[[keys]]\ncommand = \"echo KEYSECRET\"\n",
        )
        .unwrap();
        let c = Config::resolve(&args(Some(path))).unwrap();
        let text = format!("{c:?} {c:#?}");
        for secret in ["SIGSECRET", "AWSSECRET", "AZSECRET", "KEYSECRET"] {
            assert!(!text.contains(secret), "{secret} shown: {text}");
        }
        for key in [
            "aws_secret_access_key",
            "azure_storage_account_key",
            "***",
            "az://c/p",
        ] {
            assert!(text.contains(key), "{key} not shown: {text}");
        }
    }

    #[test]
    fn unknown_keys_are_rejected_with_the_file_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.toml");
        std::fs::write(&path, "repository = \"x\"\n").unwrap();
        let err = Config::resolve(&args(Some(path))).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(err.to_string().contains("w.toml"), "{err}");
    }
}
