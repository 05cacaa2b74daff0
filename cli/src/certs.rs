//! `liandan certs init DIR`: a private CA and the certificates and tokens of a
//! small cluster, so the secure set-up is one command:
//!
//! - `ca.pem` (and `ca-key.pem`, keep it offline): the cluster CA;
//! - `coordinator.pem` / `coordinator-key.pem`: server certificate for the given hosts;
//! - `worker-N.pem` / `worker-N-key.pem`: client certificates (mutual TLS), one per worker;
//! - `user.token`, `join.token`: a user token for the CLI and a join token for
//!   workers without certificates.
//!
//! Keys and tokens are written with mode 600.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

fn write(path: &Path, data: &str, private: bool) -> Result<(), String> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(path)
        .map_err(|e| {
            format!(
                "cannot create {} ({e}); choose an empty directory",
                path.display()
            )
        })?;
    f.write_all(data.as_bytes())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

fn err(e: rcgen::Error) -> String {
    format!("certificate generation failed: {e}")
}

/// Writes the CA, coordinator and worker certificates and the tokens into `dir`.
pub fn init(dir: &Path, hosts: &[String], workers: usize) -> Result<String, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let ca_key = KeyPair::generate().map_err(err)?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    ca.distinguished_name
        .push(DnType::CommonName, "liandan cluster CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key).map_err(err)?;
    let issuer = Issuer::new(ca, &ca_key);
    write(&dir.join("ca.pem"), &ca_cert.pem(), false)?;
    write(&dir.join("ca-key.pem"), &ca_key.serialize_pem(), true)?;

    let mut names: Vec<String> = hosts.to_vec();
    for h in ["localhost", "127.0.0.1"] {
        if !names.iter().any(|n| n == h) {
            names.push(h.to_string());
        }
    }
    let key = KeyPair::generate().map_err(err)?;
    let mut p = CertificateParams::new(names.clone()).map_err(err)?;
    p.distinguished_name
        .push(DnType::CommonName, "liandan coordinator");
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = p.signed_by(&key, &issuer).map_err(err)?;
    write(&dir.join("coordinator.pem"), &cert.pem(), false)?;
    write(&dir.join("coordinator-key.pem"), &key.serialize_pem(), true)?;

    let mut ids = Vec::new();
    for i in 1..=workers {
        let key = KeyPair::generate().map_err(err)?;
        let mut p = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
        p.distinguished_name
            .push(DnType::CommonName, format!("liandan worker {i}"));
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = p.signed_by(&key, &issuer).map_err(err)?;
        write(&dir.join(format!("worker-{i}.pem")), &cert.pem(), false)?;
        write(
            &dir.join(format!("worker-{i}-key.pem")),
            &key.serialize_pem(),
            true,
        )?;
        ids.push(liandan_common::auth::worker_id_from_cert_der(
            cert.der().as_ref(),
        ));
    }
    write(
        &dir.join("user.token"),
        &format!("{}\n", liandan_common::auth::generate_token()),
        true,
    )?;
    write(
        &dir.join("join.token"),
        &format!("{}\n", liandan_common::auth::generate_token()),
        true,
    )?;
    let d = dir.display();
    let mut out = format!("wrote a cluster CA, a coordinator certificate for {}, {workers} worker certificate(s) and two tokens to {d}\n\n", names.join(", "));
    out.push_str(&format!(
        "coordinator.toml:\n  tls_cert = \"{d}/coordinator.pem\"\n  tls_key = \"{d}/coordinator-key.pem\"\n  tls_client_ca = \"{d}/ca.pem\"\n  user_token_file = \"{d}/user.token\"\n  join_token_file = \"{d}/join.token\"\n\n"
    ));
    out.push_str(&format!("worker.toml (worker N):\n  coordinator = \"https://{}:7477\"\n  tls_ca = \"{d}/ca.pem\"\n  tls_cert = \"{d}/worker-N.pem\"\n  tls_key = \"{d}/worker-N-key.pem\"\n\n", hosts.first().map(String::as_str).unwrap_or("localhost")));
    out.push_str(&format!("CLI:\n  export LIANDAN_COORDINATOR=https://{}:7477 LIANDAN_CA_CERT={d}/ca.pem LIANDAN_TOKEN_FILE={d}/user.token\n", hosts.first().map(String::as_str).unwrap_or("localhost")));
    for (i, id) in ids.iter().enumerate() {
        out.push_str(&format!("worker-{} identity: {id}\n", i + 1));
    }
    out.push_str("user.token is the user `admin` (an admin): give others their own with `liandan tokens add NAME` (`--admin` for admins)\n");
    out.push_str("keep ca-key.pem offline: whoever has it can mint worker certificates\n");
    Ok(out)
}
