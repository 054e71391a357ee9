//! `GET /v1/audit` and a deployment's `audit`, `history`, `events` and `timeline`: handlers parse
//! the query and render; the audit trail service ([`crate::audit`]) checks permission and reads.
//! Every list is paged like the rest of the API and newest first (`order=asc` for oldest first).

use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, ApiPath, ApiQuery, ApiResult, PageParams, page_json};
use crate::AppState;
use crate::audit::AuditTrail;
use crate::context::RequestContext;
use crate::domain::AuditOutcome;
use crate::ids::rfc3339;
use crate::store::{AuditFilter, AuditRecord, EventRecord, Page, RevisionRecord, TimelineItem};

/// Longest value a text filter may have.
const MAX_FILTER_LEN: usize = 256;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuditParams {
    actor: Option<String>,
    action: Option<String>,
    /// The object's id.
    object: Option<String>,
    object_type: Option<String>,
    outcome: Option<String>,
    /// RFC 3339, inclusive.
    from: Option<String>,
    /// RFC 3339, inclusive.
    to: Option<String>,
    #[param(minimum = 1)]
    page: Option<i64>,
    #[param(minimum = 1, maximum = 200)]
    page_size: Option<i64>,
    order: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrailParams {
    #[param(minimum = 1)]
    page: Option<i64>,
    #[param(minimum = 1, maximum = 200)]
    page_size: Option<i64>,
    order: Option<String>,
}

fn page(page: Option<i64>, page_size: Option<i64>, order: Option<&str>) -> ApiResult<Page> {
    let (page, page_size) = PageParams { page, page_size, status: None }.resolve()?;
    let oldest_first = match order {
        None | Some("desc") => false,
        Some("asc") => true,
        Some(other) => return Err(ApiError::validation("order", format!("order must be asc or desc, not {other:?}"))),
    };
    Ok(Page { page, page_size, oldest_first })
}

fn text<'a>(field: &str, value: &'a Option<String>) -> ApiResult<Option<&'a str>> {
    match value.as_deref() {
        Some(v) if v.is_empty() || v.len() > MAX_FILTER_LEN => {
            Err(ApiError::validation(field, format!("{field} must be 1 to {MAX_FILTER_LEN} bytes")))
        }
        v => Ok(v),
    }
}

/// An RFC 3339 time as Unix milliseconds.
fn time_ms(field: &str, value: &Option<String>) -> ApiResult<Option<i64>> {
    let Some(v) = value else { return Ok(None) };
    let t = time::OffsetDateTime::parse(v, &time::format_description::well_known::Rfc3339).map_err(|_| {
        ApiError::validation(field, format!("{field} must be an RFC 3339 time, e.g. 2024-02-15T10:00:00Z"))
    })?;
    Ok(Some((t.unix_timestamp_nanos() / 1_000_000) as i64))
}

pub fn audit_view(a: &AuditRecord) -> Value {
    json!({
        "id": a.id,
        "at": rfc3339(a.at),
        "actor": a.actor,
        "action": a.action,
        "objectType": a.object_type,
        "object": a.target,
        "requestId": a.request_id,
        "source": a.source,
        "outcome": a.outcome,
        "changes": a.changes,
        "details": a.details,
    })
}

fn event_view(e: &EventRecord) -> Value {
    json!({
        "id": format!("{}-{}", e.deployment_id, e.seq),
        "sequence": e.seq,
        "at": rfc3339(e.at),
        "type": "status_changed",
        "deploymentId": e.deployment_id,
        "from": e.from,
        "to": e.to,
        "reasons": e.reasons,
        "message": e.message,
    })
}

fn revision_view(r: &RevisionRecord, current: i64) -> Value {
    let mut configuration: Value = serde_json::from_str(&r.spec).unwrap_or(Value::Null);
    crate::audit::mask::mask(&mut configuration);
    let a = r.audit.as_ref();
    json!({
        "revision": r.revision,
        "version": r.version,
        "current": r.revision == current,
        "created": rfc3339(r.created_at),
        "createdBy": a.map(|a| &a.actor),
        "requestId": a.map(|a| &a.request_id),
        "action": a.map(|a| &a.action),
        "auditId": a.map(|a| &a.id),
        "changes": a.and_then(|a| a.changes.as_ref()),
        "details": a.map(|a| &a.details),
        "configuration": configuration,
    })
}

/// `GET /v1/audit?actor=&action=&object=&objectType=&outcome=&from=&to=&page=&pageSize=&order=`
#[utoipa::path(
    get,
    path = "/v1/audit",
    operation_id = "listAudit",
    tag = "audit",
    summary = "Search the audit trail",
    params(AuditParams),
    responses(
        (status = 200, description = "A page of audit records", body = super::schemas::AuditPage),
    ),
)]
pub async fn list(
    State(state): State<AppState>,
    ctx: RequestContext,
    ApiQuery(q): ApiQuery<AuditParams>,
) -> ApiResult<Json<Value>> {
    let page = page(q.page, q.page_size, q.order.as_deref())?;
    let outcome = match q.outcome.as_deref() {
        None => None,
        Some(o) => Some(AuditOutcome::parse(o).ok_or_else(|| {
            ApiError::validation("outcome", format!("unknown outcome {o:?}: one of {}", AuditOutcome::names()))
        })?),
    };
    let (from_ms, to_ms) = (time_ms("from", &q.from)?, time_ms("to", &q.to)?);
    if let (Some(f), Some(t)) = (from_ms, to_ms)
        && f > t
    {
        return Err(ApiError::validation("from", "from must not be after to"));
    }
    let filter = AuditFilter {
        actor: text("actor", &q.actor)?,
        action: text("action", &q.action)?,
        target: text("object", &q.object)?,
        object_type: text("objectType", &q.object_type)?,
        outcome,
        from_ms,
        to_ms,
        page,
    };
    let (rows, total) = AuditTrail::new(&state).list(&ctx, &filter).await?;
    Ok(Json(page_json(rows.iter().map(audit_view).collect(), page.page, page.page_size, total)))
}

/// `GET /v1/deployments/{id}/audit`
#[utoipa::path(
    get,
    path = "/v1/deployments/{id}/audit",
    operation_id = "getDeploymentAudit",
    tag = "audit",
    summary = "A deployment's audit records",
    params(("id" = String, Path, description = "The deployment's id"), TrailParams),
    responses(
        (status = 200, description = "A page of audit records", body = super::schemas::AuditPage),
    ),
)]
pub async fn deployment(
    State(state): State<AppState>,
    ctx: RequestContext,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<TrailParams>,
) -> ApiResult<Json<Value>> {
    let page = page(q.page, q.page_size, q.order.as_deref())?;
    let (rows, total) = AuditTrail::new(&state).deployment_audit(&ctx, &id, page).await?;
    Ok(Json(page_json(rows.iter().map(audit_view).collect(), page.page, page.page_size, total)))
}

/// `GET /v1/deployments/{id}/history`: its revisions (newest first), each with who created it,
/// when, under which request and what changed.
#[utoipa::path(
    get,
    path = "/v1/deployments/{id}/history",
    operation_id = "getDeploymentHistory",
    tag = "audit",
    summary = "A deployment's revisions",
    params(("id" = String, Path, description = "The deployment's id"), TrailParams),
    responses(
        (status = 200, description = "A page of revisions", body = super::schemas::RevisionPage),
    ),
)]
pub async fn history(
    State(state): State<AppState>,
    ctx: RequestContext,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<TrailParams>,
) -> ApiResult<Json<Value>> {
    let page = page(q.page, q.page_size, q.order.as_deref())?;
    let (d, rows, total) = AuditTrail::new(&state).history(&ctx, &id, page).await?;
    let data = rows.iter().map(|r| revision_view(r, d.revision)).collect();
    Ok(Json(page_json(data, page.page, page.page_size, total)))
}

/// `GET /v1/deployments/{id}/events`: its status transitions, as agents' reports made them.
#[utoipa::path(
    get,
    path = "/v1/deployments/{id}/events",
    operation_id = "getDeploymentEvents",
    tag = "audit",
    summary = "A deployment's status transitions",
    params(("id" = String, Path, description = "The deployment's id"), TrailParams),
    responses(
        (status = 200, description = "A page of events", body = super::schemas::EventPage),
    ),
)]
pub async fn events(
    State(state): State<AppState>,
    ctx: RequestContext,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<TrailParams>,
) -> ApiResult<Json<Value>> {
    let page = page(q.page, q.page_size, q.order.as_deref())?;
    let (rows, total) = AuditTrail::new(&state).events(&ctx, &id, page).await?;
    Ok(Json(page_json(rows.iter().map(event_view).collect(), page.page, page.page_size, total)))
}

/// `GET /v1/deployments/{id}/timeline`: audit records and events merged in time order, each
/// `{"type": "audit", "at", "audit": …}` or `{"type": "event", "at", "event": …}`.
#[utoipa::path(
    get,
    path = "/v1/deployments/{id}/timeline",
    operation_id = "getDeploymentTimeline",
    tag = "audit",
    summary = "Audit records and events in time order",
    params(("id" = String, Path, description = "The deployment's id"), TrailParams),
    responses(
        (status = 200, description = "A page of timeline items", body = super::schemas::TimelinePage),
    ),
)]
pub async fn timeline(
    State(state): State<AppState>,
    ctx: RequestContext,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<TrailParams>,
) -> ApiResult<Json<Value>> {
    let page = page(q.page, q.page_size, q.order.as_deref())?;
    let (items, total) = AuditTrail::new(&state).timeline(&ctx, &id, page).await?;
    let data = items
        .iter()
        .map(|item| match item {
            TimelineItem::Audit(a) => json!({ "type": "audit", "at": rfc3339(item.at()), "audit": audit_view(a) }),
            TimelineItem::Event(e) => json!({ "type": "event", "at": rfc3339(item.at()), "event": event_view(e) }),
        })
        .collect();
    Ok(Json(page_json(data, page.page, page.page_size, total)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ErrorCode;

    #[test]
    fn filters_are_checked() {
        assert_eq!(time_ms("from", &Some("1970-01-01T00:00:01.5Z".into())).unwrap(), Some(1_500));
        assert_eq!(time_ms("from", &Some("2024-02-15T10:00:00+01:00".into())).unwrap(), Some(1_707_987_600_000));
        for bad in ["yesterday", "2024-02-15", "2024-02-15T10:00:00", ""] {
            let e = time_ms("to", &Some(bad.into())).unwrap_err();
            assert_eq!((e.code, e.details["field"].as_str()), (ErrorCode::InvalidValue, Some("to")), "{bad}");
        }
        assert!(text("actor", &Some(String::new())).is_err());
        assert!(text("actor", &Some("a".repeat(MAX_FILTER_LEN + 1))).is_err());
        assert_eq!(text("actor", &Some("admin:x".into())).unwrap(), Some("admin:x"));
        assert!(!page(None, None, None).unwrap().oldest_first);
        assert!(page(None, None, Some("asc")).unwrap().oldest_first);
        assert!(page(None, None, Some("up")).is_err());
        assert!(page(None, Some(0), None).is_err());
        assert!(page(None, Some(super::super::MAX_PAGE_SIZE + 1), None).is_err());
    }
}
