use std::collections::BTreeMap;

use super::*;
use crate::constraint::Constraint;

fn agent(name: &str, cpus: f64, mem_gib: u64, attrs: &[(&str, &str)]) -> AgentInfo {
    let mut attributes: BTreeMap<String, String> = attrs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    attributes.insert("hostname".into(), name.into());
    AgentInfo {
        name: name.into(),
        attributes,
        total: Capacity { cpus, mem: mem_gib << 30, disk: 100 << 30 },
        used: Capacity::default(),
        up: true,
        draining: false,
    }
}

fn cons(parts: &[&[&str]]) -> Vec<CompiledConstraint> {
    let cs: Vec<Constraint> =
        parts.iter().map(|p| Constraint::new(&p.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()).collect();
    CompiledConstraint::compile(&cs)
}

fn req<'a>(job: &'a str, cpus: f64, constraints: &'a [CompiledConstraint]) -> Request<'a> {
    Request {
        job,
        needs: Capacity { cpus, mem: 1 << 30, disk: 0 },
        constraints,
        strategy: PlacementStrategy::Binpack,
        warm_agent: None,
    }
}

fn name(s: &Snapshot, i: usize) -> &str {
    &s.agents[i].name
}

#[test]
fn binpack_fills_the_fullest_agent_that_fits() {
    let mut s = Snapshot::new(vec![agent("a", 4.0, 8, &[]), agent("b", 4.0, 8, &[])]);
    s.commit(1, "other", &Capacity { cpus: 2.0, mem: 2 << 30, disk: 0 });
    let i = s.place(&req("j", 1.0, &[])).unwrap();
    assert_eq!(name(&s, i), "b");
    // b cannot take 3 more cpus; a can.
    let i = s.place(&req("j", 3.0, &[])).unwrap();
    assert_eq!(name(&s, i), "a");
}

#[test]
fn spread_prefers_agents_without_the_job() {
    let mut s = Snapshot::new(vec![agent("a", 8.0, 8, &[]), agent("b", 8.0, 8, &[]), agent("c", 8.0, 8, &[])]);
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..3 {
        let mut r = req("web", 1.0, &[]);
        r.strategy = PlacementStrategy::Spread;
        let i = s.place(&r).unwrap();
        s.commit(i, "web", &r.needs);
        seen.insert(name(&s, i).to_string());
    }
    assert_eq!(seen.len(), 3, "three runs on three agents");
}

#[test]
fn constraints_filter_agents() {
    let s0 = Snapshot::new(vec![
        agent("web-1", 4.0, 8, &[("rack", "r1")]),
        agent("web-2", 4.0, 8, &[("rack", "r2")]),
        agent("db-1", 4.0, 8, &[("rack", "r2"), ("ssd", "yes")]),
    ]);
    let check = |c: &[&[&str]], allowed: &[&str]| {
        let cs = cons(c);
        for _ in 0..6 {
            let mut s = s0.clone();
            let i = s.place(&req("j", 1.0, &cs)).unwrap();
            assert!(allowed.contains(&name(&s, i)), "{c:?} placed on {}", name(&s, i));
        }
    };
    check(&[&["rack", "EQUALS", "r2"]], &["web-2", "db-1"]);
    check(&[&["hostname", "LIKE", "web-[0-9]+"]], &["web-1", "web-2"]);
    check(&[&["hostname", "UNLIKE", "web-.*"]], &["db-1"]);
    check(&[&["ssd", "EQUALS", "yes"], &["rack", "LIKE", "r[12]"]], &["db-1"]);
}

#[test]
fn unique_allows_one_run_per_value() {
    let mut s = Snapshot::new(vec![
        agent("a", 4.0, 8, &[("rack", "r1")]),
        agent("b", 4.0, 8, &[("rack", "r1")]),
        agent("c", 4.0, 8, &[("rack", "r2")]),
    ]);
    let cs = cons(&[&["rack", "UNIQUE"]]);
    let first = s.place(&req("j", 1.0, &cs)).unwrap();
    s.commit(first, "j", &req("j", 1.0, &cs).needs);
    let second = s.place(&req("j", 1.0, &cs)).unwrap();
    s.commit(second, "j", &req("j", 1.0, &cs).needs);
    let racks: std::collections::BTreeSet<_> = [first, second].iter().map(|&i| s.agents[i].attributes["rack"].clone()).collect();
    assert_eq!(racks.len(), 2);
    let e = s.place(&req("j", 1.0, &cs)).unwrap_err();
    assert!(e.to_string().contains("rack:UNIQUE"), "{e}");
}

#[test]
fn group_by_balances_across_values() {
    let mut s = Snapshot::new(vec![
        agent("a1", 16.0, 64, &[("zone", "a")]),
        agent("a2", 16.0, 64, &[("zone", "a")]),
        agent("b1", 16.0, 64, &[("zone", "b")]),
    ]);
    let cs = cons(&[&["zone", "GROUP_BY"]]);
    let mut per_zone = BTreeMap::new();
    for _ in 0..6 {
        let r = req("j", 1.0, &cs);
        let i = s.place(&r).unwrap();
        s.commit(i, "j", &r.needs);
        *per_zone.entry(s.agents[i].attributes["zone"].clone()).or_insert(0) += 1;
    }
    assert_eq!(per_zone, BTreeMap::from([("a".to_string(), 3), ("b".to_string(), 3)]));
}

#[test]
fn warm_container_agent_wins_when_it_fits() {
    let mut s = Snapshot::new(vec![agent("a", 4.0, 8, &[]), agent("b", 4.0, 8, &[])]);
    s.commit(0, "other", &Capacity { cpus: 3.0, mem: 0, disk: 0 });
    let mut r = req("j", 1.0, &[]);
    r.warm_agent = Some("b");
    assert_eq!(name(&s, s.clone().place(&r).unwrap()), "b");
    r.needs.cpus = 5.0;
    assert!(s.place(&r).is_err());
}

#[test]
fn no_fit_says_why() {
    let mut s = Snapshot::new(vec![agent("a", 2.0, 8, &[("rack", "r1")]), agent("b", 1.0, 4, &[("rack", "r1")])]);
    let e = s.place(&req("j", 4.0, &[])).unwrap_err();
    assert_eq!(e.to_string(), "no agent has 4 cpus free; the most free is 2");
    let mut r = req("j", 1.0, &[]);
    r.needs.mem = 16 << 30;
    assert_eq!(s.place(&r).unwrap_err().to_string(), "no agent has 16GiB of memory free; the most free is 8GiB");
    let cs = cons(&[&["rack", "EQUALS", "r9"]]);
    assert!(s.place(&req("j", 1.0, &cs)).unwrap_err().to_string().contains("rack:EQUALS:r9"));
    for a in &mut s.agents {
        a.draining = true;
    }
    assert_eq!(s.place(&req("j", 1.0, &[])).unwrap_err(), NoFit::NoneUp { agents: 2 });
    assert_eq!(Snapshot::default().place(&req("j", 1.0, &[])).unwrap_err(), NoFit::NoAgents);
}

#[test]
fn equal_agents_take_turns_even_when_one_cannot_take_the_run() {
    let mut agents: Vec<AgentInfo> = (0..4).map(|n| agent(&format!("a{n}"), 4.0, 8, &[])).collect();
    agents[0].draining = true;
    let mut s = Snapshot::new(agents);
    let mut counts = [0u32; 4];
    // Runs that end before the next is placed: every agent is equally good each time.
    for _ in 0..300 {
        let r = req("j", 1.0, &[]);
        let i = s.place(&r).unwrap();
        s.commit(i, "j", &r.needs);
        s.release(i, "j", &r.needs);
        counts[i] += 1;
    }
    assert_eq!(counts, [0, 100, 100, 100]);
}

#[test]
fn unique_counts_follow_releases_and_attribute_changes() {
    let mut s = Snapshot::new(vec![agent("a", 4.0, 8, &[("rack", "r1")]), agent("b", 4.0, 8, &[("rack", "r2")])]);
    let cs = cons(&[&["rack", "UNIQUE"]]);
    let r = req("j", 1.0, &cs);
    let first = s.place(&r).unwrap();
    s.commit(first, "j", &r.needs);
    let second = s.place(&r).unwrap();
    s.commit(second, "j", &r.needs);
    assert!(s.place(&r).is_err(), "both racks hold a run");
    // A run ends: its rack is free again.
    s.release(first, "j", &r.needs);
    assert_eq!(s.place(&r).unwrap(), first);
    // The agent without a run moves into the other's rack: no rack is free any more.
    let other = 1 - second;
    s.commit(other, "j", &r.needs);
    s.release(other, "j", &r.needs);
    let moved_to = s.agents[second].attributes["rack"].clone();
    s.agents[other].attributes.insert("rack".into(), moved_to);
    s.attributes_changed();
    assert!(s.place(&r).is_err(), "the only rack holds a run");
}
