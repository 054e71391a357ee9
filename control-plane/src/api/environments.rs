//! `/v1/environments`: handlers parse and render; the rules are in the environments service
//! ([`crate::environments`]).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use serde_json::{Value, json};

use std::collections::BTreeMap;

use super::deployments::ListParams;
use super::{ApiError, ApiJson, ApiPath, ApiQuery, ApiResult, PageParams, page_json};
use crate::AppState;
use crate::authz::Role;
use crate::change_windows::ChangeWindowsDoc;
use crate::context::RequestContext;
use crate::environments::{Configure, Environments, resources_view};
use crate::ids::{now_ms, rfc3339};
use crate::resources::{LimitsDoc, Usage};
use crate::secrets::Secrets;
use crate::store::{EnvironmentRecord, OperationRecord, SecretRecord, SecretScope};

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateEnvironment {
    #[schema(pattern = "^[a-z0-9][a-z0-9-]{0,62}$")]
    name: String,
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    description: String,
}

/// The seed's Environment entity (`configuration.secrets` lists names, never values), with the
/// promotion chain's next environment and what its deployments hold against its limits.
fn view(e: &EnvironmentRecord, deployments: i64, secrets: &[SecretRecord], usage: &Usage) -> Value {
    json!({
        "id": e.id,
        "name": e.name,
        "type": e.kind,
        "status": if e.lock.is_some() { "locked" } else { "active" },
        "lock": e.lock.as_ref().map(|l| json!({ "lockedBy": l.by, "reason": l.reason, "lockedAt": rfc3339(l.at) })),
        "restrictions": {
            "requiredRoles": e.required_roles,
            "approvalRequired": e.approval_required,
        },
        "changeWindows": change_windows_view(e),
        "description": e.description,
        "created": rfc3339(e.created_at),
        "updated": rfc3339(e.updated_at),
        "promotesTo": e.promotes_to,
        "deployments": { "total": deployments },
        "configuration": { "variables": e.variables, "secrets": super::secrets::listed(secrets) },
        "resources": resources_view(&e.limits, usage),
    })
}

/// The environment's view with what it shows besides the record: its deployments (that the
/// caller may read), its secrets (names) and its usage.
async fn render(state: &AppState, ctx: &RequestContext, e: &EnvironmentRecord) -> ApiResult<Value> {
    let n = Environments::new(state).deployment_count(ctx, &e.name).await?;
    let secrets = state.store.list_secrets(SecretScope::Environment, &e.id).await?;
    let usage = state.store.environment_usage(&e.name).await?;
    Ok(view(e, n, &secrets, &usage))
}

/// The seed's `configuration` of an environment: variables, secrets (names and `lastRotated`,
/// read-only), the next environment in the promotion chain and the limits.
fn config_view(e: &EnvironmentRecord, secrets: &[SecretRecord]) -> Value {
    json!({
        "variables": e.variables,
        "secrets": super::secrets::listed(secrets),
        "promotesTo": e.promotes_to,
        "limits": e.limits.doc(),
    })
}

fn operations(ops: &[OperationRecord]) -> Vec<Value> {
    ops.iter().map(super::deployments::operation_view).collect()
}

/// The schedule (`null`: none, open at all times) and whether it is open now.
fn change_windows_view(e: &EnvironmentRecord) -> Value {
    let (open, next, freeze) = match crate::change_windows::is_open(e.change_windows.as_ref(), now_ms()) {
        Ok(()) => (true, None, None),
        Err(c) => (false, c.next_open.map(|t| t.to_string()), c.freeze),
    };
    json!({
        "schedule": e.change_windows.as_ref().map(|w| w.doc()),
        "open": open,
        "nextWindowOpens": next,
        "freeze": freeze,
    })
}

#[utoipa::path(
    get,
    path = "/v1/environments",
    operation_id = "listEnvironments",
    tag = "environments",
    summary = "List environments",
    params(super::PageParams),
    responses(
        (status = 200, description = "A page of environments", body = super::schemas::EnvironmentPage),
    ),
)]
pub async fn list(
    State(state): State<AppState>,
    ctx: RequestContext,
    ApiQuery(q): ApiQuery<PageParams>,
) -> ApiResult<Json<Value>> {
    if q.status.is_some() {
        return Err(ApiError::validation("status", "environments cannot be filtered by status"));
    }
    let (page, page_size) = q.resolve()?;
    let all = Environments::new(&state).list(&ctx).await?;
    let total = all.len() as i64;
    let shown = super::paginate(&all, page, page_size);
    let envs: Vec<&EnvironmentRecord> = shown.iter().map(|(e, _)| e).collect();
    let secrets = Secrets::new(&state).of_environments(&envs).await?;
    let mut data = Vec::with_capacity(shown.len());
    for (e, n) in shown {
        let usage = state.store.environment_usage(&e.name).await?;
        data.push(view(e, *n, secrets.get(&e.id).map_or(&[], Vec::as_slice), &usage));
    }
    Ok(Json(page_json(data, page, page_size, total)))
}

#[utoipa::path(
    get,
    path = "/v1/environments/{id}",
    operation_id = "getEnvironment",
    tag = "environments",
    summary = "Get an environment",
    params(("id" = String, Path, description = "The environment's id or name")),
    responses(
        (status = 200, description = "The environment", body = super::schemas::EnvironmentView),
    ),
)]
pub async fn get(
    State(state): State<AppState>,
    ctx: RequestContext,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    let (e, n) = Environments::new(&state).get(&ctx, &id).await?;
    let secrets = state.store.list_secrets(SecretScope::Environment, &e.id).await?;
    let usage = state.store.environment_usage(&e.name).await?;
    Ok(Json(view(&e, n, &secrets, &usage)))
}

#[utoipa::path(
    post,
    path = "/v1/environments",
    operation_id = "createEnvironment",
    tag = "environments",
    summary = "Create an environment",
    request_body = CreateEnvironment,
    responses(
        (status = 201, description = "The environment", body = super::schemas::EnvironmentView),
    ),
)]
pub async fn create(
    State(state): State<AppState>,
    ctx: RequestContext,
    ApiJson(req): ApiJson<CreateEnvironment>,
) -> ApiResult<Response> {
    let env = Environments::new(&state).create(&ctx, req.name, req.kind, req.description).await?;
    Ok(super::created(&format!("/v1/environments/{}", env.id), view(&env, 0, &[], &Usage::default())))
}

/// `null` and absent told apart: `Some(None)` is an explicit `null`.
fn nullable<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateEnvironment {
    /// Immutable: accepted only if it is the current name.
    #[serde(default)]
    name: Option<String>,
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    description: Option<String>,
    /// The next environment in the promotion chain; `null` ends the chain.
    #[serde(default, deserialize_with = "nullable")]
    promotes_to: Option<Option<String>>,
}

/// `PUT /v1/environments/{id}`: type, description and the next environment in the promotion
/// chain (what is left out keeps its value).
#[utoipa::path(
    put,
    path = "/v1/environments/{id}",
    operation_id = "updateEnvironment",
    tag = "environments",
    summary = "Change an environment's type, description or promotion",
    params(("id" = String, Path, description = "The environment's id or name")),
    request_body = UpdateEnvironment,
    responses(
        (status = 200, description = "The environment", body = super::schemas::EnvironmentView),
    ),
)]
pub async fn update(
    State(state): State<AppState>,
    ctx: RequestContext,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<UpdateEnvironment>,
) -> ApiResult<Json<Value>> {
    let service = Environments::new(&state);
    if let Some(name) = &req.name {
        let (env, _) = service.get(&ctx, &id).await?;
        if *name != env.name {
            return Err(ApiError::validation("name", "an environment's name never changes (deployments name it)"));
        }
    }
    let change =
        Configure { kind: req.kind, description: req.description, promotes_to: req.promotes_to, ..Default::default() };
    let (env, _) = service.configure(&ctx, &id, change, "environment.update").await?;
    Ok(Json(render(&state, &ctx, &env).await?))
}

/// `DELETE /v1/environments/{id}`: 204, or 409 while it holds deployments (`ENV_007`) or another
/// environment promotes to it (`ENV_008`).
#[utoipa::path(
    delete,
    path = "/v1/environments/{id}",
    operation_id = "deleteEnvironment",
    tag = "environments",
    summary = "Delete an environment",
    params(("id" = String, Path, description = "The environment's id or name")),
    responses(
        (status = 204, description = "Deleted"),
    ),
)]
pub async fn delete(
    State(state): State<AppState>,
    ctx: RequestContext,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    Environments::new(&state).delete(&ctx, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/environments/{id}/config`.
#[utoipa::path(
    get,
    path = "/v1/environments/{id}/config",
    operation_id = "getEnvironmentConfig",
    tag = "environments",
    summary = "An environment's configuration",
    params(("id" = String, Path, description = "The environment's id or name")),
    responses(
        (status = 200, description = "The configuration", body = super::schemas::EnvironmentConfigView),
    ),
)]
pub async fn get_config(
    State(state): State<AppState>,
    ctx: RequestContext,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    let (e, _) = Environments::new(&state).get(&ctx, &id).await?;
    let secrets = state.store.list_secrets(SecretScope::Environment, &e.id).await?;
    Ok(Json(config_view(&e, &secrets)))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConfigRequest {
    #[serde(default)]
    variables: Option<BTreeMap<String, String>>,
    #[serde(default, deserialize_with = "nullable")]
    promotes_to: Option<Option<String>>,
    #[serde(default)]
    limits: Option<LimitsDoc>,
    /// Read-only (`PUT …/secrets` changes them): accepted so that a `GET` can be sent back,
    /// and ignored.
    #[serde(default)]
    #[allow(dead_code)]
    secrets: Option<Value>,
}

/// `PUT /v1/environments/{id}/config`: variables, promotion chain and limits in one change
/// (each part left out keeps its value). Answers like `GET`, plus the `operations` of the
/// rollouts a change of the variables started.
#[utoipa::path(
    put,
    path = "/v1/environments/{id}/config",
    operation_id = "putEnvironmentConfig",
    tag = "environments",
    summary = "Change an environment's configuration",
    params(("id" = String, Path, description = "The environment's id or name")),
    request_body = ConfigRequest,
    responses(
        (status = 200, description = "The configuration and the rollouts it started", body = super::schemas::EnvironmentConfigView),
    ),
)]
pub async fn put_config(
    State(state): State<AppState>,
    ctx: RequestContext,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<ConfigRequest>,
) -> ApiResult<Json<Value>> {
    let limits = req.limits.as_ref().map(|l| l.compile("limits")).transpose().map_err(invalid_limits)?;
    let change = Configure { variables: req.variables, promotes_to: req.promotes_to, limits, ..Default::default() };
    let (env, ops) = Environments::new(&state).configure(&ctx, &id, change, "environment.config.update").await?;
    let secrets = state.store.list_secrets(SecretScope::Environment, &env.id).await?;
    let mut body = config_view(&env, &secrets);
    body["operations"] = operations(&ops).into();
    Ok(Json(body))
}

fn invalid_limits((field, message): (String, String)) -> ApiError {
    ApiError::validation(&field, message)
}

/// `GET /v1/environments/{id}/variables`: `{"variables": {"NAME": "value", …}}`.
#[utoipa::path(
    get,
    path = "/v1/environments/{id}/variables",
    operation_id = "getEnvironmentVariables",
    tag = "environments",
    summary = "An environment's variables",
    params(("id" = String, Path, description = "The environment's id or name")),
    responses(
        (status = 200, description = "The variables", body = super::schemas::VariablesView),
    ),
)]
pub async fn get_variables(
    State(state): State<AppState>,
    ctx: RequestContext,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    let (e, _) = Environments::new(&state).get(&ctx, &id).await?;
    Ok(Json(json!({ "variables": e.variables })))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VariablesRequest {
    #[schema(schema_with = crate::api::openapi::shape::env)]
    variables: BTreeMap<String, String>,
}

/// `PUT /v1/environments/{id}/variables`: replaces the whole set and rolls it out to every
/// deployment of the environment (their `operations` are in the answer).
#[utoipa::path(
    put,
    path = "/v1/environments/{id}/variables",
    operation_id = "putEnvironmentVariables",
    tag = "environments",
    summary = "Replace an environment's variables",
    params(("id" = String, Path, description = "The environment's id or name")),
    request_body = VariablesRequest,
    responses(
        (status = 200, description = "The variables and the rollouts they started", body = super::schemas::VariablesView),
    ),
)]
pub async fn put_variables(
    State(state): State<AppState>,
    ctx: RequestContext,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<VariablesRequest>,
) -> ApiResult<Json<Value>> {
    let change = Configure { variables: Some(req.variables), ..Default::default() };
    let (env, ops) = Environments::new(&state).configure(&ctx, &id, change, "environment.variables.update").await?;
    Ok(Json(json!({ "variables": env.variables, "operations": operations(&ops) })))
}

/// `GET /v1/environments/{id}/limits`: `{"cpu", "memory", "replicas", "pods"}` (`null`: none).
#[utoipa::path(
    get,
    path = "/v1/environments/{id}/limits",
    operation_id = "getEnvironmentLimits",
    tag = "environments",
    summary = "An environment's limits",
    params(("id" = String, Path, description = "The environment's id or name")),
    responses(
        (status = 200, description = "The limits (`null`: none)", body = LimitsDoc),
    ),
)]
pub async fn get_limits(
    State(state): State<AppState>,
    ctx: RequestContext,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<LimitsDoc>> {
    let (e, _) = Environments::new(&state).get(&ctx, &id).await?;
    Ok(Json(e.limits.doc()))
}

/// `PUT /v1/environments/{id}/limits`: replaces the limits (a limit left out or `null` is
/// removed). Lowering one below what is allocated is allowed: only growth is refused.
#[utoipa::path(
    put,
    path = "/v1/environments/{id}/limits",
    operation_id = "putEnvironmentLimits",
    tag = "environments",
    summary = "Replace an environment's limits",
    params(("id" = String, Path, description = "The environment's id or name")),
    request_body = LimitsDoc,
    responses(
        (status = 200, description = "The limits", body = LimitsDoc),
    ),
)]
pub async fn put_limits(
    State(state): State<AppState>,
    ctx: RequestContext,
    ApiPath(id): ApiPath<String>,
    ApiJson(doc): ApiJson<LimitsDoc>,
) -> ApiResult<Json<LimitsDoc>> {
    let limits = doc.compile("").map_err(invalid_limits)?;
    let change = Configure { limits: Some(limits), ..Default::default() };
    let (env, _) = Environments::new(&state).configure(&ctx, &id, change, "environment.limits.update").await?;
    Ok(Json(env.limits.doc()))
}

/// `GET /v1/environments/{id}/deployments`: a page of its deployments, as
/// `GET /v1/deployments?environment=` lists them (same filters and visibility).
#[utoipa::path(
    get,
    path = "/v1/environments/{id}/deployments",
    operation_id = "listEnvironmentDeployments",
    tag = "environments",
    summary = "An environment's deployments",
    params(("id" = String, Path, description = "The environment's id or name"), ListParams),
    responses(
        (status = 200, description = "A page of deployments", body = super::schemas::DeploymentPage),
    ),
)]
pub async fn deployments(
    State(state): State<AppState>,
    ctx: RequestContext,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<ListParams>,
) -> ApiResult<Json<Value>> {
    let filter = q.filter()?;
    let (rows, total) = Environments::new(&state).deployments(&ctx, &id, filter).await?;
    Ok(Json(super::deployments::page(&rows, &filter, total)))
}

/// `GET /v1/environments/{id}/status`: its deployments (that the caller may read) counted by
/// status (`total`, `running`, `stopped`, `failed` always; other statuses when there are some)
/// and its resources.
#[utoipa::path(
    get,
    path = "/v1/environments/{id}/status",
    operation_id = "getEnvironmentStatus",
    tag = "environments",
    summary = "An environment's deployments by status, and its resources",
    params(("id" = String, Path, description = "The environment's id or name")),
    responses(
        (status = 200, description = "The status", body = super::schemas::EnvironmentStatusView),
    ),
)]
pub async fn status(
    State(state): State<AppState>,
    ctx: RequestContext,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    let s = Environments::new(&state).status(&ctx, &id).await?;
    let mut counts = serde_json::Map::new();
    counts.insert("total".into(), s.counts.values().sum::<i64>().into());
    for status in ["running", "stopped", "failed"] {
        counts.insert(status.into(), 0.into());
    }
    for (status, n) in &s.counts {
        counts.insert(status.clone(), (*n).into());
    }
    let e = &s.environment;
    Ok(Json(json!({
        "id": e.id,
        "name": e.name,
        "status": if e.lock.is_some() { "locked" } else { "active" },
        "deployments": counts,
        "resources": resources_view(&e.limits, &s.usage),
    })))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LockRequest {
    reason: String,
}

#[utoipa::path(
    post,
    path = "/v1/environments/{id}/lock",
    operation_id = "lockEnvironment",
    tag = "environments",
    summary = "Lock an environment",
    params(("id" = String, Path, description = "The environment's id or name")),
    request_body = LockRequest,
    responses(
        (status = 200, description = "The environment", body = super::schemas::EnvironmentView),
    ),
)]
pub async fn lock(
    State(state): State<AppState>,
    ctx: RequestContext,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<LockRequest>,
) -> ApiResult<Json<Value>> {
    let env = Environments::new(&state).lock(&ctx, &id, req.reason).await?;
    Ok(Json(render(&state, &ctx, &env).await?))
}

#[utoipa::path(
    post,
    path = "/v1/environments/{id}/unlock",
    operation_id = "unlockEnvironment",
    tag = "environments",
    summary = "Unlock an environment",
    params(("id" = String, Path, description = "The environment's id or name")),
    responses(
        (status = 200, description = "The environment", body = super::schemas::EnvironmentView),
    ),
)]
pub async fn unlock(
    State(state): State<AppState>,
    ctx: RequestContext,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    let env = Environments::new(&state).unlock(&ctx, &id).await?;
    Ok(Json(render(&state, &ctx, &env).await?))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RestrictionsRequest {
    required_roles: Vec<Role>,
    approval_required: bool,
}

/// `PUT /v1/environments/{id}/restrictions`: who may change what runs here, and whether changes
/// wait for approval.
#[utoipa::path(
    put,
    path = "/v1/environments/{id}/restrictions",
    operation_id = "setEnvironmentRestrictions",
    tag = "environments",
    summary = "Who may change an environment, and whether changes need approval",
    params(("id" = String, Path, description = "The environment's id or name")),
    request_body = RestrictionsRequest,
    responses(
        (status = 200, description = "The environment", body = super::schemas::EnvironmentView),
    ),
)]
pub async fn set_restrictions(
    State(state): State<AppState>,
    ctx: RequestContext,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<RestrictionsRequest>,
) -> ApiResult<Json<Value>> {
    let env = Environments::new(&state).set_restrictions(&ctx, &id, req.required_roles, req.approval_required).await?;
    Ok(Json(render(&state, &ctx, &env).await?))
}

/// `GET /v1/environments/{id}/change-windows`: the schedule and whether it is open now.
#[utoipa::path(
    get,
    path = "/v1/environments/{id}/change-windows",
    operation_id = "getChangeWindows",
    tag = "environments",
    summary = "An environment's change windows",
    params(("id" = String, Path, description = "The environment's id or name")),
    responses(
        (status = 200, description = "The schedule and whether it is open", body = super::schemas::ChangeWindowsView),
    ),
)]
pub async fn get_change_windows(
    State(state): State<AppState>,
    ctx: RequestContext,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    let (e, _) = Environments::new(&state).get(&ctx, &id).await?;
    Ok(Json(change_windows_view(&e)))
}

/// `PUT /v1/environments/{id}/change-windows`: replaces the schedule.
#[utoipa::path(
    put,
    path = "/v1/environments/{id}/change-windows",
    operation_id = "setChangeWindows",
    tag = "environments",
    summary = "Replace an environment's change windows",
    params(("id" = String, Path, description = "The environment's id or name")),
    request_body = ChangeWindowsDoc,
    responses(
        (status = 200, description = "The environment", body = super::schemas::EnvironmentView),
    ),
)]
pub async fn set_change_windows(
    State(state): State<AppState>,
    ctx: RequestContext,
    ApiPath(id): ApiPath<String>,
    ApiJson(doc): ApiJson<ChangeWindowsDoc>,
) -> ApiResult<Json<Value>> {
    let env = Environments::new(&state).set_change_windows(&ctx, &id, Some(doc)).await?;
    Ok(Json(render(&state, &ctx, &env).await?))
}

/// `DELETE /v1/environments/{id}/change-windows`: no schedule, open at all times.
#[utoipa::path(
    delete,
    path = "/v1/environments/{id}/change-windows",
    operation_id = "deleteChangeWindows",
    tag = "environments",
    summary = "Remove an environment's change windows",
    params(("id" = String, Path, description = "The environment's id or name")),
    responses(
        (status = 200, description = "The environment", body = super::schemas::EnvironmentView),
    ),
)]
pub async fn delete_change_windows(
    State(state): State<AppState>,
    ctx: RequestContext,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    let env = Environments::new(&state).set_change_windows(&ctx, &id, None).await?;
    Ok(Json(render(&state, &ctx, &env).await?))
}
