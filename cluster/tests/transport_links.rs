//! Node links end to end over 127.0.0.1 with mutual TLS: exchange, authentication failures,
//! corrupt and oversized frames, reconnection after a restart, and the outbound queue bound.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use herald_actors::seams::{BoxStream, DetRng, TcpConnector};
use herald_cluster::transport::{
    CloseReason, ClusterCa, ClusterId, Envelope, FRAME_BYTES_MAX, FrameReader, Inbound,
    InboundConfig, LinkClosed, LinkSecurity, LinkStatus, LinkTimings, Listener, MutualTls, NodeId,
    PROTOCOL_VERSION, PeerLink, PeerLinkArguments, PeerLinkConfig, PeerLinkMsg, PeerLinkSender,
    PeerMessage, PushId, SendError, encode_frame, serve_connection, spawn_listener, write_frame,
};
use ractor::{Actor, ActorRef};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

const CLUSTER: ClusterId = ClusterId(77);
const WAIT: Duration = Duration::from_secs(10);
const INBOX_CAPACITY: usize = 64;

fn timings() -> LinkTimings {
    LinkTimings {
        handshake_timeout: Duration::from_secs(5),
        ping_interval: Duration::from_millis(200),
        ping_timeout: Duration::from_secs(2),
        backoff_base: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
    }
}

/// A node's inbound side: a listener and the channel it delivers to.
struct Node {
    listener: Listener,
    inbox: mpsc::Receiver<Inbound>,
}

async fn start_node(id: NodeId, security: LinkSecurity, bind: &str) -> Node {
    let (tx, inbox) = mpsc::channel(INBOX_CAPACITY);
    let config = Arc::new(InboundConfig::new(id, CLUSTER, security, tx));
    let tcp = TcpListener::bind(bind).await.unwrap();
    Node {
        listener: spawn_listener(tcp, config).unwrap(),
        inbox,
    }
}

async fn start_link(
    local: NodeId,
    peer: NodeId,
    addr: SocketAddr,
    security: LinkSecurity,
    queue_frames_max: usize,
) -> (ActorRef<PeerLinkMsg>, PeerLinkSender) {
    let mut config = PeerLinkConfig::new(
        local,
        peer,
        CLUSTER,
        addr.ip().to_string(),
        addr.port(),
        security,
        Arc::new(TcpConnector),
        DetRng::from_seed(local.0 * 1000 + peer.0),
    );
    config.timings = timings();
    config.queue_frames_max = queue_frames_max;
    let (arguments, sender) = PeerLinkArguments::new(config);
    let (actor, _join) = Actor::spawn(None, PeerLink, arguments).await.unwrap();
    (actor, sender)
}

async fn status(actor: &ActorRef<PeerLinkMsg>) -> LinkStatus {
    ractor::call_t!(actor, PeerLinkMsg::Status, 2000).unwrap()
}

async fn wait_status(
    actor: &ActorRef<PeerLinkMsg>,
    what: impl Fn(&LinkStatus) -> bool,
) -> LinkStatus {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let s = status(actor).await;
        if what(&s) {
            return s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out; last status {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn recv(inbox: &mut mpsc::Receiver<Inbound>) -> Inbound {
    tokio::time::timeout(WAIT, inbox.recv())
        .await
        .expect("timed out waiting for a message")
        .expect("inbox closed")
}

/// Accept exactly one connection on a fresh port and serve it; the handle yields why it closed.
async fn accept_one(
    id: NodeId,
    security: LinkSecurity,
) -> (
    SocketAddr,
    tokio::task::JoinHandle<LinkClosed>,
    mpsc::Receiver<Inbound>,
) {
    let (tx, inbox) = mpsc::channel(INBOX_CAPACITY);
    let mut config = InboundConfig::new(id, CLUSTER, security, tx);
    config.handshake_timeout = Duration::from_secs(5);
    let config = Arc::new(config);
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (stream, _) = tcp.accept().await.unwrap();
        serve_connection(Box::new(stream), config).await
    });
    (addr, task, inbox)
}

/// A hand-driven client: TCP, optionally TLS as the holder of `tls` dialing node `server`.
async fn raw_client(addr: SocketAddr, tls: Option<&MutualTls>, server: NodeId) -> BoxStream {
    let tcp = TcpStream::connect(addr).await.unwrap();
    match tls {
        None => Box::new(tcp),
        Some(tls) => {
            let connector = tokio_rustls::TlsConnector::from(tls.client_config());
            let name = MutualTls::server_name(server).unwrap();
            Box::new(connector.connect(name, tcp).await.unwrap())
        }
    }
}

fn hello(node: NodeId) -> Vec<u8> {
    encode_frame(&Envelope::new(
        node,
        PeerMessage::Hello {
            node,
            cluster: CLUSTER,
            version: PROTOCOL_VERSION,
        },
    ))
    .unwrap()
}

/// Read until the peer closes; true if it did within the wait (EOF or error).
async fn closed_by_peer(stream: &mut BoxStream) -> bool {
    let mut buf = [0u8; 1024];
    let read = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(WAIT, read).await.is_ok()
}

async fn join(task: tokio::task::JoinHandle<LinkClosed>) -> LinkClosed {
    tokio::time::timeout(WAIT, task).await.unwrap().unwrap()
}

#[tokio::test]
async fn two_nodes_exchange_frames_both_ways() {
    let ca = ClusterCa::generate("cluster").unwrap();
    let (a, b) = (NodeId(1), NodeId(2));
    let tls_a = ca.mutual_tls(a).unwrap();
    let tls_b = ca.mutual_tls(b).unwrap();
    let mut node_a = start_node(a, LinkSecurity::MutualTls(tls_a.clone()), "127.0.0.1:0").await;
    let mut node_b = start_node(b, LinkSecurity::MutualTls(tls_b.clone()), "127.0.0.1:0").await;
    let (link_ab, to_b) = start_link(
        a,
        b,
        node_b.listener.local_addr(),
        LinkSecurity::MutualTls(tls_a),
        64,
    )
    .await;
    let (link_ba, to_a) = start_link(
        b,
        a,
        node_a.listener.local_addr(),
        LinkSecurity::MutualTls(tls_b),
        16,
    )
    .await;

    to_b.try_send(PeerMessage::Raft(vec![1, 2, 3])).unwrap();
    let push_id = PushId([9; 16]);
    to_a.try_send(PeerMessage::ForwardPush {
        push_id,
        push: b"payload".to_vec(),
    })
    .unwrap();
    assert_eq!(
        recv(&mut node_b.inbox).await,
        Inbound {
            from: a,
            msg: PeerMessage::Raft(vec![1, 2, 3])
        }
    );
    assert_eq!(
        recv(&mut node_a.inbox).await,
        Inbound {
            from: b,
            msg: PeerMessage::ForwardPush {
                push_id,
                push: b"payload".to_vec()
            }
        }
    );
    // Many frames, in order.
    for n in 0..50u8 {
        to_b.try_send(PeerMessage::Raft(vec![n])).unwrap();
    }
    for n in 0..50u8 {
        assert_eq!(
            recv(&mut node_b.inbox).await.msg,
            PeerMessage::Raft(vec![n])
        );
    }
    // Keepalive PINGs flow (several ping intervals) without killing the links.
    tokio::time::sleep(Duration::from_millis(700)).await;
    for link in [&link_ab, &link_ba] {
        let s = status(link).await;
        assert!(s.connected, "{s:?}");
        assert_eq!(s.connects_total, 1, "{s:?}");
    }
    link_ab.stop(None);
    link_ba.stop(None);
}

#[tokio::test]
async fn certificate_from_another_ca_is_refused() {
    let ca = ClusterCa::generate("cluster").unwrap();
    let other = ClusterCa::generate("other").unwrap();
    let server = ca.mutual_tls(NodeId(2)).unwrap();
    // Trusts the real CA (so the client side is happy) but presents a foreign certificate.
    let foreign = other.issue(NodeId(1)).unwrap();
    let impostor = MutualTls::from_pem(
        ca.certificate_pem().as_bytes(),
        foreign.certificate_pem.as_bytes(),
        foreign.key_pem.as_bytes(),
    )
    .unwrap();
    let (addr, task, mut inbox) = accept_one(NodeId(2), LinkSecurity::MutualTls(server)).await;
    let mut stream = raw_client(addr, Some(&impostor), NodeId(2)).await;
    // TLS 1.3: the client learns of the refusal only when it uses the stream.
    let _ = write_frame(&mut stream, &hello(NodeId(1))).await;
    assert!(closed_by_peer(&mut stream).await);
    let closed = join(task).await;
    assert_eq!(closed.reason, CloseReason::TlsHandshake, "{closed:?}");
    assert!(inbox.try_recv().is_err());

    // The PeerLink of such an impostor never gets up either.
    let node = start_node(
        NodeId(2),
        LinkSecurity::MutualTls(ca.mutual_tls(NodeId(2)).unwrap()),
        "127.0.0.1:0",
    )
    .await;
    let (link, _sender) = start_link(
        NodeId(1),
        NodeId(2),
        node.listener.local_addr(),
        LinkSecurity::MutualTls(Arc::new(impostor)),
        4,
    )
    .await;
    let s = wait_status(&link, |s| s.closes_total >= 2).await;
    assert_eq!(s.connects_total, 0, "{s:?}");
    link.stop(None);
}

#[tokio::test]
async fn plaintext_client_against_a_tls_listener_is_refused() {
    let ca = ClusterCa::generate("cluster").unwrap();
    let server = ca.mutual_tls(NodeId(2)).unwrap();
    let (addr, task, mut inbox) = accept_one(NodeId(2), LinkSecurity::MutualTls(server)).await;
    let mut stream = raw_client(addr, None, NodeId(2)).await;
    write_frame(&mut stream, &hello(NodeId(1))).await.unwrap();
    let raft = encode_frame(&Envelope::new(NodeId(1), PeerMessage::Raft(vec![1]))).unwrap();
    let _ = write_frame(&mut stream, &raft).await;
    assert!(closed_by_peer(&mut stream).await);
    let closed = join(task).await;
    assert_eq!(closed.reason, CloseReason::TlsHandshake, "{closed:?}");
    assert!(inbox.try_recv().is_err());
}

#[tokio::test]
async fn hello_claiming_another_node_than_the_certificate_is_refused() {
    let ca = ClusterCa::generate("cluster").unwrap();
    let server = ca.mutual_tls(NodeId(2)).unwrap();
    let client = ca.mutual_tls(NodeId(1)).unwrap();
    let (addr, task, mut inbox) = accept_one(NodeId(2), LinkSecurity::MutualTls(server)).await;
    let mut stream = raw_client(addr, Some(&client), NodeId(2)).await;
    write_frame(&mut stream, &hello(NodeId(3))).await.unwrap();
    assert!(closed_by_peer(&mut stream).await);
    let closed = join(task).await;
    assert_eq!(closed.reason, CloseReason::NodeMismatch, "{closed:?}");
    assert_eq!(closed.peer, Some(NodeId(1)));
    assert!(inbox.try_recv().is_err());
}

#[tokio::test]
async fn hello_from_another_cluster_is_refused() {
    let ca = ClusterCa::generate("cluster").unwrap();
    let server = ca.mutual_tls(NodeId(2)).unwrap();
    let client = ca.mutual_tls(NodeId(1)).unwrap();
    let (addr, task, _inbox) = accept_one(NodeId(2), LinkSecurity::MutualTls(server)).await;
    let mut stream = raw_client(addr, Some(&client), NodeId(2)).await;
    let wrong = encode_frame(&Envelope::new(
        NodeId(1),
        PeerMessage::Hello {
            node: NodeId(1),
            cluster: ClusterId(CLUSTER.0 + 1),
            version: PROTOCOL_VERSION,
        },
    ))
    .unwrap();
    write_frame(&mut stream, &wrong).await.unwrap();
    assert!(closed_by_peer(&mut stream).await);
    assert_eq!(join(task).await.reason, CloseReason::WrongCluster);
}

/// Connect as node 1, exchange Hellos, and return the stream ready for frames.
async fn authenticated_client(addr: SocketAddr, tls: &MutualTls) -> BoxStream {
    let mut stream = raw_client(addr, Some(tls), NodeId(2)).await;
    write_frame(&mut stream, &hello(NodeId(1))).await.unwrap();
    let mut reader = FrameReader::new(&mut stream);
    let answer = tokio::time::timeout(WAIT, reader.read_envelope())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        matches!(
            answer.msg,
            PeerMessage::Hello {
                node: NodeId(2),
                ..
            }
        ),
        "{answer:?}"
    );
    stream
}

#[tokio::test]
async fn corrupt_and_oversized_frames_close_only_their_link() {
    let ca = ClusterCa::generate("cluster").unwrap();
    let server = LinkSecurity::MutualTls(ca.mutual_tls(NodeId(2)).unwrap());
    let client = ca.mutual_tls(NodeId(1)).unwrap();

    // The reasons, one link each.
    let (addr, task, _inbox) = accept_one(NodeId(2), server.clone()).await;
    let mut stream = authenticated_client(addr, &client).await;
    stream
        .write_all(&[0, 0, 0, 5, 0xc1, 0xc1, 0xc1, 0xc1, 0xc1])
        .await
        .unwrap();
    assert!(closed_by_peer(&mut stream).await);
    assert_eq!(join(task).await.reason, CloseReason::CorruptFrame);

    let (addr, task, _inbox) = accept_one(NodeId(2), server.clone()).await;
    let mut stream = authenticated_client(addr, &client).await;
    let too_long = (FRAME_BYTES_MAX as u32 + 1).to_be_bytes();
    stream.write_all(&too_long).await.unwrap();
    assert!(closed_by_peer(&mut stream).await);
    assert_eq!(join(task).await.reason, CloseReason::OversizedFrame);

    // One listener: a good link keeps working while bad links come and go beside it.
    let mut node = start_node(NodeId(2), server, "127.0.0.1:0").await;
    let addr = node.listener.local_addr();
    let (link, to_node) = start_link(
        NodeId(1),
        NodeId(2),
        addr,
        LinkSecurity::MutualTls(client.clone()),
        16,
    )
    .await;
    to_node.try_send(PeerMessage::Raft(vec![1])).unwrap();
    assert_eq!(recv(&mut node.inbox).await.msg, PeerMessage::Raft(vec![1]));

    let mut corrupt = authenticated_client(addr, &client).await;
    corrupt
        .write_all(&[0, 0, 0, 3, 0xff, 0xff, 0xff])
        .await
        .unwrap();
    assert!(closed_by_peer(&mut corrupt).await);
    let mut oversized = authenticated_client(addr, &client).await;
    oversized
        .write_all(&[0xff, 0xff, 0xff, 0xff])
        .await
        .unwrap();
    assert!(closed_by_peer(&mut oversized).await);

    to_node.try_send(PeerMessage::Raft(vec![2])).unwrap();
    assert_eq!(recv(&mut node.inbox).await.msg, PeerMessage::Raft(vec![2]));
    // A new link is still accepted.
    let mut fresh = authenticated_client(addr, &client).await;
    let frame = encode_frame(&Envelope::new(NodeId(1), PeerMessage::Raft(vec![3]))).unwrap();
    write_frame(&mut fresh, &frame).await.unwrap();
    assert_eq!(recv(&mut node.inbox).await.msg, PeerMessage::Raft(vec![3]));
    let s = status(&link).await;
    assert_eq!((s.connected, s.connects_total), (true, 1), "{s:?}");
    link.stop(None);
}

#[tokio::test]
async fn link_reconnects_after_the_peer_restarts() {
    let ca = ClusterCa::generate("cluster").unwrap();
    let server = LinkSecurity::MutualTls(ca.mutual_tls(NodeId(2)).unwrap());
    let client = LinkSecurity::MutualTls(ca.mutual_tls(NodeId(1)).unwrap());
    let mut node = start_node(NodeId(2), server.clone(), "127.0.0.1:0").await;
    let addr = node.listener.local_addr();
    let (link, to_node) = start_link(NodeId(1), NodeId(2), addr, client, 16).await;
    to_node.try_send(PeerMessage::Raft(vec![1])).unwrap();
    assert_eq!(recv(&mut node.inbox).await.msg, PeerMessage::Raft(vec![1]));

    // The peer goes away: the link notices and keeps retrying.
    node.listener.shutdown();
    wait_status(&link, |s| !s.connected && s.closes_total >= 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The peer comes back on the same address.
    let mut node = start_node(NodeId(2), server, &addr.to_string()).await;
    let s = wait_status(&link, |s| s.connected && s.connects_total >= 2).await;
    assert!(s.closes_total >= 1, "{s:?}");
    to_node.try_send(PeerMessage::Raft(vec![2])).unwrap();
    assert_eq!(recv(&mut node.inbox).await.msg, PeerMessage::Raft(vec![2]));
    link.stop(None);
}

#[tokio::test]
async fn outbound_queue_bound_reports_overload() {
    // A peer that is not there: the link retries, the queue fills and stays bounded.
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    drop(tcp);
    let (link, sender) = start_link(NodeId(1), NodeId(2), addr, LinkSecurity::Plaintext, 4).await;
    for n in 0..4u8 {
        sender.try_send(PeerMessage::Raft(vec![n])).unwrap();
    }
    assert_eq!(
        sender.try_send(PeerMessage::Raft(vec![4])),
        Err(SendError::Overloaded { dropped_total: 1 })
    );
    assert_eq!(
        sender.try_send(PeerMessage::Raft(vec![5])),
        Err(SendError::Overloaded { dropped_total: 2 })
    );
    assert_eq!(sender.dropped_total(), 2);
    // Too large for one frame: refused at admission, not queued.
    assert!(matches!(
        sender.try_send(PeerMessage::Raft(vec![0; FRAME_BYTES_MAX])),
        Err(SendError::Frame(_))
    ));
    assert_eq!(
        sender.try_send(PeerMessage::Ping { nonce: 1 }),
        Err(SendError::ControlMessage)
    );
    let s = wait_status(&link, |s| s.closes_total >= 2).await;
    assert_eq!(s.last_close, Some(CloseReason::ConnectFailed));
    assert_eq!(s.dropped_total, 2);
    link.stop(None);
}

#[tokio::test]
async fn unanswered_pings_kill_the_link() {
    // A plaintext fake peer that completes the Hello exchange and then never answers.
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let silent = tokio::spawn(async move {
        let (mut stream, _) = tcp.accept().await.unwrap();
        let mut reader = FrameReader::new(&mut stream);
        let first = reader.read_envelope().await.unwrap().unwrap();
        assert!(matches!(first.msg, PeerMessage::Hello { .. }));
        write_frame(reader.get_mut(), &hello(NodeId(2)))
            .await
            .unwrap();
        // Swallow everything (PINGs included) without answering.
        let mut sink = Vec::new();
        let _ = stream.read_to_end(&mut sink).await;
    });
    let (link, _sender) = start_link(NodeId(1), NodeId(2), addr, LinkSecurity::Plaintext, 4).await;
    let s = wait_status(&link, |s| s.closes_total >= 1).await;
    assert_eq!(s.connects_total, 1, "{s:?}");
    assert_eq!(s.last_close, Some(CloseReason::PingTimeout), "{s:?}");
    link.stop(None);
    silent.abort();
}

#[tokio::test]
async fn envelope_from_another_node_than_the_link_is_refused() {
    let ca = ClusterCa::generate("cluster").unwrap();
    let server = ca.mutual_tls(NodeId(2)).unwrap();
    let client = ca.mutual_tls(NodeId(1)).unwrap();
    let (addr, task, mut inbox) = accept_one(NodeId(2), LinkSecurity::MutualTls(server)).await;
    let mut stream = authenticated_client(addr, &client).await;
    let spoofed = encode_frame(&Envelope::new(NodeId(3), PeerMessage::Raft(vec![1]))).unwrap();
    write_frame(&mut stream, &spoofed).await.unwrap();
    assert!(closed_by_peer(&mut stream).await);
    assert_eq!(join(task).await.reason, CloseReason::NodeMismatch);
    assert!(inbox.try_recv().is_err());
}

/// A simulator-style network: every `connect` makes an in-memory duplex pipe and hands the
/// far end to `serve_connection`, as the simulator does with its own streams.
#[derive(Debug)]
struct PipeConnector {
    server: Arc<InboundConfig>,
}

impl herald_actors::seams::Connector for PipeConnector {
    fn connect<'a>(
        &'a self,
        _host: &'a str,
        _port: u16,
    ) -> herald_actors::seams::BoxFuture<'a, std::io::Result<BoxStream>> {
        Box::pin(async move {
            let (near, far) = tokio::io::duplex(64 * 1024);
            tokio::spawn(serve_connection(Box::new(far), self.server.clone()));
            Ok(Box::new(near) as BoxStream)
        })
    }
}

#[tokio::test]
async fn links_run_over_any_connector_in_plaintext_and_tls() {
    let ca = ClusterCa::generate("cluster").unwrap();
    for tls in [false, true] {
        let (server, client) = if tls {
            (
                LinkSecurity::MutualTls(ca.mutual_tls(NodeId(2)).unwrap()),
                LinkSecurity::MutualTls(ca.mutual_tls(NodeId(1)).unwrap()),
            )
        } else {
            (LinkSecurity::Plaintext, LinkSecurity::Plaintext)
        };
        let (tx, mut inbox) = mpsc::channel(INBOX_CAPACITY);
        let connector = PipeConnector {
            server: Arc::new(InboundConfig::new(NodeId(2), CLUSTER, server, tx)),
        };
        let mut config = PeerLinkConfig::new(
            NodeId(1),
            NodeId(2),
            CLUSTER,
            "node-2",
            1,
            client,
            Arc::new(connector),
            DetRng::from_seed(7),
        );
        config.timings = timings();
        let (arguments, sender) = PeerLinkArguments::new(config);
        let (link, _join) = Actor::spawn(None, PeerLink, arguments).await.unwrap();
        let outcome = PeerMessage::Outcome {
            push_id: PushId([1; 16]),
            outcome: vec![4, 2],
        };
        sender.try_send(outcome.clone()).unwrap();
        assert_eq!(
            recv(&mut inbox).await,
            Inbound {
                from: NodeId(1),
                msg: outcome
            },
            "tls: {tls}"
        );
        link.stop(None);
    }
}
