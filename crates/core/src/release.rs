//! Staged releases of a service: what a release asks for ([`ReleaseRequest`]: a new image,
//! command, environment or whole spec, and how to roll it out) and its validation into a target
//! spec and a [`ReleasePlan`]. The scheduler carries it out in stages:
//!
//! ```text
//!  pending ─► smoking ─► baking ─► rolling_out ─► succeeded
//!  (`smoke` replicas    (`bake`   (the rest, `batch`
//!   replaced, one by    long, no   at a time)
//!   one, healthy)       failure)
//! ```
//!
//! Any stage can be braked (no replica starts its replacement until resumed); a replica that fails
//! its health check (or exits, or is not healthy within `health_timeout`) fails the release, which
//! can then be retried (that stage again) or revoked (every replaced replica back to the previous
//! spec, `batch` at a time).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::duration::Duration;
use crate::job::{Command, RuntimeKind};
use crate::service::{Service, ServiceError, ServiceSpec};

/// How many replicas a rollout batch replaces at once: a count, or a percentage of the replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Batch {
    /// This many replicas.
    Count(u32),
    /// This percentage of the replicas, rounded up (at least one).
    Percent(u32),
}

impl Batch {
    /// The replicas one batch replaces out of `replicas` (at least one).
    pub fn size(self, replicas: u32) -> u32 {
        match self {
            Batch::Count(n) => n.max(1),
            Batch::Percent(p) => (u64::from(replicas) * u64::from(p)).div_ceil(100).max(1) as u32,
        }
    }

    /// Parses `3` or `25%`.
    pub fn parse(s: &str) -> Result<Batch, BatchError> {
        let s = s.trim();
        let bad = || BatchError::Syntax(s.to_owned());
        if let Some(p) = s.strip_suffix('%') {
            let p: u32 = p.trim().parse().map_err(|_| bad())?;
            if !(1..=100).contains(&p) {
                return Err(BatchError::Percent(s.to_owned()));
            }
            return Ok(Batch::Percent(p));
        }
        let n: i64 = s.parse().map_err(|_| bad())?;
        if n < 1 {
            return Err(BatchError::Count(s.to_owned()));
        }
        Ok(Batch::Count(u32::try_from(n).unwrap_or(u32::MAX)))
    }
}

/// Why a rollout batch was refused. Each variant holds the batch as given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// Neither a whole number nor a percentage.
    #[error("invalid batch {0:?}: give a replica count such as 2, or a percentage such as 25%")]
    Syntax(String),
    /// A percentage outside 1-100.
    #[error("invalid batch {0:?}: a percentage is from 1% to 100%")]
    Percent(String),
    /// A count below 1.
    #[error("invalid batch {0:?}: replace at least 1 replica per batch")]
    Count(String),
}

impl Default for Batch {
    fn default() -> Self {
        Batch::Percent(25)
    }
}

impl std::fmt::Display for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Batch::Count(n) => write!(f, "{n}"),
            Batch::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl Serialize for Batch {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Batch::Count(n) => s.serialize_u32(*n),
            Batch::Percent(_) => s.serialize_str(&self.to_string()),
        }
    }
}

impl<'de> Deserialize<'de> for Batch {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Batch, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(i64),
            S(String),
        }
        let s = match Raw::deserialize(d)? {
            Raw::N(n) => n.to_string(),
            Raw::S(s) => s,
        };
        Batch::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A release as asked for: what changes, and how it rolls out. What changes is a whole new
/// `spec`, or changes to the current one: `image`, `command`, `env` (merged in).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseRequest {
    /// The new spec (its replica count is ignored: a release keeps the service's count).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<ServiceSpec>,
    /// A new docker image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// A new command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Command>,
    /// Environment variables to set (added to, or replacing, the current ones).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Replicas replaced one by one first (default 1). Signed so that a negative count gets a
    /// clear error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smoke: Option<i64>,
    /// How long the smoke replicas must stay healthy before the rollout (default 1m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bake: Option<Duration>,
    /// Replicas replaced at once in the rollout (default 25%).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<Batch>,
    /// How long a replaced replica has to become healthy (default 1m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_timeout: Option<Duration>,
    /// A URL told (POST, JSON: the replica, its agent, address and port) before each replica is
    /// stopped, to take it out of the load balancer; the replica is stopped once it answers 2xx.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_out: Option<String>,
    /// A URL told the same way once a replaced replica is healthy, to put it back in; its step is
    /// done once it answers 2xx.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_in: Option<String>,
}

/// How a release rolls out, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleasePlan {
    /// Replicas replaced one by one in the smoke stage.
    pub smoke: u32,
    /// How long the bake stage lasts.
    pub bake: Duration,
    /// Replicas replaced at once in the rollout (and in a revoke).
    pub batch: Batch,
    /// How long a replaced replica has to become healthy.
    pub health_timeout: Duration,
}

/// The default bake.
pub const DEFAULT_BAKE: Duration = Duration::from_secs(60);
/// The default health timeout.
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(60);

impl ReleaseRequest {
    /// Parses a JSON body.
    pub fn from_json(text: &str) -> Result<ReleaseRequest, ServiceError> {
        serde_json::from_str(text).map_err(|e| ServiceError::Parse(format!("invalid release request: {e}")))
    }

    /// Checks the request against the service's current spec: the target spec (validated, with
    /// the current replica count) and the plan.
    pub fn plan(self, current: &ServiceSpec) -> Result<(Service, ReleasePlan), ServiceError> {
        self.checked(current, false)
    }

    /// As [`plan`](Self::plan), for a restart: the target may be the current spec, since every
    /// replica is replaced whether or not what it runs changes.
    pub fn plan_restart(self, current: &ServiceSpec) -> Result<(Service, ReleasePlan), ServiceError> {
        self.checked(current, true)
    }

    fn checked(self, current: &ServiceSpec, restart: bool) -> Result<(Service, ReleasePlan), ServiceError> {
        let name = current.name.clone();
        let field = |field: &'static str, why: String| ServiceError::Field { service: name.clone(), field, why };
        let patched = self.image.is_some() || self.command.is_some() || !self.env.is_empty();
        let mut target = match self.spec {
            Some(_) if patched => {
                return Err(field("spec", "comes with image, command or env; give a whole spec, or changes to the current one, not both".into()));
            }
            Some(spec) => {
                if spec.name != current.name {
                    return Err(field("spec.name", format!("is {:?}; a release keeps the service's name", spec.name)));
                }
                spec
            }
            None => current.clone(),
        };
        target.replicas = current.replicas;
        if let Some(image) = self.image {
            match (target.runtime, target.docker.as_mut()) {
                (RuntimeKind::Docker, Some(d)) => d.image = image,
                _ => {
                    return Err(field("image", "is for docker services; this one runs processes: release a new command instead".into()));
                }
            }
        }
        if let Some(command) = self.command {
            target.command = command;
        }
        target.env.extend(self.env);
        if target == *current && !restart {
            return Err(field("release", "changes nothing: give a new image, command, env or spec".into()));
        }
        let replicas = u32::try_from(current.replicas).unwrap_or(0);
        let smoke = self.smoke.unwrap_or(1);
        if smoke < 0 {
            return Err(field("smoke", format!("is {smoke}; give how many replicas to replace first, 0 or more")));
        }
        let smoke = u32::try_from(smoke).unwrap_or(u32::MAX);
        if smoke > replicas {
            return Err(field("smoke", format!("is {smoke} but the service has {replicas} replicas; give at most {replicas}")));
        }
        let health_timeout = self.health_timeout.unwrap_or(DEFAULT_HEALTH_TIMEOUT);
        if health_timeout.is_zero() {
            return Err(field("health_timeout", "is 0s; give how long a new replica has to become healthy, e.g. 1m".into()));
        }
        for (f, url) in [("pull_out", &self.pull_out), ("pull_in", &self.pull_in)] {
            if let Some(url) = url
                && !(url.starts_with("http://") || url.starts_with("https://"))
            {
                return Err(field(f, format!("is {url:?}; give the load balancer's hook as an http:// or https:// URL")));
            }
        }
        let plan = ReleasePlan { smoke, bake: self.bake.unwrap_or(DEFAULT_BAKE), batch: self.batch.unwrap_or_default(), health_timeout };
        Ok((target.validate()?, plan))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn current() -> ServiceSpec {
        ServiceSpec::from_toml("name = \"web\"\nreplicas = 4\ncommand = \"sleep 100\"\n").unwrap()
    }

    fn req(json: &str) -> Result<(Service, ReleasePlan), String> {
        ReleaseRequest::from_json(json).and_then(|r| r.plan(&current())).map_err(|e| e.to_string())
    }

    #[test]
    fn batches_by_count_or_share() {
        assert_eq!(Batch::parse("25%").unwrap().size(10), 3);
        assert_eq!(Batch::parse("100%").unwrap().size(10), 10);
        assert_eq!(Batch::parse("1%").unwrap().size(3), 1);
        assert_eq!(Batch::parse("2").unwrap().size(10), 2);
        assert_eq!(Batch::parse(" 0 ").unwrap_err(), BatchError::Count("0".into()));
        assert_eq!(Batch::parse("0").unwrap_err().to_string(), "invalid batch \"0\": replace at least 1 replica per batch");
        assert_eq!(Batch::parse("120%").unwrap_err().to_string(), "invalid batch \"120%\": a percentage is from 1% to 100%");
        assert_eq!(
            Batch::parse("a few").unwrap_err().to_string(),
            "invalid batch \"a few\": give a replica count such as 2, or a percentage such as 25%"
        );
        assert!(matches!(Batch::parse("-5%"), Err(BatchError::Syntax(_))));
    }

    #[test]
    fn a_release_changes_the_current_spec() {
        let (s, plan) = req(r#"{"command": "sleep 200", "env": {"V": "2"}, "bake": "5s", "batch": "50%"}"#).unwrap();
        assert_eq!((s.spec.command.display(), s.spec.env["V"].as_str(), s.spec.replicas), ("sleep 200".to_string(), "2", 4));
        assert_eq!(plan, ReleasePlan { smoke: 1, bake: Duration::from_secs(5), batch: Batch::Percent(50), health_timeout: DEFAULT_HEALTH_TIMEOUT });
        let (_, plan) = req(r#"{"env": {"V": "2"}, "batch": 2, "smoke": 0}"#).unwrap();
        assert_eq!((plan.batch, plan.smoke), (Batch::Count(2), 0));
    }

    #[test]
    fn a_restart_may_keep_the_spec() {
        let req = ReleaseRequest { smoke: Some(0), bake: Some(Duration::ZERO), batch: Some(Batch::Percent(50)), ..Default::default() };
        let (s, plan) = req.clone().plan_restart(&current()).unwrap();
        assert_eq!((s.spec, plan.smoke, plan.batch), (current(), 0, Batch::Percent(50)));
        assert!(req.plan(&current()).unwrap_err().to_string().contains("changes nothing"));
    }

    #[test]
    fn bad_releases_say_what_to_fix() {
        let cases = [
            (r#"{}"#, "changes nothing: give a new image"),
            (r#"{"command": "sleep 100"}"#, "changes nothing"),
            (r#"{"image": "busybox"}"#, "`image` is for docker services"),
            (r#"{"env": {"V": "2"}, "smoke": -1}"#, "`smoke` is -1"),
            (r#"{"env": {"V": "2"}, "smoke": 5}"#, "`smoke` is 5 but the service has 4 replicas"),
            (r#"{"env": {"V": "2"}, "batch": "0%"}"#, "from 1% to 100%"),
            (r#"{"env": {"V": "2"}, "health_timeout": "0s"}"#, "`health_timeout` is 0s"),
            (r#"{"env": {"V": "2"}, "colour": 1}"#, "unknown field `colour`"),
            (r#"{"spec": {"name": "other", "replicas": 1, "command": "x"}}"#, "`spec.name` is \"other\""),
            (r#"{"spec": {"name": "web", "replicas": 1, "command": "x"}, "env": {"A": "b"}}"#, "not both"),
            (r#"{"env": {"A=B": "x"}}"#, "invalid variable name"),
        ];
        for (json, needle) in cases {
            let e = req(json).unwrap_err();
            assert!(e.contains(needle), "{json}: {e}");
        }
    }
}
