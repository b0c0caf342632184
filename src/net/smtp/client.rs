//! The SMTP client: one connection to one server, EHLO with HELO fallback, pipelined
//! transactions where the server offers PIPELINING, and each RCPT's reply kept apart so the
//! caller can treat every recipient on its own, and STARTTLS when asked. Used by delivery
//! and by `knock bench`.

use crate::config::TimeoutConfig;
use crate::message::{MailParams, Notify, Ret};
use crate::net::smtp::wire::Wire;
use crate::net::tls::{Connectors, Policy, Stream, TlsInfo};
use crate::outcome::{Failure, FailureKind};
use crate::reply::{Reply, ReplyError};
use smtp_proto::{
    EXT_8BIT_MIME, EXT_DSN, EXT_PIPELINING, EXT_SIZE, EXT_SMTP_UTF8, EXT_START_TLS, EhloResponse,
};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;

/// Longest reply accepted, all lines together.
const MAX_REPLY: usize = 64 * 1024;

/// Why a conversation with a server failed. Cloneable (the I/O error is shared), so every
/// recipient of a broken transaction carries the same typed error. The I/O error is part of
/// the message and not a `source`, so an error chain (`{:#}`) does not say it twice.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    #[error("connect to {addr} failed: {error}")]
    Connect {
        addr: SocketAddr,
        error: Arc<std::io::Error>,
    },
    #[error("connect to {addr} timed out")]
    ConnectTimeout { addr: SocketAddr },
    #[error("timed out waiting for the reply to {stage}")]
    Timeout { stage: &'static str },
    #[error("connection lost during {stage}: {error}")]
    Io {
        stage: &'static str,
        error: Arc<std::io::Error>,
    },
    #[error("connection closed by the server during {stage}")]
    Closed { stage: &'static str },
    #[error("protocol error during {stage}: {detail}")]
    Protocol { stage: &'static str, detail: String },
    #[error("TLS handshake failed: {0}")]
    Handshake(Arc<std::io::Error>),
    #[error(
        "the message needs SMTPUTF8 (a UTF-8 address or header field) and the server does not offer it"
    )]
    Smtputf8NotOffered,
}

impl ClientError {
    pub fn kind(&self) -> FailureKind {
        match self {
            ClientError::Connect { .. } => FailureKind::ConnectFailed,
            ClientError::ConnectTimeout { .. } => FailureKind::ConnectTimeout,
            ClientError::Timeout { .. } => FailureKind::Timeout,
            // A server that hangs up while knock writes shows as a reset or a broken pipe.
            ClientError::Io { error, .. } => match error.kind() {
                std::io::ErrorKind::UnexpectedEof => FailureKind::Closed,
                _ => FailureKind::Reset,
            },
            ClientError::Closed { .. } => FailureKind::Closed,
            ClientError::Protocol { .. } => FailureKind::Protocol,
            ClientError::Handshake(_) => FailureKind::TlsHandshake,
            ClientError::Smtputf8NotOffered => FailureKind::Smtputf8NotOffered,
        }
    }
}

impl From<&ClientError> for Failure {
    fn from(e: &ClientError) -> Failure {
        Failure::new(e.kind(), e.to_string())
    }
}

/// What the server offered in its EHLO reply.
#[derive(Debug, Clone, Copy, Default)]
pub struct Capabilities {
    pub pipelining: bool,
    pub eightbitmime: bool,
    /// Zero when the server announced no limit (or no SIZE).
    pub size: Option<usize>,
    pub starttls: bool,
    /// RFC 3461: NOTIFY, ORCPT, RET and ENVID may be passed on.
    pub dsn: bool,
    /// RFC 6531.
    pub smtputf8: bool,
}

/// One transaction as the client sends it.
#[derive(Debug, Clone, Copy)]
pub struct Transaction<'a> {
    pub from: &'a str,
    /// RET and ENVID (passed on where the server offers DSN) and whether the message was
    /// submitted as internationalized.
    pub params: &'a MailParams,
    pub rcpts: &'a [OutRcpt<'a>],
    pub body: &'a [u8],
}

impl Transaction<'_> {
    /// Whether it cannot go without SMTPUTF8: submitted as internationalized, and a UTF-8
    /// address or header field really is there.
    pub fn needs_smtputf8(&self) -> bool {
        self.params.smtputf8
            && crate::message::needs_smtputf8(
                self.from,
                self.rcpts.iter().map(|r| r.address),
                self.body,
            )
    }
}

/// A recipient as the client sends it, with what its sender asked of DSNs.
#[derive(Debug, Clone, Copy)]
pub struct OutRcpt<'a> {
    pub address: &'a str,
    pub notify: Option<Notify>,
    pub orcpt: Option<&'a str>,
}

impl<'a> From<&'a str> for OutRcpt<'a> {
    fn from(address: &'a str) -> OutRcpt<'a> {
        OutRcpt {
            address,
            notify: None,
            orcpt: None,
        }
    }
}

/// Why [`Client::send_whole`] moved nothing.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WholeRefused {
    #[error("refused: {0}")]
    Refused(Reply),
    #[error("{0}")]
    Failed(ClientError),
}

/// The replies of one transaction, one per recipient in the order given.
#[derive(Debug, Clone)]
pub struct TransactionReplies {
    pub per_recipient: Vec<Result<Reply, ClientError>>,
    /// Whether the connection can carry another transaction.
    pub reusable: bool,
}

pub struct Client {
    wire: Wire<Stream>,
    /// What STARTTLS came to; `None` while in plaintext.
    pub tls: Option<TlsInfo>,
    timeouts: TimeoutConfig,
    pub capabilities: Capabilities,
    pub greeting: Option<Reply>,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    broken: bool,
    scratch: Vec<u8>,
    slowest_reply: Option<Duration>,
}

impl Client {
    pub async fn connect(
        addr: SocketAddr,
        timeouts: &TimeoutConfig,
    ) -> Result<Client, ClientError> {
        Client::connect_from(addr, None, timeouts).await
    }

    /// Connects from the local address `bind` (any port), or from the host's choice.
    pub async fn connect_from(
        addr: SocketAddr,
        bind: Option<std::net::IpAddr>,
        timeouts: &TimeoutConfig,
    ) -> Result<Client, ClientError> {
        let connecting = async {
            let Some(ip) = bind else {
                return TcpStream::connect(addr).await;
            };
            let socket = match ip {
                std::net::IpAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
                std::net::IpAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
            };
            socket.bind(SocketAddr::new(ip, 0))?;
            socket.connect(addr).await
        };
        let stream = match tokio::time::timeout(timeouts.connect, connecting).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(source)) => {
                return Err(ClientError::Connect {
                    addr,
                    error: Arc::new(source),
                });
            }
            Err(_) => return Err(ClientError::ConnectTimeout { addr }),
        };
        let _ = stream.set_nodelay(true);
        let local = stream.local_addr().map_err(|source| ClientError::Connect {
            addr,
            error: Arc::new(source),
        })?;
        Ok(Client {
            wire: Wire::new(Stream::Plain(stream)),
            tls: None,
            timeouts: timeouts.clone(),
            capabilities: Capabilities::default(),
            greeting: None,
            peer: addr,
            local,
            broken: false,
            scratch: Vec::new(),
            slowest_reply: None,
        })
    }

    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// The longest wait for a reply since the last call (connecting counts as a reply).
    pub fn take_slowest_reply(&mut self) -> Option<Duration> {
        self.slowest_reply.take()
    }

    /// Reads the greeting. A non-2xx greeting is returned as `Ok` for the caller to judge.
    pub async fn read_greeting(&mut self) -> Result<Reply, ClientError> {
        let reply = self.read_reply("greeting", self.timeouts.greeting).await?;
        self.greeting = Some(reply.clone());
        Ok(reply)
    }

    /// EHLO, falling back to HELO when the server refuses EHLO with a 5xx.
    pub async fn hello(&mut self, name: &str) -> Result<Reply, ClientError> {
        let raw = self.command_raw(format!("EHLO {name}\r\n"), "EHLO").await?;
        let reply = parse_reply(&raw, "EHLO")?;
        if reply.is_positive() {
            if let Ok(ehlo) = EhloResponse::parse(&mut raw.iter()) {
                self.capabilities = Capabilities {
                    pipelining: ehlo.has_capability(EXT_PIPELINING),
                    eightbitmime: ehlo.has_capability(EXT_8BIT_MIME),
                    size: ehlo.has_capability(EXT_SIZE).then_some(ehlo.size),
                    starttls: ehlo.has_capability(EXT_START_TLS),
                    dsn: ehlo.has_capability(EXT_DSN),
                    smtputf8: ehlo.has_capability(EXT_SMTP_UTF8),
                };
            }
            return Ok(reply);
        }
        if reply.is_permanent() {
            self.capabilities = Capabilities::default();
            let raw = self.command_raw(format!("HELO {name}\r\n"), "HELO").await?;
            return parse_reply(&raw, "HELO");
        }
        Ok(reply)
    }

    /// STARTTLS and the handshake (RFC 3207). `Ok(Err(reply))` when the server refused the
    /// command; the caller says EHLO again after success.
    pub async fn starttls(
        &mut self,
        connectors: &Connectors,
        policy: Policy,
        host: &str,
    ) -> Result<Result<(), Reply>, ClientError> {
        let reply = self.command("STARTTLS\r\n".into(), "STARTTLS").await?;
        if reply.code != 220 {
            return Ok(Err(reply));
        }
        let handshake = self.wire.stream_mut().connect(connectors, policy, host);
        let verified = match tokio::time::timeout(self.timeouts.command, handshake).await {
            Ok(Ok(verified)) => verified,
            Ok(Err(e)) => {
                self.broken = true;
                return Err(ClientError::Handshake(Arc::new(e)));
            }
            Err(_) => {
                self.broken = true;
                return Err(ClientError::Timeout {
                    stage: "TLS handshake",
                });
            }
        };
        self.tls = self.wire.get_ref().info(verified);
        self.capabilities = Capabilities::default();
        Ok(Ok(()))
    }

    /// Sends one message to `rcpts` and returns each recipient's reply: its RCPT reply when
    /// that refused it, else the reply to the end of data. A failure to talk is `Err(text)`
    /// for every recipient not yet answered.
    pub async fn send(&mut self, tx: &Transaction<'_>) -> TransactionReplies {
        let rcpts = tx.rcpts;
        let utf8 = tx.needs_smtputf8();
        if utf8 && !self.capabilities.smtputf8 {
            // Nothing was said: the connection stays good for other mail.
            return TransactionReplies {
                per_recipient: rcpts
                    .iter()
                    .map(|_| Err(ClientError::Smtputf8NotOffered))
                    .collect(),
                reusable: !self.broken,
            };
        }
        let result = if self.capabilities.pipelining {
            self.send_pipelined(tx, utf8).await
        } else {
            self.send_stepwise(tx, utf8).await
        };
        match result {
            Ok(replies) => {
                let reusable = !self.broken;
                TransactionReplies {
                    per_recipient: replies.into_iter().map(Ok).collect(),
                    reusable,
                }
            }
            Err(e) => {
                self.broken = true;
                TransactionReplies {
                    per_recipient: rcpts.iter().map(|_| Err(e.clone())).collect(),
                    reusable: false,
                }
            }
        }
    }

    /// One transaction that moves the message for every recipient or for none: the first
    /// refusal (of MAIL, a RCPT or DATA) resets it before any data goes, and is returned.
    /// `Ok` is the reply to the end of data (which may itself refuse). For handing mail
    /// to another MTA (`knock drain`), where half a message moved is a duplicate.
    pub async fn send_whole(&mut self, tx: &Transaction<'_>) -> Result<Reply, WholeRefused> {
        let utf8 = tx.needs_smtputf8();
        if utf8 && !self.capabilities.smtputf8 {
            return Err(WholeRefused::Failed(ClientError::Smtputf8NotOffered));
        }
        let mail = self
            .command(mail_command(&self.capabilities, tx, utf8), "MAIL")
            .await
            .map_err(WholeRefused::Failed)?;
        let mut refused = (!mail.is_positive()).then_some(mail);
        for rcpt in tx.rcpts {
            if refused.is_some() {
                break;
            }
            let reply = self
                .command(rcpt_command(&self.capabilities, rcpt), "RCPT")
                .await
                .map_err(WholeRefused::Failed)?;
            if !reply.is_positive() {
                refused = Some(reply);
            }
        }
        if refused.is_none() {
            let data = self
                .command("DATA\r\n".into(), "DATA")
                .await
                .map_err(WholeRefused::Failed)?;
            if !data.is_intermediate() {
                refused = Some(data);
            }
        }
        if let Some(reply) = refused {
            self.close_on_421(&reply);
            self.reset().await.map_err(WholeRefused::Failed)?;
            return Err(WholeRefused::Refused(reply));
        }
        let done = self
            .finish_data(tx.body)
            .await
            .map_err(WholeRefused::Failed)?;
        self.close_on_421(&done);
        Ok(done)
    }

    /// [`Client::send`] with no DSN or SMTPUTF8 parameters: what a load generator or a
    /// test sends.
    pub async fn send_to(&mut self, from: &str, rcpts: &[&str], body: &[u8]) -> TransactionReplies {
        let rcpts: Vec<OutRcpt<'_>> = rcpts.iter().map(|r| OutRcpt::from(*r)).collect();
        let tx = Transaction {
            from,
            params: &MailParams::default(),
            rcpts: &rcpts,
            body,
        };
        self.send(&tx).await
    }

    async fn send_pipelined(
        &mut self,
        tx: &Transaction<'_>,
        utf8: bool,
    ) -> Result<Vec<Reply>, ClientError> {
        let (rcpts, body) = (tx.rcpts, tx.body);
        let mut batch = mail_command(&self.capabilities, tx, utf8);
        for rcpt in rcpts {
            batch.push_str(&rcpt_command(&self.capabilities, rcpt));
        }
        batch.push_str("DATA\r\n");
        self.write("MAIL", batch.as_bytes()).await?;
        let mail = self.read_reply("MAIL", self.timeouts.command).await?;
        if mail.code == 421 {
            // The server is closing: nothing more will be answered.
            return Ok(self.closing(Vec::new(), rcpts.len(), mail));
        }
        let mut rcpt_replies = Vec::with_capacity(rcpts.len());
        for _ in rcpts {
            let reply = self.read_reply("RCPT", self.timeouts.command).await?;
            if reply.code == 421 {
                return Ok(self.closing(rcpt_replies, rcpts.len(), reply));
            }
            rcpt_replies.push(reply);
        }
        let data = self.read_reply("DATA", self.timeouts.data_init).await?;
        if !mail.is_positive() {
            if data.is_intermediate() {
                self.finish_data(&[]).await?;
            }
            self.reset().await?;
            return Ok(rcpts.iter().map(|_| mail.clone()).collect());
        }
        let any_accepted = rcpt_replies.iter().any(Reply::is_positive);
        if !data.is_intermediate() {
            self.close_on_421(&data);
            self.reset().await?;
            return Ok(merge(rcpt_replies, &data));
        }
        if !any_accepted {
            // RFC 2920: a server that answered 354 with no recipient gets an empty message.
            self.finish_data(&[]).await?;
            return Ok(rcpt_replies);
        }
        let done = self.finish_data(body).await?;
        self.close_on_421(&done);
        Ok(merge(rcpt_replies, &done))
    }

    async fn send_stepwise(
        &mut self,
        tx: &Transaction<'_>,
        utf8: bool,
    ) -> Result<Vec<Reply>, ClientError> {
        let (rcpts, body) = (tx.rcpts, tx.body);
        let mail_cmd = mail_command(&self.capabilities, tx, utf8);
        let mail = self.command(mail_cmd, "MAIL").await?;
        if mail.code == 421 {
            return Ok(self.closing(Vec::new(), rcpts.len(), mail));
        }
        if !mail.is_positive() {
            self.reset().await?;
            return Ok(rcpts.iter().map(|_| mail.clone()).collect());
        }
        let mut rcpt_replies = Vec::with_capacity(rcpts.len());
        for rcpt in rcpts {
            let reply = self
                .command(rcpt_command(&self.capabilities, rcpt), "RCPT")
                .await?;
            if reply.code == 421 {
                return Ok(self.closing(rcpt_replies, rcpts.len(), reply));
            }
            rcpt_replies.push(reply);
        }
        if !rcpt_replies.iter().any(Reply::is_positive) {
            self.reset().await?;
            return Ok(rcpt_replies);
        }
        let data = self.command("DATA\r\n".into(), "DATA").await?;
        if !data.is_intermediate() {
            self.close_on_421(&data);
            self.reset().await?;
            return Ok(merge(rcpt_replies, &data));
        }
        let done = self.finish_data(body).await?;
        self.close_on_421(&done);
        Ok(merge(rcpt_replies, &done))
    }

    async fn finish_data(&mut self, body: &[u8]) -> Result<Reply, ClientError> {
        let mut data = std::mem::take(&mut self.scratch);
        data.clear();
        super::dot_stuff(body, &mut data);
        let written =
            tokio::time::timeout(self.timeouts.data_block, self.wire.write_now(&data)).await;
        self.scratch = data;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(source)) => {
                return Err(ClientError::Io {
                    stage: "message body",
                    error: Arc::new(source),
                });
            }
            Err(_) => {
                return Err(ClientError::Timeout {
                    stage: "message body",
                });
            }
        }
        self.read_reply("end of data", self.timeouts.data_done)
            .await
    }

    async fn reset(&mut self) -> Result<(), ClientError> {
        if self.broken {
            return Ok(());
        }
        let reply = self.command("RSET\r\n".into(), "RSET").await?;
        if !reply.is_positive() {
            self.broken = true;
        }
        Ok(())
    }

    /// A 421 mid-transaction: the server is closing, so the transaction is off. Recipients
    /// refused before keep their reply; every other gets the 421.
    fn closing(&mut self, answered: Vec<Reply>, total: usize, reply: Reply) -> Vec<Reply> {
        self.broken = true;
        let mut replies = merge(answered, &reply);
        replies.resize(total, reply);
        replies
    }

    fn close_on_421(&mut self, reply: &Reply) {
        if reply.code == 421 {
            self.broken = true;
        }
    }

    /// Ends the session politely; errors are of no interest at this point.
    pub async fn quit(mut self) {
        if !self.broken {
            let _ = tokio::time::timeout(
                Duration::from_secs(5),
                self.command("QUIT\r\n".into(), "QUIT"),
            )
            .await;
        }
        self.wire.shutdown().await;
    }

    async fn command(&mut self, cmd: String, stage: &'static str) -> Result<Reply, ClientError> {
        let raw = self.command_raw(cmd, stage).await?;
        parse_reply(&raw, stage)
    }

    async fn command_raw(
        &mut self,
        cmd: String,
        stage: &'static str,
    ) -> Result<Vec<u8>, ClientError> {
        self.write(stage, cmd.as_bytes()).await?;
        self.read_raw(stage, self.timeouts.command).await
    }

    async fn write(&mut self, stage: &'static str, bytes: &[u8]) -> Result<(), ClientError> {
        match tokio::time::timeout(self.timeouts.command, self.wire.write_now(bytes)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(source)) => {
                self.broken = true;
                Err(ClientError::Io {
                    stage,
                    error: Arc::new(source),
                })
            }
            Err(_) => {
                self.broken = true;
                Err(ClientError::Timeout { stage })
            }
        }
    }

    async fn read_reply(
        &mut self,
        stage: &'static str,
        timeout: Duration,
    ) -> Result<Reply, ClientError> {
        let raw = self.read_raw(stage, timeout).await?;
        parse_reply(&raw, stage)
    }

    /// Reads the raw bytes of one complete (possibly multi-line) reply.
    async fn read_raw(
        &mut self,
        stage: &'static str,
        timeout: Duration,
    ) -> Result<Vec<u8>, ClientError> {
        let started = tokio::time::Instant::now();
        let result = tokio::time::timeout(timeout, self.read_raw_inner(stage)).await;
        let result = result.unwrap_or(Err(ClientError::Timeout { stage }));
        let waited = started.elapsed();
        self.slowest_reply = Some(self.slowest_reply.map_or(waited, |s| s.max(waited)));
        if result.is_err() {
            self.broken = true;
        }
        result
    }

    async fn read_raw_inner(&mut self, stage: &'static str) -> Result<Vec<u8>, ClientError> {
        let mut raw = Vec::new();
        loop {
            match self.wire.read_line(MAX_REPLY).await {
                Ok(Some(crate::net::smtp::wire::Line::Complete(line))) => {
                    let last = line.len() < 4 || line[3] != b'-';
                    raw.extend_from_slice(&line);
                    if raw.len() > MAX_REPLY {
                        return Err(ClientError::Protocol {
                            stage,
                            detail: "reply too long".into(),
                        });
                    }
                    if last {
                        return Ok(raw);
                    }
                }
                Ok(Some(crate::net::smtp::wire::Line::TooLong)) => {
                    return Err(ClientError::Protocol {
                        stage,
                        detail: "reply line too long".into(),
                    });
                }
                Ok(None) => return Err(ClientError::Closed { stage }),
                Err(source) => {
                    return Err(ClientError::Io {
                        stage,
                        error: Arc::new(source),
                    });
                }
            }
        }
    }
}

/// MAIL FROM with what the server offers: SIZE, BODY=8BITMIME, SMTPUTF8 when needed, and
/// the sender's RET and ENVID where it offers DSN.
fn mail_command(c: &Capabilities, tx: &Transaction<'_>, utf8: bool) -> String {
    use std::fmt::Write;
    let mut cmd = format!("MAIL FROM:<{}>", tx.from);
    if c.size.is_some() {
        let _ = write!(cmd, " SIZE={}", tx.body.len());
    }
    if c.eightbitmime {
        cmd.push_str(" BODY=8BITMIME");
    }
    if utf8 {
        cmd.push_str(" SMTPUTF8");
    }
    if c.dsn {
        match tx.params.ret {
            Some(Ret::Full) => cmd.push_str(" RET=FULL"),
            Some(Ret::Hdrs) => cmd.push_str(" RET=HDRS"),
            None => {}
        }
        if let Some(envid) = &tx.params.envid {
            let _ = write!(cmd, " ENVID={}", xtext(envid));
        }
    }
    cmd.push_str("\r\n");
    cmd
}

/// RCPT TO with the sender's NOTIFY and ORCPT where the server offers DSN.
fn rcpt_command(c: &Capabilities, rcpt: &OutRcpt<'_>) -> String {
    use std::fmt::Write;
    let mut cmd = format!("RCPT TO:<{}>", rcpt.address);
    if c.dsn {
        if let Some(notify) = rcpt.notify {
            let _ = write!(cmd, " NOTIFY={}", notify.keyword());
        }
        if let Some(orcpt) = rcpt.orcpt {
            let _ = write!(cmd, " ORCPT=rfc822;{}", xtext(orcpt));
        }
    }
    cmd.push_str("\r\n");
    cmd
}

/// RFC 3461 section 4: `+` and `=`, controls, space and anything past ASCII as `+HH`
/// (UTF-8 octet by octet).
fn xtext(text: &str) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        match b {
            b'!'..=b'~' if b != b'+' && b != b'=' => out.push(b as char),
            _ => {
                let _ = write!(out, "+{b:02X}");
            }
        }
    }
    out
}

fn parse_reply(raw: &[u8], stage: &'static str) -> Result<Reply, ClientError> {
    Reply::parse(raw).map_err(|e| match e {
        ReplyError::Incomplete => ClientError::Protocol {
            stage,
            detail: "incomplete reply".into(),
        },
        ReplyError::Malformed(detail) => ClientError::Protocol { stage, detail },
    })
}

/// Each recipient's RCPT reply where it refused, else the transaction's final reply.
fn merge(rcpt_replies: Vec<Reply>, final_reply: &Reply) -> Vec<Reply> {
    rcpt_replies
        .into_iter()
        .map(|r| {
            if r.is_positive() {
                final_reply.clone()
            } else {
                r
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dsn_parameters_go_on_only_where_dsn_is_offered() {
        let params = MailParams {
            ret: Some(Ret::Full),
            envid: Some("id+1=2 é".into()),
            smtputf8: false,
        };
        let rcpt = OutRcpt {
            address: "b@y.test",
            notify: Some(Notify {
                success: true,
                failure: true,
                delay: false,
            }),
            orcpt: Some("Old+B@y.test"),
        };
        let tx = Transaction {
            from: "a@x.test",
            params: &params,
            rcpts: std::slice::from_ref(&rcpt),
            body: b"Subject: s\r\n\r\nx\r\n",
        };
        let plain = Capabilities::default();
        assert_eq!(mail_command(&plain, &tx, false), "MAIL FROM:<a@x.test>\r\n");
        assert_eq!(rcpt_command(&plain, &rcpt), "RCPT TO:<b@y.test>\r\n");
        let dsn = Capabilities {
            dsn: true,
            eightbitmime: true,
            size: Some(0),
            ..Capabilities::default()
        };
        assert_eq!(
            mail_command(&dsn, &tx, false),
            "MAIL FROM:<a@x.test> SIZE=17 BODY=8BITMIME RET=FULL ENVID=id+2B1+3D2+20+C3+A9\r\n"
        );
        assert_eq!(
            rcpt_command(&dsn, &rcpt),
            "RCPT TO:<b@y.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;Old+2BB@y.test\r\n"
        );
        let never = OutRcpt {
            notify: Some(Notify::default()),
            orcpt: None,
            ..rcpt
        };
        assert_eq!(
            rcpt_command(&dsn, &never),
            "RCPT TO:<b@y.test> NOTIFY=NEVER\r\n"
        );
    }

    #[test]
    fn smtputf8_is_needed_only_for_utf8_in_an_address_or_the_header() {
        let utf8 = MailParams {
            smtputf8: true,
            ..MailParams::default()
        };
        let tx = |params, from, rcpt, body| {
            let rcpts = [OutRcpt::from(rcpt)];
            Transaction {
                from,
                params,
                rcpts: &rcpts,
                body,
            }
            .needs_smtputf8()
        };
        let ascii = b"Subject: s\r\n\r\nb\xc3\xa9\r\n".as_slice();
        assert!(
            !tx(&utf8, "a@x.test", "b@y.test", ascii),
            "a UTF-8 body needs 8BITMIME only"
        );
        assert!(tx(&utf8, "ü@x.test", "b@y.test", ascii));
        assert!(tx(&utf8, "a@x.test", "b@ÿ.test", ascii));
        assert!(tx(
            &utf8,
            "a@x.test",
            "b@y.test",
            "Subject: é\r\n\r\nx".as_bytes()
        ));
        // Not submitted as internationalized: sent as it is, as before.
        assert!(!tx(&MailParams::default(), "ü@x.test", "b@y.test", ascii));
    }
}
