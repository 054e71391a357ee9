//! Bootstrap tokens: `ferry1.<id>.<secret>.<ca-fingerprint>`.
//!
//! The id finds the record, the secret proves possession (only its SHA-256 is stored), and the
//! CA fingerprint lets the agent pin the control plane during enrollment, so a token is all an
//! agent needs. Tokens are single-use and expire.

pub const PREFIX: &str = "ferry1";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootstrapToken {
    pub id: String,
    pub secret: String,
    pub ca_fingerprint: String,
}

impl BootstrapToken {
    pub fn generate(ca_fingerprint: &str) -> Self {
        Self {
            id: crate::ids::random_hex(8),
            secret: crate::ids::random_hex(16),
            ca_fingerprint: ca_fingerprint.to_string(),
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        let mut parts = s.trim().split('.');
        let (prefix, id, secret, fp) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let hex =
            |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if parts.next().is_some() || prefix != PREFIX || !hex(id, 16) || !hex(secret, 32) || !hex(fp, 64) {
            return None;
        }
        Some(Self { id: id.into(), secret: secret.into(), ca_fingerprint: fp.into() })
    }
}

impl std::fmt::Display for BootstrapToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{PREFIX}.{}.{}.{}", self.id, self.secret, self.ca_fingerprint)
    }
}

/// Issues a bootstrap token: stores only the secret's hash (and the audit record) and returns
/// the token, whose string form is shown once. Used by dev mode; the REST API goes through
/// [`issue_for`].
pub async fn issue(
    state: &crate::AppState,
    ttl_seconds: i64,
    labels: std::collections::BTreeMap<String, String>,
    description: String,
    actor: &str,
    request_id: &str,
) -> Result<(BootstrapToken, crate::store::NewBootstrapToken), crate::store::StoreError> {
    issue_audited(state, ttl_seconds, labels, description, |id, details| {
        crate::store::Audit::new(actor, "token.create", id, request_id, details)
    })
    .await
}

/// [`issue`] for a request: the audit record names the request's caller, id and address.
pub async fn issue_for(
    state: &crate::AppState,
    ctx: &crate::context::RequestContext,
    ttl_seconds: i64,
    labels: std::collections::BTreeMap<String, String>,
    description: String,
) -> Result<(BootstrapToken, crate::store::NewBootstrapToken), crate::store::StoreError> {
    issue_audited(state, ttl_seconds, labels, description, |id, details| ctx.audit("token.create", id, details)).await
}

async fn issue_audited(
    state: &crate::AppState,
    ttl_seconds: i64,
    labels: std::collections::BTreeMap<String, String>,
    description: String,
    audit: impl FnOnce(&str, serde_json::Value) -> crate::store::Audit,
) -> Result<(BootstrapToken, crate::store::NewBootstrapToken), crate::store::StoreError> {
    let token = BootstrapToken::generate(&state.ca.fingerprint());
    let now = crate::ids::now_ms();
    let record = crate::store::NewBootstrapToken {
        id: token.id.clone(),
        secret_hash: crate::ids::hash_secret(&token.secret),
        description,
        labels,
        created_at: now,
        expires_at: now + ttl_seconds * 1000,
    };
    let details = serde_json::json!({ "labels": record.labels, "expiresAt": crate::ids::rfc3339(record.expires_at) });
    state.store.create_bootstrap_token(&record, &audit(&token.id, details)).await?;
    Ok((token, record))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejections() {
        let fp = "ab".repeat(32);
        let t = BootstrapToken::generate(&fp);
        assert_eq!(BootstrapToken::parse(&t.to_string()), Some(t.clone()));
        let s = t.to_string();
        for bad in [
            String::new(),
            s.replacen("ferry1", "ferry2", 1),
            format!("{s}.x"),
            s.replace(&fp, &"AB".repeat(32)),
            s.replace(&t.secret, "zz"),
            format!("ferry1.{}.{}", t.id, t.secret),
        ] {
            assert_eq!(BootstrapToken::parse(&bad), None, "{bad:?}");
        }
    }
}
