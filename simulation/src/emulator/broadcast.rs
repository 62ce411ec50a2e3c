//! Broadcast channels (iOS 18 Live Activities): channel management and broadcast pushes.
//!
//! Apple serves channel management on its own hosts (`api-manage-broadcast[.sandbox]
//! .push.apple.com`, ports 2196/2195); the emulator serves it on the APNs listener, so
//! clients point their management host at the emulator's address too.
//!
//! | request | answer |
//! |---|---|
//! | `POST /1/apps/<bundle>/channels`, body `{"message-storage-policy": 0\|1, "push-type": "LiveActivity"}` | 201, `apns-channel-id` |
//! | `GET /1/apps/<bundle>/channels` with `apns-channel-id` | 200, `{"message-storage-policy": n, "push-type": "LiveActivity"}` |
//! | `GET /1/apps/<bundle>/channels` without it, or `GET /1/apps/<bundle>/all-channels` | 200, `{"channels": [...]}` |
//! | `DELETE /1/apps/<bundle>/channels` with `apns-channel-id` | 204 |
//! | `POST /4/broadcasts/apps/<bundle>` with `apns-channel-id`, `apns-push-type: liveactivity` | 200, recorded |
//!
//! Reasons that `herald_actors::apns::Reason` does not know are written as raw strings:
//! see [`MISSING_CHANNEL_ID`], [`BAD_CHANNEL_ID`], [`CHANNEL_NOT_REGISTERED`],
//! [`TOO_MANY_CHANNELS`], [`BAD_MESSAGE_STORAGE_POLICY`].

use std::collections::BTreeMap;

use bytes::Bytes;
use herald_actors::apns::Reason;
use http::{HeaderName, Method};
use serde::{Deserialize, Serialize};

use super::faults::StreamPlan;
use super::{AcceptedNotification, Answer, ConnCtx, Environment, RequestView, Shared, validate};

/// Channels one app may have in one environment (Apple's documented limit).
pub const CHANNELS_PER_APP_MAX_DEFAULT: usize = 10_000;

/// 400: a broadcast or a channel read/delete without `apns-channel-id`.
pub const MISSING_CHANNEL_ID: &str = "MissingChannelId";
/// 400: a broadcast to a channel that does not exist (for this app).
pub const BAD_CHANNEL_ID: &str = "BadChannelId";
/// 404: reading or deleting a channel that does not exist (for this app).
pub const CHANNEL_NOT_REGISTERED: &str = "ChannelNotRegistered";
/// 400: creating a channel beyond the per-app limit.
pub const TOO_MANY_CHANNELS: &str = "TooManyChannels";
/// 400: a create body that is not JSON, or whose `message-storage-policy` is not 0 or 1.
pub const BAD_MESSAGE_STORAGE_POLICY: &str = "BadMessageStoragePolicy";

/// The header naming a channel.
pub(crate) const APNS_CHANNEL_ID: HeaderName = HeaderName::from_static("apns-channel-id");
/// The header management answers echo (or generate).
pub(crate) const APNS_REQUEST_ID: HeaderName = HeaderName::from_static("apns-request-id");

/// One broadcast channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Channel {
    /// The channel id (base64 of 16 random bytes).
    pub id: String,
    /// The app it belongs to.
    pub bundle_id: String,
    /// 0: no message storage; 1: the most recent message is stored.
    pub message_storage_policy: u8,
    /// The channel's push type (`LiveActivity`).
    pub push_type: String,
}

/// Channels by app, then by id.
#[derive(Debug)]
pub(crate) struct Channels {
    by_bundle: BTreeMap<String, BTreeMap<String, Channel>>,
    pub(crate) max_per_app: usize,
}

impl Channels {
    pub(crate) fn new(max_per_app: usize) -> Self {
        Channels {
            by_bundle: BTreeMap::new(),
            max_per_app,
        }
    }

    pub(crate) fn list(&self, bundle: &str) -> Vec<Channel> {
        self.by_bundle
            .get(bundle)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    fn get(&self, bundle: &str, id: &str) -> Option<&Channel> {
        self.by_bundle.get(bundle)?.get(id)
    }
}

/// Which broadcast endpoint a path names.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Route<'a> {
    /// `/1/apps/<bundle>/channels`.
    Channels(&'a str),
    /// `/1/apps/<bundle>/all-channels`.
    AllChannels(&'a str),
    /// `/4/broadcasts/apps/<bundle>`.
    Broadcast(&'a str),
}

/// The broadcast route of `path`, or `None` for any other path (device pushes, 404s).
pub(crate) fn route(path: &str) -> Option<Route<'_>> {
    if let Some(rest) = path.strip_prefix("/1/apps/") {
        let (bundle, what) = rest.split_once('/')?;
        if bundle.is_empty() {
            return None;
        }
        return match what {
            "channels" => Some(Route::Channels(bundle)),
            "all-channels" => Some(Route::AllChannels(bundle)),
            _ => None,
        };
    }
    let bundle = path.strip_prefix("/4/broadcasts/apps/")?;
    (!bundle.is_empty() && !bundle.contains('/')).then_some(Route::Broadcast(bundle))
}

/// Why a broadcast request failed: an APNs reason, or one the actors crate does not know.
enum Fail {
    Apns(Reason),
    Raw(u16, &'static str),
}

impl From<Reason> for Fail {
    fn from(r: Reason) -> Self {
        Fail::Apns(r)
    }
}

#[derive(Deserialize)]
struct CreateBody {
    #[serde(rename = "message-storage-policy")]
    message_storage_policy: Option<u8>,
    #[serde(rename = "push-type")]
    push_type: Option<String>,
}

/// What a successful broadcast request answers.
struct Ok200 {
    status: u16,
    channel_id: Option<String>,
    body: Bytes,
    accepted: Option<AcceptedNotification>,
}

impl Shared {
    /// Answer a request for a broadcast route.
    pub(crate) fn broadcast_answer(
        &self,
        ctx: &ConnCtx,
        req: &RequestView<'_>,
        plan: &StreamPlan,
        route: Route<'_>,
        apns_id: String,
    ) -> Answer {
        let mut token_accepted = false;
        let result = self.broadcast_decide(ctx, req, plan, route, &apns_id, &mut token_accepted);
        let mut headers = Vec::new();
        if !matches!(route, Route::Broadcast(_)) {
            let request_id = req
                .headers
                .get(APNS_REQUEST_ID)
                .and_then(|v| v.to_str().ok())
                .filter(|id| id.len() == 36 && uuid::Uuid::try_parse(id).is_ok())
                .map_or_else(|| apns_id.clone(), str::to_owned);
            headers.push((APNS_REQUEST_ID, request_id));
        }
        match result {
            Ok(ok) => {
                if let Some(id) = ok.channel_id {
                    headers.push((APNS_CHANNEL_ID, id));
                }
                let mut st = self.lock();
                match ok.accepted {
                    Some(n) => st.record.accept(n),
                    None => st.record.answer_ok(ok.status),
                }
                drop(st);
                let unique_id = (ok.status == 200
                    && matches!(route, Route::Broadcast(_))
                    && self.environment == Environment::Sandbox)
                    .then(|| plan.unique_id.hyphenated().to_string());
                Answer {
                    status: ok.status,
                    apns_id,
                    unique_id,
                    body: ok.body,
                    token_accepted,
                    headers,
                }
            }
            Err(Fail::Apns(reason)) => Answer {
                token_accepted,
                headers,
                ..self.reject(reason, None, apns_id)
            },
            Err(Fail::Raw(status, reason)) => {
                self.lock().record.answer(status, reason);
                Answer {
                    status,
                    apns_id,
                    unique_id: None,
                    body: Bytes::from(serde_json::json!({ "reason": reason }).to_string()),
                    token_accepted,
                    headers,
                }
            }
        }
    }

    fn broadcast_decide(
        &self,
        ctx: &ConnCtx,
        req: &RequestView<'_>,
        plan: &StreamPlan,
        route: Route<'_>,
        apns_id: &str,
        token_accepted: &mut bool,
    ) -> Result<Ok200, Fail> {
        let allowed_methods: &[Method] = match route {
            Route::Channels(_) => &[Method::POST, Method::GET, Method::DELETE],
            Route::AllChannels(_) => &[Method::GET],
            Route::Broadcast(_) => &[Method::POST],
        };
        if !allowed_methods.contains(req.method) {
            return Err(Reason::MethodNotAllowed.into());
        }
        let team = self.authenticate(ctx, req, token_accepted)?;
        if req.headers.get_all(APNS_CHANNEL_ID).iter().nth(1).is_some() {
            return Err(Reason::DuplicateHeaders.into());
        }
        let (Route::Channels(bundle) | Route::AllChannels(bundle) | Route::Broadcast(bundle)) =
            route;
        let channel_id = req
            .headers
            .get(APNS_CHANNEL_ID)
            .map(|v| v.to_str().unwrap_or_default().to_owned());
        if let Route::Broadcast(_) = route {
            let headers = validate::check_headers(req.headers, false)?;
            if headers.push_type.as_deref() != Some("liveactivity") {
                return Err(Reason::InvalidPushType.into());
            }
            let mut st = self.lock();
            if !super::bundle_allowed(&st, ctx, &team, bundle) {
                return Err(Reason::TopicDisallowed.into());
            }
            let channel_id = channel_id.ok_or(Fail::Raw(400, MISSING_CHANNEL_ID))?;
            if st.channels.get(bundle, &channel_id).is_none() {
                return Err(Fail::Raw(400, BAD_CHANNEL_ID));
            }
            validate::check_payload(req.body_len, Some("liveactivity"))?;
            if let Some(reason) = plan.injected {
                return Err(reason.into());
            }
            let now = self.clock.now();
            st.record.stats.broadcasts_total += 1;
            drop(st);
            use sha2::Digest as _;
            let accepted = AcceptedNotification {
                apns_id: apns_id.to_owned(),
                device_token: String::new(),
                topic: headers
                    .topic
                    .unwrap_or_else(|| format!("{bundle}.push-type.liveactivity")),
                push_type: headers.push_type,
                priority: headers.priority,
                collapse_id: headers.collapse_id,
                expiration: headers.expiration,
                payload_sha256: super::lower_hex(&sha2::Sha256::digest(req.body)),
                payload_bytes: req.body_len,
                time_ms: now.as_millis(),
                connection_id: ctx.id,
                channel_id: Some(channel_id),
            };
            return Ok(Ok200 {
                status: 200,
                channel_id: None,
                body: Bytes::new(),
                accepted: Some(accepted),
            });
        }
        let mut st = self.lock();
        if !super::bundle_allowed(&st, ctx, &team, bundle) {
            return Err(Reason::TopicDisallowed.into());
        }
        let json = |v: serde_json::Value| Bytes::from(v.to_string());
        let ok = |status, channel_id, body| Ok200 {
            status,
            channel_id,
            body,
            accepted: None,
        };
        if matches!(route, Route::AllChannels(_))
            || (req.method == Method::GET && channel_id.is_none())
        {
            let ids: Vec<String> = st.channels.list(bundle).into_iter().map(|c| c.id).collect();
            return Ok(ok(200, None, json(serde_json::json!({ "channels": ids }))));
        }
        if req.method == Method::POST {
            if req.body_len == 0 {
                return Err(Reason::PayloadEmpty.into());
            }
            let body: CreateBody = serde_json::from_slice(req.body)
                .map_err(|_| Fail::Raw(400, BAD_MESSAGE_STORAGE_POLICY))?;
            let policy = match body.message_storage_policy {
                Some(p @ (0 | 1)) => p,
                _ => return Err(Fail::Raw(400, BAD_MESSAGE_STORAGE_POLICY)),
            };
            match body.push_type.as_deref() {
                Some(p) if p.eq_ignore_ascii_case("liveactivity") => {}
                _ => return Err(Reason::InvalidPushType.into()),
            }
            let max = st.channels.max_per_app;
            if st.channels.by_bundle.get(bundle).map_or(0, |m| m.len()) >= max {
                return Err(Fail::Raw(400, TOO_MANY_CHANNELS));
            }
            let id = loop {
                let mut raw = [0u8; 16];
                st.rng.fill(&mut raw);
                let id = base64(&raw);
                if st.channels.get(bundle, &id).is_none() {
                    break id;
                }
            };
            let channel = Channel {
                id: id.clone(),
                bundle_id: bundle.to_owned(),
                message_storage_policy: policy,
                push_type: "LiveActivity".to_owned(),
            };
            st.channels
                .by_bundle
                .entry(bundle.to_owned())
                .or_default()
                .insert(id.clone(), channel);
            return Ok(ok(201, Some(id), Bytes::new()));
        }
        let channel_id = channel_id.ok_or(Fail::Raw(400, MISSING_CHANNEL_ID))?;
        if req.method == Method::DELETE {
            let removed = st
                .channels
                .by_bundle
                .get_mut(bundle)
                .and_then(|m| m.remove(&channel_id));
            return match removed {
                Some(_) => Ok(ok(204, None, Bytes::new())),
                None => Err(Fail::Raw(404, CHANNEL_NOT_REGISTERED)),
            };
        }
        let channel = st
            .channels
            .get(bundle, &channel_id)
            .ok_or(Fail::Raw(404, CHANNEL_NOT_REGISTERED))?;
        let body = json(serde_json::json!({
            "message-storage-policy": channel.message_storage_policy,
            "push-type": channel.push_type,
        }));
        Ok(ok(200, Some(channel_id), body))
    }
}

/// Standard base64 with padding.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64(&[0xfb, 0xff]), "+/8=");
    }

    #[test]
    fn routes() {
        assert!(matches!(
            route("/1/apps/com.a/channels"),
            Some(Route::Channels("com.a"))
        ));
        assert!(matches!(
            route("/1/apps/com.a/all-channels"),
            Some(Route::AllChannels("com.a"))
        ));
        assert!(matches!(
            route("/4/broadcasts/apps/com.a"),
            Some(Route::Broadcast("com.a"))
        ));
        assert!(route("/3/device/ab").is_none());
        assert!(route("/1/apps//channels").is_none());
        assert!(route("/4/broadcasts/apps/com.a/x").is_none());
    }
}
