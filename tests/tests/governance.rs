//! Governance through the REST API: users, login, API keys, the seed's roles and environment
//! restrictions, and environment locks, as different people would meet them.

use ferry_tests::{ControlPlane, TEST_PASSWORD};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

fn assert_error(status: StatusCode, body: &Value, want_status: StatusCode, code: &str) {
    assert_eq!(status, want_status, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(body["error"]["requestId"].as_str().is_some_and(|r| !r.is_empty()), "{body}");
}

fn deployment(name: &str, environment: &str) -> Value {
    json!({
        "deploymentName": name,
        "environment": environment,
        "target": { "selector": { "role": "web" } },
        "configuration": { "replicas": 1, "command": "/bin/true" }
    })
}

#[tokio::test]
async fn each_role_may_do_what_the_seed_says_where_it_says() {
    let cp = ControlPlane::spawn().await;
    let dev = cp.login_as("dev", json!(["developer"])).await;
    let devops = cp.login_as("ops", json!(["devops_engineer"])).await;
    let viewer = cp.login_as("viewer", json!(["viewer"])).await;
    let sre = cp.login_as("sre", json!(["sre_engineer"])).await;

    // A developer deploys to development.
    let (status, body) =
        cp.request(Method::POST, "/v1/deployments", Some(deployment("web", "development")), Some(&dev)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let id = body["deployment"]["id"].as_str().unwrap().to_string();
    // ... but not to staging or production: 403 naming the environment.
    for env in ["staging", "production"] {
        let (status, body) =
            cp.request(Method::POST, "/v1/deployments", Some(deployment("web", env)), Some(&dev)).await;
        assert_error(status, &body, StatusCode::FORBIDDEN, "AUTH_002");
        assert_eq!(body["error"]["details"]["environment"], env, "{body}");
        assert_eq!(body["error"]["details"]["missingPermission"], "deployment:create", "{body}");
    }
    // ... and may not scale or delete (the seed gives developers deployment:create only).
    let (status, body) = cp
        .request(Method::POST, &format!("/v1/deployments/{id}/scale"), Some(json!({ "replicas": 2 })), Some(&dev))
        .await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "AUTH_002");
    assert_eq!(body["error"]["details"]["missingPermission"], "deployment:scale");
    let (status, body) = cp.request(Method::DELETE, &format!("/v1/deployments/{id}"), None, Some(&dev)).await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "AUTH_002");

    // A devops engineer scales in development and deploys to staging, not production.
    let (status, body) = cp
        .request(Method::POST, &format!("/v1/deployments/{id}/scale"), Some(json!({ "replicas": 2 })), Some(&devops))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let (status, body) =
        cp.request(Method::POST, "/v1/deployments", Some(deployment("api", "staging")), Some(&devops)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let (status, body) =
        cp.request(Method::POST, "/v1/deployments", Some(deployment("api", "production")), Some(&devops)).await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "AUTH_002");

    // Readers read everything and change nothing.
    for token in [&viewer, &sre] {
        let (status, body) = cp.request(Method::GET, &format!("/v1/deployments/{id}"), None, Some(token)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let (status, body) = cp.request(Method::GET, "/v1/deployments", None, Some(token)).await;
        assert_eq!((status, body["pagination"]["totalCount"].as_i64()), (StatusCode::OK, Some(2)), "{body}");
        let (status, body) =
            cp.request(Method::POST, &format!("/v1/deployments/{id}/restart"), None, Some(token)).await;
        assert_error(status, &body, StatusCode::FORBIDDEN, "AUTH_002");
    }
    // Logs need logs:read: a developer has it in development, a cost analyst nowhere.
    let cost = cp.login_as("cost", json!(["cost_analyst"])).await;
    let (status, body) = cp.request(Method::GET, &format!("/v1/logs/deployments/{id}"), None, Some(&dev)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = cp.request(Method::GET, &format!("/v1/deployments/{id}"), None, Some(&cost)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for path in [format!("/v1/logs/deployments/{id}"), format!("/v1/logs/stream/{id}")] {
        let (status, body) = cp.request(Method::GET, &path, None, Some(&cost)).await;
        assert_error(status, &body, StatusCode::FORBIDDEN, "AUTH_002");
        assert_eq!(body["error"]["details"]["missingPermission"], "logs:read");
    }
    // A developer lists only what it may read: development.
    let (_, body) = cp.request(Method::GET, "/v1/deployments", None, Some(&dev)).await;
    assert_eq!(body["pagination"]["totalCount"], 1, "{body}");
    let (status, body) = cp.request(Method::GET, "/v1/deployments?environment=staging", None, Some(&dev)).await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "AUTH_002");

    // Administration is the deployment admin's.
    for (method, path, body) in [
        (
            Method::POST,
            "/v1/users",
            Some(json!({ "username": "eve", "password": TEST_PASSWORD, "roles": ["deployment_admin"] })),
        ),
        (Method::POST, "/v1/agents/tokens", Some(json!({}))),
        (Method::POST, "/v1/environments", Some(json!({ "name": "qa" }))),
    ] {
        let (status, res) = cp.request(method, path, body, Some(&devops)).await;
        assert_error(status, &res, StatusCode::FORBIDDEN, "AUTH_002");
    }

    // Every refusal is in the audit trail, naming who tried what.
    let (_, denied) = cp.api(Method::GET, "/v1/audit?actor=user:dev&outcome=denied", None).await;
    assert_eq!(denied["pagination"]["totalCount"], 5, "{denied}");
    assert!(
        denied["data"].as_array().unwrap().iter().any(|r| r["action"] == "POST /v1/deployments/{id}/scale"),
        "{denied}"
    );

    // Who am I: roles, permissions and what I may do where.
    let (status, me) = cp.request(Method::GET, "/v1/auth/me", None, Some(&dev)).await;
    assert_eq!(status, StatusCode::OK, "{me}");
    assert_eq!((me["type"].as_str(), me["name"].as_str()), (Some("user"), Some("dev")));
    assert_eq!(me["roles"], json!([{ "role": "developer" }]));
    let envs: Vec<&str> = me["environments"].as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap()).collect();
    assert_eq!(envs, ["development"]);
    assert_eq!(me["environments"][0]["permissions"], json!(["deployment:read", "deployment:create", "logs:read"]));
}

#[tokio::test]
async fn login_sessions_and_their_abuse() {
    let cp = ControlPlane::spawn().await;
    let token = cp.login_as("alice", json!(["viewer"])).await;
    assert!(token.starts_with("ferry_session_"));
    let (status, _) = cp.request(Method::GET, "/v1/deployments", None, Some(&token)).await;
    assert_eq!(status, StatusCode::OK);

    // Wrong password and unknown user get the same answer.
    for (user, password) in [("alice", "wrong password!!"), ("nobody", TEST_PASSWORD)] {
        let (status, body) = cp
            .request(Method::POST, "/v1/auth/login", Some(json!({ "username": user, "password": password })), None)
            .await;
        assert_error(status, &body, StatusCode::UNAUTHORIZED, "AUTH_003");
        assert_eq!(body["error"]["message"], "wrong username or password");
    }
    // A malformed login is a 400 and counts as no attempt at all.
    for body in [
        json!({ "username": "alice" }),
        json!({ "username": "alice", "password": "x", "otp": 1 }),
        json!({ "username": "bad name", "password": "x" }),
    ] {
        let (status, res) = cp.request(Method::POST, "/v1/auth/login", Some(body), None).await;
        assert_error(status, &res, StatusCode::BAD_REQUEST, "VALIDATION_001");
    }
    // A forged or garbage token.
    for forged in ["ferry_session_0000000000000000000000000000000000000000000000000000000000000000", "hello"] {
        let (status, body) = cp.request(Method::GET, "/v1/deployments", None, Some(forged)).await;
        assert_error(status, &body, StatusCode::UNAUTHORIZED, "AUTH_001");
    }
    // Brute force is slowed: after 5 failures (one above) the user is refused without a check,
    // even with the right password, and told when to retry.
    for _ in 0..4 {
        let (status, _) = cp
            .request(
                Method::POST,
                "/v1/auth/login",
                Some(json!({ "username": "alice", "password": "guess guess guess" })),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let res = reqwest::Client::new()
        .post(format!("{}/v1/auth/login", cp.base_url))
        .json(&json!({ "username": "alice", "password": TEST_PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = res.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=900).contains(&retry), "{retry}");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "AUTH_004");
    // The existing session still works; other users can still log in.
    let (status, _) = cp.request(Method::GET, "/v1/deployments", None, Some(&token)).await;
    assert_eq!(status, StatusCode::OK);
    let bob = cp.login_as("bob", json!(["viewer"])).await;

    // Failed logins and throttling are in the audit trail, with the source address.
    let (_, failed) = cp.api(Method::GET, "/v1/audit?object=user:alice&outcome=failed", None).await;
    assert_eq!(failed["pagination"]["totalCount"], 5, "{failed}");
    assert_eq!(failed["data"][0]["action"], "auth.login");
    assert_eq!(failed["data"][0]["source"], "127.0.0.1");
    let (_, denied) = cp.api(Method::GET, "/v1/audit?object=user:alice&outcome=denied", None).await;
    assert_eq!(denied["pagination"]["totalCount"], 1, "{denied}");

    // Logout ends the session; a deleted user's session ends with it.
    let (status, _) = cp.request(Method::POST, "/v1/auth/logout", None, Some(&bob)).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = cp.request(Method::GET, "/v1/deployments", None, Some(&bob)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (_, users) = cp.api(Method::GET, "/v1/users", None).await;
    assert_eq!(users["pagination"]["totalCount"], 2, "{users}");
    assert!(users.to_string().find("argon2").is_none(), "password hashes never leave the store");
    let (status, _) = cp.api(Method::DELETE, "/v1/users/alice", None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = cp.request(Method::GET, "/v1/deployments", None, Some(&token)).await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "AUTH_001");
    let (status, body) = cp.api(Method::GET, "/v1/users/alice", None).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "USER_001");
}

#[tokio::test]
async fn users_are_validated_and_passwords_changed() {
    let cp = ControlPlane::spawn().await;
    for (body, field) in [
        (json!({ "username": "x", "password": "short", "roles": [] }), "password"),
        (json!({ "username": "bad name", "password": TEST_PASSWORD }), "username"),
        (json!({ "username": "", "password": TEST_PASSWORD }), "username"),
    ] {
        let (status, res) = cp.api(Method::POST, "/v1/users", Some(body)).await;
        assert_error(status, &res, StatusCode::BAD_REQUEST, "VALIDATION_001");
        assert_eq!(res["error"]["details"]["field"], field, "{res}");
    }
    // A role the seed does not have; an unknown field.
    for body in [
        json!({ "username": "x", "password": TEST_PASSWORD, "roles": ["root"] }),
        json!({ "username": "x", "password": TEST_PASSWORD, "roles": [{ "role": "viewer", "scope": "all" }] }),
        json!({ "username": "x", "password": TEST_PASSWORD, "admin": true }),
    ] {
        let (status, res) = cp.api(Method::POST, "/v1/users", Some(body)).await;
        assert_error(status, &res, StatusCode::BAD_REQUEST, "VALIDATION_001");
    }
    let (_, users) = cp.api(Method::GET, "/v1/users", None).await;
    assert_eq!(users["pagination"]["totalCount"], 0, "nothing was stored: {users}");

    let token = cp.login_as("carol", json!(["viewer"])).await;
    let (status, res) =
        cp.api(Method::POST, "/v1/users", Some(json!({ "username": "carol", "password": TEST_PASSWORD }))).await;
    assert_error(status, &res, StatusCode::CONFLICT, "USER_002");
    // Carol changes her own password (with the current one); her sessions end.
    let (_, me) = cp.request(Method::GET, "/v1/auth/me", None, Some(&token)).await;
    let uid = me["id"].as_str().unwrap().to_string();
    let (status, res) = cp
        .request(
            Method::PUT,
            &format!("/v1/users/{uid}"),
            Some(json!({ "password": "a new long password" })),
            Some(&token),
        )
        .await;
    assert_error(status, &res, StatusCode::FORBIDDEN, "AUTH_002");
    let (status, res) = cp
        .request(
            Method::PUT,
            &format!("/v1/users/{uid}"),
            Some(json!({ "password": "a new long password", "currentPassword": TEST_PASSWORD })),
            Some(&token),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{res}");
    let (status, _) = cp.request(Method::GET, "/v1/auth/me", None, Some(&token)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // ... but not her roles.
    let token = cp.login("carol", "a new long password").await;
    let (status, res) = cp
        .request(Method::PUT, &format!("/v1/users/{uid}"), Some(json!({ "roles": ["deployment_admin"] })), Some(&token))
        .await;
    assert_error(status, &res, StatusCode::FORBIDDEN, "AUTH_002");
    assert_eq!(res["error"]["details"]["missingPermission"], "user:manage");
}

#[tokio::test]
async fn api_keys_are_shown_once_never_escalate_and_can_be_revoked() {
    let cp = ControlPlane::spawn().await;
    let dev = cp.login_as("dev", json!(["developer"])).await;
    let (status, key) = cp
        .request(Method::POST, "/v1/api-keys", Some(json!({ "name": "ci", "roles": ["developer"] })), Some(&dev))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{key}");
    let secret = key["key"].as_str().unwrap().to_string();
    assert!(secret.starts_with("ferry_key_"));
    assert_eq!(key["owner"], "user:dev");
    assert!(key["expiresAt"].is_string(), "keys expire by default: {key}");
    // The key works with X-API-Key (as the seed shows) and as a bearer token, with its roles.
    let res = reqwest::Client::new()
        .post(format!("{}/v1/deployments", cp.base_url))
        .header("x-api-key", &secret)
        .json(&deployment("web", "development"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let (status, body) =
        cp.request(Method::POST, "/v1/deployments", Some(deployment("web", "production")), Some(&secret)).await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "AUTH_002");
    // The audit names the key.
    let id = res_id(&cp, &secret, "web").await;
    let audit = cp.running_store().audit_for(&id).await.unwrap();
    assert_eq!(audit[0].1, format!("apikey:ci/{}", key["id"].as_str().unwrap()), "{audit:?}");

    // No escalation: a developer cannot mint a release manager key.
    let (status, body) = cp
        .request(Method::POST, "/v1/api-keys", Some(json!({ "name": "x", "roles": ["release_manager"] })), Some(&dev))
        .await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "AUTH_002");
    for bad in [
        json!({ "name": "x", "roles": [] }),
        json!({ "name": "x", "roles": ["viewer"], "expiresInDays": 0 }),
        json!({ "name": "x", "roles": ["viewer"], "expiresInDays": 100000 }),
        json!({ "name": "x", "roles": ["superuser"] }),
    ] {
        let (status, body) = cp.api(Method::POST, "/v1/api-keys", Some(bad)).await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, "VALIDATION_001");
    }
    // A key never holds more than its creator holds now: demote the developer and the key (a
    // developer key) holds no role at all, so even the workspace does not exist for it; restore
    // the role and it deploys again.
    let (status, _) = cp.api(Method::PUT, "/v1/users/dev", Some(json!({ "roles": ["viewer"] }))).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) =
        cp.request(Method::POST, "/v1/deployments", Some(deployment("w2", "development")), Some(&secret)).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "WORKSPACE_001");
    let (status, body) = cp.request(Method::GET, "/v1/deployments", None, Some(&secret)).await;
    assert_eq!((status, body["pagination"]["totalCount"].as_i64()), (StatusCode::OK, Some(0)), "{body}");
    let (status, _) = cp.api(Method::PUT, "/v1/users/dev", Some(json!({ "roles": ["developer"] }))).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) =
        cp.request(Method::POST, "/v1/deployments", Some(deployment("w2", "development")), Some(&secret)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let dev = cp.login("dev", TEST_PASSWORD).await;

    // The plaintext is never shown again: the listing has no key; the developer sees its own.
    let (_, mine) = cp.request(Method::GET, "/v1/api-keys", None, Some(&dev)).await;
    assert_eq!(mine["pagination"]["totalCount"], 1, "{mine}");
    assert!(!mine.to_string().contains(&secret));
    assert!(mine["data"][0].get("key").is_none());
    // Another developer neither sees nor revokes it.
    let other = cp.login_as("dev2", json!(["developer"])).await;
    let (_, theirs) = cp.request(Method::GET, "/v1/api-keys", None, Some(&other)).await;
    assert_eq!(theirs["pagination"]["totalCount"], 0, "{theirs}");
    let kid = key["id"].as_str().unwrap();
    let (status, body) = cp.request(Method::DELETE, &format!("/v1/api-keys/{kid}"), None, Some(&other)).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "APIKEY_001");
    // Its owner revokes it; it stops working at once.
    let (status, _) = cp.request(Method::DELETE, &format!("/v1/api-keys/{kid}"), None, Some(&dev)).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = cp.request(Method::GET, "/v1/deployments", None, Some(&secret)).await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "AUTH_001");
    assert_eq!(body["error"]["details"]["reason"], "API key was revoked");
}

/// The id of the deployment called `name` that `token` can see.
async fn res_id(cp: &ControlPlane, token: &str, name: &str) -> String {
    let (_, list) = cp.request(Method::GET, &format!("/v1/deployments?name={name}"), None, Some(token)).await;
    list["data"][0]["id"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn a_locked_environment_refuses_every_change_but_reads() {
    let cp = ControlPlane::spawn().await;
    let dev = cp.login_as("dev", json!(["developer"])).await;
    let rm = cp.login_as("rm", json!(["release_manager"])).await;
    let (status, body) = cp.api(Method::POST, "/v1/deployments", Some(deployment("web", "staging"))).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let id = body["deployment"]["id"].as_str().unwrap().to_string();

    // Locking needs environment permissions there: not a developer's; a release manager's only
    // in production (the seed's `environment:production`).
    let lock = json!({ "reason": "incident 42" });
    let (status, body) =
        cp.request(Method::POST, "/v1/environments/development/lock", Some(lock.clone()), Some(&dev)).await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "AUTH_002");
    let (status, body) = cp.request(Method::POST, "/v1/environments/staging/lock", Some(lock.clone()), Some(&rm)).await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "AUTH_002");
    let (status, body) =
        cp.request(Method::POST, "/v1/environments/production/lock", Some(lock.clone()), Some(&rm)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["lock"]["lockedBy"], "user:rm");
    let (status, body) = cp.api(Method::POST, "/v1/environments/staging/lock", Some(json!({ "reason": " " }))).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "VALIDATION_001");
    let (status, body) = cp.api(Method::POST, "/v1/environments/staging/lock", Some(lock.clone())).await;
    assert_eq!((status, body["status"].as_str()), (StatusCode::OK, Some("locked")), "{body}");
    // The rules themselves are not a release manager's to change: switching off production's
    // approvals (or opening its windows) would let them approve their own changes.
    let (status, body) = cp
        .request(
            Method::PUT,
            "/v1/environments/production/restrictions",
            Some(json!({ "requiredRoles": ["release_manager"], "approvalRequired": false })),
            Some(&rm),
        )
        .await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "AUTH_002");
    assert_eq!(body["error"]["details"]["missingPermission"], "policy:update");
    let (status, body) = cp
        .request(Method::POST, "/v1/environments", Some(json!({ "name": "prod-eu", "type": "production" })), Some(&rm))
        .await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "AUTH_002");
    // Locking twice is refused, naming the holder.
    let (status, body) =
        cp.api(Method::POST, "/v1/environments/staging/lock", Some(json!({ "reason": "again" }))).await;
    assert_error(status, &body, StatusCode::CONFLICT, "ENV_002");
    assert_eq!(body["error"]["details"]["reason"], "incident 42");

    // Every mutation is refused, by anyone; reads work.
    for (method, path, body) in [
        (Method::POST, format!("/v1/deployments/{id}/scale"), Some(json!({ "replicas": 3 }))),
        (Method::POST, format!("/v1/deployments/{id}/restart"), None),
        (Method::PUT, format!("/v1/deployments/{id}"), Some(json!({ "activeVersion": "v2" }))),
        (Method::DELETE, format!("/v1/deployments/{id}"), None),
        (Method::POST, "/v1/deployments".to_string(), Some(deployment("other", "staging"))),
    ] {
        let (status, res) = cp.api(method, &path, body).await;
        assert_error(status, &res, StatusCode::CONFLICT, "ENV_002");
        assert!(res["error"]["details"]["lockedBy"].as_str().is_some_and(|b| b.starts_with("admin:")), "{res}");
    }
    let (status, body) = cp.api(Method::GET, &format!("/v1/deployments/{id}"), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["configuration"]["replicas"], 1, "nothing changed: {body}");
    let (status, env) = cp.api(Method::GET, "/v1/environments/staging", None).await;
    assert_eq!((status, env["lock"]["reason"].as_str()), (StatusCode::OK, Some("incident 42")));

    // Unlocked, the same scale goes through.
    let (status, body) = cp.api(Method::POST, "/v1/environments/staging/unlock", None).await;
    assert_eq!((status, body["status"].as_str()), (StatusCode::OK, Some("active")), "{body}");
    let (status, body) =
        cp.api(Method::POST, &format!("/v1/deployments/{id}/scale"), Some(json!({ "replicas": 3 }))).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let actions: Vec<String> =
        cp.running_store().audit_for("env-staging").await.unwrap().into_iter().map(|a| a.0).collect();
    assert_eq!(actions, ["environment.lock", "environment.unlock"]);
}

/// The story, with the audit trail as its witness: every step, allowed or refused, is
/// recorded in order under the request id the client sent.
#[tokio::test]
async fn the_governance_story_is_in_the_audit_trail_in_order() {
    let cp = ControlPlane::spawn().await;
    let dev = cp.login_as("dev", json!(["developer"])).await;
    let rm = cp.login_as("rm", json!(["release_manager"])).await;
    let admin = cp.login_as("boss", json!(["deployment_admin"])).await;
    let client = reqwest::Client::new();
    let call = |token: &str, method: Method, path: &str, body: Option<Value>, request_id: &str| {
        let mut req = client
            .request(method, format!("{}{path}", cp.base_url))
            .bearer_auth(token)
            .header("x-request-id", request_id);
        if let Some(b) = body {
            req = req.json(&b);
        }
        async move {
            let res = req.send().await.unwrap();
            let status = res.status();
            let text = res.text().await.unwrap();
            (status, if text.is_empty() { Value::Null } else { serde_json::from_str::<Value>(&text).unwrap() })
        }
    };

    // 1. A developer deploys to development.
    let (status, res) =
        call(&dev, Method::POST, "/v1/deployments", Some(deployment("web", "development")), "story-1").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{res}");
    // 2. ... and cannot deploy to production.
    let (status, res) =
        call(&dev, Method::POST, "/v1/deployments", Some(deployment("web", "production")), "story-2").await;
    assert_error(status, &res, StatusCode::FORBIDDEN, "AUTH_002");
    // 3. A release manager's production deploy waits for approval.
    let (status, res) =
        call(&rm, Method::POST, "/v1/deployments", Some(deployment("api", "production")), "story-3").await;
    assert_eq!(
        (status, res["operation"]["status"].as_str()),
        (StatusCode::ACCEPTED, Some("awaiting_approval")),
        "{res}"
    );
    let approval = res["operation"]["approvalId"].as_str().unwrap().to_string();
    let prod_id = res["operation"]["deploymentId"].as_str().unwrap().to_string();
    // 4. The same release manager cannot approve it.
    let approve = format!("/v1/approvals/{approval}/approve");
    let (status, res) = call(&rm, Method::POST, &approve, Some(json!({ "comment": "mine" })), "story-4").await;
    assert_error(status, &res, StatusCode::FORBIDDEN, "APPROVAL_002");
    // 5. A deployment admin approves it, and it is applied.
    let (status, res) = call(&admin, Method::POST, &approve, Some(json!({ "comment": "ok" })), "story-5").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{res}");
    let (status, res) = call(&admin, Method::GET, &format!("/v1/deployments/{prod_id}"), None, "story-read").await;
    assert_eq!(status, StatusCode::OK, "{res}");
    // 6. Production is locked; 7. a scale there is refused with ENV_002.
    let (status, res) = call(
        &admin,
        Method::POST,
        "/v1/environments/production/lock",
        Some(json!({ "reason": "incident" })),
        "story-6",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{res}");
    let scale = format!("/v1/deployments/{prod_id}/scale");
    let (status, res) = call(&rm, Method::POST, &scale, Some(json!({ "replicas": 3 })), "story-7").await;
    assert_error(status, &res, StatusCode::CONFLICT, "ENV_002");

    // The trail, oldest first, filtered to the story's requests.
    let (status, trail) = cp.api(Method::GET, "/v1/audit?order=asc&pageSize=200", None).await;
    assert_eq!(status, StatusCode::OK, "{trail}");
    let story: Vec<(String, String, String, String)> = trail["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["requestId"].as_str().is_some_and(|id| id.starts_with("story-") && id != "story-read"))
        .map(|r| {
            let s = |k: &str| r[k].as_str().unwrap_or_default().to_string();
            (s("requestId"), s("actor"), s("action"), s("outcome"))
        })
        .collect();
    let want: Vec<(&str, &str, &str, &str)> = vec![
        ("story-1", "user:dev", "deployment.create", "success"),
        ("story-2", "user:dev", "POST /v1/deployments", "denied"),
        ("story-3", "user:rm", "approval.request", "success"),
        ("story-4", "user:rm", "POST /v1/approvals/{id}/approve", "denied"),
        ("story-5", "user:boss", "approval.approve", "success"),
        // The change applied is the requester's, under its own request id.
        ("story-3", "user:rm", "deployment.create", "success"),
        ("story-6", "user:boss", "environment.lock", "success"),
        ("story-7", "user:rm", "POST /v1/deployments/{id}/scale", "failed"),
    ];
    let got: Vec<(&str, &str, &str, &str)> =
        story.iter().map(|(a, b, c, d)| (a.as_str(), b.as_str(), c.as_str(), d.as_str())).collect();
    assert_eq!(got, want, "{trail}");
}

#[tokio::test]
async fn a_workspace_scoped_role_sees_nothing_platform_wide() {
    let cp = ControlPlane::spawn().await;
    let (status, body) = cp.api(Method::POST, "/v1/workspaces", Some(json!({ "name": "team-a" }))).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let scoped = cp.login_as("scoped", json!([{ "role": "viewer", "workspace": "team-a" }])).await;
    let (status, body) = cp.api(Method::POST, "/v1/deployments", Some(deployment("web", "development"))).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let id = body["deployment"]["id"].as_str().unwrap().to_string();
    // The default workspace's deployment does not exist for it, nor its history or audit.
    for path in ["", "/history", "/audit", "/events", "/timeline", "/status"] {
        let (status, body) = cp.request(Method::GET, &format!("/v1/deployments/{id}{path}"), None, Some(&scoped)).await;
        assert_error(status, &body, StatusCode::NOT_FOUND, "DEPLOY_006");
    }
    // Platform-wide lists need an unscoped role.
    for path in ["/v1/audit", "/v1/users", "/v1/agents"] {
        let (status, body) = cp.request(Method::GET, path, None, Some(&scoped)).await;
        assert_error(status, &body, StatusCode::FORBIDDEN, "AUTH_002");
    }
    let (_, keys) = cp.request(Method::GET, "/v1/api-keys", None, Some(&scoped)).await;
    assert_eq!(keys["pagination"]["totalCount"], 0, "only its own keys: {keys}");
    // An unscoped viewer reads them.
    let viewer = cp.login_as("viewer", json!(["viewer"])).await;
    for path in ["/v1/audit", "/v1/users", "/v1/agents", &format!("/v1/deployments/{id}/history")] {
        let (status, body) = cp.request(Method::GET, path, None, Some(&viewer)).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
    }
}

/// A pending change applies only if its author may still make it when it is approved.
#[tokio::test]
async fn a_change_whose_author_lost_the_role_is_not_applied() {
    let cp = ControlPlane::spawn().await;
    let rm = cp.login_as("rm", json!(["release_manager"])).await;
    let boss = cp.login_as("boss", json!(["deployment_admin"])).await;
    let (status, res) =
        cp.request(Method::POST, "/v1/deployments", Some(deployment("api", "production")), Some(&rm)).await;
    assert_eq!(
        (status, res["operation"]["status"].as_str()),
        (StatusCode::ACCEPTED, Some("awaiting_approval")),
        "{res}"
    );
    let approval = res["operation"]["approvalId"].as_str().unwrap().to_string();
    let op = res["operation"]["href"].as_str().unwrap().to_string();
    let (status, _) = cp.api(Method::PUT, "/v1/users/rm", Some(json!({ "roles": ["viewer"] }))).await;
    assert_eq!(status, StatusCode::OK);

    let (status, res) =
        cp.request(Method::POST, &format!("/v1/approvals/{approval}/approve"), Some(json!({})), Some(&boss)).await;
    assert_error(status, &res, StatusCode::FORBIDDEN, "AUTH_002");
    let (_, a) = cp.api(Method::GET, &format!("/v1/approvals/{approval}"), None).await;
    assert_eq!(a["status"], "failed", "{a}");
    let (_, o) = cp.api(Method::GET, &op, None).await;
    assert_eq!(o["status"], "failed", "{o}");
    let (_, list) = cp.api(Method::GET, "/v1/deployments?environment=production", None).await;
    assert_eq!(list["pagination"]["totalCount"], 0, "nothing was created: {list}");
}

/// A host bound to production (by its bootstrap token) is out of reach of development's
/// deployments, whatever their target names; production's deployments do reach it.
#[tokio::test]
async fn a_host_bound_to_an_environment_runs_only_that_environment() {
    let cp = ControlPlane::spawn().await;
    let token = cp.token(600, &[("ferry.dev/environment", "staging")]).await;
    let agent = ferry_tests::Agent::spawn(&cp, &token);
    let state = agent.wait_connected().await;
    let agent_id = state.agent_id.clone().expect("enrolled");
    let target = json!({ "agentIds": [agent_id] });
    let mut staging = deployment("reach", "staging");
    staging["target"] = target.clone();
    let (status, res) = cp.api(Method::POST, "/v1/deployments", Some(staging)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{res}");
    let staging_id = res["deployment"]["id"].as_str().unwrap().to_string();
    let store = cp.running_store();
    // Placed on the agent: from here on, placement knows it.
    ferry_tests::eventually("the staging deployment placed on the staging host", ferry_tests::DEADLINE, || async {
        (store.placed_rows_of(&staging_id).await.unwrap().len() == 1).then_some(())
    })
    .await;
    // A development deployment naming that agent is reconciled before the answer, and placed
    // nowhere.
    let mut dev = deployment("reach", "development");
    dev["target"] = target;
    let (status, res) = cp.api(Method::POST, "/v1/deployments", Some(dev)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{res}");
    let dev_id = res["deployment"]["id"].as_str().unwrap().to_string();
    assert!(store.placed_rows_of(&dev_id).await.unwrap().is_empty());
    agent.stop().await;
}
