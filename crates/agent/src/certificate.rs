//! The agent's own client certificate, got from the server with the join token and renewed
//! before it expires, so that an agent needs only the CA and the join token to join over mTLS.
//!
//! | state at start | what happens |
//! | --- | --- |
//! | `<data dir>/tls/agent.pem` holds a certificate for this name, not expired, signed by `--ca` | it is used; renewed at two thirds of what is left |
//! | none, expired, for another name or from another CA; a join token | a new key and a request (CSR) go to the server with the token, over TLS that verified the server; the signed certificate and the key are kept (one file, mode 0600) |
//! | none, and no join token | the agent joins without a certificate (a server that requires one says so) |
//!
//! Renewal asks the server the same way, presenting the current certificate instead of the token.
//! A server that does not issue certificates (no `--agent-ca-key`) is told apart from one that
//! refuses: the first leaves the agent joining by its token alone, the second stops it.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use time::OffsetDateTime;
use tug_tls::{ClientTls, Identity};

use crate::remote::RemoteError;

/// Longest wait between attempts to get a certificate from an unreachable server.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Where and how an agent gets its client certificate.
#[derive(Debug, Clone)]
pub struct Enrollment {
    /// The file holding the certificate and its key (`<data dir>/tls/agent.pem`).
    pub file: PathBuf,
    /// The agent's name: the certificate is for it.
    pub name: String,
    /// The join token, which bootstraps the first certificate.
    pub join_token: String,
    /// Whom to trust for the server's certificate (the agent's `--ca`), no client certificate.
    pub tls: ClientTls,
}

/// How asking for a certificate failed.
enum Failed {
    /// The server does not issue certificates.
    NotIssuing(String),
    /// Worth trying again (or another server).
    Transient(String),
    /// Trying again would not help.
    Fatal(RemoteError),
}

/// The TLS settings the agent connects with, replaced when its certificate is renewed.
#[derive(Clone, Debug)]
pub struct SharedTls(Arc<RwLock<ClientTls>>);

impl SharedTls {
    /// Settings that stay `tls` until replaced.
    pub fn new(tls: ClientTls) -> SharedTls {
        SharedTls(Arc::new(RwLock::new(tls)))
    }

    /// The settings now.
    pub fn get(&self) -> ClientTls {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set(&self, tls: ClientTls) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = tls;
    }
}

impl Enrollment {
    /// The certificate kept in `data_dir`'s `tls/agent.pem`.
    pub fn new(data_dir: &Path, name: &str, join_token: &str, tls: ClientTls) -> Enrollment {
        Enrollment { file: data_dir.join("tls").join("agent.pem"), name: name.to_owned(), join_token: join_token.to_owned(), tls }
    }

    /// The kept certificate and its end, when it is usable: for this name, not expired, and
    /// signed by the CA trusted now (after the CA is replaced, a new certificate is asked for).
    fn kept(&self) -> Option<(Identity, OffsetDateTime)> {
        let id = Identity::load(&self.file, &self.file).ok()?;
        let end = tug_tls::certs::not_after(&id.certs[0])?;
        if end <= OffsetDateTime::now_utc() || !tug_tls::certs::cert_is_for(&id.certs[0], &self.name) {
            return None;
        }
        if let Some(ca) = &self.tls.ca_file
            && !tug_tls::certs::issued_by(&id.certs[0], ca)
        {
            tracing::warn!(file = %self.file.display(), ca = %ca.display(), "the kept client certificate is not signed by the CA given with --ca (was it replaced?); asking for a new one");
            return None;
        }
        Some((id, end))
    }

    /// The settings to connect with: the kept certificate, or one got from the first of
    /// `servers` that issues it (trying them in turn until `stop`), or none when no server
    /// issues certificates or there is no join token. With a certificate, a task renews it.
    pub async fn start(self, servers: &[String], mut stop: tokio::sync::watch::Receiver<bool>) -> Result<SharedTls, RemoteError> {
        let shared = SharedTls::new(self.tls.clone());
        let end = match self.kept() {
            Some((id, end)) => {
                tracing::info!(file = %self.file.display(), valid_until = %when(end), "using this agent's client certificate");
                shared.set(self.tls.clone().with_identity(id));
                end
            }
            None if self.join_token.is_empty() => return Ok(shared),
            None => {
                let mut backoff = Duration::from_millis(200);
                let mut i = 0;
                loop {
                    let server = &servers[i % servers.len()];
                    match self.ask(server, &self.tls).await {
                        Ok((id, end)) => {
                            tracing::info!(server, file = %self.file.display(), valid_until = %when(end), "got a client certificate from the server with the join token");
                            shared.set(self.tls.clone().with_identity(id));
                            break end;
                        }
                        Err(Failed::NotIssuing(why)) => {
                            tracing::warn!(server, "{why}; joining with the join token alone");
                            return Ok(shared);
                        }
                        Err(Failed::Fatal(e)) => return Err(e),
                        Err(Failed::Transient(why)) => {
                            tracing::warn!(server, error = %why, retry_in = ?backoff, "cannot get a client certificate yet");
                        }
                    }
                    i += 1;
                    if i % servers.len() == 0 {
                        tokio::select! {
                            () = tokio::time::sleep(backoff) => {}
                            _ = stop.wait_for(|s| *s) => return Ok(shared),
                        }
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                }
            }
        };
        tokio::spawn(self.renew(servers.to_vec(), shared.clone(), end, stop));
        Ok(shared)
    }

    /// Renews the certificate at two thirds of what is left of it, again and again, until `stop`.
    async fn renew(self, servers: Vec<String>, shared: SharedTls, mut end: OffsetDateTime, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut i = 0;
        loop {
            let left = (end - OffsetDateTime::now_utc()).max(time::Duration::ZERO);
            let wait = Duration::try_from(left * 2 / 3).unwrap_or_default().max(Duration::from_secs(1));
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            let server = &servers[i % servers.len()];
            i += 1;
            match self.ask(server, &shared.get()).await {
                Ok((id, new_end)) => {
                    tracing::info!(server, valid_until = %when(new_end), "renewed this agent's client certificate");
                    shared.set(self.tls.clone().with_identity(id));
                    end = new_end;
                }
                Err(Failed::NotIssuing(why) | Failed::Transient(why)) => {
                    tracing::warn!(server, error = %why, valid_until = %when(end), "cannot renew this agent's client certificate yet");
                }
                Err(Failed::Fatal(e)) => {
                    tracing::error!(server, error = %e, valid_until = %when(end), "the server will not renew this agent's client certificate");
                    return;
                }
            }
        }
    }

    /// Asks `server` for a certificate, connecting with `tls` (the CA only, or the current
    /// certificate for a renewal); keeps it and its key on success.
    async fn ask(&self, server: &str, tls: &ClientTls) -> Result<(Identity, OffsetDateTime), Failed> {
        let (key, csr) = tug_tls::certs::agent_request(&self.name).map_err(|e| Failed::Fatal(RemoteError::Tls { server: server.to_owned(), reason: e.to_string() }))?;
        let channel = crate::remote::connect(server, Some(tls)).await.map_err(|e| match e {
            crate::remote::Connect::Fatal(e) => Failed::Fatal(e),
            crate::remote::Connect::Broken(why) => Failed::Transient(why),
        })?;
        let request = tug_proto::EnrollRequest { agent: self.name.clone(), join_token: self.join_token.clone(), csr };
        let reply = tug_proto::AgentServiceClient::new(channel).enroll(request).await.map_err(|s| match s.code() {
            tonic::Code::Unimplemented => Failed::NotIssuing("this server does not issue agent certificates".into()),
            tonic::Code::FailedPrecondition => Failed::NotIssuing(s.message().to_owned()),
            tonic::Code::PermissionDenied | tonic::Code::InvalidArgument => Failed::Fatal(RemoteError::Refused(s.message().to_owned())),
            _ => match tug_tls::explain(&s) {
                Some(reason) => Failed::Fatal(RemoteError::Tls { server: server.to_owned(), reason }),
                None => Failed::Transient(format!("asking for a certificate: {s}")),
            },
        })?;
        let pem = reply.into_inner().certificate;
        let kept = format!("{pem}{key}");
        write_secret(&self.file, &kept).map_err(|e| {
            Failed::Fatal(RemoteError::Tls { server: server.to_owned(), reason: format!("cannot keep the certificate in {}: {e}", self.file.display()) })
        })?;
        let id = Identity::load(&self.file, &self.file).map_err(|e| Failed::Fatal(RemoteError::Tls { server: server.to_owned(), reason: e.to_string() }))?;
        let end = tug_tls::certs::not_after(&id.certs[0]).unwrap_or_else(OffsetDateTime::now_utc);
        Ok((id, end))
    }
}

/// An instant in RFC 3339, for logs.
fn when(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_else(|_| t.to_string())
}

/// Writes `text` to `path` readable by its owner only, whole or not at all (a new file renamed
/// over the old one, synced first).
fn write_secret(path: &Path, text: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}
