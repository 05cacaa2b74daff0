//! Layered configuration: compiled defaults → a TOML file (`--config FILE`) →
//! `LIANDAN_*` environment variables (`__` for nesting) → command-line flags,
//! then `validate()`. Every error names the key and the expected form, and the
//! binaries exit with [`crate::exit::CONFIG`] (78) on it.

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// A configuration that cannot be used. `Display` is one line.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("config file {path}: unknown key `{key}`; known keys are: {known}")]
    UnknownKey {
        path: PathBuf,
        key: String,
        known: String,
    },
    #[error("config: {0}")]
    Invalid(String),
    #[error("config key `{key}`: {message}")]
    Key { key: String, message: String },
}

/// Keys whose value is a list: comma-separated in the environment and in flags.
const LIST_KEYS: &[&str] = &["labels"];

/// Loads `T` from its defaults, an optional TOML file, `LIANDAN_*` variables and
/// flag overrides (`(key, value)` pairs, applied last).
pub fn load<T>(file: Option<&Path>, overrides: &[(&str, String)]) -> Result<T, ConfigError>
where
    T: DeserializeOwned + Serialize + Default,
{
    let defaults =
        config::Config::try_from(&T::default()).map_err(|e| ConfigError::Invalid(e.to_string()))?;
    let mut builder = config::Config::builder().add_source(defaults);
    if let Some(path) = file {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
            path: path.to_path_buf(),
            message: format!("cannot read it ({e}); check the path given to --config"),
        })?;
        check_known_keys::<T>(path, &text)?;
        builder = builder.add_source(config::File::from_str(&text, config::FileFormat::Toml));
    }
    builder = builder.add_source(
        config::Environment::with_prefix("LIANDAN")
            .prefix_separator("_")
            .separator("__")
            .try_parsing(true)
            .list_separator(",")
            .with_list_parse_key(LIST_KEYS[0])
            .ignore_empty(true),
    );
    for (key, value) in overrides {
        // A list key's flag is comma-separated, as its environment variable.
        let value: config::Value = if LIST_KEYS.contains(key) {
            value
                .split(',')
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(String::from)
                .collect::<Vec<_>>()
                .into()
        } else {
            value.clone().into()
        };
        builder = builder
            .set_override(*key, value)
            .map_err(|e| ConfigError::Key {
                key: key.to_string(),
                message: e.to_string(),
            })?;
    }
    let cfg = builder
        .build()
        .map_err(|e| ConfigError::Invalid(one_line(&e.to_string())))?;
    cfg.try_deserialize::<T>()
        .map_err(|e| ConfigError::Invalid(one_line(&e.to_string())))
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Keys that were renamed: (configuration type, old, new). The worker's
/// `token_file` became `join_token_file`, so that `LIANDAN_TOKEN_FILE` (the
/// CLI's user token) no longer sets it from a user's shell.
const RENAMED: &[(&str, &str, &str)] = &[("WorkerConfig", "token_file", "join_token_file")];

/// Rejects keys in the file that `T` does not have (a typo must not be silently ignored).
fn check_known_keys<T: Serialize + Default>(path: &Path, text: &str) -> Result<(), ConfigError> {
    let file: toml::Table = toml::from_str(text).map_err(|e| ConfigError::File {
        path: path.to_path_buf(),
        message: one_line(&e.to_string()),
    })?;
    let known =
        serde_json::to_value(T::default()).map_err(|e| ConfigError::Invalid(e.to_string()))?;
    let mut known_keys = BTreeSet::new();
    collect_keys(&known, "", &mut known_keys);
    let mut file_keys = BTreeSet::new();
    collect_toml_keys(&toml::Value::Table(file), "", &mut file_keys, &known);
    for key in file_keys {
        if !known_keys.contains(&key) {
            let of_t = std::any::type_name::<T>();
            if let Some((_, _, new)) = RENAMED
                .iter()
                .find(|(ty, old, _)| *old == key && of_t.ends_with(ty))
            {
                return Err(ConfigError::File {
                    path: path.to_path_buf(),
                    message: format!("key `{key}` is now `{new}`; rename it"),
                });
            }
            let known = known_keys.iter().cloned().collect::<Vec<_>>().join(", ");
            return Err(ConfigError::UnknownKey {
                path: path.to_path_buf(),
                key,
                known,
            });
        }
    }
    Ok(())
}

fn collect_keys(v: &serde_json::Value, prefix: &str, out: &mut BTreeSet<String>) {
    if let serde_json::Value::Object(map) = v {
        for (k, v) in map {
            let key = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            out.insert(key.clone());
            collect_keys(v, &key, out);
        }
    }
}

fn collect_toml_keys(
    v: &toml::Value,
    prefix: &str,
    out: &mut BTreeSet<String>,
    known: &serde_json::Value,
) {
    if let toml::Value::Table(t) = v {
        for (k, v) in t {
            let key = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            out.insert(key.clone());
            // Only descend into tables that are structs in T (maps of free keys stay opaque).
            let sub = key.split('.').try_fold(known, |node, part| node.get(part));
            if matches!(sub, Some(serde_json::Value::Object(_))) {
                collect_toml_keys(v, &key, out, known);
            }
        }
    }
}

/// Renders a config as TOML with every key whose name mentions a secret redacted.
pub fn render_redacted<T: Serialize>(cfg: &T) -> String {
    let mut v = serde_json::to_value(cfg).unwrap_or(serde_json::Value::Null);
    redact(&mut v);
    let as_toml: Result<toml::Value, _> = serde_json::from_value(v);
    match as_toml.map(|t| toml::to_string_pretty(&t)) {
        Ok(Ok(s)) => s,
        _ => String::from("# (config could not be rendered)\n"),
    }
}

fn redact(v: &mut serde_json::Value) {
    if let serde_json::Value::Object(map) = v {
        for (k, v) in map.iter_mut() {
            let secret = ["token", "secret", "password"]
                .iter()
                .any(|s| k.contains(s))
                && !k.ends_with("_file");
            if secret && !v.is_null() {
                *v = serde_json::Value::String("<redacted>".into());
            } else {
                redact(v);
            }
        }
    }
}

fn default_data_root() -> PathBuf {
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("liandan")
}

/// The coordinator's default port.
pub const DEFAULT_PORT: u16 = 7477;

/// Configuration of `liandan-coordinator`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct CoordinatorConfig {
    /// Address to listen on (`host:port`); loopback by default.
    pub listen: String,
    /// Directory for the database, logs and checkpoints.
    pub data_dir: PathBuf,
    /// Seconds without a heartbeat after which a worker's attempts are lost.
    pub lease_timeout_secs: f64,
    /// Seconds workers get to reconnect after a coordinator restart.
    pub restart_grace_secs: f64,
    /// Seconds between worker heartbeats (told to workers).
    pub heartbeat_interval_secs: f64,
    /// First retry delay after a failed attempt; doubles per retry.
    pub retry_backoff_secs: f64,
    /// Upper bound of the retry delay.
    pub retry_backoff_max_secs: f64,
    /// Checkpoints kept per job (the newest K, plus the best by the sweep metric).
    pub checkpoint_keep_last: u32,
    /// Largest gRPC message accepted, in bytes.
    pub max_message_bytes: usize,
    /// Log format: "text" or "json".
    pub log_format: String,
    /// Server certificate and key (PEM). Both set: TLS on every connection.
    pub tls_cert: String,
    pub tls_key: String,
    /// CA (PEM) whose client certificates identify workers (mutual TLS).
    pub tls_client_ca: String,
    /// File with the user tokens the CLI must present, one per line (mode 600).
    pub user_token_file: String,
    /// File with the cluster join token workers present when not using mutual TLS (mode 600).
    pub join_token_file: String,
    /// Allow listening beyond loopback without TLS or without authentication.
    /// Anyone who reaches the port can then run commands on every worker.
    pub insecure: bool,
    /// Open connections served at once (further ones wait in the listen
    /// queue). Lowered at start to fit the open-file limit.
    pub max_connections: u32,
    /// Open connections from one IP address; beyond it new ones are closed at once.
    pub max_connections_per_ip: u32,
    /// Seconds a new connection has to complete its TLS handshake (or, without
    /// TLS, to send its HTTP/2 preface) before it is closed.
    pub handshake_timeout_secs: f64,
    /// Days after which a worker that has not connected (and holds no job) is
    /// forgotten: removed from `liandan workers` (it is registered again if it
    /// comes back; counted from its last disconnect; drained ones are kept).
    /// 0 keeps workers until `liandan workers --forget`.
    pub worker_expiry_days: f64,
    /// Checkpoint uploads taken at once; more are refused with "retry shortly"
    /// (workers retry on their own).
    pub max_uploads: u32,
    /// Seconds an upload may go without sending data before it is ended (it
    /// resumes from where it stopped).
    pub upload_idle_timeout_secs: f64,
    /// A job whose worker died (a restart found the attempt's process gone)
    /// during this many of its attempts in a row is taken to be what kills
    /// it: that death and each further one spend a retry, as a failure
    /// does. 0: a worker's death never counts against the job.
    pub max_worker_deaths: u32,
    /// Largest sweep file accepted, in bytes (0: no limit but the message size).
    pub max_spec_bytes: u64,
    /// Queued jobs one user may have across their sweeps; a submit that would
    /// go over is refused (0: no limit).
    pub max_queued_jobs_per_user: u64,
    /// Jobs of one user's sweeps running at once; the rest wait (0: no limit).
    pub max_running_jobs_per_user: u32,
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        Self {
            listen: format!("127.0.0.1:{DEFAULT_PORT}"),
            data_dir: default_data_root().join("coordinator"),
            lease_timeout_secs: 15.0,
            restart_grace_secs: 20.0,
            heartbeat_interval_secs: 2.0,
            retry_backoff_secs: 1.0,
            retry_backoff_max_secs: 60.0,
            max_worker_deaths: 3,
            max_spec_bytes: 1 << 20,
            max_queued_jobs_per_user: 0,
            max_running_jobs_per_user: 0,
            checkpoint_keep_last: 3,
            max_message_bytes: 16 * 1024 * 1024,
            log_format: "text".into(),
            tls_cert: String::new(),
            tls_key: String::new(),
            tls_client_ca: String::new(),
            user_token_file: String::new(),
            join_token_file: String::new(),
            insecure: false,
            max_connections: 8192,
            max_connections_per_ip: 1024,
            handshake_timeout_secs: 10.0,
            worker_expiry_days: 7.0,
            max_uploads: 32,
            upload_idle_timeout_secs: 60.0,
        }
    }
}

fn positive(key: &str, v: f64) -> Result<(), ConfigError> {
    // Below a billion seconds (~32 years): larger ones overflow durations.
    if v.is_finite() && v > 0.0 && v < 1e9 {
        Ok(())
    } else {
        Err(ConfigError::Key {
            key: key.into(),
            message: format!("expected a positive number of seconds (under 1e9), found {v}"),
        })
    }
}

fn log_format(v: &str) -> Result<(), ConfigError> {
    match v {
        "text" | "json" => Ok(()),
        other => Err(ConfigError::Key {
            key: "log_format".into(),
            message: format!("expected \"text\" or \"json\", found {other:?}"),
        }),
    }
}

impl CoordinatorConfig {
    /// Checks every value; the error names the key and the expected form.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.listen.parse::<std::net::SocketAddr>().map_err(|_| ConfigError::Key {
            key: "listen".into(),
            message: format!("expected HOST:PORT with a numeric IP, e.g. 127.0.0.1:{DEFAULT_PORT}, found {:?}", self.listen),
        })?;
        positive("lease_timeout_secs", self.lease_timeout_secs)?;
        positive("restart_grace_secs", self.restart_grace_secs)?;
        positive("heartbeat_interval_secs", self.heartbeat_interval_secs)?;
        positive("retry_backoff_secs", self.retry_backoff_secs)?;
        positive("retry_backoff_max_secs", self.retry_backoff_max_secs)?;
        positive("handshake_timeout_secs", self.handshake_timeout_secs)?;
        positive("upload_idle_timeout_secs", self.upload_idle_timeout_secs)?;
        if !(self.worker_expiry_days.is_finite() && self.worker_expiry_days >= 0.0) {
            return Err(ConfigError::Key {
                key: "worker_expiry_days".into(),
                message: format!(
                    "expected a number of days >= 0 (0: never), found {}",
                    self.worker_expiry_days
                ),
            });
        }
        for (key, v) in [
            ("max_connections", self.max_connections),
            ("max_connections_per_ip", self.max_connections_per_ip),
            ("max_uploads", self.max_uploads),
        ] {
            if v == 0 {
                return Err(ConfigError::Key {
                    key: key.into(),
                    message: "expected an integer >= 1".into(),
                });
            }
        }
        if self.heartbeat_interval_secs >= self.lease_timeout_secs {
            return Err(ConfigError::Key {
                key: "heartbeat_interval_secs".into(),
                message: "must be smaller than lease_timeout_secs".into(),
            });
        }
        if self.checkpoint_keep_last == 0 {
            return Err(ConfigError::Key {
                key: "checkpoint_keep_last".into(),
                message: "expected an integer >= 1".into(),
            });
        }
        if self.max_message_bytes < 64 * 1024 {
            return Err(ConfigError::Key {
                key: "max_message_bytes".into(),
                message: "expected at least 65536".into(),
            });
        }
        if self.tls_cert.is_empty() != self.tls_key.is_empty() {
            return Err(ConfigError::Key {
                key: "tls_key".into(),
                message: "tls_cert and tls_key go together: set both (PEM files) or neither".into(),
            });
        }
        if !self.tls_client_ca.is_empty() && self.tls_cert.is_empty() {
            return Err(ConfigError::Key {
                key: "tls_client_ca".into(),
                message: "mutual TLS needs TLS: set tls_cert and tls_key too".into(),
            });
        }
        log_format(&self.log_format)
    }
}

/// Configuration of `liandan-worker`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct WorkerConfig {
    /// The coordinator's URL.
    pub coordinator: String,
    /// Directory for the worker's identity, journal, spool and job directories.
    pub state_dir: PathBuf,
    /// CPU slots offered to jobs that need no GPU.
    pub slots: u32,
    /// GPU discovery: "auto" (every GPU NVML reports), "visible" (only those in
    /// CUDA_VISIBLE_DEVICES, as in a SLURM or Kubernetes allocation) or "none".
    pub gpus: String,
    /// Labels a job can require.
    pub labels: Vec<String>,
    /// Seconds a job gets between SIGTERM and SIGKILL.
    pub grace_period_secs: f64,
    /// Largest size of the local spool of unacknowledged records, in bytes. When
    /// it is full, reading the job's output pauses (the job blocks on write)
    /// until the coordinator acknowledges: nothing is dropped.
    pub spool_max_bytes: u64,
    /// Upper bound of the reconnect backoff, in seconds.
    pub reconnect_max_secs: f64,
    /// Path of `liandan-train`; empty means next to this binary, then PATH.
    pub train_binary: String,
    /// Directory a sweep's relative `liandan.workdir` and relative `program`
    /// are taken from; empty means the directory the worker was started in.
    pub base_dir: PathBuf,
    /// Log format: "text" or "json".
    pub log_format: String,
    /// CA certificate (PEM) that signed the coordinator's certificate; needed for https:// URLs.
    pub tls_ca: String,
    /// This worker's client certificate and key (PEM) for mutual TLS; the
    /// coordinator identifies the worker by it (its id derives from the certificate).
    pub tls_cert: String,
    pub tls_key: String,
    /// File holding the cluster join token (when mutual TLS is not used); or
    /// set LIANDAN_JOIN_TOKEN, or pass the credential `liandan-join-token`
    /// (systemd `LoadCredential=`). The file must be private (mode 600).
    pub join_token_file: String,
    /// Days a failed attempt's directory (its output files and checkpoints)
    /// is kept for inspection; finished attempts whose records and uploads the
    /// coordinator acknowledged are removed at once. 0 removes failed ones too.
    pub keep_failed_days: f64,
    /// Seconds between sweeps of the job directories (also run at start and
    /// whenever the coordinator acknowledges an attempt's end).
    pub retention_interval_secs: f64,
    /// The unprivileged user jobs run as (empty: the worker's own user). The
    /// worker must then run as root or with the capabilities the README
    /// lists; the state dir becomes unreadable to jobs.
    pub job_user: String,
    /// Each attempt in its own cgroup (v2), killed whole when it ends or is
    /// cancelled: "auto" (where the worker may create cgroups, e.g. systemd's
    /// Delegate=yes), "required" (refuse to start without) or "off".
    pub job_cgroups: String,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            coordinator: format!("http://127.0.0.1:{DEFAULT_PORT}"),
            state_dir: default_data_root().join("worker"),
            slots: std::thread::available_parallelism()
                .map(|n| n.get() as u32)
                .unwrap_or(1),
            gpus: "auto".into(),
            labels: Vec::new(),
            grace_period_secs: 10.0,
            spool_max_bytes: 1 << 30,
            reconnect_max_secs: 10.0,
            train_binary: String::new(),
            base_dir: PathBuf::new(),
            log_format: "text".into(),
            tls_ca: String::new(),
            tls_cert: String::new(),
            tls_key: String::new(),
            join_token_file: String::new(),
            keep_failed_days: 7.0,
            retention_interval_secs: 300.0,
            job_user: String::new(),
            job_cgroups: "auto".into(),
        }
    }
}

impl WorkerConfig {
    /// Checks every value; the error names the key and the expected form.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(self.coordinator.starts_with("http://") || self.coordinator.starts_with("https://")) {
            return Err(ConfigError::Key {
                key: "coordinator".into(),
                message: format!(
                    "expected a URL like http://127.0.0.1:{DEFAULT_PORT}, found {:?}",
                    self.coordinator
                ),
            });
        }
        if self.slots == 0 && self.gpus == "none" {
            return Err(ConfigError::Key {
                key: "slots".into(),
                message: "expected an integer >= 1 (this worker would offer nothing)".into(),
            });
        }
        if !matches!(self.gpus.as_str(), "auto" | "visible" | "none") {
            return Err(ConfigError::Key {
                key: "gpus".into(),
                message: format!(
                    "expected \"auto\", \"visible\" or \"none\", found {:?}",
                    self.gpus
                ),
            });
        }
        for l in &self.labels {
            crate::names::validate("label", l).map_err(|e| ConfigError::Key {
                key: "labels".into(),
                message: e.to_string(),
            })?;
        }
        positive("grace_period_secs", self.grace_period_secs)?;
        positive("reconnect_max_secs", self.reconnect_max_secs)?;
        positive("retention_interval_secs", self.retention_interval_secs)?;
        if !(self.keep_failed_days.is_finite() && self.keep_failed_days >= 0.0) {
            return Err(ConfigError::Key {
                key: "keep_failed_days".into(),
                message: format!(
                    "expected a number of days >= 0, found {}",
                    self.keep_failed_days
                ),
            });
        }
        if self.tls_cert.is_empty() != self.tls_key.is_empty() {
            return Err(ConfigError::Key {
                key: "tls_key".into(),
                message: "tls_cert and tls_key go together: set both (PEM files) or neither".into(),
            });
        }
        if self.coordinator.starts_with("https://") && self.tls_ca.is_empty() {
            return Err(ConfigError::Key {
                key: "tls_ca".into(),
                message:
                    "an https:// coordinator needs tls_ca, the CA certificate (PEM) that signed it"
                        .into(),
            });
        }
        if !matches!(self.job_cgroups.as_str(), "auto" | "required" | "off") {
            return Err(ConfigError::Key {
                key: "job_cgroups".into(),
                message: format!(
                    "expected \"auto\", \"required\" or \"off\", found {:?}",
                    self.job_cgroups
                ),
            });
        }
        if self.spool_max_bytes < 1 << 20 {
            return Err(ConfigError::Key {
                key: "spool_max_bytes".into(),
                message: "expected at least 1048576".into(),
            });
        }
        log_format(&self.log_format)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    #[test]
    fn layers_apply_in_order() {
        let f = file("lease_timeout_secs = 30.0\nlisten = \"127.0.0.1:9000\"\n");
        let c: CoordinatorConfig =
            load(Some(f.path()), &[("listen", "127.0.0.1:9001".into())]).unwrap();
        assert_eq!(c.lease_timeout_secs, 30.0);
        assert_eq!(c.listen, "127.0.0.1:9001");
        assert_eq!(c.restart_grace_secs, 20.0);
    }

    #[test]
    fn a_list_flag_is_comma_separated() {
        let c: WorkerConfig = load(None, &[("labels", "a100, fast-disk".into())]).unwrap();
        assert_eq!(c.labels, ["a100", "fast-disk"]);
        assert!(c.validate().is_ok());
        let c: WorkerConfig = load(None, &[("labels", "bad label".into())]).unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("labels"));
    }

    #[test]
    fn errors_name_the_key() {
        let f = file("lease_timout_secs = 3\n");
        let e = load::<CoordinatorConfig>(Some(f.path()), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown key `lease_timout_secs`"), "{e}");

        let f = file("lease_timeout_secs = \"soon\"\n");
        let e = load::<CoordinatorConfig>(Some(f.path()), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("lease_timeout_secs"), "{e}");
        assert!(!e.contains('\n'));

        let c = CoordinatorConfig {
            listen: "localhost".into(),
            ..Default::default()
        };
        let e = c.validate().unwrap_err().to_string();
        assert_eq!(e, "config key `listen`: expected HOST:PORT with a numeric IP, e.g. 127.0.0.1:7477, found \"localhost\"");

        let w = WorkerConfig {
            gpus: "some".into(),
            ..Default::default()
        };
        assert_eq!(
            w.validate().unwrap_err().to_string(),
            "config key `gpus`: expected \"auto\", \"visible\" or \"none\", found \"some\""
        );
    }

    #[test]
    fn print_config_redacts_secrets() {
        #[derive(Serialize, Default)]
        struct S {
            token: Option<String>,
            token_file: String,
            listen: String,
        }
        let s = render_redacted(&S {
            token: Some("hunter2".into()),
            token_file: "/etc/t".into(),
            listen: "x".into(),
        });
        assert!(!s.contains("hunter2"), "{s}");
        assert!(s.contains("/etc/t"));
    }
}

#[cfg(test)]
mod example_files {
    //! The example configs in deploy/examples list every key and parse: they never rot.
    use super::*;
    use std::collections::BTreeSet;

    fn keys_of<T: Serialize>(v: &T) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        collect_keys(&serde_json::to_value(v).unwrap(), "", &mut out);
        out
    }

    fn file_keys(text: &str) -> BTreeSet<String> {
        let t: toml::Table = toml::from_str(text).unwrap();
        t.keys().cloned().collect()
    }

    fn check<T>(name: &str, differs: &[&str])
    where
        T: DeserializeOwned + Serialize + Default + std::fmt::Debug,
    {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../deploy/examples")
            .join(name);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            file_keys(&text),
            keys_of(&T::default()),
            "{name} must list every key exactly once"
        );
        let loaded: T = load(Some(&path), &[]).unwrap_or_else(|e| panic!("{name}: {e}"));
        // Every value is the default, except the machine-specific ones named here.
        let a = serde_json::to_value(&loaded).unwrap();
        let d = serde_json::to_value(T::default()).unwrap();
        for k in keys_of(&T::default()) {
            if !differs.contains(&k.as_str()) {
                assert_eq!(a[&k], d[&k], "{name}: `{k}` is not the default");
            }
        }
    }

    #[test]
    fn coordinator_example_lists_every_key_with_its_default() {
        check::<CoordinatorConfig>("coordinator.toml", &["data_dir"]);
        let c: CoordinatorConfig = load(
            Some(
                &std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("../deploy/examples/coordinator.toml"),
            ),
            &[],
        )
        .unwrap();
        c.validate().unwrap();
    }

    #[test]
    fn worker_example_lists_every_key_with_its_default() {
        check::<WorkerConfig>("worker.toml", &["state_dir", "slots"]);
        let w: WorkerConfig = load(
            Some(
                &std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("../deploy/examples/worker.toml"),
            ),
            &[],
        )
        .unwrap();
        w.validate().unwrap();
    }
}
