//! Port assignment: one free TCP port per replica, never shared by two live replicas.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, TcpListener};
use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::error::RuntimeError;

/// Hands out ports from a range, round-robin, skipping ports that are leased or that fail a
/// bind test on 127.0.0.1 (something else on the host is using them).
pub(crate) struct PortPool {
    range: Range<u16>,
    state: Mutex<PoolState>,
}

struct PoolState {
    leased: BTreeSet<u16>,
    /// Where the next search starts, so a just-released port is not handed out again at once.
    cursor: u16,
}

impl PortPool {
    pub(crate) fn new(range: Range<u16>) -> Arc<Self> {
        let cursor = range.start;
        Arc::new(Self { range, state: Mutex::new(PoolState { leased: BTreeSet::new(), cursor }) })
    }

    fn lock(&self) -> MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Leases a free port until the returned lease is dropped.
    pub(crate) fn lease(self: &Arc<Self>) -> Result<PortLease, RuntimeError> {
        let mut state = self.lock();
        let (start, end) = (self.range.start, self.range.end);
        let len = end.saturating_sub(start);
        let first = if (start..end).contains(&state.cursor) { state.cursor } else { start };
        for offset in 0..len {
            let port = start + (first - start + offset) % len;
            if state.leased.contains(&port) || !bindable(port) {
                continue;
            }
            state.leased.insert(port);
            state.cursor = port.wrapping_add(1);
            return Ok(PortLease { pool: Arc::clone(self), port });
        }
        Err(RuntimeError::NoFreePort { start, end })
    }
}

/// Whether nothing listens on the port (on 127.0.0.1) right now.
pub(crate) fn bindable(port: u16) -> bool {
    port != 0 && TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
}

/// A leased port; released when dropped.
pub(crate) struct PortLease {
    pool: Arc<PortPool>,
    port: u16,
}

impl PortLease {
    pub(crate) fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for PortLease {
    fn drop(&mut self) {
        self.pool.lock().leased.remove(&self.port);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_are_unique_skip_busy_ports_and_are_released() {
        let busy = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let busy_port = busy.local_addr().expect("addr").port();
        let range = busy_port..busy_port.saturating_add(3);
        if range.len() != 3 || !(range.start + 1..range.end).all(bindable) {
            return; // the neighbours are taken by something else on this host: nothing to test
        }
        let pool = PortPool::new(range);
        let a = pool.lease().expect("first");
        let b = pool.lease().expect("second");
        assert_ne!(a.port(), busy_port);
        assert_ne!(b.port(), busy_port);
        assert_ne!(a.port(), b.port());
        assert!(pool.lease().is_err(), "range exhausted");
        let released = a.port();
        drop(a);
        assert_eq!(pool.lease().expect("after release").port(), released);
    }

    #[test]
    fn empty_range_fails() {
        assert!(PortPool::new(5000..5000).lease().is_err());
    }
}
