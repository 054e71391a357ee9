//! The shapes of the answers that handlers render as `serde_json::json!` views, for the OpenAPI
//! document ([`super::openapi`]). These types are never built: each describes one view field for
//! field (names as rendered, `Option` where the view can hold `null`), next to the function that
//! renders it. The fuzzer's response-conformance check (`scripts/fuzz-api`) holds every answer of
//! the running server against them.
#![allow(dead_code)]

use std::collections::BTreeMap;

use serde_json::Value;
use utoipa::ToSchema;

use super::ErrorCode;
use crate::authz::RoleBinding;
use crate::model::{Configuration, TargetJson};
use crate::resources::LimitsDoc;
use crate::status::ReplicaView;

/// The error body every failure has: `{"error": {...}}`.
#[derive(ToSchema)]
pub struct ErrorBody {
    error: ErrorDetail,
}

#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub struct ErrorDetail {
    code: ErrorCode,
    message: String,
    /// What the code needs to be acted on (`field`, `permission`, `retryAfterSeconds`, …).
    #[schema(value_type = Object)]
    details: Value,
    request_id: String,
    /// Where the code is explained: `docs/errors.md#<code>`.
    documentation: String,
}

/// The seed's pagination block of every list.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub struct Pagination {
    page: i64,
    page_size: i64,
    total_count: i64,
    has_next: bool,
}

/// `struct $name { data: Vec<$item>, pagination: Pagination }`: one page of a list.
macro_rules! pages {
    ($($name:ident => $item:ty,)*) => {$(
        #[doc = concat!("One page of ", stringify!($item), " items.")]
        #[derive(ToSchema)]
        pub struct $name {
            data: Vec<$item>,
            pagination: Pagination,
        }
    )*};
}

pages! {
    DeploymentPage => DeploymentView,
    AgentPage => super::agents::AgentView,
    TokenPage => super::agents::TokenView,
    ApprovalPage => ApprovalView,
    AuditPage => AuditView,
    RevisionPage => RevisionView,
    EventPage => EventView,
    TimelinePage => TimelineItem,
    UserPage => UserView,
    ApiKeyPage => ApiKeyView,
    EnvironmentPage => EnvironmentView,
    VersionPage => VersionView,
    WorkspacePage => WorkspaceView,
    ProjectPage => ProjectView,
    AiZonePage => AiZoneView,
    WebhookPage => WebhookView,
    DeliveryPage => DeliveryView,
}

/// `GET /v1/health`.
#[derive(ToSchema)]
pub struct Health {
    status: String,
    version: String,
}

/// An asynchronous change to poll (`GET /v1/operations/{id}`).
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub struct OperationView {
    id: String,
    /// What the operation does (`create`, `update`, `scale`, `delete`, …).
    r#type: String,
    deployment_id: String,
    /// `pending`, `in_progress`, `succeeded`, `failed`, `waiting`, …
    status: String,
    message: String,
    request_id: String,
    approval_id: Option<String>,
    created_at: String,
    started_at: Option<String>,
    updated_at: String,
    finished_at: Option<String>,
    href: String,
}

#[derive(ToSchema)]
pub struct HealthSummary {
    status: String,
    issues: Vec<String>,
}

#[derive(ToSchema)]
pub struct ReplicaCounts {
    desired: u32,
    current: u32,
    ready: u32,
}

/// A deployment with its status summary.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub struct DeploymentView {
    id: String,
    deployment_name: String,
    active_version: String,
    status: String,
    environment: String,
    workspace: String,
    project_id: Option<String>,
    ai_zone_id: Option<String>,
    /// `direct` or `github`.
    deployment_source: String,
    /// The Git source (`null` for a direct deployment).
    source_configuration: Option<GitSourceView>,
    target: TargetJson,
    configuration: Configuration,
    created: String,
    updated: String,
    last_deployed: String,
    desired_state: String,
    health: HealthSummary,
    replicas: ReplicaCounts,
    revision: i64,
    resource_version: i64,
}

/// A Git source as a deployment shows it: one of `branch` and `tag` when the ref was one.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub struct GitSourceView {
    github_repo_url: String,
    path: String,
    commit: String,
    branch: Option<String>,
    tag: Option<String>,
}

/// `202 Accepted`: the operation to poll (also in `Location`), the deployment (as changed; as it
/// still is, or `null` for a create, while the change waits) and, when the change waits for an
/// approval or a change window, the pending change.
#[derive(ToSchema)]
pub struct ChangeAccepted {
    deployment: Option<DeploymentView>,
    operation: OperationView,
    approval: Option<ApprovalView>,
}

/// Where a promotion went.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub struct PromotionView {
    source_deployment_id: String,
    source_environment: String,
    target_environment: String,
    version: String,
    target_deployment_id: String,
    /// Whether the promotion creates the target deployment.
    created: bool,
}

/// `202 Accepted` of a promotion: the change in the target, and where it came from.
#[derive(ToSchema)]
pub struct PromotionAccepted {
    deployment: Option<DeploymentView>,
    operation: OperationView,
    approval: Option<ApprovalView>,
    promotion: PromotionView,
}

#[derive(ToSchema)]
pub struct PromotionSummary {
    requested: u64,
    promoted: u64,
    failed: u64,
}

/// One item of an environment promotion: `promoted` (with its operation) or `failed` (with
/// the error it would have had alone).
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub struct PromotionItem {
    /// The id or name as the request gave it.
    deployment: String,
    /// `promoted` or `failed`.
    status: String,
    source_deployment_id: Option<String>,
    operation: Option<OperationView>,
    approval: Option<ApprovalView>,
    promotion: Option<PromotionView>,
    error: Option<ErrorDetail>,
}

#[derive(ToSchema)]
pub struct EnvironmentPromotion {
    environment: String,
    from: String,
    summary: PromotionSummary,
    items: Vec<PromotionItem>,
}

#[derive(ToSchema)]
pub struct DeploymentStatusDeployment {
    #[schema(rename = "lastDeployed")]
    last_deployed: String,
    strategy: String,
}

#[derive(ToSchema)]
pub struct HealthCheckStates {
    /// `not configured`, `passing` or `failing`.
    liveness: String,
    readiness: String,
    startup: String,
}

#[derive(ToSchema)]
pub struct DeploymentHealth {
    status: String,
    checks: HealthCheckStates,
    issues: Vec<String>,
}

#[derive(ToSchema)]
pub struct PodCounts {
    desired: u32,
    current: u32,
    available: u32,
    updated: u32,
}

#[derive(ToSchema)]
pub struct DeploymentResources {
    pods: PodCounts,
}

/// The seed's Deployment Status entity, with per-replica detail.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub struct DeploymentStatusView {
    id: String,
    deployment_id: String,
    name: String,
    status: String,
    environment: String,
    workspace: String,
    version: String,
    revision: i64,
    deployment: DeploymentStatusDeployment,
    health: DeploymentHealth,
    resources: DeploymentResources,
    replicas: Vec<ReplicaView>,
}

/// A change that waits for an approval or its change window.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub struct ApprovalView {
    id: String,
    status: String,
    environment: String,
    deployment_id: String,
    deployment_name: String,
    action: String,
    permission: String,
    /// The change as it was asked for.
    request: Value,
    requested_by: String,
    request_id: String,
    operation_id: String,
    approval_required: bool,
    wait_for_window: bool,
    message: String,
    decided_by: Option<String>,
    comment: Option<String>,
    decided_at: Option<String>,
    created: String,
    updated: String,
    expires_at: String,
    href: String,
}

/// A decision on a pending change, and the operation it started or ended.
#[derive(ToSchema)]
pub struct Decided {
    approval: ApprovalView,
    operation: OperationView,
}

/// One audit record.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub struct AuditView {
    id: String,
    at: String,
    actor: String,
    action: String,
    object_type: String,
    object: String,
    request_id: String,
    source: Option<String>,
    /// `succeeded`, `failed` or `denied`.
    outcome: String,
    changes: Option<Value>,
    details: Value,
}

/// A deployment's status transition.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub struct EventView {
    id: String,
    sequence: i64,
    at: String,
    r#type: String,
    deployment_id: String,
    from: Option<String>,
    to: String,
    reasons: Vec<String>,
    message: String,
}

/// A revision of a deployment (secret values masked).
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub struct RevisionView {
    revision: i64,
    version: String,
    current: bool,
    created: String,
    created_by: Option<String>,
    request_id: Option<String>,
    action: Option<String>,
    audit_id: Option<String>,
    changes: Option<Value>,
    details: Option<Value>,
    configuration: Value,
}

/// `{"type": "audit", "at", "audit"}` or `{"type": "event", "at", "event"}`.
#[derive(ToSchema)]
pub struct TimelineItem {
    /// `audit` or `event`.
    r#type: String,
    at: String,
    audit: Option<AuditView>,
    event: Option<EventView>,
}

#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub struct UserView {
    id: String,
    username: String,
    roles: Vec<RoleBinding>,
    created_by: String,
    created: String,
    updated: String,
}

/// `POST /v1/auth/login`: a session token.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub struct LoginResponse {
    token: String,
    expires_at: String,
    user: UserView,
}

#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub struct MeEnvironment {
    name: String,
    r#type: String,
    permissions: Vec<String>,
    approval_required: bool,
}

/// `GET /v1/auth/me`: the caller, its roles and what it may do where.
#[derive(ToSchema)]
pub struct Me {
    /// `user`, `api_key`, `admin`, …
    r#type: String,
    id: String,
    name: String,
    roles: Vec<RoleBinding>,
    permissions: Vec<String>,
    environments: Vec<MeEnvironment>,
}

/// An API key (`key` only in the answer that created it).
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub struct ApiKeyView {
    id: String,
    name: String,
    roles: Vec<RoleBinding>,
    owner: String,
    created: String,
    expires_at: Option<String>,
    revoked: Option<String>,
    /// `active`, `expired` or `revoked`.
    status: String,
    /// The key itself: shown once, in the answer to `POST /v1/api-keys`.
    key: Option<String>,
}

/// A bootstrap token, shown once.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub struct CreatedToken {
    id: String,
    token: String,
    description: String,
    labels: BTreeMap<String, String>,
    created_at: String,
    expires_at: String,
    ca_fingerprint: String,
    server_address: String,
    agent_command: String,
}

#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub struct EnvironmentLockView {
    locked_by: String,
    reason: String,
    locked_at: String,
}

#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub struct Restrictions {
    required_roles: Vec<String>,
    approval_required: bool,
}

/// An environment's change-window schedule (`null`: open at all times) and whether it is open.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub struct ChangeWindowsView {
    schedule: Option<crate::change_windows::ChangeWindowsDoc>,
    open: bool,
    next_window_opens: Option<String>,
    freeze: Option<String>,
}

#[derive(ToSchema)]
pub struct DeploymentCount {
    total: i64,
}

/// A secret as listed (never its value).
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub struct ListedSecret {
    name: String,
    r#type: String,
    last_rotated: String,
}

#[derive(ToSchema)]
pub struct EnvironmentConfiguration {
    variables: BTreeMap<String, String>,
    secrets: Vec<ListedSecret>,
}

#[derive(ToSchema)]
pub struct Allocated {
    cpu: String,
    memory: String,
    pods: i64,
}

#[derive(ToSchema)]
pub struct Available {
    cpu: Option<String>,
    memory: Option<String>,
    pods: Option<i64>,
}

/// Limits, what is allocated against them and what is left (`null`: no limit).
#[derive(ToSchema)]
pub struct ResourcesView {
    limits: LimitsDoc,
    allocated: Allocated,
    available: Available,
}

/// The seed's Environment entity.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub struct EnvironmentView {
    id: String,
    name: String,
    r#type: String,
    /// `active` or `locked`.
    status: String,
    lock: Option<EnvironmentLockView>,
    restrictions: Restrictions,
    change_windows: ChangeWindowsView,
    description: String,
    created: String,
    updated: String,
    promotes_to: Option<String>,
    deployments: DeploymentCount,
    configuration: EnvironmentConfiguration,
    resources: ResourcesView,
}

/// An environment's configuration (`operations`: the rollouts a change of the variables started,
/// in the answer to `PUT` only).
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub struct EnvironmentConfigView {
    variables: BTreeMap<String, String>,
    secrets: Vec<ListedSecret>,
    promotes_to: Option<String>,
    limits: LimitsDoc,
    operations: Option<Vec<OperationView>>,
}

#[derive(ToSchema)]
pub struct VariablesView {
    variables: BTreeMap<String, String>,
    /// In the answer to `PUT` only: the rollouts the change started.
    operations: Option<Vec<OperationView>>,
}

#[derive(ToSchema)]
pub struct EnvironmentStatusView {
    id: String,
    name: String,
    status: String,
    #[schema(value_type = BTreeMap<String, i64>)]
    deployments: Value,
    resources: ResourcesView,
}

/// A deployment's secrets, masked: name → `{"value": "********", "version", "lastRotated"}`.
#[derive(ToSchema)]
pub struct SecretsView {
    secrets: BTreeMap<String, MaskedSecret>,
    /// In the answer to `PUT` only: the rollouts the change started.
    operations: Option<Vec<OperationView>>,
}

#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub struct MaskedSecret {
    value: String,
    version: i64,
    last_rotated: String,
}

/// `PUT …/secrets`: the whole set, name → value (a name left out is deleted).
#[derive(ToSchema)]
pub struct SecretsRequest {
    secrets: BTreeMap<String, String>,
}

/// A version of a deployment (immutable configuration).
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub struct VersionView {
    deployment_id: String,
    version: String,
    description: String,
    configuration: Value,
    source: Option<Value>,
    status: String,
    status_reason: String,
    status_changed: Option<String>,
    active: bool,
    created: String,
    created_by: String,
    audit_id: Option<String>,
    last_deployed: Option<String>,
    last_deployed_by: Option<String>,
    last_operation_id: Option<String>,
    href: String,
}

/// `GET /v1/deployments/{id}/config`.
#[derive(ToSchema)]
pub struct DeploymentConfigView {
    version: String,
    configuration: Configuration,
}

/// `GET /v1/deployments/{id}/env`.
#[derive(ToSchema)]
pub struct DeploymentEnvView {
    version: String,
    env: BTreeMap<String, String>,
}

#[derive(ToSchema)]
pub struct WorkspaceView {
    id: String,
    name: String,
    description: String,
    owner: String,
    created: String,
    updated: String,
}

#[derive(ToSchema)]
pub struct ProjectView {
    id: String,
    name: String,
    workspace: String,
    description: String,
    created: String,
    updated: String,
}

#[derive(ToSchema)]
pub struct AiZoneView {
    id: String,
    name: String,
    workspace: Option<String>,
    description: String,
    provider: String,
    region: String,
    labels: BTreeMap<String, String>,
    created: String,
    updated: String,
}

/// `GET /v1/logs/deployments/{id}`: the lines, oldest first, and the cursor for the next call.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub struct LogPage {
    data: Vec<super::logs::LogView>,
    next_after: Option<i64>,
}

/// A webhook (`secret` masked, except in the answer that created it).
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub struct WebhookView {
    id: String,
    url: String,
    events: Vec<String>,
    description: String,
    secret: String,
    created_by: String,
    created_at: String,
    href: String,
    deliveries: String,
}

#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub struct DeliveryView {
    id: String,
    webhook_id: Option<String>,
    event_id: String,
    event: String,
    status: String,
    attempts: i64,
    last_response_code: Option<i64>,
    last_error: Option<String>,
    next_attempt_at: Option<String>,
    created_at: String,
    updated_at: String,
    delivered_at: Option<String>,
    payload: Value,
}

#[derive(ToSchema)]
pub struct SourceField {
    name: String,
    required: bool,
    description: Option<String>,
}

/// One kind of deployment source and how to use it.
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub struct SourceKind {
    r#type: String,
    available: bool,
    endpoint: Option<String>,
    description: Option<String>,
    /// Why it is not available.
    reason: Option<String>,
    schemes: Option<Vec<String>>,
    allow_file_sources: Option<bool>,
    fields: Vec<SourceField>,
}

#[derive(ToSchema)]
pub struct SourceList {
    data: Vec<SourceKind>,
}

/// `POST /v1/deployments/sources/validate`: the source resolves (for a Git source: to this
/// commit, with what its deployment file says).
#[derive(ToSchema)]
#[schema(rename_all = "camelCase")]
pub struct SourceValidation {
    valid: bool,
    deployment_source: String,
    commit: Option<String>,
    r#ref: Option<String>,
    active_version: Option<String>,
    deployment_name: Option<String>,
    environment: Option<String>,
    configuration: Option<Value>,
}

/// `POST /v1/deployments/{id}/{action}`.
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
pub enum LifecycleAction {
    Start,
    Stop,
    Restart,
}
