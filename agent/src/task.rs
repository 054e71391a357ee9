//! Small helpers for spawned tasks.

use tokio::task::JoinHandle;

/// Aborts the task when dropped, so a task never outlives the scope that owns it.
pub(crate) struct AbortOnDrop<T>(pub JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
