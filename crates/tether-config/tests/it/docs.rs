//! docs/config.md is the reference generated from the key table.

use std::path::PathBuf;

fn reference_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/config.md")
}

/// Fails when docs/config.md differs from what the key table generates;
/// `UPDATE_DOCS=1 cargo test -p tether-config` rewrites it.
#[test]
fn docs_config_md_is_up_to_date() {
    let path = reference_path();
    let generated = tether_config::reference_markdown();
    if std::env::var_os("UPDATE_DOCS").is_some_and(|v| v == "1") {
        std::fs::write(&path, &generated).unwrap();
        return;
    }
    let current = std::fs::read_to_string(&path).unwrap_or_default();
    if current != generated {
        let line = current
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .map_or(
                current.lines().count().min(generated.lines().count()),
                |i| i,
            )
            + 1;
        panic!(
            "docs/config.md is out of date with the key table (first difference at line \
             {line}); regenerate it with:\n\n    UPDATE_DOCS=1 cargo test -p tether-config\n"
        );
    }
}

/// The reference's sample stack is a valid file.
#[test]
fn the_reference_example_loads() {
    let text = tether_config::reference_markdown();
    let start = text.find("```toml\n[defaults]").unwrap() + "```toml\n".len();
    let end = start + text[start..].find("```").unwrap();
    let dir = crate::Dir::new();
    let loaded = dir.ok(&text[start..end]);
    assert_eq!(loaded.stack.services.len(), 2);
}
