//! One timer wheel per node for every delayed action (typing auto-stop, presence grace, call ring
//! timeout): no task or timer per socket. Jobs carry plain data and re-check the state when they fire,
//! so a cancelled or superseded job simply does nothing.

use std::sync::Mutex;
use std::time::Duration;

use futures_util::StreamExt;
use socketioxide::adapter::Adapter;
use socketioxide::SocketIo;
use tokio::sync::mpsc;
use tokio_util::time::DelayQueue;

use crate::state::AppState;

#[derive(Debug, Clone)]
pub enum Job {
    /// The presence grace of a user whose last socket left: offline unless they came back.
    PresenceCheck { user_id: String },
    /// `TYPING_TIMEOUT_MS` after a `typing`: stop unless a newer `typing` came (generation).
    TypingStop { room: String, user_id: String, generation: u64 },
    /// `CALL_RING_TIMEOUT_MS` after `call-user`: end the call if still ringing.
    CallTimeout { call_id: String },
}

pub struct Timers {
    tx: mpsc::UnboundedSender<(Duration, Job)>,
    rx: Mutex<Option<mpsc::UnboundedReceiver<(Duration, Job)>>>,
}

impl Default for Timers {
    fn default() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Timers { tx, rx: Mutex::new(Some(rx)) }
    }
}

impl Timers {
    pub fn schedule(&self, after: Duration, job: Job) {
        let _ = self.tx.send((after, job));
    }
}

/// Runs the wheel: each due job is handed to [`crate::events::run_job`] on its own short task.
pub fn spawn<A: Adapter>(io: SocketIo<A>, state: AppState) -> tokio::task::JoinHandle<()> {
    let rx = state.timers.rx.lock().unwrap_or_else(|e| e.into_inner()).take();
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
                    let (io, state) = (io.clone(), state.clone());
                    tokio::spawn(async move { crate::events::run_job(&io, &state, expired.into_inner()).await });
                }
            }
        }
    })
}
