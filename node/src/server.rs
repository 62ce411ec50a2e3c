//! `herald node --config herald.toml`: one cluster node.
//!
//! [`Node::start_with`] loads the configuration and starts, in order:
//! 1. the cluster node ([`ClusterNode::start`]: Raft state in `data_dir/raft.redb`, links
//!    secured by mutual TLS from `[cluster.tls]`; a configuration without peers is a
//!    single-node cluster);
//! 2. the engine ([`Herald`]): the write-ahead log `data_dir/wal.redb` ([`FileWal`] behind a
//!    [`GroupCommitWal`]), the replicated token state, the tenants from the configuration;
//! 3. the cluster [`Router`]: every push goes to its shard's owner in this node's region
//!    (the local engine, or forwarded over the peer links);
//! 4. the credential reloader ([`CredentialReloader`]: file poll and `SIGHUP`);
//! 5. the HTTP server (axum): [`ops::router`] merged with the HTTP API ([`api_router`]: keys
//!    signed with `node.api_key_secret_file`, pushes through the router, webhooks from the
//!    tenants' sections) — or with the router a caller of [`Node::start_with`] builds from a
//!    [`NodeContext`].
//!
//! [`Node::shutdown`] (what `SIGTERM` and `SIGINT` run, see [`run`]) stops in the reverse
//! order: `/readyz` turns 503 (load balancers stop sending), the engine stops taking
//! pushes and drains for up to `shutdown_deadline_secs` ([`Herald::shutdown`]: pushes still
//! pending stay in the WAL for the next start), the reloader stops, the cluster node stops
//! (releasing its store), and the HTTP server finishes its open requests. Every WAL append
//! and completion is committed (fsync'd) before it returns, so nothing is left to flush.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, bail};
use axum::Router;
use axum::serve::ListenerExt as _;
use herald_actors::apns::ApnsTlsConfig;
use herald_actors::seams::{DetRng, SharedClock, SystemClock, TcpConnector};
use herald_actors::wal::{CompletionSync, FileWal, GroupCommitWal, WalClosed, WalLimits};
use herald_actors::{Endpoint, Herald, OutcomeRecord, ShutdownReport, Tuning};
use herald_cluster::node::{ClusterConfig, ClusterNode, StorageLocation};
use herald_cluster::provider_tokens::{ProviderTokenConfig, ProviderTokens};
use herald_cluster::routing::{Router as ClusterRouter, RouterConfig};
use herald_cluster::state::ApiTenantRecord;
use herald_cluster::transport::tls::{LinkSecurity, MutualTls};
use herald_cluster::transport::{ClusterId, NodeId};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

use crate::api::{
    ApiKeys, ApiState, Backends, ClusterRevocations, LocalBackend, ReplicatedDevices,
    ReplicatedTenants, TenantInfo, WebhookTarget, Webhooks, api_tenant_config,
};
use crate::config::{ApnsEnvironment, NodeConfig, Overrides, read_secret_line};
use crate::credentials::{
    CredentialReloader, KeyRelease, MinterSource, load_tenants, load_tenants_with,
};
use crate::ops::{self, ClusterProbe, DrainProbe, EngineProbe, METRICS_UPKEEP_PERIOD, OpsState};

/// The write-ahead log's file name in `data_dir`.
pub const WAL_FILE: &str = "wal.redb";
/// The Raft store's file name in `data_dir`.
pub const RAFT_FILE: &str = "raft.redb";
/// How long the HTTP server may take to finish open requests after the engine stopped.
pub const HTTP_SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How long a stopped node waits for the engine's last users to release the write-ahead log
/// file (so the same data directory can be opened again in this process).
pub const WAL_RELEASE_WAIT: Duration = Duration::from_secs(5);

/// What the HTTP API is built from: the parts of a starting node.
pub struct NodeContext<'a> {
    /// The configuration in force.
    pub config: &'a NodeConfig,
    /// The engine.
    pub engine: &'a Herald,
    /// The cluster node.
    pub cluster: &'a ClusterNode,
    /// The credential reloader (the tenants' sections: topics, webhooks).
    pub reloader: &'a Arc<CredentialReloader>,
    /// The cluster router over `engine`.
    pub router: &'a Arc<ClusterRouter>,
    /// The clock.
    pub clock: &'a SharedClock,
    /// Turns true when the node stops (end background tasks then).
    pub stop: &'a watch::Receiver<bool>,
    /// Where token-auth tenants get their provider-token minters (the cluster's).
    pub minters: &'a MinterSource,
    /// Gives a [`minters`](Self::minters) registration back when its tenant is removed.
    pub release_key: &'a KeyRelease,
    /// The tenants created through the API (replicated) the engine was built with.
    api_tenants: BTreeMap<String, ApiTenantRecord>,
    /// The engine's outcome stream subscribed before it started (see [`Self::outcomes`]).
    early_outcomes: Mutex<Option<broadcast::Receiver<OutcomeRecord>>>,
}

impl std::fmt::Debug for NodeContext<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeContext")
            .field("engine", self.engine)
            .field("cluster", self.cluster)
            .field("api_tenants", &self.api_tenants.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl NodeContext<'_> {
    /// The engine's outcomes. The first caller (the webhooks) gets every outcome since the
    /// engine started, including those of pushes recovered from the write-ahead log that
    /// finished during start-up; later callers get those from now on.
    pub fn outcomes(&self) -> broadcast::Receiver<OutcomeRecord> {
        let early = self
            .early_outcomes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        early.unwrap_or_else(|| self.engine.outcomes())
    }
}

/// A running node. Stop it with [`shutdown`](Self::shutdown).
#[derive(Debug)]
pub struct Node {
    config: NodeConfig,
    engine: Herald,
    cluster: ClusterNode,
    reloader: Arc<CredentialReloader>,
    router: Arc<ClusterRouter>,
    drain: DrainProbe,
    api_addr: SocketAddr,
    stop: watch::Sender<bool>,
    http: JoinHandle<std::io::Result<()>>,
    background: Vec<JoinHandle<()>>,
    wal: WalClosed,
    provider_tokens: Arc<ProviderTokens>,
}

/// What a shutdown achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownSummary {
    /// The engine's drain.
    pub engine: ShutdownReport,
    /// The HTTP server finished its open requests within [`HTTP_SHUTDOWN_GRACE`].
    pub http_clean: bool,
    /// The write-ahead log file was closed within [`WAL_RELEASE_WAIT`] (false while someone
    /// still holds a clone of the engine handle, or a WAL operation is still running).
    pub wal_released: bool,
}

impl Node {
    /// Start a node: the ops endpoints and the HTTP API ([`api_router`]).
    ///
    /// # Errors
    /// Any part that does not start (the message names it).
    pub async fn start(config_path: &Path, overrides: Overrides) -> anyhow::Result<Node> {
        let mut failure = None;
        let node = Node::start_with(config_path, overrides, |context| {
            api_router(context).unwrap_or_else(|e| {
                failure = Some(e);
                Router::new()
            })
        })
        .await?;
        if let Some(e) = failure {
            node.shutdown().await;
            return Err(e.context("starting the HTTP API"));
        }
        Ok(node)
    }

    /// Start a node, merging `api(&context)` into the HTTP server next to the ops routes.
    ///
    /// # Errors
    /// Any part that does not start (the message names it).
    pub async fn start_with(
        config_path: &Path,
        overrides: Overrides,
        api: impl FnOnce(&NodeContext<'_>) -> Router,
    ) -> anyhow::Result<Node> {
        let config = NodeConfig::load(config_path, &overrides)?;
        let clock: SharedClock = Arc::new(SystemClock);
        std::fs::create_dir_all(&config.node.data_dir)
            .with_context(|| format!("creating data_dir {}", config.node.data_dir.display()))?;
        let endpoint = endpoint(&config)?;

        let cluster = start_cluster(&config).await?;
        // One provider token per signing key, cluster-wide: the leader signs it and
        // replicates it; every node's tenants of that key present it.
        let provider_tokens = Arc::new(ProviderTokens::start(
            &cluster,
            clock.clone(),
            ProviderTokenConfig::default(),
        ));
        let minters: MinterSource = {
            let tokens = provider_tokens.clone();
            Arc::new(move |key, _clock| tokens.register(key).map_err(|e| e.to_string()))
        };
        let release_key: KeyRelease = {
            let tokens = provider_tokens.clone();
            Arc::new(move |key_id| tokens.release(key_id))
        };
        let tenants = match load_tenants_with(&config, &clock, &minters) {
            Ok(tenants) => tenants,
            Err(e) => {
                drop(provider_tokens);
                cluster.stop().await;
                return Err(e.into());
            }
        };
        // Tenants created through the API of any node (replicated): started with the engine,
        // so pushes of theirs recovered from the write-ahead log find them.
        let api_tenants = boot_api_tenants(&config, &cluster, &clock, &minters).await;

        let wal_path = config.node.data_dir.join(WAL_FILE);
        // Completions fsync'd lazily (durable with the next append): a crash may send a
        // push again, never lose one; half the fsyncs under load (docs/benchmarks.md).
        let wal = match FileWal::open_with(&wal_path, WalLimits::default(), CompletionSync::LAZY) {
            Ok(wal) => Arc::new(wal),
            Err(e) => {
                cluster.stop().await;
                bail!("opening the write-ahead log {}: {e}", wal_path.display());
            }
        };
        let wal_closed = wal.closed();
        let mut tuning = Tuning::default();
        tuning.shard_queue_max = config.limits.shard_queue_max;
        tuning.shard_inflight_max = config.limits.shard_inflight_max;
        let mut builder = Herald::builder();
        let early_outcomes = builder.subscribe_outcomes();
        builder
            .endpoint(endpoint)
            .clock(clock.clone())
            .shards(config.limits.shards)
            .tuning(tuning)
            .wal(Arc::new(GroupCommitWal::spawn(wal)))
            .token_state(cluster.token_state());
        for t in &tenants {
            builder.tenant(t.config.clone());
        }
        for (_, config) in api_tenants.values() {
            builder.tenant(config.clone());
        }
        let engine = match builder.build().await {
            Ok(engine) => engine,
            Err(e) => {
                cluster.stop().await;
                bail!("starting the engine: {e}");
            }
        };

        let router = match ClusterRouter::start(
            &cluster,
            engine.clone(),
            RouterConfig::new(DetRng::from_os().next_u64()),
        ) {
            Ok(router) => Arc::new(router),
            Err(e) => {
                engine.shutdown(Duration::ZERO).await;
                cluster.stop().await;
                bail!("starting the cluster router: {e}");
            }
        };

        let reloader = Arc::new(
            CredentialReloader::new(
                config_path.to_owned(),
                overrides,
                &config,
                &tenants,
                engine.clone(),
                clock.clone(),
            )
            .with_minters(minters.clone()),
        );
        let (stop, stop_rx) = watch::channel(false);
        let mut background = vec![
            reloader
                .clone()
                .spawn(config.reload_poll(), stop_rx.clone()),
        ];

        let metrics = ops::metrics_handle();
        background.push(tokio::spawn(upkeep(metrics.clone(), stop_rx.clone())));
        let drain = DrainProbe::new();
        let state = OpsState::new(metrics)
            .probe("shutdown", Arc::new(drain.clone()))
            .probe("engine", Arc::new(EngineProbe(engine.clone())))
            .probe("cluster", Arc::new(ClusterProbe(cluster.applied())));
        let context = NodeContext {
            config: &config,
            engine: &engine,
            cluster: &cluster,
            reloader: &reloader,
            router: &router,
            clock: &clock,
            stop: &stop_rx,
            minters: &minters,
            release_key: &release_key,
            api_tenants: api_tenants
                .into_iter()
                .map(|(id, (record, _))| (id, record))
                .collect(),
            early_outcomes: Mutex::new(Some(early_outcomes)),
        };
        let app = ops::router(state).merge(api(&context));
        let listener = match TcpListener::bind(config.node.api_listen).await {
            Ok(l) => l,
            Err(e) => {
                let _ = stop.send(true);
                engine.shutdown(Duration::ZERO).await;
                cluster.stop().await;
                bail!("binding node.api_listen {}: {e}", config.node.api_listen);
            }
        };
        let api_addr = listener.local_addr()?;
        let mut http_stop = stop_rx;
        // TCP_NODELAY on every accepted connection: with Nagle's algorithm a response written
        // in two parts waits for the client's (delayed) ACK of the first.
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let http = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = http_stop.wait_for(|stop| *stop).await;
                })
                .await
        });
        tracing::info!(
            node = config.node.id, region = %config.node.region, api = %api_addr,
            cluster = %cluster.local_addr(), tenants = tenants.len(), "herald node started"
        );
        Ok(Node {
            config,
            engine,
            cluster,
            reloader,
            router,
            drain,
            api_addr,
            stop,
            http,
            background,
            wal: wal_closed,
            provider_tokens,
        })
    }

    /// The cluster-wide provider tokens this node's token-auth tenants present.
    pub fn provider_tokens(&self) -> &ProviderTokens {
        &self.provider_tokens
    }

    /// The address the HTTP server listens on.
    pub fn api_addr(&self) -> SocketAddr {
        self.api_addr
    }

    /// The address the cluster listener listens on.
    pub fn cluster_addr(&self) -> SocketAddr {
        self.cluster.local_addr()
    }

    /// The engine.
    pub fn engine(&self) -> &Herald {
        &self.engine
    }

    /// The cluster node (membership, shard maps, token state).
    pub fn cluster(&self) -> &ClusterNode {
        &self.cluster
    }

    /// The configuration in force at start.
    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    /// The credential reloader.
    pub fn reloader(&self) -> &Arc<CredentialReloader> {
        &self.reloader
    }

    /// Stop: readiness off, drain the engine for up to the configured deadline, stop the
    /// reloader and the cluster node, let the HTTP server finish. See the [module docs](self).
    pub async fn shutdown(self) -> ShutdownSummary {
        tracing::info!(
            deadline_secs = self.config.node.shutdown_deadline_secs,
            "shutting down: draining accepted pushes"
        );
        self.drain.start_draining();
        let engine = self.engine.shutdown(self.config.shutdown_deadline()).await;
        if engine.drained {
            tracing::info!("every accepted push has its outcome");
        } else {
            tracing::warn!(
                remaining = engine.remaining,
                "shutdown deadline passed; the remaining pushes stay in the write-ahead log \
                 and are sent after the next start"
            );
        }
        let _ = self.stop.send(true);
        for task in self.background {
            let _ = task.await;
        }
        // No more forwarded pushes taken (the HTTP API's handle goes with the server).
        drop(self.router);
        self.cluster.stop().await;
        let mut http = self.http;
        let http_clean = match tokio::time::timeout(HTTP_SHUTDOWN_GRACE, &mut http).await {
            Ok(Ok(Ok(()))) => true,
            Ok(Ok(Err(e))) => {
                tracing::warn!(error = %e, "HTTP server ended with an error");
                false
            }
            Ok(Err(_)) => false,
            Err(_) => {
                tracing::warn!("HTTP requests still open after the grace period; closing them");
                http.abort();
                false
            }
        };
        drop(self.engine);
        drop(self.reloader);
        // Waits for the store itself (redb's file lock), not just the handles: an operation
        // still running on the blocking pool keeps the file open after the last handle is gone.
        let mut closed = self.wal;
        let wal_released = tokio::time::timeout(WAL_RELEASE_WAIT, closed.wait())
            .await
            .is_ok();
        if !wal_released {
            tracing::warn!("the write-ahead log is still open: an engine handle is still held");
        }
        tracing::info!("herald node stopped");
        ShutdownSummary {
            engine,
            http_clean,
            wal_released,
        }
    }
}

/// `herald node`: start, run until `SIGTERM` or `SIGINT`, shut down.
///
/// # Errors
/// If the node does not start.
pub async fn run(config_path: PathBuf, overrides: Overrides) -> anyhow::Result<ShutdownSummary> {
    let node = Node::start(&config_path, overrides).await?;
    let signal = termination_signal().await;
    tracing::info!(signal, "termination signal received");
    Ok(node.shutdown().await)
}

/// Wait for `SIGTERM` or `SIGINT` (Ctrl-C); answers the signal's name.
pub async fn termination_signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                biased;
                _ = term.recv() => "SIGTERM",
                _ = tokio::signal::ctrl_c() => "SIGINT",
            },
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only SIGINT stops the node");
                let _ = tokio::signal::ctrl_c().await;
                "SIGINT"
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "SIGINT"
    }
}

/// The APNs endpoint the configuration names.
///
/// # Errors
/// If the custom CA file does not load.
pub fn endpoint(config: &NodeConfig) -> anyhow::Result<Endpoint> {
    let a = &config.apns;
    Ok(match a.endpoint {
        ApnsEnvironment::Production => Endpoint::production(),
        ApnsEnvironment::Sandbox => Endpoint::sandbox(),
        ApnsEnvironment::Custom => {
            let host = a.host.clone().context("apns.host is required for custom")?;
            let port = a.port.unwrap_or(443);
            if a.plaintext {
                Endpoint::plaintext(host, port)
            } else {
                let mut tls = ApnsTlsConfig::new();
                if let Some(ca) = &a.ca_file {
                    let pem = std::fs::read(ca)
                        .with_context(|| format!("apns.ca_file: reading {}", ca.display()))?;
                    tls.webpki_roots(false).add_root_certificates_pem(&pem);
                    // Fail now, not at the first connection.
                    tls.build()
                        .with_context(|| format!("apns.ca_file: {}", ca.display()))?;
                }
                Endpoint::tls(host, port, tls)
            }
        }
    })
}

async fn start_cluster(config: &NodeConfig) -> anyhow::Result<ClusterNode> {
    let mut peers = std::collections::BTreeMap::new();
    for (id, addr) in config.peer_addresses() {
        let resolved = tokio::net::lookup_host(addr.as_str())
            .await
            .with_context(|| format!("cluster.peers.{id}: resolving {addr}"))?
            .next()
            .with_context(|| format!("cluster.peers.{id}: {addr} resolves to no address"))?;
        peers.insert(id, resolved);
    }
    let security = match &config.cluster.tls {
        Some(tls) => {
            let read = |field: &str, path: &Path| {
                std::fs::read(path)
                    .with_context(|| format!("cluster.tls.{field}: reading {}", path.display()))
            };
            let mutual = MutualTls::from_pem(
                &read("ca", &tls.ca)?,
                &read("cert", &tls.cert)?,
                &read("key", &tls.key)?,
            )
            .context("cluster.tls")?;
            if mutual.node() != NodeId(config.node.id) {
                bail!(
                    "cluster.tls.cert: the certificate names node {}, but node.id is {}",
                    mutual.node(),
                    config.node.id
                );
            }
            LinkSecurity::MutualTls(Arc::new(mutual))
        }
        None => LinkSecurity::Plaintext,
    };
    let listener = TcpListener::bind(config.node.cluster_listen)
        .await
        .with_context(|| format!("binding node.cluster_listen {}", config.node.cluster_listen))?;
    let mut cluster = ClusterConfig::new(
        config.node.id,
        ClusterId(config.cluster.id),
        peers,
        config.node.region.clone(),
        StorageLocation::Path(config.node.data_dir.join(RAFT_FILE)),
        security,
    );
    // The shard map has one entry per engine shard (the router maps each push's engine
    // shard to its owner), and the planner files each founder in its configured region.
    cluster.membership.shard_count = config.limits.shards as usize;
    if config.cluster.join {
        cluster.membership.start = herald_cluster::membership::StartMode::Join;
    }
    cluster.membership.failover_after = (config.cluster.failover_after_secs > 0)
        .then(|| Duration::from_secs(config.cluster.failover_after_secs));
    cluster.membership.founder_regions = config
        .cluster
        .regions
        .iter()
        .filter_map(|(id, region)| Some((id.parse().ok()?, region.clone())))
        .collect();
    ClusterNode::start(cluster, listener)
        .await
        .context("starting the cluster node")
}

async fn upkeep(
    handle: metrics_exporter_prometheus::PrometheusHandle,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(METRICS_UPKEEP_PERIOD);
    loop {
        tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => break,
            _ = tick.tick() => handle.run_upkeep(),
        }
    }
}

/// `herald node`'s arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct NodeArgs {
    /// The configuration file (TOML).
    #[arg(long, env = "HERALD_CONFIG", default_value = "herald.toml")]
    pub config: PathBuf,
    /// Validate the configuration and every file it names, print the effective
    /// configuration (paths, never secrets) and exit.
    #[arg(long)]
    pub check_config: bool,
    /// Values that override the file (flags win over `HERALD_…` variables).
    #[command(flatten)]
    pub overrides: Overrides,
}

/// Run `herald node` (`log`: the global `--log` / `HERALD_LOG`, which wins over the
/// configuration's `[log] filter`).
///
/// # Errors
/// An invalid configuration (naming the file and fields), or a node that does not start.
pub fn main(args: NodeArgs, log: Option<String>) -> anyhow::Result<()> {
    let mut overrides = args.overrides;
    if let Some(filter) = log {
        overrides.log_filter = Some(filter);
    }
    let config = NodeConfig::load(&args.config, &overrides)?;
    if args.check_config {
        check_config(&config)?;
        print!("{}", config.to_toml());
        eprintln!("{}: configuration OK", args.config.display());
        return Ok(());
    }
    crate::logging::init(config.log.format, &config.log.filter)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let summary = runtime.block_on(run(args.config, overrides))?;
    if !summary.engine.drained {
        eprintln!(
            "{} pushes were still pending at the shutdown deadline; they stay in the write-ahead \
             log and are sent after the next start",
            summary.engine.remaining
        );
    }
    Ok(())
}

/// Everything `--check-config` checks beyond the file itself: every tenant's credentials
/// load, the cluster TLS files build a mutual-TLS configuration for this node, and the APNs
/// CA loads.
///
/// # Errors
/// The first file that does not load.
pub fn check_config(config: &NodeConfig) -> anyhow::Result<()> {
    let clock: SharedClock = Arc::new(SystemClock);
    load_tenants(config, &clock)?;
    endpoint(config)?;
    if let Some(tls) = &config.cluster.tls {
        let read = |path: &Path| {
            std::fs::read(path).with_context(|| format!("reading {}", path.display()))
        };
        let mutual = MutualTls::from_pem(&read(&tls.ca)?, &read(&tls.cert)?, &read(&tls.key)?)
            .context("cluster.tls")?;
        if mutual.node() != NodeId(config.node.id) {
            bail!(
                "cluster.tls.cert: the certificate names node {}, but node.id is {}",
                mutual.node(),
                config.node.id
            );
        }
    }
    Ok(())
}

/// The HTTP API of a node (`docs/api.md`): keys verified with the secret in
/// `node.api_key_secret_file`, revocations replicated through Raft (a key revoked on any node
/// is refused by all), pushes through the cluster router,
/// the configured tenants known, webhooks from their `webhook_url` / `webhook_secret_file`.
/// Tenants added later by a reload become known to the API within a reload poll.
///
/// # Errors
/// An unreadable or too short API-key secret, or a webhook that does not load.
pub fn api_router(context: &NodeContext<'_>) -> anyhow::Result<Router> {
    let config = context.config;
    let secret = config
        .api_key_secret()
        .map_err(|e| anyhow::anyhow!("node.api_key_secret_file: {e}"))?;
    let keys = ApiKeys::hs256(secret.expose(), context.clock.clone())
        .context("node.api_key_secret_file")?;
    let backend = LocalBackend::routed(context.router.clone(), context.clock.clone());
    let mut seeds = DetRng::from_os();
    let webhooks = Webhooks::start(context.outcomes(), Arc::new(TcpConnector), seeds.next_u64());
    for tenant in &config.tenants {
        adopt(&backend, tenant);
        if let (Some(url), Some(file)) = (&tenant.webhook_url, &tenant.webhook_secret_file) {
            let secret = read_secret_line(file)
                .map_err(|e| anyhow::anyhow!("tenants.{}.webhook_secret_file: {e}", tenant.id))?;
            let secret = std::str::from_utf8(secret.expose()).map_err(|_| {
                anyhow::anyhow!("tenants.{}.webhook_secret_file: not UTF-8", tenant.id)
            })?;
            let target = WebhookTarget::new(url, secret)
                .map_err(|e| anyhow::anyhow!("tenants.{}.webhook_url: {e}", tenant.id))?;
            webhooks.set(&tenant.id, target);
        }
    }
    // Tenants a reload adds become known to the API.
    {
        let backend = backend.clone();
        let reloader = context.reloader.clone();
        let every = config.reload_poll();
        let mut stop = context.stop.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tokio::select! {
                    biased;
                    _ = stop.wait_for(|s| *s) => return,
                    _ = tick.tick() => {
                        for tenant in reloader.tenant_sections() {
                            adopt(&backend, &tenant);
                        }
                    }
                }
            }
        });
    }
    // Devices and feedback from the replicated state: the same on every node.
    let replicated = Arc::new(ReplicatedDevices::new(
        context.cluster.devices(),
        backend.clone(),
        context.clock.clone(),
    ));
    // Tenants created through any node's API are in the replicated state: follow them here.
    let tenants = ReplicatedTenants::new(
        context.cluster.devices(),
        backend.clone(),
        context.minters.clone(),
        context.release_key.clone(),
        context.clock.clone(),
        config.limits.tenant_queue_max,
        context.api_tenants.clone(),
    );
    tokio::spawn(tenants.clone().follow(context.stop.clone()));
    let backends = Backends {
        devices: replicated.clone(),
        feedback: replicated,
        tenants: Arc::new(tenants),
        ..Backends::local(&backend)
    };
    let state = ApiState::new(
        backends,
        keys,
        Arc::new(ClusterRevocations::new(context.cluster.revocations())),
        seeds.next_u64(),
    )
    .with_webhooks(webhooks.clone())
    .with_replicated_webhooks(context.cluster.devices())
    .with_cluster(context.cluster.membership_handle());
    // Webhooks set through any node's API are in the replicated state: follow them here.
    tokio::spawn(follow_webhooks(
        context.cluster.devices(),
        webhooks,
        context.stop.clone(),
    ));
    Ok(crate::api::router(state))
}

/// The replicated API-made tenants this node can start: each with its engine configuration.
/// A tenant whose id a configured tenant has, or whose key does not load here, is left out
/// (logged); the API's follower retries it when its record changes.
async fn boot_api_tenants(
    config: &NodeConfig,
    cluster: &ClusterNode,
    clock: &SharedClock,
    minters: &MinterSource,
) -> BTreeMap<String, (ApiTenantRecord, herald_actors::TenantConfig)> {
    let records = match cluster.devices().api_tenants().await {
        Ok(records) => records,
        Err(e) => {
            tracing::warn!(error = %e, "replicated tenants not read at start; followed later");
            return BTreeMap::new();
        }
    };
    let mut started = BTreeMap::new();
    for (id, record) in records {
        if config.tenants.iter().any(|t| t.id == id) {
            tracing::error!(tenant = %id, "replicated tenant shadowed by a configured one; kept the configured one");
            continue;
        }
        match api_tenant_config(&id, &record, config.limits.tenant_queue_max, clock, minters) {
            Ok(engine_config) => {
                started.insert(id, (record, engine_config));
            }
            Err(e) => tracing::error!(tenant = %id, error = %e, "replicated tenant not started"),
        }
    }
    started
}

/// How often a node looks for webhooks set or removed through another node.
pub const WEBHOOK_FOLLOW_EVERY: Duration = Duration::from_secs(1);

/// Keep `webhooks` in step with the replicated ones: set what was set or changed, remove what
/// was removed (webhooks only from the configuration are left alone).
async fn follow_webhooks(
    directory: herald_cluster::devices::DeviceDirectory,
    webhooks: Webhooks,
    mut stop: watch::Receiver<bool>,
) {
    let mut applied: std::collections::BTreeMap<String, herald_cluster::state::WebhookRecord> =
        std::collections::BTreeMap::new();
    let mut tick = tokio::time::interval(WEBHOOK_FOLLOW_EVERY);
    loop {
        tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => return,
            _ = tick.tick() => {}
        }
        let Ok(current) = directory.webhooks().await else {
            continue;
        };
        for (tenant, record) in &current {
            if applied.get(tenant) == Some(record) {
                continue;
            }
            match WebhookTarget::new(&record.url, &record.secret) {
                Ok(target) => webhooks.set(tenant, target),
                Err(e) => tracing::warn!(tenant, error = %e, "replicated webhook unusable"),
            }
        }
        for tenant in applied.keys() {
            if !current.contains_key(tenant) {
                webhooks.remove(tenant);
            }
        }
        applied = current;
    }
}

fn adopt(backend: &LocalBackend, tenant: &crate::config::TenantSection) {
    backend.adopt_tenant(TenantInfo {
        id: tenant.id.clone(),
        team_id: tenant.team_id.clone(),
        key_id: tenant.key_id.clone(),
    });
}
