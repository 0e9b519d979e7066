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
//! | `crl.pem`, `revoked.txt` | the agents' certificates revoked (`tug certs revoke`): the list the server takes (`--agent-crl`), and its record (serial, name, when in Unix seconds and RFC 3339) |

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

/// A new key and a certificate signing request for agent `name`, both PEM: what an agent that
/// has only the join token sends the server ([`AgentIssuer::sign`]) to get its certificate.
pub fn agent_request(name: &str) -> Result<(String, String), TlsError> {
    let gen_err = |source| TlsError::Generate { what: format!("a certificate request for agent {name}"), source };
    let key = KeyPair::generate().map_err(gen_err)?;
    let mut params = CertificateParams::new(vec![name.to_owned()]).map_err(gen_err)?;
    params.distinguished_name.push(DnType::CommonName, name);
    let csr = params.serialize_request(&key).map_err(gen_err)?;
    Ok((key.serialize_pem(), csr.pem().map_err(gen_err)?))
}

/// The CA's key held by the server, which signs agents' certificates against the join token
/// (`tug server --agent-ca-key`). Every certificate it signs is recorded in `issued.txt` beside
/// the key (serial, name, end in Unix seconds), so `tug certs revoke` finds it by the agent's
/// name; a name in `revoked.txt` there gets no new certificate.
pub struct AgentIssuer {
    issuer: Issuer<'static, KeyPair>,
    dir: PathBuf,
    lifetime: std::time::Duration,
    /// Held while `issued.txt` is written: a pruning rewrite must not lose another's line.
    record: std::sync::Mutex<()>,
}

/// `issued.txt` is rewritten without its expired certificates once it is larger than this
/// (about 4,000 lines: renewals add one per agent every two thirds of a lifetime).
const PRUNE_ABOVE: u64 = 256 << 10;

impl std::fmt::Debug for AgentIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentIssuer").field("dir", &self.dir).field("lifetime", &self.lifetime).finish_non_exhaustive()
    }
}

/// Why a certificate request was refused.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    /// The request is not a CSR, or its signature does not match its key.
    #[error("the certificate request is not valid: {0}")]
    BadRequest(String),
    /// The agent's name was revoked (`tug certs revoke`).
    #[error(
        "agent {0:?} has been revoked (tug certs revoke), so it gets no new certificate;          a retired host's name stays revoked: give a new host another --name"
    )]
    Revoked(String),
    /// Signing or recording failed.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

impl AgentIssuer {
    /// The CA of `ca_cert` (PEM) with its key `ca_key` (PEM), signing certificates valid for
    /// `lifetime`; records go beside the key.
    pub fn load(ca_cert: &Path, ca_key: &Path, lifetime: std::time::Duration) -> Result<AgentIssuer, TlsError> {
        let key = KeyPair::from_pem(&read_text(ca_key)?).map_err(|e| TlsError::Pem {
            path: ca_key.display().to_string(),
            what: "the CA key (the ca-key.pem of tug certs init)",
            detail: e.to_string(),
        })?;
        let issuer = Issuer::from_ca_cert_pem(&read_text(ca_cert)?, key).map_err(|e| TlsError::Pem {
            path: ca_cert.display().to_string(),
            what: "the CA certificate",
            detail: e.to_string(),
        })?;
        let dir = ca_key.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf();
        Ok(AgentIssuer { issuer, dir, lifetime, record: std::sync::Mutex::new(()) })
    }

    /// How long the certificates it signs are valid.
    pub fn lifetime(&self) -> std::time::Duration {
        self.lifetime
    }

    /// Signs `csr_pem`'s key into a client certificate for agent `name` (whatever names the
    /// request asks for), recording it; returns the certificate as PEM.
    pub fn sign(&self, name: &str, csr_pem: &str) -> Result<String, IssueError> {
        if revoked_names(&self.dir)?.iter().any(|n| n == name) {
            return Err(IssueError::Revoked(name.to_owned()));
        }
        let mut csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| IssueError::BadRequest(e.to_string()))?;
        let now = OffsetDateTime::now_utc();
        let not_after = now + self.lifetime;
        // A few minutes back: the agent's clock may be a little behind the server's.
        let validity = Validity { not_before: now - time::Duration::minutes(5), not_after };
        csr.params = leaf_params(name, &[name.to_owned()], ExtendedKeyUsagePurpose::ClientAuth, validity)?;
        let cert = csr.signed_by(&self.issuer).map_err(|source| TlsError::Generate { what: format!("the certificate of agent {name}"), source })?;
        let serial = serial_of(cert.der()).unwrap_or_default();
        let hex: String = serial.iter().map(|b| format!("{b:02x}")).collect();
        let record = self.dir.join("issued.txt");
        let _held = self.record.lock().unwrap_or_else(|e| e.into_inner());
        let write_err = |source| TlsError::Write { path: record.display().to_string(), source };
        if std::fs::metadata(&record).is_ok_and(|m| m.len() > PRUNE_ABOVE) {
            prune_issued(&record, now)?;
        }
        let mut f = std::fs::OpenOptions::new().create(true).append(true).mode(0o644).open(&record).map_err(write_err)?;
        f.write_all(format!("{hex} {name} {}\n", not_after.unix_timestamp()).as_bytes()).map_err(write_err)?;
        f.sync_data().map_err(write_err)?;
        Ok(cert.pem())
    }
}

/// Rewrites the record of issued certificates at `path` without those that ended before `now`
/// (an expired certificate needs no revoking).
fn prune_issued(path: &Path, now: OffsetDateTime) -> Result<(), TlsError> {
    let kept: String = read_text(path)?
        .lines()
        .filter(|l| l.split_whitespace().nth(2).and_then(|end| end.parse::<i64>().ok()).is_none_or(|end| end >= now.unix_timestamp()))
        .map(|l| format!("{l}\n"))
        .collect();
    write_text(path, &kept)
}

/// The names in `dir/revoked.txt` (none when it does not exist).
pub fn revoked_names(dir: &Path) -> Result<Vec<String>, TlsError> {
    let record = dir.join("revoked.txt");
    if !record.exists() {
        return Ok(Vec::new());
    }
    Ok(read_text(&record)?.lines().filter_map(|l| l.split_whitespace().nth(1)).map(str::to_owned).collect())
}

/// Whether the client certificate `cert` is valid now and signed by a CA in the file `ca`.
pub fn issued_by(cert: &rustls_pki_types::CertificateDer<'_>, ca: &Path) -> bool {
    let Ok(roots) = crate::files::load_roots(ca) else { return false };
    let Ok(verifier) = rustls::server::WebPkiClientVerifier::builder_with_provider(std::sync::Arc::new(roots), crate::provider()).build()
    else {
        return false;
    };
    verifier.verify_client_cert(cert, &[], rustls_pki_types::UnixTime::now()).is_ok()
}

/// When the certificate `der` stops being valid (its notAfter), if it can be read.
pub fn not_after(der: &[u8]) -> Option<OffsetDateTime> {
    let cert = x509_parser::parse_x509_certificate(der).ok()?.1;
    OffsetDateTime::from_unix_timestamp(cert.validity().not_after.timestamp()).ok()
}

/// When the certificate `der` became valid (its notBefore), if it can be read.
pub fn not_before(der: &[u8]) -> Option<OffsetDateTime> {
    let cert = x509_parser::parse_x509_certificate(der).ok()?.1;
    OffsetDateTime::from_unix_timestamp(cert.validity().not_before.timestamp()).ok()
}

fn read_text(path: &Path) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(|source| TlsError::Read { path: path.display().to_string(), source })
}

fn write_text(path: &Path, text: &str) -> Result<(), TlsError> {
    // A new file moved over the old one, so a server reading it never sees half of it.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|source| TlsError::Write { path: path.display().to_string(), source })
}

/// Revokes agent `name`'s certificates: the one `tug certs` made (`agent-NAME.pem` in `dir`) and
/// every one the server signed for it (`issued.txt`); adds them to `revoked.txt` and writes
/// `crl.pem`, the revocation list signed by the CA in `dir`, which the server takes with
/// `--agent-crl` (and reloads when it changes). Returns the CRL's path and whether every one was
/// revoked already.
pub fn revoke_agent(dir: &Path, name: &str) -> Result<(PathBuf, bool), TlsError> {
    let cert_path = dir.join(format!("{}.pem", agent_stem(name)));
    let mut serials: Vec<String> = Vec::new();
    let issued = dir.join("issued.txt");
    if issued.exists() {
        for line in read_text(&issued)?.lines() {
            let mut parts = line.split_whitespace();
            if let (Some(hex), Some(n)) = (parts.next(), parts.next())
                && n == name
                && !serials.iter().any(|s| s == hex)
            {
                serials.push(hex.to_owned());
            }
        }
    }
    if cert_path.exists() || serials.is_empty() {
        // Read even when the server signed some: a missing file is then named in the error.
        let certs = crate::files::load_certs(&cert_path, "agent certificate")?;
        let serial = serial_of(&certs[0]).ok_or_else(|| TlsError::Pem {
            path: cert_path.display().to_string(),
            what: "agent certificate",
            detail: "its serial number cannot be read".into(),
        })?;
        serials.push(serial.iter().map(|b| format!("{b:02x}")).collect());
    }
    let record = dir.join("revoked.txt");
    let mut lines = if record.exists() { read_text(&record)? } else { String::new() };
    let now = OffsetDateTime::now_utc();
    let mut already = true;
    for hex in &serials {
        if lines.lines().any(|l| l.split_whitespace().next() == Some(hex.as_str())) {
            continue;
        }
        already = false;
        let at = now.format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
        lines.push_str(&format!("{hex} {name} {} {at}\n", now.unix_timestamp()));
    }
    let mut revoked = Vec::new();
    for line in lines.lines() {
        let mut parts = line.split_whitespace();
        let (Some(h), Some(_), Some(at)) = (parts.next(), parts.next(), parts.next()) else { continue };
        let bytes: Option<Vec<u8>> = (0..h.len()).step_by(2).map(|i| h.get(i..i + 2).and_then(|b| u8::from_str_radix(b, 16).ok())).collect();
        let Some(bytes) = bytes else { continue };
        let when = at.parse().ok().and_then(|secs| OffsetDateTime::from_unix_timestamp(secs).ok()).unwrap_or(now);
        revoked.push(rcgen::RevokedCertParams {
            serial_number: rcgen::SerialNumber::from_slice(&bytes),
            revocation_time: when,
            reason_code: None,
            invalidity_date: None,
        });
    }
    let key_path = dir.join("ca-key.pem");
    let pem = read_text(&key_path)?;
    let gen_err = |source| TlsError::Generate { what: "the revocation list".into(), source };
    let ca_key = KeyPair::from_pem(&pem).map_err(|source| TlsError::Generate { what: format!("reading {}", key_path.display()), source })?;
    let issuer = Issuer::new(ca_params(Validity::days(1)), ca_key);
    let crl = rcgen::CertificateRevocationListParams {
        this_update: now - time::Duration::hours(1),
        next_update: now + time::Duration::days(365),
        crl_number: rcgen::SerialNumber::from(revoked.len() as u64),
        issuing_distribution_point: None,
        revoked_certs: revoked,
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    }
    .signed_by(&issuer)
    .map_err(gen_err)?;
    let crl_path = dir.join("crl.pem");
    write_text(&crl_path, &crl.pem().map_err(gen_err)?)?;
    write_text(&record, &lines)?;
    Ok((crl_path, already))
}

/// The serial number of a certificate (the INTEGER after the optional version in its
/// `tbsCertificate`), as its DER content bytes.
fn serial_of(der: &[u8]) -> Option<Vec<u8>> {
    /// One DER element: tag, contents, what follows.
    fn tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let tag = *b.first()?;
        let first = usize::from(*b.get(1)?);
        let (len, header) = if first < 0x80 {
            (first, 2)
        } else {
            let n = first & 0x7f;
            if n == 0 || n > 4 {
                return None;
            }
            let len = (0..n).try_fold(0usize, |len, i| Some(len << 8 | usize::from(*b.get(2 + i)?)))?;
            (len, 2 + n)
        };
        let end = header.checked_add(len)?;
        Some((tag, b.get(header..end)?, b.get(end..)?))
    }
    let (0x30, cert, _) = tlv(der)? else { return None };
    let (0x30, tbs, _) = tlv(cert)? else { return None };
    let (mut tag, mut value, rest) = tlv(tbs)?;
    if tag == 0xa0 {
        (tag, value, _) = tlv(rest)?;
    }
    (tag == 0x02).then(|| value.to_vec())
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
    use rustls_pki_types::pem::PemObject;

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

    #[test]
    fn a_revoked_agent_certificate_is_refused_and_the_others_are_not() {
        let dir = tempfile::tempdir().unwrap();
        init(dir.path(), &[], &["a1".into(), "a2".into(), "a3".into()], Validity::days(30)).unwrap();
        let (crl, again) = revoke_agent(dir.path(), "a2").unwrap();
        assert!(!again);
        assert!(revoke_agent(dir.path(), "a2").unwrap().1, "revoked once, listed once");
        revoke_agent(dir.path(), "a3").unwrap();
        assert_eq!(std::fs::read_to_string(dir.path().join("revoked.txt")).unwrap().lines().count(), 2);
        let roots = std::sync::Arc::new(crate::files::load_roots(&dir.path().join("ca.pem")).unwrap());
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(roots, crate::provider())
            .with_crls(crate::files::load_crls(&crl).unwrap())
            .only_check_end_entity_revocation()
            .build()
            .unwrap();
        let now = rustls_pki_types::UnixTime::now();
        let check = |name: &str| {
            let cert = crate::files::load_certs(&dir.path().join(format!("agent-{name}.pem")), "certificate").unwrap();
            verifier.verify_client_cert(&cert[0], &[], now).map(drop)
        };
        assert_eq!(check("a1"), Ok(()));
        for revoked in ["a2", "a3"] {
            assert_eq!(check(revoked), Err(rustls::Error::InvalidCertificate(rustls::CertificateError::Revoked)), "{revoked}");
        }
        let err = revoke_agent(dir.path(), "ghost").unwrap_err().to_string();
        assert!(err.contains("agent-ghost.pem"), "{err}");
    }

    #[test]
    fn the_server_signs_an_agents_request_for_its_name_only_and_revocation_finds_it_by_name() {
        let dir = tempfile::tempdir().unwrap();
        init(dir.path(), &[], &[], Validity::days(30)).unwrap();
        let issuer = AgentIssuer::load(&dir.path().join("ca.pem"), &dir.path().join("ca-key.pem"), std::time::Duration::from_secs(3600)).unwrap();
        // Signed for the name the server was given, not another.
        let (key, csr) = agent_request("host1").unwrap();
        let pem = issuer.sign("host1", &csr).unwrap();
        let cert = rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        assert!(cert_is_for(&cert, "host1"));
        assert!(!cert_is_for(&cert, "host2"));
        let end = not_after(&cert).unwrap();
        let left = end - OffsetDateTime::now_utc();
        assert!(left > time::Duration::minutes(59) && left <= time::Duration::hours(1), "valid for the lifetime asked: {left}");
        assert!(issued_by(&cert, &dir.path().join("ca.pem")));
        let other = tempfile::tempdir().unwrap();
        init(other.path(), &[], &[], Validity::days(1)).unwrap();
        assert!(!issued_by(&cert, &other.path().join("ca.pem")), "another CA did not sign it");
        // The key it came with goes with it.
        let file = dir.path().join("agent.pem");
        std::fs::write(&file, format!("{pem}{key}")).unwrap();
        crate::ClientTls::new(None, Some(crate::Identity::load(&file, &file).unwrap())).unwrap().config(&[]).unwrap();
        // A renewal: a second certificate, recorded too.
        let (_, csr2) = agent_request("host1").unwrap();
        issuer.sign("host1", &csr2).unwrap();
        assert_eq!(std::fs::read_to_string(dir.path().join("issued.txt")).unwrap().lines().count(), 2);
        // Expired records are dropped when the record is rewritten; current ones stay.
        let record = dir.path().join("issued.txt");
        let before = std::fs::read_to_string(&record).unwrap();
        std::fs::write(&record, format!("0a old-host 1000\n{before}")).unwrap();
        prune_issued(&record, OffsetDateTime::now_utc()).unwrap();
        assert_eq!(std::fs::read_to_string(&record).unwrap(), before);
        // Garbage is not a request.
        let err = issuer.sign("host1", "not a csr").unwrap_err().to_string();
        assert!(err.contains("certificate request is not valid"), "{err}");
        // Revoked by name (no agent-host1.pem exists): both serials, and no new certificate.
        let (crl, again) = revoke_agent(dir.path(), "host1").unwrap();
        assert!(!again);
        assert_eq!(std::fs::read_to_string(dir.path().join("revoked.txt")).unwrap().lines().count(), 2);
        let roots = std::sync::Arc::new(crate::files::load_roots(&dir.path().join("ca.pem")).unwrap());
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(roots, crate::provider())
            .with_crls(crate::files::load_crls(&crl).unwrap())
            .only_check_end_entity_revocation()
            .build()
            .unwrap();
        let refused = verifier.verify_client_cert(&cert, &[], rustls_pki_types::UnixTime::now()).map(drop);
        assert_eq!(refused, Err(rustls::Error::InvalidCertificate(rustls::CertificateError::Revoked)));
        let err = issuer.sign("host1", &agent_request("host1").unwrap().1).unwrap_err().to_string();
        assert!(err.contains("\"host1\" has been revoked") && err.contains("another --name"), "{err}");
    }
}
