//! Deployment: the install script, the systemd units, the daemons' systemd
//! notifications, and the SLURM and Kubernetes recipes.

use liandan_e2e::{bin, Cluster, Opts};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn bin_dir() -> PathBuf {
    bin("liandan").parent().unwrap().to_path_buf()
}

fn install(root: &Path, args: &[&str]) -> String {
    let out = Command::new("bash")
        .arg(repo().join("deploy/install.sh"))
        .args(args)
        .arg("--root")
        .arg(root)
        .arg("--bin-dir")
        .arg(bin_dir())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "install.sh {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn install_script_lays_out_both_roles_idempotently_and_uninstalls() {
    assert!(
        liandan_e2e::has_bin("liandan-train"),
        "liandan-train is not built: run `make build`"
    );
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    install(r, &["--role", "coordinator"]);
    install(r, &["--role", "worker"]);
    for f in [
        "usr/local/bin/liandan-coordinator",
        "usr/local/bin/liandan-worker",
        "usr/local/bin/liandan-train",
        "usr/local/bin/liandan",
        "etc/systemd/system/liandan-coordinator.service",
        "etc/systemd/system/liandan-worker.service",
        "etc/liandan/coordinator.toml",
        "etc/liandan/worker.toml",
        "usr/local/share/doc/liandan/README.md",
    ] {
        assert!(r.join(f).exists(), "{f} missing");
    }
    // A second run keeps an edited configuration.
    std::fs::write(r.join("etc/liandan/worker.toml"), "slots = 7\n").unwrap();
    let again = install(r, &["--role", "worker"]);
    assert!(again.contains("kept the existing"), "{again}");
    assert_eq!(
        std::fs::read_to_string(r.join("etc/liandan/worker.toml")).unwrap(),
        "slots = 7\n"
    );
    // The installed binaries run.
    let out = Command::new(r.join("usr/local/bin/liandan"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    // Uninstalling the worker keeps its config and the CLI (the coordinator still uses it).
    install(r, &["--role", "worker", "--uninstall"]);
    assert!(!r.join("usr/local/bin/liandan-worker").exists());
    assert!(!r.join("etc/systemd/system/liandan-worker.service").exists());
    assert!(r.join("etc/liandan/worker.toml").exists());
    assert!(r.join("usr/local/bin/liandan").exists());
    install(r, &["--role", "coordinator", "--uninstall"]);
    assert!(!r.join("usr/local/bin/liandan").exists());
    // Bad usage is refused with a message.
    let out = Command::new("bash")
        .arg(repo().join("deploy/install.sh"))
        .args(["--role", "gpu-box"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--role must be coordinator or worker"));
}

#[test]
fn systemd_accepts_both_units() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    install(r, &["--role", "coordinator"]);
    install(r, &["--role", "worker"]);
    // systemd-analyze checks that ExecStart exists: point it at the installed binaries.
    let dir = r.join("verify");
    std::fs::create_dir_all(&dir).unwrap();
    let mut units = Vec::new();
    for u in ["liandan-coordinator.service", "liandan-worker.service"] {
        let text = std::fs::read_to_string(r.join("etc/systemd/system").join(u)).unwrap();
        for key in [
            "Type=notify",
            "WatchdogSec=",
            "Restart=on-failure",
            "RestartPreventExitStatus=78",
            "StateDirectory=",
            "LogsDirectory=",
            "ConfigurationDirectory=",
            "User=liandan",
        ] {
            assert!(text.contains(key), "{u} lacks {key}");
        }
        if u.contains("worker") {
            for key in [
                "KillMode=mixed",
                "OOMPolicy=continue",
                "TimeoutStopSec=120",
                "DeviceAllow=char-nvidia-frontend rw",
            ] {
                assert!(text.contains(key), "{u} lacks {key}");
            }
        }
        let p = dir.join(u);
        std::fs::write(
            &p,
            text.replace(
                "/usr/local/bin/",
                &format!("{}/usr/local/bin/", r.display()),
            ),
        )
        .unwrap();
        units.push(p);
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(&units)
        .output()
        .expect("systemd-analyze (Debian package systemd) is needed for this test");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && err.trim().is_empty(),
        "systemd-analyze verify: {err}"
    );
}

/// Collects notifications sent to a socket we own.
struct Notifications {
    sock: UnixDatagram,
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Notifications {
    fn new() -> Notifications {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        Notifications {
            sock,
            path,
            _dir: dir,
        }
    }

    /// Messages received within `d`, with their arrival times.
    fn collect(&self, d: Duration) -> Vec<(Instant, String)> {
        let deadline = Instant::now() + d;
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            if let Ok(n) = self.sock.recv(&mut buf) {
                out.push((
                    Instant::now(),
                    String::from_utf8_lossy(&buf[..n]).to_string(),
                ));
            }
        }
        out
    }
}

#[test]
fn the_coordinator_says_ready_then_pings_the_watchdog_at_half_its_interval() {
    let n = Notifications::new();
    let dir = tempfile::tempdir().unwrap();
    // systemd sets WATCHDOG_PID to the service's pid: exec keeps the shell's.
    let mut child = Command::new("sh")
        .args(["-c", "WATCHDOG_PID=$$ exec \"$0\" \"$@\""])
        .arg(bin("liandan-coordinator"))
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env("NOTIFY_SOCKET", &n.path)
        .env("WATCHDOG_USEC", "1000000")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let msgs = n.collect(Duration::from_millis(3300));
    let _ = child.kill();
    let _ = child.wait();
    let ready = msgs
        .iter()
        .position(|(_, m)| m.contains("READY=1"))
        .expect("READY=1 sent");
    assert!(
        msgs[..ready].iter().all(|(_, m)| !m.contains("WATCHDOG=1")),
        "watchdog before ready"
    );
    let pings: Vec<Instant> = msgs
        .iter()
        .filter(|(_, m)| m.contains("WATCHDOG=1"))
        .map(|(t, _)| *t)
        .collect();
    assert!(
        (5..=8).contains(&pings.len()),
        "{} pings in ~3 s with a 1 s watchdog: {msgs:?}",
        pings.len()
    );
    for w in pings.windows(2) {
        let gap = w[1] - w[0];
        assert!(
            gap > Duration::from_millis(350) && gap < Duration::from_millis(800),
            "ping gap {gap:?}"
        );
    }
}

#[test]
fn the_worker_reports_recovery_and_is_ready_only_once_registered() {
    let c = Cluster::start(0, Opts::default());
    let n = Notifications::new();
    let state = c.dir.path().join("w");
    let mut child = Command::new("sh")
        .args(["-c", "WATCHDOG_PID=$$ exec \"$0\" \"$@\""])
        .arg(bin("liandan-worker"))
        .args([
            "--coordinator",
            &c.url(),
            "--gpus",
            "none",
            "--slots",
            "1",
            "--state-dir",
        ])
        .arg(&state)
        .env("NOTIFY_SOCKET", &n.path)
        .env("WATCHDOG_USEC", "2000000")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let msgs = n.collect(Duration::from_millis(2500));
    let _ = child.kill();
    let _ = child.wait();
    let status = msgs
        .iter()
        .position(|(_, m)| m.contains("STATUS=recovering the journal"))
        .expect("a recovery status line");
    let ready = msgs
        .iter()
        .position(|(_, m)| m.contains("READY=1"))
        .expect("READY=1");
    assert!(status < ready);
    // Registered: the coordinator lists it.
    let workers = c.cli_json(&["workers", "-o", "json"]);
    assert_eq!(workers.as_array().unwrap().len(), 1);
    assert!(
        msgs.iter().any(|(_, m)| m.contains("WATCHDOG=1")),
        "{msgs:?}"
    );
}

#[test]
fn kubernetes_manifests_and_the_slurm_script_are_well_formed() {
    let k8s = repo().join("deploy/kubernetes");
    let mut kinds = Vec::new();
    for f in ["coordinator.yaml", "worker.yaml"] {
        let text = std::fs::read_to_string(k8s.join(f)).unwrap();
        for doc in text.split("\n---\n") {
            let v: serde_json::Value =
                serde_saphyr::from_str(doc).unwrap_or_else(|e| panic!("{f}: {e}"));
            let kind = v["kind"].as_str().unwrap().to_string();
            match kind.as_str() {
                "StatefulSet" => {
                    let c = &v["spec"]["template"]["spec"]["containers"][0];
                    assert_eq!(c["readinessProbe"]["grpc"]["port"], 7477);
                    assert_eq!(c["livenessProbe"]["grpc"]["port"], 7477);
                    assert!(v["spec"]["volumeClaimTemplates"].is_array());
                }
                "DaemonSet" => {
                    let spec = &v["spec"]["template"]["spec"];
                    assert!(
                        spec["containers"][0]["resources"]["limits"]["nvidia.com/gpu"].is_number()
                    );
                    // Long enough for the job grace period (120 s) plus a checkpoint upload.
                    assert!(spec["terminationGracePeriodSeconds"].as_u64().unwrap() > 120);
                }
                "Service" => assert_eq!(v["spec"]["ports"][0]["port"], 7477),
                other => panic!("unexpected kind {other}"),
            }
            kinds.push(kind);
        }
    }
    kinds.sort();
    assert_eq!(kinds, ["DaemonSet", "Service", "StatefulSet"]);

    let slurm = repo().join("deploy/slurm/liandan-worker.sbatch");
    let out = Command::new("bash").arg("-n").arg(&slurm).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&slurm).unwrap();
    assert!(text.contains("#SBATCH --signal=B:TERM@"));
    assert!(text.contains("--gpus visible"));
    let out = Command::new("bash")
        .arg("-n")
        .arg(repo().join("deploy/install.sh"))
        .output()
        .unwrap();
    assert!(out.status.success());
}
