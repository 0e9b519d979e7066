//! Certificates for a test or small install (`tug certs init DIR`): a CA, a server certificate
//! for the API and the agent endpoint, and one client certificate per agent, named after it (the
//! server checks that an agent's name is in its certificate).
//!
//! | file | what |
//! | --- | --- |
//! | `ca.pem` | the CA: give it to clients (`--ca`) and to the server for agents (`--agent-ca`) |
//! | `ca-key.pem` | the CA's key: keep it off the hosts; `tug certs agent` signs more agents with it |
//! | `server.pem`, `server-key.pem` | the server's (`--tls-cert`, `--tls-key`): localhost, 127.0.0.1, ::1 and the names given |
//! | `agent-NAME.pem`, `agent-NAME-key.pem` | an agent's (`--cert`, `--key`) |

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use time::OffsetDateTime;

use crate::TlsError;

/// When certificates are valid.
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    /// From.
    pub not_before: OffsetDateTime,
    /// Until.
    pub not_after: OffsetDateTime,
}

impl Validity {
    /// From an hour ago (clocks differ a little) for `days` days.
    pub fn days(days: u32) -> Validity {
        let now = OffsetDateTime::now_utc();
        Validity { not_before: now - time::Duration::hours(1), not_after: now + time::Duration::days(i64::from(days)) }
    }
}

/// The CA's name; `tug certs agent` rebuilds the issuer from it, so it never changes.
const CA_NAME: &str = "Tugboat CA";

fn ca_params(validity: Validity) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, CA_NAME);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    p.not_before = validity.not_before;
    p.not_after = validity.not_after;
    p
}

fn leaf_params(cn: &str, names: &[String], purpose: ExtendedKeyUsagePurpose, validity: Validity) -> Result<CertificateParams, TlsError> {
    let mut p = CertificateParams::new(names.to_vec()).map_err(|source| TlsError::Generate { what: format!("the certificate for {cn}"), source })?;
    p.distinguished_name.push(DnType::CommonName, cn);
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    p.extended_key_usages = vec![purpose];
    p.not_before = validity.not_before;
    p.not_after = validity.not_after;
    Ok(p)
}

/// A file to write: name, contents, whether it is secret (mode 0600).
type Out = (String, String, bool);

fn issue(issuer: &Issuer<'_, KeyPair>, params: CertificateParams, stem: &str, what: &str) -> Result<[Out; 2], TlsError> {
    let gen_err = |source| TlsError::Generate { what: what.to_owned(), source };
    let key = KeyPair::generate().map_err(gen_err)?;
    let cert = params.signed_by(&key, issuer).map_err(gen_err)?;
    Ok([(format!("{stem}.pem"), cert.pem(), false), (format!("{stem}-key.pem"), key.serialize_pem(), true)])
}

/// The file stem of an agent's certificate.
pub fn agent_stem(name: &str) -> String {
    format!("agent-{name}")
}

/// Makes a CA, a server certificate (for localhost, 127.0.0.1, ::1 and `server_names`) and a
/// certificate per agent name in `dir`; writes nothing if any file is there already. Returns the
/// files written.
pub fn init(dir: &Path, server_names: &[String], agents: &[String], validity: Validity) -> Result<Vec<PathBuf>, TlsError> {
    let gen_err = |source| TlsError::Generate { what: "the CA".into(), source };
    let ca_key = KeyPair::generate().map_err(gen_err)?;
    let ca_cert = ca_params(validity).self_signed(&ca_key).map_err(gen_err)?;
    let mut out: Vec<Out> = vec![("ca.pem".into(), ca_cert.pem(), false), ("ca-key.pem".into(), ca_key.serialize_pem(), true)];
    let issuer = Issuer::new(ca_params(validity), ca_key);
    let mut names: Vec<String> = ["localhost", "127.0.0.1", "::1"].iter().map(|s| s.to_string()).collect();
    names.extend(server_names.iter().filter(|n| !names.contains(n)).cloned().collect::<Vec<_>>());
    let server = leaf_params("tugboat server", &names, ExtendedKeyUsagePurpose::ServerAuth, validity)?;
    out.extend(issue(&issuer, server, "server", "the server certificate")?);
    for a in agents {
        let params = leaf_params(a, std::slice::from_ref(a), ExtendedKeyUsagePurpose::ClientAuth, validity)?;
        out.extend(issue(&issuer, params, &agent_stem(a), &format!("the certificate of agent {a}"))?);
    }
    write_all(dir, &out)
}

/// Signs a certificate for agent `name` with the CA in `dir` (made by [`init`]).
pub fn issue_agent(dir: &Path, name: &str, validity: Validity) -> Result<Vec<PathBuf>, TlsError> {
    let key_path = dir.join("ca-key.pem");
    let pem = std::fs::read_to_string(&key_path).map_err(|source| TlsError::Read { path: key_path.display().to_string(), source })?;
    let ca_key = KeyPair::from_pem(&pem).map_err(|source| TlsError::Generate { what: format!("reading {}", key_path.display()), source })?;
    let issuer = Issuer::new(ca_params(validity), ca_key);
    let params = leaf_params(name, &[name.to_owned()], ExtendedKeyUsagePurpose::ClientAuth, validity)?;
    let out = issue(&issuer, params, &agent_stem(name), &format!("the certificate of agent {name}"))?;
    write_all(dir, &out)
}

fn write_all(dir: &Path, out: &[Out]) -> Result<Vec<PathBuf>, TlsError> {
    std::fs::create_dir_all(dir).map_err(|source| TlsError::Write { path: dir.display().to_string(), source })?;
    for (name, _, _) in out {
        let p = dir.join(name);
        if p.exists() {
            return Err(TlsError::Exists { path: p.display().to_string() });
        }
    }
    let mut written = Vec::new();
    for (name, text, secret) in out {
        let p = dir.join(name);
        let write_err = |source| TlsError::Write { path: p.display().to_string(), source };
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(if *secret { 0o600 } else { 0o644 })
            .open(&p)
            .map_err(write_err)?;
        f.write_all(text.as_bytes()).map_err(write_err)?;
        written.push(p);
    }
    Ok(written)
}

/// Whether the end-entity certificate `der` is for `name` (a DNS name in its subject alternative
/// names), as the agent endpoint checks an agent's name against its client certificate.
pub fn cert_is_for(der: &rustls_pki_types::CertificateDer<'_>, name: &str) -> bool {
    let Ok(cert) = webpki::EndEntityCert::try_from(der) else { return false };
    let Ok(server_name) = rustls_pki_types::ServerName::try_from(name) else { return false };
    cert.verify_is_valid_for_subject_name(&server_name).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_writes_every_file_with_secret_modes_and_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let files = init(dir.path(), &["tug.example".into()], &["a1".into()], Validity::days(30)).unwrap();
        let names: Vec<String> = files.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
        assert_eq!(names, ["ca.pem", "ca-key.pem", "server.pem", "server-key.pem", "agent-a1.pem", "agent-a1-key.pem"]);
        use std::os::unix::fs::PermissionsExt;
        let mode = |n: &str| std::fs::metadata(dir.path().join(n)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode("ca-key.pem"), 0o600);
        assert_eq!(mode("agent-a1-key.pem"), 0o600);
        assert_eq!(mode("ca.pem"), 0o644);
        let err = init(dir.path(), &[], &[], Validity::days(30)).unwrap_err().to_string();
        assert!(err.contains("ca.pem exists"), "{err}");
        // A later agent from the same CA; its name is in its certificate, another's is not.
        issue_agent(dir.path(), "a2", Validity::days(30)).unwrap();
        let a2 = crate::files::load_certs(&dir.path().join("agent-a2.pem"), "certificate").unwrap();
        assert!(cert_is_for(&a2[0], "a2"));
        assert!(!cert_is_for(&a2[0], "a1"));
    }
}
