//! The operator's actions on the queue, carried out for the API: a suspension or a hold
//! is written to the spool (with the `held`/`released` events it causes, in the same
//! transaction, for the webhooks' outbox) before the scheduler is told, so a restart
//! keeps it; retries and cancels go to the scheduler, which persists what they end.

use crate::control::{Ending, Selector, Steer, Steered, Suspension, Target};
use crate::engine::handle::SchedulerHandle;
use crate::engine::spool::{Op, Spool, SpoolError};
use crate::event::{Event, Events, Kind};
use crate::message::MessageId;
use crate::time::WallClock;
use std::sync::Arc;

pub struct Operator {
    pub spool: Arc<dyn Spool>,
    pub scheduler: SchedulerHandle,
    pub events: Events,
    pub clock: WallClock,
}

#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    #[error("{0} is not in the queue")]
    NotQueued(Target),
    #[error("{0} is not suspended")]
    NotSuspended(Target),
    #[error("{0} is suspended already")]
    AlreadySuspended(Target),
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error("the engine is shutting down")]
    Stopping,
}

impl Operator {
    /// Puts the suspensions and holds kept in the spool back in force; call before the
    /// recovered queue is handed to the scheduler. Holds of messages no longer queued are
    /// dropped.
    pub async fn restore(&self) -> Result<usize, OperatorError> {
        let spool = self.spool.clone();
        let kept = tokio::task::spawn_blocking(move || {
            let kept = spool.suspended()?;
            let mut live = Vec::new();
            let mut gone = Vec::new();
            for (target, suspension) in kept {
                let pending = match &target {
                    Target::Message(id) => spool
                        .record(*id)?
                        .is_some_and(|(_, groups)| groups.iter().any(|g| !g.is_done())),
                    _ => true,
                };
                match pending {
                    true => live.push((target, suspension)),
                    false => gone.push(target),
                }
            }
            Ok::<_, SpoolError>((live, gone))
        })
        .await
        .map_err(|_| OperatorError::Stopping)??;
        let (live, gone) = kept;
        if !gone.is_empty() {
            let ops = gone
                .into_iter()
                .map(|target| Op::Resume { target })
                .collect();
            self.spool.commit(ops).await?;
        }
        let n = live.len();
        for (target, suspension) in live {
            self.steer(Steer::Suspend { target, suspension }).await?;
        }
        Ok(n)
    }

    /// Suspends a provider or a domain, or holds a message, durably.
    pub async fn suspend(
        &self,
        target: Target,
        reason: String,
        actor: &str,
    ) -> Result<Steered, OperatorError> {
        if self
            .scheduler
            .suspensions()
            .await
            .iter()
            .any(|(t, _)| *t == target)
        {
            return Err(OperatorError::AlreadySuspended(target));
        }
        let mut events = self.recipient_events(&target, Kind::Held, actor).await?;
        let suspension = Suspension {
            reason,
            actor: actor.to_string(),
            since: self.clock.now(),
        };
        let mut ops = vec![Op::Suspend {
            target: target.clone(),
            suspension: suspension.clone(),
        }];
        ops.extend(self.events.outbox(&mut events).map(Op::Outbox));
        self.spool.commit(ops).await?;
        tracing::info!(%target, actor, reason = %suspension.reason, "suspended by an operator");
        let steered = self.steer(Steer::Suspend { target, suspension }).await?;
        for e in events {
            self.events.emit(e).await;
        }
        Ok(steered)
    }

    /// Ends a suspension or a hold, durably; its mail goes at its destination's pace.
    pub async fn resume(&self, target: Target, actor: &str) -> Result<Steered, OperatorError> {
        if !self
            .scheduler
            .suspensions()
            .await
            .iter()
            .any(|(t, _)| *t == target)
        {
            return Err(OperatorError::NotSuspended(target));
        }
        let mut events = self
            .recipient_events(&target, Kind::Released, actor)
            .await
            .unwrap_or_default();
        let mut ops = vec![Op::Resume {
            target: target.clone(),
        }];
        ops.extend(self.events.outbox(&mut events).map(Op::Outbox));
        self.spool.commit(ops).await?;
        tracing::info!(%target, actor, "resumed by an operator");
        let steered = self.steer(Steer::Resume { target }).await?;
        for e in events {
            self.events.emit(e).await;
        }
        Ok(steered)
    }

    /// Makes the selected mail due now (at its destinations' pace).
    pub async fn retry(
        &self,
        selector: Selector,
        dry_run: bool,
        actor: &str,
    ) -> Result<Steered, OperatorError> {
        let steered = self
            .steer(Steer::Retry {
                selector: selector.clone(),
                dry_run,
            })
            .await?;
        if !dry_run {
            tracing::info!(
                ?selector,
                actor,
                groups = steered.groups,
                "retry asked by an operator"
            );
        }
        Ok(steered)
    }

    /// Cancels or bounces the selected recipients.
    pub async fn end(
        &self,
        selector: Selector,
        how: Ending,
        dry_run: bool,
        actor: &str,
    ) -> Result<Steered, OperatorError> {
        let steered = self
            .steer(Steer::End {
                selector: selector.clone(),
                how: how.clone(),
                actor: actor.to_string(),
                dry_run,
            })
            .await?;
        if !dry_run {
            tracing::info!(
                ?selector,
                ?how,
                actor,
                recipients = steered.recipients,
                "recipients ended by an operator"
            );
            // Holds of the messages named have nothing left to hold: they go quietly (no
            // `released` event for a recipient that was just ended).
            let mut held = self.held_messages().await;
            held.retain(|t| matches!(t, Target::Message(id) if selector.messages.contains(id)));
            if !held.is_empty() {
                let ops = held
                    .iter()
                    .map(|target| Op::Resume {
                        target: target.clone(),
                    })
                    .collect();
                self.spool.commit(ops).await?;
                for target in held {
                    self.steer(Steer::Resume { target }).await?;
                }
            }
        }
        Ok(steered)
    }

    /// Holds every message with mail the selector picks (those held already stay as
    /// they are), in one commit; a dry run counts them.
    pub async fn hold_many(
        &self,
        selector: Selector,
        dry_run: bool,
        reason: String,
        actor: &str,
    ) -> Result<Steered, OperatorError> {
        let hold = Suspension {
            reason,
            actor: actor.to_string(),
            since: self.clock.now(),
        };
        self.holds(selector, dry_run, Some(hold), actor).await
    }

    /// Releases every held message the selector picks, in one commit; a dry run counts
    /// them.
    pub async fn release_many(
        &self,
        selector: Selector,
        dry_run: bool,
        actor: &str,
    ) -> Result<Steered, OperatorError> {
        self.holds(selector, dry_run, None, actor).await
    }

    /// Holds (with `hold`) the picked messages not held yet, or releases (`None`) the
    /// picked ones that are: their changes and their `held`/`released` events in one
    /// commit, then the scheduler told.
    async fn holds(
        &self,
        selector: Selector,
        dry_run: bool,
        hold: Option<Suspension>,
        actor: &str,
    ) -> Result<Steered, OperatorError> {
        let held: Vec<Target> = self.held_messages().await;
        let mut picked = self.steer(Steer::Select { selector }).await?;
        picked
            .messages
            .retain(|id| held.contains(&Target::Message(*id)) == hold.is_none());
        if dry_run || picked.messages.is_empty() {
            return Ok(picked);
        }
        let kind = match hold {
            Some(_) => Kind::Held,
            None => Kind::Released,
        };
        let steer = |target: Target| match &hold {
            Some(suspension) => Steer::Suspend {
                target,
                suspension: suspension.clone(),
            },
            None => Steer::Resume { target },
        };
        let mut events = Vec::new();
        let mut ops = Vec::new();
        for id in &picked.messages {
            let target = Target::Message(*id);
            events.extend(
                self.recipient_events(&target, kind, actor)
                    .await
                    .unwrap_or_default(),
            );
            ops.push(match &hold {
                Some(suspension) => Op::Suspend {
                    target,
                    suspension: suspension.clone(),
                },
                None => Op::Resume { target },
            });
        }
        ops.extend(self.events.outbox(&mut events).map(Op::Outbox));
        self.spool.commit(ops).await?;
        let reason = hold.as_ref().map(|h| h.reason.as_str());
        tracing::info!(
            messages = picked.messages.len(),
            actor,
            ?kind,
            reason,
            "messages held or released by an operator"
        );
        let mut steered = Steered::default();
        for id in &picked.messages {
            let s = self.steer(steer(Target::Message(*id))).await?;
            steered.groups += s.groups;
            steered.recipients += s.recipients;
            steered.in_flight += s.in_flight;
        }
        steered.messages = picked.messages;
        for e in events {
            self.events.emit(e).await;
        }
        Ok(steered)
    }

    async fn held_messages(&self) -> Vec<Target> {
        self.scheduler
            .suspensions()
            .await
            .into_iter()
            .map(|(t, _)| t)
            .filter(|t| matches!(t, Target::Message(_)))
            .collect()
    }

    pub async fn suspensions(&self) -> Vec<(Target, Suspension)> {
        self.scheduler.suspensions().await
    }

    async fn steer(&self, op: Steer) -> Result<Steered, OperatorError> {
        self.scheduler
            .steer(op)
            .await
            .ok_or(OperatorError::Stopping)
    }

    /// One `kind` event per pending recipient of a held message (none for a provider or a
    /// domain: those are told by the suspension itself, in the log and the API).
    async fn recipient_events(
        &self,
        target: &Target,
        kind: Kind,
        actor: &str,
    ) -> Result<Vec<Event>, OperatorError> {
        let Target::Message(id) = target else {
            return Ok(Vec::new());
        };
        let (spool, id): (Arc<dyn Spool>, MessageId) = (self.spool.clone(), *id);
        let record = tokio::task::spawn_blocking(move || spool.record(id))
            .await
            .map_err(|_| OperatorError::Stopping)??;
        let Some((envelope, groups)) = record else {
            return Err(OperatorError::NotQueued(target.clone()));
        };
        let now = self.clock.now();
        let mut events = Vec::new();
        for g in &groups {
            for r in g.pending() {
                let mut e = Event::about(kind, now, &envelope, r.address.clone(), g.domain.clone());
                e.actor = Some(actor.to_string());
                events.push(e);
            }
        }
        if events.is_empty() {
            return Err(OperatorError::NotQueued(target.clone()));
        }
        Ok(events)
    }
}
