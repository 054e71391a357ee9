//! `/v1/webhooks`: subscriptions to events, their delivery logs and redelivery. Handlers parse
//! and render; the rules are in [`crate::webhooks`].

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{Value, json};

use super::idempotency::NotReplayable;
use super::{ApiJson, ApiPath, ApiQuery, ApiResult, PageParams, page_json};
use crate::AppState;
use crate::context::RequestContext;
use crate::domain::DeliveryStatus;
use crate::ids::rfc3339;
use crate::store::{DeliveryRecord, WebhookRecord};
use crate::webhooks::{NewWebhook, Webhooks};

/// How a stored secret is shown.
const MASKED: &str = "********";

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateWebhook {
    url: String,
    events: Vec<String>,
    #[serde(default)]
    secret: Option<String>,
    #[serde(default)]
    description: Option<String>,
}

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

fn webhook_view(w: &WebhookRecord) -> Value {
    json!({
        "id": w.id,
        "url": w.url,
        "events": w.events,
        "description": w.description,
        "secret": MASKED,
        "createdBy": w.created_by,
        "createdAt": rfc3339(w.created_at),
        "href": format!("/v1/webhooks/{}", w.id),
        "deliveries": format!("/v1/webhooks/{}/deliveries", w.id),
    })
}

fn delivery_view(d: &DeliveryRecord) -> Value {
    // The stored payload is JSON this build wrote; shown as a document.
    let payload: Value = serde_json::from_str(&d.payload).unwrap_or(Value::Null);
    json!({
        "id": d.id,
        "webhookId": d.webhook_id,
        "eventId": d.event_id,
        "event": d.event_type,
        "status": d.status,
        "attempts": d.attempts,
        "lastResponseCode": d.last_status,
        "lastError": d.last_error,
        "nextAttemptAt": (d.status == DeliveryStatus::Pending).then(|| rfc3339(d.next_attempt_at)),
        "createdAt": rfc3339(d.created_at),
        "updatedAt": rfc3339(d.updated_at),
        "deliveredAt": d.delivered_at.map(rfc3339),
        "payload": payload,
    })
}

#[utoipa::path(
    post,
    path = "/v1/webhooks",
    operation_id = "createWebhook",
    tag = "webhooks",
    summary = "Create a webhook (its secret shown once)",
    request_body = CreateWebhook,
    responses(
        (status = 201, description = "The webhook, with its secret", body = super::schemas::WebhookView),
    ),
)]
pub async fn create(
    State(state): State<AppState>,
    ctx: RequestContext,
    ApiJson(req): ApiJson<CreateWebhook>,
) -> ApiResult<Response> {
    let new = NewWebhook { url: req.url, events: req.events, secret: req.secret, description: req.description };
    let (w, secret) = Webhooks::new(&state).create(&ctx, new).await?;
    let mut body = webhook_view(&w);
    // Shown this once; afterwards only masked.
    body["secret"] = json!(secret);
    let location = format!("/v1/webhooks/{}", w.id);
    // The secret is shown once: an idempotent repeat must not get it from a stored copy.
    Ok((StatusCode::CREATED, [(header::LOCATION, location)], Extension(NotReplayable), Json(body)).into_response())
}

#[utoipa::path(
    get,
    path = "/v1/webhooks",
    operation_id = "listWebhooks",
    tag = "webhooks",
    summary = "List webhooks",
    params(Paging),
    responses(
        (status = 200, description = "A page of webhooks", body = super::schemas::WebhookPage),
    ),
)]
pub async fn list(
    State(state): State<AppState>,
    ctx: RequestContext,
    ApiQuery(q): ApiQuery<Paging>,
) -> ApiResult<Json<Value>> {
    let (page, size) = q.resolve()?;
    let (rows, total) = Webhooks::new(&state).list(&ctx, page, size).await?;
    Ok(Json(page_json(rows.iter().map(webhook_view).collect(), page, size, total)))
}

#[utoipa::path(
    get,
    path = "/v1/webhooks/{id}",
    operation_id = "getWebhook",
    tag = "webhooks",
    summary = "Get a webhook",
    params(("id" = String, Path, description = "The webhook's id")),
    responses(
        (status = 200, description = "The webhook", body = super::schemas::WebhookView),
    ),
)]
pub async fn get(
    State(state): State<AppState>,
    ctx: RequestContext,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    Ok(Json(webhook_view(&Webhooks::new(&state).get(&ctx, &id).await?)))
}

#[utoipa::path(
    delete,
    path = "/v1/webhooks/{id}",
    operation_id = "deleteWebhook",
    tag = "webhooks",
    summary = "Delete a webhook",
    params(("id" = String, Path, description = "The webhook's id")),
    responses(
        (status = 204, description = "Deleted"),
    ),
)]
pub async fn delete(
    State(state): State<AppState>,
    ctx: RequestContext,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    Webhooks::new(&state).delete(&ctx, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    get,
    path = "/v1/webhooks/{id}/deliveries",
    operation_id = "listWebhookDeliveries",
    tag = "webhooks",
    summary = "A webhook's deliveries",
    params(("id" = String, Path, description = "The webhook's id"), Paging),
    responses(
        (status = 200, description = "A page of deliveries", body = super::schemas::DeliveryPage),
    ),
)]
pub async fn deliveries(
    State(state): State<AppState>,
    ctx: RequestContext,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<Paging>,
) -> ApiResult<Json<Value>> {
    let (page, size) = q.resolve()?;
    let (rows, total) = Webhooks::new(&state).deliveries(&ctx, &id, page, size).await?;
    Ok(Json(page_json(rows.iter().map(delivery_view).collect(), page, size, total)))
}

#[utoipa::path(
    post,
    path = "/v1/webhooks/{id}/deliveries/{delivery_id}/redeliver",
    operation_id = "redeliverWebhook",
    tag = "webhooks",
    summary = "Send a delivery again",
    params(("id" = String, Path, description = "The webhook's id"), ("delivery_id" = String, Path, description = "The delivery's id")),
    responses(
        (status = 202, description = "Queued again", body = super::schemas::DeliveryView),
    ),
)]
pub async fn redeliver(
    State(state): State<AppState>,
    ctx: RequestContext,
    ApiPath((id, delivery)): ApiPath<(String, String)>,
) -> ApiResult<Response> {
    let d = Webhooks::new(&state).redeliver(&ctx, &id, &delivery).await?;
    let location = format!("/v1/webhooks/{id}/deliveries");
    Ok((StatusCode::ACCEPTED, [(header::LOCATION, location)], Json(delivery_view(&d))).into_response())
}
