//! The dependency graph of jobs (child → parents). Refuses cycles with a message that names them.

use std::collections::{BTreeMap, BTreeSet};

/// A dependency cycle, as the list of job names along it (first name repeated at the end).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("dependency cycle: {}; remove one of these parent links", .0.join(" -> "))]
pub struct CycleError(pub Vec<String>);

/// Checks that giving `job` the parents `parents` keeps the graph acyclic, where `parents_of`
/// returns the current parents of any other job. Returns the cycle when there is one.
pub fn check_parents<'a, F>(job: &str, parents: &[String], parents_of: F) -> Result<(), CycleError>
where
    F: Fn(&str) -> Option<&'a [String]>,
{
    // A cycle through `job` exists iff `job` is reachable from one of its new parents.
    // Depth-first search from each parent, following parent links, with the path kept.
    let mut seen = BTreeSet::new();
    for p in parents {
        let mut path = vec![job.to_string()];
        if dfs(p, job, &parents_of, &mut seen, &mut path) {
            return Err(CycleError(path));
        }
    }
    Ok(())
}

fn dfs<'a, F>(node: &str, target: &str, parents_of: &F, seen: &mut BTreeSet<String>, path: &mut Vec<String>) -> bool
where
    F: Fn(&str) -> Option<&'a [String]>,
{
    path.push(node.to_string());
    if node == target {
        return true;
    }
    if seen.insert(node.to_string()) {
        for next in parents_of(node).unwrap_or(&[]) {
            if dfs(next, target, parents_of, seen, path) {
                return true;
            }
        }
    }
    path.pop();
    false
}

/// Children of each job, from a map of job → parents.
pub fn children(parents: &BTreeMap<String, Vec<String>>) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (child, ps) in parents {
        for p in ps {
            out.entry(p.clone()).or_default().push(child.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(edges: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
        edges.iter().map(|(c, ps)| (c.to_string(), ps.iter().map(|p| p.to_string()).collect())).collect()
    }

    #[test]
    fn finds_and_names_a_cycle() {
        // a <- b <- c ; now make a depend on c.
        let g = graph(&[("b", &["a"]), ("c", &["b"])]);
        let e = check_parents("a", &["c".into()], |n| g.get(n).map(|v| v.as_slice())).unwrap_err();
        assert_eq!(e.0, vec!["a", "c", "b", "a"]);
        assert_eq!(e.to_string(), "dependency cycle: a -> c -> b -> a; remove one of these parent links");
    }

    #[test]
    fn diamond_is_fine() {
        let g = graph(&[("b", &["a"]), ("c", &["a"]), ("d", &["b", "c"])]);
        assert!(check_parents("e", &["d".into(), "a".into()], |n| g.get(n).map(|v| v.as_slice())).is_ok());
        let ch = children(&g);
        assert_eq!(ch["a"], vec!["b", "c"]);
    }
}
