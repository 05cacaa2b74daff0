//! Authentication helpers shared by the binaries: secrets read from files
//! whose permissions are checked, tokens compared in constant time and never
//! logged, the token interceptor clients attach to every RPC, the TLS crypto
//! provider, and worker identities derived from client certificates.

use crate::ids::WorkerId;
use std::path::Path;

/// A secret that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read secret file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("secret file {path} can be read by other users (mode {mode:o}); run `chmod 600 {path}` (and make it owned by the service user)")]
    TooOpen { path: String, mode: u32 },
    #[error("secret file {path} is empty")]
    Empty { path: String },
}

/// Reads a secret (a token) from a file that only its owner may read.
pub fn read_secret_file(path: &Path) -> Result<String, SecretError> {
    use std::os::unix::fs::PermissionsExt;
    let p = path.display().to_string();
    let meta = std::fs::metadata(path).map_err(|source| SecretError::Read {
        path: p.clone(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(SecretError::TooOpen { path: p, mode });
    }
    let text = std::fs::read_to_string(path).map_err(|source| SecretError::Read {
        path: p.clone(),
        source,
    })?;
    let t = text.trim().to_string();
    if t.is_empty() {
        return Err(SecretError::Empty { path: p });
    }
    Ok(t)
}

/// The systemd credential `name` (`LoadCredential=NAME:PATH` in the unit),
/// when the service was given one: `$CREDENTIALS_DIRECTORY/NAME`, trimmed.
/// No mode check: systemd makes that directory private to the service, and
/// grants a `User=` service its files with an ACL, which shows as group bits.
pub fn read_credential(name: &str) -> Option<Result<String, SecretError>> {
    let dir = std::env::var_os("CREDENTIALS_DIRECTORY")?;
    let path = Path::new(&dir).join(name);
    if !path.is_file() {
        return None;
    }
    let p = path.display().to_string();
    Some(match std::fs::read_to_string(&path) {
        Err(source) => Err(SecretError::Read { path: p, source }),
        Ok(t) if t.trim().is_empty() => Err(SecretError::Empty { path: p }),
        Ok(t) => Ok(t.trim().to_string()),
    })
}

/// Compares two tokens in constant time (for equal lengths).
pub fn token_eq(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// A new random token (256 bits from the OS, hex).
pub fn generate_token() -> String {
    use rand_core::{OsRng, TryRngCore};
    let mut b = [0u8; 32];
    // The OS generator failing is not recoverable: no token is better than a weak one.
    OsRng
        .try_fill_bytes(&mut b)
        .expect("the operating system's random generator failed");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Installs rustls' ring crypto provider for the process (once; later calls are no-ops).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The worker id bound to a client certificate: `wk-` and the start of its BLAKE3.
pub fn worker_id_from_cert_der(der: &[u8]) -> WorkerId {
    WorkerId::from_suffix(&crate::ids::short_hash(&[b"worker-cert", der], 6))
}

/// The worker id of the first certificate in a PEM file's text.
pub fn worker_id_from_cert_pem(pem: &str) -> Option<WorkerId> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let cert = CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()?
        .ok()?;
    Some(worker_id_from_cert_der(cert.as_ref()))
}

/// A join-token worker's identity as the coordinator issued it: (id, secret).
pub type WorkerIdentity = std::sync::Arc<std::sync::Mutex<Option<(String, String)>>>;

/// Adds `authorization: Bearer <token>` to every request (when there is a
/// token) and, for a worker that was issued an identity, its id and secret
/// (`liandan-worker-id`, `liandan-worker-secret`).
#[derive(Clone, Default)]
pub struct TokenInterceptor {
    header: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
    worker: Option<WorkerIdentity>,
}

impl TokenInterceptor {
    pub fn new(token: Option<&str>) -> Result<TokenInterceptor, String> {
        let header =
            match token {
                Some(t) => Some(format!("Bearer {t}").parse().map_err(|_| {
                    "the token has characters that cannot go in a header".to_string()
                })?),
                None => None,
            };
        Ok(TokenInterceptor {
            header,
            worker: None,
        })
    }

    /// Also sends the worker identity held in `identity` (once it is set).
    pub fn with_worker_identity(mut self, identity: WorkerIdentity) -> TokenInterceptor {
        self.worker = Some(identity);
        self
    }
}

impl tonic::service::Interceptor for TokenInterceptor {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(h) = &self.header {
            req.metadata_mut().insert("authorization", h.clone());
        }
        let identity = self
            .worker
            .as_ref()
            .and_then(|w| w.lock().unwrap_or_else(|p| p.into_inner()).clone());
        if let Some((id, secret)) = identity {
            // Ids and issued secrets are lowercase hex and dashes: always valid values.
            if let (Ok(i), Ok(s)) = (id.parse(), secret.parse()) {
                req.metadata_mut().insert("liandan-worker-id", i);
                req.metadata_mut().insert("liandan-worker-secret", s);
            }
        }
        Ok(req)
    }
}

/// The token of a request's `authorization: Bearer` header.
pub fn bearer<T>(req: &tonic::Request<T>) -> Option<String> {
    req.metadata()
        .get("authorization")?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(|s| s.trim().to_string())
}

/// Whether a URL's host is this machine (`localhost`, 127.0.0.0/8, ::1).
pub fn is_loopback_host(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.eq_ignore_ascii_case("localhost")
        || h.parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The host a token would reach in the clear: `Some` when `url` is plaintext
/// `http://` (any case) to anything but this machine, where anyone on the
/// path could read the token and act as its owner. The CLI (user tokens) and
/// the worker (join tokens) refuse to connect then.
pub fn token_in_the_clear(url: &str) -> Option<String> {
    let plaintext = url
        .get(..7)
        .is_some_and(|p| p.eq_ignore_ascii_case("http://"));
    if !plaintext {
        return None;
    }
    let host = url
        .parse::<tonic::codegen::http::Uri>()
        .ok()
        .and_then(|u| u.host().map(str::to_string))
        .unwrap_or_else(|| url.to_string());
    (!is_loopback_host(&host)).then_some(host)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn secret_files_must_be_private() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("token");
        std::fs::write(&p, "s3cret\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = read_secret_file(&p).unwrap_err().to_string();
        assert!(e.contains("chmod 600") && e.contains("644"), "{e}");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_secret_file(&p).unwrap(), "s3cret");
    }

    #[test]
    fn tokens() {
        assert!(token_eq("abc", "abc"));
        assert!(!token_eq("abc", "abd"));
        assert!(!token_eq("abc", "abcd"));
        let t = generate_token();
        assert_eq!(t.len(), 64);
        assert_ne!(t, generate_token());
    }
}

#[cfg(test)]
mod transport_tests {
    use super::*;

    #[test]
    fn a_token_goes_over_plaintext_only_to_loopback() {
        let cases: &[(&str, Option<&str>)] = &[
            ("http://127.0.0.1:7477", None),
            ("http://127.3.4.5:7477", None),
            ("http://localhost:7477", None),
            ("http://[::1]:7477", None),
            (
                "http://coordinator.example:7477",
                Some("coordinator.example"),
            ),
            (
                "HTTP://coordinator.example:7477",
                Some("coordinator.example"),
            ),
            ("http://192.0.2.7:7477", Some("192.0.2.7")),
            ("https://coordinator.example:7477", None),
        ];
        for (url, want) in cases {
            assert_eq!(token_in_the_clear(url).as_deref(), *want, "{url}");
        }
    }
}
