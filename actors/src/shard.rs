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
//! - **Dedupe**: a push id (= `apns-id`) already queued or recently finished is not queued again.
//! - **Token validity**: a token already invalidated ends `Unregistered` without a send; a 410
//!   records the invalidation (Apple's timestamp) and streams it.
//! - **Retries** by [`Disposition`]: `RetryLater`, `Reconnect`, `RefreshToken`,
//!   `TokenUpdateBackoff` back off exponentially with full jitter, `DeviceThrottled` backs off
//!   from a longer base, unsent requests are resent; all bounded by attempts and expiry.
//!   Credential errors do not use attempts: the push waits for the tenant's breaker.
//!
//! Every push ends with exactly one outcome. Restart policy: the engine supervisor restarts
//! a failed shard (one-for-one, restart-intensity limited); the new shard replays the write-ahead log.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tracing::Instrument as _;

use crate::apns::http2::SendError;
use crate::apns::{
    AuthError, CollapseId, Delivery, DeviceToken, Disposition, Notification, PreparedRequest,
};
use crate::backoff::{RetryDecision, retry_decision};
use crate::connection::{Job, JobResult};
use crate::engine::EngineShared;
use crate::limits;
use crate::outcome::{Failure, Invalidation, Outcome, OutcomeRecord, PushId};
use crate::seams::DetRng;
use crate::tenant::TenantMsg;
use crate::token_state::{TokenKey, TokenValidity};
use crate::wal::{WalError, WalRecord};

/// A push as the shard stores it (and appends to the WAL).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Push {
    pub(crate) push_id: u128,
    pub(crate) tenant: String,
    pub(crate) notification: Notification,
    pub(crate) accepted_at_ms: u64,
}

/// An `Enqueue` whose WAL append is in progress.
#[derive(Debug)]
pub(crate) struct Appending {
    /// The pushes being appended, in order.
    fresh: Vec<Push>,
    /// How many of them are in lanes 5 and 1.
    fresh_low: usize,
    /// One answer per push handed in: decided already (`Some`), or the append's verdict.
    answers: Vec<Option<Enqueued>>,
    result: Result<(), WalError>,
    reply: RpcReplyPort<Vec<Enqueued>>,
}

/// What became of one push handed to [`ShardMsg::Enqueue`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Enqueued {
    /// Queued (and in the WAL).
    Accepted,
    /// Already queued or recently finished: not queued again.
    Duplicate,
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
    Enqueue(Vec<Push>, RpcReplyPort<Vec<Enqueued>>),
    /// A WAL append started by `Enqueue` finished.
    Appended(Box<Appending>),
    /// A tenant or connection answers for a dispatched push.
    Answer {
        push_id: PushId,
        dispatch: u64,
        result: JobResult,
    },
    /// A timer fired: release due retries, check answer deadlines.
    Wake,
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
    entries: BTreeMap<PushId, Entry>,
    ready: BTreeSet<(u8, u64, PushId)>,
    delayed: BTreeSet<(Instant, u64, PushId)>,
    in_flight: BTreeSet<(Instant, PushId)>,
    collapse: BTreeMap<(String, DeviceToken, CollapseId), PushId>,
    recent: VecDeque<PushId>,
    recent_set: BTreeSet<PushId>,
    next_seq: u64,
    next_dispatch: u64,
    wake_at: Option<Instant>,
    /// Pushes held in lanes 5 and 1.
    low_lanes: usize,
    /// Pushes whose WAL append is in progress, and how many of them are in lanes 5 and 1.
    appending: BTreeSet<PushId>,
    appending_low: usize,
    /// Push ids finished while handling the current message, to complete in the WAL.
    completed: Vec<u128>,
    shard_label: String,
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
            entries: BTreeMap::new(),
            ready: BTreeSet::new(),
            delayed: BTreeSet::new(),
            in_flight: BTreeSet::new(),
            collapse: BTreeMap::new(),
            recent: VecDeque::new(),
            recent_set: BTreeSet::new(),
            next_seq: 0,
            next_dispatch: 0,
            wake_at: None,
            low_lanes: 0,
            appending: BTreeSet::new(),
            appending_low: 0,
            completed: Vec::new(),
            shard_label: args.shard.to_string(),
            span: tracing::debug_span!("shard", shard = args.shard),
        };
        let span = state.span.clone();
        async {
            state.recover().await?;
            state.pump(&myself).await;
            state.flush_completions().await;
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
}

/// The body of `ShardActor::handle`, run inside the actor's span.
async fn on_message(
    myself: ActorRef<ShardMsg>,
    msg: ShardMsg,
    state: &mut ShardState,
) -> Result<(), ActorProcessingErr> {
    match msg {
        ShardMsg::Enqueue(pushes, reply) => state.enqueue(&myself, pushes, reply),
        ShardMsg::Appended(appending) => state.appended(*appending),
        ShardMsg::Answer {
            push_id,
            dispatch,
            result,
        } => state.answer(push_id, dispatch, result).await,
        ShardMsg::Wake => {
            state.wake_at = None;
            state.wake().await;
        }
        ShardMsg::Crash => return Err("shard crash requested".into()),
    }
    state.pump(&myself).await;
    state.flush_completions().await;
    Ok(())
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
        for record in records.into_iter().filter(|r| r.shard == shard) {
            match serde_json::from_slice::<Push>(&record.data) {
                Ok(push) => {
                    let id = PushId::from_u128(push.push_id);
                    if !self.entries.contains_key(&id) {
                        self.insert(push);
                    }
                }
                Err(e) => unreadable.push((record.id, e.to_string())),
            }
        }
        for (id, error) in unreadable {
            tracing::error!(shard = self.shard, %error, "unreadable WAL record");
            let _ = self.engine.wal.complete(vec![id]).await;
            let outcome = Outcome::Failed {
                reason: Failure::Unreadable(error),
            };
            self.engine.outcomes.record(PushId::from_u128(id), outcome);
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

    /// Check `pushes` (duplicates, lane bounds) and append the new ones to the WAL in a task,
    /// so the shard keeps working (and concurrent appends can share one commit, e.g. with a
    /// group-commit WAL) while the write is in progress. [`ShardMsg::Appended`] finishes the job.
    fn enqueue(
        &mut self,
        myself: &ActorRef<ShardMsg>,
        pushes: Vec<Push>,
        reply: RpcReplyPort<Vec<Enqueued>>,
    ) {
        let mut answers = Vec::with_capacity(pushes.len());
        let mut fresh = Vec::new();
        let mut records = Vec::new();
        let mut batch_ids = BTreeSet::new();
        let low_max =
            (self.engine.tuning.shard_queue_max * limits::SHARD_LOW_LANES_PERCENT / 100).max(1);
        let mut low = self.low_lanes + self.appending_low;
        let mut fresh_low = 0;
        for push in pushes {
            let id = PushId::from_u128(push.push_id);
            if self.entries.contains_key(&id)
                || self.recent_set.contains(&id)
                || self.appending.contains(&id)
                || !batch_ids.insert(id)
            {
                answers.push(Some(Enqueued::Duplicate));
                continue;
            }
            let is_low = lane_of(&push.notification) > 0;
            if is_low && low >= low_max {
                answers.push(Some(Enqueued::Full));
                continue;
            }
            match serde_json::to_vec(&push) {
                Ok(data) => {
                    if is_low {
                        low += 1;
                        fresh_low += 1;
                    }
                    records.push(WalRecord::new(push.push_id, self.shard, data));
                    fresh.push(push);
                    answers.push(None);
                }
                Err(e) => answers.push(Some(Enqueued::WalFailed(e.to_string()))),
            }
        }
        if records.is_empty() {
            // Without records every answer is decided already (`None` marks a record).
            let answers = answers
                .into_iter()
                .map(|a| a.unwrap_or(Enqueued::Accepted))
                .collect();
            let _ = reply.send(answers);
            return;
        }
        for push in &fresh {
            self.appending.insert(PushId::from_u128(push.push_id));
        }
        self.appending_low += fresh_low;
        let wal = self.engine.wal.clone();
        let me = myself.clone();
        tokio::spawn(
            async move {
                let result = wal.append(records).await;
                // If the shard died meanwhile, the reply port is dropped with the message and
                // the caller sees an error; the records, if appended, are replayed.
                let _ = me.send_message(ShardMsg::Appended(Box::new(Appending {
                    fresh,
                    fresh_low,
                    answers,
                    result,
                    reply,
                })));
            }
            .instrument(self.span.clone()),
        );
    }

    /// The WAL append of an [`Appending`] finished: queue its pushes (if it succeeded) and answer.
    fn appended(&mut self, appending: Appending) {
        let Appending {
            fresh,
            fresh_low,
            answers,
            result,
            reply,
        } = appending;
        for push in &fresh {
            self.appending.remove(&PushId::from_u128(push.push_id));
        }
        self.appending_low = self.appending_low.saturating_sub(fresh_low);
        let verdict = match result {
            Ok(()) => Enqueued::Accepted,
            Err(WalError::Full) => Enqueued::Full,
            Err(e) => Enqueued::WalFailed(e.to_string()),
        };
        if verdict == Enqueued::Accepted {
            for push in fresh {
                self.insert(push);
            }
        }
        self.publish_gauges();
        let answers = answers
            .into_iter()
            .map(|a| a.unwrap_or_else(|| verdict.clone()))
            .collect();
        let _ = reply.send(answers);
    }

    /// Queue `push`, coalescing an older unsent push with the same collapse key.
    fn insert(&mut self, push: Push) {
        let id = PushId::from_u128(push.push_id);
        let request = Arc::new(push.notification.prepare());
        let lane = lane_of(&push.notification);
        let seq = self.next_seq;
        self.next_seq += 1;
        let entry = Entry {
            push,
            request,
            seq,
            lane,
            status: Status::Ready,
            attempts: 0,
            unsent: 0,
            started: Instant::now(),
        };
        if let Some(key) = entry.collapse_key()
            && let Some(older) = self.collapse.insert(key, id)
        {
            let replaceable = self
                .entries
                .get(&older)
                .is_some_and(|e| !matches!(e.status, Status::InFlight { .. }));
            if replaceable {
                self.finish_sync(older, Outcome::Coalesced { by: id });
                self.complete_later(older);
            }
        }
        if lane > 0 {
            self.low_lanes += 1;
        }
        self.ready.insert((lane, seq, id));
        self.entries.insert(id, entry);
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

    async fn answer(&mut self, id: PushId, dispatch: u64, result: JobResult) {
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

    async fn send_failed(&mut self, id: PushId, error: &SendError) {
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
    async fn retry(&mut self, id: PushId, backoff: &crate::backoff::Backoff, last: &str) {
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

    fn delay(&mut self, id: PushId, delay: Duration) {
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
            tracing::warn!(shard = self.shard, push = %id, "no answer in time; presuming lost");
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

    /// End push `id` with `outcome`: complete it in the write-ahead log, record and stream it.
    async fn finish(&mut self, id: PushId, outcome: Outcome) {
        if self.finish_sync(id, outcome) {
            self.complete_later(id);
        }
    }

    /// Complete `id` in the write-ahead log with the next batch (see [`Self::flush_completions`]).
    fn complete_later(&mut self, id: PushId) {
        self.completed.push(id.as_u128());
    }

    /// Complete every push finished while handling this message, in one WAL operation (one
    /// fsync for a file WAL, however many pushes finished).
    async fn flush_completions(&mut self) {
        if self.completed.is_empty() {
            return;
        }
        let ids = std::mem::take(&mut self.completed);
        if let Err(error) = self.engine.wal.complete(ids).await {
            // The pushes will be replayed after a restart (at-least-once).
            tracing::warn!(shard = self.shard, %error, "WAL completion failed");
        }
    }

    /// Everything of `finish` but the write-ahead log. Returns false if `id` was not queued.
    fn finish_sync(&mut self, id: PushId, outcome: Outcome) -> bool {
        let Some(entry) = self.entries.remove(&id) else {
            return false;
        };
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
        self.recent.push_back(id);
        self.recent_set.insert(id);
        while self.recent.len() > limits::SHARD_DEDUPE_KEPT_MAX {
            if let Some(old) = self.recent.pop_front() {
                self.recent_set.remove(&old);
            }
        }
        release(&self.load);
        self.engine.release_tenant(&entry.push.tenant);
        metrics::counter!(
            "herald_pushes_total",
            "outcome" => outcome.label(),
            "reason" => outcome.reason_label()
        )
        .increment(1);
        metrics::histogram!("herald_push_latency_seconds", "outcome" => outcome.label())
            .record(entry.started.elapsed().as_secs_f64());
        self.engine.publish(OutcomeRecord {
            push_id: id,
            tenant: entry.push.tenant,
            device_token: entry.push.notification.device_token().clone(),
            outcome,
            attempts: entry.attempts,
        });
        true
    }

    fn publish_gauges(&self) {
        metrics::gauge!("herald_queue_depth", "shard" => self.shard_label.clone())
            .set(self.entries.len() as f64);
        metrics::gauge!("herald_inflight", "shard" => self.shard_label.clone())
            .set(self.in_flight.len() as f64);
    }
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

/// Stable shard of a device token: FNV-1a (64-bit) of the token's bytes, modulo `shards`.
///
/// Never std's `RandomState`, so every process and run agrees.
pub(crate) fn shard_of(token: &DeviceToken, shards: u32) -> u32 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in token.to_bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
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
    }
}
