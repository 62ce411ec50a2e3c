//! The [`Router`]: sends each push to its shard's owner in this region.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use herald_actors::apns::{ApnsId, Notification};
use herald_actors::limits::SEND_BATCH_MAX;
use herald_actors::outcome::{Outcome, OutcomeStore, PushId};
use herald_actors::seams::DetRng;
use herald_actors::{Herald, PushError};
use tokio::sync::{Semaphore, broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use super::wire::{ForwardedPush, decode_outcome, decode_push, encode_outcome, encode_push};
use super::{
    AWAITED_OUTCOMES_MAX, FORWARD_ACK_TIMEOUT_DEFAULT, FORWARD_ATTEMPTS_DEFAULT,
    FORWARD_ATTEMPTS_MAX, FORWARD_BATCH_BYTES_MAX, FORWARD_BATCH_PUSHES_MAX,
    FORWARD_OVERLOAD_RETRY_AFTER, FORWARDS_PER_PEER_MAX, FORWARDS_TOTAL_MAX, MAP_CATCH_UP_POLL,
    MAP_CATCH_UP_TIMEOUT, ORIGINS_KEPT_MAX, OUTCOME_QUERIES_PER_ROUND, OUTCOME_QUERY_AFTER,
    OUTCOME_QUERY_EVERY, REMOTE_OUTCOMES_KEPT_MAX, RESEND_BACKOFF_DEFAULT, RESEND_BACKOFF_MAX,
    SERVED_FORWARDS_MAX,
};
use crate::node::{ClusterNode, ShardMaps};
use crate::transport::{self, AckResult, Inbound, PeerLinkSender, PeerMessage};

/// How a [`Router`] behaves.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    /// Wait for an owner's `Ack` before re-sending. Default: [`FORWARD_ACK_TIMEOUT_DEFAULT`].
    pub ack_timeout: Duration,
    /// Sends of one push (first + re-sends) before `Unavailable`, in
    /// `1..=`[`FORWARD_ATTEMPTS_MAX`]. Default: [`FORWARD_ATTEMPTS_DEFAULT`].
    pub attempts: u32,
    /// First pause before a re-send, doubled per attempt up to [`RESEND_BACKOFF_MAX`].
    /// Default: [`RESEND_BACKOFF_DEFAULT`].
    pub resend_backoff: Duration,
    /// Seed of the push ids this router draws for notifications without an `apns-id`.
    pub seed: u64,
}

impl RouterConfig {
    /// The defaults, with push ids drawn from `seed`.
    pub fn new(seed: u64) -> Self {
        RouterConfig {
            ack_timeout: FORWARD_ACK_TIMEOUT_DEFAULT,
            attempts: FORWARD_ATTEMPTS_DEFAULT,
            resend_backoff: RESEND_BACKOFF_DEFAULT,
            seed,
        }
    }
}

/// Why a [`Router`] could not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RouterError {
    /// The node already has a router (its inbound routing channel was taken).
    #[error("the node already has a router")]
    AlreadyRouted,
    /// The configuration is out of bounds.
    #[error("invalid router config: {0}")]
    Config(String),
}

/// Routes pushes to their shard's owner in this node's region: the local engine when this
/// node owns the shard, else the owner over the peer link (see the [module docs](super)).
///
/// Stop it with [`stop`](Self::stop) (or drop it) before the node.
pub struct Router {
    inner: Arc<Inner>,
    tasks: Vec<JoinHandle<()>>,
}

impl fmt::Debug for Router {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Router")
            .field("node", &self.inner.id)
            .field("region", &self.inner.region)
            .finish_non_exhaustive()
    }
}

struct Inner {
    id: u64,
    region: String,
    engine: Herald,
    maps: watch::Receiver<ShardMaps>,
    /// The node's current peer links (new members appear here once membership links them).
    links: watch::Receiver<BTreeMap<u64, PeerLinkSender>>,
    config: RouterConfig,
    rng: Mutex<DetRng>,
    /// Origin side: who waits for which (push, owner) ack.
    waiters: Mutex<Waiters>,
    inflight_total: AtomicUsize,
    /// Forwards in flight per peer, an entry per peer ever forwarded to (members only).
    inflight_per_peer: Mutex<BTreeMap<u64, Arc<AtomicUsize>>>,
    /// Owner side: forwarded pushes being served.
    serving: Arc<Semaphore>,
    /// Owner side: where to send outcomes of forwarded pushes.
    origins: Mutex<Origins>,
    /// Origin side: outcomes of pushes forwarded from here.
    remote_outcomes: OutcomeStore,
    /// Origin side: pushes an owner took whose outcome has not come back yet.
    awaited: Mutex<Awaited>,
}

/// Forwarded pushes awaiting their outcome: push → owner, and a queue in the order they are
/// next due to be asked about (the map is the truth; stale queue entries are skipped).
#[derive(Default)]
struct Awaited {
    owners: BTreeMap<u128, u64>,
    due: VecDeque<(tokio::time::Instant, u128)>,
}

impl Awaited {
    fn insert(&mut self, push: u128, owner: u64) {
        if self.owners.insert(push, owner).is_none() {
            self.due
                .push_back((tokio::time::Instant::now() + OUTCOME_QUERY_AFTER, push));
        }
        while self.owners.len() > AWAITED_OUTCOMES_MAX {
            match self.due.pop_front() {
                Some((_, oldest)) => {
                    self.owners.remove(&oldest);
                }
                None => break,
            }
        }
    }

    /// Up to `max` (push, owner) pairs due now; each is due again a period later.
    fn due_now(&mut self, max: usize) -> Vec<(u128, u64)> {
        let now = tokio::time::Instant::now();
        let mut out = Vec::new();
        while out.len() < max {
            match self.due.front() {
                Some(&(at, push)) if at <= now => {
                    self.due.pop_front();
                    if let Some(&owner) = self.owners.get(&push) {
                        out.push((push, owner));
                        self.due.push_back((now + OUTCOME_QUERY_AFTER, push));
                    }
                }
                _ => break,
            }
        }
        out
    }
}

type AckWaiter = oneshot::Sender<AckResult>;

#[derive(Default)]
struct Waiters {
    next: u64,
    by_push: BTreeMap<(u128, u64), BTreeMap<u64, AckWaiter>>,
}

#[derive(Default)]
struct Origins {
    by_push: BTreeMap<u128, u64>,
    order: VecDeque<u128>,
}

impl Origins {
    fn insert(&mut self, push: u128, origin: u64) {
        if self.by_push.insert(push, origin).is_none() {
            self.order.push_back(push);
        }
        while self.by_push.len() > ORIGINS_KEPT_MAX {
            match self.order.pop_front() {
                Some(oldest) => {
                    self.by_push.remove(&oldest);
                }
                None => break,
            }
        }
    }

    fn take(&mut self, push: u128) -> Option<u64> {
        // `order` keeps the id until it reaches the front; the map is the truth.
        let origin = self.by_push.remove(&push)?;
        if self.order.len() > 2 * ORIGINS_KEPT_MAX {
            let live = &self.by_push;
            self.order.retain(|id| live.contains_key(id));
        }
        Some(origin)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves the data consistent; a poisoned lock is still usable.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Router {
    /// Start the router of `node` over `engine` (this node's engine, with the same shard
    /// count as the shard maps and the same tenants as the other nodes' engines).
    ///
    /// # Errors
    /// [`RouterError::AlreadyRouted`] if the node already has a router;
    /// [`RouterError::Config`] if `config` is out of bounds.
    pub fn start(
        node: &ClusterNode,
        engine: Herald,
        config: RouterConfig,
    ) -> Result<Router, RouterError> {
        if config.attempts == 0 || config.attempts > FORWARD_ATTEMPTS_MAX {
            return Err(RouterError::Config(format!(
                "attempts {} outside 1..={FORWARD_ATTEMPTS_MAX}",
                config.attempts
            )));
        }
        if config.ack_timeout.is_zero() {
            return Err(RouterError::Config("ack_timeout is zero".to_owned()));
        }
        let inbound = node
            .take_routing_inbound()
            .ok_or(RouterError::AlreadyRouted)?;
        let links = node.peer_links_watch();
        let outcomes = engine.outcomes();
        let inner = Arc::new(Inner {
            id: node.id(),
            region: node.region().to_owned(),
            engine,
            maps: node.shard_maps(),
            inflight_total: AtomicUsize::new(0),
            inflight_per_peer: Mutex::new(BTreeMap::new()),
            links,
            rng: Mutex::new(DetRng::from_seed(config.seed)),
            config,
            waiters: Mutex::new(Waiters::default()),
            serving: Arc::new(Semaphore::new(SERVED_FORWARDS_MAX)),
            origins: Mutex::new(Origins::default()),
            remote_outcomes: OutcomeStore::new(REMOTE_OUTCOMES_KEPT_MAX),
            awaited: Mutex::new(Awaited::default()),
        });
        let tasks = vec![
            tokio::spawn(serve_inbound(inner.clone(), inbound)),
            tokio::spawn(relay_outcomes(inner.clone(), outcomes)),
            tokio::spawn(query_outcomes(inner.clone())),
        ];
        Ok(Router { inner, tasks })
    }

    /// Accept one push for `tenant`: its id once the shard's owner appended it to its WAL.
    /// Same contract as [`Herald::send`].
    ///
    /// # Errors
    /// As [`Herald::send`]; [`PushError::Overloaded`] also when forwarding limits are
    /// reached; [`PushError::Unavailable`] when no owner took it within the allowed sends.
    pub async fn send(
        &self,
        tenant: &str,
        notification: Notification,
    ) -> Result<PushId, PushError> {
        let mut results = self.send_batch(tenant, vec![notification]).await?;
        results
            .pop()
            .unwrap_or_else(|| Err(PushError::Unavailable("empty answer".into())))
    }

    /// Accept several pushes for `tenant`: one result per push, in order. Same contract as
    /// [`Herald::send_batch`] (the whole batch is refused if it is too large, or if the
    /// local engine refuses the tenant or is not accepting).
    ///
    /// # Errors
    /// The batch-wide refusals of [`Herald::send_batch`].
    pub async fn send_batch(
        &self,
        tenant: &str,
        notifications: Vec<Notification>,
    ) -> Result<Vec<Result<PushId, PushError>>, PushError> {
        if notifications.len() > SEND_BATCH_MAX {
            return Err(PushError::BatchTooLarge(notifications.len()));
        }
        // Tenant and engine checks, batch-wide, without queuing anything.
        self.inner.engine.send_batch(tenant, vec![]).await?;
        let notifications: Vec<(PushId, Notification)> = notifications
            .into_iter()
            .map(|n| self.inner.with_id(n))
            .collect();
        // The pushes of shards this node owns go to the engine in one batch (one WAL group
        // commit); the others are forwarded, each to its owner, concurrently. One snapshot of
        // the shard maps routes the whole batch.
        let inner = &self.inner;
        let maps = inner.maps.borrow().clone();
        let (local, remote): (Vec<_>, Vec<_>) =
            notifications
                .into_iter()
                .enumerate()
                .partition(|(_, (_, notification))| {
                    let shard = inner.engine.shard_of(notification.device_token());
                    inner
                        .owner_in(&maps, shard)
                        .is_ok_and(|(owner, _)| owner == inner.id)
                });
        let (local_indexes, local): (Vec<usize>, Vec<(PushId, Notification)>) =
            local.into_iter().unzip();
        let local_batch = async {
            if local.is_empty() {
                return Ok(vec![]);
            }
            let notifications = local.into_iter().map(|(_, n)| n).collect();
            inner.engine.send_batch(tenant, notifications).await
        };
        // Remote pushes go to their owners grouped: one message (and one engine batch) per
        // owner; pushes without a known owner yet take the one-by-one path (it waits).
        let mut by_owner: BTreeMap<u64, Vec<(usize, PushId, Notification)>> = BTreeMap::new();
        let mut unrouted = Vec::new();
        for (index, (id, notification)) in remote {
            let shard = inner.engine.shard_of(notification.device_token());
            match inner.owner_in(&maps, shard) {
                Ok((owner, _)) => {
                    by_owner
                        .entry(owner)
                        .or_default()
                        .push((index, id, notification))
                }
                Err(_) => unrouted.push((index, id, notification)),
            }
        }
        let groups = by_owner
            .into_iter()
            .map(|(owner, items)| inner.forward_group(tenant, owner, items));
        let singles = unrouted
            .into_iter()
            .map(|(index, id, notification)| async move {
                (
                    index,
                    inner.route(tenant, id, notification).await.map(|()| id),
                )
            });
        let (local_results, grouped, singles) = futures_util::future::join3(
            local_batch,
            futures_util::future::join_all(groups),
            futures_util::future::join_all(singles),
        )
        .await;
        let forwarded: Vec<(usize, Result<PushId, PushError>)> =
            grouped.into_iter().flatten().chain(singles).collect();
        let mut results: Vec<Option<Result<PushId, PushError>>> = (0..local_indexes.len()
            + forwarded.len())
            .map(|_| None)
            .collect();
        match local_results {
            Ok(answers) => {
                for (index, answer) in local_indexes.into_iter().zip(answers) {
                    results[index] = Some(answer);
                }
            }
            Err(e) => {
                for index in local_indexes {
                    results[index] = Some(Err(e.clone()));
                }
            }
        }
        for (index, result) in forwarded {
            results[index] = Some(result);
        }
        // Every index was filled above: one answer per push, local or forwarded.
        Ok(results
            .into_iter()
            .map(|result| result.unwrap_or_else(|| Err(PushError::Unavailable("no answer".into()))))
            .collect())
    }

    /// The outcome of push `id` accepted through this node: from the local engine, or sent
    /// back by the owner it was forwarded to (the [`REMOTE_OUTCOMES_KEPT_MAX`] most recent).
    pub fn outcome(&self, id: PushId) -> Option<Outcome> {
        self.inner
            .engine
            .outcome(id)
            .or_else(|| self.inner.remote_outcomes.get(id))
    }

    /// The local engine.
    pub fn engine(&self) -> &Herald {
        &self.inner.engine
    }

    /// Stop serving forwarded pushes and relaying outcomes (pushes being sent finish).
    pub fn stop(mut self) {
        for task in self.tasks.drain(..) {
            task.abort();
        }
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        for task in self.tasks.drain(..) {
            task.abort();
        }
    }
}

/// Why one send of a forwarded push did not get an `Accepted`.
enum Attempt {
    /// Re-read the map and send again (`cause` labels the re-send metric).
    Resend {
        cause: &'static str,
        catch_up: Option<u64>,
    },
    /// Final answer.
    Final(PushError),
}

impl Inner {
    /// The push id of `notification`, drawing one (and setting the `apns-id`) if it has none.
    fn with_id(&self, notification: Notification) -> (PushId, Notification) {
        match notification.apns_id() {
            Some(apns_id) => (PushId::from(apns_id), notification),
            None => {
                let apns_id = ApnsId::random(&mut lock(&self.rng));
                (PushId::from(apns_id), notification.with_apns_id(apns_id))
            }
        }
    }

    /// Route one push until an owner accepts it, or a final refusal.
    async fn route(
        &self,
        tenant: &str,
        id: PushId,
        notification: Notification,
    ) -> Result<(), PushError> {
        self.route_from(tenant, id, notification, 0, String::from("no attempt"))
            .await
    }

    /// The send loop of one push from attempt `first` on (`last` says why the attempt before
    /// failed, if `first > 0`).
    async fn route_from(
        &self,
        tenant: &str,
        id: PushId,
        notification: Notification,
        first: u32,
        mut last: String,
    ) -> Result<(), PushError> {
        let shard = self.engine.shard_of(notification.device_token());
        let mut backoff = self.config.resend_backoff;
        for attempt in first..self.config.attempts {
            if attempt > 0 {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(RESEND_BACKOFF_MAX);
            }
            let (owner, epoch) = self.owner(shard)?;
            if owner == self.id {
                return self
                    .engine
                    .send(tenant, notification.clone())
                    .await
                    .map(|_| ());
            }
            let push = ForwardedPush::new(
                tenant,
                shard,
                self.region.clone(),
                epoch,
                id,
                notification.clone(),
            );
            match self.forward_once(owner, &push).await {
                Ok(()) => return Ok(()),
                Err(Attempt::Final(e)) => return Err(e),
                Err(Attempt::Resend { cause, catch_up }) => {
                    last = self.after_resend(cause, catch_up, owner, epoch).await;
                }
            }
        }
        metrics::counter!("herald_routing_unavailable_total").increment(1);
        Err(PushError::Unavailable(format!(
            "push {id} not taken by its shard's owner after {} sends; last: {last}",
            self.config.attempts
        )))
    }

    /// Count a re-send and wait for this node's map if the owner has a newer one; returns
    /// what to report if the push is never taken.
    async fn after_resend(
        &self,
        cause: &'static str,
        catch_up: Option<u64>,
        owner: u64,
        epoch: u64,
    ) -> String {
        metrics::counter!("herald_routing_resends_total", "cause" => cause).increment(1);
        if let Some(epoch) = catch_up {
            // The owner has a newer map: wait for ours to reach it.
            self.catch_up(epoch).await;
        }
        format!("{cause} (owner {owner}, epoch {epoch})")
    }

    /// Forward `items` (index in the caller's batch, id, notification), whose shards `owner`
    /// owns, in [`PeerMessage::ForwardBatch`]es: one engine batch (one WAL commit) at the
    /// owner instead of one per push. A push that must be re-sent goes on alone, from its
    /// second attempt, exactly as [`route`](Self::route) would.
    async fn forward_group(
        &self,
        tenant: &str,
        owner: u64,
        items: Vec<(usize, PushId, Notification)>,
    ) -> Vec<(usize, Result<PushId, PushError>)> {
        let mut pushes = Vec::with_capacity(items.len());
        let mut epochs = Vec::with_capacity(items.len());
        for (_, id, notification) in &items {
            let shard = self.engine.shard_of(notification.device_token());
            let epoch = self.owner(shard).map_or(0, |(_, epoch)| epoch);
            epochs.push(epoch);
            pushes.push(ForwardedPush::new(
                tenant,
                shard,
                self.region.clone(),
                epoch,
                *id,
                notification.clone(),
            ));
        }
        let firsts = self.forward_many(owner, &pushes).await;
        let follow = items.into_iter().zip(firsts).zip(epochs).map(
            |(((index, id, notification), first), epoch)| async move {
                let result = match first {
                    Ok(()) => Ok(()),
                    Err(Attempt::Final(e)) => Err(e),
                    Err(Attempt::Resend { cause, catch_up }) => {
                        let last = self.after_resend(cause, catch_up, owner, epoch).await;
                        self.route_from(tenant, id, notification, 1, last).await
                    }
                };
                (index, result.map(|()| id))
            },
        );
        futures_util::future::join_all(follow).await
    }

    /// Wait (at most [`MAP_CATCH_UP_TIMEOUT`]) until this node's map of its region reaches
    /// `epoch`.
    ///
    /// Polls every [`MAP_CATCH_UP_POLL`] instead of waiting on the watch channel: tokio's
    /// `watch` spreads its waiters over several notifiers picked by the runtime's RNG, so
    /// pushes waiting for the same map would resume in a different order from run to run
    /// (the simulator's determinism check caught it). Timers fire in a fixed order.
    async fn catch_up(&self, epoch: u64) {
        let deadline = tokio::time::Instant::now() + MAP_CATCH_UP_TIMEOUT;
        loop {
            let reached = self
                .maps
                .borrow()
                .get(&self.region)
                .is_some_and(|map| map.epoch >= epoch);
            if reached || tokio::time::Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep(MAP_CATCH_UP_POLL).await;
        }
    }

    /// The owner of `shard` in this region and the map's epoch.
    fn owner(&self, shard: u32) -> Result<(u64, u64), PushError> {
        self.owner_in(&self.maps.borrow(), shard)
    }

    /// The owner of `shard` in this region's map of `maps`, and the map's epoch.
    fn owner_in(&self, maps: &ShardMaps, shard: u32) -> Result<(u64, u64), PushError> {
        let map = maps.get(&self.region).ok_or_else(|| {
            PushError::Unavailable(format!("no shard map for region {:?} yet", self.region))
        })?;
        let owner = map.owners.get(shard as usize).ok_or_else(|| {
            PushError::Unavailable(format!(
                "shard {shard} outside the region's map of {} shards (engine and map disagree)",
                map.owners.len()
            ))
        })?;
        Ok((*owner, map.epoch))
    }

    /// The current link to `peer`, if the node has one.
    fn link(&self, peer: u64) -> Option<PeerLinkSender> {
        self.links.borrow().get(&peer).cloned()
    }

    /// Send `push` to `owner` once and wait for its ack.
    async fn forward_once(&self, owner: u64, push: &ForwardedPush) -> Result<(), Attempt> {
        self.forward_many(owner, std::slice::from_ref(push))
            .await
            .pop()
            .unwrap_or(Err(Attempt::Resend {
                cause: "unsendable",
                catch_up: None,
            }))
    }

    /// Send `pushes` to `owner` once (a [`PeerMessage::ForwardPush`] for one, bounded
    /// [`PeerMessage::ForwardBatch`]es for more) and wait for their acks: one verdict per
    /// push, in order.
    async fn forward_many(&self, owner: u64, pushes: &[ForwardedPush]) -> Vec<Result<(), Attempt>> {
        let resend = |cause| Attempt::Resend {
            cause,
            catch_up: None,
        };
        let overloaded = || {
            Attempt::Final(PushError::Overloaded {
                retry_after: FORWARD_OVERLOAD_RETRY_AFTER,
            })
        };
        let Some(link) = self.link(owner) else {
            return pushes.iter().map(|_| Err(resend("no_link"))).collect();
        };
        let peer_load = lock(&self.inflight_per_peer)
            .entry(owner)
            .or_default()
            .clone();
        let mut verdicts: Vec<Option<Result<(), Attempt>>> = pushes.iter().map(|_| None).collect();
        // Each push holds its slots (total and per peer) until its ack or timeout.
        let mut slots = Vec::with_capacity(pushes.len());
        let mut entries: Vec<(usize, transport::ForwardedEntry)> = Vec::new();
        for (index, push) in pushes.iter().enumerate() {
            let Some(total) = Slot::reserve(&self.inflight_total, FORWARDS_TOTAL_MAX) else {
                metrics::counter!("herald_routing_overloaded_total", "limit" => "total")
                    .increment(1);
                verdicts[index] = Some(Err(overloaded()));
                continue;
            };
            let Some(peer) = Slot::reserve(&peer_load, FORWARDS_PER_PEER_MAX) else {
                metrics::counter!("herald_routing_overloaded_total", "limit" => "peer")
                    .increment(1);
                verdicts[index] = Some(Err(overloaded()));
                continue;
            };
            match encode_push(push) {
                Ok(bytes) => {
                    slots.push((total, peer));
                    entries.push((
                        index,
                        transport::ForwardedEntry {
                            push_id: transport::PushId(push.push_id),
                            push: bytes,
                        },
                    ));
                }
                Err(e) => {
                    verdicts[index] = Some(Err(Attempt::Final(PushError::Unavailable(format!(
                        "unencodable push: {e}"
                    )))));
                }
            }
        }
        // Waiters first, so no ack can arrive before its waiter.
        let mut waiting: Vec<(usize, u64, oneshot::Receiver<AckResult>)> = Vec::new();
        {
            let mut waiters = lock(&self.waiters);
            for (index, entry) in &entries {
                let (tx, rx) = oneshot::channel();
                let seq = waiters.next;
                waiters.next += 1;
                let key = (u128::from_be_bytes(entry.push_id.0), owner);
                waiters.by_push.entry(key).or_default().insert(seq, tx);
                waiting.push((*index, seq, rx));
            }
        }
        let started = tokio::time::Instant::now();
        let mut unsent: BTreeMap<usize, Attempt> = BTreeMap::new();
        for message in forward_messages(entries) {
            let indexes = message.0;
            let sent = link.try_send(message.1);
            match sent {
                Ok(()) => {
                    metrics::counter!("herald_routing_forwarded_total")
                        .increment(indexes.len() as u64);
                }
                Err(e) => {
                    for index in indexes {
                        let attempt = match &e {
                            transport::SendError::Overloaded { .. } => overloaded(),
                            transport::SendError::Stopped => resend("link"),
                            _ => resend("unsendable"),
                        };
                        unsent.insert(index, attempt);
                    }
                }
            }
        }
        let deadline = started + self.config.ack_timeout;
        let answers = futures_util::future::join_all(waiting.iter_mut().map(|(index, _, rx)| {
            let skip = unsent.contains_key(index);
            async move {
                if skip {
                    return None;
                }
                tokio::time::timeout_at(deadline, rx).await.ok()?.ok()
            }
        }))
        .await;
        {
            let mut waiters = lock(&self.waiters);
            for (index, seq, _) in &waiting {
                let key = (pushes[*index].id().as_u128(), owner);
                if let Some(entry) = waiters.by_push.get_mut(&key) {
                    entry.remove(seq);
                    if entry.is_empty() {
                        waiters.by_push.remove(&key);
                    }
                }
            }
        }
        drop(slots);
        for ((index, _, _), answer) in waiting.iter().zip(answers) {
            let verdict = match (unsent.remove(index), answer) {
                (Some(attempt), _) => Err(attempt),
                (None, Some(result)) => {
                    metrics::histogram!("herald_routing_forward_seconds")
                        .record(started.elapsed().as_secs_f64());
                    self.judge(owner, &pushes[*index], result)
                }
                (None, None) => Err(resend("timeout")),
            };
            verdicts[*index] = Some(verdict);
        }
        verdicts
            .into_iter()
            .map(|v| v.unwrap_or(Err(resend("unsendable"))))
            .collect()
    }

    /// What an owner's answer to `push` means for the origin.
    fn judge(&self, owner: u64, push: &ForwardedPush, answer: AckResult) -> Result<(), Attempt> {
        match answer {
            AckResult::Accepted => {
                lock(&self.awaited).insert(push.id().as_u128(), owner);
                Ok(())
            }
            AckResult::StaleEpoch { epoch } => Err(Attempt::Resend {
                cause: "stale_epoch",
                catch_up: (epoch > push.epoch).then_some(epoch),
            }),
            AckResult::NotOwner => Err(Attempt::Resend {
                cause: "not_owner",
                catch_up: Some(push.epoch + 1),
            }),
            AckResult::Overloaded => Err(Attempt::Final(PushError::Overloaded {
                retry_after: FORWARD_OVERLOAD_RETRY_AFTER,
            })),
            AckResult::InProgress => Err(Attempt::Resend {
                cause: "in_progress",
                catch_up: None,
            }),
            AckResult::UnknownTenant => Err(Attempt::Final(PushError::UnknownTenant(
                push.tenant.clone(),
            ))),
            AckResult::Refused { reason } => Err(Attempt::Final(PushError::Unavailable(format!(
                "owner {owner} refused: {reason}"
            )))),
        }
    }

    /// An ack from `from`: wake whoever waits for it.
    fn on_ack(&self, from: u64, push_id: transport::PushId, result: AckResult) {
        let key = (u128::from_be_bytes(push_id.0), from);
        let waiters = lock(&self.waiters).by_push.remove(&key);
        for (_, waiter) in waiters.into_iter().flatten() {
            let _ = waiter.send(result.clone());
        }
    }

    /// Owner side: fence, then hand a forwarded push to the local engine.
    async fn serve(&self, from: u64, push_id: transport::PushId, bytes: &[u8]) -> AckResult {
        let push = match self.fence(from, push_id, bytes) {
            Ok(push) => push,
            Err(refused) => return refused,
        };
        let id = push.id();
        let sent = self.engine.send(&push.tenant, push.notification).await;
        tracing::debug!(push = %id, from, result = ?sent, "forwarded push served");
        ack_of(sent, id)
    }

    /// Owner side: fence each push of a [`PeerMessage::ForwardBatch`], then hand them to the
    /// local engine in one batch per tenant (one WAL commit); one answer per push, in order.
    async fn serve_batch(
        &self,
        from: u64,
        entries: &[transport::ForwardedEntry],
    ) -> Vec<(transport::PushId, AckResult)> {
        let mut answers: Vec<Option<AckResult>> = entries.iter().map(|_| None).collect();
        let mut by_tenant: BTreeMap<String, Vec<(usize, PushId, Notification)>> = BTreeMap::new();
        for (index, entry) in entries.iter().enumerate() {
            match self.fence(from, entry.push_id, &entry.push) {
                Ok(push) => by_tenant.entry(push.tenant.clone()).or_default().push((
                    index,
                    push.id(),
                    push.notification,
                )),
                Err(refused) => answers[index] = Some(refused),
            }
        }
        for (tenant, items) in by_tenant {
            let (places, notifications): (Vec<(usize, PushId)>, Vec<Notification>) = items
                .into_iter()
                .map(|(index, id, notification)| ((index, id), notification))
                .unzip();
            match self.engine.send_batch(&tenant, notifications).await {
                Ok(sent) => {
                    for ((index, id), sent) in places.into_iter().zip(sent) {
                        answers[index] = Some(ack_of(sent, id));
                    }
                }
                Err(e) => {
                    for (index, id) in places {
                        answers[index] = Some(ack_of(Err(e.clone()), id));
                    }
                }
            }
        }
        tracing::debug!(from, pushes = entries.len(), "forwarded batch served");
        entries
            .iter()
            .zip(answers)
            .map(|(entry, answer)| {
                let answer = answer.unwrap_or_else(|| AckResult::Refused {
                    reason: "no answer".to_owned(),
                });
                (entry.push_id, answer)
            })
            .collect()
    }

    /// Owner side: decode a forwarded push and check it may be taken here (region, shard,
    /// epoch, ownership); remembers where it came from.
    fn fence(
        &self,
        from: u64,
        push_id: transport::PushId,
        bytes: &[u8],
    ) -> Result<ForwardedPush, AckResult> {
        let push = decode_push(bytes).map_err(|e| {
            refuse(
                "malformed",
                AckResult::Refused {
                    reason: e.to_string(),
                },
            )
        })?;
        if push.push_id != push_id.0 {
            return Err(refuse(
                "malformed",
                AckResult::Refused {
                    reason: "push id differs from the envelope's".to_owned(),
                },
            ));
        }
        if push.region != self.region {
            return Err(refuse("other_region", AckResult::NotOwner));
        }
        let shard = self.engine.shard_of(push.notification.device_token());
        if shard != push.shard {
            return Err(refuse(
                "malformed",
                AckResult::Refused {
                    reason: format!("token is in shard {shard}, not {}", push.shard),
                },
            ));
        }
        let current = {
            let maps = self.maps.borrow();
            maps.get(&self.region)
                .map(|map| (map.epoch, map.owners.get(shard as usize).copied()))
        };
        match current {
            None => return Err(refuse("stale_epoch", AckResult::StaleEpoch { epoch: 0 })),
            Some((epoch, _)) if epoch != push.epoch => {
                return Err(refuse("stale_epoch", AckResult::StaleEpoch { epoch }));
            }
            Some((_, owner)) if owner != Some(self.id) => {
                return Err(refuse("not_owner", AckResult::NotOwner));
            }
            Some(_) => {}
        }
        if from != self.id {
            lock(&self.origins).insert(push.id().as_u128(), from);
        }
        Ok(push)
    }
}

/// The ack for a forwarded push the local engine answered `sent` for.
fn ack_of(sent: Result<PushId, PushError>, id: PushId) -> AckResult {
    match sent {
        Ok(accepted) if accepted == id => AckResult::Accepted,
        Ok(other) => refuse(
            "malformed",
            AckResult::Refused {
                reason: format!("engine accepted it as {other}"),
            },
        ),
        Err(PushError::UnknownTenant(_)) => refuse("unknown_tenant", AckResult::UnknownTenant),
        Err(PushError::Overloaded { .. }) => refuse("overloaded", AckResult::Overloaded),
        Err(PushError::InProgress { .. }) => refuse("in_progress", AckResult::InProgress),
        Err(e) => refuse(
            "engine",
            AckResult::Refused {
                reason: e.to_string(),
            },
        ),
    }
}

/// The messages carrying `entries` (with the indexes each carries): a lone push as a
/// [`PeerMessage::ForwardPush`], more as [`PeerMessage::ForwardBatch`]es of at most
/// [`FORWARD_BATCH_PUSHES_MAX`] pushes and about [`FORWARD_BATCH_BYTES_MAX`] bytes.
fn forward_messages(
    entries: Vec<(usize, transport::ForwardedEntry)>,
) -> Vec<(Vec<usize>, PeerMessage)> {
    if entries.len() == 1 {
        return entries
            .into_iter()
            .map(|(index, entry)| {
                let message = PeerMessage::ForwardPush {
                    push_id: entry.push_id,
                    push: entry.push,
                };
                (vec![index], message)
            })
            .collect();
    }
    let mut messages = Vec::new();
    let mut indexes = Vec::new();
    let mut pushes = Vec::new();
    let mut bytes = 0;
    for (index, entry) in entries {
        if !pushes.is_empty()
            && (pushes.len() == FORWARD_BATCH_PUSHES_MAX
                || bytes + entry.push.len() > FORWARD_BATCH_BYTES_MAX)
        {
            let full = PeerMessage::ForwardBatch {
                pushes: std::mem::take(&mut pushes),
            };
            messages.push((std::mem::take(&mut indexes), full));
            bytes = 0;
        }
        bytes += entry.push.len();
        indexes.push(index);
        pushes.push(entry);
    }
    if !pushes.is_empty() {
        messages.push((indexes, PeerMessage::ForwardBatch { pushes }));
    }
    messages
}

fn refuse(reason: &'static str, result: AckResult) -> AckResult {
    metrics::counter!("herald_routing_refusals_total", "reason" => reason).increment(1);
    tracing::debug!(reason, "forwarded push refused");
    result
}

/// One reserved unit of a bounded counter, released on drop.
struct Slot<'a>(&'a AtomicUsize);

impl<'a> Slot<'a> {
    fn reserve(load: &'a AtomicUsize, max: usize) -> Option<Slot<'a>> {
        load.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < max).then_some(n + 1)
        })
        .ok()
        .map(|_| Slot(load))
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Handle what peers send the router.
async fn serve_inbound(inner: Arc<Inner>, mut inbound: mpsc::Receiver<Inbound>) {
    while let Some(Inbound { from, msg }) = inbound.recv().await {
        match msg {
            PeerMessage::ForwardPush { push_id, push } => {
                let Some(link) = inner.link(from.0) else {
                    tracing::warn!(from = from.0, "forwarded push from a node without a link");
                    continue;
                };
                let Ok(permit) = inner.serving.clone().try_acquire_owned() else {
                    let result = refuse("overloaded", AckResult::Overloaded);
                    let _ = link.try_send(PeerMessage::Ack { push_id, result });
                    continue;
                };
                let inner = inner.clone();
                tokio::spawn(async move {
                    let result = inner.serve(from.0, push_id, &push).await;
                    drop(permit);
                    if result == AckResult::Accepted
                        && herald_actors::buggify::fire("router_ack_lost", 0.03)
                    {
                        // The origin's ack timeout re-sends; this engine's dedupe answers.
                        return;
                    }
                    if let Err(e) = link.try_send(PeerMessage::Ack { push_id, result }) {
                        tracing::debug!(to = from.0, error = %e, "ack not sent");
                    }
                });
            }
            PeerMessage::ForwardBatch { pushes } => {
                let Some(link) = inner.link(from.0) else {
                    tracing::warn!(from = from.0, "forwarded batch from a node without a link");
                    continue;
                };
                // One serving permit per push: a batch counts as much as its pushes sent alone.
                let permits = u32::try_from(pushes.len()).unwrap_or(u32::MAX);
                let Ok(permit) = inner.serving.clone().try_acquire_many_owned(permits) else {
                    let results = pushes
                        .iter()
                        .map(|p| (p.push_id, refuse("overloaded", AckResult::Overloaded)))
                        .collect();
                    let _ = link.try_send(PeerMessage::AckBatch { results });
                    continue;
                };
                let inner = inner.clone();
                tokio::spawn(async move {
                    let results = inner.serve_batch(from.0, &pushes).await;
                    drop(permit);
                    if herald_actors::buggify::fire("router_ack_lost", 0.03) {
                        // The origin's ack timeout re-sends each push; the engine's dedupe
                        // answers.
                        return;
                    }
                    if let Err(e) = link.try_send(PeerMessage::AckBatch { results }) {
                        tracing::debug!(to = from.0, error = %e, "batch ack not sent");
                    }
                });
            }
            PeerMessage::AckBatch { results } => {
                for (push_id, result) in results {
                    inner.on_ack(from.0, push_id, result);
                }
            }
            PeerMessage::Ack { push_id, result } => inner.on_ack(from.0, push_id, result),
            PeerMessage::Outcome { push_id, outcome } => match decode_outcome(&outcome) {
                Ok(outcome) => {
                    let id = u128::from_be_bytes(push_id.0);
                    lock(&inner.awaited).owners.remove(&id);
                    inner.remote_outcomes.record(PushId::from_u128(id), outcome);
                }
                Err(e) => tracing::warn!(from = from.0, error = %e, "undecodable outcome"),
            },
            PeerMessage::OutcomeQuery { push_id } => {
                let id = PushId::from_u128(u128::from_be_bytes(push_id.0));
                let answer = inner
                    .engine
                    .outcome(id)
                    .and_then(|o| encode_outcome(&o).ok());
                if let (Some(outcome), Some(link)) = (answer, inner.link(from.0)) {
                    metrics::counter!("herald_routing_outcome_queries_total", "side" => "answered")
                        .increment(1);
                    let _ = link.try_send(PeerMessage::Outcome { push_id, outcome });
                }
            }
            other => tracing::debug!(from = from.0, kind = other.kind(), "not a routing message"),
        }
    }
}

/// Origin side: ask owners about forwarded pushes whose outcome has not come back within
/// [`OUTCOME_QUERY_AFTER`] (the owner's relay can miss one: it lagged, or the owner restarted
/// and replayed the push from its WAL without knowing where it came from).
async fn query_outcomes(inner: Arc<Inner>) {
    let mut tick = tokio::time::interval(OUTCOME_QUERY_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let due = lock(&inner.awaited).due_now(OUTCOME_QUERIES_PER_ROUND);
        for (push, owner) in due {
            let Some(link) = inner.link(owner) else {
                continue;
            };
            let query = PeerMessage::OutcomeQuery {
                push_id: transport::PushId(push.to_be_bytes()),
            };
            if link.try_send(query).is_ok() {
                metrics::counter!("herald_routing_outcome_queries_total", "side" => "asked")
                    .increment(1);
            }
        }
    }
}

/// Send the outcomes of pushes forwarded here back to the nodes that accepted them.
async fn relay_outcomes(
    inner: Arc<Inner>,
    mut outcomes: broadcast::Receiver<herald_actors::OutcomeRecord>,
) {
    loop {
        let record = match outcomes.recv().await {
            Ok(record) => record,
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                metrics::counter!("herald_routing_outcomes_lost_total").increment(missed);
                tracing::warn!(
                    missed,
                    "outcome relay lagged; those outcomes stay on this node"
                );
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        let Some(origin) = lock(&inner.origins).take(record.push_id.as_u128()) else {
            continue;
        };
        let Some(link) = inner.link(origin) else {
            continue;
        };
        match encode_outcome(&record.outcome) {
            Ok(outcome) => {
                let push_id = transport::PushId(record.push_id.as_u128().to_be_bytes());
                if let Err(e) = link.try_send(PeerMessage::Outcome { push_id, outcome }) {
                    metrics::counter!("herald_routing_outcomes_lost_total").increment(1);
                    tracing::debug!(to = origin, error = %e, "outcome not sent");
                }
            }
            Err(e) => tracing::warn!(error = %e, "outcome not encodable"),
        }
    }
}
