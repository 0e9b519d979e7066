//! Placement constraints on agent attributes, as Chronos and Marathon write them:
//! `["rack", "EQUALS", "r1"]`, `["host", "LIKE", "web-[0-9]+"]`, `["host", "UNIQUE"]`,
//! `["zone", "GROUP_BY", "3"]`, `["gpu", "UNLIKE", "none"]`.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A constraint operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operator {
    /// The attribute equals the value.
    Equals,
    /// The attribute matches the regex value (whole string).
    Like,
    /// The attribute does not match the regex value (or is absent).
    Unlike,
    /// At most one active run of the job per distinct attribute value.
    Unique,
    /// Spread the job's runs evenly across the attribute's values (optional count of groups).
    GroupBy,
}

impl Operator {
    /// The name as written.
    pub fn as_str(self) -> &'static str {
        match self {
            Operator::Equals => "EQUALS",
            Operator::Like => "LIKE",
            Operator::Unlike => "UNLIKE",
            Operator::Unique => "UNIQUE",
            Operator::GroupBy => "GROUP_BY",
        }
    }
}

/// One constraint.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Constraint {
    /// The agent attribute (`hostname` is always present).
    pub attribute: String,
    /// The operator.
    pub operator: Operator,
    /// Its argument, where it takes one.
    pub value: Option<String>,
}

/// Why a constraint was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid constraint {written}: {message}")]
pub struct ConstraintError {
    /// The constraint as written.
    pub written: String,
    /// What is wrong.
    pub message: String,
}

impl Constraint {
    /// Builds and checks a constraint from its parts.
    pub fn new(parts: &[String]) -> Result<Constraint, ConstraintError> {
        let written = format!("{parts:?}");
        let err = |m: &str| ConstraintError { written: written.clone(), message: m.to_string() };
        let (attribute, op, value) = match parts {
            [a, o] => (a, o, None),
            [a, o, v] => (a, o, Some(v.clone())),
            _ => return Err(err("write [attribute, OPERATOR] or [attribute, OPERATOR, value]")),
        };
        if attribute.is_empty() {
            return Err(err("the attribute is empty"));
        }
        let operator = match op.to_ascii_uppercase().as_str() {
            "EQUALS" | "CLUSTER" => Operator::Equals,
            "LIKE" => Operator::Like,
            "UNLIKE" => Operator::Unlike,
            "UNIQUE" => Operator::Unique,
            "GROUP_BY" => Operator::GroupBy,
            other => return Err(err(&format!("unknown operator {other:?}; use EQUALS, LIKE, UNLIKE, UNIQUE or GROUP_BY"))),
        };
        match (operator, &value) {
            (Operator::Equals | Operator::Like | Operator::Unlike, None) => {
                return Err(err(&format!("{} needs a value", operator.as_str())));
            }
            (Operator::Unique, Some(_)) => return Err(err("UNIQUE takes no value")),
            (Operator::Like | Operator::Unlike, Some(v)) => {
                regex::Regex::new(&format!("^(?:{v})$")).map_err(|e| err(&format!("the regex does not compile: {e}")))?;
            }
            (Operator::GroupBy, Some(v)) if v.parse::<u32>().map_or(true, |n| n == 0) => {
                return Err(err("GROUP_BY's value is the number of groups, a positive integer"));
            }
            _ => {}
        }
        Ok(Constraint { attribute: attribute.clone(), operator, value })
    }

    fn parts(&self) -> Vec<String> {
        let mut v = vec![self.attribute.clone(), self.operator.as_str().to_string()];
        v.extend(self.value.clone());
        v
    }
}

impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.parts().join(":"))
    }
}

impl Serialize for Constraint {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.parts().serialize(s)
    }
}

impl<'de> Deserialize<'de> for Constraint {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let parts = Vec::<String>::deserialize(d)?;
        Constraint::new(&parts).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(p: &[&str]) -> Result<Constraint, ConstraintError> {
        Constraint::new(&p.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn parses_marathon_forms() {
        assert_eq!(c(&["rack", "EQUALS", "r1"]).unwrap().operator, Operator::Equals);
        assert_eq!(c(&["host", "unique"]).unwrap().operator, Operator::Unique);
        assert_eq!(c(&["zone", "GROUP_BY", "3"]).unwrap().value.as_deref(), Some("3"));
        let json = serde_json::to_string(&c(&["host", "LIKE", "web-[0-9]+"]).unwrap()).unwrap();
        assert_eq!(json, r#"["host","LIKE","web-[0-9]+"]"#);
    }

    #[test]
    fn rejects_with_reasons() {
        assert!(c(&["rack", "NEAR", "x"]).unwrap_err().to_string().contains("unknown operator"));
        assert!(c(&["rack", "EQUALS"]).unwrap_err().to_string().contains("needs a value"));
        assert!(c(&["host", "LIKE", "("]).unwrap_err().to_string().contains("regex"));
        assert!(c(&["host", "UNIQUE", "x"]).unwrap_err().to_string().contains("no value"));
        assert!(c(&["x"]).unwrap_err().to_string().contains("[attribute, OPERATOR]"));
    }
}
