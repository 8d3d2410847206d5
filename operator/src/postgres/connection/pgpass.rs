//! The password from a libpq password file (`PGPASSFILE`, default `~/.pgpass`).

use std::path::PathBuf;

use super::ConnectionArgs;

/// The password for these settings from a libpq password file, if any line matches.
pub(super) fn password_from_file(args: &ConnectionArgs) -> Option<String> {
    let path = std::env::var_os("PGPASSFILE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".pgpass")))?;
    let text = std::fs::read_to_string(path).ok()?;
    let wanted = [
        args.pg_host.as_str(),
        &args.pg_port.to_string(),
        &args.pg_database,
        &args.pg_user,
    ]
    .map(str::to_string);
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .find_map(|line| {
            let fields = split_pgpass_line(line);
            if fields.len() != 5 {
                return None;
            }
            let matches = fields[..4]
                .iter()
                .zip(&wanted)
                .all(|(field, value)| field == "*" || field == value);
            matches.then(|| fields[4].clone())
        })
}

/// Splits a `.pgpass` line on unescaped `:`; `\:` and `\\` are literal.
fn split_pgpass_line(line: &str) -> Vec<String> {
    let mut fields = Vec::new();
    let mut current = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => current.extend(chars.next()),
            ':' => fields.push(std::mem::take(&mut current)),
            _ => current.push(c),
        }
    }
    fields.push(current);
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pgpass_lines_split_with_escapes() {
        assert_eq!(
            split_pgpass_line(r"db\:host:5432:*:me:pa\:ss\\"),
            ["db:host", "5432", "*", "me", r"pa:ss\"]
        );
    }
}
