//! The device shard actor: the WAL-backed queue of the pushes whose token hashes to it.
//!
//! - **Durability**: a batch is appended to the write-ahead log before `send` is acknowledged
//!   (in a task, so the shard keeps working and concurrent appends can share a group commit);
//!   a push is completed in the write-ahead log when it gets its final outcome; on (re)start the
//!   shard replays its pending records into the queue.
//! - **Priority lanes**: ready pushes go out 10 before 5 before 1, first come first served
//!   within a lane. The lanes are bounded: priority 5 and 1 pushes together may fill at most
//!   [`SHARD_LOW_LANES_PERCENT`](limits::SHARD_LOW_LANES_PERCENT) of the shard, so urgent pushes
//!   always find room (past it they are refused `Overloaded`).
//! - **Expiry**: a push past its `apns-expiration` ends `Expired` instead of being sent, and a
//!   retry is never scheduled past it.
//! - **Coalescing**: a new push with the same collapse id to the same token (and tenant)
//!   replaces a queued, unsent one, which ends `Coalesced { by }`.
//! - **Dedupe**: a push whose (tenant, push id) — its [`PushKey`] — is queued, being appended,
//!   or finished within [`SHARD_DEDUPE_RETENTION`](limits::SHARD_DEDUPE_RETENTION) (at most
//!   [`SHARD_DEDUPE_KEPT_MAX`](limits::SHARD_DEDUPE_KEPT_MAX) remembered) is not queued again:
//!   `send` returns its id and nothing more is sent. The memory of finished pushes is durable: a
//!   push completes in the WAL with a done marker ([`Wal::complete_at`](crate::wal::Wal)), and
//!   a (re)starting shard rebuilds the memory from the markers. Every per-push map is keyed by
//!   the [`PushKey`], so two tenants using the same `apns-id` never collide.
//! - **Token validity**: a token already invalidated ends `Unregistered` without a send; a 410
//!   records the invalidation (Apple's timestamp) and streams it.
//! - **Retries** by [`Disposition`]: `RetryLater`, `Reconnect`, `RefreshToken`,
//!   `TokenUpdateBackoff` back off exponentially with full jitter, `DeviceThrottled` backs off
//!   from a longer base, unsent requests are resent; all bounded by attempts and expiry.
//!   Credential errors do not use attempts: the push waits for the tenant's breaker.
//!
//! Every push ends with exactly one outcome. Restart policy: the engine supervisor restarts
//! a failed shard (one-for-one, restart-intensity limited); the new shard replays the write-ahead log.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tracing::Instrument as _;

use crate::apns::http2::SendError;
use crate::apns::{
    AuthError, CollapseId, Delivery, DeviceToken, Disposition, Notification, PreparedRequest,
};
use crate::backoff::{RetryDecision, retry_decision};
use crate::connection::{Job, JobResult};
use crate::engine::EngineShared;
use crate::keyed::{KeyMap, KeySet};
use crate::limits;
use crate::outcome::{
    Failure, Invalidation, Outcome, OutcomeRecord, PushId, PushKey, StoredOutcome,
};
use crate::seams::{DetRng, Timestamp};
use crate::tenant::TenantMsg;
use crate::token_state::{TokenKey, TokenValidity};
use crate::wal::{Completion, JointPart, WalError, WalRecord};

/// A push as the shard stores it (and appends to the WAL).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Push {
    pub(crate) push_id: u128,
    pub(crate) tenant: String,
    pub(crate) notification: Notification,
    pub(crate) accepted_at_ms: u64,
}

impl Push {
    /// The push's engine-wide key (tenant, push id).
    pub(crate) fn key(&self) -> PushKey {
        PushKey::new(&self.tenant, PushId::from_u128(self.push_id))
    }
}

/// [`EnqueueRequest::claim`]: nobody has decided yet.
pub(crate) const CLAIM_OPEN: u8 = 0;
/// [`EnqueueRequest::claim`]: the shard took the request (it will answer through `reply`).
pub(crate) const CLAIM_TAKEN: u8 = 1;
/// [`EnqueueRequest::claim`]: the caller stopped waiting first; the shard must drop it.
pub(crate) const CLAIM_ABANDONED: u8 = 2;

/// Pushes handed to a shard by `Herald::send_batch`.
///
/// The claim makes the answer exact: the shard swaps it `OPEN → TAKEN` before doing anything,
/// the caller swaps it `OPEN → ABANDONED` when it stops waiting for the shard to take it. Exactly
/// one wins, so either nothing is appended (the caller answers "not accepted") or the caller
/// goes on waiting for the append's own answer on `reply`.
#[derive(Debug)]
pub(crate) struct EnqueueRequest {
    pub(crate) pushes: Vec<Push>,
    pub(crate) claim: Arc<AtomicU8>,
    /// One answer per push, in order; sent when the WAL append finished.
    pub(crate) reply: oneshot::Sender<Vec<Enqueued>>,
    /// This shard's share of the batch's one WAL append (dropped unused when it brings no
    /// record, which lets the other shards' parts go).
    pub(crate) append: JointPart,
}

/// A WAL append that succeeded: its pushes are to be queued by the running shard.
#[derive(Debug)]
pub(crate) struct Appended {
    /// The shard actor that started the append (its `appending` bookkeeping is cleared only
    /// by itself; a restarted successor just queues the pushes).
    started_by: ractor::ActorId,
    /// The pushes appended, in order (empty if the append failed).
    fresh: Vec<Push>,
    /// The keys that were being appended, and how many were in lanes 5 and 1.
    keys: Vec<PushKey>,
    fresh_low: usize,
}

/// What became of one push handed to [`ShardMsg::Enqueue`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Enqueued {
    /// Queued (and in the WAL).
    Accepted,
    /// Already queued or recently finished: not queued again.
    Duplicate,
    /// The same push is being appended by an earlier request: its fate is that append's,
    /// unknown yet (answering `Duplicate` would claim an acceptance the append may not make).
    InProgress,
    /// The WAL is full.
    Full,
    /// The WAL failed.
    WalFailed(String),
}

/// The shard actor (see the [module docs](self)).
#[derive(Debug)]
pub(crate) struct ShardActor;

/// What a shard actor starts from.
#[derive(Debug)]
pub(crate) struct ShardArgs {
    pub(crate) shard: u32,
    pub(crate) engine: Arc<EngineShared>,
    /// Pushes this shard holds (shared with the handle, which reserves before sending).
    pub(crate) load: Arc<AtomicUsize>,
}

/// The shard actor's messages.
#[derive(Debug)]
pub(crate) enum ShardMsg {
    /// Append to the WAL and queue these pushes.
    Enqueue(Box<EnqueueRequest>),
    /// A WAL append started by `Enqueue` finished.
    Appended(Box<Appended>),
    /// A tenant or connection answers for a dispatched push.
    Answer {
        /// The push's key (named `push_id` for the connection's hand-off code).
        push_id: PushKey,
        dispatch: u64,
        result: JobResult,
    },
    /// A timer fired: release due retries, check answer deadlines.
    Wake,
    /// The WAL completion started by [`ShardState::flush_completions`] finished.
    Completed,
    /// Test hook: fail as a crash would.
    Crash,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Ready,
    Delayed(Instant),
    InFlight { dispatch: u64, deadline: Instant },
}

#[derive(Debug)]
struct Entry {
    push: Push,
    /// The push id (the `apns-id`).
    id: PushId,
    /// The id of its WAL record (its key; a record written before keys existed: its push id).
    wal_id: u128,
    request: Arc<PreparedRequest>,
    seq: u64,
    lane: u8,
    status: Status,
    attempts: u32,
    unsent: u32,
    started: Instant,
}

impl Entry {
    fn collapse_key(&self) -> Option<(String, DeviceToken, CollapseId)> {
        let n = &self.push.notification;
        n.collapse_id().map(|c| {
            (
                self.push.tenant.clone(),
                n.device_token().clone(),
                c.clone(),
            )
        })
    }
}

/// The shard actor's state.
#[derive(Debug)]
pub(crate) struct ShardState {
    shard: u32,
    engine: Arc<EngineShared>,
    load: Arc<AtomicUsize>,
    rng: DetRng,
    /// The pushes the shard holds. `entries`, `recent_set` and `appending` are hash tables
    /// (keys are SHA-256-derived, lookups per push message were a B-tree walk): they are only
    /// looked up, never iterated, so their order cannot reach behaviour (see `keyed`).
    entries: KeyMap<PushKey, Entry>,
    ready: BTreeSet<(u8, u64, PushKey)>,
    delayed: BTreeSet<(Instant, u64, PushKey)>,
    in_flight: BTreeSet<(Instant, PushKey)>,
    collapse: BTreeMap<(String, DeviceToken, CollapseId), PushKey>,
    /// Finished pushes remembered for dedupe, oldest first, with their finish time.
    recent: VecDeque<(PushKey, Timestamp)>,
    recent_set: KeySet<PushKey>,
    next_seq: u64,
    next_dispatch: u64,
    wake_at: Option<Instant>,
    /// Pushes held in lanes 5 and 1.
    low_lanes: usize,
    /// Pushes whose WAL append is in progress, and how many of them are in lanes 5 and 1.
    appending: KeySet<PushKey>,
    appending_low: usize,
    /// The pushes finished and not yet handed to the WAL for completion (each with its
    /// outcome as the done marker's note).
    completed: Vec<Completion>,
    /// The WAL completion in progress (at most one per shard: what finishes meanwhile waits in
    /// `completed` and goes with the next one).
    completing: Option<tokio::task::JoinHandle<()>>,
    /// `herald_queue_depth` and `herald_inflight` of this shard (registered once: a lookup
    /// with a label per message was a measurable share of a push's CPU).
    depth_gauge: metrics::Gauge,
    inflight_gauge: metrics::Gauge,
    /// `herald_pushes_total` by (outcome, reason) and `herald_push_latency_seconds` by outcome,
    /// registered on first use (a few dozen label pairs at most: outcomes × APNs reasons).
    outcome_counters: BTreeMap<(&'static str, String), metrics::Counter>,
    latency_histograms: BTreeMap<&'static str, metrics::Histogram>,
    span: tracing::Span,
}

impl Actor for ShardActor {
    type Msg = ShardMsg;
    type State = ShardState;
    type Arguments = ShardArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<ShardMsg>,
        args: ShardArgs,
    ) -> Result<ShardState, ActorProcessingErr> {
        let mut state = ShardState {
            shard: args.shard,
            rng: args.engine.fork_rng(),
            engine: args.engine,
            load: args.load,
            entries: KeyMap::default(),
            ready: BTreeSet::new(),
            delayed: BTreeSet::new(),
            in_flight: BTreeSet::new(),
            collapse: BTreeMap::new(),
            recent: VecDeque::new(),
            recent_set: KeySet::default(),
            next_seq: 0,
            next_dispatch: 0,
            wake_at: None,
            low_lanes: 0,
            appending: KeySet::default(),
            appending_low: 0,
            completed: Vec::new(),
            completing: None,
            depth_gauge: metrics::gauge!("herald_queue_depth", "shard" => args.shard.to_string()),
            inflight_gauge: metrics::gauge!("herald_inflight", "shard" => args.shard.to_string()),
            outcome_counters: BTreeMap::new(),
            latency_histograms: BTreeMap::new(),
            span: tracing::debug_span!("shard", shard = args.shard),
        };
        let span = state.span.clone();
        async {
            state.recover().await?;
            state.pump(&myself).await;
            state.flush_completions(&myself);
            Ok::<(), ActorProcessingErr>(())
        }
        .instrument(span)
        .await?;
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<ShardMsg>,
        msg: ShardMsg,
        state: &mut ShardState,
    ) -> Result<(), ActorProcessingErr> {
        let span = state.span.clone();
        on_message(myself, msg, state).instrument(span).await
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<ShardMsg>,
        state: &mut ShardState,
    ) -> Result<(), ActorProcessingErr> {
        // Complete what finished before the stop, so a clean stop sends nothing twice.
        if let Some(completing) = state.completing.take() {
            let _ = completing.await;
        }
        let done = std::mem::take(&mut state.completed);
        if !done.is_empty() {
            complete_in_wal(&state.engine, state.shard, done).await;
        }
        Ok(())
    }
}

/// The body of `ShardActor::handle`, run inside the actor's span.
async fn on_message(
    myself: ActorRef<ShardMsg>,
    msg: ShardMsg,
    state: &mut ShardState,
) -> Result<(), ActorProcessingErr> {
    match msg {
        ShardMsg::Enqueue(request) => state.enqueue(&myself, *request),
        ShardMsg::Appended(appended) => state.appended(&myself, *appended),
        ShardMsg::Answer {
            push_id,
            dispatch,
            result,
        } => state.answer(push_id, dispatch, result).await,
        ShardMsg::Wake => {
            state.wake_at = None;
            state.wake().await;
        }
        ShardMsg::Completed => state.completing = None,
        ShardMsg::Crash => return Err("shard crash requested".into()),
    }
    state.pump(&myself).await;
    state.flush_completions(&myself);
    Ok(())
}

/// How the shard writes its WAL records ([`Push`]) and done notes ([`DoneNote`]):
/// MessagePack (rmp-serde, fields by position: none of them is ever skipped). About half the
/// bytes and CPU of JSON, which escaped the payload into a string.
fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, String> {
    encode_into(Vec::new(), value)
}

/// [`encode`] a push's WAL record into a buffer sized for it up front (the payload plus the
/// other fields), rather than grown several times.
fn encode_record(push: &Push) -> Result<Vec<u8>, String> {
    let fields_bytes = 192 + push.tenant.len();
    encode_into(
        Vec::with_capacity(push.notification.payload().len() + fields_bytes),
        push,
    )
}

fn encode_into<T: Serialize>(mut buf: Vec<u8>, value: &T) -> Result<Vec<u8>, String> {
    rmp_serde::encode::write(&mut buf, value).map_err(|e| e.to_string())?;
    Ok(buf)
}

/// Read back what [`encode`] wrote, or the JSON that builds before 2026-12-07 wrote (a JSON
/// object starts with `{`, which no MessagePack array or map does), so a WAL written by an
/// older build replays. (An older build cannot read the new records: no downgrade.)
fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    if bytes.first() == Some(&b'{') {
        serde_json::from_slice(bytes).map_err(|e| e.to_string())
    } else {
        rmp_serde::from_slice(bytes).map_err(|e| e.to_string())
    }
}

/// What a push's done marker keeps (its note, [`encode`]d): whose push it was and how it
/// ended.
/// Written borrowing the tenant's name (no copy per push), read back owning it.
#[derive(Debug, Serialize, Deserialize)]
struct DoneNote<'a> {
    tenant: Cow<'a, str>,
    push_id: u128,
    outcome: StoredOutcome,
}

impl ShardState {
    /// Replay this shard's pending WAL records into the queue.
    async fn recover(&mut self) -> Result<(), ActorProcessingErr> {
        let records = self
            .engine
            .wal
            .replay()
            .await
            .map_err(|e| format!("shard {}: WAL replay failed: {e}", self.shard))?;
        let finished =
            self.engine.wal.finished().await.map_err(|e| {
                format!("shard {}: reading WAL done markers failed: {e}", self.shard)
            })?;
        // sim-bugs: a deliberately re-introduced bug (forget the WAL's pending pushes on a
        // restart), which the simulator must catch as accepted pushes lost in a crash.
        #[cfg(feature = "sim-bugs")]
        let records: Vec<WalRecord> =
            if crate::sim_bugs::enabled(crate::sim_bugs::SimBug::ForgetWalOnRestart) {
                let ids: Vec<u128> = records.iter().map(|r| r.id).collect();
                let _ = self.engine.wal.complete(ids).await;
                Vec::new()
            } else {
                records
            };
        let mut unreadable = Vec::new();
        let shard = self.shard;
        // The dedupe memory first, so a pending record that was also finished (a completion
        // lost in a crash) is still replayed: the WAL says it is pending.
        let now = self.engine.clock.now();
        for marker in finished.into_iter().filter(|m| m.shard == shard) {
            self.remember(PushKey::from_u128(marker.id), marker.at, now);
            // What became of the push, so `outcome` still answers after a restart.
            if marker.note.is_empty() {
                continue;
            }
            match decode::<DoneNote>(&marker.note)
                .and_then(|note| Ok((note.outcome.to_outcome()?, note)))
            {
                Ok((outcome, note)) => self.engine.outcomes.record_for(
                    &note.tenant,
                    PushId::from_u128(note.push_id),
                    outcome,
                ),
                Err(error) => {
                    tracing::warn!(shard = self.shard, %error, "unreadable done-marker outcome");
                }
            }
        }
        for record in records.into_iter().filter(|r| r.shard == shard) {
            match decode::<Push>(&record.data) {
                Ok(push) => {
                    let key = push.key();
                    if !self.entries.contains_key(&key) {
                        self.insert(push, key, record.id);
                    }
                }
                Err(e) => unreadable.push((record.id, e)),
            }
        }
        for (wal_id, error) in unreadable {
            tracing::error!(shard = self.shard, %error, "unreadable WAL record");
            let _ = self.engine.wal.complete(vec![wal_id]).await;
            let outcome = Outcome::Failed {
                reason: Failure::Unreadable(error),
            };
            // The push id is inside the unreadable bytes: the outcome is kept under the
            // record's id.
            self.engine
                .outcomes
                .record(PushId::from_u128(wal_id), outcome);
        }
        self.load.store(self.entries.len(), Ordering::Release);
        if !self.entries.is_empty() {
            tracing::info!(
                shard = self.shard,
                pushes = self.entries.len(),
                "recovered from the WAL"
            );
        }
        self.publish_gauges();
        Ok(())
    }

    /// Check the pushes of `request` (duplicates, lane bounds) and append the new ones to the
    /// WAL in a task, so the shard keeps working (and concurrent appends can share one commit,
    /// e.g. with a group-commit WAL) while the write is in progress.
    ///
    /// The task answers the caller with the append's own verdict (never a guess) and hands the
    /// appended pushes to the running shard ([`ShardMsg::Appended`]).
    fn enqueue(&mut self, myself: &ActorRef<ShardMsg>, request: EnqueueRequest) {
        let EnqueueRequest {
            pushes,
            claim,
            reply,
            append,
        } = request;
        if claim
            .compare_exchange(CLAIM_OPEN, CLAIM_TAKEN, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            // The caller stopped waiting before the shard took the pushes, and answered that
            // they were not accepted: keep it true by doing nothing.
            return;
        }
        let now = self.engine.clock.now();
        self.forget_expired(now);
        let mut answers = Vec::with_capacity(pushes.len());
        let mut ids = Vec::with_capacity(pushes.len());
        let mut fresh = Vec::new();
        let mut keys = Vec::new();
        let mut records = Vec::new();
        // Each push's answer: decided now, or the verdict of this request's append (`None`),
        // or — a second copy of a push in this very batch — its first copy's answer.
        let mut first_in_batch: BTreeMap<PushKey, usize> = BTreeMap::new();
        // Second copies of pushes whose first copy is appended here.
        let mut record_copies: Vec<usize> = Vec::new();
        let low_max =
            (self.engine.tuning.shard_queue_max * limits::SHARD_LOW_LANES_PERCENT / 100).max(1);
        let mut low = self.low_lanes + self.appending_low;
        let mut fresh_low = 0;
        let tenant = pushes.first().map(|p| p.tenant.clone()).unwrap_or_default();
        for push in pushes {
            let key = push.key();
            ids.push(PushId::from_u128(push.push_id));
            if self.entries.contains_key(&key) || self.recent_set.contains(&key) {
                metrics::counter!("herald_duplicates_total").increment(1);
                tracing::trace!(push = %PushId::from_u128(push.push_id), "duplicate");
                answers.push(Some(Enqueued::Duplicate));
                continue;
            }
            if self.appending.contains(&key) {
                metrics::counter!("herald_duplicates_total").increment(1);
                tracing::trace!(push = %PushId::from_u128(push.push_id), "in progress");
                answers.push(Some(Enqueued::InProgress));
                continue;
            }
            if let Some(&first) = first_in_batch.get(&key) {
                metrics::counter!("herald_duplicates_total").increment(1);
                let answer = match &answers[first] {
                    // The first copy is appended: this one shares the append's fate.
                    None => {
                        record_copies.push(answers.len());
                        Enqueued::Duplicate
                    }
                    // The first copy was refused: so is this one.
                    Some(decided) => decided.clone(),
                };
                answers.push(Some(answer));
                continue;
            }
            first_in_batch.insert(key, answers.len());
            let is_low = lane_of(&push.notification) > 0;
            if is_low && low >= low_max {
                answers.push(Some(Enqueued::Full));
                continue;
            }
            match encode_record(&push) {
                Ok(data) => {
                    if is_low {
                        low += 1;
                        fresh_low += 1;
                    }
                    records.push(WalRecord::new(key.as_u128(), self.shard, data));
                    keys.push(key);
                    fresh.push(push);
                    answers.push(None);
                }
                Err(e) => answers.push(Some(Enqueued::WalFailed(e))),
            }
        }
        if records.is_empty() {
            // Without records every answer is decided already (`None` marks a record).
            let answers = answers
                .into_iter()
                .map(|a| a.unwrap_or(Enqueued::Accepted))
                .collect();
            answer_enqueue(&self.engine, self.shard, &tenant, &ids, reply, answers);
            return;
        }
        for key in &keys {
            self.appending.insert(*key);
        }
        self.appending_low += fresh_low;
        let engine = self.engine.clone();
        let shard = self.shard;
        let started_by = myself.get_id();
        let me = myself.clone();
        tokio::spawn(
            async move {
                let result = if crate::buggify::fire("wal_append_fails", 0.02) {
                    Err(WalError::Io("buggify: injected append failure".into()))
                } else {
                    append.append(records).await
                };
                tracing::trace!(pushes = ?ids, ok = result.is_ok(), "WAL append finished");
                let verdict = match result {
                    Ok(()) => Enqueued::Accepted,
                    Err(WalError::Full) => Enqueued::Full,
                    Err(e) => Enqueued::WalFailed(e.to_string()),
                };
                let appended = Appended {
                    started_by,
                    fresh: if verdict == Enqueued::Accepted {
                        fresh
                    } else {
                        Vec::new()
                    },
                    keys,
                    fresh_low,
                };
                if appended.fresh.is_empty() {
                    // Nothing to queue: only the starting shard's bookkeeping to clear.
                    let _ = me.send_message(ShardMsg::Appended(Box::new(appended)));
                } else {
                    hand_over(&engine, shard, appended).await;
                }
                let mut answers: Vec<Enqueued> = answers
                    .into_iter()
                    .map(|a| a.unwrap_or_else(|| verdict.clone()))
                    .collect();
                if verdict != Enqueued::Accepted {
                    for copy in record_copies {
                        answers[copy] = verdict.clone();
                    }
                }
                answer_enqueue(&engine, shard, &tenant, &ids, reply, answers);
            }
            .instrument(self.span.clone()),
        );
    }

    /// A WAL append finished: clear its bookkeeping (if this shard started it) and queue its
    /// pushes, unless they are known already (a restarted shard may have replayed them).
    fn appended(&mut self, myself: &ActorRef<ShardMsg>, appended: Appended) {
        let Appended {
            started_by,
            fresh,
            keys,
            fresh_low,
        } = appended;
        let mine = started_by == myself.get_id();
        if mine {
            for key in &keys {
                self.appending.remove(key);
            }
            self.appending_low = self.appending_low.saturating_sub(fresh_low);
        }
        // `keys` are the pushes' keys, in order (computing one is a SHA-256).
        for (push, key) in fresh.into_iter().zip(keys) {
            if self.entries.contains_key(&key) || self.recent_set.contains(&key) {
                tracing::trace!(push = %PushId::from_u128(push.push_id), "appended: known already");
                continue;
            }
            tracing::trace!(push = %PushId::from_u128(push.push_id), mine, "appended: queued");
            if !mine {
                // Its admission reservation was reset when this shard recovered: take it again.
                self.load.fetch_add(1, Ordering::AcqRel);
            }
            self.insert(push, key, key.as_u128());
        }
        self.publish_gauges();
    }

    /// Queue `push` (whose key is `key`, its WAL record `wal_id`), coalescing an older unsent
    /// push with the same collapse key.
    fn insert(&mut self, push: Push, key: PushKey, wal_id: u128) {
        let id = PushId::from_u128(push.push_id);
        let request = Arc::new(push.notification.prepare());
        let lane = lane_of(&push.notification);
        let seq = self.next_seq;
        self.next_seq += 1;
        let entry = Entry {
            push,
            id,
            wal_id,
            request,
            seq,
            lane,
            status: Status::Ready,
            attempts: 0,
            unsent: 0,
            started: Instant::now(),
        };
        if let Some(collapse) = entry.collapse_key()
            && let Some(older) = self.collapse.insert(collapse, key)
        {
            let replaceable = self
                .entries
                .get(&older)
                .is_some_and(|e| !matches!(e.status, Status::InFlight { .. }));
            if replaceable {
                self.finish_sync(older, Outcome::Coalesced { by: id });
            }
        }
        if lane > 0 {
            self.low_lanes += 1;
        }
        self.ready.insert((lane, seq, key));
        self.entries.insert(key, entry);
    }

    /// Hand ready pushes to their tenants, most urgent first, up to the in-flight bound.
    async fn pump(&mut self, myself: &ActorRef<ShardMsg>) {
        let inflight_max = self.engine.tuning.shard_inflight_max;
        while self.in_flight.len() < inflight_max {
            let Some(&(lane, seq, id)) = self.ready.iter().next() else {
                break;
            };
            self.ready.remove(&(lane, seq, id));
            let now = self.engine.clock.now();
            let Some(entry) = self.entries.get(&id) else {
                continue;
            };
            // (`id` is the push's key from here on.)
            let notification = &entry.push.notification;
            let expired = notification.expiration().is_some_and(|e| e.is_expired(now));
            let tenant_id = entry.push.tenant.clone();
            let key = TokenKey::new(tenant_id.clone(), notification.device_token().as_str());
            let invalidated = match self.engine.tokens.check(&key) {
                TokenValidity::Invalidated { at } => Some(at),
                _ => None,
            };
            // sim-bugs: a deliberately re-introduced bug (skip the token-validity check), which
            // the simulator must catch as a send after the invalidation was applied.
            #[cfg(feature = "sim-bugs")]
            let invalidated = invalidated
                .filter(|_| !crate::sim_bugs::enabled(crate::sim_bugs::SimBug::SkipTokenCheck));
            let request = entry.request.clone();
            if expired {
                self.finish(id, Outcome::Expired).await;
                continue;
            }
            if let Some(at) = invalidated {
                self.finish(id, Outcome::Unregistered { at }).await;
                continue;
            }
            let Some(tenant) = self.engine.tenant_actor(&tenant_id) else {
                if self.engine.tenant_exists(&tenant_id) {
                    // Restarting: try again shortly.
                    let delay = self.engine.tuning.retry_backoff.ceiling(1);
                    self.delay(id, delay);
                } else {
                    self.finish(
                        id,
                        Outcome::Failed {
                            reason: Failure::TenantRemoved,
                        },
                    )
                    .await;
                }
                continue;
            };
            let dispatch = self.next_dispatch;
            self.next_dispatch += 1;
            let deadline = Instant::now() + self.engine.tuning.dispatch_answer_max;
            let job = Job {
                push_id: id,
                dispatch,
                request,
                reply_to: myself.clone(),
                probe: false,
                answered: false,
            };
            if tenant.send_message(TenantMsg::Dispatch(job)).is_err() {
                let delay = self.engine.tuning.retry_backoff.ceiling(1);
                self.delay(id, delay);
                continue;
            }
            if let Some(entry) = self.entries.get_mut(&id) {
                entry.status = Status::InFlight { dispatch, deadline };
            }
            self.in_flight.insert((deadline, id));
        }
        self.publish_gauges();
        self.schedule_wake(myself);
    }

    async fn answer(&mut self, id: PushKey, dispatch: u64, result: JobResult) {
        let Some(entry) = self.entries.get_mut(&id) else {
            return;
        };
        let deadline = match entry.status {
            Status::InFlight {
                dispatch: d,
                deadline,
            } if d == dispatch => deadline,
            _ => return, // an answer to an older hand-off
        };
        self.in_flight.remove(&(deadline, id));
        entry.status = Status::Ready;
        let tuning = &self.engine.tuning;
        match result {
            JobResult::Deferred { retry_in } => self.delay(id, retry_in),
            JobResult::Answered(Delivery::Accepted { apns_id }) => {
                entry.attempts += 1;
                self.finish(id, Outcome::Delivered { apns_id }).await;
            }
            JobResult::Answered(Delivery::Rejected(rejection)) => {
                entry.attempts += 1;
                let reason = rejection.reason;
                match reason.disposition() {
                    Disposition::Unregistered => {
                        let at = rejection
                            .timestamp
                            .unwrap_or_else(|| self.engine.clock.now());
                        let token = entry.push.notification.device_token().clone();
                        let tenant = entry.push.tenant.clone();
                        let key = TokenKey::new(tenant.clone(), token.as_str());
                        if let Err(error) = self.engine.tokens.invalidate(key, at).await {
                            tracing::warn!(%error, "could not record a token invalidation");
                        }
                        let _ = self.engine.invalidation_tx.send(Invalidation {
                            tenant,
                            device_token: token,
                            at,
                        });
                        self.finish(id, Outcome::Unregistered { at }).await;
                    }
                    Disposition::Credentials => {
                        // Not the push's fault: it waits for the tenant's breaker.
                        entry.attempts -= 1;
                        let delay = tuning.breaker_open_for;
                        self.delay(id, delay);
                    }
                    Disposition::DeviceThrottled => {
                        let backoff = tuning.throttle_backoff;
                        self.retry(id, &backoff, reason.as_str()).await;
                    }
                    Disposition::RetryLater
                    | Disposition::Reconnect
                    | Disposition::RefreshToken
                    | Disposition::TokenUpdateBackoff => {
                        let backoff = tuning.retry_backoff;
                        self.retry(id, &backoff, reason.as_str()).await;
                    }
                    _ => {
                        self.finish(
                            id,
                            Outcome::Failed {
                                reason: Failure::Rejected(reason),
                            },
                        )
                        .await;
                    }
                }
            }
            JobResult::Failed(error) => self.send_failed(id, &error).await,
            JobResult::Lost => {
                entry.attempts += 1;
                let backoff = tuning.retry_backoff;
                self.retry(id, &backoff, "lost").await;
            }
        }
    }

    async fn send_failed(&mut self, id: PushKey, error: &SendError) {
        let Some(entry) = self.entries.get_mut(&id) else {
            return;
        };
        let backoff = self.engine.tuning.retry_backoff;
        if let SendError::Auth(auth) = error
            && *auth != AuthError::TokenExhausted
        {
            // Unusable credentials: like a 403, the push waits for the tenant's breaker
            // (and new credentials) without using attempts.
            let delay = self.engine.tuning.breaker_open_for;
            self.delay(id, delay);
        } else if error.was_sent() {
            entry.attempts += 1;
            self.retry(id, &backoff, &error.to_string()).await;
        } else {
            entry.unsent += 1;
            if entry.unsent > limits::PUSH_UNSENT_RESENDS_MAX {
                let reason = Failure::AttemptsExhausted(error.to_string());
                self.finish(id, Outcome::Failed { reason }).await;
            } else {
                let delay = backoff.delay(entry.unsent.min(4), &mut self.rng);
                self.delay(id, delay);
            }
        }
    }

    /// Schedule another attempt after a failed one, or end the push.
    async fn retry(&mut self, id: PushKey, backoff: &crate::backoff::Backoff, last: &str) {
        let Some(entry) = self.entries.get(&id) else {
            return;
        };
        let decision = retry_decision(
            backoff,
            entry.attempts,
            self.engine.tuning.attempts_max,
            self.engine.clock.now(),
            entry.push.notification.expiration(),
            &mut self.rng,
        );
        match decision {
            RetryDecision::RetryAfter(delay) => {
                metrics::counter!("herald_retries_total").increment(1);
                self.delay(id, delay);
            }
            RetryDecision::Expired => self.finish(id, Outcome::Expired).await,
            RetryDecision::Exhausted => {
                let reason = Failure::AttemptsExhausted(last.to_owned());
                self.finish(id, Outcome::Failed { reason }).await;
            }
        }
    }

    fn delay(&mut self, id: PushKey, delay: Duration) {
        if let Some(entry) = self.entries.get_mut(&id) {
            let due = Instant::now() + delay;
            entry.status = Status::Delayed(due);
            self.delayed.insert((due, entry.seq, id));
        }
    }

    /// Release due retries; presume lost the pushes whose answer is overdue.
    async fn wake(&mut self) {
        let now = Instant::now();
        while let Some(&(due, seq, id)) = self.delayed.iter().next() {
            if due > now {
                break;
            }
            self.delayed.remove(&(due, seq, id));
            if let Some(entry) = self.entries.get_mut(&id)
                && entry.status == Status::Delayed(due)
            {
                entry.status = Status::Ready;
                self.ready.insert((entry.lane, entry.seq, id));
            }
        }
        while let Some(&(deadline, id)) = self.in_flight.iter().next() {
            if deadline > now {
                break;
            }
            self.in_flight.remove(&(deadline, id));
            let push = self.entries.get(&id).map(|e| e.id.to_string());
            tracing::warn!(
                shard = self.shard,
                push,
                "no answer in time; presuming lost"
            );
            if let Some(entry) = self.entries.get_mut(&id) {
                entry.status = Status::Ready;
                entry.attempts += 1;
            }
            let backoff = self.engine.tuning.retry_backoff;
            self.retry(id, &backoff, "no answer").await;
        }
    }

    fn schedule_wake(&mut self, myself: &ActorRef<ShardMsg>) {
        let next_delayed = self.delayed.iter().next().map(|(due, _, _)| *due);
        let next_deadline = self.in_flight.iter().next().map(|(deadline, _)| *deadline);
        let next = match (next_delayed, next_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let Some(next) = next else {
            return;
        };
        if self.wake_at.is_some_and(|w| w <= next) {
            return;
        }
        self.wake_at = Some(next);
        let delay = next.saturating_duration_since(Instant::now());
        myself.send_after(delay, || ShardMsg::Wake);
    }

    /// End push `id` with `outcome`: record and stream it, complete it in the write-ahead log
    /// with the next batch (see [`Self::flush_completions`]).
    async fn finish(&mut self, id: PushKey, outcome: Outcome) {
        self.finish_sync(id, outcome);
    }

    /// Complete the finished pushes in the write-ahead log, in one WAL operation, in a task:
    /// the shard keeps answering and dispatching while the WAL writes. One completion runs at
    /// a time per shard; pushes finished meanwhile go with the next, so under load a
    /// completion carries everything finished during the previous one's commit. Their number
    /// is bounded by the shard's queue bound (each was a queued push).
    fn flush_completions(&mut self, myself: &ActorRef<ShardMsg>) {
        if self.completed.is_empty() || self.completing.is_some() {
            return;
        }
        let done = std::mem::take(&mut self.completed);
        let engine = self.engine.clone();
        let shard = self.shard;
        let me = myself.clone();
        let task = async move {
            complete_in_wal(&engine, shard, done).await;
            let _ = me.send_message(ShardMsg::Completed);
        };
        self.completing = Some(tokio::spawn(task.instrument(self.span.clone())));
    }

    /// `finish` without waiting: the write-ahead log completion is left for
    /// [`Self::flush_completions`]. Returns false if `id` was not queued.
    fn finish_sync(&mut self, id: PushKey, outcome: Outcome) -> bool {
        let Some(entry) = self.entries.remove(&id) else {
            return false;
        };
        tracing::trace!(push = %entry.id, outcome = outcome.label(), "finished");
        self.ready.remove(&(entry.lane, entry.seq, id));
        if entry.lane > 0 {
            self.low_lanes = self.low_lanes.saturating_sub(1);
        }
        match entry.status {
            Status::Delayed(due) => {
                self.delayed.remove(&(due, entry.seq, id));
            }
            Status::InFlight { deadline, .. } => {
                self.in_flight.remove(&(deadline, id));
            }
            Status::Ready => {}
        }
        if let Some(key) = entry.collapse_key()
            && self.collapse.get(&key) == Some(&id)
        {
            self.collapse.remove(&key);
        }
        let note = DoneNote {
            tenant: Cow::Borrowed(&entry.push.tenant),
            push_id: entry.id.as_u128(),
            outcome: StoredOutcome::from(&outcome),
        };
        // A note that cannot be encoded (never expected) only costs the outcome after a
        // restart: the marker, and so the dedupe memory, is kept.
        let note = encode(&note).unwrap_or_default();
        self.completed.push(Completion::new(entry.wal_id, note));
        let now = self.engine.clock.now();
        self.remember(id, now, now);
        release(&self.load);
        self.engine.release_tenant(&entry.push.tenant);
        let label = outcome.label();
        self.outcome_counters
            .entry((label, outcome.reason_label()))
            .or_insert_with_key(|(label, reason)| {
                metrics::counter!(
                    "herald_pushes_total",
                    "outcome" => *label,
                    "reason" => reason.clone()
                )
            })
            .increment(1);
        self.latency_histograms
            .entry(label)
            .or_insert_with(
                || metrics::histogram!("herald_push_latency_seconds", "outcome" => label),
            )
            .record(entry.started.elapsed().as_secs_f64());
        self.engine.publish(OutcomeRecord {
            push_id: entry.id,
            tenant: entry.push.tenant,
            device_token: entry.push.notification.device_token().clone(),
            outcome,
            attempts: entry.attempts,
        });
        true
    }

    /// Remember `key`, finished at `at`, for dedupe (unless it is past the retention at `now`),
    /// forgetting the oldest past [`SHARD_DEDUPE_KEPT_MAX`](limits::SHARD_DEDUPE_KEPT_MAX).
    fn remember(&mut self, key: PushKey, at: Timestamp, now: Timestamp) {
        if is_past_retention(at, now) || !self.recent_set.insert(key) {
            return;
        }
        self.recent.push_back((key, at));
        while self.recent.len() > limits::SHARD_DEDUPE_KEPT_MAX {
            if let Some((old, _)) = self.recent.pop_front() {
                self.recent_set.remove(&old);
            }
        }
    }

    /// Forget the finished pushes past the dedupe retention at `now`.
    fn forget_expired(&mut self, now: Timestamp) {
        while let Some(&(key, at)) = self.recent.front() {
            if !is_past_retention(at, now) {
                break;
            }
            self.recent.pop_front();
            self.recent_set.remove(&key);
        }
    }

    fn publish_gauges(&self) {
        self.depth_gauge.set(self.entries.len() as f64);
        self.inflight_gauge.set(self.in_flight.len() as f64);
    }
}

/// Complete `done` in the write-ahead log, with done markers finished now (so the dedupe
/// memory and the outcomes survive a restart). A failure only logs: the pushes are replayed
/// after a restart (at-least-once).
async fn complete_in_wal(engine: &EngineShared, shard: u32, done: Vec<Completion>) {
    let now = engine.clock.now();
    if let Err(error) = engine.wal.complete_with(done, now).await {
        tracing::warn!(shard, %error, "WAL completion failed");
    }
}

/// True if a push finished at `at` is no longer remembered at `now`.
fn is_past_retention(at: Timestamp, now: Timestamp) -> bool {
    at.saturating_add(limits::SHARD_DEDUPE_RETENTION) < now
}

/// Send the caller of an `Enqueue` its answers. If it stopped waiting (it answered
/// `OutcomeUnknown`), do what it would have done for every push not accepted: release its
/// admission reservations, and record for a push the WAL refused that it was not accepted,
/// so the outcome lookup tells the truth.
fn answer_enqueue(
    engine: &EngineShared,
    shard: u32,
    tenant: &str,
    ids: &[PushId],
    reply: oneshot::Sender<Vec<Enqueued>>,
    answers: Vec<Enqueued>,
) {
    let Err(answers) = reply.send(answers) else {
        return;
    };
    for (id, answer) in ids.iter().zip(answers) {
        let why = match answer {
            Enqueued::Accepted => continue,
            Enqueued::Duplicate | Enqueued::InProgress => None,
            Enqueued::Full => Some("write-ahead log or shard full".to_owned()),
            Enqueued::WalFailed(e) => Some(e),
        };
        engine.release_reservation(tenant, shard);
        if let Some(why) = why {
            let outcome = Outcome::Failed {
                reason: Failure::NotAccepted(why),
            };
            engine.outcomes.record_for(tenant, *id, outcome);
        }
    }
}

/// Hand the pushes of a successful append to the shard running now: the one that started it,
/// or its successor if it crashed meanwhile. The successor may have replayed them already (it
/// skips known pushes) or not (its replay ran before the append committed). If no shard takes
/// them within [`SHARD_HANDOVER_ATTEMPTS_MAX`](limits::SHARD_HANDOVER_ATTEMPTS_MAX) tries (the
/// engine is stopping), they stay in the WAL for the next start.
async fn hand_over(engine: &EngineShared, shard: u32, appended: Appended) {
    let mut message = ShardMsg::Appended(Box::new(appended));
    for attempt in 0..limits::SHARD_HANDOVER_ATTEMPTS_MAX {
        if let Some(actor) = engine.shard_actor(shard) {
            match actor.send_message(message) {
                Ok(()) => return,
                Err(ractor::MessagingErr::SendErr(back)) => message = back,
                Err(_) => return,
            }
        }
        tokio::time::sleep(limits::SHARD_HANDOVER_PAUSE * (attempt + 1)).await;
    }
    tracing::warn!(
        shard,
        "no running shard took appended pushes; they stay in the WAL for the next start"
    );
}

/// The lane of a push: 0 for priority 10, 1 for 5, 2 for 1.
fn lane_of(notification: &Notification) -> u8 {
    match notification.effective_priority().as_u8() {
        10 => 0,
        5 => 1,
        _ => 2,
    }
}

fn release(load: &AtomicUsize) {
    let _ = load.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
}

/// Stable shard of a device token: FNV-1a (64-bit) of the token's bytes, mixed by fmix64,
/// modulo `shards`.
///
/// Never std's `RandomState`, so every process and run agrees.
pub(crate) fn shard_of(token: &DeviceToken, shards: u32) -> u32 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in token.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // FNV-1a's low bits depend only on the inputs' low bits (a token of one repeated byte
    // lands in the same shard of 4 whatever the byte): finish with MurmurHash3's fmix64 so
    // every bit of the token moves every bit of the hash before the modulo.
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    hash ^= hash >> 33;
    (hash % u64::from(shards.max(1))) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_of_is_stable_and_spread() {
        let token = DeviceToken::from_bytes(&[0xAB; 32]).unwrap();
        // FNV-1a is fixed: the same token maps to the same shard in every process.
        assert_eq!(shard_of(&token, 1024), shard_of(&token, 1024));
        assert_eq!(shard_of(&token, 1), 0);
        let mut counts = [0u32; 8];
        for n in 0u32..8000 {
            let mut bytes = [0u8; 32];
            bytes[..4].copy_from_slice(&n.to_be_bytes());
            counts[shard_of(&DeviceToken::from_bytes(&bytes).unwrap(), 8) as usize] += 1;
        }
        assert!(counts.iter().all(|c| (800..1200).contains(c)), "{counts:?}");
        // Low-entropy tokens spread too (plain FNV-1a put every one-byte-repeated token of
        // 32 bytes in one shard of 4).
        let mut hit = [0u32; 4];
        for b in 0..=255u8 {
            hit[shard_of(&DeviceToken::from_bytes(&[b; 32]).unwrap(), 4) as usize] += 1;
        }
        assert!(hit.iter().all(|c| (32..96).contains(c)), "{hit:?}");
    }

    fn sample_push(expiring: bool) -> Push {
        use crate::apns::{Payload, PushType, Topic};
        let mut payload = Payload::new();
        payload.alert("caf\u{e9} \"quoted\" \\ line\nbreak");
        let mut builder = Notification::builder(
            DeviceToken::from_bytes(&[7; 32]).unwrap(),
            "com.example.app".parse::<Topic>().unwrap(),
            PushType::Alert,
        );
        builder.payload(&payload);
        if expiring {
            builder
                .priority(crate::apns::Priority::Normal)
                .expiration(crate::apns::Expiration::At(Timestamp::from_secs(
                    1_800_000_000,
                )))
                .collapse_id("score".parse().unwrap());
        }
        Push {
            push_id: u128::MAX - 5,
            tenant: "acme".to_owned(),
            notification: builder.build().unwrap(),
            accepted_at_ms: 1_700_000_000_123,
        }
    }

    #[test]
    fn wal_records_and_done_notes_round_trip_and_old_json_still_reads() {
        for push in [sample_push(false), sample_push(true)] {
            let bytes = encode(&push).unwrap();
            assert_eq!(encode_record(&push).unwrap(), bytes);
            assert_ne!(bytes.first(), Some(&b'{'));
            let back: Push = decode(&bytes).unwrap();
            assert_eq!(
                (
                    back.push_id,
                    &back.tenant,
                    &back.notification,
                    back.accepted_at_ms
                ),
                (
                    push.push_id,
                    &push.tenant,
                    &push.notification,
                    push.accepted_at_ms
                )
            );
            // What builds before MessagePack wrote.
            let json = serde_json::to_vec(&push).unwrap();
            let old: Push = decode(&json).unwrap();
            assert_eq!(old.notification, push.notification);
            assert!(
                bytes.len() < json.len(),
                "{} vs {}",
                bytes.len(),
                json.len()
            );
        }
        let outcomes = [
            StoredOutcome::Delivered {
                apns_id: Some("ABC".into()),
            },
            StoredOutcome::Delivered { apns_id: None },
            StoredOutcome::Unregistered { at_ms: 5 },
            StoredOutcome::Rejected {
                reason: "BadDeviceToken".into(),
            },
            StoredOutcome::TenantRemoved,
            StoredOutcome::Expired,
            StoredOutcome::Coalesced { by: [9; 16] },
        ];
        for outcome in outcomes {
            let note = DoneNote {
                tenant: "acme".into(),
                push_id: 42,
                outcome: outcome.clone(),
            };
            for bytes in [encode(&note).unwrap(), serde_json::to_vec(&note).unwrap()] {
                let back: DoneNote = decode(&bytes).unwrap();
                assert_eq!((&*back.tenant, back.push_id), ("acme", 42));
                assert_eq!(back.outcome, outcome);
            }
        }
        // Garbage is an error, never a panic.
        for bytes in [&b""[..], b"{", b"\x94\x01", b"\xff\xff"] {
            assert!(decode::<Push>(bytes).is_err());
        }
    }
}
