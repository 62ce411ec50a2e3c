//! The app-server workload: pushes, batches and device registrations sent to the nodes over
//! the simulated network, with tokens the emulator answers 410 for.
//!
//! The workload runs on its own host and talks to each node's small JSON-lines API
//! ([`ApiRequest`] → [`ApiResponse`], one request per connection). A node records a push as
//! *accepted* the moment its engine acknowledged it (the WAL append returned), whether or
//! not the answer reaches the workload: that is what the "no accepted push lost" invariant
//! holds the node to. Until cluster routing of pushes to shard owners lands, the workload
//! sends each push to a node of its choice and that node's engine takes it; routing plugs in
//! behind [`ApiRequest::Push`] without changing the workload.

use std::time::Duration;

use herald_actors::seams::DetRng;
use serde::{Deserialize, Serialize};
use tokio::io::BufReader;

use super::network::{read_line, write_line};
use super::trace::Trace;

/// The TCP port of each node's workload API.
pub const API_PORT: u16 = 8080;
/// How long the workload waits for one API answer.
pub const API_TIMEOUT: Duration = Duration::from_secs(3);
/// Most pushes in one batch request.
pub const BATCH_MAX: u64 = 8;
/// Most API requests in flight from the workload at once (more are skipped, and counted).
pub const REQUESTS_IN_FLIGHT_MAX: usize = 64;

/// A request to a node's workload API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ApiRequest {
    /// Push one alert.
    Push {
        /// Device token (hex).
        token: String,
        /// `apns-priority`: 10, 5 or 1.
        priority: u8,
        /// `apns-expiration` this long after the node's clock (none: no expiration).
        expires_in_ms: Option<u64>,
    },
    /// Push one alert to each token, in one batch.
    Batch {
        /// Device tokens.
        tokens: Vec<String>,
    },
    /// Register a device in the replicated registry (topic and a group tag), which also
    /// records its token as registered.
    Register {
        /// Device token.
        token: String,
    },
    /// Push one alert to every registered device (of the run's topic) carrying `tag`, or to
    /// all of them: one page of the replicated registry, as `POST /v1/broadcast` does.
    Broadcast {
        /// The tag, if any.
        tag: Option<String>,
    },
}

/// The group tag a stable token registers with.
pub fn group_tag(token: &str) -> String {
    format!("g{}", token.bytes().map(u64::from).sum::<u64>() % 3)
}

/// A node's answer: one result per push (push id in hex, or an error), or the
/// registration's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiResponse {
    /// Per push (or the one registration): `Ok(id)` or `Err(error)`.
    pub results: Vec<Result<String, String>>,
}

/// The device tokens of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenPlan {
    /// Healthy tokens the workload also registers.
    pub stable: Vec<String>,
    /// Tokens the emulator answers 410 for from the start.
    pub dead: Vec<String>,
    /// Healthy tokens a 410 storm may kill (never registered, so an invalidation is final).
    pub storm: Vec<String>,
}

impl TokenPlan {
    /// Draw `stable`, `dead` and `storm` tokens (32 random bytes each, hex).
    pub fn draw(rng: &mut DetRng, stable: usize, dead: usize, storm: usize) -> TokenPlan {
        let mut token = || {
            let mut bytes = [0u8; 32];
            rng.fill(&mut bytes);
            hex::encode(bytes)
        };
        TokenPlan {
            stable: (0..stable).map(|_| token()).collect(),
            dead: (0..dead).map(|_| token()).collect(),
            storm: (0..storm).map(|_| token()).collect(),
        }
    }

    fn any(&self, rng: &mut DetRng) -> String {
        let total = (self.stable.len() + self.dead.len() + self.storm.len()) as u64;
        let mut i = rng.below(total) as usize;
        for list in [&self.stable, &self.dead, &self.storm] {
            if i < list.len() {
                return list[i].clone();
            }
            i -= list.len();
        }
        unreachable!("index below the total length")
    }
}

/// What the workload does.
#[derive(Debug, Clone)]
pub struct WorkloadConfig {
    /// Node host names.
    pub nodes: Vec<String>,
    /// The tokens.
    pub tokens: TokenPlan,
    /// The workload stops issuing requests at this simulated time.
    pub until: Duration,
    /// Mean pause between requests (milliseconds).
    pub pause_mean_ms: u64,
}

/// Run the workload on the current host until `config.until`, then wait for the answers.
pub async fn run(config: WorkloadConfig, mut rng: DetRng, trace: Trace) {
    let mut in_flight = tokio::task::JoinSet::new();
    let mut seq = 0u64;
    loop {
        let now = turmoil::sim_elapsed().unwrap_or_default();
        if now >= config.until {
            break;
        }
        tokio::time::sleep(Duration::from_millis(
            1 + rng.below(2 * config.pause_mean_ms),
        ))
        .await;
        while in_flight.try_join_next().is_some() {}
        if in_flight.len() >= REQUESTS_IN_FLIGHT_MAX {
            trace.record("client", "skip: too many requests in flight");
            continue;
        }
        let node = config.nodes[rng.below(config.nodes.len() as u64) as usize].clone();
        let roll = rng.below(100);
        let request = if roll < 75 {
            ApiRequest::Push {
                token: config.tokens.any(&mut rng),
                priority: [10, 10, 5, 1][rng.below(4) as usize],
                expires_in_ms: rng.chance(0.2).then(|| 100 + rng.below(5_000)),
            }
        } else if roll < 90 {
            let n = 2 + rng.below(BATCH_MAX - 1);
            ApiRequest::Batch {
                tokens: (0..n).map(|_| config.tokens.any(&mut rng)).collect(),
            }
        } else if roll < 94 {
            ApiRequest::Broadcast {
                tag: rng.chance(0.5).then(|| format!("g{}", rng.below(3))),
            }
        } else {
            let i = rng.below(config.tokens.stable.len() as u64) as usize;
            ApiRequest::Register {
                token: config.tokens.stable[i].clone(),
            }
        };
        seq += 1;
        let trace = trace.clone();
        in_flight.spawn(async move {
            let what = match &request {
                ApiRequest::Push { token, .. } => format!("push {}", &token[..8]),
                ApiRequest::Batch { tokens } => format!("batch of {}", tokens.len()),
                ApiRequest::Register { token } => format!("register {}", &token[..8]),
                ApiRequest::Broadcast { tag } => {
                    format!("broadcast to {}", tag.as_deref().unwrap_or("all"))
                }
            };
            let answer = tokio::time::timeout(API_TIMEOUT, call(&node, &request)).await;
            let text = match answer {
                Ok(Ok(response)) => {
                    let ok = response.results.iter().filter(|r| r.is_ok()).count();
                    format!("ok {ok}/{}", response.results.len())
                }
                Ok(Err(e)) => format!("error: {e}"),
                Err(_) => "timeout".to_owned(),
            };
            trace.record("client", format!("#{seq} {what} -> {node}: {text}"));
        });
    }
    while in_flight.join_next().await.is_some() {}
    trace.record("client", "workload done");
}

async fn call(node: &str, request: &ApiRequest) -> std::io::Result<ApiResponse> {
    let stream = turmoil::net::TcpStream::connect((node, API_PORT)).await?;
    let (read, mut write) = tokio::io::split(stream);
    let line = serde_json::to_string(request).map_err(std::io::Error::other)?;
    write_line(&mut write, &line).await?;
    let mut reader = BufReader::new(read);
    let answer = read_line(&mut reader)
        .await?
        .ok_or_else(|| std::io::Error::other("closed without an answer"))?;
    serde_json::from_str(&answer).map_err(std::io::Error::other)
}
