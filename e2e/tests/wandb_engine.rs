//! liandan held against W&B's own sweep engine and agent: e2e/wandb/conformance.py
//! runs the `sweeps` and `wandb` packages (pinned, installed by
//! scripts/setup-testenv.sh, which `make test` runs) and the `liandan` binary
//! on every file of e2e/wandb/corpus: same verdict, same grid runs in the same
//! order, the same command lines, the same parameter spaces.

use std::process::Command;

#[test]
fn liandan_agrees_with_wandbs_engine_and_agent_on_the_corpus() {
    let python = std::env::var("LIANDAN_TEST_PYTHON").unwrap_or_else(|_| {
        panic!("LIANDAN_TEST_PYTHON is not set: run the suite with `make test`, which installs W&B's engine and agent (scripts/setup-testenv.sh) and sets it")
    });
    let root = liandan_e2e::repo_root();
    let corpus = root.join("e2e/wandb/corpus");
    let files = std::fs::read_dir(&corpus)
        .expect("corpus")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "yaml"))
        })
        .count();
    assert!(
        files >= 40,
        "the corpus has {files} files; it needs at least 40"
    );
    let out = Command::new(python)
        .arg(root.join("e2e/wandb/conformance.py"))
        .arg("--liandan")
        .arg(liandan_e2e::bin("liandan"))
        .arg("--corpus")
        .arg(&corpus)
        .output()
        .expect("run the conformance harness");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "liandan disagrees with W&B:\n{}\n{stderr}",
        stdout
            .lines()
            .filter(|l| l.starts_with("FAIL") || l.contains("passed"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        stdout.contains(&format!("{files} passed, 0 failed")),
        "{stdout}"
    );
}
