//! A strict reader of the Prometheus text format 0.0.4, for tests that check
//! a `/metrics` page (the unit tests here, the daemon's in `tests/`).
//!
//! Stricter than Prometheus itself where the format says "must": every line
//! ends in a line feed; `# TYPE` comes once per family, before its samples;
//! a family's samples are contiguous; a series appears once; label values
//! use only the three escapes; counters are non-negative; a histogram's
//! buckets are cumulative, end at `le="+Inf"` and agree with its `_count`,
//! and it has a `_sum`.

use std::collections::{BTreeMap, BTreeSet};

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Its metric name (with `_bucket`, `_sum`, `_count` for histograms).
    pub name: String,
    /// Its labels, unescaped.
    pub labels: BTreeMap<String, String>,
    /// Its value.
    pub value: f64,
}

/// A family's `# HELP` and `# TYPE`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FamilyInfo {
    /// Its `# TYPE` (`untyped` when none was given).
    pub kind: String,
    /// Its `# HELP`, unescaped.
    pub help: Option<String>,
}

/// A page that read cleanly.
#[derive(Debug, Clone, Default)]
pub struct Page {
    /// Families by name.
    pub families: BTreeMap<String, FamilyInfo>,
    /// Samples in page order.
    pub samples: Vec<Sample>,
}

impl Page {
    /// The samples named `name`.
    pub fn samples(&self, name: &str) -> Vec<&Sample> {
        self.samples.iter().filter(|s| s.name == name).collect()
    }

    /// The value of the one sample named `name` whose labels include all of
    /// `labels`, if exactly one matches.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut hits = self.samples.iter().filter(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        });
        let first = hits.next()?;
        hits.next().is_none().then_some(first.value)
    }
}

/// Reads `text`, or says at which line (from 1) and why it is not valid.
pub fn parse(text: &str) -> Result<Page, String> {
    if !text.is_empty() && !text.ends_with('\n') {
        return Err("the page does not end with a line feed".into());
    }
    let mut page = Page::default();
    let mut typed = BTreeSet::new();
    let mut done = BTreeSet::new();
    let mut current: Option<String> = None;
    let mut seen = BTreeSet::new();
    for (i, line) in text.lines().enumerate() {
        let at = |why: String| format!("line {}: {why}: {line:?}", i + 1);
        if let Some(rest) = line.strip_prefix('#') {
            let mut words = rest.trim_start_matches(' ').splitn(3, ' ');
            let (Some(word), Some(name)) = (words.next(), words.next()) else {
                continue;
            };
            let what = words.next().unwrap_or("");
            let info = match word {
                "HELP" | "TYPE" => {
                    if !valid_name(name) {
                        return Err(at(format!("bad metric name {name:?}")));
                    }
                    if done.contains(name) || current.as_deref() == Some(name) {
                        return Err(at(format!("{word} of {name} after its samples")));
                    }
                    page.families.entry(name.to_string()).or_default()
                }
                _ => continue,
            };
            if word == "HELP" {
                if info.help.is_some() {
                    return Err(at(format!("second HELP for {name}")));
                }
                info.help = Some(unescape(what, false).map_err(&at)?);
            } else {
                if !typed.insert(name.to_string()) {
                    return Err(at(format!("second TYPE for {name}")));
                }
                if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&what) {
                    return Err(at(format!("unknown type {what:?}")));
                }
                info.kind = what.to_string();
            }
            continue;
        }
        if line.trim().is_empty() {
            continue;
        }
        let sample = sample(line).map_err(&at)?;
        let family = family_of(&page.families, &sample.name);
        if current.as_deref() != Some(&family) {
            if done.contains(&family) {
                return Err(at(format!("samples of {family} are not contiguous")));
            }
            if let Some(prev) = current.replace(family.clone()) {
                done.insert(prev);
            }
        }
        let key = (sample.name.clone(), sample.labels.clone());
        if !seen.insert(key) {
            return Err(at("the same series twice".into()));
        }
        let kind = page.families.get(&family).map(|f| f.kind.as_str());
        if kind == Some("counter") && (sample.value.is_nan() || sample.value < 0.0) {
            return Err(at("a negative counter".into()));
        }
        page.families.entry(family).or_default();
        page.samples.push(sample);
    }
    for info in page.families.values_mut() {
        if info.kind.is_empty() {
            info.kind = "untyped".into();
        }
    }
    check_histograms(&page)?;
    Ok(page)
}

/// The family a sample belongs to: a histogram's `_bucket`, `_sum` and
/// `_count` belong to the histogram.
fn family_of(families: &BTreeMap<String, FamilyInfo>, name: &str) -> String {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix) {
            if families.get(base).is_some_and(|f| f.kind == "histogram") {
                return base.to_string();
            }
        }
    }
    name.to_string()
}

fn check_histograms(page: &Page) -> Result<(), String> {
    for (name, info) in &page.families {
        if info.kind != "histogram" {
            continue;
        }
        // Series by their labels without `le`.
        let mut buckets: BTreeMap<BTreeMap<String, String>, Vec<(f64, f64)>> = BTreeMap::new();
        for s in page.samples(&format!("{name}_bucket")) {
            let mut labels = s.labels.clone();
            let le = labels
                .remove("le")
                .ok_or_else(|| format!("{name}_bucket without le"))?;
            let le = float(&le).ok_or_else(|| format!("{name}_bucket has le={le:?}"))?;
            buckets.entry(labels).or_default().push((le, s.value));
        }
        if buckets.is_empty() {
            return Err(format!("histogram {name} has no buckets"));
        }
        for (labels, b) in buckets {
            if b.windows(2).any(|w| w[0].0 >= w[1].0 || w[0].1 > w[1].1) {
                return Err(format!(
                    "{name}{labels:?}: buckets not increasing and cumulative"
                ));
            }
            let Some(&(last_le, last)) = b.last() else {
                continue;
            };
            if last_le != f64::INFINITY {
                return Err(format!("{name}{labels:?}: no le=\"+Inf\" bucket"));
            }
            let one = |suffix: &str| {
                page.samples(&format!("{name}{suffix}"))
                    .into_iter()
                    .find(|s| s.labels == labels)
                    .map(|s| s.value)
                    .ok_or_else(|| format!("{name}{labels:?}: no {name}{suffix}"))
            };
            let count = one("_count")?;
            one("_sum")?;
            if count != last {
                return Err(format!(
                    "{name}{labels:?}: _count {count} is not the +Inf bucket's {last}"
                ));
            }
        }
    }
    Ok(())
}

/// `name{labels} value [timestamp]`.
fn sample(line: &str) -> Result<Sample, String> {
    let end = line.find(['{', ' ']).ok_or("no value")?;
    let name = &line[..end];
    if !valid_name(name) {
        return Err(format!("bad metric name {name:?}"));
    }
    let mut rest = &line[end..];
    let mut labels = BTreeMap::new();
    if let Some(body) = rest.strip_prefix('{') {
        let (parsed, after) = label_list(body)?;
        labels = parsed;
        rest = after;
    }
    let rest = rest.strip_prefix(' ').ok_or("no space before the value")?;
    let mut words = rest.split(' ');
    let value = words.next().ok_or("no value")?;
    let value = float(value).ok_or_else(|| format!("bad value {value:?}"))?;
    if let Some(ts) = words.next() {
        ts.parse::<i64>()
            .map_err(|_| format!("bad timestamp {ts:?}"))?;
    }
    if words.next().is_some() {
        return Err("trailing text".into());
    }
    Ok(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// `a="x",b="y"}` up to and with the closing brace; the rest of the line.
fn label_list(mut s: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    loop {
        if let Some(rest) = s.strip_prefix('}') {
            return Ok((labels, rest));
        }
        let eq = s.find('=').ok_or("a label without =")?;
        let name = &s[..eq];
        if !valid_label(name) {
            return Err(format!("bad label name {name:?}"));
        }
        let body = s[eq + 1..]
            .strip_prefix('"')
            .ok_or("a label value without quotes")?;
        let mut close = None;
        let mut escaped = false;
        for (i, c) in body.char_indices() {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => {
                    close = Some(i);
                    break;
                }
                _ => {}
            }
        }
        let close = close.ok_or("an unterminated label value")?;
        let value = unescape(&body[..close], true)?;
        if labels.insert(name.to_string(), value).is_some() {
            return Err(format!("label {name} twice"));
        }
        s = &body[close + 1..];
        if let Some(rest) = s.strip_prefix(',') {
            s = rest;
        } else if !s.starts_with('}') {
            return Err("labels not separated by commas".into());
        }
    }
}

/// Undoes `\\`, `\n` (and `\"` in label values); any other escape is an
/// error, as is a raw line feed or, in a label value, a bare quote.
fn unescape(s: &str, label: bool) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some('\\') => out.push('\\'),
                Some('n') => out.push('\n'),
                Some('"') if label => out.push('"'),
                other => return Err(format!("bad escape \\{other:?}")),
            },
            '"' if label => return Err("an unescaped quote".into()),
            '\n' => return Err("a raw line feed".into()),
            c => out.push(c),
        }
    }
    Ok(out)
}

/// Go's `ParseFloat` syntax as the format uses it.
fn float(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ if s
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-')) =>
        {
            s.parse().ok()
        }
        _ => None,
    }
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn valid_label(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_the_format_forbids() {
        for (bad, why) in [
            ("a 1", "no final line feed"),
            ("# TYPE a counter\na -1\n", "negative counter"),
            ("a 1\nb 1\na 2\n", "not contiguous"),
            ("a 1\na 1\n", "series twice"),
            ("a{x=\"1\\t\"} 1\n", "bad escape"),
            ("a{x=\"1} 1\n", "unterminated"),
            ("a{x=1} 1\n", "unquoted"),
            ("a one\n", "bad value"),
            ("# TYPE a counter\n# TYPE a gauge\na 1\n", "second TYPE"),
            ("a 1\n# TYPE a gauge\n", "TYPE after samples"),
            (
                "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n",
                "not cumulative",
            ),
            (
                "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n",
                "no +Inf",
            ),
            (
                "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 2\n",
                "count differs",
            ),
        ] {
            assert!(parse(bad).is_err(), "{why}: {bad:?} was accepted");
        }
        let good =
            "# HELP a x\\\\y\n# TYPE a counter\na{v=\"q\\\"\",} 1 123\n# other comment\nb NaN\n";
        let page = parse(good).unwrap();
        assert_eq!(page.families["a"].help.as_deref(), Some("x\\y"));
        assert_eq!(page.value("a", &[("v", "q\"")]), Some(1.0));
        assert_eq!(page.families["b"].kind, "untyped");
    }
}
