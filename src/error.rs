//! The crate error: what went wrong, the object or file it concerns, and how to fix it.
//!
//! Every module keeps a small error enum of its own and converts it here at its edge. The
//! [`ErrorKind`] decides the exit code (one table, [`ErrorKind::exit_code`]), so a DBA can tell
//! from `$?` alone whether to look at the key, the storage or the archive. Messages are one line
//! and never contain key material or decrypted data.

use std::fmt;

/// What class of problem an [`Error`] is. Each kind has one documented exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The requested object is not in the repository (wal-fetch: normal end of archive).
    NotFound,
    /// Bad command-line usage.
    Usage,
    /// Configuration problem: config file, repository URL, missing or unreadable key file.
    Config,
    /// The object is sealed under a key that is not configured.
    Key,
    /// An object failed authentication: modified, truncated, or copied from another name.
    Integrity,
    /// The storage could not be reached or refused the request (after retries).
    Storage,
    /// A conflict with what the repository already holds (different content, another cluster).
    Conflict,
    /// A local file could not be read or written (missing WAL file, disk full, permissions).
    LocalIo,
    /// A bug in walseal.
    Internal,
    /// PostgreSQL could not be reached, refused us, or did not do what a backup needs.
    Database,
    /// A restore or recovery target that cannot work with the chosen backup.
    Target,
    /// The location holds no walseal repository (never initialised, unmounted, mistyped).
    NoRepository,
    /// `drill`: the restored cluster's server did not start, or recovery failed before it
    /// ended (a fetched file was refused, the server crashed, recovery made no progress).
    Recovery,
    /// `drill`: replay ended before the end of the archive or the recovery target: WAL the
    /// archive should hold is missing.
    ReplayShort,
    /// `drill`: the server recovered, but a check on its data failed (amcheck, checksums,
    /// a `--check-sql` query).
    CheckFailed,
}

impl ErrorKind {
    /// The process exit code for this kind (see README "Exit codes").
    pub fn exit_code(self) -> u8 {
        match self {
            ErrorKind::NotFound => 1,
            ErrorKind::Usage => 2,
            ErrorKind::Config => 3,
            ErrorKind::Key => 4,
            ErrorKind::Integrity => 5,
            ErrorKind::Storage => 6,
            ErrorKind::Conflict => 7,
            ErrorKind::LocalIo => 8,
            ErrorKind::Internal => 9,
            ErrorKind::Database => 10,
            ErrorKind::Target => 11,
            ErrorKind::NoRepository => 12,
            ErrorKind::Recovery => 13,
            ErrorKind::ReplayShort => 14,
            ErrorKind::CheckFailed => 15,
        }
    }

    /// The exit code `wal-fetch` uses: 1 for "not found", and for everything else the general
    /// code plus 200, which PostgreSQL treats as fatal (above 125), so recovery stops instead of
    /// promoting with WAL missing.
    pub fn fetch_exit_code(self) -> u8 {
        match self {
            ErrorKind::NotFound => 1,
            other => FETCH_FATAL_BASE + other.exit_code(),
        }
    }
}

/// Added to the general exit code by `wal-fetch` for every failure except "not found".
pub const FETCH_FATAL_BASE: u8 = 200;

/// The crate error: kind, a one-line description naming the problem, and an optional fix.
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    message: String,
    hint: Option<String>,
}

impl Error {
    /// A new error of `kind` with a one-line message.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
            hint: None,
        }
    }

    /// Adds the fix a user should apply.
    #[must_use]
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// Prefixes the message with what was being done (e.g. the object name).
    #[must_use]
    pub fn context(mut self, context: impl fmt::Display) -> Self {
        self.message = format!("{context}: {}", self.message);
        self
    }

    /// The error's kind.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message without the hint.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The suggested fix, if any.
    pub fn hint_text(&self) -> Option<&str> {
        self.hint.as_deref()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, " (fix: {hint})")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {}

/// Shorthand for results with the crate error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Maps a local I/O error to the crate error, naming the file and the likely fix.
pub fn local_io(what: impl fmt::Display, err: &std::io::Error) -> Error {
    use std::io::ErrorKind as K;
    let hint = match err.kind() {
        K::NotFound => Some("check the path"),
        K::PermissionDenied => {
            Some("check file ownership and permissions for the user running walseal")
        }
        K::StorageFull => Some("free space on that filesystem"),
        _ => None,
    };
    let e = Error::new(ErrorKind::LocalIo, format!("{what}: {err}"));
    match hint {
        Some(h) => e.hint(h),
        None => e,
    }
}
