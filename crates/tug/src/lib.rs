//! What `tug`'s commands and tests share with each other beyond the command line.

pub mod local;

/// A plain reqwest client. reqwest is built with rustls and no default crypto provider (see
/// tug-tls), so the provider is installed first: `reqwest::Client::new()` alone would panic.
pub fn http() -> reqwest::Client {
    tug_tls::provider();
    reqwest::Client::new()
}
