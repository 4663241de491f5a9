//! Masking of credentials in what walseal shows: URLs (user info, query strings such as an
//! Azure SAS token) and command lines (`NAME=value` words whose name says secret). Pure text
//! functions, used by `check`, by `Debug` of the configuration and by error messages.

/// Masked in place of a secret.
pub const MASK: &str = "***";

/// Whether a `NAME=value` word's name suggests its value is a secret. Key and identity file
/// settings hold paths, which are shown.
fn secret_name(name: &str) -> bool {
    let name = name.to_ascii_uppercase();
    if name.ends_with("KEY_FILE") || name.ends_with("IDENTITY_FILE") {
        return false;
    }
    [
        "SECRET",
        "PASSWORD",
        "TOKEN",
        "PASSPHRASE",
        "KEY",
        "CREDENTIAL",
    ]
    .iter()
    .any(|s| name.contains(s))
}

/// A URL (or any text holding one, e.g. `'s3://…'` in quotes) with its credentials masked:
/// the user info before `@`, and every value of the query string (an Azure SAS token, a
/// presigned signature). Works on text, not a parsed URL, so a malformed one is masked too.
pub fn redact_url(text: &str) -> String {
    let Some(scheme_end) = text.find("://") else {
        return text.to_string();
    };
    let (head, rest) = text.split_at(scheme_end + 3);
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let mut out = head.to_string();
    match authority.rfind('@') {
        Some(at) => {
            out += MASK;
            out += &authority[at..];
        }
        None => out += authority,
    }
    let Some(q) = tail.find('?') else {
        out += tail;
        return out;
    };
    out += &tail[..=q];
    let query = &tail[q + 1..];
    let query_end = query.find(['#', '\'', '"']).unwrap_or(query.len());
    let masked: Vec<String> = query[..query_end]
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((k, _)) => format!("{k}={MASK}"),
            None => pair.to_string(),
        })
        .collect();
    out += &masked.join("&");
    out += &query[query_end..];
    out
}

/// Splits a shell command into words at unquoted blanks, keeping each word's text (quotes
/// included) as written.
fn shell_words(cmd: &str) -> Vec<&str> {
    let mut words = Vec::new();
    let (mut start, mut quote, mut escaped) = (None, None, false);
    for (i, c) in cmd.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some('"'), '\\') | (None, '\\') => escaped = true,
            (Some(_), _) => {}
            (None, '\'' | '"') => {
                quote = Some(c);
                start.get_or_insert(i);
            }
            (None, c) if c.is_whitespace() => {
                if let Some(s) = start.take() {
                    words.push(&cmd[s..i]);
                }
            }
            (None, _) => {
                start.get_or_insert(i);
            }
        }
        if escaped {
            start.get_or_insert(i);
        }
    }
    if let Some(s) = start {
        words.push(&cmd[s..]);
    }
    words
}

/// Masks what a command line (archive_command, restore_command) holds of credentials: the
/// value of every `NAME=value` word whose name suggests a secret, and the credentials in every
/// URL. Words are split as the shell splits them, so a quoted value with blanks is masked
/// whole.
pub fn redact_command(cmd: &str) -> String {
    shell_words(cmd)
        .into_iter()
        .map(|word| match word.split_once('=') {
            Some((name, _)) if secret_name(name) => format!("{name}={MASK}"),
            _ => redact_url(word),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_credentials_are_masked() {
        let c = redact_command(
            "AWS_SECRET_ACCESS_KEY=abc PGPASSWORD='x' WALSEAL_REPO=s3://b/p walseal wal-push %p",
        );
        assert_eq!(
            c,
            "AWS_SECRET_ACCESS_KEY=*** PGPASSWORD=*** WALSEAL_REPO=s3://b/p walseal wal-push %p"
        );
    }

    #[test]
    fn credentials_in_commands_and_urls_are_masked() {
        let c = redact_command(
            "WALSEAL_KEY=00ff AZURE_STORAGE_ACCOUNT_KEY=abc== WALSEAL_KEY_FILE=/etc/walseal/k WALSEAL_IDENTITY_FILE=/etc/walseal/id PGPASSWORD='two words' walseal wal-push %p",
        );
        assert_eq!(
            c,
            "WALSEAL_KEY=*** AZURE_STORAGE_ACCOUNT_KEY=*** WALSEAL_KEY_FILE=/etc/walseal/k WALSEAL_IDENTITY_FILE=/etc/walseal/id PGPASSWORD=*** walseal wal-push %p"
        );
        let c = redact_command(
            "WALSEAL_REPO='az://c/p?sv=2024&sig=SIGSECRET' walseal --repo s3://AKIA:PWSECRET@bucket/p wal-fetch %f %p",
        );
        assert_eq!(
            c,
            "WALSEAL_REPO='az://c/p?sv=***&sig=***' walseal --repo s3://***@bucket/p wal-fetch %f %p"
        );
        assert_eq!(
            redact_url("https://user:pw@host/p?sig=abc&sv=1#frag"),
            "https://***@host/p?sig=***&sv=***#frag"
        );
        assert_eq!(
            redact_url("file:///var/lib/walseal"),
            "file:///var/lib/walseal"
        );
        assert_eq!(redact_url("az://c/p?"), "az://c/p?");
        assert_eq!(redact_command("a\\ b 'c d\" e"), "a\\ b 'c d\" e");
    }
}
