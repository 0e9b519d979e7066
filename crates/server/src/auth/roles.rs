//! The role each endpoint needs, decided in one table by method and route pattern, so that no
//! route is left unguarded by a handler that forgot to check.
//!
//! | what                                                                 | role       |
//! |----------------------------------------------------------------------|------------|
//! | `/healthz`, `/api/v1/healthz`, `/api/v1/openapi.json`                 | none       |
//! | the UI's `/login` and `/logout`                                       | none       |
//! | any other read (GET, HEAD), `/metrics` included                        | `read`     |
//! | tokens and the audit log, read or written                             | `admin`    |
//! | run now, pause, resume and kill a job; kill a run (both APIs, the UI)  | `operate`  |
//! | scale a service; brake, resume, retry or revoke a release              | `operate`  |
//! | any other write                                                        | `admin`    |

use axum::http::Method;
use tug_core::access::Role;

/// What a request to `path`, matched as `route`, needs: nothing, or at least this role.
pub fn required(method: &Method, route: &str, path: &str) -> Option<Role> {
    // Logging in and out needs no role (the gate checks the forms' CSRF tokens).
    if matches!(route, "/healthz" | "/api/v1/healthz" | "/api/v1/openapi.json" | "/login" | "/logout") {
        return None;
    }
    if route.starts_with("/api/v1/tokens") || route.starts_with("/api/v1/audit") {
        return Some(Role::Admin);
    }
    if matches!(*method, Method::GET | Method::HEAD) {
        return Some(Role::Read);
    }
    let chronos = route.strip_prefix("/v1").unwrap_or(route);
    let operate = match *method {
        // The UI's job actions are run, pause, resume, kill and delete; only delete needs more.
        Method::POST if route == "/ui/jobs/{name}/{action}" => !path.ends_with("/delete"),
        Method::POST => matches!(
            route,
            "/ui/runs/{id}/kill"
                | "/ui/services/{name}/scale"
                | "/ui/releases/{id}/{action}"
                | "/api/v1/jobs/{name}/run"
                | "/api/v1/jobs/{name}/pause"
                | "/api/v1/jobs/{name}/resume"
                | "/api/v1/jobs/{name}/kill"
                | "/api/v1/runs/{id}/kill"
                | "/api/v1/services/{name}/scale"
                | "/api/v1/releases/{id}/{action}"
        ),
        // Chronos runs a job with PUT on the job, and kills its tasks with DELETE.
        Method::PUT => chronos == "/scheduler/job/{name}",
        Method::DELETE => chronos == "/scheduler/task/kill/{name}",
        _ => false,
    };
    Some(if operate { Role::Operate } else { Role::Admin })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_of_endpoint_gets_its_role() {
        let cases = [
            (Method::GET, "/healthz", None),
            (Method::GET, "/api/v1/openapi.json", None),
            (Method::GET, "/login", None),
            (Method::POST, "/login", None),
            (Method::POST, "/logout", None),
            (Method::GET, "/metrics", Some(Role::Read)),
            (Method::GET, "/api/v1/jobs/{name}", Some(Role::Read)),
            (Method::GET, "/scheduler/jobs", Some(Role::Read)),
            (Method::GET, "/api/v1/tokens", Some(Role::Admin)),
            (Method::GET, "/api/v1/audit", Some(Role::Admin)),
            (Method::POST, "/api/v1/jobs/{name}/run", Some(Role::Operate)),
            (Method::POST, "/api/v1/runs/{id}/kill", Some(Role::Operate)),
            (Method::PUT, "/scheduler/job/{name}", Some(Role::Operate)),
            (Method::PUT, "/v1/scheduler/job/{name}", Some(Role::Operate)),
            (Method::DELETE, "/scheduler/task/kill/{name}", Some(Role::Operate)),
            (Method::POST, "/api/v1/jobs", Some(Role::Admin)),
            (Method::PUT, "/api/v1/jobs/{name}", Some(Role::Admin)),
            (Method::DELETE, "/api/v1/jobs/{name}", Some(Role::Admin)),
            (Method::DELETE, "/scheduler/job/{name}", Some(Role::Admin)),
            (Method::POST, "/scheduler/iso8601", Some(Role::Admin)),
            (Method::POST, "/api/v1/agents/{name}/drain", Some(Role::Admin)),
            (Method::PATCH, "unmatched", Some(Role::Admin)),
        ];
        for (method, route, role) in cases {
            assert_eq!(required(&method, route, route), role, "{method} {route}");
        }
        let ui = "/ui/jobs/{name}/{action}";
        assert_eq!(required(&Method::POST, ui, "/ui/jobs/x/pause"), Some(Role::Operate));
        assert_eq!(required(&Method::POST, ui, "/ui/jobs/x/delete"), Some(Role::Admin));
        assert_eq!(required(&Method::POST, "/ui/runs/{id}/kill", "/ui/runs/1/kill"), Some(Role::Operate));
        assert_eq!(required(&Method::POST, "/ui/services/{name}/scale", "/ui/services/web/scale"), Some(Role::Operate));
        assert_eq!(required(&Method::POST, "/ui/releases/{id}/{action}", "/ui/releases/rel-1/revoke"), Some(Role::Operate));
        assert_eq!(required(&Method::POST, "/ui/job-form", "/ui/job-form"), Some(Role::Admin));
        assert_eq!(required(&Method::POST, "/ui/agents/{name}/{action}", "/ui/agents/a/drain"), Some(Role::Admin));
        assert_eq!(required(&Method::GET, "/jobs/{name}", "/jobs/x"), Some(Role::Read));
    }
}
