//! The leader's membership planner: pure, deterministic, sans-IO.
//!
//! [`plan`] compares the replicated membership (the [`StateMachine`]'s members and shard
//! maps) with the Raft configuration in force and returns the next steps that bring them
//! together. The leader runs it on every tick while no earlier step is in flight; every step
//! is idempotent, so running it again after a lost proposal or a leader change is safe.

use std::collections::{BTreeMap, BTreeSet};

use crate::raft::eraftpb::ConfState;
use crate::state::{Command, MemberState, NodeId, StateMachine};

/// One thing the leader should do next.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Step {
    /// Propose this command.
    Propose(Command),
    /// Propose adding this node as a Raft learner.
    AddLearner(NodeId),
    /// Propose promoting this learner to voter (joint consensus, auto-leave).
    Promote(NodeId),
    /// Propose removing this node from the Raft configuration.
    RemoveNode(NodeId),
    /// Hand leadership to this voter (the leader itself is being removed).
    TransferLeader(NodeId),
}

impl Step {
    /// A short name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Step::Propose(Command::AddMember { .. }) => "add_member",
            Step::Propose(Command::SetMemberState { .. }) => "set_member_state",
            Step::Propose(Command::AssignShards { .. }) => "assign_shards",
            Step::Propose(_) => "propose",
            Step::AddLearner(_) => "add_learner",
            Step::Promote(_) => "promote",
            Step::RemoveNode(_) => "remove_node",
            Step::TransferLeader(_) => "transfer_leader",
        }
    }

    /// The node or region the step is about, for logs.
    pub fn subject(&self) -> String {
        match self {
            Step::Propose(Command::AddMember { id, .. })
            | Step::Propose(Command::SetMemberState { id, .. })
            | Step::AddLearner(id)
            | Step::Promote(id)
            | Step::RemoveNode(id)
            | Step::TransferLeader(id) => format!("node {id}"),
            Step::Propose(Command::AssignShards { region, epoch, .. }) => {
                format!("region {region} epoch {epoch}")
            }
            Step::Propose(_) => String::new(),
        }
    }
}

/// Everything [`plan`] looks at.
#[derive(Debug, Clone)]
pub struct PlanInput<'a> {
    /// The node planning (the leader).
    pub me: NodeId,
    /// The replicated state as applied on the leader.
    pub machine: &'a StateMachine,
    /// The Raft configuration in force.
    pub conf: &'a ConfState,
    /// True while a configuration change is proposed but not applied, or joint.
    pub conf_change_pending: bool,
    /// The leader's last log index.
    pub last_index: u64,
    /// The matched index of each node of the configuration.
    pub matched: &'a BTreeMap<NodeId, u64>,
    /// The founding voters' `(address, region)`, proposed as members when the state has
    /// none.
    pub founders: &'a BTreeMap<NodeId, (String, String)>,
    /// The shard count of a region without a shard map yet.
    pub shard_count: usize,
    /// A learner within this many entries of `last_index` is promoted.
    pub promote_lag_entries_max: u64,
    /// Active members the leader has not heard from for
    /// [`MembershipConfig::failover_after`](super::MembershipConfig::failover_after): left out
    /// of the shard maps until they are heard from again.
    pub unreachable: &'a BTreeSet<NodeId>,
}

/// The next steps, in the order to take them. At most one configuration change is
/// returned (raft-rs accepts one at a time).
///
/// 1. Bootstrap: with no member at all, `AddMember` for every founder in the configuration.
/// 2. Per member, by id: a `Joining` voter becomes `Active`; a `Joining` node outside the
///    configuration is added as a learner; a `Joining` learner that caught up is promoted;
///    a `Removed` node still in the configuration is removed from it (the leader first
///    hands leadership to the most caught-up other voter if it is the one removed).
/// 3. Per region with an active member: `AssignShards` if the map is not balanced over the
///    region's active, reachable members (bounded moves, next epoch; see
///    [`crate::state::rebalance`]). An unreachable member's shards fail over to the others;
///    once it is heard from again, the next plan gives it its share back.
///
/// ```
/// use std::collections::BTreeMap;
/// use herald_cluster::membership::plan::{PlanInput, Step, plan};
/// use herald_cluster::raft::eraftpb::ConfState;
/// use herald_cluster::state::{Command, StateMachine};
///
/// let conf = ConfState { voters: vec![1, 2], ..ConfState::default() };
/// let founders = BTreeMap::from([
///     (1, ("10.0.0.1:7000".to_owned(), "eu".to_owned())),
///     (2, ("10.0.0.2:7000".to_owned(), "eu".to_owned())),
/// ]);
/// let machine = StateMachine::new();
/// let steps = plan(&PlanInput {
///     me: 1,
///     machine: &machine,
///     conf: &conf,
///     conf_change_pending: false,
///     last_index: 1,
///     matched: &BTreeMap::new(),
///     founders: &founders,
///     shard_count: 1024,
///     promote_lag_entries_max: 64,
///     unreachable: &Default::default(),
/// });
/// // A fresh cluster: the leader first records the founders as members.
/// assert_eq!(steps.len(), 2);
/// assert!(matches!(&steps[0], Step::Propose(Command::AddMember { id: 1, .. })));
/// ```
pub fn plan(input: &PlanInput<'_>) -> Vec<Step> {
    let machine = input.machine;
    let members = machine.members();
    if members.is_empty() {
        return input
            .founders
            .iter()
            .filter(|(id, _)| input.conf.voters.contains(id))
            .map(|(&id, (addr, region))| {
                Step::Propose(Command::AddMember {
                    id,
                    addr: addr.clone(),
                    region: region.clone(),
                })
            })
            .collect();
    }
    let voters: BTreeSet<NodeId> = input.conf.voters.iter().copied().collect();
    let learners: BTreeSet<NodeId> = input
        .conf
        .learners
        .iter()
        .chain(&input.conf.learners_next)
        .copied()
        .collect();
    let in_conf = |id: &NodeId| {
        voters.contains(id) || learners.contains(id) || input.conf.voters_outgoing.contains(id)
    };
    let mut steps = Vec::new();
    let mut conf_step: Option<Step> = None;
    for member in members.values() {
        let id = member.id;
        match member.state {
            MemberState::Joining if voters.contains(&id) => {
                steps.push(Step::Propose(Command::SetMemberState {
                    id,
                    state: MemberState::Active,
                }));
            }
            MemberState::Joining if learners.contains(&id) => {
                let matched = input.matched.get(&id).copied().unwrap_or(0);
                if matched + input.promote_lag_entries_max >= input.last_index {
                    conf_step.get_or_insert(Step::Promote(id));
                }
            }
            MemberState::Joining => {
                conf_step.get_or_insert(Step::AddLearner(id));
            }
            MemberState::Removed if in_conf(&id) => {
                if id == input.me {
                    let successor = voters
                        .iter()
                        .filter(|&&v| v != id)
                        .max_by_key(|&&v| (input.matched.get(&v).copied().unwrap_or(0), v));
                    if let Some(&successor) = successor {
                        steps.push(Step::TransferLeader(successor));
                    }
                } else {
                    conf_step.get_or_insert(Step::RemoveNode(id));
                }
            }
            MemberState::Active | MemberState::Draining | MemberState::Removed => {}
        }
    }
    if let Some(step) = conf_step.filter(|_| !input.conf_change_pending) {
        steps.push(step);
    }
    let regions: BTreeSet<&str> = members
        .values()
        .filter(|m| m.state == MemberState::Active)
        .map(|m| m.region.as_str())
        .collect();
    for region in regions {
        match machine.rebalance_command_without(region, input.shard_count, input.unreachable) {
            Ok(Some(command)) => steps.push(Step::Propose(command)),
            Ok(None) => {}
            Err(e) => tracing::warn!(region, error = %e, "no shard map for region"),
        }
    }
    steps
}

/// The shards `node` owns, per region, in the applied shard maps.
pub fn owned_shards(machine: &StateMachine, node: NodeId) -> BTreeMap<String, Vec<usize>> {
    machine
        .shard_maps()
        .iter()
        .filter_map(|(region, map)| {
            let shards: Vec<usize> = map
                .owners
                .iter()
                .enumerate()
                .filter(|(_, owner)| **owner == node)
                .map(|(shard, _)| shard)
                .collect();
            (!shards.is_empty()).then(|| (region.clone(), shards))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::ApplyResult;

    fn apply(machine: &mut StateMachine, command: Command) {
        let index = machine.applied_index() + 1;
        let result = machine.apply(index, &command);
        assert!(
            matches!(result, ApplyResult::Applied | ApplyResult::Unchanged),
            "{command:?}: {result:?}"
        );
    }

    fn conf(voters: &[u64], learners: &[u64]) -> ConfState {
        ConfState {
            voters: voters.to_vec(),
            learners: learners.to_vec(),
            ..ConfState::default()
        }
    }

    fn founders(ids: &[u64]) -> BTreeMap<NodeId, (String, String)> {
        ids.iter()
            .map(|&id| (id, (format!("127.0.0.1:{}", 7000 + id), "eu".to_owned())))
            .collect()
    }

    struct Case {
        machine: StateMachine,
        conf: ConfState,
        pending: bool,
        last_index: u64,
        matched: BTreeMap<NodeId, u64>,
        founders: BTreeMap<NodeId, (String, String)>,
        unreachable: BTreeSet<NodeId>,
    }

    impl Case {
        fn new(voters: &[u64]) -> Self {
            Case {
                machine: StateMachine::new(),
                conf: conf(voters, &[]),
                pending: false,
                last_index: 100,
                matched: BTreeMap::new(),
                founders: founders(voters),
                unreachable: BTreeSet::new(),
            }
        }

        fn plan(&self, me: NodeId) -> Vec<Step> {
            plan(&PlanInput {
                me,
                machine: &self.machine,
                conf: &self.conf,
                conf_change_pending: self.pending,
                last_index: self.last_index,
                matched: &self.matched,
                founders: &self.founders,
                shard_count: 6,
                promote_lag_entries_max: 10,
                unreachable: &self.unreachable,
            })
        }

        /// Apply every proposed command of the plan (configuration steps are left out).
        fn apply_plan(&mut self, me: NodeId) -> Vec<Step> {
            let steps = self.plan(me);
            for step in &steps {
                if let Step::Propose(command) = step {
                    apply(&mut self.machine, command.clone());
                }
            }
            steps
        }
    }

    #[test]
    fn bootstrap_adds_founders_activates_them_and_assigns_shards() {
        let mut case = Case::new(&[1, 2, 3]);
        let steps = case.apply_plan(1);
        assert_eq!(steps.len(), 3);
        assert!(
            steps
                .iter()
                .all(|s| matches!(s, Step::Propose(Command::AddMember { .. })))
        );
        let steps = case.apply_plan(1);
        assert_eq!(steps.len(), 3, "{steps:?}");
        let steps = case.apply_plan(1);
        assert_eq!(
            steps,
            vec![Step::Propose(Command::AssignShards {
                region: "eu".into(),
                epoch: 1,
                owners: vec![1, 1, 2, 2, 3, 3],
            })]
        );
        assert!(case.apply_plan(1).is_empty(), "converged");
    }

    fn bootstrapped() -> Case {
        let mut case = Case::new(&[1, 2, 3]);
        while !case.apply_plan(1).is_empty() {}
        case
    }

    #[test]
    fn a_joining_node_becomes_learner_then_voter_then_owner() {
        let mut case = bootstrapped();
        apply(
            &mut case.machine,
            Command::AddMember {
                id: 4,
                addr: "127.0.0.1:7004".into(),
                region: "eu".into(),
            },
        );
        assert_eq!(case.plan(1), vec![Step::AddLearner(4)]);
        case.pending = true;
        assert!(
            case.plan(1).is_empty(),
            "one configuration change at a time"
        );
        case.pending = false;
        case.conf = conf(&[1, 2, 3], &[4]);
        case.matched.insert(4, 50);
        assert!(case.plan(1).is_empty(), "lagging learners wait");
        case.matched.insert(4, 95);
        assert_eq!(case.plan(1), vec![Step::Promote(4)]);
        case.conf = conf(&[1, 2, 3, 4], &[]);
        let steps = case.apply_plan(1);
        assert_eq!(
            steps,
            vec![Step::Propose(Command::SetMemberState {
                id: 4,
                state: MemberState::Active
            })]
        );
        let steps = case.apply_plan(1);
        let [Step::Propose(Command::AssignShards { epoch, owners, .. })] = steps.as_slice() else {
            panic!("{steps:?}");
        };
        assert_eq!(*epoch, 2);
        assert_eq!(owners.iter().filter(|&&o| o == 4).count(), 1);
        let moved = owners
            .iter()
            .zip([1, 1, 2, 2, 3, 3])
            .filter(|(a, b)| **a != *b)
            .count();
        assert_eq!(moved, 1, "bounded moves: {owners:?}");
    }

    #[test]
    fn draining_moves_shards_and_removed_leaves_the_configuration() {
        let mut case = bootstrapped();
        apply(
            &mut case.machine,
            Command::SetMemberState {
                id: 2,
                state: MemberState::Draining,
            },
        );
        let steps = case.apply_plan(1);
        assert_eq!(
            steps,
            vec![Step::Propose(Command::AssignShards {
                region: "eu".into(),
                epoch: 2,
                owners: vec![1, 1, 1, 3, 3, 3],
            })]
        );
        assert!(owned_shards(&case.machine, 2).is_empty());
        assert!(
            case.plan(1).is_empty(),
            "draining waits for the node itself"
        );
        apply(
            &mut case.machine,
            Command::SetMemberState {
                id: 2,
                state: MemberState::Removed,
            },
        );
        assert_eq!(case.plan(1), vec![Step::RemoveNode(2)]);
        case.conf = conf(&[1, 3], &[]);
        assert!(case.plan(1).is_empty());
    }

    #[test]
    fn a_removed_leader_hands_over_first_and_dead_nodes_lose_shards_at_once() {
        let mut case = bootstrapped();
        case.matched = BTreeMap::from([(1, 100), (2, 90), (3, 99)]);
        apply(
            &mut case.machine,
            Command::SetMemberState {
                id: 1,
                state: MemberState::Removed,
            },
        );
        let steps = case.plan(1);
        assert_eq!(steps[0], Step::TransferLeader(3));
        let [_, Step::Propose(Command::AssignShards { owners, .. })] = steps.as_slice() else {
            panic!("{steps:?}");
        };
        assert!(!owners.contains(&1));
        // The new leader removes node 1 from the configuration.
        assert_eq!(case.plan(3)[0], Step::RemoveNode(1));
    }

    #[test]
    fn an_unreachable_member_fails_over_and_gets_its_share_back() {
        let mut case = bootstrapped();
        let owners_of = |steps: &[Step]| match steps {
            [Step::Propose(Command::AssignShards { owners, .. })] => owners.clone(),
            other => panic!("{other:?}"),
        };
        case.unreachable = BTreeSet::from([2]);
        let failed_over = owners_of(&case.apply_plan(1));
        assert!(!failed_over.contains(&2), "{failed_over:?}");
        assert!(
            case.plan(1).is_empty(),
            "stable while node 2 stays unreachable"
        );
        // Heard from again: balanced over all three.
        case.unreachable.clear();
        let back = owners_of(&case.apply_plan(1));
        assert_eq!(back.iter().filter(|&&o| o == 2).count(), 2);
        // Every member unreachable (the leader counts itself reachable, but say not): no
        // one to fail over to, the map stays.
        case.unreachable = BTreeSet::from([1, 2, 3]);
        assert!(case.plan(1).is_empty());
    }
}
