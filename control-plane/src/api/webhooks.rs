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

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateWebhook {
    url: String,
    events: Vec<String>,
    #[serde(default)]
    secret: Option<String>,
    #[serde(default)]
    description: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Paging {
    page: Option<i64>,
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

pub async fn list(
    State(state): State<AppState>,
    ctx: RequestContext,
    ApiQuery(q): ApiQuery<Paging>,
) -> ApiResult<Json<Value>> {
    let (page, size) = q.resolve()?;
    let (rows, total) = Webhooks::new(&state).list(&ctx, page, size).await?;
    Ok(Json(page_json(rows.iter().map(webhook_view).collect(), page, size, total)))
}

pub async fn get(
    State(state): State<AppState>,
    ctx: RequestContext,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    Ok(Json(webhook_view(&Webhooks::new(&state).get(&ctx, &id).await?)))
}

pub async fn delete(
    State(state): State<AppState>,
    ctx: RequestContext,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    Webhooks::new(&state).delete(&ctx, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

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

pub async fn redeliver(
    State(state): State<AppState>,
    ctx: RequestContext,
    ApiPath((id, delivery)): ApiPath<(String, String)>,
) -> ApiResult<Response> {
    let d = Webhooks::new(&state).redeliver(&ctx, &id, &delivery).await?;
    let location = format!("/v1/webhooks/{id}/deliveries");
    Ok((StatusCode::ACCEPTED, [(header::LOCATION, location)], Json(delivery_view(&d))).into_response())
}
