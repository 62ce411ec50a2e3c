//! The connection driver: runs the h2 connection, keepalive PINGs and the lifecycle.

use std::fmt;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use h2::{Ping, PingPong, Pong};
use tokio::time::Instant;
use tracing::Instrument as _;

use super::state::{CloseReason, ConnectionState, DrainCause};
use super::{Shared, sniff::GoAwaySlot};
use crate::limits;
use crate::seams::BoxStream;

type H2Connection = h2::client::Connection<BoxStream, Bytes>;
type PingFuture = Pin<Box<dyn Future<Output = (PingPong, Result<Pong, h2::Error>)> + Send>>;

/// Runs one connection. The owner spawns [`run`](Self::run); the connection makes no
/// progress otherwise.
///
/// Dropping the driver (or aborting its task) closes the connection with
/// [`CloseReason::DriverDropped`].
pub struct ConnectionDriver {
    guard: CloseGuard,
    connection: H2Connection,
}

impl fmt::Debug for ConnectionDriver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionDriver")
            .field("shared", &self.guard.0)
            .finish_non_exhaustive()
    }
}

/// Marks the connection closed when the driver goes away without closing it.
struct CloseGuard(Arc<Shared>);

impl Drop for CloseGuard {
    fn drop(&mut self) {
        let shared = &self.0;
        shared.transition(|inner| {
            inner.send_request = None;
            inner.state.on_closed(CloseReason::DriverDropped)
        });
    }
}

impl ConnectionDriver {
    pub(super) fn new(shared: Arc<Shared>, connection: H2Connection) -> Self {
        ConnectionDriver {
            guard: CloseGuard(shared),
            connection,
        }
    }

    /// Drive the connection until it closes; returns why it closed (also published to
    /// [`ApnsConnection::closed`](super::ApnsConnection::closed)).
    pub async fn run(self) -> CloseReason {
        let span = self.guard.0.span.clone();
        self.run_inner().instrument(span).await
    }

    async fn run_inner(self) -> CloseReason {
        let ConnectionDriver {
            guard,
            mut connection,
        } = self;
        let shared = guard.0.clone();
        let config = &shared.config;
        let goaway: &GoAwaySlot = &shared.goaway;

        let mut ping_pong = connection.ping_pong();
        let mut ping: Option<PingFuture> = None;
        let ping_timer = tokio::time::sleep(config.ping_interval);
        tokio::pin!(ping_timer);
        let drain_timer = tokio::time::sleep(config.request_timeout);
        tokio::pin!(drain_timer);
        let mut draining_since: Option<Instant> = None;
        let mut sender_released = false;
        let mut server_streams_max = limits::H2_INITIAL_STREAMS;

        let reason = loop {
            // Draining: stop new streams; once none is in flight, let go of the sender so
            // h2 can close; bound the whole drain.
            let (draining, in_flight) = {
                let inner = shared.lock();
                (
                    matches!(inner.state, ConnectionState::Draining(_)),
                    inner.in_flight,
                )
            };
            if draining && draining_since.is_none() {
                let now = Instant::now();
                draining_since = Some(now);
                drain_timer
                    .as_mut()
                    .reset(now + config.request_timeout + limits::H2_CLOSE_TIMEOUT);
            }
            if draining && in_flight == 0 && !sender_released {
                sender_released = true;
                shared.lock().send_request = None;
                drain_timer
                    .as_mut()
                    .reset(Instant::now() + limits::H2_CLOSE_TIMEOUT);
                tracing::debug!("drained; closing");
            }

            tokio::select! {
                biased;
                result = poll_fn(|cx| {
                    let result = Pin::new(&mut connection).poll(cx);
                    observe(&shared, &connection, goaway, &mut server_streams_max);
                    result
                }) => break end_reason(&shared, result),
                () = &mut drain_timer, if draining_since.is_some() => {
                    tracing::debug!("drain timed out");
                    break CloseReason::DrainTimeout;
                }
                (pp, pong) = async {
                    match ping.as_mut() {
                        Some(ping) => ping.await,
                        None => std::future::pending().await,
                    }
                }, if ping.is_some() =>
                {
                    ping = None;
                    match pong {
                        Ok(_) => {
                            tracing::debug!("PONG received");
                            ping_pong = Some(pp);
                            ping_timer.as_mut().reset(Instant::now() + config.ping_interval);
                        }
                        // The connection is closing; its own result will tell why.
                        Err(e) => tracing::debug!(error = %e, "PING failed"),
                    }
                }
                () = &mut ping_timer => {
                    if ping.is_some() {
                        tracing::debug!(timeout = ?config.ping_timeout, "PING timed out");
                        metrics::counter!("herald_apns_ping_timeouts_total").increment(1);
                        break CloseReason::PingTimeout;
                    }
                    match ping_pong.take() {
                        Some(mut pp) => {
                            tracing::debug!("PING sent");
                            ping = Some(Box::pin(async move {
                                let pong = pp.ping(Ping::opaque()).await;
                                (pp, pong)
                            }));
                            ping_timer.as_mut().reset(Instant::now() + config.ping_timeout);
                        }
                        // PINGs unavailable (already taken): check back later.
                        None => ping_timer.as_mut().reset(Instant::now() + config.ping_interval),
                    }
                }
                () = shared.driver_wake.notified() => {}
            }
        };

        // Publish the reason before h2 fails the remaining streams, so their errors can
        // say why.
        shared.transition(|inner| {
            inner.send_request = None;
            inner.state.on_closed(reason.clone())
        });
        tracing::debug!(%reason, "connection closed");
        metrics::counter!("herald_apns_connections_closed_total").increment(1);
        drop(ping);
        drop(connection);
        drop(guard);
        reason
    }
}

/// After each poll of the h2 connection: follow the server's stream limit and notice GOAWAY.
fn observe(
    shared: &Shared,
    connection: &H2Connection,
    goaway: &GoAwaySlot,
    server_streams_max: &mut usize,
) {
    let current = connection.max_concurrent_send_streams();
    if current != *server_streams_max {
        *server_streams_max = current;
        tracing::debug!(streams_max = current, "server stream limit");
        {
            shared.lock().server_streams_max = current;
        }
        shared.slots.notify_waiters();
    }
    if let Some(info) = goaway.take_fresh() {
        tracing::debug!(goaway = %info, "GOAWAY received");
        metrics::counter!("herald_apns_goaway_total").increment(1);
        shared.transition(|inner| inner.state.on_go_away(info));
    }
}

/// Why the h2 connection ended.
fn end_reason(shared: &Shared, result: Result<(), h2::Error>) -> CloseReason {
    if let Some(info) = shared.goaway.get() {
        return CloseReason::GoAway(info);
    }
    let requested = matches!(
        shared.lock().state,
        ConnectionState::Draining(DrainCause::CloseRequested)
    );
    match result {
        Ok(()) if requested => CloseReason::Requested,
        Ok(()) => CloseReason::PeerClosed,
        Err(e) if e.is_io() => CloseReason::Io(e.to_string()),
        Err(e) => CloseReason::Protocol(e.to_string()),
    }
}
