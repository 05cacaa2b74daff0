//! The README's command table and exit-code table hold against the CLI
//! itself: every command `liandan --help` lists has a row and every row a
//! command; every flag a command takes (`liandan CMD --help`) is in its row
//! and every flag a row shows exists; the exit codes the table lists are
//! exactly the ones the binaries use (`liandan_common::exit`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_liandan");

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn help(args: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(args)
        .arg("-h")
        .env("COLUMNS", "200")
        .env_remove("LIANDAN_COORDINATOR")
        .output()
        .expect("run liandan");
    assert!(out.status.success(), "liandan {args:?} --help failed");
    String::from_utf8(out.stdout).expect("utf-8")
}

/// The lines of a help section (`Commands:`, `Options:`) up to the next blank line.
fn section<'a>(text: &'a str, title: &str) -> Vec<&'a str> {
    text.lines()
        .skip_while(|l| l.trim() != title)
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .collect()
}

/// Subcommand names in a help text, without `help`.
fn commands(text: &str) -> Vec<String> {
    section(text, "Commands:")
        .iter()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(String::from)
        .collect()
}

/// The long flags of a command, without the global ones and --help.
fn flags(text: &str) -> BTreeSet<String> {
    const GLOBAL: &[&str] = &[
        "--coordinator",
        "--token-file",
        "--ca-cert",
        "--help",
        "--version",
    ];
    section(text, "Options:")
        .iter()
        .filter_map(|l| {
            l.split(|c: char| c.is_whitespace() || c == ',' || c == '=' || c == '<')
                .find(|w| w.starts_with("--"))
        })
        .filter(|f| !GLOBAL.contains(f))
        .map(String::from)
        .collect()
}

/// The command table: each row's commands (`logs`, `tokens add`) with the
/// flags its code spans show.
fn readme_commands() -> BTreeMap<String, BTreeSet<String>> {
    let readme = std::fs::read_to_string(root().join("README.md")).expect("README.md");
    let mut out = BTreeMap::new();
    let table = readme
        .lines()
        .skip_while(|l| !l.starts_with("| command | what it does |"))
        .skip(2)
        .take_while(|l| l.starts_with('|'));
    for row in table {
        let cell = row
            .split(" | ")
            .next()
            .unwrap_or("")
            .trim_start_matches("| ");
        for span in cell.split('`').skip(1).step_by(2) {
            let span = span.strip_prefix("liandan ").unwrap_or(span);
            let words: Vec<&str> = span.split_whitespace().collect();
            let Some(first) = words.first() else { continue };
            let name = if matches!(*first, "tokens" | "certs") && words.len() > 1 {
                format!("{first} {}", words[1])
            } else {
                first.to_string()
            };
            let flags: BTreeSet<String> = span
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
                .filter(|w| w.starts_with("--") && w.len() > 2)
                .map(String::from)
                .collect();
            out.entry(name).or_insert_with(BTreeSet::new).extend(flags);
        }
    }
    out
}

#[test]
fn the_readme_command_table_matches_the_cli() {
    let readme = readme_commands();
    let mut cli = BTreeMap::new();
    for c in commands(&help(&[])) {
        let sub = commands(&help(&[&c]));
        if sub.is_empty() {
            cli.insert(c.clone(), flags(&help(&[&c])));
        } else {
            for s in sub {
                cli.insert(format!("{c} {s}"), flags(&help(&[&c, &s])));
            }
        }
    }
    let (a, b): (BTreeSet<_>, BTreeSet<_>) = (cli.keys().collect(), readme.keys().collect());
    assert_eq!(
        a.difference(&b).collect::<Vec<_>>(),
        Vec::<&&String>::new(),
        "commands the CLI has and the README's table does not"
    );
    assert_eq!(
        b.difference(&a).collect::<Vec<_>>(),
        Vec::<&&String>::new(),
        "rows of the README's table for commands the CLI does not have"
    );
    let mut wrong = Vec::new();
    for (cmd, want) in &cli {
        let shown = &readme[cmd];
        // `-o/--output` is described once for every command, below the table.
        for f in want.iter().filter(|f| *f != "--output") {
            if !shown.contains(f) {
                wrong.push(format!("{cmd}: {f} is a flag but not in the README's row"));
            }
        }
        for f in shown {
            if !want.contains(f) {
                wrong.push(format!(
                    "{cmd}: the README shows {f}, which it does not take"
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn the_readme_exit_codes_are_the_ones_the_binaries_use() {
    let readme = std::fs::read_to_string(root().join("README.md")).expect("README.md");
    let table: BTreeSet<i32> = readme
        .lines()
        .skip_while(|l| !l.starts_with("### Exit codes"))
        .skip_while(|l| !l.starts_with("| code |"))
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .filter_map(|l| l.trim_start_matches("| ").split(' ').next()?.parse().ok())
        .collect();
    let source = std::fs::read_to_string(root().join("common/src/exit.rs")).expect("exit.rs");
    let used: BTreeSet<i32> = source
        .lines()
        .filter_map(|l| {
            l.strip_prefix("pub const ")?
                .split("= ")
                .nth(1)?
                .trim_end_matches(';')
                .parse()
                .ok()
        })
        .collect();
    assert!(used.len() >= 10, "read the constants of exit.rs: {used:?}");
    assert_eq!(
        table, used,
        "README's exit codes against common/src/exit.rs"
    );
    // And the CLI's own usage errors are the documented 64, not clap's 2.
    let out = Command::new(BIN)
        .args(["status", "--bogus"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(64));
    let out = Command::new(BIN).arg("frobnicate").output().expect("run");
    assert_eq!(out.status.code(), Some(64));
}
