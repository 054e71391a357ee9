//! A deployment's versions, rollbacks, configuration and env, and its desired status:
//! `/v1/deployments/{id}/versions…`, `/rollback`, `/config`, `/env`, `PATCH /status`. Handlers
//! parse and render; the versions service ([`crate::versions`]) stores versions, and every
//! change of what runs goes through the deployments service (202 + an operation).

use std::collections::BTreeMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::deployments::{MutationParams, etag, if_match, outcome};
use super::{ApiError, ApiJson, ApiPath, ApiQuery, ApiResult, ErrorCode, PageParams, page_json};
use crate::AppState;
use crate::authz::perm;
use crate::context::RequestContext;
use crate::deployments::{Change, Deployments};
use crate::ids::rfc3339;
use crate::model::Configuration;
use crate::store::VersionRecord;
use crate::versions::{NewVersion, Stored, Versions};

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Paging {
    #[param(minimum = 1)]
    page: Option<i64>,
    #[param(minimum = 1, maximum = 200)]
    page_size: Option<i64>,
}

/// `POST …/versions`: every field optional.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateVersion {
    #[schema(pattern = "^[A-Za-z0-9._+-]{1,64}$")]
    version: Option<String>,
    configuration: Option<Value>,
    /// At most 1024 bytes, no control characters but newlines.
    #[schema(pattern = "^[^\\u0000-\\u0009\\u000b-\\u001f\\u007f-\\u009f]*$")]
    description: Option<String>,
    /// A Git-sourced deployment's version from a (new) commit.
    source_configuration: Option<crate::sources::SourceConfiguration>,
}

/// `POST …/rollback` and `…/versions/{version}/rollback`: the body is optional.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RollbackBody {
    /// Why (recorded on the version rolled back from, and in the audit trail): at most 1024
    /// bytes, no control characters but newlines.
    #[schema(pattern = "^[^\\u0000-\\u0009\\u000b-\\u001f\\u007f-\\u009f]*$")]
    reason: Option<String>,
    /// Mark the version rolled back from `failed` instead of `rolled_back`.
    #[serde(default)]
    mark_failed: bool,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PutConfig {
    configuration: Value,
    #[schema(pattern = "^[A-Za-z0-9._+-]{1,64}$")]
    version: Option<String>,
    /// At most 1024 bytes, no control characters but newlines.
    #[schema(pattern = "^[^\\u0000-\\u0009\\u000b-\\u001f\\u007f-\\u009f]*$")]
    description: Option<String>,
    #[serde(default = "yes")]
    deploy: bool,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PutEnv {
    #[schema(schema_with = crate::api::openapi::shape::env)]
    env: BTreeMap<String, String>,
    #[schema(pattern = "^[A-Za-z0-9._+-]{1,64}$")]
    version: Option<String>,
    /// At most 1024 bytes, no control characters but newlines.
    #[schema(pattern = "^[^\\u0000-\\u0009\\u000b-\\u001f\\u007f-\\u009f]*$")]
    description: Option<String>,
    #[serde(default = "yes")]
    deploy: bool,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PatchStatus {
    #[schema(schema_with = desired_status)]
    status: String,
}

fn yes() -> bool {
    true
}

/// A JSON body that may be left out entirely (then `T::default()`).
pub(super) fn optional_body<T: DeserializeOwned + Default>(body: &Bytes) -> ApiResult<T> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| {
        let code = if e.is_data() { ErrorCode::InvalidValue } else { ErrorCode::MalformedJson };
        ApiError::new(StatusCode::BAD_REQUEST, code, format!("invalid request body: {e}"))
    })
}

pub fn version_view(v: &VersionRecord, active: &str) -> Value {
    json!({
        "deploymentId": v.deployment_id,
        "version": v.version,
        "description": v.description,
        "configuration": serde_json::from_str::<Value>(&v.configuration).unwrap_or(Value::Null),
        "source": v.source.as_deref().and_then(|s| serde_json::from_str::<Value>(s).ok()),
        "status": v.status,
        "statusReason": v.status_reason,
        "statusChanged": v.status_changed_at.map(rfc3339),
        "active": v.version == active,
        "created": rfc3339(v.created_at),
        "createdBy": v.created_by,
        "auditId": v.audit_id,
        "lastDeployed": v.deployed_at.map(rfc3339),
        "lastDeployedBy": v.deployed_by,
        "lastOperationId": v.deploy_operation_id,
        "href": format!("/v1/deployments/{}/versions/{}", v.deployment_id, v.version),
    })
}

/// 201 (created, with `Location`) or 200 (the same version existed already).
fn created(stored: &Stored) -> Response {
    let v = &stored.version;
    let body = Json(version_view(v, &stored.active));
    if !stored.fresh {
        return (StatusCode::OK, body).into_response();
    }
    let location = HeaderValue::from_str(&format!("/v1/deployments/{}/versions/{}", v.deployment_id, v.version))
        .expect("ids and version names are valid header values");
    (StatusCode::CREATED, [(header::LOCATION, location)], body).into_response()
}

/// `GET /v1/deployments/{id}/versions`: newest first, each saying whether it is the active one.
#[utoipa::path(
    get,
    path = "/v1/deployments/{id}/versions",
    operation_id = "listVersions",
    tag = "versions",
    summary = "List a deployment's versions",
    params(("id" = String, Path, description = "The deployment's id"), Paging),
    responses(
        (status = 200, description = "A page of versions", body = super::schemas::VersionPage),
    ),
)]
pub async fn list(
    State(state): State<AppState>,
    ctx: RequestContext,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<Paging>,
) -> ApiResult<Json<Value>> {
    let (page, size) = PageParams { page: q.page, page_size: q.page_size, status: None }.resolve()?;
    let (d, rows, total) = Versions::new(&state).list(&ctx, &id, page, size).await?;
    let data = rows.iter().map(|v| version_view(v, &d.active_version)).collect();
    Ok(Json(page_json(data, page, size, total)))
}

#[utoipa::path(
    get,
    path = "/v1/deployments/{id}/versions/{version}",
    operation_id = "getVersion",
    tag = "versions",
    summary = "Get a version",
    params(("id" = String, Path, description = "The deployment's id"), ("version" = String, Path, description = "The version's name")),
    responses(
        (status = 200, description = "The version", body = super::schemas::VersionView),
    ),
)]
pub async fn get(
    State(state): State<AppState>,
    ctx: RequestContext,
    ApiPath((id, version)): ApiPath<(String, String)>,
) -> ApiResult<Json<Value>> {
    let (d, v) = Versions::new(&state).get(&ctx, &id, &version).await?;
    Ok(Json(version_view(&v, &d.active_version)))
}

/// `POST /v1/deployments/{id}/versions`: stores a version without deploying it.
#[utoipa::path(
    post,
    path = "/v1/deployments/{id}/versions",
    operation_id = "createVersion",
    tag = "versions",
    summary = "Store a version (not deployed)",
    params(("id" = String, Path, description = "The deployment's id")),
    request_body = Option<CreateVersion>,
    responses(
        (status = 201, description = "The new version", body = super::schemas::VersionView),
        (status = 200, description = "The same version already exists", body = super::schemas::VersionView),
    ),
)]
pub async fn create(
    State(state): State<AppState>,
    ctx: RequestContext,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let req: CreateVersion = optional_body(&body)?;
    let new = NewVersion {
        version: req.version,
        configuration: req.configuration,
        env: None,
        description: req.description,
        source: req.source_configuration,
    };
    let stored = Versions::new(&state).create(&ctx, &id, if_match(&headers)?, new, perm::VERSION_CREATE).await?;
    Ok(created(&stored))
}

/// `POST /v1/deployments/{id}/versions/{version}/deploy`
#[utoipa::path(
    post,
    path = "/v1/deployments/{id}/versions/{version}/deploy",
    operation_id = "deployVersion",
    tag = "versions",
    summary = "Deploy a stored version",
    params(("id" = String, Path, description = "The deployment's id"), ("version" = String, Path, description = "The version's name"), MutationParams),
    responses(
        (status = 202, description = "The change is accepted: poll the operation (`Location`)", body = super::schemas::ChangeAccepted),
    ),
)]
pub async fn deploy(
    State(state): State<AppState>,
    ctx: RequestContext,
    ApiPath((id, version)): ApiPath<(String, String)>,
    ApiQuery(params): ApiQuery<MutationParams>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let change = Change::Deploy { version };
    Ok(outcome(Deployments::new(&state).change(&ctx, &id, if_match(&headers)?, change, params.options()).await?))
}

/// `POST /v1/deployments/{id}/rollback` (to the previous good version) and
/// `POST /v1/deployments/{id}/versions/{version}/rollback` (to that one).
async fn rollback(
    state: &AppState,
    ctx: &RequestContext,
    id: &str,
    to: Option<String>,
    params: MutationParams,
    headers: &HeaderMap,
    body: &Bytes,
) -> ApiResult<Response> {
    let req: RollbackBody = optional_body(body)?;
    let change = Change::Rollback { to, from: None, reason: req.reason, mark_failed: req.mark_failed };
    Ok(outcome(Deployments::new(state).change(ctx, id, if_match(headers)?, change, params.options()).await?))
}

#[utoipa::path(
    post,
    path = "/v1/deployments/{id}/rollback",
    operation_id = "rollbackDeployment",
    tag = "versions",
    summary = "Roll back to the previous good version",
    params(("id" = String, Path, description = "The deployment's id"), MutationParams),
    request_body = Option<RollbackBody>,
    responses(
        (status = 202, description = "The change is accepted: poll the operation (`Location`)", body = super::schemas::ChangeAccepted),
    ),
)]
pub async fn rollback_previous(
    State(state): State<AppState>,
    ctx: RequestContext,
    ApiPath(id): ApiPath<String>,
    ApiQuery(params): ApiQuery<MutationParams>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    rollback(&state, &ctx, &id, None, params, &headers, &body).await
}

#[utoipa::path(
    post,
    path = "/v1/deployments/{id}/versions/{version}/rollback",
    operation_id = "rollbackToVersion",
    tag = "versions",
    summary = "Roll back to a version",
    params(("id" = String, Path, description = "The deployment's id"), ("version" = String, Path, description = "The version's name"), MutationParams),
    request_body = Option<RollbackBody>,
    responses(
        (status = 202, description = "The change is accepted: poll the operation (`Location`)", body = super::schemas::ChangeAccepted),
    ),
)]
pub async fn rollback_to(
    State(state): State<AppState>,
    ctx: RequestContext,
    ApiPath((id, version)): ApiPath<(String, String)>,
    ApiQuery(params): ApiQuery<MutationParams>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    rollback(&state, &ctx, &id, Some(version), params, &headers, &body).await
}

/// `GET /v1/deployments/{id}/config`: the active version and the configuration running now
/// (with its replica count and the fields Ferry sets); `ETag` is the resource version.
#[utoipa::path(
    get,
    path = "/v1/deployments/{id}/config",
    operation_id = "getDeploymentConfig",
    tag = "versions",
    summary = "A deployment's configuration",
    params(("id" = String, Path, description = "The deployment's id")),
    responses(
        (status = 200, description = "The configuration", body = super::schemas::DeploymentConfigView),
    ),
)]
pub async fn get_config(
    State(state): State<AppState>,
    ctx: RequestContext,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Response> {
    let (p, _) = Deployments::new(&state).get(&ctx, &id).await?;
    let body = json!({ "version": p.record.active_version, "configuration": p.config });
    Ok(([(header::ETAG, etag(&p.record))], Json(body)).into_response())
}

/// `PUT /v1/deployments/{id}/config`: a new version of this configuration (named or generated);
/// `deploy: true` (default) deploys it at once (202, like `PUT /v1/deployments/{id}`), `false`
/// only stores it (201 + the version).
#[utoipa::path(
    put,
    path = "/v1/deployments/{id}/config",
    operation_id = "putDeploymentConfig",
    tag = "versions",
    summary = "Replace a deployment's configuration (a new version)",
    params(("id" = String, Path, description = "The deployment's id"), MutationParams),
    request_body = PutConfig,
    responses(
        (status = 202, description = "Deployed: poll the operation", body = super::schemas::ChangeAccepted),
        (status = 201, description = "Stored as a new version (`deploy: false`)", body = super::schemas::VersionView),
        (status = 200, description = "The version already exists (`deploy: false`)", body = super::schemas::VersionView),
    ),
)]
pub async fn put_config(
    State(state): State<AppState>,
    ctx: RequestContext,
    ApiPath(id): ApiPath<String>,
    ApiQuery(params): ApiQuery<MutationParams>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<PutConfig>,
) -> ApiResult<Response> {
    let precondition = if_match(&headers)?;
    if !req.deploy {
        let new = NewVersion {
            version: req.version,
            configuration: Some(req.configuration),
            env: None,
            description: req.description,
            source: None,
        };
        let stored = Versions::new(&state).create(&ctx, &id, precondition, new, perm::DEPLOYMENT_UPDATE).await?;
        return Ok(created(&stored));
    }
    let deployments = Deployments::new(&state);
    // `replicas` may be left out: the deployment keeps its own.
    let current = deployments.load_for(&ctx, &id, perm::DEPLOYMENT_UPDATE).await?;
    let configuration =
        Configuration::from_request(req.configuration, current.config.replicas).map_err(crate::deployments::invalid)?;
    let change = Change::Update {
        version: req.version,
        target: None,
        configuration: Some(Box::new(configuration)),
        description: req.description,
    };
    Ok(outcome(deployments.change(&ctx, &id, precondition, change, params.options()).await?))
}

/// `GET /v1/deployments/{id}/env`: the active version and its `env` (secrets are
/// `GET …/secrets`).
#[utoipa::path(
    get,
    path = "/v1/deployments/{id}/env",
    operation_id = "getDeploymentEnv",
    tag = "versions",
    summary = "A deployment's environment variables",
    params(("id" = String, Path, description = "The deployment's id")),
    responses(
        (status = 200, description = "The variables", body = super::schemas::DeploymentEnvView),
    ),
)]
pub async fn get_env(
    State(state): State<AppState>,
    ctx: RequestContext,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Response> {
    let (p, _) = Deployments::new(&state).get(&ctx, &id).await?;
    let body = json!({ "version": p.record.active_version, "env": p.config.env });
    Ok(([(header::ETAG, etag(&p.record))], Json(body)).into_response())
}

/// `PUT /v1/deployments/{id}/env`: the running configuration with this `env` as a new version,
/// deployed at once (`deploy: true`, default) or only stored.
#[utoipa::path(
    put,
    path = "/v1/deployments/{id}/env",
    operation_id = "putDeploymentEnv",
    tag = "versions",
    summary = "Replace a deployment's environment variables (a new version)",
    params(("id" = String, Path, description = "The deployment's id"), MutationParams),
    request_body = PutEnv,
    responses(
        (status = 202, description = "Deployed: poll the operation", body = super::schemas::ChangeAccepted),
        (status = 201, description = "Stored as a new version (`deploy: false`)", body = super::schemas::VersionView),
        (status = 200, description = "The version already exists (`deploy: false`)", body = super::schemas::VersionView),
    ),
)]
pub async fn put_env(
    State(state): State<AppState>,
    ctx: RequestContext,
    ApiPath(id): ApiPath<String>,
    ApiQuery(params): ApiQuery<MutationParams>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<PutEnv>,
) -> ApiResult<Response> {
    let precondition = if_match(&headers)?;
    if !req.deploy {
        let new = NewVersion {
            version: req.version,
            configuration: None,
            env: Some(req.env),
            description: req.description,
            source: None,
        };
        let stored = Versions::new(&state).create(&ctx, &id, precondition, new, perm::DEPLOYMENT_UPDATE).await?;
        return Ok(created(&stored));
    }
    let change = Change::Env { env: req.env, version: req.version, description: req.description };
    Ok(outcome(Deployments::new(&state).change(&ctx, &id, precondition, change, params.options()).await?))
}

/// The statuses [`patch_status`] accepts.
fn desired_status() -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::Type::String)
        .enum_values(Some(["running", "stopped", "restarting"]))
        .build()
}

/// `PATCH /v1/deployments/{id}/status`: `{"status": "running" | "stopped" | "restarting"}`, the
/// same changes as `POST …/start|stop|restart`.
#[utoipa::path(
    patch,
    path = "/v1/deployments/{id}/status",
    operation_id = "setDeploymentStatus",
    tag = "deployments",
    summary = "Start, stop or restart a deployment by its status",
    params(("id" = String, Path, description = "The deployment's id"), MutationParams),
    request_body = PatchStatus,
    responses(
        (status = 202, description = "The change is accepted: poll the operation (`Location`)", body = super::schemas::ChangeAccepted),
    ),
)]
pub async fn patch_status(
    State(state): State<AppState>,
    ctx: RequestContext,
    ApiPath(id): ApiPath<String>,
    ApiQuery(params): ApiQuery<MutationParams>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<PatchStatus>,
) -> ApiResult<Response> {
    let change = match req.status.as_str() {
        "running" => Change::Start,
        "stopped" => Change::Stop,
        "restarting" => Change::Restart,
        other => {
            return Err(ApiError::validation(
                "status",
                format!("unknown status {other:?}: one of running, stopped, restarting"),
            ));
        }
    };
    Ok(outcome(Deployments::new(&state).change(&ctx, &id, if_match(&headers)?, change, params.options()).await?))
}
