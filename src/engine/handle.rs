//! How the rest of the engine talks to the scheduler task: [`Command`]s over one channel,
//! behind a cloneable [`SchedulerHandle`]. The only way the intake, the API and the workers
//! touch queue state.

use crate::control::{Steer, Steered, Suspension, Target};
use crate::engine::scheduler::{
    Delivery, DestinationView, DomainSummary, Input, Job, QueueIndex, QueueShape, Queued, ShapeBy,
    WorkerId,
};
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};

/// What reaches the scheduler task.
pub enum Command {
    Input(Input),
    /// A worker's outcome, and its request for its next job.
    Delivered {
        delivery: Box<Delivery>,
        /// One of the places for outcomes waiting for the disk; given back once committed.
        permit: OwnedSemaphorePermit,
        next: oneshot::Sender<Option<Job>>,
    },
    /// A worker whose job is over without an outcome (`Gone` or `Unreadable`) asks for
    /// its next job.
    Next {
        input: Input,
        worker: WorkerId,
        next: oneshot::Sender<Option<Job>>,
    },
    Summary {
        reply: oneshot::Sender<Vec<DomainSummary>>,
    },
    Destinations {
        reply: oneshot::Sender<Vec<DestinationView>>,
    },
    /// An operator's operation on the queue.
    Steer {
        op: Steer,
        reply: oneshot::Sender<Steered>,
    },
    Suspensions {
        reply: oneshot::Sender<Vec<(Target, Suspension)>>,
    },
    /// A reloaded policy.
    Reconfigure(Box<crate::engine::scheduler::Policy>),
    Shape {
        by: ShapeBy,
        reply: oneshot::Sender<QueueShape>,
    },
    Index {
        reply: oneshot::Sender<QueueIndex>,
    },
}

/// The handle everyone else holds.
#[derive(Clone)]
pub struct SchedulerHandle {
    tx: mpsc::UnboundedSender<Command>,
}

impl SchedulerHandle {
    pub fn enqueue(&self, groups: Vec<Queued>) {
        self.input(Input::Queued(groups));
    }

    /// Tells the scheduler something that needs no answer. Never blocks: drop guards call
    /// it.
    pub fn input(&self, input: Input) {
        let _ = self.tx.send(Command::Input(input));
    }

    /// Reports an outcome; returns the worker's next job, or `None` when it is to close.
    pub async fn delivered(&self, delivery: Delivery, permit: OwnedSemaphorePermit) -> Option<Job> {
        let (next, rx) = oneshot::channel();
        self.tx
            .send(Command::Delivered {
                delivery: Box::new(delivery),
                permit,
                next,
            })
            .ok()?;
        rx.await.ok().flatten()
    }

    /// Reports a job that came to nothing (`Gone`, `Unreadable`); returns the next job.
    pub async fn next(&self, worker: WorkerId, input: Input) -> Option<Job> {
        let (next, rx) = oneshot::channel();
        self.tx
            .send(Command::Next {
                input,
                worker,
                next,
            })
            .ok()?;
        rx.await.ok().flatten()
    }

    pub async fn summary(&self) -> Vec<DomainSummary> {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Command::Summary { reply }).is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }

    /// Carries out an operator's operation; `None` when the scheduler is gone.
    pub async fn steer(&self, op: Steer) -> Option<Steered> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Command::Steer { op, reply }).ok()?;
        rx.await.ok()
    }

    /// Hands the scheduler a reloaded policy.
    pub fn reconfigure(&self, policy: crate::engine::scheduler::Policy) {
        let _ = self.tx.send(Command::Reconfigure(Box::new(policy)));
    }

    pub async fn suspensions(&self) -> Vec<(Target, Suspension)> {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Command::Suspensions { reply }).is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }

    pub async fn destinations(&self) -> Vec<DestinationView> {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Command::Destinations { reply }).is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }

    /// The pending recipients' ages per domain or provider; `None` once the scheduler is
    /// gone.
    pub async fn shape(&self, by: ShapeBy) -> Option<QueueShape> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Command::Shape { by, reply }).ok()?;
        rx.await.ok()
    }

    /// Providers and groups in flight, for listing the queue; empty once the scheduler is
    /// gone.
    pub async fn index(&self) -> QueueIndex {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Command::Index { reply }).is_err() {
            return QueueIndex::default();
        }
        rx.await.unwrap_or_default()
    }
}

pub fn channel() -> (SchedulerHandle, mpsc::UnboundedReceiver<Command>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (SchedulerHandle { tx }, rx)
}
