//! The invariants, checked while the run goes (Raft safety, shard-map epochs, sends after
//! invalidation) and after it (no accepted push lost, liveness).
//!
//! Hosts report what they see into [`Observations`] (kept outside the hosts, so it survives
//! crashes); every check names the push, node, term or index it is about.
//!
//! | invariant | checked |
//! |---|---|
//! | no accepted push lost: each ends delivered (and the emulator's record has it), failed with a reason, unregistered, coalesced or expired | end |
//! | no send to a token after its invalidation was applied on the sending node | on every outcome |
//! | one leader per term | on every observed leadership |
//! | replicas agree at equal applied index (hash of the applied state machine) | on every inspection |
//! | at most one owner map per (region, epoch) in applied shard maps | on every inspection |
//! | liveness: after the faults heal, one leader, converged state and an empty backlog within the bound | end |

use std::collections::{BTreeMap, BTreeSet};

/// A push a node acknowledged to the workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptedPush {
    /// The accepting node.
    pub node: String,
    /// The node's incarnation (boot number) that accepted it.
    pub boot: u64,
    /// The device token.
    pub token: String,
    /// Simulated time the workload's call began (ms): a lower bound on any dispatch of the
    /// push. (The acknowledgement can come later than a dispatch: a batch is answered when
    /// every shard's WAL append finished, and one shard may already have sent its part.)
    pub requested_ms: u64,
    /// Simulated time of the acknowledgement (ms).
    pub accepted_ms: u64,
}

/// An outcome a node reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedOutcome {
    /// The reporting node.
    pub node: String,
    /// Its incarnation.
    pub boot: u64,
    /// The outcome label (`delivered`, `failed`, ...).
    pub label: String,
    /// The reason label (empty when none).
    pub reason: String,
    /// Sends that reached (or may have reached) APNs.
    pub attempts: u32,
    /// Simulated time it was observed (ms).
    pub at_ms: u64,
}

/// The latest inspection of one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    /// Its incarnation.
    pub boot: u64,
    /// Applied index.
    pub applied_index: u64,
    /// Hash of the applied state machine.
    pub digest: String,
    /// The leader it knows.
    pub leader: Option<u64>,
    /// Its term.
    pub term: u64,
}

/// Everything hosts report, and the violations found so far.
#[derive(Debug, Default)]
pub struct Observations {
    /// Acknowledged pushes by push id.
    pub accepted: BTreeMap<u128, AcceptedPush>,
    /// Final outcomes by push id (the first reported).
    pub outcomes: BTreeMap<u128, ObservedOutcome>,
    /// Pushes whose outcome the accepting node's router knows (what `GET /v1/pushes/{id}`
    /// on that node answers from).
    pub known_at_origin: BTreeSet<u128>,
    /// (node, boot, token) → when the node was first seen with the token invalidated (ms).
    pub invalidation_seen: BTreeMap<(String, u64, String), u64>,
    /// Term → the nodes seen leading it.
    pub leaders: BTreeMap<u64, BTreeSet<u64>>,
    /// Applied index → (digest, first node seen there).
    pub applied: BTreeMap<u64, (String, String)>,
    /// Node → the highest applied index it ever reported (over all its incarnations).
    pub applied_max: BTreeMap<String, u64>,
    /// (region, epoch) → owners (node ids), as first seen applied.
    pub epochs: BTreeMap<(String, u64), Vec<u64>>,
    /// The latest inspection per node.
    pub views: BTreeMap<String, NodeView>,
    /// "Sometimes" counters: fault kinds fired and code paths reached.
    pub coverage: BTreeMap<String, u64>,
    /// Violations, in the order found.
    pub violations: Vec<String>,
}

impl Observations {
    /// Count a coverage label.
    pub fn reached(&mut self, label: impl Into<String>) {
        *self.coverage.entry(label.into()).or_default() += 1;
    }

    fn violation(&mut self, text: String) {
        // Bounded and without repeats: the first few violations tell the story.
        if self.violations.len() < 32 && !self.violations.contains(&text) {
            self.violations.push(text);
        }
    }

    /// A node reports it leads `term`.
    pub fn leader(&mut self, term: u64, node: u64) {
        let leaders = self.leaders.entry(term).or_default();
        leaders.insert(node);
        if leaders.len() > 1 {
            let all = leaders.clone();
            self.violation(format!("raft: two leaders in term {term}: {all:?}"));
        }
    }

    /// A node reports its applied state.
    pub fn inspected(
        &mut self,
        node: &str,
        view: NodeView,
        shard_maps: &[(String, u64, Vec<u64>)],
    ) {
        // Committed entries are never lost: a node, restarted or not, never reports less
        // than it had applied (it re-applies its durable log before it answers).
        let highest = self.applied_max.entry(node.to_owned()).or_default();
        if view.applied_index < *highest {
            let text = format!(
                "raft: {node} went back from applied index {highest} to {} (boot {})",
                view.applied_index, view.boot
            );
            self.violation(text);
        } else {
            *highest = view.applied_index;
        }
        match self.applied.get(&view.applied_index) {
            Some((digest, first)) if *digest != view.digest => {
                let text = format!(
                    "raft: replicas disagree at applied index {}: {first} has {digest}, {node} has {}",
                    view.applied_index, view.digest
                );
                self.violation(text);
            }
            Some(_) => {}
            None => {
                self.applied
                    .insert(view.applied_index, (view.digest.clone(), node.to_owned()));
            }
        }
        for (region, epoch, owners) in shard_maps {
            let key = (region.clone(), *epoch);
            match self.epochs.get(&key) {
                Some(seen) if seen != owners => {
                    let text = format!(
                        "shard map: two owner maps for region {region} epoch {epoch} (seen on {node})"
                    );
                    self.violation(text);
                }
                Some(_) => {}
                None => {
                    self.epochs.insert(key, owners.clone());
                }
            }
        }
        self.views.insert(node.to_owned(), view);
    }

    /// A node reports an outcome; checks the send-after-invalidation rule.
    pub fn outcome(&mut self, push: u128, outcome: ObservedOutcome) {
        self.reached(format!("outcome:{}", outcome.label));
        if self
            .accepted
            .get(&push)
            .is_some_and(|accepted| accepted.node != outcome.node)
        {
            // Accepted on one node, finished by another: the push was forwarded to its
            // shard's owner (or the owner changed and it was re-sent).
            self.reached("routing:finished_elsewhere");
        }
        // The sender is the node (and incarnation) reporting the send: the accepting node, or
        // the shard's owner it forwarded the push to, or a later incarnation replaying its
        // WAL. Each dispatches after the request began, so a request that began after the
        // sender was seen with the invalidation applied must not be sent.
        if let Some(accepted) = self.accepted.get(&push).cloned()
            && outcome.attempts > 0
            && let Some(&seen) = self.invalidation_seen.get(&(
                outcome.node.clone(),
                outcome.boot,
                accepted.token.clone(),
            ))
            && accepted.requested_ms > seen
        {
            let text = format!(
                "sent after invalidation: push {} to token {} requested of {} at {} ms, \
                 its invalidation applied on the sender {} by {seen} ms, yet sent ({} attempts, \
                 outcome {})",
                uuid_text(push),
                accepted.token,
                accepted.node,
                accepted.requested_ms,
                outcome.node,
                outcome.attempts,
                outcome.label
            );
            self.violation(text);
        }
        self.outcomes.entry(push).or_insert(outcome);
    }

    /// End-of-run checks: every accepted push has an outcome, and a delivered one is in
    /// the emulator's record (`delivered_ids`: lowercase apns-ids the emulator accepted).
    pub fn check_no_loss(&mut self, delivered_ids: &BTreeSet<String>) {
        let mut missing = vec![];
        let mut phantom = vec![];
        for (id, accepted) in &self.accepted {
            match self.outcomes.get(id) {
                None => missing.push(format!(
                    "{} (accepted by {})",
                    uuid_text(*id),
                    accepted.node
                )),
                Some(o) if o.label == "delivered" && !delivered_ids.contains(&uuid_text(*id)) => {
                    phantom.push(uuid_text(*id));
                }
                Some(_) => {}
            }
        }
        if !missing.is_empty() {
            let text = format!(
                "lost: {} accepted pushes never got an outcome, e.g. {}",
                missing.len(),
                missing[..missing.len().min(3)].join(", ")
            );
            self.violation(text);
        }
        if !phantom.is_empty() {
            let text = format!(
                "lost: {} pushes reported delivered are not in the emulator's record, e.g. {}",
                phantom.len(),
                phantom[..phantom.len().min(3)].join(", ")
            );
            self.violation(text);
        }
    }

    /// Whether the cluster has converged: every node inspected at the same applied index
    /// and digest, all knowing the same leader, and every accepted push has an outcome.
    pub fn converged(&self, nodes: &[String]) -> Result<(), String> {
        let views: Vec<&NodeView> = nodes.iter().filter_map(|n| self.views.get(n)).collect();
        if views.len() != nodes.len() {
            return Err("not every node has reported".into());
        }
        let first = views[0];
        if first.leader.is_none() {
            return Err("no leader".into());
        }
        for v in &views {
            if v.leader != first.leader
                || v.applied_index != first.applied_index
                || v.digest != first.digest
            {
                return Err(format!(
                    "replicas differ: leaders {:?}, applied {:?}",
                    views.iter().map(|v| v.leader).collect::<Vec<_>>(),
                    views.iter().map(|v| v.applied_index).collect::<Vec<_>>()
                ));
            }
        }
        let backlog = self
            .accepted
            .keys()
            .filter(|id| !self.outcomes.contains_key(id))
            .count();
        if backlog > 0 {
            return Err(format!("{backlog} accepted pushes without an outcome"));
        }
        // The node that accepted a push learns its outcome (from its engine, the owner's
        // relay, or by asking the owner) — unless that incarnation is gone (it tracked the
        // forwarded pushes in memory). A restarted owner still answers: outcomes are kept in
        // the WAL's done markers.
        let alive = |node: &str, boot: u64| self.views.get(node).is_some_and(|v| v.boot == boot);
        let unknown = self
            .accepted
            .iter()
            .filter(|(id, a)| {
                alive(&a.node, a.boot)
                    && self.outcomes.contains_key(id)
                    && !self.known_at_origin.contains(id)
            })
            .count();
        if unknown > 0 {
            return Err(format!(
                "{unknown} outcomes not yet known at the node that accepted the push"
            ));
        }
        Ok(())
    }

    /// Record a liveness failure.
    pub fn not_live(&mut self, why: String) {
        self.violation(format!(
            "liveness: not converged after the faults healed: {why}"
        ));
    }
}

/// A push id as the emulator records it (`apns-id`: lowercase hyphenated UUID).
pub fn uuid_text(id: u128) -> String {
    herald_actors::PushId::from_u128(id)
        .to_string()
        .to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(index: u64, digest: &str) -> NodeView {
        NodeView {
            boot: 0,
            applied_index: index,
            digest: digest.into(),
            leader: Some(1),
            term: 1,
        }
    }

    #[test]
    fn each_check_can_fail() {
        let mut obs = Observations::default();
        obs.leader(3, 1);
        obs.leader(3, 1);
        assert!(obs.violations.is_empty());
        obs.leader(3, 2);
        assert_eq!(obs.violations.len(), 1);

        let map = |owners: Vec<u64>| vec![("eu".to_owned(), 2, owners)];
        obs.inspected("n1", view(5, "aa"), &map(vec![1, 2]));
        obs.inspected("n2", view(5, "aa"), &map(vec![1, 2]));
        assert_eq!(obs.violations.len(), 1);
        obs.inspected("n3", view(5, "bb"), &map(vec![2, 2]));
        assert_eq!(obs.violations.len(), 3);
        obs.inspected("n1", view(4, "cc"), &map(vec![1, 2]));
        assert_eq!(obs.violations.len(), 4, "n1 went back from 5 to 4");
        obs.inspected("n1", view(6, "dd"), &map(vec![1, 2]));
        assert_eq!(obs.violations.len(), 4);

        obs.accepted.insert(
            7,
            AcceptedPush {
                node: "n1".into(),
                boot: 0,
                token: "ab".into(),
                requested_ms: 90,
                accepted_ms: 100,
            },
        );
        obs.invalidation_seen
            .insert(("n1".into(), 0, "ab".into()), 50);
        let outcome = ObservedOutcome {
            node: "n1".into(),
            boot: 0,
            label: "unregistered".into(),
            reason: String::new(),
            attempts: 1,
            at_ms: 120,
        };
        obs.outcome(7, outcome);
        assert_eq!(obs.violations.len(), 5);

        obs.accepted.insert(
            8,
            AcceptedPush {
                node: "n2".into(),
                boot: 0,
                token: "cd".into(),
                requested_ms: 90,
                accepted_ms: 100,
            },
        );
        obs.check_no_loss(&BTreeSet::new());
        assert_eq!(obs.violations.len(), 6);
        assert!(obs.converged(&["n1".into(), "n2".into()]).is_err());
    }
}
