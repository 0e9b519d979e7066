//! The OpenAPI 3.1 description of the native API, served at `/api/v1/openapi.json`. Written by
//! hand and checked against the router by a test, so it cannot drift silently.

use serde_json::{Value, json};

/// Every route of the native API as `(method, path)`, in the router's order.
pub const ROUTES: &[(&str, &str)] = &[
    ("get", "/healthz"),
    ("post", "/jobs"),
    ("get", "/jobs"),
    ("get", "/jobs/{name}"),
    ("put", "/jobs/{name}"),
    ("delete", "/jobs/{name}"),
    ("post", "/jobs/{name}/run"),
    ("post", "/jobs/{name}/pause"),
    ("post", "/jobs/{name}/resume"),
    ("post", "/jobs/{name}/kill"),
    ("get", "/jobs/{name}/runs"),
    ("get", "/runs/{id}"),
    ("post", "/runs/{id}/kill"),
    ("get", "/runs/{id}/log"),
    ("get", "/schedule/preview"),
    ("get", "/cluster"),
    ("get", "/agents"),
    ("get", "/agents/{name}"),
    ("post", "/agents/{name}/drain"),
    ("post", "/agents/{name}/undrain"),
    ("post", "/services"),
    ("get", "/services"),
    ("get", "/services/{name}"),
    ("put", "/services/{name}"),
    ("delete", "/services/{name}"),
    ("post", "/services/{name}/scale"),
    ("post", "/services/{name}/restart"),
    ("get", "/services/{name}/replicas/{index}/log"),
    ("get", "/operations/{id}"),
    ("post", "/services/{name}/releases"),
    ("get", "/services/{name}/releases"),
    ("get", "/releases/{id}"),
    ("post", "/releases/{id}/{action}"),
    ("post", "/net/pools"),
    ("get", "/net/pools"),
    ("get", "/net/pools/{name}"),
    ("delete", "/net/pools/{name}"),
    ("get", "/net/addresses"),
    ("get", "/openapi.json"),
];

fn op(summary: &str, params: &[(&str, &str, &str)], ok: &str, body: Option<&str>) -> Value {
    let parameters: Vec<Value> = params
        .iter()
        .map(|(name, place, desc)| {
            json!({"name": name, "in": place, "required": *place == "path", "description": desc, "schema": {"type": "string"}})
        })
        .collect();
    let mut o = json!({
        "summary": summary,
        "parameters": parameters,
        "responses": {
            ok: {"description": "success"},
            "default": {"description": "an error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
        }
    });
    if let Some(b) = body {
        o["requestBody"] = json!({"required": true, "content": {
            "application/json": {"schema": {"$ref": format!("#/components/schemas/{b}")}},
            "application/toml": {"schema": {"type": "string"}}
        }});
    }
    o
}

/// The document.
pub fn document() -> Value {
    let name = ("name", "path", "the job's name");
    let id = ("id", "path", "the run's id");
    let svc = ("name", "path", "the service's name");
    let page = [("limit", "query", "page size (max 1000)"), ("cursor", "query", "next_cursor of the previous page")];
    json!({
        "openapi": "3.1.0",
        "info": {"title": "Tugboat API", "version": env!("CARGO_PKG_VERSION"),
                 "description": "Jobs, runs and logs of a Tugboat server. Errors are {\"error\": {\"code\", \"message\"}}."},
        "servers": [{"url": "/api/v1"}],
        "paths": {
            "/healthz": {"get": op("liveness", &[], "200", None)},
            "/jobs": {
                "post": op("create a job", &[], "201", Some("JobSpec")),
                "get": op("list jobs by name", &[page[0], page[1], ("q", "query", "substring of name, description or owner"), ("label", "query", "key or key=value")], "200", None)
            },
            "/jobs/{name}": {
                "get": op("one job with its next fire", &[name], "200", None),
                "put": op("replace a job's spec", &[name, ("version", "query", "compare-and-set on this version")], "200", Some("JobSpec")),
                "delete": op("delete a job and its history", &[name], "204", None)
            },
            "/jobs/{name}/run": {"post": op("run now", &[name], "201", None)},
            "/jobs/{name}/pause": {"post": op("stop firing", &[name], "200", None)},
            "/jobs/{name}/resume": {"post": op("resume firing; the misfire policy covers the pause", &[name], "200", None)},
            "/jobs/{name}/kill": {"post": op("stop every active run of the job", &[name], "202", None)},
            "/jobs/{name}/runs": {"get": op("runs of a job, newest first", &[name, page[0], page[1], ("state", "query", "only runs in this state")], "200", None)},
            "/runs/{id}": {"get": op("one run with its attempts", &[id], "200", None)},
            "/runs/{id}/kill": {"post": op("stop a run", &[id], "202", None)},
            "/runs/{id}/log": {"get": op("a run's output (text/plain)", &[id, ("follow", "query", "stream until the run ends"), ("offset", "query", "start at this byte"), ("follow", "query", "true: keep streaming while the replica runs")], "200", None)},
            "/schedule/preview": {"get": op("next fires of an expression", &[("expr", "query", "cron or ISO 8601"), ("tz", "query", "IANA zone"), ("count", "query", "1-1000"), ("after", "query", "RFC 3339")], "200", None)},
            "/cluster": {"get": op("the server group: members, leader, term, epoch, lease (a lone server is a group of one)", &[], "200", None)},
            "/agents": {"get": op("agents with state, resources and runs", &[], "200", None)},
            "/agents/{name}": {"get": op("one agent", &[("name", "path", "the agent's name")], "200", None)},
            "/agents/{name}/drain": {"post": op("take no new runs", &[("name", "path", "the agent's name")], "200", None)},
            "/agents/{name}/undrain": {"post": op("take runs again", &[("name", "path", "the agent's name")], "200", None)},
            "/services": {
                "post": op("create a service (validated; a missing network pool is refused)", &[], "201", Some("ServiceSpec")),
                "get": op("services by name", &[], "200", None)
            },
            "/services/{name}": {
                "get": op("one service", &[svc], "200", None),
                "put": op(
                    "replace a service's spec: the count, rules and labels apply at once; a change of what replicas run rolls out through a release (returned as `release`)",
                    &[svc, ("batch", "query", "replicas replaced at once: 2 or 25% (default 25%)"), ("health_timeout", "query", "how long a replaced replica has to become healthy (default 1m)")],
                    "200",
                    Some("ServiceSpec")
                ),
                "delete": op("delete a service", &[svc], "204", None)
            },
            "/services/{name}/replicas/{index}/log": {"get": op("a replica's log (all its attempts) as text", &[svc, ("index", "path", "the replica's index"), ("offset", "query", "start at this byte")], "200", None)},
            "/services/{name}/scale": {"post": op("set the replica count; answers 202 at once with an operation", &[svc], "202", Some("Scale"))},
            "/services/{name}/restart": {"post": op(
                "replace every replica on the current spec, a batch at a time, each healthy before the next; answers 202 at once with the release that does it",
                &[svc, ("batch", "query", "replicas replaced at once: 2 or 25% (default 25%)"), ("health_timeout", "query", "how long a replaced replica has to become healthy (default 1m)")],
                "202",
                None
            )},
            "/operations/{id}": {"get": op("a scale operation: placed, started, healthy, failed, per agent", &[("id", "path", "op-N")], "200", None)},
            "/services/{name}/releases": {
                "post": op("start a staged release (smoke, bake, rollout); answers 202 at once", &[svc], "202", Some("ReleaseRequest")),
                "get": op("a service's releases, newest first", &[svc], "200", None)
            },
            "/releases/{id}": {"get": op("a release: its state, stage, progress and history", &[("id", "path", "rel-N")], "200", None)},
            "/releases/{id}/{action}": {"post": op("brake, resume, retry or revoke a release", &[("id", "path", "rel-N"), ("action", "path", "brake, resume, retry or revoke")], "200", None)},
            "/net/pools": {
                "post": op("create an address pool", &[], "201", Some("PoolSpec")),
                "get": op("address pools with how many addresses each hands out and has claimed", &[], "200", None)
            },
            "/net/pools/{name}": {
                "get": op("one address pool", &[("name", "path", "the pool's name")], "200", None),
                "delete": op("delete a pool none of whose addresses is claimed", &[("name", "path", "the pool's name")], "204", None)
            },
            "/net/addresses": {"get": op("claimed addresses, by pool then address", &[("pool", "query", "only this pool")], "200", None)},
            "/openapi.json": {"get": op("this document", &[], "200", None)}
        },
        "components": {"schemas": {
            "Error": {"type": "object", "properties": {"error": {"type": "object", "properties": {
                "code": {"type": "string"}, "message": {"type": "string"}}}}},
            "JobSpec": {"type": "object", "required": ["name", "command"], "description": "See README.md for every field.",
                "properties": {
                    "name": {"type": "string", "pattern": "^[A-Za-z0-9_.-]+$"},
                    "schedule": {"type": "string"}, "tz": {"type": "string"},
                    "parents": {"type": "array", "items": {"type": "string"}},
                    "command": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
                    "concurrency": {"enum": ["allow", "forbid", "replace"]},
                    "misfire": {"enum": ["skip", "run_once", "run_all"]},
                    "network": {"type": "object", "properties": {"pool": {"type": "string"}}}
                }},
            "ServiceSpec": {"type": "object", "required": ["name", "replicas", "command"], "description": "See README.md for every field.",
                "properties": {
                    "name": {"type": "string", "pattern": "^[A-Za-z0-9_.-]+$"},
                    "replicas": {"type": "integer", "minimum": 0, "maximum": 10000},
                    "command": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
                    "runtime": {"enum": ["process", "docker"]},
                    "placement": {"enum": ["spread", "binpack"]},
                    "health": {"type": "object", "required": ["kind"], "properties": {
                        "kind": {"enum": ["http", "tcp", "exec"]}, "path": {"type": "string"}, "port": {"type": "integer"},
                        "command": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
                        "interval": {"type": "string"}, "timeout": {"type": "string"}, "grace_period": {"type": "string"},
                        "healthy_threshold": {"type": "integer"}, "unhealthy_threshold": {"type": "integer"}}},
                    "restart": {"type": "object", "properties": {"initial_delay": {"type": "string"}, "max_delay": {"type": "string"}}},
                    "network": {"type": "object", "properties": {"pool": {"type": "string"}}},
                    "stop_signal": {"type": "string"}, "stop_grace": {"type": "string"}
                }},
            "Scale": {"type": "object", "required": ["replicas"], "properties": {"replicas": {"type": "integer", "minimum": 0, "maximum": 10000}}},
            "ReleaseRequest": {"type": "object", "properties": {
                "spec": {"$ref": "#/components/schemas/ServiceSpec"},
                "image": {"type": "string"}, "command": {}, "env": {"type": "object"},
                "smoke": {"type": "integer", "minimum": 0}, "bake": {"type": "string", "examples": ["10m"]},
                "batch": {"examples": [2, "25%"]}, "health_timeout": {"type": "string", "examples": ["1m"]},
                "pull_out": {"type": "string", "description": "load balancer hook told before a replica is stopped"},
                "pull_in": {"type": "string", "description": "load balancer hook told once a replaced replica is healthy"}
            }},
            "PoolSpec": {"type": "object", "required": ["name", "cidr", "segment", "gateway"],
                "properties": {
                    "name": {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,64}$"},
                    "cidr": {"type": "string", "description": "IPv4 network, e.g. 10.20.0.0/24"},
                    "segment": {"type": "object", "properties": {"kind": {"enum": ["vlan", "vxlan"]}, "id": {"type": "integer"}}},
                    "gateway": {"type": "string"},
                    "reserve": {"type": "array", "items": {"type": "string", "description": "FIRST-LAST or one address"}},
                    "select": {"type": "object", "additionalProperties": {"type": "string"}}
                }}
        }}
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_documented() {
        let doc = document();
        for (method, path) in ROUTES {
            assert!(doc["paths"][path][method].is_object(), "{method} {path} is missing from openapi.json");
        }
        let documented: usize = doc["paths"].as_object().unwrap().values().map(|p| p.as_object().unwrap().len()).sum();
        assert_eq!(documented, ROUTES.len(), "openapi.json documents a route the router does not have");
    }
}
