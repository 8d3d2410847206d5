//! What the documentation shows is what the product accepts. Every fenced ```yaml block of
//! `README.md`, `docs/**/*.md` (but the generated `docs/reference/`) and
//! `manifests/**/*.md` that holds a pgbackup object goes through the checks of the
//! examples under `manifests/` (schema, CEL rules, typed read-back, operator refusals);
//! every `pgbackup …`, `kubectl pgbackup …` and `cargo run -p pgbackup -- …` command of a
//! ```sh, ```bash or ```shell block is parsed by the real command-line definitions, so a
//! flag that does not exist or a missing argument fails here with the file and line a user
//! would copy it from. Commands with placeholders (`<name>`, `[--flag]`, `{major}`, `…`)
//! or a pipe are skipped and counted.

mod support;

use std::{
    fs,
    path::{Path, PathBuf},
};

use clap::{Parser, error::ErrorKind};
use pgbackup::{cli::Cli, plugin::PluginCli};
use serde_json::Value;
use support::examples::{is_pgbackup_object, object_problems};

/// A fenced code block: its language, and its lines with the line number of each.
#[derive(Debug)]
struct Block {
    language: String,
    lines: Vec<(usize, String)>,
}

/// The fence a line opens or closes a block with (three or more backticks or tildes), and
/// what follows it.
fn fence(line: &str) -> Option<(&str, &str)> {
    let trimmed = line.trim_start();
    let mark = trimmed.chars().next().filter(|c| *c == '`' || *c == '~')?;
    let length = trimmed.len() - trimmed.trim_start_matches(mark).len();
    (length >= 3).then(|| trimmed.split_at(length))
}

/// The fenced code blocks of a Markdown text. A block indented in a list has that
/// indentation taken off its lines.
fn fenced_blocks(text: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut open: Option<(String, usize, Block)> = None; // fence, indentation, block
    for (i, line) in text.lines().enumerate() {
        let indent = line.len() - line.trim_start().len();
        match open.take() {
            None => {
                if let Some((mark, info)) = fence(line) {
                    let language = info
                        .split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_lowercase();
                    let block = Block {
                        language,
                        lines: Vec::new(),
                    };
                    open = Some((mark.to_string(), indent, block));
                }
            }
            Some((mark, fence_indent, mut block)) => {
                let closes = fence(line).is_some_and(|(m, rest)| {
                    m.starts_with(mark.as_str()) && rest.trim().is_empty()
                });
                if closes {
                    blocks.push(block);
                } else {
                    let cut = indent.min(fence_indent);
                    block.lines.push((i + 1, line[cut..].to_string()));
                    open = Some((mark, fence_indent, block));
                }
            }
        }
    }
    blocks
}

/// The Markdown files the checks read: `README.md`, `docs/` (without the generated
/// `docs/reference/` when `with_reference` is false) and `manifests/`, as paths relative to
/// the repository root.
fn markdown_files(with_reference: bool) -> Vec<(String, PathBuf)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let mut entries: Vec<PathBuf> = fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .filter_map(Result::ok)
            .map(|e| e.path())
            .collect();
        entries.sort();
        for path in entries {
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "md") {
                out.push(path);
            }
        }
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = vec![root.join("README.md")];
    walk(&root.join("docs"), &mut files);
    walk(&root.join("manifests"), &mut files);
    files
        .into_iter()
        .map(|path| {
            let shown = path
                .strip_prefix(&root)
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_else(|_| path.display().to_string());
            (shown, path)
        })
        .filter(|(shown, _)| with_reference || !shown.starts_with("docs/reference/"))
        .collect()
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// What the YAML blocks of one Markdown text hold.
#[derive(Debug, Default)]
struct YamlTally {
    /// pgbackup objects checked.
    checked: usize,
    /// Documents that are other objects or fragments.
    other: usize,
    /// Problems, each `file:line: …`.
    problems: Vec<String>,
}

/// Checks every pgbackup object in the ```yaml blocks of `text` (shown as `file`).
fn check_yaml_blocks(file: &str, text: &str, tally: &mut YamlTally) {
    for block in fenced_blocks(text)
        .into_iter()
        .filter(|b| b.language == "yaml" || b.language == "yml")
    {
        // Documents split at `---` lines, each with the line it starts on.
        let mut documents: Vec<(usize, String)> = Vec::new();
        for (number, line) in &block.lines {
            if line.trim_end() == "---" || line.starts_with("--- ") {
                documents.push((number + 1, String::new()));
                continue;
            }
            if documents.is_empty() {
                documents.push((*number, String::new()));
            }
            if let Some((_, text)) = documents.last_mut() {
                text.push_str(line);
                text.push('\n');
            }
        }
        for (line, document) in documents {
            let value = match serde_yaml::from_str::<Value>(&document) {
                Ok(value) => value,
                Err(e) => {
                    tally.problems.push(format!(
                        "{file}:{line}: the YAML block does not parse, kubectl apply would refuse it: {e}"
                    ));
                    continue;
                }
            };
            if value.is_null() {
                continue;
            }
            if !is_pgbackup_object(&value) {
                tally.other += 1;
                continue;
            }
            let name = format!(
                "{file}:{line} ({} {})",
                value["kind"].as_str().unwrap_or("?"),
                value["metadata"]["name"].as_str().unwrap_or("?")
            );
            tally.checked += 1;
            tally.problems.extend(object_problems(&name, &value));
        }
    }
}

/// What the shell blocks of one Markdown text hold.
#[derive(Debug, Default)]
struct ShellTally {
    /// Commands parsed by the command-line definitions.
    checked: usize,
    /// Templates (placeholders, pipes) not parsed, each `file:line: command`.
    skipped: Vec<String>,
    /// Problems, each `file:line: …`.
    problems: Vec<String>,
}

/// The command lines of a shell block: continuation lines joined, each with the line it
/// starts on.
fn command_lines(block: &Block) -> Vec<(usize, String)> {
    let mut commands = Vec::new();
    let mut pending: Option<(usize, String)> = None;
    for (number, line) in &block.lines {
        let (start, mut joined) = pending.take().unwrap_or((*number, String::new()));
        joined.push_str(line.trim());
        match joined.strip_suffix('\\') {
            Some(head) => pending = Some((start, format!("{} ", head.trim_end()))),
            None => commands.push((start, joined)),
        }
    }
    commands.extend(pending);
    commands
}

/// The words of a command as a POSIX shell splits them, up to a comment or a command
/// separator (`;`, `&`, `>`): quotes and backslashes are taken off.
fn shell_words(command: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = command.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' => {
                words.extend(word.take());
            }
            '#' if word.is_none() => break,
            ';' | '&' | '>' => break,
            '\'' => {
                let w = word.get_or_insert_with(String::new);
                for q in chars.by_ref() {
                    if q == '\'' {
                        break;
                    }
                    w.push(q);
                }
            }
            '"' => {
                let w = word.get_or_insert_with(String::new);
                while let Some(q) = chars.next() {
                    match q {
                        '"' => break,
                        '\\' if chars.peek().is_some_and(|n| "\"\\$`".contains(*n)) => {
                            w.extend(chars.next());
                        }
                        _ => w.push(q),
                    }
                }
            }
            '\\' => {
                let w = word.get_or_insert_with(String::new);
                w.extend(chars.next());
            }
            _ => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    words
}

/// The command without a trailing comment (a `#` that starts a word outside quotes).
fn without_comment(command: &str) -> &str {
    let (mut single, mut double, mut previous) = (false, false, ' ');
    for (i, c) in command.char_indices() {
        match c {
            '\'' if !double => single = !single,
            '"' if !single => double = !double,
            '#' if !single && !double && previous.is_whitespace() => {
                return command[..i].trim_end();
            }
            _ => {}
        }
        previous = c;
    }
    command.trim_end()
}

/// Whether a command shows placeholders rather than a command to run as written.
fn is_template(command: &str) -> bool {
    command.contains(['[', '<', '|', '{', '…']) || command.contains("...")
}

/// Why the command-line definition refuses `words`, if it does; `--help` and
/// `--version` are accepted.
fn refusal<P: Parser>(words: &[String]) -> Option<String> {
    match P::try_parse_from(words) {
        Ok(_) => None,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => None,
        Err(e) => Some(
            e.to_string()
                .lines()
                .filter(|l| !l.trim().is_empty())
                .take(3)
                .collect::<Vec<_>>()
                .join(" / "),
        ),
    }
}

/// The arguments `cargo run -p pgbackup -- …` passes to the `pgbackup` binary.
fn cargo_run_arguments(command: &str) -> Option<&str> {
    let (cargo, arguments) = command.strip_prefix("cargo run ")?.split_once(" -- ")?;
    let words = shell_words(cargo);
    words
        .windows(2)
        .any(|w| (w[0] == "-p" || w[0] == "--package") && w[1] == "pgbackup")
        .then_some(arguments)
}

/// Parses every `pgbackup …`, `kubectl pgbackup …` and `cargo run -p pgbackup -- …`
/// command of the shell blocks of `text` (shown as `file`).
fn check_shell_blocks(file: &str, text: &str, tally: &mut ShellTally) {
    for block in fenced_blocks(text)
        .into_iter()
        .filter(|b| ["sh", "bash", "shell", "console"].contains(&b.language.as_str()))
    {
        for (line, command) in command_lines(&block) {
            let command = without_comment(command.trim_start());
            let command = command.strip_prefix("$ ").unwrap_or(command).trim_start();
            let (plugin, arguments) = if let Some(rest) = command.strip_prefix("kubectl pgbackup ")
            {
                (true, rest)
            } else if let Some(rest) = command
                .strip_prefix("pgbackup ")
                .or_else(|| cargo_run_arguments(command))
            {
                (false, rest)
            } else {
                continue;
            };
            if is_template(command) {
                tally.skipped.push(format!("{file}:{line}: {command}"));
                continue;
            }
            // The program's name as clap sees it, then the words the shell passes on.
            let program = if plugin {
                "kubectl pgbackup"
            } else {
                "pgbackup"
            };
            let words: Vec<String> = std::iter::once(program.to_string())
                .chain(shell_words(arguments))
                .collect();
            let refused = if plugin {
                refusal::<PluginCli>(&words)
            } else {
                refusal::<Cli>(&words)
            };
            tally.checked += 1;
            if let Some(why) = refused {
                tally.problems.push(format!(
                    "{file}:{line}: `{command}` fails as a user types it: {why}"
                ));
            }
        }
    }
}

#[test]
fn every_pgbackup_object_in_the_docs_is_valid() {
    let mut tally = YamlTally::default();
    for (shown, path) in markdown_files(false) {
        check_yaml_blocks(&shown, &read(&path), &mut tally);
    }
    println!(
        "YAML blocks: {} pgbackup objects checked, {} other documents (Secrets, fragments) not checked",
        tally.checked, tally.other
    );
    assert!(
        tally.problems.is_empty(),
        "pgbackup objects in the docs that a user would see refused:\n{}",
        tally.problems.join("\n")
    );
    assert!(
        tally.checked >= 5,
        "only {} pgbackup objects found in the docs' YAML blocks: the block scanner misses them",
        tally.checked
    );
}

#[test]
fn every_pgbackup_command_in_the_docs_parses() {
    let mut tally = ShellTally::default();
    for (shown, path) in markdown_files(true) {
        check_shell_blocks(&shown, &read(&path), &mut tally);
    }
    println!(
        "shell blocks: {} pgbackup commands checked, {} skipped as templates",
        tally.checked,
        tally.skipped.len()
    );
    for skipped in &tally.skipped {
        println!("  skipped {skipped}");
    }
    assert!(
        tally.problems.is_empty(),
        "pgbackup commands in the docs that fail as written:\n{}",
        tally.problems.join("\n")
    );
    assert!(
        tally.checked >= 5,
        "only {} pgbackup commands found in the docs' shell blocks: the block scanner misses them",
        tally.checked
    );
}

#[test]
fn the_checks_name_file_and_line_of_a_wrong_block() {
    let page = r#"# A page

```yaml
apiVersion: pgbackup.io/v1alpha1
kind: PostgresBackup
metadata: {name: good}
spec:
  method: logical
  target: {statefulSet: pg, credentialsSecret: {name: pg-auth}}
  repository: {s3: {bucket: backups}}
---
apiVersion: pgbackup.io/v1alpha1
kind: PostgresBackup
metadata: {name: typo}
spec:
  method: logical
  target: {statefullSet: pg, credentialsSecret: {name: pg-auth}}
  repository: {s3: {bucket: backups}}
```

- in a list:

  ```sh
  $ pgbackup list --repository s3://backups/prod --server shop-db   # fine
  pgbackup list --repository s3://backups/prod \
    --server shop-db --no-such-flag
  pgbackup restore --repository <url> --server <name>
  kubectl pgbackup restore backupschedule/nightly --to "10 minutes ago" -n shop
  kubectl pgbackup restore backupschedule/nightly
  cargo run -p pgbackup -- crd --output-dir crds && cp crds/*.yaml elsewhere/
  ```
"#;
    let mut yaml = YamlTally::default();
    check_yaml_blocks("page.md", page, &mut yaml);
    assert_eq!(yaml.checked, 2, "both objects of the block are read");
    assert_eq!(
        yaml.problems.len(),
        yaml.problems
            .iter()
            .filter(|p| p.starts_with("page.md:12 (PostgresBackup typo)"))
            .count(),
        "only the misspelt object is refused, named by the line it starts on: {:?}",
        yaml.problems
    );
    assert!(
        !yaml.problems.is_empty(),
        "a misspelt field (statefullSet) is refused"
    );

    let mut shell = ShellTally::default();
    check_shell_blocks("page.md", page, &mut shell);
    assert_eq!(shell.checked, 5, "five commands are parsed: {shell:?}");
    assert_eq!(
        shell.skipped,
        ["page.md:27: pgbackup restore --repository <url> --server <name>"],
        "a command with placeholders is skipped and counted"
    );
    assert_eq!(
        shell.problems.len(),
        2,
        "an unknown flag and a missing --to are refused: {:?}",
        shell.problems
    );
    assert!(
        shell.problems[0].starts_with("page.md:25: ")
            && shell.problems[0].contains("--no-such-flag"),
        "an unknown flag on a continued line is reported at the line the command starts: {}",
        shell.problems[0]
    );
    assert!(
        shell.problems[1].starts_with("page.md:29: ") && shell.problems[1].contains("--to"),
        "a missing required option of the plugin is named: {}",
        shell.problems[1]
    );
}

#[test]
fn shell_words_are_split_as_a_shell_splits_them() {
    assert_eq!(
        shell_words(
            r#"kubectl pgbackup restore x --to "10 minutes ago" --name 'a b' c\ d > out.txt"#
        ),
        [
            "kubectl",
            "pgbackup",
            "restore",
            "x",
            "--to",
            "10 minutes ago",
            "--name",
            "a b",
            "c d"
        ]
    );
    assert_eq!(
        without_comment("pgbackup list --server 'a # b'   # the list"),
        "pgbackup list --server 'a # b'"
    );
}
