//! What the benchmarks share: percentiles, memory, and reading a server's `/metrics`.

use std::collections::HashMap;

/// The `p` quantile (0..=1) of sorted samples; 0 when there are none.
pub(super) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// This process's resident memory, in bytes (0 when /proc cannot say).
pub(super) fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|p| p.parse::<u64>().ok()))
        .map_or(0, |pages| pages * 4096)
}

/// A counter or histogram sample per `name{labels}` from a Prometheus text page.
pub(super) fn parse_metrics(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(k, v)| Some((k.to_string(), v.parse().ok()?))))
        .collect()
}

/// The `q` quantile of the fire lateness histogram between two samples, in ms, interpolated
/// linearly inside its bucket (buckets double, so this is within a factor of 2).
pub(super) fn histogram_quantile_ms(before: &HashMap<String, f64>, after: &HashMap<String, f64>, q: f64) -> Option<f64> {
    const PREFIX: &str = "tug_fire_lateness_seconds_bucket{le=\"";
    let mut buckets: Vec<(f64, f64)> = after
        .iter()
        .filter_map(|(k, v)| {
            let le = k.strip_prefix(PREFIX)?.strip_suffix("\"}")?;
            let le = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
            Some((le, v - before.get(k).copied().unwrap_or(0.0)))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let target = q * total;
    let (mut lo, mut below) = (0.0, 0.0);
    for (le, cum) in buckets {
        if cum >= target {
            if le.is_infinite() {
                return Some(lo * 1000.0);
            }
            let share = if cum > below { (target - below) / (cum - below) } else { 1.0 };
            return Some((lo + (le - lo) * share) * 1000.0);
        }
        (lo, below) = (le, cum);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_quantiles_interpolate_inside_buckets() {
        let before = parse_metrics("tug_fire_lateness_seconds_bucket{le=\"0.001\"} 0\ntug_fire_lateness_seconds_bucket{le=\"+Inf\"} 0\n");
        let after = parse_metrics(
            "# TYPE x histogram\ntug_fire_lateness_seconds_bucket{le=\"0.001\"} 50\ntug_fire_lateness_seconds_bucket{le=\"0.002\"} 100\ntug_fire_lateness_seconds_bucket{le=\"+Inf\"} 100\n",
        );
        assert_eq!(histogram_quantile_ms(&before, &after, 0.5), Some(1.0));
        assert_eq!(histogram_quantile_ms(&before, &after, 0.75), Some(1.5));
        assert_eq!(histogram_quantile_ms(&before, &before, 0.5), None);
    }
}

