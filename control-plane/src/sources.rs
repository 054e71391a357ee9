//! Deployment sources: `direct` (the API's deployment body) and `github` (any Git repository:
//! a deployment file at a commit). Helm belongs to the Kubernetes runtime and is listed as not
//! available.
//!
//! A Git source is resolved once, here: the ref (branch, tag or commit) to a commit, then the
//! deployment file at that commit (JSON, YAML or TOML: the same document as the API's deployment
//! body) is read and validated, and its configuration gets the pin `configuration.source`
//! (repository, what was asked, the commit, the file). The deployment is then created through
//! [`Deployments::create`] like any other (permission, lock, change window, approval, audit),
//! and every revision of it runs exactly that commit: agents check it out and run the
//! configured command in it (`ferry_protocol::WorkloadSpec::ProcessFromGit`). A new commit on
//! the branch changes nothing until a new version is made from it ([`Sources::resolve_source`]).
//!
//! Git access goes through `ferry-git` (gix; a bare cache per repository under
//! `<data-dir>/git-cache`), under `--git-timeout`. Local repositories (`file://`, paths) only
//! with `--allow-file-sources`; URLs with credentials and ssh are refused (`SOURCE_004`).

use axum::http::StatusCode;
use ferry_git::{GitError, GitRef, Policy, RepoUrl};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::AppState;
use crate::api::{ApiError, ApiResult, ErrorCode};
use crate::authz::{Scope, perm};
use crate::context::RequestContext;
use crate::deployments::{Accepted, Deployments, NewDeployment, Options, Outcome};
use crate::model::{Configuration, SourcePin, TargetJson};

/// The API's deployment body, as it is.
pub const DIRECT: &str = "direct";
/// A Git repository (any Git URL; the seed calls it `github`).
pub const GITHUB: &str = "github";
/// Helm charts: not available (see [`list`]).
pub const HELM: &str = "helm";

/// The seed's `sourceConfiguration` of a Git source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SourceConfiguration {
    pub github_repo_url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// The deployment file, relative to the repository's root.
    pub path: String,
}

impl SourceConfiguration {
    /// Exactly one of `branch`, `tag`, `commit`.
    pub fn git_ref(&self) -> ApiResult<GitRef> {
        let r = match (&self.branch, &self.tag, &self.commit) {
            (Some(b), None, None) => GitRef::Branch(b.clone()),
            (None, Some(t), None) => GitRef::Tag(t.clone()),
            (None, None, Some(c)) => GitRef::Commit(c.clone()),
            _ => {
                return Err(ApiError::validation("sourceConfiguration", "give exactly one of branch, tag and commit"));
            }
        };
        r.validate().map_err(|e| ApiError::validation(&ref_field(&r), e.to_string()))?;
        Ok(r)
    }
}

fn ref_field(r: &GitRef) -> String {
    format!("sourceConfiguration.{}", r.what())
}

/// A deployment file: the API's deployment body. `configuration` is required; the request's
/// own fields win over the file's.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeploymentFile {
    #[serde(default)]
    pub deployment_name: Option<String>,
    #[serde(default)]
    pub environment: Option<String>,
    #[serde(default)]
    pub active_version: Option<String>,
    #[serde(default)]
    pub target: Option<TargetJson>,
    pub configuration: Configuration,
    #[serde(default)]
    pub workspace: Option<String>,
    #[serde(default)]
    pub project_id: Option<String>,
    #[serde(default)]
    pub ai_zone_id: Option<String>,
    /// Tolerated (the API's body has it); the source is where the file was found.
    #[serde(default)]
    pub deployment_source: Option<String>,
}

/// Why a deployment file was refused: the field at fault (if one is) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileProblem {
    pub field: Option<String>,
    pub message: String,
}

impl FileProblem {
    fn new(field: Option<String>, message: impl Into<String>) -> Self {
        Self { field, message: message.into() }
    }
}

/// Parses a deployment file by its extension (pure): `.json`, `.yaml`/`.yml` or `.toml`, into
/// the document, checked like the API's body (unknown fields refused, configuration validated).
pub fn parse_deployment_file(path: &str, bytes: &[u8]) -> Result<DeploymentFile, FileProblem> {
    let ext = path.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase()).unwrap_or_default();
    let text = std::str::from_utf8(bytes).map_err(|_| FileProblem::new(None, "the file is not UTF-8 text"))?;
    let value: Value = match ext.as_str() {
        "json" => serde_json::from_str(text).map_err(|e| FileProblem::new(None, format!("invalid JSON: {e}")))?,
        "yaml" | "yml" => {
            serde_saphyr::from_str(text).map_err(|e| FileProblem::new(None, format!("invalid YAML: {e}")))?
        }
        "toml" => toml::from_str(text).map_err(|e| FileProblem::new(None, format!("invalid TOML: {}", e.message())))?,
        _ => {
            return Err(FileProblem::new(
                Some("path".into()),
                "a deployment file is .json, .yaml, .yml or .toml (by its extension)",
            ));
        }
    };
    if !value.is_object() {
        return Err(FileProblem::new(None, "the document is not a map of fields"));
    }
    let file: DeploymentFile = serde_path_to_error::deserialize(value).map_err(|e| {
        let field = e.path().to_string();
        let field = (field != ".").then_some(field);
        FileProblem::new(field, e.into_inner().to_string())
    })?;
    file.configuration.validate().map_err(|i| FileProblem::new(Some(i.field), i.message))?;
    if let Some(t) = &file.target {
        t.validate().map_err(|i| FileProblem::new(Some(i.field), i.message))?;
    }
    Ok(file)
}

/// A Git source resolved: the commit, and the deployment file read at it, whose
/// configuration pins the source.
#[derive(Debug, Clone)]
pub struct ResolvedSource {
    pub commit: String,
    pub file: DeploymentFile,
}

impl ResolvedSource {
    /// The configuration to run, with `configuration.source` pinned to the commit.
    pub fn configuration(&self) -> &Configuration {
        &self.file.configuration
    }

    /// The version label a deployment created from it gets when nothing names one.
    pub fn default_version(&self) -> String {
        format!("git-{}", &self.commit[..12])
    }
}

/// `POST /v1/deployments/github`: what to create from a Git source.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GitDeploymentRequest {
    #[serde(default)]
    pub deployment_name: Option<String>,
    #[serde(default)]
    pub environment: Option<String>,
    /// `github` if given.
    #[serde(default)]
    pub deployment_source: Option<String>,
    pub source_configuration: SourceConfiguration,
    #[serde(default)]
    pub active_version: Option<String>,
    #[serde(default)]
    pub target: Option<TargetJson>,
    #[serde(default)]
    pub workspace: Option<String>,
    #[serde(default)]
    pub project_id: Option<String>,
    #[serde(default)]
    pub ai_zone_id: Option<String>,
}

/// `POST /v1/deployments/sources/validate`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ValidateRequest {
    pub deployment_source: String,
    #[serde(default)]
    pub source_configuration: Option<Value>,
}

/// The sources service.
pub struct Sources<'a> {
    state: &'a AppState,
}

impl<'a> Sources<'a> {
    pub fn new(state: &'a AppState) -> Self {
        Self { state }
    }

    fn policy(&self) -> Policy {
        Policy { allow_file: self.state.config.allow_file_sources }
    }

    /// Resolves a Git source: the ref to a commit, the deployment file at that commit parsed
    /// and validated, its configuration pinned to the commit. Reads only (no permission
    /// check: callers check theirs first). The versions service can call it to make a version
    /// from a new commit.
    pub async fn resolve_source(&self, sc: &SourceConfiguration) -> ApiResult<ResolvedSource> {
        let git_ref = sc.git_ref()?;
        let url = RepoUrl::parse(&sc.github_repo_url, self.policy()).map_err(|e| git_error(e, sc, &git_ref, None))?;
        let commit = self.state.git.resolve(&url, &git_ref).await.map_err(|e| git_error(e, sc, &git_ref, None))?;
        let bytes = self
            .state
            .git
            .read_file(&url, &commit, &sc.path)
            .await
            .map_err(|e| git_error(e, sc, &git_ref, Some(&commit)))?;
        let file_error = |p: FileProblem| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                ErrorCode::SourceFileInvalid,
                format!("deployment file {} at commit {commit}: {}", sc.path, p.message),
            )
            .with_details(json!({ "path": sc.path, "commit": commit, "field": p.field }))
        };
        let mut file = parse_deployment_file(&sc.path, &bytes).map_err(file_error)?;
        file.configuration.source = Some(SourcePin {
            kind: SourcePin::GIT.into(),
            repo_url: sc.github_repo_url.clone(),
            reference: git_ref.full_name(),
            commit: commit.clone(),
            path: sc.path.clone(),
            dir: SourcePin::dir_of(&sc.path),
        });
        // With the pin, `workingDir` must stay inside the checkout.
        file.configuration.validate().map_err(|i| file_error(FileProblem::new(Some(i.field), i.message)))?;
        Ok(ResolvedSource { commit, file })
    }

    /// Checks a source without creating anything (a caller who may create deployments
    /// somewhere).
    pub async fn validate(&self, ctx: &RequestContext, req: ValidateRequest) -> ApiResult<Value> {
        self.may_create_somewhere(ctx).await?;
        let sc = match req.deployment_source.as_str() {
            GITHUB => req.source_configuration.ok_or_else(|| {
                ApiError::validation("sourceConfiguration", "a Git source needs its sourceConfiguration")
            })?,
            DIRECT => return Ok(json!({ "valid": true, "deploymentSource": DIRECT })),
            HELM => return Err(helm_unavailable()),
            other => {
                return Err(ApiError::validation(
                    "deploymentSource",
                    format!("unknown source {other:?}: one of direct, github, helm"),
                ));
            }
        };
        let sc: SourceConfiguration = serde_path_to_error::deserialize(sc).map_err(|e| {
            let path = e.path().to_string();
            let field =
                if path == "." { "sourceConfiguration".to_string() } else { format!("sourceConfiguration.{path}") };
            ApiError::validation(&field, e.into_inner().to_string())
        })?;
        let resolved = self.resolve_source(&sc).await?;
        Ok(json!({
            "valid": true,
            "deploymentSource": GITHUB,
            "commit": resolved.commit,
            "ref": resolved.configuration().source.as_ref().map(|s| s.reference.clone()),
            "activeVersion": resolved.file.active_version.clone().unwrap_or_else(|| resolved.default_version()),
            "deploymentName": resolved.file.deployment_name,
            "environment": resolved.file.environment,
            "configuration": resolved.file.configuration,
        }))
    }

    /// Creates a deployment from a Git source: resolved here, created (permission, lock,
    /// window, approval, audit) by the deployments service. The request's fields win over the
    /// file's.
    pub async fn create(
        &self,
        ctx: &RequestContext,
        req: GitDeploymentRequest,
        opts: Options,
    ) -> ApiResult<Outcome<Accepted>> {
        if req.deployment_source.as_deref().is_some_and(|s| s != GITHUB) {
            return Err(ApiError::validation("deploymentSource", "\"github\" here (or leave it out)"));
        }
        // Nobody makes the server fetch without being able to create a deployment somewhere.
        self.may_create_somewhere(ctx).await?;
        let resolved = self.resolve_source(&req.source_configuration).await?;
        let version = req
            .active_version
            .or_else(|| resolved.file.active_version.clone())
            .unwrap_or_else(|| resolved.default_version());
        let file = resolved.file;
        let missing = |field: &str| {
            ApiError::validation(field, format!("{field} is required (in the request or the deployment file)"))
        };
        let new = NewDeployment {
            name: req.deployment_name.or(file.deployment_name).ok_or_else(|| missing("deploymentName"))?,
            environment: req.environment.or(file.environment).ok_or_else(|| missing("environment"))?,
            version,
            target: req
                .target
                .or(file.target)
                .unwrap_or(TargetJson { agent_ids: None, selector: Some(Default::default()) }),
            configuration: file.configuration,
            source: Some(GITHUB.into()),
            workspace: req.workspace.or(file.workspace),
            project: req.project_id.or(file.project_id),
            ai_zone: req.ai_zone_id.or(file.ai_zone_id),
            promotion: None,
        };
        Deployments::new(self.state).create(ctx, new, opts).await
    }

    /// 403 unless some role of the caller creates deployments in some environment (of some
    /// workspace).
    async fn may_create_somewhere(&self, ctx: &RequestContext) -> ApiResult<()> {
        let envs = self.state.store.list_environments().await?;
        let mut workspaces = vec![crate::workspaces::ANY_WORKSPACE];
        workspaces.extend(crate::workspaces::bound_workspaces(ctx));
        let allowed = envs
            .iter()
            .any(|e| workspaces.iter().any(|w| ctx.allows(perm::DEPLOYMENT_CREATE, Scope::env(e.scope(), Some(w)))));
        if allowed {
            return Ok(());
        }
        Err(crate::context::forbidden(&crate::authz::Denial::Permission {
            permission: perm::DEPLOYMENT_CREATE.to_string(),
        }))
    }
}

/// `GET /v1/deployments/sources`: the source types and their fields.
pub fn list(allow_file_sources: bool) -> Value {
    let mut schemes = vec!["https", "http", "git"];
    if allow_file_sources {
        schemes.push("file");
    }
    json!({
        "data": [
            {
                "type": DIRECT,
                "available": true,
                "endpoint": "POST /v1/deployments/direct",
                "description": "The deployment described in the request body (also POST /v1/deployments).",
                "fields": [
                    { "name": "deploymentName", "required": true },
                    { "name": "environment", "required": true },
                    { "name": "configuration", "required": true },
                    { "name": "activeVersion", "required": false },
                    { "name": "target", "required": false },
                    { "name": "workspace", "required": false },
                    { "name": "projectId", "required": false },
                    { "name": "aiZoneId", "required": false },
                ],
            },
            {
                "type": GITHUB,
                "available": true,
                "endpoint": "POST /v1/deployments/github",
                "description": "A deployment file (JSON, YAML or TOML: the same document as the direct body) at a \
                    commit of any Git repository. The ref is resolved to a commit once; agents check out exactly \
                    that commit and run the configured command in it.",
                "schemes": schemes,
                "allowFileSources": allow_file_sources,
                "fields": [
                    { "name": "sourceConfiguration.githubRepoUrl", "required": true,
                      "description": "https://, http:// or git:// URL of a public repository (no credentials); file:// \
                        and local paths only where the server allows them" },
                    { "name": "sourceConfiguration.branch", "required": false, "description": "exactly one of branch, tag, commit" },
                    { "name": "sourceConfiguration.tag", "required": false, "description": "exactly one of branch, tag, commit" },
                    { "name": "sourceConfiguration.commit", "required": false, "description": "a full commit id (40 hex digits)" },
                    { "name": "sourceConfiguration.path", "required": true,
                      "description": "the deployment file, relative to the repository's root (.json, .yaml, .yml or .toml)" },
                    { "name": "deploymentName", "required": false, "description": "wins over the file's" },
                    { "name": "environment", "required": false, "description": "wins over the file's" },
                    { "name": "activeVersion", "required": false, "description": "default: the file's, else git-<12 hex of the commit>" },
                    { "name": "target", "required": false },
                    { "name": "workspace", "required": false },
                    { "name": "projectId", "required": false },
                    { "name": "aiZoneId", "required": false },
                ],
            },
            {
                "type": HELM,
                "available": false,
                "reason": "Helm charts belong to the Kubernetes runtime, which Ferry does not have yet.",
                "fields": [
                    { "name": "sourceConfiguration.helmChartUrl", "required": true },
                ],
            },
        ],
    })
}

/// `deploymentSource` of a stored configuration.
pub fn source_type(config: &Configuration) -> &'static str {
    if config.source.is_some() { GITHUB } else { DIRECT }
}

/// The seed's `sourceConfiguration` of a stored configuration (`null` for a direct one), with
/// the commit it is pinned to.
pub fn source_configuration(config: &Configuration) -> Value {
    let Some(s) = &config.source else { return Value::Null };
    let mut v = json!({ "githubRepoUrl": s.repo_url, "path": s.path, "commit": s.commit });
    if let Some(b) = s.reference.strip_prefix("refs/heads/") {
        v["branch"] = json!(b);
    } else if let Some(t) = s.reference.strip_prefix("refs/tags/") {
        v["tag"] = json!(t);
    }
    v
}

fn helm_unavailable() -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        ErrorCode::SourceNotAllowed,
        "helm sources are not available: Helm charts belong to the Kubernetes runtime, which Ferry does not have yet",
    )
    .with_details(json!({ "field": "deploymentSource" }))
}

/// A Git failure as the API's answer.
fn git_error(e: GitError, sc: &SourceConfiguration, r: &GitRef, commit: Option<&str>) -> ApiError {
    let unprocessable = |code, field: &str| {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, e.to_string()).with_details(json!({ "field": field }))
    };
    let file = |e: &GitError| {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, ErrorCode::SourceFileInvalid, e.to_string())
            .with_details(json!({ "path": sc.path, "commit": commit, "field": Value::Null }))
    };
    match &e {
        GitError::BadUrl(_) | GitError::Unreachable { .. } | GitError::Timeout { .. } => {
            unprocessable(ErrorCode::SourceUnreachable, "sourceConfiguration.githubRepoUrl")
        }
        GitError::Refused(_) => unprocessable(ErrorCode::SourceNotAllowed, "sourceConfiguration.githubRepoUrl"),
        GitError::BadRef(m) => ApiError::validation(&ref_field(r), m.clone()),
        GitError::RefNotFound { .. } => unprocessable(ErrorCode::SourceRefNotFound, &ref_field(r)),
        GitError::BadPath { .. } => ApiError::validation("sourceConfiguration.path", e.to_string()),
        GitError::FileNotFound { .. } | GitError::NotAFile { .. } | GitError::FileTooLarge { .. } => file(&e),
        GitError::Checkout { .. } | GitError::Internal(_) => {
            tracing::error!(error = %e, "git source failed");
            ApiError::internal().with_cause(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD_JSON: &str = r#"{"deploymentName": "site", "environment": "development",
        "configuration": {"replicas": 2, "command": "sh", "args": ["serve.sh"], "env": {"A": "1"}}}"#;

    #[test]
    fn deployment_files_in_json_yaml_and_toml_are_the_same_document() {
        let yaml = "deploymentName: site\nenvironment: development\nconfiguration:\n  replicas: 2\n  command: sh\n  \
                    args: [serve.sh]\n  env:\n    A: \"1\"\n";
        let toml = "deploymentName = \"site\"\nenvironment = \"development\"\n[configuration]\nreplicas = 2\n\
                    command = \"sh\"\nargs = [\"serve.sh\"]\nenv = { A = \"1\" }\n";
        let json = parse_deployment_file("ferry.json", GOOD_JSON.as_bytes()).unwrap();
        for (path, text) in [("deploy/ferry.yaml", yaml), ("ferry.YML", yaml), ("a/b.toml", toml)] {
            let f = parse_deployment_file(path, text.as_bytes()).unwrap_or_else(|e| panic!("{path}: {e:?}"));
            assert_eq!(f, json, "{path}");
        }
        assert_eq!(json.configuration.replicas, 2);
        assert_eq!(json.deployment_name.as_deref(), Some("site"));
    }

    #[test]
    fn invalid_files_name_the_field() {
        let cases: &[(&str, &str, Option<&str>)] = &[
            ("ferry.json", r#"{"configuration": {"replicas": 1, "comand": "sh"}}"#, Some("configuration.comand")),
            (
                "ferry.json",
                r#"{"configuration": {"replicas": "two", "command": "sh"}}"#,
                Some("configuration.replicas"),
            ),
            ("ferry.json", r#"{"configuration": {"replicas": 1, "command": " "}}"#, Some("configuration.command")),
            ("ferry.json", r#"{"configuration": {"replicas": 1, "command": "sh"}, "extra": 1}"#, Some("extra")),
            ("ferry.json", r#"{"deploymentName": "x"}"#, None),
            ("ferry.json", "[1, 2]", None),
            ("ferry.json", "{not json", None),
            ("ferry.yaml", "configuration: [unclosed", None),
            ("ferry.toml", "configuration = ", None),
            ("ferry.txt", GOOD_JSON, Some("path")),
            ("Makefile", GOOD_JSON, Some("path")),
            (
                "ferry.json",
                r#"{"configuration": {"replicas": 1, "command": "sh", "healthChecks": {"liveness": {}}}}"#,
                Some("configuration.healthChecks.liveness"),
            ),
            ("ferry.json", r#"{"target": {}, "configuration": {"replicas": 1, "command": "sh"}}"#, Some("target")),
        ];
        for (path, text, field) in cases {
            let e = parse_deployment_file(path, text.as_bytes()).unwrap_err();
            match field {
                Some(f) => assert_eq!(e.field.as_deref(), Some(*f), "{path} {text}: {e:?}"),
                None => assert!(e.field.is_none() || e.message.contains("configuration"), "{path} {text}: {e:?}"),
            }
        }
        let e = parse_deployment_file("ferry.json", b"\xff\xfe").unwrap_err();
        assert!(e.message.contains("UTF-8"), "{e:?}");
    }

    #[test]
    fn exactly_one_ref() {
        let sc = |b: Option<&str>, t: Option<&str>, c: Option<&str>| SourceConfiguration {
            github_repo_url: "https://example.com/a".into(),
            branch: b.map(Into::into),
            tag: t.map(Into::into),
            commit: c.map(Into::into),
            path: "ferry.json".into(),
        };
        assert_eq!(sc(Some("main"), None, None).git_ref().unwrap(), GitRef::Branch("main".into()));
        assert_eq!(sc(None, Some("v1"), None).git_ref().unwrap(), GitRef::Tag("v1".into()));
        assert!(sc(None, None, None).git_ref().is_err());
        assert!(sc(Some("main"), Some("v1"), None).git_ref().is_err());
        let e = sc(None, None, Some("abc")).git_ref().unwrap_err();
        assert_eq!(e.details["field"], "sourceConfiguration.commit");
    }

    #[test]
    fn the_view_shows_the_pin() {
        let mut c: Configuration = serde_json::from_value(json!({ "replicas": 1, "command": "sh" })).unwrap();
        assert_eq!((source_type(&c), source_configuration(&c)), (DIRECT, Value::Null));
        c.source = Some(SourcePin {
            kind: "git".into(),
            repo_url: "https://example.com/a".into(),
            reference: "refs/heads/main".into(),
            commit: "0".repeat(40),
            path: "ferry.json".into(),
            dir: String::new(),
        });
        assert_eq!(source_type(&c), GITHUB);
        assert_eq!(
            source_configuration(&c),
            json!({ "githubRepoUrl": "https://example.com/a", "path": "ferry.json", "commit": "0".repeat(40), "branch": "main" })
        );
    }
}
