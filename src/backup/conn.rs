//! A replication connection (`replication=true`, a physical walsender) spoken over
//! `postgres-protocol`: startup, authentication (trust, password, md5, SCRAM-SHA-256), simple
//! queries, and the message stream of BASE_BACKUP.

use std::collections::HashMap;

use bytes::BytesMut;
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use postgres_protocol::message::backend::{ErrorFields, Message};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::conninfo::{ConnParams, SslMode};
use crate::error::{Error, ErrorKind, Result};

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// An open replication connection.
pub struct Conn {
    io: Box<dyn Io>,
    rbuf: BytesMut,
    wbuf: BytesMut,
    /// ParameterStatus values the server reported (server_version, ...).
    pub server_params: HashMap<String, String>,
    what: String,
    /// The first page-checksum warning the server sent (it names the damaged file), for the
    /// error that ends the backup.
    checksum_warning: Option<String>,
}

fn db_error(msg: String) -> Error {
    Error::new(ErrorKind::Database, msg)
}

fn protocol_error(what: &str, detail: impl std::fmt::Display) -> Error {
    db_error(format!("{what}: protocol error: {detail}"))
}

/// One text row of a result.
pub type Row = Vec<Option<String>>;

/// The most rows a result set walseal reads may have (the longest, the tablespace list, has
/// one per tablespace).
pub const MAX_ROWS: usize = 10_000;
/// The most ParameterStatus values kept (PostgreSQL reports about twenty).
const MAX_PARAMS: usize = 256;
/// The longest ParameterStatus name and value kept, together.
const MAX_PARAM_BYTES: usize = 4096;
/// The longest server error or notice text shown, in characters.
const MAX_SERVER_TEXT: usize = 2000;

fn truncated(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

impl Conn {
    /// Connects and authenticates as a physical replication client.
    ///
    /// # Errors
    /// `Database` if the server is unreachable or refuses the connection or the credentials;
    /// `Config` for unusable TLS settings.
    pub async fn connect(p: &ConnParams) -> Result<Conn> {
        let what = p.describe();
        let unix = p.host.starts_with('/');
        if unix
            && matches!(
                p.sslmode,
                SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull
            )
        {
            return Err(Error::new(
                ErrorKind::Config,
                format!(
                    "sslmode={} cannot be used over a Unix socket ({what})",
                    super::tls::mode_name(p.sslmode)
                ),
            )
            .hint("connect over TCP (host=name) for TLS; a Unix socket never leaves the machine"));
        }
        let io: Box<dyn Io> = if unix {
            let path = format!("{}/.s.PGSQL.{}", p.host, p.port);
            Box::new(tokio::net::UnixStream::connect(&path).await.map_err(|e| {
                db_error(format!("cannot connect to PostgreSQL at {what}: {e}"))
                    .hint("check that the server runs and PGHOST/PGPORT (or host=/port= in --pg) point at it")
            })?)
        } else {
            let s = tokio::net::TcpStream::connect((p.host.as_str(), p.port)).await.map_err(|e| {
                db_error(format!("cannot connect to PostgreSQL at {what}: {e}"))
                    .hint("check that the server runs, listen_addresses/port, firewalls, and PGHOST/PGPORT")
            })?;
            let _ = s.set_nodelay(true);
            if p.sslmode == SslMode::Disable {
                Box::new(s)
            } else {
                match super::tls::negotiate(s, p).await? {
                    super::tls::Negotiated::Plain(s) => Box::new(s),
                    super::tls::Negotiated::Tls(t) => {
                        tracing::debug!("TLS established with {what}");
                        Box::new(t)
                    }
                }
            }
        };
        let mut conn = Conn {
            io,
            rbuf: BytesMut::with_capacity(1 << 17),
            wbuf: BytesMut::with_capacity(1024),
            server_params: HashMap::new(),
            what,
            checksum_warning: None,
        };
        conn.startup(p).await?;
        Ok(conn)
    }

    async fn flush(&mut self) -> Result<()> {
        self.io
            .write_all(&self.wbuf)
            .await
            .map_err(|e| db_error(format!("{}: write failed: {e}", self.what)))?;
        self.io
            .flush()
            .await
            .map_err(|e| db_error(format!("{}: write failed: {e}", self.what)))?;
        self.wbuf.clear();
        Ok(())
    }

    /// Reads the next message, reporting ErrorResponse as an error and skipping notices.
    pub async fn next(&mut self) -> Result<Message> {
        loop {
            let msg = self.next_raw().await?;
            match msg {
                Message::ErrorResponse(body) => {
                    let e = server_error(&self.what, body.fields());
                    return Err(match &self.checksum_warning {
                        Some(w) if e.message().contains("SQLSTATE XX001") => {
                            db_error(format!("{}; the first damaged page: {w}", e.message()))
                            .hint("a page of that file is damaged on the server: find and repair it (pg_amcheck, restore the table from a backup); `walseal backup --no-verify-checksums` takes a backup anyway, damaged page included")
                        }
                        _ => e,
                    });
                }
                Message::NoticeResponse(body) => {
                    let (text, _) = describe_fields(body.fields());
                    if self.checksum_warning.is_none()
                        && text.contains("checksum verification failed")
                    {
                        self.checksum_warning = Some(text.clone());
                    }
                    tracing::warn!("server notice: {text}");
                }
                Message::ParameterStatus(body) => {
                    if let (Ok(k), Ok(v)) = (body.name(), body.value()) {
                        self.remember_param(k, v);
                    }
                }
                other => return Ok(other),
            }
        }
    }

    /// Keeps a ParameterStatus value, within bounds a server cannot push walseal beyond.
    fn remember_param(&mut self, name: &str, value: &str) {
        let fits = name.len() + value.len() <= MAX_PARAM_BYTES;
        if fits && (self.server_params.len() < MAX_PARAMS || self.server_params.contains_key(name))
        {
            self.server_params
                .insert(name.to_string(), value.to_string());
        } else {
            tracing::debug!("ignoring server parameter {:?}", truncated(name, 64));
        }
    }

    async fn next_raw(&mut self) -> Result<Message> {
        loop {
            match super::protocol::parse_message(&mut self.rbuf) {
                Ok(Some(m)) => return Ok(m),
                Ok(None) => {}
                Err(e) => return Err(protocol_error(&self.what, e)),
            }
            if self.rbuf.capacity() - self.rbuf.len() < 8192 {
                self.rbuf.reserve(1 << 17);
            }
            let n = self
                .io
                .read_buf(&mut self.rbuf)
                .await
                .map_err(|e| db_error(format!("{}: read failed: {e}", self.what)))?;
            if n == 0 {
                return Err(db_error(format!(
                    "{}: the server closed the connection",
                    self.what
                )));
            }
        }
    }

    async fn startup(&mut self, p: &ConnParams) -> Result<()> {
        let mut params = vec![
            ("user", p.user.as_str()),
            ("application_name", p.application_name.as_str()),
        ];
        if p.replication {
            params.push(("replication", "true"));
        } else {
            params.push(("database", p.dbname.as_str()));
        }
        params.extend(p.settings.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        frontend::startup_message(params.iter().copied(), &mut self.wbuf)
            .map_err(|e| protocol_error(&self.what, e))?;
        self.flush().await?;
        let no_password = || {
            db_error(format!("{}: the server asks for a password and none is configured", p.describe()))
                .hint("set PGPASSWORD, password= in --pg, or an entry for database 'replication' in ~/.pgpass (PGPASSFILE)")
        };
        loop {
            match self.next().await? {
                Message::AuthenticationOk => break,
                Message::AuthenticationCleartextPassword => {
                    let pw = p.password.as_ref().ok_or_else(no_password)?;
                    frontend::password_message(pw.as_bytes(), &mut self.wbuf)
                        .map_err(|e| protocol_error(&self.what, e))?;
                    self.flush().await?;
                }
                Message::AuthenticationMd5Password(body) => {
                    let pw = p.password.as_ref().ok_or_else(no_password)?;
                    let hash =
                        zeroize::Zeroizing::new(postgres_protocol::authentication::md5_hash(
                            p.user.as_bytes(),
                            pw.as_bytes(),
                            body.salt(),
                        ));
                    frontend::password_message(hash.as_bytes(), &mut self.wbuf)
                        .map_err(|e| protocol_error(&self.what, e))?;
                    self.flush().await?;
                }
                Message::AuthenticationSasl(body) => {
                    let pw = p.password.as_ref().ok_or_else(no_password)?;
                    let mut mechs = body.mechanisms();
                    let mut has_scram = false;
                    while let Some(m) = mechs.next().map_err(|e| protocol_error(&self.what, e))? {
                        has_scram |= m == SCRAM_SHA_256;
                    }
                    if !has_scram {
                        return Err(db_error(format!(
                            "{}: the server offers no SASL mechanism walseal supports",
                            self.what
                        )));
                    }
                    self.scram(pw.as_bytes()).await?;
                }
                Message::AuthenticationKerberosV5
                | Message::AuthenticationScmCredential
                | Message::AuthenticationGss
                | Message::AuthenticationSspi
                | Message::AuthenticationGssContinue(_) => {
                    return Err(db_error(format!("{}: the server asks for an authentication method walseal does not support (Kerberos/GSS/SSPI)", self.what))
                        .hint("use scram-sha-256, md5, password or trust for the replication line in pg_hba.conf"));
                }
                _ => {
                    return Err(protocol_error(
                        &self.what,
                        "unexpected message during authentication",
                    ))
                }
            }
        }
        loop {
            match self.next().await? {
                Message::ReadyForQuery(_) => return Ok(()),
                Message::BackendKeyData(_) => {}
                _ => {
                    return Err(protocol_error(
                        &self.what,
                        "unexpected message after authentication",
                    ))
                }
            }
        }
    }

    async fn scram(&mut self, password: &[u8]) -> Result<()> {
        let mut scram = ScramSha256::new(password, ChannelBinding::unsupported());
        frontend::sasl_initial_response(SCRAM_SHA_256, scram.message(), &mut self.wbuf)
            .map_err(|e| protocol_error(&self.what, e))?;
        self.flush().await?;
        match self.next().await? {
            Message::AuthenticationSaslContinue(body) => scram
                .update(body.data())
                .map_err(|e| protocol_error(&self.what, e))?,
            _ => return Err(protocol_error(&self.what, "expected SASL continue")),
        }
        frontend::sasl_response(scram.message(), &mut self.wbuf)
            .map_err(|e| protocol_error(&self.what, e))?;
        self.flush().await?;
        match self.next().await? {
            Message::AuthenticationSaslFinal(body) => scram.finish(body.data()).map_err(|e| {
                db_error(format!(
                    "{}: the server's SCRAM signature is invalid: {e}",
                    self.what
                ))
            }),
            _ => Err(protocol_error(&self.what, "expected SASL final")),
        }
    }

    /// Sends a simple query (a replication command).
    ///
    /// # Errors
    /// `Database` on I/O errors.
    pub async fn send_query(&mut self, sql: &str) -> Result<()> {
        frontend::query(sql, &mut self.wbuf).map_err(|e| protocol_error(&self.what, e))?;
        self.flush().await
    }

    /// `UPLOAD_MANIFEST` (PostgreSQL 17+): sends a backup manifest for the next
    /// `BASE_BACKUP (INCREMENTAL)` on this connection.
    ///
    /// # Errors
    /// `Database` for server errors (a manifest the server refuses) or I/O errors.
    pub async fn upload_manifest(&mut self, manifest: &[u8]) -> Result<()> {
        self.send_query("UPLOAD_MANIFEST").await?;
        match self.next().await? {
            Message::CopyInResponse(_) => {}
            _ => {
                return Err(protocol_error(
                    &self.what,
                    "expected CopyInResponse after UPLOAD_MANIFEST",
                ))
            }
        }
        for chunk in manifest.chunks(64 << 10) {
            frontend::CopyData::new(chunk)
                .map_err(|e| protocol_error(&self.what, e))?
                .write(&mut self.wbuf);
            if self.wbuf.len() >= 256 << 10 {
                self.flush().await?;
            }
        }
        frontend::copy_done(&mut self.wbuf);
        self.flush().await?;
        self.wait_ready().await
    }

    /// Reads one result set: RowDescription, DataRows, CommandComplete.
    ///
    /// # Errors
    /// `Database` for server errors or unexpected messages.
    pub async fn read_result_set(&mut self) -> Result<Vec<Row>> {
        let mut rows = Vec::new();
        loop {
            match self.next().await? {
                Message::RowDescription(_) => {}
                Message::DataRow(_) if rows.len() == MAX_ROWS => {
                    return Err(protocol_error(
                        &self.what,
                        format!("a result set of more than {MAX_ROWS} rows"),
                    ))
                }
                Message::DataRow(body) => rows.push(
                    super::protocol::decode_row(&body)
                        .map_err(|e| protocol_error(&self.what, e))?,
                ),
                Message::CommandComplete(_) => return Ok(rows),
                _ => {
                    return Err(protocol_error(
                        &self.what,
                        "unexpected message in a result set",
                    ))
                }
            }
        }
    }

    /// Waits for ReadyForQuery, accepting CommandComplete on the way.
    ///
    /// # Errors
    /// `Database` for server errors.
    pub async fn wait_ready(&mut self) -> Result<()> {
        loop {
            match self.next().await? {
                Message::ReadyForQuery(_) => return Ok(()),
                Message::CommandComplete(_) | Message::EmptyQueryResponse => {}
                _ => {
                    return Err(protocol_error(
                        &self.what,
                        "unexpected message while waiting for ReadyForQuery",
                    ))
                }
            }
        }
    }

    /// Runs a command returning one result set.
    ///
    /// # Errors
    /// As [`Conn::read_result_set`].
    pub async fn query(&mut self, sql: &str) -> Result<Vec<Row>> {
        self.send_query(sql).await?;
        let rows = self.read_result_set().await?;
        self.wait_ready().await?;
        Ok(rows)
    }

    /// Where this connection goes, for messages.
    pub fn describe(&self) -> &str {
        &self.what
    }

    /// Says goodbye.
    pub async fn close(mut self) {
        frontend::terminate(&mut self.wbuf);
        let _ = self.flush().await;
    }
}

fn describe_fields(mut fields: ErrorFields<'_>) -> (String, String) {
    let (mut severity, mut message, mut code, mut detail, mut hint) = (
        String::new(),
        String::new(),
        String::new(),
        String::new(),
        String::new(),
    );
    while let Ok(Some(f)) = fields.next() {
        match f.type_() {
            b'V' => severity = String::from_utf8_lossy(f.value_bytes()).into_owned(),
            b'S' if severity.is_empty() => {
                severity = String::from_utf8_lossy(f.value_bytes()).into_owned()
            }
            b'M' => message = String::from_utf8_lossy(f.value_bytes()).into_owned(),
            b'C' => code = String::from_utf8_lossy(f.value_bytes()).into_owned(),
            b'D' => detail = String::from_utf8_lossy(f.value_bytes()).into_owned(),
            b'H' => hint = String::from_utf8_lossy(f.value_bytes()).into_owned(),
            _ => {}
        }
    }
    let mut text = format!("{severity}: {message}");
    if !detail.is_empty() {
        text += &format!(" ({detail})");
    }
    if !hint.is_empty() {
        text += &format!(" [server hint: {hint}]");
    }
    (
        truncated(&text, MAX_SERVER_TEXT).replace('\n', " "),
        truncated(&code, 5),
    )
}

fn server_error(what: &str, fields: ErrorFields<'_>) -> Error {
    let (text, code) = describe_fields(fields);
    let hint = match code.as_str() {
        "28P01" => "wrong password: check PGPASSWORD, password= in --pg, or ~/.pgpass",
        "28000" => "pg_hba.conf has no matching line: add `host replication USER ADDRESS scram-sha-256` (TCP) or `local replication USER peer` (Unix socket) and reload",
        "42501" => "the role needs the REPLICATION attribute: ALTER ROLE name REPLICATION",
        "53300" => "no free WAL sender: raise max_wal_senders or wait for other backups/standbys",
        "55000" => "check the server settings named in the message (wal_level, archive_mode, max_wal_senders)",
        _ => "see the PostgreSQL server log for details",
    };
    db_error(format!("{what}: {text} (SQLSTATE {code})")).hint(hint)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&u32::try_from(body.len() + 4).unwrap().to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    /// A connection whose server says `bytes` and then nothing.
    fn replaying(bytes: Vec<u8>) -> Conn {
        Conn {
            io: Box::new(std::io::Cursor::new(bytes)),
            rbuf: BytesMut::new(),
            wbuf: BytesMut::new(),
            server_params: HashMap::new(),
            what: "test server".into(),
            checksum_warning: None,
        }
    }

    fn run<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn result_sets_have_a_bounded_number_of_rows() {
        let mut row = 1u16.to_be_bytes().to_vec();
        row.extend_from_slice(&1i32.to_be_bytes());
        row.push(b'x');
        let mut data = Vec::new();
        for _ in 0..100_001 {
            data.extend(frame(b'D', &row));
        }
        data.extend(frame(b'C', b"SELECT 100001\0"));
        let e = run(replaying(data).read_result_set()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Database);
        // A normal one.
        let mut data = frame(b'D', &row);
        data.extend(frame(b'C', b"SELECT 1\0"));
        let rows = run(replaying(data).read_result_set()).unwrap();
        assert_eq!(rows, vec![vec![Some("x".to_string())]]);
    }

    #[test]
    fn server_parameters_kept_are_bounded() {
        let mut data = Vec::new();
        for i in 0..10_000 {
            data.extend(frame(b'S', format!("p{i}\0value\0").as_bytes()));
        }
        let mut long = b"server_version\0".to_vec();
        long.extend(std::iter::repeat_n(b'9', 1 << 20));
        long.push(0);
        data.extend(frame(b'S', &long));
        data.extend(frame(b'Z', b"I"));
        let mut conn = replaying(data);
        run(conn.wait_ready()).unwrap();
        assert!(
            conn.server_params.len() <= 256,
            "{}",
            conn.server_params.len()
        );
        let kept: usize = conn
            .server_params
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum();
        assert!(kept <= 1 << 20, "{kept}");
    }
}
