//! `POST /api/push`: gorush's request and answer, so gorush users switch by changing the
//! URL (and adding an API key).
//!
//! Each iOS entry (`platform: 1`) becomes one push per token: `title`/`message` (or
//! `alert`) make the alert, `badge`, `sound`, `category`, `thread-id`,
//! `content_available`, `mutable_content`, `interruption_level` go in `aps`, `data` becomes
//! custom keys, and `topic`, `push_type`, `priority` (`high` → 10, `normal` → 5),
//! `expiration`, `collapse_id` become headers. Other platforms are refused (400
//! `unsupported_platform`). The answer is gorush's: `{"counts": N, "logs": [...],
//! "success": "ok"}`, with a log entry per token the engine did not accept.

use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::auth::{Caller, Scope};
use super::error::ApiError;
use super::handlers::{CheckedMessage, Message, device_token};
use super::json::ApiJson;
use super::{ApiState, limits};

/// gorush's platform number for iOS.
const PLATFORM_IOS: i64 = 1;

#[derive(Debug, Deserialize)]
pub(crate) struct GorushRequest {
    notifications: Option<Vec<GorushNotification>>,
}

/// One gorush notification (fields for other platforms are accepted and ignored).
#[derive(Debug, Deserialize)]
pub(crate) struct GorushNotification {
    #[serde(default)]
    tokens: Vec<String>,
    platform: Option<i64>,
    message: Option<String>,
    title: Option<String>,
    priority: Option<String>,
    #[serde(default)]
    content_available: bool,
    #[serde(default)]
    mutable_content: bool,
    sound: Option<Value>,
    data: Option<Map<String, Value>>,
    expiration: Option<i64>,
    collapse_id: Option<String>,
    topic: Option<String>,
    push_type: Option<String>,
    badge: Option<i64>,
    category: Option<String>,
    #[serde(rename = "thread-id")]
    thread_id: Option<String>,
    alert: Option<Map<String, Value>>,
    interruption_level: Option<String>,
    name: Option<String>,
    volume: Option<f64>,
}

impl GorushNotification {
    fn payload(&self) -> Value {
        let mut aps = Map::new();
        let mut alert = self.alert.clone().unwrap_or_default();
        if let Some(title) = &self.title {
            alert.insert("title".into(), json!(title));
        }
        if let Some(message) = &self.message {
            alert.insert("body".into(), json!(message));
        }
        if !alert.is_empty() {
            aps.insert("alert".into(), Value::Object(alert));
        }
        if let Some(badge) = self.badge {
            aps.insert("badge".into(), json!(badge));
        }
        match (&self.sound, &self.name) {
            (Some(sound), _) => {
                aps.insert("sound".into(), sound.clone());
            }
            (None, Some(name)) => {
                let mut critical = json!({"critical": 1, "name": name});
                if let Some(volume) = self.volume {
                    critical["volume"] = json!(volume);
                }
                aps.insert("sound".into(), critical);
            }
            (None, None) => {}
        }
        if let Some(category) = &self.category {
            aps.insert("category".into(), json!(category));
        }
        if let Some(thread) = &self.thread_id {
            aps.insert("thread-id".into(), json!(thread));
        }
        if self.content_available {
            aps.insert("content-available".into(), json!(1));
        }
        if self.mutable_content {
            aps.insert("mutable-content".into(), json!(1));
        }
        if let Some(level) = &self.interruption_level {
            aps.insert("interruption-level".into(), json!(level));
        }
        let mut payload = self.data.clone().unwrap_or_default();
        payload.insert("aps".into(), Value::Object(aps));
        Value::Object(payload)
    }

    fn message(&self, prefix: &str) -> Result<Message, ApiError> {
        let priority = match self.priority.as_deref() {
            None => None,
            Some("high") => Some(10),
            Some("normal") => Some(5),
            Some(other) => {
                return Err(ApiError::invalid(
                    format!("{prefix}.priority"),
                    format!("priority {other:?} is not \"high\" or \"normal\""),
                ));
            }
        };
        let expiration = match self.expiration {
            None => None,
            Some(e) => Some(u64::try_from(e).map_err(|_| {
                ApiError::invalid(format!("{prefix}.expiration"), "must not be negative")
            })?),
        };
        Ok(Message {
            topic: self.topic.clone(),
            push_type: self.push_type.clone(),
            priority,
            expiration,
            collapse_id: self.collapse_id.clone(),
            payload: Some(self.payload()),
        })
    }
}

pub(crate) async fn push(
    State(state): State<ApiState>,
    caller: Caller,
    ApiJson(request): ApiJson<GorushRequest>,
) -> Result<Json<Value>, ApiError> {
    let tenant = caller.tenant_for(Scope::Push, None)?;
    let entries = request.notifications.unwrap_or_default();
    if entries.is_empty() {
        return Err(ApiError::invalid(
            "notifications",
            "Request body is empty or notifications is empty",
        ));
    }
    let total: usize = entries.iter().map(|n| n.tokens.len()).sum();
    if total > limits::GORUSH_PUSHES_MAX {
        return Err(ApiError::new(
            "batch_too_large",
            format!(
                "{total} tokens; at most {} per request",
                limits::GORUSH_PUSHES_MAX
            ),
        )
        .with_field("notifications"));
    }
    let mut pushes = Vec::with_capacity(total);
    let mut tokens = Vec::with_capacity(total);
    for (index, entry) in entries.iter().enumerate() {
        let prefix = format!("notifications[{index}]");
        if entry.platform != Some(PLATFORM_IOS) {
            return Err(ApiError::new(
                "unsupported_platform",
                format!(
                    "platform {:?}: Herald delivers to APNs only (platform 1, iOS)",
                    entry.platform
                ),
            )
            .with_field(format!("{prefix}.platform")));
        }
        if entry.tokens.is_empty() || entry.tokens.iter().any(String::is_empty) {
            return Err(
                ApiError::new("bad_device_token", "the token must not be empty")
                    .with_field(format!("{prefix}.tokens")),
            );
        }
        let message = CheckedMessage::new(entry.message(&prefix)?.as_ref(), &prefix)?;
        for (t, token) in entry.tokens.iter().enumerate() {
            let parsed = device_token(token, &format!("{prefix}.tokens[{t}]"))?;
            pushes.push(message.notification(parsed, None, &prefix)?);
            tokens.push(token.clone());
        }
    }
    let results = state
        .backends
        .pushes
        .send_batch(tenant, pushes)
        .await
        .map_err(|e| ApiError::from_push(&e))?;
    let mut logs = Vec::new();
    let mut counts = 0usize;
    for (token, result) in tokens.iter().zip(results) {
        match result {
            Ok(_) => counts += 1,
            Err(e) => logs.push(json!({
                "type": "failed-push",
                "platform": "ios",
                "token": token,
                "error": ApiError::from_push(&e).code(),
                "message": e.to_string(),
            })),
        }
    }
    Ok(Json(
        json!({"counts": counts, "logs": logs, "success": "ok"}),
    ))
}
