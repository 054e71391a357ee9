//! Principals: who is calling. Authenticates each request (the bootstrap admin token, a user's
//! login session, or an API key), logs users in (argon2id, rate limited per username and per
//! source address) and manages users and API keys.
//!
//! Credentials are random tokens with a readable prefix, stored only as SHA-256 hashes:
//! `ferry_admin_…` (bootstrap), `ferry_session_…` (login, 12 h), `ferry_key_…` (API keys,
//! shown once).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use axum::http::{HeaderMap, StatusCode, header};
use serde_json::json;
use tokio::time::Instant;

use crate::AppState;
use crate::api::{ApiError, ApiResult, ErrorCode};
use crate::authz::{RoleBinding, perm};
use crate::context::{Principal, PrincipalKind, RequestContext};
use crate::domain::AuditOutcome;
use crate::ids::{hash_secret, now_ms, random_hex, random_id};
use crate::store::{ApiKeyRecord, Credential, UserRecord};

pub const SESSION_PREFIX: &str = "ferry_session_";
pub const KEY_PREFIX: &str = "ferry_key_";
pub const ADMIN_PREFIX: &str = "ferry_admin_";
/// How long a login session lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// API keys expire after this many days unless asked otherwise (at most [`MAX_KEY_DAYS`]).
pub const DEFAULT_KEY_DAYS: i64 = 90;
pub const MAX_KEY_DAYS: i64 = 3650;
pub const MIN_PASSWORD_LEN: usize = 12;
pub const MAX_PASSWORD_LEN: usize = 1024;
const MAX_CREDENTIAL_LEN: usize = 256;
const MAX_BINDINGS: usize = 32;

/// Authenticates a request from its headers: `X-API-Key`, or `Authorization: Bearer` with an
/// admin token, a session token or an API key.
pub async fn authenticate(state: &AppState, headers: &HeaderMap) -> ApiResult<Principal> {
    let presented = if let Some(v) = headers.get("x-api-key") {
        v.to_str().ok().map(str::trim)
    } else {
        headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(crate::api::bearer_token)
    };
    let Some(token) = presented.filter(|t| !t.is_empty() && t.len() <= MAX_CREDENTIAL_LEN) else {
        return Err(ApiError::unauthorized());
    };
    let hash = hash_secret(token);
    let now = now_ms();
    let refused = |what: &str| {
        ApiError::new(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, format!("this {what}"))
            .with_details(json!({ "reason": what }))
    };
    if token.starts_with(KEY_PREFIX) {
        return match state.store.api_key_by_hash(&hash, now).await? {
            Credential::Valid(k) => {
                // A key never holds more than the user who made it holds now: a demoted user's
                // keys are demoted with it.
                let roles = match k.owner.strip_prefix("user:") {
                    Some(username) => match state.store.get_user(username).await?.filter(|u| u.username == username) {
                        Some(owner) => k.roles.into_iter().filter(|b| covers(&owner.roles, b)).collect(),
                        None => return Err(refused("API key was revoked")),
                    },
                    None => k.roles,
                };
                Ok(Principal { kind: PrincipalKind::ApiKey, id: k.id, name: k.name, roles, owner: Some(k.owner) })
            }
            Credential::Expired => Err(refused("API key has expired")),
            Credential::Revoked => Err(refused("API key was revoked")),
            Credential::Unknown => Err(ApiError::unauthorized()),
        };
    }
    if token.starts_with(SESSION_PREFIX) {
        return match state.store.session_user(&hash, now).await? {
            Credential::Valid(u) => Ok(user_principal(u)),
            Credential::Expired => Err(refused("session has expired; log in again")),
            Credential::Revoked | Credential::Unknown => Err(ApiError::unauthorized()),
        };
    }
    match state.store.admin_token_by_hash(&hash).await? {
        Some(id) => Ok(Principal::admin(&id)),
        None => Err(ApiError::unauthorized()),
    }
}

/// Whether `held` bindings include `b` (the same role, unscoped or in the same workspace).
pub(crate) fn covers(held: &[RoleBinding], b: &RoleBinding) -> bool {
    held.iter().any(|h| h.role == b.role && (h.workspace.is_none() || h.workspace == b.workspace))
}

fn user_principal(u: UserRecord) -> Principal {
    Principal { kind: PrincipalKind::User, id: u.id, name: u.username, roles: u.roles, owner: None }
}

// ---- passwords ------------------------------------------------------------------------------

/// At most this many password hashes run at once (each takes 19 MiB and a core for tens of
/// milliseconds): a flood of logins queues instead of exhausting memory and the blocking pool.
fn hashing_permits() -> &'static tokio::sync::Semaphore {
    static PERMITS: OnceLock<tokio::sync::Semaphore> = OnceLock::new();
    PERMITS.get_or_init(|| {
        let cores = std::thread::available_parallelism().map(usize::from).unwrap_or(1);
        tokio::sync::Semaphore::new(cores.clamp(1, 4))
    })
}

/// argon2id with the crate's defaults (OWASP's recommended m=19 MiB, t=2, p=1), off the async
/// threads, a few at a time.
async fn hash_password(password: String) -> ApiResult<String> {
    let _permit = hashing_permits().acquire().await.map_err(|e| ApiError::internal().with_cause(e))?;
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::encode_b64(&random_salt()).expect("16 bytes is a valid salt");
        argon2::Argon2::default().hash_password(password.as_bytes(), &salt).map(|h| h.to_string())
    })
    .await
    .map_err(|e| ApiError::internal().with_cause(e))?
    .map_err(|e| ApiError::internal().with_cause(e))
}

fn random_salt() -> [u8; 16] {
    use ring::rand::SecureRandom;
    let mut salt = [0u8; 16];
    ring::rand::SystemRandom::new().fill(&mut salt).expect("system random number generator");
    salt
}

/// Verifies against a stored hash; for an unknown user against a fixed hash, so that the
/// answer takes as long either way.
async fn verify_password(password: String, stored: Option<String>) -> bool {
    static DUMMY: OnceLock<String> = OnceLock::new();
    let stored = stored.unwrap_or_else(|| {
        DUMMY
            .get_or_init(|| {
                let salt = SaltString::encode_b64(&random_salt()).expect("16 bytes is a valid salt");
                argon2::Argon2::default().hash_password(b"not a password", &salt).expect("hash").to_string()
            })
            .clone()
    });
    let Ok(_permit) = hashing_permits().acquire().await else { return false };
    tokio::task::spawn_blocking(move || {
        PasswordHash::new(&stored)
            .is_ok_and(|h| argon2::Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
    })
    .await
    .unwrap_or(false)
}

// ---- login rate limiting ------------------------------------------------------------------

/// Login attempts per username and per source address in a window. An attempt is counted
/// *before* its password is checked (so parallel guesses cannot all slip past the check while
/// the slow hash runs), and forgiven when it succeeds. Past the limit, further attempts are
/// refused (429) until the window of the first one ends; only the first refusal per window is
/// audited (the rest are logged), so a flood cannot fill the audit table. Per control-plane
/// replica.
#[derive(Clone, Default)]
pub struct LoginLimiter {
    attempts: Arc<Mutex<HashMap<String, Attempts>>>,
}

#[derive(Debug, Clone, Copy)]
struct Attempts {
    count: u32,
    first: Instant,
    refusal_recorded: bool,
}

/// A refused attempt: when to retry, and whether it is the first refusal of its window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttled {
    pub retry_after: Duration,
    pub first: bool,
}

pub const LOGIN_WINDOW: Duration = Duration::from_secs(15 * 60);
pub const MAX_FAILURES_PER_USER: u32 = 5;
pub const MAX_FAILURES_PER_ADDRESS: u32 = 20;
const LIMITER_MAX_KEYS: usize = 100_000;

impl LoginLimiter {
    /// Counts an attempt under each `(key, limit)`, unless one of them is over its limit: then
    /// nothing is counted and the attempt is refused.
    fn attempt(&self, keys: &[(&str, u32)], now: Instant) -> Result<(), Throttled> {
        let mut map = self.attempts.lock().expect("limiter lock");
        if map.len() >= LIMITER_MAX_KEYS {
            map.retain(|_, a| now < a.first + LOGIN_WINDOW);
        }
        for (key, max) in keys {
            if let Some(a) = map.get_mut(*key)
                && a.count >= *max
                && now < a.first + LOGIN_WINDOW
            {
                let first = !a.refusal_recorded;
                a.refusal_recorded = true;
                return Err(Throttled { retry_after: a.first + LOGIN_WINDOW - now, first });
            }
        }
        for (key, _) in keys {
            let a = map.entry((*key).to_string()).or_insert(Attempts { count: 0, first: now, refusal_recorded: false });
            if now >= a.first + LOGIN_WINDOW {
                *a = Attempts { count: 0, first: now, refusal_recorded: false };
            }
            a.count += 1;
        }
        Ok(())
    }

    /// A successful login: the username starts over, the address gets its attempt back.
    fn succeeded(&self, user_key: &str, addr_key: &str) {
        let mut map = self.attempts.lock().expect("limiter lock");
        map.remove(user_key);
        if let Some(a) = map.get_mut(addr_key) {
            a.count = a.count.saturating_sub(1);
        }
    }
}

/// A successful login.
pub struct Session {
    pub token: String,
    pub expires_at: i64,
    pub user: UserRecord,
}

/// Logs a user in. Failures (unknown user or wrong password, not told apart) are audited and
/// counted; past the limits the answer is 429 without checking the password.
pub async fn login(
    state: &AppState,
    username: &str,
    password: String,
    source: Option<&str>,
    request_id: &str,
) -> ApiResult<Session> {
    let now = Instant::now();
    let user_key = format!("user:{username}");
    let addr_key = format!("addr:{}", source.unwrap_or("unknown"));
    let audit = |action: &str, outcome: AuditOutcome| {
        crate::store::Audit::new(format!("user:{username}"), action, format!("user:{username}"), request_id, json!({}))
            .with_outcome(outcome)
            .with_object_type("user")
            .with_source(source.map(str::to_string))
    };
    let limits = [(user_key.as_str(), MAX_FAILURES_PER_USER), (addr_key.as_str(), MAX_FAILURES_PER_ADDRESS)];
    if let Err(t) = state.login_limiter.attempt(&limits, now) {
        tracing::warn!(username, source, "login refused: too many failed attempts");
        if t.first
            && let Err(e) = state.store.record_audit(&audit("auth.login", AuditOutcome::Denied)).await
        {
            tracing::error!(error = %e, "cannot record a throttled login");
        }
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::TooManyAttempts,
            "too many failed logins; try again later",
        )
        .with_details(json!({ "retryAfterSeconds": t.retry_after.as_secs().max(1) })));
    }
    let user = state.store.get_user(username).await?.filter(|u| u.username == username);
    let ok = verify_password(password, user.as_ref().map(|u| u.password_hash.clone())).await;
    let Some(user) = user.filter(|_| ok) else {
        tracing::warn!(username, source, "login failed");
        state.store.record_audit(&audit("auth.login", AuditOutcome::Failed)).await?;
        return Err(ApiError::new(StatusCode::UNAUTHORIZED, ErrorCode::LoginFailed, "wrong username or password"));
    };
    state.login_limiter.succeeded(&user_key, &addr_key);
    let token = format!("{SESSION_PREFIX}{}", random_hex(32));
    let at = now_ms();
    let expires_at = at + SESSION_TTL.as_millis() as i64;
    let a = crate::store::Audit::new(
        format!("user:{}", user.username),
        "auth.login",
        user.id.clone(),
        request_id,
        json!({ "expiresAt": crate::ids::rfc3339(expires_at) }),
    )
    .with_source(source.map(str::to_string));
    state.store.create_session(&user.id, &hash_secret(&token), expires_at, &a, at).await?;
    Ok(Session { token, expires_at, user })
}

// ---- users ------------------------------------------------------------------------------------

pub fn validate_username(name: &str) -> ApiResult<()> {
    let ok = (1..=64).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@'))
        && name.as_bytes()[0].is_ascii_alphanumeric();
    if !ok {
        return Err(ApiError::validation(
            "username",
            "1-64 characters: letters, digits, '.', '_', '-', '@', starting with a letter or digit",
        ));
    }
    Ok(())
}

pub fn validate_password(p: &str) -> ApiResult<()> {
    let n = p.chars().count();
    if !(MIN_PASSWORD_LEN..=MAX_PASSWORD_LEN).contains(&n) {
        return Err(ApiError::validation(
            "password",
            format!("between {MIN_PASSWORD_LEN} and {MAX_PASSWORD_LEN} characters"),
        ));
    }
    Ok(())
}

fn validate_bindings(roles: &[RoleBinding], allow_empty: bool) -> ApiResult<()> {
    if roles.is_empty() && !allow_empty {
        return Err(ApiError::validation("roles", "at least one role"));
    }
    if roles.len() > MAX_BINDINGS {
        return Err(ApiError::validation("roles", format!("at most {MAX_BINDINGS} role bindings")));
    }
    for b in roles {
        if let Some(w) = &b.workspace {
            crate::model::validate_name("roles.workspace", w).map_err(crate::deployments::invalid)?;
        }
    }
    Ok(())
}

fn user_not_found(id: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, ErrorCode::UserNotFound, format!("user {id:?} not found"))
        .with_details(json!({ "userId": id }))
}

pub struct Users<'a> {
    state: &'a AppState,
}

impl<'a> Users<'a> {
    pub fn new(state: &'a AppState) -> Self {
        Self { state }
    }

    pub async fn create(
        &self,
        ctx: &RequestContext,
        username: String,
        password: String,
        roles: Vec<RoleBinding>,
    ) -> ApiResult<UserRecord> {
        validate_username(&username)?;
        validate_password(&password)?;
        validate_bindings(&roles, true)?;
        ctx.require_global(perm::USER_MANAGE)?;
        let now = now_ms();
        let user = UserRecord {
            id: random_id("user"),
            username,
            password_hash: hash_password(password).await?,
            roles,
            created_by: ctx.principal.audit_name(),
            created_at: now,
            updated_at: now,
        };
        let audit = ctx.audit("user.create", &user.id, json!({ "username": user.username, "roles": user.roles }));
        if !self.state.store.create_user(&user, &audit).await? {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                ErrorCode::UserExists,
                format!("user {:?} already exists", user.username),
            ));
        }
        Ok(user)
    }

    pub async fn list(&self, ctx: &RequestContext, offset: i64, limit: i64) -> ApiResult<(Vec<UserRecord>, i64)> {
        ctx.require_global(perm::USER_READ)?;
        Ok(self.state.store.list_users(offset, limit).await?)
    }

    /// A user may read itself; others need `user:read`.
    pub async fn get(&self, ctx: &RequestContext, id: &str) -> ApiResult<UserRecord> {
        let user = self.state.store.get_user(id).await?;
        let own = user.as_ref().is_some_and(|u| ctx.principal.kind == PrincipalKind::User && u.id == ctx.principal.id);
        if !own {
            ctx.require_global(perm::USER_READ)?;
        }
        user.ok_or_else(|| user_not_found(id))
    }

    /// Changes roles (`user:manage`) and/or the password (`user:manage`, or the user itself
    /// with its current password). A new password ends the user's sessions.
    pub async fn update(
        &self,
        ctx: &RequestContext,
        id: &str,
        password: Option<String>,
        current_password: Option<String>,
        roles: Option<Vec<RoleBinding>>,
    ) -> ApiResult<UserRecord> {
        if let Some(p) = &password {
            validate_password(p)?;
        }
        if let Some(r) = &roles {
            validate_bindings(r, true)?;
        }
        let user = self.state.store.get_user(id).await?;
        let own = user.as_ref().is_some_and(|u| ctx.principal.kind == PrincipalKind::User && u.id == ctx.principal.id);
        if roles.is_some() || !own {
            ctx.require_global(perm::USER_MANAGE)?;
        }
        let user = user.ok_or_else(|| user_not_found(id))?;
        if own
            && password.is_some()
            && roles.is_none()
            && !ctx.allows_global(perm::USER_MANAGE)
            && !verify_password(current_password.unwrap_or_default(), Some(user.password_hash.clone())).await
        {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                ErrorCode::Forbidden,
                "changing your own password needs currentPassword",
            )
            .with_details(json!({ "field": "currentPassword" })));
        }
        let hash = match password {
            Some(p) => Some(hash_password(p).await?),
            None => None,
        };
        let details = json!({ "username": user.username, "passwordChanged": hash.is_some(), "roles": roles });
        let audit = ctx.audit("user.update", &user.id, details);
        self.state
            .store
            .update_user(&user.id, hash.as_deref(), roles.as_deref(), &audit, now_ms())
            .await?
            .ok_or_else(|| user_not_found(id))
    }

    /// Deletes a user: its sessions end and the API keys it created are revoked.
    pub async fn delete(&self, ctx: &RequestContext, id: &str) -> ApiResult<()> {
        ctx.require_global(perm::USER_MANAGE)?;
        let user = self.state.store.get_user(id).await?.ok_or_else(|| user_not_found(id))?;
        let audit = ctx.audit("user.delete", &user.id, json!({ "username": user.username }));
        let owner = format!("user:{}", user.username);
        if !self.state.store.delete_user(&user.id, &owner, &audit, now_ms()).await? {
            return Err(user_not_found(id));
        }
        Ok(())
    }
}

// ---- API keys -------------------------------------------------------------------------------

fn key_not_found(id: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, ErrorCode::ApiKeyNotFound, format!("API key {id:?} not found"))
        .with_details(json!({ "apiKeyId": id }))
}

pub struct ApiKeys<'a> {
    state: &'a AppState,
}

impl<'a> ApiKeys<'a> {
    pub fn new(state: &'a AppState) -> Self {
        Self { state }
    }

    /// Creates a key and returns it with its plaintext (shown this once). With `apikey:manage`
    /// any roles may be granted; otherwise only roles the caller holds itself (no escalation).
    pub async fn create(
        &self,
        ctx: &RequestContext,
        name: String,
        roles: Vec<RoleBinding>,
        expires_in_days: Option<i64>,
    ) -> ApiResult<(ApiKeyRecord, String)> {
        crate::model::validate_name("name", &name).map_err(crate::deployments::invalid)?;
        validate_bindings(&roles, false)?;
        let days = expires_in_days.unwrap_or(DEFAULT_KEY_DAYS);
        if !(1..=MAX_KEY_DAYS).contains(&days) {
            return Err(ApiError::validation("expiresInDays", format!("between 1 and {MAX_KEY_DAYS}")));
        }
        if !ctx.allows_global(perm::APIKEY_MANAGE)
            && let Some(extra) = roles.iter().find(|b| !covers(&ctx.principal.roles, b))
        {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                ErrorCode::Forbidden,
                format!("you cannot grant role {} that you do not hold (apikey:manage can)", extra.role),
            )
            .with_details(json!({ "missingPermission": "apikey:manage", "role": extra.role })));
        }
        let now = now_ms();
        let key = format!("{KEY_PREFIX}{}", random_hex(20));
        let record = ApiKeyRecord {
            id: random_id("key"),
            name,
            key_hash: hash_secret(&key),
            roles,
            owner: ctx.principal.identity(),
            created_at: now,
            expires_at: Some(now + days * 86_400_000),
            revoked_at: None,
        };
        let audit = ctx.audit(
            "apikey.create",
            &record.id,
            json!({ "name": record.name, "roles": record.roles, "expiresInDays": days }),
        );
        self.state.store.create_api_key(&record, &audit).await?;
        Ok((record, key))
    }

    /// All keys with `apikey:read`; otherwise the caller's own.
    pub async fn list(&self, ctx: &RequestContext, offset: i64, limit: i64) -> ApiResult<(Vec<ApiKeyRecord>, i64)> {
        let owner = (!ctx.allows_global(perm::APIKEY_READ)).then(|| ctx.principal.identity());
        Ok(self.state.store.list_api_keys(owner.as_deref(), offset, limit).await?)
    }

    /// Revokes a key: its owner may, and `apikey:manage` may revoke any. Someone else's key is
    /// not found.
    pub async fn revoke(&self, ctx: &RequestContext, id: &str) -> ApiResult<()> {
        let key = self.state.store.get_api_key(id).await?;
        let own = key.as_ref().is_some_and(|k| k.owner == ctx.principal.identity());
        if !own && !ctx.allows_global(perm::APIKEY_MANAGE) {
            if key.is_some() && ctx.allows_global(perm::APIKEY_READ) {
                ctx.require_global(perm::APIKEY_MANAGE)?;
            }
            return Err(key_not_found(id));
        }
        let key = key.ok_or_else(|| key_not_found(id))?;
        let audit = ctx.audit("apikey.revoke", &key.id, json!({ "name": key.name }));
        if !self.state.store.revoke_api_key(&key.id, &audit, now_ms()).await? {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                ErrorCode::ApiKeyNotFound,
                format!("API key {id:?} is already revoked"),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_limiter_counts_attempts_before_they_finish_and_refuses_until_the_window_ends() {
        let l = LoginLimiter::default();
        let keys = [("user:a", MAX_FAILURES_PER_USER), ("addr:1", MAX_FAILURES_PER_ADDRESS)];
        // Five attempts in flight at once all count: the sixth is refused before any finishes.
        for _ in 0..MAX_FAILURES_PER_USER {
            assert!(l.attempt(&keys, Instant::now()).is_ok());
        }
        let t = l.attempt(&keys, Instant::now()).unwrap_err();
        assert_eq!(t, Throttled { retry_after: LOGIN_WINDOW, first: true });
        assert!(!l.attempt(&keys, Instant::now()).unwrap_err().first, "only the first refusal is audited");
        // Other users from another address are not affected.
        assert!(l.attempt(&[("user:b", MAX_FAILURES_PER_USER), ("addr:2", 20)], Instant::now()).is_ok());
        tokio::time::advance(LOGIN_WINDOW).await;
        assert!(l.attempt(&keys, Instant::now()).is_ok(), "a new window starts");
        // A success gives the attempts back.
        l.succeeded("user:a", "addr:1");
        for _ in 0..MAX_FAILURES_PER_USER {
            assert!(l.attempt(&keys, Instant::now()).is_ok());
        }
        // The address limit holds across usernames.
        let l = LoginLimiter::default();
        for i in 0..MAX_FAILURES_PER_ADDRESS {
            let user = format!("user:{i}");
            assert!(
                l.attempt(&[(&user, MAX_FAILURES_PER_USER), ("addr:9", MAX_FAILURES_PER_ADDRESS)], Instant::now())
                    .is_ok()
            );
        }
        assert!(
            l.attempt(&[("user:new", MAX_FAILURES_PER_USER), ("addr:9", MAX_FAILURES_PER_ADDRESS)], Instant::now())
                .is_err()
        );
    }

    #[tokio::test]
    async fn passwords_hash_and_verify() {
        let h = hash_password("correct horse battery".into()).await.unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("correct horse battery".into(), Some(h.clone())).await);
        assert!(!verify_password("wrong horse battery".into(), Some(h)).await);
        assert!(!verify_password("anything at all".into(), None).await);
        assert!(!verify_password("x".into(), Some("not a hash".into())).await);
    }
}
