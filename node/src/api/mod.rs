//! The HTTP API (v1), an axum [`Router`] over backend traits.
//!
//! * [`router`] serves every route in [`ROUTES`] (the same table the OpenAPI test checks
//!   `docs/openapi.yaml` against), with a body limit, JSON errors ([`ApiError`]) and
//!   per-request metrics and spans.
//! * Callers authenticate with API keys ([`ApiKeys`], JWTs with a tenant and scopes); a
//!   tenant key only ever reads and acts for its own tenant.
//! * The work is done by a [`Backends`] set of traits: [`LocalBackend`] over one engine
//!   here; the cluster router implements the same traits.
//!
//! See `docs/api.md` for every endpoint, with examples.

mod admin;
mod auth;
mod backend;
mod error;
mod gorush;
mod handlers;
mod idempotency;
mod json;
pub mod limits;
mod local;
mod replicated;
mod replicated_tenants;
mod webhooks;

use std::sync::{Arc, Mutex, PoisonError};

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, delete, get, post, put};
use herald_actors::seams::DetRng;
use tracing::Instrument;

pub use auth::{
    ApiKeys, Caller, Claims, ClusterRevocations, IssuedKey, KEY_ISSUER, KeyError, KeyRequest,
    MemoryRevocations, REVOCATION_TIMEOUT, RevocationError, RevocationSet, Scope,
};
pub use backend::{
    AdminError, Device, DeviceFilter, DevicePage, DeviceRegistry, Feedback, FeedbackEntry,
    FeedbackPage, PushBackend, PushStatus, RegistryError, TenantAdmin, TenantInfo, TenantSpec,
};
pub use error::{ApiError, ERROR_CODES};
pub use idempotency::push_id_for_key;
pub use local::LocalBackend;
pub use replicated::{REGISTRATION_TIMEOUT, ReplicatedDevices};
pub use replicated_tenants::{
    ReplicatedTenants, TENANT_FOLLOW_EVERY, TENANT_PROPOSE_TIMEOUT, api_tenant_config,
};
pub use webhooks::{SIGNATURE_HEADER, WebhookTarget, Webhooks, webhook_signature};

/// One route: its method, its path (axum syntax, `{param}`) and what serves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// `GET`, `POST` or `DELETE`.
    pub method: &'static str,
    /// The path.
    pub path: &'static str,
    /// The scope a key needs.
    pub scope: Scope,
    handler: Handler,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Handler {
    Push,
    PushBatch,
    PushStatus,
    DeviceRegister,
    DeviceList,
    DeviceDelete,
    Feedback,
    Broadcast,
    TenantList,
    TenantCreate,
    TenantGet,
    TenantDelete,
    KeyIssue,
    KeyRevoke,
    GorushPush,
    WebhookGet,
    WebhookSet,
    WebhookDelete,
    ClusterStatus,
    MemberJoin,
    MemberDrain,
    MemberRemove,
}

const fn route(method: &'static str, path: &'static str, scope: Scope, handler: Handler) -> Route {
    Route {
        method,
        path,
        scope,
        handler,
    }
}

/// Every route the API serves.
pub const ROUTES: &[Route] = &[
    route("POST", "/v1/push", Scope::Push, Handler::Push),
    route("POST", "/v1/push/batch", Scope::Push, Handler::PushBatch),
    route("GET", "/v1/pushes/{id}", Scope::Read, Handler::PushStatus),
    route("POST", "/v1/devices", Scope::Push, Handler::DeviceRegister),
    route("GET", "/v1/devices", Scope::Read, Handler::DeviceList),
    route(
        "DELETE",
        "/v1/devices/{token}",
        Scope::Push,
        Handler::DeviceDelete,
    ),
    route("GET", "/v1/feedback", Scope::Read, Handler::Feedback),
    route("POST", "/v1/broadcast", Scope::Push, Handler::Broadcast),
    route("GET", "/v1/tenants", Scope::Admin, Handler::TenantList),
    route("POST", "/v1/tenants", Scope::Admin, Handler::TenantCreate),
    route("GET", "/v1/tenants/{id}", Scope::Admin, Handler::TenantGet),
    route(
        "DELETE",
        "/v1/tenants/{id}",
        Scope::Admin,
        Handler::TenantDelete,
    ),
    route("POST", "/v1/keys", Scope::Admin, Handler::KeyIssue),
    route("DELETE", "/v1/keys/{id}", Scope::Admin, Handler::KeyRevoke),
    route("POST", "/api/push", Scope::Push, Handler::GorushPush),
    route("GET", "/v1/webhook", Scope::Read, Handler::WebhookGet),
    route("PUT", "/v1/webhook", Scope::Push, Handler::WebhookSet),
    route("DELETE", "/v1/webhook", Scope::Push, Handler::WebhookDelete),
    route("GET", "/v1/cluster", Scope::Admin, Handler::ClusterStatus),
    route(
        "POST",
        "/v1/cluster/members",
        Scope::Admin,
        Handler::MemberJoin,
    ),
    route(
        "POST",
        "/v1/cluster/members/{id}/drain",
        Scope::Admin,
        Handler::MemberDrain,
    ),
    route(
        "DELETE",
        "/v1/cluster/members/{id}",
        Scope::Admin,
        Handler::MemberRemove,
    ),
];

/// The backends the API works against.
#[derive(Debug, Clone)]
pub struct Backends {
    /// Pushes and their status.
    pub pushes: Arc<dyn PushBackend>,
    /// Registered devices.
    pub devices: Arc<dyn DeviceRegistry>,
    /// Invalidated tokens.
    pub feedback: Arc<dyn Feedback>,
    /// Tenants.
    pub tenants: Arc<dyn TenantAdmin>,
}

impl Backends {
    /// Every backend served by one [`LocalBackend`].
    pub fn local(local: &LocalBackend) -> Self {
        Backends {
            pushes: Arc::new(local.clone()),
            devices: Arc::new(local.clone()),
            feedback: Arc::new(local.clone()),
            tenants: Arc::new(local.clone()),
        }
    }
}

/// What the handlers share. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ApiState {
    backends: Backends,
    keys: Arc<ApiKeys>,
    revocations: Arc<dyn RevocationSet>,
    rng: Arc<Mutex<DetRng>>,
    webhooks: Option<Webhooks>,
    /// Where `PUT`/`DELETE /v1/webhook` are replicated (a cluster node), if anywhere.
    replicated_webhooks: Option<herald_cluster::devices::DeviceDirectory>,
    cluster: Option<herald_cluster::membership::MembershipHandle>,
}

impl ApiState {
    /// State over `backends`, verifying keys with `keys`, revocations in `revocations`;
    /// key ids and broadcast ids are drawn from a [`DetRng`] seeded with `rng_seed`.
    pub fn new(
        backends: Backends,
        keys: ApiKeys,
        revocations: Arc<dyn RevocationSet>,
        rng_seed: u64,
    ) -> Self {
        ApiState {
            backends,
            keys: Arc::new(keys),
            revocations,
            rng: Arc::new(Mutex::new(DetRng::from_seed(rng_seed))),
            webhooks: None,
            replicated_webhooks: None,
            cluster: None,
        }
    }

    /// Replicate `PUT`/`DELETE /v1/webhook` through `directory` (every node of the cluster
    /// then posts to the webhook; see `docs/api.md`). Needs [`with_webhooks`](Self::with_webhooks).
    pub fn with_replicated_webhooks(
        mut self,
        directory: herald_cluster::devices::DeviceDirectory,
    ) -> Self {
        self.replicated_webhooks = Some(directory);
        self
    }

    /// Serve `GET /v1/cluster` from `cluster` (without, it answers 503).
    pub fn with_cluster(mut self, cluster: herald_cluster::membership::MembershipHandle) -> Self {
        self.cluster = Some(cluster);
        self
    }

    /// Serve `/v1/webhook` with `webhooks` (without, those routes answer 503).
    pub fn with_webhooks(mut self, webhooks: Webhooks) -> Self {
        self.webhooks = Some(webhooks);
        self
    }

    /// The key issuer and verifier.
    pub fn keys(&self) -> &ApiKeys {
        &self.keys
    }

    /// A fresh random UUID (key ids, broadcast ids).
    fn uuid(&self) -> uuid::Uuid {
        self.rng
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .uuid()
    }
}

/// The API's router: every route in [`ROUTES`], JSON 404/405 answers, a
/// [`BODY_BYTES_MAX`](limits::BODY_BYTES_MAX) body limit, and a metric and span per request.
pub fn router(state: ApiState) -> Router {
    let mut router: Router<ApiState> = Router::new();
    for route in ROUTES {
        router = router.route(route.path, method_router(route));
    }
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(observe))
        .layer(DefaultBodyLimit::max(limits::BODY_BYTES_MAX))
        .with_state(state)
}

fn method_router(route: &Route) -> MethodRouter<ApiState> {
    let on = |m: MethodRouter<ApiState>| m;
    match route.handler {
        Handler::Push => on(post(handlers::push)),
        Handler::PushBatch => on(post(handlers::push_batch)),
        Handler::PushStatus => on(get(handlers::push_status)),
        Handler::DeviceRegister => on(post(handlers::register_device)),
        Handler::DeviceList => on(get(handlers::list_devices)),
        Handler::DeviceDelete => on(delete(handlers::delete_device)),
        Handler::Feedback => on(get(handlers::feedback)),
        Handler::Broadcast => on(post(handlers::broadcast)),
        Handler::TenantList => on(get(admin::list_tenants)),
        Handler::TenantCreate => on(post(admin::create_tenant)),
        Handler::TenantGet => on(get(admin::get_tenant)),
        Handler::TenantDelete => on(delete(admin::delete_tenant)),
        Handler::KeyIssue => on(post(admin::issue_key)),
        Handler::KeyRevoke => on(delete(admin::revoke_key)),
        Handler::GorushPush => on(post(gorush::push)),
        Handler::WebhookGet => on(get(handlers::get_webhook)),
        Handler::WebhookSet => on(put(handlers::set_webhook)),
        Handler::WebhookDelete => on(delete(handlers::delete_webhook)),
        Handler::ClusterStatus => on(get(admin::cluster_status)),
        Handler::MemberJoin => on(post(admin::member_join)),
        Handler::MemberDrain => on(post(admin::member_drain)),
        Handler::MemberRemove => on(delete(admin::member_remove)),
    }
}

async fn not_found() -> ApiError {
    ApiError::new("not_found", "no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new("method_not_allowed", "this route does not take that method")
}

/// Count every request by route and status, inside a span. Never logs headers (keys).
async fn observe(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().as_str().to_owned();
    let span = tracing::info_span!("api", %method, %route);
    let response = next.run(request).instrument(span).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("herald_api_requests_total", "method" => method, "route" => route, "status" => status)
        .increment(1);
    response.into_response()
}
