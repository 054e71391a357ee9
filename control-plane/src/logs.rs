//! Live log fan-out: wakes Server-Sent-Event streams when new lines for a deployment are stored.
//!
//! The hub carries no lines, only "something new was stored for deployment D": subscribers
//! re-query the store from their own cursor, so a slow subscriber can never make the hub buffer
//! anything, and a missed wake-up costs at most one poll interval (SSE streams re-query at least
//! every second anyway, for lines stored by other control-plane replicas).
//!
//! Bounded: one `watch` channel per deployment that has subscribers (removed with its last
//! subscriber), and at most [`MAX_SUBSCRIBERS`] subscriptions at a time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

/// Most concurrent subscriptions (open SSE streams) one control-plane process serves.
pub const MAX_SUBSCRIBERS: usize = 1024;

#[derive(Default)]
struct Inner {
    channels: HashMap<String, watch::Sender<u64>>,
    subscribers: usize,
}

/// Cheap to clone; shared by the telemetry ingest and the SSE handlers.
#[derive(Clone, Default)]
pub struct LogHub {
    inner: Arc<Mutex<Inner>>,
}

impl LogHub {
    /// New lines of `deployment_id` were stored: wakes its subscribers, if any.
    pub fn notify(&self, deployment_id: &str) {
        if let Some(tx) = self.lock().channels.get(deployment_id) {
            tx.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// Subscribes to `deployment_id`, or `None` when [`MAX_SUBSCRIBERS`] are already open.
    pub fn subscribe(&self, deployment_id: &str) -> Option<Subscription> {
        let mut inner = self.lock();
        if inner.subscribers >= MAX_SUBSCRIBERS {
            return None;
        }
        inner.subscribers += 1;
        let rx = inner.channels.entry(deployment_id.to_string()).or_insert_with(|| watch::channel(0).0).subscribe();
        Some(Subscription { hub: self.clone(), deployment_id: deployment_id.to_string(), rx })
    }

    /// Open subscriptions.
    pub fn subscribers(&self) -> usize {
        self.lock().subscribers
    }

    /// Deployments with at least one subscription.
    pub fn channels(&self) -> usize {
        self.lock().channels.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("log hub lock")
    }
}

/// One subscriber's view of a deployment; unsubscribes when dropped.
pub struct Subscription {
    hub: LogHub,
    deployment_id: String,
    rx: watch::Receiver<u64>,
}

impl Subscription {
    /// Forgets earlier notifications: call it right before querying the store, so that
    /// [`changed`](Self::changed) only reports what may have been stored after that query began.
    pub fn mark_seen(&mut self) {
        self.rx.borrow_and_update();
    }

    /// Resolves when a notification arrived since the last [`mark_seen`](Self::mark_seen).
    pub async fn changed(&mut self) {
        if self.rx.changed().await.is_err() {
            // Cannot happen while we are subscribed (the hub keeps the sender); never spin.
            std::future::pending::<()>().await;
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut inner = self.hub.lock();
        inner.subscribers -= 1;
        // `self.rx` is still alive here: a count of 1 means this was the last subscriber.
        if inner.channels.get(&self.deployment_id).is_some_and(|tx| tx.receiver_count() <= 1) {
            inner.channels.remove(&self.deployment_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn notifications_wake_subscribers_of_that_deployment_only() {
        let hub = LogHub::default();
        let mut a = hub.subscribe("dep-a").unwrap();
        let mut b = hub.subscribe("dep-b").unwrap();
        hub.notify("dep-a");
        tokio::time::timeout(Duration::from_secs(1), a.changed()).await.expect("dep-a woken");
        assert!(tokio::time::timeout(Duration::from_millis(50), b.changed()).await.is_err(), "dep-b not woken");
        // Notifications before mark_seen are forgotten; later ones are not.
        hub.notify("dep-b");
        b.mark_seen();
        assert!(tokio::time::timeout(Duration::from_millis(50), b.changed()).await.is_err());
        hub.notify("dep-b");
        tokio::time::timeout(Duration::from_secs(1), b.changed()).await.expect("dep-b woken");
        hub.notify("dep-nobody");
        assert_eq!(hub.channels(), 2, "no channel is created by notify");
    }

    #[test]
    fn channels_go_with_their_last_subscriber_and_subscriptions_are_capped() {
        let hub = LogHub::default();
        let a1 = hub.subscribe("dep-a").unwrap();
        let a2 = hub.subscribe("dep-a").unwrap();
        assert_eq!((hub.channels(), hub.subscribers()), (1, 2));
        drop(a1);
        assert_eq!((hub.channels(), hub.subscribers()), (1, 1));
        drop(a2);
        assert_eq!((hub.channels(), hub.subscribers()), (0, 0));
        let all: Vec<_> = (0..MAX_SUBSCRIBERS).map(|i| hub.subscribe(&format!("d{i}")).unwrap()).collect();
        assert!(hub.subscribe("one-more").is_none());
        drop(all);
        assert_eq!((hub.channels(), hub.subscribers()), (0, 0));
        assert!(hub.subscribe("one-more").is_some());
    }
}
