//! `/v1/approvals`: pending changes (production approvals, changes waiting for their change
//! window). Handlers parse and render; the rules are in [`crate::approvals`].

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::deployments::operation_view;
use super::{ApiError, ApiJson, ApiPath, ApiQuery, ApiResult, ErrorCode, PageParams, page_json};
use crate::AppState;
use crate::approvals::{Approvals, Decided};
use crate::context::RequestContext;
use crate::domain::ApprovalStatus;
use crate::ids::rfc3339;
use crate::store::ApprovalRecord;

pub fn approval_view(a: &ApprovalRecord) -> Value {
    // The stored request is JSON written by this build; shown as a document.
    let request: Value = serde_json::from_str(&a.request).unwrap_or(Value::Null);
    json!({
        "id": a.id,
        "status": a.status,
        "environment": a.environment,
        "deploymentId": a.deployment_id,
        "deploymentName": a.deployment_name,
        "action": a.action,
        "permission": a.permission,
        "request": request,
        "requestedBy": a.requester,
        "requestId": a.request_id,
        "operationId": a.operation_id,
        "approvalRequired": a.approval_required,
        "waitForWindow": a.wait_for_window,
        "message": a.message,
        "decidedBy": a.decided_by,
        "comment": a.decision_comment,
        "decidedAt": a.decided_at.map(rfc3339),
        "created": rfc3339(a.created_at),
        "updated": rfc3339(a.updated_at),
        "expiresAt": rfc3339(a.expires_at),
        "href": format!("/v1/approvals/{}", a.id),
    })
}

fn decided_view(d: &Decided) -> Value {
    json!({ "approval": approval_view(&d.approval), "operation": operation_view(&d.operation) })
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ListParams {
    #[param(minimum = 1)]
    page: Option<i64>,
    #[param(minimum = 1, maximum = 200)]
    page_size: Option<i64>,
    /// One status, or `all`; `pending` by default.
    status: Option<String>,
}

#[utoipa::path(
    get,
    path = "/v1/approvals",
    operation_id = "listApprovals",
    tag = "approvals",
    summary = "List pending changes",
    params(ListParams),
    responses(
        (status = 200, description = "A page of pending changes", body = super::schemas::ApprovalPage),
    ),
)]
pub async fn list(
    State(state): State<AppState>,
    ctx: RequestContext,
    ApiQuery(q): ApiQuery<ListParams>,
) -> ApiResult<Json<Value>> {
    let (page, page_size) = PageParams { page: q.page, page_size: q.page_size, status: None }.resolve()?;
    let status = match q.status.as_deref() {
        None => Some(ApprovalStatus::Pending),
        Some("all") => None,
        Some(s) => Some(ApprovalStatus::parse(s).ok_or_else(|| {
            ApiError::validation("status", format!("unknown status {s:?}: one of {}, or all", ApprovalStatus::names()))
        })?),
    };
    let (rows, total) = Approvals::new(&state).list(&ctx, status, page, page_size).await?;
    Ok(Json(page_json(rows.iter().map(approval_view).collect(), page, page_size, total)))
}

#[utoipa::path(
    get,
    path = "/v1/approvals/{id}",
    operation_id = "getApproval",
    tag = "approvals",
    summary = "Get a pending change",
    params(("id" = String, Path, description = "The pending change's id")),
    responses(
        (status = 200, description = "The pending change", body = super::schemas::ApprovalView),
    ),
)]
pub async fn get(
    State(state): State<AppState>,
    ctx: RequestContext,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    Ok(Json(approval_view(&Approvals::new(&state).get(&ctx, &id).await?)))
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DecisionBody {
    #[serde(default)]
    comment: Option<String>,
}

/// A JSON body that may be absent (an approval needs no comment).
fn optional_json<T: DeserializeOwned + Default>(headers: &HeaderMap, body: &Bytes) -> ApiResult<T> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(';').next().is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json")));
    if !json {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::UnsupportedMediaType,
            "expected a request body with Content-Type: application/json",
        ));
    }
    serde_json::from_slice(body).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => {
            ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::InvalidValue, e.to_string())
        }
        _ => ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::MalformedJson, e.to_string()),
    })
}

/// `POST /v1/approvals/{id}/approve` (`{"comment"}` optional): 202 with the operation to poll.
#[utoipa::path(
    post,
    path = "/v1/approvals/{id}/approve",
    operation_id = "approveChange",
    tag = "approvals",
    summary = "Approve a pending change",
    params(("id" = String, Path, description = "The pending change's id")),
    request_body = Option<DecisionBody>,
    responses(
        (status = 202, description = "Approved: poll the operation", body = super::schemas::Decided),
    ),
)]
pub async fn approve(
    State(state): State<AppState>,
    ctx: RequestContext,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let req: DecisionBody = optional_json(&headers, &body)?;
    let d = Approvals::new(&state).approve(&ctx, &id, req.comment).await?;
    let location =
        HeaderValue::from_str(&format!("/v1/operations/{}", d.operation.id)).expect("ids are valid header values");
    Ok((StatusCode::ACCEPTED, [(header::LOCATION, location)], Json(decided_view(&d))).into_response())
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RejectBody {
    comment: String,
}

/// `POST /v1/approvals/{id}/reject` (`{"comment"}` required).
#[utoipa::path(
    post,
    path = "/v1/approvals/{id}/reject",
    operation_id = "rejectChange",
    tag = "approvals",
    summary = "Reject a pending change",
    params(("id" = String, Path, description = "The pending change's id")),
    request_body = RejectBody,
    responses(
        (status = 200, description = "Rejected", body = super::schemas::Decided),
    ),
)]
pub async fn reject(
    State(state): State<AppState>,
    ctx: RequestContext,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<RejectBody>,
) -> ApiResult<Json<Value>> {
    let d = Approvals::new(&state).reject(&ctx, &id, req.comment).await?;
    Ok(Json(decided_view(&d)))
}
