//! The generated references: `docs/reference/` matches `pgbackup reference`, and they
//! name what users look for.

use std::{fs, path::PathBuf};

#[test]
fn docs_reference_matches_generated_output() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/reference");
    for (name, text) in pgbackup::reference::files().expect("references render") {
        let on_disk = fs::read_to_string(dir.join(name)).unwrap_or_default();
        assert!(
            on_disk == text,
            "docs/reference/{name} differs from the generated text; regenerate with `cargo run -p pgbackup -- reference --output-dir docs/reference`"
        );
    }
}

#[test]
fn the_references_cover_every_subcommand_and_field() {
    let cli = pgbackup::reference::cli_markdown();
    for needle in [
        "## `pgbackup wal-push`",
        "## `pgbackup restore`",
        "`--snapshot-data`",
        "`PGBACKUP_CONTROL_DATA`",
        "`PGBACKUP_LOG_FORMAT`",
    ] {
        assert!(cli.contains(needle), "cli.md lacks {needle}");
    }
    let api = pgbackup::reference::api_markdown().expect("api");
    for needle in [
        "## PointInTimeRestore",
        "`spec.waitTimeout`",
        "`spec.includeVolumes`",
        "`status.replacedVolumes[].persistentVolume`",
        "`spec.schedule`",
    ] {
        assert!(api.contains(needle), "api.md lacks {needle}");
    }
}

#[test]
fn every_table_row_has_the_cells_of_its_header() {
    let cells = |line: &str| line.replace("\\|", "").matches('|').count();
    let api = pgbackup::reference::api_markdown().expect("api");
    for (name, text) in [
        ("cli.md", pgbackup::reference::cli_markdown()),
        ("api.md", api),
    ] {
        let mut header = None;
        for line in text.lines() {
            if !line.starts_with('|') {
                header = None;
                continue;
            }
            let expected = *header.get_or_insert(cells(line));
            assert_eq!(cells(line), expected, "{name}: {line}");
        }
    }
}
