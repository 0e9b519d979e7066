//! The job model: what a user writes (a [`JobSpec`], as TOML or JSON) and the validated [`Job`] the
//! scheduler holds. Unknown fields are rejected by name; every rule broken says what to fix.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::bytesize::ByteSize;
use crate::constraint::Constraint;
use crate::duration::Duration;
use crate::schedule::{Schedule, ScheduleError};

/// The longest job name accepted.
pub const MAX_NAME_LEN: usize = 200;

/// A job as a user writes it. This is the document the store keeps and the API returns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// Unique name, `[A-Za-z0-9_.-]+`.
    pub name: String,
    /// Free text shown in listings.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// Who to ask about this job (an email or a team).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub owner: String,
    /// Key-value labels for filtering (`?label=team=data`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// A cron expression or ISO 8601 repeating interval. Exclusive with `parents`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// IANA time zone the schedule is evaluated in; UTC when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tz: Option<String>,
    /// Jobs that must all succeed before this one runs. Exclusive with `schedule`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parents: Vec<String>,
    /// What to run: a shell string (run with `/bin/sh -c`) or an argv list.
    pub command: Command,
    /// Extra environment variables for the command.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Working directory; the agent's own when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// User (name or uid) to run as; the agent's own when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Where the command runs.
    #[serde(default)]
    pub runtime: RuntimeKind,
    /// The container, for `runtime = "docker"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker: Option<DockerSpec>,
    /// What one run needs: placement counts it, the docker runtime enforces it.
    #[serde(default, skip_serializing_if = "Resources::is_empty")]
    pub resources: Resources,
    /// Constraints on the agent attributes a run may be placed on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub constraints: Vec<Constraint>,
    /// How runs are spread over agents.
    #[serde(default)]
    pub placement: PlacementStrategy,
    /// How failed runs are retried.
    #[serde(default)]
    pub retries: RetryPolicy,
    /// A run still going after this long is killed and marked `timed_out`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// What a fire does while an earlier run of the job is still active.
    #[serde(default)]
    pub concurrency: ConcurrencyPolicy,
    /// What happens to fires missed while the scheduler was down or the job paused.
    #[serde(default)]
    pub misfire: MisfirePolicy,
    /// How late after its scheduled instant a fire still runs normally.
    #[serde(default = "default_epsilon")]
    pub epsilon: Duration,
    /// A disabled job never fires on its schedule (manual runs still work).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// A paused job does not fire; on resume its misfire policy covers the gap.
    #[serde(default)]
    pub paused: bool,
    /// Keep this many finished runs of the job; the server default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_runs: Option<u32>,
    /// Webhooks called when runs of this job fail, succeed, miss their time or run out of
    /// retries (in addition to the server's global webhooks).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub webhooks: Vec<Webhook>,
    /// The container network: an address from a pool for the job's warm container, the same on
    /// every host. Docker jobs in warm mode only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkSpec>,
    /// Chronos fields that have no meaning in Tugboat (`async`, `uris`, `softError`, ...), kept
    /// as given so a Chronos client reads back what it wrote. Only the Chronos API writes here.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub chronos: BTreeMap<String, serde_json::Value>,
}

/// Something that happened to a run that a webhook can be told about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotifyOn {
    /// The run ended failed, timed_out, lost or killed, with no retry left.
    Failure,
    /// The run succeeded.
    Success,
    /// A fire missed its window (skipped or run late by the misfire policy).
    Missed,
    /// A failed run used its last retry.
    RetriesExhausted,
    /// A failed run will be retried.
    Retry,
}

/// A webhook: an HTTP POST of a JSON payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Webhook {
    /// Where to POST (http:// or https://).
    pub url: String,
    /// Which events; failure, missed and retries_exhausted when absent.
    #[serde(default = "default_notify_on")]
    pub on: Vec<NotifyOn>,
}

/// The events a webhook gets when it does not say.
pub fn default_notify_on() -> Vec<NotifyOn> {
    vec![NotifyOn::Failure, NotifyOn::Missed, NotifyOn::RetriesExhausted]
}

/// Resources a run needs.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// CPU shares (1.0 = one core); a hard quota in docker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
    /// Memory; a hard limit in docker (the run is OOM-killed past it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem: Option<ByteSize>,
    /// Scratch disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<ByteSize>,
}

impl Resources {
    /// True when nothing is requested.
    pub fn is_empty(&self) -> bool {
        self.cpus.is_none() && self.mem.is_none() && self.disk.is_none()
    }
}

/// How a job's runs are spread over agents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PlacementStrategy {
    /// Fill the fullest agent that fits first (fewer hosts busy, warm containers reused).
    #[default]
    Binpack,
    /// Prefer the agent running the fewest runs of this job.
    Spread,
}

/// The container of a docker job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DockerSpec {
    /// The image, e.g. `busybox:latest`.
    pub image: String,
    /// Overrides the image's entrypoint for the command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    /// When to pull the image.
    #[serde(default)]
    pub pull: PullPolicy,
    /// One warm container per job (default) or a fresh container per run.
    #[serde(default)]
    pub mode: ContainerMode,
    /// Bind mounts, `host:container` or `host:container:ro`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<String>,
    /// Docker network mode (`none`, `host`, `bridge`); the agent's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// Recycle a warm container after this many runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_runs: Option<u64>,
    /// Recycle a warm container after it is this old.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<Duration>,
    /// Remove a warm container that ran nothing for this long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<Duration>,
    /// Create the warm container this long before the next fire.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prewarm: Option<Duration>,
}

/// When the docker runtime pulls an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PullPolicy {
    /// Pull only when the image is not present (a present image is never re-pulled).
    #[default]
    IfNotPresent,
    /// Pull before creating each container.
    Always,
    /// Never pull; a missing image fails the run.
    Never,
}

/// A job's place on the container network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkSpec {
    /// The address pool (`tug net pool list`).
    pub pool: String,
}

/// How a docker job's runs map to containers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ContainerMode {
    /// One long-lived container per job per agent; every run executes inside it.
    #[default]
    Warm,
    /// A fresh container for each run, removed afterwards.
    PerRun,
}

fn default_epsilon() -> Duration {
    Duration::from_secs(60)
}

fn default_true() -> bool {
    true
}

/// The command of a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Command {
    /// A shell string, run as `/bin/sh -c STRING`.
    Shell(String),
    /// An argv list, executed directly.
    Argv(Vec<String>),
}

impl Command {
    /// The argv to execute.
    pub fn argv(&self) -> Vec<String> {
        match self {
            Command::Shell(s) => vec!["/bin/sh".into(), "-c".into(), s.clone()],
            Command::Argv(v) => v.clone(),
        }
    }

    /// A one-line rendering for tables.
    pub fn display(&self) -> String {
        match self {
            Command::Shell(s) => s.clone(),
            Command::Argv(v) => v.join(" "),
        }
    }

    fn is_empty(&self) -> bool {
        match self {
            Command::Shell(s) => s.trim().is_empty(),
            Command::Argv(v) => v.first().is_none_or(|a| a.is_empty()),
        }
    }
}

/// The runtime a job's runs go through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuntimeKind {
    /// A child process of the agent in its own process group.
    #[default]
    Process,
    /// Inside a docker container (see [`DockerSpec`]).
    Docker,
}

/// Retry with exponential backoff. Written as a table or as a bare count (`retries = 3`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RetryPolicy {
    /// How many times a failed run is retried (0 = never).
    pub count: u32,
    /// Delay before the first retry.
    pub initial_delay: Duration,
    /// Upper bound of the doubling delay.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy { count: 0, initial_delay: Duration::from_secs(1), max_delay: Duration::from_secs(300) }
    }
}

impl RetryPolicy {
    /// The delay before retry number `retry` (1-based): initial × 2^(retry-1), capped at max.
    pub fn delay(&self, retry: u32) -> Duration {
        let base = self.initial_delay.as_std();
        let factor = 1u32.checked_shl(retry.saturating_sub(1)).unwrap_or(u32::MAX);
        let d = base.checked_mul(factor).unwrap_or(self.max_delay.as_std());
        Duration::from(d.min(self.max_delay.as_std()))
    }
}

impl<'de> Deserialize<'de> for RetryPolicy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Table {
            #[serde(default)]
            count: u32,
            #[serde(default)]
            initial_delay: Option<Duration>,
            #[serde(default)]
            max_delay: Option<Duration>,
        }
        let dflt = RetryPolicy::default();
        let value = serde_json::Value::deserialize(d)?;
        let table = match value {
            serde_json::Value::Object(_) => value,
            serde_json::Value::Number(ref n) => match n.as_u64().and_then(|n| u32::try_from(n).ok()) {
                Some(count) => return Ok(RetryPolicy { count, ..dflt }),
                None => return Err(serde::de::Error::custom(format!("expected a count or a table, got {n}"))),
            },
            other => return Err(serde::de::Error::custom(format!("expected a count or a table, got {}", got(&other)))),
        };
        // The table's own errors name the field inside it: `count: expected a whole number ...`.
        match serde_path_to_error::deserialize::<_, Table>(table) {
            Ok(t) => Ok(RetryPolicy {
                count: t.count,
                initial_delay: t.initial_delay.unwrap_or(dflt.initial_delay),
                max_delay: t.max_delay.unwrap_or(dflt.max_delay),
            }),
            Err(e) => {
                let path = e.path().to_string();
                Err(serde::de::Error::custom(field_message(&path, &e.into_inner().to_string(), None)))
            }
        }
    }
}

/// A value as an error message quotes it: strings quoted, tables and lists by kind.
fn got(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Object(_) => "a table".into(),
        serde_json::Value::Array(_) => "a list".into(),
        serde_json::Value::Null => "nothing".into(),
        v => v.to_string(),
    }
}

/// The most retries a job may ask for.
pub const MAX_RETRIES: u32 = 100;
/// The shortest first retry delay allowed (it doubles from there).
pub const MIN_RETRY_DELAY: Duration = Duration::from_millis(10);

/// What a fire does while an earlier run of the same job is still active.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConcurrencyPolicy {
    /// Start the new run alongside the old one.
    Allow,
    /// Skip the new fire (recorded as a `skipped` run). Chronos's `concurrent: false`.
    #[default]
    Forbid,
    /// Kill the active run, then start the new one.
    Replace,
}

/// What happens to fires that were missed (later than `epsilon`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MisfirePolicy {
    /// Record missed fires as skipped; run none of them (Chronos's behaviour).
    #[default]
    Skip,
    /// Run the most recent missed fire once; record the rest as skipped.
    RunOnce,
    /// Run every missed fire, oldest first, up to [`MAX_BACKFILL`]; older ones are skipped.
    RunAll,
}

/// The most missed fires a `run_all` job backfills after one gap.
pub const MAX_BACKFILL: usize = 100;

/// Why a job spec was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    /// The file or body could not be parsed (syntax, wrong type, unknown field).
    #[error("{0}")]
    Parse(String),
    /// The name has characters outside `[A-Za-z0-9_.-]` or is empty or too long.
    #[error("invalid job name {0:?}: use 1-200 characters from A-Z a-z 0-9 _ . - (not `.` or `..` alone)")]
    Name(String),
    /// Both `schedule` and `parents` were given, or neither.
    #[error("job {0:?}: give either `schedule` (a cron or ISO 8601 expression) or `parents` (job names), not both")]
    ScheduleAndParents(String),
    /// Neither `schedule` nor `parents` was given.
    #[error("job {0:?}: needs a `schedule` (e.g. \"*/5 * * * *\") or `parents` (jobs it runs after)")]
    NoTrigger(String),
    /// The schedule or time zone is invalid.
    #[error(transparent)]
    Schedule(#[from] ScheduleError),
    /// The command is empty.
    #[error("job {0:?}: `command` is empty; give a shell string or an argv list")]
    EmptyCommand(String),
    /// A parent name is invalid or names the job itself.
    #[error("job {job:?}: parent {parent:?} {why}")]
    Parent {
        /// The job.
        job: String,
        /// The parent as written.
        parent: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A field holds an impossible value.
    #[error("job {job:?}: `{field}` {why}")]
    Field {
        /// The job.
        job: String,
        /// The field name.
        field: &'static str,
        /// What is wrong.
        why: String,
    },
}

/// A validated job: its spec and, for scheduled jobs, the parsed schedule.
#[derive(Debug, Clone)]
pub struct Job {
    /// The spec as written (after defaults).
    pub spec: JobSpec,
    /// The parsed schedule; `None` for dependent jobs.
    pub schedule: Option<Schedule>,
}

/// A deserializer's message about the field at `path` (`.` for the document itself), in our
/// words and prefixed with that field: `retries: expected a count or a table, got -1`; an enum
/// value lists the values allowed: `concurrency: expected one of allow, forbid, replace, got
/// "sometimes"`. `doc` is the document, to quote the value when the message does not.
fn field_message(path: &str, message: &str, doc: Option<&serde_json::Value>) -> String {
    let quoted = || doc.and_then(|d| value_at(d, path)).map(got);
    let message = if let Some((got, allowed)) =
        message.strip_prefix("unknown variant `").and_then(|rest| rest.split_once("`, expected "))
    {
        format!("expected {}, got {got:?}", allowed.replace('`', ""))
    } else if let Some((got, expected)) = message
        .strip_prefix("invalid type: ")
        .or_else(|| message.strip_prefix("invalid value: "))
        .and_then(|rest| rest.rsplit_once(", expected "))
    {
        let got = match got.split_once('`') {
            Some((_, v)) => v.trim_end_matches('`').to_owned(),
            None => match got.strip_prefix("string ") {
                Some(s) => s.to_owned(),
                None => quoted().unwrap_or_else(|| got.replace("map", "a table").replace("sequence", "a list")),
            },
        };
        format!("expected {}, got {got}", expected_in_our_words(expected))
    } else if let (Some(allowed), true) =
        (enum_values(path), matches!(message, "wanted string or table" | "expected value"))
    {
        // A number or a list where an enum value belongs: the parsers say only what they wanted.
        match quoted() {
            Some(got) => format!("expected {allowed}, got {got}"),
            None => format!("expected {allowed}"),
        }
    } else {
        message.to_owned()
    };
    if path.is_empty() || path == "." { message } else { format!("{path}: {message}") }
}

/// serde's name for an expected type, as a job file's author would say it.
fn expected_in_our_words(expected: &str) -> String {
    match expected {
        "u8" | "u16" | "u32" | "u64" | "usize" => "a whole number (0 or more)".into(),
        "i8" | "i16" | "i32" | "i64" | "isize" => "a whole number".into(),
        "a map" => "a table".into(),
        "a sequence" => "a list".into(),
        "a boolean" => "true or false".into(),
        e if e.starts_with("struct ") => "a table".into(),
        e => e.to_owned(),
    }
}

/// The values an enum field at `path` allows, as its `unknown variant` message lists them.
fn enum_values(path: &str) -> Option<String> {
    fn allowed<T: serde::de::DeserializeOwned>() -> Option<String> {
        let e = serde_json::from_value::<T>(serde_json::Value::String(String::new())).err()?.to_string();
        e.split_once("`, expected ").map(|(_, a)| a.replace('`', ""))
    }
    // `webhooks[0].on[1]` → `webhooks.on`
    let mut field = String::new();
    for part in path.split('.') {
        if !field.is_empty() {
            field.push('.');
        }
        field.push_str(part.split_once('[').map_or(part, |(f, _)| f));
    }
    match field.as_str() {
        "runtime" => allowed::<RuntimeKind>(),
        "placement" => allowed::<PlacementStrategy>(),
        "concurrency" => allowed::<ConcurrencyPolicy>(),
        "misfire" => allowed::<MisfirePolicy>(),
        "docker.pull" => allowed::<PullPolicy>(),
        "docker.mode" => allowed::<ContainerMode>(),
        "webhooks.on" => allowed::<NotifyOn>(),
        _ => None,
    }
}

/// The value at a serde path (`docker.pull`, `webhooks[0].on[1]`) of a document.
fn value_at<'a>(doc: &'a serde_json::Value, path: &str) -> Option<&'a serde_json::Value> {
    let mut v = doc;
    for part in path.split('.') {
        let mut pieces = part.split('[');
        let key = pieces.next()?;
        if !key.is_empty() {
            v = v.get(key)?;
        }
        for index in pieces {
            v = v.get(index.strip_suffix(']')?.parse::<usize>().ok()?)?;
        }
    }
    Some(v)
}

/// True when `name` is a valid job name. `.` and `..` are not: they cannot be named in a URL path.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name.len() <= MAX_NAME_LEN
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

impl JobSpec {
    /// A minimal spec: a name and a command, everything else at its default (no trigger yet).
    pub fn new(name: impl Into<String>, command: Command) -> JobSpec {
        JobSpec {
            name: name.into(),
            description: String::new(),
            owner: String::new(),
            labels: BTreeMap::new(),
            schedule: None,
            tz: None,
            parents: Vec::new(),
            command,
            env: BTreeMap::new(),
            workdir: None,
            user: None,
            runtime: RuntimeKind::Process,
            docker: None,
            resources: Resources::default(),
            constraints: Vec::new(),
            placement: PlacementStrategy::Binpack,
            retries: RetryPolicy::default(),
            timeout: None,
            concurrency: ConcurrencyPolicy::default(),
            misfire: MisfirePolicy::default(),
            epsilon: default_epsilon(),
            enabled: true,
            paused: false,
            keep_runs: None,
            webhooks: Vec::new(),
            network: None,
            chronos: BTreeMap::new(),
        }
    }

    /// Parses a TOML document.
    pub fn from_toml(text: &str) -> Result<JobSpec, JobError> {
        let (path, e) = match toml::Deserializer::parse(text) {
            Ok(de) => match serde_path_to_error::deserialize(de) {
                Ok(spec) => return Ok(spec),
                Err(e) => (e.path().to_string(), e.into_inner()),
            },
            Err(e) => (String::new(), e),
        };
        // Where, as an editor shows it: line and column (in characters) from 1.
        let at = e.span().map_or_else(String::new, |span| {
            let before = text.get(..span.start).unwrap_or(text);
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!(" at line {line}, column {column}")
        });
        let doc = toml::from_str::<serde_json::Value>(text).ok();
        Err(JobError::Parse(format!("invalid job file{at}: {}", field_message(&path, e.message().trim(), doc.as_ref()))))
    }

    /// Parses a JSON document.
    pub fn from_json(text: &str) -> Result<JobSpec, JobError> {
        let de = &mut serde_json::Deserializer::from_str(text);
        let spec: JobSpec = serde_path_to_error::deserialize(&mut *de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let said = inner.to_string();
            let at = format!(" at line {} column {}", inner.line(), inner.column());
            let doc = serde_json::from_str::<serde_json::Value>(text).ok();
            let message = field_message(&path, said.strip_suffix(&at).unwrap_or(&said), doc.as_ref());
            JobError::Parse(format!("invalid job JSON: {message}{}", if inner.line() > 0 { at } else { String::new() }))
        })?;
        de.end().map_err(|e| JobError::Parse(format!("invalid job JSON: {e}")))?;
        Ok(spec)
    }

    /// True when a job document (TOML, or JSON when `json`) sets `key` at its top level. An
    /// update keeps what the document leaves out that is state rather than spec, such as `paused`.
    pub fn document_sets(text: &str, json: bool, key: &str) -> bool {
        if json {
            serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(text).is_ok_and(|m| m.contains_key(key))
        } else {
            toml::from_str::<toml::Table>(text).is_ok_and(|t| t.contains_key(key))
        }
    }

    /// The time zone, defaulting to UTC.
    pub fn tz(&self) -> &str {
        self.tz.as_deref().unwrap_or("UTC")
    }

    fn bad_zone(&self, tz: &str) -> JobError {
        JobError::Field {
            job: self.name.clone(),
            field: "tz",
            why: format!("{tz:?} is not a known IANA time zone (e.g. \"Europe/Berlin\", or \"UTC\")"),
        }
    }

    /// Whether this job could have an address from a pool whose selector matches its labels: it
    /// names no pool and its warm container has no docker network of its own.
    pub fn may_draw_network(&self) -> bool {
        self.network.is_none()
            && self.runtime == RuntimeKind::Docker
            && self.docker.as_ref().is_some_and(|d| d.mode == ContainerMode::Warm && d.network.is_none())
    }

    /// Checks every rule and parses the schedule.
    pub fn validate(self) -> Result<Job, JobError> {
        if !valid_name(&self.name) {
            return Err(JobError::Name(self.name));
        }
        let schedule = match (&self.schedule, self.parents.is_empty()) {
            (Some(_), false) => return Err(JobError::ScheduleAndParents(self.name)),
            (None, true) => return Err(JobError::NoTrigger(self.name)),
            (Some(expr), true) => Some(Schedule::parse(expr, self.tz()).map_err(|e| match e {
                ScheduleError::Zone { tz } => self.bad_zone(&tz),
                e => e.into(),
            })?),
            (None, false) => {
                if let Some(tz) = &self.tz {
                    // Still reject a bad zone so the mistake is not silent.
                    jiff::tz::TimeZone::get(tz).map_err(|_| self.bad_zone(tz))?;
                }
                None
            }
        };
        for p in &self.parents {
            let why = if !valid_name(p) {
                Some("is not a valid job name")
            } else if *p == self.name {
                Some("is the job itself; a job cannot depend on itself")
            } else if self.parents.iter().filter(|q| *q == p).count() > 1 {
                Some("is listed twice")
            } else {
                None
            };
            if let Some(why) = why {
                return Err(JobError::Parent { job: self.name.clone(), parent: p.clone(), why });
            }
        }
        if self.command.is_empty() {
            return Err(JobError::EmptyCommand(self.name));
        }
        let field = |field: &'static str, why: String| JobError::Field { job: self.name.clone(), field, why };
        match (self.runtime, &self.docker) {
            (RuntimeKind::Docker, None) => {
                return Err(field("docker", "is required with runtime = \"docker\"; give at least docker.image".into()));
            }
            (RuntimeKind::Process, Some(_)) => {
                return Err(field("docker", "is set but runtime is \"process\"; add runtime = \"docker\" or drop it".into()));
            }
            (RuntimeKind::Docker, Some(d)) => {
                check_docker(d).map_err(|(f, why)| field(f, why))?;
                if d.max_runs == Some(0) {
                    return Err(field("docker.max_runs", "must be at least 1".into()));
                }
            }
            (RuntimeKind::Process, None) => {}
        }
        if let Some(net) = &self.network {
            if net.pool.trim().is_empty() {
                return Err(field("network.pool", "is empty; name a pool from `tug net pool list`".into()));
            }
            match &self.docker {
                Some(d) if self.runtime == RuntimeKind::Docker && d.mode == ContainerMode::Warm => {
                    if d.network.as_deref().is_some_and(|n| n != "none") {
                        return Err(field(
                            "docker.network",
                            "cannot be set with `network.pool`: the pool gives the container its network; drop one".into(),
                        ));
                    }
                }
                _ => {
                    return Err(field(
                        "network",
                        "needs runtime = \"docker\" in warm mode: the address belongs to the job's warm container".into(),
                    ));
                }
            }
        }
        check_resources(&self.resources).map_err(|(f, why)| field(f, why))?;
        for w in &self.webhooks {
            if w.url.starts_with("https://") {
                return Err(field(
                    "webhooks.url",
                    format!("{:?}: https webhooks need TLS, which this build does not include; use an http:// endpoint (e.g. a relay on the same host)", w.url),
                ));
            }
            if !w.url.starts_with("http://") {
                return Err(field("webhooks.url", format!("{:?} is not an http:// URL", w.url)));
            }
        }
        if self.timeout == Some(Duration::ZERO) {
            return Err(JobError::Field {
                job: self.name,
                field: "timeout",
                why: "must be more than zero; leave it out for no timeout".into(),
            });
        }
        if self.retries.count > MAX_RETRIES {
            return Err(JobError::Field {
                job: self.name,
                field: "retries.count",
                why: format!("is {}; at most {MAX_RETRIES} retries are allowed", self.retries.count),
            });
        }
        if self.retries.count > 0 && self.retries.initial_delay < MIN_RETRY_DELAY {
            return Err(JobError::Field {
                job: self.name,
                field: "retries.initial_delay",
                why: format!(
                    "is {}; it must be at least {MIN_RETRY_DELAY}, or a failing run is retried in a hot loop",
                    self.retries.initial_delay
                ),
            });
        }
        if self.retries.initial_delay > self.retries.max_delay {
            return Err(JobError::Field {
                job: self.name,
                field: "retries.initial_delay",
                why: format!(
                    "({}) is larger than retries.max_delay ({})",
                    self.retries.initial_delay, self.retries.max_delay
                ),
            });
        }
        if let Some(k) = self.keep_runs
            && k == 0
        {
            return Err(JobError::Field { job: self.name, field: "keep_runs", why: "must be at least 1".into() });
        }
        check_env(&self.env).map_err(|(field, why)| JobError::Field { job: self.name.clone(), field, why })?;
        Ok(Job { spec: self, schedule })
    }
}

/// The first rule a container spec breaks (shared by jobs and services): the field and why.
pub(crate) fn check_docker(d: &DockerSpec) -> Result<(), (&'static str, String)> {
    if d.image.trim().is_empty() {
        return Err(("docker.image", "is empty".into()));
    }
    for v in &d.volumes {
        let parts: Vec<&str> = v.split(':').collect();
        let ok = matches!(parts.as_slice(), [h, c] | [h, c, "ro" | "rw"] if h.starts_with('/') && c.starts_with('/'));
        if !ok {
            return Err(("docker.volumes", format!("entry {v:?} is not \"/host/path:/container/path[:ro|rw]\"")));
        }
    }
    Ok(())
}

/// The first impossible resource request: the field and why.
pub(crate) fn check_resources(r: &Resources) -> Result<(), (&'static str, String)> {
    if let Some(c) = r.cpus
        && !(c > 0.0 && c.is_finite())
    {
        return Err(("resources.cpus", format!("must be more than 0, got {c}")));
    }
    if r.mem == Some(ByteSize(0)) {
        return Err(("resources.mem", "must be more than 0".into()));
    }
    Ok(())
}

/// The first invalid environment variable name: the field and why.
pub(crate) fn check_env(env: &BTreeMap<String, String>) -> Result<(), (&'static str, String)> {
    match env.keys().find(|k| k.is_empty() || k.contains('=') || k.contains('\0')) {
        Some(key) => Err(("env", format!("has an invalid variable name {key:?}"))),
        None => Ok(()),
    }
}

impl Job {
    /// The job's name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn field_errors_name_the_field_and_the_values_allowed() {
        assert_eq!(
            field_message("concurrency", "unknown variant `x`, expected one of `allow`, `forbid`, `replace`", None),
            "concurrency: expected one of allow, forbid, replace, got \"x\""
        );
        assert_eq!(field_message("a.b", "unknown variant `x`, expected `y` or `z`", None), "a.b: expected y or z, got \"x\"");
        assert_eq!(field_message(".", "missing field `name`", None), "missing field `name`");
        let e = JobSpec::from_json(r#"{"name":"j","command":"true","misfire":"often"}"#).unwrap_err().to_string();
        assert!(e.contains("misfire: expected one of") && e.contains(", got \"often\"") && e.contains("at line 1 column"), "{e}");
        let e = JobSpec::from_json(r#"{"name":"j","command":"true"} x"#).unwrap_err().to_string();
        assert!(e.contains("trailing characters"), "{e}");
    }

    use super::*;

    fn minimal(extra: &str) -> String {
        format!("name = \"backup\"\ncommand = \"echo hi\"\n{extra}")
    }

    #[test]
    fn wrong_types_are_said_in_our_words() {
        let toml = |extra: &str| JobSpec::from_toml(&format!("name = \"j\"\ncommand = \"true\"\n{extra}")).unwrap_err().to_string();
        let json = |extra: &str| JobSpec::from_json(&format!(r#"{{"name":"j","command":"true",{extra}}}"#)).unwrap_err().to_string();
        let cases = [
            ("retries = -1", r#""retries":-1"#, "retries: expected a count or a table, got -1"),
            ("retries = \"x\"", r#""retries":"x""#, "retries: expected a count or a table, got \"x\""),
            ("retries = [1]", r#""retries":[1]"#, "retries: expected a count or a table, got a list"),
            ("retries = { count = -1 }", r#""retries":{"count":-1}"#, "retries: count: expected a whole number (0 or more), got -1"),
            ("concurrency = \"x\"", r#""concurrency":"x""#, "concurrency: expected one of allow, forbid, replace, got \"x\""),
            ("concurrency = 3", r#""concurrency":3"#, "concurrency: expected one of allow, forbid, replace, got 3"),
            ("misfire = [\"skip\"]", r#""misfire":["skip"]"#, "misfire: expected one of skip, run_once, run_all, got a list"),
            ("runtime = true", r#""runtime":true"#, "runtime: expected process or docker, got true"),
            ("placement = 2", r#""placement":2"#, "placement: expected binpack or spread, got 2"),
            ("labels = 3", r#""labels":3"#, "labels: expected a table, got 3"),
            ("enabled = \"yes\"", r#""enabled":"yes""#, "enabled: expected true or false, got \"yes\""),
            ("parents = \"a\"", r#""parents":"a""#, "parents: expected a list, got \"a\""),
            ("keep_runs = -2", r#""keep_runs":-2"#, "keep_runs: expected a whole number (0 or more), got -2"),
            ("docker = 1", r#""docker":1"#, "docker: expected a table, got 1"),
            ("docker = { image = \"a\", pull = 1 }", r#""docker":{"image":"a","pull":1}"#, "docker.pull: expected one of if-not-present, always, never, got 1"),
            ("webhooks = [{ url = \"x\", on = [7] }]", r#""webhooks":[{"url":"x","on":[7]}]"#, "webhooks[0].on[0]: expected one of failure, success, missed, retries_exhausted, retry, got 7"),
        ];
        for (t, j, want) in cases {
            let (t_err, j_err) = (toml(t), json(j));
            assert!(t_err.starts_with("invalid job file at line 3, column ") && t_err.ends_with(&format!(": {want}")), "{t}: {t_err}");
            assert!(j_err.starts_with(&format!("invalid job JSON: {want} at line 1 column ")), "{j}: {j_err}");
        }
    }

    #[test]
    fn toml_with_defaults() {
        let spec = JobSpec::from_toml(&minimal("parents = [\"a\"]")).unwrap();
        assert_eq!(spec.concurrency, ConcurrencyPolicy::Forbid);
        assert_eq!(spec.misfire, MisfirePolicy::Skip);
        assert_eq!(spec.epsilon, Duration::from_secs(60));
        assert!(spec.enabled && !spec.paused);
        assert_eq!(spec.command.argv(), vec!["/bin/sh", "-c", "echo hi"]);
    }

    #[test]
    fn unknown_field_is_named() {
        let e = JobSpec::from_toml(&minimal("schedul = \"* * * * *\"")).unwrap_err().to_string();
        assert!(e.contains("unknown field `schedul`"), "{e}");
        let e = JobSpec::from_json(r#"{"name":"a","command":"x","colour":1}"#).unwrap_err().to_string();
        assert!(e.contains("unknown field `colour`"), "{e}");
    }

    #[test]
    fn retries_as_count_or_table() {
        let s = JobSpec::from_toml(&minimal("retries = 3")).unwrap();
        assert_eq!(s.retries.count, 3);
        let s = JobSpec::from_toml(&minimal("retries = { count = 2, initial_delay = \"2s\" }")).unwrap();
        assert_eq!((s.retries.count, s.retries.initial_delay), (2, Duration::from_secs(2)));
        let e = JobSpec::from_toml(&minimal("retries = { cout = 2 }")).unwrap_err().to_string();
        assert!(e.contains("unknown field `cout`"), "{e}");
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let p = RetryPolicy { count: 10, initial_delay: Duration::from_secs(1), max_delay: Duration::from_secs(10) };
        let d: Vec<_> = (1..=6).map(|r| p.delay(r).as_millis() / 1000).collect();
        assert_eq!(d, vec![1, 2, 4, 8, 10, 10]);
        assert_eq!(p.delay(200), Duration::from_secs(10));
    }

    #[test]
    fn rules_say_what_to_fix() {
        let check = |extra: &str, needle: &str| {
            let e = JobSpec::from_toml(&minimal(extra)).unwrap().validate().unwrap_err().to_string();
            assert!(e.contains(needle), "{extra}: {e}");
        };
        check("", "needs a `schedule`");
        check("schedule = \"* * * * *\"\nparents = [\"a\"]", "not both");
        check("parents = [\"backup\"]", "cannot depend on itself");
        check("parents = [\"a b\"]", "not a valid job name");
        check("parents = [\"a\"]\ntimeout = \"0s\"", "more than zero");
        check("parents = [\"a\"]\ntz = \"Mars/Olympus\"", "Mars/Olympus");
        check(
            "parents = [\"a\"]\nretries = { count = 4294967295, initial_delay = \"1s\" }",
            "`retries.count` is 4294967295; at most 100 retries are allowed",
        );
        check(
            "parents = [\"a\"]\nretries = { count = 3, initial_delay = \"0s\" }",
            "`retries.initial_delay` is 0s; it must be at least 10ms, or a failing run is retried in a hot loop",
        );
        for name in [".", ".."] {
            let e = JobSpec::from_toml(&format!("name = \"{name}\"\ncommand = \"x\"\nparents=[\"a\"]"))
                .unwrap()
                .validate()
                .unwrap_err()
                .to_string();
            assert_eq!(e, format!("invalid job name {name:?}: use 1-200 characters from A-Z a-z 0-9 _ . - (not `.` or `..` alone)"));
        }
        assert!(valid_name("...") && valid_name(".a"));
        let e = JobSpec::from_toml("name = \"bad name\"\ncommand = \"x\"\nparents=[\"a\"]")
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(matches!(e, JobError::Name(_)));
        let e = JobSpec::from_toml("name = \"a\"\ncommand = []\nparents=[\"b\"]").unwrap().validate().unwrap_err();
        assert!(matches!(e, JobError::EmptyCommand(_)));
    }

    #[test]
    fn networked_jobs() {
        let warm = "parents = [\"a\"]\nruntime = \"docker\"\nnetwork = { pool = \"blue\" }\n[docker]\nimage = \"x\"\n";
        let job = JobSpec::from_toml(&minimal(warm)).unwrap().validate().unwrap();
        assert_eq!(job.spec.network, Some(NetworkSpec { pool: "blue".into() }));
        let check = |extra: &str, needle: &str| {
            let e = JobSpec::from_toml(&minimal(extra)).unwrap().validate().unwrap_err().to_string();
            assert!(e.contains(needle), "{extra}: {e}");
        };
        check("parents = [\"a\"]\nnetwork = { pool = \"blue\" }", "`network` needs runtime = \"docker\" in warm mode");
        check(&format!("{warm}mode = \"per-run\""), "needs runtime = \"docker\" in warm mode");
        check(&format!("{warm}network = \"bridge\""), "`docker.network` cannot be set with `network.pool`");
        check(&warm.replace("blue", ""), "`network.pool` is empty");
        let e = JobSpec::from_toml(&minimal("network = { pool = \"b\", vlan = 3 }")).unwrap_err().to_string();
        assert!(e.contains("unknown field `vlan`"), "{e}");
    }

    #[test]
    fn docker_jobs() {
        let toml = minimal("parents = [\"a\"]\nruntime = \"docker\"\nresources = { cpus = 0.5, mem = \"256MiB\" }\nconstraints = [[\"rack\", \"EQUALS\", \"r1\"]]\n[docker]\nimage = \"busybox\"\nmode = \"per-run\"\nvolumes = [\"/srv:/data:ro\"]\n");
        let job = JobSpec::from_toml(&toml).unwrap().validate().unwrap();
        let d = job.spec.docker.as_ref().unwrap();
        assert_eq!((d.mode, d.pull), (ContainerMode::PerRun, PullPolicy::IfNotPresent));
        assert_eq!(job.spec.resources.mem, Some(ByteSize(256 << 20)));
        let e = JobSpec::from_toml(&minimal("parents = [\"a\"]\nruntime = \"docker\"")).unwrap().validate().unwrap_err();
        assert!(e.to_string().contains("docker.image"), "{e}");
        let bad = minimal("parents = [\"a\"]\nruntime = \"docker\"\n[docker]\nimage = \"x\"\nvolumes = [\"data:/d\"]\n");
        let e = JobSpec::from_toml(&bad).unwrap().validate().unwrap_err();
        assert!(e.to_string().contains("/host/path"), "{e}");
        let e = JobSpec::from_toml(&minimal("parents = [\"a\"]\nresources = { cpus = 0 }")).unwrap().validate().unwrap_err();
        assert!(e.to_string().contains("resources.cpus"), "{e}");
        let e = JobSpec::from_toml(&minimal("parents = [\"a\"]\nconstraints = [[\"rack\", \"NEAR\", \"x\"]]")).unwrap_err();
        assert!(e.to_string().contains("unknown operator"), "{e}");
    }

    #[test]
    fn json_roundtrip_keeps_the_spec() {
        let spec = JobSpec::from_toml(&minimal("parents = [\"a\"]\nretries = 2\ntimeout = \"90s\"")).unwrap();
        let json = serde_json::to_string(&spec).unwrap();
        assert_eq!(JobSpec::from_json(&json).unwrap(), spec);
    }
}
