//! TLS end to end: `tug certs init`, the API over https reached with the CA and refused without
//! it (or with another CA, or over plain http), an expired server certificate named as such, and
//! an https webhook delivered to a local TLS receiver. The agent stream over mTLS is in
//! multi_host.rs.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{TestServer, Up, manual_job};
use serde_json::Value;
use tug_server::embedded::EmbeddedConfig;

const TUG: &str = env!("CARGO_BIN_EXE_tug");

fn tug(args: &[&str]) -> Output {
    Command::new(TUG).args(args).env_remove("TUG_TOKEN").env_remove("TUG_CA").env_remove("TUG_SERVER").output().expect("running tug")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn path(dir: &Path, name: &str) -> String {
    dir.join(name).to_str().unwrap().to_owned()
}

/// `tug certs init DIR` with these extra arguments; panics unless it succeeds.
fn certs_init(dir: &Path, extra: &[&str]) {
    let mut args = vec!["certs", "init", dir.to_str().unwrap()];
    args.extend_from_slice(extra);
    let out = tug(&args);
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn the_api_over_https_needs_the_ca_and_says_what_is_wrong_without_it() {
    let dir = tempfile::tempdir().unwrap();
    let (certs, other) = (dir.path().join("certs"), dir.path().join("other"));
    certs_init(&certs, &["--agent", "a1"]);
    certs_init(&other, &[]);
    // Nothing is overwritten.
    let again = tug(&["certs", "init", certs.to_str().unwrap()]);
    assert!(!again.status.success() && text(&again).contains("ca.pem exists"), "{}", text(&again));
    let bad = tug(&["certs", "init", dir.path().join("x").to_str().unwrap(), "--agent", "a b"]);
    assert!(!bad.status.success() && text(&bad).contains("invalid --agent \"a b\""), "{}", text(&bad));

    let up = Up::start_with(&["--tls-cert", &path(&certs, "server.pem"), "--tls-key", &path(&certs, "server-key.pem")]);
    let https = format!("https://127.0.0.1:{}", up.port());
    let ca = path(&certs, "ca.pem");

    let ok = tug(&["job", "list", "--server", &https, "--ca", &ca, "--json"]);
    assert!(ok.status.success(), "{}", text(&ok));
    let jobs: Value = serde_json::from_slice(&ok.stdout).unwrap();
    assert!(jobs.as_array().is_some_and(|a| a.is_empty()), "{jobs}");
    // The name in the certificate: localhost works as well as 127.0.0.1.
    let by_name = tug(&["job", "list", "--server", &format!("https://localhost:{}", up.port()), "--ca", &ca]);
    assert!(by_name.status.success(), "{}", text(&by_name));

    for ca_args in [vec![], vec!["--ca".to_string(), path(&other, "ca.pem")]] {
        let mut args = vec!["job", "list", "--server", &https];
        args.extend(ca_args.iter().map(String::as_str));
        let out = tug(&args);
        assert!(!out.status.success());
        let err = text(&out);
        assert!(err.contains("the server's certificate is not signed by a CA this client trusts") && err.contains("--ca"), "{err}");
    }

    let plain = tug(&["job", "list", "--server", &up.server]);
    assert!(!plain.status.success());
    let err = text(&plain);
    assert!(err.contains("this server speaks TLS only: use an https:// URL") && err.contains("HTTP 400"), "{err}");

    let missing = tug(&["job", "list", "--server", &https, "--ca", &path(dir.path(), "nope.pem")]);
    let err = text(&missing);
    assert!(!missing.status.success() && err.contains("--ca: cannot read") && err.contains("nope.pem"), "{err}");
}

#[test]
fn a_server_that_signs_agents_certificates_says_what_it_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    certs_init(d, &[]);
    let data = path(d, "data");
    let tls = ["--tls-cert", &path(d, "server.pem"), "--tls-key", &path(d, "server-key.pem")];
    let server = |extra: &[&str]| {
        let mut args = vec!["server", "--listen", "127.0.0.1:0", "--agent-listen", "127.0.0.1:0", "--data-dir", &data];
        args.extend_from_slice(&tls);
        args.extend_from_slice(extra);
        tug(&args)
    };
    let (ca, key) = (path(d, "ca.pem"), path(d, "ca-key.pem"));
    let out = server(&["--agent-ca-key", &key]);
    assert!(!out.status.success() && text(&out).contains("--agent-ca"), "the key needs its CA: {}", text(&out));
    let out = server(&["--agent-ca", &ca, "--agent-ca-key", &key]);
    assert!(!out.status.success());
    assert!(text(&out).contains("--agent-ca-key signs certificates for agents that bring the join token, and there is none"), "{}", text(&out));
    let out = server(&["--agent-ca", &ca, "--agent-ca-key", &key, "--join-token", "t", "--agent-cert-ttl", "5s"]);
    assert!(!out.status.success() && text(&out).contains("must be at least 10s"), "{}", text(&out));
    // The CA's certificate given as its key.
    let out = server(&["--agent-ca", &ca, "--agent-ca-key", &ca, "--join-token", "t"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("ca.pem: the CA key (the ca-key.pem of tug certs init) is not valid PEM"), "{}", text(&out));
}

#[test]
fn https_to_a_plain_server_says_it_does_not_speak_tls() {
    let up = Up::start();
    let out = tug(&["job", "list", "--server", &format!("https://127.0.0.1:{}", up.port())]);
    assert!(!out.status.success());
    let err = text(&out);
    assert!(err.contains("the server does not speak TLS here: use an http:// URL"), "{err}");
}

#[test]
fn an_expired_server_certificate_is_named_with_its_end_date() {
    let dir = tempfile::tempdir().unwrap();
    let now = time::OffsetDateTime::now_utc();
    let validity = tug_tls::certs::Validity { not_before: now - time::Duration::days(30), not_after: now - time::Duration::days(1) };
    tug_tls::certs::init(dir.path(), &[], &[], validity).unwrap();
    let up = Up::start_with(&["--tls-cert", &path(dir.path(), "server.pem"), "--tls-key", &path(dir.path(), "server-key.pem")]);
    let out = tug(&["job", "list", "--server", &format!("https://127.0.0.1:{}", up.port()), "--ca", &path(dir.path(), "ca.pem")]);
    assert!(!out.status.success());
    let err = text(&out);
    let until = (now - time::Duration::days(1)).date().to_string();
    assert!(err.contains("the server's certificate has expired: it was valid until") && err.contains(&until), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_webhook_reaches_a_receiver_whose_certificate_the_webhook_ca_signed() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    tug_tls::certs::init(&certs, &[], &[], tug_tls::certs::Validity::days(1)).unwrap();
    // The receiver: https on 127.0.0.1, with the server certificate of that CA.
    let identity = tug_tls::Identity::load(&certs.join("server.pem"), &certs.join("server-key.pem")).unwrap();
    let tls = tug_tls::ServerTls::new(identity, None, &[b"http/1.1"]).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let got: Arc<Mutex<Vec<Value>>> = Arc::default();
    let app = axum::Router::new()
        .route(
            "/hook",
            axum::routing::post(|axum::extract::State(got): axum::extract::State<Arc<Mutex<Vec<Value>>>>, body: axum::Json<Value>| async move {
                got.lock().unwrap().push(body.0);
            }),
        )
        .with_state(got.clone());
    let listener = tug_tls::TlsListener::new(listener, tls, "test receiver").unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let hook = tug_core::job::Webhook { url: format!("https://localhost:{}/hook", addr.port()), on: vec![tug_core::job::NotifyOn::Failure] };
    let ca = tug_tls::ClientTls::new(Some(&certs.join("ca.pem")), None).unwrap();
    let mut s = TestServer::start_with(dir.path(), Arc::new(tug_server::clock::SystemClock), |c: &mut EmbeddedConfig| {
        c.webhooks = vec![hook.clone()];
        c.webhook_delivery.tls = ca;
        c.webhook_delivery.timeout = Duration::from_secs(2);
    })
    .await;
    s.create(manual_job("fails", "exit 3")).await;
    let id = s.post("/jobs/fails/run").await.1["id"].as_u64().unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let first = got.lock().unwrap().first().cloned();
        if let Some(p) = first {
            assert_eq!(p["event"], "failure");
            assert_eq!(p["run"]["id"], id);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no https webhook delivery");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_uis_cookies_are_secure_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    tug_tls::certs::init(&certs, &[], &[], tug_tls::certs::Validity::days(1)).unwrap();
    let identity = tug_tls::Identity::load(&certs.join("server.pem"), &certs.join("server-key.pem")).unwrap();
    let tls = tug_tls::ServerTls::new(identity, None, &[b"h2", b"http/1.1"]).unwrap();
    let mut s = TestServer::start_with(dir.path(), Arc::new(tug_server::clock::SystemClock), |c: &mut EmbeddedConfig| {
        c.api_tls = Some(tls);
        c.auth.mode = tug_server::auth::AuthMode::Required;
    })
    .await;
    let token = s.server.as_ref().unwrap().auth.create_token("ui", tug_core::access::Role::Read, None, None).await.unwrap().token;
    let ca = tug_tls::ClientTls::new(Some(&certs.join("ca.pem")), None).unwrap();
    let http = reqwest::Client::builder()
        .tls_backend_preconfigured(ca.for_http().unwrap())
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let root = s.base.replace("http://", "https://").trim_end_matches("/api/v1").to_string();
    let r = http.get(format!("{root}/login")).send().await.unwrap();
    let csrf_cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(csrf_cookie.starts_with("tug_csrf=") && csrf_cookie.ends_with("; Secure"), "{csrf_cookie}");
    let csrf = csrf_cookie.split(';').next().unwrap().to_string();
    let r = http
        .post(format!("{root}/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("cookie", &csrf)
        .body(format!("csrf={}&token={token}&next=%2F", csrf.trim_start_matches("tug_csrf=")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let session = r.headers()["set-cookie"].to_str().unwrap();
    assert!(session.starts_with("tug_session=") && session.contains("HttpOnly") && session.ends_with("; Secure"), "{session}");
    s.stop().await;
}
