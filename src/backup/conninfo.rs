//! Connection settings, libpq style: a conninfo string (`key=value ...`) or URL
//! (`postgresql://user@host:port/db?sslmode=...`), then `PG*` environment variables, then
//! defaults; the password from the settings, `PGPASSWORD`, or the password file
//! (`PGPASSFILE`, default `~/.pgpass`).

use std::collections::HashMap;
use std::path::PathBuf;

use zeroize::Zeroizing;

use crate::error::{Error, ErrorKind, Result};

/// TLS mode (`sslmode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Never TLS.
    Disable,
    /// Try TLS, fall back to clear text (libpq's default `prefer`).
    Prefer,
    /// TLS required, certificate not verified.
    Require,
    /// TLS required, certificate chain verified.
    VerifyCa,
    /// TLS required, chain and host name verified.
    VerifyFull,
}

/// Resolved connection parameters.
#[derive(Clone)]
pub struct ConnParams {
    /// Host name, IP address, or a Unix-socket directory (starts with `/`).
    pub host: String,
    /// Port (also names the Unix socket file `.s.PGSQL.<port>`).
    pub port: u16,
    /// Role name.
    pub user: String,
    /// Password, if one was configured.
    pub password: Option<Zeroizing<String>>,
    /// TLS mode.
    pub sslmode: SslMode,
    /// CA file for verify-ca / verify-full.
    pub sslrootcert: Option<PathBuf>,
    /// application_name sent to the server.
    pub application_name: String,
    /// Database for SQL connections (`check`, `status`).
    pub dbname: String,
    /// A physical replication connection (backups) rather than an SQL session.
    pub replication: bool,
    /// Server settings sent in the startup packet (they override what the database and role
    /// set: `walseal drill` uses this on a restored cluster).
    pub settings: Vec<(String, String)>,
}

impl std::fmt::Debug for ConnParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ConnParams {{ host: {:?}, port: {}, user: {:?}, password: {} }}",
            self.host,
            self.port,
            self.user,
            if self.password.is_some() {
                "<set>"
            } else {
                "<none>"
            }
        )
    }
}

impl ConnParams {
    /// Where we connect, for messages (never includes the password).
    pub fn describe(&self) -> String {
        if self.host.starts_with('/') {
            format!(
                "socket {}/.s.PGSQL.{} as {}",
                self.host, self.port, self.user
            )
        } else {
            format!("{}:{} as {}", self.host, self.port, self.user)
        }
    }
}

fn usage(msg: String) -> Error {
    Error::new(ErrorKind::Usage, msg)
        .hint("use libpq syntax: 'host=H port=P user=U' or postgresql://U@H:P/")
}

/// Parses `key=value` pairs with libpq quoting (`'...'`, `\'`, `\\`).
fn parse_kv(s: &str) -> Result<HashMap<String, String>> {
    let mut out = HashMap::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            return Ok(out);
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.next() != Some('=') {
            return Err(usage(format!(
                "connection setting {key:?} has no '=' value"
            )));
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'\'') {
            chars.next();
            loop {
                match chars.next() {
                    Some('\\') => value.extend(chars.next()),
                    Some('\'') => break,
                    Some(c) => value.push(c),
                    None => {
                        return Err(usage(format!(
                            "unterminated quote in connection setting {key}"
                        )))
                    }
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                if c == '\\' {
                    chars.next();
                    value.extend(chars.next());
                } else {
                    value.push(c);
                    chars.next();
                }
            }
        }
        out.insert(key, value);
    }
}

fn parse_url(s: &str) -> Result<HashMap<String, String>> {
    let url = url::Url::parse(s).map_err(|e| usage(format!("connection URL is invalid: {e}")))?;
    let mut out = HashMap::new();
    let decode = |v: &str| {
        url::form_urlencoded::parse(format!("x={v}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    if !url.username().is_empty() {
        out.insert("user".into(), decode(url.username()));
    }
    if let Some(p) = url.password() {
        out.insert("password".into(), decode(p));
    }
    if let Some(h) = url.host_str().filter(|h| !h.is_empty()) {
        out.insert(
            "host".into(),
            decode(h.trim_start_matches('[').trim_end_matches(']')),
        );
    }
    if let Some(p) = url.port() {
        out.insert("port".into(), p.to_string());
    }
    let db = url.path().trim_start_matches('/');
    if !db.is_empty() {
        out.insert("dbname".into(), decode(db));
    }
    for (k, v) in url.query_pairs() {
        out.insert(k.into_owned(), v.into_owned());
    }
    Ok(out)
}

/// Resolves connection settings from `conninfo` (may be `None`), the environment and defaults.
///
/// # Errors
/// `Usage` for an unparsable conninfo or port, or an unknown sslmode.
pub fn resolve(conninfo: Option<&str>) -> Result<ConnParams> {
    let given = match conninfo.map(str::trim) {
        None | Some("") => HashMap::new(),
        Some(s) if s.starts_with("postgres://") || s.starts_with("postgresql://") => parse_url(s)?,
        Some(s) => parse_kv(s)?,
    };
    let get = |key: &str, env: &str| {
        given
            .get(key)
            .cloned()
            .or_else(|| std::env::var(env).ok())
            .filter(|v| !v.is_empty())
    };
    let host = get("host", "PGHOST").unwrap_or_else(|| "/var/run/postgresql".into());
    let port_text = get("port", "PGPORT").unwrap_or_else(|| "5432".into());
    let port = port_text
        .parse::<u16>()
        .map_err(|_| usage(format!("port {port_text:?} is not a number")))?;
    let user = get("user", "PGUSER")
        .or_else(|| std::env::var("USER").ok())
        .or_else(|| std::env::var("LOGNAME").ok())
        .unwrap_or_else(|| "postgres".into());
    let sslmode = match get("sslmode", "PGSSLMODE").as_deref().unwrap_or("prefer") {
        "disable" | "allow" => SslMode::Disable,
        "prefer" => SslMode::Prefer,
        "require" => SslMode::Require,
        "verify-ca" => SslMode::VerifyCa,
        "verify-full" => SslMode::VerifyFull,
        other => return Err(usage(format!("unknown sslmode {other:?}"))),
    };
    let mut password = get("password", "PGPASSWORD").map(Zeroizing::new);
    if password.is_none() {
        let file = get("passfile", "PGPASSFILE")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".pgpass")));
        if let Some(file) = file {
            password = passfile_lookup(&file, &host, port, &user);
        }
    }
    Ok(ConnParams {
        host,
        port,
        user,
        password,
        sslmode,
        sslrootcert: get("sslrootcert", "PGSSLROOTCERT").map(PathBuf::from),
        application_name: get("application_name", "PGAPPNAME").unwrap_or_else(|| "walseal".into()),
        dbname: get("dbname", "PGDATABASE").unwrap_or_else(|| "postgres".into()),
        replication: true,
        settings: Vec::new(),
    })
}

/// Looks up `host:port:replication:user:password` in a libpq password file. Like libpq, a
/// file that group or others can read is ignored.
fn passfile_lookup(
    path: &std::path::Path,
    host: &str,
    port: u16,
    user: &str,
) -> Option<Zeroizing<String>> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    if meta.mode() & 0o077 != 0 {
        tracing::warn!(
            "password file {} has group or world access; ignoring it (chmod 600 it)",
            path.display()
        );
        return None;
    }
    let text = Zeroizing::new(std::fs::read_to_string(path).ok()?);
    let host_for_match = if host.starts_with('/') {
        "localhost"
    } else {
        host
    };
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let fields = split_passfile_line(line);
        if fields.len() < 5 {
            continue;
        }
        let port_s = port.to_string();
        let matches = |pat: &str, v: &str| pat == "*" || pat == v;
        if matches(&fields[0], host_for_match)
            && matches(&fields[1], &port_s)
            && matches(&fields[2], "replication")
            && matches(&fields[3], user)
        {
            return Some(Zeroizing::new(fields[4..].join(":")));
        }
    }
    None
}

fn split_passfile_line(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => fields
                .last_mut()
                .expect("fields is never empty")
                .extend(chars.next()),
            ':' if fields.len() < 5 => fields.push(String::new()),
            c => fields.last_mut().expect("fields is never empty").push(c),
        }
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_and_url_forms() {
        let kv = parse_kv("host=/tmp port = 5433 user='a b' password='it\\'s'").unwrap();
        assert_eq!(kv["host"], "/tmp");
        assert_eq!(kv["port"], "5433");
        assert_eq!(kv["user"], "a b");
        assert_eq!(kv["password"], "it's");
        let url = parse_url("postgresql://rep%40x:p%3Ass@db.example:6432/postgres?sslmode=require")
            .unwrap();
        assert_eq!(url["user"], "rep@x");
        assert_eq!(url["password"], "p:ss");
        assert_eq!(url["host"], "db.example");
        assert_eq!(url["port"], "6432");
        assert_eq!(url["sslmode"], "require");
    }

    #[test]
    fn passfile_matches_replication_entries() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pgpass");
        std::fs::write(
            &p,
            "# comment\nother:5432:*:u:nope\nlocalhost:5432:replication:u:pa\\:ss\n",
        )
        .unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            passfile_lookup(&p, "localhost", 5432, "u")
                .as_deref()
                .map(String::as_str),
            Some("pa:ss")
        );
        assert!(passfile_lookup(&p, "localhost", 5433, "u").is_none());
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(passfile_lookup(&p, "localhost", 5432, "u").is_none());
    }
}
