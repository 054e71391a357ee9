//! Authorization, exactly as the API design seed's model says ("RBAC + Environment-based"):
//! seven roles, each with permission strings and the environment types it may act in, and
//! per-environment restrictions (`requiredRoles`, `approvalRequired`, `changeWindow`).
//!
//! Pure code: [`decide`] takes a principal's role bindings, the permission an endpoint needs and
//! the scope of the object (its environment and workspace) and answers allow, deny (403, naming
//! what is missing) or hidden (404: the object is in a workspace the caller has no role in, and
//! its existence must not leak). The service layer calls it through
//! [`crate::context::RequestContext::require`]; a table test below walks every role × permission
//! family × environment.
//!
//! Interpretation of the seed, where it is terse:
//! * a permission is `resource:verb`; `*` grants everything, `deployment:*` every verb on a
//!   resource, `*:read` one verb on every resource;
//! * a role's `environments` are matched against an environment's **type** (`production`,
//!   `staging`, `development`, which is also its name for the three built-in ones), `*` matching all;
//! * `release_manager`'s `environment:production` grants the environment permissions
//!   (lock, unlock, configure) on production-type environments only;
//! * `requiredRoles` applies to changes of what runs (the `deployment`, `version`, `rollback`
//!   and `secret` resources, any verb but `read`), not to reads; `deployment_admin` ("full
//!   deployment administration", permissions `*`) always satisfies it;
//! * a role binding may be scoped to a workspace: it applies only to objects of that workspace.
//!   Global objects (environments, users, …) are read with any binding, changed only with an
//!   unscoped one.

use std::fmt;

use serde::{Deserialize, Serialize};

macro_rules! roles {
    ($($variant:ident = $name:literal, [$($perm:literal),*], [$($env:literal),*], $desc:literal;)*) => {
        /// The seed's roles.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Role {
            $($variant,)*
        }

        impl Role {
            pub const ALL: &[Role] = &[$(Role::$variant,)*];

            pub const fn name(self) -> &'static str {
                match self {
                    $(Role::$variant => $name,)*
                }
            }

            /// The role's permission strings, as the seed lists them.
            pub const fn permissions(self) -> &'static [&'static str] {
                match self {
                    $(Role::$variant => &[$($perm),*],)*
                }
            }

            /// The environment types the role may act in (`*`: all).
            pub const fn environments(self) -> &'static [&'static str] {
                match self {
                    $(Role::$variant => &[$($env),*],)*
                }
            }

            pub const fn description(self) -> &'static str {
                match self {
                    $(Role::$variant => $desc,)*
                }
            }

            pub fn parse(s: &str) -> Option<Role> {
                match s {
                    $($name => Some(Role::$variant),)*
                    _ => None,
                }
            }
        }
    };
}

roles! {
    DeploymentAdmin = "deployment_admin", ["*"], ["*"], "Full deployment administration";
    ReleaseManager = "release_manager",
        ["deployment:*", "version:*", "rollback:*", "environment:production"], ["production", "staging"],
        "Release management and production deployments";
    DevopsEngineer = "devops_engineer",
        ["deployment:create", "deployment:update", "deployment:scale", "kubernetes:*", "artifact:*"],
        ["staging", "development"], "DevOps operations and automation";
    Developer = "developer",
        ["deployment:read", "deployment:create", "artifact:push", "logs:read"], ["development"],
        "Development deployments and testing";
    SreEngineer = "sre_engineer",
        ["monitoring:*", "logs:*", "metrics:*", "alerts:*", "deployment:read"], ["*"],
        "Site reliability and monitoring";
    CostAnalyst = "cost_analyst", ["cost:read", "resource:read", "deployment:read"], ["*"],
        "Cost analysis and optimization";
    Viewer = "viewer", ["*:read"], ["*"], "Read-only access";
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Serialize for Role {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for Role {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Role::parse(&s).ok_or_else(|| {
            let names: Vec<_> = Role::ALL.iter().map(|r| r.name()).collect();
            serde::de::Error::custom(format!("unknown role {s:?}; roles are {}", names.join(", ")))
        })
    }
}

/// A role, optionally limited to one workspace's objects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RoleBinding {
    pub role: Role,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^[a-z0-9][a-z0-9-]{0,62}$")]
    pub workspace: Option<String>,
}

impl RoleBinding {
    pub fn global(role: Role) -> Self {
        Self { role, workspace: None }
    }
}

/// How bindings are written in requests: `"developer"` or `{"role":"developer","workspace":"w"}`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum BindingInput {
    Name(Role),
    Scoped(RoleBinding),
}

impl From<BindingInput> for RoleBinding {
    fn from(b: BindingInput) -> Self {
        match b {
            BindingInput::Name(role) => RoleBinding::global(role),
            BindingInput::Scoped(b) => b,
        }
    }
}

/// A permission an endpoint needs: `resource:verb`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Permission {
    pub resource: &'static str,
    pub verb: &'static str,
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.resource, self.verb)
    }
}

impl Permission {
    pub const fn new(resource: &'static str, verb: &'static str) -> Self {
        Self { resource, verb }
    }

    /// Whether this permission changes what runs, so an environment's `requiredRoles` and
    /// `approvalRequired` apply to it.
    pub fn changes_deployments(self) -> bool {
        matches!(self.resource, "deployment" | "version" | "rollback" | "secret") && self.verb != "read"
    }
}

/// The permission of every endpoint, in one place (the README's role table is built from it).
pub mod perm {
    use super::Permission;

    pub const DEPLOYMENT_READ: Permission = Permission::new("deployment", "read");
    pub const DEPLOYMENT_CREATE: Permission = Permission::new("deployment", "create");
    /// Update the configuration, start, stop, restart.
    pub const DEPLOYMENT_UPDATE: Permission = Permission::new("deployment", "update");
    pub const DEPLOYMENT_SCALE: Permission = Permission::new("deployment", "scale");
    pub const DEPLOYMENT_DELETE: Permission = Permission::new("deployment", "delete");
    pub const DEPLOYMENT_PROMOTE: Permission = Permission::new("deployment", "promote");
    pub const VERSION_READ: Permission = Permission::new("version", "read");
    pub const VERSION_CREATE: Permission = Permission::new("version", "create");
    pub const VERSION_DEPLOY: Permission = Permission::new("version", "deploy");
    pub const ROLLBACK_EXECUTE: Permission = Permission::new("rollback", "execute");
    pub const SECRET_READ: Permission = Permission::new("secret", "read");
    pub const SECRET_UPDATE: Permission = Permission::new("secret", "update");
    pub const LOGS_READ: Permission = Permission::new("logs", "read");
    pub const ENVIRONMENT_READ: Permission = Permission::new("environment", "read");
    pub const ENVIRONMENT_CREATE: Permission = Permission::new("environment", "create");
    pub const ENVIRONMENT_UPDATE: Permission = Permission::new("environment", "update");
    pub const ENVIRONMENT_DELETE: Permission = Permission::new("environment", "delete");
    pub const ENVIRONMENT_LOCK: Permission = Permission::new("environment", "lock");
    /// Change an environment's restrictions (required roles, approvals) and change windows: the
    /// rules that bind everyone else, so no role but `*` has it (a release manager must not be
    /// able to switch off the approval of their own production changes).
    pub const POLICY_UPDATE: Permission = Permission::new("policy", "update");
    pub const AGENT_READ: Permission = Permission::new("agent", "read");
    /// Create and revoke bootstrap tokens, revoke agents.
    pub const AGENT_MANAGE: Permission = Permission::new("agent", "manage");
    pub const USER_READ: Permission = Permission::new("user", "read");
    pub const USER_MANAGE: Permission = Permission::new("user", "manage");
    pub const APIKEY_READ: Permission = Permission::new("apikey", "read");
    pub const APIKEY_MANAGE: Permission = Permission::new("apikey", "manage");
    pub const AUDIT_READ: Permission = Permission::new("audit", "read");
    pub const APPROVAL_READ: Permission = Permission::new("approval", "read");
    pub const WORKSPACE_READ: Permission = Permission::new("workspace", "read");
    pub const WORKSPACE_MANAGE: Permission = Permission::new("workspace", "manage");
    pub const PROJECT_READ: Permission = Permission::new("project", "read");
    pub const PROJECT_MANAGE: Permission = Permission::new("project", "manage");
    pub const AIZONE_READ: Permission = Permission::new("aizone", "read");
    pub const AIZONE_MANAGE: Permission = Permission::new("aizone", "manage");
    /// Read webhooks and their delivery logs (platform-wide: webhooks see every workspace).
    pub const WEBHOOK_READ: Permission = Permission::new("webhook", "read");
    /// Create and delete webhooks, redeliver.
    pub const WEBHOOK_MANAGE: Permission = Permission::new("webhook", "manage");
}

/// Whether one of the seed's permission strings grants `p`.
pub fn grants(pattern: &str, p: Permission) -> bool {
    if pattern == "*" {
        return true;
    }
    let Some((resource, verb)) = pattern.split_once(':') else { return false };
    // `environment:production`: the environment permissions, limited (by `decide`) to
    // production-type environments.
    if resource == "environment" && verb == "production" {
        return p.resource == "environment";
    }
    (resource == "*" || resource == p.resource) && (verb == "*" || verb == p.verb)
}

impl Role {
    pub fn grants(self, p: Permission) -> bool {
        self.permissions().iter().any(|pattern| grants(pattern, p))
    }

    /// Whether the role may act in an environment of this type.
    pub fn in_environment(self, p: Permission, env_type: &str) -> bool {
        // `environment:production` limits environment permissions to production.
        if self == Role::ReleaseManager && p.resource == "environment" && env_type != "production" {
            return false;
        }
        self.environments().iter().any(|e| *e == "*" || *e == env_type)
    }
}

/// What the object being acted on belongs to.
#[derive(Debug, Clone, Copy, Default)]
pub struct Scope<'a> {
    /// The environment, with its type and its `requiredRoles`; `None` for objects outside
    /// environments (users, API keys, agents, workspaces).
    pub environment: Option<EnvScope<'a>>,
    /// The object's workspace; `None` for global objects.
    pub workspace: Option<&'a str>,
}

#[derive(Debug, Clone, Copy)]
pub struct EnvScope<'a> {
    pub name: &'a str,
    pub kind: &'a str,
    pub required_roles: &'a [Role],
}

impl<'a> Scope<'a> {
    pub const GLOBAL: Scope<'static> = Scope { environment: None, workspace: None };

    pub fn env(env: EnvScope<'a>, workspace: Option<&'a str>) -> Self {
        Self { environment: Some(env), workspace }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// 404: the object is in a workspace the caller has no binding for.
    Hidden,
    /// 403, with what is missing.
    Deny(Denial),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    /// No role of the caller grants the permission (here).
    Permission { permission: String },
    /// Roles grant the permission, but not in this environment.
    Environment { permission: String, environment: String },
    /// The environment requires one of these roles for changes.
    RequiredRole { environment: String, required: Vec<Role> },
}

/// The decision for `bindings` doing `p` on an object in `scope`.
pub fn decide(bindings: &[RoleBinding], p: Permission, scope: Scope<'_>) -> Decision {
    let applies = |b: &&RoleBinding| match (&b.workspace, scope.workspace) {
        (None, _) => true,
        (Some(w), Some(object)) => w == object,
        // A workspace-scoped binding reads global objects but does not change them.
        (Some(_), None) => p.verb == "read",
    };
    let applicable: Vec<&RoleBinding> = bindings.iter().filter(applies).collect();
    if applicable.is_empty() && scope.workspace.is_some() {
        return Decision::Hidden;
    }
    let granting: Vec<Role> = applicable
        .iter()
        .map(|b| b.role)
        .filter(|r| r.grants(p))
        // `environment:production` is about production environments: never about environments
        // in general (creating one of any type, say).
        .filter(|r| scope.environment.is_some() || !(*r == Role::ReleaseManager && p.resource == "environment"))
        .collect();
    if granting.is_empty() {
        return Decision::Deny(Denial::Permission { permission: p.to_string() });
    }
    let Some(env) = scope.environment else { return Decision::Allow };
    if !granting.iter().any(|r| r.in_environment(p, env.kind)) {
        return Decision::Deny(Denial::Environment { permission: p.to_string(), environment: env.name.to_string() });
    }
    if p.changes_deployments()
        && !env.required_roles.is_empty()
        && !applicable.iter().any(|b| b.role == Role::DeploymentAdmin || env.required_roles.contains(&b.role))
    {
        return Decision::Deny(Denial::RequiredRole {
            environment: env.name.to_string(),
            required: env.required_roles.to_vec(),
        });
    }
    Decision::Allow
}

/// The seed's `environmentRestrictions`, applied to environments of these types when they are
/// created (and to the three built-in ones at first start).
pub fn default_restrictions(env_type: &str) -> (Vec<Role>, bool) {
    match env_type {
        "production" => (vec![Role::DeploymentAdmin, Role::ReleaseManager], true),
        "staging" => (vec![Role::DevopsEngineer, Role::ReleaseManager], false),
        "development" => (vec![Role::Developer, Role::DevopsEngineer], false),
        _ => (Vec::new(), false),
    }
}

#[cfg(test)]
mod tests {
    use super::perm::*;
    use super::*;

    fn env(kind: &'static str) -> EnvScope<'static> {
        let required: &'static [Role] = match kind {
            "production" => &[Role::DeploymentAdmin, Role::ReleaseManager],
            "staging" => &[Role::DevopsEngineer, Role::ReleaseManager],
            "development" => &[Role::Developer, Role::DevopsEngineer],
            _ => &[],
        };
        EnvScope { name: kind, kind, required_roles: required }
    }

    fn allowed(role: Role, p: Permission, kind: &'static str) -> bool {
        decide(&[RoleBinding::global(role)], p, Scope::env(env(kind), None)) == Decision::Allow
    }

    /// The whole matrix: each seed role × a representative action of each permission family ×
    /// each environment, against the answer written out by hand from the seed's model.
    #[test]
    fn the_seed_matrix() {
        use Role::*;
        // (permission, [production, staging, development]) per role; `A` allow, `.` deny.
        #[rustfmt::skip]
        let table: &[(Role, &[(Permission, &str)])] = &[
            (DeploymentAdmin, &[
                (DEPLOYMENT_READ, "AAA"), (DEPLOYMENT_CREATE, "AAA"), (DEPLOYMENT_UPDATE, "AAA"),
                (DEPLOYMENT_SCALE, "AAA"), (DEPLOYMENT_DELETE, "AAA"), (VERSION_DEPLOY, "AAA"),
                (ROLLBACK_EXECUTE, "AAA"), (SECRET_UPDATE, "AAA"), (LOGS_READ, "AAA"),
                (ENVIRONMENT_LOCK, "AAA"), (Permission::new("kubernetes", "read"), "AAA"),
                (Permission::new("metrics", "read"), "AAA"), (Permission::new("cost", "read"), "AAA"),
                (Permission::new("artifact", "push"), "AAA"),
                (WEBHOOK_READ, "AAA"), (WEBHOOK_MANAGE, "AAA"),
            ]),
            (ReleaseManager, &[
                (DEPLOYMENT_READ, "AA."), (DEPLOYMENT_CREATE, "AA."), (DEPLOYMENT_UPDATE, "AA."),
                (DEPLOYMENT_SCALE, "AA."), (DEPLOYMENT_DELETE, "AA."), (VERSION_DEPLOY, "AA."),
                (ROLLBACK_EXECUTE, "AA."), (SECRET_UPDATE, "..."), (LOGS_READ, "..."),
                (ENVIRONMENT_LOCK, "A.."), (Permission::new("kubernetes", "read"), "..."),
                (Permission::new("metrics", "read"), "..."), (Permission::new("cost", "read"), "..."),
                (Permission::new("artifact", "push"), "..."),
                (WEBHOOK_READ, "..."), (WEBHOOK_MANAGE, "..."),
            ]),
            (DevopsEngineer, &[
                // devops_engineer lacks deployment:read: the seed lists none for it.
                (DEPLOYMENT_READ, "..."), (DEPLOYMENT_CREATE, ".AA"), (DEPLOYMENT_UPDATE, ".AA"),
                (DEPLOYMENT_SCALE, ".AA"), (DEPLOYMENT_DELETE, "..."), (VERSION_DEPLOY, "..."),
                (ROLLBACK_EXECUTE, "..."), (SECRET_UPDATE, "..."), (LOGS_READ, "..."),
                (ENVIRONMENT_LOCK, "..."), (Permission::new("kubernetes", "read"), ".AA"),
                (Permission::new("metrics", "read"), "..."), (Permission::new("cost", "read"), "..."),
                (Permission::new("artifact", "push"), ".AA"),
                (WEBHOOK_READ, "..."), (WEBHOOK_MANAGE, "..."),
            ]),
            (Developer, &[
                (DEPLOYMENT_READ, "..A"), (DEPLOYMENT_CREATE, "..A"), (DEPLOYMENT_UPDATE, "..."),
                (DEPLOYMENT_SCALE, "..."), (DEPLOYMENT_DELETE, "..."), (VERSION_DEPLOY, "..."),
                (ROLLBACK_EXECUTE, "..."), (SECRET_UPDATE, "..."), (LOGS_READ, "..A"),
                (ENVIRONMENT_LOCK, "..."), (Permission::new("kubernetes", "read"), "..."),
                (Permission::new("metrics", "read"), "..."), (Permission::new("cost", "read"), "..."),
                (Permission::new("artifact", "push"), "..A"),
                (WEBHOOK_READ, "..."), (WEBHOOK_MANAGE, "..."),
            ]),
            (SreEngineer, &[
                (DEPLOYMENT_READ, "AAA"), (DEPLOYMENT_CREATE, "..."), (DEPLOYMENT_UPDATE, "..."),
                (DEPLOYMENT_SCALE, "..."), (DEPLOYMENT_DELETE, "..."), (VERSION_DEPLOY, "..."),
                (ROLLBACK_EXECUTE, "..."), (SECRET_UPDATE, "..."), (LOGS_READ, "AAA"),
                (ENVIRONMENT_LOCK, "..."), (Permission::new("kubernetes", "read"), "..."),
                (Permission::new("metrics", "read"), "AAA"), (Permission::new("cost", "read"), "..."),
                (Permission::new("artifact", "push"), "..."),
                (WEBHOOK_READ, "..."), (WEBHOOK_MANAGE, "..."),
            ]),
            (CostAnalyst, &[
                (DEPLOYMENT_READ, "AAA"), (DEPLOYMENT_CREATE, "..."), (DEPLOYMENT_UPDATE, "..."),
                (DEPLOYMENT_SCALE, "..."), (DEPLOYMENT_DELETE, "..."), (VERSION_DEPLOY, "..."),
                (ROLLBACK_EXECUTE, "..."), (SECRET_UPDATE, "..."), (LOGS_READ, "..."),
                (ENVIRONMENT_LOCK, "..."), (Permission::new("kubernetes", "read"), "..."),
                (Permission::new("metrics", "read"), "..."), (Permission::new("cost", "read"), "AAA"),
                (Permission::new("artifact", "push"), "..."),
                (WEBHOOK_READ, "..."), (WEBHOOK_MANAGE, "..."),
            ]),
            (Viewer, &[
                (DEPLOYMENT_READ, "AAA"), (DEPLOYMENT_CREATE, "..."), (DEPLOYMENT_UPDATE, "..."),
                (DEPLOYMENT_SCALE, "..."), (DEPLOYMENT_DELETE, "..."), (VERSION_DEPLOY, "..."),
                (ROLLBACK_EXECUTE, "..."), (SECRET_UPDATE, "..."), (LOGS_READ, "AAA"),
                (ENVIRONMENT_LOCK, "..."), (Permission::new("kubernetes", "read"), "AAA"),
                (Permission::new("metrics", "read"), "AAA"), (Permission::new("cost", "read"), "AAA"),
                (Permission::new("artifact", "push"), "..."),
                (WEBHOOK_READ, "AAA"), (WEBHOOK_MANAGE, "..."),
            ]),
        ];
        assert_eq!(table.len(), Role::ALL.len(), "every role is in the table");
        let mut checked = 0;
        for (role, rows) in table {
            for (p, expected) in *rows {
                for (i, kind) in ["production", "staging", "development"].into_iter().enumerate() {
                    let want = expected.as_bytes()[i] == b'A';
                    assert_eq!(allowed(*role, *p, kind), want, "{role} {p} in {kind}");
                    checked += 1;
                }
            }
        }
        assert_eq!(checked, 7 * 16 * 3);
    }

    #[test]
    fn denials_name_what_is_missing() {
        let dev = [RoleBinding::global(Role::Developer)];
        assert_eq!(
            decide(&dev, DEPLOYMENT_CREATE, Scope::env(env("production"), None)),
            Decision::Deny(Denial::Environment {
                permission: "deployment:create".into(),
                environment: "production".into()
            })
        );
        assert_eq!(
            decide(&dev, DEPLOYMENT_DELETE, Scope::env(env("development"), None)),
            Decision::Deny(Denial::Permission { permission: "deployment:delete".into() })
        );
        // requiredRoles bites a role that has the permission and the environment type: a
        // devops engineer may create in an environment of type staging unless that environment
        // requires other roles.
        let strict = EnvScope { name: "staging-eu", kind: "staging", required_roles: &[Role::ReleaseManager] };
        assert_eq!(
            decide(&[RoleBinding::global(Role::DevopsEngineer)], DEPLOYMENT_CREATE, Scope::env(strict, None)),
            Decision::Deny(Denial::RequiredRole {
                environment: "staging-eu".into(),
                required: vec![Role::ReleaseManager]
            })
        );
        // Reads are not restricted by requiredRoles.
        assert_eq!(
            decide(&[RoleBinding::global(Role::Viewer)], DEPLOYMENT_READ, Scope::env(strict, None)),
            Decision::Allow
        );
    }

    #[test]
    fn workspace_bindings_isolate_both_ways() {
        let a = [RoleBinding { role: Role::DeploymentAdmin, workspace: Some("team-a".into()) }];
        let b = [RoleBinding { role: Role::Viewer, workspace: Some("team-b".into()) }];
        let dev = env("development");
        assert_eq!(decide(&a, DEPLOYMENT_DELETE, Scope::env(dev, Some("team-a"))), Decision::Allow);
        assert_eq!(decide(&a, DEPLOYMENT_READ, Scope::env(dev, Some("team-b"))), Decision::Hidden);
        assert_eq!(decide(&b, DEPLOYMENT_READ, Scope::env(dev, Some("team-b"))), Decision::Allow);
        assert_eq!(decide(&b, DEPLOYMENT_READ, Scope::env(dev, Some("team-a"))), Decision::Hidden);
        // Inside its workspace a binding still needs the permission: 403, not 404.
        assert!(matches!(decide(&b, DEPLOYMENT_DELETE, Scope::env(dev, Some("team-b"))), Decision::Deny(_)));
        // Global objects: read with a scoped binding, never changed by one.
        assert_eq!(decide(&a, ENVIRONMENT_READ, Scope::GLOBAL), Decision::Allow);
        assert!(matches!(decide(&a, ENVIRONMENT_CREATE, Scope::GLOBAL), Decision::Deny(_)));
        // An unscoped binding sees every workspace.
        let admin = [RoleBinding::global(Role::DeploymentAdmin)];
        assert_eq!(decide(&admin, DEPLOYMENT_DELETE, Scope::env(dev, Some("team-b"))), Decision::Allow);
    }

    /// Webhooks are platform-wide: only unscoped bindings count (`require_global`), and of the
    /// seed's roles `*` manages them and `*:read` reads them.
    #[test]
    fn webhook_permissions_are_global() {
        for role in Role::ALL {
            let global = [RoleBinding::global(*role)];
            let read = decide(&global, WEBHOOK_READ, Scope::GLOBAL) == Decision::Allow;
            let manage = decide(&global, WEBHOOK_MANAGE, Scope::GLOBAL) == Decision::Allow;
            assert_eq!(read, matches!(role, Role::DeploymentAdmin | Role::Viewer), "{role} read");
            assert_eq!(manage, *role == Role::DeploymentAdmin, "{role} manage");
        }
        // A workspace-scoped admin does not manage them.
        let scoped = [RoleBinding { role: Role::DeploymentAdmin, workspace: Some("team-a".into()) }];
        assert!(matches!(decide(&scoped, WEBHOOK_MANAGE, Scope::GLOBAL), Decision::Deny(_)));
    }

    #[test]
    fn permission_patterns() {
        assert!(grants("*", DEPLOYMENT_DELETE));
        assert!(grants("deployment:*", DEPLOYMENT_DELETE));
        assert!(!grants("deployment:*", VERSION_DEPLOY));
        assert!(grants("*:read", AUDIT_READ));
        assert!(!grants("*:read", USER_MANAGE));
        assert!(grants("environment:production", ENVIRONMENT_LOCK));
        assert!(!grants("environment:production", DEPLOYMENT_READ));
        assert!(!grants("garbage", DEPLOYMENT_READ));
        assert!(DEPLOYMENT_SCALE.changes_deployments() && !DEPLOYMENT_READ.changes_deployments());
        assert!(!ENVIRONMENT_LOCK.changes_deployments());
        // Only `*` changes the rules: not even a release manager in production.
        for role in Role::ALL {
            let prod = EnvScope { name: "production", kind: "production", required_roles: &[] };
            let allowed =
                decide(&[RoleBinding::global(*role)], POLICY_UPDATE, Scope::env(prod, None)) == Decision::Allow;
            assert_eq!(allowed, *role == Role::DeploymentAdmin, "{role}");
        }
        // `environment:production` does not create environments.
        let rm = [RoleBinding::global(Role::ReleaseManager)];
        assert!(matches!(decide(&rm, ENVIRONMENT_CREATE, Scope::GLOBAL), Decision::Deny(_)));
        let prod = EnvScope { name: "production", kind: "production", required_roles: &[] };
        assert_eq!(decide(&rm, ENVIRONMENT_LOCK, Scope::env(prod, None)), Decision::Allow);
    }

    #[test]
    fn roles_parse_and_bindings_accept_both_forms() {
        for r in Role::ALL {
            assert_eq!(Role::parse(r.name()), Some(*r));
        }
        let v: Vec<BindingInput> =
            serde_json::from_str(r#"["developer", {"role": "viewer", "workspace": "w"}]"#).unwrap();
        let v: Vec<RoleBinding> = v.into_iter().map(Into::into).collect();
        assert_eq!(v[0], RoleBinding::global(Role::Developer));
        assert_eq!(v[1], RoleBinding { role: Role::Viewer, workspace: Some("w".into()) });
        assert!(serde_json::from_str::<Vec<BindingInput>>(r#"["root"]"#).is_err());
    }
}
