//! Restoring `pg_dumpall --globals-only` SQL (roles, their settings and memberships,
//! tablespaces) without `psql`: a repository someone else can write to could put `\!` (a
//! shell) or `\o`/`\copy` (files) into that script, and `psql` would run them in the
//! agent. The script is split into statements here (quotes, identifiers, comments and
//! dollar quotes respected) and each is sent to the server as it is, so no client-side
//! command can run; a backslash outside a literal is refused, but for the
//! `\restrict`/`\unrestrict` lines current `pg_dumpall` writes around its output.
//! As with `psql -v ON_ERROR_STOP=0`, a statement that fails (a role that exists already)
//! does not stop the rest.

use crate::agent::AgentError;

/// The statements of a globals script, in order, without the `\restrict` lines.
pub fn statements(script: &str) -> Result<Vec<String>, AgentError> {
    let bytes = script.as_bytes();
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\'' => {
                let escapes =
                    i > 0 && matches!(bytes[i - 1], b'E' | b'e') && (i < 2 || !ident(bytes, i - 2));
                i = skip_quoted(bytes, i, b'\'', escapes);
            }
            b'"' => i = skip_quoted(bytes, i, b'"', false),
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                i = bytes[i..]
                    .iter()
                    .position(|&b| b == b'\n')
                    .map_or(bytes.len(), |p| i + p + 1);
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => i = skip_block_comment(bytes, i),
            b'$' if i == 0 || !ident(bytes, i - 1) => match dollar_tag(bytes, i) {
                Some(tag) => {
                    let body = i + tag.len();
                    i = find(bytes, body, tag).map_or(bytes.len(), |end| end + tag.len());
                }
                None => i += 1,
            },
            b';' => {
                push(&mut out, &script[start..=i]);
                i += 1;
                start = i;
            }
            b'\\' => {
                let line_start = script[..i].rfind('\n').map_or(0, |p| p + 1);
                let line_end = script[i..].find('\n').map_or(script.len(), |p| i + p);
                let line = &script[line_start..line_end];
                // Allowed only alone on its line, with nothing of a statement before it.
                let mut pending = Vec::new();
                push(&mut pending, &script[start.min(line_start)..line_start]);
                if start > line_start || !pending.is_empty() || !is_restrict(line) {
                    return Err(AgentError::Corrupt(format!(
                        "the backup's globals.sql holds a psql command ({:?}): refusing to run it",
                        cut(line.trim(), 60)
                    )));
                }
                i = line_end;
                start = i;
            }
            _ => i += 1,
        }
    }
    push(&mut out, &script[start..]);
    Ok(out)
}

/// `\restrict KEY` or `\unrestrict KEY` alone on a line: what `pg_dumpall` writes so that
/// `psql` runs no other backslash command in between.
fn is_restrict(line: &str) -> bool {
    let mut words = line.split_whitespace();
    matches!(
        (words.next(), words.next(), words.next()),
        (Some("\\restrict" | "\\unrestrict"), Some(key), None)
            if key.bytes().all(|b| b.is_ascii_alphanumeric())
    )
}

/// Adds a statement unless it holds nothing but blanks and comments.
fn push(out: &mut Vec<String>, statement: &str) {
    let mut rest = statement.trim();
    while let Some(after) = rest.strip_prefix("--") {
        rest = after.split_once('\n').map_or("", |(_, r)| r).trim_start();
    }
    if !rest.is_empty() && rest != ";" {
        out.push(statement.trim().to_string());
    }
}

fn ident(bytes: &[u8], at: usize) -> bool {
    bytes[at].is_ascii_alphanumeric() || bytes[at] == b'_' || bytes[at] >= 0x80 || bytes[at] == b'$'
}

/// Past the closing `quote` of the literal that opens at `at` (`''`/`""` doubled inside;
/// with `escapes`, a backslash escapes the next byte as in `E'…'`).
fn skip_quoted(bytes: &[u8], at: usize, quote: u8, escapes: bool) -> usize {
    let mut i = at + 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if escapes => i += 2,
            b if b == quote && bytes.get(i + 1) == Some(&quote) => i += 2,
            b if b == quote => return i + 1,
            _ => i += 1,
        }
    }
    bytes.len()
}

/// Past the end of the (nestable) block comment that opens at `at`.
fn skip_block_comment(bytes: &[u8], at: usize) -> usize {
    let mut depth = 0usize;
    let mut i = at;
    while i + 1 < bytes.len() {
        match (bytes[i], bytes[i + 1]) {
            (b'/', b'*') => {
                depth += 1;
                i += 2;
            }
            (b'*', b'/') => {
                depth -= 1;
                i += 2;
                if depth == 0 {
                    return i;
                }
            }
            _ => i += 1,
        }
    }
    bytes.len()
}

/// The dollar-quote tag (`$$`, `$body$`) that opens at `at`, if one does.
fn dollar_tag(bytes: &[u8], at: usize) -> Option<&[u8]> {
    let mut i = at + 1;
    while i < bytes.len() && bytes[i] != b'$' {
        let ok = bytes[i].is_ascii_alphabetic()
            || bytes[i] == b'_'
            || bytes[i] >= 0x80
            || (i > at + 1 && bytes[i].is_ascii_digit());
        if !ok {
            return None;
        }
        i += 1;
    }
    (i < bytes.len()).then(|| &bytes[at..=i])
}

fn find(bytes: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    bytes[from..]
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| from + p)
}

fn cut(text: &str, chars: usize) -> String {
    text.chars().take(chars).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dumpall_script_splits_into_its_statements() {
        let script = "\\restrict abc123\n\
            --\n-- PostgreSQL database cluster dump\n--\n\n\
            SET default_transaction_read_only = off;\n\
            CREATE ROLE shop;\n\
            ALTER ROLE shop WITH NOSUPERUSER LOGIN PASSWORD 'SCRAM-SHA-256$4096:a$b:c';\n\
            COMMENT ON ROLE shop IS 'it''s; a\n\\! not a command';\n\
            ALTER ROLE shop SET search_path TO \"a;b\", public;\n\
            /* a /* nested */ ; comment */ GRANT pg_read_all_data TO shop;\n\
            DO $body$ BEGIN PERFORM ';'; END $body$;\n\
            SELECT E'\\'; \\\\';\n\
            \\unrestrict abc123\n";
        let statements = statements(script).expect("statements");
        assert_eq!(
            statements,
            [
                "--\n-- PostgreSQL database cluster dump\n--\n\nSET default_transaction_read_only = off;",
                "CREATE ROLE shop;",
                "ALTER ROLE shop WITH NOSUPERUSER LOGIN PASSWORD 'SCRAM-SHA-256$4096:a$b:c';",
                "COMMENT ON ROLE shop IS 'it''s; a\n\\! not a command';",
                "ALTER ROLE shop SET search_path TO \"a;b\", public;",
                "/* a /* nested */ ; comment */ GRANT pg_read_all_data TO shop;",
                "DO $body$ BEGIN PERFORM ';'; END $body$;",
                "SELECT E'\\'; \\\\';",
            ]
        );
    }

    #[test]
    fn psql_commands_are_refused_wherever_they_hide() {
        for script in [
            "\\! touch /tmp/x\n",
            "CREATE ROLE a;\n\\! id\n",
            "CREATE ROLE a; \\! id\n",
            "SELECT 1 \\g /tmp/out\n",
            "\\restrict abc\n\\o /tmp/out\n\\unrestrict abc\n",
            "\\restrict abc ; \\! id\n",
            "COMMENT ON ROLE a IS 'x';\n\\copy t to '/tmp/t'\n",
        ] {
            let err = statements(script).expect_err(script);
            assert!(err.to_string().contains("holds a psql command"), "{err}");
        }
    }
}
