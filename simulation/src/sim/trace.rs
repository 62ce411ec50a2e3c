//! The run's trace: one line per event (`sim time, host, event`), its hash, and the first
//! divergence between two traces.
//!
//! Every line is written from simulated state only (sim time, host names, push ids drawn
//! from seeded generators), so the same seed gives the same lines in the same order.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use sha2::{Digest, Sha256};

/// The event lines of one run. Cloning gives another handle to the same trace.
#[derive(Clone, Default)]
pub struct Trace(Arc<Mutex<Vec<String>>>);

impl fmt::Debug for Trace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Trace")
            .field("lines", &self.lock().len())
            .finish()
    }
}

impl Trace {
    /// Record `event` on `host` at the current simulated time (zero outside a simulation).
    pub fn record(&self, host: &str, event: impl fmt::Display) {
        self.record_at(turmoil::sim_elapsed().unwrap_or_default(), host, event);
    }

    /// Record `event` on `host` at simulated time `at`.
    pub fn record_at(&self, at: Duration, host: &str, event: impl fmt::Display) {
        let line = format!(
            "{:>6}.{:03} {host} {event}",
            at.as_secs(),
            at.subsec_millis()
        );
        self.lock().push(line);
    }

    /// A copy of every line so far.
    pub fn lines(&self) -> Vec<String> {
        self.lock().clone()
    }

    /// How many lines so far.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True if nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    fn lock(&self) -> MutexGuard<'_, Vec<String>> {
        // Lines are pushed whole; a poisoned lock still holds complete lines.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The hash of a trace: SHA-256 over its lines (each followed by `\n`), first 16 hex digits.
pub fn trace_hash(lines: &[String]) -> String {
    let mut hasher = Sha256::new();
    for line in lines {
        hasher.update(line.as_bytes());
        hasher.update(b"\n");
    }
    hex::encode(&hasher.finalize()[..8])
}

/// Where two traces first differ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Divergence {
    /// The 0-based line number of the first difference.
    pub line: usize,
    /// That line in the first trace (`None`: the first trace ended).
    pub left: Option<String>,
    /// That line in the second trace (`None`: the second trace ended).
    pub right: Option<String>,
}

impl fmt::Display for Divergence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |l: &Option<String>| l.clone().unwrap_or_else(|| "<end of trace>".into());
        write!(
            f,
            "first divergence at line {}:\n- {}\n+ {}",
            self.line + 1,
            show(&self.left),
            show(&self.right)
        )
    }
}

/// The first line where `left` and `right` differ, or `None` if they are equal.
pub fn first_divergence(left: &[String], right: &[String]) -> Option<Divergence> {
    let common = left.len().min(right.len());
    let line = (0..common)
        .find(|&i| left[i] != right[i])
        .or((left.len() != right.len()).then_some(common))?;
    Some(Divergence {
        line,
        left: left.get(line).cloned(),
        right: right.get(line).cloned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn divergence_finds_the_first_differing_line() {
        let a: Vec<String> = ["x", "y", "z"].map(String::from).to_vec();
        let mut b = a.clone();
        assert_eq!(first_divergence(&a, &b), None);
        b[1] = "q".into();
        let d = first_divergence(&a, &b).unwrap();
        assert_eq!((d.line, d.left.as_deref()), (1, Some("y")));
        b.truncate(1);
        let d = first_divergence(&a, &b).unwrap();
        assert_eq!((d.line, d.right), (1, None));
        assert_ne!(trace_hash(&a), trace_hash(&b));
    }
}
