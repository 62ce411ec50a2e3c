//! The tenant routes: pushes, push status, devices, feedback and broadcasts.

use std::collections::BTreeSet;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use herald_actors::apns::{
    CollapseId, DeviceToken, Expiration, Notification, Priority, PushType, Topic,
};
use herald_actors::{Outcome, PushId};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::auth::{Caller, Scope};
use super::backend::{Device, DeviceFilter, PushStatus, RegistryError};
use super::error::ApiError;
use super::idempotency::{check_key, push_id_for_key};
use super::json::{ApiJson, ApiQuery};
use super::{ApiState, limits};

/// The `Idempotency-Key` header.
pub(crate) const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// What a notification says, apart from its device token.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Message {
    pub(crate) topic: Option<String>,
    pub(crate) push_type: Option<String>,
    pub(crate) priority: Option<u8>,
    pub(crate) expiration: Option<u64>,
    pub(crate) collapse_id: Option<String>,
    pub(crate) payload: Option<Value>,
}

/// `POST /v1/push` (and one item of a batch).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PushRequest {
    tenant: Option<String>,
    device_token: String,
    idempotency_key: Option<String>,
    topic: Option<String>,
    push_type: Option<String>,
    priority: Option<u8>,
    expiration: Option<u64>,
    collapse_id: Option<String>,
    payload: Option<Value>,
}

impl Message {
    /// The message, borrowed.
    pub(crate) fn as_ref(&self) -> MessageRef<'_> {
        MessageRef::new(
            &self.topic,
            &self.push_type,
            self.priority,
            self.expiration,
            &self.collapse_id,
            &self.payload,
        )
    }
}

/// A [`Message`]'s fields, borrowed from wherever the request holds them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MessageRef<'a> {
    pub(crate) topic: Option<&'a str>,
    pub(crate) push_type: Option<&'a str>,
    pub(crate) priority: Option<u8>,
    pub(crate) expiration: Option<u64>,
    pub(crate) collapse_id: Option<&'a str>,
    pub(crate) payload: Option<&'a Value>,
}

impl<'a> MessageRef<'a> {
    /// A message from a request's fields.
    fn new(
        topic: &'a Option<String>,
        push_type: &'a Option<String>,
        priority: Option<u8>,
        expiration: Option<u64>,
        collapse_id: &'a Option<String>,
        payload: &'a Option<Value>,
    ) -> Self {
        MessageRef {
            topic: topic.as_deref(),
            push_type: push_type.as_deref(),
            priority,
            expiration,
            collapse_id: collapse_id.as_deref(),
            payload: payload.as_ref(),
        }
    }
}

impl PushRequest {
    fn message(&self) -> MessageRef<'_> {
        MessageRef::new(
            &self.topic,
            &self.push_type,
            self.priority,
            self.expiration,
            &self.collapse_id,
            &self.payload,
        )
    }
}

fn field(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_owned()
    } else {
        format!("{prefix}.{name}")
    }
}

/// Validate a device token.
pub(crate) fn device_token(hex: &str, field_name: &str) -> Result<DeviceToken, ApiError> {
    DeviceToken::new(hex)
        .map_err(|e| ApiError::new("bad_device_token", e.to_string()).with_field(field_name))
}

/// Validate a topic.
pub(crate) fn topic(text: Option<&str>, field_name: &str) -> Result<Topic, ApiError> {
    let text = text.ok_or_else(|| {
        ApiError::new("invalid_topic", "topic is required").with_field(field_name)
    })?;
    Topic::new(text)
        .map_err(|e| ApiError::new("invalid_topic", e.to_string()).with_field(field_name))
}

/// A [`Message`] checked field by field, with its payload serialized, ready to be addressed to
/// any number of devices (a broadcast or a gorush entry checks and serializes it once).
#[derive(Debug, Clone)]
pub(crate) struct CheckedMessage {
    topic: Topic,
    push_type: PushType,
    priority: Option<Priority>,
    expiration: Option<Expiration>,
    collapse_id: Option<CollapseId>,
    payload: bytes::Bytes,
}

impl CheckedMessage {
    /// Check `message`; errors name their field under `prefix` (e.g. `pushes[3].topic`).
    pub(crate) fn new(message: MessageRef<'_>, prefix: &str) -> Result<Self, ApiError> {
        let topic = topic(message.topic, &field(prefix, "topic"))?;
        let push_type = match message.push_type {
            None => PushType::Alert,
            Some(p) => p.parse().map_err(|e: herald_actors::apns::PushTypeError| {
                ApiError::new("invalid_push_type", e.to_string())
                    .with_field(field(prefix, "push_type"))
            })?,
        };
        let priority = message
            .priority
            .map(|p| {
                Priority::try_from(p)
                    .map_err(|e| ApiError::invalid(field(prefix, "priority"), e.to_string()))
            })
            .transpose()?;
        let expiration = message
            .expiration
            .map(|secs| {
                Expiration::from_header(&secs.to_string())
                    .map_err(|e| ApiError::invalid(field(prefix, "expiration"), e.to_string()))
            })
            .transpose()?;
        let collapse_id = message
            .collapse_id
            .map(|c| {
                CollapseId::new(c)
                    .map_err(|e| ApiError::invalid(field(prefix, "collapse_id"), e.to_string()))
            })
            .transpose()?;
        let Some(payload) = message.payload else {
            return Err(ApiError::new("invalid_payload", "payload is required")
                .with_field(field(prefix, "payload")));
        };
        // Serializing a `Value` cannot fail: every map key is a string.
        let payload = serde_json::to_vec(payload).unwrap_or_default().into();
        Ok(CheckedMessage {
            topic,
            push_type,
            priority,
            expiration,
            collapse_id,
            payload,
        })
    }

    /// The notification of this message to `token` (`id` as its `apns-id`), with the checks
    /// across fields (topic against push type, priority, payload size); errors name their
    /// field under `prefix`.
    pub(crate) fn notification(
        &self,
        token: DeviceToken,
        id: Option<PushId>,
        prefix: &str,
    ) -> Result<Notification, ApiError> {
        let mut builder = Notification::builder(token, self.topic.clone(), self.push_type);
        if let Some(priority) = self.priority {
            builder.priority(priority);
        }
        if let Some(expiration) = self.expiration {
            builder.expiration(expiration);
        }
        if let Some(collapse_id) = &self.collapse_id {
            builder.collapse_id(collapse_id.clone());
        }
        builder.raw_payload(self.payload.clone());
        if let Some(id) = id {
            builder.apns_id(id.apns_id());
        }
        builder.build().map_err(|e| {
            let err = ApiError::from_notification(&e);
            match err.field().map(str::to_owned) {
                Some(f) => err.with_field(field(prefix, &f)),
                None => err,
            }
        })
    }
}

/// Check `message` and address it to `token` (see [`CheckedMessage`]).
pub(crate) fn notification(
    token: DeviceToken,
    message: MessageRef<'_>,
    id: Option<PushId>,
    prefix: &str,
) -> Result<Notification, ApiError> {
    CheckedMessage::new(message, prefix)?.notification(token, id, prefix)
}

/// The `Idempotency-Key` header, checked.
pub(crate) fn header_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get(IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .map_err(|_| ApiError::invalid("Idempotency-Key", "not visible ASCII"))?;
    check_key("Idempotency-Key", key)?;
    Ok(Some(key.to_owned()))
}

fn item_id(tenant: &str, key: Option<&str>, prefix: &str) -> Result<Option<PushId>, ApiError> {
    match key {
        None => Ok(None),
        Some(key) => {
            check_key(&field(prefix, "idempotency_key"), key)?;
            Ok(Some(push_id_for_key(tenant, key)))
        }
    }
}

pub(crate) async fn push(
    State(state): State<ApiState>,
    caller: Caller,
    headers: HeaderMap,
    ApiJson(request): ApiJson<PushRequest>,
) -> Result<Response, ApiError> {
    let tenant = caller.tenant_for(Scope::Push, request.tenant.as_deref())?;
    let key = match (header_key(&headers)?, &request.idempotency_key) {
        (Some(h), Some(b)) if h != *b => {
            return Err(ApiError::invalid(
                "idempotency_key",
                "differs from the Idempotency-Key header",
            ));
        }
        (Some(h), _) => Some(h),
        (None, b) => b.clone(),
    };
    let id = item_id(tenant, key.as_deref(), "")?;
    let token = device_token(&request.device_token, "device_token")?;
    let notification = notification(token, request.message(), id, "")?;
    let mut results = state
        .backends
        .pushes
        .send_batch(tenant, vec![notification])
        .await
        .map_err(|e| ApiError::from_push(&e))?;
    match results.pop() {
        Some(Ok(id)) => Ok((
            StatusCode::ACCEPTED,
            Json(json!({"id": id.to_string(), "status": "accepted"})),
        )
            .into_response()),
        Some(Err(e)) => Err(ApiError::from_push(&e)),
        None => Err(ApiError::new("internal", "the backend gave no answer")),
    }
}

/// `POST /v1/push/batch`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BatchRequest {
    tenant: Option<String>,
    pushes: Vec<PushRequest>,
}

#[derive(Debug, Serialize)]
struct ItemResult<'a> {
    index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<super::error::Body<'a>>,
}

pub(crate) async fn push_batch(
    State(state): State<ApiState>,
    caller: Caller,
    headers: HeaderMap,
    ApiJson(request): ApiJson<BatchRequest>,
) -> Result<Response, ApiError> {
    let tenant = caller.tenant_for(Scope::Push, request.tenant.as_deref())?;
    if request.pushes.len() > limits::PUSH_BATCH_MAX {
        return Err(ApiError::new(
            "batch_too_large",
            format!(
                "{} pushes; at most {} per batch",
                request.pushes.len(),
                limits::PUSH_BATCH_MAX
            ),
        )
        .with_field("pushes"));
    }
    let batch_key = header_key(&headers)?;
    // `None`: handed to the backend, answered below.
    let mut outcomes: Vec<Option<Result<PushId, ApiError>>> =
        Vec::with_capacity(request.pushes.len());
    let mut valid = Vec::new();
    let mut valid_index = Vec::new();
    for (index, item) in request.pushes.iter().enumerate() {
        let prefix = format!("pushes[{index}]");
        let built = (|| {
            if item.tenant.as_deref().is_some_and(|t| t != tenant) {
                return Err(ApiError::new(
                    "forbidden_tenant",
                    "this key cannot act for another tenant",
                ));
            }
            let key = match (&item.idempotency_key, &batch_key) {
                (Some(k), _) => Some(k.clone()),
                (None, Some(batch)) => Some(format!("{batch}/{index}")),
                (None, None) => None,
            };
            let id = item_id(tenant, key.as_deref(), &prefix)?;
            let token = device_token(&item.device_token, &field(&prefix, "device_token"))?;
            notification(token, item.message(), id, &prefix)
        })();
        match built {
            Ok(n) => {
                valid_index.push(index);
                valid.push(n);
                outcomes.push(None);
            }
            Err(e) => outcomes.push(Some(Err(e))),
        }
    }
    if !valid.is_empty() {
        let sent = state
            .backends
            .pushes
            .send_batch(tenant, valid)
            .await
            .map_err(|e| ApiError::from_push(&e))?;
        for (index, result) in valid_index.into_iter().zip(sent) {
            outcomes[index] = Some(result.map_err(|e| ApiError::from_push(&e)));
        }
    }
    let not_answered = ApiError::new("internal", "the backend did not answer this push");
    let results: Vec<ItemResult<'_>> = outcomes
        .iter()
        .enumerate()
        .map(|(index, outcome)| match outcome {
            Some(Ok(id)) => ItemResult {
                index,
                id: Some(id.to_string()),
                error: None,
            },
            Some(Err(e)) => ItemResult {
                index,
                id: None,
                error: Some(e.body()),
            },
            // The backend answered fewer items than it was given (not expected).
            None => ItemResult {
                index,
                id: None,
                error: Some(not_answered.body()),
            },
        })
        .collect();
    let accepted = results.iter().filter(|r| r.id.is_some()).count();
    let body = BatchAnswer {
        accepted,
        failed: results.len() - accepted,
        results,
    };
    Ok((StatusCode::OK, Json(body)).into_response())
}

/// The answer to `POST /v1/push/batch`, serialized as it is (no JSON value built first).
#[derive(Serialize)]
struct BatchAnswer<'a> {
    accepted: usize,
    failed: usize,
    results: Vec<ItemResult<'a>>,
}

pub(crate) async fn push_status(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let tenant = caller.tenant_for(Scope::Read, None)?;
    let not_found = || ApiError::new("push_not_found", "no such push");
    let uuid = uuid::Uuid::parse_str(&id).map_err(|_| not_found())?;
    let id = PushId::from_u128(uuid.as_u128());
    let status = state
        .backends
        .pushes
        .status(tenant, id)
        .await
        .ok_or_else(not_found)?;
    let mut body = json!({"id": id.to_string()});
    match status {
        PushStatus::Pending => body["status"] = json!("pending"),
        PushStatus::Finished(outcome) => {
            body["status"] = json!(outcome.label());
            match &outcome {
                Outcome::Delivered { apns_id } => body["apns_id"] = json!(apns_id),
                Outcome::Unregistered { at } => body["unregistered_at_ms"] = json!(at.as_millis()),
                Outcome::Failed { reason } => {
                    body["reason"] = json!(outcome.reason_label());
                    body["detail"] = json!(reason.to_string());
                }
                Outcome::Coalesced { by } => body["coalesced_by"] = json!(by.to_string()),
                _ => {}
            }
        }
    }
    Ok(Json(body))
}

/// `POST /v1/devices`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeviceRequest {
    tenant: Option<String>,
    token: String,
    topic: Option<String>,
    #[serde(default)]
    tags: Vec<String>,
}

fn check_tags(tags: &[String], field_name: &str) -> Result<BTreeSet<String>, ApiError> {
    if tags.len() > limits::DEVICE_TAGS_MAX {
        return Err(ApiError::invalid(
            field_name,
            format!("at most {} tags", limits::DEVICE_TAGS_MAX),
        ));
    }
    for tag in tags {
        if tag.is_empty()
            || tag.len() > limits::TAG_BYTES_MAX
            || tag.contains(',')
            || tag.chars().any(char::is_control)
        {
            return Err(ApiError::invalid(
                field_name,
                format!(
                    "a tag is 1 to {} bytes, no commas or control characters",
                    limits::TAG_BYTES_MAX
                ),
            ));
        }
    }
    Ok(tags.iter().cloned().collect())
}

fn registry_error(e: RegistryError) -> ApiError {
    match e {
        RegistryError::UnknownTenant(t) => {
            ApiError::new("unknown_tenant", format!("unknown tenant {t:?}"))
        }
        RegistryError::Full(n) => ApiError::new(
            "limit_reached",
            format!("the device registry is full ({n} devices registered)"),
        ),
        other => ApiError::new("unavailable", other.to_string()),
    }
}

pub(crate) async fn register_device(
    State(state): State<ApiState>,
    caller: Caller,
    ApiJson(request): ApiJson<DeviceRequest>,
) -> Result<Response, ApiError> {
    let tenant = caller.tenant_for(Scope::Push, request.tenant.as_deref())?;
    let device = Device {
        token: device_token(&request.token, "token")?,
        topic: topic(request.topic.as_deref(), "topic")?,
        tags: check_tags(&request.tags, "tags")?,
    };
    let created = state
        .backends
        .devices
        .register(tenant, device.clone())
        .await
        .map_err(registry_error)?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(device)).into_response())
}

/// `GET /v1/devices` and the paging part of a broadcast.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeviceQuery {
    topic: Option<String>,
    /// Comma-separated tags, all required.
    tags: Option<String>,
    cursor: Option<String>,
    limit: Option<usize>,
}

fn page_limit(limit: Option<usize>, max: usize) -> Result<usize, ApiError> {
    match limit {
        None => Ok(max),
        Some(n) if (1..=max).contains(&n) => Ok(n),
        Some(_) => Err(ApiError::new(
            "invalid_query",
            format!("limit must be 1..={max}"),
        )),
    }
}

pub(crate) async fn list_devices(
    State(state): State<ApiState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<DeviceQuery>,
) -> Result<Json<Value>, ApiError> {
    let tenant = caller.tenant_for(Scope::Read, None)?;
    let limit = page_limit(query.limit, limits::PAGE_LIMIT_MAX)?;
    let filter = DeviceFilter {
        topic: match &query.topic {
            Some(t) => {
                Some(Topic::new(t).map_err(|e| ApiError::new("invalid_query", e.to_string()))?)
            }
            None => None,
        },
        tags: query
            .tags
            .as_deref()
            .map(|t| {
                t.split(',')
                    .filter(|tag| !tag.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default(),
    };
    let page = state
        .backends
        .devices
        .page(tenant, &filter, query.cursor.as_deref(), limit)
        .await
        .map_err(registry_error)?;
    Ok(Json(
        json!({"devices": page.devices, "next_cursor": page.next}),
    ))
}

pub(crate) async fn delete_device(
    State(state): State<ApiState>,
    caller: Caller,
    Path(token): Path<String>,
) -> Result<StatusCode, ApiError> {
    let tenant = caller.tenant_for(Scope::Push, None)?;
    let token = device_token(&token, "token")?;
    let removed = state
        .backends
        .devices
        .unregister(tenant, &token)
        .await
        .map_err(registry_error)?;
    if removed {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::new("device_not_found", "no such device"))
    }
}

/// `GET /v1/feedback`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FeedbackQuery {
    cursor: Option<u64>,
    limit: Option<usize>,
}

pub(crate) async fn feedback(
    State(state): State<ApiState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<FeedbackQuery>,
) -> Result<Json<Value>, ApiError> {
    let tenant = caller.tenant_for(Scope::Read, None)?;
    let limit = page_limit(query.limit, limits::PAGE_LIMIT_MAX)?;
    let page = state
        .backends
        .feedback
        .since(tenant, query.cursor.unwrap_or(0), limit)
        .await;
    Ok(Json(json!(page)))
}

/// `POST /v1/broadcast`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BroadcastRequest {
    tenant: Option<String>,
    broadcast_id: Option<String>,
    cursor: Option<String>,
    limit: Option<usize>,
    #[serde(default)]
    tags: Vec<String>,
    topic: Option<String>,
    push_type: Option<String>,
    priority: Option<u8>,
    expiration: Option<u64>,
    collapse_id: Option<String>,
    payload: Option<Value>,
}

#[derive(Debug, Serialize)]
struct BroadcastFailure<'a> {
    token: String,
    error: super::error::Body<'a>,
}

pub(crate) async fn broadcast(
    State(state): State<ApiState>,
    caller: Caller,
    headers: HeaderMap,
    ApiJson(request): ApiJson<BroadcastRequest>,
) -> Result<Response, ApiError> {
    let tenant = caller.tenant_for(Scope::Push, request.tenant.as_deref())?;
    let limit = match request.limit {
        None => limits::BROADCAST_PAGE_MAX,
        Some(n) if (1..=limits::BROADCAST_PAGE_MAX).contains(&n) => n,
        Some(_) => {
            return Err(ApiError::invalid(
                "limit",
                format!("limit must be 1..={}", limits::BROADCAST_PAGE_MAX),
            ));
        }
    };
    let broadcast_id = match (request.broadcast_id, header_key(&headers)?) {
        (Some(id), _) => {
            check_key("broadcast_id", &id)?;
            id
        }
        (None, Some(key)) => push_id_for_key(tenant, &format!("broadcast/{key}")).to_string(),
        (None, None) => state.uuid().to_string(),
    };
    let message = Message {
        topic: request.topic,
        push_type: request.push_type,
        priority: request.priority,
        expiration: request.expiration,
        collapse_id: request.collapse_id,
        payload: request.payload,
    };
    let filter = DeviceFilter {
        topic: Some(topic(message.topic.as_deref(), "topic")?),
        tags: check_tags(&request.tags, "tags")?,
    };
    // Check the message once (its payload serialized once), and against a placeholder token
    // for the checks across fields, before touching devices.
    let message = CheckedMessage::new(message.as_ref(), "")?;
    let probe = DeviceToken::from_bytes(&[0u8; 32])
        .map_err(|e| ApiError::new("internal", e.to_string()))?;
    message.notification(probe, None, "")?;

    let page = state
        .backends
        .devices
        .page(tenant, &filter, request.cursor.as_deref(), limit)
        .await
        .map_err(registry_error)?;
    let mut failures: Vec<(String, ApiError)> = Vec::new();
    let mut accepted = 0usize;
    // The cursor after the last chunk that was handed to the engine, in order.
    let mut next_cursor = request.cursor.clone();
    let mut stopped: Option<ApiError> = None;
    // Build every notification first (the message was validated above, so a failure here
    // is per device), then hand them to the engine in chunks, a bounded number at once.
    let mut built: Vec<(&Device, Notification)> = Vec::with_capacity(page.devices.len());
    for device in &page.devices {
        let id = push_id_for_key(
            tenant,
            &format!("broadcast/{broadcast_id}/{}", device.token),
        );
        match message.notification(device.token.clone(), Some(id), "") {
            Ok(n) => built.push((device, n)),
            Err(e) => failures.push((device.token.to_string(), e)),
        }
    }
    let chunks: Vec<&[(&Device, Notification)]> = built.chunks(limits::PUSH_BATCH_MAX).collect();
    'groups: for group in chunks.chunks(limits::BROADCAST_CONCURRENCY_MAX) {
        let sends = group.iter().map(|chunk| {
            let notifications: Vec<Notification> = chunk.iter().map(|(_, n)| n.clone()).collect();
            state.backends.pushes.send_batch(tenant, notifications)
        });
        let answers = futures_util::future::join_all(sends).await;
        for (chunk, answer) in group.iter().zip(answers) {
            match answer {
                Ok(results) => {
                    for ((device, _), result) in chunk.iter().zip(results) {
                        match result {
                            Ok(_) => accepted += 1,
                            Err(e) => {
                                failures.push((device.token.to_string(), ApiError::from_push(&e)))
                            }
                        }
                    }
                    next_cursor = chunk.last().map(|(d, _)| d.token.to_string());
                }
                Err(e) => {
                    stopped = Some(ApiError::from_push(&e));
                    break 'groups;
                }
            }
        }
    }
    if let Some(e) = &stopped
        && accepted == 0
        && failures.is_empty()
    {
        return Err(e.clone());
    }
    let done = stopped.is_none() && page.next.is_none();
    if stopped.is_none() {
        next_cursor = page.next.clone();
    }
    metrics::counter!("herald_api_broadcast_pushes_total").increment(accepted as u64);
    let failed: Vec<BroadcastFailure<'_>> = failures
        .iter()
        .map(|(token, e)| BroadcastFailure {
            token: token.clone(),
            error: e.body(),
        })
        .collect();
    let body = json!({
        "broadcast_id": broadcast_id,
        "matched": page.devices.len(),
        "accepted": accepted,
        "failed": failed,
        "next_cursor": if done { None } else { next_cursor },
        "done": done,
        "stopped": stopped.as_ref().map(|e| e.body()),
    });
    Ok((StatusCode::OK, Json(body)).into_response())
}

/// `PUT /v1/webhook`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct WebhookRequest {
    tenant: Option<String>,
    url: String,
    secret: String,
}

fn webhooks(state: &ApiState) -> Result<&super::Webhooks, ApiError> {
    state
        .webhooks
        .as_ref()
        .ok_or_else(|| ApiError::new("unavailable", "webhooks are not enabled on this node"))
}

pub(crate) async fn set_webhook(
    State(state): State<ApiState>,
    caller: Caller,
    ApiJson(request): ApiJson<WebhookRequest>,
) -> Result<Json<Value>, ApiError> {
    let tenant = caller.tenant_for(Scope::Push, request.tenant.as_deref())?;
    let hooks = webhooks(&state)?;
    if state.backends.tenants.get(tenant).await.is_none() {
        return Err(ApiError::new(
            "unknown_tenant",
            format!("unknown tenant {tenant:?}"),
        ));
    }
    let target = super::WebhookTarget::new(&request.url, &request.secret)?;
    if let Some(directory) = &state.replicated_webhooks {
        let record = herald_cluster::state::WebhookRecord {
            url: request.url.clone(),
            secret: request.secret.clone(),
        };
        directory
            .set_webhook(tenant, Some(record), super::REGISTRATION_TIMEOUT)
            .await
            .map_err(|e| ApiError::new("unavailable", e.to_string()))?;
    }
    hooks.set(tenant, target);
    Ok(Json(json!({"url": request.url})))
}

pub(crate) async fn get_webhook(
    State(state): State<ApiState>,
    caller: Caller,
) -> Result<Json<Value>, ApiError> {
    let tenant = caller.tenant_for(Scope::Read, None)?;
    match webhooks(&state)?.get(tenant) {
        Some(target) => Ok(Json(json!({"url": target.url()}))),
        None => Err(ApiError::new("not_found", "no webhook is set")),
    }
}

pub(crate) async fn delete_webhook(
    State(state): State<ApiState>,
    caller: Caller,
) -> Result<StatusCode, ApiError> {
    let tenant = caller.tenant_for(Scope::Push, None)?;
    let hooks = webhooks(&state)?;
    if hooks.get(tenant).is_none() {
        return Err(ApiError::new("not_found", "no webhook is set"));
    }
    if let Some(directory) = &state.replicated_webhooks {
        directory
            .set_webhook(tenant, None, super::REGISTRATION_TIMEOUT)
            .await
            .map_err(|e| ApiError::new("unavailable", e.to_string()))?;
    }
    hooks.remove(tenant);
    Ok(StatusCode::NO_CONTENT)
}
