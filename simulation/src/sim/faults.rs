//! Faults, swarm style: each run enables a random subset of fault kinds with random
//! parameters, all drawn from the run's seed, and schedules them over the active phase.
//!
//! | fault | how |
//! |---|---|
//! | partition (two-way) | `Sim::partition(a, b)`, healed later |
//! | one-way partition | `Sim::partition_oneway(from, to)` |
//! | cut links one by one, heal in random order | several partitions, then repairs shuffled |
//! | delay / drop | turmoil `fail_rate` and `max_message_latency` for a while |
//! | crash + restart | `Sim::crash` (software and memory gone, disk kept), then `Sim::bounce` |
//! | clock skew | the node's [`SimClock`](super::world::SimClock) moves by up to ± [`SKEW_MAX_MS`] |
//! | APNs 429/5xx bursts, GOAWAY, REFUSED_STREAM, slow streams | the emulator's [`FaultProfile`] for a while |
//! | duplicated / reordered peer messages | BUGGIFY points in the peer link's reader |
//! | 410 storm | healthy tokens become `Unregistered` at the emulator |
//! | provider key revoked and restored | every request answered 403 `InvalidProviderToken` for a while |
//!
//! Every fault that fires is counted under `fault:<kind>` in the run's coverage (the
//! "sometimes" counters a sweep checks).

use std::fmt;
use std::time::Duration;

use herald_actors::apns::Reason;
use herald_actors::seams::DetRng;

use crate::emulator::{Burst, FaultProfile, Latency};

/// Largest clock skew a node gets, in milliseconds (either direction).
pub const SKEW_MAX_MS: i64 = 5_000;
/// Most faults of one kind scheduled in a run.
pub const FAULTS_PER_KIND_MAX: u64 = 3;

/// Which fault kinds a run enables, and their parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct Swarm {
    /// Two-way partitions between nodes (and between a node and APNs or the client).
    pub partitions: bool,
    /// One-way partitions.
    pub one_way: bool,
    /// Links cut one by one, then healed in random order.
    pub link_cuts: bool,
    /// Message loss rate while the network is lossy (0 = off).
    pub fail_rate: f64,
    /// Largest message latency while the network is slow, in milliseconds (0 = off).
    pub slow_latency_ms: u64,
    /// Node crashes and restarts.
    pub crashes: bool,
    /// Clock skew.
    pub clock_skew: bool,
    /// APNs 429/500/503 rates and bursts.
    pub apns_errors: bool,
    /// APNs GOAWAY.
    pub goaway: bool,
    /// APNs REFUSED_STREAM.
    pub refused_stream: bool,
    /// Slow APNs streams: answers after up to tens of seconds (request timeouts, retries).
    pub slow_apns: bool,
    /// 410 storms.
    pub storm_410: bool,
    /// The provider key revoked and restored.
    pub key_revoked: bool,
}

impl Swarm {
    /// Draw a swarm: each kind on with probability one half.
    pub fn draw(rng: &mut DetRng) -> Swarm {
        let mut on = || rng.chance(0.5);
        let (partitions, one_way, link_cuts, lossy, slow) = (on(), on(), on(), on(), on());
        let (crashes, clock_skew, apns_errors, goaway, refused_stream) =
            (on(), on(), on(), on(), on());
        let (storm_410, key_revoked, slow_apns) = (on(), on(), on());
        Swarm {
            partitions,
            one_way,
            link_cuts,
            fail_rate: if lossy {
                0.01 + rng.below(5) as f64 / 100.0
            } else {
                0.0
            },
            slow_latency_ms: if slow { 20 + rng.below(200) } else { 0 },
            crashes,
            clock_skew,
            apns_errors,
            goaway,
            refused_stream,
            slow_apns,
            storm_410,
            key_revoked,
        }
    }

    /// No faults at all.
    pub fn none() -> Swarm {
        Swarm {
            partitions: false,
            one_way: false,
            link_cuts: false,
            fail_rate: 0.0,
            slow_latency_ms: 0,
            crashes: false,
            clock_skew: false,
            apns_errors: false,
            goaway: false,
            refused_stream: false,
            slow_apns: false,
            storm_410: false,
            key_revoked: false,
        }
    }
}

impl fmt::Display for Swarm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut on = vec![];
        let flags = [
            ("partitions", self.partitions),
            ("one_way", self.one_way),
            ("link_cuts", self.link_cuts),
            ("crashes", self.crashes),
            ("clock_skew", self.clock_skew),
            ("apns_errors", self.apns_errors),
            ("goaway", self.goaway),
            ("refused_stream", self.refused_stream),
            ("slow_apns", self.slow_apns),
            ("storm_410", self.storm_410),
            ("key_revoked", self.key_revoked),
        ];
        for (name, enabled) in flags {
            if enabled {
                on.push(name.to_owned());
            }
        }
        if self.fail_rate > 0.0 {
            on.push(format!("fail_rate={:.2}", self.fail_rate));
        }
        if self.slow_latency_ms > 0 {
            on.push(format!("slow_latency_ms={}", self.slow_latency_ms));
        }
        if on.is_empty() {
            f.write_str("none")
        } else {
            f.write_str(&on.join(","))
        }
    }
}

/// One fault action.
#[derive(Debug, Clone, PartialEq)]
pub enum FaultKind {
    /// Cut both directions between two hosts.
    Partition(String, String),
    /// Repair both directions between two hosts.
    Repair(String, String),
    /// Cut `from → to`.
    PartitionOneWay(String, String),
    /// Repair `from → to`.
    RepairOneWay(String, String),
    /// Set the network's message loss rate.
    FailRate(f64),
    /// Set the network's largest message latency (milliseconds).
    MaxLatency(u64),
    /// Crash a node (its disk survives).
    Crash(String),
    /// Restart a crashed node.
    Restart(String),
    /// Set a node's clock skew (milliseconds).
    Skew(String, i64),
    /// Replace the emulator's fault profile (the label names it in the trace).
    Apns(&'static str, FaultProfile),
    /// The emulator back to no faults.
    ApnsClear,
    /// These healthy tokens become `Unregistered` at the emulator.
    Storm410(Vec<String>),
}

impl FaultKind {
    /// The coverage label.
    pub fn label(&self) -> String {
        match self {
            FaultKind::Partition(..) => "fault:partition".into(),
            FaultKind::Repair(..) => "fault:repair".into(),
            FaultKind::PartitionOneWay(..) => "fault:partition_one_way".into(),
            FaultKind::RepairOneWay(..) => "fault:repair_one_way".into(),
            FaultKind::FailRate(_) => "fault:fail_rate".into(),
            FaultKind::MaxLatency(_) => "fault:latency".into(),
            FaultKind::Crash(_) => "fault:crash".into(),
            FaultKind::Restart(_) => "fault:restart".into(),
            FaultKind::Skew(..) => "fault:clock_skew".into(),
            FaultKind::Apns(name, _) => format!("fault:apns_{name}"),
            FaultKind::ApnsClear => "fault:apns_clear".into(),
            FaultKind::Storm410(_) => "fault:storm_410".into(),
        }
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FaultKind::Partition(a, b) => write!(f, "partition {a} <-> {b}"),
            FaultKind::Repair(a, b) => write!(f, "repair {a} <-> {b}"),
            FaultKind::PartitionOneWay(a, b) => write!(f, "partition {a} -> {b}"),
            FaultKind::RepairOneWay(a, b) => write!(f, "repair {a} -> {b}"),
            FaultKind::FailRate(r) => write!(f, "fail_rate {r:.2}"),
            FaultKind::MaxLatency(ms) => write!(f, "max_latency {ms}ms"),
            FaultKind::Crash(n) => write!(f, "crash {n}"),
            FaultKind::Restart(n) => write!(f, "restart {n}"),
            FaultKind::Skew(n, ms) => write!(f, "skew {n} {ms}ms"),
            FaultKind::Apns(name, _) => write!(f, "apns {name}"),
            FaultKind::ApnsClear => write!(f, "apns clear"),
            FaultKind::Storm410(tokens) => write!(f, "410 storm on {} tokens", tokens.len()),
        }
    }
}

/// A fault at a simulated time.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduledFault {
    /// When (simulated time since the start).
    pub at: Duration,
    /// What.
    pub kind: FaultKind,
}

/// What the scheduler may touch.
#[derive(Debug, Clone)]
pub struct Targets<'a> {
    /// Node host names.
    pub nodes: &'a [String],
    /// The emulator host.
    pub apns: &'a str,
    /// The workload host.
    pub client: &'a str,
    /// Tokens a 410 storm may turn `Unregistered` (never registered by the workload).
    pub storm_tokens: &'a [String],
}

/// Schedule the swarm's faults within `from..until`, ordered by time (ties keep draw order).
pub fn schedule(
    swarm: &Swarm,
    rng: &mut DetRng,
    targets: &Targets<'_>,
    from: Duration,
    until: Duration,
) -> Vec<ScheduledFault> {
    let mut out: Vec<ScheduledFault> = Vec::new();
    let span_ms = until.saturating_sub(from).as_millis().max(1) as u64;
    let nodes = targets.nodes;
    let at = |rng: &mut DetRng| from + Duration::from_millis(rng.below(span_ms));
    let dur = |rng: &mut DetRng, lo: u64, hi: u64| Duration::from_millis(lo + rng.below(hi - lo));
    let pick = |rng: &mut DetRng, v: &[String]| v[rng.below(v.len() as u64) as usize].clone();
    let mut push = |t: Duration, kind: FaultKind| out.push(ScheduledFault { at: t, kind });
    let count = |rng: &mut DetRng| 1 + rng.below(FAULTS_PER_KIND_MAX);

    // Any host a node talks to: another node, APNs, or the client.
    let mut peers: Vec<String> = nodes.to_vec();
    peers.push(targets.apns.to_owned());
    peers.push(targets.client.to_owned());
    let other = |rng: &mut DetRng, a: &str| loop {
        let b = pick(rng, &peers);
        if b != a {
            break b;
        }
    };

    if swarm.partitions {
        for _ in 0..count(rng) {
            let a = pick(rng, nodes);
            let b = other(rng, &a);
            let t = at(rng);
            let d = dur(rng, 500, 5_000);
            push(t, FaultKind::Partition(a.clone(), b.clone()));
            push(t + d, FaultKind::Repair(a, b));
        }
    }
    if swarm.one_way {
        for _ in 0..count(rng) {
            let a = pick(rng, nodes);
            let b = other(rng, &a);
            let (from_host, to_host) = if rng.chance(0.5) { (a, b) } else { (b, a) };
            let t = at(rng);
            let d = dur(rng, 500, 5_000);
            push(
                t,
                FaultKind::PartitionOneWay(from_host.clone(), to_host.clone()),
            );
            push(t + d, FaultKind::RepairOneWay(from_host, to_host));
        }
    }
    if swarm.link_cuts && nodes.len() > 1 {
        let mut pairs = vec![];
        for (i, a) in nodes.iter().enumerate() {
            for b in &nodes[i + 1..] {
                pairs.push((a.clone(), b.clone()));
            }
        }
        let cuts = 1 + rng.below(pairs.len() as u64) as usize;
        let mut t = at(rng);
        let mut cut = vec![];
        for _ in 0..cuts {
            let (a, b) = pairs.remove(rng.below(pairs.len() as u64) as usize);
            push(t, FaultKind::Partition(a.clone(), b.clone()));
            cut.push((a, b));
            t += dur(rng, 100, 1_000);
        }
        while !cut.is_empty() {
            let (a, b) = cut.remove(rng.below(cut.len() as u64) as usize);
            t += dur(rng, 100, 1_500);
            push(t, FaultKind::Repair(a, b));
        }
    }
    if swarm.fail_rate > 0.0 {
        let t = at(rng);
        push(t, FaultKind::FailRate(swarm.fail_rate));
        push(t + dur(rng, 1_000, 5_000), FaultKind::FailRate(0.0));
    }
    if swarm.slow_latency_ms > 0 {
        let t = at(rng);
        push(t, FaultKind::MaxLatency(swarm.slow_latency_ms));
        push(t + dur(rng, 1_000, 5_000), FaultKind::MaxLatency(0));
    }
    if swarm.crashes {
        // One crash at a time: each restart comes before the next crash.
        let mut t = at(rng);
        for _ in 0..count(rng) {
            let n = pick(rng, nodes);
            let d = dur(rng, 200, 4_000);
            push(t, FaultKind::Crash(n.clone()));
            push(t + d, FaultKind::Restart(n));
            t += d + dur(rng, 100, 3_000);
        }
    }
    if swarm.clock_skew {
        for _ in 0..count(rng) {
            let n = pick(rng, nodes);
            let ms = rng.below(2 * SKEW_MAX_MS as u64 + 1) as i64 - SKEW_MAX_MS;
            push(at(rng), FaultKind::Skew(n, ms));
        }
    }
    // APNs phases: one profile at a time (setting a profile replaces the previous one).
    let mut phases: Vec<(&'static str, FaultProfile)> = vec![];
    if swarm.apns_errors {
        let mut p = FaultProfile {
            too_many_requests_rate: rng.below(20) as f64 / 100.0,
            internal_server_error_rate: rng.below(20) as f64 / 100.0,
            service_unavailable_rate: rng.below(20) as f64 / 100.0,
            latency: Latency::Uniform {
                min_ms: 1,
                max_ms: 1 + rng.below(100),
            },
            ..FaultProfile::default()
        };
        let reason = [
            Reason::TooManyRequests,
            Reason::InternalServerError,
            Reason::ServiceUnavailable,
        ][rng.below(3) as usize];
        p.bursts.push(Burst {
            reason,
            requests: Some(5 + rng.below(50)),
            duration_ms: Some(200 + rng.below(2_000)),
        });
        phases.push(("errors", p));
    }
    if swarm.goaway {
        let mut p = FaultProfile::default();
        if rng.chance(0.5) {
            p.goaway_after_streams = Some(1 + rng.below(20));
        } else {
            p.goaway_every_ms = Some(100 + rng.below(1_000));
        }
        phases.push(("goaway", p));
    }
    if swarm.refused_stream {
        phases.push((
            "refused_stream",
            FaultProfile {
                refused_stream_rate: 0.05 + rng.below(30) as f64 / 100.0,
                ..FaultProfile::default()
            },
        ));
    }
    if swarm.slow_apns {
        // Some answers come after the engine's request timeout: the request is given up on
        // (and retried) while APNs may still deliver it.
        phases.push((
            "slow",
            FaultProfile {
                latency: Latency::Uniform {
                    min_ms: 100,
                    max_ms: 2_000 + rng.below(40_000),
                },
                ..FaultProfile::default()
            },
        ));
    }
    if swarm.key_revoked {
        phases.push((
            "key_revoked",
            FaultProfile {
                bursts: vec![Burst {
                    reason: Reason::InvalidProviderToken,
                    requests: None,
                    duration_ms: None,
                }],
                ..FaultProfile::default()
            },
        ));
    }
    if !phases.is_empty() {
        let slot = span_ms / phases.len() as u64;
        let mut t = from;
        while !phases.is_empty() {
            let (name, profile) = phases.remove(rng.below(phases.len() as u64) as usize);
            let start = t + Duration::from_millis(rng.below(slot / 2 + 1));
            let d = Duration::from_millis(slot / 4 + rng.below(slot / 4 + 1));
            push(start, FaultKind::Apns(name, profile));
            push(start + d, FaultKind::ApnsClear);
            t += Duration::from_millis(slot);
        }
    }
    if swarm.storm_410 && !targets.storm_tokens.is_empty() {
        let n = 1 + rng.below(targets.storm_tokens.len() as u64) as usize;
        push(
            at(rng),
            FaultKind::Storm410(targets.storm_tokens[..n].to_vec()),
        );
    }
    out.sort_by_key(|f| f.at);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_are_ordered_and_come_from_the_seed() {
        let nodes: Vec<String> = ["n1", "n2", "n3"].map(String::from).to_vec();
        let storm = vec!["aa".to_owned()];
        let targets = Targets {
            nodes: &nodes,
            apns: "apns",
            client: "client",
            storm_tokens: &storm,
        };
        let make = |seed| {
            let mut rng = DetRng::from_seed(seed);
            let swarm = Swarm::draw(&mut rng);
            let s = schedule(
                &swarm,
                &mut rng,
                &targets,
                Duration::from_secs(1),
                Duration::from_secs(10),
            );
            (swarm, s)
        };
        let (swarm, a) = make(3);
        assert_eq!(make(3), (swarm, a.clone()));
        assert!(a.windows(2).all(|w| w[0].at <= w[1].at));
        // Across seeds, every kind gets enabled somewhere.
        let all: Vec<Swarm> = (0..64).map(|s| make(s).0).collect();
        assert!(all.iter().any(|s| s.crashes) && all.iter().any(|s| !s.crashes));
    }
}
