//! Closed links are counted in `herald_transport_links_closed_total{direction, reason}`.
//!
//! Its own test binary: it installs a process-wide metrics recorder.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald_actors::seams::BoxStream;
use herald_cluster::transport::{
    CloseReason, ClusterCa, ClusterId, Envelope, InboundConfig, LinkSecurity, NodeId,
    PROTOCOL_VERSION, PeerMessage, encode_frame, serve_connection, write_frame,
};
use metrics::{Counter, CounterFn, Gauge, Histogram, Key, KeyName, Metadata, SharedString, Unit};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

const CLUSTER: ClusterId = ClusterId(5);
const WAIT: Duration = Duration::from_secs(10);

type Counts = Arc<Mutex<BTreeMap<(String, String, String), u64>>>;

/// Counts increments by (name, direction, reason).
struct CountingRecorder(Counts);

struct Handle {
    key: (String, String, String),
    counts: Counts,
}

impl CounterFn for Handle {
    fn increment(&self, value: u64) {
        *self
            .counts
            .lock()
            .unwrap()
            .entry(self.key.clone())
            .or_default() += value;
    }

    fn absolute(&self, value: u64) {
        self.counts.lock().unwrap().insert(self.key.clone(), value);
    }
}

impl metrics::Recorder for CountingRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let label = |name: &str| {
            key.labels()
                .find(|l| l.key() == name)
                .map(|l| l.value().to_owned())
                .unwrap_or_default()
        };
        Counter::from_arc(Arc::new(Handle {
            key: (key.name().to_owned(), label("direction"), label("reason")),
            counts: self.0.clone(),
        }))
    }

    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }

    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

fn closed_count(counts: &Counts, reason: CloseReason) -> u64 {
    let key = (
        "herald_transport_links_closed_total".to_owned(),
        "inbound".to_owned(),
        reason.as_str().to_owned(),
    );
    counts.lock().unwrap().get(&key).copied().unwrap_or(0)
}

/// Serve one in-memory link with `security`; feed it `bytes` from a client; return why it closed.
async fn serve_bytes(security: LinkSecurity, bytes: Vec<u8>) -> CloseReason {
    let (tx, _inbox) = mpsc::channel(4);
    let config = Arc::new(InboundConfig::new(NodeId(2), CLUSTER, security, tx));
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    let served = tokio::spawn(serve_connection(Box::new(server) as BoxStream, config));
    client.write_all(&bytes).await.unwrap();
    let closed = tokio::time::timeout(WAIT, served).await.unwrap().unwrap();
    closed.reason
}

#[tokio::test]
async fn closed_links_are_counted_by_reason() {
    let counts = Counts::default();
    metrics::set_global_recorder(CountingRecorder(counts.clone())).unwrap();

    let mut hello = Vec::new();
    write_frame(
        &mut hello,
        &encode_frame(&Envelope::new(
            NodeId(1),
            PeerMessage::Hello {
                node: NodeId(1),
                cluster: CLUSTER,
                version: PROTOCOL_VERSION,
            },
        ))
        .unwrap(),
    )
    .await
    .unwrap();

    // Plaintext bytes against a TLS link.
    let tls = LinkSecurity::MutualTls(
        ClusterCa::generate("c")
            .unwrap()
            .mutual_tls(NodeId(2))
            .unwrap(),
    );
    assert_eq!(
        serve_bytes(tls, hello.clone()).await,
        CloseReason::TlsHandshake
    );
    // A corrupt frame after a good Hello.
    let mut corrupt = hello.clone();
    corrupt.extend_from_slice(&[0, 0, 0, 2, 0xc1, 0xc1]);
    assert_eq!(
        serve_bytes(LinkSecurity::Plaintext, corrupt.clone()).await,
        CloseReason::CorruptFrame
    );
    assert_eq!(
        serve_bytes(LinkSecurity::Plaintext, corrupt).await,
        CloseReason::CorruptFrame
    );
    // An oversized length prefix.
    let mut oversized = hello;
    oversized.extend_from_slice(&[0xff; 4]);
    assert_eq!(
        serve_bytes(LinkSecurity::Plaintext, oversized).await,
        CloseReason::OversizedFrame
    );

    assert_eq!(closed_count(&counts, CloseReason::TlsHandshake), 1);
    assert_eq!(closed_count(&counts, CloseReason::CorruptFrame), 2);
    assert_eq!(closed_count(&counts, CloseReason::OversizedFrame), 1);
}
