//! Reading a `/metrics` page back: the Prometheus / OpenMetrics text format this server writes,
//! parsed strictly enough to catch a broken exposition. Used by the benchmarks (`tug bench`) and
//! the tests that check the metrics against known runs.

use std::collections::BTreeMap;

/// One sample: a metric name, its labels and value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The series name (`tug_fires_total`, `tug_fire_lateness_seconds_bucket`).
    pub name: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its value (`+Inf` is infinity).
    pub value: f64,
}

/// A parsed exposition: samples, plus the `# TYPE` of each family.
#[derive(Debug, Default, Clone)]
pub struct Exposition {
    /// Every sample, in page order.
    pub samples: Vec<Sample>,
    /// Family name → type (`counter`, `gauge`, `histogram`).
    pub types: BTreeMap<String, String>,
}

/// A line of the page that is not a comment or `name{labels} value`.
#[derive(Debug, thiserror::Error)]
#[error("invalid metrics page: {what} in line {line:?}")]
pub struct ParseError {
    /// What is wrong.
    pub what: String,
    /// The line.
    pub line: String,
}

impl Exposition {
    /// Parses a page: every line a comment or `name{labels} value`, ending with `# EOF` when
    /// `terminated` is asked for (OpenMetrics, as this server writes it).
    pub fn parse(text: &str, terminated: bool) -> Result<Exposition, ParseError> {
        let err = |what: &str, line: &str| ParseError { what: what.to_string(), line: line.to_string() };
        if terminated && !text.trim_end().ends_with("# EOF") {
            return Err(err("no # EOF terminator", text.lines().last().unwrap_or_default()));
        }
        let mut out = Exposition::default();
        for line in text.lines().filter(|l| !l.is_empty()) {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, ty) = rest.split_once(' ').ok_or_else(|| err("a TYPE without a type", line))?;
                out.types.insert(name.to_owned(), ty.to_owned());
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').ok_or_else(|| err("no value", line))?;
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                v => v.parse().map_err(|e| err(&format!("bad value ({e})"), line))?,
            };
            let (name, labels) = match series.split_once('{') {
                None => (series.to_owned(), BTreeMap::new()),
                Some((name, rest)) => {
                    let body = rest.strip_suffix('}').ok_or_else(|| err("unclosed labels", line))?;
                    (name.to_owned(), parse_labels(body).map_err(|what| err(what, line))?)
                }
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
                return Err(err("bad metric name", line));
            }
            out.samples.push(Sample { name, labels, value });
        }
        Ok(out)
    }

    /// The samples named `name` whose labels include `labels`.
    pub fn find<'a>(&'a self, name: &'a str, labels: &'a [(&str, &str)]) -> impl Iterator<Item = &'a Sample> {
        self.samples
            .iter()
            .filter(move |s| s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v)))
    }

    /// The sum of the samples [found](Self::find); 0 when there are none (a counter not yet
    /// created).
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.find(name, labels).map(|s| s.value).sum()
    }

    /// The `q` quantile (0..=1) of histogram family `family` between an earlier page and this
    /// one, interpolated linearly inside its bucket (so within one bucket's width); `None` when
    /// nothing was observed in between.
    pub fn quantile_since(&self, before: &Exposition, family: &str, q: f64) -> Option<f64> {
        let name = format!("{family}_bucket");
        let le = |s: &Sample| -> Option<f64> {
            match s.labels.get("le")?.as_str() {
                "+Inf" => Some(f64::INFINITY),
                v => v.parse().ok(),
            }
        };
        let earlier = |bound: f64| {
            before.find(&name, &[]).filter(|s| le(s) == Some(bound)).map(|s| s.value).sum::<f64>()
        };
        let mut buckets: Vec<(f64, f64)> =
            self.find(&name, &[]).filter_map(|s| le(s).map(|b| (b, s.value - earlier(b)))).collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        let total = buckets.last()?.1;
        if total <= 0.0 {
            return None;
        }
        let target = q * total;
        let (mut lo, mut below) = (0.0, 0.0);
        for (bound, cum) in buckets {
            if cum >= target {
                if bound.is_infinite() {
                    return Some(lo);
                }
                let share = if cum > below { (target - below) / (cum - below) } else { 1.0 };
                return Some(lo + (bound - lo) * share);
            }
            (lo, below) = (bound, cum);
        }
        None
    }
}

/// `a="x",b="y"` with `\"`, `\\` and `\n` escapes.
fn parse_labels(body: &str) -> Result<BTreeMap<String, String>, &'static str> {
    let mut labels = BTreeMap::new();
    let mut chars = body.chars().peekable();
    loop {
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            break;
        }
        if chars.next() != Some('"') {
            return Err("a label value not quoted");
        }
        let mut value = String::new();
        loop {
            match chars.next() {
                Some('\\') => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(c) => value.push(c),
                    None => return Err("a dangling escape"),
                },
                Some('"') => break,
                Some(c) => value.push(c),
                None => return Err("an unterminated label value"),
            }
        }
        labels.insert(key.trim_start_matches(',').to_owned(), value);
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
    Ok(labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_labels_escapes_and_special_values() {
        let e = Exposition::parse(
            "# HELP x_total X.\n# TYPE x counter\nx_total{a=\"1\",b=\"q\\\"uo\\\\te\"} 3\nh_bucket{le=\"+Inf\"} 2\nup 1\n# EOF\n",
            true,
        )
        .unwrap();
        assert_eq!(e.types["x"], "counter");
        assert_eq!(e.sum("x_total", &[("b", "q\"uo\\te")]), 3.0);
        assert_eq!(e.sum("h_bucket", &[("le", "+Inf")]), 2.0);
        assert_eq!(e.sum("up", &[]), 1.0);
        assert_eq!(e.sum("absent", &[]), 0.0);
    }

    #[test]
    fn a_broken_page_says_where() {
        let err = Exposition::parse("up 1\n", true).unwrap_err();
        assert_eq!(err.to_string(), "invalid metrics page: no # EOF terminator in line \"up 1\"");
        let err = Exposition::parse("up one\n", false).unwrap_err();
        assert!(err.to_string().starts_with("invalid metrics page: bad value"), "{err}");
        let err = Exposition::parse("x{a=\"1\" 2\n", false).unwrap_err();
        assert_eq!(err.to_string(), "invalid metrics page: unclosed labels in line \"x{a=\\\"1\\\" 2\"");
        let err = Exposition::parse("x{a=1} 2\n", false).unwrap_err();
        assert_eq!(err.to_string(), "invalid metrics page: a label value not quoted in line \"x{a=1} 2\"");
    }

    #[test]
    fn histogram_quantiles_interpolate_inside_buckets() {
        let page = |a: u32, b: u32| {
            format!("h_bucket{{le=\"0.001\"}} {a}\nh_bucket{{le=\"0.002\"}} {b}\nh_bucket{{le=\"+Inf\"}} {b}\n")
        };
        let before = Exposition::parse(&page(0, 0), false).unwrap();
        let after = Exposition::parse(&page(50, 100), false).unwrap();
        assert_eq!(after.quantile_since(&before, "h", 0.5), Some(0.001));
        assert_eq!(after.quantile_since(&before, "h", 0.75), Some(0.0015));
        assert_eq!(before.quantile_since(&before, "h", 0.5), None);
    }
}
