//! `/v1/deployments` and `/v1/operations`: desired state in, 202 + an operation to poll out.

use axum::Json;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Actor, ApiError, ApiJson, ApiPath, ApiQuery, ApiResult, ErrorCode, RequestId, page_json};
use crate::AppState;
use crate::ids::{now_ms, random_id, rfc3339};
use crate::model::{self, Configuration, Invalid, TargetJson};
use crate::reconcile::Parsed;
use crate::store::{Audit, DeploymentFilter, DeploymentRecord, OperationRecord, StatusSummary, Write};

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateDeployment {
    deployment_name: String,
    environment: String,
    #[serde(default = "default_version")]
    active_version: String,
    #[serde(default = "any_agent")]
    target: TargetJson,
    configuration: Configuration,
    /// Only `direct` (the process runtime) exists today.
    #[serde(default)]
    deployment_source: Option<String>,
}

fn default_version() -> String {
    "v1".into()
}

fn any_agent() -> TargetJson {
    TargetJson { agent_ids: None, selector: Some(Default::default()) }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateDeployment {
    active_version: Option<String>,
    target: Option<TargetJson>,
    configuration: Option<Configuration>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Scale {
    replicas: u32,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ListParams {
    page: Option<i64>,
    page_size: Option<i64>,
    status: Option<String>,
    environment: Option<String>,
    name: Option<String>,
}

fn bad(i: Invalid) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, i.code, i.message).with_details(json!({ "field": i.field }))
}

pub fn not_found(id: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, ErrorCode::DeploymentNotFound, format!("deployment {id:?} not found"))
        .with_details(json!({ "deploymentId": id }))
}

fn audit(actor: &Actor, rid: &RequestId, action: &'static str, target: &str, details: Value) -> Audit {
    Audit { actor: actor.0.clone(), action, target: target.into(), request_id: rid.0.clone(), details }
}

fn operation(kind: &str, deployment_id: &str, rid: &RequestId, now: i64) -> OperationRecord {
    OperationRecord {
        id: random_id("op"),
        kind: kind.into(),
        deployment_id: deployment_id.into(),
        status: "in_progress".into(),
        message: String::new(),
        request_id: rid.0.clone(),
        created_at: now,
        updated_at: now,
        finished_at: None,
    }
}

pub fn operation_view(op: &OperationRecord) -> Value {
    json!({
        "id": op.id,
        "type": op.kind,
        "deploymentId": op.deployment_id,
        "status": op.status,
        "message": op.message,
        "requestId": op.request_id,
        "createdAt": rfc3339(op.created_at),
        "updatedAt": rfc3339(op.updated_at),
        "finishedAt": op.finished_at.map(rfc3339),
        "href": format!("/v1/operations/{}", op.id),
    })
}

/// A deployment with its stored status summary (a deployment not reconciled yet is
/// `deploying`).
fn deployment_view(p: &Parsed, summary: Option<&StatusSummary>) -> Value {
    let r = &p.record;
    let status = summary.map_or("deploying", |s| s.status.as_str());
    let health = crate::status::DeploymentStatus::parse(status).map_or("unknown", |s| s.health());
    let (desired, current, ready) = summary.map_or((p.desired_replicas(), 0, 0), |s| (s.desired, s.current, s.ready));
    let reasons: &[String] = summary.map_or(&[], |s| &s.reasons);
    json!({
        "id": r.id,
        "deploymentName": r.name,
        "activeVersion": r.active_version,
        "status": status,
        "environment": r.environment,
        "deploymentSource": "direct",
        "target": p.target,
        "configuration": p.config,
        "created": rfc3339(r.created_at),
        "updated": rfc3339(r.updated_at),
        "lastDeployed": rfc3339(r.last_deployed_at),
        "desiredState": r.desired_state,
        "health": { "status": health, "issues": reasons },
        "replicas": { "desired": desired, "current": current, "ready": ready },
        "revision": r.revision,
        "resourceVersion": r.resource_version,
    })
}

fn etag(r: &DeploymentRecord) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{}\"", r.resource_version)).expect("digits are a valid header")
}

/// `If-Match: "<resourceVersion>"` (or `*`, meaning any).
fn if_match(headers: &HeaderMap) -> ApiResult<Option<i64>> {
    let Some(v) = headers.get(header::IF_MATCH) else { return Ok(None) };
    let s = v.to_str().unwrap_or_default().trim();
    if s == "*" {
        return Ok(None);
    }
    s.trim_matches('"')
        .parse()
        .map(Some)
        .map_err(|_| ApiError::validation("If-Match", "If-Match must be a quoted resourceVersion, e.g. \"3\""))
}

/// A target is checked for shape only: desired state is declarative, so a deployment whose
/// target matches no agent yet is accepted and stays `pending` until one enrolls.
fn check_target(target: &TargetJson) -> ApiResult<crate::planner::Target> {
    target.validate().map_err(bad)
}

/// Reconciles the changed deployment at once (so the answer reflects its new intent) and
/// answers 202 with the operation to poll.
async fn accepted(state: &AppState, record: DeploymentRecord, op: &OperationRecord) -> ApiResult<Response> {
    reconcile_now(state, &record.id).await;
    let tag = etag(&record);
    let parsed = Parsed::from_record(record)?;
    let summary = state.store.status_summary(&parsed.record.id).await?;
    let body = json!({ "deployment": deployment_view(&parsed, summary.as_ref()), "operation": operation_view(op) });
    let location = HeaderValue::from_str(&format!("/v1/operations/{}", op.id)).expect("ids are valid header values");
    Ok((StatusCode::ACCEPTED, [(header::LOCATION, location), (header::ETAG, tag)], Json(body)).into_response())
}

pub async fn create(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Extension(rid): Extension<RequestId>,
    ApiJson(req): ApiJson<CreateDeployment>,
) -> ApiResult<Response> {
    model::validate_name("deploymentName", &req.deployment_name).map_err(bad)?;
    model::validate_version(&req.active_version).map_err(bad)?;
    if req.deployment_source.as_deref().is_some_and(|s| s != "direct") {
        return Err(ApiError::validation("deploymentSource", "only \"direct\" deployments are supported"));
    }
    req.configuration.validate().map_err(bad)?;
    let env = state.store.get_environment(&req.environment).await?.ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::EnvironmentNotFound,
            format!("environment {:?} not found", req.environment),
        )
        .with_details(json!({ "field": "environment" }))
    })?;
    if env.locked {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            ErrorCode::EnvironmentLocked,
            format!("environment {:?} is locked", env.name),
        ));
    }
    let target = check_target(&req.target)?;
    let now = now_ms();
    let record = DeploymentRecord {
        id: random_id("deploy"),
        name: req.deployment_name,
        environment: env.name,
        active_version: req.active_version,
        spec: serde_json::to_string(&req.configuration).expect("configuration serializes"),
        target: serde_json::to_string(&req.target).expect("target serializes"),
        desired_state: "running".into(),
        restart_nonce: 0,
        revision: 1,
        resource_version: 1,
        created_at: now,
        updated_at: now,
        last_deployed_at: now,
    };
    let op = operation("create", &record.id, &rid, now);
    let details = json!({ "name": record.name, "environment": record.environment, "version": record.active_version });
    if !state
        .store
        .create_deployment(&record, &op, &audit(&actor, &rid, "deployment.create", &record.id, details))
        .await?
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            ErrorCode::DeploymentExists,
            format!("a deployment named {:?} already exists in {:?}", record.name, record.environment),
        ));
    }
    state.reconciler.directory.deployment_changed(&record.id, Some(target));
    accepted(&state, record, &op).await
}

pub async fn list(State(state): State<AppState>, ApiQuery(q): ApiQuery<ListParams>) -> ApiResult<Json<Value>> {
    let (page, page_size) = super::PageParams { page: q.page, page_size: q.page_size, status: None }.resolve()?;
    if let Some(s) = q.status.as_deref()
        && crate::status::DeploymentStatus::parse(s).is_none()
    {
        return Err(ApiError::validation(
            "status",
            format!("unknown status {s:?}: one of {}", crate::status::DeploymentStatus::ALL.join(", ")),
        ));
    }
    let filter = DeploymentFilter {
        environment: q.environment.as_deref(),
        name: q.name.as_deref(),
        status: q.status.as_deref(),
        page,
        page_size,
    };
    let (rows, total) = state.store.list_deployments(filter).await?;
    let mut data = Vec::with_capacity(rows.len());
    for (record, summary) in rows {
        data.push(deployment_view(&Parsed::from_record(record)?, summary.as_ref()));
    }
    Ok(Json(page_json(data, page, page_size, total)))
}

/// Reconciles one deployment now; a failure is logged (the queue retries, and the desired state
/// is safely stored).
async fn reconcile_now(state: &AppState, id: &str) {
    if let Err(e) = state.reconciler.reconcile_now(state, id).await {
        tracing::warn!(deployment = %id, error = %e, "reconcile after a change failed; it will be retried");
        state.reconciler.enqueue(id);
    }
}

async fn load(state: &AppState, id: &str) -> ApiResult<Parsed> {
    let record = state.store.get_deployment(id).await?.ok_or_else(|| not_found(id))?;
    Ok(Parsed::from_record(record)?)
}

pub async fn get(State(state): State<AppState>, ApiPath(id): ApiPath<String>) -> ApiResult<Response> {
    let parsed = load(&state, &id).await?;
    let summary = state.store.status_summary(&id).await?;
    let tag = etag(&parsed.record);
    Ok(([(header::ETAG, tag)], Json(deployment_view(&parsed, summary.as_ref()))).into_response())
}

/// The seed's Deployment Status entity, with per-replica detail.
pub async fn status(State(state): State<AppState>, ApiPath(id): ApiPath<String>) -> ApiResult<Json<Value>> {
    let parsed = load(&state, &id).await?;
    let d = crate::reconcile::derive(&state, &parsed).await?;
    let r = &parsed.record;
    let checks = &parsed.config.health_checks;
    let check = |configured: bool, ok: bool| match (configured, ok) {
        (false, _) => "not configured",
        (true, true) => "passing",
        (true, false) => "failing",
    };
    let all_ready = d.ready >= d.desired && d.desired > 0;
    Ok(Json(json!({
        "id": format!("status-{}", r.id),
        "deploymentId": r.id,
        "name": r.name,
        "status": d.status,
        "environment": r.environment,
        "version": r.active_version,
        "deployment": { "lastDeployed": rfc3339(r.last_deployed_at), "strategy": "rolling" },
        "health": {
            "status": d.status.health(),
            "checks": {
                "liveness": check(checks.liveness.is_some(), all_ready),
                "readiness": check(checks.readiness.is_some(), all_ready),
                "startup": check(checks.startup.is_some(), all_ready),
            },
            "issues": d.reasons,
        },
        "resources": { "pods": { "desired": d.desired, "current": d.current, "available": d.ready, "updated": d.ready } },
        "replicas": d.replicas,
    })))
}

/// Loads, changes and stores a deployment as one operation of `kind`.
async fn mutate(
    state: &AppState,
    actor: &Actor,
    rid: &RequestId,
    id: &str,
    headers: &HeaderMap,
    kind: &'static str,
    change: impl FnOnce(&mut Parsed) -> ApiResult<()>,
) -> ApiResult<Response> {
    let if_match = if_match(headers)?;
    let mut made = None;
    let outcome = state
        .store
        .modify_deployment(id, if_match, |stored| {
            let before = Parsed::from_record(stored.clone())?;
            let mut parsed = Parsed::from_record(stored.clone())?;
            change(&mut parsed)?;
            let now = now_ms();
            let mut record = parsed.record.clone();
            // A new template (what the processes run, or the version label) is a new revision.
            if before.record.active_version != parsed.record.active_version || template(&before) != template(&parsed) {
                record.revision += 1;
            }
            record.spec = serde_json::to_string(&parsed.config).expect("configuration serializes");
            record.target = serde_json::to_string(&parsed.target).expect("target serializes");
            record.updated_at = now;
            if kind != "stop" {
                record.last_deployed_at = now;
            }
            let op = operation(kind, id, rid, now);
            let details = json!({
                "version": record.active_version,
                "desiredState": record.desired_state,
                "revision": record.revision,
            });
            let action = match kind {
                "update" => "deployment.update",
                "start" => "deployment.start",
                "stop" => "deployment.stop",
                "restart" => "deployment.restart",
                _ => "deployment.scale",
            };
            made = Some(op.clone());
            Ok::<_, ApiError>((record, op, audit(actor, rid, action, id, details)))
        })
        .await??;
    match outcome {
        Write::Done(updated) => {
            accepted(state, updated, made.as_ref().expect("a written change has its operation")).await
        }
        Write::NotFound => Err(not_found(id)),
        Write::Conflict { current } => Err(ApiError::new(
            StatusCode::PRECONDITION_FAILED,
            ErrorCode::StaleResourceVersion,
            "the deployment changed since you read it; fetch it again and retry",
        )
        .with_details(json!({ "resourceVersion": current }))),
    }
}

/// What a revision pins: the process template, whatever the replica count.
fn template(p: &Parsed) -> ferry_protocol::ProcessSpec {
    let mut spec = p.config.to_process_spec();
    spec.replicas = 0;
    spec
}

pub async fn update(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Extension(rid): Extension<RequestId>,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<UpdateDeployment>,
) -> ApiResult<Response> {
    if let Some(v) = &req.active_version {
        model::validate_version(v).map_err(bad)?;
    }
    if let Some(c) = &req.configuration {
        c.validate().map_err(bad)?;
    }
    let target = req.target.as_ref().map(check_target).transpose()?;
    mutate(&state, &actor, &rid, &id, &headers, "update", |p| {
        if let Some(v) = &req.active_version {
            p.record.active_version.clone_from(v);
        }
        if let Some(t) = &req.target {
            p.target = t.clone();
        }
        if let Some(t) = &target {
            state.reconciler.directory.deployment_changed(&p.record.id, Some(t.clone()));
        }
        if let Some(c) = &req.configuration {
            p.config = c.clone();
        }
        Ok(())
    })
    .await
}

pub async fn delete(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Extension(rid): Extension<RequestId>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Response> {
    let now = now_ms();
    let op = operation("delete", &id, &rid, now);
    if !state.store.delete_deployment(&id, &op, &audit(&actor, &rid, "deployment.delete", &id, json!({})), now).await? {
        return Err(not_found(&id));
    }
    state.reconciler.directory.deployment_changed(&id, None);
    reconcile_now(&state, &id).await;
    let location = HeaderValue::from_str(&format!("/v1/operations/{}", op.id)).expect("valid header");
    Ok((StatusCode::ACCEPTED, [(header::LOCATION, location)], Json(json!({ "operation": operation_view(&op) })))
        .into_response())
}

/// `POST /v1/deployments/{id}/start|stop|restart`: one desired-state change each.
pub async fn lifecycle(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Extension(rid): Extension<RequestId>,
    ApiPath((id, action)): ApiPath<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let kind = match action.as_str() {
        "start" => "start",
        "stop" => "stop",
        "restart" => "restart",
        _ => return Err(ApiError::route_not_found(&format!("/v1/deployments/{id}/{action}"))),
    };
    mutate(&state, &actor, &rid, &id, &headers, kind, |p| {
        p.record.desired_state = if kind == "stop" { "stopped" } else { "running" }.into();
        if kind == "restart" {
            p.record.restart_nonce += 1;
        }
        Ok(())
    })
    .await
}

pub async fn scale(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Extension(rid): Extension<RequestId>,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<Scale>,
) -> ApiResult<Response> {
    mutate(&state, &actor, &rid, &id, &headers, "scale", |p| {
        p.config.replicas = req.replicas;
        p.config.validate().map_err(bad)
    })
    .await
}

pub async fn get_operation(State(state): State<AppState>, ApiPath(id): ApiPath<String>) -> ApiResult<Json<Value>> {
    let op = state.store.get_operation(&id).await?.ok_or_else(|| {
        ApiError::new(StatusCode::NOT_FOUND, ErrorCode::OperationNotFound, format!("operation {id:?} not found"))
            .with_details(json!({ "operationId": id }))
    })?;
    Ok(Json(operation_view(&op)))
}
