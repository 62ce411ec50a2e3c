//! Proposal forwarding: a follower hands a local caller's proposal to the leader it knows.
//!
//! ```text
//!  follower                                          leader
//!  Propose(cmd) ─ ProposeForward{request_id, bytes} ─▶ propose(cmd, context = [id|origin|request_id])
//!     ▲                                                   │ (refused: ProposeAnswer{error})
//!     └─ applies the entry here; its context names ◀──────┘ Raft replication
//!        (this node, request_id): answer with the local ApplyResult
//! ```
//!
//! The follower answers its caller when **it** applies the entry, with the result it
//! computed itself (every replica computes the same), so a caller reads its own write on the
//! node it called. The leader's `ProposeAnswer` matters only when it did not propose:
//! `NotLeader` (retried once against the leader it names), `Invalid`, `Overloaded`, ... . A
//! leader change while waiting re-sends once to the new leader (the same `request_id`: if
//! both copies commit, the first one applied answers; commands are idempotent or
//! epoch-checked). Forwards are bounded ([`FORWARDED_PROPOSALS_MAX`]) and time out after
//! [`FORWARDED_PROPOSAL_TIMEOUT`], counted in ticks (no clock read).

use std::collections::BTreeMap;
use std::time::Duration;

use crate::node::{ProposeError, ProposeReply};
use crate::state::{ApplyResult, Command};
use crate::transport::{PeerLinkSender, PeerMessage, ProposalAnswer};

use super::{FORWARDED_PROPOSAL_TIMEOUT, FORWARDED_PROPOSALS_MAX};

/// Bytes of the context of a forwarded proposal: proposer's id, origin node, request id.
const FORWARDED_CONTEXT_BYTES: usize = 24;

/// True for the messages the router handles (forwarded pushes, acks, outcomes); the node's
/// inbound dispatch sends these to the router instead of the cluster actor.
pub(crate) fn is_routing_message(message: &PeerMessage) -> bool {
    matches!(
        message,
        PeerMessage::ForwardPush { .. }
            | PeerMessage::ForwardBatch { .. }
            | PeerMessage::AckBatch { .. }
            | PeerMessage::Ack { .. }
            | PeerMessage::Outcome { .. }
            | PeerMessage::OutcomeQuery { .. }
    )
}

/// A follower's proposals in flight to the leader.
#[derive(Debug)]
pub(crate) struct ProposalForwards {
    local: u64,
    next_request: u64,
    now_tick: u64,
    timeout_ticks: u64,
    pending: BTreeMap<u64, Forwarded>,
}

#[derive(Debug)]
struct Forwarded {
    command: Command,
    bytes: Vec<u8>,
    reply: ProposeReply,
    leader: u64,
    deadline_tick: u64,
    resent: bool,
}

/// What the actor must do after a forward event.
#[derive(Debug)]
pub(crate) enum Next {
    /// Nothing more.
    Done,
    /// This node is now the leader: propose the command locally.
    ProposeHere(Command, ProposeReply),
}

impl ProposalForwards {
    pub(crate) fn new(local: u64, tick: Duration) -> Self {
        let tick_ms = tick.as_millis().max(1);
        let timeout_ticks = FORWARDED_PROPOSAL_TIMEOUT.as_millis().div_ceil(tick_ms);
        ProposalForwards {
            local,
            next_request: 0,
            now_tick: 0,
            timeout_ticks: u64::try_from(timeout_ticks).unwrap_or(u64::MAX).max(1),
            pending: BTreeMap::new(),
        }
    }

    /// Forward `command` to `leader`. Answers the caller itself on every failure.
    pub(crate) fn forward(
        &mut self,
        command: Command,
        reply: ProposeReply,
        leader: u64,
        peers: &BTreeMap<u64, PeerLinkSender>,
    ) {
        if self.pending.len() >= FORWARDED_PROPOSALS_MAX {
            metrics::counter!("herald_cluster_proposal_forward_failures_total", "reason" => "overloaded").increment(1);
            let _ = reply.send(Err(ProposeError::Overloaded));
            return;
        }
        let bytes = match crate::state::encode(&command) {
            Ok(bytes) => bytes,
            Err(e) => {
                let _ = reply.send(Err(ProposeError::Invalid(e)));
                return;
            }
        };
        let request_id = self.next_request;
        self.next_request += 1;
        let forwarded = Forwarded {
            command,
            bytes,
            reply,
            leader,
            deadline_tick: self.now_tick + self.timeout_ticks,
            resent: false,
        };
        if let Some(forwarded) = self.send(request_id, forwarded, peers) {
            self.pending.insert(request_id, forwarded);
        }
    }

    /// Send one forward to its leader; `None` if it failed (and was answered).
    fn send(
        &self,
        request_id: u64,
        forwarded: Forwarded,
        peers: &BTreeMap<u64, PeerLinkSender>,
    ) -> Option<Forwarded> {
        let message = PeerMessage::ProposeForward {
            request_id,
            command: forwarded.bytes.clone(),
        };
        match peers
            .get(&forwarded.leader)
            .map(|link| link.try_send(message))
        {
            Some(Ok(())) => {
                metrics::counter!("herald_cluster_proposals_forwarded_total").increment(1);
                Some(forwarded)
            }
            failed => {
                metrics::counter!("herald_cluster_proposal_forward_failures_total", "reason" => "unreachable").increment(1);
                tracing::debug!(leader = forwarded.leader, error = ?failed, "proposal not forwarded");
                let _ = forwarded.reply.send(Err(ProposeError::LeaderUnreachable {
                    leader: forwarded.leader,
                }));
                None
            }
        }
    }

    /// The leader's answer to forward `request_id` (from the authenticated `from`).
    pub(crate) fn on_answer(
        &mut self,
        from: u64,
        request_id: u64,
        answer: ProposalAnswer,
        leader_now: Option<u64>,
        peers: &BTreeMap<u64, PeerLinkSender>,
    ) -> Next {
        let Some(forwarded) = self.pending.get(&request_id) else {
            return Next::Done;
        };
        if forwarded.leader != from {
            return Next::Done;
        }
        let error = match answer {
            // Wait for the entry to be applied here.
            ProposalAnswer::Applied => return Next::Done,
            ProposalAnswer::NotLeader { leader } => {
                let target = leader.or(leader_now).filter(|&l| l != from);
                match target {
                    Some(target) if !forwarded.resent => {
                        return self.resend(request_id, target, peers);
                    }
                    _ => ProposeError::NotLeader { leader: target },
                }
            }
            ProposalAnswer::LeadershipLost => ProposeError::LeadershipLost,
            ProposalAnswer::Invalid(text) | ProposalAnswer::Refused(text) => {
                ProposeError::Refused(text)
            }
            ProposalAnswer::Overloaded => ProposeError::Overloaded,
        };
        if let Some(forwarded) = self.pending.remove(&request_id) {
            metrics::counter!("herald_cluster_proposal_forward_failures_total", "reason" => "refused").increment(1);
            let _ = forwarded.reply.send(Err(error));
        }
        Next::Done
    }

    /// Re-send `request_id` once to `target` (or hand it back if `target` is this node).
    fn resend(
        &mut self,
        request_id: u64,
        target: u64,
        peers: &BTreeMap<u64, PeerLinkSender>,
    ) -> Next {
        let Some(mut forwarded) = self.pending.remove(&request_id) else {
            return Next::Done;
        };
        metrics::counter!("herald_cluster_proposal_forward_resends_total").increment(1);
        if target == self.local {
            return Next::ProposeHere(forwarded.command, forwarded.reply);
        }
        forwarded.leader = target;
        forwarded.resent = true;
        if let Some(forwarded) = self.send(request_id, forwarded, peers) {
            self.pending.insert(request_id, forwarded);
        }
        Next::Done
    }

    /// The leader is now `leader`: forwards sent to another leader are re-sent once, or
    /// answered `LeadershipLost` if they already were.
    pub(crate) fn on_leader(
        &mut self,
        leader: Option<u64>,
        peers: &BTreeMap<u64, PeerLinkSender>,
    ) -> Vec<Next> {
        let Some(leader) = leader else {
            return vec![];
        };
        let moved: Vec<(u64, bool)> = self
            .pending
            .iter()
            .filter(|(_, f)| f.leader != leader)
            .map(|(&id, f)| (id, f.resent))
            .collect();
        let mut next = vec![];
        for (request_id, resent) in moved {
            if resent {
                if let Some(forwarded) = self.pending.remove(&request_id) {
                    let _ = forwarded.reply.send(Err(ProposeError::LeadershipLost));
                }
            } else {
                next.push(self.resend(request_id, leader, peers));
            }
        }
        next
    }

    /// An entry was applied here: answer the forward it carries, if it is this node's.
    pub(crate) fn on_applied(&mut self, context: &[u8], data: &[u8], result: &ApplyResult) {
        let Some((origin, request_id)) = forwarded_origin(context) else {
            return;
        };
        if origin != self.local {
            return;
        }
        // The same request id may be reused after a restart: the bytes must match too.
        if self
            .pending
            .get(&request_id)
            .is_some_and(|forwarded| forwarded.bytes == data)
            && let Some(forwarded) = self.pending.remove(&request_id)
        {
            let _ = forwarded.reply.send(Ok(result.clone()));
        }
    }

    /// One tick passed: answer forwards past their deadline.
    pub(crate) fn on_tick(&mut self) {
        self.now_tick += 1;
        let now = self.now_tick;
        let expired: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, f)| f.deadline_tick <= now)
            .map(|(&id, _)| id)
            .collect();
        for request_id in expired {
            if let Some(forwarded) = self.pending.remove(&request_id) {
                metrics::counter!("herald_cluster_proposal_forward_failures_total", "reason" => "timeout").increment(1);
                let _ = forwarded.reply.send(Err(ProposeError::Timeout));
            }
        }
    }

    /// Answer every forward with `error` (the node stops).
    pub(crate) fn fail_all(&mut self, error: &ProposeError) {
        for (_, forwarded) in std::mem::take(&mut self.pending) {
            let _ = forwarded.reply.send(Err(error.clone()));
        }
    }

    /// Forwards in flight.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.pending.len()
    }
}

/// The Raft entry context of a proposal: the proposer's own id, and for a forwarded one the
/// origin node and its request id.
pub(crate) fn proposal_context(proposal: u64, origin: Option<(u64, u64)>) -> Vec<u8> {
    let mut context = proposal.to_be_bytes().to_vec();
    if let Some((node, request_id)) = origin {
        context.extend_from_slice(&node.to_be_bytes());
        context.extend_from_slice(&request_id.to_be_bytes());
    }
    context
}

/// The proposer's id in an entry context. Contexts of other lengths (the membership planner's
/// `herald/membership`, for one) are not client proposals.
pub(crate) fn proposal_id(context: &[u8]) -> Option<u64> {
    if context.len() != 8 && context.len() != FORWARDED_CONTEXT_BYTES {
        return None;
    }
    Some(u64::from_be_bytes(context.get(..8)?.try_into().ok()?))
}

fn forwarded_origin(context: &[u8]) -> Option<(u64, u64)> {
    if context.len() != FORWARDED_CONTEXT_BYTES {
        return None;
    }
    let node = u64::from_be_bytes(context.get(8..16)?.try_into().ok()?);
    let request_id = u64::from_be_bytes(context.get(16..24)?.try_into().ok()?);
    Some((node, request_id))
}

/// On the leader: send the outcome of a forwarded proposal back to `inbound_from` once
/// `answer` resolves (the task ends when the proposal is answered or the node stops).
pub(crate) fn answer_forwarded(
    link: Option<PeerLinkSender>,
    request_id: u64,
    answer: tokio::sync::oneshot::Receiver<Result<ApplyResult, ProposeError>>,
) {
    let Some(link) = link else {
        tracing::warn!(request_id, "forwarded proposal from a node without a link");
        return;
    };
    tokio::spawn(async move {
        let result = match answer.await {
            Ok(Ok(_)) => ProposalAnswer::Applied,
            Ok(Err(error)) => to_answer(error),
            Err(_) => ProposalAnswer::Refused("leader stopped".to_owned()),
        };
        if let Err(e) = link.try_send(PeerMessage::ProposeAnswer { request_id, result }) {
            tracing::debug!(to = link.peer().0, error = %e, "proposal answer not sent");
        }
    });
}

fn to_answer(error: ProposeError) -> ProposalAnswer {
    match error {
        ProposeError::NotLeader { leader } => ProposalAnswer::NotLeader { leader },
        ProposeError::LeadershipLost => ProposalAnswer::LeadershipLost,
        ProposeError::Invalid(e) => ProposalAnswer::Invalid(e.to_string()),
        ProposeError::Overloaded => ProposalAnswer::Overloaded,
        other => ProposalAnswer::Refused(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use herald_actors::seams::{DetRng, TcpConnector};

    use super::*;
    use crate::transport::{ClusterId, LinkSecurity, NodeId, PeerLinkArguments, PeerLinkConfig};

    #[test]
    fn contexts_carry_the_proposer_and_the_origin() {
        assert_eq!(proposal_id(&proposal_context(7, None)), Some(7));
        let forwarded = proposal_context(7, Some((3, 42)));
        assert_eq!(proposal_id(&forwarded), Some(7));
        assert_eq!(forwarded_origin(&forwarded), Some((3, 42)));
        assert_eq!(forwarded_origin(&proposal_context(7, None)), None);
        assert_eq!(proposal_id(b"abc"), None);
    }

    /// Link senders to `peers` whose actors never run: sends queue up and succeed.
    fn links(peers: &[u64]) -> (BTreeMap<u64, PeerLinkSender>, Vec<PeerLinkArguments>) {
        let mut senders = BTreeMap::new();
        let mut arguments = vec![];
        for &peer in peers {
            let (args, sender) = PeerLinkArguments::new(PeerLinkConfig::new(
                NodeId(1),
                NodeId(peer),
                ClusterId(1),
                "127.0.0.1",
                1,
                LinkSecurity::Plaintext,
                Arc::new(TcpConnector),
                DetRng::from_seed(peer),
            ));
            senders.insert(peer, sender);
            arguments.push(args);
        }
        (senders, arguments)
    }

    fn command() -> Command {
        Command::RemoveTenant { tenant: "t".into() }
    }

    #[tokio::test]
    async fn not_leader_is_retried_once_then_answered() {
        let (peers, _keep) = links(&[2, 3]);
        let mut forwards = ProposalForwards::new(1, Duration::from_secs(1));
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        forwards.forward(command(), tx.into(), 2, &peers);
        assert_eq!(forwards.len(), 1);
        // Node 2 names node 3: re-sent there once.
        let answer = ProposalAnswer::NotLeader { leader: Some(3) };
        assert!(matches!(
            forwards.on_answer(2, 0, answer.clone(), None, &peers),
            Next::Done
        ));
        assert_eq!(forwards.len(), 1);
        assert!(rx.try_recv().is_err());
        // An answer from a node the forward is no longer at is ignored.
        forwards.on_answer(2, 0, answer, None, &peers);
        assert_eq!(forwards.len(), 1);
        // Node 3 says it is not the leader either: answered.
        let answer = ProposalAnswer::NotLeader { leader: Some(2) };
        forwards.on_answer(3, 0, answer, None, &peers);
        assert_eq!(forwards.len(), 0);
        assert_eq!(
            rx.await.unwrap(),
            Err(ProposeError::NotLeader { leader: Some(2) })
        );
    }

    #[tokio::test]
    async fn applied_here_answers_with_the_local_result_and_leader_changes_resend() {
        let (peers, _keep) = links(&[2, 3]);
        let mut forwards = ProposalForwards::new(1, Duration::from_secs(1));
        let (tx, rx) = tokio::sync::oneshot::channel();
        forwards.forward(command(), tx.into(), 2, &peers);
        // The leader moves to 3: re-sent; it moves again: outcome unknown.
        assert!(forwards.on_leader(Some(3), &peers).len() == 1);
        assert_eq!(forwards.len(), 1);
        forwards.on_leader(Some(2), &peers);
        assert_eq!(rx.await.unwrap(), Err(ProposeError::LeadershipLost));

        let (tx, rx) = tokio::sync::oneshot::channel();
        forwards.forward(command(), tx.into(), 2, &peers);
        let bytes = crate::state::encode(&command()).unwrap();
        // Another node's request 1, or other bytes under this node's id: not ours.
        forwards.on_applied(
            &proposal_context(9, Some((4, 1))),
            &bytes,
            &ApplyResult::Applied,
        );
        forwards.on_applied(
            &proposal_context(9, Some((1, 1))),
            b"other",
            &ApplyResult::Applied,
        );
        assert_eq!(forwards.len(), 1);
        forwards.on_applied(
            &proposal_context(9, Some((1, 1))),
            &bytes,
            &ApplyResult::Unchanged,
        );
        assert_eq!(rx.await.unwrap(), Ok(ApplyResult::Unchanged));

        // Becoming the leader hands the command back to be proposed here.
        let (tx, _rx) = tokio::sync::oneshot::channel();
        forwards.forward(command(), tx.into(), 2, &peers);
        let next = forwards.on_leader(Some(1), &peers);
        assert!(matches!(next.as_slice(), [Next::ProposeHere(c, _)] if *c == command()));
        assert_eq!(forwards.len(), 0);
    }

    #[tokio::test]
    async fn forwards_time_out_in_ticks() {
        let (peers, _keep) = links(&[2]);
        // 10 s of 1 s ticks.
        let mut forwards = ProposalForwards::new(1, Duration::from_secs(1));
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        forwards.forward(command(), tx.into(), 2, &peers);
        for _ in 0..9 {
            forwards.on_tick();
        }
        assert!(rx.try_recv().is_err());
        forwards.on_tick();
        assert_eq!(rx.await.unwrap(), Err(ProposeError::Timeout));
    }

    #[tokio::test]
    async fn a_forward_without_a_link_is_answered_unreachable() {
        let mut forwards = ProposalForwards::new(1, Duration::from_secs(1));
        let (tx, rx) = tokio::sync::oneshot::channel();
        let command = Command::RemoveTenant { tenant: "t".into() };
        forwards.forward(command.clone(), tx.into(), 2, &BTreeMap::new());
        assert_eq!(
            rx.await.unwrap(),
            Err(ProposeError::LeaderUnreachable { leader: 2 })
        );
        assert_eq!(forwards.len(), 0);
    }
}
