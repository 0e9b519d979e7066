//! PEM files: certificate chains, private keys and CA bundles, read with errors that name the
//! file and say what it should hold.

use std::path::Path;

use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::TlsError;

/// A certificate chain and its private key: what a server (or an agent, for mTLS) presents.
#[derive(Debug)]
pub struct Identity {
    /// The certificate first, then any intermediates.
    pub certs: Vec<CertificateDer<'static>>,
    /// The certificate's private key.
    pub key: PrivateKeyDer<'static>,
}

impl Clone for Identity {
    fn clone(&self) -> Identity {
        Identity { certs: self.certs.clone(), key: self.key.clone_key() }
    }
}

impl Identity {
    /// Reads a certificate chain from `cert` and its key from `key`.
    pub fn load(cert: &Path, key: &Path) -> Result<Identity, TlsError> {
        let certs = load_certs(cert, "certificate")?;
        let text = read(key)?;
        let key = PrivateKeyDer::from_pem_slice(&text).map_err(|e| match e {
            rustls_pki_types::pem::Error::NoItemsFound => TlsError::Empty {
                path: key.display().to_string(),
                what: "private key",
                label: "PRIVATE KEY",
            },
            e => TlsError::Pem { path: key.display().to_string(), what: "the private key", detail: e.to_string() },
        })?;
        Ok(Identity { certs, key })
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { path: path.display().to_string(), source })
}

/// Every certificate in a PEM file (at least one).
pub fn load_certs(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let text = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem { path: path.display().to_string(), what, detail: e.to_string() })?;
    if certs.is_empty() {
        return Err(TlsError::Empty { path: path.display().to_string(), what, label: "CERTIFICATE" });
    }
    Ok(certs)
}

/// The CA certificates of a PEM bundle, as trust anchors.
pub fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path, "CA certificate")? {
        roots.add(cert).map_err(|source| TlsError::Rustls { context: format!("{}: not a usable CA certificate", path.display()), source })?;
    }
    Ok(roots)
}

/// Every certificate revocation list in a PEM file (at least one).
pub fn load_crls(path: &Path) -> Result<Vec<rustls_pki_types::CertificateRevocationListDer<'static>>, TlsError> {
    use rustls_pki_types::pem::PemObject;
    let text = read(path)?;
    let what = "certificate revocation list";
    let crls = rustls_pki_types::CertificateRevocationListDer::pem_slice_iter(&text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem { path: path.display().to_string(), what, detail: e.to_string() })?;
    if crls.is_empty() {
        return Err(TlsError::Empty { path: path.display().to_string(), what, label: "X509 CRL" });
    }
    Ok(crls)
}
