//! The drill's checks on the recovered cluster: `pg_amcheck` (heap and B-tree), page checksums
//! (`pg_checksums` on the stopped cluster), the user's `--check-sql` queries, and a summary of
//! databases, tables and row counts.
//!
//! Every session the drill opens overrides, in its startup packet, what the restored
//! catalogs could set for it (preload libraries, event triggers, search path, timeouts).

use std::path::Path;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::server::{Binaries, PORT};
use crate::backup::conn::{Conn, Row};
use crate::backup::conninfo::{ConnParams, SslMode};
use crate::error::{Error, ErrorKind, Result};

/// One check's outcome.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Check {
    /// `amcheck`, `checksums`, `sql:<line>`.
    pub name: String,
    /// Passed (a skipped check counts as passed; `skipped` says why it did not run).
    pub ok: bool,
    /// Why it did not run, if it did not.
    #[serde(default)]
    pub skipped: Option<String>,
    /// What it found, one line (never a value from the data).
    #[serde(default)]
    pub detail: String,
    /// How long it took.
    #[serde(default)]
    pub seconds: f64,
}

impl Check {
    fn skipped(name: &str, why: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            ok: true,
            skipped: Some(why.into()),
            detail: String::new(),
            seconds: 0.0,
        }
    }
}

/// One database of the recovered cluster.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Database {
    /// Its name.
    pub name: String,
    /// Tables counted (heap tables and materialized views outside the system schemas).
    pub tables: u64,
    /// Rows in them.
    pub rows: u64,
    /// Rows per table, `schema.table`.
    #[serde(default)]
    pub table_rows: Vec<TableRows>,
}

/// Rows of one table.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TableRows {
    /// `schema.table`.
    pub table: String,
    /// Rows.
    pub rows: u64,
}

/// At most this many tables are counted per database (the summary says how many exist).
const MAX_TABLES: usize = 5000;

/// How the drill connects to its server: the private socket, a superuser role of the
/// restored cluster, and settings that override the restored catalogs' for the session.
#[derive(Debug, Clone)]
pub struct Session {
    socket: String,
    user: String,
    major: u32,
}

/// Startup settings of every drill session.
fn session_settings(major: u32) -> Vec<(String, String)> {
    let mut s = vec![
        ("search_path", "pg_catalog"),
        ("session_preload_libraries", ""),
        ("local_preload_libraries", ""),
        ("statement_timeout", "0"),
        // A lock the restored cluster holds (a prepared transaction the drill could not roll
        // back) fails a check instead of hanging it.
        ("lock_timeout", "5min"),
        ("idle_in_transaction_session_timeout", "0"),
        ("default_transaction_read_only", "off"),
        ("synchronous_commit", "local"),
        ("jit", "off"),
        ("zero_damaged_pages", "off"),
        ("ignore_checksum_failure", "off"),
        ("ignore_system_indexes", "off"),
        ("TimeZone", "UTC"),
        ("DateStyle", "ISO"),
        ("standard_conforming_strings", "on"),
    ];
    if major >= 17 {
        s.push(("event_triggers", "off"));
    }
    if major >= 18 {
        s.push(("extension_control_path", "$system"));
    }
    s.into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

impl Session {
    /// Finds a role to connect as: PGUSER, this OS user's name, `postgres`.
    ///
    /// # Errors
    /// `Database` if none of them can connect.
    pub async fn open(socket: &Path, major: u32) -> Result<(Session, Conn)> {
        let mut users: Vec<String> = Vec::new();
        for u in [
            std::env::var("PGUSER").ok(),
            os_user_name(),
            std::env::var("USER").ok(),
            Some("postgres".to_string()),
        ]
        .into_iter()
        .flatten()
        {
            if !u.is_empty() && !users.contains(&u) {
                users.push(u);
            }
        }
        let mut last = None;
        for user in &users {
            let s = Session {
                socket: socket.to_string_lossy().into_owned(),
                user: user.clone(),
                major,
            };
            match s.connect("postgres").await {
                Ok(c) => return Ok((s, c)),
                Err(e) => last = Some(e),
            }
        }
        Err(Error::new(
            ErrorKind::Database,
            format!(
                "cannot connect to the drill's server as {}: {}",
                users.join(", "),
                last.map_or_else(String::new, |e| e.to_string())
            ),
        )
        .hint("set PGUSER to a superuser role of the backed-up cluster"))
    }

    /// A connection to database `db`.
    ///
    /// # Errors
    /// `Database`.
    pub async fn connect(&self, db: &str) -> Result<Conn> {
        self.connect_with(db, session_settings(self.major)).await
    }

    /// A connection to database `db` for the user's `--check-sql` queries: the database's
    /// own search_path, so that their unqualified names resolve as in production.
    ///
    /// # Errors
    /// `Database`.
    pub async fn connect_for_queries(&self, db: &str) -> Result<Conn> {
        let mut settings = session_settings(self.major);
        settings.retain(|(k, _)| k != "search_path");
        self.connect_with(db, settings).await
    }

    async fn connect_with(&self, db: &str, settings: Vec<(String, String)>) -> Result<Conn> {
        Conn::connect(&ConnParams {
            host: self.socket.clone(),
            port: PORT,
            user: self.user.clone(),
            password: None,
            sslmode: SslMode::Disable,
            sslrootcert: None,
            application_name: "walseal drill".into(),
            dbname: db.into(),
            replication: false,
            settings,
        })
        .await
    }

    /// The role the drill connects as.
    pub fn user(&self) -> &str {
        &self.user
    }
}

/// This process's OS user name, from /etc/passwd.
fn os_user_name() -> Option<String> {
    let uid = rustix::process::getuid().as_raw().to_string();
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() > 2 && f[2] == uid).then(|| f[0].to_string())
    })
}

/// The first value of the first row.
pub fn first_value(rows: &[Row]) -> Option<&str> {
    rows.first()?.first()?.as_deref()
}

/// Databases that accept connections (with `templates`, template1 too), by name.
///
/// # Errors
/// `Database`.
pub async fn databases(conn: &mut Conn, templates: bool) -> Result<Vec<String>> {
    let rows = conn
        .query(&format!(
            "SELECT datname FROM pg_catalog.pg_database WHERE datallowconn{} ORDER BY datname",
            if templates {
                ""
            } else {
                " AND NOT datistemplate"
            }
        ))
        .await?;
    Ok(rows
        .into_iter()
        .filter_map(|r| r.into_iter().next().flatten())
        .collect())
}

/// Counts the rows of every heap table and materialized view of database `db` (up to
/// [`MAX_TABLES`]).
///
/// # Errors
/// `Database` if a count fails.
pub async fn summarize(session: &Session, db: &str) -> Result<Database> {
    let mut conn = session.connect(db).await?;
    // Heap relations only (relam 0 or heap): a table access method is code the backup names.
    let rows = conn
        .query(&format!(
            "SELECT n.nspname, c.relname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('r', 'm') AND c.relpersistence <> 't' AND (c.relam = 0 OR c.relam = 2) \
             AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_toast%' \
             AND n.nspname NOT LIKE 'pg\\_temp%' ORDER BY 1, 2 LIMIT {MAX_TABLES}"
        ))
        .await?;
    let mut out = Database {
        name: db.to_string(),
        tables: 0,
        rows: 0,
        table_rows: Vec::new(),
    };
    for r in rows {
        let (Some(Some(schema)), Some(Some(table))) = (r.first(), r.get(1)) else {
            continue;
        };
        let sql = format!(
            "SELECT pg_catalog.count(*) FROM ONLY {}.{}",
            quote_ident(schema),
            quote_ident(table)
        );
        let counted = conn.query(&sql).await?;
        let n: u64 = first_value(&counted)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        out.tables += 1;
        out.rows += n;
        out.table_rows.push(TableRows {
            table: format!("{schema}.{table}"),
            rows: n,
        });
    }
    conn.close().await;
    Ok(out)
}

/// An SQL identifier, quoted.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Rolls back the prepared transactions the backup holds (they survive promotion, and their
/// locks would block the checks); returns a check saying how many there were.
pub async fn roll_back_prepared(session: &Session) -> Check {
    let t = Instant::now();
    let result = async {
        let mut conn = session.connect("postgres").await?;
        let rows = conn
            .query("SELECT gid, database FROM pg_catalog.pg_prepared_xacts")
            .await?;
        conn.close().await;
        for row in &rows {
            let (Some(Some(gid)), Some(Some(db))) = (row.first(), row.get(1)) else {
                continue;
            };
            let mut c = session.connect(db).await?;
            c.query(&format!("ROLLBACK PREPARED {}", quote_literal(gid)))
                .await?;
            c.close().await;
        }
        Ok::<usize, Error>(rows.len())
    }
    .await;
    let (ok, detail) = match result {
        Ok(0) => (true, "none".to_string()),
        Ok(n) => (
            true,
            format!("rolled back {n} prepared transaction(s) the backup held"),
        ),
        Err(e) => (
            false,
            format!("cannot roll back prepared transactions: {}", e.message()),
        ),
    };
    Check {
        name: "prepared".into(),
        ok,
        skipped: None,
        detail,
        seconds: t.elapsed().as_secs_f64(),
    }
}

/// An SQL string literal.
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// One `--check-sql` query.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckQuery {
    /// The database it runs in (`\c NAME` lines switch; default `postgres`).
    pub database: String,
    /// The statement, without its final `;`.
    pub sql: String,
    /// The line it starts on (1-based).
    pub line: usize,
}

/// Reads a `--check-sql` file: statements ending with `;` at the end of a line; `--` comment
/// lines and blank lines between statements are skipped; a `\c NAME` (or `\connect NAME`)
/// line makes the following statements run in database NAME. Pure.
///
/// # Errors
/// `Usage` for a file with no statement or a `\c` without a name.
pub fn parse_check_sql(text: &str) -> Result<Vec<CheckQuery>> {
    let mut out = Vec::new();
    let mut database = "postgres".to_string();
    let mut current = String::new();
    let mut start = 0;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if current.is_empty() {
            if line.is_empty() || line.starts_with("--") {
                continue;
            }
            if let Some(rest) = line
                .strip_prefix("\\connect")
                .or_else(|| line.strip_prefix("\\c"))
            {
                let name = rest.trim().trim_matches('"');
                if name.is_empty() {
                    return Err(Error::new(
                        ErrorKind::Usage,
                        format!("--check-sql line {}: \\c needs a database name", i + 1),
                    ));
                }
                database = name.to_string();
                continue;
            }
            start = i + 1;
        }
        current.push_str(raw);
        current.push('\n');
        if line.ends_with(';') {
            push_query(&mut out, &mut current, &database, start);
        }
    }
    push_query(&mut out, &mut current, &database, start);
    if out.is_empty() {
        return Err(
            Error::new(ErrorKind::Usage, "--check-sql file holds no query")
                .hint("write one query per statement, each ending with ';'"),
        );
    }
    Ok(out)
}

fn push_query(out: &mut Vec<CheckQuery>, current: &mut String, database: &str, line: usize) {
    let sql = current.trim().trim_end_matches(';').trim().to_string();
    current.clear();
    if !sql.is_empty() {
        out.push(CheckQuery {
            database: database.to_string(),
            sql,
            line,
        });
    }
}

/// Whether a check query's result passes: at least one row, and its first value neither
/// NULL nor false.
pub fn passes(rows: &[Row]) -> bool {
    match rows.first() {
        None => false,
        Some(row) => match row.first() {
            None => true,
            Some(None) => false,
            Some(Some(v)) => !matches!(v.as_str(), "f" | "false"),
        },
    }
}

/// Runs each query; a failed query (error, no row, false or NULL) fails its check.
pub async fn run_check_sql(session: &Session, queries: &[CheckQuery]) -> Vec<Check> {
    let mut out = Vec::new();
    for q in queries {
        let t = Instant::now();
        let result = async {
            let mut conn = session.connect_for_queries(&q.database).await?;
            let rows = conn.query(&q.sql).await;
            conn.close().await;
            rows
        }
        .await;
        let (ok, detail) = match result {
            Ok(rows) if passes(&rows) => (true, format!("{} row(s)", rows.len())),
            Ok(rows) if rows.is_empty() => (false, "returned no row".to_string()),
            Ok(_) => (false, "returned false or NULL".to_string()),
            Err(e) => (false, format!("failed: {}", without_detail(e.message()))),
        };
        let first_line: String = q
            .sql
            .lines()
            .next()
            .unwrap_or("")
            .chars()
            .take(80)
            .collect();
        out.push(Check {
            name: format!("sql:{}", q.line),
            ok,
            skipped: None,
            detail: format!("{first_line} [{}]: {detail}", q.database),
            seconds: t.elapsed().as_secs_f64(),
        });
    }
    out
}

/// A server error without its DETAIL, which can quote values of the data (`Key (id)=(42)
/// already exists`): the report and the drill's output keep the message and the SQLSTATE.
pub fn without_detail(msg: &str) -> String {
    let sqlstate = msg.rfind("(SQLSTATE ").map(|i| &msg[i..]);
    let head = match msg.find("ERROR: ") {
        Some(i) => msg[i..].find(" (").map_or(msg, |j| &msg[..i + j]),
        None => msg,
    };
    match sqlstate {
        Some(code) if !head.ends_with(code) => format!("{head} {code}"),
        _ => head.to_string(),
    }
}

/// `pg_amcheck --all` (heap and B-tree indexes of every database), with the amcheck extension
/// installed where missing. Before that, in every database, event triggers are disabled
/// (PostgreSQL 15 and 16 have no `event_triggers` setting, and `CREATE EXTENSION` fires
/// them).
pub async fn amcheck(bin: &Binaries, session: &Session, dbs: &[String], jobs: usize) -> Check {
    let t = Instant::now();
    let Some(tool) = bin.tool("pg_amcheck") else {
        return Check::skipped(
            "amcheck",
            format!("pg_amcheck is not installed in {}", bin.dir.display()),
        );
    };
    match prepare_amcheck(session, dbs).await {
        Ok(true) => {}
        Ok(false) => {
            return Check::skipped(
                "amcheck",
                "the amcheck extension is not installed with these binaries",
            )
        }
        Err(e) => {
            return Check {
                name: "amcheck".into(),
                ok: false,
                skipped: None,
                detail: format!("cannot prepare the databases: {}", e.message()),
                seconds: t.elapsed().as_secs_f64(),
            }
        }
    }
    let options: Vec<String> = session_settings(session.major)
        .into_iter()
        .filter(|(k, _)| k != "search_path")
        .map(|(k, v)| format!("-c {k}={v}"))
        .collect();
    let out = tokio::process::Command::new(&tool)
        .kill_on_drop(true)
        .args(["--all", "--install-missing", "--no-password", "--jobs"])
        .arg(jobs.max(1).to_string())
        .arg("--host")
        .arg(&session.socket)
        .arg("--port")
        .arg(PORT.to_string())
        .arg("--username")
        .arg(&session.user)
        .env("PGOPTIONS", options.join(" "))
        .env("PGAPPNAME", "walseal drill")
        .env_remove("PGDATABASE")
        .output()
        .await;
    tool_check(
        "amcheck",
        "pg_amcheck",
        &tool,
        out,
        format!(
            "pg_amcheck --all: no corruption in {} database(s)",
            dbs.len()
        ),
        t.elapsed().as_secs_f64(),
    )
}

/// Disables every event trigger in each database; returns whether amcheck can be installed.
async fn prepare_amcheck(session: &Session, dbs: &[String]) -> Result<bool> {
    let mut available = false;
    for db in dbs {
        let mut conn = session.connect(db).await?;
        let triggers = conn
            .query("SELECT evtname FROM pg_catalog.pg_event_trigger WHERE evtenabled <> 'D'")
            .await?;
        for name in triggers.iter().filter_map(|r| r.first().cloned().flatten()) {
            conn.query(&format!(
                "ALTER EVENT TRIGGER {} DISABLE",
                quote_ident(&name)
            ))
            .await?;
        }
        let avail = conn
            .query("SELECT 1 FROM pg_catalog.pg_available_extensions WHERE name = 'amcheck'")
            .await?;
        available = !avail.is_empty();
        conn.close().await;
    }
    Ok(available)
}

/// `pg_checksums --check` on the stopped cluster, if it has data checksums.
pub async fn checksums(bin: &Binaries, data: &Path, enabled: Option<bool>) -> Check {
    let t = Instant::now();
    match enabled {
        Some(true) => {}
        Some(false) => return Check::skipped("checksums", "the cluster has no data checksums"),
        None => {
            return Check::skipped(
                "checksums",
                "the server did not say whether it has data checksums",
            )
        }
    }
    let Some(tool) = bin.tool("pg_checksums") else {
        return Check::skipped(
            "checksums",
            format!("pg_checksums is not installed in {}", bin.dir.display()),
        );
    };
    let out = tokio::process::Command::new(&tool)
        .kill_on_drop(true)
        .arg("--check")
        .arg("-D")
        .arg(data)
        .output()
        .await;
    tool_check(
        "checksums",
        "pg_checksums",
        &tool,
        out,
        "pg_checksums --check: every page's checksum is right".into(),
        t.elapsed().as_secs_f64(),
    )
}

/// The check a client tool's run gives: passed (`ok_detail`) when it exited 0, else failed
/// with the first lines of its output.
fn tool_check(
    name: &str,
    what: &str,
    tool: &Path,
    out: std::io::Result<std::process::Output>,
    ok_detail: String,
    seconds: f64,
) -> Check {
    let (ok, detail) = match out {
        Ok(o) if o.status.success() => (true, ok_detail),
        Ok(o) => (
            false,
            format!(
                "{what} ({}): {}",
                o.status,
                first_lines(&o.stdout, &o.stderr)
            ),
        ),
        Err(e) => (false, format!("cannot run {}: {e}", tool.display())),
    };
    Check {
        name: name.into(),
        ok,
        skipped: None,
        detail,
        seconds,
    }
}

/// The first three non-empty lines of a tool's output, joined.
fn first_lines(stdout: &[u8], stderr: &[u8]) -> String {
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(stdout),
        String::from_utf8_lossy(stderr)
    );
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .take(3)
        .collect::<Vec<_>>()
        .join(" / ")
        .chars()
        .take(600)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_sql_statements_databases_and_comments() {
        let q = parse_check_sql(
            "-- rows we must have\nSELECT count(*) > 0\n  FROM t;\n\n\\c shop\nSELECT 1 FROM orders WHERE id = 42;\nSELECT true",
        )
        .unwrap();
        assert_eq!(q.len(), 3);
        assert_eq!(q[0].database, "postgres");
        assert_eq!(q[0].sql, "SELECT count(*) > 0\n  FROM t");
        assert_eq!(q[0].line, 2);
        assert_eq!(q[1].database, "shop");
        assert_eq!(q[1].line, 6);
        assert_eq!(q[2].sql, "SELECT true");
        assert!(parse_check_sql("-- nothing\n\n").is_err());
        assert!(parse_check_sql("\\c\nSELECT 1;").is_err());
    }

    #[test]
    fn a_query_passes_with_a_row_that_is_not_false_or_null() {
        let row = |v: Option<&str>| vec![v.map(str::to_string)];
        assert!(!passes(&[]));
        assert!(passes(&[row(Some("t"))]));
        assert!(passes(&[row(Some("42"))]));
        assert!(passes(&[row(Some(""))]));
        assert!(!passes(&[row(Some("f"))]));
        assert!(!passes(&[row(None)]));
        assert!(passes(&[vec![]]));
    }

    #[test]
    fn a_failed_query_keeps_its_message_not_its_detail() {
        let msg = "socket /s/.s.PGSQL.5432 as postgres: ERROR: duplicate key value violates unique constraint \"t_pkey\" (Key (id)=(42) already exists.) (SQLSTATE 23505)";
        assert_eq!(
            without_detail(msg),
            "socket /s/.s.PGSQL.5432 as postgres: ERROR: duplicate key value violates unique constraint \"t_pkey\" (SQLSTATE 23505)"
        );
        let plain = "x: ERROR: relation \"t\" does not exist (SQLSTATE 42P01)";
        assert_eq!(without_detail(plain), plain);
        assert_eq!(without_detail("no error here"), "no error here");
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
    }
}
