//! Security: TLS, mutual TLS, tokens, safe defaults, hostile input.

use liandan_e2e::{bin, eventually, Cluster, Opts, Proc};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

struct Secure {
    dir: tempfile::TempDir,
    coordinator: Proc,
    addr: String,
}

fn certs(dir: &Path, name: &str) -> PathBuf {
    let d = dir.join(name);
    let out = Command::new(bin("liandan"))
        .args(["certs", "init"])
        .arg(&d)
        .args(["--host", "localhost", "--workers", "2"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    d
}

/// Starts a coordinator; returns the process and the first stdout line's address, or the exit output.
fn start(config: &Path, args: &[&str], log: &Path) -> Result<(Proc, String), Output> {
    start_limited(config, args, log, None)
}

/// As [`start`], with the open-file limit (soft and hard) set to `nofile`.
fn start_limited(
    config: &Path,
    args: &[&str],
    log: &Path,
    nofile: Option<u64>,
) -> Result<(Proc, String), Output> {
    let err = std::fs::File::create(log).unwrap();
    let mut cmd = Command::new(bin("liandan-coordinator"));
    cmd.arg("--config")
        .arg(config)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(err);
    if let Some(n) = nofile {
        use std::os::unix::process::CommandExt;
        // SAFETY: setrlimit is async-signal-safe; nothing else runs in the child.
        unsafe {
            cmd.pre_exec(move || {
                nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, n, n)
                    .map_err(std::io::Error::from)
            });
        }
    }
    let mut child = cmd.spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    match line.trim().strip_prefix("listening on ") {
        Some(a) => {
            let p = Proc {
                child: Some(child),
                log: log.to_path_buf(),
            };
            eventually(Duration::from_secs(20), || {
                p.log_text().contains("coordinator ready").then_some(())
            })
            .expect("coordinator ready");
            Ok((p, a.to_string()))
        }
        None => {
            let status = child.wait().unwrap();
            Err(Output {
                status,
                stdout: Vec::new(),
                stderr: std::fs::read(log).unwrap(),
            })
        }
    }
}

impl Drop for Secure {
    fn drop(&mut self) {
        // The workers' job cgroups, once the test is over.
        liandan_e2e::remove_job_cgroups(self.dir.path());
    }
}

impl Secure {
    fn new() -> Secure {
        Secure::with("", None)
    }

    /// With more coordinator configuration, and an open-file limit.
    fn with(extra: &str, nofile: Option<u64>) -> Secure {
        let dir = tempfile::tempdir().unwrap();
        let pki = certs(dir.path(), "pki");
        let cfg = dir.path().join("coordinator.toml");
        std::fs::write(
            &cfg,
            format!(
                "listen = \"127.0.0.1:0\"\ndata_dir = \"{d}/data\"\ntls_cert = \"{p}/coordinator.pem\"\ntls_key = \"{p}/coordinator-key.pem\"\ntls_client_ca = \"{p}/ca.pem\"\nuser_token_file = \"{p}/user.token\"\njoin_token_file = \"{p}/join.token\"\nlease_timeout_secs = 5.0\nheartbeat_interval_secs = 1.0\n{extra}",
                d = dir.path().display(),
                p = pki.display()
            ),
        )
        .unwrap();
        let (coordinator, addr) =
            start_limited(&cfg, &[], &dir.path().join("coordinator.log"), nofile)
                .unwrap_or_else(|o| panic!("{}", String::from_utf8_lossy(&o.stderr)));
        Secure {
            dir,
            coordinator,
            addr,
        }
    }

    fn pki(&self) -> PathBuf {
        self.dir.path().join("pki")
    }

    fn url(&self) -> String {
        format!(
            "https://localhost:{}",
            self.addr.rsplit(':').next().unwrap()
        )
    }

    /// The CLI against this coordinator, with `token` (if any) and `args`.
    fn cli_command(&self, token: Option<&Path>, args: &[&str]) -> Command {
        let mut c = Command::new(bin("liandan"));
        c.args(["--coordinator", &self.url(), "--ca-cert"])
            .arg(self.pki().join("ca.pem"))
            .env_remove("LIANDAN_TOKEN")
            .env_remove("LIANDAN_TOKEN_FILE");
        if let Some(t) = token {
            c.arg("--token-file").arg(t);
        }
        c.args(args);
        c
    }

    fn cli(&self, token: Option<&Path>, args: &[&str]) -> Output {
        self.cli_command(token, args).output().unwrap()
    }

    /// Runs the CLI as [`Secure::cli`]; true if it succeeded within `max`
    /// (killed after it: a call stuck on an unresponsive coordinator).
    fn cli_within(&self, max: Duration, token: Option<&Path>, args: &[&str]) -> bool {
        let mut child = self
            .cli_command(token, args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        match eventually(max, || child.try_wait().ok().flatten()) {
            Some(st) => st.success(),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                false
            }
        }
    }

    fn worker(&self, name: &str, cfg_extra: &str) -> Proc {
        self.worker_with_env(name, cfg_extra, &[])
    }

    fn worker_with_env(&self, name: &str, cfg_extra: &str, env: &[(&str, &str)]) -> Proc {
        let cfg = self.dir.path().join(format!("{name}.toml"));
        std::fs::write(
            &cfg,
            format!(
                "coordinator = \"{}\"\nstate_dir = \"{}\"\ngpus = \"none\"\n{}{cfg_extra}",
                self.url(),
                self.dir.path().join(name).display(),
                if cfg_extra.contains("slots") {
                    ""
                } else {
                    "slots = 1\n"
                }
            ),
        )
        .unwrap();
        let log = self.dir.path().join(format!("{name}.log"));
        let child = Command::new(bin("liandan-worker"))
            .arg("--config")
            .arg(&cfg)
            .env_remove("LIANDAN_TOKEN")
            .env_remove("LIANDAN_TOKEN_FILE")
            .env_remove("LIANDAN_JOIN_TOKEN")
            .env_remove("CREDENTIALS_DIRECTORY")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Proc {
            child: Some(child),
            log,
        }
    }

    fn workers(&self) -> Vec<serde_json::Value> {
        let out = self.cli(
            Some(&self.pki().join("user.token")),
            &["workers", "-o", "json"],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .unwrap()
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}

#[test]
fn tokens_are_required_and_checked() {
    let s = Secure::new();
    let none = s.cli(None, &["status"]);
    assert_eq!(
        none.status.code(),
        Some(77),
        "{}",
        String::from_utf8_lossy(&none.stderr)
    );
    assert!(String::from_utf8_lossy(&none.stderr).contains("missing, wrong or revoked token"));
    let wrong = s.dir.path().join("wrong.token");
    std::fs::write(&wrong, "not-the-token\n").unwrap();
    std::fs::set_permissions(&wrong, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    assert_eq!(s.cli(Some(&wrong), &["status"]).status.code(), Some(77));
    let ok = s.cli(Some(&s.pki().join("user.token")), &["status"]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    // Health stays open for probes; the token is never logged.
    let token = std::fs::read_to_string(s.pki().join("user.token")).unwrap();
    assert!(!s.coordinator.log_text().contains(token.trim()));
    assert!(s.coordinator.log_text().contains("refused a user RPC"));
}

#[test]
fn a_plaintext_client_cannot_talk_to_a_tls_coordinator() {
    let s = Secure::new();
    let port = s.addr.rsplit(':').next().unwrap();
    let out = Command::new(bin("liandan"))
        .args([
            "--coordinator",
            &format!("http://127.0.0.1:{port}"),
            "status",
        ])
        .env("LIANDAN_TOKEN", "x")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(69),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn workers_authenticate_by_certificate_or_join_token_and_a_foreign_ca_is_rejected() {
    let s = Secure::new();
    let foreign = certs(s.dir.path(), "foreign");
    let p = s.pki();
    // A certificate from another CA fails the TLS handshake.
    let bad = s.worker(
        "bad",
        &format!(
            "tls_ca = \"{}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
            p.join("ca.pem").display(),
            foreign.join("worker-1.pem").display(),
            foreign.join("worker-1-key.pem").display()
        ),
    );
    // A worker with a cluster certificate, and one with the join token and no certificate.
    let good = s.worker(
        "good",
        &format!(
            "tls_ca = \"{}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
            p.join("ca.pem").display(),
            p.join("worker-1.pem").display(),
            p.join("worker-1-key.pem").display()
        ),
    );
    let joined = s.worker(
        "joined",
        &format!(
            "tls_ca = \"{}\"\njoin_token_file = \"{}\"\n",
            p.join("ca.pem").display(),
            p.join("join.token").display()
        ),
    );
    // No certificate and no token: refused.
    let anonymous = s.worker(
        "anonymous",
        &format!("tls_ca = \"{}\"\n", p.join("ca.pem").display()),
    );
    let ws = eventually(Duration::from_secs(15), || {
        let w = s.workers();
        (w.len() >= 2).then_some(w)
    })
    .expect("two workers registered");
    std::thread::sleep(Duration::from_secs(2));
    let ws = if s.workers().len() > ws.len() {
        s.workers()
    } else {
        ws
    };
    assert_eq!(
        ws.len(),
        2,
        "only the certified and the joined worker: {ws:?}"
    );
    assert!(
        bad.log_text().to_lowercase().contains("cannot reach")
            || bad.log_text().to_lowercase().contains("ended"),
        "{}",
        bad.log_text()
    );
    assert!(
        anonymous.log_text().contains("Unauthenticated")
            || anonymous
                .log_text()
                .contains("workers need a client certificate"),
        "{}",
        anonymous.log_text()
    );
    drop((good, joined));
}

#[test]
fn a_job_runs_end_to_end_over_mutual_tls() {
    let s = Secure::new();
    let p = s.pki();
    let _w = s.worker(
        "w",
        &format!(
            "tls_ca = \"{}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
            p.join("ca.pem").display(),
            p.join("worker-2.pem").display(),
            p.join("worker-2-key.pem").display()
        ),
    );
    let spec = s.dir.path().join("s.yaml");
    std::fs::write(&spec, "name: tls\nprogram: /bin/echo\ncommand: [/bin/echo, hello, \"${args}\"]\nmethod: grid\nparameters:\n  x: {value: 1}\n").unwrap();
    let token = p.join("user.token");
    let out = s.cli(Some(&token), &["submit", spec.to_str().unwrap(), "--wait"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let jobs: serde_json::Value =
        serde_json::from_slice(&s.cli(Some(&token), &["jobs", "tls", "-o", "json"]).stdout)
            .unwrap();
    let id = jobs[0]["id"].as_str().unwrap();
    let log = s.cli(Some(&token), &["logs", id]);
    assert_eq!(String::from_utf8_lossy(&log.stdout).trim(), "hello --x=1");
}

fn plain_config(dir: &Path, listen: &str, extra: &str) -> PathBuf {
    let cfg = dir.join(format!("c-{}.toml", listen.replace([':', '.'], "_")));
    std::fs::write(
        &cfg,
        format!(
            "listen = \"{listen}\"\ndata_dir = \"{}\"\n{extra}",
            dir.join("data").display()
        ),
    )
    .unwrap();
    cfg
}

#[test]
fn listening_beyond_loopback_without_tls_and_auth_is_refused_unless_insecure() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = plain_config(dir.path(), "0.0.0.0:0", "");
    let o = start(&cfg, &[], &dir.path().join("a.log"))
        .err()
        .expect("refused");
    assert_eq!(o.status.code(), Some(78));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("refusing to listen on 0.0.0.0:0 without TLS") && err.contains("--insecure"),
        "{err}"
    );
    assert!(!dir.path().join("data").exists(), "nothing was created");
    let (p, _) = start(&cfg, &["--insecure"], &dir.path().join("b.log"))
        .unwrap_or_else(|o| panic!("{}", String::from_utf8_lossy(&o.stderr)));
    std::thread::sleep(Duration::from_millis(300));
    assert!(p.log_text().contains("INSECURE"), "{}", p.log_text());
}

#[test]
fn secret_files_readable_by_others_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("user.token");
    std::fs::write(&token, "abc\n").unwrap();
    std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let cfg = plain_config(
        dir.path(),
        "127.0.0.1:0",
        &format!("user_token_file = \"{}\"\n", token.display()),
    );
    let o = start(&cfg, &[], &dir.path().join("a.log"))
        .err()
        .expect("refused");
    assert_eq!(o.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&o.stderr).contains(&format!("chmod 600 {}", token.display())));
}

#[tokio::test]
async fn hostile_names_and_huge_messages_are_refused_without_effect() {
    use liandan_proto::v1 as pb;
    let dir = tempfile::tempdir().unwrap();
    let cfg = plain_config(dir.path(), "127.0.0.1:0", "");
    let (p, addr) = start(&cfg, &[], &dir.path().join("c.log"))
        .unwrap_or_else(|o| panic!("{}", String::from_utf8_lossy(&o.stderr)));
    let url = format!("http://{addr}");
    let before: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    let channel = tonic::transport::Endpoint::from_shared(url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut user = pb::user_service_client::UserServiceClient::new(channel.clone())
        .max_encoding_message_size(256 << 20);
    let spec = "program: /bin/true\nmethod: grid\nparameters:\n  x: {value: 1}\n".to_string();
    let e = user
        .submit_sweep(pb::SubmitSweepRequest {
            spec: spec.clone(),
            format: "yaml".into(),
            name: "../../evil".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    let e = user
        .get_job(pb::JobRef {
            job_id: "job-../../../etc/passwd".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    let mut worker = pb::worker_service_client::WorkerServiceClient::new(channel.clone());
    let header = pb::CheckpointUploadHeader {
        job_id: "../../../tmp/x".into(),
        attempt: 1,
        step: 1,
        size: 3,
        blake3: "0".repeat(64),
        metric: None,
        worker_id: "wk-x".into(),
    };
    let up = worker
        .upload_checkpoint(tokio_stream::iter(vec![pb::CheckpointUpload {
            header: Some(header),
            offset: 0,
            data: b"abc".to_vec(),
        }]))
        .await
        .unwrap_err();
    // Refused before its header is read: the caller is no worker it can prove to be.
    assert_eq!(up.code(), tonic::Code::PermissionDenied);
    // A 100 MB message is refused, and the coordinator's memory does not jump.
    let rss = |pid: i32| -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        s.lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap()
            .parse()
            .unwrap()
    };
    let before_kb = rss(p.pid());
    let huge = "#".repeat(100 << 20);
    let e = user
        .submit_sweep(pb::SubmitSweepRequest {
            spec: huge,
            format: "yaml".into(),
            name: String::new(),
        })
        .await
        .unwrap_err();
    assert!(
        matches!(
            e.code(),
            tonic::Code::OutOfRange
                | tonic::Code::ResourceExhausted
                | tonic::Code::Internal
                | tonic::Code::Cancelled
        ),
        "{e}"
    );
    let after_kb = rss(p.pid());
    assert!(
        after_kb < before_kb + 50 * 1024,
        "memory grew from {before_kb} kB to {after_kb} kB"
    );
    // Still serving.
    assert!(user
        .list_sweeps(pb::ListSweepsRequest::default())
        .await
        .is_ok());
    let after: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(before, after, "nothing was written beside the data dir");
    assert!(
        !Path::new("/tmp/x").exists()
            || std::fs::metadata("/tmp/x")
                .map(|m| m.len() != 3)
                .unwrap_or(true)
    );
}

#[test]
fn jobs_never_see_the_workers_secrets() {
    let s = Secure::new();
    let p = s.pki();
    let join = std::fs::read_to_string(p.join("join.token")).unwrap();
    // A join-token worker given its token the way a shell or a unit would.
    let _w = s.worker_with_env(
        "w",
        &format!("tls_ca = \"{}\"\n", p.join("ca.pem").display()),
        &[
            ("LIANDAN_JOIN_TOKEN", join.trim()),
            // A worker setting from the environment: the worker's, not the job's.
            ("LIANDAN_GRACE_PERIOD_SECS", "7"),
        ],
    );
    let spec = s.dir.path().join("s.yaml");
    std::fs::write(
        &spec,
        "name: env\nmethod: grid\ncommand: [/usr/bin/env]\nparameters:\n  x: {value: 1}\n",
    )
    .unwrap();
    let token = p.join("user.token");
    let out = s.cli(Some(&token), &["submit", spec.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let done = liandan_e2e::eventually(std::time::Duration::from_secs(30), || {
        let j: serde_json::Value =
            serde_json::from_slice(&s.cli(Some(&token), &["jobs", "env", "-o", "json"]).stdout)
                .ok()?;
        (j[0]["state"] == "succeeded").then_some(j)
    });
    let jobs =
        done.unwrap_or_else(|| panic!("the job did not finish; worker log:\n{}", _w.log_text()));
    let id = jobs[0]["id"].as_str().unwrap();
    let log = String::from_utf8_lossy(&s.cli(Some(&token), &["logs", id]).stdout).to_string();
    assert!(
        log.contains("LIANDAN_JOB_ID="),
        "the job's own variables are there: {log}"
    );
    assert!(
        !log.contains(join.trim()),
        "the join token leaked into the job: {log}"
    );
    assert!(!log.contains("LIANDAN_JOIN_TOKEN"), "{log}");
    assert!(!log.contains("LIANDAN_GRACE_PERIOD_SECS"), "{log}");
}

#[test]
fn state_directories_and_databases_are_private_to_the_daemon() {
    use std::os::unix::fs::PermissionsExt;
    let c = liandan_e2e::Cluster::start(1, liandan_e2e::Opts::default());
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let data = c.dir.path().join("coordinator");
    let state = c.dir.path().join("worker-0");
    liandan_e2e::eventually(std::time::Duration::from_secs(10), || {
        state.join("worker.db").exists().then_some(())
    })
    .expect("the worker opened its database");
    assert_eq!(mode(&data), 0o700, "coordinator data dir");
    assert_eq!(mode(&data.join("coordinator.db")), 0o600);
    assert_eq!(mode(&state), 0o700, "worker state dir");
    assert_eq!(mode(&state.join("worker.db")), 0o600);
}

/// Peak resident memory of a process, from /proc (VmHWM), in bytes.
fn peak_rss(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// Output no reasonable job prints, and a worker must survive it: 400 lines
/// of 64 KiB (25 MiB, more than one message may carry), 100 MiB without a
/// newline, and a 40 MiB line in the metrics file. The next job on the same
/// worker must still run, and the worker must not hold the output in memory.
#[test]
fn a_job_printing_huge_lines_neither_wedges_nor_bloats_its_worker() {
    let c = Cluster::start(
        1,
        Opts {
            slots: 1,
            ..Opts::default()
        },
    );
    let script = c.write(
        "flood.py",
        r#"
import json, os, sys
line = "x" * 65536
for i in range(400):
    sys.stdout.write(line + "\n")
sys.stdout.write("y" * (100 << 20))
sys.stdout.write("\nend\n")
sys.stdout.flush()
with open(os.environ["LIANDAN_METRICS_FILE"], "a") as f:
    f.write('{"a": "' + "z" * (40 << 20) + '"}\n')
    f.write(json.dumps({"step": 1, "loss": 0.5}) + "\n")
"#,
    );
    let spec = c.write(
        "flood.yaml",
        &format!(
            "method: grid\ncommand: [python3, '{}', '${{args}}']\nparameters:\n  k: {{values: [1, 2]}}\n",
            script.display()
        ),
    );
    let sweep = c.submit(&spec);
    let st = c.wait_finished(&sweep, Duration::from_secs(180));
    assert_eq!(st["succeeded"], 2, "{st}\n{}", c.workers[0].log_text());
    let jobs = c.cli_json(&["jobs", &sweep, "-o", "json"]);
    let job = jobs[0]["id"].as_str().expect("job id").to_string();
    let out = c.cli(&["logs", &job, "--tail", "4"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        text.contains(&format!(
            "[liandan: line cut after 1048576 bytes; {} more bytes dropped]",
            (100u64 << 20) - (1 << 20)
        )),
        "the cut is visible in the log: {}",
        text.chars().rev().take(400).collect::<String>()
    );
    assert!(
        text.contains("dropped]\nend\n"),
        "the lines after it are kept: {:?}",
        text.chars().rev().take(300).collect::<String>()
    );
    let err = c.cli(&["logs", &job, "--stderr"]);
    assert!(
        String::from_utf8_lossy(&err.stdout).contains("longer than 1048576 bytes; skipped"),
        "{}",
        String::from_utf8_lossy(&err.stdout)
    );
    let m = c.cli_json(&["metrics", &job, "-o", "json"]);
    assert_eq!(m.as_array().map(|a| a.len()), Some(1), "{m}");
    let peak = peak_rss(c.workers[0].pid());
    assert!(
        peak < 200 << 20,
        "the worker held the output in memory: peak RSS {} MiB",
        peak >> 20
    );
}

/// A worker-service client over TLS (the cluster CA) that presents the join
/// token and nothing else: what anyone holding the join token can do.
async fn token_only_client(
    s: &Secure,
) -> liandan_proto::v1::worker_service_client::WorkerServiceClient<
    tonic::service::interceptor::InterceptedService<
        tonic::transport::Channel,
        liandan_common::auth::TokenInterceptor,
    >,
> {
    liandan_common::auth::install_crypto_provider();
    let ca = std::fs::read(s.pki().join("ca.pem")).expect("ca");
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(ca))
        .domain_name("localhost");
    let channel = tonic::transport::Endpoint::from_shared(s.url())
        .expect("url")
        .tls_config(tls)
        .expect("tls")
        .connect()
        .await
        .expect("connect");
    let token = std::fs::read_to_string(s.pki().join("join.token")).expect("token");
    let auth = liandan_common::auth::TokenInterceptor::new(Some(token.trim())).expect("token");
    liandan_proto::v1::worker_service_client::WorkerServiceClient::with_interceptor(channel, auth)
}

/// Says hello as `worker_id` (with `secret`); the coordinator's answer:
/// the welcome, or the refusal.
async fn hello_as(
    s: &Secure,
    worker_id: &str,
    secret: &str,
) -> Result<liandan_proto::v1::Welcome, tonic::Status> {
    hello_named(s, worker_id, secret, "intruder").await
}

/// [`hello_as`], with the hostname to claim.
async fn hello_named(
    s: &Secure,
    worker_id: &str,
    secret: &str,
    hostname: &str,
) -> Result<liandan_proto::v1::Welcome, tonic::Status> {
    use liandan_proto::v1 as pb;
    let mut client = token_only_client(s).await;
    let hello = pb::WorkerMessage {
        msg: Some(pb::worker_message::Msg::Hello(pb::Hello {
            worker_id: worker_id.into(),
            hostname: hostname.into(),
            resources: Some(pb::Resources {
                cpu_slots: 4,
                ..Default::default()
            }),
            worker_secret: secret.into(),
            ..Default::default()
        })),
    };
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(hello).await.expect("send");
    let mut inbound = client
        .session(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    let first = inbound.message().await?;
    // Keep the stream open a moment, as a real worker would, then go.
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(tx);
    match first.and_then(|m| m.msg) {
        Some(pb::coordinator_message::Msg::Welcome(w)) => Ok(w),
        other => Err(tonic::Status::unknown(format!("{other:?}"))),
    }
}

/// The join token does not make its holder any worker it names: an id bound
/// to a certificate needs that certificate, a join-token worker's id needs
/// the secret the coordinator issued with it, and checkpoint RPCs are scoped
/// to the caller's own attempts. The real workers' jobs run on undisturbed.
#[test]
fn the_join_token_takes_no_workers_identity() {
    use liandan_proto::v1 as pb;
    let s = Secure::new();
    let p = s.pki();
    let _certified = s.worker(
        "certified",
        &format!(
            "tls_ca = \"{}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
            p.join("ca.pem").display(),
            p.join("worker-1.pem").display(),
            p.join("worker-1-key.pem").display()
        ),
    );
    let _joined = s.worker(
        "joined",
        &format!(
            "tls_ca = \"{}\"\njoin_token_file = \"{}\"\n",
            p.join("ca.pem").display(),
            p.join("join.token").display()
        ),
    );
    let cert_id = liandan_common::auth::worker_id_from_cert_pem(
        &std::fs::read_to_string(p.join("worker-1.pem")).expect("cert"),
    )
    .expect("cert id")
    .to_string();
    let ws = eventually(Duration::from_secs(20), || {
        let w = s.workers();
        (w.len() == 2).then_some(w)
    })
    .expect("both workers registered");
    let joined_id = ws
        .iter()
        .filter_map(|w| w["id"].as_str())
        .find(|id| *id != cert_id)
        .expect("the joined worker")
        .to_string();
    let token = p.join("user.token");
    let spec = s.dir.path().join("long.yaml");
    std::fs::write(
        &spec,
        "name: long\nmethod: grid\ncommand: [sleep, '120']\nparameters:\n  x: {values: [1, 2]}\n",
    )
    .expect("spec");
    assert!(s
        .cli(Some(&token), &["submit", spec.to_str().expect("utf-8")])
        .status
        .success());
    let jobs_now = || -> Vec<serde_json::Value> {
        serde_json::from_slice::<serde_json::Value>(
            &s.cli(Some(&token), &["jobs", "long", "-o", "json"]).stdout,
        )
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
    };
    let before = eventually(Duration::from_secs(20), || {
        let j = jobs_now();
        (j.len() == 2 && j.iter().all(|j| j["state"] == "running")).then_some(j)
    })
    .expect("both jobs running");
    let cert_job = before
        .iter()
        .find(|j| j["worker_id"] == cert_id.as_str())
        .and_then(|j| j["id"].as_str())
        .expect("a job on the certified worker")
        .to_string();
    let rt = tokio::runtime::Runtime::new().expect("runtime");

    // The certified worker's id, with the join token only: refused.
    let r = rt.block_on(hello_as(&s, &cert_id, ""));
    assert_eq!(
        r.as_ref().map_err(|e| e.code()).err(),
        Some(tonic::Code::PermissionDenied),
        "{r:?}"
    );
    // The joined worker's id without its secret, or with a made-up one: refused.
    for secret in [
        "",
        "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
    ] {
        let r = rt.block_on(hello_as(&s, &joined_id, secret));
        assert_eq!(
            r.as_ref().map_err(|e| e.code()).err(),
            Some(tonic::Code::PermissionDenied),
            "{r:?}"
        );
    }
    // A hello naming no id (or an unknown one) is issued a new identity.
    let issued = rt
        .block_on(hello_as(&s, "wk-0123456789abcdef", ""))
        .expect("a new worker joins");
    assert!(!issued.worker_secret.is_empty());
    assert!(
        issued.worker_id != cert_id && issued.worker_id != joined_id,
        "{issued:?}"
    );

    // Checkpoint RPCs: naming the holder in an upload header, or fetching a
    // job the caller does not run, is refused.
    let refused = rt.block_on(async {
        let mut c = token_only_client(&s).await;
        let header = pb::CheckpointUpload {
            header: Some(pb::CheckpointUploadHeader {
                job_id: cert_job.clone(),
                attempt: 1,
                step: i64::MAX,
                size: 4,
                blake3: "0".repeat(64),
                metric: None,
                worker_id: cert_id.clone(),
            }),
            offset: 0,
            data: b"evil".to_vec(),
        };
        let upload = c
            .upload_checkpoint(tokio_stream::iter(vec![header]))
            .await
            .map(|_| ())
            .map_err(|e| e.code());
        let mut req = tonic::Request::new(pb::DownloadCheckpointRequest {
            job_id: cert_job.clone(),
            step: -1,
            offset: 0,
        });
        req.metadata_mut()
            .insert("liandan-worker-id", issued.worker_id.parse().expect("id"));
        req.metadata_mut().insert(
            "liandan-worker-secret",
            issued.worker_secret.parse().expect("secret"),
        );
        let fetch = c
            .fetch_checkpoint(req)
            .await
            .map(|_| ())
            .map_err(|e| e.code());
        (upload, fetch)
    });
    assert_eq!(
        refused.0,
        Err(tonic::Code::PermissionDenied),
        "upload as the holder"
    );
    assert_eq!(
        refused.1,
        Err(tonic::Code::PermissionDenied),
        "fetch of another's job"
    );

    // Nothing happened to the real workers' jobs.
    std::thread::sleep(Duration::from_secs(2));
    let after = jobs_now();
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(
            (&a["state"], &a["attempt"], &a["worker_id"]),
            (&b["state"], &b["attempt"], &b["worker_id"]),
            "{a}"
        );
    }
    let cs = s.cli(Some(&token), &["checkpoints", &cert_job, "-o", "json"]);
    assert_eq!(String::from_utf8_lossy(&cs.stdout).trim(), "[]");
}

/// Opens `n` connections to `port` from `from` (a loopback address) that never
/// send a byte.
async fn idle_connections(from: &str, port: u16, n: usize) -> Vec<tokio::net::TcpStream> {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind(format!("{from}:0").parse().unwrap()).unwrap();
        match tokio::time::timeout(
            Duration::from_secs(5),
            sock.connect(format!("127.0.0.1:{port}").parse().unwrap()),
        )
        .await
        {
            Ok(Ok(s)) => v.push(s),
            // The listen queue is full: the rest would only wait too.
            _ => break,
        }
    }
    v
}

/// How many of `conns` the server has closed (a read sees the end or a reset
/// within `wait`; data before it is passed over).
async fn closed(conns: &mut [tokio::net::TcpStream], wait: Duration) -> usize {
    use tokio::io::AsyncReadExt;
    let deadline = tokio::time::Instant::now() + wait;
    let mut n = 0;
    for c in conns.iter_mut() {
        let mut b = [0u8; 256];
        // What the server sends first (without TLS, its HTTP/2 settings) is
        // passed over; the end of the stream or a reset counts.
        loop {
            match tokio::time::timeout_at(deadline, c.read(&mut b)).await {
                Ok(Ok(0)) | Ok(Err(_)) => {
                    n += 1;
                    break;
                }
                Ok(Ok(_)) => continue,
                Err(_) => break,
            }
        }
    }
    n
}

/// Issue #19 item 8: 1,100 connections that never start their TLS handshake,
/// against a coordinator with the common 1,024 open-file limit, must not
/// starve anyone: the coordinator closes them after `handshake_timeout_secs`,
/// serves at most what its descriptors allow (no busy loop on EMFILE), and
/// closes connections beyond `max_connections_per_ip` from one address at once.
#[test]
fn idle_connections_that_never_handshake_starve_no_one() {
    // The test itself holds 1,100 sockets.
    if liandan_common::daemon::raise_nofile().is_some_and(|n| n < 2048) {
        eprintln!("skipped: this process may open fewer than 2,048 files (ulimit -n)");
        return;
    }
    let s = Secure::with(
        "handshake_timeout_secs = 2.0\nmax_connections_per_ip = 150\n",
        Some(1024),
    );
    let port: u16 = s.addr.rsplit(':').next().unwrap().parse().unwrap();
    let token = s.pki().join("user.token");
    let rt = tokio::runtime::Runtime::new().unwrap();
    // Eleven addresses, 100 connections each: under the per-address cap, over
    // the descriptors.
    let mut idle = rt.block_on(async {
        let mut all = Vec::new();
        for k in 2..13 {
            all.extend(idle_connections(&format!("127.0.0.{k}"), port, 100).await);
        }
        all
    });
    assert!(idle.len() > 1000, "only {} connections opened", idle.len());
    // A user is served meanwhile (at worst after the first idle ones time out).
    let t0 = std::time::Instant::now();
    let served = eventually(Duration::from_secs(30), || {
        s.cli_within(Duration::from_secs(10), Some(&token), &["status"])
            .then_some(())
    });
    assert!(
        served.is_some(),
        "status failed for 30 s while idle connections were open:\n{}",
        liandan_e2e::tail(&s.coordinator.log_text(), 20)
    );
    let took = t0.elapsed();
    // And every idle connection is closed by the coordinator, not left open.
    let n = rt.block_on(closed(&mut idle, Duration::from_secs(20)));
    assert_eq!(
        n,
        idle.len(),
        "idle connections left open (status took {took:?})"
    );
    drop(idle);
    // Beyond the per-address cap, new connections are closed at once, long
    // before the handshake deadline.
    let mut burst = rt.block_on(idle_connections("127.0.0.20", port, 200));
    let early = rt.block_on(closed(&mut burst[150..], Duration::from_millis(1500)));
    assert_eq!(
        early, 50,
        "connections over max_connections_per_ip were kept"
    );
    let ok = s.cli(Some(&token), &["status"]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(s.coordinator.log_text().contains("max_connections_per_ip"));
}

/// Issue #19 item 12: a worker started from a user's shell, where
/// `LIANDAN_TOKEN_FILE` and `LIANDAN_TOKEN` hold that user's CLI token, sends
/// the join token it was given as a systemd credential, never the user's
/// token; and a hostname carrying terminal escapes is listed without them.
#[test]
fn a_worker_sends_its_join_token_never_the_users_and_hostnames_are_printable() {
    use std::os::unix::fs::PermissionsExt;
    let s = Secure::new();
    let p = s.pki();
    let creds = s.dir.path().join("credentials");
    std::fs::create_dir(&creds).unwrap();
    let cred = creds.join("liandan-join-token");
    std::fs::copy(p.join("join.token"), &cred).unwrap();
    // As systemd leaves it for a `User=` service (the ACL shows as group bits).
    std::fs::set_permissions(&cred, std::fs::Permissions::from_mode(0o440)).unwrap();
    let user = std::fs::read_to_string(p.join("user.token")).unwrap();
    let user_file = p.join("user.token");
    let w = s.worker_with_env(
        "from-a-shell",
        &format!("tls_ca = \"{}\"\n", p.join("ca.pem").display()),
        &[
            ("LIANDAN_TOKEN_FILE", user_file.to_str().unwrap()),
            ("LIANDAN_TOKEN", user.trim()),
            ("CREDENTIALS_DIRECTORY", creds.to_str().unwrap()),
        ],
    );
    let joined = eventually(Duration::from_secs(20), || {
        (s.workers().len() == 1).then_some(())
    });
    assert!(
        joined.is_some(),
        "the worker did not join with its credential; its log:\n{}",
        liandan_e2e::tail(&w.log_text(), 15)
    );
    assert!(
        !w.log_text().contains(user.trim()),
        "the user token was logged"
    );

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(hello_named(
        &s,
        "",
        "",
        "\u{1b}]0;owned\u{7}\u{1b}[31mred\u{1b}[0m",
    ))
    .expect("a new worker joins");
    let token = p.join("user.token");
    let table = s.cli(Some(&token), &["workers"]);
    let text = String::from_utf8_lossy(&table.stdout).to_string();
    assert!(text.contains("red"), "{text}");
    assert!(
        !text.chars().any(|c| c.is_control() && c != '\n'),
        "control characters printed raw: {text:?}"
    );
    let json = s.workers();
    assert!(
        json.iter()
            .filter_map(|w| w["hostname"].as_str())
            .all(|h| !h.chars().any(char::is_control)),
        "{json:?}"
    );
}

/// Without TLS, a connection that does not send its HTTP/2 preface within
/// `handshake_timeout_secs` is closed by the coordinator's own deadline
/// (with TLS, the handshake's timeout closes it first); real clients, which
/// send the preface at once, are served.
#[test]
fn a_plaintext_connection_that_sends_no_preface_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = plain_config(dir.path(), "127.0.0.1:0", "handshake_timeout_secs = 1.0\n");
    let (c, addr) = start(&cfg, &[], &dir.path().join("c.log"))
        .unwrap_or_else(|o| panic!("{}", String::from_utf8_lossy(&o.stderr)));
    let port: u16 = addr.rsplit(':').next().unwrap().parse().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut idle = rt.block_on(async {
        use tokio::io::AsyncWriteExt;
        let mut v = idle_connections("127.0.0.1", port, 3).await;
        // One sends part of a preface, then stops.
        v[0].write_all(b"PRI * HTTP").await.unwrap();
        v
    });
    let t0 = std::time::Instant::now();
    let n = rt.block_on(closed(&mut idle, Duration::from_secs(5)));
    assert_eq!(n, 3, "idle plaintext connections left open");
    assert!(t0.elapsed() < Duration::from_secs(4), "{:?}", t0.elapsed());
    let out = Command::new(bin("liandan"))
        .args(["--coordinator", &format!("http://{addr}"), "status"])
        .env_remove("LIANDAN_TOKEN")
        .env_remove("LIANDAN_TOKEN_FILE")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(c);
}

/// Per-user tokens (#19 item 5): an admin makes tokens for alice (a user)
/// and bob (a user); each owns what they submit and reads everything; bob
/// cannot pause, cancel or cancel a job of alice's sweep, nor drain a worker
/// or make tokens; an admin can; a revoked token is refused at once and after
/// a coordinator restart; `tokens list` never shows a token.
#[test]
fn users_own_their_sweeps_admins_everything_and_revoked_tokens_are_refused() {
    use std::os::unix::fs::PermissionsExt;
    let mut s = Secure::new();
    let p = s.pki();
    let admin = p.join("user.token");
    let _w = s.worker(
        "w",
        &format!(
            "tls_ca = \"{}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
            p.join("ca.pem").display(),
            p.join("worker-1.pem").display(),
            p.join("worker-1-key.pem").display()
        ),
    );
    let ok = |out: &Output| {
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let refused = |out: &Output, code: i32, says: &str| {
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(code), "{err}");
        assert!(err.contains(says), "expected {says:?} in: {err}");
    };
    let token_file = |name: &str, admin_role: bool| -> PathBuf {
        let mut args = vec!["tokens", "add", name, "-o", "json"];
        if admin_role {
            args.push("--admin");
        }
        let js: serde_json::Value = serde_json::from_str(&ok(&s.cli(Some(&admin), &args))).unwrap();
        assert_eq!(js["role"], if admin_role { "admin" } else { "user" });
        let f = s.dir.path().join(format!("{name}.token"));
        std::fs::write(&f, js["token"].as_str().unwrap()).unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        f
    };
    let alice = token_file("alice", false);
    let bob = token_file("bob", false);
    let carol = token_file("carol", true);
    assert!(
        ok(&s.cli(Some(&alice), &["tokens", "whoami"])).contains("alice (user, token from issued)")
    );
    // A name can be issued once.
    refused(
        &s.cli(Some(&admin), &["tokens", "add", "alice"]),
        65,
        "exists",
    );

    let spec = s.dir.path().join("a.yaml");
    std::fs::write(
        &spec,
        "name: alices\nmethod: grid\ncommand: [sleep, '30']\nparameters:\n  x: {values: [1, 2]}\n",
    )
    .unwrap();
    ok(&s.cli(Some(&alice), &["submit", spec.to_str().unwrap()]));
    let sweeps: serde_json::Value =
        serde_json::from_str(&ok(&s.cli(Some(&bob), &["status", "-o", "json"]))).unwrap();
    assert_eq!(sweeps[0]["owner"], "alice", "{sweeps}");
    let table = ok(&s.cli(Some(&bob), &["status"]));
    assert!(
        table.contains("OWNER") && table.contains("alice"),
        "{table}"
    );
    // bob reads alice's jobs, and changes nothing of hers.
    let jobs: serde_json::Value =
        serde_json::from_str(&ok(&s.cli(Some(&bob), &["jobs", "alices", "-o", "json"]))).unwrap();
    let job = jobs[0]["id"].as_str().unwrap().to_string();
    for args in [
        vec!["pause", "alices"],
        vec!["cancel", "alices"],
        vec!["cancel", &job],
    ] {
        refused(&s.cli(Some(&bob), &args), 77, "belongs to alice");
    }
    let workers = s.workers();
    let wid = workers[0]["id"].as_str().unwrap().to_string();
    refused(&s.cli(Some(&bob), &["drain", &wid]), 77, "needs an admin");
    refused(
        &s.cli(Some(&bob), &["tokens", "add", "mallory", "--admin"]),
        77,
        "needs an admin",
    );
    refused(
        &s.cli(Some(&bob), &["tokens", "list"]),
        77,
        "needs an admin",
    );
    // alice pauses her own; carol (an admin) cancels it.
    ok(&s.cli(Some(&alice), &["pause", "alices"]));
    ok(&s.cli(Some(&carol), &["cancel", "alices"]));
    let listed = ok(&s.cli(Some(&admin), &["tokens", "list", "-o", "json"]));
    let names: Vec<String> = serde_json::from_str::<serde_json::Value>(&listed)
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            format!(
                "{}:{}:{}",
                t["name"].as_str().unwrap(),
                t["role"].as_str().unwrap(),
                t["source"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        names,
        [
            "admin:admin:file",
            "alice:user:issued",
            "bob:user:issued",
            "carol:admin:issued"
        ]
    );
    for f in [&alice, &bob, &carol] {
        let t = std::fs::read_to_string(f).unwrap();
        assert!(!listed.contains(t.trim()), "a token is listed");
    }
    // Revoked: refused at once, and after a restart.
    ok(&s.cli(Some(&admin), &["tokens", "revoke", "bob"]));
    refused(&s.cli(Some(&bob), &["status"]), 77, "revoked");
    refused(
        &s.cli(Some(&admin), &["tokens", "revoke", "admin"]),
        65,
        "user_token_file",
    );
    s.coordinator.kill();
    let cfg = s.dir.path().join("coordinator.toml");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("127.0.0.1:0", &s.addr);
    std::fs::write(&cfg, text).unwrap();
    let (c, _) = start(&cfg, &[], &s.dir.path().join("coordinator2.log"))
        .unwrap_or_else(|o| panic!("{}", String::from_utf8_lossy(&o.stderr)));
    s.coordinator = c;
    refused(&s.cli(Some(&bob), &["status"]), 77, "revoked");
    assert!(ok(&s.cli(Some(&alice), &["tokens", "whoami"])).contains("alice"));
    let sweeps: serde_json::Value =
        serde_json::from_str(&ok(&s.cli(Some(&alice), &["status", "-o", "json"]))).unwrap();
    assert_eq!(sweeps[0]["owner"], "alice", "the owner is stored: {sweeps}");
}

/// Stalled uploads (#19 item 9) on the real binaries: 20 "workers" that
/// joined with the join token each hold a job and open 30 uploads that send a
/// header and nothing more (600 in all). Users are served meanwhile, every
/// stalled upload is ended (refused at once past the caps, or after
/// `upload_idle_timeout_secs`), and a real worker's checkpoint is stored.
#[test]
fn stalled_uploads_from_joined_workers_starve_no_one() {
    use liandan_proto::v1 as pb;
    let s = Secure::with("upload_idle_timeout_secs = 3.0\n", None);
    let p = s.pki();
    let token = p.join("user.token");
    let spec = s.dir.path().join("bait.yaml");
    let values: Vec<String> = (0..20).map(|i| i.to_string()).collect();
    std::fs::write(
        &spec,
        format!(
            "name: bait\nmethod: grid\ncommand: [sleep, '120']\nparameters:\n  x: {{values: [{}]}}\n",
            values.join(", ")
        ),
    )
    .expect("spec");
    assert!(s
        .cli(Some(&token), &["submit", spec.to_str().expect("utf-8")])
        .status
        .success());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let uploads = rt.block_on(async {
        let mut held = Vec::new();
        for _ in 0..20 {
            let mut client = token_only_client(&s).await;
            let (tx, rx) = tokio::sync::mpsc::channel(16);
            let hello = pb::WorkerMessage {
                msg: Some(pb::worker_message::Msg::Hello(pb::Hello {
                    hostname: "intruder".into(),
                    resources: Some(pb::Resources {
                        cpu_slots: 1,
                        ..Default::default()
                    }),
                    ..Default::default()
                })),
            };
            tx.send(hello).await.expect("send");
            let mut inbound = client
                .session(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
                .expect("session")
                .into_inner();
            let (mut id, mut secret, mut job) = (String::new(), String::new(), None);
            while job.is_none() {
                match inbound
                    .message()
                    .await
                    .expect("message")
                    .and_then(|m| m.msg)
                {
                    Some(pb::coordinator_message::Msg::Welcome(w)) => {
                        id = w.worker_id;
                        secret = w.worker_secret;
                    }
                    Some(pb::coordinator_message::Msg::Assign(a)) => job = Some(a),
                    Some(_) => {}
                    None => panic!("the session ended before an assignment"),
                }
            }
            // Heartbeats keep the lease; the rest of the stream is read and dropped.
            tokio::spawn(async move {
                loop {
                    let beat = pb::WorkerMessage {
                        msg: Some(pb::worker_message::Msg::Heartbeat(pb::Heartbeat::default())),
                    };
                    if tx.send(beat).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            });
            tokio::spawn(async move { while let Ok(Some(_)) = inbound.message().await {} });
            held.push((client, id, secret, job.expect("assigned")));
        }
        let mut uploads = Vec::new();
        for (client, id, secret, a) in &held {
            for step in 0..30 {
                let (utx, urx) = tokio::sync::mpsc::channel(1);
                utx.send(pb::CheckpointUpload {
                    header: Some(pb::CheckpointUploadHeader {
                        job_id: a.job_id.clone(),
                        attempt: a.attempt,
                        step,
                        size: 1 << 20,
                        blake3: "0".repeat(64),
                        worker_id: id.clone(),
                        metric: None,
                    }),
                    offset: 0,
                    data: Vec::new(),
                })
                .await
                .expect("header");
                let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(urx));
                req.metadata_mut()
                    .insert("liandan-worker-id", id.parse().expect("id"));
                req.metadata_mut()
                    .insert("liandan-worker-secret", secret.parse().expect("secret"));
                let mut client = client.clone();
                uploads.push(tokio::spawn(async move {
                    let r = client.upload_checkpoint(req).await;
                    // The sender lives until the coordinator ends the upload: stalled.
                    drop(utx);
                    r.is_err() || r.is_ok_and(|r| !r.into_inner().accepted)
                }));
            }
        }
        uploads
    });
    // Everyone else is served while they stall.
    std::thread::sleep(Duration::from_millis(500));
    let t = std::time::Instant::now();
    assert!(
        s.cli_within(Duration::from_secs(5), Some(&token), &["status"]),
        "status was not served while 600 uploads stalled"
    );
    assert!(s.cli_within(Duration::from_secs(5), Some(&token), &["jobs", "bait"]));
    assert!(t.elapsed() < Duration::from_secs(5));
    // Every stalled upload is ended by the coordinator, none accepted.
    let ended = rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(20), async {
            let mut n = 0;
            for u in uploads {
                if u.await.expect("task") {
                    n += 1;
                }
            }
            n
        })
        .await
    });
    assert_eq!(
        ended,
        Ok(600),
        "every stalled upload was ended within 20 s, none accepted"
    );
    // A real worker's checkpoint goes through.
    let _w = s.worker(
        "real",
        &format!(
            "tls_ca = \"{}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
            p.join("ca.pem").display(),
            p.join("worker-1.pem").display(),
            p.join("worker-1-key.pem").display()
        ),
    );
    let ck = s.dir.path().join("ck.yaml");
    std::fs::write(
        &ck,
        "name: ck\nmethod: grid\ncommand: [sh, -c, 'printf mine > \"$LIANDAN_CHECKPOINT_DIR/.t\" && mv \"$LIANDAN_CHECKPOINT_DIR/.t\" \"$LIANDAN_CHECKPOINT_DIR/step-1.ckpt\" && sleep 2']\nparameters:\n  x: {value: 1}\n",
    )
    .expect("spec");
    assert!(s
        .cli(Some(&token), &["submit", ck.to_str().expect("utf-8")])
        .status
        .success());
    let stored = eventually(Duration::from_secs(30), || {
        let jobs: serde_json::Value =
            serde_json::from_slice(&s.cli(Some(&token), &["jobs", "ck", "-o", "json"]).stdout)
                .ok()?;
        let job = jobs[0]["id"].as_str()?.to_string();
        let cks: serde_json::Value = serde_json::from_slice(
            &s.cli(Some(&token), &["checkpoints", &job, "-o", "json"])
                .stdout,
        )
        .ok()?;
        (cks.as_array()?.len() == 1).then_some(())
    });
    assert!(
        stored.is_some(),
        "the real worker's checkpoint was not stored; worker log:\n{}",
        _w.log_text()
    );
    drop(rt);
}

/// Per-user quotas (#19 item 10) on the real binaries: alice may have 3
/// queued jobs and 1 running; a submit past the first is refused (exit 65,
/// naming the setting), and with two free slots only one of her jobs runs
/// while bob's runs beside it.
#[test]
fn users_are_held_to_their_quotas() {
    use std::os::unix::fs::PermissionsExt;
    let s = Secure::with(
        "max_queued_jobs_per_user = 3\nmax_running_jobs_per_user = 1\n",
        None,
    );
    let p = s.pki();
    let admin = p.join("user.token");
    let token_file = |name: &str| -> PathBuf {
        let out = s.cli(Some(&admin), &["tokens", "add", name, "-o", "json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let js: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let f = s.dir.path().join(format!("{name}.token"));
        std::fs::write(&f, js["token"].as_str().unwrap()).unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        f
    };
    let (alice, bob) = (token_file("alice"), token_file("bob"));
    let write = |name: &str, n: usize| -> String {
        let f = s.dir.path().join(format!("{name}.yaml"));
        let v: Vec<String> = (0..n).map(|i| i.to_string()).collect();
        std::fs::write(
            &f,
            format!("name: {name}\nmethod: grid\ncommand: [sleep, '30']\nparameters:\n  x: {{values: [{}]}}\n", v.join(", ")),
        )
        .unwrap();
        f.display().to_string()
    };
    let a1 = write("a1", 2);
    let a2 = write("a2", 2);
    let b1 = write("b1", 2);
    assert!(s.cli(Some(&alice), &["submit", &a1]).status.success());
    let over = s.cli(Some(&alice), &["submit", &a2]);
    let err = String::from_utf8_lossy(&over.stderr);
    assert_eq!(over.status.code(), Some(65), "{err}");
    assert!(err.contains("max_queued_jobs_per_user (3)"), "{err}");
    assert!(s.cli(Some(&bob), &["submit", &b1]).status.success());
    let _w = s.worker_with_env(
        "w",
        &format!(
            "tls_ca = \"{}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\nslots = 3\n",
            p.join("ca.pem").display(),
            p.join("worker-1.pem").display(),
            p.join("worker-1-key.pem").display()
        ),
        &[],
    );
    let running = |sweep: &str| -> usize {
        let out = s.cli(
            Some(&admin),
            &["jobs", sweep, "--state", "running", "-o", "json"],
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .ok()
            .and_then(|v| v.as_array().map(|a| a.len()))
            .unwrap_or(0)
    };
    let both = eventually(Duration::from_secs(20), || {
        (running("a1") >= 1 && running("b1") >= 1).then_some(())
    });
    assert!(both.is_some(), "both users' jobs run");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        running("a1"),
        1,
        "alice is held at one running job with a slot free"
    );
    assert_eq!(running("b1"), 1, "bob too");
}
