//! The SMTP server session engine (RFC 5321), shared by ingest and the sink. It owns the
//! command sequence, the limits (line length, message size, recipients, errors, idle time)
//! pipelining, STARTTLS (RFC 3207) and the SASL exchange of AUTH PLAIN and LOGIN
//! (RFC 4954, offered only once TLS is on), the parameters of DSN (RFC 3461), SMTPUTF8
//! (RFC 6531) and CHUNKING's BDAT (RFC 3030); a [`Handler`] decides what to answer to
//! MAIL, RCPT and the message, and whether a user name and password are good. Every reply
//! carries an enhanced status code.

use crate::address::Address;
use crate::message::{MailParams, Notify, Rcpt, Ret};
use crate::net::smtp::wire::{Line, Wire};
use crate::net::tls::{Stream, TlsInfo};
use crate::reply::Reply;
use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use smtp_proto::Request;
use smtp_proto::request::receiver::DataReceiver;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// Longest command line accepted, CRLF included (Postfix's `line_length_limit`).
pub const MAX_COMMAND_LINE: usize = 2048;
/// Longest SASL response line (RFC 4954 section 4).
const MAX_AUTH_LINE: usize = 12288;

#[derive(Clone)]
pub struct Limits {
    pub hostname: String,
    pub max_message_size: u64,
    pub max_recipients: usize,
    pub idle_timeout: Duration,
    /// The whole message must arrive within this, however steadily it trickles in.
    pub data_timeout: Duration,
    pub max_errors: u32,
    /// What EHLO offers; the sink can play an older server.
    pub ehlo: EhloMode,
    /// STARTTLS is offered when set.
    pub tls: Option<TlsAcceptor>,
    /// The service extensions offered beyond the basic ones (with [`EhloMode`]'s).
    pub extensions: Extensions,
}

/// Service extensions a server may offer or not (the sink plays servers without them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extensions {
    /// RFC 3461: NOTIFY and ORCPT on RCPT, RET and ENVID on MAIL.
    pub dsn: bool,
    /// RFC 6531: UTF-8 in addresses and header fields.
    pub smtputf8: bool,
    /// RFC 3030: the message in BDAT chunks.
    pub chunking: bool,
}

impl Extensions {
    pub const ALL: Extensions = Extensions {
        dsn: true,
        smtputf8: true,
        chunking: true,
    };
}

impl Default for Extensions {
    fn default() -> Self {
        Extensions::ALL
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EhloMode {
    /// EHLO with PIPELINING, SIZE, 8BITMIME, ENHANCEDSTATUSCODES.
    Full,
    /// EHLO without PIPELINING: clients must wait for each reply.
    NoPipelining,
    /// EHLO refused with 502 5.5.1: clients must fall back to HELO.
    HeloOnly,
}

/// What one connection knows about itself, passed to the handler.
#[derive(Debug, Clone)]
pub struct Session {
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub helo: Option<String>,
    /// The reverse path of the open transaction; `Some("")` is the null sender.
    pub from: Option<String>,
    /// What MAIL FROM asked beyond the address.
    pub params: MailParams,
    /// The accepted recipients, with what each RCPT TO asked of DSNs.
    pub rcpts: Vec<Rcpt>,
    /// Set once STARTTLS has succeeded.
    pub tls: Option<TlsInfo>,
    /// The user AUTH succeeded for.
    pub user: Option<String>,
}

impl Session {
    fn reset(&mut self) {
        self.from = None;
        self.params = MailParams::default();
        self.rcpts.clear();
    }
}

/// The decisions a server makes; the engine does the protocol.
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// `Err(reply)` turns the client away at the greeting (the reply is sent, then closed).
    async fn connect(&self, _session: &Session) -> Result<(), Reply> {
        Ok(())
    }
    async fn mail(&self, session: &Session, from: &str) -> Reply;
    async fn rcpt(&self, session: &Session, rcpt: &Address) -> Reply;
    /// Called with the unstuffed message once the final dot has arrived.
    async fn data(&self, session: &Session, body: Vec<u8>) -> Reply;
    /// Whether AUTH is offered (it is, only once TLS is on).
    fn offers_auth(&self) -> bool {
        false
    }
    /// Whether `password` is `user`'s.
    async fn authenticate(&self, _session: &Session, _user: &str, _password: &str) -> bool {
        false
    }
    /// The session is over (also after `connect` turned it away).
    async fn disconnect(&self, _session: &Session) {}
}

/// Parses one command line (CRLF included); a line that is not a valid command is the
/// error reply to send. Pure, so it can be fuzzed.
pub fn parse_command(line: &[u8]) -> Result<Request<String>, Reply> {
    match Request::parse(&mut line.iter()) {
        Ok(request) => Ok(request.into_owned()),
        Err(smtp_proto::Error::UnknownCommand) => {
            Err(Reply::new(500, "5.5.2", "Error: command not recognized"))
        }
        Err(smtp_proto::Error::InvalidSenderAddress) => {
            Err(Reply::new(501, "5.1.7", "Bad sender address syntax"))
        }
        Err(smtp_proto::Error::InvalidRecipientAddress) => {
            Err(Reply::new(501, "5.1.3", "Bad recipient address syntax"))
        }
        Err(smtp_proto::Error::SyntaxError { syntax }) => {
            Err(Reply::new(501, "5.5.2", format!("Syntax: {syntax}")))
        }
        Err(e) => Err(Reply::new(501, "5.5.4", format!("Error: {e}"))),
    }
}

/// Runs one SMTP session to its end. Never panics on client input.
pub async fn serve<H: Handler>(
    stream: TcpStream,
    handler: Arc<H>,
    limits: Arc<Limits>,
    shutdown: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let (Ok(peer), Ok(local)) = (stream.peer_addr(), stream.local_addr()) else {
        return;
    };
    serve_stream(
        Stream::Plain(stream),
        peer,
        local,
        handler,
        limits,
        shutdown,
    )
    .await;
}

/// One whole session over an in-memory pipe: the client sends `input` (and then nothing
/// more), and what the server answered comes back, up to where it closed. For fuzzing and
/// tests: every path a session takes on bytes from a client, without a socket.
pub async fn converse<H: Handler>(input: &[u8], handler: Arc<H>, limits: Arc<Limits>) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (client, server) = tokio::io::duplex(64 * 1024);
    let peer = SocketAddr::from(([192, 0, 2, 1], 40000));
    let local = SocketAddr::from(([192, 0, 2, 2], 25));
    let session = serve_stream(
        Stream::Memory(server),
        peer,
        local,
        handler,
        limits,
        CancellationToken::new(),
    );
    let (mut read, mut write) = tokio::io::split(client);
    let talk = async move {
        let _ = write.write_all(input).await;
        let _ = write.shutdown().await;
        // Held open until the server is done: dropping it would close the pipe early.
        write
    };
    let listen = async move {
        let mut out = Vec::new();
        let _ = read.read_to_end(&mut out).await;
        out
    };
    let ((), _write, out) = tokio::join!(session, talk, listen);
    out
}

/// Runs one SMTP session over any [`Stream`] (an in-memory one for fuzzing), as if from
/// `peer` to `local`. Never panics on client input.
pub async fn serve_stream<H: Handler>(
    stream: Stream,
    peer: SocketAddr,
    local: SocketAddr,
    handler: Arc<H>,
    limits: Arc<Limits>,
    shutdown: CancellationToken,
) {
    let mut conn = Conn {
        wire: Wire::new(stream),
        session: Session {
            peer,
            local,
            helo: None,
            from: None,
            params: MailParams::default(),
            rcpts: Vec::new(),
            tls: None,
            user: None,
        },
        handler,
        limits,
        errors: 0,
        shutdown,
        chunks: None,
    };
    if let Err(e) = conn.run().await {
        tracing::debug!(%peer, error = %e, "smtp session ended with an I/O error");
    }
    conn.wire.shutdown().await;
    conn.handler.disconnect(&conn.session).await;
}

struct Conn<H> {
    wire: Wire<Stream>,
    session: Session,
    handler: Arc<H>,
    limits: Arc<Limits>,
    errors: u32,
    shutdown: CancellationToken,
    /// The message so far, when the open transaction sends it in BDAT chunks.
    chunks: Option<Chunks>,
}

/// A message arriving in BDAT chunks.
struct Chunks {
    body: Vec<u8>,
    /// Past the size limit: the rest is read and dropped, and the last chunk gets a 552.
    too_big: bool,
}

enum Next {
    Continue,
    Close,
}

impl<H: Handler> Conn<H> {
    async fn run(&mut self) -> std::io::Result<()> {
        if let Err(reply) = self.handler.connect(&self.session).await {
            self.reply(&reply);
            return self.wire.flush().await;
        }
        let greeting = Reply::new(
            220,
            "2.0.0",
            format!("{} ESMTP knock", self.limits.hostname),
        );
        self.reply(&greeting);
        loop {
            // Pipelining: answer everything buffered before waiting for more input.
            let line = match self.wire.take_line(MAX_COMMAND_LINE) {
                Some(line) => line,
                None => {
                    self.wire.flush().await?;
                    match self.read_line(MAX_COMMAND_LINE).await? {
                        Some(line) => line,
                        None => return Ok(()),
                    }
                }
            };
            let next = match line {
                Line::TooLong => self.error(Reply::new(500, "5.5.6", "Error: line too long")),
                Line::Complete(line) => self.command(&line).await?,
            };
            if let Next::Close = next {
                return self.wire.flush().await;
            }
        }
    }

    /// Waits for a line, answering idle clients and shutdown with a 421.
    async fn read_line(&mut self, max: usize) -> std::io::Result<Option<Line>> {
        let idle = self.limits.idle_timeout;
        let shutdown = self.shutdown.clone();
        tokio::select! {
            line = tokio::time::timeout(idle, self.wire.read_line(max)) => match line {
                Ok(line) => line,
                Err(_) => {
                    let text = format!("{} Error: timeout exceeded", self.limits.hostname);
                    self.reply(&Reply::new(421, "4.4.2", text));
                    self.wire.flush().await?;
                    Ok(None)
                }
            },
            _ = shutdown.cancelled() => {
                let text = format!("{} Service shutting down, closing transmission channel", self.limits.hostname);
                self.reply(&Reply::new(421, "4.3.2", text));
                self.wire.flush().await?;
                Ok(None)
            }
        }
    }

    fn reply(&mut self, reply: &Reply) {
        reply.write_to(&mut self.wire.out);
    }

    /// Ends the open transaction, if any: no sender, recipients nor chunks.
    fn reset(&mut self) {
        self.session.reset();
        self.chunks = None;
    }

    /// Sends an error reply and closes the session when the client has made too many.
    fn error(&mut self, reply: Reply) -> Next {
        self.errors += 1;
        self.reply(&reply);
        if self.errors >= self.limits.max_errors {
            self.reply(&Reply::new(
                421,
                "4.7.0",
                format!("{} Error: too many errors", self.limits.hostname),
            ));
            return Next::Close;
        }
        Next::Continue
    }

    async fn command(&mut self, line: &[u8]) -> std::io::Result<Next> {
        let request = match parse_command(line) {
            Ok(request) => request,
            Err(reply) => return Ok(self.error(reply)),
        };
        match request {
            Request::Ehlo { host } => Ok(self.ehlo(host)),
            Request::Helo { host } => {
                self.reset();
                self.session.helo = Some(host);
                self.reply(&Reply::new(250, "2.0.0", self.limits.hostname.clone()));
                Ok(Next::Continue)
            }
            Request::Lhlo { .. } => {
                Ok(self.error(Reply::new(500, "5.5.1", "Error: LHLO is for LMTP")))
            }
            Request::Mail { from } => Ok(self.mail(from).await),
            Request::Rcpt { to } => Ok(self.rcpt(to).await),
            Request::Data => self.data().await,
            Request::Bdat {
                chunk_size,
                is_last,
            } => self.bdat(chunk_size, is_last).await,
            Request::Rset => {
                self.reset();
                self.reply(&Reply::new(250, "2.0.0", "Ok"));
                Ok(Next::Continue)
            }
            Request::Noop { .. } => {
                self.reply(&Reply::new(250, "2.0.0", "Ok"));
                Ok(Next::Continue)
            }
            Request::Vrfy { .. } => {
                self.reply(&Reply::new(
                    252,
                    "2.0.0",
                    "Cannot VRFY user, but will accept message and attempt delivery",
                ));
                Ok(Next::Continue)
            }
            Request::Quit => {
                self.reply(&Reply::new(221, "2.0.0", "Bye"));
                Ok(Next::Close)
            }
            Request::StartTls => self.starttls().await,
            Request::Auth {
                mechanism,
                initial_response,
            } => self.auth(mechanism, initial_response).await,
            other => Ok(self.error(Reply::new(
                502,
                "5.5.1",
                format!("Error: {} not implemented", other.name()),
            ))),
        }
    }

    fn ehlo(&mut self, host: String) -> Next {
        let pipelining = match self.limits.ehlo {
            EhloMode::HeloOnly => {
                return self.error(Reply::new(502, "5.5.1", "Error: command not implemented"));
            }
            EhloMode::NoPipelining => "",
            EhloMode::Full => "\nPIPELINING",
        };
        self.reset();
        self.session.helo = Some(host);
        let starttls = match (&self.limits.tls, &self.session.tls) {
            (Some(_), None) => "\nSTARTTLS",
            _ => "",
        };
        let auth = if self.session.tls.is_some() && self.handler.offers_auth() {
            "\nAUTH PLAIN LOGIN"
        } else {
            ""
        };
        let offer = |on: bool, keyword: &'static str| if on { keyword } else { "" };
        let x = self.limits.extensions;
        let (dsn, utf8, chunking) = (
            offer(x.dsn, "\nDSN"),
            offer(x.smtputf8, "\nSMTPUTF8"),
            offer(x.chunking, "\nCHUNKING"),
        );
        let text = format!(
            "{}{pipelining}\nSIZE {}\n8BITMIME\nENHANCEDSTATUSCODES{dsn}{utf8}{chunking}{starttls}{auth}",
            self.limits.hostname, self.limits.max_message_size
        );
        // EHLO replies carry no enhanced code on their keyword lines (RFC 2034 section 3).
        self.reply(&Reply {
            code: 250,
            enhanced: None,
            text,
        });
        Next::Continue
    }

    async fn mail(&mut self, from: smtp_proto::MailFrom<String>) -> Next {
        if self.session.helo.is_none() {
            return self.error(Reply::new(503, "5.5.1", "Error: send HELO/EHLO first"));
        }
        if self.session.from.is_some() {
            return self.error(Reply::new(503, "5.5.1", "Error: nested MAIL command"));
        }
        if from.size as u64 > self.limits.max_message_size {
            return self.error(Reply::new(
                552,
                "5.3.4",
                "Error: message size exceeds fixed limit",
            ));
        }
        if !from.address.is_empty() && Address::parse(&from.address).is_err() {
            return self.error(Reply::new(501, "5.1.7", "Bad sender address syntax"));
        }
        let params = match self.mail_params(&from) {
            Ok(params) => params,
            Err(reply) => return self.error(reply),
        };
        if !from.address.is_ascii() && !params.smtputf8 {
            return self.error(not_declared_utf8());
        }
        let reply = self.handler.mail(&self.session, &from.address).await;
        if reply.is_positive() {
            self.session.from = Some(from.address);
            self.session.params = params;
        }
        self.answer(reply)
    }

    /// The DSN and SMTPUTF8 parameters of MAIL FROM, refused when not offered (RFC 5321
    /// section 4.1.1.11: 555).
    fn mail_params(&self, from: &smtp_proto::MailFrom<String>) -> Result<MailParams, Reply> {
        let x = self.limits.extensions;
        let ret = match from.flags {
            f if f & smtp_proto::MAIL_RET_FULL != 0 => Some(Ret::Full),
            f if f & smtp_proto::MAIL_RET_HDRS != 0 => Some(Ret::Hdrs),
            _ => None,
        };
        if (ret.is_some() || from.env_id.is_some()) && !x.dsn {
            return Err(not_offered("RET and ENVID (DSN)"));
        }
        let smtputf8 = from.flags & smtp_proto::MAIL_SMTPUTF8 != 0;
        if smtputf8 && !x.smtputf8 {
            return Err(not_offered("SMTPUTF8"));
        }
        if let Some(envid) = &from.env_id
            && !crate::message::valid_envid(envid)
        {
            return Err(Reply::new(
                501,
                "5.5.4",
                "Error: ENVID is 1 to 100 printable characters once decoded",
            ));
        }
        Ok(MailParams {
            ret,
            envid: from.env_id.clone(),
            smtputf8,
        })
    }

    async fn rcpt(&mut self, to: smtp_proto::RcptTo<String>) -> Next {
        if self.session.from.is_none() {
            return self.error(Reply::new(503, "5.5.1", "Error: need MAIL command"));
        }
        if self.session.rcpts.len() >= self.limits.max_recipients {
            return self.error(Reply::new(452, "4.5.3", "Error: too many recipients"));
        }
        let address = match Address::parse(&to.address) {
            Ok(address) => address,
            Err(e) => {
                return self.error(Reply::new(
                    501,
                    "5.1.3",
                    format!("Bad recipient address syntax: {e}"),
                ));
            }
        };
        if !to.address.is_ascii() && !self.session.params.smtputf8 {
            return self.error(not_declared_utf8());
        }
        // Decoded from xtext, it goes into a DSN's fields: no line breaks nor controls.
        if let Some(orcpt) = &to.orcpt
            && orcpt.chars().any(char::is_control)
        {
            return self.error(Reply::new(
                501,
                "5.5.4",
                "Error: ORCPT has a control character once decoded",
            ));
        }
        let notify = notify(to.flags);
        if (notify.is_some() || to.orcpt.is_some()) && !self.limits.extensions.dsn {
            return self.error(not_offered("NOTIFY and ORCPT (DSN)"));
        }
        let reply = self.handler.rcpt(&self.session, &address).await;
        if reply.is_positive() {
            self.session.rcpts.push(Rcpt {
                address,
                notify,
                orcpt: to.orcpt,
            });
        }
        self.answer(reply)
    }

    /// Sends a handler's reply; a 421 from the handler closes the session.
    fn answer(&mut self, reply: Reply) -> Next {
        let close = reply.code == 421;
        if reply.is_permanent() || reply.is_transient() {
            if let Next::Close = self.error(reply) {
                return Next::Close;
            }
        } else {
            self.reply(&reply);
        }
        if close { Next::Close } else { Next::Continue }
    }

    /// RFC 3207: the handshake, then a session that forgets everything said before it.
    async fn starttls(&mut self) -> std::io::Result<Next> {
        let Some(acceptor) = self.limits.tls.clone() else {
            return Ok(self.error(Reply::new(502, "5.5.1", "Error: command not implemented")));
        };
        if self.session.tls.is_some() {
            return Ok(self.error(Reply::new(554, "5.5.1", "Error: TLS already active")));
        }
        if matches!(self.wire.get_ref(), Stream::Memory(_)) {
            return Ok(self.error(Reply::new(454, "4.7.0", "TLS not available")));
        }
        self.reply(&Reply::new(220, "2.0.0", "Ready to start TLS"));
        self.wire.flush().await?;
        // Anything pipelined after STARTTLS was sent in the clear and must not be taken as
        // said over TLS (the command injection of CVE-2011-0411).
        let injected = self.wire.buffered().len();
        self.wire.consume(injected);
        let handshake = self.wire.stream_mut().accept(&acceptor);
        match tokio::time::timeout(self.limits.idle_timeout, handshake).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::debug!(peer = %self.session.peer, error = %e, "inbound TLS handshake failed");
                return Ok(Next::Close);
            }
            Err(_) => return Ok(Next::Close),
        }
        self.reset();
        self.session.helo = None;
        self.session.tls = self.wire.get_ref().info(false);
        Ok(Next::Continue)
    }

    /// AUTH PLAIN or LOGIN over TLS; the handler judges the user name and password.
    async fn auth(&mut self, mechanism: u64, initial: String) -> std::io::Result<Next> {
        if !self.handler.offers_auth() {
            return Ok(self.error(Reply::new(
                503,
                "5.5.1",
                "Error: authentication not enabled",
            )));
        }
        if self.session.helo.is_none() {
            return Ok(self.error(Reply::new(503, "5.5.1", "Error: send HELO/EHLO first")));
        }
        if self.session.tls.is_none() {
            return Ok(self.error(Reply::new(
                538,
                "5.7.11",
                "Encryption required for requested authentication mechanism",
            )));
        }
        if self.session.user.is_some() {
            return Ok(self.error(Reply::new(503, "5.5.1", "Error: already authenticated")));
        }
        if self.session.from.is_some() {
            return Ok(self.error(Reply::new(
                503,
                "5.5.1",
                "Error: MAIL transaction in progress",
            )));
        }
        let initial = match initial.as_str() {
            "" => None,
            "=" => Some(Vec::new()),
            text => match decode_sasl_response(text.as_bytes()) {
                Ok(bytes) => Some(bytes),
                Err(reply) => return Ok(self.error(reply)),
            },
        };
        let credentials = match mechanism {
            smtp_proto::AUTH_PLAIN => self.sasl_plain(initial).await?,
            smtp_proto::AUTH_LOGIN => self.sasl_login(initial).await?,
            _ => {
                return Ok(self.error(Reply::new(
                    504,
                    "5.5.4",
                    "Unrecognized authentication type",
                )));
            }
        };
        let (user, password) = match credentials {
            Sasl::Done(user, password) => (user, password),
            Sasl::Refused(reply) => return Ok(self.error(reply)),
            Sasl::Gone => return Ok(Next::Close),
        };
        if self
            .handler
            .authenticate(&self.session, &user, &password)
            .await
        {
            self.session.user = Some(user);
            self.reply(&Reply::new(235, "2.7.0", "Authentication successful"));
            Ok(Next::Continue)
        } else {
            tracing::info!(peer = %self.session.peer, user, "SMTP AUTH failed");
            Ok(self.error(Reply::new(
                535,
                "5.7.8",
                "Authentication credentials invalid",
            )))
        }
    }

    /// RFC 4616: `authzid NUL authcid NUL password`.
    async fn sasl_plain(&mut self, initial: Option<Vec<u8>>) -> std::io::Result<Sasl> {
        let message = match initial {
            Some(message) => message,
            None => match self.sasl_response("").await? {
                Ok(message) => message,
                Err(sasl) => return Ok(sasl),
            },
        };
        Ok(match decode_plain(&message) {
            Ok((user, password)) => Sasl::Done(user, password),
            Err(reply) => Sasl::Refused(reply),
        })
    }

    /// The LOGIN mechanism: user name, then password, each asked for.
    async fn sasl_login(&mut self, initial: Option<Vec<u8>>) -> std::io::Result<Sasl> {
        let user = match initial {
            Some(user) if !user.is_empty() => user,
            _ => match self.sasl_response("VXNlcm5hbWU6").await? {
                Ok(user) => user,
                Err(sasl) => return Ok(sasl),
            },
        };
        let password = match self.sasl_response("UGFzc3dvcmQ6").await? {
            Ok(password) => password,
            Err(sasl) => return Ok(sasl),
        };
        Ok(match credentials(&user, &password) {
            Ok((user, password)) => Sasl::Done(user, password),
            Err(reply) => Sasl::Refused(reply),
        })
    }

    /// Sends a 334 challenge and reads the client's base64 answer.
    async fn sasl_response(&mut self, challenge: &str) -> std::io::Result<Result<Vec<u8>, Sasl>> {
        self.wire
            .out
            .extend_from_slice(format!("334 {challenge}\r\n").as_bytes());
        self.wire.flush().await?;
        let line = match self.read_line(MAX_AUTH_LINE).await? {
            None => return Ok(Err(Sasl::Gone)),
            Some(Line::TooLong) => {
                return Ok(Err(Sasl::Refused(Reply::new(
                    500,
                    "5.5.6",
                    "Error: line too long",
                ))));
            }
            Some(Line::Complete(line)) => line,
        };
        Ok(decode_sasl_response(&line).map_err(Sasl::Refused))
    }

    async fn data(&mut self) -> std::io::Result<Next> {
        if self.session.from.is_none() {
            return Ok(self.error(Reply::new(503, "5.5.1", "Error: need MAIL command")));
        }
        if self.session.rcpts.is_empty() {
            return Ok(self.error(Reply::new(503, "5.5.1", "Error: need RCPT command")));
        }
        if self.chunks.is_some() {
            return Ok(self.error(Reply::new(
                503,
                "5.5.1",
                "Error: DATA after BDAT in one transaction",
            )));
        }
        self.reply(&Reply::new(354, "2.0.0", "End data with <CR><LF>.<CR><LF>"));
        self.wire.flush().await?;
        let Some(body) = self.receive_body().await? else {
            return Ok(Next::Close);
        };
        let reply = match body {
            Body::Complete(body) => self.handler.data(&self.session, body).await,
            Body::TooBig => Reply::new(552, "5.3.4", "Error: message file too big"),
        };
        self.reset();
        Ok(self.answer(reply))
    }

    /// Reads the message up to the final dot; `None` when the client went away or idled.
    async fn receive_body(&mut self) -> std::io::Result<Option<Body>> {
        let max = self.limits.max_message_size as usize;
        let deadline = tokio::time::Instant::now() + self.limits.data_timeout;
        let mut receiver = DataReceiver::new();
        let mut body = Vec::with_capacity(8 * 1024);
        let mut too_big = false;
        loop {
            let buffered = self.wire.buffered();
            let mut iter = buffered.iter();
            let done = receiver.ingest(&mut iter, &mut body);
            let used = buffered.len() - iter.as_slice().len();
            self.wire.consume(used);
            if body.len() > max {
                too_big = true;
                body.clear();
            }
            if done {
                return Ok(Some(if too_big {
                    Body::TooBig
                } else {
                    Body::Complete(body)
                }));
            }
            let wait = deadline.min(tokio::time::Instant::now() + self.limits.idle_timeout);
            match tokio::time::timeout_at(wait, self.wire.fill()).await {
                Ok(Ok(0)) => return Ok(None),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(e),
                Err(_) => {
                    let text = format!("{} Error: timeout exceeded", self.limits.hostname);
                    self.reply(&Reply::new(421, "4.4.2", text));
                    self.wire.flush().await?;
                    return Ok(None);
                }
            }
        }
    }
}

impl<H: Handler> Conn<H> {
    /// RFC 3030: one chunk of exactly `size` octets follows the command, taken as they are
    /// (no dot-stuffing); the last one ends the message. The chunk is read even when the
    /// command is refused, so that its octets are never taken for commands.
    async fn bdat(&mut self, size: usize, last: bool) -> std::io::Result<Next> {
        let refusal = if !self.limits.extensions.chunking {
            Some(Reply::new(502, "5.5.1", "Error: BDAT not implemented"))
        } else if self.session.from.is_none() {
            Some(Reply::new(503, "5.5.1", "Error: need MAIL command"))
        } else if self.session.rcpts.is_empty() {
            Some(Reply::new(503, "5.5.1", "Error: need RCPT command"))
        } else {
            None
        };
        let max = self.limits.max_message_size as usize;
        let mut chunks = match refusal {
            Some(_) => None,
            None => Some(self.chunks.take().unwrap_or(Chunks {
                body: Vec::with_capacity(size.min(1 << 20)),
                too_big: false,
            })),
        };
        if let Some(c) = chunks.as_mut()
            && c.body.len().saturating_add(size) > max
        {
            c.too_big = true;
            c.body = Vec::new();
        }
        let keep = chunks.as_mut().filter(|c| !c.too_big).map(|c| &mut c.body);
        if !self.read_chunk(size, keep).await? {
            return Ok(Next::Close);
        }
        if let Some(reply) = refusal {
            return Ok(self.error(reply));
        }
        let chunks = chunks.expect("refused above otherwise");
        if !last {
            self.chunks = Some(chunks);
            let text = format!("Ok: {size} octets received");
            self.reply(&Reply::new(250, "2.0.0", text));
            return Ok(Next::Continue);
        }
        let reply = match chunks.too_big {
            true => Reply::new(552, "5.3.4", "Error: message file too big"),
            false => self.handler.data(&self.session, chunks.body).await,
        };
        self.reset();
        Ok(self.answer(reply))
    }

    /// Reads `size` octets of a chunk, into `keep` or dropped; `false` when the client went
    /// away or idled before they all came (a 421 was sent for the latter).
    async fn read_chunk(
        &mut self,
        size: usize,
        mut keep: Option<&mut Vec<u8>>,
    ) -> std::io::Result<bool> {
        let deadline = tokio::time::Instant::now() + self.limits.data_timeout;
        let mut left = size;
        loop {
            let buffered = self.wire.buffered();
            let n = buffered.len().min(left);
            if let Some(body) = keep.as_deref_mut() {
                body.extend_from_slice(&buffered[..n]);
            }
            self.wire.consume(n);
            left -= n;
            if left == 0 {
                return Ok(true);
            }
            let wait = deadline.min(tokio::time::Instant::now() + self.limits.idle_timeout);
            match tokio::time::timeout_at(wait, self.wire.fill()).await {
                Ok(Ok(0)) => return Ok(false),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(e),
                Err(_) => {
                    let text = format!("{} Error: timeout exceeded", self.limits.hostname);
                    self.reply(&Reply::new(421, "4.4.2", text));
                    self.wire.flush().await?;
                    return Ok(false);
                }
            }
        }
    }
}

/// RCPT TO's NOTIFY flags as [`Notify`]; `None` when it had none.
fn notify(flags: u64) -> Option<Notify> {
    use smtp_proto::{
        RCPT_NOTIFY_DELAY, RCPT_NOTIFY_FAILURE, RCPT_NOTIFY_NEVER, RCPT_NOTIFY_SUCCESS,
    };
    let any = RCPT_NOTIFY_NEVER | RCPT_NOTIFY_SUCCESS | RCPT_NOTIFY_FAILURE | RCPT_NOTIFY_DELAY;
    (flags & any != 0).then_some(Notify {
        success: flags & RCPT_NOTIFY_SUCCESS != 0,
        failure: flags & RCPT_NOTIFY_FAILURE != 0,
        delay: flags & RCPT_NOTIFY_DELAY != 0,
    })
}

/// A parameter of an extension this server does not offer.
fn not_offered(what: &str) -> Reply {
    Reply::new(555, "5.5.4", format!("Error: {what} not offered here"))
}

/// RFC 6531 section 3.4: a UTF-8 address needs the SMTPUTF8 parameter on MAIL FROM.
fn not_declared_utf8() -> Reply {
    Reply::new(
        553,
        "5.6.7",
        "Error: SMTPUTF8 must be declared on MAIL FROM for a UTF-8 address",
    )
}

enum Body {
    Complete(Vec<u8>),
    TooBig,
}

/// Where a SASL exchange ended.
enum Sasl {
    Done(String, String),
    Refused(Reply),
    /// The client went away or idled out.
    Gone,
}

/// Decodes a client's SASL response line (RFC 4954): base64, or `*` to give up. Pure, so
/// it can be fuzzed.
pub fn decode_sasl_response(line: &[u8]) -> Result<Vec<u8>, Reply> {
    let text = line.trim_ascii_end();
    if text == b"*" {
        return Err(Reply::new(501, "5.7.0", "Authentication aborted"));
    }
    BASE64.decode(text).map_err(|_| cannot_decode())
}

/// The user and password of a PLAIN message (RFC 4616: `authzid NUL user NUL password`;
/// the authorization identity is not used). Pure, so it can be fuzzed.
pub fn decode_plain(message: &[u8]) -> Result<(String, String), Reply> {
    let mut parts = message.split(|b| *b == 0);
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(_authzid), Some(user), Some(password), None) => credentials(user, password),
        _ => Err(cannot_decode()),
    }
}

fn credentials(user: &[u8], password: &[u8]) -> Result<(String, String), Reply> {
    match (std::str::from_utf8(user), std::str::from_utf8(password)) {
        (Ok(user), Ok(password)) if !user.is_empty() => {
            Ok((user.to_string(), password.to_string()))
        }
        _ => Err(cannot_decode()),
    }
}

fn cannot_decode() -> Reply {
    Reply::new(501, "5.5.2", "Cannot decode response")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Takes everything, keeping each message with its envelope.
    #[derive(Default)]
    struct Accept(
        std::sync::Mutex<Vec<Vec<u8>>>,
        std::sync::Mutex<Vec<Session>>,
    );

    #[async_trait]
    impl Handler for Accept {
        async fn mail(&self, _: &Session, _: &str) -> Reply {
            Reply::new(250, "2.1.0", "Ok")
        }
        async fn rcpt(&self, _: &Session, _: &Address) -> Reply {
            Reply::new(250, "2.1.5", "Ok")
        }
        async fn data(&self, session: &Session, body: Vec<u8>) -> Reply {
            self.0.lock().unwrap().push(body);
            self.1.lock().unwrap().push(session.clone());
            Reply::new(250, "2.0.0", "Ok: queued")
        }
    }

    fn limits() -> Arc<Limits> {
        Arc::new(Limits {
            hostname: "knock.test".into(),
            max_message_size: 1 << 20,
            max_recipients: 100,
            idle_timeout: Duration::from_secs(5),
            data_timeout: Duration::from_secs(5),
            max_errors: 20,
            ehlo: EhloMode::Full,
            tls: None,
            extensions: Extensions::ALL,
        })
    }

    #[tokio::test]
    async fn a_whole_session_runs_over_memory_and_ends_data_only_on_crlf_dot_crlf() {
        let handler = Arc::new(Accept::default());
        let input = b"EHLO c.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n\
            Subject: s\r\n\r\none\n.\nMAIL FROM:<evil@x.test>\r\nRCPT TO:<v@y.test>\r\n\
            DATA\r\nforged\r\n.\r\nSTARTTLS\r\nQUIT\r\n";
        let out = converse(input, handler.clone(), limits()).await;
        let out = String::from_utf8(out).unwrap();
        let codes: Vec<&str> = out
            .lines()
            .filter(|l| l.as_bytes().get(3) == Some(&b' '))
            .map(|l| &l[..3])
            .collect();
        // Greeting, EHLO, MAIL, RCPT, 354, one message, STARTTLS not offered, QUIT.
        assert_eq!(
            codes,
            ["220", "250", "250", "250", "354", "250", "502", "221"],
            "{out}"
        );
        let bodies = handler.0.lock().unwrap();
        assert_eq!(bodies.len(), 1, "one message, not a smuggled second");
        assert!(String::from_utf8_lossy(&bodies[0]).contains("MAIL FROM:<evil@x.test>"));
    }

    /// The status line of each reply (the last line of a multi-line one).
    fn codes(out: &[u8]) -> Vec<String> {
        String::from_utf8_lossy(out)
            .lines()
            .filter(|l| l.as_bytes().get(3) == Some(&b' '))
            .map(|l| l.split(' ').take(2).collect::<Vec<_>>().join(" "))
            .collect()
    }

    #[tokio::test]
    async fn bdat_chunks_make_one_message_and_are_read_even_when_refused() {
        let handler = Arc::new(Accept::default());
        let mut input = b"EHLO c.test\r\nBDAT 13\r\nRCPT TO:<x>\r\nMAIL FROM:<a@x.test>\r\n\
            RCPT TO:<b@y.test>\r\nBDAT 5\r\n.\r\nXYBDAT 0\r\nBDAT 9 LAST\r\n\r\nQUIT\r\nZ"
            .to_vec();
        input.extend_from_slice(
            b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nBDAT 3\r\nabcDATA\r\nQUIT\r\n",
        );
        let out = converse(&input, handler.clone(), limits()).await;
        assert_eq!(
            codes(&out),
            [
                "220 2.0.0",
                "250 CHUNKING", // the EHLO reply's last line
                "503 5.5.1",    // BDAT before MAIL: its 12 octets were read, not run
                "250 2.1.0",
                "250 2.1.5",
                "250 2.0.0", // 5 octets
                "250 2.0.0", // 0 octets
                "250 2.0.0", // the last chunk: the message
                "250 2.1.0",
                "250 2.1.5",
                "250 2.0.0",
                "503 5.5.1", // DATA after BDAT
                "221 2.0.0",
            ],
            "{}",
            String::from_utf8_lossy(&out)
        );
        let bodies = handler.0.lock().unwrap();
        assert_eq!(bodies.len(), 1);
        assert_eq!(bodies[0], b".\r\nXY\r\nQUIT\r\nZ", "as sent, no unstuffing");
    }

    #[tokio::test]
    async fn a_message_over_the_size_limit_in_chunks_is_refused_at_the_last() {
        let handler = Arc::new(Accept::default());
        let mut l = (*limits()).clone();
        l.max_message_size = 10;
        let input = b"EHLO c.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\n\
            BDAT 8\r\n12345678BDAT 8 LAST\r\n12345678NOOP\r\n";
        let out = converse(input, handler.clone(), Arc::new(l)).await;
        let codes = codes(&out);
        assert_eq!(
            codes[4..],
            ["250 2.0.0", "552 5.3.4", "250 2.0.0"],
            "{codes:?}"
        );
        assert!(handler.0.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn dsn_and_smtputf8_parameters_reach_the_handler() {
        let handler = Arc::new(Accept::default());
        let input = "EHLO c.test\r\n\
            MAIL FROM:<a@x.test> RET=HDRS ENVID=QQ+2B1\r\n\
            RCPT TO:<b@y.test> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;old+2Bb@y.test\r\n\
            RCPT TO:<c@y.test> NOTIFY=NEVER\r\n\
            RCPT TO:<d@y.test>\r\n\
            RCPT TO:<jös@y.test>\r\n\
            DATA\r\nx\r\n.\r\n\
            MAIL FROM:<ü@x.test>\r\n\
            MAIL FROM:<ü@x.test> SMTPUTF8\r\n\
            RCPT TO:<jös@y.test>\r\n\
            DATA\r\nx\r\n.\r\n\
            MAIL FROM:<a@x.test> ENVID=a+0Db\r\n\
            QUIT\r\n";
        let out = converse(input.as_bytes(), handler.clone(), limits()).await;
        let text = String::from_utf8_lossy(&out).into_owned();
        for keyword in ["DSN", "SMTPUTF8", "CHUNKING", "8BITMIME"] {
            let offered = text.lines().any(|l| l.len() > 4 && &l[4..] == keyword);
            assert!(offered, "{keyword} not offered: {text}");
        }
        assert_eq!(
            codes(&out)[2..],
            [
                "250 2.1.0",
                "250 2.1.5",
                "250 2.1.5",
                "250 2.1.5",
                "553 5.6.7", // a UTF-8 recipient without SMTPUTF8
                "354 2.0.0",
                "250 2.0.0",
                "553 5.6.7", // a UTF-8 sender without SMTPUTF8
                "250 2.1.0",
                "250 2.1.5",
                "354 2.0.0",
                "250 2.0.0",
                "501 5.5.4", // a CR in ENVID once decoded
                "221 2.0.0",
            ],
            "{text}"
        );
        let sessions = handler.1.lock().unwrap();
        let first = &sessions[0];
        assert_eq!(first.params.ret, Some(Ret::Hdrs));
        assert_eq!(first.params.envid.as_deref(), Some("QQ+1"));
        assert!(!first.params.smtputf8);
        let r = &first.rcpts;
        assert_eq!(r.len(), 3);
        assert_eq!(
            r[0].notify,
            Some(Notify {
                success: true,
                failure: false,
                delay: true
            })
        );
        assert_eq!(r[0].orcpt.as_deref(), Some("old+b@y.test"));
        assert_eq!(r[1].notify, Some(Notify::default()), "NEVER");
        assert_eq!((r[2].notify, &r[2].orcpt), (None, &None));
        assert!(sessions[1].params.smtputf8);
        assert_eq!(sessions[1].rcpts[0].address.local, "jös");
    }

    #[tokio::test]
    async fn a_server_without_the_extensions_refuses_their_parameters() {
        let handler = Arc::new(Accept::default());
        let mut l = (*limits()).clone();
        l.extensions = Extensions {
            dsn: false,
            smtputf8: false,
            chunking: false,
        };
        let input = "EHLO c.test\r\nMAIL FROM:<a@x.test> RET=FULL\r\n\
            MAIL FROM:<a@x.test> SMTPUTF8\r\nMAIL FROM:<a@x.test>\r\n\
            RCPT TO:<b@y.test> NOTIFY=FAILURE\r\nRCPT TO:<b@y.test>\r\nBDAT 1 LAST\r\nxQUIT\r\n";
        let out = converse(input.as_bytes(), handler.clone(), Arc::new(l)).await;
        let text = String::from_utf8_lossy(&out).into_owned();
        for keyword in ["DSN", "SMTPUTF8", "CHUNKING"] {
            let offered = text.lines().any(|l| l.len() > 4 && &l[4..] == keyword);
            assert!(!offered, "{keyword} offered: {text}");
        }
        assert_eq!(
            codes(&out)[2..],
            [
                "555 5.5.4",
                "555 5.5.4",
                "250 2.1.0",
                "555 5.5.4",
                "250 2.1.5",
                "502 5.5.1",
                "221 2.0.0"
            ],
            "{text}"
        );
    }

    #[test]
    fn sasl_plain_decoding_table() {
        let code = |r: Result<(String, String), Reply>| match r {
            Ok((user, password)) => format!("{user}/{password}"),
            Err(reply) => format!("{} {}", reply.code, reply.enhanced.unwrap()),
        };
        let plain =
            |line: &str| decode_sasl_response(line.as_bytes()).and_then(|m| decode_plain(&m));
        let cases = [
            ("AGFsaWNlAHdvbmRlcmxhbmQ=\r\n", "alice/wonderland"), // \0alice\0wonderland
            ("YWRtaW4AYWxpY2UAd29uZGVybGFuZA==", "alice/wonderland"), // admin\0alice\0...
            ("AGFsaWNlAA==", "alice/"),                           // empty password
            ("AABwYXNz", "501 5.5.2"),                            // no user
            ("YWxpY2U=", "501 5.5.2"),                            // no NULs
            ("AGEAYgBj", "501 5.5.2"),                            // a NUL too many
            ("AP8AeA==", "501 5.5.2"),                            // user not UTF-8
            ("!!!", "501 5.5.2"),
            ("*\r\n", "501 5.7.0"),
        ];
        for (line, expected) in cases {
            assert_eq!(code(plain(line)), expected, "{line:?}");
        }
    }
}
