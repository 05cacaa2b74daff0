//! Snapshot tests of what the CLI prints: help, and `expand` as a table and as
//! JSON (offline, deterministic). Run with UPDATE_SNAPSHOTS=1 to rewrite the
//! files in tests/snapshots/ after an intended change, then review the diff.

use std::path::PathBuf;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_liandan");

fn snapshot(name: &str, actual: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/snapshots")
        .join(name);
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|_| {
        panic!(
            "no snapshot {}; run with UPDATE_SNAPSHOTS=1 and review it",
            path.display()
        )
    });
    assert_eq!(
        actual,
        expected,
        "output differs from {} (UPDATE_SNAPSHOTS=1 rewrites it)",
        path.display()
    );
}

fn run(args: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(args)
        .env("COLUMNS", "100")
        .env_remove("LIANDAN_COORDINATOR")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn spec() -> tempfile::TempPath {
    let f = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
    std::fs::write(f.path(), "name: snap\nprogram: train.py\nmethod: grid\nparameters:\n  lr: {values: [0.1, 0.001]}\n  opt: {values: [adam, sgd]}\nliandan:\n  seeds: 2\n").unwrap();
    f.into_temp_path()
}

#[test]
fn help_texts() {
    snapshot("help.txt", &run(&["--help"]));
    snapshot("help-results.txt", &run(&["results", "--help"]));
    snapshot("help-logs.txt", &run(&["logs", "--help"]));
}

#[test]
fn expand_as_table_json_and_csv() {
    let p = spec();
    let path = p.to_str().unwrap();
    snapshot("expand-table.txt", &run(&["expand", path]));
    snapshot("expand-json.txt", &run(&["expand", path, "-o", "json"]));
    snapshot("expand-csv.txt", &run(&["expand", path, "-o", "csv"]));
}
