//! `walseal check`: the one command a DBA runs after setup. It loads the configuration and the
//! key, writes, reads back and deletes a probe object, connects to PostgreSQL, reads the
//! archiving settings, forces a WAL switch and waits until that segment is in the repository
//! and opens — and says, line by line, what is right and what to fix.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::backup::conn::Conn;
use crate::backup::conninfo;
use crate::config::Config;
use crate::keys::Keyring;
use crate::redact::{redact_command, redact_url};
use crate::repo::{Access, Repository};
use crate::repository;
use crate::seal;
use crate::storage::{PutOutcome, Storage};

/// One line of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Line {
    /// Whether this item is right.
    pub ok: bool,
    /// What was checked.
    pub item: String,
    /// What was found.
    pub detail: String,
    /// How to fix it.
    pub fix: Option<String>,
}

fn ok(item: &str, detail: impl Into<String>) -> Line {
    Line {
        ok: true,
        item: item.into(),
        detail: detail.into(),
        fix: None,
    }
}

fn fail(item: &str, detail: impl Into<String>, fix: impl Into<String>) -> Line {
    Line {
        ok: false,
        item: item.into(),
        detail: detail.into(),
        fix: Some(fix.into()),
    }
}

fn from_error(item: &str, e: &crate::error::Error) -> Line {
    Line {
        ok: false,
        item: item.into(),
        detail: e.message().to_string(),
        fix: e.hint_text().map(str::to_string),
    }
}

/// Runs every check; never fails itself (problems are lines).
pub async fn check(cfg: &Config, conninfo: Option<&str>, wait: Duration) -> Vec<Line> {
    let mut lines = Vec::new();
    match cfg.repo_url() {
        Ok(url) => lines.push(ok(
            "configuration",
            format!("repository {}", redact_url(url)),
        )),
        Err(e) => {
            lines.push(from_error("configuration", &e));
            return lines;
        }
    }
    let keyring = match Keyring::from_config(cfg) {
        Ok(k) => {
            let files: Vec<String> = cfg
                .key_files
                .iter()
                .map(|p| p.display().to_string())
                .collect();
            let detail = match k.active() {
                crate::keys::Sealer::Master(m) => {
                    format!("key {} loaded from {} (mode 0600)", m.id(), files.join(":"))
                }
                crate::keys::Sealer::Recipient(r) if !k.can_open() => format!(
                    "recipient {} (id {}): push-only, this host can seal but not open",
                    r,
                    r.id()
                ),
                crate::keys::Sealer::Recipient(r) => format!(
                    "sealing to recipient {} (id {}); the configured keys and identities only open",
                    r,
                    r.id()
                ),
            };
            lines.push(ok("key", detail));
            k
        }
        Err(e) => {
            lines.push(from_error("key", &e));
            return lines;
        }
    };
    drop(keyring);
    let repo = match Repository::open(cfg, Access::Seal, "check").await {
        Ok(r) => r,
        Err(e) => {
            lines.push(from_error("repository", &e));
            return lines;
        }
    };
    let (storage, keyring) = (repo.storage.clone(), repo.keyring.clone());
    lines.push(ok(
        "repository id",
        format!(
            "{} (objects of other repositories do not open here)",
            crate::keys::hex_encode(&repo.id)
        ),
    ));
    lines.push(probe(&storage, &keyring).await);
    let identity = repository::load_any(&storage, &keyring).await;

    let mut params = match conninfo::resolve(conninfo) {
        Ok(p) => p,
        Err(e) => {
            lines.push(from_error("PostgreSQL", &e));
            return lines;
        }
    };
    params.replication = false;
    let mut conn = match Conn::connect(&params).await {
        Ok(c) => c,
        Err(e) => {
            lines.push(from_error("PostgreSQL", &e));
            return lines;
        }
    };
    let settings = conn
        .query("SELECT current_setting('wal_level'), current_setting('archive_mode'), current_setting('archive_command'), \
                current_setting('restore_command'), (SELECT system_identifier::text FROM pg_control_system()), current_setting('server_version')")
        .await;
    let row = match settings.map(|rows| server_settings(&rows)) {
        Ok(Some(row)) => row,
        Ok(None) => {
            lines.push(fail(
                "PostgreSQL",
                format!(
                    "{} gave an unexpected answer to the settings query",
                    params.describe()
                ),
                "connect to the PostgreSQL server itself (not a pooler or another service)",
            ));
            conn.close().await;
            return lines;
        }
        Err(e) => {
            lines.push(from_error("PostgreSQL", &e));
            return lines;
        }
    };
    lines.push(ok(
        "PostgreSQL",
        format!(
            "connected to {} (server {})",
            params.describe(),
            row.server_version
        ),
    ));
    let archiving = settings_lines(&row, &mut lines);
    match identity {
        Ok(Some(id)) if id.system_identifier != row.system_identifier => lines.push(fail(
            "repository identity",
            format!(
                "the repository belongs to system {}, this cluster is {}",
                id.system_identifier, row.system_identifier
            ),
            "point this cluster at its own repository or prefix",
        )),
        Ok(Some(id)) => lines.push(ok(
            "repository identity",
            format!("system {}", id.system_identifier),
        )),
        Ok(None) => lines.push(ok(
            "repository identity",
            "not recorded yet (written with the first archived segment)",
        )),
        Err(e) => lines.push(from_error("repository identity", &e)),
    }
    if archiving {
        lines.push(switch_and_wait(&mut conn, &storage, &keyring, wait).await);
    }
    conn.close().await;
    lines
}

/// The server settings `check` reads.
struct Settings {
    wal_level: String,
    archive_mode: String,
    archive_command: String,
    restore_command: String,
    system_identifier: String,
    server_version: String,
}

/// The settings query's answer; `None` unless it has a row of (at least) six cells.
fn server_settings(rows: &[crate::backup::conn::Row]) -> Option<Settings> {
    let row = rows.first()?;
    let cell = |i: usize| row.get(i).map(|c| c.clone().unwrap_or_default());
    Some(Settings {
        wal_level: cell(0)?,
        archive_mode: cell(1)?,
        archive_command: cell(2)?,
        restore_command: cell(3)?,
        system_identifier: cell(4)?,
        server_version: cell(5)?,
    })
}

/// The lines for the archiving settings; whether archiving can work.
fn settings_lines(row: &Settings, lines: &mut Vec<Line>) -> bool {
    let mut archiving = true;
    if row.wal_level == "replica" || row.wal_level == "logical" {
        lines.push(ok("wal_level", row.wal_level.clone()));
    } else {
        archiving = false;
        lines.push(fail(
            "wal_level",
            format!("is {}", row.wal_level),
            "set wal_level = replica in postgresql.conf and restart",
        ));
    }
    if row.archive_mode == "on" || row.archive_mode == "always" {
        lines.push(ok("archive_mode", row.archive_mode.clone()));
    } else {
        archiving = false;
        lines.push(fail(
            "archive_mode",
            format!("is {}", row.archive_mode),
            "set archive_mode = on in postgresql.conf and restart",
        ));
    }
    let cmd = redact_command(&row.archive_command);
    if cmd.contains("walseal") && cmd.contains("wal-push") && cmd.contains("%p") {
        lines.push(ok("archive_command", cmd));
    } else {
        archiving = false;
        lines.push(fail(
            "archive_command",
            format!("is {cmd:?}, which does not run walseal wal-push %p"),
            "set archive_command = 'walseal --config /etc/walseal/walseal.toml wal-push %p' (see postgresql.conf.example) and reload",
        ));
    }
    lines.push(ok(
        "restore_command",
        if row.restore_command.is_empty() {
            "not set (only needed on a cluster being restored)".to_string()
        } else {
            redact_command(&row.restore_command)
        },
    ));
    archiving
}

async fn probe(storage: &Storage, keyring: &Keyring) -> Line {
    let key = format!(
        "check/probe-{}-{}",
        std::process::id(),
        crate::time::format_id(crate::time::now())
    );
    let text = b"walseal check probe";
    let result = async {
        let sealed = keyring.seal_to_vec(&key, text)?;
        let sealed_copy = sealed.clone();
        if storage.put_new(&key, sealed.into()).await? == PutOutcome::AlreadyExists {
            return Err(crate::error::Error::new(
                crate::error::ErrorKind::Conflict,
                format!("{key} exists"),
            ));
        }
        let back = storage.get_bytes(&key).await?.unwrap_or_default();
        let same = match seal::open_to_vec(keyring, &key, &back) {
            Ok(plain) => plain == text,
            // Push-only (cannot open what it seals): the stored bytes must be those written.
            Err(seal::SealError::PushOnly | seal::SealError::UnknownKey(_))
                if !keyring.opens_own() =>
            {
                back == sealed_copy
            }
            Err(e) => return Err(e.into_error(&key)),
        };
        storage.delete(&key).await?;
        if !same {
            return Err(crate::error::Error::new(
                crate::error::ErrorKind::Integrity,
                "the probe read back differently",
            ));
        }
        Ok(())
    }
    .await;
    match result {
        Ok(()) => ok(
            "repository",
            format!(
                "{}: wrote, read back and deleted a probe object",
                storage.display()
            ),
        ),
        Err(e) => Line {
            ok: false,
            item: "repository".into(),
            detail: e.message().to_string(),
            fix: Some(
                e.hint_text()
                    .unwrap_or(
                        "check that the repository is writable by the user PostgreSQL runs as",
                    )
                    .to_string(),
            ),
        },
    }
}

async fn switch_and_wait(
    conn: &mut Conn,
    storage: &Storage,
    keyring: &Keyring,
    wait: Duration,
) -> Line {
    let seg = match conn.query("SELECT pg_walfile_name(pg_switch_wal())").await {
        Ok(rows) => rows
            .first()
            .and_then(|r| r.first().cloned().flatten())
            .unwrap_or_default(),
        Err(e) => return from_error("WAL switch", &e),
    };
    let key = format!("wal/{}/{seg}", seg.get(..8).unwrap_or("00000001"));
    let started = Instant::now();
    loop {
        match storage.get_bytes(&key).await {
            Ok(Some(sealed)) => {
                return match seal::open_to_vec(keyring, &key, &sealed) {
                    Ok(_) => ok(
                        "archiving",
                        format!(
                            "switched WAL: {seg} reached the repository and opens ({:.1} s)",
                            started.elapsed().as_secs_f64()
                        ),
                    ),
                    Err(seal::SealError::PushOnly | seal::SealError::UnknownKey(_))
                        if !keyring.opens_own() =>
                    {
                        ok(
                        "archiving",
                        format!(
                            "switched WAL: {seg} reached the repository ({:.1} s; push-only, not opened)",
                            started.elapsed().as_secs_f64()
                        ),
                    )
                    }
                    Err(e) => from_error("archiving", &e.into_error(&key)),
                };
            }
            Ok(None) if started.elapsed() < wait => {
                tokio::time::sleep(Duration::from_millis(250)).await
            }
            Ok(None) => return fail(
                "archiving",
                format!(
                    "{seg} did not reach the repository within {} s",
                    wait.as_secs()
                ),
                "look at pg_stat_archiver (last_failed_wal) and the server log for walseal's error",
            ),
            Err(e) => return from_error("archiving", &e),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn short_rows_from_the_server_are_refused_not_indexed() {
        for n in 0..6 {
            let row: Vec<Option<String>> = (0..n).map(|i| Some(i.to_string())).collect();
            assert!(super::server_settings(&[row]).is_none(), "{n} cells");
        }
        assert!(super::server_settings(&[]).is_none());
        let row: Vec<Option<String>> = (0..6).map(|i| Some(i.to_string())).collect();
        assert!(super::server_settings(&[row]).is_some());
    }
}
