//! The admin routes (admin scope, operator keys): tenants, API keys, and the cluster (status
//! and membership: join, drain, remove).

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::auth::{Caller, KeyError, KeyRequest, RevocationError, Scope};
use super::backend::{AdminError, TenantSpec};
use super::error::ApiError;
use super::json::ApiJson;
use super::{ApiState, limits};

fn admin_error(e: AdminError) -> ApiError {
    match e {
        AdminError::Unknown(id) => {
            ApiError::new("unknown_tenant", format!("unknown tenant {id:?}"))
        }
        AdminError::Exists(id) => ApiError::new("tenant_exists", format!("tenant {id:?} exists")),
        AdminError::Invalid { field, message } => ApiError::invalid(field, message),
        AdminError::Full(n) => ApiError::new(
            "limit_reached",
            format!("{n} tenants exist; at most {}", limits::TENANTS_MAX),
        ),
        other => ApiError::new("unavailable", other.to_string()),
    }
}

pub(crate) async fn list_tenants(
    State(state): State<ApiState>,
    caller: Caller,
) -> Result<Json<Value>, ApiError> {
    caller.require(Scope::Admin)?;
    let tenants = state.backends.tenants.list().await;
    Ok(Json(json!({ "tenants": tenants })))
}

/// `POST /v1/tenants`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TenantRequest {
    id: String,
    team_id: String,
    key_id: String,
    p8_pem: String,
    queue_max: Option<usize>,
}

pub(crate) async fn create_tenant(
    State(state): State<ApiState>,
    caller: Caller,
    ApiJson(request): ApiJson<TenantRequest>,
) -> Result<Response, ApiError> {
    caller.require(Scope::Admin)?;
    if request.queue_max == Some(0) {
        return Err(ApiError::invalid("queue_max", "must be at least 1"));
    }
    let spec = TenantSpec {
        id: request.id,
        team_id: request.team_id,
        key_id: request.key_id,
        p8_pem: request.p8_pem,
        queue_max: request.queue_max,
    };
    let info = state
        .backends
        .tenants
        .create(spec)
        .await
        .map_err(admin_error)?;
    tracing::info!(tenant = %info.id, "tenant created");
    Ok((StatusCode::CREATED, Json(info)).into_response())
}

pub(crate) async fn get_tenant(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    caller.require(Scope::Admin)?;
    match state.backends.tenants.get(&id).await {
        Some(info) => Ok(Json(info).into_response()),
        None => Err(admin_error(AdminError::Unknown(id))),
    }
}

pub(crate) async fn delete_tenant(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require(Scope::Admin)?;
    state
        .backends
        .tenants
        .delete(&id)
        .await
        .map_err(admin_error)?;
    if let Some(webhooks) = &state.webhooks {
        webhooks.remove(&id);
    }
    tracing::info!(tenant = %id, "tenant removed");
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/keys`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct KeyIssueRequest {
    tenant: Option<String>,
    scopes: Vec<String>,
    ttl_secs: Option<u64>,
}

pub(crate) async fn issue_key(
    State(state): State<ApiState>,
    caller: Caller,
    ApiJson(request): ApiJson<KeyIssueRequest>,
) -> Result<Response, ApiError> {
    caller.require(Scope::Admin)?;
    let mut scopes = Vec::with_capacity(request.scopes.len());
    for name in &request.scopes {
        scopes.push(
            Scope::parse(name)
                .ok_or_else(|| ApiError::invalid("scopes", format!("unknown scope {name:?}")))?,
        );
    }
    if let Some(tenant) = &request.tenant
        && state.backends.tenants.get(tenant).await.is_none()
    {
        return Err(admin_error(AdminError::Unknown(tenant.clone())));
    }
    let key_request = KeyRequest {
        tenant: request.tenant,
        scopes,
        ttl: request
            .ttl_secs
            .map_or(limits::KEY_TTL_DEFAULT, Duration::from_secs),
    };
    let id = state.uuid().to_string();
    let issued = state.keys.issue(&key_request, &id).map_err(|e| match e {
        KeyError::InvalidRequest(m) => ApiError::invalid("scopes", m),
        other => ApiError::new("internal", other.to_string()),
    })?;
    tracing::info!(key_id = %issued.id, tenant = ?issued.tenant, "API key issued");
    Ok((StatusCode::CREATED, Json(issued)).into_response())
}

pub(crate) async fn revoke_key(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require(Scope::Admin)?;
    if id.is_empty() || id.len() > limits::IDEMPOTENCY_KEY_BYTES_MAX {
        return Err(ApiError::invalid("id", "not a key id"));
    }
    let now = state.keys.now();
    // A key lives at most KEY_TTL_MAX, so its revocation need not outlive that.
    state
        .revocations
        .revoke(&id, now.saturating_add(limits::KEY_TTL_MAX), now)
        .await
        .map_err(|e| match e {
            RevocationError::Full(_) => ApiError::new("limit_reached", e.to_string()),
            RevocationError::Unavailable(_) => ApiError::new("unavailable", e.to_string()),
        })?;
    tracing::info!(key_id = %id, "API key revoked");
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/cluster`: the cluster as the answering node sees it (members, leader, applied
/// index, every region's shard map summarized).
pub(crate) async fn cluster_status(
    State(state): State<ApiState>,
    caller: Caller,
) -> Result<Json<Value>, ApiError> {
    caller.require(Scope::Admin)?;
    let Some(cluster) = &state.cluster else {
        return Err(ApiError::new(
            "unavailable",
            "this server has no cluster node",
        ));
    };
    let status = cluster
        .status()
        .await
        .map_err(|e| ApiError::new("unavailable", e.to_string()))?;
    let members: Vec<Value> = status
        .members
        .iter()
        .map(|m| {
            json!({
                "id": m.id,
                "addr": m.addr,
                "region": m.region,
                "state": format!("{:?}", m.state).to_lowercase(),
                "voting": format!("{:?}", m.voting).to_lowercase(),
            })
        })
        .collect();
    let regions: Vec<Value> = status
        .regions
        .iter()
        .map(|r| {
            let owned: serde_json::Map<String, Value> = r
                .owned
                .iter()
                .map(|(node, n)| (node.to_string(), Value::from(*n)))
                .collect();
            json!({ "region": r.region, "epoch": r.epoch, "shards": r.shards, "owned": owned })
        })
        .collect();
    let region = status
        .member(status.id)
        .map(|m| m.region.clone())
        .unwrap_or_default();
    Ok(Json(json!({
        "node": status.id,
        "region": region,
        "leader": status.leader,
        "term": status.term,
        "applied_index": status.applied_index,
        "committed_index": status.committed_index,
        "members": members,
        "regions": regions,
        "unreachable": status.unreachable,
    })))
}

/// How long a membership change may take to be applied on the node asked.
const MEMBERSHIP_CHANGE_TIMEOUT: Duration = Duration::from_secs(10);

fn membership_error(e: herald_cluster::membership::MembershipError) -> ApiError {
    use herald_cluster::membership::MembershipError as M;
    match e {
        M::UnknownMember(id) => ApiError::new("member_not_found", format!("no member {id}")),
        M::Invalid(e) => ApiError::invalid("member", e.to_string()),
        e @ (M::MemberRemoved(_)
        | M::MemberExists(_)
        | M::WrongState { .. }
        | M::LastActiveInRegion { .. }
        | M::LastVoter(_)) => ApiError::new("membership_conflict", e.to_string()),
        other => ApiError::new("unavailable", other.to_string()),
    }
}

fn membership(state: &ApiState) -> Result<&herald_cluster::membership::MembershipHandle, ApiError> {
    state
        .cluster
        .as_ref()
        .ok_or_else(|| ApiError::new("unavailable", "this server has no cluster node"))
}

/// `POST /v1/cluster/members`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct JoinRequest {
    id: u64,
    addr: String,
    region: String,
}

pub(crate) async fn member_join(
    State(state): State<ApiState>,
    caller: Caller,
    ApiJson(request): ApiJson<JoinRequest>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    caller.require(Scope::Admin)?;
    if request.id == 0 {
        return Err(ApiError::invalid("id", "node ids start at 1"));
    }
    membership(&state)?
        .join(
            request.id,
            request.addr,
            request.region,
            MEMBERSHIP_CHANGE_TIMEOUT,
        )
        .await
        .map_err(membership_error)?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "id": request.id, "state": "joining" })),
    ))
}

pub(crate) async fn member_drain(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<u64>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    change_member(&state, &caller, id, MemberChange::Drain).await
}

pub(crate) async fn member_remove(
    State(state): State<ApiState>,
    caller: Caller,
    Path(id): Path<u64>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    change_member(&state, &caller, id, MemberChange::Remove).await
}

/// What `POST …/drain` and `DELETE /v1/cluster/members/{id}` ask.
#[derive(Debug, Clone, Copy)]
enum MemberChange {
    Drain,
    Remove,
}

async fn change_member(
    state: &ApiState,
    caller: &Caller,
    id: u64,
    change: MemberChange,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    caller.require(Scope::Admin)?;
    let membership = membership(state)?;
    let (result, label) = match change {
        MemberChange::Drain => (
            membership.drain(id, MEMBERSHIP_CHANGE_TIMEOUT).await,
            "draining",
        ),
        MemberChange::Remove => (
            membership.remove(id, MEMBERSHIP_CHANGE_TIMEOUT).await,
            "removed",
        ),
    };
    result.map_err(membership_error)?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "id": id, "state": label })),
    ))
}
