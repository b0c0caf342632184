//! Taking mail in. [`Intake`] is the one path into the queue that SMTP and HTTP share: it
//! makes the message durable in the spool, and only then answers, records `processed`
//! events and hands the message to the scheduler. The SMTP listener here applies the relay
//! rule (trusted networks, or users who authenticated over TLS; everyone else 554 5.7.1),
//! the connection limit and the per-client limits.

use crate::address::Address;
use crate::config::{BareLineEndings, SmtpConfig};
use crate::engine::handle::SchedulerHandle;
use crate::engine::scheduler::Queued;
use crate::engine::spool::{Op, Spool, SpoolError};
use crate::event::{Event, Events, Kind};
use crate::message::{
    Envelope, MailParams, MessageId, NewMessage, Rcpt, STREAM_HEADER, State, group_by_domain,
    new_id, take_header,
};
use crate::net::auth::Credentials;
use crate::net::limit::ClientLimits;
use crate::net::smtp::server::{self, EhloMode, Extensions, Handler, Limits, Session};
use crate::policy::suppress::{Suppression, Suppressions};
use crate::reply::Reply;
use crate::time::{Timestamp, WallClock, rfc5322};
use async_trait::async_trait;
use bytes::Bytes;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub struct Intake {
    pub spool: Arc<dyn Spool>,
    pub suppressions: Arc<Suppressions>,
    pub scheduler: SchedulerHandle,
    pub events: Events,
    /// The scheduler's clock: a new message is due at once by the time the scheduler
    /// keeps, whatever the system clock does.
    pub clock: WallClock,
    /// The streams a message may name (as knock started: a new set needs a restart).
    pub streams: Arc<crate::config::Streams>,
    /// The DKIM keys a message is signed with before it is stored.
    pub dkim: Arc<crate::dkim::Dkim>,
}

/// A stream named at submission that is not configured.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no stream is named {name:?} (the streams are {known})")]
pub struct UnknownStream {
    pub name: String,
    pub known: String,
}

/// A message as a client handed it over, SMTP or HTTP: the envelope it gave, the bytes,
/// where it came from and its stream.
#[derive(Debug, Clone)]
pub struct Submission {
    pub from: String,
    pub params: MailParams,
    pub rcpts: Vec<Rcpt>,
    pub body: Bytes,
    /// `smtp 127.0.0.1:40000`, `smtp user@127.0.0.1:40000` or `http`.
    pub source: String,
    pub stream: String,
}

/// What a submission says of its stream, strongest first.
#[derive(Debug, Clone, Copy, Default)]
pub struct StreamChoice<'a> {
    /// Named by the message (its `X-Knock-Stream` header, the API's `stream` field).
    pub named: Option<&'a str>,
    /// The authenticated user, whose stream it is if one lists them in `users`.
    pub user: Option<&'a str>,
    /// The listener's default.
    pub listener: &'a str,
}

impl Intake {
    /// The stream a submission goes in: the one it names (which must exist), else its
    /// user's, else the listener's.
    pub fn stream(&self, choice: StreamChoice<'_>) -> Result<String, UnknownStream> {
        if let Some(name) = choice.named {
            return match self.streams.get(name) {
                Some(_) => Ok(name.to_string()),
                None => Err(UnknownStream {
                    name: name.to_string(),
                    known: self.streams.names().join(", "),
                }),
            };
        }
        let by_user = choice.user.and_then(|u| self.streams.of_user(u));
        Ok(by_user.unwrap_or(choice.listener).to_string())
    }

    /// Stores the message durably, then queues it. Returns once it is on disk. Recipients
    /// on the suppression list are marked `suppressed` and never sent (unless the message
    /// is from the null sender: DSNs always go).
    pub async fn accept(
        &self,
        id: MessageId,
        submission: Submission,
    ) -> Result<NewMessage, SpoolError> {
        let Submission {
            from,
            params,
            rcpts,
            body,
            source,
            stream,
        } = submission;
        let now = self.clock.now();
        // Signed once, before it is stored: every attempt sends the same bytes.
        let body = match self.dkim.sign(&body) {
            Some(signed) => Bytes::from(signed),
            None => body,
        };
        let mut message = NewMessage {
            envelope: Envelope {
                id,
                from,
                received_at: now,
                size: body.len() as u64,
                source,
                stream: Some(stream),
                done_at: None,
                params,
            },
            groups: group_by_domain(&rcpts, now),
            body,
        };
        let mut events = crate::event::processed(&message, now);
        events.extend(self.mark_suppressed(&mut message, now));
        let mut ops = vec![Op::Store(message.clone())];
        ops.extend(self.events.outbox(&mut events).map(Op::Outbox));
        self.spool.commit(ops).await?;
        for e in events {
            self.events.emit(e).await;
        }
        self.scheduler.enqueue(Queued::new_message(message.clone()));
        Ok(message)
    }

    /// Puts `address` on the suppression list, durably.
    pub async fn suppress(&self, address: &str, entry: Suppression) -> Result<(), SpoolError> {
        let address = crate::policy::suppress::key(address);
        self.spool
            .commit(vec![Op::Suppress {
                address: address.clone(),
                entry: entry.clone(),
            }])
            .await?;
        self.suppressions.insert(&address, entry);
        Ok(())
    }

    /// A change another node of the fleet made to the suppression list: kept in the spool,
    /// then applied (and not passed on again).
    pub async fn apply_suppression(
        &self,
        change: &crate::policy::suppress::Change,
    ) -> Result<(), SpoolError> {
        use crate::policy::suppress::Change;
        let op = match change {
            Change::Add { address, entry } => Op::Suppress {
                address: crate::policy::suppress::key(address),
                entry: entry.clone(),
            },
            Change::Remove { address } => Op::Unsuppress {
                address: crate::policy::suppress::key(address),
            },
        };
        self.spool.commit(vec![op]).await?;
        self.suppressions.apply(change);
        Ok(())
    }

    /// Takes `address` off the suppression list, durably; `false` when it was not on it.
    pub async fn unsuppress(&self, address: &str) -> Result<bool, SpoolError> {
        if !self.suppressions.contains(address) {
            return Ok(false);
        }
        let address = crate::policy::suppress::key(address);
        self.spool
            .commit(vec![Op::Unsuppress {
                address: address.clone(),
            }])
            .await?;
        Ok(self.suppressions.remove(&address))
    }

    /// Marks the recipients on the suppression list; returns their events.
    fn mark_suppressed(&self, message: &mut NewMessage, now: Timestamp) -> Vec<Event> {
        let mut events = Vec::new();
        if message.envelope.is_null_sender() {
            return events;
        }
        for g in &mut message.groups {
            for r in g
                .recipients
                .iter_mut()
                .filter(|r| self.suppressions.contains(&r.address))
            {
                r.state = State::Suppressed;
                let mut e = Event::about(
                    Kind::Suppressed,
                    now,
                    &message.envelope,
                    r.address.clone(),
                    g.domain.clone(),
                );
                e.text = Some("the address is on the suppression list".into());
                events.push(e);
            }
            if g.is_done() {
                g.next_attempt = None;
            }
        }
        events
    }
}

/// What the SMTP listener needs beyond the intake.
pub struct Inbound {
    pub config: SmtpConfig,
    /// STARTTLS is offered when set.
    pub tls: Option<TlsAcceptor>,
    /// AUTH is offered (over TLS) when set.
    pub credentials: Option<Credentials>,
}

struct IngestHandler {
    intake: Arc<Intake>,
    config: SmtpConfig,
    credentials: Option<Credentials>,
    limits: Arc<ClientLimits>,
}

impl IngestHandler {
    /// Whether the per-client limits apply to this session's client.
    fn limited(&self, session: &Session) -> bool {
        self.limited_ip(session.peer.ip())
    }

    fn limited_ip(&self, ip: std::net::IpAddr) -> bool {
        !(self.config.client_limits.exempt_trusted && self.config.is_trusted(ip))
    }
}

#[async_trait]
impl Handler for IngestHandler {
    async fn mail(&self, session: &Session, _from: &str) -> Reply {
        if self.limited(session) && !self.limits.message(session.peer.ip()) {
            let ip = session.peer.ip();
            tracing::info!(%ip, "client over its message rate");
            return Reply::new(450, "4.7.1", format!("Error: too much mail from {ip}"));
        }
        Reply::new(250, "2.1.0", "Ok")
    }

    async fn rcpt(&self, session: &Session, rcpt: &Address) -> Reply {
        if session.user.is_none() && !self.config.is_trusted(session.peer.ip()) {
            return Reply::new(554, "5.7.1", format!("<{rcpt}>: Relay access denied"));
        }
        if self.limited(session) && !self.limits.recipient(session.peer.ip()) {
            let ip = session.peer.ip();
            tracing::info!(%ip, "client over its recipient rate");
            return Reply::new(
                450,
                "4.7.1",
                format!("Error: too many recipients from {ip}"),
            );
        }
        Reply::new(250, "2.1.5", "Ok")
    }

    fn offers_auth(&self) -> bool {
        self.credentials.is_some()
    }

    async fn authenticate(&self, _session: &Session, user: &str, password: &str) -> bool {
        match &self.credentials {
            Some(c) => c.check(user.to_string(), password.to_string()).await,
            None => false,
        }
    }

    async fn data(&self, session: &Session, body: Vec<u8>) -> Reply {
        // Never kept (nor relayed) with a bare CR or LF: SMTP smuggling.
        let body = match crate::message::crlf(&body) {
            std::borrow::Cow::Borrowed(_) => body,
            std::borrow::Cow::Owned(fixed) => match self.config.bare_line_endings {
                BareLineEndings::Normalize => fixed,
                BareLineEndings::Refuse => {
                    return Reply::new(
                        550,
                        "5.5.2",
                        "Error: bare <CR> or <LF> in the message: lines must end in <CR><LF>",
                    );
                }
            },
        };
        let id = new_id();
        let from = session.from.clone().unwrap_or_default();
        let (named, without) = take_header(&body, STREAM_HEADER);
        let body = without.unwrap_or(body);
        let choice = StreamChoice {
            named: named.as_deref(),
            user: session.user.as_deref(),
            listener: &self.config.stream,
        };
        let stream = match self.intake.stream(choice) {
            Ok(stream) => stream,
            Err(e) => return Reply::new(550, "5.7.1", format!("{STREAM_HEADER}: {e}")),
        };
        let body = with_received(&self.config.hostname, session, id, body);
        let source = match &session.user {
            Some(user) => format!("smtp {user}@{}", session.peer),
            None => format!("smtp {}", session.peer),
        };
        let submission = Submission {
            from,
            params: session.params.clone(),
            rcpts: session.rcpts.clone(),
            body,
            source,
            stream,
        };
        match self.intake.accept(id, submission).await {
            Ok(_) => Reply::new(250, "2.0.0", format!("Ok: queued as {id}")),
            Err(e) => {
                tracing::error!(error = %e, "could not store an incoming message");
                // Postfix's answer when its queue cannot take the message: the client keeps
                // it and tries again, nothing is lost.
                Reply::new(452, "4.3.1", "Error: insufficient system storage")
            }
        }
    }
}

/// Prepends the trace header every MTA adds (RFC 5321 section 4.4).
fn with_received(hostname: &str, session: &Session, id: MessageId, body: Vec<u8>) -> Bytes {
    let helo = session.helo.as_deref().unwrap_or("unknown");
    let rcpt = match session.rcpts.as_slice() {
        [one] => format!("\r\n\tfor <{}>", one.address),
        _ => String::new(),
    };
    // RFC 3848's protocol names: S for TLS, A for an authenticated client.
    let (protocol, tls) = match &session.tls {
        Some(tls) => (
            "ESMTPS",
            format!("\r\n\t(using {} with cipher {})", tls.version, tls.cipher),
        ),
        None => ("ESMTP", String::new()),
    };
    let protocol = match session.user {
        Some(_) => format!("{protocol}A"),
        None => protocol.to_string(),
    };
    let header = format!(
        "Received: from {helo} ([{}]){tls}\r\n\tby {hostname} (knock) with {protocol} id {id}{rcpt};\r\n\t{}\r\n",
        session.peer.ip(),
        rfc5322(Timestamp::now())
    );
    let mut out = Vec::with_capacity(header.len() + body.len());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&body);
    out.into()
}

/// Accepts SMTP connections until `shutdown`; open sessions are told 421 and closed.
pub async fn run_smtp(
    listener: TcpListener,
    intake: Arc<Intake>,
    inbound: Inbound,
    shutdown: CancellationToken,
) {
    let Inbound {
        config,
        tls,
        credentials,
    } = inbound;
    let limits = Arc::new(Limits {
        hostname: config.hostname.clone(),
        max_message_size: config.max_message_size,
        max_recipients: config.max_recipients,
        idle_timeout: config.idle_timeout,
        data_timeout: config.data_timeout,
        max_errors: config.max_errors,
        ehlo: EhloMode::Full,
        tls,
        extensions: Extensions::ALL,
    });
    let slots = Arc::new(Semaphore::new(config.max_connections));
    let hostname = config.hostname.clone();
    let clients = ClientLimits::new(&config.client_limits);
    let handler = Arc::new(IngestHandler {
        intake,
        config: config.clone(),
        credentials,
        limits: clients.clone(),
    });
    let sessions = TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting an SMTP connection failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "SMTP connection limit reached");
            let text = format!("{hostname} Error: too many connections");
            sessions.spawn(refuse(stream, text));
            continue;
        };
        let client_slot = match handler.limited_ip(peer.ip()) {
            false => None,
            true => match clients.connect(peer.ip()) {
                Some(slot) => Some(slot),
                None => {
                    tracing::info!(%peer, "client connection limit reached");
                    let text = format!("{hostname} Error: too many connections from {}", peer.ip());
                    sessions.spawn(refuse(stream, text));
                    continue;
                }
            },
        };
        let (handler, limits, shutdown) = (handler.clone(), limits.clone(), shutdown.clone());
        sessions.spawn(async move {
            server::serve(stream, handler, limits, shutdown).await;
            drop((permit, client_slot));
        });
    }
    sessions.close();
    sessions.wait().await;
}

async fn refuse(mut stream: tokio::net::TcpStream, text: String) {
    use tokio::io::AsyncWriteExt;
    let mut out = Vec::new();
    Reply::new(421, "4.7.0", text).write_to(&mut out);
    let _ = stream.write_all(&out).await;
    let _ = stream.shutdown().await;
}
