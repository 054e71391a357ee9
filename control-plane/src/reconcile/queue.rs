//! The reconcile queue: deployment ids due at an instant, each at most once (kube-rs style: an
//! id queued again before it ran keeps the earlier time), and per-id locks so that one
//! deployment is never reconciled twice at once on this replica.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use tokio::sync::{Mutex as AsyncMutex, Notify, OwnedMutexGuard};
use tokio::time::Instant;

#[derive(Default)]
pub(crate) struct Queue {
    state: Mutex<State>,
    wake: Notify,
}

#[derive(Default)]
struct State {
    due: BTreeSet<(Instant, String)>,
    at: HashMap<String, Instant>,
}

impl Queue {
    /// Schedules `id` at `at`, or earlier if it is already scheduled earlier.
    pub(crate) fn push(&self, id: &str, at: Instant) {
        {
            let mut s = self.state.lock().expect("queue lock");
            if let Some(&t) = s.at.get(id) {
                if t <= at {
                    return;
                }
                s.due.remove(&(t, id.to_string()));
            }
            s.due.insert((at, id.to_string()));
            s.at.insert(id.to_string(), at);
        }
        self.wake.notify_waiters();
    }

    /// Waits for the next due id and takes it off the queue.
    pub(crate) async fn next(&self) -> String {
        loop {
            let wake = self.wake.notified();
            tokio::pin!(wake);
            wake.as_mut().enable();
            let until = {
                let mut s = self.state.lock().expect("queue lock");
                match s.due.first().cloned() {
                    Some((t, id)) if t <= Instant::now() => {
                        s.due.remove(&(t, id.clone()));
                        s.at.remove(&id);
                        return id;
                    }
                    Some((t, _)) => Some(t),
                    None => None,
                }
            };
            match until {
                Some(t) => {
                    tokio::select! {
                        _ = wake => {}
                        _ = tokio::time::sleep_until(t) => {}
                    }
                }
                None => wake.await,
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.state.lock().expect("queue lock").due.len()
    }
}

/// One async lock per key, created on demand and forgotten when nobody holds or waits for it.
#[derive(Default)]
pub(crate) struct KeyLocks {
    map: Mutex<HashMap<String, Arc<AsyncMutex<()>>>>,
}

pub(crate) struct KeyGuard<'a> {
    locks: &'a KeyLocks,
    key: String,
    guard: Option<OwnedMutexGuard<()>>,
}

impl KeyLocks {
    pub(crate) async fn lock(&self, key: &str) -> KeyGuard<'_> {
        let m = self.map.lock().expect("locks").entry(key.to_string()).or_default().clone();
        let guard = m.lock_owned().await;
        KeyGuard { locks: self, key: key.to_string(), guard: Some(guard) }
    }
}

impl Drop for KeyGuard<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut map = self.locks.map.lock().expect("locks");
        // Only the map's own reference is left: nobody holds or waits for this key.
        if map.get(&self.key).is_some_and(|m| Arc::strong_count(m) == 1) {
            map.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn ids_come_out_once_in_due_order_and_the_earlier_time_wins() {
        let q = Queue::default();
        let now = Instant::now();
        q.push("b", now + Duration::from_secs(2));
        q.push("a", now + Duration::from_secs(5));
        q.push("a", now + Duration::from_secs(1));
        q.push("b", now + Duration::from_secs(9));
        assert_eq!(q.len(), 2);
        assert_eq!(q.next().await, "a");
        assert!(Instant::now() >= now + Duration::from_secs(1));
        assert_eq!(q.next().await, "b");
        assert!(Instant::now() >= now + Duration::from_secs(2));
        assert_eq!(q.len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_worker_wakes_for_an_earlier_push() {
        let q = Arc::new(Queue::default());
        q.push("late", Instant::now() + Duration::from_secs(60));
        let worker = tokio::spawn({
            let q = q.clone();
            async move { q.next().await }
        });
        tokio::task::yield_now().await;
        q.push("now", Instant::now());
        assert_eq!(worker.await.unwrap(), "now");
    }

    #[tokio::test]
    async fn key_locks_serialize_one_key_and_are_forgotten() {
        let locks = Arc::new(KeyLocks::default());
        let g = locks.lock("k").await;
        let other = locks.lock("other").await;
        let waiter = tokio::spawn({
            let locks = locks.clone();
            async move {
                let _g = locks.lock("k").await;
            }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(other);
        drop(g);
        waiter.await.unwrap();
        assert!(locks.map.lock().unwrap().is_empty());
    }
}
