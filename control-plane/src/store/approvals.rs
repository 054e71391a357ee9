//! Pending changes: changes of what runs that wait for a second person's approval or for their
//! environment's change window, each with the operation that will carry it out.
//!
//! Every transition is a compare-and-set on `status` in the transaction that makes it, so a
//! pending change is applied, rejected, expired or failed exactly once, on either backend and
//! across replicas: applying it claims it ([`Claim`]) in the transaction that writes the change.
//! The webhook events of a pending change (`approval.requested`, `approval.decided`, and
//! `operation.completed` when its operation fails here) are queued in the same transactions.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Audit, OperationRecord, Result, Store, StoreError};
use crate::authz::RoleBinding;
use crate::domain::{ApprovalStatus, EventType, OperationKind, OperationStatus};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalRecord {
    pub id: String,
    pub environment: String,
    /// The deployment's workspace (for a create, the one it will be created in).
    pub workspace: String,
    pub deployment_id: String,
    pub deployment_name: String,
    /// What the change does (the kind of its operation).
    pub action: OperationKind,
    /// The permission the change needs (`deployment:scale`, …): an approver must hold it there.
    pub permission: String,
    /// The exact request, as JSON (see `approvals::PendingRequest`).
    pub request: String,
    /// The requester's audit name, the person behind it, and its role bindings when it asked.
    pub requester: String,
    pub requester_id: String,
    pub requester_identity: String,
    pub requester_roles: Vec<RoleBinding>,
    pub request_id: String,
    pub operation_id: String,
    pub status: ApprovalStatus,
    /// Whether a second person must approve it (else it only waits for the window).
    pub approval_required: bool,
    /// Whether, once approved, it waits for a closed change window instead of being refused.
    pub wait_for_window: bool,
    pub message: String,
    pub decided_by: Option<String>,
    pub decision_comment: Option<String>,
    pub decided_at: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
    pub expires_at: i64,
}

/// Consumes an open pending change in the transaction that applies it: the write goes ahead
/// only if the change is still `from`, and it becomes `applied`. Otherwise the transaction is
/// abandoned with [`StoreError::NotPending`].
#[derive(Debug, Clone)]
pub struct Claim {
    pub approval_id: String,
    pub from: ApprovalStatus,
    /// Who approved it and why, when this claim is the approval itself (from `pending`).
    pub decision: Option<(String, Option<String>)>,
    /// The approval's own audit record (the applied change has its own).
    pub audit: Option<Audit>,
    pub now: i64,
}

/// Which pending changes a caller may see: those it asked for, and those a grant covers.
#[derive(Debug, Clone, Default)]
pub struct ApprovalVisibility {
    pub identity: String,
    pub grants: Vec<ApprovalGrant>,
}

/// Pending changes in `environment` of `workspace` (`None`: any workspace) that need
/// `permission` (`None`: any).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalGrant {
    pub workspace: Option<String>,
    pub environment: String,
    pub permission: Option<String>,
}

#[derive(Debug, Clone, Copy)]
pub struct ApprovalFilter<'a> {
    pub status: Option<ApprovalStatus>,
    /// `None`: every pending change.
    pub visible: Option<&'a ApprovalVisibility>,
    /// 1-based.
    pub page: i64,
    pub page_size: i64,
}

fn approval_from_row(r: &AnyRow) -> Result<ApprovalRecord> {
    let corrupt = |column, message: String| StoreError::Corrupt { table: "approvals", column, message };
    let action: String = r.try_get("action")?;
    let status: String = r.try_get("status")?;
    let roles: String = r.try_get("requester_roles")?;
    Ok(ApprovalRecord {
        id: r.try_get("id")?,
        environment: r.try_get("environment")?,
        workspace: r.try_get("workspace")?,
        deployment_id: r.try_get("deployment_id")?,
        deployment_name: r.try_get("deployment_name")?,
        action: OperationKind::parse(&action).ok_or_else(|| corrupt("action", format!("unknown value {action:?}")))?,
        permission: r.try_get("permission")?,
        request: r.try_get("request")?,
        requester: r.try_get("requester")?,
        requester_id: r.try_get("requester_id")?,
        requester_identity: r.try_get("requester_identity")?,
        requester_roles: serde_json::from_str(&roles).map_err(|e| corrupt("requester_roles", e.to_string()))?,
        request_id: r.try_get("request_id")?,
        operation_id: r.try_get("operation_id")?,
        status: ApprovalStatus::parse(&status).ok_or_else(|| corrupt("status", format!("unknown value {status:?}")))?,
        approval_required: r.try_get::<i64, _>("approval_required")? != 0,
        wait_for_window: r.try_get::<i64, _>("wait_for_window")? != 0,
        message: r.try_get("message")?,
        decided_by: r.try_get("decided_by")?,
        decision_comment: r.try_get("decision_comment")?,
        decided_at: r.try_get("decided_at")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
        expires_at: r.try_get("expires_at")?,
    })
}

/// A transition of a pending change out of `from` (compare-and-set).
#[derive(Debug, Clone)]
pub struct Transition<'a> {
    pub id: &'a str,
    pub from: ApprovalStatus,
    pub to: ApprovalStatus,
    pub message: &'a str,
    /// Recorded as the decision (who, comment) when given.
    pub decision: Option<(&'a str, Option<&'a str>)>,
    /// The operation's new status and message.
    pub operation: (OperationStatus, &'a str),
    pub audit: Option<&'a Audit>,
    pub now: i64,
}

impl Store {
    /// Stores a pending change with its (waiting) operation and audit record.
    pub async fn create_approval(&self, a: &ApprovalRecord, op: &OperationRecord, audit: &Audit) -> Result<()> {
        let mut tx = self.write_tx().await?;
        sqlx::query(
            "INSERT INTO approvals (id, environment, workspace, deployment_id, deployment_name, action, permission, \
             request, requester, requester_id, requester_identity, requester_roles, request_id, operation_id, status, \
             approval_required, wait_for_window, message, decided_by, decision_comment, decided_at, created_at, \
             updated_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, \
             $17, $18, $19, $20, $21, $22, $23, $24)",
        )
        .bind(&a.id)
        .bind(&a.environment)
        .bind(&a.workspace)
        .bind(&a.deployment_id)
        .bind(&a.deployment_name)
        .bind(a.action.as_str())
        .bind(&a.permission)
        .bind(&a.request)
        .bind(&a.requester)
        .bind(&a.requester_id)
        .bind(&a.requester_identity)
        .bind(serde_json::to_string(&a.requester_roles).expect("role bindings serialize"))
        .bind(&a.request_id)
        .bind(&a.operation_id)
        .bind(a.status.as_str())
        .bind(i64::from(a.approval_required))
        .bind(i64::from(a.wait_for_window))
        .bind(&a.message)
        .bind(a.decided_by.clone())
        .bind(a.decision_comment.clone())
        .bind(a.decided_at)
        .bind(a.created_at)
        .bind(a.updated_at)
        .bind(a.expires_at)
        .execute(&mut *tx)
        .await?;
        // Not `insert_operation`: a waiting change supersedes nothing yet.
        Self::upsert_operation(&mut tx, op).await?;
        Self::write_audit(&mut tx, audit, a.created_at).await?;
        let event = crate::webhooks::approval_event(EventType::ApprovalRequested, a, a.created_at);
        let queued = Self::queue_event(&mut tx, &event).await?;
        tx.commit().await?;
        self.wake_webhooks(queued);
        Ok(())
    }

    pub async fn get_approval(&self, id: &str) -> Result<Option<ApprovalRecord>> {
        let row = sqlx::query("SELECT * FROM approvals WHERE id = $1").bind(id).fetch_optional(&self.pool).await?;
        row.as_ref().map(approval_from_row).transpose()
    }

    /// A page of pending changes (oldest first) and the number of matches.
    pub async fn list_approvals(&self, f: ApprovalFilter<'_>) -> Result<(Vec<ApprovalRecord>, i64)> {
        let mut conds: Vec<String> = Vec::new();
        let mut binds: Vec<String> = Vec::new();
        let bind = |binds: &mut Vec<String>, v: &str| {
            binds.push(v.to_string());
            format!("${}", binds.len())
        };
        if let Some(s) = f.status {
            let p = bind(&mut binds, s.as_str());
            conds.push(format!("status = {p}"));
        }
        if let Some(v) = f.visible {
            let mut any = vec![format!("requester_identity = {}", bind(&mut binds, &v.identity))];
            for g in &v.grants {
                let mut all = vec![format!("environment = {}", bind(&mut binds, &g.environment))];
                if let Some(w) = &g.workspace {
                    all.push(format!("workspace = {}", bind(&mut binds, w)));
                }
                if let Some(p) = &g.permission {
                    all.push(format!("permission = {}", bind(&mut binds, p)));
                }
                any.push(format!("({})", all.join(" AND ")));
            }
            conds.push(format!("({})", any.join(" OR ")));
        }
        let filter = if conds.is_empty() { String::new() } else { format!(" WHERE {}", conds.join(" AND ")) };
        let mut count = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM approvals{filter}")));
        for b in &binds {
            count = count.bind(b.clone());
        }
        let total: i64 = count.fetch_one(&self.pool).await?;
        let (limit, offset) = (binds.len() + 1, binds.len() + 2);
        let sql = format!("SELECT * FROM approvals{filter} ORDER BY created_at, id LIMIT ${limit} OFFSET ${offset}");
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for b in &binds {
            q = q.bind(b.clone());
        }
        let rows = q.bind(f.page_size).bind((f.page - 1).max(0) * f.page_size).fetch_all(&self.pool).await?;
        Ok((rows.iter().map(approval_from_row).collect::<Result<Vec<_>>>()?, total))
    }

    /// Open pending changes whose expiry has passed (the sweep; indexed by status and expiry).
    pub async fn expired_approvals(&self, now_ms: i64, limit: i64) -> Result<Vec<ApprovalRecord>> {
        let rows = sqlx::query(
            "SELECT * FROM approvals WHERE status IN ('pending', 'scheduled') AND expires_at <= $1 \
             ORDER BY expires_at, id LIMIT $2",
        )
        .bind(now_ms)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(approval_from_row).collect()
    }

    /// Changes waiting for their window, oldest first.
    pub async fn scheduled_approvals(&self, limit: i64) -> Result<Vec<ApprovalRecord>> {
        let rows = sqlx::query("SELECT * FROM approvals WHERE status = 'scheduled' ORDER BY created_at, id LIMIT $1")
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(approval_from_row).collect()
    }

    /// Moves a pending change out of `from` and updates its operation, with the audit record,
    /// in one transaction. `false` (nothing written) if it was no longer `from`.
    pub async fn transition_approval(&self, t: &Transition<'_>) -> Result<bool> {
        let mut tx = self.write_tx().await?;
        let row = match t.decision {
            Some((by, comment)) => sqlx::query(
                "UPDATE approvals SET status = $1, message = $2, updated_at = $3, decided_by = $4, \
                 decision_comment = $5, decided_at = $3 WHERE id = $6 AND status = $7 RETURNING *",
            )
            .bind(t.to.as_str())
            .bind(t.message)
            .bind(t.now)
            .bind(by)
            .bind(comment.map(str::to_string))
            .bind(t.id)
            .bind(t.from.as_str()),
            None => sqlx::query(
                "UPDATE approvals SET status = $1, message = $2, updated_at = $3 WHERE id = $4 AND status = $5 \
                 RETURNING *",
            )
            .bind(t.to.as_str())
            .bind(t.message)
            .bind(t.now)
            .bind(t.id)
            .bind(t.from.as_str()),
        }
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Ok(false);
        };
        let approval = approval_from_row(&row)?;
        let (status, message) = t.operation;
        let finished = matches!(status, OperationStatus::Succeeded | OperationStatus::Failed).then_some(t.now);
        let ops = sqlx::query(
            "UPDATE operations SET status = $1, message = $2, updated_at = $3, finished_at = $4 \
             WHERE approval_id = $5 AND status IN ('awaiting_approval', 'awaiting_window') RETURNING *",
        )
        .bind(status.as_str())
        .bind(message)
        .bind(t.now)
        .bind(finished)
        .bind(t.id)
        .fetch_all(&mut *tx)
        .await?;
        if let Some(audit) = t.audit {
            Self::write_audit(&mut tx, audit, t.now).await?;
        }
        let mut queued = 0;
        // A decision was made (approved, rejected), or time made it (expired).
        if t.decision.is_some() || t.to == ApprovalStatus::Expired {
            let event = crate::webhooks::approval_event(EventType::ApprovalDecided, &approval, t.now);
            queued += Self::queue_event(&mut tx, &event).await?;
        }
        if finished.is_some() {
            let deployment = crate::webhooks::approval_deployment_ref(&approval);
            for row in &ops {
                let op = super::deployments::operation_from_row(row)?;
                queued += Self::queue_operation_completed(&mut tx, &op, deployment.clone()).await?;
            }
        }
        tx.commit().await?;
        self.wake_webhooks(queued);
        Ok(true)
    }

    /// The compare-and-set of a [`Claim`], inside the transaction that applies the change (with
    /// `approval.decided` when the claim is the approval itself). Returns how many webhook
    /// deliveries it queued.
    pub(super) async fn claim_approval(conn: &mut sqlx::AnyConnection, c: &Claim) -> Result<u64> {
        let row = match &c.decision {
            Some((by, comment)) => sqlx::query(
                "UPDATE approvals SET status = 'applied', message = 'applied', updated_at = $1, decided_by = $2, \
                 decision_comment = $3, decided_at = $1 WHERE id = $4 AND status = $5 RETURNING *",
            )
            .bind(c.now)
            .bind(by.clone())
            .bind(comment.clone())
            .bind(&c.approval_id)
            .bind(c.from.as_str()),
            None => sqlx::query(
                "UPDATE approvals SET status = 'applied', message = 'applied', updated_at = $1 \
                 WHERE id = $2 AND status = $3 RETURNING *",
            )
            .bind(c.now)
            .bind(&c.approval_id)
            .bind(c.from.as_str()),
        }
        .fetch_optional(&mut *conn)
        .await?;
        let Some(row) = row else {
            return Err(StoreError::NotPending(c.approval_id.clone()));
        };
        if let Some(audit) = &c.audit {
            Self::write_audit(&mut *conn, audit, c.now).await?;
        }
        if c.decision.is_none() {
            return Ok(0);
        }
        let event = crate::webhooks::approval_event(EventType::ApprovalDecided, &approval_from_row(&row)?, c.now);
        Self::queue_event(conn, &event).await
    }
}
