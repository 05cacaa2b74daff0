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
    /// From `user_token_file`: (token, who). A line holding only a token is
    /// the user `admin`, an admin (what `liandan certs init` writes).
    file_tokens: Vec<(String, Caller)>,
    /// Issued by `liandan tokens add`: BLAKE3 (hex) of the token → who.
    issued: std::sync::RwLock<std::collections::HashMap<String, Caller>>,
    join_token: Option<String>,
    mtls: bool,
}

/// Who made a user RPC, as its token says. Put in the request's extensions
/// by the interceptor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The token's name: the owner of the sweeps it submits ("" without
    /// user authentication).
    pub name: String,
    pub admin: bool,
}

impl Caller {
    /// Anyone, with every right: user authentication is off (loopback only).
    pub fn open() -> Caller {
        Caller {
            name: String::new(),
            admin: true,
        }
    }

    pub fn role(&self) -> &'static str {
        if self.admin {
            "admin"
        } else {
            "user"
        }
    }

    /// The caller of a request that went through the interceptor.
    pub fn of<T>(req: &Request<T>) -> Caller {
        req.extensions()
            .get::<Caller>()
            .cloned()
            // No interceptor ran (in-process tests): as without authentication.
            .unwrap_or_else(Caller::open)
    }

    /// Admins only: `what` names the act for the refusal.
    pub fn must_be_admin(&self, what: &str) -> Result<(), Status> {
        if self.admin {
            return Ok(());
        }
        Err(Status::permission_denied(format!(
            "{what} needs an admin's token; {} is a user (an admin can make one with `liandan tokens add NAME --admin`)",
            self.name
        )))
    }
}

/// The role word of a token line or request.
pub fn parse_role(role: &str) -> Option<bool> {
    match role {
        "admin" => Some(true),
        "user" => Some(false),
        _ => None,
    }
}

/// Parses `user_token_file`: one token per line (the user `admin`, an admin),
/// or `NAME ROLE TOKEN` (ROLE `user` or `admin`); `#` starts a comment line.
pub fn parse_user_tokens(text: &str, source: &str) -> Result<Vec<(String, Caller)>, String> {
    let mut out: Vec<(String, Caller)> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let at = || format!("{source} line {}", i + 1);
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (token, caller) = match fields[..] {
            [token] => (
                token,
                Caller {
                    name: "admin".into(),
                    admin: true,
                },
            ),
            [name, role, token] => {
                liandan_common::names::validate("user name", name)
                    .map_err(|e| format!("{}: {e}", at()))?;
                let admin = parse_role(role).ok_or_else(|| {
                    format!("{}: role {role:?}: expected \"user\" or \"admin\"", at())
                })?;
                (
                    token,
                    Caller {
                        name: name.into(),
                        admin,
                    },
                )
            }
            _ => {
                return Err(format!(
                    "{}: expected a token, or NAME ROLE TOKEN (3 fields), found {} fields",
                    at(),
                    fields.len()
                ))
            }
        };
        if out.iter().any(|(_, c)| c.name == caller.name) {
            return Err(format!(
                "{}: the name {:?} is given twice (each user's sweeps are theirs by name)",
                at(),
                caller.name
            ));
        }
        out.push((token.to_string(), caller));
    }
    Ok(out)
}

/// The stored form of an issued token.
pub fn token_hash(token: &str) -> String {
    blake3::hash(token.as_bytes()).to_hex().to_string()
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
        let source = if cfg.user_token_file.is_empty() {
            "the credential liandan-user-tokens"
        } else {
            cfg.user_token_file.as_str()
        };
        let file_tokens = match secret(&cfg.user_token_file, "liandan-user-tokens")? {
            Some(text) => {
                let t = parse_user_tokens(&text, source)?;
                if t.is_empty() {
                    return Err(format!("{source} holds no token: user authentication would let no one in; put a token in it (`liandan certs init` makes one)"));
                }
                t
            }
            None => Vec::new(),
        };
        let join_token = secret(&cfg.join_token_file, "liandan-join-token")?;
        let mtls = !cfg.tls_client_ca.is_empty();
        let auth = Auth {
            file_tokens,
            issued: Default::default(),
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
        if !auth.users_on() {
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
    /// No authentication at all (a loopback coordinator; in-process tests).
    pub fn open() -> Auth {
        Auth {
            file_tokens: Vec::new(),
            issued: Default::default(),
            join_token: None,
            mtls: false,
        }
    }

    /// Whether user RPCs are authenticated (a user token file is configured).
    pub fn users_on(&self) -> bool {
        !self.file_tokens.is_empty()
    }

    /// Who a user RPC comes from, if it may proceed.
    pub fn check_user<T>(&self, req: &Request<T>) -> Result<Caller, Status> {
        if !self.users_on() {
            return Ok(Caller::open());
        }
        let presented = bearer(req);
        if let Some(t) = &presented {
            // Every file token is compared (constant time each), whichever matches.
            let mut found = None;
            for (tok, who) in &self.file_tokens {
                if token_eq(tok, t) && found.is_none() {
                    found = Some(who.clone());
                }
            }
            if found.is_none() {
                // Issued tokens are looked up by hash: a lookup leaks nothing
                // about a token whose hash the caller cannot invert.
                found = self
                    .issued
                    .read()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&token_hash(t))
                    .cloned();
            }
            if let Some(who) = found {
                return Ok(who);
            }
        }
        tracing::warn!(peer = ?req.remote_addr(), presented = presented.is_some(), "refused a user RPC: missing or wrong token");
        Err(Status::unauthenticated("missing, wrong or revoked token: give the CLI a user token with --token-file or LIANDAN_TOKEN"))
    }

    /// The file's users (their tokens are not shown).
    pub fn file_users(&self) -> Vec<Caller> {
        self.file_tokens.iter().map(|(_, c)| c.clone()).collect()
    }

    /// Replaces the issued tokens (hash → who), as the database holds them.
    pub fn set_issued(&self, tokens: std::collections::HashMap<String, Caller>) {
        *self.issued.write().unwrap_or_else(|p| p.into_inner()) = tokens;
    }

    pub fn add_issued(&self, hash: String, who: Caller) {
        self.issued
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(hash, who);
    }

    pub fn remove_issued(&self, name: &str) {
        self.issued
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, c| c.name != name);
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
        let mut req = req;
        if self.worker {
            self.auth.check_worker(&req)?;
        } else {
            let who = self.auth.check_user(&req)?;
            req.extensions_mut().insert(who);
        }
        Ok(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_lines_are_bare_admin_tokens_or_named_with_a_role() {
        let t =
            parse_user_tokens("# users\nT0\nalice user T1\n\nbob admin T2\n", "f").expect("parses");
        let got: Vec<(&str, &str, bool)> = t
            .iter()
            .map(|(tok, c)| (tok.as_str(), c.name.as_str(), c.admin))
            .collect();
        assert_eq!(
            got,
            [
                ("T0", "admin", true),
                ("T1", "alice", false),
                ("T2", "bob", true)
            ]
        );
        for (bad, says) in [
            ("alice root T1\n", "f line 1: role \"root\""),
            ("a b\n", "f line 1: expected a token, or NAME ROLE TOKEN"),
            (
                "T0\nadmin user T1\n",
                "f line 2: the name \"admin\" is given twice",
            ),
            ("x/y user T\n", "f line 1:"),
        ] {
            let e = parse_user_tokens(bad, "f").expect_err(bad);
            assert!(e.contains(says), "{bad:?}: {e}");
        }
    }
}
