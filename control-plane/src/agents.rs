//! The agents service: bootstrap tokens, the agent registry and revocation, with permission and
//! audit applied once per mutation. Handlers (`api/agents.rs`) only parse and render.

use std::collections::BTreeMap;

use axum::http::StatusCode;
use serde_json::json;

use crate::AppState;
use crate::api::{ApiError, ApiResult, ErrorCode};
use crate::authz::perm;
use crate::context::RequestContext;
use crate::ids::now_ms;
use crate::store::{AgentFilter, AgentRecord, BootstrapTokenRecord, NewBootstrapToken};
use crate::tokens::BootstrapToken;

pub const MAX_TOKEN_TTL_SECONDS: i64 = 7 * 24 * 3600;
pub const MAX_DESCRIPTION_LEN: usize = 256;

/// Token states, for `?status=`.
pub const TOKEN_STATES: [&str; 3] = ["active", "used", "expired"];

pub struct Agents<'a> {
    state: &'a AppState,
}

impl<'a> Agents<'a> {
    pub fn new(state: &'a AppState) -> Self {
        Self { state }
    }

    /// Issues a one-time bootstrap token (its secret is shown once; only its hash is stored).
    pub async fn issue_token(
        &self,
        ctx: &RequestContext,
        ttl_seconds: Option<i64>,
        labels: BTreeMap<String, String>,
        description: String,
    ) -> ApiResult<(BootstrapToken, NewBootstrapToken)> {
        ctx.require_global(perm::AGENT_MANAGE)?;
        let ttl = ttl_seconds.unwrap_or(3600);
        if !(1..=MAX_TOKEN_TTL_SECONDS).contains(&ttl) {
            return Err(ApiError::validation(
                "ttlSeconds",
                format!("ttlSeconds must be between 1 and {MAX_TOKEN_TTL_SECONDS}"),
            ));
        }
        ferry_protocol::limits::validate_labels(&labels).map_err(|m| ApiError::validation("labels", m))?;
        if description.len() > MAX_DESCRIPTION_LEN {
            return Err(ApiError::validation(
                "description",
                format!("description is limited to {MAX_DESCRIPTION_LEN} bytes"),
            ));
        }
        Ok(crate::tokens::issue_for(self.state, ctx, ttl, labels, description).await?)
    }

    /// Tokens (optionally in one state: active, used, expired) with their state, paged.
    pub async fn tokens(
        &self,
        ctx: &RequestContext,
        status: Option<&str>,
    ) -> ApiResult<Vec<(BootstrapTokenRecord, &'static str)>> {
        ctx.require_global(perm::AGENT_READ)?;
        if let Some(s) = status
            && !TOKEN_STATES.contains(&s)
        {
            return Err(ApiError::validation(
                "status",
                format!("unknown status {s:?}: one of {}", TOKEN_STATES.join(", ")),
            ));
        }
        let now = now_ms();
        Ok(self
            .state
            .store
            .list_bootstrap_tokens()
            .await?
            .into_iter()
            .map(|t| {
                let st = token_state(&t, now);
                (t, st)
            })
            .filter(|(_, st)| status.is_none_or(|s| s == *st))
            .collect())
    }

    pub async fn delete_token(&self, ctx: &RequestContext, id: &str) -> ApiResult<()> {
        ctx.require_global(perm::AGENT_MANAGE)?;
        let audit = ctx.audit("token.delete", id, json!({}));
        if self.state.store.delete_bootstrap_token(id, &audit, now_ms()).await? {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::NOT_FOUND,
                ErrorCode::TokenNotFound,
                format!("bootstrap token {id:?} not found"),
            )
            .with_details(json!({ "tokenId": id })))
        }
    }

    pub async fn list(&self, ctx: &RequestContext, filter: AgentFilter) -> ApiResult<(Vec<AgentRecord>, i64)> {
        ctx.require_global(perm::AGENT_READ)?;
        Ok(self.state.store.list_agents(filter).await?)
    }

    pub async fn get(&self, ctx: &RequestContext, id: &str) -> ApiResult<AgentRecord> {
        ctx.require_global(perm::AGENT_READ)?;
        self.state.store.get_agent(id).await?.ok_or_else(|| not_found(id))
    }

    /// Revokes the agent: its certificate is refused from now on, its live session on this
    /// replica is closed at once (other replicas close theirs at their next liveness pass), and
    /// its workloads are planned onto other agents right away.
    pub async fn revoke(&self, ctx: &RequestContext, id: &str) -> ApiResult<AgentRecord> {
        ctx.require_global(perm::AGENT_MANAGE)?;
        let audit = ctx.audit("agent.revoke", id, json!({}));
        let agent = self.state.store.revoke_agent(id, &audit, now_ms()).await?.ok_or_else(|| not_found(id))?;
        self.state.sessions.close(id, ferry_protocol::CloseCode::Revoked, "agent revoked");
        self.state.reconciler.agent_changed(self.state, &agent).await;
        tracing::info!(agent_id = %id, actor = %ctx.principal.audit_name(), "agent revoked");
        Ok(agent)
    }
}

pub fn token_state(t: &BootstrapTokenRecord, now: i64) -> &'static str {
    if t.used_at.is_some() {
        "used"
    } else if t.expires_at <= now {
        "expired"
    } else {
        "active"
    }
}

fn not_found(id: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, ErrorCode::AgentNotFound, format!("agent {id:?} not found"))
        .with_details(json!({ "agentId": id }))
}
