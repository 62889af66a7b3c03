//! Prometheus exposition, the one way the agent and the control plane
//! write `/metrics`.
//!
//! Values are read when Prometheus scrapes (kernel counters, the registry),
//! put in metric families here, and encoded by the `prometheus` crate's
//! text encoder, which escapes label values (an interface named `a"b` stays
//! one label) and refuses a malformed family. Nothing is written by hand.
//! Names follow Prometheus conventions: the `wardline_` prefix, `_total` on
//! counters, the base unit in the name (`_seconds`, `_bytes`). The scrape
//! target carries the node or replica; no metric repeats it as a label.
#![forbid(unsafe_code)]

use prometheus::proto::{Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType};

pub use prometheus::{Histogram, HistogramOpts, TEXT_FORMAT as CONTENT_TYPE};

/// The metric families of one scrape, in the order added.
#[derive(Default)]
pub struct Exposition {
    families: Vec<MetricFamily>,
}

/// One family being filled: add a sample per label set.
pub struct Family<'a> {
    family: &'a mut MetricFamily,
}

impl Exposition {
    pub fn new() -> Self {
        Self::default()
    }

    /// A counter family `name` (ending in `_total`).
    pub fn counter(&mut self, name: &str, help: &str) -> Family<'_> {
        debug_assert!(name.ends_with("_total"), "{name}");
        self.family(name, help, MetricType::COUNTER)
    }

    /// A gauge family `name`.
    pub fn gauge(&mut self, name: &str, help: &str) -> Family<'_> {
        self.family(name, help, MetricType::GAUGE)
    }

    /// Histograms (kept by the caller, observed as things happen), as they
    /// stand now.
    pub fn histogram(&mut self, histogram: &Histogram) {
        use prometheus::core::Collector as _;
        self.families.extend(histogram.collect());
    }

    fn family(&mut self, name: &str, help: &str, kind: MetricType) -> Family<'_> {
        let mut family = MetricFamily::default();
        family.set_name(name.to_owned());
        family.set_help(help.to_owned());
        family.set_field_type(kind);
        self.families.push(family);
        let family = self.families.last_mut().expect("just pushed");
        Family { family }
    }

    /// The text exposition format. A family that got no sample is left
    /// out (the format has no empty family).
    pub fn encode(&self) -> String {
        use prometheus::Encoder as _;
        let families: Vec<MetricFamily> = self
            .families
            .iter()
            .filter(|f| !f.get_metric().is_empty())
            .cloned()
            .collect();
        let mut out = Vec::new();
        match prometheus::TextEncoder::new().encode(&families, &mut out) {
            Ok(()) => String::from_utf8(out).unwrap_or_default(),
            // Only a family this crate built wrongly fails: say so where
            // the scrape shows it rather than serve half a page.
            Err(e) => format!("# the metrics could not be encoded: {e}\n"),
        }
    }
}

impl Family<'_> {
    /// Adds the sample of `labels` (name, value pairs).
    pub fn sample(&mut self, labels: &[(&str, &str)], value: f64) -> &mut Self {
        let mut metric = Metric::default();
        metric.set_label(
            labels
                .iter()
                .map(|(name, value)| {
                    let mut pair = LabelPair::default();
                    pair.set_name((*name).to_owned());
                    pair.set_value((*value).to_owned());
                    pair
                })
                .collect(),
        );
        match self.family.get_field_type() {
            MetricType::COUNTER => {
                let mut counter = Counter::default();
                counter.set_value(value);
                metric.set_counter(counter);
            }
            _ => {
                let mut gauge = Gauge::default();
                gauge.set_value(value);
                metric.set_gauge(gauge);
            }
        }
        self.family.mut_metric().push(metric);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped_and_names_kept() {
        let mut e = Exposition::new();
        e.counter("wardline_packets_total", "Packets judged.")
            .sample(&[("interface", "a\"b\\c\nd"), ("verdict", "dropped")], 3.0);
        e.gauge("wardline_ready", "Whether ready.").sample(&[], 1.0);
        e.gauge("wardline_unused", "No samples: left out.");
        let text = e.encode();
        assert!(
            text.contains(r#"wardline_packets_total{interface="a\"b\\c\nd",verdict="dropped"} 3"#),
            "{text}"
        );
        assert!(
            text.contains("# TYPE wardline_packets_total counter"),
            "{text}"
        );
        assert!(text.contains("wardline_ready 1"), "{text}");
        assert!(!text.contains("wardline_unused"), "{text}");
    }

    #[test]
    fn histograms_come_with_their_buckets() {
        let h = Histogram::with_opts(
            HistogramOpts::new("wardline_apply_to_ack_seconds", "Apply to ack.")
                .buckets(vec![0.1, 1.0]),
        )
        .unwrap();
        h.observe(0.05);
        h.observe(0.5);
        let mut e = Exposition::new();
        e.histogram(&h);
        let text = e.encode();
        assert!(
            text.contains(r#"wardline_apply_to_ack_seconds_bucket{le="0.1"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"wardline_apply_to_ack_seconds_bucket{le="1"} 2"#),
            "{text}"
        );
        assert!(
            text.contains("wardline_apply_to_ack_seconds_count 2"),
            "{text}"
        );
    }
}
