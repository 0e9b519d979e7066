//! Browser sessions for the web UI, and the CSRF token its forms carry.
//!
//! A browser cannot send `Authorization: Bearer`, so `/login` takes a token once and answers with
//! a session cookie (`tug_session`: random, `HttpOnly`, `SameSite=Strict`, `Secure` when the API
//! is served over TLS). The server keeps the session in memory, tied to the token it was opened
//! with: revoking or expiring the token ends the session, and so does `/logout` or a restart
//! (then the browser is sent to `/login` again).
//!
//! | request                               | a session cookie counts for it | CSRF token needed |
//! |---------------------------------------|--------------------------------|-------------------|
//! | GET, HEAD (pages, events, logs)       | yes                            | no                |
//! | POST `/ui/...`, `/logout`, `/login`   | yes                            | yes, in the form  |
//! | any other write (the API)             | no: bearer token only          | no                |
//!
//! The CSRF token is the session's own random value, written into every form as a hidden
//! `csrf` field; without a session (a server without auth, or the login form itself) it is the
//! value of a `tug_csrf` cookie set with the page (double submit). A page on another site can
//! neither read it nor send the cookies (`SameSite=Strict`).

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::http::header::COOKIE;
use axum::http::request::Parts;
use axum::http::HeaderMap;
use tokio::time::Instant;

use super::tokens;

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "tug_session";
/// The CSRF cookie's name (pages without a session).
pub const CSRF_COOKIE: &str = "tug_csrf";
/// A session unused this long ends.
pub const IDLE: Duration = Duration::from_secs(12 * 3600);
/// Sessions kept at most; the oldest goes when a new one would pass it.
const MAX_SESSIONS: usize = 10_000;

/// What a page needs to know of the browser's session: the CSRF token for its forms, and who is
/// logged in (for the log-out button). The gate puts one in every request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UiSession {
    /// The value every form's hidden `csrf` field carries.
    pub csrf: String,
    /// The name of the token the session was opened with; `None` without a session.
    pub user: Option<String>,
}

impl<S: Send + Sync> FromRequestParts<S> for UiSession {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<UiSession, Self::Rejection> {
        Ok(parts.extensions.get::<UiSession>().cloned().unwrap_or_default())
    }
}

#[derive(Debug, Clone)]
struct Session {
    token_id: String,
    csrf: String,
    used: Instant,
}

/// The open sessions, by the SHA-256 of their cookie (a memory dump does not hand them out).
#[derive(Debug, Default)]
pub struct Sessions {
    open: Mutex<HashMap<String, Session>>,
}

/// A session just opened: the cookie's value and its CSRF token.
#[derive(Debug, Clone)]
pub struct Opened {
    /// The value of the `tug_session` cookie.
    pub cookie: String,
    /// The CSRF token of its forms.
    pub csrf: String,
}

impl Sessions {
    /// Opens a session for the token `token_id`.
    pub fn open(&self, token_id: &str) -> Opened {
        let cookie = tokens::random_hex(32);
        let csrf = tokens::random_hex(32);
        let now = Instant::now();
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.retain(|_, s| now.duration_since(s.used) < IDLE);
        if open.len() >= MAX_SESSIONS
            && let Some(oldest) = open.iter().min_by_key(|(_, s)| s.used).map(|(k, _)| k.clone())
        {
            open.remove(&oldest);
        }
        open.insert(tokens::sha256_hex(&cookie), Session { token_id: token_id.to_owned(), csrf: csrf.clone(), used: now });
        Opened { cookie, csrf }
    }

    /// The token id and CSRF token of the session `cookie` names, if it is open; marks it used.
    pub fn find(&self, cookie: &str) -> Option<(String, String)> {
        let now = Instant::now();
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let key = tokens::sha256_hex(cookie);
        let s = open.get_mut(&key)?;
        if now.duration_since(s.used) >= IDLE {
            open.remove(&key);
            return None;
        }
        s.used = now;
        Some((s.token_id.clone(), s.csrf.clone()))
    }

    /// Ends the session `cookie` names.
    pub fn close(&self, cookie: &str) {
        self.open.lock().unwrap_or_else(PoisonError::into_inner).remove(&tokens::sha256_hex(cookie));
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"'))
        .filter(|v| !v.is_empty())
}

/// A `Set-Cookie` value: `HttpOnly`, `SameSite=Strict`, for the whole site; `Secure` over TLS.
/// `max_age` 0 removes the cookie.
pub fn set_cookie(name: &str, value: &str, secure: bool, max_age: Option<u64>) -> String {
    let mut c = format!("{name}={value}; Path=/; HttpOnly; SameSite=Strict");
    if let Some(age) = max_age {
        c.push_str(&format!("; Max-Age={age}"));
    }
    if secure {
        c.push_str("; Secure");
    }
    c
}

/// The value of field `name` in a form body (`application/x-www-form-urlencoded`), decoded.
pub fn form_field(body: &[u8], name: &str) -> Option<String> {
    std::str::from_utf8(body).ok()?.split('&').filter_map(|pair| pair.split_once('=')).find(|(k, _)| *k == name).map(|(_, v)| super::percent_decode(&v.replace('+', " ")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn cookies_and_form_fields() {
        let mut h = HeaderMap::new();
        h.append(COOKIE, HeaderValue::from_static("a=1; tug_session=abc"));
        h.append(COOKIE, HeaderValue::from_static("tug_csrf=\"x\""));
        assert_eq!(cookie(&h, SESSION_COOKIE), Some("abc"));
        assert_eq!(cookie(&h, CSRF_COOKIE), Some("x"));
        assert_eq!(cookie(&h, "b"), None);
        assert_eq!(form_field(b"csrf=ab%2Fc&token=tug_1+2", "token"), Some("tug_1 2".into()));
        assert_eq!(form_field(b"csrf=ab%2Fc", "csrf"), Some("ab/c".into()));
        assert_eq!(form_field(b"x=%", "x"), Some("%".into()));
        assert_eq!(form_field(b"x=1", "csrf"), None);
        let c = set_cookie(SESSION_COOKIE, "v", true, None);
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Strict") && c.ends_with("; Secure"), "{c}");
        assert!(!set_cookie(SESSION_COOKIE, "", false, Some(0)).contains("Secure"));
    }

    #[tokio::test(start_paused = true)]
    async fn sessions_open_close_and_go_idle() {
        let s = Sessions::default();
        let a = s.open("t1");
        assert_eq!(s.find(&a.cookie), Some(("t1".to_string(), a.csrf.clone())));
        assert_eq!(s.find("forged"), None);
        tokio::time::advance(IDLE - Duration::from_secs(1)).await;
        assert!(s.find(&a.cookie).is_some(), "use keeps it open");
        tokio::time::advance(IDLE).await;
        assert_eq!(s.find(&a.cookie), None, "idle too long");
        let b = s.open("t2");
        s.close(&b.cookie);
        assert_eq!(s.find(&b.cookie), None);
    }
}
