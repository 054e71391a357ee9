//! The states the control plane reasons about, as enums (stored as their lower-case names).

use serde::Serialize;

macro_rules! named_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $text:literal),* $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
        pub enum $name {
            $($(#[$vdoc])* #[serde(rename = $text)] $variant),*
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),*];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),*
                }
            }

            pub fn parse(s: &str) -> Option<Self> {
                match s {
                    $($text => Some($name::$variant),)*
                    _ => None,
                }
            }

            /// Every name, comma-separated (for error messages).
            pub fn names() -> String {
                Self::ALL.iter().map(|v| v.as_str()).collect::<Vec<_>>().join(", ")
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

named_enum! {
    /// A deployment's status, derived from intent and observed state (see `status.rs`).
    DeploymentStatus {
        Running = "running",
        Deploying = "deploying",
        Degraded = "degraded",
        Failed = "failed",
        Unknown = "unknown",
        Pending = "pending",
        Stopping = "stopping",
        Stopped = "stopped",
    }
}

named_enum! {
    /// What the user wants a deployment to be doing.
    DesiredState {
        Running = "running",
        Stopped = "stopped",
    }
}

named_enum! {
    /// The change an operation tracks.
    OperationKind {
        Create = "create",
        Update = "update",
        Scale = "scale",
        Start = "start",
        Stop = "stop",
        Restart = "restart",
        Delete = "delete",
        /// A version deployed by name (`POST …/versions/{version}/deploy`).
        Deploy = "deploy",
        /// A rollback to an earlier version (`POST …/rollback`).
        Rollback = "rollback",
        /// A version promoted from the previous environment of the chain (`POST …/promote`):
        /// deployed into this deployment, or this deployment created with it.
        Promote = "promote",
    }
}

named_enum! {
    /// Where a version stands: `available` until the operation that deployed it fails
    /// (`failed`) or a rollback away from it marks it (`rolled_back`, or `failed` if asked);
    /// rollbacks never pick a version that is not `available`.
    VersionStatus {
        Available = "available",
        Failed = "failed",
        RolledBack = "rolled_back",
    }
}

named_enum! {
    /// Where an operation is.
    OperationStatus {
        /// The change waits for a second person's approval (see `approvals.rs`).
        AwaitingApproval = "awaiting_approval",
        /// The change waits for its environment's change window to open.
        AwaitingWindow = "awaiting_window",
        InProgress = "in_progress",
        Succeeded = "succeeded",
        Failed = "failed",
    }
}

named_enum! {
    /// Where a pending change is: `pending` (waits for approval), `scheduled` (approved or not
    /// needing approval, waits for the change window), then exactly one of the final ones.
    ApprovalStatus {
        Pending = "pending",
        Scheduled = "scheduled",
        Applied = "applied",
        Rejected = "rejected",
        Expired = "expired",
        Failed = "failed",
    }
}

impl ApprovalStatus {
    /// Whether the change may still apply.
    pub fn is_open(self) -> bool {
        matches!(self, ApprovalStatus::Pending | ApprovalStatus::Scheduled)
    }
}

named_enum! {
    /// How the request an audit record describes ended.
    AuditOutcome {
        /// The change was made.
        Success = "success",
        /// Permission was refused (403).
        Denied = "denied",
        /// The request was refused for another reason (a failed login, a conflict, a locked
        /// environment).
        Failed = "failed",
    }
}

impl OperationKind {
    /// The audit action recorded for it.
    pub fn audit_action(self) -> &'static str {
        match self {
            OperationKind::Create => "deployment.create",
            OperationKind::Update => "deployment.update",
            OperationKind::Scale => "deployment.scale",
            OperationKind::Start => "deployment.start",
            OperationKind::Stop => "deployment.stop",
            OperationKind::Restart => "deployment.restart",
            OperationKind::Delete => "deployment.delete",
            OperationKind::Deploy => "deployment.version.deploy",
            OperationKind::Rollback => "deployment.rollback",
            OperationKind::Promote => "deployment.promote",
        }
    }
}

named_enum! {
    /// What a webhook can subscribe to (see `webhooks/`).
    EventType {
        /// A deployment's stored status changed (`from` → `to`).
        DeploymentStatus = "deployment.status",
        /// An operation succeeded or failed.
        OperationCompleted = "operation.completed",
        /// A change was stored as pending (approval or change window).
        ApprovalRequested = "approval.requested",
        /// A pending change was approved, rejected or expired.
        ApprovalDecided = "approval.decided",
        /// Reserved for alerting: accepted in subscriptions, not emitted yet.
        AlertFired = "alert.fired",
    }
}

named_enum! {
    /// Where a webhook delivery is: `pending` (due now or retried later), then `delivered` (a
    /// 2xx answer) or `failed` (every attempt failed).
    DeliveryStatus {
        Pending = "pending",
        Delivered = "delivered",
        Failed = "failed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for k in OperationKind::ALL {
            assert_eq!(OperationKind::parse(k.as_str()), Some(*k));
        }
        for s in OperationStatus::ALL {
            assert_eq!(OperationStatus::parse(s.as_str()), Some(*s));
        }
        for s in VersionStatus::ALL {
            assert_eq!(VersionStatus::parse(s.as_str()), Some(*s));
        }
        assert_eq!(VersionStatus::names(), "available, failed, rolled_back");
        for s in ApprovalStatus::ALL {
            assert_eq!(ApprovalStatus::parse(s.as_str()), Some(*s));
        }
        assert_eq!(AuditOutcome::names(), "success, denied, failed");
        for e in EventType::ALL {
            assert_eq!(EventType::parse(e.as_str()), Some(*e));
        }
        assert_eq!(DeliveryStatus::parse("delivered"), Some(DeliveryStatus::Delivered));
        assert_eq!(DesiredState::parse("stopped"), Some(DesiredState::Stopped));
        assert_eq!(DesiredState::parse("Stopped"), None);
        assert_eq!(serde_json::to_value(OperationStatus::InProgress).unwrap(), "in_progress");
        assert_eq!(
            DeploymentStatus::names(),
            "running, deploying, degraded, failed, unknown, pending, stopping, stopped"
        );
    }
}
