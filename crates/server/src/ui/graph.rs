//! The dependencies page: every job that has parents or children, drawn as an SVG graph in
//! columns by depth (a job is one column right of its deepest parent), failing jobs marked.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use askama::Template;
use axum::extract::{Query, State};
use axum::response::Html;

use super::{UiError, enc, render};
use crate::api::AppState;
use crate::auth::session::UiSession;

/// Jobs drawn at most; the rest are left out, and the page says so.
const MAX_NODES: usize = 500;
const COLUMN: usize = 220;
const ROW: usize = 44;
const BOX_W: usize = 180;
const BOX_H: usize = 28;

#[derive(Template)]
#[template(path = "graph.html")]
struct GraphPage {
    error: Option<String>,
    ui: UiSession,
    svg: String,
    jobs: usize,
    failing: Vec<(String, String)>,
    left_out: usize,
}

#[derive(serde::Deserialize, Default)]
pub(super) struct GraphParams {
    error: Option<String>,
}

/// A job's place: column (depth) and row.
fn layout(edges: &[(String, String)]) -> BTreeMap<String, (usize, usize)> {
    let nodes: BTreeSet<&str> = edges.iter().flat_map(|(p, c)| [p.as_str(), c.as_str()]).collect();
    let mut parents: HashMap<&str, Vec<&str>> = HashMap::new();
    for (p, c) in edges {
        parents.entry(c.as_str()).or_default().push(p.as_str());
    }
    // Depth = longest path from a root; the graph has no cycles (the API refuses them), and the
    // visited set bounds the walk anyway.
    fn depth<'a>(n: &'a str, parents: &HashMap<&'a str, Vec<&'a str>>, memo: &mut HashMap<&'a str, usize>, seen: &mut BTreeSet<&'a str>) -> usize {
        if let Some(d) = memo.get(n) {
            return *d;
        }
        if !seen.insert(n) {
            return 0;
        }
        let d = parents.get(n).map_or(0, |ps| ps.iter().map(|p| depth(p, parents, memo, seen) + 1).max().unwrap_or(0));
        memo.insert(n, d);
        d
    }
    let mut memo = HashMap::new();
    let mut rows: HashMap<usize, usize> = HashMap::new();
    let mut places = BTreeMap::new();
    for n in nodes {
        let d = depth(n, &parents, &mut memo, &mut BTreeSet::new());
        let row = rows.entry(d).or_default();
        places.insert(n.to_owned(), (d, *row));
        *row += 1;
    }
    places
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// The graph as inline SVG: a box per job linking to its page, an arrow per dependency.
fn draw(places: &BTreeMap<String, (usize, usize)>, edges: &[(String, String)], failing: &BTreeSet<String>) -> String {
    let width = places.values().map(|(c, _)| c + 1).max().unwrap_or(1) * COLUMN;
    let height = places.values().map(|(_, r)| r + 1).max().unwrap_or(1) * ROW + 8;
    let at = |n: &str| places.get(n).map(|(c, r)| (c * COLUMN + 4, r * ROW + 8));
    let mut out = format!(
        "<svg class=\"graph\" viewBox=\"0 0 {width} {height}\" width=\"{width}\" height=\"{height}\" role=\"img\" \
         aria-label=\"dependencies between {} jobs\"><defs><marker id=\"arrow\" viewBox=\"0 0 10 10\" refX=\"10\" refY=\"5\" \
         markerWidth=\"6\" markerHeight=\"6\" orient=\"auto-start-reverse\"><path d=\"M 0 0 L 10 5 L 0 10 z\" fill=\"#667\"/></marker></defs>",
        places.len()
    );
    for (p, c) in edges {
        if let (Some((px, py)), Some((cx, cy))) = (at(p), at(c)) {
            out.push_str(&format!(
                "<line class=\"edge\" x1=\"{}\" y1=\"{}\" x2=\"{cx}\" y2=\"{}\" stroke=\"#667\" marker-end=\"url(#arrow)\"/>",
                px + BOX_W,
                py + BOX_H / 2,
                cy + BOX_H / 2
            ));
        }
    }
    for (name, _) in places.iter() {
        let Some((x, y)) = at(name) else { continue };
        let bad = failing.contains(name);
        let (class, fill, stroke) = if bad { ("job failing", "#fde7e6", "#b3261e") } else { ("job", "#eef3fb", "#0b5cad") };
        let shown: String = if name.chars().count() > 24 { name.chars().take(23).chain(['…']).collect() } else { name.clone() };
        out.push_str(&format!(
            "<a href=\"/jobs/{}\" class=\"{class}\" data-job=\"{}\"><rect x=\"{x}\" y=\"{y}\" width=\"{BOX_W}\" height=\"{BOX_H}\" rx=\"4\" \
             fill=\"{fill}\" stroke=\"{stroke}\"/><text x=\"{}\" y=\"{}\" font-size=\"13\">{}{}</text><title>{}{}</title></a>",
            enc(name),
            esc(name),
            x + 8,
            y + 19,
            esc(&shown),
            if bad { " ✗" } else { "" },
            esc(name),
            if bad { ": its last run failed" } else { "" },
        ));
    }
    out.push_str("</svg>");
    out
}

pub(super) async fn graph(State(st): State<AppState>, ui: UiSession, Query(p): Query<GraphParams>) -> Result<Html<String>, UiError> {
    let mut edges = st.scheduler.dependencies().await?;
    let mut places = layout(&edges);
    let left_out = places.len().saturating_sub(MAX_NODES);
    if left_out > 0 {
        let kept: BTreeSet<String> = places.keys().take(MAX_NODES).cloned().collect();
        edges.retain(|(a, b)| kept.contains(a) && kept.contains(b));
        places.retain(|n, _| kept.contains(n));
    }
    let mut failing = BTreeSet::new();
    for name in places.keys() {
        if let Ok(r) = st.store.get_job(name).await
            && super::pages::last_state(&r).0 == "failed"
        {
            failing.insert(name.clone());
        }
    }
    let svg = if places.is_empty() { String::new() } else { draw(&places, &edges, &failing) };
    let failing_links = failing.iter().map(|n| (n.clone(), enc(n))).collect();
    render(GraphPage { error: p.error, ui, svg, jobs: places.len(), failing: failing_links, left_out })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_go_one_column_right_of_their_deepest_parent() {
        let e = |a: &str, b: &str| (a.to_string(), b.to_string());
        let edges = [e("a", "b"), e("b", "c"), e("a", "c"), e("x", "c")];
        let places = layout(&edges);
        assert_eq!(places["a"], (0, 0));
        assert_eq!(places["x"], (0, 1));
        assert_eq!(places["b"], (1, 0));
        assert_eq!(places["c"], (2, 0));
        let svg = draw(&places, &edges, &["b".to_string()].into_iter().collect());
        assert_eq!(svg.matches("<line class=\"edge\"").count(), 4);
        assert!(svg.contains("class=\"job failing\" data-job=\"b\"") && svg.contains("b: its last run failed"), "{svg}");
    }
}
