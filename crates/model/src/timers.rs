//! One timer wheel per node for delayed actions (typing auto-stop, call ring timeout): no task or
//! timer per socket. Jobs carry plain data and re-check the state when they fire, so a cancelled or
//! superseded job simply does nothing.
//!
//! Bounded: jobs reach the wheel through a channel of [`QUEUE`] entries, and the callers keep at most
//! one pending job per thing they time (one per typing user and room, one per call). Presence is not
//! here: its offline checks live in the store, so they survive the node (see `events::presence`).

use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_util::time::DelayQueue;

/// Jobs waiting to enter the wheel; past it a job is dropped with a warning.
const QUEUE: usize = 65_536;

#[derive(Debug, Clone)]
pub enum Job {
    /// A typing indicator's deadline may have passed: stop it unless a newer `typing` moved it.
    TypingStop { room: String, user_id: String },
    /// `CALL_RING_TIMEOUT_MS` after `call-user`: end the call if still ringing.
    CallTimeout { call_id: String },
}

pub struct Timers {
    tx: mpsc::Sender<(Duration, Job)>,
    rx: Mutex<Option<mpsc::Receiver<(Duration, Job)>>>,
}

impl Default for Timers {
    fn default() -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        Timers { tx, rx: Mutex::new(Some(rx)) }
    }
}

impl Timers {
    /// Hands `job` to the wheel; false when it was dropped (the queue is full): a caller that keeps
    /// state for the job must not wait for it then.
    pub fn schedule(&self, after: Duration, job: Job) -> bool {
        match self.tx.try_send((after, job)) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!("timer queue full or closed, job dropped: {e}");
                false
            }
        }
    }

    /// Runs the wheel: each due job is handed to `run` on its own short task.
    pub fn spawn<F, Fut>(&self, run: F) -> tokio::task::JoinHandle<()>
    where
        F: Fn(Job) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let rx = self.rx.lock().unwrap_or_else(|e| e.into_inner()).take();
        tokio::spawn(async move {
            let Some(mut rx) = rx else { return };
            let mut queue: DelayQueue<Job> = DelayQueue::new();
            loop {
                tokio::select! {
                    msg = rx.recv() => match msg {
                        Some((after, job)) => { queue.insert(job, after); }
                        None => return,
                    },
                    Some(expired) = queue.next(), if !queue.is_empty() => {
                        tokio::spawn(run(expired.into_inner()));
                    }
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn jobs_fire_and_the_queue_is_bounded() {
        let timers = Timers::default();
        let (tx, mut rx) = mpsc::unbounded_channel();
        // Fill the channel before the wheel runs: past QUEUE, jobs are dropped, not queued.
        for i in 0..QUEUE {
            assert!(timers.schedule(Duration::from_millis(1), Job::CallTimeout { call_id: i.to_string() }));
        }
        for i in 0..10 {
            let dropped = !timers.schedule(Duration::from_millis(1), Job::CallTimeout { call_id: i.to_string() });
            assert!(dropped, "a dropped job is reported, so that its caller does not wait for it");
        }
        let task = timers.spawn(move |job| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(job);
            }
        });
        let mut fired = 0;
        while fired < QUEUE {
            tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.expect("jobs fire").expect("open");
            fired += 1;
        }
        assert!(tokio::time::timeout(Duration::from_millis(200), rx.recv()).await.is_err(), "the excess was dropped");
        task.abort();
    }
}
