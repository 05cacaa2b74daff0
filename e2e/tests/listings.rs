//! Large replies break nothing (#19 item 10): listings come in pages, sweep
//! files are capped, and sweeps can be deleted.

use liandan_e2e::{Cluster, Opts};

fn code(out: &std::process::Output) -> (Option<i32>, String) {
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A 30,000-job sweep lists in full under a 1 MiB message limit (one reply
/// of it was 2.7 MB, as 200,000 jobs are over the default 16 MiB), a sweep
/// file over max_spec_bytes (256 KiB here) is refused at submit with the setting to change,
/// and `status` keeps working for everyone.
#[test]
fn a_huge_sweep_lists_in_pages_and_a_huge_spec_is_refused() {
    let c = Cluster::start(
        0,
        Opts {
            coordinator_env: vec![
                ("LIANDAN_MAX_MESSAGE_BYTES".into(), "1048576".into()),
                ("LIANDAN_MAX_SPEC_BYTES".into(), "262144".into()),
            ],
            ..Opts::default()
        },
    );
    // A grid of 20 x 1,500 values.
    let values: Vec<String> = (0..1_500).map(|i| i.to_string()).collect();
    let spec = c.write(
        "big.yaml",
        &format!(
            "name: big\nmethod: grid\ncommand: ['true', '${{args}}']\nparameters:\n  a: {{values: [{}]}}\n  b: {{values: [{}]}}\n",
            (0..20).map(|i| i.to_string()).collect::<Vec<_>>().join(", "),
            values.join(", ")
        ),
    );
    let sweep = c.submit(&spec);
    let out = c.cli(&["jobs", &sweep, "-o", "csv"]);
    let (rc, err) = code(&out);
    assert_eq!(rc, Some(0), "{err}");
    let lines = out.stdout.iter().filter(|b| **b == b'\n').count();
    assert_eq!(lines, 30_001, "a header and every job");
    let queued = c.cli(&["jobs", &sweep, "--state", "queued", "-o", "json"]);
    let js: serde_json::Value = serde_json::from_slice(&queued.stdout).expect("json");
    assert_eq!(js.as_array().map(|a| a.len()), Some(30_000));

    // 400 KB of values, over max_spec_bytes: refused, naming the setting;
    // nothing added.
    let huge: Vec<String> = (0..45_000).map(|i| format!("{i}.5")).collect();
    let spec = c.write(
        "huge.yaml",
        &format!(
            "name: huge\nmethod: random\nrun_cap: 1\ncommand: ['true']\nparameters:\n  a: {{values: [{}]}}\n",
            huge.join(", ")
        ),
    );
    assert!(std::fs::metadata(&spec).expect("spec").len() > 262_144);
    let (rc, err) = code(&c.cli(&["submit", spec.to_str().expect("path")]));
    assert_eq!(rc, Some(65), "{err}");
    assert!(err.contains("max_spec_bytes"), "{err}");
    let st = c.cli_json(&["status", "-o", "json"]);
    assert_eq!(st.as_array().map(|a| a.len()), Some(1), "{st}");
    assert!(st[0].get("spec_json").is_none());
}

/// `liandan delete` refuses a sweep with running jobs (exit 65, naming
/// --force), deletes it with --force (cancelled, its running jobs waited
/// for), and it stays deleted after a restart of the coordinator; its name
/// can be used again, its jobs' attempts numbered above the deleted ones.
#[test]
fn a_sweep_is_deleted_with_everything_of_it() {
    let mut c = Cluster::start(1, Opts::default());
    let done = c.write(
        "done.yaml",
        "name: done\nmethod: grid\ncommand: [echo, hi]\nparameters:\n  x: {values: [1, 2]}\n",
    );
    let sweep = c.submit(&done);
    let st = c.wait_finished(&sweep, std::time::Duration::from_secs(30));
    assert_eq!(st["succeeded"], 2, "{st}");
    let jobs = c.cli_json(&["jobs", &sweep, "-o", "json"]);
    let job = jobs[0]["id"].as_str().expect("id").to_string();
    let slow = c.write(
        "slow.yaml",
        "name: slow\nmethod: grid\ncommand: [sleep, '60']\nparameters:\n  x: {values: [1, 2, 3, 4, 5]}\n",
    );
    let slow_id = c.submit(&slow);
    let (rc, err) = code(&c.cli(&["delete", "slow"]));
    assert_eq!(rc, Some(65), "{err}");
    assert!(
        err.contains("--force") && err.contains("running job(s)"),
        "{err}"
    );
    let out = c.cli(&["delete", "slow", "--force", "-o", "json"]);
    let (rc, err) = code(&out);
    assert_eq!(rc, Some(0), "{err}");
    let js: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(js["jobs_deleted"], 5, "{js}");
    let out = c.cli(&["delete", &sweep]);
    assert_eq!(code(&out).0, Some(0), "{}", code(&out).1);
    assert!(String::from_utf8_lossy(&out.stdout).contains("deleted sweep"));
    c.restart_coordinator();
    let st = c.cli_json(&["status", "-o", "json"]);
    assert_eq!(st.as_array().map(|a| a.len()), Some(0), "{st}");
    let (rc, _) = code(&c.cli(&["logs", &job]));
    assert_eq!(rc, Some(67), "the job's logs went with it");
    for table in ["jobs", "attempts", "logs", "trials"] {
        assert_eq!(
            c.query_i64(&format!("SELECT count(*) FROM {table}")),
            0,
            "{table}"
        );
    }
    let _ = slow_id;
    // The name is free again; the same job ids start at attempt 2, so what
    // an old attempt 1 might still send is fenced off as stale.
    let again = c.submit(&done);
    assert_eq!(again, sweep);
    let st = c.wait_finished(&again, std::time::Duration::from_secs(30));
    assert_eq!(st["succeeded"], 2, "{st}");
    let jobs = c.cli_json(&["jobs", &again, "-o", "json"]);
    assert!(
        jobs.as_array()
            .expect("jobs")
            .iter()
            .all(|j| j["attempt"] == 2),
        "{jobs}"
    );
}
