//! The workspaces service: workspaces, the projects inside them, and AI zones. Handlers
//! (`api/workspaces.rs`) parse and render.
//!
//! Workspace isolation: a workspace's objects (the workspace itself, its projects, the AI zones
//! dedicated to it, its deployments) are authorized with `Scope { workspace: Some(name) }`, so a
//! role binding scoped to another workspace does not reach them and the caller gets the
//! object's 404, exactly as if it did not exist ([`crate::authz::decide`]'s `Hidden`). Lists are
//! filtered in SQL to the workspaces where the caller's bindings grant the read permission.
//!
//! Who may do what (the seed's permission strings; `deployment_admin`'s `*` grants all of these,
//! `viewer`'s `*:read` every read):
//! * workspaces: read `workspace:read`; create and delete only with an unscoped binding granting
//!   `workspace:manage` (they are the platform's partition); change the description or owner
//!   with `workspace:manage` in that workspace. A workspace's name never changes: bindings,
//!   projects and deployments name it.
//! * projects: `project:read` / `project:manage` in their workspace; a project never moves.
//! * AI zones: infrastructure, created and changed only with an unscoped `aizone:manage`; read
//!   with `aizone:read` — a shared zone (no workspace) by any binding, a zone dedicated to a
//!   workspace only with a binding there. Only deployments of that workspace may use it.

use std::collections::BTreeMap;

use axum::http::StatusCode;
use serde_json::json;

use crate::AppState;
use crate::api::{ApiError, ApiResult, ErrorCode};
use crate::authz::{Permission, Scope, perm};
use crate::context::RequestContext;
use crate::deployments::Deployments;
use crate::ids::{now_ms, random_id};
use crate::reconcile::Parsed;
use crate::store::{
    AiZoneChange, AiZoneRecord, DEFAULT_WORKSPACE, DeploymentFilter, ProjectDelete, ProjectRecord, Renamed,
    StatusSummary, WorkspaceDelete, WorkspaceRecord,
};

pub const MAX_DESCRIPTION_LEN: usize = crate::environments::MAX_DESCRIPTION_LEN;
pub const MAX_OWNER_LEN: usize = 128;

/// A workspace name no role binding can hold (names are `[a-z0-9-]`): what the caller may do
/// there is what its unscoped bindings alone allow in every workspace.
pub const ANY_WORKSPACE: &str = "*";

/// The scope of an object of `workspace`.
pub fn scope(workspace: &str) -> Scope<'_> {
    Scope { environment: None, workspace: Some(workspace) }
}

/// Where the caller may do `p` on workspace objects: `None` in every workspace (an unscoped
/// binding grants it), else in these (the workspaces of its scoped bindings that grant it).
pub fn workspaces_allowing(ctx: &RequestContext, p: Permission) -> Option<Vec<String>> {
    if ctx.allows(p, scope(ANY_WORKSPACE)) {
        return None;
    }
    let mut names: Vec<String> = ctx.principal.roles.iter().filter_map(|b| b.workspace.clone()).collect();
    names.sort_unstable();
    names.dedup();
    names.retain(|w| ctx.allows(p, scope(w)));
    Some(names)
}

/// The workspaces the caller's bindings are scoped to (each once).
pub fn bound_workspaces(ctx: &RequestContext) -> Vec<&str> {
    let mut names: Vec<&str> = ctx.principal.roles.iter().filter_map(|b| b.workspace.as_deref()).collect();
    names.sort_unstable();
    names.dedup();
    names
}

pub fn workspace_not_found(key: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, ErrorCode::WorkspaceNotFound, format!("workspace {key:?} not found"))
        .with_details(json!({ "workspaceId": key }))
}

/// A workspace named in a request body that does not exist, or that the caller's bindings do
/// not reach (the same answer, so nothing leaks).
pub fn named_workspace_not_found(key: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, ErrorCode::WorkspaceNotFound, format!("workspace {key:?} not found"))
        .with_details(json!({ "field": "workspace", "workspaceId": key }))
}

fn project_not_found(id: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, ErrorCode::ProjectNotFound, format!("project {id:?} not found"))
        .with_details(json!({ "projectId": id }))
}

fn zone_not_found(key: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, ErrorCode::AiZoneNotFound, format!("AI zone {key:?} not found"))
        .with_details(json!({ "aiZoneId": key }))
}

/// 400: a deployment names a project its workspace does not have.
pub fn project_not_in_workspace(workspace: &str, key: &str) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        ErrorCode::ProjectNotFound,
        format!("workspace {workspace:?} has no project {key:?}"),
    )
    .with_details(json!({ "field": "projectId", "projectId": key }))
}

/// 400: a deployment names an AI zone that does not exist or is dedicated to another workspace.
pub fn zone_not_usable(workspace: &str, key: &str) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        ErrorCode::AiZoneNotFound,
        format!("no AI zone {key:?} usable by workspace {workspace:?}"),
    )
    .with_details(json!({ "field": "aiZoneId", "aiZoneId": key }))
}

fn invalid_name(field: &str, name: &str) -> ApiResult<()> {
    crate::model::validate_name(field, name).map_err(crate::deployments::invalid)
}

fn validate_description(d: &str) -> ApiResult<()> {
    if d.len() > MAX_DESCRIPTION_LEN {
        return Err(ApiError::validation("description", format!("at most {MAX_DESCRIPTION_LEN} bytes")));
    }
    Ok(())
}

fn validate_owner(o: &str) -> ApiResult<()> {
    if o.trim().is_empty() || o.len() > MAX_OWNER_LEN || o.chars().any(char::is_control) {
        return Err(ApiError::validation("owner", format!("1 to {MAX_OWNER_LEN} bytes without control characters")));
    }
    Ok(())
}

/// `provider` and `region`: a label value (at most 63 characters of `[A-Za-z0-9._-]`, may be
/// empty).
fn validate_label_value(field: &str, v: &str) -> ApiResult<()> {
    let ok = v.len() <= ferry_protocol::limits::MAX_LABEL_LEN
        && v.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ApiError::validation(field, format!("invalid {field} {v:?}: at most 63 characters of [A-Za-z0-9._-]")))
    }
}

// ---- workspaces -----------------------------------------------------------------------------

pub struct Workspaces<'a> {
    state: &'a AppState,
}

impl<'a> Workspaces<'a> {
    pub fn new(state: &'a AppState) -> Self {
        Self { state }
    }

    /// The workspaces the caller may read, by name; paged in SQL.
    pub async fn list(&self, ctx: &RequestContext, offset: i64, limit: i64) -> ApiResult<(Vec<WorkspaceRecord>, i64)> {
        let visible = workspaces_allowing(ctx, perm::WORKSPACE_READ);
        Ok(self.state.store.list_workspaces(visible.as_deref(), offset, limit).await?)
    }

    /// By id or name.
    pub async fn get(&self, ctx: &RequestContext, key: &str) -> ApiResult<WorkspaceRecord> {
        let w = self.state.store.get_workspace(key).await?.ok_or_else(|| workspace_not_found(key))?;
        ctx.require(perm::WORKSPACE_READ, scope(&w.name), || workspace_not_found(key))?;
        Ok(w)
    }

    /// The workspace a request body names (by id or name), whatever the caller may do there:
    /// the caller then authorizes what it does in it, with [`named_workspace_not_found`] as the
    /// answer when its bindings do not reach the workspace.
    pub async fn named(&self, key: &str) -> ApiResult<WorkspaceRecord> {
        self.state.store.get_workspace(key).await?.ok_or_else(|| named_workspace_not_found(key))
    }

    pub async fn create(
        &self,
        ctx: &RequestContext,
        name: String,
        description: String,
        owner: Option<String>,
    ) -> ApiResult<WorkspaceRecord> {
        invalid_name("name", &name)?;
        validate_description(&description)?;
        if let Some(o) = &owner {
            validate_owner(o)?;
        }
        ctx.require_global(perm::WORKSPACE_MANAGE)?;
        let now = now_ms();
        let w = WorkspaceRecord {
            id: random_id("ws"),
            name,
            description,
            owner: owner.unwrap_or_else(|| ctx.principal.audit_name()),
            created_at: now,
            updated_at: now,
        };
        let audit = ctx.audit("workspace.create", &w.id, json!({ "name": w.name, "owner": w.owner }));
        if !self.state.store.create_workspace(&w, &audit).await? {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                ErrorCode::WorkspaceExists,
                format!("workspace {:?} already exists", w.name),
            ));
        }
        Ok(w)
    }

    /// Changes the description and/or the owner.
    pub async fn update(
        &self,
        ctx: &RequestContext,
        key: &str,
        description: Option<String>,
        owner: Option<String>,
    ) -> ApiResult<WorkspaceRecord> {
        if let Some(d) = &description {
            validate_description(d)?;
        }
        if let Some(o) = &owner {
            validate_owner(o)?;
        }
        let w = self.state.store.get_workspace(key).await?.ok_or_else(|| workspace_not_found(key))?;
        ctx.require(perm::WORKSPACE_MANAGE, scope(&w.name), || workspace_not_found(key))?;
        let audit =
            ctx.audit("workspace.update", &w.id, json!({ "name": w.name, "description": description, "owner": owner }));
        self.state
            .store
            .update_workspace(&w.id, description.as_deref(), owner.as_deref(), &audit, now_ms())
            .await?
            .ok_or_else(|| workspace_not_found(key))
    }

    /// Deletes an empty workspace (and the AI zones dedicated to it); `default` stays.
    pub async fn delete(&self, ctx: &RequestContext, key: &str) -> ApiResult<()> {
        let w = self.state.store.get_workspace(key).await?.ok_or_else(|| workspace_not_found(key))?;
        // Hidden first (404 for other teams), then the global permission (403 for this team's
        // scoped administrators).
        ctx.require(perm::WORKSPACE_MANAGE, scope(&w.name), || workspace_not_found(key))?;
        ctx.require_global(perm::WORKSPACE_MANAGE)?;
        if w.name == DEFAULT_WORKSPACE {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                ErrorCode::DefaultWorkspace,
                "the default workspace cannot be deleted",
            ));
        }
        let audit = ctx.audit("workspace.delete", &w.id, json!({ "name": w.name }));
        match self.state.store.delete_workspace(&w.id, &audit, now_ms()).await? {
            WorkspaceDelete::Deleted { .. } => Ok(()),
            WorkspaceDelete::NotFound => Err(workspace_not_found(key)),
            WorkspaceDelete::NotEmpty { deployments, projects } => Err(ApiError::new(
                StatusCode::CONFLICT,
                ErrorCode::WorkspaceNotEmpty,
                format!("workspace {:?} still has {deployments} live deployment(s) and {projects} project(s)", w.name),
            )
            .with_details(json!({ "deployments": deployments, "projects": projects }))),
        }
    }
}

// ---- projects -------------------------------------------------------------------------------

pub struct Projects<'a> {
    state: &'a AppState,
}

impl<'a> Projects<'a> {
    pub fn new(state: &'a AppState) -> Self {
        Self { state }
    }

    /// The projects the caller may read (of one workspace, by id or name, if given).
    pub async fn list(
        &self,
        ctx: &RequestContext,
        workspace: Option<&str>,
        offset: i64,
        limit: i64,
    ) -> ApiResult<(Vec<ProjectRecord>, i64)> {
        let workspace = match workspace {
            // An unknown (or hidden) workspace matches nothing; the answer is the same empty page.
            Some(key) => Some(self.state.store.get_workspace(key).await?.map_or_else(|| key.to_string(), |w| w.name)),
            None => None,
        };
        let visible = workspaces_allowing(ctx, perm::PROJECT_READ);
        Ok(self.state.store.list_projects(workspace.as_deref(), visible.as_deref(), offset, limit).await?)
    }

    pub async fn get(&self, ctx: &RequestContext, id: &str) -> ApiResult<ProjectRecord> {
        let p = self.state.store.get_project(id).await?.ok_or_else(|| project_not_found(id))?;
        ctx.require(perm::PROJECT_READ, scope(&p.workspace), || project_not_found(id))?;
        Ok(p)
    }

    pub async fn create(
        &self,
        ctx: &RequestContext,
        name: String,
        workspace: String,
        description: String,
    ) -> ApiResult<ProjectRecord> {
        invalid_name("name", &name)?;
        invalid_name("workspace", &workspace)?;
        validate_description(&description)?;
        let ws = Workspaces::new(self.state).named(&workspace).await?;
        ctx.require(perm::PROJECT_MANAGE, scope(&ws.name), || named_workspace_not_found(&workspace))?;
        let now = now_ms();
        let p = ProjectRecord {
            id: random_id("proj"),
            name,
            workspace: ws.name,
            description,
            created_at: now,
            updated_at: now,
        };
        let audit = ctx.audit("project.create", &p.id, json!({ "name": p.name, "workspace": p.workspace }));
        match self.state.store.create_project(&p, &audit).await? {
            Ok(()) => Ok(p),
            Err(false) => Err(named_workspace_not_found(&workspace)),
            Err(true) => Err(ApiError::new(
                StatusCode::CONFLICT,
                ErrorCode::ProjectExists,
                format!("workspace {:?} already has a project named {:?}", p.workspace, p.name),
            )),
        }
    }

    /// Renames and/or re-describes a project (it never changes workspace).
    pub async fn update(
        &self,
        ctx: &RequestContext,
        id: &str,
        name: Option<String>,
        description: Option<String>,
    ) -> ApiResult<ProjectRecord> {
        if let Some(n) = &name {
            invalid_name("name", n)?;
        }
        if let Some(d) = &description {
            validate_description(d)?;
        }
        let p = self.state.store.get_project(id).await?.ok_or_else(|| project_not_found(id))?;
        ctx.require(perm::PROJECT_MANAGE, scope(&p.workspace), || project_not_found(id))?;
        let details = json!({ "workspace": p.workspace, "name": name, "description": description });
        let audit = ctx.audit("project.update", &p.id, details);
        match self.state.store.update_project(&p.id, name.as_deref(), description.as_deref(), &audit, now_ms()).await? {
            Renamed::Done(p) => Ok(p),
            Renamed::NotFound => Err(project_not_found(id)),
            Renamed::NameTaken => Err(ApiError::new(
                StatusCode::CONFLICT,
                ErrorCode::ProjectExists,
                format!("workspace {:?} already has a project named {:?}", p.workspace, name.unwrap_or_default()),
            )),
        }
    }

    /// Deletes a project no live deployment belongs to.
    pub async fn delete(&self, ctx: &RequestContext, id: &str) -> ApiResult<()> {
        let p = self.state.store.get_project(id).await?.ok_or_else(|| project_not_found(id))?;
        ctx.require(perm::PROJECT_MANAGE, scope(&p.workspace), || project_not_found(id))?;
        let audit = ctx.audit("project.delete", &p.id, json!({ "name": p.name, "workspace": p.workspace }));
        match self.state.store.delete_project(&p.id, &audit, now_ms()).await? {
            ProjectDelete::Deleted => Ok(()),
            ProjectDelete::NotFound => Err(project_not_found(id)),
            ProjectDelete::InUse { deployments } => Err(ApiError::new(
                StatusCode::CONFLICT,
                ErrorCode::ProjectInUse,
                format!("project {:?} still has {deployments} live deployment(s)", p.name),
            )
            .with_details(json!({ "deployments": deployments }))),
        }
    }

    /// The project (by id or name) a new deployment of `workspace` names: 400 `PROJECT_001`
    /// unless it exists in that workspace. The caller is already authorized in the workspace,
    /// so the answer reveals nothing of other workspaces.
    pub async fn for_deployment(&self, workspace: &str, key: &str) -> ApiResult<ProjectRecord> {
        self.state.store.find_project(workspace, key).await?.ok_or_else(|| project_not_in_workspace(workspace, key))
    }
}

// ---- AI zones -------------------------------------------------------------------------------

/// An AI zone to create.
#[derive(Debug, Clone)]
pub struct NewAiZone {
    pub name: String,
    /// `None`: shared by every workspace.
    pub workspace: Option<String>,
    pub description: String,
    pub provider: String,
    pub region: String,
    pub labels: BTreeMap<String, String>,
}

/// What an update changes (`None`: keep).
#[derive(Debug, Clone, Default)]
pub struct AiZoneUpdate {
    pub name: Option<String>,
    pub description: Option<String>,
    pub provider: Option<String>,
    pub region: Option<String>,
    pub labels: Option<BTreeMap<String, String>>,
}

fn zone_scope(z: &AiZoneRecord) -> Scope<'_> {
    match &z.workspace {
        None => Scope::GLOBAL,
        Some(w) => scope(w),
    }
}

fn validate_zone_fields(
    provider: Option<&str>,
    region: Option<&str>,
    labels: Option<&BTreeMap<String, String>>,
) -> ApiResult<()> {
    if let Some(p) = provider {
        validate_label_value("provider", p)?;
    }
    if let Some(r) = region {
        validate_label_value("region", r)?;
    }
    if let Some(l) = labels {
        ferry_protocol::limits::validate_labels(l).map_err(|m| ApiError::validation("labels", m))?;
    }
    Ok(())
}

pub struct AiZones<'a> {
    state: &'a AppState,
}

impl<'a> AiZones<'a> {
    pub fn new(state: &'a AppState) -> Self {
        Self { state }
    }

    /// The zones the caller may read: shared ones and those of its workspaces.
    pub async fn list(&self, ctx: &RequestContext, offset: i64, limit: i64) -> ApiResult<(Vec<AiZoneRecord>, i64)> {
        let shared = ctx.allows(perm::AIZONE_READ, Scope::GLOBAL);
        let visible = workspaces_allowing(ctx, perm::AIZONE_READ);
        Ok(self.state.store.list_ai_zones(shared, visible.as_deref(), offset, limit).await?)
    }

    /// By id or name.
    pub async fn get(&self, ctx: &RequestContext, key: &str) -> ApiResult<AiZoneRecord> {
        let z = self.state.store.get_ai_zone(key).await?.ok_or_else(|| zone_not_found(key))?;
        ctx.require(perm::AIZONE_READ, zone_scope(&z), || zone_not_found(key))?;
        Ok(z)
    }

    pub async fn create(&self, ctx: &RequestContext, new: NewAiZone) -> ApiResult<AiZoneRecord> {
        invalid_name("name", &new.name)?;
        if let Some(w) = &new.workspace {
            invalid_name("workspace", w)?;
        }
        validate_description(&new.description)?;
        validate_zone_fields(Some(&new.provider), Some(&new.region), Some(&new.labels))?;
        ctx.require_global(perm::AIZONE_MANAGE)?;
        let workspace = match &new.workspace {
            Some(key) => Some(Workspaces::new(self.state).named(key).await?.name),
            None => None,
        };
        let now = now_ms();
        let z = AiZoneRecord {
            id: random_id("aizone"),
            name: new.name,
            workspace,
            description: new.description,
            provider: new.provider,
            region: new.region,
            labels: new.labels,
            created_at: now,
            updated_at: now,
        };
        let audit = ctx.audit("aizone.create", &z.id, json!({ "name": z.name, "workspace": z.workspace }));
        match self.state.store.create_ai_zone(&z, &audit).await? {
            Ok(()) => Ok(z),
            Err(false) => Err(named_workspace_not_found(new.workspace.as_deref().unwrap_or_default())),
            Err(true) => Err(ApiError::new(
                StatusCode::CONFLICT,
                ErrorCode::AiZoneExists,
                format!("AI zone {:?} already exists", z.name),
            )),
        }
    }

    pub async fn update(&self, ctx: &RequestContext, key: &str, u: AiZoneUpdate) -> ApiResult<AiZoneRecord> {
        if let Some(n) = &u.name {
            invalid_name("name", n)?;
        }
        if let Some(d) = &u.description {
            validate_description(d)?;
        }
        validate_zone_fields(u.provider.as_deref(), u.region.as_deref(), u.labels.as_ref())?;
        let z = self.state.store.get_ai_zone(key).await?.ok_or_else(|| zone_not_found(key))?;
        // Hidden first (404 for a zone of another workspace), then the global permission.
        ctx.require(perm::AIZONE_MANAGE, zone_scope(&z), || zone_not_found(key))?;
        ctx.require_global(perm::AIZONE_MANAGE)?;
        let change = AiZoneChange {
            name: u.name.as_deref(),
            description: u.description.as_deref(),
            provider: u.provider.as_deref(),
            region: u.region.as_deref(),
            labels: u.labels.as_ref(),
        };
        let details = json!({
            "name": u.name, "description": u.description, "provider": u.provider, "region": u.region,
            "labels": u.labels,
        });
        let audit = ctx.audit("aizone.update", &z.id, details);
        match self.state.store.update_ai_zone(&z.id, &change, &audit, now_ms()).await? {
            Renamed::Done(z) => Ok(z),
            Renamed::NotFound => Err(zone_not_found(key)),
            Renamed::NameTaken => Err(ApiError::new(
                StatusCode::CONFLICT,
                ErrorCode::AiZoneExists,
                format!("AI zone {:?} already exists", u.name.unwrap_or_default()),
            )),
        }
    }

    /// One page of the deployments in a zone that the caller may read.
    pub async fn deployments(
        &self,
        ctx: &RequestContext,
        key: &str,
        filter: DeploymentFilter<'_>,
    ) -> ApiResult<(Vec<(Parsed, Option<StatusSummary>)>, i64)> {
        let z = self.get(ctx, key).await?;
        Deployments::new(self.state).list(ctx, DeploymentFilter { ai_zone_id: Some(&z.id), ..filter }).await
    }

    /// The zone (by id or name) a new deployment of `workspace` names: 400 `AIZONE_001` unless
    /// it exists and is shared or dedicated to that workspace (the same answer either way, so
    /// nothing leaks of zones dedicated to other workspaces).
    pub async fn for_deployment(&self, workspace: &str, key: &str) -> ApiResult<AiZoneRecord> {
        let z = self.state.store.get_ai_zone(key).await?;
        z.filter(|z| z.workspace.as_deref().is_none_or(|w| w == workspace))
            .ok_or_else(|| zone_not_usable(workspace, key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authz::{Role, RoleBinding};
    use crate::context::{Principal, PrincipalKind};

    fn ctx(roles: &[(Role, Option<&str>)]) -> RequestContext {
        let roles =
            roles.iter().map(|(role, w)| RoleBinding { role: *role, workspace: w.map(str::to_string) }).collect();
        RequestContext {
            principal: Principal { kind: PrincipalKind::User, id: "u".into(), name: "u".into(), roles, owner: None },
            request_id: "req".into(),
            idempotency_key: None,
            source: None,
            callback: None,
        }
    }

    #[test]
    fn workspaces_allowing_names_where_the_bindings_grant() {
        use Role::*;
        assert_eq!(workspaces_allowing(&ctx(&[(Viewer, None)]), perm::PROJECT_READ), None);
        assert_eq!(workspaces_allowing(&ctx(&[(DeploymentAdmin, None)]), perm::PROJECT_MANAGE), None);
        let c = ctx(&[(Viewer, Some("team-b")), (Developer, Some("team-a")), (DeploymentAdmin, Some("team-c"))]);
        assert_eq!(workspaces_allowing(&c, perm::PROJECT_READ), Some(vec!["team-b".into(), "team-c".into()]));
        assert_eq!(workspaces_allowing(&c, perm::PROJECT_MANAGE), Some(vec!["team-c".into()]));
        // A developer's role grants no workspace permission: it sees none of these objects.
        assert_eq!(workspaces_allowing(&ctx(&[(Developer, None)]), perm::WORKSPACE_READ), Some(vec![]));
        assert_eq!(bound_workspaces(&c), ["team-a", "team-b", "team-c"]);
    }
}
