//! The web UI's pages against a real server: what each shows, the state filter, the order by next
//! fire, actions by form post (and their refusals), adding and editing a job by its form, and the
//! script and stylesheet served from the binary.

mod common;

use common::*;
use serde_json::json;

async fn page(s: &TestServer, path: &str) -> (u16, String) {
    let root = s.base.trim_end_matches("/api/v1");
    let r = s.http.get(format!("{root}{path}")).send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

fn no_redirects() -> reqwest::Client {
    tug_tls::provider();
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

/// The `Set-Cookie` header that sets `name`, if any.
fn set_cookie(r: &reqwest::Response, name: &str) -> Option<String> {
    r.headers().get_all("set-cookie").iter().map(|v| v.to_str().unwrap().to_string()).find(|c| c.starts_with(&format!("{name}=")))
}

/// The value a `Set-Cookie` header sets.
fn cookie_value(set_cookie: &str) -> String {
    set_cookie.split(';').next().unwrap().split_once('=').unwrap().1.to_string()
}

/// The CSRF token in a page's forms.
fn form_csrf(html: &str) -> String {
    let needle = "name=\"csrf\" value=\"";
    let at = html.find(needle).unwrap_or_else(|| panic!("no CSRF field: {html}")) + needle.len();
    html[at..].split('"').next().unwrap().to_string()
}

/// A browser's view: the cookies it holds, sent with every request.
struct Browser {
    root: String,
    http: reqwest::Client,
    cookies: Vec<(String, String)>,
}

impl Browser {
    fn new(s: &TestServer) -> Browser {
        Browser { root: s.base.trim_end_matches("/api/v1").to_string(), http: no_redirects(), cookies: Vec::new() }
    }

    fn keep(&mut self, r: &reqwest::Response) {
        for c in r.headers().get_all("set-cookie") {
            let (name, value) = c.to_str().unwrap().split(';').next().unwrap().split_once('=').unwrap();
            self.cookies.retain(|(n, _)| n != name);
            if !value.is_empty() {
                self.cookies.push((name.to_string(), value.to_string()));
            }
        }
    }

    fn cookie_header(&self) -> String {
        self.cookies.iter().map(|(n, v)| format!("{n}={v}")).collect::<Vec<_>>().join("; ")
    }

    /// GET: status, `Location`, body.
    async fn get(&mut self, path: &str) -> (u16, String, String) {
        let r = self.http.get(format!("{}{path}", self.root)).header("cookie", self.cookie_header()).send().await.unwrap();
        self.keep(&r);
        let to = r.headers().get("location").map(|l| l.to_str().unwrap().to_string()).unwrap_or_default();
        (r.status().as_u16(), to, r.text().await.unwrap())
    }

    /// A form post with these fields: status, `Location`, body.
    async fn post(&mut self, path: &str, fields: &[(&str, &str)]) -> (u16, String, String) {
        let body = fields.iter().map(|(k, v)| format!("{k}={}", tug_server::ui::enc(v))).collect::<Vec<_>>().join("&");
        let r = self
            .http
            .post(format!("{}{path}", self.root))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("cookie", self.cookie_header())
            .body(body)
            .send()
            .await
            .unwrap();
        self.keep(&r);
        let to = r.headers().get("location").map(|l| l.to_str().unwrap().to_string()).unwrap_or_default();
        (r.status().as_u16(), to, r.text().await.unwrap())
    }
}

/// Posts a UI form as a browser would: with the CSRF token of the page it was on.
async fn form_post(s: &TestServer, path: &str) -> (u16, String) {
    form_post_with(s, path, &[]).await
}

/// Posts a UI form with these fields and the CSRF token of the page it was on.
async fn form_post_with(s: &TestServer, path: &str, fields: &[(&str, &str)]) -> (u16, String) {
    let mut b = Browser::new(s);
    let (_, _, html) = b.get("/agents").await;
    let csrf = form_csrf(&html);
    let mut all = vec![("csrf", csrf.as_str())];
    all.extend_from_slice(fields);
    let (st, to, _) = b.post(path, &all).await;
    (st, to)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_jobs_page_lists_filters_and_finds_the_failing_job() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = TestServer::start(dir.path()).await;
    for i in 0..60 {
        s.create(json!({"name": format!("ok-{i:02}"), "schedule": "0 30 2 * * *", "tz": "Europe/Berlin", "command": "true", "labels": {"team": "web"}})).await;
    }
    s.create(json!({"name": "broken", "schedule": "@yearly", "command": "exit 4"})).await;
    s.post("/jobs/broken/run").await;
    s.post("/jobs/ok-00/run").await;
    s.wait_runs("broken", 10, |r| r.first().is_some_and(|r| r["state"] == "failed")).await;
    s.wait_runs("ok-00", 10, |r| r.first().is_some_and(|r| r["state"] == "succeeded")).await;

    let (st, html) = page(&s, "/?sort=name").await;
    assert_eq!(st, 200);
    assert!(html.contains("<a href=\"/jobs/broken\">broken</a>"), "{html}");
    assert!(html.contains("at 02:30 every day") && html.contains("Europe/Berlin"), "schedule in words and its zone");
    assert!(html.contains("CET"), "next fire in the job's zone: {html}");
    assert!(html.contains("rel=\"next\""), "61 jobs make two pages");
    // Two clicks: the state filter, then the job.
    let (_, failing) = page(&s, "/?state=failing").await;
    assert!(failing.contains("/jobs/broken") && !failing.contains("/jobs/ok-"), "{failing}");
    assert!(failing.contains("<strong aria-current=\"true\">failing</strong>"));
    let (_, job) = page(&s, "/jobs/broken").await;
    assert!(job.contains("exit code 4") || job.contains("failed"), "{job}");
    // The next page starts after the last job shown; search and label filters narrow.
    let (_, second) = page(&s, "/?sort=name&cursor=ok-48").await;
    assert!(second.contains("/jobs/ok-49") && !second.contains("/jobs/ok-48\""), "{second}");
    let (_, found) = page(&s, "/?q=ok-1").await;
    assert!(found.contains("/jobs/ok-10") && !found.contains("/jobs/broken"));
    let (_, labelled) = page(&s, "/?label=team%3Dweb&state=failing").await;
    assert!(labelled.contains("No jobs match."), "{labelled}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_job_run_and_agents_pages_and_their_actions() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = TestServer::start(dir.path()).await;
    s.create(json!({"name": "nightly", "schedule": "30 2 * * *", "tz": "America/New_York", "command": "echo night; echo shift", "description": "the nightly batch", "env": {"TOKEN": "s3cret"}})).await;
    let (st, to) = form_post(&s, "/ui/jobs/nightly/run").await;
    assert_eq!((st, to.as_str()), (303, "/jobs/nightly"));
    let runs = s.wait_runs("nightly", 10, |r| r.first().is_some_and(|r| r["state"] == "succeeded")).await;
    let id = runs[0]["id"].as_u64().unwrap();

    let (_, html) = page(&s, "/jobs/nightly").await;
    assert!(html.contains("the nightly batch") && html.contains("at 02:30 every day"), "{html}");
    assert_eq!(html.matches("<li>").count(), 10, "the next 10 fires");
    assert!(html.contains("EST") || html.contains("EDT"), "fires in the job's zone");
    assert!(html.contains(&format!("<a href=\"/runs/{id}\">{id}</a>")) && html.contains("<svg class=\"chart\""));
    assert!(html.contains("TOKEN") && !html.contains("s3cret"), "env names only");
    assert!(html.contains("Last 24 h: <strong>100%</strong>"), "{html}");

    let (_, run) = page(&s, &format!("/runs/{id}")).await;
    assert!(run.contains("night\nshift\n") && run.contains("succeeded"), "{run}");
    assert!(!run.contains("data-follow"), "a finished run's log is not followed");

    // Pause through the form; resuming shows again.
    assert_eq!(form_post(&s, "/ui/jobs/nightly/pause").await.0, 303);
    assert_eq!(s.get("/jobs/nightly").await["spec"]["paused"], true);
    let (_, paused) = page(&s, "/jobs/nightly").await;
    assert!(paused.contains("/ui/jobs/nightly/resume"));
    // A refused action comes back with the API's message on the page.
    s.create(json!({"name": "child", "parents": ["nightly"], "command": "true"})).await;
    let (_, parent) = page(&s, "/jobs/nightly").await;
    assert!(parent.contains("Starts after it succeeds: <a href=\"/jobs/child\">child</a>"), "{parent}");
    let (_, child) = page(&s, "/jobs/child").await;
    assert!(child.contains("Runs after: <a href=\"/jobs/nightly\">nightly</a>"), "{child}");
    let (st, to) = form_post(&s, "/ui/jobs/nightly/delete").await;
    assert_eq!(st, 303);
    assert!(to.starts_with("/jobs/nightly?error="), "{to}");
    let (_, refused) = page(&s, &to).await;
    assert!(refused.contains("role=\"alert\"") && refused.contains("parent of child"), "{refused}");
    assert_eq!(form_post(&s, "/ui/jobs/child/delete").await, (303, "/".to_string()));

    let (_, agents) = page(&s, "/agents").await;
    assert!(agents.contains("<td>local</td>") && agents.contains("/ui/agents/local/drain"), "{agents}");
    assert_eq!(form_post(&s, "/ui/agents/local/drain").await.0, 303);
    assert!(page(&s, "/agents").await.1.contains("/ui/agents/local/undrain"));

    let (st, missing) = page(&s, "/jobs/ghost").await;
    assert_eq!(st, 404);
    assert!(missing.contains("job &quot;ghost&quot; not found"), "{missing}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_script_and_stylesheet_come_from_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = TestServer::start(dir.path()).await;
    let root = s.base.trim_end_matches("/api/v1").to_string();
    let js = s.http.get(format!("{root}/ui/app.js")).send().await.unwrap();
    assert_eq!(js.headers()["content-type"], "text/javascript; charset=utf-8");
    assert!(js.text().await.unwrap().contains("EventSource"));
    let (_, html) = page(&s, "/").await;
    assert!(html.contains("<script src=\"/ui/app.js\" defer></script>") && !html.contains("http://") && !html.contains("https://"), "no CDN: {html}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ui_forms_need_their_csrf_token_and_the_api_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = TestServer::start(dir.path()).await;
    s.create(json!({"name": "guarded", "schedule": "@yearly", "command": "true"})).await;
    let mut b = Browser::new(&s);
    let r = b.http.get(format!("{}/jobs/guarded", b.root)).send().await.unwrap();
    let set = set_cookie(&r, "tug_csrf").expect("a page sets the CSRF cookie");
    assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict") && !set.contains("Secure"), "{set}");
    let html = r.text().await.unwrap();
    assert_eq!(form_csrf(&html), cookie_value(&set), "without a session the form carries the cookie's value");
    assert!(html.matches("name=\"csrf\"").count() >= 1);

    // No token, a wrong one, or the right one without the cookie: refused, saying what to do.
    b.get("/jobs/guarded").await;
    let csrf = form_csrf(&b.get("/jobs/guarded").await.2);
    for fields in [vec![], vec![("csrf", "0123")]] {
        let (st, _, body) = b.post("/ui/jobs/guarded/pause", &fields).await;
        assert_eq!(st, 403, "{body}");
        assert!(body.contains("the form's CSRF token is missing or stale") && body.contains("reload the page"), "{body}");
    }
    let mut stranger = Browser::new(&s);
    assert_eq!(stranger.post("/ui/jobs/guarded/pause", &[("csrf", &csrf)]).await.0, 403, "the token without its cookie");
    assert_eq!(s.get("/jobs/guarded").await["spec"]["paused"], false);
    assert_eq!(b.post("/ui/jobs/guarded/pause", &[("csrf", &csrf)]).await.0, 303);
    assert_eq!(s.get("/jobs/guarded").await["spec"]["paused"], true);
    // The API takes no CSRF token.
    assert_eq!(s.post("/jobs/guarded/resume").await.0, 200);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_logs_in_with_a_token_uses_the_pages_and_logs_out() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = TestServer::start_with(dir.path(), std::sync::Arc::new(tug_server::clock::SystemClock), |c| {
        c.auth.mode = tug_server::auth::AuthMode::Required;
        c.auth.rate = None;
    })
    .await;
    let auth = s.server.as_ref().unwrap().auth.clone();
    let admin = auth.create_token("admin", tug_core::access::Role::Admin, None, None).await.unwrap().token;
    let operator = auth.create_token("ops", tug_core::access::Role::Operate, None, None).await.unwrap();
    let scope: tug_core::access::Scope = "label:team=data".parse().unwrap();
    let scoped = auth.create_token("data", tug_core::access::Role::Admin, Some(scope), None).await.unwrap().token;
    let root = s.base.trim_end_matches("/api/v1").to_string();
    let r = s.http.post(format!("{}/jobs", s.base)).bearer_auth(&admin).json(&json!({"name": "locked", "schedule": "@yearly", "command": "true"})).send().await.unwrap();
    assert_eq!(r.status(), 201);

    // A page without a session: to the login form, which comes back here.
    let mut b = Browser::new(&s);
    let (st, to, _) = b.get("/jobs/locked?x=1").await;
    assert_eq!((st, to.as_str()), (303, "/login?next=%2Fjobs%2Flocked%3Fx%3D1"));
    // The API still answers 401 in JSON.
    let (st, _, body) = b.get("/api/v1/jobs").await;
    assert!(st == 401 && body.contains("this server needs a token"), "{body}");
    let (st, _, login) = b.get(&to).await;
    assert_eq!(st, 200);
    assert!(login.contains("type=\"password\" name=\"token\"") && login.contains("value=\"/jobs/locked?x=1\""), "{login}");
    let csrf = form_csrf(&login);

    // Wrong tokens, a scoped one, and a form without its CSRF token are refused with the reason.
    let forged = format!("tug_{}_{}", "0".repeat(12), "0".repeat(64));
    let cases: [(&str, u16, &str); 4] = [
        ("not-a-token", 401, "the token is malformed"),
        (&forged, 401, "is not valid here"),
        (&scoped, 403, "the web UI needs an unscoped token"),
        ("", 401, "paste a token"),
    ];
    for (token, status, says) in cases {
        let (st, _, page) = b.post("/login", &[("csrf", &csrf), ("token", token), ("next", "/")]).await;
        assert_eq!(st, status, "{page}");
        assert!(page.contains(says) && page.contains("role=\"alert\""), "{says}: {page}");
    }
    let (st, _, body) = b.post("/login", &[("token", &operator.token), ("next", "/")]).await;
    assert!(st == 403 && body.contains("CSRF"), "{body}");

    // The right token: a session cookie, then the page asked for.
    let r = b
        .http
        .post(format!("{root}/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("cookie", b.cookie_header())
        .body(format!("csrf={csrf}&token={}&next=%2Fjobs%2Flocked", operator.token))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/jobs/locked");
    let set = set_cookie(&r, "tug_session").expect("a session cookie");
    assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict") && set.contains("Path=/") && !set.contains("Secure"), "{set}");
    assert!(!set.contains(&operator.token), "the cookie is not the token");
    b.keep(&r);
    let (st, _, page) = b.get("/jobs/locked").await;
    assert_eq!(st, 200, "{page}");
    assert!(page.contains("Log out") && page.contains("logged in with token ops"), "{page}");
    let session_csrf = form_csrf(&page);
    assert_ne!(session_csrf, csrf, "a session has its own CSRF token");
    // Reads of the API (the event stream, logs) take the session; its writes do not.
    assert_eq!(b.get("/api/v1/jobs/locked").await.0, 200);
    let (st, _, body) = b.post("/api/v1/jobs/locked/pause", &[]).await;
    assert_eq!(st, 401, "{body}");
    // The UI's forms: the session's CSRF token, the token's role.
    assert_eq!(b.post("/ui/jobs/locked/pause", &[("csrf", &csrf)]).await.0, 403, "the CSRF token from before the session");
    assert_eq!(b.post("/ui/jobs/locked/pause", &[("csrf", &session_csrf)]).await.0, 303);
    let r = s.http.get(format!("{}/jobs/locked", s.base)).bearer_auth(&admin).send().await.unwrap();
    assert_eq!(r.json::<serde_json::Value>().await.unwrap()["spec"]["paused"], true);
    let (st, _, body) = b.post("/ui/jobs/locked/delete", &[("csrf", &session_csrf)]).await;
    assert!(st == 403 && body.contains("needs a token with role admin"), "{body}");

    // Log out: the cookie goes and the session with it (a copy of the cookie no longer works).
    let old = b.cookie_header();
    let (st, to, _) = b.post("/logout", &[("csrf", &session_csrf)]).await;
    assert_eq!((st, to.as_str()), (303, "/login"));
    assert!(!b.cookie_header().contains("tug_session"));
    let r = b.http.get(format!("{root}/")).header("cookie", old).send().await.unwrap();
    assert_eq!(r.status(), 303);

    // Revoking the token ends its sessions; a login never sends the browser to another site.
    let (_, _, login) = b.get("/login").await;
    let csrf = form_csrf(&login);
    let (st, to, _) = b.post("/login", &[("csrf", &csrf), ("token", &operator.token), ("next", "//evil.example/")]).await;
    assert_eq!((st, to.as_str()), (303, "/"));
    assert_eq!(b.get("/").await.0, 200);
    auth.revoke_token(&operator.record.id).await.unwrap();
    assert_eq!(b.get("/").await.0, 303);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dependencies_page_draws_the_job_graph_with_failing_jobs_marked() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = TestServer::start(dir.path()).await;
    let (_, empty) = page(&s, "/graph").await;
    assert!(empty.contains("No job depends on another"), "{empty}");
    s.create(json!({"name": "extract", "schedule": "@yearly", "command": "true"})).await;
    s.create(json!({"name": "transform", "parents": ["extract"], "command": "exit 2"})).await;
    s.create(json!({"name": "load", "parents": ["transform", "extract"], "command": "true"})).await;
    s.create(json!({"name": "alone", "schedule": "@yearly", "command": "true"})).await;
    s.post("/jobs/extract/run").await;
    s.wait_runs("transform", 10, |r| r.first().is_some_and(|r| r["state"] == "failed")).await;

    let (st, html) = page(&s, "/graph").await;
    assert_eq!(st, 200);
    assert!(html.contains("<svg class=\"graph\"") && html.contains("3 jobs;"), "{html}");
    assert_eq!(html.matches("<line class=\"edge\"").count(), 3, "{html}");
    assert!(html.contains("<a href=\"/jobs/transform\" class=\"job failing\""), "{html}");
    assert!(html.contains("<a href=\"/jobs/extract\" class=\"job\"") && !html.contains("data-job=\"alone\""), "{html}");
    assert!(html.contains("Failing:") && html.contains("href=\"/jobs/transform\">transform</a>"), "{html}");
    s.stop().await;
}

/// The job names a jobs page lists, in its order.
fn listed(html: &str) -> Vec<String> {
    html.split("<td><a href=\"/jobs/").skip(1).map(|rest| rest.split('"').next().unwrap().to_string()).collect()
}

/// The `href` of a page's "next page" link, unescaped.
fn next_href(html: &str) -> Option<String> {
    let at = html.find("rel=\"next\"")?;
    let start = html[..at].rfind("href=\"")? + 6;
    Some(html[start..].split('"').next().unwrap().replace("&amp;", "&").replace("&#x3d;", "=").replace("&#61;", "="))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_jobs_page_lists_by_next_fire_a_page_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = TestServer::start(dir.path()).await;
    // Names in another order than their fires; then 55 more, and two jobs that never fire by a timer.
    for (name, year) in [("z-first", 2030), ("a-second", 2031), ("m-third", 2032)] {
        s.create(json!({"name": name, "schedule": format!("R/{year}-01-01T00:00:00Z/P1D"), "command": "true"})).await;
    }
    for i in 0..55 {
        s.create(json!({"name": format!("n-{i:02}"), "schedule": format!("R/2040-01-01T00:{i:02}:00Z/P1D"), "command": "true", "labels": {"batch": "n"}})).await;
    }
    s.create(json!({"name": "p-paused", "schedule": "@hourly", "command": "true", "paused": true})).await;
    s.create(json!({"name": "c-child", "parents": ["z-first"], "command": "true"})).await;

    let (st, first) = page(&s, "/").await;
    assert_eq!(st, 200);
    assert!(first.contains("sorted by next fire"), "{first}");
    let names = listed(&first);
    assert_eq!(names.len(), 50, "{names:?}");
    assert_eq!(&names[..4], ["z-first", "a-second", "m-third", "n-00"]);
    assert!(first.contains("2030-01-01 00:00:00 UTC"), "next fire shown: {first}");
    let next = next_href(&first).expect("a second page");
    let (st, second) = page(&s, &next).await;
    assert_eq!(st, 200, "{next}: {second}");
    // The rest of the timer's order, then the jobs with no next fire by name.
    let expected: Vec<String> = (47..55).map(|i| format!("n-{i:02}")).chain(["c-child".into(), "p-paused".into()]).collect();
    assert_eq!(listed(&second), expected);
    assert!(next_href(&second).is_none());

    // Filters apply in the same order; a page boundary inside the jobs with no next fire holds.
    let (_, found) = page(&s, "/?q=N-0").await;
    assert_eq!(listed(&found), (0..10).map(|i| format!("n-{i:02}")).collect::<Vec<_>>(), "case-insensitive search");
    let (_, labelled) = page(&s, "/?label=batch%3Dn").await;
    assert_eq!(listed(&labelled).len(), 50);
    // By name on request, and with a state filter.
    let (_, by_name) = page(&s, "/?sort=name").await;
    assert_eq!(&listed(&by_name)[..3], ["a-second", "c-child", "m-third"]);
    assert!(by_name.contains("sorted by name"));
    let (_, paused) = page(&s, "/?state=paused").await;
    assert_eq!(listed(&paused), ["p-paused"]);
    // A cursor this list did not hand out is refused, saying what to do.
    let (st, bad) = page(&s, "/?cursor=garbage").await;
    assert_eq!(st, 400);
    assert!(bad.contains("cursor=&quot;garbage&quot; is not one this list handed out; start again from the first page"), "{bad}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_filter_lists_its_jobs_by_next_fire_too() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = TestServer::start(dir.path()).await;
    // Names in another order than their fires.
    let jobs = [("z-fail", 2030, "exit 3"), ("a-fail", 2031, "exit 3"), ("m-fail", 2032, "exit 3"), ("k-ok", 2029, "true")];
    let running = [("y-run", 2033), ("b-run", 2034)];
    for (name, year, cmd) in jobs {
        s.create(json!({"name": name, "schedule": format!("R/{year}-01-01T00:00:00Z/P1D"), "command": cmd})).await;
    }
    for (name, year) in running {
        s.create(json!({"name": name, "schedule": format!("R/{year}-01-01T00:00:00Z/P1D"), "command": "sleep 300"})).await;
    }
    let marker = dir.path().join("ran-once");
    let once = format!("test -e {m} || {{ touch {m}; exit 1; }}", m = marker.display());
    s.create(json!({"name": "c-failed-then-ok", "schedule": "R/2028-01-01T00:00:00Z/P1D", "command": once})).await;
    for name in ["z-fail", "a-fail", "m-fail", "k-ok", "y-run", "b-run", "c-failed-then-ok"] {
        s.post(&format!("/jobs/{name}/run")).await;
    }
    for name in ["z-fail", "a-fail", "m-fail"] {
        s.wait_runs(name, 10, |r| r.first().is_some_and(|r| r["state"] == "failed")).await;
    }
    s.wait_runs("c-failed-then-ok", 10, |r| r.first().is_some_and(|r| r["state"] == "failed")).await;
    s.post("/jobs/c-failed-then-ok/run").await;
    s.wait_runs("c-failed-then-ok", 10, |r| r.first().is_some_and(|r| r["state"] == "succeeded")).await;
    for (name, _) in running {
        s.wait_runs(name, 10, |r| r.first().is_some_and(|r| r["state"] == "running")).await;
    }

    let (st, failing) = page(&s, "/?state=failing").await;
    assert_eq!(st, 200);
    assert!(failing.contains("sorted by next fire"), "{failing}");
    assert_eq!(listed(&failing), ["z-fail", "a-fail", "m-fail"], "a success after a failure is not failing");
    let (_, busy) = page(&s, "/?state=running").await;
    assert_eq!(listed(&busy), ["y-run", "b-run"]);
    let (_, by_name) = page(&s, "/?state=failing&sort=name").await;
    assert!(by_name.contains("sorted by name"));
    assert_eq!(listed(&by_name), ["a-fail", "m-fail", "z-fail"]);
    // The sort links keep the filter.
    let unescaped = failing.replace("&amp;", "&").replace("&#38;", "&").replace("&#x3d;", "=").replace("&#61;", "=");
    assert!(unescaped.contains("href=\"/?state=failing&sort=name\""), "{failing}");
    s.stop().await;
}

/// Posts the job form with these fields.
async fn post_form(b: &mut Browser, fields: &[(&'static str, String)]) -> (u16, String, String) {
    let refs: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
    b.post("/ui/job-form", &refs).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_is_added_and_edited_from_its_form_with_the_apis_messages() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = TestServer::start(dir.path()).await;
    let mut b = Browser::new(&s);
    let (st, _, form) = b.get("/new").await;
    assert_eq!(st, 200);
    assert!(form.contains("action=\"/ui/job-form\"") && form.contains("id=\"preview\""), "{form}");
    let csrf = form_csrf(&form);
    let fields = |schedule: &str, tz: &str| -> Vec<(&'static str, String)> {
        vec![("csrf", csrf.clone()), ("name", "report".into()), ("schedule", schedule.into()), ("tz", tz.into()),
             ("command", "echo report".into()), ("labels", "team=data".into()), ("retries", "2".into()),
             ("concurrency", "forbid".into()), ("misfire", "run_once".into())]
    };

    // Preview: the next fires in the job's zone (a DST gap marked), nothing saved.
    let mut f = fields("0 30 2 * * *", "Europe/Berlin");
    f.push(("preview", "1".into()));
    let (st, _, shown) = post_form(&mut b, &f).await;
    assert_eq!(st, 200);
    assert_eq!(shown.matches("<li>").count(), 5, "{shown}");
    assert!(shown.contains(":30:00+01:00") || shown.contains(":30:00+02:00"), "{shown}");
    assert!(shown.contains("value=\"echo report\"") || shown.contains(">echo report</textarea>"), "the form comes back filled in");
    assert_eq!(s.req(reqwest::Method::GET, "/jobs/report", None).await.0, 404);

    // A bad schedule and a bad zone: the API's own messages, the form filled in.
    let api = |schedule: &str, tz: &str| {
        json!({"name": "report", "schedule": schedule, "tz": tz, "command": "echo report"})
    };
    for (schedule, tz) in [("0 61 * * * *", "UTC"), ("@daily", "Mars/Olympus")] {
        let (code, body) = s.req(reqwest::Method::POST, "/jobs", Some(api(schedule, tz))).await;
        assert_eq!(code, 422, "{body}");
        let message = body["error"]["message"].as_str().unwrap().to_string();
        let (st, _, page) = post_form(&mut b, &fields(schedule, tz)).await;
        assert_eq!(st, 422, "{page}");
        let escaped = message.replace('&', "&amp;").replace('"', "&quot;").replace('<', "&lt;").replace('>', "&gt;");
        assert!(page.contains(&escaped) || page.contains(&message.replace('"', "&#34;")), "the API says {message:?}; the form says: {page}");
        assert!(page.contains("role=\"alert\""));
    }

    // Saved: to the job's page; the API has it as the form said.
    let (st, to, _) = post_form(&mut b, &fields("0 0 3 * * *", "America/New_York")).await;
    assert_eq!((st, to.as_str()), (303, "/jobs/report"));
    let job = s.get("/jobs/report").await;
    assert_eq!(job["spec"]["schedule"], "0 0 3 * * *");
    assert_eq!(job["spec"]["labels"]["team"], "data");
    assert_eq!(job["spec"]["misfire"], "run_once");
    assert_eq!(job["spec"]["retries"]["count"], 2);

    // Edit: what the form does not show (env, paused) stays; a stale form is refused.
    let (code, _) = s.req(reqwest::Method::PUT, "/jobs/report", Some(json!({"name": "report", "schedule": "0 0 3 * * *", "tz": "America/New_York", "command": "echo report", "env": {"KEY": "v"}, "paused": true}))).await;
    assert_eq!(code, 200);
    let (st, _, edit) = b.get("/jobs/report/edit").await;
    assert_eq!(st, 200);
    assert!(edit.contains("value=\"0 0 3 * * *\"") && edit.contains("value=\"America/New_York\"") && edit.contains("readonly"), "{edit}");
    let version = edit.split("name=\"version\" value=\"").nth(1).unwrap().split('"').next().unwrap().to_string();
    let mut f = fields("0 15 4 * * *", "America/New_York");
    f.push(("original", "report".into()));
    f.push(("version", version.clone()));
    let (st, to, _) = post_form(&mut b, &f).await;
    assert_eq!((st, to.as_str()), (303, "/jobs/report"));
    let job = s.get("/jobs/report").await;
    assert_eq!(job["spec"]["schedule"], "0 15 4 * * *");
    assert_eq!(job["spec"]["env"]["KEY"], "v");
    assert_eq!(job["spec"]["paused"], true, "an edit keeps the job paused");
    let (st, _, stale) = post_form(&mut b, &f).await;
    assert_eq!(st, 409, "{stale}");
    assert!(stale.contains("version"), "{stale}");
    s.stop().await;
}

/// Reads `path` until its page contains `needle`.
async fn wait_page(s: &TestServer, path: &str, secs: u64, needle: &str) -> String {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        let (_, html) = page(s, path).await;
        if html.contains(needle) {
            return html;
        }
        assert!(tokio::time::Instant::now() < deadline, "{path} never showed {needle:?} in {secs}s: {html}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_services_pages_show_replicas_scale_and_a_releases_stages() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = TestServer::start(dir.path()).await;
    let (_, empty) = page(&s, "/services").await;
    assert!(empty.contains("No services yet"), "{empty}");
    let (st, v) = s.req(reqwest::Method::POST, "/services", Some(json!({"name": "web", "replicas": 2, "env": {"V": "1"}, "command": "exec sleep 1000", "stop_grace": "1s"}))).await;
    assert_eq!(st, 201, "{v}");
    wait_service(&s, "web", 20, "2 healthy", |v| v["status"]["healthy"] == 2).await;

    let (st, list) = page(&s, "/services").await;
    assert_eq!(st, 200);
    assert!(list.contains("<a href=\"/services/web\">web</a>") && list.contains("2 / 2") && list.contains("none (running is healthy)"), "{list}");
    assert!(list.contains("data-events=\"kind=service,replica,operation,release\""), "redrawn on the services' events: {list}");
    let one = wait_page(&s, "/services/web", 10, "2 of 2 healthy").await;
    assert_eq!(one.matches("<span class=\"state healthy\">healthy</span>").count(), 2, "{one}");
    assert!(one.contains("<td>local</td>") && one.contains("/api/v1/services/web/replicas/1/log"), "{one}");

    // Scaled from its page; a count out of range is refused with the API's message.
    assert_eq!(form_post_with(&s, "/ui/services/web/scale", &[("replicas", "3")]).await, (303, "/services/web".to_string()));
    wait_service(&s, "web", 20, "3 healthy", |v| v["status"]["healthy"] == 3).await;
    let (st, to) = form_post_with(&s, "/ui/services/web/scale", &[("replicas", "10001")]).await;
    assert_eq!(st, 303);
    let (_, refused) = page(&s, &to).await;
    assert!(refused.contains("cannot scale to 10001 replicas; give a count from 0 to 10000"), "{refused}");

    // A release: its stages as it goes, brake and revoke from its page.
    let (st, r) = s.req(reqwest::Method::POST, "/services/web/releases", Some(json!({"env": {"V": "2"}, "smoke": 1, "bake": "1h"}))).await;
    assert_eq!(st, 202, "{r}");
    let id = r["id"].as_str().unwrap().to_string();
    let baking = wait_page(&s, &format!("/releases/{id}"), 20, "stage current\"><strong>bake").await;
    assert!(baking.contains("stage done\"><strong>smoke") && baking.contains("stage waiting\"><strong>rollout"), "{baking}");
    assert!(baking.contains("<th>env</th>") && !baking.contains("\"V\":\"2\""), "env changes without their values: {baking}");
    assert!(page(&s, "/services/web").await.1.contains(&format!("<a href=\"/releases/{id}\">{id}</a>")));
    assert_eq!(form_post_with(&s, &format!("/ui/releases/{id}/brake"), &[]).await.0, 303);
    wait_page(&s, &format!("/releases/{id}"), 10, "(braked)").await;
    assert_eq!(form_post_with(&s, &format!("/ui/releases/{id}/revoke"), &[]).await.0, 303);
    wait_page(&s, &format!("/releases/{id}"), 30, "state revoked").await;
    let (st, missing) = page(&s, "/releases/rel-999").await;
    assert_eq!(st, 404, "{missing}");
    s.stop().await;
}

/// The ids of the runs a job page's history table lists, in its order.
fn run_ids(html: &str) -> Vec<u64> {
    html.split("<tr><td><a href=\"/runs/").skip(1).map(|rest| rest.split('"').next().unwrap().parse().unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_job_page_rates_the_week_pages_through_history_and_marks_dst_moves() {
    use tug_core::run::{NewRun, RunState, Trigger};
    use tug_store::Store;
    let dir = tempfile::tempdir().unwrap();
    let now = jiff::Timestamp::now();
    let ago = |hours: i64, n: i64| now - jiff::SignedDuration::from_hours(hours) + jiff::SignedDuration::from_mins(n);
    // Sundays of March at 02:30 in New York: the second one of each year falls in the hour the
    // clocks skip. A history written before the server starts: 2 successes in the last day,
    // 18 successes and 20 failures earlier in the week, 20 successes the week before.
    let spec = tug_core::JobSpec::from_json(r#"{"name": "march", "schedule": "30 2 * 3 0", "tz": "America/New_York", "command": "true"}"#).unwrap();
    let mut ids = Vec::new();
    {
        let store = tug_store::sqlite::SqliteStore::open(&dir.path().join("tug.db")).unwrap();
        store.create_job(&spec, ago(24 * 10, 0)).await.unwrap();
        let history = [(24 * 9, 20, RunState::Succeeded), (24 * 5, 20, RunState::Failed), (24 * 3, 18, RunState::Succeeded), (2, 2, RunState::Succeeded)];
        for (hours, count, state) in history {
            for n in 0..count {
                let at = ago(hours, n);
                let new = NewRun { job: "march".into(), scheduled_at: at, trigger: Trigger::Manual, state: RunState::Pending, reason: None, agent: None };
                let mut run = store.commit_fires(tug_store::FireBatch { runs: vec![new], cursors: vec![] }, at).await.unwrap().remove(0);
                run.state = state;
                run.started_at = Some(at);
                run.finished_at = Some(at + jiff::SignedDuration::from_secs(1));
                run.exit_code = Some(if state == RunState::Succeeded { 0 } else { 1 });
                store.save_runs(&[run.clone()], &[]).await.unwrap();
                ids.push(run.id);
            }
        }
    }
    let mut s = TestServer::start(dir.path()).await;

    let (st, html) = page(&s, "/jobs/march").await;
    assert_eq!(st, 200, "{html}");
    assert!(html.contains("Last 24 h: <strong>100%</strong>"), "{html}");
    assert!(html.contains("last 7 days: <strong>50%</strong>"), "20 of 40 in the week: {html}");
    assert!(html.contains("all time: <strong>67%</strong>"), "40 of 60: {html}");

    // Newest first, 25 a page; each next link goes on where the page before stopped.
    ids.reverse();
    let mut pages = vec![run_ids(&html)];
    let mut at = html;
    while let Some(next) = next_href(&at) {
        assert!(next.starts_with("/jobs/march?cursor="), "{next}");
        let (st, html) = page(&s, &next).await;
        assert_eq!(st, 200, "{html}");
        pages.push(run_ids(&html));
        at = html;
        assert!(pages.len() <= 3, "60 runs are 3 pages");
    }
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [25, 25, 10]);
    assert_eq!(pages.concat(), ids, "every run once, newest first");

    // The next 10 fires: the second Sunday of each March is marked, moved out of the skipped hour.
    let (_, html) = page(&s, "/jobs/march").await;
    let fires: Vec<&str> = html.split("<ol class=\"fires\">").nth(1).unwrap().split("</ol>").next().unwrap().split("<li>").skip(1).collect();
    assert_eq!(fires.len(), 10, "{fires:?}");
    let moved: Vec<&&str> = fires.iter().filter(|f| f.contains("DST moved")).collect();
    assert!((2..=3).contains(&moved.len()), "one a year over 10 Sundays: {fires:?}");
    assert!(moved.iter().all(|f| !f.contains("02:30") && f.contains("EDT")), "{moved:?}");
    assert!(fires.iter().filter(|f| !f.contains("DST moved")).all(|f| f.contains("02:30")), "{fires:?}");
    s.stop().await;
}
