//! hyper's background tasks (HTTP/2 streams, pooled connections) run on
//! the task tree like every other task.

use std::future::Future;

use skiff_shared::tasks::TaskTree;

#[derive(Debug, Clone)]
pub(crate) struct TreeExecutor(pub TaskTree);

impl<F> hyper::rt::Executor<F> for TreeExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        // Pooled connections live until their pool drops them: end them
        // with the tree so that shutdown does not wait for the pool's
        // idle timeout.
        let tree = self.0.clone();
        self.0.spawn("http background", async move {
            tokio::select! {
                _ = fut => {}
                () = tree.cancelled() => {}
            }
        });
    }
}
