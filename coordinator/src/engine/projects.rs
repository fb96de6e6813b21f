//! Projects on one coordinator (issue 26): one [`Engine`] per project, each with its own
//! graph, rollouts, view of the targets and rollout exclusivity, all sharing the state store,
//! the agent registry and the leadership term. `default`'s engine takes the fleet lock and
//! leads for all of them (its term is theirs: losing it cancels every project's work), so
//! two projects' rollouts run at the same time and a standby resumes both.
//!
//! Records written before projects existed have no project and belong to `default`; every
//! request that names none is `default`'s.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;
use tokio_util::task::TaskTracker;

use flotilla_core::project::Project;
use flotilla_revision::Graph;

use super::{Engine, EngineError, durable, live, view};

/// Every project's engine on this coordinator.
pub struct ProjectEngines {
    default: Arc<Engine>,
    others: BTreeMap<Project, Arc<Engine>>,
}

impl ProjectEngines {
    /// `default` and an engine per other project with its graph; they lead with `default`.
    pub fn new(default: Arc<Engine>, graphs: Vec<(Project, Arc<Graph>)>) -> Arc<ProjectEngines> {
        let others: BTreeMap<Project, Arc<Engine>> = graphs
            .into_iter()
            .filter(|(p, _)| !p.is_default())
            .map(|(p, g)| (p.clone(), default.sibling(p, g)))
            .collect();
        default.adopt_siblings(others.values().cloned().collect());
        Arc::new(ProjectEngines { default, others })
    }

    /// The engine of project `default` (which also leads).
    pub fn default_engine(&self) -> &Arc<Engine> {
        &self.default
    }

    /// The engine of the project a request names (empty: `default`).
    pub fn get(&self, name: &str) -> Result<&Arc<Engine>, EngineError> {
        let project =
            Project::parse(name).map_err(|e| EngineError::InvalidArgument(e.to_string()))?;
        self.of(&project)
    }

    /// The engine of `project`.
    pub fn of(&self, project: &Project) -> Result<&Arc<Engine>, EngineError> {
        if project.is_default() {
            return Ok(&self.default);
        }
        self.others.get(project).ok_or_else(|| {
            EngineError::InvalidArgument(format!(
                "project {project} has no migrations on this coordinator: start the \
                 coordinator with --project-migrations {project}=DIR, or check --project"
            ))
        })
    }

    /// Every project's engine, `default` first.
    pub fn all(&self) -> impl Iterator<Item = &Arc<Engine>> {
        std::iter::once(&self.default).chain(self.others.values())
    }

    /// The engine of the project rollout `id` belongs to.
    pub async fn of_rollout(&self, id: &str) -> Result<&Arc<Engine>, EngineError> {
        if let Some(term) = self.default.term() {
            for engine in self.all() {
                if engine.live.record(id, term.token).is_some() {
                    return Ok(engine);
                }
            }
        }
        let (rec, _) = self.default.get(id).await?;
        self.of(&rec.spec.project())
    }
}

impl Engine {
    /// An engine for `project` with its own graph, sharing this one's store, registry,
    /// configuration and leadership term; it leads when this one does (`adopt_siblings`).
    pub(crate) fn sibling(&self, project: Project, graph: Arc<Graph>) -> Arc<Engine> {
        Arc::new(Engine {
            project,
            graph,
            store: self.store.clone(),
            registry: self.registry.clone(),
            config: self.config.clone(),
            term: self.term.clone(),
            siblings: std::sync::OnceLock::new(),
            updates: broadcast::channel(1024).0,
            controls: Mutex::new(HashMap::new()),
            tasks: TaskTracker::new(),
            view: view::FleetView::default(),
            live: live::LiveRollouts::default(),
            store_health: durable::StoreHealth::default(),
        })
    }

    /// Make `siblings` lead with this engine: resumed when it takes the lock, waited for when
    /// it loses it. Once only.
    pub(crate) fn adopt_siblings(&self, siblings: Vec<Arc<Engine>>) {
        let _ = self.siblings.set(siblings);
    }

    pub(super) fn siblings(&self) -> &[Arc<Engine>] {
        self.siblings.get().map_or(&[], Vec::as_slice)
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
