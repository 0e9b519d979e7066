//! The dependency graph as Chronos renders it: a Graphviz dot file (jgrapht's `DOTExporter`
//! layout: integer vertex ids, the job name as label) and Chronos's CSV export
//! (`node,<name>,<success|failure|fresh>,<idle|queued|running>` and `link,<parent>,<child>`).

use std::collections::HashMap;
use std::fmt::Write;

use tug_store::JobRecord;

/// `digraph G { 1 [ label="a" ]; ... 1 -> 2; }`, jobs numbered in the order given.
pub fn dot(jobs: &[JobRecord]) -> String {
    let ids: HashMap<&str, usize> = jobs.iter().enumerate().map(|(i, j)| (j.spec.name.as_str(), i + 1)).collect();
    let mut out = String::from("digraph G {\n");
    for (i, j) in jobs.iter().enumerate() {
        let _ = writeln!(out, "  {} [ label=\"{}\" ];", i + 1, j.spec.name);
    }
    for j in jobs {
        for p in &j.spec.parents {
            if let (Some(from), Some(to)) = (ids.get(p.as_str()), ids.get(j.spec.name.as_str())) {
                let _ = writeln!(out, "  {from} -> {to};");
            }
        }
    }
    out.push_str("}\n");
    out
}

/// Chronos's CSV graph; `states[i]` is the current state of `jobs[i]`.
pub fn csv(jobs: &[JobRecord], states: &[&str]) -> String {
    let mut out = String::new();
    for (j, state) in jobs.iter().zip(states) {
        let _ = writeln!(out, "node,{},{},{state}", j.spec.name, last_state(j));
    }
    for j in jobs {
        for p in &j.spec.parents {
            let _ = writeln!(out, "link,{p},{}", j.spec.name);
        }
    }
    out
}

/// How the job's latest run ended: `success`, `failure`, or `fresh` when none has.
pub fn last_state(j: &JobRecord) -> &'static str {
    match (j.last_success_at, j.last_failure_at) {
        (None, None) => "fresh",
        (None, Some(_)) => "failure",
        (Some(_), None) => "success",
        (Some(s), Some(f)) if s > f => "success",
        (Some(_), Some(_)) => "failure",
    }
}
