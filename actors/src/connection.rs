//! The connection actor: owns one HTTP/2 connection to APNs.
//!
//! It opens the connection (in a task, so the mailbox keeps moving), runs its driver, and
//! publishes the open connection in its [`ConnectionLink`], which it shares with the tenant.
//! Each request runs in its own task. While the connection is open and takes new streams,
//! the tenant starts that task itself ([`ConnectionLink::try_send`]) and the actor never sees
//! the push; otherwise the push goes to the actor ([`ConnectionMsg::Submit`]), which queues
//! it (bounded) while it (re)connects. A request task settles its push itself: it reports the
//! answer to the tenant's [`SharedBreaker`], releases the push from the connection's load and
//! answers the shard that asked. So a push costs the shard's hand-off to the tenant, one task
//! and the answer to the shard, and no other actor message. The actor hears from a request
//! task only when the answer asks it to act (replace the connection for a new provider token
//! or after APNs asked to reconnect) or while it drains.
//!
//! Nothing is lost: a request the connection could not send goes back to its shard as
//! `Deferred`; one that failed in flight goes back as a `SendError` (the shard resends it).
//! If the actor itself dies, the request tasks still report to their shards, and the
//! shard's answer deadline covers anything else.
//!
//! Reconnects use exponential backoff with full jitter from the actor's [`DetRng`]; the
//! attempt count resets only after APNs answered a request, so a server that accepts and
//! drops connections sees a slowing trickle, not a storm.
//!
//! Restart policy: the tenant restarts a failed connection actor (one-for-one, with the
//! restart-intensity limit); a connection that was draining is not restarted.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tracing::Instrument as _;

use crate::apns::http2::{
    ApnsConnection, CloseReason, ConnectError, ConnectionConfig, ConnectionDriver, SendError,
    connect,
};
use crate::apns::{AuthError, Delivery, Disposition, PreparedRequest};
use crate::backoff::Backoff;
use crate::limits;
use crate::outcome::PushKey;
use crate::seams::{DetRng, SharedClock, SharedConnector};
use crate::shard::ShardMsg;
use crate::tenant::{Credentials, SharedBreaker, Signal};

/// One push handed from a shard to a tenant and on to a connection.
#[derive(Debug)]
pub(crate) struct Job {
    /// The push's key at its shard (tenant-scoped; see `PushKey`).
    pub(crate) push_id: PushKey,
    /// The shard's number for this hand-off (answers to older hand-offs are ignored).
    pub(crate) dispatch: u64,
    pub(crate) request: Arc<PreparedRequest>,
    pub(crate) reply_to: ActorRef<ShardMsg>,
    /// The breaker's half-open probe.
    pub(crate) probe: bool,
    /// Set once the shard has been told what became of the job.
    pub(crate) answered: bool,
}

/// What became of a [`Job`].
#[derive(Debug)]
pub(crate) enum JobResult {
    /// Not sent (breaker open, rate limit, no connection): ask again after `retry_in`.
    Deferred { retry_in: Duration },
    /// APNs answered.
    Answered(Delivery),
    /// Sending failed; [`SendError::was_sent`] says whether APNs may have processed it.
    Failed(SendError),
    /// The job was dropped unanswered (an actor holding it died): it may have been sent.
    Lost,
}

impl Job {
    /// Report `result` to the shard that asked.
    pub(crate) fn reply(mut self, result: JobResult) {
        self.answered = true;
        let _ = self.reply_to.send_message(ShardMsg::Answer {
            push_id: self.push_id,
            dispatch: self.dispatch,
            result,
        });
    }
}

/// A job dropped unanswered (in the mailbox of an actor that died, or in a task that was
/// cancelled) tells its shard, so the push is resent now rather than after the shard's
/// answer deadline.
impl Drop for Job {
    fn drop(&mut self) {
        if !self.answered {
            let _ = self.reply_to.send_message(ShardMsg::Answer {
                push_id: self.push_id,
                dispatch: self.dispatch,
                result: JobResult::Lost,
            });
        }
    }
}

/// The connection actor (see the [module docs](self)).
#[derive(Debug)]
pub(crate) struct ConnectionActor;

/// What a connection actor starts from.
#[derive(Debug)]
pub(crate) struct ConnectionArgs {
    pub(crate) config: ConnectionConfig,
    pub(crate) connector: SharedConnector,
    pub(crate) credentials: Credentials,
    pub(crate) clock: SharedClock,
    pub(crate) rng: DetRng,
    pub(crate) reconnect_backoff: Backoff,
    /// What the actor shares with the tenant and its request tasks.
    pub(crate) link: Arc<ConnectionLink>,
}

/// What a connection actor shares with its tenant and its request tasks.
#[derive(Debug)]
pub(crate) struct ConnectionLink {
    /// Requests handed to this connection and not yet answered (the tenant's load measure).
    pub(crate) load: AtomicUsize,
    breaker: Arc<SharedBreaker>,
    /// Request tasks running.
    running: AtomicUsize,
    /// Set by the actor when it drains: finishing tasks then tell it (see [`ConnectionMsg::Finished`]).
    draining: AtomicBool,
    /// Set by a task when APNs answered a request: the actor's reconnect backoff starts over.
    answered: AtomicBool,
    /// The open connection and its generation, while it is the actor's current one.
    open: Mutex<Option<(ApnsConnection, u64)>>,
}

impl ConnectionLink {
    /// A link reporting to the tenant's `breaker`.
    pub(crate) fn new(breaker: Arc<SharedBreaker>) -> Self {
        ConnectionLink {
            load: AtomicUsize::new(0),
            breaker,
            running: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
            answered: AtomicBool::new(false),
            open: Mutex::new(None),
        }
    }

    fn open(&self) -> MutexGuard<'_, Option<(ApnsConnection, u64)>> {
        // Critical sections only replace or clone the value.
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Send `job` on the open connection in a request task, without a message to `actor`;
    /// gives the job back when the connection is not open or takes no new streams (the
    /// caller then submits it to the actor, which connects). The caller has counted the job
    /// in [`load`](Self::load).
    pub(crate) fn try_send(
        self: &Arc<Self>,
        actor: &ActorRef<ConnectionMsg>,
        job: Job,
    ) -> Result<(), Job> {
        let open = match &*self.open() {
            Some((connection, generation)) if connection.accepts_new_streams() => {
                // Counted under the lock: an actor that drains (clearing `open` under the
                // same lock) then waits for this request.
                self.running.fetch_add(1, Ordering::SeqCst);
                Some((connection.clone(), *generation))
            }
            _ => None,
        };
        match open {
            Some((connection, generation)) => {
                spawn_request(self.clone(), actor.clone(), connection, generation, job);
                if crate::buggify::fire("connection_crash_after_send", 0.005) {
                    // The actor crashes with this request in flight: its supervisor restarts
                    // it, and the request still answers its shard (or the shard's deadline
                    // resends it).
                    let _ = actor.send_message(ConnectionMsg::Crash);
                }
                Ok(())
            }
            None => Err(job),
        }
    }
}

/// What a request task's answer asks the connection actor to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FollowUp {
    /// Nothing (a finished task of a draining actor still reports, so it can stop).
    Nothing,
    /// The provider token expired: mint a new one and replace the connection.
    RefreshToken,
    /// Replace the connection (APNs asked to reconnect, or its token may not be used any more).
    Replace,
}

/// The connection actor's messages.
#[derive(Debug)]
pub(crate) enum ConnectionMsg {
    /// Send this push.
    Submit(Job),
    /// Open the connection (if not open or opening).
    Connect,
    /// The connect task finished.
    Connected(Result<(ApnsConnection, Box<ConnectionDriver>), ConnectError>),
    /// A request task of connection `generation` finished and its answer asks for `follow_up`
    /// (sent only then, or while the actor drains).
    Finished {
        generation: u64,
        follow_up: FollowUp,
    },
    /// The connection of `generation` closed.
    Closed {
        generation: u64,
        reason: CloseReason,
    },
    /// Take no more requests, finish the ones in flight, then stop.
    Drain,
    /// Test hook: fail as a crash would.
    Crash,
}

/// The connection actor's state.
#[derive(Debug)]
pub(crate) struct ConnectionState {
    args: ConnectionArgs,
    connection: Option<ApnsConnection>,
    generation: u64,
    connecting: bool,
    reconnect_scheduled: bool,
    failures: u32,
    pending: VecDeque<Job>,
    link: Arc<ConnectionLink>,
    draining: bool,
    span: tracing::Span,
}

impl Actor for ConnectionActor {
    type Msg = ConnectionMsg;
    type State = ConnectionState;
    type Arguments = ConnectionArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<ConnectionMsg>,
        args: ConnectionArgs,
    ) -> Result<ConnectionState, ActorProcessingErr> {
        myself.send_message(ConnectionMsg::Connect)?;
        let span = tracing::debug_span!("connection_actor", host = %args.config.host, number = args.config.number);
        let link = args.link.clone();
        Ok(ConnectionState {
            span,
            args,
            connection: None,
            generation: 0,
            connecting: false,
            reconnect_scheduled: false,
            failures: 0,
            pending: VecDeque::new(),
            link,
            draining: false,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<ConnectionMsg>,
        msg: ConnectionMsg,
        state: &mut ConnectionState,
    ) -> Result<(), ActorProcessingErr> {
        let span = state.span.clone();
        on_message(myself, msg, state).instrument(span).await
    }
}

/// However the actor ends (stopped, drained or crashed), nothing it holds is lost: queued
/// requests go back to their shards, and the connection closes gracefully, so requests in
/// flight finish and report to their shards directly.
impl Drop for ConnectionState {
    fn drop(&mut self) {
        while let Some(job) = self.pending.pop_front() {
            self.give_back(job, Duration::ZERO);
        }
        self.retire_current();
    }
}

/// The body of `ConnectionActor::handle`, run inside the actor's span.
async fn on_message(
    myself: ActorRef<ConnectionMsg>,
    msg: ConnectionMsg,
    state: &mut ConnectionState,
) -> Result<(), ActorProcessingErr> {
    match msg {
        ConnectionMsg::Submit(job) => state.submit(&myself, job),
        ConnectionMsg::Connect => {
            state.reconnect_scheduled = false;
            state.start_connect(&myself);
        }
        ConnectionMsg::Connected(Ok((connection, driver))) => {
            state.connected(&myself, connection, driver);
        }
        ConnectionMsg::Connected(Err(error)) => {
            state.connecting = false;
            state.note_answers();
            state.failures += 1;
            tracing::debug!(%error, failures = state.failures, "connect failed");
            let delay = state.reconnect_delay();
            while let Some(job) = state.pending.pop_front() {
                state.give_back(job, delay);
            }
            if state.draining {
                state.stop_if_idle(&myself);
            } else {
                state.schedule_reconnect(&myself, delay);
            }
        }
        ConnectionMsg::Finished {
            generation,
            follow_up,
        } => state.finished(&myself, generation, follow_up),
        ConnectionMsg::Closed { generation, reason } => {
            if generation == state.generation && state.connection.is_some() {
                tracing::debug!(%reason, "connection closed");
                state.retire_current();
                if state.draining {
                    state.stop_if_idle(&myself);
                } else {
                    state.note_answers();
                    state.failures += 1;
                    let delay = state.reconnect_delay();
                    state.schedule_reconnect(&myself, delay);
                }
            }
        }
        ConnectionMsg::Drain => {
            state.draining = true;
            state.link.draining.store(true, Ordering::SeqCst);
            *state.link.open() = None;
            while let Some(job) = state.pending.pop_front() {
                state.give_back(job, Duration::ZERO);
            }
            if let Some(c) = &state.connection {
                c.close();
            }
            state.stop_if_idle(&myself);
        }
        ConnectionMsg::Crash => return Err("connection actor crash requested".into()),
    }
    Ok(())
}

impl ConnectionState {
    fn submit(&mut self, myself: &ActorRef<ConnectionMsg>, job: Job) {
        if self.draining {
            return self.give_back(job, Duration::ZERO);
        }
        match &self.connection {
            Some(c) if c.accepts_new_streams() => {
                let c = c.clone();
                self.start_send(myself, c, job);
            }
            _ => {
                if self.pending.len() >= limits::CONNECTION_PENDING_MAX {
                    let delay = self.reconnect_delay();
                    return self.give_back(job, delay);
                }
                self.pending.push_back(job);
                if !self.reconnect_scheduled {
                    self.start_connect(myself);
                }
            }
        }
    }

    fn start_connect(&mut self, myself: &ActorRef<ConnectionMsg>) {
        // A connection that stopped taking streams (GOAWAY, closing) finishes its in-flight
        // requests on its own; new requests get a new connection now, not when it closes.
        if self
            .connection
            .as_ref()
            .is_some_and(|c| !c.accepts_new_streams())
        {
            self.retire_current();
        }
        if self.draining || self.connecting || self.connection.is_some() {
            return;
        }
        let auth = match self.args.credentials.connection_auth() {
            Ok(auth) => auth,
            Err(error) => {
                // The credentials cannot authenticate anything: keep pushes queued at their
                // shards and try again later (an update may fix the credentials).
                tracing::warn!(%error, "credentials unusable");
                self.link.breaker.observe(false, Signal::Credentials);
                self.note_answers();
                self.failures += 1;
                let delay = self.reconnect_delay();
                while let Some(job) = self.pending.pop_front() {
                    self.give_back(job, delay);
                }
                return self.schedule_reconnect(myself, delay);
            }
        };
        self.connecting = true;
        let config = self.args.config.clone();
        let connector = self.args.connector.clone();
        let clock = self.args.clock.clone();
        let me = myself.clone();
        tokio::spawn(
            async move {
                let result = connect(config, &*connector, auth, clock)
                    .await
                    .map(|(connection, driver)| (connection, Box::new(driver)));
                let _ = me.send_message(ConnectionMsg::Connected(result));
            }
            .instrument(self.span.clone()),
        );
    }

    fn connected(
        &mut self,
        myself: &ActorRef<ConnectionMsg>,
        connection: ApnsConnection,
        driver: Box<ConnectionDriver>,
    ) {
        self.connecting = false;
        self.generation += 1;
        metrics::gauge!("herald_connections").increment(1.0);
        tokio::spawn(driver.run());
        let generation = self.generation;
        let watcher = connection.clone();
        let me = myself.clone();
        tokio::spawn(async move {
            let reason = watcher.closed().await;
            drop(watcher);
            let _ = me.send_message(ConnectionMsg::Closed { generation, reason });
        });
        if self.draining {
            connection.close();
        } else {
            *self.link.open() = Some((connection.clone(), generation));
        }
        self.connection = Some(connection.clone());
        while let Some(job) = self.pending.pop_front() {
            self.start_send(myself, connection.clone(), job);
        }
    }

    fn start_send(
        &mut self,
        myself: &ActorRef<ConnectionMsg>,
        connection: ApnsConnection,
        job: Job,
    ) {
        self.link.running.fetch_add(1, Ordering::SeqCst);
        spawn_request(
            self.link.clone(),
            myself.clone(),
            connection,
            self.generation,
            job,
        );
    }

    /// A request task's answer asked for `follow_up` (or the actor drains and a task finished).
    fn finished(&mut self, myself: &ActorRef<ConnectionMsg>, generation: u64, follow_up: FollowUp) {
        match follow_up {
            FollowUp::Nothing => {}
            // Only the connection that answered is replaced, once.
            _ if generation != self.generation => {}
            FollowUp::RefreshToken => {
                self.args.credentials.refresh_token();
                self.retire_current();
                self.start_connect(myself);
            }
            FollowUp::Replace => {
                self.retire_current();
                self.start_connect(myself);
            }
        }
        if self.draining {
            self.stop_if_idle(myself);
        }
    }

    /// If APNs answered a request since the last failure, the reconnect backoff starts over.
    fn note_answers(&mut self) {
        if self.link.answered.swap(false, Ordering::Relaxed) {
            self.failures = 0;
        }
    }

    /// Close the current connection gracefully and forget it: its in-flight requests finish
    /// (their tasks hold it), the next request opens a new one.
    fn retire_current(&mut self) {
        *self.link.open() = None;
        if let Some(c) = self.connection.take() {
            c.close();
            metrics::gauge!("herald_connections").decrement(1.0);
        }
    }

    /// Hand `job` back to its shard unsent.
    fn give_back(&mut self, job: Job, retry_in: Duration) {
        release(&self.link.load);
        if job.probe {
            self.link.breaker.observe(true, Signal::Unsent);
        }
        job.reply(JobResult::Deferred { retry_in });
    }

    fn reconnect_delay(&mut self) -> Duration {
        let attempt = self.failures.max(1);
        self.args
            .reconnect_backoff
            .delay(attempt, &mut self.args.rng)
    }

    fn schedule_reconnect(&mut self, myself: &ActorRef<ConnectionMsg>, delay: Duration) {
        if self.reconnect_scheduled || self.draining {
            return;
        }
        self.reconnect_scheduled = true;
        myself.send_after(delay, || ConnectionMsg::Connect);
    }

    fn stop_if_idle(&self, myself: &ActorRef<ConnectionMsg>) {
        if self.link.running.load(Ordering::SeqCst) == 0 && self.pending.is_empty() {
            myself.stop(Some("drained".into()));
        }
    }
}

/// Send `job` on `connection` (of `generation`) in its own task, which settles the push: the
/// breaker signal, the load, a follow-up for `actor` if the answer needs one, the shard's answer.
/// The caller has counted the task in `link.running`.
fn spawn_request(
    link: Arc<ConnectionLink>,
    actor: ActorRef<ConnectionMsg>,
    connection: ApnsConnection,
    generation: u64,
    job: Job,
) {
    tokio::spawn(async move {
        let result = connection.send(&job.request).await;
        drop(connection);
        let (signal, follow_up) = assess(&result);
        if result.is_ok() {
            link.answered.store(true, Ordering::Relaxed);
        }
        link.breaker.observe(job.probe, signal);
        release(&link.load);
        let running = link.running.fetch_sub(1, Ordering::SeqCst) - 1;
        // The actor acts before the shard hears, so a resend finds the new connection.
        if follow_up != FollowUp::Nothing || (running == 0 && link.draining.load(Ordering::SeqCst))
        {
            let _ = actor.send_message(ConnectionMsg::Finished {
                generation,
                follow_up,
            });
        }
        job.reply(into_job_result(result));
    });
}

fn release(load: &AtomicUsize) {
    let _ = load.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
}

/// The breaker's signal for a request's result, and what the connection actor must do about it.
fn assess(result: &Result<Delivery, SendError>) -> (Signal, FollowUp) {
    match result {
        Ok(Delivery::Accepted { .. }) => (Signal::Success, FollowUp::Nothing),
        Ok(Delivery::Rejected(rejection)) => match rejection.reason.disposition() {
            Disposition::Credentials => (Signal::Credentials, FollowUp::Nothing),
            Disposition::RetryLater => (Signal::ServerError, FollowUp::Nothing),
            Disposition::RefreshToken => (Signal::Success, FollowUp::RefreshToken),
            Disposition::Reconnect => (Signal::Success, FollowUp::Replace),
            _ => (Signal::Success, FollowUp::Nothing),
        },
        // The connection's token may not be used any more: replace the connection.
        Err(SendError::Auth(AuthError::TokenExhausted)) => (Signal::Unsent, FollowUp::Replace),
        // The credentials cannot sign: a credentials problem, like a 403.
        Err(SendError::Auth(_)) => (Signal::Credentials, FollowUp::Nothing),
        Err(_) => (Signal::Unsent, FollowUp::Nothing),
    }
}

fn into_job_result(result: Result<Delivery, SendError>) -> JobResult {
    match result {
        Ok(delivery) => JobResult::Answered(delivery),
        Err(error) => JobResult::Failed(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apns::{Reason, Rejection};

    fn rejected(status: u16, reason: Reason) -> Result<Delivery, SendError> {
        Ok(Delivery::Rejected(Rejection {
            status,
            reason,
            timestamp: None,
            apns_id: None,
        }))
    }

    #[test]
    fn only_answers_that_need_a_new_connection_reach_the_actor() {
        let accepted = Ok(Delivery::Accepted { apns_id: None });
        assert_eq!(assess(&accepted), (Signal::Success, FollowUp::Nothing));
        assert_eq!(
            assess(&rejected(400, Reason::BadDeviceToken)),
            (Signal::Success, FollowUp::Nothing)
        );
        assert_eq!(
            assess(&rejected(503, Reason::ServiceUnavailable)),
            (Signal::ServerError, FollowUp::Nothing)
        );
        assert_eq!(
            assess(&rejected(403, Reason::ExpiredProviderToken)),
            (Signal::Success, FollowUp::RefreshToken)
        );
        assert_eq!(
            assess(&Err(SendError::Auth(AuthError::TokenExhausted))),
            (Signal::Unsent, FollowUp::Replace)
        );
        assert_eq!(
            assess(&Err(SendError::Closed("closing".into()))),
            (Signal::Unsent, FollowUp::Nothing)
        );
    }
}
