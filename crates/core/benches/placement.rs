//! Placement decisions per second with many agents and many pending runs, on one core.
//!
//! `cargo bench -p tug-core --bench placement -- [AGENTS] [RUNS]` (defaults 10000 and 100000).
//! Prints a table; not a CI test.

#![allow(missing_docs, clippy::disallowed_types)]

use std::collections::BTreeMap;
use std::time::Instant;

use tug_core::constraint::Constraint;
use tug_core::job::PlacementStrategy;
use tug_core::placement::{AgentInfo, Capacity, CompiledConstraint, Request, Snapshot};

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let agents = args.first().copied().unwrap_or(10_000);
    let runs = args.get(1).copied().unwrap_or(100_000);
    let snapshot = Snapshot::new(
        (0..agents)
            .map(|i| AgentInfo {
                name: format!("agent-{i:05}"),
                attributes: BTreeMap::from([
                    ("hostname".to_string(), format!("agent-{i:05}")),
                    ("rack".to_string(), format!("r{}", i % 20)),
                    ("zone".to_string(), format!("z{}", i % 3)),
                ]),
                total: Capacity { cpus: 32.0, mem: 128 << 30, disk: 1 << 40 },
                used: Capacity::default(),
                up: true,
                draining: i % 50 == 0,
            })
            .collect(),
    );
    let c = |p: &[&str]| Constraint::new(&p.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    let cases: Vec<(&str, Vec<CompiledConstraint>, PlacementStrategy)> = vec![
        ("binpack, no constraints", vec![], PlacementStrategy::Binpack),
        ("spread, no constraints", vec![], PlacementStrategy::Spread),
        ("binpack, rack EQUALS r7", CompiledConstraint::compile(&[c(&["rack", "EQUALS", "r7"])]), PlacementStrategy::Binpack),
        ("binpack, hostname LIKE", CompiledConstraint::compile(&[c(&["hostname", "LIKE", "agent-0[0-4].*"])]), PlacementStrategy::Binpack),
        ("spread, zone GROUP_BY", CompiledConstraint::compile(&[c(&["zone", "GROUP_BY"])]), PlacementStrategy::Spread),
    ];
    println!("{agents} agents, {runs} pending runs (1000 jobs, 0.25 cpu and 256MiB each), one thread\n");
    println!("{:<28} {:>14} {:>12} {:>10}", "CASE", "DECISIONS/S", "NS/DECISION", "PLACED");
    for (label, constraints, strategy) in &cases {
        let mut snap = snapshot.clone();
        let names: Vec<String> = (0..1000).map(|j| format!("job-{j}")).collect();
        let needs = Capacity { cpus: 0.25, mem: 256 << 20, disk: 0 };
        let t = Instant::now();
        let mut placed = 0usize;
        for r in 0..runs {
            let job = &names[r % names.len()];
            let req = Request { job, needs, constraints, strategy: *strategy, warm_agent: None };
            if let Ok(i) = snap.place(&req) {
                snap.commit(i, job, &needs);
                placed += 1;
            }
        }
        let el = t.elapsed().as_secs_f64();
        println!("{:<28} {:>14.0} {:>12.0} {:>10}", label, runs as f64 / el, el * 1e9 / runs as f64, placed);
    }
}
