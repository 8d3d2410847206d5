//! Values read from Secrets never leave the process. Every text that goes out — error
//! messages and results ([`crate::agent::error_chain`]), log lines ([`Writer`]), the
//! archiver's `/status` — passes through [`text`], which replaces each registered value.
//!
//! Passwords, access keys, tokens and encryption keys are replaced wherever they appear. A
//! user name is replaced where PostgreSQL and its tools name a role (`user "…"`,
//! `role "…"`), which is where a server's refusal names it; pgbackup's own messages never
//! name it. (Replacing it everywhere would hide the `postgres` database of every cluster
//! whose superuser is `postgres`.)
//! The agent registers the values of the variables the operator fills from Secrets
//! ([`SECRET_VARIABLES`]); the operator registers what it reads for its own sessions.

use std::{
    borrow::Cow,
    io::Write,
    sync::{PoisonError, RwLock},
};

/// Environment variables whose values the operator takes from Secrets, and how each is
/// redacted: `true` anywhere, `false` where quoted.
pub const SECRET_VARIABLES: &[(&str, bool)] = &[
    ("PGUSER", false),
    ("PGPASSWORD", true),
    ("AWS_ACCESS_KEY_ID", true),
    ("AWS_SECRET_ACCESS_KEY", true),
    ("AWS_SESSION_TOKEN", true),
    ("PGBACKUP_ENCRYPTION_KEY", true),
];

/// What replaces a value.
pub const REDACTED: &str = "[redacted]";

#[derive(Default)]
struct Values {
    anywhere: Vec<String>,
    quoted: Vec<String>,
}

static VALUES: RwLock<Values> = RwLock::new(Values {
    anywhere: Vec::new(),
    quoted: Vec::new(),
});

/// Registers a value to replace wherever it appears (each line of a multi-line value on
/// its own).
pub fn secret(value: &str) {
    let mut values = VALUES.write().unwrap_or_else(PoisonError::into_inner);
    for line in value.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if !values.anywhere.iter().any(|v| v == line) {
            values.anywhere.push(line.to_string());
        }
    }
    // Longest first, so that a value containing another is replaced whole.
    values.anywhere.sort_by_key(|v| std::cmp::Reverse(v.len()));
}

/// Registers a name (a user name) to replace where it is quoted.
pub fn name(value: &str) {
    let mut values = VALUES.write().unwrap_or_else(PoisonError::into_inner);
    if !value.is_empty() && !values.quoted.iter().any(|v| v == value) {
        values.quoted.push(value.to_string());
    }
}

/// Registers the values of [`SECRET_VARIABLES`] that are set.
pub fn from_environment() {
    for (variable, anywhere) in SECRET_VARIABLES {
        if let Ok(value) = std::env::var(variable) {
            if *anywhere {
                secret(&value);
            } else {
                name(&value);
            }
        }
    }
}

/// `text` with every registered value replaced by [`REDACTED`].
pub fn text(text: &str) -> Cow<'_, str> {
    let values = VALUES.read().unwrap_or_else(PoisonError::into_inner);
    let mut out = Cow::Borrowed(text);
    for value in &values.anywhere {
        if out.contains(value.as_str()) {
            out = Cow::Owned(out.replace(value.as_str(), REDACTED));
        }
    }
    for value in &values.quoted {
        // As PostgreSQL names a role: `user "…"`, `role "…"`; also inside JSON strings,
        // where the quotes are escaped.
        for word in ["user", "role"] {
            for quote in ["\"", "'", "\\\""] {
                let named = format!("{word} {quote}{value}{quote}");
                if out.contains(&named) {
                    let hidden = format!("{word} {quote}{REDACTED}{quote}");
                    out = Cow::Owned(out.replace(&named, &hidden));
                }
            }
        }
    }
    out
}

/// Standard error with registered values redacted: the log writer.
#[derive(Debug, Default, Clone, Copy)]
pub struct Writer;

impl Write for Writer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let line = String::from_utf8_lossy(buf);
        std::io::stderr().write_all(text(&line).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_go_everywhere_and_names_where_a_role_is_named() {
        secret("tok-3141592653");
        name("app-token-user");
        let said = text(
            "FATAL: password authentication failed for user \"app-token-user\" (key tok-3141592653); \
             database \"app-token-user\"",
        );
        assert_eq!(
            said,
            "FATAL: password authentication failed for user \"[redacted]\" (key [redacted]); \
             database \"app-token-user\""
        );
        let json = text(r#"{"message":"role \"app-token-user\" does not exist"}"#);
        assert_eq!(json, r#"{"message":"role \"[redacted]\" does not exist"}"#);
        assert_eq!(text("nothing to hide"), "nothing to hide");
    }
}
