//! One module per top-level command.

pub mod agent;
pub mod bench;
pub mod job;
pub mod logs;
pub mod runs;
pub mod schedule;
pub mod up;

/// Prints JSON, pretty.
pub fn print_json(v: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// A JSON field as display text ("-" when absent).
pub fn field(v: &serde_json::Value, key: &str) -> String {
    match &v[key] {
        serde_json::Value::Null => "-".into(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}
