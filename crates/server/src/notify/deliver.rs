//! One delivery: POST a payload to one webhook, retrying transient failures with exponential
//! backoff and jitter, up to a bounded number of attempts, each with its own timeout.

use std::hash::{BuildHasher, RandomState};
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};

use super::payload::Payload;
use crate::clock::SharedClock;

/// How deliveries are made and bounded.
#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    /// Attempts per delivery, the first included.
    pub max_attempts: u32,
    /// Timeout of one attempt: connect, send and answer.
    pub timeout: Duration,
    /// Delay before the first retry; doubled before each next one, with jitter (half to all of it).
    pub backoff: Duration,
    /// The longest delay between attempts (also caps a receiver's `Retry-After`).
    pub max_backoff: Duration,
    /// Deliveries in progress (sending or waiting to retry) across all webhooks. Past it new
    /// deliveries are dropped and counted in `tug_webhook_deliveries_total{result="dropped"}`.
    pub max_pending: usize,
    /// Deliveries in progress per endpoint (scheme, host, port), so one dead or slow receiver
    /// cannot take the whole budget from the others.
    pub max_pending_per_endpoint: usize,
    /// The most bytes of the run's log sent as `log_tail`.
    pub log_tail_bytes: usize,
    /// At shutdown, how long deliveries already under way may still take.
    pub shutdown_grace: Duration,
    /// Whom https receivers' certificates must chain to: the system's roots plus an optional CA.
    pub tls: tug_tls::ClientTls,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            max_attempts: 5,
            timeout: Duration::from_secs(5),
            backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            max_pending: 1024,
            max_pending_per_endpoint: 128,
            log_tail_bytes: 4096,
            shutdown_grace: Duration::from_secs(5),
            tls: tug_tls::ClientTls::default(),
        }
    }
}

/// How a delivery ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A 2xx answer, after this many attempts.
    Delivered {
        /// Attempts made.
        attempts: u32,
    },
    /// Gave up: a permanent error (a 4xx other than 408 and 429) or the last attempt failed.
    Failed {
        /// Attempts made.
        attempts: u32,
        /// The last error, in words.
        error: String,
    },
}

/// What one attempt did.
enum Attempt {
    Ok,
    /// Worth retrying, after at least this long when the receiver said so.
    Retry(String, Option<Duration>),
    Permanent(String),
}

/// Delivers `payload` to `url`, calling `on_retry` before each retry.
pub async fn deliver(
    http: &reqwest::Client,
    url: &reqwest::Url,
    payload: &mut Payload,
    clock: &SharedClock,
    cfg: &DeliveryConfig,
    mut on_retry: impl FnMut(),
) -> Outcome {
    let event = serde_json::to_value(payload.event).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
    let delivery_id = format!("{}-{}-{event}", payload.run.id, payload.run.attempt);
    let max_attempts = cfg.max_attempts.max(1);
    let mut attempt = 1;
    loop {
        let body = payload.to_json(clock.now());
        let request = http
            .post(url.clone())
            .timeout(cfg.timeout)
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .header("x-tug-event", event.as_str())
            .header("x-tug-delivery", delivery_id.as_str())
            .body(body);
        let (error, retry_after) = match classify(request.send().await) {
            Attempt::Ok => return Outcome::Delivered { attempts: attempt },
            Attempt::Permanent(error) => return Outcome::Failed { attempts: attempt, error },
            Attempt::Retry(error, retry_after) => (error, retry_after),
        };
        if attempt >= max_attempts {
            return Outcome::Failed { attempts: attempt, error };
        }
        let delay = retry_after.unwrap_or_else(|| backoff(cfg, attempt)).min(cfg.max_backoff);
        tracing::debug!(
            endpoint = %endpoint(url), run = payload.run.id, job = %payload.job, attempt, %error,
            delay_ms = delay.as_millis() as u64, "webhook attempt failed; retrying",
        );
        on_retry();
        tokio::time::sleep(delay).await;
        attempt += 1;
    }
}

fn classify(res: reqwest::Result<reqwest::Response>) -> Attempt {
    let resp = match res {
        Ok(r) => r,
        Err(e) => {
            // A certificate the receiver presents will not change by the next attempt.
            if let Some(t) = tug_tls::explain::find(&e) {
                return Attempt::Permanent(format!(
                    "TLS: {t} (a receiver's certificate must chain to the system's roots or to --webhook-ca)"
                ));
            }
            // Connect errors, timeouts and broken connections are all worth another try.
            return Attempt::Retry(error_chain(&e), None);
        }
    };
    let status = resp.status();
    if status.is_success() {
        return Attempt::Ok;
    }
    let error = format!("HTTP {status}");
    if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::REQUEST_TIMEOUT {
        let after = resp
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        Attempt::Retry(error, after)
    } else {
        // Redirects we did not follow and other 4xx: the same request will get the same answer.
        Attempt::Permanent(error)
    }
}

/// An error with its causes ("error sending request: ... : Connection refused").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// The delay before retry number `attempt` (1-based): `backoff * 2^(attempt-1)`, capped, then
/// jittered to between half and all of it so receivers coming back are not hit in lockstep.
pub fn backoff(cfg: &DeliveryConfig, attempt: u32) -> Duration {
    let full = cfg.backoff.saturating_mul(1u32 << (attempt - 1).min(20)).min(cfg.max_backoff);
    let jitter = RandomState::new().hash_one(attempt) % 1000;
    full / 2 + (full / 2).mul_f64(jitter as f64 / 1000.0)
}

/// `scheme://host:port` of a URL: what logs and per-endpoint limits use. The path and query are
/// left out on purpose: webhook URLs often carry a secret token there.
pub fn endpoint(url: &reqwest::Url) -> String {
    format!("{}://{}:{}", url.scheme(), url.host_str().unwrap_or(""), url.port_or_known_default().unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_within_jitter_and_caps() {
        let cfg = DeliveryConfig { backoff: Duration::from_millis(100), max_backoff: Duration::from_secs(1), ..Default::default() };
        for (attempt, full) in [(1, 100), (2, 200), (3, 400), (4, 800), (5, 1000), (30, 1000)] {
            let d = backoff(&cfg, attempt).as_millis() as u64;
            assert!(d >= full / 2 && d <= full, "attempt {attempt}: {d} ms not in [{}, {full}]", full / 2);
        }
    }

    #[test]
    fn endpoint_hides_path_and_query() {
        let u = reqwest::Url::parse("https://hooks.example.com/services/SECRET?token=x").unwrap();
        assert_eq!(endpoint(&u), "https://hooks.example.com:443");
    }
}
