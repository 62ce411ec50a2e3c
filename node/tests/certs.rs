//! `herald certs`: the files it writes, their modes, the overwrite rule, and that the
//! transport's TLS loader takes them and two nodes link over loopback mutual TLS with them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use herald_cluster::node::{ClusterConfig, ClusterNode, StorageLocation};
use herald_cluster::transport::{ClusterId, LinkSecurity, MutualTls, NodeId};
use herald_node::certs_cmd::{CertsArgs, generate};
use tokio::net::TcpListener;

const WAIT: Duration = Duration::from_secs(60);

fn args(dir: PathBuf, nodes: Vec<u64>) -> CertsArgs {
    CertsArgs {
        dir,
        nodes,
        name: "herald test CA".to_owned(),
        ca_dir: None,
        force: false,
    }
}

#[test]
fn writes_the_documented_files_with_private_keys_0600_and_refuses_to_overwrite() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("certs");
    let report = generate(&args(dir.clone(), vec![2, 1])).unwrap();
    let names: Vec<_> = report
        .files
        .iter()
        .map(|f| f.file_name().unwrap().to_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        names,
        [
            "ca.pem",
            "ca.key.pem",
            "node-1.pem",
            "node-1.key.pem",
            "node-2.pem",
            "node-2.key.pem"
        ]
    );
    // Nothing else is left behind (no staging directory).
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), names.len());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for file in &report.files {
            let mode = std::fs::metadata(file).unwrap().permissions().mode() & 0o777;
            let expected = if file.to_str().unwrap().ends_with(".key.pem") {
                0o600
            } else {
                0o644
            };
            assert_eq!(mode, expected, "{}", file.display());
        }
    }
    // Each node's certificate binds its id.
    for id in [1, 2] {
        assert_eq!(
            MutualTls::read_pem_dir(&dir, NodeId(id)).unwrap().node(),
            NodeId(id)
        );
    }

    // A second run refuses, and changes nothing.
    let before = std::fs::read(dir.join("ca.key.pem")).unwrap();
    let refused = generate(&args(dir.clone(), vec![1])).unwrap_err();
    assert!(refused.to_string().contains("--force"), "{refused}");
    assert_eq!(std::fs::read(dir.join("ca.key.pem")).unwrap(), before);

    // --force overwrites.
    let mut forced = args(dir.clone(), vec![1]);
    forced.force = true;
    generate(&forced).unwrap();
    assert_ne!(std::fs::read(dir.join("ca.key.pem")).unwrap(), before);

    // Issuing a new node with the existing CA, in the same directory, needs no --force.
    let mut more = args(dir.clone(), vec![3]);
    more.ca_dir = Some(dir.clone());
    let report = generate(&more).unwrap();
    assert_eq!(report.files.len(), 2);
    assert_eq!(
        MutualTls::read_pem_dir(&dir, NodeId(3)).unwrap().node(),
        NodeId(3)
    );

    // Bad node ids are refused.
    for nodes in [vec![], vec![0], vec![4, 4]] {
        assert!(generate(&args(temp.path().join("bad"), nodes)).is_err());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_link_over_mutual_tls_with_the_generated_files() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().to_path_buf();
    generate(&args(dir.clone(), vec![1, 2])).unwrap();

    let mut listeners = BTreeMap::new();
    for id in [1u64, 2] {
        listeners.insert(id, TcpListener::bind("127.0.0.1:0").await.unwrap());
    }
    let peers: BTreeMap<u64, SocketAddr> = listeners
        .iter()
        .map(|(&id, l)| (id, l.local_addr().unwrap()))
        .collect();
    let mut nodes = vec![];
    for (id, listener) in listeners {
        let tls = MutualTls::read_pem_dir(&dir, NodeId(id)).unwrap();
        let mut config = ClusterConfig::new(
            id,
            ClusterId(3),
            peers.clone(),
            "eu",
            StorageLocation::InMemory,
            LinkSecurity::MutualTls(std::sync::Arc::new(tls)),
        );
        config.tick = Duration::from_millis(20);
        nodes.push(ClusterNode::start(config, listener).await.unwrap());
    }
    // A two-node cluster elects a leader only if both links carry Raft messages: the
    // mutual-TLS handshakes succeeded in both directions.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let states: Vec<_> = nodes.iter().map(|n| *n.applied().borrow()).collect();
        if states[0].leader.is_some()
            && states[0].leader == states[1].leader
            && states.iter().any(|s| s.is_leader)
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no leader over mutual TLS: {states:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for node in nodes {
        node.stop().await;
    }
}
