//! Workspaces, projects and AI zones over the REST API, and workspace isolation both ways: a
//! caller whose role bindings are scoped to one workspace gets 404 for every object of another
//! (exactly the answer for one that does not exist) and never sees them in lists, whose totals
//! count only what it may see.

use ferry_tests::ControlPlane;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const PASSWORD: &str = "correct-horse-battery";

fn assert_error(status: StatusCode, body: &Value, want_status: StatusCode, code: &str) {
    assert_eq!(status, want_status, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(body["error"]["requestId"].as_str().is_some_and(|r| !r.is_empty()), "{body}");
}

/// Creates a user with these role bindings (as the admin) and logs it in: its session token.
async fn user(cp: &ControlPlane, username: &str, roles: Value) -> String {
    let body = json!({ "username": username, "password": PASSWORD, "roles": roles });
    let (status, res) = cp.api(Method::POST, "/v1/users", Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{res}");
    let login = json!({ "username": username, "password": PASSWORD });
    let (status, res) = cp.request(Method::POST, "/v1/auth/login", Some(login), None).await;
    assert_eq!(status, StatusCode::OK, "{res}");
    res["token"].as_str().unwrap().to_string()
}

fn web(name: &str, workspace: Option<&str>, environment: &str) -> Value {
    let mut body = json!({
        "deploymentName": name,
        "environment": environment,
        "configuration": { "replicas": 1, "command": "hello-web" },
    });
    if let Some(w) = workspace {
        body["workspace"] = json!(w);
    }
    body
}

/// `(deployment id, operation href)` of a create that must be accepted.
async fn create(cp: &ControlPlane, token: &str, body: Value) -> (String, String) {
    let (status, res) = cp.request(Method::POST, "/v1/deployments", Some(body), Some(token)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{res}");
    (res["deployment"]["id"].as_str().unwrap().into(), res["operation"]["href"].as_str().unwrap().into())
}

/// `(ids in the page, totalCount)` of a listing.
async fn listed(cp: &ControlPlane, token: &str, path: &str) -> (Vec<String>, i64) {
    let (status, res) = cp.request(Method::GET, path, None, Some(token)).await;
    assert_eq!(status, StatusCode::OK, "{path}: {res}");
    let ids = res["data"].as_array().unwrap().iter().map(|d| d["id"].as_str().unwrap().to_string()).collect();
    (ids, res["pagination"]["totalCount"].as_i64().unwrap())
}

/// Every way of reaching a deployment (and its operation) answers 404 for `token`, in the same
/// shape as for a deployment that does not exist.
async fn hidden_from(cp: &ControlPlane, token: &str, id: &str, op: &str) {
    let (_, missing) = cp.request(Method::GET, "/v1/deployments/deploy-0000000000000000", None, Some(token)).await;
    let calls: Vec<(Method, String, Option<Value>)> = vec![
        (Method::GET, format!("/v1/deployments/{id}"), None),
        (Method::GET, format!("/v1/deployments/{id}/status"), None),
        (Method::PUT, format!("/v1/deployments/{id}"), Some(json!({ "activeVersion": "v2" }))),
        (Method::POST, format!("/v1/deployments/{id}/scale"), Some(json!({ "replicas": 3 }))),
        (Method::POST, format!("/v1/deployments/{id}/restart"), None),
        (Method::POST, format!("/v1/deployments/{id}/stop"), None),
        (Method::DELETE, format!("/v1/deployments/{id}"), None),
        (Method::GET, format!("/v1/logs/deployments/{id}"), None),
        (Method::GET, format!("/v1/logs/stream/{id}"), None),
    ];
    for (method, path, body) in calls {
        let (status, res) = cp.request(method.clone(), &path, body, Some(token)).await;
        assert_error(status, &res, StatusCode::NOT_FOUND, "DEPLOY_006");
        assert_eq!(res["error"]["details"]["deploymentId"], id, "{method} {path}: {res}");
        // Nothing tells it apart from a deployment that does not exist.
        let keys = |v: &Value| v["error"]["details"].as_object().unwrap().keys().cloned().collect::<Vec<_>>();
        assert_eq!(keys(&res), keys(&missing), "{method} {path}");
        assert_eq!(
            res["error"]["message"].as_str().unwrap().replace(id, "X"),
            missing["error"]["message"].as_str().unwrap().replace("deploy-0000000000000000", "X"),
        );
    }
    let (status, res) = cp.request(Method::GET, op, None, Some(token)).await;
    assert_error(status, &res, StatusCode::NOT_FOUND, "OPERATION_001");
}

#[tokio::test]
async fn workspace_isolation_holds_both_ways() {
    let cp = ControlPlane::spawn().await;
    for name in ["team-a", "team-b"] {
        let (status, res) = cp.api(Method::POST, "/v1/workspaces", Some(json!({ "name": name }))).await;
        assert_eq!(status, StatusCode::CREATED, "{res}");
    }
    let alice = user(&cp, "alice", json!([{ "role": "developer", "workspace": "team-a" }])).await;
    let bob = user(
        &cp,
        "bob",
        json!([{ "role": "developer", "workspace": "team-b" }, { "role": "viewer", "workspace": "team-b" }]),
    )
    .await;
    let carol = user(&cp, "carol", json!(["viewer"])).await;

    // Each creates in its own workspace's development environment.
    let (a_id, a_op) = create(&cp, &alice, web("api", Some("team-a"), "development")).await;
    let (b_id, b_op) = create(&cp, &bob, web("api", Some("team-b"), "development")).await;
    let (_, a_view) = cp.api(Method::GET, &format!("/v1/deployments/{a_id}"), None).await;
    assert_eq!(
        (&a_view["workspace"], &a_view["projectId"], &a_view["aiZoneId"]),
        (&json!("team-a"), &Value::Null, &Value::Null)
    );
    // The same name in another workspace is no conflict (and says nothing about it); in the
    // same workspace and environment it is.
    let (status, res) = cp
        .request(Method::POST, "/v1/deployments", Some(web("api", Some("team-a"), "development")), Some(&alice))
        .await;
    assert_error(status, &res, StatusCode::CONFLICT, "DEPLOY_008");
    // The owners read their own deployment, its status, its operation and its logs.
    for (token, id, op) in [(&alice, &a_id, &a_op), (&bob, &b_id, &b_op)] {
        for path in [
            format!("/v1/deployments/{id}"),
            format!("/v1/deployments/{id}/status"),
            op.clone(),
            format!("/v1/logs/deployments/{id}"),
        ] {
            let (status, res) = cp.request(Method::GET, &path, None, Some(token)).await;
            assert_eq!(status, StatusCode::OK, "{path}: {res}");
        }
    }

    // Isolation, both ways.
    hidden_from(&cp, &bob, &a_id, &a_op).await;
    hidden_from(&cp, &alice, &b_id, &b_op).await;
    assert_eq!(listed(&cp, &alice, "/v1/deployments").await, (vec![a_id.clone()], 1));
    assert_eq!(listed(&cp, &bob, "/v1/deployments").await, (vec![b_id.clone()], 1));
    assert_eq!(listed(&cp, &bob, "/v1/deployments?workspace=team-a").await, (vec![], 0));
    assert_eq!(
        listed(&cp, &alice, "/v1/deployments?environment=development&pageSize=1").await,
        (vec![a_id.clone()], 1)
    );
    // Environment counts are what the caller may see too.
    let (_, env) = cp.request(Method::GET, "/v1/environments/development", None, Some(&bob)).await;
    assert_eq!(env["deployments"]["total"], 1, "{env}");
    // An unscoped viewer and the admin see both.
    let both = listed(&cp, &carol, "/v1/deployments").await;
    assert_eq!((both.0.len(), both.1), (2, 2));
    assert_eq!(listed(&cp, &cp.admin_token, "/v1/deployments?workspace=team-b").await, (vec![b_id.clone()], 1));
    for id in [&a_id, &b_id] {
        let (status, res) = cp.request(Method::GET, &format!("/v1/deployments/{id}"), None, Some(&carol)).await;
        assert_eq!(status, StatusCode::OK, "{res}");
    }
    // Seeing is not changing: the viewer is refused with 403, not 404.
    let (status, res) = cp
        .request(Method::POST, &format!("/v1/deployments/{a_id}/scale"), Some(json!({ "replicas": 2 })), Some(&carol))
        .await;
    assert_error(status, &res, StatusCode::FORBIDDEN, "AUTH_002");

    // Creating in a workspace one has no role in answers like a workspace that does not exist:
    // 404 WORKSPACE_001 (documented), and nothing is stored.
    let (status, other) = cp
        .request(Method::POST, "/v1/deployments", Some(web("sneaky", Some("team-b"), "development")), Some(&alice))
        .await;
    assert_error(status, &other, StatusCode::NOT_FOUND, "WORKSPACE_001");
    let (status, missing) = cp
        .request(Method::POST, "/v1/deployments", Some(web("sneaky", Some("team-z"), "development")), Some(&alice))
        .await;
    assert_error(status, &missing, StatusCode::NOT_FOUND, "WORKSPACE_001");
    assert_eq!(other["error"]["details"]["field"], missing["error"]["details"]["field"]);
    // No workspace named means `default`, where alice has no role either.
    let (status, res) =
        cp.request(Method::POST, "/v1/deployments", Some(web("sneaky", None, "development")), Some(&alice)).await;
    assert_error(status, &res, StatusCode::NOT_FOUND, "WORKSPACE_001");
    // In her own workspace the roles still decide: a developer does not deploy to production.
    let (status, res) = cp
        .request(Method::POST, "/v1/deployments", Some(web("prod", Some("team-a"), "production")), Some(&alice))
        .await;
    assert_error(status, &res, StatusCode::FORBIDDEN, "AUTH_002");
    assert_eq!(listed(&cp, &cp.admin_token, "/v1/deployments").await.1, 2, "nothing refused was stored");

    // Workspaces themselves: bob's viewer role reads team-b only; alice's developer role grants
    // no workspace:read at all; the unscoped viewer reads all of them.
    let names = |v: (Vec<String>, i64)| v.1;
    assert_eq!(names(listed(&cp, &bob, "/v1/workspaces").await), 1);
    assert_eq!(names(listed(&cp, &alice, "/v1/workspaces").await), 0);
    assert_eq!(names(listed(&cp, &carol, "/v1/workspaces").await), 3, "default, team-a, team-b");
    let (status, res) = cp.request(Method::GET, "/v1/workspaces/team-b", None, Some(&bob)).await;
    assert_eq!((status, &res["name"]), (StatusCode::OK, &json!("team-b")), "{res}");
    for (token, path) in [(&bob, "/v1/workspaces/team-a"), (&alice, "/v1/workspaces/team-b")] {
        let (status, res) = cp.request(Method::GET, path, None, Some(token)).await;
        assert_error(status, &res, StatusCode::NOT_FOUND, "WORKSPACE_001");
        let (status, res) = cp.request(Method::DELETE, path, None, Some(token)).await;
        assert_error(status, &res, StatusCode::NOT_FOUND, "WORKSPACE_001");
    }
    // Inside its workspace, bob lacks workspace:manage: 403.
    let (status, res) = cp.request(Method::DELETE, "/v1/workspaces/team-b", None, Some(&bob)).await;
    assert_error(status, &res, StatusCode::FORBIDDEN, "AUTH_002");

    // Who am I still says where alice may do what.
    let (_, me) = cp.request(Method::GET, "/v1/auth/me", None, Some(&alice)).await;
    assert_eq!(me["roles"], json!([{ "role": "developer", "workspace": "team-a" }]), "{me}");
    let envs = me["environments"].as_array().unwrap();
    assert_eq!(envs.len(), 1, "{me}");
    assert_eq!(envs[0]["name"], "development");
    assert!(envs[0]["permissions"].as_array().unwrap().contains(&json!("deployment:create")), "{me}");
}

#[tokio::test]
async fn workspaces_projects_and_zones_have_their_crud_and_refuse_bad_input() {
    let cp = ControlPlane::spawn().await;
    // Workspaces: `default` exists from the start.
    let (status, res) = cp.api(Method::GET, "/v1/workspaces/default", None).await;
    assert_eq!((status, &res["id"]), (StatusCode::OK, &json!("ws-default")), "{res}");
    let body = json!({ "name": "team-a", "description": "Team A", "owner": "a-team@example.com" });
    let (status, ws) = cp.api(Method::POST, "/v1/workspaces", Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{ws}");
    assert_eq!((&ws["name"], &ws["owner"]), (&json!("team-a"), &json!("a-team@example.com")));
    let ws_id = ws["id"].as_str().unwrap().to_string();
    for (body, status, code) in [
        (json!({ "name": "team-a" }), StatusCode::CONFLICT, "WORKSPACE_002"),
        (json!({ "name": "Team A" }), StatusCode::BAD_REQUEST, "VALIDATION_001"),
        (json!({ "name": "" }), StatusCode::BAD_REQUEST, "VALIDATION_001"),
        (json!({ "name": "ok", "colour": "red" }), StatusCode::BAD_REQUEST, "VALIDATION_001"),
        (json!({ "name": "ok", "description": "x".repeat(600) }), StatusCode::BAD_REQUEST, "VALIDATION_001"),
        (json!({ "name": "ok", "owner": "a\nb" }), StatusCode::BAD_REQUEST, "VALIDATION_001"),
    ] {
        let (s, res) = cp.api(Method::POST, "/v1/workspaces", Some(body.clone())).await;
        assert_error(s, &res, status, code);
    }
    assert_eq!(listed(&cp, &cp.admin_token, "/v1/workspaces").await.1, 2, "nothing refused was stored");
    let (status, res) =
        cp.api(Method::PUT, &format!("/v1/workspaces/{ws_id}"), Some(json!({ "description": "A" }))).await;
    assert_eq!((status, &res["description"], &res["name"]), (StatusCode::OK, &json!("A"), &json!("team-a")), "{res}");
    let (status, res) = cp.api(Method::PUT, "/v1/workspaces/team-a", Some(json!({ "name": "team-x" }))).await;
    assert_error(status, &res, StatusCode::BAD_REQUEST, "VALIDATION_001");
    let (status, res) = cp.api(Method::PUT, "/v1/workspaces/team-z", Some(json!({ "description": "A" }))).await;
    assert_error(status, &res, StatusCode::NOT_FOUND, "WORKSPACE_001");
    let (status, res) = cp.api(Method::DELETE, "/v1/workspaces/default", None).await;
    assert_error(status, &res, StatusCode::CONFLICT, "WORKSPACE_004");
    // Only an unscoped administrator creates workspaces.
    let scoped_admin = user(&cp, "ann", json!([{ "role": "deployment_admin", "workspace": "team-a" }])).await;
    let (status, res) =
        cp.request(Method::POST, "/v1/workspaces", Some(json!({ "name": "mine" })), Some(&scoped_admin)).await;
    assert_error(status, &res, StatusCode::FORBIDDEN, "AUTH_002");

    // Projects.
    let (status, p) = cp.api(Method::POST, "/v1/projects", Some(json!({ "name": "api", "workspace": "team-a" }))).await;
    assert_eq!(status, StatusCode::CREATED, "{p}");
    let p_id = p["id"].as_str().unwrap().to_string();
    assert_eq!(p["workspace"], "team-a");
    // The team's scoped administrator manages its projects.
    let (status, p2) = cp
        .request(Method::POST, "/v1/projects", Some(json!({ "name": "web", "workspace": ws_id })), Some(&scoped_admin))
        .await;
    assert_eq!((status, &p2["workspace"]), (StatusCode::CREATED, &json!("team-a")), "{p2}");
    for (body, status, code) in [
        (json!({ "name": "api", "workspace": "team-a" }), StatusCode::CONFLICT, "PROJECT_002"),
        (json!({ "name": "API", "workspace": "team-a" }), StatusCode::BAD_REQUEST, "VALIDATION_001"),
        (json!({ "name": "x", "workspace": "team-a", "owner": "me" }), StatusCode::BAD_REQUEST, "VALIDATION_001"),
        (json!({ "name": "x", "workspace": "team-z" }), StatusCode::NOT_FOUND, "WORKSPACE_001"),
        (json!({ "workspace": "team-a" }), StatusCode::BAD_REQUEST, "VALIDATION_001"),
    ] {
        let (s, res) = cp.api(Method::POST, "/v1/projects", Some(body.clone())).await;
        assert_error(s, &res, status, code);
    }
    let (status, res) = cp
        .request(
            Method::POST,
            "/v1/projects",
            Some(json!({ "name": "x", "workspace": "default" })),
            Some(&scoped_admin),
        )
        .await;
    assert_error(status, &res, StatusCode::NOT_FOUND, "WORKSPACE_001");
    assert_eq!(listed(&cp, &cp.admin_token, "/v1/projects").await.1, 2, "nothing refused was stored");
    assert_eq!(listed(&cp, &cp.admin_token, "/v1/projects?workspace=team-a&pageSize=1").await.1, 2);
    assert_eq!(listed(&cp, &cp.admin_token, "/v1/projects?workspace=default").await.1, 0);
    let (status, res) = cp.api(Method::GET, &format!("/v1/projects/{p_id}"), None).await;
    assert_eq!((status, &res["name"]), (StatusCode::OK, &json!("api")), "{res}");
    let (status, res) = cp
        .api(Method::PUT, &format!("/v1/projects/{p_id}"), Some(json!({ "name": "gateway", "description": "edge" })))
        .await;
    assert_eq!(
        (status, &res["name"], &res["description"]),
        (StatusCode::OK, &json!("gateway"), &json!("edge")),
        "{res}"
    );
    let (status, res) = cp.api(Method::PUT, &format!("/v1/projects/{p_id}"), Some(json!({ "name": "web" }))).await;
    assert_error(status, &res, StatusCode::CONFLICT, "PROJECT_002");
    let (status, res) =
        cp.api(Method::PUT, &format!("/v1/projects/{p_id}"), Some(json!({ "workspace": "default" }))).await;
    assert_error(status, &res, StatusCode::BAD_REQUEST, "VALIDATION_001");
    let (status, res) = cp.api(Method::GET, "/v1/projects/proj-0000000000000000", None).await;
    assert_error(status, &res, StatusCode::NOT_FOUND, "PROJECT_001");

    // AI zones: a shared one and one dedicated to team-a.
    let zone = json!({
        "name": "gpu-shared", "provider": "aws", "region": "us-east-1",
        "labels": { "accelerator": "nvidia-a100", "gpus": "8" }, "description": "A100 pool",
    });
    let (status, shared) = cp.api(Method::POST, "/v1/aizones", Some(zone)).await;
    assert_eq!((status, &shared["workspace"]), (StatusCode::CREATED, &Value::Null), "{shared}");
    assert_eq!(shared["labels"]["accelerator"], "nvidia-a100");
    let (status, dedicated) =
        cp.api(Method::POST, "/v1/aizones", Some(json!({ "name": "gpu-a", "workspace": "team-a" }))).await;
    assert_eq!((status, &dedicated["workspace"]), (StatusCode::CREATED, &json!("team-a")), "{dedicated}");
    for (body, status, code) in [
        (json!({ "name": "gpu-a" }), StatusCode::CONFLICT, "AIZONE_002"),
        (json!({ "name": "z", "labels": { "bad key!": "x" } }), StatusCode::BAD_REQUEST, "VALIDATION_001"),
        (json!({ "name": "z", "region": "us east" }), StatusCode::BAD_REQUEST, "VALIDATION_001"),
        (json!({ "name": "z", "workspace": "team-z" }), StatusCode::NOT_FOUND, "WORKSPACE_001"),
        (json!({ "name": "z", "gpus": 8 }), StatusCode::BAD_REQUEST, "VALIDATION_001"),
    ] {
        let (s, res) = cp.api(Method::POST, "/v1/aizones", Some(body.clone())).await;
        assert_error(s, &res, status, code);
    }
    // Zones are infrastructure: even the team's own administrator does not create them.
    let (status, res) =
        cp.request(Method::POST, "/v1/aizones", Some(json!({ "name": "z" })), Some(&scoped_admin)).await;
    assert_error(status, &res, StatusCode::FORBIDDEN, "AUTH_002");
    assert_eq!(listed(&cp, &cp.admin_token, "/v1/aizones").await.1, 2, "nothing refused was stored");
    let (status, res) = cp.api(Method::PUT, "/v1/aizones/gpu-shared", Some(json!({ "region": "eu-west-1" }))).await;
    assert_eq!(
        (status, &res["region"], &res["provider"]),
        (StatusCode::OK, &json!("eu-west-1"), &json!("aws")),
        "{res}"
    );
    let (status, res) = cp.api(Method::PUT, "/v1/aizones/gpu-shared", Some(json!({ "name": "gpu-a" }))).await;
    assert_error(status, &res, StatusCode::CONFLICT, "AIZONE_002");
    let (status, res) = cp.api(Method::PUT, "/v1/aizones/gpu-shared", Some(json!({ "workspace": "team-a" }))).await;
    assert_error(status, &res, StatusCode::BAD_REQUEST, "VALIDATION_001");
    // A viewer of another workspace reads the shared zone, not team-a's.
    let viewer_b = user(&cp, "vic", json!([{ "role": "viewer", "workspace": "team-b" }])).await;
    let (ids, total) = listed(&cp, &viewer_b, "/v1/aizones").await;
    assert_eq!((ids, total), (vec![shared["id"].as_str().unwrap().to_string()], 1));
    let (status, res) = cp.request(Method::GET, "/v1/aizones/gpu-a", None, Some(&viewer_b)).await;
    assert_error(status, &res, StatusCode::NOT_FOUND, "AIZONE_001");
    let (status, res) = cp.request(Method::GET, "/v1/aizones/gpu-a/deployments", None, Some(&viewer_b)).await;
    assert_error(status, &res, StatusCode::NOT_FOUND, "AIZONE_001");

    // Deployments name a project of their workspace and a zone usable there.
    let with = |project: &str, zone: &str| {
        let mut b = web("trainer", Some("team-a"), "development");
        b["projectId"] = json!(project);
        b["aiZoneId"] = json!(zone);
        b
    };
    let (_, default_project) = cp.api(Method::POST, "/v1/projects", Some(json!({ "name": "misc" }))).await;
    assert_eq!(default_project["workspace"], "default", "{default_project}");
    let (_, dedicated_b) =
        cp.api(Method::POST, "/v1/aizones", Some(json!({ "name": "gpu-b", "workspace": "default" }))).await;
    assert_eq!(dedicated_b["workspace"], "default");
    for (body, status, code, field) in [
        (with("misc", "gpu-shared"), StatusCode::BAD_REQUEST, "PROJECT_001", "projectId"),
        (with("nope", "gpu-shared"), StatusCode::BAD_REQUEST, "PROJECT_001", "projectId"),
        (with("gateway", "gpu-nope"), StatusCode::BAD_REQUEST, "AIZONE_001", "aiZoneId"),
        (with("gateway", "gpu-b"), StatusCode::BAD_REQUEST, "AIZONE_001", "aiZoneId"),
        (with("Bad Name", "gpu-a"), StatusCode::BAD_REQUEST, "VALIDATION_001", "projectId"),
    ] {
        let (s, res) = cp.api(Method::POST, "/v1/deployments", Some(body.clone())).await;
        assert_error(s, &res, status, code);
        assert_eq!(res["error"]["details"]["field"], field, "{res}");
    }
    assert_eq!(listed(&cp, &cp.admin_token, "/v1/deployments").await.1, 0, "nothing refused was stored");
    let (d_id, _) = create(&cp, &cp.admin_token, with("gateway", "gpu-a")).await;
    let (_, d) = cp.api(Method::GET, &format!("/v1/deployments/{d_id}"), None).await;
    assert_eq!((&d["projectId"], &d["aiZoneId"]), (&json!(p_id), &dedicated["id"]), "names resolve to ids: {d}");
    let (d2_id, _) = create(&cp, &cp.admin_token, {
        let mut b = web("other", None, "staging");
        b["aiZoneId"] = json!("gpu-shared");
        b
    })
    .await;
    assert_eq!(
        listed(&cp, &cp.admin_token, &format!("/v1/deployments?projectId={p_id}")).await,
        (vec![d_id.clone()], 1)
    );
    assert_eq!(listed(&cp, &cp.admin_token, "/v1/aizones/gpu-a/deployments").await, (vec![d_id.clone()], 1));
    assert_eq!(listed(&cp, &cp.admin_token, "/v1/aizones/gpu-shared/deployments").await, (vec![d2_id.clone()], 1));
    let dedicated_id = dedicated["id"].as_str().unwrap();
    assert_eq!(listed(&cp, &cp.admin_token, &format!("/v1/deployments?aiZoneId={dedicated_id}")).await.1, 1);
    // A zone's deployments are filtered to what the caller may read: team-b's viewer sees the
    // shared zone, and none of its deployments (they are in default).
    assert_eq!(listed(&cp, &viewer_b, "/v1/aizones/gpu-shared/deployments").await, (vec![], 0));

    // What is in use is not deleted.
    let (status, res) = cp.api(Method::DELETE, &format!("/v1/projects/{p_id}"), None).await;
    assert_error(status, &res, StatusCode::CONFLICT, "PROJECT_003");
    let (status, res) = cp.api(Method::DELETE, "/v1/workspaces/team-a", None).await;
    assert_error(status, &res, StatusCode::CONFLICT, "WORKSPACE_003");
    assert_eq!(
        (res["error"]["details"]["deployments"].as_i64(), res["error"]["details"]["projects"].as_i64()),
        (Some(1), Some(2))
    );
    // Once empty, it goes, with the zone dedicated to it.
    let (status, res) = cp.api(Method::DELETE, &format!("/v1/deployments/{d_id}"), None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{res}");
    for id in [&p_id, p2["id"].as_str().unwrap()] {
        let (status, res) = cp.api(Method::DELETE, &format!("/v1/projects/{id}"), None).await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{res}");
    }
    let (status, res) = cp.api(Method::DELETE, &format!("/v1/projects/{p_id}"), None).await;
    assert_error(status, &res, StatusCode::NOT_FOUND, "PROJECT_001");
    let (status, res) = cp.api(Method::DELETE, "/v1/workspaces/team-a", None).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{res}");
    let (status, res) = cp.api(Method::GET, "/v1/workspaces/team-a", None).await;
    assert_error(status, &res, StatusCode::NOT_FOUND, "WORKSPACE_001");
    let (status, res) = cp.api(Method::GET, "/v1/aizones/gpu-a", None).await;
    assert_error(status, &res, StatusCode::NOT_FOUND, "AIZONE_001");
    // Every change is in the audit trail with its request id.
    let audit = cp.running_store().audit_for(&ws_id).await.unwrap();
    let mut actions: Vec<&str> = audit.iter().map(|a| a.0.as_str()).collect();
    actions.sort_unstable();
    assert_eq!(actions, ["workspace.create", "workspace.delete", "workspace.update"]);
    assert!(audit.iter().all(|(_, actor, request_id)| actor.starts_with("admin:") && request_id.starts_with("req-")));
}
