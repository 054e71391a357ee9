//! `/v1/workspaces`, `/v1/projects`, `/v1/aizones`: handlers parse and render; the rules are in
//! [`crate::workspaces`].

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, ApiJson, ApiPath, ApiQuery, ApiResult, PageParams, page_json};
use crate::AppState;
use crate::context::RequestContext;
use crate::ids::rfc3339;
use crate::store::{AiZoneRecord, ProjectRecord, WorkspaceRecord};
use crate::workspaces::{AiZoneUpdate, AiZones, NewAiZone, Projects, Workspaces};

fn workspace_view(w: &WorkspaceRecord) -> Value {
    json!({
        "id": w.id,
        "name": w.name,
        "description": w.description,
        "owner": w.owner,
        "created": rfc3339(w.created_at),
        "updated": rfc3339(w.updated_at),
    })
}

fn project_view(p: &ProjectRecord) -> Value {
    json!({
        "id": p.id,
        "name": p.name,
        "workspace": p.workspace,
        "description": p.description,
        "created": rfc3339(p.created_at),
        "updated": rfc3339(p.updated_at),
    })
}

fn zone_view(z: &AiZoneRecord) -> Value {
    json!({
        "id": z.id,
        "name": z.name,
        "workspace": z.workspace,
        "description": z.description,
        "provider": z.provider,
        "region": z.region,
        "labels": z.labels,
        "created": rfc3339(z.created_at),
        "updated": rfc3339(z.updated_at),
    })
}

/// `page` and `pageSize` only.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Paging {
    #[param(minimum = 1)]
    page: Option<i64>,
    #[param(minimum = 1, maximum = 200)]
    page_size: Option<i64>,
}

impl Paging {
    fn resolve(&self) -> ApiResult<(i64, i64)> {
        PageParams { page: self.page, page_size: self.page_size, status: None }.resolve()
    }
}

// ---- workspaces -----------------------------------------------------------------------------

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateWorkspace {
    #[schema(pattern = "^[a-z0-9][a-z0-9-]{0,62}$")]
    name: String,
    #[serde(default)]
    description: String,
    owner: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateWorkspace {
    description: Option<String>,
    owner: Option<String>,
}

#[utoipa::path(
    get,
    path = "/v1/workspaces",
    operation_id = "listWorkspaces",
    tag = "workspaces",
    summary = "List workspaces",
    params(Paging),
    responses(
        (status = 200, description = "A page of workspaces", body = super::schemas::WorkspacePage),
    ),
)]
pub async fn list_workspaces(
    State(state): State<AppState>,
    ctx: RequestContext,
    ApiQuery(q): ApiQuery<Paging>,
) -> ApiResult<Json<Value>> {
    let (page, size) = q.resolve()?;
    let (rows, total) = Workspaces::new(&state).list(&ctx, (page - 1) * size, size).await?;
    Ok(Json(page_json(rows.iter().map(workspace_view).collect(), page, size, total)))
}

#[utoipa::path(
    get,
    path = "/v1/workspaces/{id}",
    operation_id = "getWorkspace",
    tag = "workspaces",
    summary = "Get a workspace",
    params(("id" = String, Path, description = "The workspace's id or name")),
    responses(
        (status = 200, description = "The workspace", body = super::schemas::WorkspaceView),
    ),
)]
pub async fn get_workspace(
    State(state): State<AppState>,
    ctx: RequestContext,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    Ok(Json(workspace_view(&Workspaces::new(&state).get(&ctx, &id).await?)))
}

#[utoipa::path(
    post,
    path = "/v1/workspaces",
    operation_id = "createWorkspace",
    tag = "workspaces",
    summary = "Create a workspace",
    request_body = CreateWorkspace,
    responses(
        (status = 201, description = "The workspace", body = super::schemas::WorkspaceView),
    ),
)]
pub async fn create_workspace(
    State(state): State<AppState>,
    ctx: RequestContext,
    ApiJson(req): ApiJson<CreateWorkspace>,
) -> ApiResult<Response> {
    let w = Workspaces::new(&state).create(&ctx, req.name, req.description, req.owner).await?;
    Ok(super::created(&format!("/v1/workspaces/{}", w.id), workspace_view(&w)))
}

#[utoipa::path(
    put,
    path = "/v1/workspaces/{id}",
    operation_id = "updateWorkspace",
    tag = "workspaces",
    summary = "Change a workspace",
    params(("id" = String, Path, description = "The workspace's id or name")),
    request_body = UpdateWorkspace,
    responses(
        (status = 200, description = "The workspace", body = super::schemas::WorkspaceView),
    ),
)]
pub async fn update_workspace(
    State(state): State<AppState>,
    ctx: RequestContext,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<UpdateWorkspace>,
) -> ApiResult<Json<Value>> {
    if req.description.is_none() && req.owner.is_none() {
        return Err(ApiError::validation("description", "nothing to change: send description and/or owner"));
    }
    let w = Workspaces::new(&state).update(&ctx, &id, req.description, req.owner).await?;
    Ok(Json(workspace_view(&w)))
}

#[utoipa::path(
    delete,
    path = "/v1/workspaces/{id}",
    operation_id = "deleteWorkspace",
    tag = "workspaces",
    summary = "Delete a workspace",
    params(("id" = String, Path, description = "The workspace's id or name")),
    responses(
        (status = 204, description = "Deleted"),
    ),
)]
pub async fn delete_workspace(
    State(state): State<AppState>,
    ctx: RequestContext,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    Workspaces::new(&state).delete(&ctx, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- projects -------------------------------------------------------------------------------

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProjectList {
    #[param(minimum = 1)]
    page: Option<i64>,
    #[param(minimum = 1, maximum = 200)]
    page_size: Option<i64>,
    workspace: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateProject {
    #[schema(pattern = "^[a-z0-9][a-z0-9-]{0,62}$")]
    name: String,
    #[serde(default = "default_workspace")]
    workspace: String,
    #[serde(default)]
    description: String,
}

fn default_workspace() -> String {
    crate::store::DEFAULT_WORKSPACE.into()
}

/// A project never moves to another workspace: `workspace` is refused as an unknown field.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateProject {
    name: Option<String>,
    description: Option<String>,
}

#[utoipa::path(
    get,
    path = "/v1/projects",
    operation_id = "listProjects",
    tag = "workspaces",
    summary = "List projects",
    params(ProjectList),
    responses(
        (status = 200, description = "A page of projects", body = super::schemas::ProjectPage),
    ),
)]
pub async fn list_projects(
    State(state): State<AppState>,
    ctx: RequestContext,
    ApiQuery(q): ApiQuery<ProjectList>,
) -> ApiResult<Json<Value>> {
    let (page, size) = PageParams { page: q.page, page_size: q.page_size, status: None }.resolve()?;
    let (rows, total) = Projects::new(&state).list(&ctx, q.workspace.as_deref(), (page - 1) * size, size).await?;
    Ok(Json(page_json(rows.iter().map(project_view).collect(), page, size, total)))
}

#[utoipa::path(
    get,
    path = "/v1/projects/{id}",
    operation_id = "getProject",
    tag = "workspaces",
    summary = "Get a project",
    params(("id" = String, Path, description = "The project's id")),
    responses(
        (status = 200, description = "The project", body = super::schemas::ProjectView),
    ),
)]
pub async fn get_project(
    State(state): State<AppState>,
    ctx: RequestContext,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    Ok(Json(project_view(&Projects::new(&state).get(&ctx, &id).await?)))
}

#[utoipa::path(
    post,
    path = "/v1/projects",
    operation_id = "createProject",
    tag = "workspaces",
    summary = "Create a project",
    request_body = CreateProject,
    responses(
        (status = 201, description = "The project", body = super::schemas::ProjectView),
    ),
)]
pub async fn create_project(
    State(state): State<AppState>,
    ctx: RequestContext,
    ApiJson(req): ApiJson<CreateProject>,
) -> ApiResult<Response> {
    let p = Projects::new(&state).create(&ctx, req.name, req.workspace, req.description).await?;
    Ok(super::created(&format!("/v1/projects/{}", p.id), project_view(&p)))
}

#[utoipa::path(
    put,
    path = "/v1/projects/{id}",
    operation_id = "updateProject",
    tag = "workspaces",
    summary = "Change a project",
    params(("id" = String, Path, description = "The project's id")),
    request_body = UpdateProject,
    responses(
        (status = 200, description = "The project", body = super::schemas::ProjectView),
    ),
)]
pub async fn update_project(
    State(state): State<AppState>,
    ctx: RequestContext,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<UpdateProject>,
) -> ApiResult<Json<Value>> {
    if req.name.is_none() && req.description.is_none() {
        return Err(ApiError::validation("name", "nothing to change: send name and/or description"));
    }
    Ok(Json(project_view(&Projects::new(&state).update(&ctx, &id, req.name, req.description).await?)))
}

#[utoipa::path(
    delete,
    path = "/v1/projects/{id}",
    operation_id = "deleteProject",
    tag = "workspaces",
    summary = "Delete a project",
    params(("id" = String, Path, description = "The project's id")),
    responses(
        (status = 204, description = "Deleted"),
    ),
)]
pub async fn delete_project(
    State(state): State<AppState>,
    ctx: RequestContext,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    Projects::new(&state).delete(&ctx, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- AI zones -------------------------------------------------------------------------------

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateAiZone {
    #[schema(pattern = "^[a-z0-9][a-z0-9-]{0,62}$")]
    name: String,
    /// Dedicate the zone to one workspace; shared by all when absent.
    workspace: Option<String>,
    #[serde(default)]
    description: String,
    #[serde(default)]
    #[schema(pattern = "^[A-Za-z0-9._-]{0,63}$")]
    provider: String,
    #[serde(default)]
    #[schema(pattern = "^[A-Za-z0-9._-]{0,63}$")]
    region: String,
    #[serde(default)]
    #[schema(schema_with = crate::api::openapi::shape::labels)]
    labels: BTreeMap<String, String>,
}

/// A zone never changes workspace: `workspace` is refused as an unknown field.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateAiZone {
    name: Option<String>,
    description: Option<String>,
    #[schema(pattern = "^[A-Za-z0-9._-]{0,63}$")]
    provider: Option<String>,
    #[schema(pattern = "^[A-Za-z0-9._-]{0,63}$")]
    region: Option<String>,
    #[schema(schema_with = crate::api::openapi::shape::labels)]
    labels: Option<BTreeMap<String, String>>,
}

#[utoipa::path(
    get,
    path = "/v1/aizones",
    operation_id = "listAiZones",
    tag = "workspaces",
    summary = "List AI zones",
    params(Paging),
    responses(
        (status = 200, description = "A page of AI zones", body = super::schemas::AiZonePage),
    ),
)]
pub async fn list_zones(
    State(state): State<AppState>,
    ctx: RequestContext,
    ApiQuery(q): ApiQuery<Paging>,
) -> ApiResult<Json<Value>> {
    let (page, size) = q.resolve()?;
    let (rows, total) = AiZones::new(&state).list(&ctx, (page - 1) * size, size).await?;
    Ok(Json(page_json(rows.iter().map(zone_view).collect(), page, size, total)))
}

#[utoipa::path(
    get,
    path = "/v1/aizones/{id}",
    operation_id = "getAiZone",
    tag = "workspaces",
    summary = "Get an AI zone",
    params(("id" = String, Path, description = "The AI zone's id or name")),
    responses(
        (status = 200, description = "The AI zone", body = super::schemas::AiZoneView),
    ),
)]
pub async fn get_zone(
    State(state): State<AppState>,
    ctx: RequestContext,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    Ok(Json(zone_view(&AiZones::new(&state).get(&ctx, &id).await?)))
}

#[utoipa::path(
    post,
    path = "/v1/aizones",
    operation_id = "createAiZone",
    tag = "workspaces",
    summary = "Create an AI zone",
    request_body = CreateAiZone,
    responses(
        (status = 201, description = "The AI zone", body = super::schemas::AiZoneView),
    ),
)]
pub async fn create_zone(
    State(state): State<AppState>,
    ctx: RequestContext,
    ApiJson(req): ApiJson<CreateAiZone>,
) -> ApiResult<Response> {
    let new = NewAiZone {
        name: req.name,
        workspace: req.workspace,
        description: req.description,
        provider: req.provider,
        region: req.region,
        labels: req.labels,
    };
    let z = AiZones::new(&state).create(&ctx, new).await?;
    Ok(super::created(&format!("/v1/aizones/{}", z.id), zone_view(&z)))
}

#[utoipa::path(
    put,
    path = "/v1/aizones/{id}",
    operation_id = "updateAiZone",
    tag = "workspaces",
    summary = "Change an AI zone",
    params(("id" = String, Path, description = "The AI zone's id or name")),
    request_body = UpdateAiZone,
    responses(
        (status = 200, description = "The AI zone", body = super::schemas::AiZoneView),
    ),
)]
pub async fn update_zone(
    State(state): State<AppState>,
    ctx: RequestContext,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<UpdateAiZone>,
) -> ApiResult<Json<Value>> {
    let u = AiZoneUpdate {
        name: req.name,
        description: req.description,
        provider: req.provider,
        region: req.region,
        labels: req.labels,
    };
    if u.name.is_none() && u.description.is_none() && u.provider.is_none() && u.region.is_none() && u.labels.is_none() {
        return Err(ApiError::validation(
            "name",
            "nothing to change: send name, description, provider, region or labels",
        ));
    }
    Ok(Json(zone_view(&AiZones::new(&state).update(&ctx, &id, u).await?)))
}

/// `GET /v1/aizones/{id}/deployments`: the deployments listing (same parameters) of one zone.
#[utoipa::path(
    get,
    path = "/v1/aizones/{id}/deployments",
    operation_id = "listAiZoneDeployments",
    tag = "workspaces",
    summary = "An AI zone's deployments",
    params(("id" = String, Path, description = "The AI zone's id or name"), super::deployments::ListParams),
    responses(
        (status = 200, description = "A page of deployments", body = super::schemas::DeploymentPage),
    ),
)]
pub async fn zone_deployments(
    State(state): State<AppState>,
    ctx: RequestContext,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<super::deployments::ListParams>,
) -> ApiResult<Json<Value>> {
    let filter = q.filter()?;
    let (rows, total) = AiZones::new(&state).deployments(&ctx, &id, filter).await?;
    Ok(Json(super::deployments::page(&rows, &filter, total)))
}
