//! `send` tells the truth when the write-ahead log is slow: it waits for the append's own
//! answer past the actor call timeout, and when even that takes too long it answers
//! `OutcomeUnknown { id }`, after which the outcome lookup settles what happened.

mod engine_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use engine_support::*;
use herald_actors::seams::{BoxFuture, Timestamp};
use herald_actors::wal::{Finished, MemoryWal, Wal, WalError, WalRecord};
use herald_actors::{Failure, Outcome, PushError, Tuning};

/// A WAL whose appends take `delay` and then fail if `fail` is set; it counts the appends.
#[derive(Debug)]
struct SlowWal {
    inner: MemoryWal,
    delay: Duration,
    fail: AtomicBool,
    appends: AtomicUsize,
}

impl SlowWal {
    fn new(delay: Duration) -> Arc<Self> {
        Arc::new(SlowWal {
            inner: MemoryWal::new(),
            delay,
            fail: AtomicBool::new(false),
            appends: AtomicUsize::new(0),
        })
    }
}

impl Wal for SlowWal {
    fn append(&self, batch: Vec<WalRecord>) -> BoxFuture<'_, Result<(), WalError>> {
        self.appends.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            tokio::time::sleep(self.delay).await;
            if self.fail.load(Ordering::SeqCst) {
                return Err(WalError::Io("disk on fire".into()));
            }
            self.inner.append(batch).await
        })
    }
    fn complete(&self, ids: Vec<u128>) -> BoxFuture<'_, Result<(), WalError>> {
        self.inner.complete(ids)
    }
    fn complete_at(&self, ids: Vec<u128>, at: Timestamp) -> BoxFuture<'_, Result<(), WalError>> {
        self.inner.complete_at(ids, at)
    }
    fn finished(&self) -> BoxFuture<'_, Result<Vec<Finished>, WalError>> {
        self.inner.finished()
    }
    fn replay(&self) -> BoxFuture<'_, Result<Vec<WalRecord>, WalError>> {
        self.inner.replay()
    }
    fn len(&self) -> usize {
        self.inner.len()
    }
    fn bytes(&self) -> u64 {
        self.inner.bytes()
    }
}

fn tuning(call_timeout_ms: u64, append_wait_max_ms: u64) -> Tuning {
    let mut t = fast_tuning();
    t.call_timeout = Duration::from_millis(call_timeout_ms);
    t.append_wait_max = Duration::from_millis(append_wait_max_ms);
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_waits_for_a_slow_append_past_the_call_timeout() {
    // The append takes 5× the call timeout: `send` still answers with the append's verdict.
    let wal = SlowWal::new(Duration::from_millis(500));
    let shared = wal.clone();
    let env = start(
        |_| {},
        move |b| {
            b.wal(shared).tuning(tuning(100, 30_000));
        },
    )
    .await;
    let id = env.herald.send(TENANT, alert(1)).await.unwrap();
    let got = outcomes(&env.herald, &[id]).await;
    assert!(delivered(&got[&id]));
    // A failing slow append is a plain, exact refusal.
    wal.fail.store(true, Ordering::SeqCst);
    let err = env.herald.send(TENANT, alert(2)).await.unwrap_err();
    assert!(matches!(err, PushError::Wal(_)), "{err:?}");
    assert_eq!(env.herald.pending(), 0);
    assert_eq!(env.emulator.accepted_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_outlasting_the_wait_is_outcome_unknown_then_settled_by_the_lookup() {
    let wal = SlowWal::new(Duration::from_millis(800));
    let shared = wal.clone();
    let env = start(
        |_| {},
        move |b| {
            b.wal(shared).tuning(tuning(50, 200));
        },
    )
    .await;
    // The append succeeds after `send` gave up: the push is accepted and delivered.
    let err = env.herald.send(TENANT, alert(1)).await.unwrap_err();
    let PushError::OutcomeUnknown { id } = err else {
        panic!("expected OutcomeUnknown, got {err:?}");
    };
    assert_eq!(env.herald.outcome(id), None, "not settled yet");
    let got = outcomes(&env.herald, &[id]).await;
    assert!(delivered(&got[&id]), "{got:?}");
    assert_eq!(env.emulator.accepted_count(), 1);
    eventually("nothing pending", || env.herald.pending() == 0).await;

    // The append fails after `send` gave up: the lookup says it was not accepted.
    wal.fail.store(true, Ordering::SeqCst);
    let err = env.herald.send(TENANT, alert(2)).await.unwrap_err();
    let PushError::OutcomeUnknown { id } = err else {
        panic!("expected OutcomeUnknown, got {err:?}");
    };
    let got = outcomes(&env.herald, &[id]).await;
    assert!(
        matches!(
            &got[&id],
            Outcome::Failed {
                reason: Failure::NotAccepted(_)
            }
        ),
        "{got:?}"
    );
    // Its admission places were given back.
    eventually("nothing pending", || env.herald.pending() == 0).await;
    assert_eq!(env.emulator.accepted_count(), 1);
    // Sending it again once the WAL works is safe, and delivers it once.
    wal.fail.store(false, Ordering::SeqCst);
    let retry = alert(2).with_apns_id(id.apns_id());
    let err = env.herald.send(TENANT, retry).await.unwrap_err();
    assert_eq!(err, PushError::OutcomeUnknown { id });
    eventually("delivered", || {
        env.herald.outcome(id).as_ref().is_some_and(delivered)
    })
    .await;
    assert_eq!(env.emulator.accepted_count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_over_several_shards_is_one_append() {
    let wal = SlowWal::new(Duration::ZERO);
    let shared = wal.clone();
    let env = start(
        |_| {},
        move |b| {
            b.wal(shared);
        },
    )
    .await;
    let first: Vec<_> = (1..=32).map(alert).collect();
    let shards: std::collections::BTreeSet<u32> = first
        .iter()
        .map(|n| env.herald.shard_of(n.device_token()))
        .collect();
    assert!(shards.len() > 1, "the batch spans several shards");
    let ids: Vec<_> = env
        .herald
        .send_batch(TENANT, first)
        .await
        .unwrap()
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        wal.appends.load(Ordering::SeqCst),
        1,
        "one append for the batch"
    );
    let got = outcomes(&env.herald, &ids).await;
    assert!(got.values().all(delivered), "{got:?}");

    // Again, half of it already done (duplicates record nothing) and half new: still one
    // append, and only the new half is sent.
    let again: Vec<_> = (1..=16)
        .map(|n| alert(n).with_apns_id(ids[n as usize - 1].apns_id()))
        .chain((33..=48).map(alert))
        .collect();
    let answers = env.herald.send_batch(TENANT, again).await.unwrap();
    assert!(answers.iter().all(Result::is_ok), "{answers:?}");
    assert_eq!(wal.appends.load(Ordering::SeqCst), 2);
    let fresh: Vec<_> = answers[16..].iter().map(|a| *a.as_ref().unwrap()).collect();
    let got = outcomes(&env.herald, &fresh).await;
    assert!(got.values().all(delivered), "{got:?}");
    assert_eq!(env.emulator.accepted_count(), 48);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_wait_shorter_than_the_call_timeout_is_refused() {
    let mut builder = herald_actors::Herald::builder();
    builder.tuning(tuning(1_000, 500));
    let err = builder.build().await.unwrap_err();
    assert!(
        matches!(err, herald_actors::BuildError::Tuning(_)),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resend_during_the_first_append_shares_its_fate() {
    // Found by the simulator (a BUGGIFY'd WAL failure): a push sent again while its first
    // append was in progress was answered "accepted" as a duplicate; the append then failed
    // and the push was in no queue. Now the resend is told to retry, and the retry decides.
    let wal = SlowWal::new(Duration::from_millis(300));
    wal.fail.store(true, Ordering::SeqCst);
    let shared = wal.clone();
    let env = start(
        |_| {},
        move |b| {
            b.wal(shared).tuning(tuning(1_000, 30_000));
        },
    )
    .await;
    let id = herald_actors::PushId::from_u128(0x5eed);
    let push = move || alert(3).with_apns_id(id.apns_id());
    let herald = env.herald.clone();
    let first = tokio::spawn(async move { herald.send(TENANT, push()).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let err = env.herald.send(TENANT, push()).await.unwrap_err();
    assert!(
        matches!(err, PushError::InProgress { id: got, .. } if got == id),
        "{err:?}"
    );
    let first = first.await.unwrap().unwrap_err();
    assert!(matches!(first, PushError::Wal(_)), "{first:?}");
    assert_eq!(env.herald.outcome(id), None, "never accepted");
    assert_eq!(env.herald.pending(), 0);

    // Two copies of one push in one batch share the append's fate too.
    let results = env
        .herald
        .send_batch(TENANT, vec![push(), push()])
        .await
        .unwrap();
    assert!(
        results.iter().all(|r| matches!(r, Err(PushError::Wal(_)))),
        "{results:?}"
    );
    assert_eq!(env.herald.pending(), 0);

    // With the WAL healthy: both copies accepted, delivered once, no admission place kept.
    wal.fail.store(false, Ordering::SeqCst);
    let results = env
        .herald
        .send_batch(TENANT, vec![push(), push()])
        .await
        .unwrap();
    assert_eq!(results, vec![Ok(id), Ok(id)]);
    let got = outcomes(&env.herald, &[id]).await;
    assert!(delivered(&got[&id]), "{got:?}");
    eventually("nothing pending", || env.herald.pending() == 0).await;
    assert_eq!(env.emulator.accepted_count(), 1);
}
