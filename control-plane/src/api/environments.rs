//! `/v1/environments`: handlers parse and render; the rules are in the environments service
//! ([`crate::environments`]).

use axum::Json;
use axum::extract::State;
use axum::response::Response;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, ApiJson, ApiPath, ApiQuery, ApiResult, PageParams, page_json};
use crate::AppState;
use crate::authz::Role;
use crate::change_windows::ChangeWindowsDoc;
use crate::context::RequestContext;
use crate::environments::Environments;
use crate::ids::{now_ms, rfc3339};
use crate::secrets::Secrets;
use crate::store::{EnvironmentRecord, SecretRecord};

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateEnvironment {
    name: String,
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    description: String,
}

/// The seed's Environment entity (`configuration.secrets` lists names, never values).
fn view(e: &EnvironmentRecord, deployments: i64, secrets: &[SecretRecord]) -> Value {
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
        "deployments": { "total": deployments },
        "configuration": { "secrets": super::secrets::listed(secrets) },
    })
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
    let data = shown.into_iter().map(|(e, n)| view(e, *n, secrets.get(&e.id).map_or(&[], Vec::as_slice))).collect();
    Ok(Json(page_json(data, page, page_size, total)))
}

pub async fn get(
    State(state): State<AppState>,
    ctx: RequestContext,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    let (e, n) = Environments::new(&state).get(&ctx, &id).await?;
    let secrets = Secrets::new(&state).of_environments(&[&e]).await?;
    Ok(Json(view(&e, n, secrets.get(&e.id).map_or(&[], Vec::as_slice))))
}

pub async fn create(
    State(state): State<AppState>,
    ctx: RequestContext,
    ApiJson(req): ApiJson<CreateEnvironment>,
) -> ApiResult<Response> {
    let env = Environments::new(&state).create(&ctx, req.name, req.kind, req.description).await?;
    Ok(super::created(&format!("/v1/environments/{}", env.id), view(&env, 0, &[])))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LockRequest {
    reason: String,
}

pub async fn lock(
    State(state): State<AppState>,
    ctx: RequestContext,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<LockRequest>,
) -> ApiResult<Json<Value>> {
    let service = Environments::new(&state);
    let env = service.lock(&ctx, &id, req.reason).await?;
    let n = service.deployment_count(&ctx, &env.name).await?;
    let secrets = state.store.list_secrets(crate::store::SecretScope::Environment, &env.id).await?;
    Ok(Json(view(&env, n, &secrets)))
}

pub async fn unlock(
    State(state): State<AppState>,
    ctx: RequestContext,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    let env = Environments::new(&state).unlock(&ctx, &id).await?;
    let n = Environments::new(&state).deployment_count(&ctx, &env.name).await?;
    let secrets = state.store.list_secrets(crate::store::SecretScope::Environment, &env.id).await?;
    Ok(Json(view(&env, n, &secrets)))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RestrictionsRequest {
    required_roles: Vec<Role>,
    approval_required: bool,
}

/// `PUT /v1/environments/{id}/restrictions`: who may change what runs here, and whether changes
/// wait for approval.
pub async fn set_restrictions(
    State(state): State<AppState>,
    ctx: RequestContext,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<RestrictionsRequest>,
) -> ApiResult<Json<Value>> {
    let service = Environments::new(&state);
    let env = service.set_restrictions(&ctx, &id, req.required_roles, req.approval_required).await?;
    let n = service.deployment_count(&ctx, &env.name).await?;
    let secrets = state.store.list_secrets(crate::store::SecretScope::Environment, &env.id).await?;
    Ok(Json(view(&env, n, &secrets)))
}

/// `GET /v1/environments/{id}/change-windows`: the schedule and whether it is open now.
pub async fn get_change_windows(
    State(state): State<AppState>,
    ctx: RequestContext,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    let (e, _) = Environments::new(&state).get(&ctx, &id).await?;
    Ok(Json(change_windows_view(&e)))
}

/// `PUT /v1/environments/{id}/change-windows`: replaces the schedule.
pub async fn set_change_windows(
    State(state): State<AppState>,
    ctx: RequestContext,
    ApiPath(id): ApiPath<String>,
    ApiJson(doc): ApiJson<ChangeWindowsDoc>,
) -> ApiResult<Json<Value>> {
    let service = Environments::new(&state);
    let env = service.set_change_windows(&ctx, &id, Some(doc)).await?;
    let n = service.deployment_count(&ctx, &env.name).await?;
    let secrets = state.store.list_secrets(crate::store::SecretScope::Environment, &env.id).await?;
    Ok(Json(view(&env, n, &secrets)))
}

/// `DELETE /v1/environments/{id}/change-windows`: no schedule, open at all times.
pub async fn delete_change_windows(
    State(state): State<AppState>,
    ctx: RequestContext,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    let service = Environments::new(&state);
    let env = service.set_change_windows(&ctx, &id, None).await?;
    let n = service.deployment_count(&ctx, &env.name).await?;
    let secrets = state.store.list_secrets(crate::store::SecretScope::Environment, &env.id).await?;
    Ok(Json(view(&env, n, &secrets)))
}
