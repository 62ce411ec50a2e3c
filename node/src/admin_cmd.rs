//! `herald admin`: operate a cluster through a node's HTTP API with an admin key, and issue
//! the first keys offline from the API-key secret.
//!
//! ```text
//! herald admin keys issue --secret-file api-key.secret --admin          # bootstrap an admin key
//! herald admin keys issue --secret-file api-key.secret --tenant acme --scopes push,read
//! export HERALD_API_KEY=…                                                # the admin key
//! herald admin status | members | shards                                 # GET /v1/cluster
//! herald admin join --id 4 --addr 10.0.0.4:7000 --region eu             # POST /v1/cluster/members
//! herald admin drain 4 | remove 4
//! herald admin tenants list | get ID | delete ID
//! herald admin tenants create --id acme --team-id T --key-id K --p8 AuthKey.p8
//! herald admin keys revoke KEY_ID
//! ```

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use herald_actors::seams::{DetRng, SystemClock};
use hyper::Method;
use serde_json::{Value, json};

use crate::api::{ApiKeys, KeyRequest, Scope};
use crate::config::read_secret_line;
use crate::http_client::ClientArgs;

/// `herald admin`'s arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct AdminArgs {
    #[command(subcommand)]
    command: AdminCommand,
}

#[derive(Debug, Clone, clap::Subcommand)]
enum AdminCommand {
    /// Leader, term, indexes and member count, as the node sees it.
    Status(ClientArgs),
    /// Every member: id, address, region, state, vote.
    Members(ClientArgs),
    /// Every region's shard map: epoch and shards per node.
    Shards(ClientArgs),
    /// Add a node started with `cluster.join = true` as a member.
    Join {
        /// Its node id.
        #[arg(long)]
        id: u64,
        /// Its cluster address (`host:port`, its `node.cluster_listen`).
        #[arg(long)]
        addr: String,
        /// Its region.
        #[arg(long)]
        region: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Drain a member: its shards move away, it finishes its backlog, then leaves.
    Drain {
        /// Its node id.
        id: u64,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Remove a dead member now: its shards are reassigned at once.
    Remove {
        /// Its node id.
        id: u64,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Tenants.
    Tenants {
        #[command(subcommand)]
        command: TenantsCommand,
    },
    /// API keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
}

#[derive(Debug, Clone, clap::Subcommand)]
enum TenantsCommand {
    /// Every tenant.
    List(ClientArgs),
    /// One tenant.
    Get {
        /// Its id.
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Create a tenant with APNs token credentials.
    Create {
        /// Its id.
        #[arg(long)]
        id: String,
        /// Apple team id.
        #[arg(long)]
        team_id: String,
        /// Apple key id.
        #[arg(long)]
        key_id: String,
        /// The `.p8` signing key file.
        #[arg(long)]
        p8: PathBuf,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Remove a tenant.
    Delete {
        /// Its id.
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Debug, Clone, clap::Subcommand)]
enum KeysCommand {
    /// Issue a key offline, signed with the nodes' API-key secret (prints the key).
    Issue {
        /// The file holding `node.api_key_secret_file`'s secret.
        #[arg(long)]
        secret_file: PathBuf,
        /// An operator key (admin scope).
        #[arg(long, conflicts_with_all = ["tenant", "scopes"])]
        admin: bool,
        /// The tenant the key acts for.
        #[arg(long, required_unless_present = "admin")]
        tenant: Option<String>,
        /// Its scopes: push, read (comma-separated).
        #[arg(long, value_delimiter = ',', default_value = "push,read")]
        scopes: Vec<String>,
        /// Days the key lives.
        #[arg(long)]
        ttl_days: Option<u64>,
    },
    /// Revoke a key by id, on the node asked (`DELETE /v1/keys/{id}`).
    Revoke {
        /// The key id (`jti`).
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// Run `herald admin`.
///
/// # Errors
/// Bad arguments, an unreachable node, or the API's refusal (printed with its code).
pub async fn run(args: AdminArgs) -> anyhow::Result<()> {
    match args.command {
        AdminCommand::Status(client) => {
            let c = cluster(&client).await?;
            let members = c["members"].as_array().map_or(0, Vec::len);
            println!(
                "node {} ({})  leader {}  term {}  applied {}  committed {}  members {members}",
                c["node"],
                c["region"].as_str().unwrap_or(""),
                c["leader"],
                c["term"],
                c["applied_index"],
                c["committed_index"]
            );
            let silent: Vec<String> = c["unreachable"]
                .as_array()
                .into_iter()
                .flatten()
                .map(ToString::to_string)
                .collect();
            if !silent.is_empty() {
                println!("unreachable (shards failed over): {}", silent.join(", "));
            }
        }
        AdminCommand::Members(client) => {
            let c = cluster(&client).await?;
            let mut rows = vec![row(["id", "address", "region", "state", "vote"])];
            for m in c["members"].as_array().into_iter().flatten() {
                rows.push(row([
                    m["id"].to_string(),
                    text(&m["addr"]),
                    text(&m["region"]),
                    text(&m["state"]),
                    text(&m["voting"]),
                ]));
            }
            print!("{}", table(&rows));
        }
        AdminCommand::Shards(client) => {
            let c = cluster(&client).await?;
            let mut rows = vec![row(["region", "epoch", "shards", "owned (node: shards)"])];
            for r in c["regions"].as_array().into_iter().flatten() {
                let owned = r["owned"]
                    .as_object()
                    .map(|o| {
                        o.iter()
                            .map(|(node, n)| format!("{node}: {n}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    })
                    .unwrap_or_default();
                rows.push(row([
                    text(&r["region"]),
                    r["epoch"].to_string(),
                    r["shards"].to_string(),
                    owned,
                ]));
            }
            print!("{}", table(&rows));
        }
        AdminCommand::Join {
            id,
            addr,
            region,
            client,
        } => {
            let body = json!({ "id": id, "addr": addr, "region": region });
            client
                .client()?
                .call(Method::POST, "/v1/cluster/members", Some(&body))
                .await?;
            println!("node {id} joining; watch `herald admin members`");
        }
        AdminCommand::Drain { id, client } => {
            client
                .client()?
                .call(
                    Method::POST,
                    &format!("/v1/cluster/members/{id}/drain"),
                    None,
                )
                .await?;
            println!("node {id} draining; watch `herald admin members`");
        }
        AdminCommand::Remove { id, client } => {
            client
                .client()?
                .call(Method::DELETE, &format!("/v1/cluster/members/{id}"), None)
                .await?;
            println!("node {id} removed");
        }
        AdminCommand::Tenants { command } => tenants(command).await?,
        AdminCommand::Keys { command } => keys(command).await?,
    }
    Ok(())
}

async fn cluster(client: &ClientArgs) -> anyhow::Result<Value> {
    Ok(client
        .client()?
        .call(Method::GET, "/v1/cluster", None)
        .await?)
}

async fn tenants(command: TenantsCommand) -> anyhow::Result<()> {
    match command {
        TenantsCommand::List(client) => {
            let answer = client
                .client()?
                .call(Method::GET, "/v1/tenants", None)
                .await?;
            let mut rows = vec![row(["id", "team id", "key id"])];
            for t in answer["tenants"].as_array().into_iter().flatten() {
                rows.push(row([
                    text(&t["id"]),
                    text(&t["team_id"]),
                    text(&t["key_id"]),
                ]));
            }
            print!("{}", table(&rows));
        }
        TenantsCommand::Get { id, client } => {
            let answer = client
                .client()?
                .call(Method::GET, &format!("/v1/tenants/{id}"), None)
                .await?;
            println!("{answer}");
        }
        TenantsCommand::Create {
            id,
            team_id,
            key_id,
            p8,
            client,
        } => {
            let p8_pem = std::fs::read_to_string(&p8)
                .with_context(|| format!("--p8: reading {}", p8.display()))?;
            let body = json!({ "id": id, "team_id": team_id, "key_id": key_id, "p8_pem": p8_pem });
            let answer = client
                .client()?
                .call(Method::POST, "/v1/tenants", Some(&body))
                .await?;
            println!("created {answer}");
        }
        TenantsCommand::Delete { id, client } => {
            client
                .client()?
                .call(Method::DELETE, &format!("/v1/tenants/{id}"), None)
                .await?;
            println!("deleted {id}");
        }
    }
    Ok(())
}

async fn keys(command: KeysCommand) -> anyhow::Result<()> {
    match command {
        KeysCommand::Issue {
            secret_file,
            admin,
            tenant,
            scopes,
            ttl_days,
        } => {
            let secret = read_secret_line(&secret_file)
                .map_err(|e| anyhow::anyhow!("--secret-file: {e}"))?;
            let keys =
                ApiKeys::hs256(secret.expose(), Arc::new(SystemClock)).context("--secret-file")?;
            let mut request = if admin {
                KeyRequest::admin()
            } else {
                let scopes = scopes
                    .iter()
                    .map(|s| match s.trim() {
                        "push" => Ok(Scope::Push),
                        "read" => Ok(Scope::Read),
                        other => Err(anyhow::anyhow!(
                            "--scopes: {other:?} is not push or read (operator keys: --admin)"
                        )),
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?;
                KeyRequest::tenant(tenant.as_deref().unwrap_or_default(), &scopes)
            };
            if let Some(days) = ttl_days {
                request.ttl = Duration::from_secs(days.saturating_mul(86_400));
            }
            let id = DetRng::from_os().uuid().to_string();
            let issued = keys.issue(&request, &id).context("issuing the key")?;
            eprintln!(
                "key id {} (revoke with `herald admin keys revoke {}`), expires at {} (epoch s)",
                issued.id, issued.id, issued.expires_at
            );
            println!("{}", issued.key);
        }
        KeysCommand::Revoke { id, client } => {
            client
                .client()?
                .call(Method::DELETE, &format!("/v1/keys/{id}"), None)
                .await?;
            println!("revoked {id}");
        }
    }
    Ok(())
}

fn text(v: &Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_owned)
}

fn row<const N: usize>(cells: [impl Into<String>; N]) -> Vec<String> {
    cells.into_iter().map(Into::into).collect()
}

/// Left-aligned columns, two spaces apart.
fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .map(|r| r.get(c).map_or(0, |s| s.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(c, s)| format!("{s:<width$}", width = widths[c]))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}
