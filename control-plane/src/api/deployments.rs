//! `/v1/deployments` and `/v1/operations`: handlers parse the request, call the deployments
//! service ([`crate::deployments`]) with the request context, and render the answer (202 + an
//! operation to poll for every change).

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, ApiJson, ApiPath, ApiQuery, ApiResult, page_json};
use crate::AppState;
use crate::approvals::Deferred;
use crate::context::RequestContext;
use crate::deployments::{Accepted, Change, Deployments, NewDeployment, Options, Outcome};
use crate::ids::rfc3339;
use crate::model::{Configuration, TargetJson};
use crate::reconcile::Parsed;
use crate::status::DeploymentStatus;
use crate::store::{DeploymentFilter, DeploymentRecord, OperationRecord, StatusSummary};

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(example = json!({
    "deploymentName": "web",
    "environment": "development",
    "configuration": {"replicas": 1, "command": "/bin/sleep", "args": ["3600"]}
}))]
pub struct CreateDeployment {
    #[schema(pattern = "^[a-z0-9][a-z0-9-]{0,62}$")]
    deployment_name: String,
    /// An existing environment (`POST /v1/environments`; Ferry starts with `development`,
    /// `staging`, `production`).
    #[schema(pattern = "^[a-z0-9][a-z0-9-]{0,62}$", example = "development")]
    environment: String,
    #[serde(default = "default_version")]
    active_version: String,
    #[serde(default = "any_agent")]
    target: TargetJson,
    configuration: Configuration,
    #[serde(default)]
    deployment_source: Option<String>,
    /// By id or name; `default` when not given.
    #[serde(default)]
    workspace: Option<String>,
    #[serde(default)]
    project_id: Option<String>,
    #[serde(default)]
    ai_zone_id: Option<String>,
}

fn default_version() -> String {
    "v1".into()
}

fn any_agent() -> TargetJson {
    TargetJson { agent_ids: None, selector: Some(Default::default()) }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateDeployment {
    active_version: Option<String>,
    target: Option<TargetJson>,
    configuration: Option<Configuration>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Scale {
    replicas: u32,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ListParams {
    #[param(minimum = 1)]
    page: Option<i64>,
    #[param(minimum = 1, maximum = 200)]
    page_size: Option<i64>,
    status: Option<String>,
    environment: Option<String>,
    name: Option<String>,
    workspace: Option<String>,
    project_id: Option<String>,
    ai_zone_id: Option<String>,
}

impl ListParams {
    /// The filter these parameters ask for (visibility is the service's business).
    pub(super) fn filter(&self) -> ApiResult<DeploymentFilter<'_>> {
        let (page, page_size) =
            super::PageParams { page: self.page, page_size: self.page_size, status: None }.resolve()?;
        if let Some(s) = self.status.as_deref()
            && DeploymentStatus::parse(s).is_none()
        {
            return Err(ApiError::validation(
                "status",
                format!("unknown status {s:?}: one of {}", DeploymentStatus::names()),
            ));
        }
        Ok(DeploymentFilter {
            environment: self.environment.as_deref(),
            workspace: self.workspace.as_deref(),
            project_id: self.project_id.as_deref(),
            ai_zone_id: self.ai_zone_id.as_deref(),
            name: self.name.as_deref(),
            status: self.status.as_deref(),
            visible: None,
            page,
            page_size,
        })
    }
}

/// A page of deployments in the listing format.
pub(super) fn page(rows: &[(Parsed, Option<StatusSummary>)], filter: &DeploymentFilter<'_>, total: i64) -> Value {
    let data = rows.iter().map(|(p, s)| deployment_view(p, s.as_ref())).collect();
    page_json(data, filter.page, filter.page_size, total)
}

/// Query parameters of every mutation: `?waitForWindow=true` stores a change asked for outside
/// its environment's change window and applies it when the window opens, instead of refusing it
/// (`ENV_005`).
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MutationParams {
    #[serde(default)]
    wait_for_window: bool,
}

impl MutationParams {
    pub(super) fn options(&self) -> Options {
        Options { wait_for_window: self.wait_for_window }
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
        "approvalId": op.approval_id,
        "createdAt": rfc3339(op.created_at),
        "startedAt": op.started_at.map(rfc3339),
        "updatedAt": rfc3339(op.updated_at),
        "finishedAt": op.finished_at.map(rfc3339),
        "href": format!("/v1/operations/{}", op.id),
    })
}

/// A deployment with its stored status summary (a deployment not reconciled yet is
/// `deploying`).
pub(super) fn deployment_view(p: &Parsed, summary: Option<&StatusSummary>) -> Value {
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
        "workspace": r.workspace,
        "projectId": r.project_id,
        "aiZoneId": r.ai_zone_id,
        "deploymentSource": crate::sources::source_type(&p.config),
        "sourceConfiguration": crate::sources::source_configuration(&p.config),
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

pub(super) fn etag(r: &DeploymentRecord) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{}\"", r.resource_version)).expect("digits are a valid header")
}

/// `If-Match: "<resourceVersion>"` (or `*`, meaning any).
pub(super) fn if_match(headers: &HeaderMap) -> ApiResult<Option<i64>> {
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

/// 202 either way: applied now, or stored as a pending change whose operation waits.
pub(super) fn outcome(o: Outcome<Accepted>) -> Response {
    outcome_with(o, |_| {})
}

/// [`outcome`], with `extra` adding to the body (e.g. a promotion's `promotion`).
pub(super) fn outcome_with(o: Outcome<Accepted>, extra: impl FnOnce(&mut Value)) -> Response {
    match o {
        Outcome::Applied(a) => accepted(a, extra),
        Outcome::Deferred(d) => deferred(d, extra),
    }
}

/// The body of [`outcome`]: the deployment (as it is now, or as it still is while its change
/// waits; `null` for a create that waits), the operation and, for a waiting change, the pending
/// change.
pub(super) fn outcome_body(o: &Outcome<Accepted>) -> Value {
    match o {
        Outcome::Applied(a) => json!({
            "deployment": deployment_view(&a.deployment, a.summary.as_ref()),
            "operation": operation_view(&a.operation),
        }),
        Outcome::Deferred(d) => json!({
            "deployment": d.deployment.as_ref().map(|(p, s)| deployment_view(p, s.as_ref())),
            "operation": operation_view(&d.operation),
            "approval": super::approvals::approval_view(&d.approval),
        }),
    }
}

/// 202 with the waiting operation (`Location`), the pending change (also named by the
/// operation's `approvalId`) and the deployment as it still is (`null` for a create).
fn deferred(d: Box<Deferred>, extra: impl FnOnce(&mut Value)) -> Response {
    let location =
        HeaderValue::from_str(&format!("/v1/operations/{}", d.operation.id)).expect("ids are valid header values");
    let mut body = outcome_body(&Outcome::Deferred(d));
    extra(&mut body);
    (StatusCode::ACCEPTED, [(header::LOCATION, location)], Json(body)).into_response()
}

/// 202 with the deployment, the operation to poll (`Location`) and the new `ETag`.
fn accepted(a: Accepted, extra: impl FnOnce(&mut Value)) -> Response {
    let tag = etag(&a.deployment.record);
    let location =
        HeaderValue::from_str(&format!("/v1/operations/{}", a.operation.id)).expect("ids are valid header values");
    let mut body = outcome_body(&Outcome::Applied(a));
    extra(&mut body);
    (StatusCode::ACCEPTED, [(header::LOCATION, location), (header::ETAG, tag)], Json(body)).into_response()
}

#[utoipa::path(
    post,
    path = "/v1/deployments",
    operation_id = "createDeployment",
    tag = "deployments",
    summary = "Create a deployment",
    params(MutationParams),
    request_body = CreateDeployment,
    responses(
        (status = 202, description = "The change is accepted: poll the operation (`Location`)", body = super::schemas::ChangeAccepted),
    ),
)]
pub async fn create(
    State(state): State<AppState>,
    ctx: RequestContext,
    ApiQuery(params): ApiQuery<MutationParams>,
    ApiJson(req): ApiJson<CreateDeployment>,
) -> ApiResult<Response> {
    if req.deployment_source.as_deref().is_some_and(|s| s != crate::sources::DIRECT) {
        return Err(ApiError::validation(
            "deploymentSource",
            "\"direct\" here; Git sources are created with POST /v1/deployments/github",
        ));
    }
    let new = NewDeployment {
        name: req.deployment_name,
        environment: req.environment,
        version: req.active_version,
        target: req.target,
        configuration: req.configuration,
        source: req.deployment_source,
        workspace: req.workspace,
        project: req.project_id,
        ai_zone: req.ai_zone_id,
        promotion: None,
    };
    Ok(outcome(Deployments::new(&state).create(&ctx, new, params.options()).await?))
}

#[utoipa::path(
    get,
    path = "/v1/deployments",
    operation_id = "listDeployments",
    tag = "deployments",
    summary = "List deployments",
    params(ListParams),
    responses(
        (status = 200, description = "A page of deployments", body = super::schemas::DeploymentPage),
    ),
)]
pub async fn list(
    State(state): State<AppState>,
    ctx: RequestContext,
    ApiQuery(q): ApiQuery<ListParams>,
) -> ApiResult<Json<Value>> {
    let filter = q.filter()?;
    let (rows, total) = Deployments::new(&state).list(&ctx, filter).await?;
    Ok(Json(page(&rows, &filter, total)))
}

#[utoipa::path(
    get,
    path = "/v1/deployments/{id}",
    operation_id = "getDeployment",
    tag = "deployments",
    summary = "Get a deployment",
    params(("id" = String, Path, description = "The deployment's id")),
    responses(
        (status = 200, description = "The deployment (`ETag`: its resourceVersion)", body = super::schemas::DeploymentView),
    ),
)]
pub async fn get(
    State(state): State<AppState>,
    ctx: RequestContext,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Response> {
    let (parsed, summary) = Deployments::new(&state).get(&ctx, &id).await?;
    let tag = etag(&parsed.record);
    Ok(([(header::ETAG, tag)], Json(deployment_view(&parsed, summary.as_ref()))).into_response())
}

/// The seed's Deployment Status entity, with per-replica detail.
#[utoipa::path(
    get,
    path = "/v1/deployments/{id}/status",
    operation_id = "getDeploymentStatus",
    tag = "deployments",
    summary = "A deployment's status, per replica",
    params(("id" = String, Path, description = "The deployment's id")),
    responses(
        (status = 200, description = "The status", body = super::schemas::DeploymentStatusView),
    ),
)]
pub async fn status(
    State(state): State<AppState>,
    ctx: RequestContext,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Response> {
    let (parsed, d) = Deployments::new(&state).status(&ctx, &id).await?;
    let r = &parsed.record;
    let checks = &parsed.config.health_checks;
    let check = |configured: bool, ok: bool| match (configured, ok) {
        (false, _) => "not configured",
        (true, true) => "passing",
        (true, false) => "failing",
    };
    let all_ready = d.ready >= d.desired && d.desired > 0;
    // Tagged like the deployment: `PATCH …/status` compares this tag.
    let tag = etag(r);
    let body = json!({
        "id": format!("status-{}", r.id),
        "deploymentId": r.id,
        "name": r.name,
        "status": d.status,
        "environment": r.environment,
        "workspace": r.workspace,
        "version": r.active_version,
        "revision": r.revision,
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
    });
    Ok(([(header::ETAG, tag)], Json(body)).into_response())
}

#[utoipa::path(
    put,
    path = "/v1/deployments/{id}",
    operation_id = "updateDeployment",
    tag = "deployments",
    summary = "Change a deployment",
    params(("id" = String, Path, description = "The deployment's id"), MutationParams),
    request_body = UpdateDeployment,
    responses(
        (status = 202, description = "The change is accepted: poll the operation (`Location`)", body = super::schemas::ChangeAccepted),
    ),
)]
pub async fn update(
    State(state): State<AppState>,
    ctx: RequestContext,
    ApiPath(id): ApiPath<String>,
    ApiQuery(params): ApiQuery<MutationParams>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<UpdateDeployment>,
) -> ApiResult<Response> {
    let change = Change::Update {
        version: req.active_version,
        target: req.target,
        configuration: req.configuration.map(Box::new),
        description: None,
    };
    let options = params.options();
    Ok(outcome(Deployments::new(&state).change(&ctx, &id, if_match(&headers)?, change, options).await?))
}

#[utoipa::path(
    delete,
    path = "/v1/deployments/{id}",
    operation_id = "deleteDeployment",
    tag = "deployments",
    summary = "Delete a deployment",
    params(("id" = String, Path, description = "The deployment's id"), MutationParams),
    responses(
        (status = 202, description = "The change is accepted: poll the operation (`Location`)", body = super::schemas::ChangeAccepted),
    ),
)]
pub async fn delete(
    State(state): State<AppState>,
    ctx: RequestContext,
    ApiPath(id): ApiPath<String>,
    ApiQuery(params): ApiQuery<MutationParams>,
) -> ApiResult<Response> {
    let op = match Deployments::new(&state).delete(&ctx, &id, params.options()).await? {
        Outcome::Applied(op) => op,
        Outcome::Deferred(d) => return Ok(deferred(d, |_| {})),
    };
    let location = HeaderValue::from_str(&format!("/v1/operations/{}", op.id)).expect("valid header");
    Ok((StatusCode::ACCEPTED, [(header::LOCATION, location)], Json(json!({ "operation": operation_view(&op) })))
        .into_response())
}

/// `POST /v1/deployments/{id}/start|stop|restart`: one desired-state change each.
#[utoipa::path(
    post,
    path = "/v1/deployments/{id}/{action}",
    operation_id = "changeDeploymentState",
    tag = "deployments",
    summary = "Start, stop or restart a deployment",
    params(("id" = String, Path, description = "The deployment's id"), ("action" = super::schemas::LifecycleAction, Path, description = "What to do"), MutationParams),
    responses(
        (status = 202, description = "The change is accepted: poll the operation (`Location`)", body = super::schemas::ChangeAccepted),
    ),
)]
pub async fn lifecycle(
    State(state): State<AppState>,
    ctx: RequestContext,
    ApiPath((id, action)): ApiPath<(String, String)>,
    ApiQuery(params): ApiQuery<MutationParams>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let change = match action.as_str() {
        "start" => Change::Start,
        "stop" => Change::Stop,
        "restart" => Change::Restart,
        _ => return Err(ApiError::route_not_found(&format!("/v1/deployments/{id}/{action}"))),
    };
    let options = params.options();
    Ok(outcome(Deployments::new(&state).change(&ctx, &id, if_match(&headers)?, change, options).await?))
}

#[utoipa::path(
    post,
    path = "/v1/deployments/{id}/scale",
    operation_id = "scaleDeployment",
    tag = "deployments",
    summary = "Scale a deployment",
    params(("id" = String, Path, description = "The deployment's id"), MutationParams),
    request_body = Scale,
    responses(
        (status = 202, description = "The change is accepted: poll the operation (`Location`)", body = super::schemas::ChangeAccepted),
    ),
)]
pub async fn scale(
    State(state): State<AppState>,
    ctx: RequestContext,
    ApiPath(id): ApiPath<String>,
    ApiQuery(params): ApiQuery<MutationParams>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<Scale>,
) -> ApiResult<Response> {
    let change = Change::Scale(req.replicas);
    let options = params.options();
    Ok(outcome(Deployments::new(&state).change(&ctx, &id, if_match(&headers)?, change, options).await?))
}

#[utoipa::path(
    get,
    path = "/v1/operations/{id}",
    operation_id = "getOperation",
    tag = "deployments",
    summary = "Get an operation",
    params(("id" = String, Path, description = "The operation's id")),
    responses(
        (status = 200, description = "The operation", body = super::schemas::OperationView),
    ),
)]
pub async fn get_operation(
    State(state): State<AppState>,
    ctx: RequestContext,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    Ok(Json(operation_view(&Deployments::new(&state).operation(&ctx, &id).await?)))
}
