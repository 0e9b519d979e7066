//! Who may do what: API token roles and scopes.
//!
//! | role      | may                                                                  |
//! |-----------|----------------------------------------------------------------------|
//! | `read`    | list and show everything in its scope, run logs included             |
//! | `operate` | also run, kill, pause and resume jobs and runs in its scope          |
//! | `admin`   | also create, change and delete jobs, drain agents, manage tokens     |
//!
//! A scope narrows a token to some jobs: `label:team=data` (jobs labelled `team=data`) or
//! `owner:alice@example.com`. A job outside a token's scope does not exist for it.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::JobSpec;

/// What a token may do; each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// List and show.
    Read,
    /// Read, and run, kill, pause and resume.
    Operate,
    /// Everything.
    Admin,
}

impl Role {
    /// Its name, as flags and the API spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Operate => "operate",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A role or scope that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccessError {
    /// Not one of the roles.
    #[error("invalid role {0:?}: expected one of read, operate, admin")]
    Role(String),
    /// Not `label:KEY=VALUE` or `owner:NAME`.
    #[error("invalid scope {0:?}: expected label:KEY=VALUE (e.g. label:team=data) or owner:NAME")]
    Scope(String),
}

impl FromStr for Role {
    type Err = AccessError;
    fn from_str(s: &str) -> Result<Role, AccessError> {
        match s {
            "read" => Ok(Role::Read),
            "operate" => Ok(Role::Operate),
            "admin" => Ok(Role::Admin),
            _ => Err(AccessError::Role(s.to_owned())),
        }
    }
}

/// The jobs a scoped token sees.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Jobs with this label set to this value.
    Label {
        /// The label's key.
        key: String,
        /// Its value.
        value: String,
    },
    /// Jobs whose `owner` is this.
    Owner(String),
}

impl Scope {
    /// True when `job` is in this scope.
    pub fn covers(&self, job: &JobSpec) -> bool {
        self.covers_owned(&job.labels, &job.owner)
    }

    /// True when something with these labels and owner (a job, a service) is in this scope.
    pub fn covers_owned(&self, labels: &std::collections::BTreeMap<String, String>, owner: &str) -> bool {
        match self {
            Scope::Label { key, value } => labels.get(key) == Some(value),
            Scope::Owner(o) => owner == o,
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Label { key, value } => write!(f, "label:{key}={value}"),
            Scope::Owner(o) => write!(f, "owner:{o}"),
        }
    }
}

impl FromStr for Scope {
    type Err = AccessError;
    fn from_str(s: &str) -> Result<Scope, AccessError> {
        let bad = || AccessError::Scope(s.to_owned());
        match s.split_once(':') {
            Some(("label", kv)) => {
                let (key, value) = kv.split_once('=').ok_or_else(bad)?;
                if key.is_empty() {
                    return Err(bad());
                }
                Ok(Scope::Label { key: key.to_owned(), value: value.to_owned() })
            }
            Some(("owner", o)) if !o.is_empty() => Ok(Scope::Owner(o.to_owned())),
            _ => Err(bad()),
        }
    }
}

/// Who is asking, once authenticated: what they may do and to which jobs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The role.
    pub role: Role,
    /// `None`: every job.
    pub scope: Option<Scope>,
}

impl Grant {
    /// Everything, for every job (a server without auth).
    pub fn all() -> Grant {
        Grant { role: Role::Admin, scope: None }
    }

    /// True when the grant's role is at least `role`.
    pub fn allows(&self, role: Role) -> bool {
        self.role >= role
    }

    /// True when `job` is visible to this grant.
    pub fn sees(&self, job: &JobSpec) -> bool {
        self.scope.as_ref().is_none_or(|s| s.covers(job))
    }

    /// True when a service is visible to this grant (by its labels and owner, as a job).
    pub fn sees_service(&self, service: &crate::service::ServiceSpec) -> bool {
        self.scope.as_ref().is_none_or(|s| s.covers_owned(&service.labels, &service.owner))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::Command;

    #[test]
    fn roles_order_and_parse() {
        assert!(Role::Admin > Role::Operate && Role::Operate > Role::Read);
        assert_eq!("operate".parse::<Role>().unwrap(), Role::Operate);
        assert_eq!(
            "root".parse::<Role>().unwrap_err().to_string(),
            r#"invalid role "root": expected one of read, operate, admin"#
        );
    }

    #[test]
    fn scopes_parse_and_cover() {
        let s: Scope = "label:team=data".parse().unwrap();
        assert_eq!(s.to_string(), "label:team=data");
        let mut job = JobSpec::new("x", Command::Shell("true".into()));
        assert!(!s.covers(&job));
        job.labels.insert("team".into(), "data".into());
        assert!(s.covers(&job));
        let o: Scope = "owner:ann".parse().unwrap();
        assert!(!o.covers(&job));
        job.owner = "ann".into();
        assert!(o.covers(&job));
        for bad in ["label:team", "label:=x", "owner:", "team=data", "group:x"] {
            assert_eq!(
                bad.parse::<Scope>().unwrap_err().to_string(),
                format!("invalid scope {bad:?}: expected label:KEY=VALUE (e.g. label:team=data) or owner:NAME")
            );
        }
    }
}
