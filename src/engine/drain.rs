//! Moving a node's queued mail to another MTA before maintenance (`knock drain --to`,
//! `POST /api/v1/drain`): each message is held here (durably), handed over whole in one
//! SMTP transaction, and cancelled here only once the other side said 250 to its data. A
//! message the other side takes for none of its recipients, or in flight here, stays and
//! is released. An interrupted drain leaves its message held; the next run moves it again
//! (a duplicate only of a message in flight at the interruption).

use crate::config::TimeoutConfig;
use crate::control::{Ending, Selector, Target};
use crate::engine::operator::{Operator, OperatorError};
use crate::engine::spool::Spool;
use crate::message::MessageId;
use crate::net::smtp::client::{Client, OutRcpt, Transaction, WholeRefused};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::sync::Arc;

/// What one round of a drain did.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Drained {
    /// Messages the other side took, cancelled here.
    pub moved: usize,
    /// Messages that stay here this round, and why.
    pub kept: Vec<Kept>,
    /// Messages still queued here after the round (those kept included).
    pub left: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Kept {
    pub id: String,
    pub why: String,
}

/// What a drain needs of the engine.
pub struct Drainer {
    pub operator: Arc<Operator>,
    pub spool: Arc<dyn Spool>,
    /// The name this node gives in EHLO.
    pub hostname: String,
    pub timeouts: TimeoutConfig,
    /// Messages handed over and cancelled: the cancellation reaches the spool a moment
    /// later, and until then the spool still lists them as queued. Never handed over twice.
    pub moved: std::sync::Mutex<std::collections::HashSet<MessageId>>,
}

impl Drainer {
    /// Moves up to `limit` queued messages to `to`, one transaction each.
    pub async fn round(&self, to: SocketAddr, limit: usize) -> Result<Drained, OperatorError> {
        let actor = format!("drain to {to}");
        let index = self.operator.scheduler.index().await;
        let (candidates, left) = self.pending(limit).await?;
        let mut out = Drained::default();
        let mut client: Option<Client> = None;
        for id in candidates {
            let busy = |index: &crate::engine::scheduler::QueueIndex| {
                index.in_flight.iter().any(|(m, _)| *m == id)
            };
            if busy(&index) {
                out.kept.push(kept(id, "being delivered here now"));
                continue;
            }
            let one = Selector {
                messages: vec![id],
                ..Selector::default()
            };
            // An operator's own hold stays as it was when the message stays.
            let held = self
                .operator
                .suspensions()
                .await
                .iter()
                .any(|(t, _)| *t == Target::Message(id));
            if !held {
                self.operator
                    .hold_many(one.clone(), false, format!("moving to {to}"), &actor)
                    .await?;
            }
            let release = async |one: Selector| match held {
                true => Ok::<(), OperatorError>(()),
                false => self
                    .operator
                    .release_many(one, false, &actor)
                    .await
                    .map(|_| ()),
            };
            // An attempt may have started between the look and the hold.
            if busy(&self.operator.scheduler.index().await) {
                release(one).await?;
                out.kept.push(kept(id, "being delivered here now"));
                continue;
            }
            match self.hand_over(&mut client, to, id).await {
                Ok(()) => {
                    self.moved.lock().expect("drain lock").insert(id);
                    self.operator
                        .end(one, Ending::Cancel, false, &actor)
                        .await?;
                    out.moved += 1;
                }
                Err(why) => {
                    release(one).await?;
                    out.kept.push(kept(id, &why));
                }
            }
        }
        if let Some(c) = client {
            c.quit().await;
        }
        out.left = left.saturating_sub(out.moved);
        Ok(out)
    }

    /// Up to `limit` queued messages, in id order, and how many are queued in all.
    async fn pending(&self, limit: usize) -> Result<(Vec<MessageId>, usize), OperatorError> {
        let spool = self.spool.clone();
        let moved = self.moved.lock().expect("drain lock").clone();
        let found = tokio::task::spawn_blocking(move || {
            let mut ids: Vec<MessageId> = Vec::new();
            let mut all = 0;
            let mut last = None;
            spool.scan_pending(None, &mut |envelope, _| {
                if last != Some(envelope.id) && !moved.contains(&envelope.id) {
                    last = Some(envelope.id);
                    all += 1;
                    if ids.len() < limit {
                        ids.push(envelope.id);
                    }
                }
                std::ops::ControlFlow::Continue(())
            })?;
            Ok::<_, crate::engine::spool::SpoolError>((ids, all))
        })
        .await
        .map_err(|e| {
            OperatorError::Spool(crate::engine::spool::SpoolError::Storage(e.to_string()))
        })??;
        Ok(found)
    }

    /// One message, whole, to `to`; the connection is kept for the next.
    async fn hand_over(
        &self,
        client: &mut Option<Client>,
        to: SocketAddr,
        id: MessageId,
    ) -> Result<(), String> {
        let spool = self.spool.clone();
        let read = tokio::task::spawn_blocking(move || {
            let record = spool.record(id)?;
            let body = spool.body(id)?;
            Ok::<_, crate::engine::spool::SpoolError>((record, body))
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("reading the spool: {e}"))?;
        let (Some((envelope, groups)), Some(body)) = read else {
            return Err("no longer in the spool".into());
        };
        let rcpts: Vec<OutRcpt<'_>> = groups
            .iter()
            .flat_map(|g| g.pending())
            .map(|r| OutRcpt {
                address: &r.address,
                notify: r.notify,
                orcpt: r.orcpt.as_deref(),
            })
            .collect();
        if rcpts.is_empty() {
            return Err("nothing of it is pending".into());
        }
        if client.as_ref().is_none_or(|c| c.is_broken()) {
            *client = Some(self.connect(to).await?);
        }
        let c = client.as_mut().expect("connected above");
        let tx = Transaction {
            from: &envelope.from,
            params: &envelope.params,
            rcpts: &rcpts,
            body: &body,
        };
        match c.send_whole(&tx).await {
            Ok(reply) if reply.is_positive() => Ok(()),
            Ok(reply) => Err(format!("{to} refused the data: {reply}")),
            Err(WholeRefused::Refused(reply)) => Err(format!("{to} refused: {reply}")),
            Err(WholeRefused::Failed(e)) => {
                *client = None;
                Err(format!("{to}: {e}"))
            }
        }
    }

    async fn connect(&self, to: SocketAddr) -> Result<Client, String> {
        let mut c = Client::connect(to, &self.timeouts)
            .await
            .map_err(|e| e.to_string())?;
        let greeting = c.read_greeting().await.map_err(|e| e.to_string())?;
        if !greeting.is_positive() {
            return Err(format!("{to} turned the connection away: {greeting}"));
        }
        let hello = c.hello(&self.hostname).await.map_err(|e| e.to_string())?;
        if !hello.is_positive() {
            return Err(format!("{to} refused EHLO and HELO: {hello}"));
        }
        Ok(c)
    }
}

fn kept(id: MessageId, why: &str) -> Kept {
    Kept {
        id: id.to_string(),
        why: why.to_string(),
    }
}
