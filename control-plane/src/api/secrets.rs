//! `/v1/deployments/{id}/secrets` and `/v1/environments/{id}/secrets`: handlers parse the body
//! and render masked answers; the rules are in the secrets service ([`crate::secrets`]).
//!
//! `GET` → `{"secrets": {"NAME": {"value": "********", "version": 2, "lastRotated": "…"}}}`, never
//! a value. `PUT` with `{"secrets": {"NAME": "value", …}}` replaces the whole set (names left
//! out are deleted) and answers like `GET`, plus the `operations` of the rollouts it started.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use serde_json::{Map, Value, json};

use super::deployments::operation_view;
use super::{ApiError, ApiJson, ApiPath, ApiResult};
use crate::AppState;
use crate::context::RequestContext;
use crate::ids::rfc3339;
use crate::secrets::{Secrets, Written};
use crate::store::SecretRecord;

/// What a secret's value shows as.
pub const MASK: &str = "********";

pub fn masked(secrets: &[SecretRecord]) -> Value {
    let map: Map<String, Value> = secrets
        .iter()
        .map(|s| (s.name.clone(), json!({ "value": MASK, "version": s.version, "lastRotated": rfc3339(s.updated_at) })))
        .collect();
    Value::Object(map)
}

/// The seed's `configuration.secrets` of an environment: `[{"name", "type", "lastRotated"}]`.
pub fn listed(secrets: &[SecretRecord]) -> Value {
    secrets.iter().map(|s| json!({ "name": s.name, "type": "ferry", "lastRotated": rfc3339(s.updated_at) })).collect()
}

fn written(w: &Written) -> Json<Value> {
    Json(
        json!({ "secrets": masked(&w.secrets), "operations": w.operations.iter().map(operation_view).collect::<Vec<_>>() }),
    )
}

/// `{"secrets": {"NAME": "value", …}}`, read by hand so that no error message can echo a value
/// (serde's would, for a value of the wrong type).
fn body(v: Value) -> ApiResult<BTreeMap<String, String>> {
    let Value::Object(mut top) = v else {
        return Err(ApiError::validation("secrets", "expected an object {\"secrets\": {\"NAME\": \"value\", …}}"));
    };
    if let Some(other) = top.keys().find(|k| *k != "secrets") {
        return Err(ApiError::validation(other, format!("unknown field {other:?}: expected only \"secrets\"")));
    }
    let Some(Value::Object(secrets)) = top.remove("secrets") else {
        return Err(ApiError::validation("secrets", "\"secrets\" must be an object of names to string values"));
    };
    let mut out = BTreeMap::new();
    for (name, value) in secrets {
        match value {
            Value::String(s) => {
                out.insert(name, s);
            }
            _ => {
                let shown: String = name.chars().take(crate::secrets::MAX_NAME_LEN).collect();
                return Err(ApiError::validation(
                    &format!("secrets.{shown}"),
                    "a secret's value must be a string; to delete a secret, leave its name out",
                ));
            }
        }
    }
    Ok(out)
}

#[utoipa::path(
    get,
    path = "/v1/deployments/{id}/secrets",
    operation_id = "getDeploymentSecrets",
    tag = "secrets",
    summary = "A deployment's secrets (masked)",
    params(("id" = String, Path, description = "The deployment's id")),
    responses(
        (status = 200, description = "The secrets, masked", body = super::schemas::SecretsView),
    ),
)]
pub async fn get_deployment(
    State(state): State<AppState>,
    ctx: RequestContext,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    let secrets = Secrets::new(&state).of_deployment(&ctx, &id).await?;
    Ok(Json(json!({ "secrets": masked(&secrets) })))
}

#[utoipa::path(
    put,
    path = "/v1/deployments/{id}/secrets",
    operation_id = "putDeploymentSecrets",
    tag = "secrets",
    summary = "Replace a deployment's secrets",
    params(("id" = String, Path, description = "The deployment's id")),
    request_body = super::schemas::SecretsRequest,
    responses(
        (status = 200, description = "The secrets, masked, and the rollouts the change started", body = super::schemas::SecretsView),
    ),
)]
pub async fn put_deployment(
    State(state): State<AppState>,
    ctx: RequestContext,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<Value>,
) -> ApiResult<Json<Value>> {
    let values = body(req)?;
    Ok(written(&Secrets::new(&state).set_for_deployment(&ctx, &id, values).await?))
}

#[utoipa::path(
    get,
    path = "/v1/environments/{id}/secrets",
    operation_id = "getEnvironmentSecrets",
    tag = "secrets",
    summary = "An environment's secrets (masked)",
    params(("id" = String, Path, description = "The environment's id or name")),
    responses(
        (status = 200, description = "The secrets, masked", body = super::schemas::SecretsView),
    ),
)]
pub async fn get_environment(
    State(state): State<AppState>,
    ctx: RequestContext,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Value>> {
    let (_, secrets) = Secrets::new(&state).of_environment(&ctx, &id).await?;
    Ok(Json(json!({ "secrets": masked(&secrets) })))
}

#[utoipa::path(
    put,
    path = "/v1/environments/{id}/secrets",
    operation_id = "putEnvironmentSecrets",
    tag = "secrets",
    summary = "Replace an environment's secrets",
    params(("id" = String, Path, description = "The environment's id or name")),
    request_body = super::schemas::SecretsRequest,
    responses(
        (status = 200, description = "The secrets, masked, and the rollouts the change started", body = super::schemas::SecretsView),
    ),
)]
pub async fn put_environment(
    State(state): State<AppState>,
    ctx: RequestContext,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<Value>,
) -> ApiResult<Json<Value>> {
    let values = body(req)?;
    let (_, w) = Secrets::new(&state).set_for_environment(&ctx, &id, values).await?;
    Ok(written(&w))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_read_without_echoing_values() {
        assert_eq!(body(json!({ "secrets": { "A": "x" } })).unwrap(), BTreeMap::from([("A".into(), "x".into())]));
        assert!(body(json!({ "secrets": {} })).unwrap().is_empty());
        for (v, field) in [
            (json!({ "secrets": { "A": null } }), "secrets.A"),
            (json!({ "secrets": { "A": 5 } }), "secrets.A"),
            (json!({ "secrets": { "A": { "value": "s3cr3t" } } }), "secrets.A"),
            (json!({ "secrets": "s3cr3t" }), "secrets"),
            (json!({ "secrets": { "A": "x" }, "extra": "s3cr3t" }), "extra"),
            (json!("s3cr3t"), "secrets"),
            (json!({}), "secrets"),
        ] {
            let e = body(v.clone()).unwrap_err();
            assert_eq!(e.details["field"], field, "{v}");
            assert!(!e.message.contains("s3cr3t"), "{}", e.message);
        }
    }
}
