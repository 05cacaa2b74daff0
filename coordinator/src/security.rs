//! Who may talk to the coordinator. TLS (rustls) with the server certificate;
//! optionally mutual TLS, where a worker is identified by its client
//! certificate; user tokens checked on every user RPC and a join token (or a
//! client certificate) on every worker RPC, compared in constant time and never
//! logged. Health and reflection stay open for probes.
//!
//! Safe by default: listening beyond loopback without TLS, or without
//! authentication, is refused unless `insecure` is set, and then warned about
//! at every start.

use liandan_common::auth::{bearer, read_secret_file, token_eq, worker_id_from_cert_der};
use liandan_common::config::CoordinatorConfig;
use liandan_common::ids::WorkerId;
use std::sync::Arc;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};
use tonic::{Request, Status};

/// The loaded security settings.
pub struct Security {
    pub tls: Option<ServerTlsConfig>,
    pub auth: Arc<Auth>,
}

/// Token checks shared by the interceptors.
pub struct Auth {
    user_tokens: Vec<String>,
    join_token: Option<String>,
    mtls: bool,
}

fn read(path: &str, what: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {what} {path}: {e}"))
}

impl Security {
    /// Reads certificates and tokens and applies the safe-by-default rule.
    pub fn load(cfg: &CoordinatorConfig) -> Result<Security, String> {
        let tls = if cfg.tls_cert.is_empty() {
            None
        } else {
            let identity = Identity::from_pem(
                read(&cfg.tls_cert, "tls_cert")?,
                read(&cfg.tls_key, "tls_key")?,
            );
            let mut t = ServerTlsConfig::new().identity(identity);
            if !cfg.tls_client_ca.is_empty() {
                // Optional at the handshake so the CLI (tokens, no certificate) can
                // connect; a presented certificate must chain to this CA.
                t = t
                    .client_ca_root(Certificate::from_pem(read(
                        &cfg.tls_client_ca,
                        "tls_client_ca",
                    )?))
                    .client_auth_optional(true);
            }
            Some(t)
        };
        // A file the configuration names, else the systemd credential
        // (`LoadCredential=liandan-user-tokens:...` / `liandan-join-token:...`).
        let secret = |file: &str, credential: &str| -> Result<Option<String>, String> {
            if file.is_empty() {
                liandan_common::auth::read_credential(credential)
                    .transpose()
                    .map_err(|e| e.to_string())
            } else {
                read_secret_file(std::path::Path::new(file))
                    .map(Some)
                    .map_err(|e| e.to_string())
            }
        };
        let user_tokens = secret(&cfg.user_token_file, "liandan-user-tokens")?
            .map(|text| {
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default();
        let join_token = secret(&cfg.join_token_file, "liandan-join-token")?;
        let mtls = !cfg.tls_client_ca.is_empty();
        let auth = Auth {
            user_tokens,
            join_token,
            mtls,
        };

        let loopback = cfg
            .listen
            .parse::<std::net::SocketAddr>()
            .map(|a| a.ip().is_loopback())
            .unwrap_or(false);
        let mut gaps = Vec::new();
        if tls.is_none() {
            gaps.push("TLS (tls_cert, tls_key)");
        }
        if auth.user_tokens.is_empty() {
            gaps.push("user authentication (user_token_file)");
        }
        if auth.join_token.is_none() && !auth.mtls {
            gaps.push("worker authentication (join_token_file or tls_client_ca)");
        }
        if !loopback && !gaps.is_empty() {
            if !cfg.insecure {
                return Err(format!(
                    "refusing to listen on {} without {}: anyone who reaches this port could run commands on every worker. Configure them (`liandan certs init` makes a CA, certificates and tokens; see the README's \"Deploying on a cluster\"), or pass --insecure to accept the risk",
                    cfg.listen,
                    gaps.join(" and ")
                ));
            }
            tracing::warn!(listen = %cfg.listen, missing = %gaps.join(", "), "INSECURE: listening beyond loopback without {}; anyone who reaches this port can run commands on every worker", gaps.join(" and "));
        }
        Ok(Security {
            tls,
            auth: Arc::new(auth),
        })
    }
}

impl Auth {
    /// Whether a user RPC may proceed.
    pub fn check_user<T>(&self, req: &Request<T>) -> Result<(), Status> {
        if self.user_tokens.is_empty() {
            return Ok(());
        }
        match bearer(req) {
            Some(t) if self.user_tokens.iter().any(|u| token_eq(u, &t)) => Ok(()),
            got => {
                tracing::warn!(peer = ?req.remote_addr(), presented = got.is_some(), "refused a user RPC: missing or wrong token");
                Err(Status::unauthenticated("missing or wrong token: give the CLI a user token with --token-file or LIANDAN_TOKEN"))
            }
        }
    }

    /// Whether a worker RPC may proceed: a verified client certificate, or the join token.
    pub fn check_worker<T>(&self, req: &Request<T>) -> Result<(), Status> {
        if self.join_token.is_none() && !self.mtls {
            return Ok(());
        }
        if self.mtls && req.peer_certs().is_some_and(|c| !c.is_empty()) {
            return Ok(());
        }
        match (&self.join_token, bearer(req)) {
            (Some(j), Some(t)) if token_eq(j, &t) => Ok(()),
            (_, got) => {
                tracing::warn!(peer = ?req.remote_addr(), presented = got.is_some(), "refused a worker RPC: no client certificate and no valid join token");
                Err(Status::unauthenticated("workers need a client certificate signed by the cluster CA, or the cluster join token (join_token_file or LIANDAN_JOIN_TOKEN)"))
            }
        }
    }
}

/// The worker id a request's client certificate binds it to, if it presented one.
pub fn cert_worker_id<T>(req: &Request<T>) -> Option<WorkerId> {
    let certs = req.peer_certs()?;
    certs.first().map(|c| worker_id_from_cert_der(c.as_ref()))
}

/// A tonic interceptor for one of the two services.
#[derive(Clone)]
pub struct Check {
    pub auth: Arc<Auth>,
    pub worker: bool,
}

impl tonic::service::Interceptor for Check {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        if self.worker {
            self.auth.check_worker(&req)?;
        } else {
            self.auth.check_user(&req)?;
        }
        Ok(req)
    }
}
