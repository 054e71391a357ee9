//! The API's OpenAPI 3.1 document, generated from the code: each handler's `#[utoipa::path]`
//! annotation (method, path, parameters, request body, success answers), the request types
//! (`ToSchema`/`IntoParams` derived from the structs the handlers deserialize) and the view
//! types of [`super::schemas`]. [`Contract`] adds what every route gets from the middleware
//! (authentication, `Idempotency-Key`, `If-Match`, `If-None-Match` and the error answers), the
//! way [`super::contract`] adds it to every route.
//!
//! Served at `GET /v1/openapi.json` (public, with an `ETag`), and as a documentation UI at
//! `/docs` (Swagger UI, vendored in `control-plane/assets/swagger-ui`: it works offline).
//!
//! Invariant: every route of [`super::router`] is in the document, and the document has no
//! other; `every_route_is_documented` fails otherwise.

use std::sync::LazyLock;

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use utoipa::openapi::path::{Operation, Parameter, ParameterBuilder, ParameterIn};
use utoipa::openapi::security::{
    ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
};
use utoipa::openapi::{ContentBuilder, ObjectBuilder, Ref, RefOr, Required, ResponseBuilder, Schema, Type};
use utoipa::{Modify, OpenApi, PartialSchema, ToSchema};

use super::ErrorCode;
use crate::AppState;
use crate::authz::Role;

/// Routes anyone may call (no credential).
pub const PUBLIC: &[&str] = &["/v1/health", "/v1/auth/login", "/v1/openapi.json"];

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Ferry API",
        description = "Ferry's REST API. Every route but health, login and this document needs \
            `Authorization: Bearer <token>` (the admin token, a login session or an API key) or \
            `X-API-Key: <key>`. Errors have one shape (`ErrorBody`); each code is explained in \
            docs/errors.md.",
        license(name = "Apache-2.0"),
    ),
    paths(
        json,
        create_direct,
        super::agents::list,
        super::agents::list_tokens,
        super::agents::create_token,
        super::agents::delete_token,
        super::agents::get,
        super::agents::revoke,
        super::deployments::list,
        super::deployments::create,
        super::sources::create_github,
        super::sources::list,
        super::sources::validate,
        super::deployments::get,
        super::deployments::update,
        super::deployments::delete,
        super::deployments::status,
        super::versions::patch_status,
        super::versions::list,
        super::versions::create,
        super::versions::get,
        super::versions::deploy,
        super::versions::rollback_to,
        super::versions::rollback_previous,
        super::versions::get_config,
        super::versions::put_config,
        super::versions::get_env,
        super::versions::put_env,
        super::audit::deployment,
        super::audit::history,
        super::audit::events,
        super::audit::timeline,
        super::deployments::scale,
        super::secrets::get_deployment,
        super::secrets::put_deployment,
        super::promotions::promote_deployment,
        super::deployments::lifecycle,
        super::deployments::get_operation,
        super::environments::list,
        super::environments::create,
        super::environments::get,
        super::environments::update,
        super::environments::delete,
        super::environments::get_config,
        super::environments::put_config,
        super::environments::get_variables,
        super::environments::put_variables,
        super::environments::get_limits,
        super::environments::put_limits,
        super::environments::deployments,
        super::environments::status,
        super::environments::lock,
        super::environments::unlock,
        super::promotions::promote_environment,
        super::environments::set_restrictions,
        super::environments::get_change_windows,
        super::environments::set_change_windows,
        super::environments::delete_change_windows,
        super::approvals::list,
        super::approvals::get,
        super::approvals::approve,
        super::approvals::reject,
        super::auth::me,
        super::auth::logout,
        super::auth::login,
        super::auth::list_users,
        super::auth::create_user,
        super::auth::get_user,
        super::auth::update_user,
        super::auth::delete_user,
        super::auth::list_keys,
        super::auth::create_key,
        super::auth::revoke_key,
        super::workspaces::list_workspaces,
        super::workspaces::create_workspace,
        super::workspaces::get_workspace,
        super::workspaces::update_workspace,
        super::workspaces::delete_workspace,
        super::workspaces::list_projects,
        super::workspaces::create_project,
        super::workspaces::get_project,
        super::workspaces::update_project,
        super::workspaces::delete_project,
        super::workspaces::list_zones,
        super::workspaces::create_zone,
        super::workspaces::get_zone,
        super::workspaces::update_zone,
        super::workspaces::zone_deployments,
        super::secrets::get_environment,
        super::secrets::put_environment,
        super::logs::list,
        super::logs::stream,
        super::audit::list,
        super::webhooks::list,
        super::webhooks::create,
        super::webhooks::get,
        super::webhooks::delete,
        super::webhooks::deliveries,
        super::webhooks::redeliver,
        super::health,
    ),
    components(schemas(super::schemas::ErrorBody, super::schemas::LifecycleAction)),
    modifiers(&Contract),
)]
struct ApiDoc;

/// The document, built once.
pub fn document() -> &'static utoipa::openapi::OpenApi {
    static DOC: LazyLock<utoipa::openapi::OpenApi> = LazyLock::new(ApiDoc::openapi);
    &DOC
}

static JSON: LazyLock<String> = LazyLock::new(|| document().to_json().expect("the document serializes"));

/// This document (OpenAPI 3.1).
#[utoipa::path(
    get,
    path = "/v1/openapi.json",
    operation_id = "getOpenApi",
    tag = "meta",
    summary = "This OpenAPI 3.1 document (public)",
    responses((status = 200, description = "The document", body = Object)),
)]
pub async fn json() -> Response {
    ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], JSON.as_str()).into_response()
}

/// `POST /v1/deployments/direct` is `POST /v1/deployments` (the seed names both).
#[utoipa::path(
    post,
    path = "/v1/deployments/direct",
    operation_id = "createDirectDeployment",
    tag = "deployments",
    summary = "Create a deployment from the request body (same as POST /v1/deployments)",
    params(super::deployments::MutationParams),
    request_body = super::deployments::CreateDeployment,
    responses((status = 202, description = "The change is accepted: poll the operation (`Location`)", body = super::schemas::ChangeAccepted)),
)]
#[allow(dead_code)]
fn create_direct() {}

const DOCS_HTML: &str = r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Ferry API</title>
<link rel="stylesheet" href="/docs/swagger-ui.css">
</head>
<body>
<div id="ui"></div>
<script src="/docs/swagger-ui-bundle.js"></script>
<script src="/docs/init.js"></script>
</body>
</html>
"#;

/// No online validator badge (it would call out), the document from this server.
const INIT_JS: &str = r##"window.ui = SwaggerUIBundle({
  url: "/v1/openapi.json",
  dom_id: "#ui",
  deepLinking: true,
  validatorUrl: null,
  tryItOutEnabled: false,
});
"##;

const SWAGGER_CSS: &[u8] = include_bytes!("../../assets/swagger-ui/swagger-ui.css");
const SWAGGER_JS: &[u8] = include_bytes!("../../assets/swagger-ui/swagger-ui-bundle.js");

fn asset(content_type: &'static str, body: &'static [u8]) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=86400")),
        ],
        body,
    )
        .into_response()
}

/// `/docs`: the documentation UI, public and self-contained (no request leaves the browser but
/// to this server).
pub fn ui() -> Router<AppState> {
    Router::new()
        .route("/docs", get(|| async { Html(DOCS_HTML) }))
        .route("/docs/", get(|| async { Html(DOCS_HTML) }))
        .route("/docs/init.js", get(|| async { asset("text/javascript", INIT_JS.as_bytes()) }))
        .route("/docs/swagger-ui.css", get(|| async { asset("text/css", SWAGGER_CSS) }))
        .route("/docs/swagger-ui-bundle.js", get(|| async { asset("text/javascript", SWAGGER_JS) }))
}

impl PartialSchema for ErrorCode {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some("Every code the API emits; each is explained in docs/errors.md."))
            .enum_values(Some(ErrorCode::ALL.iter().map(|c| c.as_str())))
            .into()
    }
}

impl ToSchema for ErrorCode {}

impl PartialSchema for Role {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new().schema_type(Type::String).enum_values(Some(Role::ALL.iter().map(|r| r.name()))).into()
    }
}

impl ToSchema for Role {}

/// Schemas of request fields whose rules a derive cannot say (`#[schema(schema_with = ..)]`):
/// each states what the field's validation in the code checks, so that the document tells a
/// client (and the fuzzer) which values are accepted.
pub(crate) mod shape {
    use utoipa::openapi::{ArrayBuilder, ObjectBuilder, Schema, Type};

    /// No control character (`char::is_control`: Unicode category Cc).
    pub const NO_CONTROL: &str = "^[^\\u0000-\\u001f\\u007f-\\u009f]*$";
    /// No control character but tab and line breaks (environment values).
    const NO_CONTROL_BUT_LINES: &str = "^[^\\u0000-\\u0008\\u000b\\u000c\\u000e-\\u001f\\u007f-\\u009f]*$";

    fn string(pattern: &str) -> ObjectBuilder {
        ObjectBuilder::new().schema_type(Type::String).pattern(Some(pattern))
    }

    fn list(items: ObjectBuilder, min: usize, max: usize) -> Schema {
        ArrayBuilder::new().items(items).min_items((min > 0).then_some(min)).max_items(Some(max)).build().into()
    }

    /// `configuration.args` (`crate::model`): at most 256 arguments without control characters.
    pub fn args() -> Schema {
        list(string(NO_CONTROL), 0, 256)
    }

    /// An exec probe's command: 1 to 256 arguments without control characters.
    pub fn exec_command() -> Schema {
        list(string(NO_CONTROL), 1, 256)
    }

    /// An environment map (`crate::model::validate_env`): at most 128 names of
    /// `[A-Za-z_][A-Za-z0-9_]*` (at most 128 characters; `PORT`, `FERRY_WORKLOAD_ID`,
    /// `FERRY_REPLICA` are Ferry's), values without control characters but tab and line breaks.
    pub fn env() -> Schema {
        ObjectBuilder::new()
            .property_names(Some(string("^[A-Za-z_][A-Za-z0-9_]{0,127}$")))
            .additional_properties(Some(string(NO_CONTROL_BUT_LINES)))
            .max_properties(Some(128))
            .build()
            .into()
    }

    /// Labels and selectors (`ferry_protocol::limits::validate_labels`): at most 32, keys of
    /// 1-63 `[A-Za-z0-9._/-]`, values of at most 63 `[A-Za-z0-9._-]`.
    pub fn labels() -> Schema {
        ObjectBuilder::new()
            .property_names(Some(string("^[A-Za-z0-9._/-]{1,63}$")))
            .additional_properties(Some(string("^[A-Za-z0-9._-]{0,63}$")))
            .max_properties(Some(32))
            .build()
            .into()
    }

    /// Agent ids of a target (`ferry_certs::validate_agent_id`): 1 to 100 ids of 1-64 `[a-z0-9-]`.
    pub fn agent_ids() -> Schema {
        list(string("^[a-z0-9-]{1,64}$"), 1, 100)
    }
}

/// What the middleware gives every route (see the module doc).
struct Contract;

/// An optional header of the contract: printable ASCII (visible characters only, as the
/// middleware accepts), at most 255 of them.
fn header_param(name: &str, description: &str) -> Parameter {
    header_param_with(name, description, "^[!-~]{1,255}$", None)
}

/// `If-Match` / `If-None-Match` as `super::preconditions::condition` reads them: `*` or a
/// comma-separated list of entity tags (`"3"`, `W/"a1b2"`), at most 255 characters.
fn condition_param(name: &str, description: &str) -> Parameter {
    let tag = "(W/)?\"[!#-~]*\"";
    header_param_with(name, description, &format!("^(\\*|{tag}(,{tag})*)$"), Some(255))
}

fn header_param_with(name: &str, description: &str, pattern: &str, max_length: Option<usize>) -> Parameter {
    let schema = ObjectBuilder::new().schema_type(Type::String).pattern(Some(pattern)).max_length(max_length);
    ParameterBuilder::new()
        .name(name)
        .parameter_in(ParameterIn::Header)
        .required(Required::False)
        .description(Some(description))
        .schema(Some(schema))
        .build()
}

fn error(description: &str) -> RefOr<utoipa::openapi::Response> {
    ResponseBuilder::new()
        .description(description)
        .content("application/json", ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorBody"))).build())
        .build()
        .into()
}

impl Modify for Contract {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        doc.openapi = utoipa::openapi::OpenApiVersion::Version31;
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        components.add_security_scheme("apiKey", SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-API-Key"))));
        exactly_one_probe(components);
        doc.security = Some(vec![
            SecurityRequirement::new("bearer", Vec::<String>::new()),
            SecurityRequirement::new("apiKey", Vec::<String>::new()),
        ]);
        // A write takes `If-Match` only when a `GET` answers its resource's tag (its own URI, or
        // a parent's); the others refuse it with 400 (`preconditions`).
        let readable: std::collections::BTreeSet<String> =
            doc.paths.paths.iter().filter(|(_, item)| item.get.is_some()).map(|(p, _)| p.clone()).collect();
        for (path, item) in doc.paths.paths.iter_mut() {
            let public = PUBLIC.contains(&path.as_str());
            let ops = [
                ("GET", &mut item.get),
                ("PUT", &mut item.put),
                ("POST", &mut item.post),
                ("DELETE", &mut item.delete),
                ("PATCH", &mut item.patch),
            ];
            for (method, op) in ops {
                if let Some(op) = op {
                    let conditional = readable.contains(&super::preconditions::resource_path(method, path, path));
                    contract(method, public, conditional, op);
                }
            }
        }
        links(doc);
    }
}

/// A health check has exactly one probe (`HealthCheckJson::validate` in `crate::model`): one of
/// `httpGet`, `tcpSocket`, `exec` is an object, the others are absent or `null`.
fn exactly_one_probe(components: &mut utoipa::openapi::Components) {
    use utoipa::openapi::schema::{AllOfBuilder, OneOfBuilder};

    let Some(check) = components.schemas.remove("HealthCheckJson") else { return };
    let probe =
        |name: &str| ObjectBuilder::new().property(name, ObjectBuilder::new().schema_type(Type::Object)).required(name);
    let one = OneOfBuilder::new().item(probe("httpGet")).item(probe("tcpSocket")).item(probe("exec"));
    let both = AllOfBuilder::new().item(check).item(one).build();
    components.schemas.insert("HealthCheckJson".into(), Schema::AllOf(both).into());
}

/// Operations that create a resource: `(operationId, answers, where the new resource's key is
/// in the answer, the path of the resource, its path parameter)`. Every operation under that
/// path gets a link from these answers (see [`links`]).
const CREATES: &[(&str, &[&str], &str, &str, &str)] = &[
    ("createDeployment", &["202"], "/operation/deploymentId", "/v1/deployments/{id}", "id"),
    ("createDirectDeployment", &["202"], "/operation/deploymentId", "/v1/deployments/{id}", "id"),
    ("createGitDeployment", &["202"], "/operation/deploymentId", "/v1/deployments/{id}", "id"),
    ("promoteDeployment", &["202"], "/promotion/targetDeploymentId", "/v1/deployments/{id}", "id"),
    ("createVersion", &["200", "201"], "/version", "/v1/deployments/{id}/versions/{version}", "version"),
    ("putDeploymentConfig", &["200", "201"], "/version", "/v1/deployments/{id}/versions/{version}", "version"),
    ("putDeploymentEnv", &["200", "201"], "/version", "/v1/deployments/{id}/versions/{version}", "version"),
    ("createEnvironment", &["201"], "/id", "/v1/environments/{id}", "id"),
    ("createUser", &["201"], "/id", "/v1/users/{id}", "id"),
    ("createApiKey", &["201"], "/id", "/v1/api-keys/{id}", "id"),
    ("createBootstrapToken", &["201"], "/id", "/v1/agents/tokens/{id}", "id"),
    ("createWorkspace", &["201"], "/id", "/v1/workspaces/{id}", "id"),
    ("createProject", &["201"], "/id", "/v1/projects/{id}", "id"),
    ("createAiZone", &["201"], "/id", "/v1/aizones/{id}", "id"),
    ("createWebhook", &["201"], "/id", "/v1/webhooks/{id}", "id"),
];

/// OpenAPI links, so that a client (and the fuzzer's stateful phase) can follow a created
/// resource to the operations on it: from each answer of [`CREATES`] to every operation under
/// the resource's path, with the new key as its parameter (and the path parameters both paths
/// share taken from the request), and from every accepted change (`ChangeAccepted`,
/// `PromotionAccepted`) to its operation (`getOperation`).
fn links(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::link::LinkBuilder;

    let mut ops: Vec<(String, String)> = Vec::new(); // (path, operationId)
    for (path, item) in &doc.paths.paths {
        for op in [&item.get, &item.put, &item.post, &item.delete, &item.patch].into_iter().flatten() {
            if let Some(id) = &op.operation_id {
                ops.push((path.clone(), id.clone()));
            }
        }
    }
    let params_of = |path: &str| -> Vec<String> {
        path.split('/').filter_map(|s| Some(s.strip_prefix('{')?.strip_suffix('}')?.to_string())).collect()
    };
    for (path, item) in doc.paths.paths.iter_mut() {
        for op in
            [&mut item.get, &mut item.put, &mut item.post, &mut item.delete, &mut item.patch].into_iter().flatten()
        {
            let from = op.operation_id.clone().unwrap_or_default();
            for (status, answer) in op.responses.responses.iter_mut() {
                let RefOr::T(answer) = answer else { continue };
                let accepted = answer.content.values().any(|c| {
                    matches!(c, RefOr::T(c) if matches!(&c.schema, Some(RefOr::Ref(r))
                        if r.ref_location.ends_with("/ChangeAccepted") || r.ref_location.ends_with("/PromotionAccepted")))
                });
                if accepted {
                    let link = LinkBuilder::new()
                        .operation_id("getOperation")
                        .parameter("id", "$response.body#/operation/id")
                        .description("The operation to poll")
                        .build();
                    answer.links.insert("getOperation".into(), link.into());
                }
                for (creator, statuses, pointer, prefix, key) in CREATES {
                    if *creator != from || !statuses.contains(&status.as_str()) {
                        continue;
                    }
                    let shared = params_of(path);
                    for (target_path, target) in &ops {
                        let under = target_path == prefix || target_path.starts_with(&format!("{prefix}/"));
                        if !under || *target == from {
                            continue;
                        }
                        let mut link = LinkBuilder::new()
                            .operation_id(target.clone())
                            .parameter(*key, format!("$response.body#{pointer}"));
                        for p in params_of(target_path) {
                            if p != *key && shared.contains(&p) {
                                link = link.parameter(p.clone(), format!("$request.path.{p}"));
                            }
                        }
                        answer.links.insert(target.clone(), link.build().into());
                    }
                }
            }
        }
    }
}

/// `conditional`: a write whose resource has a tag to compare `If-Match` with.
fn contract(method: &str, public: bool, conditional: bool, op: &mut Operation) {
    let mut params = Vec::new();
    let mut errors = vec![
        ("400", "Invalid input: a parameter or field is wrong (`VALIDATION_*`)"),
        ("404", "No such resource (or none the caller may see)"),
        ("414", "The request URI is too long"),
        ("500", "A bug or an unexpected failure (`INTERNAL_001`)"),
        ("503", "The database is unreachable or saturated (`UNAVAILABLE_001`)"),
    ];
    if public {
        op.security = Some(Vec::new());
    } else {
        errors.push(("401", "Missing, unknown, expired or revoked credential (`AUTH_001`)"));
        errors.push(("403", "The caller's roles do not allow this here (`AUTH_002`)"));
    }
    match method {
        "POST" => {
            if !public {
                params.push(header_param(
                    "Idempotency-Key",
                    "A retry with the same key gets the first answer again instead of repeating the change",
                ));
                errors.push((
                    "409",
                    "A conflict with the resource's state, or the first request with this Idempotency-Key still runs",
                ));
                errors.push((
                    "422",
                    "The Idempotency-Key was used for another request, or the input cannot be processed",
                ));
            }
            errors.push(("413", "The body is larger than the server accepts (`VALIDATION_003`)"));
            errors.push(("415", "A body without `Content-Type: application/json` (`VALIDATION_004`)"));
        }
        "PUT" | "PATCH" | "DELETE" => {
            if conditional {
                params
                    .push(condition_param("If-Match", "Change only if the resource still has this `ETag` (`*`: any)"));
                errors.push(("412", "`If-Match` names none of the resource's current entity tags"));
            }
            errors.push(("409", "A conflict with the resource's state"));
            errors.push(("413", "The body is larger than the server accepts (`VALIDATION_003`)"));
            errors.push(("415", "A body without `Content-Type: application/json` (`VALIDATION_004`)"));
            errors.push(("422", "The input cannot be processed"));
        }
        _ => {
            if !public || op.operation_id.as_deref() == Some("getOpenApi") {
                params.push(condition_param(
                    "If-None-Match",
                    "Answer `304` if the document still has one of these `ETag`s",
                ));
                let not_modified = ResponseBuilder::new().description("Not modified since the `ETag` given").build();
                op.responses.responses.entry("304".into()).or_insert(not_modified.into());
            }
            errors.push(("409", "A conflict with the resource's state"));
        }
    }
    if op.operation_id.as_deref() == Some("login") {
        errors.push(("401", "Wrong username or password (`AUTH_003`)"));
        errors.push(("429", "Too many failed logins (`AUTH_004`; `Retry-After`)"));
    }
    for (status, description) in errors {
        op.responses.responses.entry(status.into()).or_insert_with(|| error(description));
    }
    if !params.is_empty() {
        op.parameters.get_or_insert_with(Vec::new).extend(params.into_iter().map(RefOr::T));
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::Value;

    use super::*;

    fn doc() -> Value {
        serde_json::from_str(&JSON).unwrap()
    }

    /// `(METHOD, path)` of every route in `super::router`, read from its source: each
    /// `.route("path", get(..).post(..))`.
    fn routes() -> BTreeSet<(String, String)> {
        let src = include_str!("mod.rs");
        let src = &src[src.find("pub fn router(").unwrap()..];
        let src = &src[..src.find("\n}\n").unwrap()];
        let mut out = BTreeSet::new();
        for chunk in src.split(".route(").skip(1) {
            // The route call ends at the parenthesis that closes `.route(`.
            let mut depth = 1;
            let end = chunk
                .char_indices()
                .find_map(|(i, c)| {
                    match c {
                        '(' => depth += 1,
                        ')' => depth -= 1,
                        _ => {}
                    }
                    (depth == 0).then_some(i)
                })
                .unwrap();
            let call = &chunk[..end];
            let path = call.split('"').nth(1).unwrap().to_string();
            let handlers = &call[call.find(',').unwrap()..];
            for method in ["get", "put", "post", "delete", "patch"] {
                let found = handlers
                    .match_indices(&format!("{method}("))
                    .any(|(i, _)| handlers[..i].chars().last().is_none_or(|c| !c.is_alphanumeric() && c != '_'));
                if found {
                    out.insert((method.to_uppercase(), path.clone()));
                }
            }
        }
        out
    }

    fn documented() -> BTreeSet<(String, String)> {
        let doc = doc();
        let mut out = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                out.insert((method.to_uppercase(), path.clone()));
            }
        }
        out
    }

    #[test]
    fn every_route_is_documented() {
        let routes = routes();
        assert!(routes.len() > 90, "the router's routes were not found: {routes:?}");
        assert!(routes.contains(&("PATCH".into(), "/v1/deployments/{id}/status".into())));
        assert!(routes.contains(&("DELETE".into(), "/v1/api-keys/{id}".into())));
        let documented = documented();
        let missing: Vec<_> = routes.iter().filter(|r| !documented.contains(r)).collect();
        assert!(
            missing.is_empty(),
            "routes missing from the OpenAPI document (add #[utoipa::path] and list them in ApiDoc): {missing:?}"
        );
        let extra: Vec<_> = documented.iter().filter(|r| !routes.contains(r)).collect();
        assert!(extra.is_empty(), "documented operations the router does not serve: {extra:?}");
    }

    fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(r)) = m.get("$ref") {
                    out.push(r);
                }
                m.values().for_each(|v| refs(v, out));
            }
            Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }

    #[test]
    fn if_match_is_documented_where_a_tag_can_be_compared() {
        let doc = doc();
        let takes = |path: &str, method: &str| {
            let params = doc["paths"][path][method]["parameters"].as_array().cloned().unwrap_or_default();
            params.iter().any(|p| p["name"] == "If-Match" && p["in"] == "header")
        };
        assert!(takes("/v1/deployments/{id}", "put"));
        assert!(takes("/v1/environments/{id}/restrictions", "put"), "read at its parent");
        assert!(!takes("/v1/api-keys/{id}", "delete"), "no GET: If-Match is refused there");
        assert!(!takes("/v1/agents/tokens/{id}", "delete"));
        assert!(doc["paths"]["/v1/api-keys/{id}"]["delete"]["responses"].get("412").is_none());
    }

    #[test]
    fn the_document_is_valid_openapi_3_1() {
        let doc = doc();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3.1."), "{}", doc["openapi"]);
        assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());
        // Every reference resolves.
        let mut all = Vec::new();
        refs(&doc, &mut all);
        assert!(!all.is_empty());
        for r in all {
            let pointer = r.strip_prefix('#').unwrap_or_else(|| panic!("external reference {r}"));
            assert!(doc.pointer(pointer).is_some(), "unresolved reference {r}");
        }
        let mut ids = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            let templated: BTreeSet<&str> =
                path.split('/').filter_map(|s| s.strip_prefix('{')?.strip_suffix('}')).collect();
            for (method, op) in item.as_object().unwrap() {
                let id = op["operationId"].as_str().unwrap_or_else(|| panic!("{method} {path}: no operationId"));
                assert!(ids.insert(id.to_string()), "operationId {id} is used twice");
                let responses = op["responses"].as_object().unwrap();
                assert!(responses.keys().any(|s| s.starts_with('2')), "{method} {path}: no success answer");
                for (status, r) in responses {
                    assert!(r.get("description").is_some() || r.get("$ref").is_some(), "{method} {path} {status}");
                }
                let params = op["parameters"].as_array().map(Vec::as_slice).unwrap_or_default();
                let in_path: BTreeSet<&str> =
                    params.iter().filter(|p| p["in"] == "path").map(|p| p["name"].as_str().unwrap()).collect();
                assert_eq!(in_path, templated, "{method} {path}: path parameters");
                for p in params {
                    assert!(p["schema"].is_object(), "{method} {path}: parameter {} has no schema", p["name"]);
                }
                // Errors have the one shape.
                if !PUBLIC.contains(&path.as_str()) {
                    assert_eq!(
                        responses["401"]["content"]["application/json"]["schema"]["$ref"],
                        "#/components/schemas/ErrorBody"
                    );
                    assert!(op.get("security").is_none(), "{method} {path}: authenticated like the rest");
                } else {
                    assert_eq!(op["security"], serde_json::json!([]), "{method} {path}: public");
                }
            }
        }
        // Every link names an operation of the document, and only path parameters it has.
        let mut targets = BTreeSet::new();
        for item in doc["paths"].as_object().unwrap().values() {
            for op in item.as_object().unwrap().values() {
                for answer in op["responses"].as_object().unwrap().values() {
                    for link in answer["links"].as_object().into_iter().flat_map(|l| l.values()) {
                        let target = link["operationId"].as_str().unwrap();
                        let (path, target_op) = doc["paths"]
                            .as_object()
                            .unwrap()
                            .iter()
                            .find_map(|(p, i)| {
                                i.as_object().unwrap().values().find(|o| o["operationId"] == target).map(|o| (p, o))
                            })
                            .unwrap_or_else(|| panic!("a link to the unknown operation {target}"));
                        let names: BTreeSet<&str> = target_op["parameters"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .filter(|p| p["in"] == "path")
                            .map(|p| p["name"].as_str().unwrap())
                            .collect();
                        for name in link["parameters"].as_object().unwrap().keys() {
                            assert!(names.contains(name.as_str()), "a link to {target} ({path}) sets {name}");
                        }
                        targets.insert(target.to_string());
                    }
                }
            }
        }
        for expected in ["getDeployment", "deleteDeployment", "getVersion", "getEnvironment", "getOperation", "getUser"]
        {
            assert!(targets.contains(expected), "no link leads to {expected}");
        }
        let codes = &doc["components"]["schemas"]["ErrorCode"]["enum"];
        assert_eq!(codes.as_array().unwrap().len(), ErrorCode::ALL.len());
    }
}
