//! `/v1/deployments/{direct,github,sources}`: deployment sources. Handlers parse and render; the
//! sources service ([`crate::sources`]) resolves Git sources and creates through the
//! deployments service.

use axum::Json;
use axum::extract::State;
use axum::response::Response;
use serde_json::Value;

use super::deployments::{MutationParams, outcome};
use super::{ApiJson, ApiQuery, ApiResult};
use crate::AppState;
use crate::context::RequestContext;
use crate::sources::{GitDeploymentRequest, Sources, ValidateRequest};

/// `POST /v1/deployments/github`: a deployment from a deployment file at a commit of a Git
/// repository (202 with the deployment and its operation, like `POST /v1/deployments`).
#[utoipa::path(
    post,
    path = "/v1/deployments/github",
    operation_id = "createGitDeployment",
    tag = "deployments",
    summary = "Create a deployment from a Git source",
    params(super::deployments::MutationParams),
    request_body = GitDeploymentRequest,
    responses(
        (status = 202, description = "The change is accepted: poll the operation (`Location`)", body = super::schemas::ChangeAccepted),
    ),
)]
pub async fn create_github(
    State(state): State<AppState>,
    ctx: RequestContext,
    ApiQuery(params): ApiQuery<MutationParams>,
    ApiJson(req): ApiJson<GitDeploymentRequest>,
) -> ApiResult<Response> {
    Ok(outcome(Sources::new(&state).create(&ctx, req, params.options()).await?))
}

/// `GET /v1/deployments/sources`: the source types, whether they are available, their fields.
#[utoipa::path(
    get,
    path = "/v1/deployments/sources",
    operation_id = "listDeploymentSources",
    tag = "deployments",
    summary = "The kinds of deployment sources and their fields",
    responses(
        (status = 200, description = "Deployment sources", body = super::schemas::SourceList),
    ),
)]
pub async fn list(State(state): State<AppState>, _ctx: RequestContext) -> Json<Value> {
    Json(crate::sources::list(state.config.allow_file_sources))
}

/// `POST /v1/deployments/sources/validate`: checks a source (reachable, ref exists, deployment
/// file valid) without creating anything.
#[utoipa::path(
    post,
    path = "/v1/deployments/sources/validate",
    operation_id = "validateDeploymentSource",
    tag = "deployments",
    summary = "Check that a deployment source resolves",
    request_body = ValidateRequest,
    responses(
        (status = 200, description = "The source resolves", body = super::schemas::SourceValidation),
    ),
)]
pub async fn validate(
    State(state): State<AppState>,
    ctx: RequestContext,
    ApiJson(req): ApiJson<ValidateRequest>,
) -> ApiResult<Json<Value>> {
    Ok(Json(Sources::new(&state).validate(&ctx, req).await?))
}
