//! The engine's supervision tree and restart policy.
//!
//! ```text
//! EngineSupervisor
//! ├── DeviceShard 0..S        (by shard number)
//! └── Tenant "a", "b", …      (by tenant id)
//!     └── Connection 1..C     (by connection number; supervised by the tenant)
//! ```
//! - One-for-one: a failed child is restarted alone, with its latest configuration; a
//!   restarted shard replays its WAL, a restarted tenant reopens its pool.
//! - Restart intensity: at most [`RESTART_INTENSITY_MAX`](crate::limits::RESTART_INTENSITY_MAX)
//!   restarts of one child within [`RESTART_WINDOW`](crate::limits::RESTART_WINDOW); past that
//!   the supervisor escalates: it stops every child in order and stops itself, and the handle
//!   answers `Stopped`.
//! - Children live in `BTreeMap`s by logical id (shard number, tenant id), never by ractor's
//!   ids, and are stopped explicitly in that order (shards first, so no push is handed to a
//!   stopping tenant), because ractor's own child set is a `HashMap`.
//! - No actor is registered by name, so engines in one process (or simulated hosts) never meet.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use tokio::time::Instant;

use crate::engine::{EngineShared, TenantError, Tuning};
use crate::shard::{ShardActor, ShardArgs, ShardMsg};
use crate::tenant::{TenantActor, TenantArgs, TenantConfig, TenantMsg};

/// Restart times of one child, for the restart-intensity limit.
#[derive(Debug, Default)]
pub(crate) struct RestartLog {
    times: VecDeque<Instant>,
}

impl RestartLog {
    /// Record a restart at `now`; false if it would exceed the intensity limit.
    pub(crate) fn allow(&mut self, now: Instant, tuning: &Tuning) -> bool {
        while self
            .times
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) > tuning.restart_window)
        {
            self.times.pop_front();
        }
        if self.times.len() >= tuning.restart_intensity_max {
            return false;
        }
        self.times.push_back(now);
        true
    }
}

/// The engine supervisor (see the [module docs](self)).
#[derive(Debug)]
pub(crate) struct EngineSupervisor;

/// What the supervisor starts from.
#[derive(Debug)]
pub(crate) struct SupervisorArgs {
    pub(crate) engine: Arc<EngineShared>,
    pub(crate) tenants: Vec<TenantConfig>,
}

/// The supervisor's messages.
#[derive(Debug)]
pub(crate) enum SupervisorMsg {
    AddTenant(Box<TenantConfig>, RpcReplyPort<Result<(), TenantError>>),
    UpdateTenant(Box<TenantConfig>, RpcReplyPort<Result<(), TenantError>>),
    RemoveTenant(String, RpcReplyPort<Result<(), TenantError>>),
    /// Stop every child in order, then stop.
    Shutdown(RpcReplyPort<()>),
    /// Test hook: crash shard `n`.
    #[cfg_attr(not(feature = "test-util"), allow(dead_code))] // sent by `Herald`'s test hooks
    CrashShard(u32, RpcReplyPort<bool>),
}

#[derive(Debug)]
struct TenantChild {
    actor: ActorRef<TenantMsg>,
    config: TenantConfig,
    restarts: RestartLog,
    removing: bool,
}

#[derive(Debug)]
struct ShardChild {
    actor: ActorRef<ShardMsg>,
    load: Arc<AtomicUsize>,
    restarts: RestartLog,
}

/// The supervisor's state.
#[derive(Debug)]
pub(crate) struct SupervisorState {
    engine: Arc<EngineShared>,
    shards: BTreeMap<u32, ShardChild>,
    tenants: BTreeMap<String, TenantChild>,
    stopping: bool,
}

impl Actor for EngineSupervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<SupervisorMsg>,
        args: SupervisorArgs,
    ) -> Result<SupervisorState, ActorProcessingErr> {
        let mut state = SupervisorState {
            engine: args.engine,
            shards: BTreeMap::new(),
            tenants: BTreeMap::new(),
            stopping: false,
        };
        // Tenants first: recovered shards start dispatching at once.
        for config in args.tenants {
            state.spawn_tenant(&myself, config).await?;
        }
        for shard in 0..state.engine.shard_count {
            let load = state.engine.shard_load(shard);
            state.spawn_shard(&myself, shard, load).await?;
        }
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<SupervisorMsg>,
        msg: SupervisorMsg,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SupervisorMsg::AddTenant(config, reply) => {
                let result = if state.tenants.contains_key(&config.id) {
                    Err(TenantError::Exists(config.id.clone()))
                } else if let Err(e) = config.validate() {
                    Err(TenantError::Invalid(e))
                } else {
                    state
                        .spawn_tenant(&myself, *config)
                        .await
                        .map_err(|e| TenantError::Invalid(e.to_string()))
                };
                let _ = reply.send(result);
            }
            SupervisorMsg::UpdateTenant(config, reply) => {
                let result = state.update_tenant(*config).await;
                let _ = reply.send(result);
            }
            SupervisorMsg::RemoveTenant(id, reply) => {
                let result = match state.tenants.get_mut(&id) {
                    None => Err(TenantError::Unknown(id.clone())),
                    Some(child) => {
                        child.removing = true;
                        state.engine.remove_tenant(&id);
                        let _ = child.actor.stop_and_wait(None, Some(STOP_WAIT)).await;
                        state.tenants.remove(&id);
                        Ok(())
                    }
                };
                let _ = reply.send(result);
            }
            SupervisorMsg::Shutdown(reply) => {
                state.stop_children().await;
                let _ = reply.send(());
                myself.stop(Some("shutdown".into()));
            }
            SupervisorMsg::CrashShard(shard, reply) => {
                let crashed = state
                    .shards
                    .get(&shard)
                    .is_some_and(|c| c.actor.send_message(ShardMsg::Crash).is_ok());
                let _ = reply.send(crashed);
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<SupervisorMsg>,
        event: SupervisionEvent,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        let cell = match event {
            SupervisionEvent::ActorFailed(cell, error) => {
                tracing::warn!(%error, "engine child failed");
                cell
            }
            SupervisionEvent::ActorTerminated(cell, _, _) => cell,
            _ => return Ok(()),
        };
        if state.stopping {
            return Ok(());
        }
        let now = Instant::now();
        if let Some(shard) = state.shard_of(&cell) {
            let Some(child) = state.shards.get_mut(&shard) else {
                return Ok(());
            };
            if !child.restarts.allow(now, &state.engine.tuning) {
                return state
                    .escalate(&myself, format!("shard {shard} restarts too often"))
                    .await;
            }
            let load = child.load.clone();
            tracing::info!(shard, "restarting shard");
            if let Err(e) = state.spawn_shard(&myself, shard, load).await {
                return state
                    .escalate(&myself, format!("shard {shard} did not restart: {e}"))
                    .await;
            }
        } else if let Some(id) = state.tenant_of(&cell) {
            let Some(child) = state.tenants.get_mut(&id) else {
                return Ok(());
            };
            if child.removing {
                return Ok(());
            }
            if !child.restarts.allow(now, &state.engine.tuning) {
                return state
                    .escalate(&myself, format!("tenant {id} restarts too often"))
                    .await;
            }
            let config = child.config.clone();
            tracing::info!(tenant = %id, "restarting tenant");
            if let Err(e) = state.spawn_tenant(&myself, config).await {
                return state
                    .escalate(&myself, format!("tenant {id} did not restart: {e}"))
                    .await;
            }
        }
        Ok(())
    }
}

const STOP_WAIT: Duration = Duration::from_secs(5);

impl SupervisorState {
    async fn spawn_shard(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        shard: u32,
        load: Arc<AtomicUsize>,
    ) -> Result<(), ActorProcessingErr> {
        let args = ShardArgs {
            shard,
            engine: self.engine.clone(),
            load: load.clone(),
        };
        let (actor, _) = Actor::spawn_linked(None, ShardActor, args, myself.get_cell()).await?;
        self.engine.set_shard_actor(shard, actor.clone());
        let restarts = self
            .shards
            .remove(&shard)
            .map(|c| c.restarts)
            .unwrap_or_default();
        self.shards.insert(
            shard,
            ShardChild {
                actor,
                load,
                restarts,
            },
        );
        Ok(())
    }

    async fn spawn_tenant(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        config: TenantConfig,
    ) -> Result<(), ActorProcessingErr> {
        let args = TenantArgs {
            config: config.clone(),
            engine: self.engine.clone(),
        };
        let (actor, _) = Actor::spawn_linked(None, TenantActor, args, myself.get_cell()).await?;
        self.engine
            .set_tenant_actor(&config.id, actor.clone(), config.queue_max);
        let restarts = self
            .tenants
            .remove(&config.id)
            .map(|c| c.restarts)
            .unwrap_or_default();
        self.tenants.insert(
            config.id.clone(),
            TenantChild {
                actor,
                config,
                restarts,
                removing: false,
            },
        );
        Ok(())
    }

    async fn update_tenant(&mut self, config: TenantConfig) -> Result<(), TenantError> {
        config.validate().map_err(TenantError::Invalid)?;
        let child = self
            .tenants
            .get_mut(&config.id)
            .ok_or_else(|| TenantError::Unknown(config.id.clone()))?;
        let answer = ractor::call_t!(
            child.actor,
            |reply| TenantMsg::Update(Box::new(config.clone()), reply),
            self.engine.tuning.call_timeout.as_millis() as u64
        );
        match answer {
            Ok(Ok(())) => {
                self.engine
                    .set_tenant_actor(&config.id, child.actor.clone(), config.queue_max);
                child.config = config;
                Ok(())
            }
            Ok(Err(e)) => Err(TenantError::Invalid(e)),
            Err(e) => Err(TenantError::Unavailable(e.to_string())),
        }
    }

    fn shard_of(&self, cell: &ActorCell) -> Option<u32> {
        self.shards
            .iter()
            .find(|(_, c)| c.actor.get_id() == cell.get_id())
            .map(|(n, _)| *n)
    }

    fn tenant_of(&self, cell: &ActorCell) -> Option<String> {
        self.tenants
            .iter()
            .find(|(_, c)| c.actor.get_id() == cell.get_id())
            .map(|(id, _)| id.clone())
    }

    /// Stop shards (in shard order), then tenants (in id order), waiting for each.
    async fn stop_children(&mut self) {
        self.stopping = true;
        for child in self.shards.values() {
            let _ = child.actor.stop_and_wait(None, Some(STOP_WAIT)).await;
        }
        for child in self.tenants.values() {
            let _ = child.actor.stop_and_wait(None, Some(STOP_WAIT)).await;
        }
    }

    async fn escalate(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        why: String,
    ) -> Result<(), ActorProcessingErr> {
        tracing::error!(%why, "restart intensity exceeded; stopping the engine");
        self.engine.mark_failed(&why);
        self.stop_children().await;
        myself.stop(Some(why));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_intensity_is_per_window() {
        let tuning = Tuning::default();
        let mut log = RestartLog::default();
        let t0 = Instant::now();
        for _ in 0..tuning.restart_intensity_max {
            assert!(log.allow(t0, &tuning));
        }
        assert!(!log.allow(t0, &tuning));
        // Once the window has passed, restarts are allowed again.
        let later = t0 + tuning.restart_window + Duration::from_millis(1);
        assert!(log.allow(later, &tuning));
    }
}
