//! The environments service: every deployment belongs to one; `development`, `staging` and
//! `production` exist from the first start. Handlers (`api/environments.rs`) parse and render.

use axum::http::StatusCode;
use serde_json::json;

use crate::AppState;
use crate::api::{ApiError, ApiResult, ErrorCode};
use crate::context::{Action, RequestContext};
use crate::ids::{now_ms, random_id};
use crate::store::EnvironmentRecord;

pub const MAX_DESCRIPTION_LEN: usize = 512;

pub struct Environments<'a> {
    state: &'a AppState,
}

impl<'a> Environments<'a> {
    pub fn new(state: &'a AppState) -> Self {
        Self { state }
    }

    /// Every environment, in promotion order, each with its number of live deployments.
    pub async fn list(&self, ctx: &RequestContext) -> ApiResult<Vec<(EnvironmentRecord, i64)>> {
        let mut out = Vec::new();
        for e in self.state.store.list_environments().await? {
            if ctx.authorize(Action::Read, &e.name).is_ok() {
                let n = self.state.store.count_deployments(&e.name).await?;
                out.push((e, n));
            }
        }
        Ok(out)
    }

    /// By id or name.
    pub async fn get(&self, ctx: &RequestContext, key: &str) -> ApiResult<(EnvironmentRecord, i64)> {
        let e = self.state.store.get_environment(key).await?.ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                ErrorCode::EnvironmentNotFound,
                format!("environment {key:?} not found"),
            )
            .with_details(json!({ "environmentId": key }))
        })?;
        ctx.authorize(Action::Read, &e.name)?;
        let n = self.state.store.count_deployments(&e.name).await?;
        Ok((e, n))
    }

    pub async fn create(
        &self,
        ctx: &RequestContext,
        name: String,
        kind: Option<String>,
        description: String,
    ) -> ApiResult<EnvironmentRecord> {
        crate::model::validate_name("name", &name).map_err(|i| ApiError::validation(&i.field, i.message))?;
        let kind = kind.unwrap_or_else(|| name.clone());
        crate::model::validate_name("type", &kind).map_err(|i| ApiError::validation(&i.field, i.message))?;
        if description.len() > MAX_DESCRIPTION_LEN {
            return Err(ApiError::validation("description", format!("at most {MAX_DESCRIPTION_LEN} bytes")));
        }
        ctx.authorize(Action::Create, &name)?;
        let now = now_ms();
        let env = EnvironmentRecord {
            id: random_id("env"),
            name,
            kind,
            description,
            locked: false,
            created_at: now,
            updated_at: now,
        };
        let after = json!({ "name": env.name, "type": env.kind, "description": env.description });
        let audit = ctx
            .audit("environment.create", &env.id, json!({ "name": env.name }))
            .with_changes(crate::audit::mask::changes(None, Some(&after)));
        if !self.state.store.create_environment(&env, &audit).await? {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                ErrorCode::EnvironmentExists,
                format!("environment {:?} already exists", env.name),
            ));
        }
        Ok(env)
    }
}
