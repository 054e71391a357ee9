//! `/v1/agents`: bootstrap tokens, the agent registry and revocation. Handlers parse and render;
//! the rules are in the agents service ([`crate::agents`]).

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::idempotency::NotReplayable;
use super::{ApiError, ApiJson, ApiPath, ApiQuery, ApiResult, PageParams, page_json, paginate};
use crate::AppState;
use crate::agents::Agents;
use crate::context::RequestContext;
use crate::ids::{now_ms, rfc3339};
use crate::store::{AgentFilter, AgentRecord, AgentStatus, BootstrapTokenRecord};

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateToken {
    /// Seconds until the token expires [default 3600, at most 7 days].
    ttl_seconds: Option<i64>,
    #[serde(default)]
    #[schema(schema_with = crate::api::openapi::shape::labels)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    description: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct TokenView {
    id: String,
    description: String,
    labels: BTreeMap<String, String>,
    created_at: String,
    expires_at: String,
    used_at: Option<String>,
    used_by: Option<String>,
    state: &'static str,
}

impl TokenView {
    fn new(t: BootstrapTokenRecord, state: &'static str) -> Self {
        Self {
            id: t.id,
            description: t.description,
            labels: t.labels,
            created_at: rfc3339(t.created_at),
            expires_at: rfc3339(t.expires_at),
            used_at: t.used_at.map(rfc3339),
            used_by: t.used_by,
            state,
        }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentView {
    id: String,
    name: String,
    status: AgentStatus,
    labels: BTreeMap<String, String>,
    /// What the agent can run, as it said in its last `Hello` (`runtime:process`, …).
    capabilities: Vec<String>,
    version: String,
    enrolled_at: String,
    connected_since: Option<String>,
    last_heartbeat: Option<String>,
    certificate: serde_json::Value,
    revoked_at: Option<String>,
}

impl AgentView {
    fn new(a: AgentRecord, state: &AppState) -> Self {
        let status = a.status(now_ms(), state.config.heartbeat_timeout().as_millis() as i64);
        Self {
            connected_since: a.session_started_at.filter(|_| status == AgentStatus::Connected).map(rfc3339),
            id: a.id,
            name: a.name,
            status,
            labels: a.labels,
            capabilities: a.capabilities,
            version: a.version,
            enrolled_at: rfc3339(a.enrolled_at),
            last_heartbeat: a.last_heartbeat.map(rfc3339),
            certificate: json!({ "serial": a.cert_serial, "notAfter": rfc3339(a.cert_not_after) }),
            revoked_at: a.revoked_at.map(rfc3339),
        }
    }
}

#[utoipa::path(
    post,
    path = "/v1/agents/tokens",
    operation_id = "createBootstrapToken",
    tag = "agents",
    summary = "Issue a bootstrap token (shown once)",
    request_body = CreateToken,
    responses(
        (status = 201, description = "The token and the command that enrolls an agent with it", body = super::schemas::CreatedToken),
    ),
)]
pub async fn create_token(
    State(state): State<AppState>,
    ctx: RequestContext,
    ApiJson(req): ApiJson<CreateToken>,
) -> ApiResult<impl IntoResponse> {
    let (token, record) = Agents::new(&state).issue_token(&ctx, req.ttl_seconds, req.labels, req.description).await?;
    let server: &str = &state.advertise_addr;
    let body = json!({
        "id": token.id,
        "token": token.to_string(),
        "description": record.description,
        "labels": record.labels,
        "createdAt": rfc3339(record.created_at),
        "expiresAt": rfc3339(record.expires_at),
        "caFingerprint": token.ca_fingerprint,
        "serverAddress": server,
        "agentCommand": format!("ferry-agent --server {server} --token {token}"),
    });
    // The token is shown once: an idempotent repeat must not get it from a stored copy.
    Ok((StatusCode::CREATED, Extension(NotReplayable), Json(body)))
}

#[utoipa::path(
    get,
    path = "/v1/agents/tokens",
    operation_id = "listBootstrapTokens",
    tag = "agents",
    summary = "List bootstrap tokens",
    params(PageParams),
    responses(
        (status = 200, description = "A page of tokens", body = super::schemas::TokenPage),
    ),
)]
pub async fn list_tokens(
    State(state): State<AppState>,
    ctx: RequestContext,
    ApiQuery(q): ApiQuery<PageParams>,
) -> ApiResult<impl IntoResponse> {
    let (page, page_size) = q.resolve()?;
    let tokens: Vec<TokenView> = Agents::new(&state)
        .tokens(&ctx, q.status.as_deref())
        .await?
        .into_iter()
        .map(|(t, st)| TokenView::new(t, st))
        .collect();
    let total = tokens.len() as i64;
    Ok(Json(page_json(paginate(tokens, page, page_size), page, page_size, total)))
}

#[utoipa::path(
    delete,
    path = "/v1/agents/tokens/{id}",
    operation_id = "deleteBootstrapToken",
    tag = "agents",
    summary = "Delete a bootstrap token",
    params(("id" = String, Path, description = "The token's id")),
    responses(
        (status = 204, description = "Deleted"),
    ),
)]
pub async fn delete_token(
    State(state): State<AppState>,
    ctx: RequestContext,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<impl IntoResponse> {
    Agents::new(&state).delete_token(&ctx, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    get,
    path = "/v1/agents",
    operation_id = "listAgents",
    tag = "agents",
    summary = "List enrolled agents",
    params(PageParams),
    responses(
        (status = 200, description = "A page of agents", body = super::schemas::AgentPage),
    ),
)]
pub async fn list(
    State(state): State<AppState>,
    ctx: RequestContext,
    ApiQuery(q): ApiQuery<PageParams>,
) -> ApiResult<impl IntoResponse> {
    let (page, page_size) = q.resolve()?;
    let status = match q.status.as_deref() {
        None => None,
        Some(s) => Some(AgentStatus::parse(s).ok_or_else(|| {
            ApiError::validation("status", format!("unknown status {s:?}: connected, disconnected or revoked"))
        })?),
    };
    let filter = AgentFilter {
        status,
        now_ms: now_ms(),
        heartbeat_timeout_ms: state.config.heartbeat_timeout().as_millis() as i64,
        page,
        page_size,
    };
    let (agents, total) = Agents::new(&state).list(&ctx, filter).await?;
    let views: Vec<AgentView> = agents.into_iter().map(|a| AgentView::new(a, &state)).collect();
    Ok(Json(page_json(views, page, page_size, total)))
}

#[utoipa::path(
    get,
    path = "/v1/agents/{id}",
    operation_id = "getAgent",
    tag = "agents",
    summary = "Get an agent",
    params(("id" = String, Path, description = "The agent's id")),
    responses(
        (status = 200, description = "The agent", body = AgentView),
    ),
)]
pub async fn get(
    State(state): State<AppState>,
    ctx: RequestContext,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<AgentView>> {
    Ok(Json(AgentView::new(Agents::new(&state).get(&ctx, &id).await?, &state)))
}

#[utoipa::path(
    delete,
    path = "/v1/agents/{id}",
    operation_id = "revokeAgent",
    tag = "agents",
    summary = "Revoke an agent (its certificate stops working)",
    params(("id" = String, Path, description = "The agent's id")),
    responses(
        (status = 200, description = "The revoked agent", body = AgentView),
    ),
)]
pub async fn revoke(
    State(state): State<AppState>,
    ctx: RequestContext,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<AgentView>> {
    Ok(Json(AgentView::new(Agents::new(&state).revoke(&ctx, &id).await?, &state)))
}
