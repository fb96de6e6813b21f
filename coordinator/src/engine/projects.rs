//! Projects on one coordinator (issue 26): one [`Engine`] per project, each with its own
//! default migration set (optional: the CLI uploads the set it plans with), rollouts, view of the targets and rollout exclusivity, all sharing the state store,
//! the agent registry and the leadership term. `default`'s engine takes the fleet lock and
//! leads for all of them (its term is theirs: losing it cancels every project's work), so
//! two projects' rollouts run at the same time and a standby resumes both.
//!
//! Records written before projects existed have no project and belong to `default`; every
//! request that names none is `default`'s.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;
use tokio_util::task::TaskTracker;

use super::sets::{DefaultSet, SetCache};
use super::{Engine, EngineError, durable, live, view};
use flotilla_core::project::Project;

/// Every project's engine on this coordinator: `default`'s, which leads and holds the others
/// (see [`Engine::project_engine`]).
pub struct ProjectEngines {
    default: Arc<Engine>,
}

impl ProjectEngines {
    /// `default` and an engine per project the coordinator was started with (with its
    /// default set, if any); other projects get theirs on first use. All lead with
    /// `default`.
    pub fn new(
        default: Arc<Engine>,
        sets: Vec<(Project, Option<DefaultSet>)>,
    ) -> Arc<ProjectEngines> {
        for (project, set) in sets {
            if !project.is_default() {
                default.add_sibling(project, set);
            }
        }
        Arc::new(ProjectEngines { default })
    }

    /// The engine of project `default` (which also leads).
    pub fn default_engine(&self) -> &Arc<Engine> {
        &self.default
    }

    /// The engine of the project a request names (empty: `default`).
    pub fn get(&self, name: &str) -> Result<Arc<Engine>, EngineError> {
        let project =
            Project::parse(name).map_err(|e| EngineError::InvalidArgument(e.to_string()))?;
        Ok(self.default.project_engine(&project))
    }

    /// Every project's engine so far, `default` first.
    pub fn all(&self) -> Vec<Arc<Engine>> {
        std::iter::once(self.default.clone())
            .chain(self.default.siblings())
            .collect()
    }

    /// The engine of the project rollout `id` belongs to.
    pub async fn of_rollout(&self, id: &str) -> Result<Arc<Engine>, EngineError> {
        if let Some(term) = self.default.term() {
            for engine in self.all() {
                if engine.live.record(id, term.token).is_some() {
                    return Ok(engine);
                }
            }
        }
        let rec = self.default.get_record(id).await?;
        Ok(self.default.project_engine(&rec.spec.project()))
    }
}

impl Engine {
    /// An engine for `project` with its own default set (if any), sharing this one's store, registry,
    /// configuration and leadership term; it leads when this one does (`adopt_siblings`).
    pub(crate) fn sibling(&self, project: Project, set: Option<DefaultSet>) -> Arc<Engine> {
        Arc::new(Engine {
            project,
            sets: SetCache::new(set),
            store: self.store.clone(),
            registry: self.registry.clone(),
            config: self.config.clone(),
            term: self.term.clone(),
            siblings: Mutex::new(Vec::new()),
            updates: broadcast::channel(1024).0,
            controls: Mutex::new(HashMap::new()),
            tasks: TaskTracker::new(),
            view: view::FleetView::default(),
            live: live::LiveRollouts::default(),
            store_health: durable::StoreHealth::default(),
        })
    }

    /// The engine of `project` (called on `default`'s): itself, a sibling, or a new sibling
    /// without a default set (its calls upload theirs). A new sibling leads with this engine
    /// from then on; rollouts it may have from an earlier leader are found when this engine
    /// takes the lock (`adopt_recorded_projects`).
    pub(crate) fn project_engine(self: &Arc<Self>, project: &Project) -> Arc<Engine> {
        if project.is_default() || self.project == *project {
            return self.clone();
        }
        self.add_sibling(project.clone(), None)
    }

    /// The sibling of `project`, created (with `set` as its default set) when missing.
    pub(crate) fn add_sibling(&self, project: Project, set: Option<DefaultSet>) -> Arc<Engine> {
        let mut siblings = self.siblings.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = siblings.iter().find(|e| e.project == project) {
            return e.clone();
        }
        let engine = self.sibling(project, set);
        siblings.push(engine.clone());
        engine
    }

    /// The engines leading with this one, as of now.
    pub(super) fn siblings(&self) -> Vec<Arc<Engine>> {
        self.siblings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// On taking the lock: an engine for every project that has rollout records, so that a
    /// project this coordinator has not served yet has its running rollouts resumed.
    pub(super) async fn adopt_recorded_projects(self: &Arc<Self>) -> Result<(), EngineError> {
        for (key, value) in self.store.list("rollouts/").await? {
            match serde_json::from_slice::<crate::rollout::RolloutRecord>(&value) {
                Ok(r) if !r.state.is_terminal() => {
                    self.project_engine(&r.spec.project());
                }
                Ok(_) => {}
                Err(e) => tracing::warn!("skipping unreadable {key}: {e}"),
            }
        }
        Ok(())
    }

    pub fn project(&self) -> &Project {
        &self.project
    }

    /// The project as agent requests carry it: empty for `default` (what agents of earlier
    /// versions, which know no projects, read too).
    pub(crate) fn wire_project(&self) -> String {
        if self.project.is_default() {
            String::new()
        } else {
            self.project.to_string()
        }
    }
}
