//! `/v1/auth`, `/v1/users`, `/v1/api-keys`: handlers parse and render; the rules are in
//! [`crate::principals`].

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{Value, json};

use super::idempotency::NotReplayable;
use super::{ApiError, ApiJson, ApiPath, ApiQuery, ApiResult, RequestId, page_json};
use crate::AppState;
use crate::authz::{BindingInput, Permission, RoleBinding, Scope, perm};
use crate::context::{RequestContext, Source};
use crate::ids::rfc3339;
use crate::principals::{self, ApiKeys, Users};
use crate::store::{ApiKeyRecord, UserRecord};

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Login {
    username: String,
    password: String,
}

#[utoipa::path(
    post,
    path = "/v1/auth/login",
    operation_id = "login",
    tag = "auth",
    summary = "Log in (public)",
    request_body = Login,
    responses(
        (status = 200, description = "A session token", body = super::schemas::LoginResponse),
    ),
)]
pub async fn login(
    State(state): State<AppState>,
    Source(source): Source,
    axum::Extension(RequestId(request_id)): axum::Extension<RequestId>,
    ApiJson(req): ApiJson<Login>,
) -> Response {
    if let Err(e) = principals::validate_username(&req.username) {
        return e.into_response();
    }
    match principals::login(&state, &req.username, req.password, source.as_deref(), &request_id).await {
        Ok(s) => Json(json!({
            "token": s.token,
            "expiresAt": rfc3339(s.expires_at),
            "user": user_view(&s.user),
        }))
        .into_response(),
        Err(e) => {
            let retry = e.details.get("retryAfterSeconds").and_then(Value::as_u64);
            let mut res = e.into_response();
            if let Some(secs) = retry {
                res.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
            }
            res
        }
    }
}

/// Ends the session whose token authenticated this request.
#[utoipa::path(
    post,
    path = "/v1/auth/logout",
    operation_id = "logout",
    tag = "auth",
    summary = "End this login session",
    responses(
        (status = 204, description = "Logged out"),
    ),
)]
pub async fn logout(State(state): State<AppState>, ctx: RequestContext, headers: HeaderMap) -> ApiResult<StatusCode> {
    let token = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(super::bearer_token);
    match token.filter(|t| t.starts_with(principals::SESSION_PREFIX)) {
        Some(t) => {
            let audit = ctx.audit("auth.logout", &ctx.principal.id, json!({}));
            state.store.end_user_session(&crate::ids::hash_secret(t), &audit, crate::ids::now_ms()).await?;
            Ok(StatusCode::NO_CONTENT)
        }
        None => Err(ApiError::validation("Authorization", "logout ends a login session; API keys are revoked instead")),
    }
}

/// Who am I: the principal, its role bindings, their permissions, and what it may do in each
/// environment.
#[utoipa::path(
    get,
    path = "/v1/auth/me",
    operation_id = "getMe",
    tag = "auth",
    summary = "Who am I",
    responses(
        (status = 200, description = "The caller", body = super::schemas::Me),
    ),
)]
pub async fn me(State(state): State<AppState>, ctx: RequestContext) -> ApiResult<Json<Value>> {
    const SHOWN: &[Permission] = &[
        perm::DEPLOYMENT_READ,
        perm::DEPLOYMENT_CREATE,
        perm::DEPLOYMENT_UPDATE,
        perm::DEPLOYMENT_SCALE,
        perm::DEPLOYMENT_DELETE,
        perm::VERSION_DEPLOY,
        perm::ROLLBACK_EXECUTE,
        perm::SECRET_UPDATE,
        perm::LOGS_READ,
        perm::ENVIRONMENT_LOCK,
    ];
    let p = &ctx.principal;
    let mut workspaces: Vec<Option<&str>> = p.roles.iter().map(|b| b.workspace.as_deref()).collect();
    workspaces.sort_unstable();
    workspaces.dedup();
    let mut environments = Vec::new();
    for env in state.store.list_environments().await? {
        let allowed: Vec<String> = SHOWN
            .iter()
            .filter(|perm| workspaces.iter().any(|w| ctx.allows(**perm, Scope::env(env.scope(), *w))))
            .map(ToString::to_string)
            .collect();
        if !allowed.is_empty() {
            environments.push(json!({
                "name": env.name,
                "type": env.kind,
                "permissions": allowed,
                "approvalRequired": env.approval_required,
            }));
        }
    }
    let mut permissions: Vec<&str> = p.roles.iter().flat_map(|b| b.role.permissions().iter().copied()).collect();
    permissions.sort_unstable();
    permissions.dedup();
    Ok(Json(json!({
        "type": p.kind.as_str(),
        "id": p.id,
        "name": p.name,
        "roles": p.roles,
        "permissions": permissions,
        "environments": environments,
    })))
}

fn user_view(u: &UserRecord) -> Value {
    json!({
        "id": u.id,
        "username": u.username,
        "roles": u.roles,
        "createdBy": u.created_by,
        "created": rfc3339(u.created_at),
        "updated": rfc3339(u.updated_at),
    })
}

fn key_view(k: &ApiKeyRecord) -> Value {
    json!({
        "id": k.id,
        "name": k.name,
        "roles": k.roles,
        "owner": k.owner,
        "created": rfc3339(k.created_at),
        "expiresAt": k.expires_at.map(rfc3339),
        "revoked": k.revoked_at.map(rfc3339),
        "status": if k.revoked_at.is_some() { "revoked" }
            else if k.expires_at.is_some_and(|e| e <= crate::ids::now_ms()) { "expired" } else { "active" },
    })
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateUser {
    #[schema(pattern = "^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")]
    username: String,
    #[schema(min_length = 12, max_length = 1024)]
    password: String,
    #[serde(default)]
    #[schema(max_items = 32)]
    roles: Vec<BindingInput>,
}

#[utoipa::path(
    post,
    path = "/v1/users",
    operation_id = "createUser",
    tag = "users",
    summary = "Create a user",
    request_body = CreateUser,
    responses(
        (status = 201, description = "The user", body = super::schemas::UserView),
    ),
)]
pub async fn create_user(
    State(state): State<AppState>,
    ctx: RequestContext,
    ApiJson(req): ApiJson<CreateUser>,
) -> ApiResult<Response> {
    let roles = req.roles.into_iter().map(RoleBinding::from).collect();
    let u = Users::new(&state).create(&ctx, req.username, req.password, roles).await?;
    Ok(super::created(&format!("/v1/users/{}", u.id), user_view(&u)))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ListParams {
    #[param(minimum = 1)]
    page: Option<i64>,
    #[param(minimum = 1, maximum = 200)]
    page_size: Option<i64>,
}

impl ListParams {
    fn resolve(&self) -> ApiResult<(i64, i64)> {
        super::PageParams { page: self.page, page_size: self.page_size, status: None }.resolve()
    }
}

#[utoipa::path(
    get,
    path = "/v1/users",
    operation_id = "listUsers",
    tag = "users",
    summary = "List users",
    params(ListParams),
    responses(
        (status = 200, description = "A page of users", body = super::schemas::UserPage),
    ),
)]
pub async fn list_users(
    State(state): State<AppState>,
    ctx: RequestContext,
    ApiQuery(q): ApiQuery<ListParams>,
) -> ApiResult<Json<Value>> {
    let (page, size) = q.resolve()?;
    let (users, total) = Users::new(&state).list(&ctx, (page - 1) * size, size).await?;
    Ok(Json(page_json(users.iter().map(user_view).collect(), page, size, total)))
}

#[utoipa::path(
    get,
    path = "/v1/users/{id}",
    operation_id = "getUser",
    tag = "users",
    summary = "Get a user",
    params(("id" = String, Path, description = "The user's id")),
    responses(
        (status = 200, description = "The user", body = super::schemas::UserView),
    ),
)]
pub async fn get_user(
    State(state): State<AppState>,
    ctx: RequestContext,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    Ok(Json(user_view(&Users::new(&state).get(&ctx, &id).await?)))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateUser {
    #[schema(min_length = 12, max_length = 1024)]
    password: Option<String>,
    current_password: Option<String>,
    roles: Option<Vec<BindingInput>>,
}

#[utoipa::path(
    put,
    path = "/v1/users/{id}",
    operation_id = "updateUser",
    tag = "users",
    summary = "Change a user's password or roles",
    params(("id" = String, Path, description = "The user's id")),
    request_body = UpdateUser,
    responses(
        (status = 200, description = "The user", body = super::schemas::UserView),
    ),
)]
pub async fn update_user(
    State(state): State<AppState>,
    ctx: RequestContext,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<UpdateUser>,
) -> ApiResult<Json<Value>> {
    if req.password.is_none() && req.roles.is_none() {
        return Err(ApiError::validation("password", "nothing to change: send password and/or roles"));
    }
    let roles = req.roles.map(|r| r.into_iter().map(RoleBinding::from).collect());
    let u = Users::new(&state).update(&ctx, &id, req.password, req.current_password, roles).await?;
    Ok(Json(user_view(&u)))
}

#[utoipa::path(
    delete,
    path = "/v1/users/{id}",
    operation_id = "deleteUser",
    tag = "users",
    summary = "Delete a user",
    params(("id" = String, Path, description = "The user's id")),
    responses(
        (status = 204, description = "Deleted"),
    ),
)]
pub async fn delete_user(
    State(state): State<AppState>,
    ctx: RequestContext,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    Users::new(&state).delete(&ctx, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateKey {
    #[schema(pattern = "^[a-z0-9][a-z0-9-]{0,62}$")]
    name: String,
    #[schema(min_items = 1, max_items = 32)]
    roles: Vec<BindingInput>,
    #[schema(minimum = 1, maximum = 3650)]
    expires_in_days: Option<i64>,
}

#[utoipa::path(
    post,
    path = "/v1/api-keys",
    operation_id = "createApiKey",
    tag = "users",
    summary = "Create an API key (shown once)",
    request_body = CreateKey,
    responses(
        (status = 201, description = "The key", body = super::schemas::ApiKeyView),
    ),
)]
pub async fn create_key(
    State(state): State<AppState>,
    ctx: RequestContext,
    ApiJson(req): ApiJson<CreateKey>,
) -> ApiResult<Response> {
    let roles = req.roles.into_iter().map(RoleBinding::from).collect();
    let (record, key) = ApiKeys::new(&state).create(&ctx, req.name, roles, req.expires_in_days).await?;
    let mut view = key_view(&record);
    view["key"] = json!(key);
    // The key is shown once: an idempotent repeat must not get it from a stored copy.
    Ok((StatusCode::CREATED, Extension(NotReplayable), Json(view)).into_response())
}

#[utoipa::path(
    get,
    path = "/v1/api-keys",
    operation_id = "listApiKeys",
    tag = "users",
    summary = "List API keys",
    params(ListParams),
    responses(
        (status = 200, description = "A page of API keys", body = super::schemas::ApiKeyPage),
    ),
)]
pub async fn list_keys(
    State(state): State<AppState>,
    ctx: RequestContext,
    ApiQuery(q): ApiQuery<ListParams>,
) -> ApiResult<Json<Value>> {
    let (page, size) = q.resolve()?;
    let (keys, total) = ApiKeys::new(&state).list(&ctx, (page - 1) * size, size).await?;
    Ok(Json(page_json(keys.iter().map(key_view).collect(), page, size, total)))
}

#[utoipa::path(
    delete,
    path = "/v1/api-keys/{id}",
    operation_id = "revokeApiKey",
    tag = "users",
    summary = "Revoke an API key",
    params(("id" = String, Path, description = "The API key's id")),
    responses(
        (status = 204, description = "Revoked"),
    ),
)]
pub async fn revoke_key(
    State(state): State<AppState>,
    ctx: RequestContext,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    ApiKeys::new(&state).revoke(&ctx, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
