//! Git sources end to end with real processes: a local repository (made with gix) holds a
//! deployment file and a script; `POST /v1/deployments/github` pinned to `main` runs the
//! committed script in the agent's checkout of that commit; a new commit on `main` changes
//! nothing (same commit pinned, same process). The validate endpoint answers precisely, and a
//! server without `--allow-file-sources` refuses local repositories. A version made from a new
//! commit (`POST …/versions` with `sourceConfiguration`) runs it once deployed.

use std::net::TcpListener;
use std::path::Path;

use ferry_git::fixture::{File, Fixture};
use ferry_tests::{Agent, ControlPlane, DEADLINE, eventually};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// The deployment file (YAML) and its script: the replica writes `message.txt` (read from its
/// working directory, the checkout's `deploy/`) to `$OUT`, then sleeps.
fn commit_app(repo: &Fixture, out: &Path, message: &str) -> String {
    let file = format!(
        "deploymentName: from-file\nenvironment: development\nconfiguration:\n  replicas: 1\n  command: sh\n  \
         args: [serve.sh]\n  stopGracePeriodSeconds: 1\n  env:\n    OUT: {}\n",
        out.display()
    );
    repo.commit_files(
        "main",
        &[
            File::Regular("deploy/ferry.yaml", file.as_bytes()),
            File::Executable(
                "deploy/serve.sh",
                b"cat message.txt > \"$OUT.tmp\" && mv \"$OUT.tmp\" \"$OUT\"\nexec sleep 3600\n",
            ),
            File::Regular("deploy/message.txt", message.as_bytes()),
            File::Regular("broken.json", br#"{"configuration": {"replicas": 1, "comand": "sh"}}"#),
        ],
        message,
    )
}

async fn wrote(out: &Path, want: &str) {
    eventually(&format!("the workload wrote {want:?}"), DEADLINE, || async {
        (std::fs::read_to_string(out).ok().as_deref() == Some(want)).then_some(())
    })
    .await;
}

async fn get(cp: &ControlPlane, path: &str) -> Value {
    let (status, body) = cp.api(Method::GET, path, None).await;
    assert_eq!(status, StatusCode::OK, "{path}: {body}");
    body
}

fn source(url: &str, reference: Value, path: &str) -> Value {
    let mut sc = json!({ "githubRepoUrl": url, "path": path });
    for (k, v) in reference.as_object().unwrap() {
        sc[k] = v.clone();
    }
    sc
}

#[tokio::test]
async fn a_git_source_runs_its_pinned_commit_until_told_otherwise() {
    let cp = ControlPlane::spawn().await;
    let agent = Agent::spawn(&cp, &cp.token(600, &[]).await);
    agent.wait_connected().await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let repo = Fixture::init(dir.path().join("repo"));
    let first = commit_app(&repo, &out, "one");

    // Validate first: nothing is created.
    let sc = source(&repo.url(), json!({ "branch": "main" }), "deploy/ferry.yaml");
    let (status, body) = cp
        .api(
            Method::POST,
            "/v1/deployments/sources/validate",
            Some(json!({ "deploymentSource": "github", "sourceConfiguration": sc })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!((body["valid"].clone(), body["commit"].as_str()), (json!(true), Some(first.as_str())), "{body}");
    assert_eq!(body["configuration"]["source"]["commit"], first.as_str());
    assert_eq!(get(&cp, "/v1/deployments").await["pagination"]["totalCount"], 0);

    // Create, pinned to main: the request's name wins over the file's.
    let (status, created) = cp
        .api(
            Method::POST,
            "/v1/deployments/github",
            Some(json!({ "deploymentName": "site", "environment": "development", "sourceConfiguration": sc })),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{created}");
    let d = &created["deployment"];
    let id = d["id"].as_str().unwrap().to_string();
    assert_eq!(d["deploymentName"], "site");
    assert_eq!(d["deploymentSource"], "github");
    assert_eq!(d["activeVersion"], format!("git-{}", &first[..12]));
    assert_eq!(
        d["sourceConfiguration"],
        json!({ "githubRepoUrl": repo.url(), "branch": "main", "path": "deploy/ferry.yaml", "commit": first })
    );
    let pin = &d["configuration"]["source"];
    assert_eq!(
        (pin["ref"].as_str(), pin["commit"].as_str(), pin["dir"].as_str()),
        (Some("refs/heads/main"), Some(first.as_str()), Some("deploy"))
    );
    wrote(&out, "one").await;
    let status = eventually("the deployment runs", DEADLINE, || async {
        let s = get(&cp, &format!("/v1/deployments/{id}/status")).await;
        (s["status"] == "running").then_some(s)
    })
    .await;
    let pid = status["replicas"][0]["pid"].clone();

    // A new commit on main: the branch moves (validate sees it), the deployment does not.
    let second = commit_app(&repo, &out, "two");
    let (_, body) = cp
        .api(
            Method::POST,
            "/v1/deployments/sources/validate",
            Some(json!({ "deploymentSource": "github", "sourceConfiguration": sc })),
        )
        .await;
    assert_eq!(body["commit"], second.as_str(), "{body}");
    // A change of its configuration keeps the pin (a request cannot move it).
    let mut config = d["configuration"].clone();
    config["source"]["commit"] = json!(second);
    config["env"]["EXTRA"] = json!("1");
    let (status, updated) =
        cp.api(Method::PUT, &format!("/v1/deployments/{id}"), Some(json!({ "configuration": config }))).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{updated}");
    assert_eq!(updated["deployment"]["configuration"]["source"]["commit"], first.as_str(), "{updated}");
    assert_eq!(updated["deployment"]["configuration"]["env"]["EXTRA"], "1");
    // The new revision runs the same commit: still "one", from a new process.
    eventually("the new revision runs", DEADLINE, || async {
        let s = get(&cp, &format!("/v1/deployments/{id}/status")).await;
        (s["status"] == "running" && s["revision"] == 2 && s["replicas"][0]["pid"] != pid).then_some(())
    })
    .await;
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "one", "the pinned commit, not main's tip");
    let deployment = get(&cp, &format!("/v1/deployments/{id}")).await;
    assert_eq!(deployment["sourceConfiguration"]["commit"], first.as_str());
    // The change made a version of its own (generated name); the first one is named by its commit.
    assert_eq!(deployment["activeVersion"], "v2");
    let v1 = get(&cp, &format!("/v1/deployments/{id}/versions/git-{}", &first[..12])).await;
    assert_eq!(v1["configuration"]["source"]["commit"], first.as_str(), "{v1}");

    // Pinned to the new commit explicitly, by tag: a second deployment runs "two" (its
    // deployment file names the same `OUT`).
    repo.tag("v2", &second);
    let sc2 = source(&repo.url(), json!({ "tag": "v2" }), "deploy/ferry.yaml");
    let (status, created) = cp
        .api(Method::POST, "/v1/deployments/github", Some(json!({ "sourceConfiguration": sc2, "activeVersion": "v2" })))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{created}");
    assert_eq!(created["deployment"]["deploymentName"], "from-file", "the file's name when the request has none");
    assert_eq!(created["deployment"]["activeVersion"], "v2");
    wrote(&out, "two").await;

    // The direct path: `configuration.source` is Ferry's (dropped), and a Git source is refused.
    let direct = json!({ "deploymentName": "plain", "environment": "development",
        "configuration": { "replicas": 0, "command": "true", "source": pin.clone() } });
    let (status, body) = cp.api(Method::POST, "/v1/deployments/direct", Some(direct.clone())).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["deployment"]["deploymentSource"], "direct");
    assert!(body["deployment"]["configuration"].get("source").is_none(), "{body}");
    let mut forged = direct;
    forged["deploymentName"] = json!("forged");
    forged["deploymentSource"] = json!("github");
    let (status, body) = cp.api(Method::POST, "/v1/deployments", Some(forged)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["details"]["field"], "deploymentSource");
    agent.stop().await;
}

async fn validate(cp: &ControlPlane, sc: Value) -> (StatusCode, Value) {
    cp.api(
        Method::POST,
        "/v1/deployments/sources/validate",
        Some(json!({ "deploymentSource": "github", "sourceConfiguration": sc })),
    )
    .await
}

fn error(body: &Value) -> (&str, &Value) {
    (body["error"]["code"].as_str().unwrap_or_default(), &body["error"]["details"])
}

#[tokio::test]
async fn bad_sources_get_precise_answers_and_change_nothing() {
    let cp = ControlPlane::spawn().await;
    let dir = tempfile::tempdir().unwrap();
    let repo = Fixture::init(dir.path().join("repo"));
    let commit = commit_app(&repo, &dir.path().join("out"), "one");
    let url = repo.url();

    let sources = get(&cp, "/v1/deployments/sources").await;
    let types: Vec<(&str, bool)> = sources["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["type"].as_str().unwrap(), s["available"].as_bool().unwrap()))
        .collect();
    assert_eq!(types, [("direct", true), ("github", true), ("helm", false)]);
    assert!(sources["data"][2]["reason"].as_str().unwrap().contains("Kubernetes"));
    assert_eq!(sources["data"][1]["schemes"], json!(["https", "http", "git", "file"]));

    // Unreachable: nothing listens there.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let (status, body) =
        validate(&cp, source(&format!("git://127.0.0.1:{port}/app"), json!({ "branch": "main" }), "ferry.json")).await;
    assert_eq!((status, error(&body).0), (StatusCode::UNPROCESSABLE_ENTITY, "SOURCE_001"), "{body}");
    assert_eq!(error(&body).1["field"], "sourceConfiguration.githubRepoUrl");
    // Not a repository.
    let (status, body) =
        validate(&cp, source(&format!("file://{}", dir.path().display()), json!({ "branch": "main" }), "x.json")).await;
    assert_eq!((status, error(&body).0), (StatusCode::UNPROCESSABLE_ENTITY, "SOURCE_001"), "{body}");
    // Missing ref.
    let (status, body) = validate(&cp, source(&url, json!({ "branch": "nope" }), "deploy/ferry.yaml")).await;
    assert_eq!((status, error(&body).0), (StatusCode::UNPROCESSABLE_ENTITY, "SOURCE_002"), "{body}");
    assert_eq!(error(&body).1["field"], "sourceConfiguration.branch");
    let (status, body) = validate(&cp, source(&url, json!({ "commit": "0".repeat(40) }), "deploy/ferry.yaml")).await;
    assert_eq!((status, error(&body).0), (StatusCode::UNPROCESSABLE_ENTITY, "SOURCE_002"), "{body}");
    // Missing and invalid deployment files.
    let (status, body) = validate(&cp, source(&url, json!({ "commit": commit }), "deploy/nope.json")).await;
    assert_eq!((status, error(&body).0), (StatusCode::UNPROCESSABLE_ENTITY, "SOURCE_003"), "{body}");
    assert_eq!(error(&body).1["path"], "deploy/nope.json");
    let (status, body) = validate(&cp, source(&url, json!({ "branch": "main" }), "broken.json")).await;
    assert_eq!((status, error(&body).0), (StatusCode::UNPROCESSABLE_ENTITY, "SOURCE_003"), "{body}");
    assert_eq!(
        (error(&body).1["path"].as_str(), error(&body).1["field"].as_str()),
        (Some("broken.json"), Some("configuration.comand"))
    );
    assert_eq!(error(&body).1["commit"], commit.as_str());
    // Malformed requests are 400s.
    let (status, body) =
        validate(&cp, source(&url, json!({ "branch": "main", "tag": "v1" }), "deploy/ferry.yaml")).await;
    assert_eq!((status, error(&body).0), (StatusCode::BAD_REQUEST, "VALIDATION_001"), "{body}");
    let (status, body) = validate(&cp, source(&url, json!({ "branch": "main" }), "../etc/passwd")).await;
    assert_eq!(
        (status, error(&body).1["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("sourceConfiguration.path")),
        "{body}"
    );
    // Not accepted: credentials, helm.
    let (status, body) =
        validate(&cp, source("https://user:tok@example.com/app.git", json!({ "branch": "main" }), "a.json")).await;
    assert_eq!((status, error(&body).0), (StatusCode::UNPROCESSABLE_ENTITY, "SOURCE_004"), "{body}");
    assert!(!body.to_string().contains("tok@"), "the credential is not echoed: {body}");
    let (status, body) = cp
        .api(
            Method::POST,
            "/v1/deployments/sources/validate",
            Some(json!({ "deploymentSource": "helm", "sourceConfiguration": {} })),
        )
        .await;
    assert_eq!((status, error(&body).0), (StatusCode::UNPROCESSABLE_ENTITY, "SOURCE_004"), "{body}");

    // A create that fails any of these creates nothing.
    let (status, body) = cp
        .api(
            Method::POST,
            "/v1/deployments/github",
            Some(json!({ "deploymentName": "x", "environment": "development",
                "sourceConfiguration": source(&url, json!({ "branch": "main" }), "broken.json") })),
        )
        .await;
    assert_eq!((status, error(&body).0), (StatusCode::UNPROCESSABLE_ENTITY, "SOURCE_003"), "{body}");
    assert_eq!(get(&cp, "/v1/deployments").await["pagination"]["totalCount"], 0);
}

#[tokio::test]
async fn local_repositories_need_the_servers_permission() {
    let cp = ControlPlane::builder().allow_file_sources(false).spawn().await;
    let dir = tempfile::tempdir().unwrap();
    let repo = Fixture::init(dir.path().join("repo"));
    commit_app(&repo, &dir.path().join("out"), "one");
    let sources = get(&cp, "/v1/deployments/sources").await;
    assert_eq!(sources["data"][1]["schemes"], json!(["https", "http", "git"]));
    for url in [repo.url(), repo.path().display().to_string()] {
        let (status, body) = validate(&cp, source(&url, json!({ "branch": "main" }), "deploy/ferry.yaml")).await;
        assert_eq!((status, error(&body).0), (StatusCode::UNPROCESSABLE_ENTITY, "SOURCE_004"), "{body}");
        assert!(body["error"]["message"].as_str().unwrap().contains("--allow-file-sources"), "{body}");
        let (status, _) = cp
            .api(
                Method::POST,
                "/v1/deployments/github",
                Some(json!({ "deploymentName": "x", "environment": "development",
                    "sourceConfiguration": source(&url, json!({ "branch": "main" }), "deploy/ferry.yaml") })),
            )
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    }
    assert_eq!(get(&cp, "/v1/deployments").await["pagination"]["totalCount"], 0);
}

#[tokio::test]
async fn a_new_commit_runs_once_a_version_is_made_from_it() {
    let cp = ControlPlane::spawn().await;
    let agent = Agent::spawn(&cp, &cp.token(600, &[]).await);
    agent.wait_connected().await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let repo = Fixture::init(dir.path().join("repo"));
    let first = commit_app(&repo, &out, "one");
    let sc = source(&repo.url(), json!({ "branch": "main" }), "deploy/ferry.yaml");
    let (status, created) = cp
        .api(
            Method::POST,
            "/v1/deployments/github",
            Some(json!({ "deploymentName": "site", "environment": "development", "sourceConfiguration": sc })),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{created}");
    let id = created["deployment"]["id"].as_str().unwrap().to_string();
    let base = format!("/v1/deployments/{id}");
    wrote(&out, "one").await;

    // A new commit on main changes nothing by itself.
    let second = commit_app(&repo, &out, "two");
    let d = get(&cp, &base).await;
    assert_eq!((d["sourceConfiguration"]["commit"].as_str(), d["revision"].as_i64()), (Some(first.as_str()), Some(1)));
    assert_eq!(get(&cp, &format!("{base}/versions")).await["pagination"]["totalCount"], 1);

    // A version from it: main resolved now, the file read at that commit, pinned to it; named
    // by the commit; not deployed yet.
    let (status, v) =
        cp.api(Method::POST, &format!("{base}/versions"), Some(json!({ "sourceConfiguration": sc }))).await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let name = format!("git-{}", &second[..12]);
    assert_eq!((v["version"].as_str(), v["active"].as_bool()), (Some(name.as_str()), Some(false)), "{v}");
    assert_eq!(v["configuration"]["source"]["commit"], second.as_str());
    assert_eq!(v["configuration"]["source"]["ref"], "refs/heads/main");
    assert_eq!(v["source"]["commit"], second.as_str(), "{v}");
    assert!(v["configuration"].get("replicas").is_none(), "{v}");
    // The same request again is the same version (200), nothing new.
    let (status, again) =
        cp.api(Method::POST, &format!("{base}/versions"), Some(json!({ "sourceConfiguration": sc }))).await;
    assert_eq!((status, again["version"].as_str()), (StatusCode::OK, Some(name.as_str())), "{again}");
    assert_eq!(get(&cp, &base).await["sourceConfiguration"]["commit"], first.as_str());
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "one");

    // Deploying it runs the new commit.
    let (status, deployed) = cp.api(Method::POST, &format!("{base}/versions/{name}/deploy"), None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{deployed}");
    assert_eq!(deployed["deployment"]["sourceConfiguration"]["commit"], second.as_str(), "{deployed}");
    assert_eq!(deployed["deployment"]["activeVersion"], name.as_str());
    wrote(&out, "two").await;
    // And rolling back runs the first commit again.
    let (status, back) = cp.api(Method::POST, &format!("{base}/rollback"), None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{back}");
    assert_eq!(back["deployment"]["sourceConfiguration"]["commit"], first.as_str());
    wrote(&out, "one").await;

    // Git errors are the source's 422s; bad requests are 400s; nothing is created.
    let (status, body) = cp
        .api(
            Method::POST,
            &format!("{base}/versions"),
            Some(
                json!({ "sourceConfiguration": source(&repo.url(), json!({ "branch": "nope" }), "deploy/ferry.yaml") }),
            ),
        )
        .await;
    assert_eq!((status, error(&body).0), (StatusCode::UNPROCESSABLE_ENTITY, "SOURCE_002"), "{body}");
    let (status, body) = cp
        .api(
            Method::POST,
            &format!("{base}/versions"),
            Some(json!({ "sourceConfiguration": source(&repo.url(), json!({ "branch": "main" }), "broken.json") })),
        )
        .await;
    assert_eq!((status, error(&body).0), (StatusCode::UNPROCESSABLE_ENTITY, "SOURCE_003"), "{body}");
    let both = json!({ "sourceConfiguration": sc, "configuration": { "command": "true" } });
    let (status, body) = cp.api(Method::POST, &format!("{base}/versions"), Some(both)).await;
    assert_eq!((status, error(&body).1["field"].as_str()), (StatusCode::BAD_REQUEST, Some("sourceConfiguration")));
    assert_eq!(get(&cp, &format!("{base}/versions")).await["pagination"]["totalCount"], 2);

    // Promoted to staging, a version keeps its pin: staging runs that exact commit.
    let (status, promoted) = cp.api(Method::POST, &format!("{base}/promote"), Some(json!({ "version": name }))).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{promoted}");
    let staged = &promoted["deployment"];
    assert_eq!(
        (staged["environment"].as_str(), staged["deploymentSource"].as_str(), staged["activeVersion"].as_str()),
        (Some("staging"), Some("github"), Some(name.as_str())),
        "{promoted}"
    );
    assert_eq!(staged["sourceConfiguration"]["commit"], second.as_str());
    let staged_v = get(&cp, &format!("/v1/deployments/{}/versions/{name}", staged["id"].as_str().unwrap())).await;
    assert_eq!(staged_v["configuration"], v["configuration"], "the same frozen configuration, pin included");

    // A direct deployment has no Git source to make versions from.
    let direct = json!({ "deploymentName": "plain", "environment": "development",
        "configuration": { "replicas": 0, "command": "true" } });
    let (_, plain) = cp.api(Method::POST, "/v1/deployments", Some(direct)).await;
    let plain_id = plain["deployment"]["id"].as_str().unwrap();
    let (status, body) = cp
        .api(Method::POST, &format!("/v1/deployments/{plain_id}/versions"), Some(json!({ "sourceConfiguration": sc })))
        .await;
    assert_eq!((status, error(&body).0), (StatusCode::BAD_REQUEST, "VALIDATION_001"), "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("not Git-sourced"), "{body}");
    agent.stop().await;
}
