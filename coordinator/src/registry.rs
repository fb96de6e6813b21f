//! The fleet registry: which agents exist and how to reach them. Three sources, merged:
//! embedded agents (in-process), a static fleet file, and agents that registered themselves
//! over the API (a leased key in the state store, so a dead agent drops out).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use flotilla_rpc::tls::ClientTls;

use crate::fleet::{AgentClient, RemoteAgent, RequestHook};
use crate::store::{StateStore, StoreError};

/// Store key prefix of agent registrations.
pub const AGENTS_PREFIX: &str = "agents/";

/// A static fleet file (TOML):
/// ```toml
/// [[agents]]
/// id = "pg-eu-1"
/// address = "http://10.0.0.5:7700"
/// ```
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetFile {
    #[serde(default)]
    pub agents: Vec<FleetAgent>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FleetAgent {
    pub id: String,
    pub address: String,
}

/// A fleet file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum FleetFileError {
    #[error("cannot read fleet file {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("fleet file {}: {source}", .path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
}

impl FleetFile {
    pub fn load(path: &Path) -> Result<FleetFile, FleetFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| FleetFileError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| FleetFileError::Parse {
            path: path.to_owned(),
            source,
        })
    }
}

/// A registration that could not be recorded.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error(transparent)]
    Encode(#[from] serde_json::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A registration as stored (value of `agents/<id>`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Registration {
    pub id: String,
    pub address: String,
    pub agent_version: String,
    pub targets: Vec<String>,
}

/// All agents the coordinator can reach.
pub struct Registry {
    fixed: Vec<Arc<dyn AgentClient>>,
    store: Arc<dyn StateStore>,
    hook: Option<RequestHook>,
    /// How registered agents are dialed (TLS for `https://` addresses).
    tls: ClientTls,
    /// Clients for registered agents, reused while the address stays the same.
    dynamic: Mutex<BTreeMap<String, Arc<dyn AgentClient>>>,
    pub ttl: Duration,
}

impl Registry {
    pub fn new(
        fixed: Vec<Arc<dyn AgentClient>>,
        store: Arc<dyn StateStore>,
        hook: Option<RequestHook>,
        tls: ClientTls,
        ttl: Duration,
    ) -> Registry {
        Registry {
            fixed,
            store,
            hook,
            tls,
            dynamic: Mutex::new(BTreeMap::new()),
            ttl,
        }
    }

    /// Record (or refresh) an agent's registration; it lapses `ttl` after the last call.
    pub async fn register(&self, reg: &Registration) -> Result<(), RegisterError> {
        let value = serde_json::to_vec(reg)?;
        self.store
            .put_leased(&format!("{AGENTS_PREFIX}{}", reg.id), value, self.ttl)
            .await?;
        Ok(())
    }

    /// Heartbeat: extend a live registration's lease. False when the registration lapsed
    /// (the agent must register again).
    pub async fn refresh(&self, agent_id: &str) -> Result<bool, StoreError> {
        if self.fixed.iter().any(|a| a.id() == agent_id) {
            return Ok(true);
        }
        let key = format!("{AGENTS_PREFIX}{agent_id}");
        match self.store.get(&key).await? {
            Some(value) => {
                self.store.put_leased(&key, value, self.ttl).await?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Whether `agent_id` is currently registered (or fixed).
    pub async fn knows(&self, agent_id: &str) -> bool {
        if self.fixed.iter().any(|a| a.id() == agent_id) {
            return true;
        }
        matches!(
            self.store.get(&format!("{AGENTS_PREFIX}{agent_id}")).await,
            Ok(Some(_))
        )
    }

    /// Every agent: fixed ones first, then live registrations, sorted by id, deduplicated.
    /// The client of agent `id` as last listed (fixed agents, or registrations seen by the
    /// last `agents()` call), without reading the store.
    pub fn known(&self, id: &str) -> Option<Arc<dyn AgentClient>> {
        if let Some(a) = self.fixed.iter().find(|a| a.id() == id) {
            return Some(a.clone());
        }
        let dynamic = self.dynamic.lock().unwrap_or_else(|p| p.into_inner());
        dynamic.get(id).cloned()
    }

    pub async fn agents(&self) -> Result<Vec<Arc<dyn AgentClient>>, StoreError> {
        let mut out: Vec<Arc<dyn AgentClient>> = self.fixed.clone();
        let regs = self.store.list(AGENTS_PREFIX).await?;
        let mut dynamic = self.dynamic.lock().unwrap_or_else(|p| p.into_inner());
        let mut live = BTreeMap::new();
        for (_, value) in regs {
            let Ok(reg) = serde_json::from_slice::<Registration>(&value) else {
                continue;
            };
            if out.iter().any(|a| a.id() == reg.id) {
                continue;
            }
            let client = match dynamic.get(&reg.id) {
                Some(c) if c.address() == reg.address => c.clone(),
                _ => match RemoteAgent::new(&reg.id, &reg.address, self.hook.clone(), &self.tls) {
                    Ok(c) => Arc::new(c) as Arc<dyn AgentClient>,
                    Err(e) => {
                        tracing::warn!(agent = %reg.id, "skipping registration: {e}");
                        continue;
                    }
                },
            };
            live.insert(reg.id.clone(), client);
        }
        *dynamic = live.clone();
        out.extend(live.into_values());
        Ok(out)
    }
}
