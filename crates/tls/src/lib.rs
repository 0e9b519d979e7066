//! TLS for every connection Tugboat makes or answers, on rustls with the ring provider (no C
//! toolchain beyond ring's own, no OpenSSL):
//!
//! | module | what |
//! | --- | --- |
//! | [`files`] | PEM certificates, keys and CA bundles read from disk, with errors that name the file |
//! | [`server`] | the server side: configs (optionally requiring client certificates) and an accept loop that handshakes off the accept path and answers plain HTTP with a hint |
//! | [`client`] | the client side: the system's roots plus an optional CA file, optionally a client certificate; a connector for the agent stream |
//! | [`explain`] | a TLS failure as a sentence that says what to do |
//! | [`certs`] | a CA, a server certificate and agent certificates for a test or small install (`tug certs init`) |

pub mod certs;
pub mod client;
pub mod explain;
pub mod files;
pub mod server;

use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;

pub use client::{ClientTls, client_config};
pub use explain::explain;
pub use files::Identity;
pub use server::{ClientCerts, ServerTls, TlsListener};

/// Errors of loading or building TLS settings.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file holds nothing of what was expected.
    #[error("{path} holds no {what} in PEM form (-----BEGIN {label}-----); give the {what} file")]
    Empty {
        /// The file.
        path: String,
        /// What was expected, in words.
        what: &'static str,
        /// The PEM label expected.
        label: &'static str,
    },
    /// A PEM block could not be decoded.
    #[error("{path}: {what} is not valid PEM: {detail}")]
    Pem {
        /// The file.
        path: String,
        /// What was being read.
        what: &'static str,
        /// The decoder's complaint.
        detail: String,
    },
    /// rustls refused the settings (a key that does not match its certificate, a CA that is not
    /// a certificate).
    #[error("{context}: {source}")]
    Rustls {
        /// What was being set up.
        context: String,
        /// Why.
        #[source]
        source: rustls::Error,
    },
    /// The client-certificate verifier could not be built from the CA file.
    #[error("{path}: cannot verify client certificates with it: {detail}")]
    ClientCa {
        /// The CA file.
        path: String,
        /// Why.
        detail: String,
    },
    /// Making a certificate failed.
    #[error("making {what}: {source}")]
    Generate {
        /// Which certificate.
        what: String,
        /// Why.
        #[source]
        source: rcgen::Error,
    },
    /// Writing a file failed.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file that would be overwritten exists.
    #[error("{path} exists; remove it or choose another directory (nothing was written)")]
    Exists {
        /// The file.
        path: String,
    },
}

/// The ring crypto provider, also installed as the process default (once), since reqwest built
/// with `rustls-no-provider` panics when it builds a client without one.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            let p = rustls::crypto::ring::default_provider();
            // Err: another provider is the default already; ours is still used explicitly.
            let _ = p.clone().install_default();
            Arc::new(p)
        })
        .clone()
}
