//! Browser guards: a web page the user opens must not be able to drive the API.
//!
//! - **Host.** A request whose `Host` is a name the server was not told it answers to is refused:
//!   that is DNS rebinding (a page on `evil.example` whose name now resolves to 127.0.0.1). IP
//!   literals and `localhost` are always accepted; other names with `--host NAME`.
//! - **Origin.** A browser sends `Origin` with every cross-site write; one that is not the server's
//!   own (the same `scheme://host:port` as `Host`) is refused, and so is `null`.
//! - **Content type.** A write with a body must say `application/json` (or a TOML type for job
//!   files): browsers send `text/plain`, form and multipart bodies cross-site without asking
//!   first, but not JSON. The UI's own form posts (`/ui/...`, `/login`, `/logout`) may be forms:
//!   a browser sends `Origin` with them, and a foreign one is refused above; they also carry the
//!   CSRF token (`session.rs`).

use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE, HOST, ORIGIN, TRANSFER_ENCODING};
use axum::http::{HeaderMap, Method, StatusCode, Uri};

use crate::api::ApiError;

/// The longest request target (path and query) accepted.
pub const MAX_TARGET: usize = 8 * 1024;

/// The most bytes of request headers (names and values) accepted. Far larger ones (hundreds of
/// kilobytes) the HTTP parser refuses by itself, with a bare 431.
pub const MAX_HEADERS: usize = 64 * 1024;

/// Refuses requests a browser could have been tricked into sending. `hosts` are the extra names
/// the server answers to.
pub fn check(method: &Method, uri: &Uri, headers: &HeaderMap, hosts: &[String]) -> Result<(), ApiError> {
    let target_len = uri.path_and_query().map_or(0, |p| p.as_str().len());
    if target_len > MAX_TARGET {
        return Err(ApiError::new(
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            format!("the request path and query are {target_len} bytes; the most accepted is {MAX_TARGET}"),
        ));
    }
    let header_len: usize = headers.iter().map(|(name, value)| name.as_str().len() + value.len()).sum();
    if header_len > MAX_HEADERS {
        return Err(ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            format!("the request headers are {header_len} bytes; the most accepted is {MAX_HEADERS}"),
        ));
    }
    let host = headers.get(HOST).and_then(|h| h.to_str().ok()).map(str::to_owned).or_else(|| {
        uri.authority().map(|a| a.as_str().to_owned())
    });
    if let Some(host) = &host {
        let name = host_name(host);
        if !known_host(name, hosts) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "foreign_host",
                format!(
                    "this server does not answer to the name {name:?} (Host header); reach it by IP address or \
                     localhost, or start it with --host {name} if that is its name"
                ),
            ));
        }
    }
    if let Some(origin) = headers.get(ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        let authority = origin.split_once("://").map(|(_, a)| a);
        let same = matches!((authority, &host), (Some(a), Some(h)) if a.eq_ignore_ascii_case(h));
        if !same {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "foreign_origin",
                format!(
                    "requests from the web page at {origin:?} are refused: only this server's own pages may call \
                     its API from a browser"
                ),
            ));
        }
    }
    if is_write(method) && has_body(headers) {
        let ct = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
        let essence = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        // The UI's forms post form bodies; they are same-origin (checked above).
        let ui = uri.path().starts_with("/ui/") || matches!(uri.path(), "/login" | "/logout");
        let form = ui && essence == "application/x-www-form-urlencoded";
        if !form && !matches!(essence.as_str(), "application/json" | "application/toml" | "text/toml" | "application/x-toml") {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                format!(
                    "a write's body needs Content-Type: application/json (or application/toml for a job file); got {:?}",
                    if ct.is_empty() { "none" } else { ct }
                ),
            ));
        }
    }
    Ok(())
}

/// True for methods that change something.
pub fn is_write(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

fn has_body(headers: &HeaderMap) -> bool {
    let length = headers.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    length.is_some_and(|n| n > 0) || headers.contains_key(TRANSFER_ENCODING)
}

/// The host name of a `Host` value: without the port, IPv6 brackets kept.
fn host_name(host: &str) -> &str {
    if host.starts_with('[') {
        return host.split_once(']').map_or(host, |(h, _)| &host[..=h.len()]);
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

fn known_host(name: &str, hosts: &[String]) -> bool {
    let bare = name.trim_start_matches('[').trim_end_matches(']');
    bare.parse::<std::net::IpAddr>().is_ok()
        || name.eq_ignore_ascii_case("localhost")
        || hosts.iter().any(|h| h.eq_ignore_ascii_case(name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    fn code(method: Method, pairs: &[(&'static str, &'static str)]) -> Option<&'static str> {
        let uri: Uri = "/api/v1/jobs".parse().unwrap();
        check(&method, &uri, &headers(pairs), &["tug.example".into()]).err().map(|e| e.code)
    }

    #[test]
    fn hosts_origins_and_content_types() {
        assert_eq!(code(Method::GET, &[("host", "127.0.0.1:4400")]), None);
        assert_eq!(code(Method::GET, &[("host", "[::1]:4400")]), None);
        assert_eq!(code(Method::GET, &[("host", "localhost:4400")]), None);
        assert_eq!(code(Method::GET, &[("host", "TUG.example")]), None);
        assert_eq!(code(Method::GET, &[("host", "evil.example:4400")]), Some("foreign_host"));
        assert_eq!(code(Method::POST, &[("host", "127.0.0.1:4400"), ("origin", "http://127.0.0.1:4400")]), None);
        assert_eq!(
            code(Method::POST, &[("host", "127.0.0.1:4400"), ("origin", "http://evil.example")]),
            Some("foreign_origin")
        );
        assert_eq!(code(Method::POST, &[("host", "127.0.0.1:4400"), ("origin", "null")]), Some("foreign_origin"));
        assert_eq!(
            code(Method::POST, &[("host", "127.0.0.1:4400"), ("origin", "http://127.0.0.1:3000")]),
            Some("foreign_origin")
        );
        let text = [("host", "127.0.0.1:4400"), ("content-length", "10"), ("content-type", "text/plain")];
        assert_eq!(code(Method::POST, &text), Some("unsupported_media_type"));
        assert_eq!(code(Method::POST, &[("host", "127.0.0.1:4400"), ("content-length", "10")]), Some("unsupported_media_type"));
        let json = [("host", "127.0.0.1:4400"), ("content-length", "10"), ("content-type", "application/json; charset=utf-8")];
        assert_eq!(code(Method::POST, &json), None);
        assert_eq!(code(Method::POST, &[("host", "127.0.0.1:4400"), ("content-length", "0")]), None);
        let long: Uri = format!("/api/v1/jobs?q={}", "x".repeat(MAX_TARGET)).parse().unwrap();
        assert_eq!(check(&Method::GET, &long, &HeaderMap::new(), &[]).unwrap_err().status, StatusCode::URI_TOO_LONG);
        let mut big = HeaderMap::new();
        big.insert("x-padding", "x".repeat(MAX_HEADERS).parse().unwrap());
        let e = check(&Method::GET, &"/api/v1/jobs".parse().unwrap(), &big, &[]).unwrap_err();
        assert_eq!((e.status, e.code), (StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "headers_too_large"));
    }
}
