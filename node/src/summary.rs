//! Outcome tallies, latency percentiles and the summary table printed by `demo` and `bench`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;

/// Counts of what happened to a run's pushes, plus their latencies.
#[derive(Debug)]
pub struct Summary {
    /// Pushes APNs accepted.
    pub delivered: u64,
    /// Pushes answered 410: the device token was invalidated.
    pub invalidated: u64,
    /// Resends (each retry of a push counts once).
    pub retried: u64,
    /// Pushes that ended failed, by reason.
    pub failed: BTreeMap<String, u64>,
    latency_us: Histogram<u64>,
}

impl Default for Summary {
    fn default() -> Self {
        Self::new()
    }
}

impl Summary {
    /// An empty tally.
    pub fn new() -> Self {
        Summary {
            delivered: 0,
            invalidated: 0,
            retried: 0,
            failed: BTreeMap::new(),
            // 1 µs .. 60 s at 3 significant digits; values above are clamped.
            latency_us: Histogram::new_with_bounds(1, 60_000_000, 3)
                .unwrap_or_else(|_| Histogram::new(3).expect("3 significant figures is valid")),
        }
    }

    /// Record one push's latency, from first send to final answer.
    pub fn record_latency(&mut self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.latency_us.saturating_record(us.max(1));
    }

    /// Record a failed push.
    pub fn record_failure(&mut self, reason: impl Into<String>) {
        *self.failed.entry(reason.into()).or_default() += 1;
    }

    /// Add another tally into this one.
    pub fn merge(&mut self, other: &Summary) {
        self.delivered += other.delivered;
        self.invalidated += other.invalidated;
        self.retried += other.retried;
        for (reason, n) in &other.failed {
            *self.failed.entry(reason.clone()).or_default() += n;
        }
        // Both histograms have the same bounds, so adding cannot fail.
        let _ = self.latency_us.add(&other.latency_us);
    }

    /// Pushes that reached a final outcome.
    pub fn finished(&self) -> u64 {
        self.delivered + self.invalidated + self.failed.values().sum::<u64>()
    }

    /// Latency at percentile `p` (0–100).
    pub fn latency_percentile(&self, p: f64) -> Duration {
        Duration::from_micros(self.latency_us.value_at_percentile(p))
    }

    /// The summary table, for a run that took `elapsed`.
    pub fn table(&self, elapsed: Duration) -> String {
        let secs = elapsed.as_secs_f64().max(f64::EPSILON);
        let mut rows: Vec<(String, String)> = vec![
            ("delivered".into(), self.delivered.to_string()),
            ("invalidated (410)".into(), self.invalidated.to_string()),
            ("retried".into(), self.retried.to_string()),
            (
                "failed".into(),
                self.failed.values().sum::<u64>().to_string(),
            ),
        ];
        for (reason, n) in &self.failed {
            rows.push((format!("  failed: {reason}"), n.to_string()));
        }
        rows.push((
            "throughput".into(),
            format!("{:.0} pushes/s", self.finished() as f64 / secs),
        ));
        rows.push(("elapsed".into(), format!("{:.2} s", secs)));
        rows.push((
            "latency p50".into(),
            format_duration(self.latency_percentile(50.0)),
        ));
        rows.push((
            "latency p99".into(),
            format_duration(self.latency_percentile(99.0)),
        ));
        let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        let value_width = rows.iter().map(|(_, v)| v.len()).max().unwrap_or(0);
        let rule = format!("+-{}-+-{}-+", "-".repeat(width), "-".repeat(value_width));
        let mut out = String::new();
        let _ = writeln!(out, "{rule}");
        for (k, v) in rows {
            let _ = writeln!(out, "| {k:<width$} | {v:>value_width$} |");
        }
        let _ = write!(out, "{rule}");
        out
    }
}

fn format_duration(d: Duration) -> String {
    if d < Duration::from_millis(1) {
        format!("{} µs", d.as_micros())
    } else {
        format!("{:.2} ms", d.as_secs_f64() * 1000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_counts_and_percentiles() {
        let mut s = Summary::new();
        s.delivered = 98;
        s.invalidated = 1;
        s.record_failure("BadDeviceToken");
        for ms in 1..=100 {
            s.record_latency(Duration::from_millis(ms));
        }
        assert_eq!(s.finished(), 100);
        let p50 = s.latency_percentile(50.0);
        assert!(
            p50 >= Duration::from_millis(49) && p50 <= Duration::from_millis(51),
            "{p50:?}"
        );
        let table = s.table(Duration::from_secs(2));
        assert!(table.contains("| delivered"), "{table}");
        assert!(table.contains("failed: BadDeviceToken"), "{table}");
        assert!(table.contains("50 pushes/s"), "{table}");
    }
}
