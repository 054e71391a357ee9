//! `/v1/agents`: bootstrap tokens, the agent registry and revocation.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Extension, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{
    Actor, ApiError, ApiJson, ApiPath, ApiQuery, ApiResult, ErrorCode, PageParams, RequestId, page_json, paginate,
};
use crate::AppState;
use crate::ids::{now_ms, rfc3339};
use crate::store::{AgentFilter, AgentRecord, AgentStatus, Audit, BootstrapTokenRecord};

const MAX_TOKEN_TTL_SECONDS: i64 = 7 * 24 * 3600;
const MAX_DESCRIPTION_LEN: usize = 256;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateToken {
    /// Seconds until the token expires [default 3600, at most 7 days].
    ttl_seconds: Option<i64>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    description: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct TokenView {
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
    fn new(t: BootstrapTokenRecord, now: i64) -> Self {
        let state = if t.used_at.is_some() {
            "used"
        } else if t.expires_at <= now {
            "expired"
        } else {
            "active"
        };
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

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentView {
    id: String,
    name: String,
    status: AgentStatus,
    labels: BTreeMap<String, String>,
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
            version: a.version,
            enrolled_at: rfc3339(a.enrolled_at),
            last_heartbeat: a.last_heartbeat.map(rfc3339),
            certificate: json!({ "serial": a.cert_serial, "notAfter": rfc3339(a.cert_not_after) }),
            revoked_at: a.revoked_at.map(rfc3339),
        }
    }
}

fn audit(actor: &Actor, rid: &RequestId, action: &'static str, target: &str, details: serde_json::Value) -> Audit {
    Audit { actor: actor.0.clone(), action, target: target.to_string(), request_id: rid.0.clone(), details }
}

pub async fn create_token(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Extension(rid): Extension<RequestId>,
    ApiJson(req): ApiJson<CreateToken>,
) -> ApiResult<impl IntoResponse> {
    let ttl = req.ttl_seconds.unwrap_or(3600);
    if !(1..=MAX_TOKEN_TTL_SECONDS).contains(&ttl) {
        return Err(ApiError::validation(
            "ttlSeconds",
            format!("ttlSeconds must be between 1 and {MAX_TOKEN_TTL_SECONDS}"),
        ));
    }
    ferry_protocol::limits::validate_labels(&req.labels).map_err(|m| ApiError::validation("labels", m))?;
    if req.description.len() > MAX_DESCRIPTION_LEN {
        return Err(ApiError::validation(
            "description",
            format!("description is limited to {MAX_DESCRIPTION_LEN} bytes"),
        ));
    }
    let (token, record) = crate::tokens::issue(&state, ttl, req.labels, req.description, &actor.0, &rid.0).await?;
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
    Ok((StatusCode::CREATED, Json(body)))
}

/// Token states, for `?status=`.
const TOKEN_STATES: [&str; 3] = ["active", "used", "expired"];

pub async fn list_tokens(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<PageParams>,
) -> ApiResult<impl IntoResponse> {
    let (page, page_size) = q.resolve()?;
    if let Some(s) = q.status.as_deref()
        && !TOKEN_STATES.contains(&s)
    {
        return Err(ApiError::validation(
            "status",
            format!("unknown status {s:?}: one of {}", TOKEN_STATES.join(", ")),
        ));
    }
    let now = now_ms();
    let tokens: Vec<TokenView> = state
        .store
        .list_bootstrap_tokens()
        .await?
        .into_iter()
        .map(|t| TokenView::new(t, now))
        .filter(|t| q.status.as_deref().is_none_or(|s| s == t.state))
        .collect();
    let total = tokens.len() as i64;
    Ok(Json(page_json(paginate(tokens, page, page_size), page, page_size, total)))
}

pub async fn delete_token(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Extension(rid): Extension<RequestId>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<impl IntoResponse> {
    let audit = audit(&actor, &rid, "token.delete", &id, json!({}));
    if state.store.delete_bootstrap_token(&id, &audit, now_ms()).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(token_not_found(&id))
    }
}

pub async fn list(State(state): State<AppState>, ApiQuery(q): ApiQuery<PageParams>) -> ApiResult<impl IntoResponse> {
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
    let (agents, total) = state.store.list_agents(filter).await?;
    let views: Vec<AgentView> = agents.into_iter().map(|a| AgentView::new(a, &state)).collect();
    Ok(Json(page_json(views, page, page_size, total)))
}

pub async fn get(State(state): State<AppState>, ApiPath(id): ApiPath<String>) -> ApiResult<Json<AgentView>> {
    let agent = state.store.get_agent(&id).await?.ok_or_else(|| agent_not_found(&id))?;
    Ok(Json(AgentView::new(agent, &state)))
}

/// Revokes the agent: its certificate is refused from now on and its live session, if this
/// replica holds it, is closed at once (other replicas notice at the next heartbeat).
pub async fn revoke(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Extension(rid): Extension<RequestId>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<AgentView>> {
    let audit = audit(&actor, &rid, "agent.revoke", &id, json!({}));
    let agent = state.store.revoke_agent(&id, &audit, now_ms()).await?.ok_or_else(|| agent_not_found(&id))?;
    state.sessions.close(&id, ferry_protocol::CloseCode::Revoked, "agent revoked");
    tracing::info!(agent_id = %id, actor = %actor.0, "agent revoked");
    Ok(Json(AgentView::new(agent, &state)))
}

fn agent_not_found(id: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, ErrorCode::AgentNotFound, format!("agent {id:?} not found"))
        .with_details(json!({ "agentId": id }))
}

fn token_not_found(id: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, ErrorCode::TokenNotFound, format!("bootstrap token {id:?} not found"))
        .with_details(json!({ "tokenId": id }))
}
