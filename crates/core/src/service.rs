//! The service model: N replicas of a long-running process or container, each with a health
//! check, written as TOML or JSON like a job ([`ServiceSpec`]) and validated into a [`Service`].
//! A replica's identity is `(service, index)`; it also names the replica's network address.
//! Unknown fields are rejected by name; every rule broken says what to fix.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::constraint::Constraint;
use crate::duration::Duration;
use crate::job::{self, Command, DockerSpec, NetworkSpec, PlacementStrategy, Resources, RuntimeKind};

/// The most replicas one service may ask for.
pub const MAX_REPLICAS: i64 = 10_000;

/// The signals a service may be stopped with.
pub const STOP_SIGNALS: &[&str] = &["TERM", "INT", "QUIT", "HUP", "USR1", "USR2", "KILL"];

/// The Linux number of a stop signal named as in [`STOP_SIGNALS`].
pub fn signal_number(name: &str) -> Option<i32> {
    Some(match name {
        "HUP" => 1,
        "INT" => 2,
        "QUIT" => 3,
        "KILL" => 9,
        "USR1" => 10,
        "USR2" => 12,
        "TERM" => 15,
        _ => return None,
    })
}

/// A service as a user writes it. This is the document the store keeps and the API returns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    /// Unique name among services, `[A-Za-z0-9_.-]+`.
    pub name: String,
    /// Free text shown in listings.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// Who to ask about this service.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub owner: String,
    /// Key-value labels for filtering and token scopes.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// How many replicas should run. Signed so that a negative count gets a clear error rather
    /// than a type error.
    pub replicas: i64,
    /// What each replica runs: a shell string or an argv list. It should not exit.
    pub command: Command,
    /// Extra environment variables. Each replica also gets `TUG_SERVICE` and `TUG_REPLICA`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Working directory; the agent's own when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// User (name or uid) to run as; the agent's own when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Where replicas run.
    #[serde(default)]
    pub runtime: RuntimeKind,
    /// The container, for `runtime = "docker"`: one container per replica, with `dwait` as PID 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker: Option<DockerSpec>,
    /// What one replica needs.
    #[serde(default, skip_serializing_if = "Resources::is_empty")]
    pub resources: Resources,
    /// Constraints on the agents a replica may be placed on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub constraints: Vec<Constraint>,
    /// How replicas are spread over agents: `spread` unless told otherwise.
    #[serde(default = "default_placement")]
    pub placement: PlacementStrategy,
    /// How a replica is judged healthy; without one, a running replica counts as healthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthCheck>,
    /// How an exited or unhealthy replica is restarted.
    #[serde(default)]
    pub restart: RestartPolicy,
    /// The container network: an address per replica from this pool, kept by the replica's index
    /// wherever it runs. Docker services only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkSpec>,
    /// The signal a replica is asked to stop with (`TERM`, `INT`, `QUIT`, `HUP`, `USR1`, `USR2`,
    /// `KILL`).
    #[serde(default = "default_stop_signal")]
    pub stop_signal: String,
    /// How long a replica has to exit after the stop signal before it is killed.
    #[serde(default = "default_stop_grace")]
    pub stop_grace: Duration,
    /// Scheduled scaling: at each rule's fires (the job schedules' cron or ISO 8601, with their
    /// DST rules) the service is scaled to the rule's count.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scale: Vec<ScaleRule>,
    /// Which replicas a scale-in stops first: `newest` (the highest indices) or `oldest` (the
    /// longest running).
    #[serde(default, skip_serializing_if = "ScaleIn::is_default")]
    pub scale_in: ScaleIn,
}

/// Which replicas a scale-in stops first.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ScaleIn {
    /// The highest indices first: the replicas added last by a scale-out.
    #[default]
    Newest,
    /// The replicas whose current attempt has run longest first (by start time; replicas not
    /// running yet go last, and equal times go lowest index first). The replicas kept may then
    /// have gaps in their indices, which a later scale-out fills lowest first.
    Oldest,
}

impl ScaleIn {
    fn is_default(&self) -> bool {
        *self == ScaleIn::Newest
    }

    /// Parses `newest` or `oldest`.
    pub fn parse(s: &str) -> Result<ScaleIn, String> {
        match s {
            "newest" => Ok(ScaleIn::Newest),
            "oldest" => Ok(ScaleIn::Oldest),
            _ => Err(format!(
                "invalid scale_in {s:?}: give \"newest\" (stop the highest indices first) or \"oldest\" (stop the longest-running replicas first)"
            )),
        }
    }

    /// The `n` replicas a scale-in stops, out of `replicas` (each its index and when its current
    /// attempt started, `None` when it is not running), in the order they stop.
    pub fn choose<T: Ord + Copy>(self, replicas: &[(u32, Option<T>)], n: usize) -> Vec<u32> {
        let mut order: Vec<(u32, Option<T>)> = replicas.to_vec();
        match self {
            ScaleIn::Newest => order.sort_by_key(|r| std::cmp::Reverse(r.0)),
            // `None` (not running) sorts last; then the earliest start, then the lowest index.
            ScaleIn::Oldest => order.sort_by_key(|r| (r.1.is_none(), r.1, r.0)),
        }
        order.into_iter().take(n).map(|(i, _)| i).collect()
    }
}

impl<'de> Deserialize<'de> for ScaleIn {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<ScaleIn, D::Error> {
        let s = String::deserialize(d)?;
        ScaleIn::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A scheduled scaling rule: `{ schedule = "0 0 8 * * MON-FRI", tz = "Asia/Shanghai", replicas = 20 }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScaleRule {
    /// When: a cron expression or ISO 8601 repeating interval, as a job's `schedule`.
    pub schedule: String,
    /// The IANA time zone it is read in; UTC when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tz: Option<String>,
    /// The replica count it sets.
    pub replicas: i64,
}

/// The kind of probe a health check runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthKind {
    /// An HTTP GET of `path` on `port` answers 2xx or 3xx.
    Http,
    /// A TCP connection to `port` is accepted.
    Tcp,
    /// `command` exits 0 (inside the container, for docker).
    Exec,
}

/// A replica's health check, run by its agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// `http`, `tcp` or `exec`.
    pub kind: HealthKind,
    /// The HTTP path, for `http` (default `/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The port the replica listens on, for `http` and `tcp`. Signed and wide so that an
    /// impossible port gets a clear error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i64>,
    /// The command, for `exec`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Command>,
    /// Time between probes.
    #[serde(default = "default_interval")]
    pub interval: Duration,
    /// A probe that takes longer fails.
    #[serde(default = "default_timeout")]
    pub timeout: Duration,
    /// Passing probes in a row that make a replica healthy.
    #[serde(default = "one")]
    pub healthy_threshold: u32,
    /// Failing probes in a row that make a healthy replica unhealthy (it is then replaced).
    #[serde(default = "three")]
    pub unhealthy_threshold: u32,
    /// Failures during this long after a start do not count.
    #[serde(default, skip_serializing_if = "Duration::is_zero")]
    pub grace_period: Duration,
}

/// How replicas that exit or turn unhealthy are restarted: at once the first time, then after a
/// delay that doubles from `initial_delay` up to `max_delay`; a replica that stayed up for
/// `max_delay` starts over at no delay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestartPolicy {
    /// The delay before the second restart in a row.
    #[serde(default = "default_initial_delay")]
    pub initial_delay: Duration,
    /// Upper bound of the doubling delay.
    #[serde(default = "default_max_delay")]
    pub max_delay: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy { initial_delay: default_initial_delay(), max_delay: default_max_delay() }
    }
}

impl RestartPolicy {
    /// The delay before restart number `n` in a row (0-based): none for the first, then
    /// initial × 2^(n-1), capped at the maximum.
    pub fn delay(&self, n: u32) -> Duration {
        if n == 0 {
            return Duration::ZERO;
        }
        let factor = 1u32.checked_shl(n - 1).unwrap_or(u32::MAX);
        let d = self.initial_delay.as_std().checked_mul(factor).unwrap_or(self.max_delay.as_std());
        Duration::from(d.min(self.max_delay.as_std()))
    }
}

fn default_placement() -> PlacementStrategy {
    PlacementStrategy::Spread
}
fn default_stop_signal() -> String {
    "TERM".into()
}
fn default_stop_grace() -> Duration {
    Duration::from_secs(10)
}
fn default_interval() -> Duration {
    Duration::from_secs(10)
}
fn default_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_initial_delay() -> Duration {
    Duration::from_secs(1)
}
fn default_max_delay() -> Duration {
    Duration::from_secs(60)
}
fn one() -> u32 {
    1
}
fn three() -> u32 {
    3
}

/// Why a service spec was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServiceError {
    /// The file or body could not be parsed (syntax, wrong type, unknown field).
    #[error("{0}")]
    Parse(String),
    /// The name has characters outside `[A-Za-z0-9_.-]` or is empty or too long.
    #[error("invalid service name {0:?}: use 1-200 characters from A-Z a-z 0-9 _ . - (not `.` or `..` alone)")]
    Name(String),
    /// A field holds an impossible value.
    #[error("service {service:?}: `{field}` {why}")]
    Field {
        /// The service.
        service: String,
        /// The field name.
        field: &'static str,
        /// What is wrong and what to do.
        why: String,
    },
}

/// A validated service.
#[derive(Debug, Clone)]
pub struct Service {
    /// The spec as written (after defaults).
    pub spec: ServiceSpec,
    /// Its scaling rules' schedules, parsed, in the order of `spec.scale`.
    pub rules: Vec<crate::schedule::Schedule>,
}

impl Service {
    /// The service's name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// How many replicas should run.
    pub fn replicas(&self) -> u32 {
        // Validation bounds it to 0..=MAX_REPLICAS.
        self.spec.replicas as u32
    }
}

/// Replica run ids start here, far above any id the store hands out to job runs: a replica is a
/// long-running run that lives in the scheduler's memory, not in the store.
pub const REPLICA_RUN_IDS: crate::run::RunId = 1 << 62;

/// True when run `id` is a service replica's, not a job's.
pub fn is_replica_run(id: crate::run::RunId) -> bool {
    id >= REPLICA_RUN_IDS
}

/// The name a replica's address is claimed under in its pool: the same wherever it runs.
pub fn replica_claim_name(service: &str, index: u32) -> String {
    format!("service/{service}/{index}")
}

impl ServiceSpec {
    /// Whether replicas started from `other` would run differently from replicas started from
    /// this spec (its command, environment, image, resources, health check, network, placement):
    /// such a change reaches running replicas only by replacing them. The replica count, scaling
    /// rules, description, owner, labels, restart policy and stop signal and grace do not.
    pub fn launch_changed(&self, other: &ServiceSpec) -> bool {
        let mut same = other.clone();
        same.description.clone_from(&self.description);
        same.owner.clone_from(&self.owner);
        same.labels.clone_from(&self.labels);
        same.replicas = self.replicas;
        same.scale.clone_from(&self.scale);
        same.restart = self.restart;
        same.stop_signal.clone_from(&self.stop_signal);
        same.stop_grace = self.stop_grace;
        same.scale_in = self.scale_in;
        same != *self
    }

    /// This spec with what `other` changes that needs no replacement of running replicas (see
    /// [`ServiceSpec::launch_changed`]).
    pub fn with_settings_of(&self, other: &ServiceSpec) -> ServiceSpec {
        let mut s = self.clone();
        s.description.clone_from(&other.description);
        s.owner.clone_from(&other.owner);
        s.labels.clone_from(&other.labels);
        s.replicas = other.replicas;
        s.scale.clone_from(&other.scale);
        s.restart = other.restart;
        s.stop_signal.clone_from(&other.stop_signal);
        s.stop_grace = other.stop_grace;
        s.scale_in = other.scale_in;
        s
    }

    /// A minimal process service: a name, a command and a replica count.
    pub fn new(name: impl Into<String>, command: Command, replicas: i64) -> ServiceSpec {
        ServiceSpec {
            name: name.into(),
            description: String::new(),
            owner: String::new(),
            labels: BTreeMap::new(),
            replicas,
            command,
            env: BTreeMap::new(),
            workdir: None,
            user: None,
            runtime: RuntimeKind::Process,
            docker: None,
            resources: Resources::default(),
            constraints: Vec::new(),
            placement: default_placement(),
            health: None,
            restart: RestartPolicy::default(),
            network: None,
            stop_signal: default_stop_signal(),
            stop_grace: default_stop_grace(),
            scale: Vec::new(),
            scale_in: ScaleIn::Newest,
        }
    }

    /// Parses a TOML document.
    pub fn from_toml(text: &str) -> Result<ServiceSpec, ServiceError> {
        toml::from_str(text).map_err(|e| ServiceError::Parse(format!("invalid service file: {}", e.message().trim())))
    }

    /// Parses a JSON document.
    pub fn from_json(text: &str) -> Result<ServiceSpec, ServiceError> {
        serde_json::from_str(text).map_err(|e| ServiceError::Parse(format!("invalid service JSON: {e}")))
    }

    /// Whether this service could have addresses from a pool whose selector matches its labels:
    /// it names no pool and its containers have no docker network of their own.
    pub fn may_draw_network(&self) -> bool {
        self.network.is_none() && self.runtime == RuntimeKind::Docker && self.docker.as_ref().is_none_or(|d| d.network.is_none())
    }

    /// Checks every rule.
    pub fn validate(self) -> Result<Service, ServiceError> {
        if !job::valid_name(&self.name) {
            return Err(ServiceError::Name(self.name));
        }
        let field = |field: &'static str, why: String| ServiceError::Field { service: self.name.clone(), field, why };
        if !(0..=MAX_REPLICAS).contains(&self.replicas) {
            return Err(field("replicas", format!("is {}; give a count from 0 to {MAX_REPLICAS}", self.replicas)));
        }
        if self.command.argv().first().is_none_or(|a| a.trim().is_empty()) || self.command.display().trim().is_empty() {
            return Err(field("command", "is empty; give a shell string or an argv list that keeps running".into()));
        }
        match (self.runtime, &self.docker) {
            (RuntimeKind::Docker, None) => {
                return Err(field("docker", "is required with runtime = \"docker\"; give at least docker.image".into()));
            }
            (RuntimeKind::Process, Some(_)) => {
                return Err(field("docker", "is set but runtime is \"process\"; add runtime = \"docker\" or drop it".into()));
            }
            (RuntimeKind::Docker, Some(d)) => {
                job::check_docker(d).map_err(|(f, why)| field(f, why))?;
                let per_job = [
                    ("docker.mode", d.mode != job::ContainerMode::Warm),
                    ("docker.max_runs", d.max_runs.is_some()),
                    ("docker.max_age", d.max_age.is_some()),
                    ("docker.idle_timeout", d.idle_timeout.is_some()),
                    ("docker.prewarm", d.prewarm.is_some()),
                ];
                if let Some((f, _)) = per_job.iter().find(|(_, set)| *set) {
                    return Err(field(f, "is a job setting with no meaning for a service: each replica is one long-lived container; drop it".into()));
                }
            }
            (RuntimeKind::Process, None) => {}
        }
        if let Some(net) = &self.network {
            if net.pool.trim().is_empty() {
                return Err(field("network.pool", "is empty; name a pool from `tug net pool list`".into()));
            }
            if self.runtime != RuntimeKind::Docker {
                return Err(field("network", "needs runtime = \"docker\": the address belongs to the replica's container".into()));
            }
            if self.docker.as_ref().and_then(|d| d.network.as_deref()).is_some_and(|n| n != "none") {
                return Err(field(
                    "docker.network",
                    "cannot be set with `network.pool`: the pool gives the container its network; drop one".into(),
                ));
            }
        }
        job::check_resources(&self.resources).map_err(|(f, why)| field(f, why))?;
        job::check_env(&self.env).map_err(|(f, why)| field(f, why))?;
        if let Some(h) = &self.health {
            check_health(h).map_err(|(f, why)| field(f, why))?;
        }
        let r = &self.restart;
        if r.initial_delay < job::MIN_RETRY_DELAY {
            return Err(field(
                "restart.initial_delay",
                format!("is {}; it must be at least {}, or a crashing replica restarts in a hot loop", r.initial_delay, job::MIN_RETRY_DELAY),
            ));
        }
        if r.initial_delay > r.max_delay {
            return Err(field("restart.initial_delay", format!("({}) is larger than restart.max_delay ({})", r.initial_delay, r.max_delay)));
        }
        if !STOP_SIGNALS.contains(&self.stop_signal.as_str()) {
            return Err(field("stop_signal", format!("{:?} is not one of {}", self.stop_signal, STOP_SIGNALS.join(", "))));
        }
        let mut rules = Vec::with_capacity(self.scale.len());
        for (i, rule) in self.scale.iter().enumerate() {
            let n = i + 1;
            if !(0..=MAX_REPLICAS).contains(&rule.replicas) {
                return Err(field("scale.replicas", format!("of rule {n} is {}; give a count from 0 to {MAX_REPLICAS}", rule.replicas)));
            }
            let tz = rule.tz.as_deref().unwrap_or("UTC");
            let schedule = crate::schedule::Schedule::parse(&rule.schedule, tz).map_err(|e| field("scale.schedule", format!("of rule {n}: {e}")))?;
            rules.push(schedule);
        }
        Ok(Service { spec: self, rules })
    }
}

/// The first rule a health check breaks: the field and what to do.
fn check_health(h: &HealthCheck) -> Result<(), (&'static str, String)> {
    let port_needed = |kind: &str| {
        (
            "health.port",
            format!("is missing; a {kind} check needs the port the replica listens on, e.g. port = 8080"),
        )
    };
    match h.kind {
        HealthKind::Http | HealthKind::Tcp => {
            let kind = if h.kind == HealthKind::Http { "http" } else { "tcp" };
            let port = h.port.ok_or_else(|| port_needed(kind))?;
            if !(1..=65535).contains(&port) {
                return Err(("health.port", format!("is {port}; give a port from 1 to 65535")));
            }
            if h.command.is_some() {
                return Err(("health.command", format!("is for exec checks; a {kind} check probes the port")));
            }
        }
        HealthKind::Exec => {
            if h.command.as_ref().is_none_or(|c| c.display().trim().is_empty()) {
                return Err(("health.command", "is missing; an exec check runs a command that exits 0 when healthy".into()));
            }
            if h.port.is_some() || h.path.is_some() {
                return Err(("health.port", "and `health.path` are for http and tcp checks; an exec check runs its command".into()));
            }
        }
    }
    if let Some(path) = &h.path {
        if h.kind != HealthKind::Http {
            return Err(("health.path", "is for http checks only".into()));
        }
        if !path.starts_with('/') {
            return Err(("health.path", format!("{path:?} must start with /")));
        }
    }
    if h.interval < job::MIN_RETRY_DELAY {
        return Err(("health.interval", format!("is {}; give at least {}", h.interval, job::MIN_RETRY_DELAY)));
    }
    if h.timeout.is_zero() || h.timeout > h.interval {
        return Err(("health.timeout", format!("is {}; give more than zero and at most the interval ({})", h.timeout, h.interval)));
    }
    if h.healthy_threshold == 0 {
        return Err(("health.healthy_threshold", "must be at least 1".into()));
    }
    if h.unhealthy_threshold == 0 {
        return Err(("health.unhealthy_threshold", "must be at least 1".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "name = \"web\"\nreplicas = 3\ncommand = \"busybox httpd -f -p 8080\"\n";

    fn parse(extra: &str) -> Result<Service, ServiceError> {
        ServiceSpec::from_toml(&format!("{BASE}{extra}"))?.validate()
    }

    fn err(extra: &str) -> String {
        parse(extra).unwrap_err().to_string()
    }

    #[test]
    fn defaults_spread_and_stop_with_term() {
        let s = parse("[health]\nkind = \"http\"\npath = \"/healthz\"\nport = 8080\n").unwrap();
        assert_eq!(s.spec.placement, PlacementStrategy::Spread);
        assert_eq!((s.spec.stop_signal.as_str(), s.spec.stop_grace), ("TERM", Duration::from_secs(10)));
        let h = s.spec.health.unwrap();
        assert_eq!((h.interval, h.timeout, h.healthy_threshold, h.unhealthy_threshold), (Duration::from_secs(10), Duration::from_secs(2), 1, 3));
        assert_eq!(s.spec.restart, RestartPolicy::default());
        assert_eq!(replica_claim_name("web", 2), "service/web/2");
    }

    #[test]
    fn bad_specs_say_what_to_fix() {
        let e = ServiceSpec::from_toml(&BASE.replace("3", "-1")).unwrap().validate().unwrap_err().to_string();
        assert_eq!(e, "service \"web\": `replicas` is -1; give a count from 0 to 10000");
        let checks = [
            ("[health]\nkind = \"http\"\n", "`health.port` is missing; a http check needs the port the replica listens on"),
            ("[health]\nkind = \"tcp\"\n", "`health.port` is missing; a tcp check needs the port"),
            ("[health]\nkind = \"tcp\"\nport = 70000\n", "`health.port` is 70000; give a port from 1 to 65535"),
            ("[health]\nkind = \"exec\"\n", "`health.command` is missing"),
            ("[health]\nkind = \"http\"\nport = 80\npath = \"healthz\"\n", "\"healthz\" must start with /"),
            ("[health]\nkind = \"http\"\nport = 80\ntimeout = \"20s\"\n", "at most the interval"),
            ("[health]\nkind = \"grpc\"\nport = 80\n", "unknown variant `grpc`"),
            ("[health]\nkind = \"tcp\"\nport = 80\nprot = 1\n", "unknown field `prot`"),
            ("colour = \"red\"\n", "unknown field `colour`"),
            ("network = { pool = \"blue\" }\n", "`network` needs runtime = \"docker\""),
            ("runtime = \"docker\"\n", "`docker` is required"),
            ("runtime = \"docker\"\n[docker]\nimage = \"x\"\nmode = \"per-run\"\n", "`docker.mode` is a job setting"),
            ("runtime = \"docker\"\n[docker]\nimage = \"x\"\nvolumes = [\"a:b\"]\n", "/host/path"),
            ("stop_signal = \"STOP\"\n", "`stop_signal` \"STOP\" is not one of TERM"),
            ("restart = { initial_delay = \"0s\" }\n", "`restart.initial_delay` is 0s"),
            ("resources = { cpus = 0 }\n", "resources.cpus"),
            ("env = { \"A=B\" = \"x\" }\n", "invalid variable name"),
            ("scale = [{ schedule = \"0 0 25 * * *\", replicas = 2 }]\n", "`scale.schedule` of rule 1: invalid schedule"),
            ("scale = [{ schedule = \"@daily\", replicas = -2 }]\n", "`scale.replicas` of rule 1 is -2"),
            ("scale = [{ schedule = \"@daily\", tz = \"Mars/Base\", replicas = 2 }]\n", "Mars/Base"),
            ("scale = [{ schedule = \"@daily\", replica = 2 }]\n", "unknown field `replica`"),
            ("scale_in = \"random\"\n", "invalid scale_in \"random\": give \"newest\" (stop the highest indices first) or \"oldest\""),
            ("scale_in = 1\n", "invalid type: integer `1`, expected a string"),
        ];
        for (extra, needle) in checks {
            let e = err(extra);
            assert!(e.contains(needle), "{extra}: {e}");
        }
        let e = ServiceSpec::from_toml(&BASE.replace("3", "20000")).unwrap().validate().unwrap_err().to_string();
        assert!(e.contains("is 20000; give a count from 0 to 10000"), "{e}");
        let e = ServiceSpec::from_toml(&BASE.replace("web", "a b")).unwrap().validate().unwrap_err();
        assert!(matches!(e, ServiceError::Name(_)));
        let e = ServiceSpec::from_toml("name = \"w\"\nreplicas = 1\ncommand = \"\"\n").unwrap().validate().unwrap_err();
        assert!(e.to_string().contains("`command` is empty"), "{e}");
        let e = ServiceSpec::from_toml("name = \"w\"\ncommand = \"x\"\n").unwrap_err().to_string();
        assert!(e.contains("missing field `replicas`"), "{e}");
    }

    #[test]
    fn scale_in_stops_the_newest_or_the_oldest_first() {
        assert_eq!(parse("").unwrap().spec.scale_in, ScaleIn::Newest);
        let s = parse("scale_in = \"oldest\"\n").unwrap().spec;
        assert_eq!(s.scale_in, ScaleIn::Oldest);
        assert_eq!(ServiceSpec::from_json(&serde_json::to_string(&s).unwrap()).unwrap().scale_in, ScaleIn::Oldest);
        assert!(!serde_json::to_string(&parse("").unwrap().spec).unwrap().contains("scale_in"));
        // Index and start time (seconds); replica 4 is not running yet.
        let replicas = [(0, Some(50)), (1, Some(10)), (2, Some(30)), (3, Some(10)), (4, None)];
        assert_eq!(ScaleIn::Newest.choose(&replicas, 2), [4, 3]);
        assert_eq!(ScaleIn::Oldest.choose(&replicas, 3), [1, 3, 2]);
        assert_eq!(ScaleIn::Oldest.choose(&replicas, 5), [1, 3, 2, 0, 4]);
        assert_eq!(ScaleIn::Oldest.choose(&replicas, 0), Vec::<u32>::new());
        // A change of policy needs no replacement of replicas.
        let old = parse("").unwrap().spec;
        assert!(!old.launch_changed(&s));
        assert_eq!(old.with_settings_of(&s).scale_in, ScaleIn::Oldest);
    }

    #[test]
    fn docker_services_with_an_address_per_replica() {
        let s = parse("runtime = \"docker\"\nnetwork = { pool = \"blue\" }\n[docker]\nimage = \"busybox\"\n").unwrap();
        assert_eq!(s.spec.network.as_ref().unwrap().pool, "blue");
        assert_eq!(s.replicas(), 3);
        let json = serde_json::to_string(&s.spec).unwrap();
        assert_eq!(ServiceSpec::from_json(&json).unwrap(), s.spec);
    }

    #[test]
    fn restarts_back_off() {
        let r = RestartPolicy { initial_delay: Duration::from_secs(1), max_delay: Duration::from_secs(10) };
        let d: Vec<_> = (0..6).map(|n| r.delay(n).as_millis() / 1000).collect();
        assert_eq!(d, vec![0, 1, 2, 4, 8, 10]);
        assert_eq!(r.delay(100), Duration::from_secs(10));
    }

    #[test]
    fn only_what_replicas_run_needs_them_replaced() {
        let base = parse("").unwrap().spec;
        let changed = |extra: &str| base.launch_changed(&parse(extra).unwrap().spec);
        for extra in ["description = \"x\"\n", "owner = \"ops\"\n", "labels = { tier = \"web\" }\n", "stop_grace = \"30s\"\n",
                      "restart = { initial_delay = \"5s\", max_delay = \"1m\" }\n", "[[scale]]\nschedule = \"@daily\"\nreplicas = 5\n"] {
            assert!(!changed(extra), "{extra}");
        }
        for extra in ["env = { V = \"2\" }\n", "workdir = \"/srv\"\n", "[resources]\ncpus = 2.0\n", "placement = \"binpack\"\n",
                      "[health]\nkind = \"tcp\"\nport = 8080\n"] {
            assert!(changed(extra), "{extra}");
        }
        let other = parse("env = { V = \"2\" }\nlabels = { tier = \"web\" }\n").unwrap().spec;
        let settled = base.with_settings_of(&other);
        assert_eq!((settled.labels.get("tier").map(String::as_str), settled.env.get("V")), (Some("web"), None));
        assert!(!base.launch_changed(&settled) && settled.launch_changed(&other));
    }
}
