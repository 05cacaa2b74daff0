//! A new user's first hour (#20): `e2e/first-hour.sh` follows the README's
//! "Running it yourself" with the mistakes people make, checking each exit
//! code and message; this runs it on the binaries of this build.

use std::process::Command;

#[test]
fn the_first_hour_script_sees_every_message_it_expects() {
    let bin = liandan_e2e::bin("liandan");
    let dir = bin.parent().expect("bin dir");
    // Checked to exist before the script needs them.
    liandan_e2e::bin("liandan-coordinator");
    liandan_e2e::bin("liandan-worker");
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("first-hour.sh");
    let out = Command::new("bash")
        .arg(&script)
        .env("BIN", dir)
        .env_remove("LIANDAN_COORDINATOR")
        .env_remove("LIANDAN_TOKEN")
        .env_remove("LIANDAN_TOKEN_FILE")
        .output()
        .expect("run bash");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains(", 0 failed"), "{text}");
}
