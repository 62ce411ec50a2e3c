//! Webhooks: each tenant may set a URL and a secret; every outcome of its pushes is POSTed
//! there as JSON, signed with `X-Herald-Signature: sha256=<hex HMAC-SHA256 of the body>`.
//!
//! Delivery is at-least-once: a batch leaves the tenant's queue only after a 2xx answer, and
//! failures are retried with exponential backoff and full jitter
//! ([`WEBHOOK_BACKOFF_BASE`](limits::WEBHOOK_BACKOFF_BASE) up to
//! [`WEBHOOK_BACKOFF_MAX`](limits::WEBHOOK_BACKOFF_MAX)), forever while the webhook is set.
//! The queue is bounded ([`WEBHOOK_QUEUE_MAX`](limits::WEBHOOK_QUEUE_MAX)): past it the
//! oldest events are dropped and counted (`herald_api_webhook_dropped_total`). Requests go
//! through the [`Connector`](herald_actors::seams::Connector) seam, plain HTTP/1.1 (`http://`
//! URLs only).
//!
//! The body is `{"events": [{"seq", "push_id", "device_token", "outcome", "reason"?,
//! "attempts"}]}`; `seq` increases per tenant, so a receiver can drop repeats.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use herald_actors::OutcomeRecord;
use herald_actors::backoff::Backoff;
use herald_actors::seams::{DetRng, SharedConnector};
use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::task::JoinHandle;

use super::error::ApiError;
use super::limits;

/// The signature header.
pub const SIGNATURE_HEADER: &str = "X-Herald-Signature";

/// `sha256=<hex>` of `body` under `secret`: what [`SIGNATURE_HEADER`] carries.
///
/// ```
/// let sig = herald_node::api::webhook_signature(b"0123456789abcdef", b"{}");
/// assert!(sig.starts_with("sha256=") && sig.len() == 7 + 64);
/// ```
pub fn webhook_signature(secret: &[u8], body: &[u8]) -> String {
    // HMAC takes a key of any length.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap_or_else(|_| unreachable!());
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// A tenant's webhook: where, and the signing secret (never logged).
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookTarget {
    url: String,
    host: String,
    port: u16,
    path: String,
    secret: Vec<u8>,
}

impl fmt::Debug for WebhookTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookTarget")
            .field("url", &self.url)
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl WebhookTarget {
    /// Check `url` (`http://host[:port][/path]`) and `secret`.
    pub fn new(url: &str, secret: &str) -> Result<Self, ApiError> {
        let bad_url = |m: &str| ApiError::invalid("url", m.to_owned());
        if url.len() > limits::WEBHOOK_URL_BYTES_MAX {
            return Err(bad_url("too long"));
        }
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| bad_url("only http:// URLs are supported"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (h, p.parse::<u16>().map_err(|_| bad_url("bad port"))?),
            None => (authority, 80),
        };
        if host.is_empty()
            || !host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-'))
            || !path.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(bad_url("not an http://host[:port]/path URL"));
        }
        if !(limits::WEBHOOK_SECRET_BYTES_MIN..=limits::WEBHOOK_SECRET_BYTES_MAX)
            .contains(&secret.len())
        {
            return Err(ApiError::invalid(
                "secret",
                format!(
                    "a secret is {} to {} bytes",
                    limits::WEBHOOK_SECRET_BYTES_MIN,
                    limits::WEBHOOK_SECRET_BYTES_MAX
                ),
            ));
        }
        Ok(WebhookTarget {
            url: url.to_owned(),
            host: host.to_owned(),
            port,
            path: path.to_owned(),
            secret: secret.as_bytes().to_vec(),
        })
    }

    /// The URL.
    pub fn url(&self) -> &str {
        &self.url
    }
}

/// The webhook dispatcher: fed by the engine's outcome stream, one worker per tenant with a
/// webhook. Cloning shares it.
#[derive(Clone)]
pub struct Webhooks {
    inner: Arc<Inner>,
}

struct Inner {
    connector: SharedConnector,
    backoff: Backoff,
    rng: Mutex<DetRng>,
    tenants: Mutex<BTreeMap<String, Hook>>,
    feeder: Mutex<Option<JoinHandle<()>>>,
}

struct Hook {
    target: WebhookTarget,
    queue: Arc<Mutex<Queue>>,
    wake: Arc<Notify>,
    worker: JoinHandle<()>,
}

#[derive(Default)]
struct Queue {
    next_seq: u64,
    events: VecDeque<(u64, serde_json::Value)>,
}

impl fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Webhooks")
            .field("tenants", &self.tenants().len())
            .finish_non_exhaustive()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let feeder = self
            .feeder
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(f) = feeder.take() {
            f.abort();
        }
        for hook in self
            .tenants
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
        {
            hook.worker.abort();
        }
    }
}

impl Webhooks {
    /// A dispatcher reading `outcomes` (from `Herald::outcomes`), connecting through
    /// `connector`, drawing retry jitter from a [`DetRng`] seeded with `seed`. Call inside a
    /// Tokio runtime.
    pub fn start(
        mut outcomes: broadcast::Receiver<OutcomeRecord>,
        connector: SharedConnector,
        seed: u64,
    ) -> Self {
        let inner = Arc::new(Inner {
            connector,
            backoff: Backoff::new(limits::WEBHOOK_BACKOFF_BASE, limits::WEBHOOK_BACKOFF_MAX),
            rng: Mutex::new(DetRng::from_seed(seed)),
            tenants: Mutex::new(BTreeMap::new()),
            feeder: Mutex::new(None),
        });
        let weak = Arc::downgrade(&inner);
        let feeder = tokio::spawn(async move {
            loop {
                let record = outcomes.recv().await;
                let Some(inner) = weak.upgrade() else { return };
                match record {
                    Ok(record) => Webhooks { inner }.enqueue(&record),
                    Err(RecvError::Lagged(lost)) => {
                        metrics::counter!("herald_api_webhook_lost_total").increment(lost);
                    }
                    Err(RecvError::Closed) => return,
                }
            }
        });
        *inner.feeder.lock().unwrap_or_else(PoisonError::into_inner) = Some(feeder);
        Webhooks { inner }
    }

    fn tenants(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Hook>> {
        self.inner
            .tenants
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Set (or replace) `tenant`'s webhook. Queued events go to the new target.
    pub fn set(&self, tenant: &str, target: WebhookTarget) {
        let mut tenants = self.tenants();
        if let Some(hook) = tenants.get_mut(tenant) {
            hook.target = target;
            return;
        }
        let queue = Arc::new(Mutex::new(Queue::default()));
        let wake = Arc::new(Notify::new());
        let worker = tokio::spawn(run_worker(
            Arc::downgrade(&self.inner),
            tenant.to_owned(),
            queue.clone(),
            wake.clone(),
        ));
        tenants.insert(
            tenant.to_owned(),
            Hook {
                target,
                queue,
                wake,
                worker,
            },
        );
    }

    /// `tenant`'s webhook, if set.
    pub fn get(&self, tenant: &str) -> Option<WebhookTarget> {
        self.tenants().get(tenant).map(|h| h.target.clone())
    }

    /// Remove `tenant`'s webhook (its queued events are dropped); `false` if none was set.
    pub fn remove(&self, tenant: &str) -> bool {
        match self.tenants().remove(tenant) {
            Some(hook) => {
                hook.worker.abort();
                true
            }
            None => false,
        }
    }

    fn enqueue(&self, record: &OutcomeRecord) {
        let tenants = self.tenants();
        let Some(hook) = tenants.get(&record.tenant) else {
            return;
        };
        let mut queue = hook.queue.lock().unwrap_or_else(PoisonError::into_inner);
        let seq = queue.next_seq;
        queue.next_seq += 1;
        let mut event = json!({
            "seq": seq,
            "push_id": record.push_id.to_string(),
            "device_token": record.device_token.as_str(),
            "outcome": record.outcome.label(),
            "attempts": record.attempts,
        });
        let reason = record.outcome.reason_label();
        if !reason.is_empty() {
            event["reason"] = json!(reason);
        }
        queue.events.push_back((seq, event));
        if queue.events.len() > limits::WEBHOOK_QUEUE_MAX {
            queue.events.pop_front();
            metrics::counter!("herald_api_webhook_dropped_total").increment(1);
        }
        hook.wake.notify_one();
    }
}

async fn run_worker(
    inner: std::sync::Weak<Inner>,
    tenant: String,
    queue: Arc<Mutex<Queue>>,
    wake: Arc<Notify>,
) {
    let mut attempt: u32 = 0;
    loop {
        let batch: Vec<(u64, serde_json::Value)> = {
            let q = queue.lock().unwrap_or_else(PoisonError::into_inner);
            q.events
                .iter()
                .take(limits::WEBHOOK_BATCH_MAX)
                .cloned()
                .collect()
        };
        if batch.is_empty() {
            wake.notified().await;
            continue;
        }
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let Some(target) = strong
            .tenants
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&tenant)
            .map(|h| h.target.clone())
        else {
            return;
        };
        let last_seq = batch.last().map_or(0, |(seq, _)| *seq);
        let events: Vec<serde_json::Value> = batch.into_iter().map(|(_, e)| e).collect();
        let body = serde_json::to_vec(&json!({ "events": events })).unwrap_or_default();
        let sent = tokio::time::timeout(
            limits::WEBHOOK_TIMEOUT,
            post(&strong.connector, &target, &body),
        )
        .await;
        match sent {
            Ok(Ok(status)) if (200..300).contains(&status) => {
                attempt = 0;
                let mut q = queue.lock().unwrap_or_else(PoisonError::into_inner);
                while q.events.front().is_some_and(|(seq, _)| *seq <= last_seq) {
                    q.events.pop_front();
                }
                metrics::counter!("herald_api_webhook_events_total").increment(events.len() as u64);
            }
            failed => {
                let why = match failed {
                    Ok(Ok(status)) => format!("answered {status}"),
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => "timed out".to_owned(),
                };
                metrics::counter!("herald_api_webhook_failures_total").increment(1);
                tracing::debug!(%tenant, url = target.url(), %why, attempt, "webhook failed; retrying");
                let delay = {
                    let mut rng = strong.rng.lock().unwrap_or_else(PoisonError::into_inner);
                    strong.backoff.delay(attempt, &mut rng)
                };
                attempt = attempt.saturating_add(1);
                drop(strong);
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// POST `body` to `target` over HTTP/1.1; the answer's status code.
async fn post(
    connector: &SharedConnector,
    target: &WebhookTarget,
    body: &[u8],
) -> std::io::Result<u16> {
    let mut stream = connector.connect(&target.host, target.port).await?;
    let head = format!(
        "POST {} HTTP/1.1\r\nhost: {}:{}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{}: {}\r\nconnection: close\r\n\r\n",
        target.path,
        target.host,
        target.port,
        body.len(),
        SIGNATURE_HEADER,
        webhook_signature(&target.secret, body),
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    stream.flush().await?;
    let mut answer = Vec::with_capacity(64);
    let mut buf = [0u8; 256];
    while !answer.windows(2).any(|w| w == b"\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 || answer.len() >= limits::WEBHOOK_ANSWER_BYTES_MAX {
            break;
        }
        answer.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&answer);
    line.split(' ')
        .nth(1)
        .and_then(|s| s.trim().parse::<u16>().ok())
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "no HTTP status line"))
}

#[cfg(test)]
mod tests {
    use herald_actors::apns::DeviceToken;
    use herald_actors::seams::{BoxFuture, BoxStream, Connector};
    use herald_actors::{Outcome, PushId};

    use super::*;

    /// Refuses every connection, so nothing ever leaves the queue.
    #[derive(Debug)]
    struct Refusing;

    impl Connector for Refusing {
        fn connect<'a>(&'a self, _: &'a str, _: u16) -> BoxFuture<'a, std::io::Result<BoxStream>> {
            Box::pin(async { Err(std::io::ErrorKind::ConnectionRefused.into()) })
        }
    }

    #[tokio::test]
    async fn a_full_queue_drops_its_oldest_events() {
        let (tx, rx) = broadcast::channel(1);
        let hooks = Webhooks::start(rx, Arc::new(Refusing), 1);
        hooks.set(
            "acme",
            WebhookTarget::new("http://127.0.0.1:9/", "0123456789abcdef").unwrap(),
        );
        let record = |n: u128, tenant: &str| OutcomeRecord {
            push_id: PushId::from_u128(n),
            tenant: tenant.into(),
            device_token: DeviceToken::from_bytes(&[7u8; 32]).unwrap(),
            outcome: Outcome::Expired,
            attempts: 0,
        };
        let extra = 5;
        for n in 0..(limits::WEBHOOK_QUEUE_MAX + extra) as u128 {
            hooks.enqueue(&record(n, "acme"));
        }
        hooks.enqueue(&record(0, "globex")); // no webhook: ignored
        let tenants = hooks.tenants();
        let queue = tenants["acme"].queue.lock().unwrap();
        assert_eq!(queue.events.len(), limits::WEBHOOK_QUEUE_MAX);
        assert_eq!(
            queue.events.front().map(|(seq, _)| *seq),
            Some(extra as u64)
        );
        assert_eq!(tenants.len(), 1);
        drop(tx);
    }

    #[test]
    fn targets_are_checked() {
        let t =
            WebhookTarget::new("http://127.0.0.1:8080/hooks/herald", "0123456789abcdef").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("127.0.0.1", 8080, "/hooks/herald")
        );
        let t = WebhookTarget::new("http://example.com", "0123456789abcdef").unwrap();
        assert_eq!((t.port, t.path.as_str()), (80, "/"));
        assert!(!format!("{t:?}").contains("0123456789abcdef"));
        for url in [
            "https://x",
            "http://",
            "http://a b/",
            "http://h:99999/",
            "ftp://h",
        ] {
            assert!(
                WebhookTarget::new(url, "0123456789abcdef").is_err(),
                "{url}"
            );
        }
        assert!(WebhookTarget::new("http://h/", "short").is_err());
    }

    #[test]
    fn signature_is_hmac_sha256() {
        // RFC 4231 test case 2.
        let sig = webhook_signature(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            sig,
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
