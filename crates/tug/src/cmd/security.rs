//! The API's security settings, shared by `tug server` and `tug up`, and the safe-by-default
//! rule: a server reachable from other hosts does not start without a way in that needs
//! credentials, unless told `--insecure`.

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use anyhow::{Context, bail};
use tug_core::access::Role;
use tug_core::bytesize::ByteSize;
use tug_server::auth::{Auth, AuthConfig, AuthMode, BasicCredentials, RateLimit};

/// TLS of the API (and of `tug server`'s agent endpoint) and of webhooks.
#[derive(clap::Args, Debug, Clone)]
pub struct TlsArgs {
    /// Serve over TLS with this certificate (PEM; the chain after it); `tug certs init` makes
    /// one. `tug server` uses it for the agent endpoint too.
    #[arg(long, env = "TUG_TLS_CERT", requires = "tls_key", value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, env = "TUG_TLS_KEY", requires = "tls_cert", value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// Trust this CA (PEM) for https webhooks, besides the system's roots.
    #[arg(long, env = "TUG_WEBHOOK_CA", value_name = "FILE")]
    webhook_ca: Option<PathBuf>,
}

impl TlsArgs {
    /// The server's TLS settings offering `alpn`, requiring client certificates signed by
    /// `client_ca` when given (and not revoked by `crl`); `None` without --tls-cert.
    pub fn server(&self, alpn: &[&[u8]], client_ca: Option<&std::path::Path>, crl: Option<&std::path::Path>) -> anyhow::Result<Option<tug_tls::ServerTls>> {
        let clients = client_ca.map(|ca| tug_tls::ClientCerts { ca, crl, crl_may_be_missing: false, optional: false });
        self.server_with_clients(alpn, clients)
    }

    /// [`TlsArgs::server`], checking client certificates as `clients` says.
    pub fn server_with_clients(&self, alpn: &[&[u8]], clients: Option<tug_tls::ClientCerts<'_>>) -> anyhow::Result<Option<tug_tls::ServerTls>> {
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else { return Ok(None) };
        let identity = tug_tls::Identity::load(cert, key)?;
        Ok(Some(tug_tls::ServerTls::with_client_certs(identity, clients, alpn)?))
    }

    /// Whether the API is served over TLS.
    pub fn enabled(&self) -> bool {
        self.tls_cert.is_some()
    }

    /// Whom webhook receivers' certificates must chain to.
    pub fn webhooks(&self) -> anyhow::Result<tug_tls::ClientTls> {
        Ok(tug_tls::ClientTls::new(self.webhook_ca.as_deref(), None)?)
    }
}

/// Flags for who may use the API.
#[derive(clap::Args, Debug, Clone)]
pub struct SecurityArgs {
    /// Serve without auth even on a non-loopback address: anyone who can reach the API can run
    /// commands on every agent. Only on a network you trust.
    #[arg(long, env = "TUG_INSECURE")]
    insecure: bool,
    /// Require a token on every request even on loopback (the default there: only once a token
    /// exists).
    #[arg(long = "auth", env = "TUG_AUTH")]
    require_auth: bool,
    /// Make an admin token at start and print it (once; keep it). While it works, later starts
    /// make no other.
    #[arg(long)]
    init_token: bool,
    /// Make an admin token at start and write it to this file (mode 0600); if the file holds a
    /// token from an earlier start, keep using it.
    #[arg(long, env = "TUG_INIT_TOKEN_FILE")]
    init_token_file: Option<PathBuf>,
    /// A host name clients use to reach the server (repeatable). IP addresses and localhost are
    /// always accepted; other names are refused so that a web page cannot rebind its own name to
    /// this server.
    #[arg(long = "host", env = "TUG_HOSTS", value_delimiter = ',')]
    hosts: Vec<String>,
    /// HTTP basic credentials for the Chronos API, as USER:PASSWORD (admin) or
    /// USER:PASSWORD:ROLE.
    #[arg(long, env = "TUG_CHRONOS_CREDENTIALS", hide_env_values = true)]
    chronos_credentials: Option<BasicCredentials>,
    /// The largest request body accepted (e.g. 1MiB).
    #[arg(long, env = "TUG_MAX_BODY", default_value = "1MiB", value_parser = parse_size)]
    max_body: ByteSize,
    /// Requests per second allowed to each token (bursts of four times as many); 0: unlimited.
    #[arg(long, env = "TUG_RATE_LIMIT", default_value_t = 50.0)]
    rate_limit: f64,
    /// The shortest time between two fires of a job that creating or changing it may ask for
    /// (e.g. 1s, 1m; 0: no limit). Jobs already stored keep running as they are.
    #[arg(long, env = "TUG_MIN_INTERVAL", default_value = "1s", value_parser = parse_interval)]
    pub min_interval: std::time::Duration,
    /// How long a client has to send a request's headers; a slower one (or an idle connection)
    /// is cut off (e.g. 10s).
    #[arg(long, env = "TUG_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_retention)]
    header_timeout: std::time::Duration,
    /// The most jobs a token scoped to a label or owner may have in its scope; creating one more
    /// is refused (403). 0: no limit. Unscoped tokens are not limited.
    #[arg(long, env = "TUG_MAX_JOBS_PER_SCOPE", default_value_t = 10_000)]
    max_jobs_per_scope: usize,
    /// How long audit entries are kept (e.g. 90d).
    #[arg(long, env = "TUG_AUDIT_RETENTION", default_value = "90d", value_parser = parse_retention)]
    audit_retention: std::time::Duration,
}

fn parse_size(s: &str) -> Result<ByteSize, String> {
    let b = ByteSize::parse(s).map_err(|e| e.to_string())?;
    if b.0 == 0 {
        return Err("must be more than zero, e.g. 1MiB".into());
    }
    Ok(b)
}

fn parse_interval(s: &str) -> Result<std::time::Duration, String> {
    let d: tug_core::Duration = s.parse().map_err(|e| format!("{e}; e.g. 1s, or 0 for no limit"))?;
    Ok(d.as_std())
}

fn parse_retention(s: &str) -> Result<std::time::Duration, String> {
    let d: tug_core::Duration = s.parse().map_err(|e| format!("{e}; e.g. 10s or 90d"))?;
    if d.as_std().is_zero() {
        return Err("must be more than zero, e.g. 10s or 90d".into());
    }
    Ok(d.as_std())
}

impl SecurityArgs {
    /// The gate's settings for a server listening on `api`.
    pub fn config(&self, api: SocketAddr) -> anyhow::Result<AuthConfig> {
        if !self.rate_limit.is_finite() || self.rate_limit < 0.0 {
            bail!("invalid --rate-limit {}: give requests per second, or 0 for no limit", self.rate_limit);
        }
        let mode = if self.insecure {
            AuthMode::Open
        } else if self.require_auth
            || !api.ip().is_loopback()
            || self.init_token
            || self.init_token_file.is_some()
        {
            AuthMode::Required
        } else {
            AuthMode::Auto
        };
        Ok(AuthConfig {
            mode,
            chronos_basic: self.chronos_credentials.clone(),
            hosts: self.hosts.iter().map(|h| h.trim().to_owned()).filter(|h| !h.is_empty()).collect(),
            max_body: usize::try_from(self.max_body.0).unwrap_or(usize::MAX),
            rate: (self.rate_limit > 0.0).then(|| RateLimit { per_second: self.rate_limit, burst: 4.0 * self.rate_limit }),
            audit_retention: self.audit_retention,
            // Set by the server when it serves the API over TLS.
            secure_cookies: false,
            header_timeout: self.header_timeout,
            max_jobs_per_scope: (self.max_jobs_per_scope > 0).then_some(self.max_jobs_per_scope),
            proxy_secret: None,
        })
    }

    /// Makes the first admin token when asked, then refuses to go on when the API needs
    /// credentials that nobody has.
    pub async fn after_start(&self, auth: &Auth, api: SocketAddr) -> anyhow::Result<()> {
        if self.insecure && !api.ip().is_loopback() {
            tracing::warn!(%api, "--insecure: the API has no auth; anyone who can reach it can run commands on every agent");
        }
        // A token made by an earlier start is not made again: its secret was shown then, once.
        let now = jiff::Timestamp::now();
        let earlier = auth.tokens().into_iter().find(|t| t.name == "init" && t.role == Role::Admin && t.live(now));
        match (self.init_token, earlier) {
            (true, Some(t)) => eprintln!(
                "--init-token: admin token {} from an earlier start still works, so no new one is made (its \
                 secret was shown, or written to the --init-token-file, when it was made); make more with \
                 `tug token create --role admin`, or revoke it to have --init-token make a new one",
                t.id
            ),
            (true, None) => {
                let t = auth.create_token("init", Role::Admin, None, None).await.context("making the first admin token")?;
                println!("{}", t.token);
                eprintln!("This is an admin token (id {}); it is shown once. Use it with TUG_TOKEN=... or --token.", t.record.id);
            }
            (false, _) => {}
        }
        if let Some(path) = &self.init_token_file {
            write_token_file(auth, path).await?;
        }
        if auth.config().mode == AuthMode::Required && !auth.has_credentials() {
            let why = if api.ip().is_loopback() { "--auth was given" } else { "it listens on a non-loopback address" };
            bail!(
                "refusing to serve the API on {api} without credentials: {why}, and anyone who can reach the API \
                 can run commands on every agent. Make the first admin token with --init-token (or \
                 --init-token-file PATH), or give --chronos-credentials USER:PASSWORD; or pass --insecure to serve \
                 without auth on a network you trust"
            );
        }
        Ok(())
    }
}

/// Keeps the token in `path` if it still works; otherwise makes one and writes it there.
async fn write_token_file(auth: &Auth, path: &std::path::Path) -> anyhow::Result<()> {
    match std::fs::read_to_string(path) {
        Ok(text) if auth.knows(text.trim()) => return Ok(()),
        Ok(_) => bail!(
            "{} holds a token this server does not accept (revoked, expired, or from another server); remove \
             the file to make a new admin token",
            path.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading the token file {}", path.display())),
    }
    let t = auth.create_token("init", Role::Admin, None, None).await.context("making the first admin token")?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating the token file {}", path.display()))?;
    writeln!(f, "{}", t.token).with_context(|| format!("writing the token file {}", path.display()))?;
    eprintln!("An admin token (id {}) is in {}.", t.record.id, path.display());
    Ok(())
}

/// Reads a secret from a file (the join token), so it does not show in `ps`.
pub fn read_secret(path: &std::path::Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let secret = text.trim().to_owned();
    if secret.is_empty() {
        bail!("{} is empty; put the secret in it", path.display());
    }
    Ok(secret)
}
