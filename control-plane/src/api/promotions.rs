//! Promotions along the environments' chain: `POST /v1/deployments/{id}/promote` and
//! `POST /v1/environments/{id}/promote`. Handlers parse and render; the promotions service
//! ([`crate::promotions`]) resolves what goes where, and the deployments service makes the
//! change (202 + an operation, or a pending change).

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::deployments::{MutationParams, outcome_body, outcome_with};
use super::{ApiError, ApiJson, ApiPath, ApiQuery, ApiResult};
use crate::AppState;
use crate::context::RequestContext;
use crate::deployments::Outcome;
use crate::promotions::{PromoteRequest, Promoted, Promotions, Selection};

/// `POST /v1/deployments/{id}/promote`: the body is optional.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PromoteBody {
    /// The version to promote [default: the active one].
    version: Option<String>,
    /// Must be the next environment of the chain when given.
    target_environment: Option<String>,
    /// Replicas of the target [default: the source's for a new target, its own for an existing one].
    replicas: Option<u32>,
}

/// `POST /v1/environments/{id}/promote`: `deployments` or `all: true`; `from` optional.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PromoteEnvironmentBody {
    /// Ids or names of deployments of the previous environment (at most 100).
    deployments: Option<Vec<String>>,
    #[serde(default)]
    all: bool,
    from: Option<String>,
}

/// What a promotion says besides its change: where from, where to, which version, and whether
/// it creates the target deployment.
fn promotion_view(p: &Promoted) -> Value {
    json!({
        "sourceDeploymentId": p.promotion.source_deployment_id,
        "sourceEnvironment": p.promotion.source_environment,
        "targetEnvironment": p.promotion.target_environment,
        "version": p.promotion.version,
        "targetDeploymentId": operation_of(&p.outcome).deployment_id,
        "created": p.created,
    })
}

fn operation_of(o: &Outcome<crate::deployments::Accepted>) -> &crate::store::OperationRecord {
    match o {
        Outcome::Applied(a) => &a.operation,
        Outcome::Deferred(d) => &d.operation,
    }
}

/// 202 like every change (the target deployment, its operation in `Location`, the pending
/// change if it waits), plus `promotion`.
#[utoipa::path(
    post,
    path = "/v1/deployments/{id}/promote",
    operation_id = "promoteDeployment",
    tag = "deployments",
    summary = "Promote a deployment's version to the next environment of the chain",
    params(("id" = String, Path, description = "The deployment's id"), MutationParams),
    request_body = Option<PromoteBody>,
    responses(
        (status = 202, description = "The change is accepted in the target: poll the operation (`Location`)", body = super::schemas::PromotionAccepted),
    ),
)]
pub async fn promote_deployment(
    State(state): State<AppState>,
    ctx: RequestContext,
    ApiPath(id): ApiPath<String>,
    ApiQuery(params): ApiQuery<MutationParams>,
    body: Bytes,
) -> ApiResult<Response> {
    let req: PromoteBody = super::versions::optional_body(&body)?;
    let req =
        PromoteRequest { version: req.version, target_environment: req.target_environment, replicas: req.replicas };
    let promoted = Promotions::new(&state).promote(&ctx, &id, req, params.options()).await?;
    let view = promotion_view(&promoted);
    Ok(outcome_with(promoted.outcome, move |body| body["promotion"] = view))
}

/// 202 when every item was accepted, 207 (Multi-Status) when some (or all) failed, each item
/// saying how it ended; 200 with no items when `all` found nothing to promote.
#[utoipa::path(
    post,
    path = "/v1/environments/{id}/promote",
    operation_id = "promoteIntoEnvironment",
    tag = "environments",
    summary = "Promote deployments of the previous environment into this one",
    params(("id" = String, Path, description = "The environment's id"), MutationParams),
    request_body = PromoteEnvironmentBody,
    responses(
        (status = 202, description = "Every item was accepted", body = super::schemas::EnvironmentPromotion),
        (status = 207, description = "Some or all items failed; each says how it ended", body = super::schemas::EnvironmentPromotion),
        (status = 200, description = "`all` found nothing to promote", body = super::schemas::EnvironmentPromotion),
    ),
)]
pub async fn promote_environment(
    State(state): State<AppState>,
    ctx: RequestContext,
    ApiPath(id): ApiPath<String>,
    ApiQuery(params): ApiQuery<MutationParams>,
    ApiJson(req): ApiJson<PromoteEnvironmentBody>,
) -> ApiResult<Response> {
    let selection = match (req.deployments, req.all) {
        (Some(keys), false) => Selection::Named(keys),
        (None, true) => Selection::All,
        (Some(_), true) => {
            return Err(ApiError::validation("all", "give either \"deployments\" or \"all\": true, not both"));
        }
        (None, false) => {
            return Err(ApiError::validation(
                "deployments",
                "name the deployments to promote (\"deployments\": [ids or names]) or send \"all\": true",
            ));
        }
    };
    let done = Promotions::new(&state).promote_environment(&ctx, &id, req.from, selection, params.options()).await?;
    let mut failed = 0;
    let mut first_operation = None;
    let items: Vec<Value> = done
        .items
        .iter()
        .map(|item| match &item.result {
            Ok(p) => {
                let mut v = outcome_body(&p.outcome);
                let op = operation_of(&p.outcome);
                first_operation.get_or_insert_with(|| op.id.clone());
                // The target deployment's full view is one GET away.
                if let Some(o) = v.as_object_mut() {
                    o.remove("deployment");
                }
                v["deployment"] = json!(item.key);
                v["status"] = json!("promoted");
                v["promotion"] = promotion_view(p);
                v
            }
            Err(e) => {
                failed += 1;
                if let Some(cause) = &e.cause {
                    tracing::error!(request_id = %ctx.request_id, deployment = %item.key, code = %e.code, error = %cause,
                        "an item of an environment promotion failed");
                }
                json!({
                    "deployment": item.key,
                    "sourceDeploymentId": item.source_id,
                    "status": "failed",
                    "error": e.body(&ctx.request_id)["error"].clone(),
                })
            }
        })
        .collect();
    let total = items.len();
    let status = if total == 0 {
        StatusCode::OK
    } else if failed == 0 {
        StatusCode::ACCEPTED
    } else {
        StatusCode::MULTI_STATUS
    };
    let body = json!({
        "environment": done.environment.name,
        "from": done.from,
        "summary": { "requested": total, "promoted": total - failed, "failed": failed },
        "items": items,
    });
    // Each item names its own operation; `Location` names the first one accepted.
    let location = first_operation.and_then(|op| HeaderValue::from_str(&format!("/v1/operations/{op}")).ok());
    let mut res = (status, Json(body)).into_response();
    if let Some(l) = location {
        res.headers_mut().insert(header::LOCATION, l);
    }
    Ok(res)
}
