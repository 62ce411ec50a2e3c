//! `herald push`: one push from the command line, through a node's HTTP API
//! (`POST /v1/push`), optionally waiting for its outcome (`GET /v1/pushes/{id}`).
//!
//! ```text
//! herald push --url http://127.0.0.1:8080 --key $KEY --token 3f…a9 --topic com.example.app \
//!     --alert "Hello" --wait
//! ```
//!
//! Exit status: 0 when the push was accepted (and, with `--wait`, delivered); 1 when it ended
//! otherwise (unregistered, failed, expired) or did not end within `--wait-secs`; 2 when it
//! was not accepted (the API's error is printed).

use std::time::Duration;

use anyhow::Context as _;
use hyper::Method;
use serde_json::{Value, json};

use crate::http_client::ClientArgs;

/// How often `--wait` asks for the status.
pub const WAIT_POLL: Duration = Duration::from_millis(200);

/// `herald push`'s arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct PushArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// The device token (hex).
    #[arg(long)]
    token: String,
    /// The app's topic (bundle id).
    #[arg(long)]
    topic: String,
    /// An alert text (payload `{"aps":{"alert":…}}`).
    #[arg(long, conflicts_with = "payload")]
    alert: Option<String>,
    /// The whole APNs payload, as JSON.
    #[arg(long)]
    payload: Option<String>,
    /// `apns-push-type`.
    #[arg(long, default_value = "alert")]
    push_type: String,
    /// `apns-priority` (10, 5 or 1).
    #[arg(long)]
    priority: Option<u8>,
    /// `apns-collapse-id`.
    #[arg(long)]
    collapse_id: Option<String>,
    /// `apns-expiration`, epoch seconds (0: deliver once or drop).
    #[arg(long)]
    expiration: Option<u64>,
    /// An idempotency key: sending the same key again never pushes twice.
    #[arg(long)]
    idempotency_key: Option<String>,
    /// Wait for the outcome and print it.
    #[arg(long)]
    wait: bool,
    /// How long `--wait` waits.
    #[arg(long, default_value_t = 60)]
    wait_secs: u64,
}

/// The request body `args` describe.
///
/// # Errors
/// A `--payload` that is not JSON, or neither `--alert` nor `--payload`.
fn body(args: &PushArgs) -> anyhow::Result<Value> {
    let payload = match (&args.alert, &args.payload) {
        (Some(alert), None) => json!({ "aps": { "alert": alert } }),
        (None, Some(payload)) => {
            serde_json::from_str(payload).context("--payload is not valid JSON")?
        }
        _ => anyhow::bail!("give --alert TEXT or --payload JSON"),
    };
    let mut body = json!({
        "device_token": args.token,
        "topic": args.topic,
        "push_type": args.push_type,
        "payload": payload,
    });
    let fields = [
        ("priority", args.priority.map(Value::from)),
        ("collapse_id", args.collapse_id.clone().map(Value::from)),
        ("expiration", args.expiration.map(Value::from)),
        (
            "idempotency_key",
            args.idempotency_key.clone().map(Value::from),
        ),
    ];
    for (name, value) in fields {
        if let Some(value) = value {
            body[name] = value;
        }
    }
    Ok(body)
}

/// Run `herald push`; answers the exit status (see the [module docs](self)).
///
/// # Errors
/// Bad arguments or an unreachable node.
pub async fn run(args: PushArgs) -> anyhow::Result<u8> {
    let client = args.client.client()?;
    let body = body(&args)?;
    let mut connection = client.connect().await?;
    let accepted = match connection.json(Method::POST, "/v1/push", Some(&body)).await {
        Ok(answer) => answer,
        Err(crate::http_client::ClientError::Api {
            status,
            code,
            message,
        }) => {
            eprintln!("not accepted: {status} {code}: {message}");
            return Ok(2);
        }
        Err(e) => return Err(e.into()),
    };
    let id = accepted["id"]
        .as_str()
        .context("the answer has no push id")?
        .to_owned();
    println!("accepted {id}");
    if !args.wait {
        return Ok(0);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.wait_secs);
    let path = format!("/v1/pushes/{id}");
    loop {
        let status = connection.json(Method::GET, &path, None).await?;
        match status["status"].as_str().unwrap_or("") {
            "pending" => {}
            "delivered" => {
                println!("delivered");
                return Ok(0);
            }
            other => {
                println!("{other}: {status}");
                return Ok(1);
            }
        }
        if tokio::time::Instant::now() >= deadline {
            println!("still pending after {} s", args.wait_secs);
            return Ok(1);
        }
        tokio::time::sleep(WAIT_POLL).await;
    }
}
