//! `/v1/environments`: every deployment belongs to one; `development`, `staging` and
//! `production` exist from the first start.

use axum::Json;
use axum::extract::{Extension, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Actor, ApiError, ApiJson, ApiPath, ApiQuery, ApiResult, ErrorCode, PageParams, RequestId, page_json};
use crate::AppState;
use crate::ids::{now_ms, random_id, rfc3339};
use crate::store::{Audit, EnvironmentRecord};

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateEnvironment {
    name: String,
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    description: String,
}

async fn view(state: &AppState, e: &EnvironmentRecord) -> ApiResult<Value> {
    let total = state.store.count_deployments(&e.name).await?;
    Ok(json!({
        "id": e.id,
        "name": e.name,
        "type": e.kind,
        "status": if e.locked { "locked" } else { "active" },
        "description": e.description,
        "created": rfc3339(e.created_at),
        "updated": rfc3339(e.updated_at),
        "deployments": { "total": total },
    }))
}

pub async fn list(State(state): State<AppState>, ApiQuery(q): ApiQuery<PageParams>) -> ApiResult<Json<Value>> {
    if q.status.is_some() {
        return Err(ApiError::validation("status", "environments cannot be filtered by status"));
    }
    let (page, page_size) = q.resolve()?;
    let all = state.store.list_environments().await?;
    let total = all.len() as i64;
    let mut data = Vec::new();
    for e in super::paginate(&all, page, page_size) {
        data.push(view(&state, e).await?);
    }
    Ok(Json(page_json(data, page, page_size, total)))
}

pub async fn get(State(state): State<AppState>, ApiPath(id): ApiPath<String>) -> ApiResult<Json<Value>> {
    let e = state.store.get_environment(&id).await?.ok_or_else(|| {
        ApiError::new(StatusCode::NOT_FOUND, ErrorCode::EnvironmentNotFound, format!("environment {id:?} not found"))
            .with_details(json!({ "environmentId": id }))
    })?;
    Ok(Json(view(&state, &e).await?))
}

pub async fn create(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    Extension(rid): Extension<RequestId>,
    ApiJson(req): ApiJson<CreateEnvironment>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    crate::model::validate_name("name", &req.name).map_err(|i| ApiError::validation(&i.field, i.message))?;
    let kind = req.kind.unwrap_or_else(|| req.name.clone());
    crate::model::validate_name("type", &kind).map_err(|i| ApiError::validation(&i.field, i.message))?;
    if req.description.len() > 512 {
        return Err(ApiError::validation("description", "at most 512 bytes"));
    }
    let now = now_ms();
    let env = EnvironmentRecord {
        id: random_id("env"),
        name: req.name,
        kind,
        description: req.description,
        locked: false,
        created_at: now,
        updated_at: now,
    };
    let audit = Audit {
        actor: actor.0,
        action: "environment.create",
        target: env.id.clone(),
        request_id: rid.0,
        details: json!({ "name": env.name }),
    };
    if !state.store.create_environment(&env, &audit).await? {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            ErrorCode::EnvironmentExists,
            format!("environment {:?} already exists", env.name),
        ));
    }
    Ok((StatusCode::CREATED, Json(view(&state, &env).await?)))
}
