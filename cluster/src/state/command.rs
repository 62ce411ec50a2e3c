//! Replicated commands and their versioned wire encoding.
//!
//! Every Raft entry of the control group carries one [`Command`] wrapped in an [`Envelope`]
//! (`{version, command}`) and encoded with rmp-serde. [`encode`] and [`decode`] check the
//! same rules ([`Command::validate`]) on both sides of the log (STYLE §4, pair assertions): a
//! malformed command is refused before it is proposed, and a replica that meets one anyway
//! (another version, a corrupt entry) gets a typed error instead of a panic.

use herald_actors::seams::Timestamp;
use herald_actors::token_state::TokenEvent;
use serde::{Deserialize, Serialize};

use super::devices::{
    DEVICE_CHANGES_PER_COMMAND_MAX, DEVICE_TAG_BYTES_MAX, DEVICE_TAGS_MAX, DeviceChange, DeviceOp,
};

/// The command encoding version this build writes and accepts.
pub const COMMAND_VERSION: u16 = 1;
/// Most token events in one [`Command::TokenEvents`] batch.
pub const TOKEN_EVENTS_PER_COMMAND_MAX: usize = 4096;
/// Most shards in one region's shard map.
pub const SHARDS_MAX: usize = 65_536;
/// Longest identifier (tenant id, region, key id, team id, topic, device token) in bytes.
pub const IDENTIFIER_BYTES_MAX: usize = 256;
/// Longest provider-token JWT in bytes.
pub const PROVIDER_TOKEN_JWT_BYTES_MAX: usize = 4096;
/// Most topics per tenant.
pub const TENANT_TOPICS_MAX: usize = 256;
/// Most revoked API keys the replicated state holds at once (expired ones are pruned).
pub const REVOKED_KEYS_MAX: usize = 100_000;

/// A cluster member's id (the Raft node id; never zero).
pub type NodeId = u64;

/// Where a member is in its life cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum MemberState {
    /// Added, catching up; owns no shards yet.
    Joining,
    /// Serving: may own shards.
    Active,
    /// Leaving: its shards move away, it finishes its backlog.
    Draining,
    /// Gone for good. A removed member never comes back under the same id.
    Removed,
}

/// A tenant's admission limits, replicated with the tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TenantLimits {
    /// Sustained pushes per second admitted for the tenant.
    pub pushes_per_second: u32,
    /// Pushes admitted in a burst above the sustained rate.
    pub burst: u32,
}

/// One device-token event of a [`Command::TokenEvents`] batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenEventRecord {
    /// The tenant the token belongs to.
    pub tenant: String,
    /// The device token (hex).
    pub token: String,
    /// What happened, and when.
    #[serde(with = "token_event_wire")]
    pub event: TokenEvent,
}

/// A change to the replicated state. See [`StateMachine::apply`](super::StateMachine::apply)
/// for what each does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Command {
    /// Add a member (state [`MemberState::Joining`]).
    AddMember {
        /// Its node id (non-zero).
        id: NodeId,
        /// Its transport address (`host:port`).
        addr: String,
        /// Its region.
        region: String,
    },
    /// Move a member to another life-cycle state.
    SetMemberState {
        /// The member.
        id: NodeId,
        /// The new state.
        state: MemberState,
    },
    /// Replace a region's shard map with a newer epoch.
    AssignShards {
        /// The region.
        region: String,
        /// The new epoch; must be greater than the region's current one.
        epoch: u64,
        /// The owner of each shard, indexed by shard number.
        owners: Vec<NodeId>,
    },
    /// Create or replace a tenant.
    UpsertTenant {
        /// The tenant id.
        tenant: String,
        /// Its Apple team id.
        team_id: String,
        /// Its signing key id.
        key_id: String,
        /// The topics (bundle ids) it may push to.
        topics: Vec<String>,
        /// Its admission limits.
        limits: TenantLimits,
    },
    /// Remove a tenant.
    RemoveTenant {
        /// The tenant id.
        tenant: String,
    },
    /// Install a provider token minted by the leader; the newest per key wins.
    SetProviderToken {
        /// The signing key id (must match the JWT's `kid`).
        key_id: String,
        /// The JWT text.
        jwt: String,
        /// When it was issued (must match the JWT's `iat`, in whole seconds).
        #[serde(with = "timestamp_wire")]
        issued_at: Timestamp,
    },
    /// A batch of device-token events, merged last-writer-wins.
    TokenEvents(Vec<TokenEventRecord>),
    /// Revoke an API key (by its id, the JWT's `jti`) on every node until `until_ms` (when it
    /// would have expired anyway). Revocations whose `until_ms` is not after `now_ms` (the
    /// proposer's clock, part of the command so every replica prunes alike) are dropped.
    RevokeKey {
        /// The key id.
        id: String,
        /// Revoked until (ms since the epoch).
        until_ms: u64,
        /// The proposer's time (ms since the epoch).
        now_ms: u64,
    },
    /// Register and unregister devices (see [`super::devices`]).
    Devices(Vec<DeviceChange>),
    /// Set (or, with `None`, remove) a tenant's webhook, cluster-wide: every node posts the
    /// outcomes its engine finishes to it.
    SetWebhook {
        /// The tenant.
        tenant: String,
        /// Where to post, and the signing secret; `None` removes the webhook.
        webhook: Option<WebhookRecord>,
    },
    /// Create a tenant through the HTTP API (`POST /v1/tenants`), with its token-auth
    /// credentials, on every node. Refused if a tenant of that id was created so already.
    CreateApiTenant {
        /// The tenant id.
        tenant: String,
        /// Its credentials and limits.
        record: ApiTenantRecord,
    },
    /// Remove a tenant created with [`Command::CreateApiTenant`] from every node.
    RemoveApiTenant {
        /// The tenant id.
        tenant: String,
    },
}

/// Most tenants created through the API the replicated state holds.
pub const API_TENANTS_MAX: usize = 10_000;
/// Most bytes of a replicated `.p8` key (PEM text; a P-256 key is about 240).
pub const API_TENANT_P8_BYTES_MAX: usize = 8192;

/// A tenant created through the HTTP API, as replicated: its token-auth credentials and queue
/// bound. The `.p8` key travels in the Raft log and snapshots (over the mutually authenticated
/// node links, on the nodes' disks, like the configured tenants' key files); `Debug` redacts
/// it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiTenantRecord {
    /// Apple team id.
    pub team_id: String,
    /// Apple key id.
    pub key_id: String,
    /// The `.p8` signing key (PKCS#8 PEM).
    pub p8_pem: String,
    /// Most pushes queued at once (the node's default when `None`).
    pub queue_max: Option<u64>,
}

impl std::fmt::Debug for ApiTenantRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiTenantRecord")
            .field("team_id", &self.team_id)
            .field("key_id", &self.key_id)
            .field("p8_pem", &"<redacted>")
            .field("queue_max", &self.queue_max)
            .finish()
    }
}

/// Most bytes of a replicated webhook URL or secret.
pub const WEBHOOK_FIELD_BYTES_MAX: usize = 2048;
/// Most webhooks the replicated state holds (one per tenant).
pub const WEBHOOKS_MAX: usize = 10_000;

/// A tenant's webhook in the replicated state. The secret travels in the Raft log and
/// snapshots (over the mutually authenticated node links, on the nodes' disks, like the
/// tenants' key files); `Debug` redacts it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookRecord {
    /// The URL (`http://host[:port]/path`).
    pub url: String,
    /// The HMAC-SHA256 signing secret.
    pub secret: String,
}

impl std::fmt::Debug for WebhookRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookRecord")
            .field("url", &self.url)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// The wire form of a command: the encoding version and the command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// The encoding version ([`COMMAND_VERSION`]).
    pub version: u16,
    /// The command.
    pub command: Command,
}

/// Why a command could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError {
    /// The bytes are not an rmp-serde [`Envelope`].
    #[error("command is not decodable: {0}")]
    Malformed(String),
    /// The envelope has a version this build does not understand.
    #[error("command version {found}, this build reads version {expected}")]
    UnsupportedVersion {
        /// The version found.
        found: u16,
        /// The version this build reads.
        expected: u16,
    },
    /// The command breaks a structural rule (empty id, too many items, …).
    #[error("invalid command: {0}")]
    Invalid(String),
    /// Serialization failed (should not happen for a valid command).
    #[error("command could not be encoded: {0}")]
    Encode(String),
}

/// Encode `command` as an rmp-serde [`Envelope`] of [`COMMAND_VERSION`].
///
/// # Errors
/// [`CommandError::Invalid`] if the command breaks a rule of [`Command::validate`].
pub fn encode(command: &Command) -> Result<Vec<u8>, CommandError> {
    command.validate()?;
    let envelope = Envelope {
        version: COMMAND_VERSION,
        command: command.clone(),
    };
    rmp_serde::to_vec(&envelope).map_err(|e| CommandError::Encode(e.to_string()))
}

/// Decode an [`Envelope`] and return its command, checking the version and the same rules as
/// [`encode`].
///
/// # Errors
/// [`CommandError::Malformed`], [`CommandError::UnsupportedVersion`] or
/// [`CommandError::Invalid`]. Never panics, whatever the bytes.
pub fn decode(bytes: &[u8]) -> Result<Command, CommandError> {
    let envelope: Envelope =
        rmp_serde::from_slice(bytes).map_err(|e| CommandError::Malformed(e.to_string()))?;
    if envelope.version != COMMAND_VERSION {
        return Err(CommandError::UnsupportedVersion {
            found: envelope.version,
            expected: COMMAND_VERSION,
        });
    }
    envelope.command.validate()?;
    Ok(envelope.command)
}

impl Command {
    /// Check the structural rules every replica relies on: non-zero node ids, non-empty
    /// identifiers within [`IDENTIFIER_BYTES_MAX`], batches and maps within their bounds.
    /// Rules that depend on the current state (epochs, known members) are checked on apply.
    ///
    /// # Errors
    /// [`CommandError::Invalid`] naming the broken rule.
    pub fn validate(&self) -> Result<(), CommandError> {
        match self {
            Command::AddMember { id, addr, region } => {
                check_node_id(*id)?;
                check_identifier("addr", addr)?;
                check_identifier("region", region)
            }
            Command::SetMemberState { id, .. } => check_node_id(*id),
            Command::AssignShards { region, owners, .. } => {
                check_identifier("region", region)?;
                if owners.is_empty() || owners.len() > SHARDS_MAX {
                    return Err(invalid(format!(
                        "shard count {} outside 1..={SHARDS_MAX}",
                        owners.len()
                    )));
                }
                owners.iter().try_for_each(|owner| check_node_id(*owner))
            }
            Command::UpsertTenant {
                tenant,
                team_id,
                key_id,
                topics,
                ..
            } => {
                check_identifier("tenant", tenant)?;
                check_identifier("team id", team_id)?;
                check_identifier("key id", key_id)?;
                if topics.len() > TENANT_TOPICS_MAX {
                    return Err(invalid(format!(
                        "{} topics, at most {TENANT_TOPICS_MAX}",
                        topics.len()
                    )));
                }
                topics
                    .iter()
                    .try_for_each(|topic| check_identifier("topic", topic))
            }
            Command::RemoveTenant { tenant } => check_identifier("tenant", tenant),
            Command::SetProviderToken { key_id, jwt, .. } => {
                check_identifier("key id", key_id)?;
                if jwt.is_empty() || jwt.len() > PROVIDER_TOKEN_JWT_BYTES_MAX {
                    return Err(invalid(format!(
                        "jwt of {} bytes outside 1..={PROVIDER_TOKEN_JWT_BYTES_MAX}",
                        jwt.len()
                    )));
                }
                Ok(())
            }
            Command::RevokeKey { id, .. } => check_identifier("key id", id),
            Command::SetWebhook { tenant, webhook } => {
                check_identifier("tenant", tenant)?;
                if let Some(webhook) = webhook {
                    for (what, value) in [
                        ("webhook url", &webhook.url),
                        ("webhook secret", &webhook.secret),
                    ] {
                        if value.is_empty() || value.len() > WEBHOOK_FIELD_BYTES_MAX {
                            return Err(invalid(format!(
                                "{what} of {} bytes outside 1..={WEBHOOK_FIELD_BYTES_MAX}",
                                value.len()
                            )));
                        }
                    }
                }
                Ok(())
            }
            Command::CreateApiTenant { tenant, record } => {
                check_identifier("tenant", tenant)?;
                check_identifier("team id", &record.team_id)?;
                check_identifier("key id", &record.key_id)?;
                if record.p8_pem.is_empty() || record.p8_pem.len() > API_TENANT_P8_BYTES_MAX {
                    return Err(invalid(format!(
                        "p8 key of {} bytes outside 1..={API_TENANT_P8_BYTES_MAX}",
                        record.p8_pem.len()
                    )));
                }
                if record.queue_max == Some(0) {
                    return Err(invalid("queue_max 0".to_owned()));
                }
                Ok(())
            }
            Command::RemoveApiTenant { tenant } => check_identifier("tenant", tenant),
            Command::Devices(changes) => {
                if changes.is_empty() || changes.len() > DEVICE_CHANGES_PER_COMMAND_MAX {
                    return Err(invalid(format!(
                        "{} device changes outside 1..={DEVICE_CHANGES_PER_COMMAND_MAX}",
                        changes.len()
                    )));
                }
                changes.iter().try_for_each(|change| {
                    check_identifier("tenant", &change.tenant)?;
                    check_identifier("device token", &change.token)?;
                    if let DeviceOp::Register { topic, tags, .. } = &change.op {
                        check_identifier("topic", topic)?;
                        if tags.len() > DEVICE_TAGS_MAX {
                            return Err(invalid(format!(
                                "{} tags; at most {DEVICE_TAGS_MAX}",
                                tags.len()
                            )));
                        }
                        if tags
                            .iter()
                            .any(|t| t.is_empty() || t.len() > DEVICE_TAG_BYTES_MAX)
                        {
                            return Err(invalid(format!(
                                "a tag outside 1..={DEVICE_TAG_BYTES_MAX} bytes"
                            )));
                        }
                        if tags.windows(2).any(|w| w[0] >= w[1]) {
                            return Err(invalid("tags not sorted and distinct".to_owned()));
                        }
                    }
                    Ok(())
                })
            }
            Command::TokenEvents(events) => {
                if events.is_empty() || events.len() > TOKEN_EVENTS_PER_COMMAND_MAX {
                    return Err(invalid(format!(
                        "{} token events outside 1..={TOKEN_EVENTS_PER_COMMAND_MAX}",
                        events.len()
                    )));
                }
                events.iter().try_for_each(|record| {
                    check_identifier("tenant", &record.tenant)?;
                    check_identifier("device token", &record.token)
                })
            }
        }
    }
}

fn invalid(message: String) -> CommandError {
    CommandError::Invalid(message)
}

fn check_node_id(id: NodeId) -> Result<(), CommandError> {
    if id == 0 {
        return Err(invalid("node id 0 is reserved".to_owned()));
    }
    Ok(())
}

fn check_identifier(what: &str, value: &str) -> Result<(), CommandError> {
    if value.is_empty() || value.len() > IDENTIFIER_BYTES_MAX {
        return Err(invalid(format!(
            "{what} of {} bytes outside 1..={IDENTIFIER_BYTES_MAX}",
            value.len()
        )));
    }
    Ok(())
}

/// Serde for [`Timestamp`] (which carries no serde impls): milliseconds since the epoch.
pub(crate) mod timestamp_wire {
    use herald_actors::seams::Timestamp;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(t: &Timestamp, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(t.as_millis())
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Timestamp, D::Error> {
        u64::deserialize(d).map(Timestamp::from_millis)
    }
}

/// Serde for [`TokenEvent`] through a mirror enum of milliseconds.
pub(crate) mod token_event_wire {
    use herald_actors::seams::Timestamp;
    use herald_actors::token_state::TokenEvent;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    enum Wire {
        Registered(u64),
        Unregistered(u64),
        Invalidated(u64),
    }

    pub(crate) fn serialize<S: Serializer>(event: &TokenEvent, s: S) -> Result<S::Ok, S::Error> {
        match *event {
            TokenEvent::Registered { at } => Wire::Registered(at.as_millis()),
            TokenEvent::Unregistered { at } => Wire::Unregistered(at.as_millis()),
            TokenEvent::Invalidated { at } => Wire::Invalidated(at.as_millis()),
        }
        .serialize(s)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<TokenEvent, D::Error> {
        Ok(match Wire::deserialize(d)? {
            Wire::Registered(ms) => TokenEvent::Registered {
                at: Timestamp::from_millis(ms),
            },
            Wire::Unregistered(ms) => TokenEvent::Unregistered {
                at: Timestamp::from_millis(ms),
            },
            Wire::Invalidated(ms) => TokenEvent::Invalidated {
                at: Timestamp::from_millis(ms),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<Command> {
        vec![
            Command::AddMember {
                id: 1,
                addr: "10.0.0.1:7000".into(),
                region: "eu".into(),
            },
            Command::SetMemberState {
                id: 1,
                state: MemberState::Draining,
            },
            Command::AssignShards {
                region: "eu".into(),
                epoch: 3,
                owners: vec![1, 2, 1],
            },
            Command::UpsertTenant {
                tenant: "acme".into(),
                team_id: "TEAM123456".into(),
                key_id: "ABC123DEFG".into(),
                topics: vec!["com.acme.app".into()],
                limits: TenantLimits {
                    pushes_per_second: 100,
                    burst: 10,
                },
            },
            Command::RemoveTenant {
                tenant: "acme".into(),
            },
            Command::SetProviderToken {
                key_id: "ABC123DEFG".into(),
                jwt: "a.b.c".into(),
                issued_at: Timestamp::from_secs(7),
            },
            Command::TokenEvents(vec![TokenEventRecord {
                tenant: "acme".into(),
                token: "abcd".into(),
                event: TokenEvent::Invalidated {
                    at: Timestamp::from_millis(1234),
                },
            }]),
            Command::CreateApiTenant {
                tenant: "globex".into(),
                record: ApiTenantRecord {
                    team_id: "TEAM123456".into(),
                    key_id: "ABC123DEFG".into(),
                    p8_pem: "-----BEGIN PRIVATE KEY-----".into(),
                    queue_max: Some(500),
                },
            },
            Command::RemoveApiTenant {
                tenant: "globex".into(),
            },
        ]
    }

    #[test]
    fn api_tenant_records_redact_the_key_and_are_bounded() {
        let record = ApiTenantRecord {
            team_id: "TEAM123456".into(),
            key_id: "ABC123DEFG".into(),
            p8_pem: "secret-key-material".into(),
            queue_max: None,
        };
        assert!(!format!("{record:?}").contains("secret-key-material"));
        for p8_pem in [String::new(), "k".repeat(API_TENANT_P8_BYTES_MAX + 1)] {
            let command = Command::CreateApiTenant {
                tenant: "globex".into(),
                record: ApiTenantRecord {
                    p8_pem,
                    ..record.clone()
                },
            };
            assert!(matches!(encode(&command), Err(CommandError::Invalid(_))));
        }
        let command = Command::CreateApiTenant {
            tenant: "globex".into(),
            record: ApiTenantRecord {
                queue_max: Some(0),
                ..record
            },
        };
        assert!(matches!(encode(&command), Err(CommandError::Invalid(_))));
    }

    #[test]
    fn every_command_round_trips() {
        for command in sample() {
            let bytes = encode(&command).unwrap();
            assert_eq!(decode(&bytes).unwrap(), command);
        }
    }

    #[test]
    fn other_versions_are_refused() {
        let envelope = Envelope {
            version: COMMAND_VERSION + 1,
            command: sample().remove(0),
        };
        let bytes = rmp_serde::to_vec(&envelope).unwrap();
        assert_eq!(
            decode(&bytes),
            Err(CommandError::UnsupportedVersion {
                found: COMMAND_VERSION + 1,
                expected: COMMAND_VERSION
            })
        );
    }

    #[test]
    fn invalid_commands_are_refused_on_both_sides() {
        let bad = Command::AddMember {
            id: 0,
            addr: "x".into(),
            region: "eu".into(),
        };
        assert!(matches!(encode(&bad), Err(CommandError::Invalid(_))));
        let bytes = rmp_serde::to_vec(&Envelope {
            version: COMMAND_VERSION,
            command: bad,
        })
        .unwrap();
        assert!(matches!(decode(&bytes), Err(CommandError::Invalid(_))));
        assert!(matches!(
            encode(&Command::TokenEvents(vec![])),
            Err(CommandError::Invalid(_))
        ));
    }

    #[test]
    fn garbage_never_panics() {
        for bytes in [
            &b""[..],
            b"\x00",
            b"\xff\xff\xff",
            b"\x92\x01\xc0",
            &[0x93; 64],
        ] {
            assert!(decode(bytes).is_err());
        }
    }
}
