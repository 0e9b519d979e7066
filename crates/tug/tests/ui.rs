//! The web UI's pages against a real server: what each shows, the state filter, actions by form
//! post (and their refusals), and the script and stylesheet served from the binary.

mod common;

use common::*;
use serde_json::json;

async fn page(s: &TestServer, path: &str) -> (u16, String) {
    let root = s.base.trim_end_matches("/api/v1");
    let r = s.http.get(format!("{root}{path}")).send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

async fn form_post(s: &TestServer, path: &str) -> (u16, String) {
    let root = s.base.trim_end_matches("/api/v1");
    tug_tls::provider();
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let r = client.post(format!("{root}{path}")).header("content-type", "application/x-www-form-urlencoded").body("").send().await.unwrap();
    let to = r.headers().get("location").map(|l| l.to_str().unwrap().to_string()).unwrap_or_default();
    (r.status().as_u16(), to)
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

    let (st, html) = page(&s, "/").await;
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
    let (_, second) = page(&s, "/?cursor=ok-48").await;
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
