//! A Chronos job document ↔ a Tugboat [`JobSpec`]. Chronos fields with a Tugboat meaning map onto
//! the spec; the rest (`async`, `softError`, `uris`, ...) are kept in `spec.chronos` so a client
//! reads back what it wrote. Chronos is lenient about types (`"cpus": "0.5"`), so this is too.

use jiff::Timestamp;
use serde_json::{json, Map, Value};
use tug_core::bytesize::ByteSize;
use tug_core::constraint::Constraint;
use tug_core::duration::Duration;
use tug_core::job::{Command, ConcurrencyPolicy, DockerSpec, PullPolicy, RetryPolicy, RuntimeKind};
use tug_core::JobSpec;
use tug_store::JobRecord;

use super::stats::Counts;

/// Chronos's defaults where a field is absent (`--mesos_task_cpu`, `--mesos_task_mem`,
/// `--mesos_task_disk`, and `retries`).
const DEFAULT_CPUS: f64 = 0.1;
const DEFAULT_MEM_MB: f64 = 128.0;
const DEFAULT_DISK_MB: f64 = 256.0;
const DEFAULT_RETRIES: u32 = 2;

/// Fields the Chronos serializer computes; accepted on input and ignored.
const READ_ONLY: &[&str] = &["successCount", "errorCount", "lastSuccess", "lastError", "errorsSinceLastSuccess"];

/// Fields mapped onto the spec (everything else goes to the passthrough).
const MAPPED: &[&str] = &[
    "name",
    "command",
    "shell",
    "arguments",
    "schedule",
    "scheduleTimeZone",
    "parents",
    "epsilon",
    "retries",
    "owner",
    "description",
    "disabled",
    "cpus",
    "mem",
    "disk",
    "environmentVariables",
    "container",
    "constraints",
    "concurrent",
    "runAsUser",
];

/// Which Chronos endpoint a job came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `POST /scheduler/iso8601`: a job with a `schedule`.
    Scheduled,
    /// `POST /scheduler/dependency`: a job with `parents`.
    Dependent,
}

/// Parses a Chronos job body and applies it to `base` (the existing job on update, so fields only
/// the native API knows — labels, timeout, webhooks... — survive a Chronos client's update).
pub fn to_spec(body: &str, kind: Kind, base: Option<JobSpec>, now: Timestamp) -> Result<JobSpec, String> {
    let v: Value = serde_json::from_str(body).map_err(|e| format!("invalid job JSON: {e}"))?;
    let Value::Object(obj) = v else {
        return Err("invalid job JSON: expected an object like {\"name\": ..., \"command\": ..., \"schedule\": ...}".into());
    };
    let name = str_field(&obj, "name")?.ok_or("the job has no `name`")?;
    if !tug_core::job::valid_name(&name) {
        return Err(format!(
            "the job's name {name:?} is invalid: use 1-200 characters from A-Z a-z 0-9 _ . - \
             (Tugboat does not accept the spaces and '#' Chronos allows)"
        ));
    }
    let command = str_field(&obj, "command")?.ok_or_else(|| format!("job {name:?} has no `command`"))?;
    let mut spec = match base {
        Some(b) if b.name == name => b,
        _ => JobSpec::new(name.clone(), Command::Shell(String::new())),
    };
    let mut extra = Map::new();

    let shell = bool_field(&obj, "shell")?.unwrap_or(true);
    let arguments = str_list(&obj, "arguments")?.unwrap_or_default();
    spec.command = if shell {
        if !arguments.is_empty() {
            // Chronos ignores `arguments` for shell jobs; keep them to show them back.
            extra.insert("arguments".into(), json!(arguments));
        }
        Command::Shell(command)
    } else {
        let mut argv = vec![command];
        argv.extend(arguments);
        Command::Argv(argv)
    };

    let tz = str_field(&obj, "scheduleTimeZone")?.filter(|s| !s.trim().is_empty());
    match kind {
        Kind::Scheduled => {
            if obj.get("parents").is_some_and(|p| p.as_array().is_some_and(|a| !a.is_empty())) {
                return Err(format!(
                    "job {name:?} has `parents`; dependent jobs go to POST /scheduler/dependency"
                ));
            }
            let schedule = match str_field(&obj, "schedule")?.filter(|s| !s.trim().is_empty()) {
                Some(s) => fill_start(&s, now),
                // Chronos: no schedule means run once, now.
                None => format!("R1/{}/PT24H", iso(now)),
            };
            spec.schedule = Some(schedule);
            spec.parents = Vec::new();
        }
        Kind::Dependent => {
            let parents = str_list(&obj, "parents")?.unwrap_or_default();
            if parents.is_empty() {
                return Err(format!("job {name:?} has no `parents`; scheduled jobs go to POST /scheduler/iso8601"));
            }
            spec.parents = parents;
            spec.schedule = None;
        }
    }
    spec.tz = tz;

    if let Some(e) = str_field(&obj, "epsilon")? {
        spec.epsilon = Duration::parse(&e).map_err(|e| format!("job {name:?}: `epsilon` {e}"))?;
        extra.insert("epsilon".into(), json!(e));
    } else {
        spec.epsilon = Duration::from_secs(60);
    }
    let retries = match obj.get("retries") {
        None | Some(Value::Null) => DEFAULT_RETRIES,
        Some(v) => num(v)
            .filter(|n| *n >= 0.0 && n.fract() == 0.0 && *n <= f64::from(u32::MAX))
            .ok_or_else(|| format!("job {name:?}: `retries` must be a whole number, got {v}"))? as u32,
    };
    spec.retries = RetryPolicy { count: retries, ..spec.retries };
    spec.owner = str_field(&obj, "owner")?.unwrap_or_default();
    spec.description = str_field(&obj, "description")?.unwrap_or_default();
    spec.enabled = !bool_field(&obj, "disabled")?.unwrap_or(false);
    // `replace` has no Chronos spelling (it reads back as `concurrent: false`); keep it.
    spec.concurrency = match (bool_field(&obj, "concurrent")?.unwrap_or(false), spec.concurrency) {
        (true, _) => ConcurrencyPolicy::Allow,
        (false, ConcurrencyPolicy::Replace) => ConcurrencyPolicy::Replace,
        (false, _) => ConcurrencyPolicy::Forbid,
    };
    spec.user = str_field(&obj, "runAsUser")?.filter(|u| !u.is_empty());

    // Chronos treats 0 as "use the default".
    let resource = |field: &str| -> Result<Option<f64>, String> {
        match obj.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => match num(v) {
                Some(0.0) => Ok(None),
                Some(n) if n > 0.0 && n.is_finite() => Ok(Some(n)),
                _ => Err(format!("job {name:?}: `{field}` must be a positive number, got {v}")),
            },
        }
    };
    spec.resources.cpus = resource("cpus")?;
    spec.resources.mem = resource("mem")?.map(ByteSize::from_mib);
    spec.resources.disk = resource("disk")?.map(ByteSize::from_mib);

    spec.env.clear();
    if let Some(vars) = obj.get("environmentVariables").filter(|v| !v.is_null()) {
        let list = vars.as_array().ok_or_else(|| {
            format!("job {name:?}: `environmentVariables` must be a list of {{\"name\": ..., \"value\": ...}}")
        })?;
        for var in list {
            let (Some(k), Some(val)) = (var.get("name").and_then(Value::as_str), var.get("value").and_then(text)) else {
                return Err(format!("job {name:?}: environment variable {var} needs a string `name` and `value`"));
            };
            spec.env.insert(k.to_string(), val);
        }
    }

    spec.constraints = match obj.get("constraints").filter(|v| !v.is_null()) {
        None => Vec::new(),
        Some(v) => serde_json::from_value::<Vec<Constraint>>(v.clone())
            .map_err(|e| format!("job {name:?}: `constraints`: {e}"))?,
    };

    match obj.get("container").filter(|v| !v.is_null()) {
        None => {
            spec.runtime = RuntimeKind::Process;
            spec.docker = None;
        }
        Some(c) => {
            let (docker, kept) = container(&name, c, spec.docker.take())?;
            spec.runtime = RuntimeKind::Docker;
            spec.docker = Some(docker);
            if !kept.is_empty() {
                extra.insert("container".into(), Value::Object(kept));
            }
        }
    }

    for (k, v) in obj {
        if !MAPPED.contains(&k.as_str()) && !READ_ONLY.contains(&k.as_str()) {
            extra.insert(k, v);
        }
    }
    spec.chronos = extra.into_iter().collect();
    Ok(spec)
}

/// Chronos's `container` → a [`DockerSpec`] (keeping warm-container settings of `base`), plus the
/// container fields Tugboat does not use (`type` other than docker, `parameters`, ...).
fn container(name: &str, c: &Value, base: Option<DockerSpec>) -> Result<(DockerSpec, Map<String, Value>), String> {
    let Value::Object(c) = c else {
        return Err(format!("job {name:?}: `container` must be an object with `type` and `image`"));
    };
    let image = c
        .get("image")
        .and_then(Value::as_str)
        .filter(|s| !s.trim().is_empty())
        .ok_or_else(|| format!("job {name:?}: `container.image` is required"))?;
    let mut d = base.unwrap_or_else(|| DockerSpec {
        image: String::new(),
        entrypoint: None,
        pull: PullPolicy::IfNotPresent,
        mode: Default::default(),
        volumes: Vec::new(),
        network: None,
        max_runs: None,
        max_age: None,
        idle_timeout: None,
        prewarm: None,
    });
    d.image = image.to_string();
    d.pull = match c.get("forcePullImage").map(boolish) {
        Some(Some(true)) => PullPolicy::Always,
        Some(None) => return Err(format!("job {name:?}: `container.forcePullImage` must be true or false")),
        _ => PullPolicy::IfNotPresent,
    };
    // Chronos's default network mode is HOST.
    d.network = Some(c.get("network").and_then(Value::as_str).unwrap_or("HOST").to_ascii_lowercase());
    d.volumes.clear();
    if let Some(vols) = c.get("volumes").filter(|v| !v.is_null()) {
        let vols = vols
            .as_array()
            .ok_or_else(|| format!("job {name:?}: `container.volumes` must be a list"))?;
        for v in vols {
            let cp = v.get("containerPath").and_then(Value::as_str);
            let hp = v.get("hostPath").and_then(Value::as_str);
            let (Some(cp), Some(hp)) = (cp, hp) else {
                return Err(format!(
                    "job {name:?}: volume {v} needs `containerPath` and `hostPath` (Tugboat has no sandbox volumes)"
                ));
            };
            let mode = match v.get("mode").and_then(Value::as_str).map(str::to_ascii_uppercase).as_deref() {
                None => String::new(),
                Some("RW") => ":rw".into(),
                Some("RO") => ":ro".into(),
                Some(m) => return Err(format!("job {name:?}: volume mode {m:?} is not RW or RO")),
            };
            d.volumes.push(format!("{hp}:{cp}{mode}"));
        }
    }
    let mut kept = Map::new();
    for (k, v) in c {
        if !["image", "forcePullImage", "network", "volumes"].contains(&k.as_str()) {
            kept.insert(k.clone(), v.clone());
        }
    }
    Ok((d, kept))
}

/// A job as Chronos's serializer writes it.
pub fn to_chronos(record: &JobRecord, summary: &Counts) -> Value {
    let spec = &record.spec;
    let extra = &spec.chronos;
    let mut o = Map::new();
    let (command, shell, arguments) = match &spec.command {
        Command::Shell(s) => (s.clone(), true, extra.get("arguments").cloned().unwrap_or_else(|| json!([]))),
        Command::Argv(v) => (v.first().cloned().unwrap_or_default(), false, json!(v.iter().skip(1).collect::<Vec<_>>())),
    };
    o.insert("name".into(), json!(spec.name));
    o.insert("command".into(), json!(command));
    o.insert("shell".into(), json!(shell));
    // The epsilon as written when it still holds, else ISO 8601 from the duration.
    let epsilon = extra
        .get("epsilon")
        .and_then(Value::as_str)
        .filter(|e| Duration::parse(e).ok() == Some(spec.epsilon))
        .map_or_else(|| iso_duration(spec.epsilon), str::to_string);
    o.insert("epsilon".into(), json!(epsilon));
    o.insert("executor".into(), json!(""));
    o.insert("executorFlags".into(), json!(""));
    o.insert("retries".into(), json!(spec.retries.count));
    o.insert("owner".into(), json!(spec.owner));
    o.insert("ownerName".into(), json!(""));
    o.insert("description".into(), json!(spec.description));
    o.insert("async".into(), json!(false));
    o.insert("successCount".into(), json!(summary.success_count));
    o.insert("errorCount".into(), json!(summary.error_count));
    o.insert("lastSuccess".into(), json!(record.last_success_at.map(iso).unwrap_or_default()));
    o.insert("lastError".into(), json!(record.last_failure_at.map(iso).unwrap_or_default()));
    o.insert("cpus".into(), json!(spec.resources.cpus.unwrap_or(DEFAULT_CPUS)));
    o.insert("disk".into(), json!(spec.resources.disk.map_or(DEFAULT_DISK_MB, ByteSize::as_mib)));
    o.insert("mem".into(), json!(spec.resources.mem.map_or(DEFAULT_MEM_MB, ByteSize::as_mib)));
    o.insert("disabled".into(), json!(!spec.enabled));
    o.insert("softError".into(), json!(false));
    o.insert("dataProcessingJobType".into(), json!(false));
    o.insert("errorsSinceLastSuccess".into(), json!(summary.errors_since_last_success));
    o.insert("uris".into(), json!([]));
    o.insert("fetch".into(), json!([]));
    let env: Vec<Value> = spec.env.iter().map(|(k, v)| json!({"name": k, "value": v})).collect();
    o.insert("environmentVariables".into(), json!(env));
    o.insert("arguments".into(), arguments);
    o.insert("highPriority".into(), json!(false));
    o.insert("runAsUser".into(), json!(spec.user.clone().unwrap_or_default()));
    o.insert("concurrent".into(), json!(spec.concurrency == ConcurrencyPolicy::Allow));
    o.insert("constraints".into(), serde_json::to_value(&spec.constraints).unwrap_or_else(|_| json!([])));
    if let (RuntimeKind::Docker, Some(d)) = (spec.runtime, &spec.docker) {
        let mut c = Map::new();
        c.insert("type".into(), json!("DOCKER"));
        c.insert("image".into(), json!(d.image));
        c.insert("network".into(), json!(d.network.as_deref().unwrap_or("host").to_ascii_uppercase()));
        let vols: Vec<Value> = d.volumes.iter().map(|v| volume(v)).collect();
        c.insert("volumes".into(), json!(vols));
        c.insert("forcePullImage".into(), json!(d.pull == PullPolicy::Always));
        if let Some(Value::Object(kept)) = extra.get("container") {
            for (k, v) in kept {
                c.insert(k.clone(), v.clone());
            }
        }
        o.insert("container".into(), Value::Object(c));
    }
    if spec.parents.is_empty() {
        o.insert("schedule".into(), json!(spec.schedule.clone().unwrap_or_default()));
        o.insert("scheduleTimeZone".into(), json!(spec.tz.clone().unwrap_or_default()));
    } else {
        o.insert("parents".into(), json!(spec.parents));
    }
    // What the client wrote wins over the defaults above (async, softError, uris, ownerName...).
    for (k, v) in extra {
        if !["epsilon", "arguments", "container"].contains(&k.as_str()) {
            o.insert(k.clone(), v.clone());
        }
    }
    Value::Object(o)
}

/// `"/host:/container:ro"` → `{"containerPath", "hostPath", "mode"}`.
fn volume(v: &str) -> Value {
    let parts: Vec<&str> = v.split(':').collect();
    let mut o = Map::new();
    if let Some(h) = parts.first() {
        o.insert("hostPath".into(), json!(h));
    }
    if let Some(c) = parts.get(1) {
        o.insert("containerPath".into(), json!(c));
    }
    if let Some(m) = parts.get(2) {
        o.insert("mode".into(), json!(m.to_ascii_uppercase()));
    }
    Value::Object(o)
}

/// Chronos's schedule with an empty start (`R//PT1H`, "start now") gets `now` as its start.
fn fill_start(schedule: &str, now: Timestamp) -> String {
    let parts: Vec<&str> = schedule.split('/').collect();
    match parts.as_slice() {
        [r, "", p] if r.starts_with('R') => format!("{r}/{}/{p}", iso(now)),
        _ => schedule.to_string(),
    }
}

/// A timestamp as Chronos writes it: `2014-03-08T16:57:17.507Z`.
pub fn iso(t: Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

/// A duration in ISO 8601 (`PT1H30M`, `PT0.5S`).
pub fn iso_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "PT0S".into();
    }
    let (h, m, s, frac) = (ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000);
    let mut out = String::from("PT");
    if h > 0 {
        out += &format!("{h}H");
    }
    if m > 0 {
        out += &format!("{m}M");
    }
    if s > 0 || frac > 0 {
        if frac > 0 {
            out += &format!("{s}.{frac:03}S");
        } else {
            out += &format!("{s}S");
        }
    }
    out
}

/// The start instant of an ISO 8601 repeating schedule, if it has one (`R/<start>/P...`).
pub fn iso_start(schedule: &str, tz: &str) -> Option<Timestamp> {
    let start = schedule.split('/').nth(1)?;
    if let Ok(t) = start.parse::<Timestamp>() {
        return Some(t);
    }
    let dt: jiff::civil::DateTime = start.parse().ok()?;
    dt.in_tz(tz).ok().map(|z| z.timestamp())
}

fn num(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn boolish(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::String(s) if s.eq_ignore_ascii_case("true") => Some(true),
        Value::String(s) if s.eq_ignore_ascii_case("false") => Some(false),
        Value::Null => Some(false),
        _ => None,
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn str_field(obj: &Map<String, Value>, field: &str) -> Result<Option<String>, String> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => text(v).map(Some).ok_or_else(|| format!("`{field}` must be a string, got {v}")),
    }
}

fn bool_field(obj: &Map<String, Value>, field: &str) -> Result<Option<bool>, String> {
    match obj.get(field) {
        None => Ok(None),
        Some(v) => boolish(v).map(Some).ok_or_else(|| format!("`{field}` must be true or false, got {v}")),
    }
}

fn str_list(obj: &Map<String, Value>, field: &str) -> Result<Option<Vec<String>>, String> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| text(v).ok_or_else(|| format!("`{field}` must be a list of strings, got {v}")))
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(v) => Err(format!("`{field}` must be a list of strings, got {v}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> Timestamp {
        "2026-11-25T12:00:00Z".parse().unwrap()
    }

    #[test]
    fn docs_sample_job_roundtrips() {
        let body = r#"{"name":"camus_kafka2hdfs","command":"/srv/kafka_hdfs_job.bash","arguments":["-verbose","-debug"],
            "shell":false,"epsilon":"PT30M","executor":"","retries":2,"owner":"bofh@your-company.com","async":false,
            "successCount":190,"cpus":1.0,"disk":10240,"mem":1024,"disabled":false,
            "schedule":"R/2026-03-08T20:00:00.000Z/PT2H",
            "environmentVariables":[{"name":"JVMOPTS","value":"-Xmx1000m"}]}"#;
        let spec = to_spec(body, Kind::Scheduled, None, now()).unwrap();
        assert_eq!(spec.command, Command::Argv(vec!["/srv/kafka_hdfs_job.bash".into(), "-verbose".into(), "-debug".into()]));
        assert_eq!(spec.epsilon, Duration::from_secs(1800));
        assert_eq!(spec.resources.mem, Some(ByteSize(1024 << 20)));
        assert!(!spec.chronos.contains_key("successCount"));
        spec.clone().validate().unwrap();
        let rec = JobRecord {
            spec,
            version: 1,
            created_at: now(),
            updated_at: now(),
            fire_cursor: None,
            last_run_at: None,
            last_success_at: None,
            last_failure_at: None,
        };
        let out = to_chronos(&rec, &Counts::default());
        assert_eq!(out["command"], "/srv/kafka_hdfs_job.bash");
        assert_eq!(out["arguments"], json!(["-verbose", "-debug"]));
        assert_eq!(out["shell"], false);
        assert_eq!(out["epsilon"], "PT30M");
        assert_eq!(out["mem"], 1024.0);
        assert_eq!(out["lastSuccess"], "");
        assert_eq!(out["environmentVariables"], json!([{"name":"JVMOPTS","value":"-Xmx1000m"}]));
    }

    #[test]
    fn empty_start_and_missing_schedule_start_now() {
        let s = to_spec(r#"{"name":"a","command":"x","schedule":"R//PT1H"}"#, Kind::Scheduled, None, now()).unwrap();
        assert_eq!(s.schedule.as_deref(), Some("R/2026-11-25T12:00:00.000Z/PT1H"));
        let s = to_spec(r#"{"name":"a","command":"x"}"#, Kind::Scheduled, None, now()).unwrap();
        assert_eq!(s.schedule.as_deref(), Some("R1/2026-11-25T12:00:00.000Z/PT24H"));
        s.validate().unwrap();
    }

    #[test]
    fn an_update_keeps_what_chronos_cannot_say() {
        let mut base = JobSpec::new("a", Command::Shell("x".into()));
        base.concurrency = ConcurrencyPolicy::Replace;
        base.timeout = Some(Duration::from_secs(30));
        base.labels.insert("team".into(), "data".into());
        let body = r#"{"name":"a","command":"y","schedule":"R/2027-01-01T00:00:00Z/PT1H","concurrent":false}"#;
        let s = to_spec(body, Kind::Scheduled, Some(base), now()).unwrap();
        assert_eq!(s.concurrency, ConcurrencyPolicy::Replace);
        assert_eq!(s.timeout, Some(Duration::from_secs(30)));
        assert_eq!(s.labels["team"], "data");
        assert_eq!(s.command, Command::Shell("y".into()));
        let body = r#"{"name":"a","command":"y","schedule":"R/2027-01-01T00:00:00Z/PT1H","concurrent":true}"#;
        assert_eq!(to_spec(body, Kind::Scheduled, Some(s), now()).unwrap().concurrency, ConcurrencyPolicy::Allow);
    }

    #[test]
    fn errors_name_the_field() {
        let e = to_spec(r#"{"name":"a b","command":"x"}"#, Kind::Scheduled, None, now()).unwrap_err();
        assert!(e.contains("invalid"), "{e}");
        let e = to_spec(r#"{"name":"a","command":"x","cpus":"lots"}"#, Kind::Scheduled, None, now()).unwrap_err();
        assert!(e.contains("`cpus`"), "{e}");
        let e = to_spec(r#"{"name":"a","command":"x"}"#, Kind::Dependent, None, now()).unwrap_err();
        assert!(e.contains("parents"), "{e}");
        let e = to_spec("{", Kind::Scheduled, None, now()).unwrap_err();
        assert!(e.contains("invalid job JSON"), "{e}");
    }

    #[test]
    fn iso_durations() {
        assert_eq!(iso_duration(Duration::from_secs(60)), "PT1M");
        assert_eq!(iso_duration(Duration::from_secs(5400)), "PT1H30M");
        assert_eq!(iso_duration(Duration::from_millis(1500)), "PT1.500S");
    }
}
