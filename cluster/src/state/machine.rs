//! [`StateMachine`]: the replicated control state, applied in log order.

use std::collections::{BTreeMap, BTreeSet};

use herald_actors::apns::ProviderToken;
use herald_actors::seams::Timestamp;
use herald_actors::token_state::{
    Applied, TokenEntry, TokenEvent, TokenKey, TokenStateError, TokenTable, TokenValidity,
};
use serde::{Deserialize, Serialize};

use super::command::{
    API_TENANTS_MAX, ApiTenantRecord, Command, CommandError, MemberState, NodeId, TenantLimits,
    TokenEventRecord, WEBHOOKS_MAX, WebhookRecord, timestamp_wire,
};
use super::devices::{DeviceApplied, DeviceOp, DeviceState, DevicesImage};
use super::rebalance::{RebalanceError, rebalance};

/// The snapshot encoding version this build writes and reads.
pub const SNAPSHOT_VERSION: u16 = 1;

/// A cluster member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Its node id.
    pub id: NodeId,
    /// Its transport address.
    pub addr: String,
    /// Its region.
    pub region: String,
    /// Its life-cycle state.
    pub state: MemberState,
}

/// One region's shard map.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardMap {
    /// The epoch of this assignment; grows with every reassignment.
    pub epoch: u64,
    /// The owner of each shard, indexed by shard number.
    pub owners: Vec<NodeId>,
}

/// A tenant's replicated configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tenant {
    /// Its Apple team id.
    pub team_id: String,
    /// Its signing key id.
    pub key_id: String,
    /// The topics it may push to.
    pub topics: Vec<String>,
    /// Its admission limits.
    pub limits: TenantLimits,
}

/// The newest provider token of one signing key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderTokenRecord {
    /// The JWT text (a bearer credential: never log it).
    pub jwt: String,
    /// Its issue time.
    #[serde(with = "timestamp_wire")]
    pub issued_at: Timestamp,
}

impl ProviderTokenRecord {
    /// The token, rebuilt from its JWT (validated when it was applied).
    ///
    /// # Errors
    /// The JWT no longer parses (only if the token code's rules changed since it was applied).
    pub fn token(&self) -> Result<ProviderToken, herald_actors::apns::AuthError> {
        ProviderToken::from_jwt(&self.jwt)
    }
}

/// What applying one committed entry did. Every replica computes the same result for the
/// same entry at the same index.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ApplyResult {
    /// The command changed the state.
    Applied,
    /// The command was valid but changed nothing (a repeat).
    Unchanged,
    /// The command was refused by a state-dependent rule; the state is unchanged.
    Rejected(Rejection),
    /// The outcome of each event of a [`Command::TokenEvents`] batch, in order.
    TokenEvents(Vec<Result<Applied, TokenStateError>>),
    /// The outcome of each change of a [`Command::Devices`] batch, in order.
    Devices(Vec<DeviceApplied>),
}

/// Why a command was refused on apply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Rejection {
    /// The entry's bytes are not a valid command of this version.
    #[error("undecodable entry: {0}")]
    Undecodable(CommandError),
    /// A member with this id exists with other details.
    #[error("member {0} already exists")]
    MemberExists(NodeId),
    /// No member with this id.
    #[error("unknown member {0}")]
    UnknownMember(NodeId),
    /// A removed member cannot change state.
    #[error("member {0} was removed")]
    MemberRemoved(NodeId),
    /// The member's life cycle does not allow this move (see [`MemberState`]).
    #[error("member {id} cannot move from {from:?} to {to:?}")]
    InvalidTransition {
        /// The member.
        id: NodeId,
        /// Its state.
        from: MemberState,
        /// The state proposed.
        to: MemberState,
    },
    /// The shard map's epoch is not newer than the region's current one.
    #[error("stale shard epoch {proposed}, current {current}")]
    StaleEpoch {
        /// The region's current epoch.
        current: u64,
        /// The epoch proposed.
        proposed: u64,
    },
    /// The shard count differs from the region's current map.
    #[error("shard count {proposed}, region has {current}")]
    ShardCountChanged {
        /// The region's shard count.
        current: usize,
        /// The shard count proposed.
        proposed: usize,
    },
    /// An owner is not an active member of the region.
    #[error("node {0} may not own shards in this region")]
    IneligibleOwner(NodeId),
    /// No tenant with this id.
    #[error("unknown tenant {0}")]
    UnknownTenant(String),
    /// The provider token is malformed or does not match its key id / issue time.
    #[error("invalid provider token: {0}")]
    InvalidProviderToken(String),
    /// A newer (or equally new) token of the key is installed.
    #[error("provider token not newer than the installed one")]
    StaleProviderToken,
    /// [`REVOKED_KEYS_MAX`](super::command::REVOKED_KEYS_MAX) keys are revoked and unexpired.
    #[error("{0} keys are revoked, the most the state holds")]
    RevocationsFull(usize),
    /// [`WEBHOOKS_MAX`] tenants have a webhook.
    #[error("{0} webhooks are set, the most the state holds")]
    WebhooksFull(usize),
    /// A tenant of this id was created through the API already (with other credentials).
    #[error("tenant {0} exists")]
    TenantExists(String),
    /// [`API_TENANTS_MAX`] tenants were created through the API.
    #[error("{0} tenants were created through the API, the most the state holds")]
    ApiTenantsFull(usize),
}

/// Why a snapshot could not be restored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// The bytes are not a state-machine snapshot.
    #[error("snapshot is not decodable: {0}")]
    Malformed(String),
    /// The snapshot has a version this build does not read.
    #[error("snapshot version {found}, this build reads {expected}")]
    UnsupportedVersion {
        /// The version found.
        found: u16,
        /// The version this build reads.
        expected: u16,
    },
    /// Serialization failed.
    #[error("snapshot could not be encoded: {0}")]
    Encode(String),
    /// The token entries do not fit the table.
    #[error("snapshot token state does not fit: {0}")]
    TokenState(TokenStateError),
}

/// The replicated control state: members, shard maps, tenants, provider tokens and device
/// token state. Pure and deterministic (ordered maps, no clock, no randomness): every replica
/// that applied the same entries agrees at equal [`applied_index`](Self::applied_index).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StateMachine {
    applied_index: u64,
    members: BTreeMap<NodeId, Member>,
    shards: BTreeMap<String, ShardMap>,
    tenants: BTreeMap<String, Tenant>,
    provider_tokens: BTreeMap<String, ProviderTokenRecord>,
    tokens: TokenTable,
    /// Revoked API keys: key id → revoked until (ms since the epoch).
    revoked_keys: BTreeMap<String, u64>,
    /// Counts changes to `revoked_keys` (local: lets a node republish only on a change).
    revocations_version: u64,
    /// Registered devices and the feedback log.
    devices: DeviceState,
    /// Tenants' webhooks.
    webhooks: BTreeMap<String, WebhookRecord>,
    /// Tenants created through the HTTP API, with their credentials.
    api_tenants: BTreeMap<String, ApiTenantRecord>,
}

impl StateMachine {
    /// An empty state at index 0.
    pub fn new() -> Self {
        StateMachine::default()
    }

    /// The index of the last entry applied (or restored from a snapshot).
    pub fn applied_index(&self) -> u64 {
        self.applied_index
    }

    /// Every member, by id.
    pub fn members(&self) -> &BTreeMap<NodeId, Member> {
        &self.members
    }

    /// Every region's shard map, by region.
    pub fn shard_maps(&self) -> &BTreeMap<String, ShardMap> {
        &self.shards
    }

    /// Every tenant, by id.
    pub fn tenants(&self) -> &BTreeMap<String, Tenant> {
        &self.tenants
    }

    /// The newest provider token of each key, by key id.
    pub fn provider_tokens(&self) -> &BTreeMap<String, ProviderTokenRecord> {
        &self.provider_tokens
    }

    /// Revoked API keys: key id → revoked until (ms since the epoch).
    pub fn revoked_keys(&self) -> &BTreeMap<String, u64> {
        &self.revoked_keys
    }

    /// A number that changes whenever [`revoked_keys`](Self::revoked_keys) does (on this
    /// replica; not replicated).
    pub fn revocations_version(&self) -> u64 {
        self.revocations_version
    }

    /// The device-token table.
    pub fn token_table(&self) -> &TokenTable {
        &self.tokens
    }

    /// The validity of a device token as applied here (local read: as stale as this
    /// replica's applied index).
    pub fn check_token(&self, key: &TokenKey) -> TokenValidity {
        self.tokens.check(key)
    }

    /// Record that the entry at `index` carried no command (an empty leader entry or a
    /// configuration change).
    ///
    /// # Panics
    /// If `index` is not the next index (entries are applied in order, exactly once).
    #[track_caller]
    pub fn skip(&mut self, index: u64) {
        self.advance(index);
    }

    /// Apply the entry at `index` whose data is `bytes`: decode it, then [`apply`](Self::apply).
    /// An undecodable entry is [`Rejection::Undecodable`] on every replica alike.
    ///
    /// # Panics
    /// If `index` is not the next index.
    #[track_caller]
    pub fn apply_bytes(&mut self, index: u64, bytes: &[u8]) -> ApplyResult {
        match super::command::decode(bytes) {
            Ok(command) => self.apply(index, &command),
            Err(e) => {
                self.advance(index);
                ApplyResult::Rejected(Rejection::Undecodable(e))
            }
        }
    }

    /// Apply `command`, committed at `index`.
    ///
    /// - `AddMember` adds a [`MemberState::Joining`] member (repeating it is `Unchanged`).
    /// - `SetMemberState` moves a known member along its life cycle: `Joining → Active`,
    ///   `Active → Draining`, `Draining → Active` (drain cancelled), and any state →
    ///   `Removed`, which is final.
    /// - `AssignShards` replaces a region's map if the epoch is newer, the shard count is
    ///   unchanged and every owner is an active member of the region.
    /// - `UpsertTenant` / `RemoveTenant` replace / delete a tenant.
    /// - `SetProviderToken` installs a valid token whose `kid` and `iat` match, if newer than
    ///   the key's current one, and forgets the tokens of keys issued more than
    ///   [`PROVIDER_TOKEN_FORGOTTEN_AFTER`] before it.
    /// - `TokenEvents` merges each event last-writer-wins into the token table.
    /// - `CreateApiTenant` adds a tenant made through the API (the same record again is
    ///   `Unchanged`, another record under its id is refused); `RemoveApiTenant` removes it,
    ///   its webhook, devices and feedback (an unknown one is `Unchanged`, so a retried
    ///   removal is harmless).
    ///
    /// # Panics
    /// If `index` is not the next index (entries are applied in order, exactly once).
    #[track_caller]
    pub fn apply(&mut self, index: u64, command: &Command) -> ApplyResult {
        self.advance(index);
        match command {
            Command::AddMember { id, addr, region } => {
                let member = Member {
                    id: *id,
                    addr: addr.clone(),
                    region: region.clone(),
                    state: MemberState::Joining,
                };
                match self.members.get(id) {
                    None => {
                        self.members.insert(*id, member);
                        ApplyResult::Applied
                    }
                    Some(existing)
                        if existing.addr == member.addr && existing.region == member.region =>
                    {
                        ApplyResult::Unchanged
                    }
                    Some(_) => ApplyResult::Rejected(Rejection::MemberExists(*id)),
                }
            }
            Command::SetMemberState { id, state } => match self.members.get_mut(id) {
                None => ApplyResult::Rejected(Rejection::UnknownMember(*id)),
                Some(member) if member.state == *state => ApplyResult::Unchanged,
                Some(member) if member.state == MemberState::Removed => {
                    ApplyResult::Rejected(Rejection::MemberRemoved(*id))
                }
                Some(member) if !transition_allowed(member.state, *state) => {
                    ApplyResult::Rejected(Rejection::InvalidTransition {
                        id: *id,
                        from: member.state,
                        to: *state,
                    })
                }
                Some(member) => {
                    member.state = *state;
                    ApplyResult::Applied
                }
            },
            Command::AssignShards {
                region,
                epoch,
                owners,
            } => self.assign_shards(region, *epoch, owners),
            Command::UpsertTenant {
                tenant,
                team_id,
                key_id,
                topics,
                limits,
            } => {
                let value = Tenant {
                    team_id: team_id.clone(),
                    key_id: key_id.clone(),
                    topics: topics.clone(),
                    limits: *limits,
                };
                if self.tenants.get(tenant) == Some(&value) {
                    return ApplyResult::Unchanged;
                }
                self.tenants.insert(tenant.clone(), value);
                ApplyResult::Applied
            }
            Command::RemoveTenant { tenant } => match self.tenants.remove(tenant) {
                Some(_) => ApplyResult::Applied,
                None => ApplyResult::Rejected(Rejection::UnknownTenant(tenant.clone())),
            },
            Command::SetProviderToken {
                key_id,
                jwt,
                issued_at,
            } => self.set_provider_token(key_id, jwt, *issued_at),
            Command::RevokeKey {
                id,
                until_ms,
                now_ms,
            } => self.revoke_key(id, *until_ms, *now_ms),
            Command::TokenEvents(events) => ApplyResult::TokenEvents(
                events
                    .iter()
                    .map(
                        |TokenEventRecord {
                             tenant,
                             token,
                             event,
                         }| {
                            let key = TokenKey::new(tenant.as_str(), token.as_str());
                            let applied = self.tokens.apply(key.clone(), *event);
                            if let Ok(Applied {
                                invalidation: Some(invalidation),
                                ..
                            }) = &applied
                            {
                                self.devices.invalidated(
                                    key.tenant(),
                                    key.token(),
                                    invalidation.at.as_millis(),
                                );
                            }
                            applied
                        },
                    )
                    .collect(),
            ),
            Command::SetWebhook { tenant, webhook } => match webhook {
                Some(record) if self.webhooks.get(tenant) == Some(record) => ApplyResult::Unchanged,
                Some(_)
                    if !self.webhooks.contains_key(tenant)
                        && self.webhooks.len() >= WEBHOOKS_MAX =>
                {
                    ApplyResult::Rejected(Rejection::WebhooksFull(self.webhooks.len()))
                }
                Some(record) => {
                    self.webhooks.insert(tenant.clone(), record.clone());
                    ApplyResult::Applied
                }
                None => match self.webhooks.remove(tenant) {
                    Some(_) => ApplyResult::Applied,
                    None => ApplyResult::Unchanged,
                },
            },
            Command::CreateApiTenant { tenant, record } => match self.api_tenants.get(tenant) {
                Some(existing) if existing == record => ApplyResult::Unchanged,
                Some(_) => ApplyResult::Rejected(Rejection::TenantExists(tenant.clone())),
                None if self.api_tenants.len() >= API_TENANTS_MAX => {
                    ApplyResult::Rejected(Rejection::ApiTenantsFull(self.api_tenants.len()))
                }
                None => {
                    self.api_tenants.insert(tenant.clone(), record.clone());
                    ApplyResult::Applied
                }
            },
            Command::RemoveApiTenant { tenant } => match self.api_tenants.remove(tenant) {
                Some(_) => {
                    self.webhooks.remove(tenant);
                    self.devices.remove_tenant(tenant);
                    ApplyResult::Applied
                }
                None => ApplyResult::Unchanged,
            },
            Command::Devices(changes) => ApplyResult::Devices(
                changes
                    .iter()
                    .map(|change| {
                        let applied = self.devices.apply(change);
                        if let (DeviceOp::Register { at_ms, .. }, DeviceApplied::Added)
                        | (DeviceOp::Register { at_ms, .. }, DeviceApplied::Updated) =
                            (&change.op, applied)
                        {
                            // A registration is also the token's: sent to again if it was
                            // invalidated before (last writer wins by time).
                            let key = TokenKey::new(change.tenant.as_str(), change.token.as_str());
                            let at = Timestamp::from_millis(*at_ms);
                            let _ = self.tokens.apply(key, TokenEvent::Registered { at });
                        }
                        applied
                    })
                    .collect(),
            ),
        }
    }

    /// Every tenant's webhook, as applied here.
    pub fn webhooks(&self) -> &BTreeMap<String, WebhookRecord> {
        &self.webhooks
    }

    /// The tenants created through the HTTP API, with their credentials, as applied here.
    pub fn api_tenants(&self) -> &BTreeMap<String, ApiTenantRecord> {
        &self.api_tenants
    }

    /// Registered devices and the feedback log, as applied here.
    pub fn devices(&self) -> &DeviceState {
        &self.devices
    }

    fn revoke_key(&mut self, id: &str, until_ms: u64, now_ms: u64) -> ApplyResult {
        let before = self.revoked_keys.len();
        self.revoked_keys.retain(|_, until| *until > now_ms);
        let pruned = self.revoked_keys.len() != before;
        let result = if until_ms <= now_ms {
            // Expired already: nothing to remember.
            ApplyResult::Unchanged
        } else if self.revoked_keys.get(id).is_some_and(|u| *u >= until_ms) {
            ApplyResult::Unchanged
        } else if !self.revoked_keys.contains_key(id)
            && self.revoked_keys.len() >= super::command::REVOKED_KEYS_MAX
        {
            ApplyResult::Rejected(Rejection::RevocationsFull(self.revoked_keys.len()))
        } else {
            self.revoked_keys.insert(id.to_owned(), until_ms);
            ApplyResult::Applied
        };
        if pruned || result == ApplyResult::Applied {
            self.revocations_version += 1;
        }
        result
    }

    /// The `AssignShards` command that rebalances `region` onto its active members with
    /// bounded moves (see [`rebalance`]), or `None` if its map is already balanced.
    /// `shard_count` is used for a region without a map yet.
    ///
    /// # Errors
    /// [`RebalanceError`] if the region has no active member or `shard_count` is zero.
    pub fn rebalance_command(
        &self,
        region: &str,
        shard_count: usize,
    ) -> Result<Option<Command>, RebalanceError> {
        self.rebalance_command_without(region, shard_count, &BTreeSet::new())
    }

    /// As [`rebalance_command`](Self::rebalance_command), leaving out of the owners the
    /// active members in `unreachable` (the leader has not heard from them for a while):
    /// their shards go to the region's other active members. If every active member of the
    /// region is unreachable, none is left out (there is nobody to fail over to).
    ///
    /// # Errors
    /// As [`rebalance_command`](Self::rebalance_command).
    pub fn rebalance_command_without(
        &self,
        region: &str,
        shard_count: usize,
        unreachable: &BTreeSet<NodeId>,
    ) -> Result<Option<Command>, RebalanceError> {
        let active: Vec<NodeId> = self.eligible_owners(region).collect();
        let reachable: Vec<NodeId> = active
            .iter()
            .copied()
            .filter(|id| !unreachable.contains(id))
            .collect();
        let eligible = if reachable.is_empty() {
            active
        } else {
            reachable
        };
        let (epoch, current, count) = match self.shards.get(region) {
            Some(map) => (map.epoch, map.owners.as_slice(), map.owners.len()),
            None => (0, &[][..], shard_count),
        };
        let owners = rebalance(&eligible, current, count)?;
        if owners == current {
            return Ok(None);
        }
        Ok(Some(Command::AssignShards {
            region: region.to_owned(),
            epoch: epoch + 1,
            owners,
        }))
    }

    /// The state as snapshot bytes (rmp-serde, versioned), restorable with
    /// [`restore`](Self::restore). Equal states give equal bytes.
    ///
    /// # Errors
    /// [`SnapshotError::Encode`] if serialization fails.
    pub fn snapshot(&self) -> Result<Vec<u8>, SnapshotError> {
        let image = Image {
            version: SNAPSHOT_VERSION,
            applied_index: self.applied_index,
            members: self.members.clone(),
            shards: self.shards.clone(),
            tenants: self.tenants.clone(),
            provider_tokens: self.provider_tokens.clone(),
            revoked_keys: self.revoked_keys.clone(),
            devices: self.devices.image(),
            webhooks: self.webhooks.clone(),
            api_tenants: self.api_tenants.clone(),
            tokens_max: self.tokens.entries_max() as u64,
            tokens: self
                .tokens
                .iter()
                .map(|(key, entry)| ImageToken::from_entry(key, entry))
                .collect(),
        };
        rmp_serde::to_vec(&image).map_err(|e| SnapshotError::Encode(e.to_string()))
    }

    /// The state encoded in `bytes` by [`snapshot`](Self::snapshot).
    ///
    /// # Errors
    /// [`SnapshotError`] for bytes that are not a snapshot of this version. Never panics.
    pub fn restore(bytes: &[u8]) -> Result<Self, SnapshotError> {
        let image: Image =
            rmp_serde::from_slice(bytes).map_err(|e| SnapshotError::Malformed(e.to_string()))?;
        if image.version != SNAPSHOT_VERSION {
            return Err(SnapshotError::UnsupportedVersion {
                found: image.version,
                expected: SNAPSHOT_VERSION,
            });
        }
        let tokens_max = usize::try_from(image.tokens_max)
            .ok()
            .filter(|&max| max > 0)
            .ok_or_else(|| SnapshotError::Malformed("token table bound".to_owned()))?;
        let mut tokens = TokenTable::with_entries_max(tokens_max);
        for token in &image.tokens {
            let key = TokenKey::new(token.tenant.as_str(), token.token.as_str());
            // The table's entry is the join of its event times, so replaying each time
            // rebuilds it exactly.
            for event in token.events() {
                tokens
                    .apply(key.clone(), event)
                    .map_err(SnapshotError::TokenState)?;
            }
        }
        Ok(StateMachine {
            applied_index: image.applied_index,
            members: image.members,
            shards: image.shards,
            tenants: image.tenants,
            provider_tokens: image.provider_tokens,
            tokens,
            revoked_keys: image.revoked_keys,
            revocations_version: 0,
            devices: DeviceState::from_image(image.devices),
            webhooks: image.webhooks,
            api_tenants: image.api_tenants,
        })
    }

    #[track_caller]
    fn advance(&mut self, index: u64) {
        assert_eq!(
            index,
            self.applied_index + 1,
            "StateMachine: entries must be applied in order, exactly once"
        );
        self.applied_index = index;
    }

    fn eligible_owners<'a>(&'a self, region: &'a str) -> impl Iterator<Item = NodeId> + 'a {
        self.members
            .values()
            .filter(move |m| m.region == region && m.state == MemberState::Active)
            .map(|m| m.id)
    }

    fn assign_shards(&mut self, region: &str, epoch: u64, owners: &[NodeId]) -> ApplyResult {
        if let Some(map) = self.shards.get(region) {
            // sim-bugs: a deliberately re-introduced bug (accept a stale epoch), which the
            // simulator must catch as two owner maps for one (region, epoch).
            #[cfg(feature = "sim-bugs")]
            let stale = if herald_actors::sim_bugs::enabled(
                herald_actors::sim_bugs::SimBug::AcceptStaleEpoch,
            ) {
                epoch < map.epoch
            } else {
                epoch <= map.epoch
            };
            #[cfg(not(feature = "sim-bugs"))]
            let stale = epoch <= map.epoch;
            if stale {
                return ApplyResult::Rejected(Rejection::StaleEpoch {
                    current: map.epoch,
                    proposed: epoch,
                });
            }
            if owners.len() != map.owners.len() {
                return ApplyResult::Rejected(Rejection::ShardCountChanged {
                    current: map.owners.len(),
                    proposed: owners.len(),
                });
            }
        }
        let eligible: Vec<NodeId> = self.eligible_owners(region).collect();
        if let Some(bad) = owners.iter().find(|o| !eligible.contains(o)) {
            return ApplyResult::Rejected(Rejection::IneligibleOwner(*bad));
        }
        self.shards.insert(
            region.to_owned(),
            ShardMap {
                epoch,
                owners: owners.to_vec(),
            },
        );
        ApplyResult::Applied
    }

    fn set_provider_token(&mut self, key_id: &str, jwt: &str, issued_at: Timestamp) -> ApplyResult {
        let token = match ProviderToken::from_jwt(jwt) {
            Ok(token) => token,
            Err(e) => {
                return ApplyResult::Rejected(Rejection::InvalidProviderToken(e.to_string()));
            }
        };
        if token.key_id() != key_id || token.issued_at().as_secs() != issued_at.as_secs() {
            return ApplyResult::Rejected(Rejection::InvalidProviderToken(
                "key id or issue time does not match the JWT".to_owned(),
            ));
        }
        if let Some(current) = self.provider_tokens.get(key_id)
            && current.issued_at >= issued_at
        {
            return ApplyResult::Rejected(Rejection::StaleProviderToken);
        }
        self.provider_tokens.insert(
            key_id.to_owned(),
            ProviderTokenRecord {
                jwt: jwt.to_owned(),
                issued_at,
            },
        );
        // Forget the tokens of keys nobody minted for in a long time (released keys, removed
        // tenants): APNs refuses a token past 60 minutes anyway, and a key still served gets a
        // new one every 20–40 minutes. Keeps the map bounded by the keys in use.
        let forget_before = issued_at
            .as_secs()
            .saturating_sub(PROVIDER_TOKEN_FORGOTTEN_AFTER.as_secs());
        self.provider_tokens
            .retain(|_, record| record.issued_at.as_secs() >= forget_before);
        ApplyResult::Applied
    }
}

/// A key's replicated provider token is forgotten once a token of another key is applied
/// this much later (see `StateMachine::apply`, `SetProviderToken`).
pub const PROVIDER_TOKEN_FORGOTTEN_AFTER: std::time::Duration =
    std::time::Duration::from_secs(3 * 3600);

/// The member life cycle's allowed moves (`from != to`, `from` not `Removed`).
fn transition_allowed(from: MemberState, to: MemberState) -> bool {
    use MemberState::{Active, Draining, Joining, Removed};
    matches!(
        (from, to),
        (Joining, Active) | (Active, Draining) | (Draining, Active) | (_, Removed)
    )
}

#[derive(Serialize, Deserialize)]
struct Image {
    version: u16,
    applied_index: u64,
    members: BTreeMap<NodeId, Member>,
    shards: BTreeMap<String, ShardMap>,
    tenants: BTreeMap<String, Tenant>,
    provider_tokens: BTreeMap<String, ProviderTokenRecord>,
    tokens_max: u64,
    tokens: Vec<ImageToken>,
    /// Added after version 1 shipped; absent in older images.
    #[serde(default)]
    revoked_keys: BTreeMap<String, u64>,
    /// Added after version 1 shipped; absent in older images.
    #[serde(default)]
    devices: DevicesImage,
    /// Added after version 1 shipped; absent in older images.
    #[serde(default)]
    webhooks: BTreeMap<String, WebhookRecord>,
    /// Added after version 1 shipped; absent in older images.
    #[serde(default)]
    api_tenants: BTreeMap<String, ApiTenantRecord>,
}

#[derive(Serialize, Deserialize)]
struct ImageToken {
    tenant: String,
    token: String,
    registered_ms: Option<u64>,
    unregistered_ms: Option<u64>,
    invalidated_ms: Option<u64>,
}

impl ImageToken {
    fn from_entry(key: &TokenKey, entry: &TokenEntry) -> Self {
        ImageToken {
            tenant: key.tenant().to_owned(),
            token: key.token().to_owned(),
            registered_ms: entry.registered_at().map(Timestamp::as_millis),
            unregistered_ms: entry.unregistered_at().map(Timestamp::as_millis),
            invalidated_ms: entry.invalidated_at().map(Timestamp::as_millis),
        }
    }

    fn events(&self) -> impl Iterator<Item = TokenEvent> {
        let at = Timestamp::from_millis;
        [
            self.registered_ms
                .map(|ms| TokenEvent::Registered { at: at(ms) }),
            self.unregistered_ms
                .map(|ms| TokenEvent::Unregistered { at: at(ms) }),
            self.invalidated_ms
                .map(|ms| TokenEvent::Invalidated { at: at(ms) }),
        ]
        .into_iter()
        .flatten()
    }
}

#[cfg(test)]
mod tests;
