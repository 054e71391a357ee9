//! Webhooks and per-request callbacks (seed 004's "submit and notify").
//!
//! * A webhook subscribes a URL to event types (`deployment.status`, `operation.completed`,
//!   `approval.requested`, `approval.decided`, `alert.fired` — reserved, nothing emits it yet —
//!   or `*`). Its signing secret is generated unless given, shown once, and stored sealed under
//!   the master key like secrets are (associated data naming the webhook).
//! * A mutation answered with an operation may carry `Ferry-Callback-Url` (and
//!   `Ferry-Callback-Secret`): the operation's `operation.completed` also goes there
//!   ([`parse_callback`], stored with the operation in its transaction).
//! * Events are queued as deliveries in the transaction of the change they report
//!   (`store/webhooks.rs`: an outbox), and sent by one worker per replica ([`worker`]): signed
//!   POSTs ([`signature`]), retried with exponential backoff and jitter ([`retry_delay`]) until a
//!   2xx or the last attempt — at least once, so receivers deduplicate by `Ferry-Delivery` or
//!   the event id.
//!
//! Permissions are platform-wide (`webhook:read`, `webhook:manage`, unscoped roles only): a
//! webhook sees the events of every workspace.

pub mod worker;

use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use ring::hmac;
use serde_json::{Value, json};

use crate::AppState;
use crate::api::{ApiError, ApiResult, ErrorCode};
use crate::authz::perm;
use crate::context::RequestContext;
use crate::domain::EventType;
use crate::ids::{now_ms, random_hex, random_id, rfc3339};
use crate::secrets::MasterKey;
use crate::store::{ApprovalRecord, DeliveryRecord, EventRecord, OperationCallback, OperationRecord, WebhookRecord};

/// Longest webhook or callback URL.
pub const MAX_URL_LEN: usize = 2048;
pub const MAX_DESCRIPTION_LEN: usize = 1024;
/// Signing secrets given by users: this many printable ASCII characters.
pub const SECRET_LEN: std::ops::RangeInclusive<usize> = 16..=256;
/// The header a mutation names its callback URL in, and its signing secret.
pub const CALLBACK_URL_HEADER: &str = "ferry-callback-url";
pub const CALLBACK_SECRET_HEADER: &str = "ferry-callback-secret";
/// Retry delays grow up to this.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(3600);

/// An event as delivered: `{"id", "type", "createdAt", "data"}`.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub id: String,
    pub kind: EventType,
    pub created_at: i64,
    pub data: Value,
}

impl Event {
    pub fn new(kind: EventType, created_at: i64, data: Value) -> Self {
        Self { id: random_id("evt"), kind, created_at, data }
    }

    /// The body every receiver gets.
    pub fn payload(&self) -> String {
        json!({ "id": self.id, "type": self.kind, "createdAt": rfc3339(self.created_at), "data": self.data })
            .to_string()
    }
}

/// What events say of a deployment: `{"id", "name", "environment", "workspace"}` (the id alone
/// when it is not known).
pub fn deployment_ref(id: &str, named: Option<(&str, &str, &str)>) -> Value {
    match named {
        Some((name, environment, workspace)) => {
            json!({ "id": id, "name": name, "environment": environment, "workspace": workspace })
        }
        None => json!({ "id": id }),
    }
}

/// The deployment a pending change concerns (it may not exist yet: a create).
pub fn approval_deployment_ref(a: &ApprovalRecord) -> Value {
    deployment_ref(&a.deployment_id, Some((&a.deployment_name, &a.environment, &a.workspace)))
}

/// `deployment.status`: a stored status transition.
pub fn status_event(deployment: Value, e: &EventRecord) -> Event {
    Event::new(
        EventType::DeploymentStatus,
        e.at,
        json!({
            "deployment": deployment,
            "from": e.from,
            "to": e.to,
            "reasons": e.reasons,
            "message": e.message,
        }),
    )
}

/// `operation.completed`: the operation as `GET /v1/operations/{id}` shows it.
pub fn operation_event(op: &OperationRecord, deployment: Value, now: i64) -> Event {
    Event::new(
        EventType::OperationCompleted,
        now,
        json!({ "operation": crate::api::operation_view(op), "deployment": deployment }),
    )
}

/// `approval.requested` / `approval.decided`: the pending change as `GET /v1/approvals/{id}`
/// shows it (its `status` says what was decided: applied or scheduled when approved, rejected,
/// expired, failed).
pub fn approval_event(kind: EventType, a: &ApprovalRecord, now: i64) -> Event {
    Event::new(kind, now, json!({ "approval": crate::api::approval_view(a), "deployment": approval_deployment_ref(a) }))
}

/// Checks a webhook or callback URL: http or https, with a host, no credentials, at most
/// [`MAX_URL_LEN`] bytes. Returns it normalized.
pub fn validate_url(field: &str, url: &str) -> ApiResult<String> {
    let bad = |why: &str| ApiError::validation(field, format!("{field} {why}"));
    if url.len() > MAX_URL_LEN {
        return Err(bad(&format!("must be at most {MAX_URL_LEN} bytes")));
    }
    let parsed = reqwest::Url::parse(url).map_err(|e| bad(&format!("is not a valid URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(bad("must be an http or https URL"));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(bad("must name a host"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(bad("must not carry credentials: receivers verify the signature instead"));
    }
    let normalized = parsed.to_string();
    if normalized.len() > MAX_URL_LEN {
        return Err(bad(&format!("must be at most {MAX_URL_LEN} bytes")));
    }
    Ok(normalized)
}

/// The event names a webhook may subscribe to, `*` first.
pub fn known_events() -> Vec<&'static str> {
    std::iter::once("*").chain(EventType::ALL.iter().map(|e| e.as_str())).collect()
}

/// Checks a subscription: at least one known name; `*` alone stands for all. Duplicates go.
pub fn validate_events(events: &[String]) -> ApiResult<Vec<String>> {
    if events.is_empty() {
        return Err(ApiError::validation(
            "events",
            format!("events must name at least one of {}", known_events().join(", ")),
        )
        .with_details(json!({ "field": "events", "known": known_events() })));
    }
    let unknown: Vec<&String> = events.iter().filter(|e| *e != "*" && EventType::parse(e).is_none()).collect();
    if !unknown.is_empty() {
        return Err(ApiError::validation(
            "events",
            format!("unknown event {:?}: events are {}", unknown[0], known_events().join(", ")),
        )
        .with_details(json!({ "field": "events", "unknown": unknown, "known": known_events() })));
    }
    if events.iter().any(|e| e == "*") {
        return Ok(vec!["*".into()]);
    }
    let mut out: Vec<String> = Vec::new();
    for e in events {
        if !out.contains(e) {
            out.push(e.clone());
        }
    }
    Ok(out)
}

/// Checks a signing secret given by a user.
pub fn validate_secret(field: &str, secret: &str) -> ApiResult<()> {
    if !SECRET_LEN.contains(&secret.len()) || !secret.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::validation(
            field,
            format!("{field} must be {} to {} printable ASCII characters", SECRET_LEN.start(), SECRET_LEN.end()),
        ));
    }
    Ok(())
}

/// A new signing secret: `whsec_` and 64 hexadecimal characters.
pub fn generate_secret() -> String {
    format!("whsec_{}", random_hex(32))
}

/// The associated data a signing secret is sealed with: `kind` is `webhook` (id: the
/// webhook's) or `callback` (id: the callback's).
pub fn secret_aad(kind: &str, id: &str) -> Vec<u8> {
    crate::secrets::crypto::associated_data(kind, id, "signing-secret", 1)
}

/// `Ferry-Signature`: `v1=` and the hex HMAC-SHA256, keyed with the secret, of
/// `"<timestamp>.<body>"` (timestamp in Unix seconds, as in `Ferry-Timestamp`).
pub fn signature(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(timestamp.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    format!("v1={}", ferry_certs::hex(ctx.sign().as_ref()))
}

/// How long to wait after failed attempt number `attempts` (1-based): `base` doubling per
/// attempt up to [`MAX_RETRY_DELAY`], times a jitter factor in [0.8, 1.2) (`jitter` in [0, 1)),
/// so receivers that failed together are not retried in lockstep.
pub fn retry_delay(base: Duration, attempts: u32, jitter: f64) -> Duration {
    let exp = attempts.saturating_sub(1).min(30);
    let delay = base.saturating_mul(1u32 << exp).min(MAX_RETRY_DELAY);
    delay.mul_f64(0.8 + 0.4 * jitter.clamp(0.0, 1.0))
}

/// The callback a request asks for, sealed: `Ferry-Callback-Url` (checked like a webhook URL)
/// and `Ferry-Callback-Secret` (optional; without it deliveries are not signed). A bad one is a
/// 400 before anything is done.
pub fn parse_callback(headers: &HeaderMap, key: Option<&MasterKey>) -> ApiResult<Option<OperationCallback>> {
    let Some(url) = headers.get(CALLBACK_URL_HEADER) else {
        if headers.contains_key(CALLBACK_SECRET_HEADER) {
            return Err(ApiError::validation(
                "Ferry-Callback-Secret",
                "Ferry-Callback-Secret needs Ferry-Callback-Url",
            ));
        }
        return Ok(None);
    };
    let url =
        url.to_str().map_err(|_| ApiError::validation("Ferry-Callback-Url", "Ferry-Callback-Url is not ASCII"))?;
    let url = validate_url("Ferry-Callback-Url", url.trim())?;
    let id = random_id("cb");
    let secret = match headers.get(CALLBACK_SECRET_HEADER) {
        None => None,
        Some(v) => {
            let secret = v.to_str().unwrap_or_default();
            validate_secret("Ferry-Callback-Secret", secret)?;
            let key = key.ok_or_else(|| ApiError::internal().with_cause("no master key to seal a callback secret"))?;
            Some(key.seal(&secret_aad("callback", &id), secret.as_bytes()))
        }
    };
    Ok(Some(OperationCallback { id, url, secret }))
}

fn not_found(id: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, ErrorCode::WebhookNotFound, format!("webhook {id:?} not found"))
        .with_details(json!({ "webhookId": id }))
}

fn delivery_not_found(webhook: &str, id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        ErrorCode::DeliveryNotFound,
        format!("webhook {webhook:?} has no delivery {id:?}"),
    )
    .with_details(json!({ "webhookId": webhook, "deliveryId": id }))
}

/// What `POST /v1/webhooks` asks for.
#[derive(Debug, Clone)]
pub struct NewWebhook {
    pub url: String,
    pub events: Vec<String>,
    pub secret: Option<String>,
    pub description: Option<String>,
}

pub struct Webhooks<'a> {
    state: &'a AppState,
}

impl<'a> Webhooks<'a> {
    pub fn new(state: &'a AppState) -> Self {
        Self { state }
    }

    /// Creates a webhook; returns it with its secret in clear (the only time it is shown).
    pub async fn create(&self, ctx: &RequestContext, new: NewWebhook) -> ApiResult<(WebhookRecord, String)> {
        ctx.require_global(perm::WEBHOOK_MANAGE)?;
        let url = validate_url("url", new.url.trim())?;
        let events = validate_events(&new.events)?;
        let description = new.description.unwrap_or_default();
        if description.len() > MAX_DESCRIPTION_LEN || description.chars().any(|c| c.is_control() && c != '\n') {
            return Err(ApiError::validation(
                "description",
                format!("description must be at most {MAX_DESCRIPTION_LEN} bytes, no control characters"),
            ));
        }
        let secret = match new.secret {
            Some(s) => {
                validate_secret("secret", &s)?;
                s
            }
            None => generate_secret(),
        };
        let id = random_id("wh");
        let now = now_ms();
        let record = WebhookRecord {
            id: id.clone(),
            url,
            events,
            description,
            secret: self.state.master_key.seal(&secret_aad("webhook", &id), secret.as_bytes()),
            created_by: ctx.principal.audit_name(),
            created_at: now,
        };
        // Never the secret: its presence only.
        let audit = ctx.audit(
            "webhook.create",
            &id,
            json!({ "url": record.url, "events": record.events, "description": record.description }),
        );
        self.state.store.create_webhook(&record, &audit).await?;
        tracing::info!(webhook = %id, events = ?record.events, "webhook created");
        Ok((record, secret))
    }

    pub async fn list(&self, ctx: &RequestContext, page: i64, page_size: i64) -> ApiResult<(Vec<WebhookRecord>, i64)> {
        ctx.require_global(perm::WEBHOOK_READ)?;
        Ok(self.state.store.list_webhooks(page, page_size).await?)
    }

    pub async fn get(&self, ctx: &RequestContext, id: &str) -> ApiResult<WebhookRecord> {
        ctx.require_global(perm::WEBHOOK_READ)?;
        self.state.store.get_webhook(id).await?.ok_or_else(|| not_found(id))
    }

    /// Deletes a webhook and its delivery log; pending deliveries are not sent.
    pub async fn delete(&self, ctx: &RequestContext, id: &str) -> ApiResult<()> {
        ctx.require_global(perm::WEBHOOK_MANAGE)?;
        let w = self.state.store.get_webhook(id).await?.ok_or_else(|| not_found(id))?;
        let audit = ctx.audit("webhook.delete", id, json!({ "url": w.url, "events": w.events }));
        if !self.state.store.delete_webhook(id, &audit, now_ms()).await? {
            return Err(not_found(id));
        }
        Ok(())
    }

    /// A page of the webhook's deliveries, newest first.
    pub async fn deliveries(
        &self,
        ctx: &RequestContext,
        id: &str,
        page: i64,
        page_size: i64,
    ) -> ApiResult<(Vec<DeliveryRecord>, i64)> {
        self.get(ctx, id).await?;
        Ok(self.state.store.list_deliveries(id, page, page_size).await?)
    }

    /// Queues the event of one of the webhook's deliveries again, as a new delivery.
    pub async fn redeliver(&self, ctx: &RequestContext, id: &str, delivery: &str) -> ApiResult<DeliveryRecord> {
        ctx.require_global(perm::WEBHOOK_MANAGE)?;
        self.state.store.get_webhook(id).await?.ok_or_else(|| not_found(id))?;
        let new_id = random_id("dlv");
        let audit = ctx.audit("webhook.redeliver", id, json!({ "deliveryId": delivery, "newDeliveryId": new_id }));
        self.state
            .store
            .redeliver(id, delivery, &new_id, &audit, now_ms())
            .await?
            .ok_or_else(|| delivery_not_found(id, delivery))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_over_timestamp_dot_body() {
        // RFC 4231 test case 2 ("Jefe", "what do ya want for nothing?"), split at the dot: the
        // signed text is "<timestamp>.<body>".
        let sig = signature(b"Jefe", 0, b"what do ya want for nothing?");
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"Jefe");
        let expected = ferry_certs::hex(hmac::sign(&key, b"0.what do ya want for nothing?").as_ref());
        assert_eq!(sig, format!("v1={expected}"));
        // And the HMAC underneath is the RFC's.
        let rfc = hmac::sign(&key, b"what do ya want for nothing?");
        assert_eq!(ferry_certs::hex(rfc.as_ref()), "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
        assert_ne!(signature(b"Jefe", 1, b"x"), signature(b"Jefe", 2, b"x"), "the timestamp is signed");
        assert_ne!(signature(b"Jefe", 1, b"x"), signature(b"Jeff", 1, b"x"));
        assert_eq!(signature(b"k", 1_700_000_000, b"{}").len(), 3 + 64);
    }

    #[test]
    fn retries_back_off_exponentially_with_jitter_up_to_an_hour() {
        let base = Duration::from_secs(5);
        let mid: Vec<u64> = (1..=12).map(|n| retry_delay(base, n, 0.5).as_secs()).collect();
        assert_eq!(mid, [5, 10, 20, 40, 80, 160, 320, 640, 1280, 2560, 3600, 3600]);
        assert_eq!(retry_delay(base, 1, 0.0), Duration::from_secs(4));
        assert_eq!(retry_delay(base, 1, 0.999_999).as_millis(), 5999);
        assert_eq!(retry_delay(base, 0, 0.5), base, "attempt 0 counts as the first");
        assert_eq!(retry_delay(base, u32::MAX, 0.5), MAX_RETRY_DELAY, "no overflow");
        assert_eq!(retry_delay(Duration::from_millis(50), 3, 0.5), Duration::from_millis(200));
        // The whole default schedule spans hours, not minutes.
        let total: u64 = (1..12).map(|n| retry_delay(base, n, 0.5).as_secs()).sum();
        assert!((2 * 3600..4 * 3600).contains(&total), "{total}");
    }

    #[test]
    fn urls_must_be_http_with_a_host_and_no_credentials() {
        assert_eq!(validate_url("url", "https://example.com/hook").unwrap(), "https://example.com/hook");
        assert_eq!(validate_url("url", "http://127.0.0.1:8080").unwrap(), "http://127.0.0.1:8080/");
        assert_eq!(validate_url("url", "HTTP://[::1]:9/x?y=1").unwrap(), "http://[::1]:9/x?y=1");
        for bad in [
            "",
            "example.com/hook",
            "ftp://example.com/",
            "file:///etc/passwd",
            "javascript:alert(1)",
            "http://",
            "http://:80/",
            "https://user:pass@example.com/",
            "https://user@example.com/",
            "http://exa mple.com/",
        ] {
            let e = validate_url("url", bad).unwrap_err();
            assert_eq!((e.status, e.code), (StatusCode::BAD_REQUEST, ErrorCode::InvalidValue), "{bad:?}");
            assert_eq!(e.details["field"], "url");
        }
        let long = format!("https://example.com/{}", "a".repeat(MAX_URL_LEN));
        assert!(validate_url("url", &long).unwrap_err().message.contains("2048"));
        assert!(validate_url("url", &format!("https://example.com/{}", "a".repeat(2000))).is_ok());
    }

    #[test]
    fn events_are_known_names_or_star() {
        let v = |e: &[&str]| validate_events(&e.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(v(&["*"]).unwrap(), ["*"]);
        assert_eq!(v(&["deployment.status", "*"]).unwrap(), ["*"], "* covers the rest");
        assert_eq!(
            v(&["operation.completed", "deployment.status", "operation.completed"]).unwrap(),
            ["operation.completed", "deployment.status"]
        );
        assert_eq!(v(&["alert.fired"]).unwrap(), ["alert.fired"], "reserved names are accepted");
        let e = v(&["deployment.status", "deployment.exploded"]).unwrap_err();
        assert!(e.message.contains("deployment.exploded") && e.message.contains("approval.decided"), "{}", e.message);
        assert_eq!(e.details["unknown"], json!(["deployment.exploded"]));
        assert_eq!(e.details["known"][0], "*");
        assert!(v(&[]).is_err());
        assert!(v(&["Deployment.Status"]).is_err(), "names are exact");
    }

    #[test]
    fn secrets_and_callbacks_are_checked_and_sealed() {
        assert!(validate_secret("secret", "0123456789abcdef").is_ok());
        assert!(validate_secret("secret", "short").is_err());
        assert!(validate_secret("secret", &"x".repeat(257)).is_err());
        assert!(validate_secret("secret", "with a space inside it").is_err());
        let s = generate_secret();
        assert!(s.starts_with("whsec_") && s.len() == 70 && validate_secret("secret", &s).is_ok());

        let (key, _) = MasterKey::generate();
        let headers = |pairs: &[(&str, &str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.insert(axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
            }
            h
        };
        assert_eq!(parse_callback(&headers(&[]), Some(&key)).unwrap(), None);
        let cb =
            parse_callback(&headers(&[("Ferry-Callback-Url", "http://127.0.0.1:9/cb")]), Some(&key)).unwrap().unwrap();
        assert_eq!((cb.url.as_str(), cb.secret.is_none()), ("http://127.0.0.1:9/cb", true));
        let cb = parse_callback(
            &headers(&[
                ("Ferry-Callback-Url", "https://ci.example/cb"),
                ("Ferry-Callback-Secret", "0123456789abcdefXYZ"),
            ]),
            Some(&key),
        )
        .unwrap()
        .unwrap();
        let sealed = cb.secret.unwrap();
        assert!(!sealed.ciphertext.contains(&ferry_certs::hex(b"0123456789abcdefXYZ")));
        assert_eq!(key.open(&sealed, &secret_aad("callback", &cb.id)).unwrap(), b"0123456789abcdefXYZ");
        assert!(key.open(&sealed, &secret_aad("callback", "cb-other")).is_err());
        for bad in [
            vec![("Ferry-Callback-Url", "gopher://x/")],
            vec![("Ferry-Callback-Url", "http://x/"), ("Ferry-Callback-Secret", "short")],
            vec![("Ferry-Callback-Secret", "0123456789abcdefXYZ")],
        ] {
            let e = parse_callback(&headers(&bad), Some(&key)).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{bad:?}");
        }
    }

    #[test]
    fn payloads_carry_id_type_time_and_data() {
        let e = Event::new(EventType::DeploymentStatus, 1_500, json!({ "to": "running" }));
        let body: Value = serde_json::from_str(&e.payload()).unwrap();
        assert_eq!(body["type"], "deployment.status");
        assert_eq!(body["createdAt"], "1970-01-01T00:00:01.5Z");
        assert_eq!(body["data"]["to"], "running");
        assert!(body["id"].as_str().unwrap().starts_with("evt-"));
        assert_eq!(deployment_ref("d", None), json!({ "id": "d" }));
    }
}
