//! Production approvals and change windows, end to end over REST (and with a real agent for the
//! change that runs): a release manager's production deploy waits for approval, the same release
//! manager cannot approve it, a deployment admin approves it and it runs; rejected and expired
//! changes never apply; a closed window refuses changes with ENV_005, or stores them when asked
//! and applies them when it opens.

use ferry_tests::{Agent, ControlPlane, DEADLINE, binaries::bin_path, eventually};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::time::Duration;

const PASSWORD: &str = "correct horse battery";

/// Creates a user with one role and logs in; returns its session token.
async fn user(cp: &ControlPlane, name: &str, role: &str) -> String {
    let body = json!({ "username": name, "password": PASSWORD, "roles": [role] });
    let (status, res) = cp.api(Method::POST, "/v1/users", Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{res}");
    let login = json!({ "username": name, "password": PASSWORD });
    let (status, res) = cp.request(Method::POST, "/v1/auth/login", Some(login), None).await;
    assert_eq!(status, StatusCode::OK, "{res}");
    res["token"].as_str().unwrap().to_string()
}

async fn call(cp: &ControlPlane, token: &str, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
    cp.request(method, path, body, Some(token)).await
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or_default()
}

fn deployment(name: &str, environment: &str, replicas: u32) -> Value {
    json!({
        "deploymentName": name,
        "environment": environment,
        "target": { "selector": { "role": "web" } },
        "configuration": { "replicas": replicas, "command": "/bin/true" },
    })
}

fn hello(name: &str, environment: &str) -> Value {
    json!({
        "deploymentName": name,
        "environment": environment,
        "target": { "selector": { "role": "web" } },
        "configuration": {
            "replicas": 1,
            "command": bin_path("hello-web").to_str().unwrap(),
            "env": { "GREETING": "approved" },
            "stopGracePeriodSeconds": 2,
            "healthChecks": {
                "readiness": { "httpGet": { "path": "/healthz" }, "periodSeconds": 1, "timeoutSeconds": 1, "failureThreshold": 1 }
            }
        }
    })
}

/// Waits until `path`, read with `token`, satisfies `cond`; returns it.
async fn until(cp: &ControlPlane, token: &str, path: &str, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
    eventually(what, DEADLINE, || async {
        let (status, v) = call(cp, token, Method::GET, path, None).await;
        (status == StatusCode::OK && cond(&v)).then_some(v)
    })
    .await
}

/// The audit records about `target` as (action, actor), in order.
async fn audit_actions(cp: &ControlPlane, target: &str) -> Vec<(String, String)> {
    let rows = cp.running_store().audit_for(target).await.unwrap();
    rows.into_iter().map(|(action, actor, _)| (action, actor)).collect()
}

#[tokio::test]
async fn a_production_deploy_waits_for_a_second_person_and_then_runs() {
    let cp = ControlPlane::spawn().await;
    let agent = Agent::spawn(&cp, &cp.token(600, &[]).await);
    agent.wait_connected().await;
    let rm1 = user(&cp, "rm1", "release_manager").await;
    let rm2 = user(&cp, "rm2", "release_manager").await;
    let dev = user(&cp, "dev", "developer").await;
    let admin2 = user(&cp, "admin2", "deployment_admin").await;

    // A developer cannot even ask.
    let (status, res) = call(&cp, &dev, Method::POST, "/v1/deployments", Some(hello("web", "production"))).await;
    assert_eq!((status, code(&res)), (StatusCode::FORBIDDEN, "AUTH_002"), "{res}");

    // The release manager's deploy is stored, not applied: 202 with a waiting operation.
    let (status, res) = call(&cp, &rm1, Method::POST, "/v1/deployments", Some(hello("web", "production"))).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{res}");
    let op = res["operation"].clone();
    assert_eq!(op["status"], "awaiting_approval", "{res}");
    let approval_id = op["approvalId"].as_str().unwrap().to_string();
    assert_eq!(res["approval"]["id"], approval_id.as_str());
    assert_eq!(res["approval"]["status"], "pending");
    assert_eq!(res["approval"]["requestedBy"], "user:rm1");
    assert_eq!(res["approval"]["request"]["deployment"]["name"], "web");
    assert!(res["deployment"].is_null(), "{res}");
    let deployment_id = op["deploymentId"].as_str().unwrap().to_string();
    let op_href = op["href"].as_str().unwrap().to_string();
    let (status, polled) = call(&cp, &rm1, Method::GET, &op_href, None).await;
    assert_eq!(
        (status, polled["status"].as_str(), polled["approvalId"].as_str()),
        (StatusCode::OK, Some("awaiting_approval"), Some(approval_id.as_str()))
    );

    // Nothing runs: no deployment, no intent.
    let (status, _) = cp.api(Method::GET, &format!("/v1/deployments/{deployment_id}"), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(cp.running_store().placed_rows_of(&deployment_id).await.unwrap().is_empty());

    // Who sees it: the requester, another release manager (who could approve it), an admin;
    // not a developer.
    for token in [&rm1, &rm2, &admin2] {
        let (status, list) = call(&cp, token, Method::GET, "/v1/approvals", None).await;
        assert_eq!(status, StatusCode::OK, "{list}");
        assert_eq!(list["pagination"]["totalCount"], 1, "{list}");
        assert_eq!(list["data"][0]["id"], approval_id.as_str());
    }
    let (_, list) = call(&cp, &dev, Method::GET, "/v1/approvals", None).await;
    assert_eq!(list["pagination"]["totalCount"], 0, "{list}");
    let path = format!("/v1/approvals/{approval_id}");
    let (status, res) = call(&cp, &dev, Method::GET, &path, None).await;
    assert_eq!((status, code(&res)), (StatusCode::FORBIDDEN, "AUTH_002"), "{res}");

    // The requester cannot approve their own change; a developer cannot approve production.
    let approve = format!("/v1/approvals/{approval_id}/approve");
    let (status, res) = call(&cp, &rm1, Method::POST, &approve, Some(json!({ "comment": "me" }))).await;
    assert_eq!((status, code(&res)), (StatusCode::FORBIDDEN, "APPROVAL_002"), "{res}");
    let (status, res) = call(&cp, &dev, Method::POST, &approve, None).await;
    assert_eq!((status, code(&res)), (StatusCode::FORBIDDEN, "AUTH_002"), "{res}");
    let (_, still) = call(&cp, &rm1, Method::GET, &path, None).await;
    assert_eq!(still["status"], "pending", "refusals change nothing");
    assert!(cp.running_store().placed_rows_of(&deployment_id).await.unwrap().is_empty());

    // A deployment admin approves: the change applies exactly as asked, under the same
    // operation, and runs on the agent.
    let (status, res) = call(&cp, &admin2, Method::POST, &approve, Some(json!({ "comment": "ship it" }))).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{res}");
    assert_eq!(res["approval"]["status"], "applied", "{res}");
    assert_eq!(res["approval"]["decidedBy"], "user:admin2");
    assert_eq!(res["approval"]["comment"], "ship it");
    assert_eq!(res["operation"]["id"], op["id"]);
    assert_eq!(res["operation"]["status"], "in_progress");
    let done = until(&cp, &rm1, &op_href, "the approved create succeeds", |v| {
        assert_ne!(v["status"], "failed", "{v}");
        v["status"] == "succeeded"
    })
    .await;
    assert_eq!(done["approvalId"], approval_id.as_str());
    let (status, d) = call(&cp, &rm1, Method::GET, &format!("/v1/deployments/{deployment_id}"), None).await;
    assert_eq!(status, StatusCode::OK, "{d}");
    assert_eq!((d["deploymentName"].as_str(), d["environment"].as_str()), (Some("web"), Some("production")));
    assert_eq!(d["configuration"]["env"]["GREETING"], "approved");
    let st = until(&cp, &rm1, &format!("/v1/deployments/{deployment_id}/status"), "one ready replica", |v| {
        v["status"] == "running" && v["resources"]["pods"]["available"] == 1
    })
    .await;
    let port = st["replicas"][0]["port"].as_u64().unwrap();
    let body = reqwest::get(format!("http://127.0.0.1:{port}/")).await.unwrap().text().await.unwrap();
    assert_eq!(body, "approved (replica 0)\n");

    // Approving twice is refused.
    let (status, res) = call(&cp, &rm2, Method::POST, &approve, None).await;
    assert_eq!((status, code(&res)), (StatusCode::CONFLICT, "APPROVAL_003"), "{res}");
    assert_eq!(res["error"]["details"]["status"], "applied");

    // The audit trail, in order: the change is the requester's, the approval the approver's,
    // and every refusal is recorded (by the request-id middleware, as method and route).
    let trail = audit_actions(&cp, &approval_id).await;
    let refused = "POST /v1/approvals/{id}/approve";
    let expected = [
        ("approval.request", "user:rm1"),
        ("GET /v1/approvals/{id}", "user:dev"),
        (refused, "user:rm1"),
        (refused, "user:dev"),
        ("approval.approve", "user:admin2"),
        (refused, "user:rm2"),
    ];
    let expected: Vec<(String, String)> = expected.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
    assert_eq!(trail, expected);
    let created = audit_actions(&cp, &deployment_id).await;
    assert_eq!(created, [("deployment.create".to_string(), "user:rm1".to_string())]);

    // A change of the running deployment waits too; another release manager may approve it.
    let (status, res) = call(
        &cp,
        &rm1,
        Method::POST,
        &format!("/v1/deployments/{deployment_id}/scale"),
        Some(json!({ "replicas": 2 })),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{res}");
    assert_eq!(res["operation"]["status"], "awaiting_approval");
    assert_eq!(res["deployment"]["configuration"]["replicas"], 1, "shown as it still is");
    let scale_approval = res["approval"]["id"].as_str().unwrap().to_string();
    let (status, res) = call(&cp, &rm2, Method::POST, &format!("/v1/approvals/{scale_approval}/approve"), None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{res}");
    until(&cp, &rm1, &format!("/v1/deployments/{deployment_id}/status"), "two ready replicas", |v| {
        v["status"] == "running" && v["resources"]["pods"]["available"] == 2
    })
    .await;
    agent.stop().await;
}

#[tokio::test]
async fn rejected_and_withdrawn_changes_never_apply() {
    let cp = ControlPlane::spawn().await;
    let rm1 = user(&cp, "rm1", "release_manager").await;
    let rm2 = user(&cp, "rm2", "release_manager").await;
    let dev = user(&cp, "dev", "developer").await;

    let (status, res) =
        call(&cp, &rm1, Method::POST, "/v1/deployments", Some(deployment("api", "production", 1))).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{res}");
    let id = res["approval"]["id"].as_str().unwrap().to_string();
    let op_href = res["operation"]["href"].as_str().unwrap().to_string();
    let reject = format!("/v1/approvals/{id}/reject");

    // A rejection needs a comment, and someone who could approve (or the requester).
    let (status, res) = call(&cp, &rm2, Method::POST, &reject, Some(json!({}))).await;
    assert_eq!((status, code(&res)), (StatusCode::BAD_REQUEST, "VALIDATION_001"), "{res}");
    let (status, res) = call(&cp, &rm2, Method::POST, &reject, Some(json!({ "comment": " " }))).await;
    assert_eq!((status, code(&res)), (StatusCode::BAD_REQUEST, "VALIDATION_001"), "{res}");
    let (status, res) = call(&cp, &dev, Method::POST, &reject, Some(json!({ "comment": "no" }))).await;
    assert_eq!((status, code(&res)), (StatusCode::FORBIDDEN, "AUTH_002"), "{res}");
    let (status, res) = call(&cp, &rm2, Method::POST, &reject, Some(json!({ "comment": "not during the sale" }))).await;
    assert_eq!(status, StatusCode::OK, "{res}");
    assert_eq!(res["approval"]["status"], "rejected");
    assert_eq!(res["operation"]["status"], "failed");
    assert!(res["operation"]["message"].as_str().unwrap().contains("not during the sale"), "{res}");
    let (_, op) = call(&cp, &rm1, Method::GET, &op_href, None).await;
    assert_eq!(op["status"], "failed");
    // Once rejected, it can be neither approved nor rejected again, and it never ran.
    let (status, res) = call(&cp, &rm2, Method::POST, &format!("/v1/approvals/{id}/approve"), None).await;
    assert_eq!((status, code(&res)), (StatusCode::CONFLICT, "APPROVAL_003"), "{res}");
    let (status, res) = call(&cp, &rm2, Method::POST, &reject, Some(json!({ "comment": "again" }))).await;
    assert_eq!((status, code(&res)), (StatusCode::CONFLICT, "APPROVAL_003"), "{res}");
    let (_, list) = cp.api(Method::GET, "/v1/deployments?environment=production", None).await;
    assert_eq!(list["pagination"]["totalCount"], 0, "{list}");

    // The requester may withdraw their own change.
    let (_, res) = call(&cp, &rm1, Method::POST, "/v1/deployments", Some(deployment("api", "production", 1))).await;
    let id = res["approval"]["id"].as_str().unwrap().to_string();
    let (status, res) =
        call(&cp, &rm1, Method::POST, &format!("/v1/approvals/{id}/reject"), Some(json!({ "comment": "typo" }))).await;
    assert_eq!(status, StatusCode::OK, "{res}");
    assert!(res["approval"]["message"].as_str().unwrap().starts_with("withdrawn"), "{res}");

    // Listing: pending by default, any status on request.
    let (_, list) = call(&cp, &rm2, Method::GET, "/v1/approvals", None).await;
    assert_eq!(list["pagination"]["totalCount"], 0, "{list}");
    let (_, list) = call(&cp, &rm2, Method::GET, "/v1/approvals?status=rejected&pageSize=1", None).await;
    assert_eq!(list["pagination"], json!({ "page": 1, "pageSize": 1, "totalCount": 2, "hasNext": true }));
    let (_, list) = call(&cp, &rm2, Method::GET, "/v1/approvals?status=all", None).await;
    assert_eq!(list["pagination"]["totalCount"], 2);
    let (status, res) = call(&cp, &rm2, Method::GET, "/v1/approvals?status=maybe", None).await;
    assert_eq!((status, code(&res)), (StatusCode::BAD_REQUEST, "VALIDATION_001"), "{res}");
    let (status, res) = call(&cp, &rm2, Method::POST, "/v1/approvals/apr-nope/approve", None).await;
    assert_eq!((status, code(&res)), (StatusCode::NOT_FOUND, "APPROVAL_001"), "{res}");
}

#[tokio::test]
async fn an_expired_change_cannot_be_approved() {
    let cp = ControlPlane::builder().approval_ttl(Duration::from_millis(300)).spawn().await;
    let rm1 = user(&cp, "rm1", "release_manager").await;
    let admin2 = user(&cp, "admin2", "deployment_admin").await;
    let (status, res) =
        call(&cp, &rm1, Method::POST, "/v1/deployments", Some(deployment("late", "production", 1))).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{res}");
    let id = res["approval"]["id"].as_str().unwrap().to_string();
    let op_href = res["operation"]["href"].as_str().unwrap().to_string();
    // The sweep (or the next read) expires it; its operation fails saying so.
    let op = until(&cp, &rm1, &op_href, "the waiting operation fails", |v| v["status"] == "failed").await;
    assert!(op["message"].as_str().unwrap().contains("expired"), "{op}");
    let (_, a) = call(&cp, &admin2, Method::GET, &format!("/v1/approvals/{id}"), None).await;
    assert_eq!(a["status"], "expired", "{a}");
    let (status, res) = call(&cp, &admin2, Method::POST, &format!("/v1/approvals/{id}/approve"), None).await;
    assert_eq!((status, code(&res)), (StatusCode::CONFLICT, "APPROVAL_003"), "{res}");
    let (_, list) = cp.api(Method::GET, "/v1/deployments?environment=production", None).await;
    assert_eq!(list["pagination"]["totalCount"], 0, "{list}");
    let actions: Vec<String> = audit_actions(&cp, &id).await.into_iter().map(|(a, _)| a).collect();
    assert_eq!(actions, ["approval.request", "approval.expire", "POST /v1/approvals/{id}/approve"]);
}

fn freeze_now(reason: &str) -> Value {
    let now = time::OffsetDateTime::now_utc();
    let fmt = |t: time::OffsetDateTime| t.format(&time::format_description::well_known::Rfc3339).unwrap();
    json!({
        "timezone": "Europe/Paris",
        "freezes": [{
            "from": fmt(now - time::Duration::hours(1)),
            "to": fmt(now + time::Duration::hours(1)),
            "reason": reason,
        }]
    })
}

#[tokio::test]
async fn a_closed_window_refuses_changes_or_waits_for_it_when_asked() {
    let cp = ControlPlane::spawn().await;
    let admin = cp.admin_token.clone();
    let rm1 = user(&cp, "rm1", "release_manager").await;
    let admin2 = user(&cp, "admin2", "deployment_admin").await;
    let (status, res) = cp.api(Method::POST, "/v1/deployments", Some(deployment("batch", "staging", 1))).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{res}");
    let id = res["deployment"]["id"].as_str().unwrap().to_string();
    let scale = format!("/v1/deployments/{id}/scale");

    // A freeze covering now closes staging.
    let (status, env) =
        cp.api(Method::PUT, "/v1/environments/staging/change-windows", Some(freeze_now("quarter close"))).await;
    assert_eq!(status, StatusCode::OK, "{env}");
    assert_eq!(env["changeWindows"]["open"], false, "{env}");
    assert_eq!(env["changeWindows"]["freeze"], "quarter close");
    let (_, windows) = cp.api(Method::GET, "/v1/environments/staging/change-windows", None).await;
    assert_eq!(windows["schedule"]["timezone"], "Europe/Paris", "{windows}");

    let (status, res) = cp.api(Method::POST, &scale, Some(json!({ "replicas": 3 }))).await;
    assert_eq!((status, code(&res)), (StatusCode::CONFLICT, "ENV_005"), "{res}");
    assert_eq!(res["error"]["details"]["freeze"], "quarter close");
    assert!(res["error"]["details"]["nextWindowOpens"].is_string(), "{res}");
    // Every kind of change is refused, creates and deletes included; reads still work.
    let (status, res) = cp.api(Method::POST, "/v1/deployments", Some(deployment("other", "staging", 1))).await;
    assert_eq!((status, code(&res)), (StatusCode::CONFLICT, "ENV_005"), "{res}");
    let (status, res) = cp.api(Method::DELETE, &format!("/v1/deployments/{id}"), None).await;
    assert_eq!((status, code(&res)), (StatusCode::CONFLICT, "ENV_005"), "{res}");
    assert_eq!(cp.api(Method::GET, &format!("/v1/deployments/{id}"), None).await.0, StatusCode::OK);

    // Asked to wait, the change is stored and applied when the freeze is lifted.
    let (status, res) =
        cp.api(Method::POST, &format!("{scale}?waitForWindow=true"), Some(json!({ "replicas": 3 }))).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{res}");
    assert_eq!(res["operation"]["status"], "awaiting_window", "{res}");
    assert_eq!(res["approval"]["status"], "scheduled");
    assert_eq!(res["approval"]["approvalRequired"], false);
    let op_href = res["operation"]["href"].as_str().unwrap().to_string();
    let (status, res) =
        cp.api(Method::POST, &format!("{scale}?waitForWindow=maybe"), Some(json!({ "replicas": 3 }))).await;
    assert_eq!((status, code(&res)), (StatusCode::BAD_REQUEST, "VALIDATION_001"), "{res}");
    let (_, d) = cp.api(Method::GET, &format!("/v1/deployments/{id}"), None).await;
    assert_eq!(d["configuration"]["replicas"], 1, "not applied while frozen");
    let (_, op) = cp.api(Method::GET, &op_href, None).await;
    assert_eq!(op["status"], "awaiting_window", "the sweep leaves it while the window is closed");

    let (status, env) = cp.api(Method::DELETE, "/v1/environments/staging/change-windows", None).await;
    assert_eq!(status, StatusCode::OK, "{env}");
    assert_eq!(
        env["changeWindows"],
        json!({ "schedule": null, "open": true, "nextWindowOpens": null, "freeze": null })
    );
    until(&cp, &admin, &format!("/v1/deployments/{id}"), "the scheduled scale applies", |d| {
        d["configuration"]["replicas"] == 3
    })
    .await;
    let (_, op) = cp.api(Method::GET, &op_href, None).await;
    assert_ne!(op["status"], "awaiting_window", "{op}");
    assert!(op["startedAt"].is_string(), "{op}");

    // Production: approval first, then the window. Without waitForWindow a frozen production
    // refuses the request outright.
    let (status, res) = cp.api(Method::POST, "/v1/deployments", Some(deployment("core", "production", 1))).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{res}");
    let core_approval = res["approval"]["id"].as_str().unwrap().to_string();
    let (status, res) = call(&cp, &rm1, Method::POST, &format!("/v1/approvals/{core_approval}/approve"), None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{res}");
    let core = res["operation"]["deploymentId"].as_str().unwrap().to_string();
    let core_scale = format!("/v1/deployments/{core}/scale");
    let (status, _) =
        cp.api(Method::PUT, "/v1/environments/production/change-windows", Some(freeze_now("release freeze"))).await;
    assert_eq!(status, StatusCode::OK);
    let (status, res) = call(&cp, &rm1, Method::POST, &core_scale, Some(json!({ "replicas": 2 }))).await;
    assert_eq!((status, code(&res)), (StatusCode::CONFLICT, "ENV_005"), "{res}");
    let (status, res) =
        call(&cp, &rm1, Method::POST, &format!("{core_scale}?waitForWindow=true"), Some(json!({ "replicas": 2 })))
            .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{res}");
    assert_eq!(res["operation"]["status"], "awaiting_approval");
    let waiting = res["approval"]["id"].as_str().unwrap().to_string();
    let op_href = res["operation"]["href"].as_str().unwrap().to_string();
    let (status, res) = call(&cp, &admin2, Method::POST, &format!("/v1/approvals/{waiting}/approve"), None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{res}");
    assert_eq!(res["approval"]["status"], "scheduled", "{res}");
    assert_eq!(res["approval"]["decidedBy"], "user:admin2");
    assert_eq!(res["operation"]["status"], "awaiting_window");

    // A change asked for while open, approved once frozen (without waitForWindow): the approval
    // is refused with ENV_005 and the change stays pending.
    let (status, _) = cp.api(Method::DELETE, "/v1/environments/production/change-windows", None).await;
    assert_eq!(status, StatusCode::OK);
    until(&cp, &rm1, &format!("/v1/deployments/{core}"), "the approved, scheduled scale applies", |d| {
        d["configuration"]["replicas"] == 2
    })
    .await;
    let (_, op) = call(&cp, &rm1, Method::GET, &op_href, None).await;
    assert_eq!(op["approvalId"], waiting.as_str(), "{op}");
    let (status, res) = call(&cp, &rm1, Method::POST, &core_scale, Some(json!({ "replicas": 4 }))).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{res}");
    let later = res["approval"]["id"].as_str().unwrap().to_string();
    cp.api(Method::PUT, "/v1/environments/production/change-windows", Some(freeze_now("incident"))).await;
    let (status, res) = call(&cp, &admin2, Method::POST, &format!("/v1/approvals/{later}/approve"), None).await;
    assert_eq!((status, code(&res)), (StatusCode::CONFLICT, "ENV_005"), "{res}");
    let (_, a) = call(&cp, &admin2, Method::GET, &format!("/v1/approvals/{later}"), None).await;
    assert_eq!(a["status"], "pending", "{a}");
    cp.api(Method::DELETE, "/v1/environments/production/change-windows", None).await;
    let (status, res) = call(&cp, &admin2, Method::POST, &format!("/v1/approvals/{later}/approve"), None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{res}");
    assert_eq!(res["approval"]["status"], "applied");

    // A lock is checked again at approval time too.
    let (_, res) = call(&cp, &rm1, Method::POST, &core_scale, Some(json!({ "replicas": 1 }))).await;
    let locked = res["approval"]["id"].as_str().unwrap().to_string();
    let (status, _) =
        cp.api(Method::POST, "/v1/environments/production/lock", Some(json!({ "reason": "incident 7" }))).await;
    assert_eq!(status, StatusCode::OK);
    let (status, res) = call(&cp, &admin2, Method::POST, &format!("/v1/approvals/{locked}/approve"), None).await;
    assert_eq!((status, code(&res)), (StatusCode::CONFLICT, "ENV_002"), "{res}");
    let (_, a) = call(&cp, &admin2, Method::GET, &format!("/v1/approvals/{locked}"), None).await;
    assert_eq!(a["status"], "pending", "{a}");
}

#[tokio::test]
async fn restrictions_and_windows_are_validated_and_permissioned() {
    let cp = ControlPlane::spawn().await;
    let dev = user(&cp, "dev", "developer").await;
    let rm1 = user(&cp, "rm1", "release_manager").await;
    let windows = "/v1/environments/staging/change-windows";
    let bad = [
        (json!({ "timezone": "Mars/Olympus" }), "timezone"),
        (
            json!({ "timezone": "UTC", "windows": [{ "days": ["mon", "funday"], "start": "09:00", "end": "17:00" }] }),
            "windows[0].days[1]",
        ),
        (
            json!({ "timezone": "UTC", "windows": [{ "days": [], "start": "09:00", "end": "17:00" }] }),
            "windows[0].days",
        ),
        (
            json!({ "timezone": "UTC", "windows": [{ "days": ["mon"], "start": "9am", "end": "17:00" }] }),
            "windows[0].start",
        ),
        (
            json!({ "timezone": "UTC", "windows": [{ "days": ["mon"], "start": "09:00", "end": "09:00" }] }),
            "windows[0].end",
        ),
        (
            json!({ "timezone": "UTC", "freezes": [{ "from": "2026-01-02T00:00:00Z", "to": "2026-01-01T00:00:00Z" }] }),
            "freezes[0].to",
        ),
    ];
    for (body, field) in bad {
        let (status, res) = cp.api(Method::PUT, windows, Some(body.clone())).await;
        assert_eq!((status, code(&res)), (StatusCode::BAD_REQUEST, "VALIDATION_001"), "{body}: {res}");
        assert_eq!(res["error"]["details"]["field"], field, "{body}: {res}");
    }
    for body in [json!({ "timezone": "UTC", "window": [] }), json!({ "windows": [] })] {
        let (status, res) = cp.api(Method::PUT, windows, Some(body.clone())).await;
        assert_eq!((status, code(&res)), (StatusCode::BAD_REQUEST, "VALIDATION_001"), "{body}: {res}");
    }
    let (_, env) = cp.api(Method::GET, "/v1/environments/staging", None).await;
    assert!(env["changeWindows"]["schedule"].is_null(), "nothing stored: {env}");

    // A weekly schedule crossing midnight is fine; a developer may not set it, nor may a release
    // manager outside production.
    let ok = json!({ "timezone": "Europe/Paris", "windows": [{ "days": ["fri"], "start": "22:00", "end": "02:00" }] });
    let (status, res) = call(&cp, &dev, Method::PUT, windows, Some(ok.clone())).await;
    assert_eq!((status, code(&res)), (StatusCode::FORBIDDEN, "AUTH_002"), "{res}");
    let (status, res) = call(&cp, &rm1, Method::PUT, windows, Some(ok.clone())).await;
    assert_eq!((status, code(&res)), (StatusCode::FORBIDDEN, "AUTH_002"), "{res}");
    let (status, res) = cp.api(Method::PUT, windows, Some(ok.clone())).await;
    assert_eq!(status, StatusCode::OK, "{res}");
    assert_eq!(res["changeWindows"]["schedule"]["windows"][0]["days"], json!(["fri"]));

    // Restrictions: validated, permissioned, audited, and in force at once.
    let restrictions = "/v1/environments/staging/restrictions";
    for body in [
        json!({ "requiredRoles": ["root"], "approvalRequired": true }),
        json!({ "requiredRoles": [], "approvalRequired": "yes" }),
        json!({ "requiredRoles": [], "approvalRequired": true, "changeWindow": true }),
        json!({ "approvalRequired": true }),
    ] {
        let (status, res) = cp.api(Method::PUT, restrictions, Some(body.clone())).await;
        assert_eq!((status, code(&res)), (StatusCode::BAD_REQUEST, "VALIDATION_001"), "{body}: {res}");
    }
    let body = json!({ "requiredRoles": ["release_manager"], "approvalRequired": true });
    let (status, res) = call(&cp, &dev, Method::PUT, restrictions, Some(body.clone())).await;
    assert_eq!((status, code(&res)), (StatusCode::FORBIDDEN, "AUTH_002"), "{res}");
    cp.api(Method::DELETE, windows, None).await;
    let (status, env) = cp.api(Method::PUT, restrictions, Some(body)).await;
    assert_eq!(status, StatusCode::OK, "{env}");
    assert_eq!(env["restrictions"], json!({ "requiredRoles": ["release_manager"], "approvalRequired": true }));
    let (status, res) = cp.api(Method::POST, "/v1/deployments", Some(deployment("svc", "staging", 1))).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{res}");
    assert_eq!(res["operation"]["status"], "awaiting_approval", "staging now needs approval: {res}");
    let env_id = env["id"].as_str().unwrap();
    let actions: Vec<String> = audit_actions(&cp, env_id).await.into_iter().map(|(a, _)| a).collect();
    assert_eq!(actions, ["environment.change_windows", "environment.change_windows", "environment.restrictions"]);

    // Unknown query parameters on mutations are refused too.
    let (status, res) =
        cp.api(Method::POST, "/v1/deployments?wait=true", Some(deployment("x", "development", 1))).await;
    assert_eq!((status, code(&res)), (StatusCode::BAD_REQUEST, "VALIDATION_001"), "{res}");
}

#[tokio::test]
async fn two_approvers_at_once_apply_the_change_once() {
    let cp = ControlPlane::spawn().await;
    let rm1 = user(&cp, "rm1", "release_manager").await;
    let approvers = [user(&cp, "rm2", "release_manager").await, user(&cp, "admin2", "deployment_admin").await];
    for round in 0..3 {
        let name = format!("race-{round}");
        let (status, res) =
            call(&cp, &rm1, Method::POST, "/v1/deployments", Some(deployment(&name, "production", 1))).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{res}");
        let approve = format!("/v1/approvals/{}/approve", res["approval"]["id"].as_str().unwrap());
        let (a, b) = tokio::join!(
            call(&cp, &approvers[0], Method::POST, &approve, None),
            call(&cp, &approvers[1], Method::POST, &approve, None),
        );
        let mut outcomes = [(a.0, code(&a.1).to_string()), (b.0, code(&b.1).to_string())];
        outcomes.sort();
        assert_eq!(
            outcomes,
            [(StatusCode::ACCEPTED, String::new()), (StatusCode::CONFLICT, "APPROVAL_003".to_string())],
            "{a:?} {b:?}"
        );
    }
    // Each deployment exists once, created once.
    let (_, list) = cp.api(Method::GET, "/v1/deployments?environment=production", None).await;
    assert_eq!(list["pagination"]["totalCount"], 3, "{list}");
    for d in list["data"].as_array().unwrap() {
        let creates = audit_actions(&cp, d["id"].as_str().unwrap()).await;
        assert_eq!(creates, [("deployment.create".to_string(), "user:rm1".to_string())]);
    }
}

/// Creates a user with these role bindings and logs in.
async fn scoped_user(cp: &ControlPlane, name: &str, roles: Value) -> String {
    let body = json!({ "username": name, "password": PASSWORD, "roles": roles });
    let (status, res) = cp.api(Method::POST, "/v1/users", Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{res}");
    let login = json!({ "username": name, "password": PASSWORD });
    let (_, res) = cp.request(Method::POST, "/v1/auth/login", Some(login), None).await;
    res["token"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn pending_changes_stay_in_their_workspace() {
    let cp = ControlPlane::spawn().await;
    for name in ["team-a", "team-b"] {
        let (status, res) = cp.api(Method::POST, "/v1/workspaces", Some(json!({ "name": name }))).await;
        assert_eq!(status, StatusCode::CREATED, "{res}");
    }
    let rm_a = scoped_user(&cp, "rm-a", json!([{ "role": "release_manager", "workspace": "team-a" }])).await;
    let rm_a2 = scoped_user(&cp, "rm-a2", json!([{ "role": "release_manager", "workspace": "team-a" }])).await;
    let rm_b = scoped_user(&cp, "rm-b", json!([{ "role": "release_manager", "workspace": "team-b" }])).await;
    let mut body = deployment("svc", "production", 1);
    body["workspace"] = json!("team-a");
    let (status, res) = call(&cp, &rm_a, Method::POST, "/v1/deployments", Some(body)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{res}");
    let id = res["approval"]["id"].as_str().unwrap().to_string();
    let op_href = res["operation"]["href"].as_str().unwrap().to_string();

    // Another team's release manager neither sees it nor can decide it (404, as if absent).
    let (_, list) = call(&cp, &rm_b, Method::GET, "/v1/approvals", None).await;
    assert_eq!(list["pagination"]["totalCount"], 0, "{list}");
    for (method, path) in [
        (Method::GET, format!("/v1/approvals/{id}")),
        (Method::POST, format!("/v1/approvals/{id}/approve")),
        (Method::GET, op_href.clone()),
    ] {
        let (status, res) = call(&cp, &rm_b, method.clone(), &path, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}: {res}");
    }
    let (status, res) =
        call(&cp, &rm_b, Method::POST, &format!("/v1/approvals/{id}/reject"), Some(json!({ "comment": "no" }))).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{res}");

    // A colleague in the same workspace sees and approves it; it is created there.
    let (_, list) = call(&cp, &rm_a2, Method::GET, "/v1/approvals", None).await;
    assert_eq!(list["pagination"]["totalCount"], 1, "{list}");
    let (status, res) = call(&cp, &rm_a2, Method::POST, &format!("/v1/approvals/{id}/approve"), None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{res}");
    let deployment_id = res["operation"]["deploymentId"].as_str().unwrap().to_string();
    let (status, d) = call(&cp, &rm_a, Method::GET, &format!("/v1/deployments/{deployment_id}"), None).await;
    assert_eq!(status, StatusCode::OK, "{d}");
    assert_eq!(d["workspace"], "team-a", "{d}");
}
