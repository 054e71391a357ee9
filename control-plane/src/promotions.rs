//! The promotions service: moving the exact version that runs in one environment to the next
//! one of the promotion chain (`promotesTo`). Handlers (`api/promotions.rs`) parse and render.
//!
//! * `POST /v1/deployments/{id}/promote`: the deployment's active version (or the version the
//!   request names) goes to the deployment of the same name and workspace in the next
//!   environment. If that deployment exists, the change is [`Change::Promote`]: the version of
//!   that name with exactly the source's frozen template (its Git pin included) is created in
//!   it — or reused if it exists with the same template; another template is `DEPLOY_010` — and
//!   deployed. If it does not exist, it is created with that version ([`NewDeployment`] with its
//!   `promotion`), with the source's replica count unless the request gives one. Either way the
//!   deployments service does the rest exactly as for a direct change there: permission
//!   (`deployment:promote` in the target environment, instead of `version:deploy` or
//!   `deployment:create`), lock, change window, approval, limits, the target environment's
//!   variables and secrets, audit (`deployment.promote`, naming source deployment, version,
//!   source and target environments), the operation to poll.
//! * `POST /v1/environments/{id}/promote`: the same for a set of deployments of the environment
//!   that promotes to this one, one by one; each item succeeds or fails on its own.
//!
//! The source is read with `deployment:read` (a caller that may not see it gets its 404). The
//! end of a chain, or a `targetEnvironment`/`from` that is not the chain's neighbour, is
//! `ENV_009`.

use std::collections::BTreeSet;

use axum::http::StatusCode;
use serde_json::json;

use crate::AppState;
use crate::api::{ApiError, ApiResult, ErrorCode};
use crate::authz::{Scope, perm};
use crate::context::RequestContext;
use crate::deployments::{Accepted, Change, Deployments, NewDeployment, Options, Outcome, Promotion, invalid};
use crate::model::{self, Configuration};
use crate::store::{DeploymentFilter, DeploymentRecord, EnvironmentRecord};
use crate::versions;

/// Most deployments one environment promotion takes.
pub const MAX_ITEMS: usize = 100;
/// The route an environment promotion's refused items are audited under (each names its
/// source deployment).
const ITEM_ROUTE: &str = "/v1/deployments/{id}/promote";

/// What `POST /v1/deployments/{id}/promote` may say; all optional.
#[derive(Debug, Clone, Default)]
pub struct PromoteRequest {
    /// Another existing version of the source than its active one.
    pub version: Option<String>,
    /// Must be the next environment of the chain, if given.
    pub target_environment: Option<String>,
    /// The replica count of the target (default: the source's when the target is created, the
    /// target's own when it exists).
    pub replicas: Option<u32>,
}

/// A promotion that was accepted: applied now or stored as a pending change of the target.
pub struct Promoted {
    pub promotion: Promotion,
    /// Whether the target deployment is created by it (rather than changed).
    pub created: bool,
    pub outcome: Outcome<Accepted>,
}

/// Which deployments an environment promotion takes from the previous environment.
#[derive(Debug, Clone)]
pub enum Selection {
    /// By id or `deploymentName`.
    Named(Vec<String>),
    /// Every deployment there that the caller may read.
    All,
}

/// One item of an environment promotion: what was asked (the id or name), the source
/// deployment it named (when found) and how it ended.
pub struct ItemOutcome {
    pub key: String,
    pub source_id: Option<String>,
    pub result: ApiResult<Promoted>,
}

/// An environment promotion: the environment promoted into, the one promoted from, each item.
pub struct EnvironmentPromotion {
    pub environment: EnvironmentRecord,
    pub from: String,
    pub items: Vec<ItemOutcome>,
}

pub struct Promotions<'a> {
    state: &'a AppState,
}

impl<'a> Promotions<'a> {
    pub fn new(state: &'a AppState) -> Self {
        Self { state }
    }

    /// Promotes deployment `id`'s active version (or `req.version`) to the next environment.
    pub async fn promote(
        &self,
        ctx: &RequestContext,
        id: &str,
        req: PromoteRequest,
        opts: Options,
    ) -> ApiResult<Promoted> {
        if let Some(v) = &req.version {
            model::validate_version_field("version", v).map_err(invalid)?;
        }
        if let Some(t) = &req.target_environment {
            model::validate_name("targetEnvironment", t).map_err(invalid)?;
        }
        if let Some(r) = req.replicas
            && r > model::MAX_REPLICAS
        {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::ReplicaLimit,
                format!("replicas {r} exceeds Ferry's limit of {} replicas per deployment", model::MAX_REPLICAS),
            )
            .with_details(json!({ "field": "replicas" })));
        }
        let deployments = Deployments::new(self.state);
        let source = deployments.load_for(ctx, id, perm::DEPLOYMENT_READ).await?;
        let store = &self.state.store;
        let env = store
            .get_environment(&source.record.environment)
            .await?
            .ok_or_else(|| ApiError::internal().with_cause(format!("deployment {id} names a missing environment")))?;
        let next = match (&env.promotes_to, &req.target_environment) {
            (None, _) => return Err(last_in_chain(&env.name, id)),
            (Some(next), Some(asked)) if asked != next => return Err(not_next(&env.name, next, asked)),
            (Some(next), _) => next.clone(),
        };
        let version_name = req.version.clone().unwrap_or_else(|| source.record.active_version.clone());
        let version =
            store.get_version(id, &version_name).await?.ok_or_else(|| versions::not_found(id, &version_name))?;
        let template = versions::template_of(&version)?;
        let promotion = Promotion {
            source_deployment_id: id.to_string(),
            source_environment: env.name.clone(),
            target_environment: next.clone(),
            version: version_name,
        };
        let record = &source.record;
        if let Some(target) = self.same_named(&next, &record.workspace, &record.name).await? {
            return self.promote_into(ctx, &target, promotion, template, req.replicas, opts).await;
        }
        // Created there with the version: its template run as the source runs it (the target
        // environment's variables and secrets replace the source's when it is created).
        let mut running = source.config.clone();
        running.replicas = req.replicas.unwrap_or(source.config.replicas);
        let mut configuration = Configuration::from_template(&template, &running).map_err(invalid)?;
        // What Ferry pins is the target environment's, set when it is created.
        configuration.secrets.clear();
        configuration.environment_variables.clear();
        let new = NewDeployment {
            name: record.name.clone(),
            environment: next.clone(),
            version: promotion.version.clone(),
            target: source.target.clone(),
            source: configuration.source.as_ref().map(|_| crate::sources::GITHUB.to_string()),
            configuration,
            workspace: Some(record.workspace.clone()),
            project: record.project_id.clone(),
            ai_zone: record.ai_zone_id.clone(),
            promotion: Some(promotion.clone()),
        };
        match deployments.create(ctx, new, opts).await {
            Ok(outcome) => Ok(Promoted { promotion, created: true, outcome }),
            // Created by a concurrent request meanwhile: promote into it.
            Err(e) if e.code == ErrorCode::DeploymentExists => {
                let Some(target) = self.same_named(&next, &record.workspace, &record.name).await? else {
                    return Err(e);
                };
                self.promote_into(ctx, &target, promotion, template, req.replicas, opts).await
            }
            Err(e) => Err(e),
        }
    }

    async fn promote_into(
        &self,
        ctx: &RequestContext,
        target: &DeploymentRecord,
        promotion: Promotion,
        template: serde_json::Value,
        replicas: Option<u32>,
        opts: Options,
    ) -> ApiResult<Promoted> {
        let change = Change::Promote { promotion: promotion.clone(), template, replicas };
        let outcome = Deployments::new(self.state).change(ctx, &target.id, None, change, opts).await?;
        Ok(Promoted { promotion, created: false, outcome })
    }

    /// The live deployment named `name` in `environment` of `workspace`, if there is one.
    async fn same_named(&self, environment: &str, workspace: &str, name: &str) -> ApiResult<Option<DeploymentRecord>> {
        let filter = DeploymentFilter {
            environment: Some(environment),
            workspace: Some(workspace),
            name: Some(name),
            page: 1,
            page_size: 1,
            ..Default::default()
        };
        let (rows, _) = self.state.store.list_deployments(filter).await?;
        Ok(rows.into_iter().next().map(|(d, _)| d))
    }

    /// Promotes the selected deployments of the environment that promotes to `key` (`from`, if
    /// given, must be one) into it, each through [`Promotions::promote`]; items fail on their
    /// own. Shape errors and a chain that does not lead here fail the whole request.
    pub async fn promote_environment(
        &self,
        ctx: &RequestContext,
        key: &str,
        from: Option<String>,
        selection: Selection,
        opts: Options,
    ) -> ApiResult<EnvironmentPromotion> {
        if let Selection::Named(keys) = &selection {
            validate_keys(keys)?;
        }
        if let Some(f) = &from {
            model::validate_name("from", f).map_err(invalid)?;
        }
        let (environment, _) = crate::environments::Environments::new(self.state).get(ctx, key).await?;
        let envs = self.state.store.list_environments().await?;
        let previous: Vec<&EnvironmentRecord> =
            envs.iter().filter(|e| e.promotes_to.as_deref() == Some(environment.name.as_str())).collect();
        let names = || previous.iter().map(|e| e.name.clone()).collect::<Vec<_>>();
        let from = match from {
            Some(f) => match previous.iter().find(|e| e.name == f || e.id == f) {
                Some(e) => e.name.clone(),
                None => {
                    return Err(no_promotion(
                        format!("environment {f:?} does not promote to {:?}", environment.name),
                        json!({ "environment": environment.name, "from": f, "promotedFrom": names() }),
                    ));
                }
            },
            None => match previous.as_slice() {
                [one] => one.name.clone(),
                [] => {
                    return Err(no_promotion(
                        format!("no environment promotes to {:?} (no promotesTo names it)", environment.name),
                        json!({ "environment": environment.name, "promotedFrom": [] }),
                    ));
                }
                _ => {
                    return Err(no_promotion(
                        format!("several environments promote to {:?}: say which with \"from\"", environment.name),
                        json!({ "environment": environment.name, "promotedFrom": names() }),
                    ));
                }
            },
        };
        let sources: Vec<(String, ApiResult<String>)> = match selection {
            Selection::All => self.all_in(ctx, &from).await?.into_iter().map(|id| (id.clone(), Ok(id))).collect(),
            Selection::Named(keys) => {
                let mut out = Vec::with_capacity(keys.len());
                for k in keys {
                    let found = self.resolve(ctx, &from, &k).await;
                    out.push((k, found));
                }
                out
            }
        };
        let mut items = Vec::with_capacity(sources.len());
        for (key, found) in sources {
            let (source_id, result) = match found {
                Ok(id) => {
                    let req =
                        PromoteRequest { target_environment: Some(environment.name.clone()), ..Default::default() };
                    let result = self.promote(ctx, &id, req, opts).await;
                    (Some(id), result)
                }
                Err(e) => (None, Err(e)),
            };
            if let Err(e) = &result {
                self.record_refusal(ctx, source_id.as_deref().unwrap_or(&key), e).await;
            }
            items.push(ItemOutcome { key, source_id, result });
        }
        Ok(EnvironmentPromotion { environment, from, items })
    }

    /// An item refused for permission (or by a conflict) is audited like a refused request
    /// (the request itself succeeds, so the request-id middleware does not see it).
    async fn record_refusal(&self, ctx: &RequestContext, target: &str, e: &ApiError) {
        let scope = crate::audit::Scope {
            actor: Some(ctx.principal.audit_name()),
            route: Some(ITEM_ROUTE.into()),
            target: Some(target.to_string()),
        };
        let post = axum::http::Method::POST;
        if let Some(audit) = crate::audit::refused(&scope, &post, ITEM_ROUTE, &ctx.request_id, ctx.source.clone(), e)
            && let Err(err) = self.state.store.record_audit(&audit).await
        {
            tracing::error!(request_id = %ctx.request_id, error = %err, "could not audit a refused promotion");
        }
    }

    /// The ids of every deployment of `from` the caller may read (at most [`MAX_ITEMS`]).
    async fn all_in(&self, ctx: &RequestContext, from: &str) -> ApiResult<Vec<String>> {
        let filter =
            DeploymentFilter { environment: Some(from), page: 1, page_size: MAX_ITEMS as i64, ..Default::default() };
        let (rows, total) = Deployments::new(self.state).list(ctx, filter).await?;
        if total > MAX_ITEMS as i64 {
            return Err(ApiError::validation(
                "all",
                format!(
                    "{from:?} holds {total} deployments; one promotion takes at most {MAX_ITEMS}: name them in \
                     \"deployments\""
                ),
            ));
        }
        Ok(rows.into_iter().map(|(p, _)| p.record.id).collect())
    }

    /// The deployment of `from` that `key` names: its id, or its `deploymentName` (unique among
    /// what the caller may read there). One the caller may not read is not found.
    async fn resolve(&self, ctx: &RequestContext, from: &str, key: &str) -> ApiResult<String> {
        let deployments = Deployments::new(self.state);
        let not_here = || {
            ApiError::new(
                StatusCode::NOT_FOUND,
                ErrorCode::DeploymentNotFound,
                format!("no deployment {key:?} in environment {from:?}"),
            )
            .with_details(json!({ "deployment": key, "environment": from }))
        };
        if let Some(d) = self.state.store.get_deployment(key).await? {
            let env = self.state.store.get_environment(&d.environment).await?;
            let readable = env
                .as_ref()
                .is_some_and(|e| ctx.allows(perm::DEPLOYMENT_READ, Scope::env(e.scope(), Some(&d.workspace))));
            if !readable {
                return Err(not_here());
            }
            if d.environment != from {
                return Err(no_promotion(
                    format!("deployment {key:?} is in {:?}, not in {from:?}", d.environment),
                    json!({ "deployment": key, "environment": d.environment, "from": from }),
                ));
            }
            return Ok(d.id);
        }
        let filter =
            DeploymentFilter { environment: Some(from), name: Some(key), page: 1, page_size: 10, ..Default::default() };
        let (rows, total) = deployments.list(ctx, filter).await?;
        match rows.as_slice() {
            [] => Err(not_here()),
            [(one, _)] if total == 1 => Ok(one.record.id.clone()),
            _ => {
                let workspaces: Vec<&str> = rows.iter().map(|(p, _)| p.record.workspace.as_str()).collect();
                Err(ApiError::validation(
                    "deployments",
                    format!("{key:?} names deployments in several workspaces ({}): give its id", workspaces.join(", ")),
                )
                .with_details(json!({ "field": "deployments", "deployment": key, "workspaces": workspaces })))
            }
        }
    }
}

/// 1 to [`MAX_ITEMS`] distinct ids or names.
fn validate_keys(keys: &[String]) -> ApiResult<()> {
    if keys.is_empty() || keys.len() > MAX_ITEMS {
        return Err(ApiError::validation(
            "deployments",
            format!("deployments names 1 to {MAX_ITEMS} deployments (ids or names); {} given", keys.len()),
        ));
    }
    let mut seen = BTreeSet::new();
    for k in keys {
        if k.is_empty() || k.len() > 128 || !k.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ApiError::validation("deployments", format!("invalid deployment id or name {k:?}")));
        }
        if !seen.insert(k.as_str()) {
            return Err(ApiError::validation("deployments", format!("{k:?} is named twice")));
        }
    }
    Ok(())
}

fn no_promotion(message: String, details: serde_json::Value) -> ApiError {
    ApiError::new(StatusCode::CONFLICT, ErrorCode::NoPromotionTarget, message).with_details(details)
}

/// `ENV_009`: the environment ends its promotion chain.
pub fn last_in_chain(environment: &str, deployment_id: &str) -> ApiError {
    no_promotion(
        format!(
            "environment {environment:?} is the last of its promotion chain (its promotesTo is null): there is no \
             environment to promote deployment {deployment_id:?} to"
        ),
        json!({ "deploymentId": deployment_id, "environment": environment, "promotesTo": null }),
    )
}

/// `ENV_009`: `targetEnvironment` is not the next environment of the chain.
pub fn not_next(environment: &str, next: &str, asked: &str) -> ApiError {
    no_promotion(
        format!("environment {environment:?} promotes to {next:?}, not to {asked:?}"),
        json!({ "environment": environment, "promotesTo": next, "targetEnvironment": asked }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selections_are_checked() {
        let keys = |n: usize| (0..n).map(|i| format!("d{i}")).collect::<Vec<_>>();
        assert!(validate_keys(&keys(1)).is_ok());
        assert!(validate_keys(&keys(MAX_ITEMS)).is_ok());
        for bad in
            [keys(0), keys(MAX_ITEMS + 1), vec!["web".into(), "web".into()], vec!["a b".into()], vec!["x".repeat(129)]]
        {
            let e = validate_keys(&bad).unwrap_err();
            assert_eq!((e.status, e.code), (StatusCode::BAD_REQUEST, ErrorCode::InvalidValue), "{bad:?}");
        }
    }

    #[test]
    fn chain_refusals_name_the_chain() {
        let e = last_in_chain("production", "deploy-1");
        assert_eq!((e.status, e.code.as_str()), (StatusCode::CONFLICT, "ENV_009"));
        assert_eq!(e.details["promotesTo"], serde_json::Value::Null);
        let e = not_next("development", "staging", "production");
        assert_eq!(e.details["promotesTo"], "staging");
        assert!(e.message.contains("not to \"production\""), "{}", e.message);
    }
}
