//! Prometheus metrics in the text exposition format, version 0.0.4 (what a
//! `/metrics` endpoint serves with `Content-Type: text/plain; version=0.0.4`).
//!
//! [`Registry`] holds metric families (counters, gauges, histograms), each a
//! set of series told apart by their labels, and renders them with their
//! `# HELP` and `# TYPE` lines; label values (VM and fleet names come from
//! API requests and fleet files) are escaped. [`runs`] turns what the
//! library records about a VM run or a fleet into series of one registry.
//!
//! ```
//! use tandem::metrics::Registry;
//!
//! let mut reg = Registry::new();
//! reg.counter_add("tandem_vm_exits_total", "VM exits.", &[("vm", "web\"1")], 3.0)?;
//! reg.histogram_observe("tandem_queue_wait_seconds", "Queue wait.", &[], &[0.001, 0.01], 0.005)?;
//! let text = reg.render();
//! assert!(text.contains("tandem_vm_exits_total{vm=\"web\\\"1\"} 3\n"));
//! assert!(text.contains("tandem_queue_wait_seconds_bucket{le=\"0.01\"} 1\n"));
//! # Ok::<(), tandem::metrics::MetricsError>(())
//! ```

pub mod parse;
pub mod runs;

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// The `Content-Type` of what [`Registry::render`] returns.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What can go wrong when recording a metric.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MetricsError {
    /// A metric name outside `[a-zA-Z_:][a-zA-Z0-9_:]*`.
    #[error("metric name {0:?} is not a valid Prometheus metric name")]
    BadName(String),
    /// A label name outside `[a-zA-Z_][a-zA-Z0-9_]*`, reserved (`__` prefix,
    /// `le` on a histogram) or given twice.
    #[error("label name {label:?} of metric {metric} is invalid, reserved or repeated")]
    BadLabel {
        /// The metric.
        metric: String,
        /// The label name.
        label: String,
    },
    /// A name already used by a family of another kind.
    #[error("metric {name} is a {was}, not a {now}")]
    KindMismatch {
        /// The metric.
        name: String,
        /// Its kind so far.
        was: Kind,
        /// The kind asked for now.
        now: Kind,
    },
    /// Histogram bounds that are not finite and strictly increasing, or that
    /// differ from those the series was made with.
    #[error("histogram {0} has bounds that are not finite and increasing, or that changed")]
    BadBuckets(String),
    /// A counter increment that is negative or not a number.
    #[error("counter {0} can only grow (by a finite, non-negative amount)")]
    CounterDecrease(String),
}

/// A `Result` of this module.
pub type Result<T> = std::result::Result<T, MetricsError>;

/// The kind of a metric family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only grows.
    Counter,
    /// Goes up and down.
    Gauge,
    /// Observations counted in buckets, with their sum and count.
    Histogram,
}

impl Kind {
    /// Its name in a `# TYPE` line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Counter => "counter",
            Self::Gauge => "gauge",
            Self::Histogram => "histogram",
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Observations in buckets with upper bounds `bounds` (the `+Inf` bucket is
/// implied), their sum and count.
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    bounds: Vec<f64>,
    /// Observations per bucket (not cumulative), `bounds.len() + 1` of them.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    /// An empty histogram; `None` when `bounds` are not finite and strictly
    /// increasing.
    pub fn new(bounds: &[f64]) -> Option<Self> {
        let ok = bounds.iter().all(|b| b.is_finite()) && bounds.windows(2).all(|w| w[0] < w[1]);
        ok.then(|| Self {
            bounds: bounds.to_vec(),
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
            count: 0,
        })
    }

    /// Counts `value` in the first bucket whose bound is at least `value`
    /// (a NaN only in `+Inf`, and not in the sum).
    pub fn observe(&mut self, value: f64) {
        let i = self
            .bounds
            .iter()
            .position(|&b| value <= b)
            .unwrap_or(self.bounds.len());
        self.counts[i] += 1;
        self.count += 1;
        if !value.is_nan() {
            self.sum += value;
        }
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Sum of the observations so far.
    pub fn sum(&self) -> f64 {
        self.sum
    }
}

/// Label pairs in the order given (the order they are rendered in).
type LabelSet = Vec<(String, String)>;

#[derive(Debug, Clone)]
enum Series {
    Number(f64),
    Histogram(Histogram),
}

#[derive(Debug, Clone)]
struct Family {
    help: String,
    kind: Kind,
    series: BTreeMap<LabelSet, Series>,
}

/// Metric families by name, rendered in name order.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    families: BTreeMap<String, Family>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether nothing has been recorded.
    pub fn is_empty(&self) -> bool {
        self.families.is_empty()
    }

    /// Adds `by` to counter `name` (created at 0) for `labels`.
    pub fn counter_add(
        &mut self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        by: f64,
    ) -> Result<()> {
        if !(by.is_finite() && by >= 0.0) {
            return Err(MetricsError::CounterDecrease(name.to_string()));
        }
        let series = self.series(name, help, Kind::Counter, labels)?;
        // A family's series all have its kind (`series` checked it).
        if let Series::Number(v) = series.entry_or(|| Series::Number(0.0)) {
            *v += by;
        }
        Ok(())
    }

    /// Sets gauge `name` for `labels` to `value`.
    pub fn gauge_set(
        &mut self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        value: f64,
    ) -> Result<()> {
        let series = self.series(name, help, Kind::Gauge, labels)?;
        *series.entry_or(|| Series::Number(0.0)) = Series::Number(value);
        Ok(())
    }

    /// Counts `value` in histogram `name` for `labels` (with buckets
    /// `bounds`, which must be the same on every call for one series).
    pub fn histogram_observe(
        &mut self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        bounds: &[f64],
        value: f64,
    ) -> Result<()> {
        let fresh =
            Histogram::new(bounds).ok_or_else(|| MetricsError::BadBuckets(name.to_string()))?;
        let series = self.series(name, help, Kind::Histogram, labels)?;
        match series.entry_or(|| Series::Histogram(fresh)) {
            Series::Histogram(h) if h.bounds == bounds => h.observe(value),
            Series::Histogram(_) => return Err(MetricsError::BadBuckets(name.to_string())),
            // A family's series all have its kind (`series` checked it).
            Series::Number(_) => {}
        }
        Ok(())
    }

    /// The value of counter or gauge `name` for `labels`, if recorded.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        match self.families.get(name)?.series.get(&owned(labels))? {
            Series::Number(v) => Some(*v),
            Series::Histogram(_) => None,
        }
    }

    /// Histogram `name` for `labels`, if recorded.
    pub fn histogram(&self, name: &str, labels: &[(&str, &str)]) -> Option<&Histogram> {
        match self.families.get(name)?.series.get(&owned(labels))? {
            Series::Histogram(h) => Some(h),
            Series::Number(_) => None,
        }
    }

    /// The exposition text: per family a `# HELP` and a `# TYPE` line, then
    /// its series (a histogram's as cumulative `_bucket` lines up to
    /// `le="+Inf"`, then `_sum` and `_count`).
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (name, family) in &self.families {
            if family.help.is_empty() {
                let _ = writeln!(out, "# HELP {name}");
            } else {
                let _ = writeln!(out, "# HELP {name} {}", escape_help(&family.help));
            }
            let _ = writeln!(out, "# TYPE {name} {}", family.kind);
            for (labels, series) in &family.series {
                match series {
                    Series::Number(v) => {
                        let _ = writeln!(out, "{name}{} {}", label_text(labels, None), number(*v));
                    }
                    Series::Histogram(h) => render_histogram(&mut out, name, labels, h),
                }
            }
        }
        out
    }

    /// The series of family `name` for `labels`, checking names and kind.
    fn series(
        &mut self,
        name: &str,
        help: &str,
        kind: Kind,
        labels: &[(&str, &str)],
    ) -> Result<SeriesSlot<'_>> {
        if !valid_metric_name(name) {
            return Err(MetricsError::BadName(name.to_string()));
        }
        for (i, (label, _)) in labels.iter().enumerate() {
            let repeated = labels[..i].iter().any(|(l, _)| l == label);
            let reserved = label.starts_with("__") || (kind == Kind::Histogram && *label == "le");
            if !valid_label_name(label) || repeated || reserved {
                return Err(MetricsError::BadLabel {
                    metric: name.to_string(),
                    label: label.to_string(),
                });
            }
        }
        let family = self
            .families
            .entry(name.to_string())
            .or_insert_with(|| Family {
                help: help.to_string(),
                kind,
                series: BTreeMap::new(),
            });
        if family.kind != kind {
            return Err(MetricsError::KindMismatch {
                name: name.to_string(),
                was: family.kind,
                now: kind,
            });
        }
        Ok(SeriesSlot {
            map: &mut family.series,
            key: owned(labels),
        })
    }
}

/// Where one series lives (or will).
struct SeriesSlot<'a> {
    map: &'a mut BTreeMap<LabelSet, Series>,
    key: LabelSet,
}

impl<'a> SeriesSlot<'a> {
    fn entry_or(self, make: impl FnOnce() -> Series) -> &'a mut Series {
        self.map.entry(self.key).or_insert_with(make)
    }
}

fn owned(labels: &[(&str, &str)]) -> LabelSet {
    labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn render_histogram(out: &mut String, name: &str, labels: &LabelSet, h: &Histogram) {
    let mut cumulative = 0;
    for (i, count) in h.counts.iter().enumerate() {
        cumulative += count;
        let le = h
            .bounds
            .get(i)
            .map_or_else(|| "+Inf".to_string(), |b| number(*b));
        let _ = writeln!(
            out,
            "{name}_bucket{} {cumulative}",
            label_text(labels, Some(&le))
        );
    }
    let plain = label_text(labels, None);
    let _ = writeln!(out, "{name}_sum{plain} {}", number(h.sum));
    let _ = writeln!(out, "{name}_count{plain} {}", h.count);
}

/// `{a="x",b="y"}` (with `le` last for a bucket), or nothing without labels.
fn label_text(labels: &LabelSet, le: Option<&str>) -> String {
    let mut pairs: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape_label_value(v)))
        .collect();
    if let Some(le) = le {
        pairs.push(format!("le=\"{le}\""));
    }
    if pairs.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", pairs.join(","))
    }
}

/// A sample value as the format spells it (`+Inf`, `-Inf`, `NaN`, else Go's
/// float syntax, which Rust's shortest round-trip `Display` is a subset of).
fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{v}")
    }
}

/// Label values escape backslash, double quote and line feed.
fn escape_label_value(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

/// Help text escapes backslash and line feed.
fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

fn valid_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::parse::parse;
    use super::*;

    #[test]
    fn families_render_with_help_type_and_escaped_labels() {
        let mut reg = Registry::new();
        reg.counter_add(
            "a_total",
            "As.\nTwo lines \\ here",
            &[("vm", "x\"y\\z\nw")],
            2.0,
        )
        .unwrap();
        reg.counter_add("a_total", "ignored", &[("vm", "x\"y\\z\nw")], 1.5)
            .unwrap();
        reg.gauge_set("b", "Bs.", &[], -1.0).unwrap();
        reg.gauge_set("b", "Bs.", &[], f64::INFINITY).unwrap();
        let text = reg.render();
        assert_eq!(
            text,
            "# HELP a_total As.\\nTwo lines \\\\ here\n# TYPE a_total counter\n\
             a_total{vm=\"x\\\"y\\\\z\\nw\"} 3.5\n\
             # HELP b Bs.\n# TYPE b gauge\nb +Inf\n"
        );
        let parsed = parse(&text).unwrap();
        assert_eq!(parsed.samples("a_total")[0].labels["vm"], "x\"y\\z\nw");
    }

    #[test]
    fn histograms_are_cumulative_and_end_at_inf() {
        let mut reg = Registry::new();
        let bounds = [0.001, 0.01, 0.1];
        for v in [0.0005, 0.002, 0.003, 0.5, 0.1] {
            reg.histogram_observe("h_seconds", "H.", &[("phase", "p")], &bounds, v)
                .unwrap();
        }
        let text = reg.render();
        for line in [
            "h_seconds_bucket{phase=\"p\",le=\"0.001\"} 1\n",
            "h_seconds_bucket{phase=\"p\",le=\"0.01\"} 3\n",
            "h_seconds_bucket{phase=\"p\",le=\"0.1\"} 4\n",
            "h_seconds_bucket{phase=\"p\",le=\"+Inf\"} 5\n",
            "h_seconds_count{phase=\"p\"} 5\n",
        ] {
            assert!(text.contains(line), "{line:?} missing from\n{text}");
        }
        let parsed = parse(&text).unwrap();
        let sum = parsed.samples("h_seconds_sum")[0].value;
        assert!((sum - 0.6055).abs() < 1e-9, "sum {sum}");
    }

    #[test]
    fn bad_names_and_kinds_are_refused() {
        let mut reg = Registry::new();
        assert!(matches!(
            reg.counter_add("1bad", "", &[], 1.0),
            Err(MetricsError::BadName(_))
        ));
        assert!(matches!(
            reg.counter_add("ok_total", "", &[("bad-label", "v")], 1.0),
            Err(MetricsError::BadLabel { .. })
        ));
        assert!(matches!(
            reg.counter_add("ok_total", "", &[("vm", "a"), ("vm", "b")], 1.0),
            Err(MetricsError::BadLabel { .. })
        ));
        assert!(matches!(
            reg.histogram_observe("h", "", &[("le", "1")], &[1.0], 1.0),
            Err(MetricsError::BadLabel { .. })
        ));
        assert!(matches!(
            reg.counter_add("ok_total", "", &[], -1.0),
            Err(MetricsError::CounterDecrease(_))
        ));
        reg.counter_add("ok_total", "", &[], 1.0).unwrap();
        assert!(matches!(
            reg.gauge_set("ok_total", "", &[], 1.0),
            Err(MetricsError::KindMismatch { .. })
        ));
        assert!(matches!(
            reg.histogram_observe("h", "", &[], &[2.0, 1.0], 1.0),
            Err(MetricsError::BadBuckets(_))
        ));
        reg.histogram_observe("h", "", &[], &[1.0], 1.0).unwrap();
        assert!(matches!(
            reg.histogram_observe("h", "", &[], &[1.0, 2.0], 1.0),
            Err(MetricsError::BadBuckets(_))
        ));
        // What was refused left nothing half-made behind.
        parse(&reg.render()).unwrap();
    }
}
