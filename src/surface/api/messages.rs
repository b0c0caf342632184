//! `/api/v1/messages`: inject a message, read one back with its recipients and attempts,
//! or the message itself as the spool holds it. Wherever a path takes a message id, the
//! start of one will do when no other message on record starts the same way (409 when
//! several do), so that every client takes ids as operators type them.

use super::{ApiError, ApiState};
use crate::address::Address;
use crate::engine::ingest::{StreamChoice, Submission};
use crate::message::{
    Attempt, IdPrefix, MailParams, MessageId, Notify, Rcpt, Ret, STREAM_HEADER, State, new_id,
};
use crate::time::Timestamp;
use axum::extract::{Path, State as AxState};
use axum::http::StatusCode;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// `POST /api/v1/messages`: either `raw` RFC 5322 text, or `subject` and `text`.
#[derive(Debug, Serialize)]
pub struct SendRequest {
    pub from: String,
    pub to: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// The stream (`[stream.NAME]`); `[http] stream` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    /// Which DSNs the sender wants for every recipient (RFC 3461 NOTIFY): `["never"]`, or
    /// some of `success`, `failure`, `delay`. Absent: failures and delay warnings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify: Option<Vec<String>>,
    /// What a failure DSN returns (RFC 3461 RET): `full` or `headers` (the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ret: Option<String>,
    /// The sender's id for this message, given back in every DSN (RFC 3461 ENVID).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envid: Option<String>,
}

/// A request as it arrives: every field may be missing, and each that must be there is
/// named when it is not.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SendBody {
    from: Option<String>,
    to: Option<Vec<String>>,
    raw: Option<String>,
    subject: Option<String>,
    text: Option<String>,
    stream: Option<String>,
    notify: Option<Vec<String>>,
    ret: Option<String>,
    envid: Option<String>,
}

impl TryFrom<SendBody> for SendRequest {
    type Error = ApiError;
    fn try_from(b: SendBody) -> Result<SendRequest, ApiError> {
        Ok(SendRequest {
            from: b
                .from
                .ok_or_else(|| ApiError::field("from", "missing: the envelope sender"))?,
            to: b
                .to
                .ok_or_else(|| ApiError::field("to", "missing: the recipients"))?,
            raw: b.raw,
            subject: b.subject,
            text: b.text,
            stream: b.stream,
            notify: b.notify,
            ret: b.ret,
            envid: b.envid,
        })
    }
}

/// What a request asks of DSNs: NOTIFY for its recipients, RET and ENVID.
fn dsn_request(req: &SendRequest) -> Result<(Option<Notify>, MailParams), ApiError> {
    let notify = match &req.notify {
        None => None,
        Some(words) => {
            let words: Vec<&str> = words.iter().map(String::as_str).collect();
            Some(Notify::parse(&words).map_err(|e| ApiError::field("notify", e))?)
        }
    };
    let ret = match req.ret.as_deref() {
        None => None,
        Some(r) if r.eq_ignore_ascii_case("full") => Some(Ret::Full),
        Some(r) if r.eq_ignore_ascii_case("headers") || r.eq_ignore_ascii_case("hdrs") => {
            Some(Ret::Hdrs)
        }
        Some(other) => {
            return Err(ApiError::field(
                "ret",
                format!("{other:?}: give \"full\" or \"headers\""),
            ));
        }
    };
    if let Some(envid) = &req.envid
        && !crate::message::valid_envid(envid)
    {
        return Err(ApiError::field(
            "envid",
            "1 to 100 printable ASCII characters, no spaces (RFC 3461)",
        ));
    }
    let params = MailParams {
        ret,
        envid: req.envid.clone(),
        smtputf8: false,
    };
    Ok((notify, params))
}

#[derive(Debug, Serialize, Deserialize)]
pub struct SendResponse {
    pub id: String,
    pub recipients: Vec<String>,
}

#[utoipa::path(post, path = "/api/v1/messages", tag = "messages", request_body(content = serde_json::Value, content_type = "application/json", description = "from, to, and subject and text, or raw"), responses((status = 200, description = "Accepted and durable: the new message id"), (status = 400, description = "A bad field, named in field"), (status = 413, description = "Too large"), (status = 507, description = "The spool cannot store it; nothing was accepted")))]
pub(super) async fn post_message(
    AxState(state): AxState<Arc<ApiState>>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<(StatusCode, axum::Json<SendResponse>), ApiError> {
    let body = body.map_err(|e| ApiError {
        status: e.status(),
        error: e.body_text(),
        field: Some("body".into()),
    })?;
    let req = SendRequest::try_from(super::parse_json::<SendBody>(&body)?)?;
    let from = Address::parse(&req.from)
        .map_err(|e| ApiError::field("from", format!("not a valid address: {e}")))?;
    if req.to.is_empty() {
        return Err(ApiError::field("to", "at least one recipient is needed"));
    }
    let rcpts = req
        .to
        .iter()
        .enumerate()
        .map(|(i, t)| {
            Address::parse(t).map_err(|e| {
                ApiError::field(format!("to[{i}]"), format!("not a valid address: {e}"))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let id = new_id();
    // The field, else the raw message's header (taken out either way).
    let mut header = None;
    let message = match (&req.raw, &req.subject, &req.text) {
        (Some(raw), None, None) => {
            let raw = raw_message(raw)?;
            let (named, without) = crate::message::take_header(&raw, STREAM_HEADER);
            header = named;
            without.map_or(raw, Bytes::from)
        }
        (Some(_), _, _) => {
            return Err(ApiError::field(
                "raw",
                "give either raw or subject and text, not both",
            ));
        }
        (None, Some(subject), Some(text)) => {
            build_message(&state.hostname, id, &from, &rcpts, subject, text)?
        }
        (None, None, _) => {
            return Err(ApiError::field(
                "subject",
                "needed (or give the whole message as raw)",
            ));
        }
        (None, Some(_), None) => {
            return Err(ApiError::field(
                "text",
                "needed (or give the whole message as raw)",
            ));
        }
    };
    if message.len() as u64 > state.max_message_size {
        return Err(ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            error: format!(
                "message is {} bytes; the limit is {}",
                message.len(),
                state.max_message_size
            ),
            field: Some(if req.raw.is_some() { "raw" } else { "text" }.into()),
        });
    }
    let choice = StreamChoice {
        named: req.stream.as_deref().or(header.as_deref()),
        user: None,
        listener: &state.stream,
    };
    let stream = state.intake.stream(choice).map_err(|e| {
        let field = match req.stream {
            Some(_) => "stream".to_string(),
            None => format!("raw ({STREAM_HEADER})"),
        };
        ApiError::field(field, e.to_string())
    })?;
    let (notify, params) = dsn_request(&req)?;
    let params = MailParams {
        smtputf8: crate::message::needs_smtputf8(
            &req.from,
            req.to.iter().map(String::as_str),
            &message,
        ),
        ..params
    };
    let submission = Submission {
        from: from.to_string(),
        params,
        rcpts: rcpts
            .into_iter()
            .map(|address| Rcpt {
                address,
                notify,
                orcpt: None,
            })
            .collect(),
        body: message,
        source: "http".into(),
        stream,
    };
    let stored = state
        .intake
        .accept(id, submission)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "could not store a message from the API");
            ApiError::new(
                StatusCode::INSUFFICIENT_STORAGE,
                "the spool could not store the message (disk full or a write error); nothing was accepted, try again",
            )
        })?;
    let recipients = stored
        .groups
        .iter()
        .flat_map(|g| g.recipients.iter().map(|r| r.address.clone()))
        .collect();
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(SendResponse {
            id: id.to_string(),
            recipients,
        }),
    ))
}

fn raw_message(raw: &str) -> Result<Bytes, ApiError> {
    let has_headers = raw.lines().next().is_some_and(|l| {
        l.split_once(':')
            .is_some_and(|(name, _)| !name.is_empty() && !name.contains(' '))
    });
    if !has_headers {
        return Err(ApiError::field(
            "raw",
            "not an RFC 5322 message: it must start with a header field",
        ));
    }
    // Every line ends in CRLF, as SMTP carries them: a bare CR or LF is never stored nor
    // relayed (SMTP smuggling), and the last line ends too.
    let mut out = crate::message::crlf(raw.as_bytes()).into_owned();
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    Ok(out.into())
}

fn build_message(
    hostname: &str,
    id: MessageId,
    from: &Address,
    to: &[Address],
    subject: &str,
    text: &str,
) -> Result<Bytes, ApiError> {
    mail_builder::MessageBuilder::new()
        .from(from.to_string())
        .to(to.iter().map(|a| a.to_string()).collect::<Vec<_>>())
        .subject(subject)
        .message_id(format!("{id}@{hostname}"))
        .text_body(text)
        .write_to_vec()
        .map(Bytes::from)
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("building the message: {e}"),
            )
        })
}

/// `GET /api/v1/messages/{id}`.
#[derive(Debug, Serialize, Deserialize)]
pub struct MessageView {
    pub id: String,
    pub from: String,
    pub received_at: Timestamp,
    pub size: u64,
    pub source: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub done_at: Option<Timestamp>,
    pub recipients: Vec<RecipientView>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct RecipientView {
    pub address: String,
    pub domain: String,
    pub state: State,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt: Option<Timestamp>,
    pub attempts: Vec<Attempt>,
}

/// Most messages an ambiguous prefix is counted up to.
const COUNT_AT_MOST: usize = 10_000;

/// The message `text` names: a whole id, or the start of one only one message on record
/// (queued, or finished and not yet purged) has. 400 when it is not (the start of) an id,
/// 404 when no message's id starts so, 409 when several do. A whole id is taken as it is:
/// whether there is such a message is the caller's to find.
pub(super) async fn resolve(state: &ApiState, text: &str) -> Result<MessageId, ApiError> {
    let prefix = IdPrefix::parse(text)
        .map_err(|e| ApiError::field("id", format!("{text:?} is not a message id: {e}")))?;
    if prefix.is_whole() {
        return Ok(MessageId::from_u128(*prefix.range().start()));
    }
    let spool = state.intake.spool.clone();
    let ids = tokio::task::spawn_blocking(move || spool.ids_in(prefix.range(), COUNT_AT_MOST + 1))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    match ids.as_slice() {
        [] => Err(ApiError {
            status: StatusCode::NOT_FOUND,
            error: format!(
                "no message id starts with {text} (never accepted, or finished and purged)"
            ),
            field: Some("id".into()),
        }),
        [one] => Ok(*one),
        many => {
            let n = match many.len() > COUNT_AT_MOST {
                true => format!("more than {COUNT_AT_MOST}"),
                false => many.len().to_string(),
            };
            Err(ApiError {
                status: StatusCode::CONFLICT,
                error: format!("{n} messages have ids starting with {text}; give more of the id"),
                field: Some("id".into()),
            })
        }
    }
}

#[utoipa::path(get, path = "/api/v1/messages/{id}", tag = "messages", params(("id" = String, Path, description = "A message id, or the start of one no other message on record shares")), responses((status = 200, description = "The message: each recipient, its state and attempts"), (status = 404, description = "No such message"), (status = 409, description = "Several messages have ids starting so")))]
pub(super) async fn get_message(
    AxState(state): AxState<Arc<ApiState>>,
    Path(id): Path<String>,
) -> Result<axum::Json<MessageView>, ApiError> {
    let id = resolve(&state, &id).await?;
    let spool = state.intake.spool.clone();
    let record = tokio::task::spawn_blocking(move || spool.record(id))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    let Some((envelope, groups)) = record else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no message {id} (never accepted, or finished and purged)"),
        ));
    };
    let recipients = groups
        .into_iter()
        .flat_map(|g| {
            let next = g.next_attempt;
            let domain = g.domain;
            g.recipients.into_iter().map(move |r| RecipientView {
                next_attempt: if r.state.is_final() { None } else { next },
                address: r.address,
                domain: domain.clone(),
                state: r.state,
                attempts: r.attempts,
            })
        })
        .collect();
    Ok(axum::Json(MessageView {
        id: envelope.id.to_string(),
        from: envelope.from,
        received_at: envelope.received_at,
        size: envelope.size,
        source: envelope.source,
        done_at: envelope.done_at,
        recipients,
    }))
}

/// `GET /api/v1/messages/{id}/raw`: the message as the spool holds it (`message/rfc822`,
/// CRLF line ends); with `?headers=true`, its header section only.
#[utoipa::path(get, path = "/api/v1/messages/{id}/raw", tag = "messages", params(("id" = String, Path, description = "A message id, or the start of one no other message on record shares"), ("headers" = Option<bool>, Query, description = "Only the header section")), responses((status = 200, description = "The message as stored", content_type = "message/rfc822"), (status = 404, description = "No such message"), (status = 410, description = "Finished: its body is gone")))]
pub(super) async fn get_raw(
    AxState(state): AxState<Arc<ApiState>>,
    Path(id): Path<String>,
    query: Result<
        axum::extract::Query<Vec<(String, String)>>,
        axum::extract::rejection::QueryRejection,
    >,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    let axum::extract::Query(pairs) = query.map_err(|e| ApiError::field("query", e.body_text()))?;
    let params = super::query_params(pairs, &["headers"])?;
    let headers_only = match params.get("headers").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(ApiError::field(
                "headers",
                format!("{other:?}: true or false"),
            ));
        }
    };
    let id = resolve(&state, &id).await?;
    let spool = state.intake.spool.clone();
    let found = tokio::task::spawn_blocking(move || {
        let body = spool.body(id)?;
        let record = match body {
            Some(_) => None,
            None => spool.record(id)?,
        };
        Ok::<_, crate::engine::spool::SpoolError>((body, record))
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
    .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    let body = match found {
        (Some(body), _) => body,
        (None, Some((envelope, _))) => {
            let done = envelope
                .done_at
                .map(|t| format!(" at {t}"))
                .unwrap_or_default();
            return Err(ApiError::new(
                StatusCode::GONE,
                format!(
                    "message {id} finished{done}: its body is not kept once every recipient is final"
                ),
            ));
        }
        (None, None) => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no message {id} (never accepted, or finished and purged)"),
            ));
        }
    };
    let body = match headers_only {
        true => body.slice(..header_section(&body).len()),
        false => body,
    };
    Ok(([(axum::http::header::CONTENT_TYPE, "message/rfc822")], body).into_response())
}

/// The header section of a message: up to and with the line end of its last header line,
/// without the empty line that ends it; the whole text when it has no body.
pub fn header_section(message: &[u8]) -> &[u8] {
    let mut start = 0;
    while start < message.len() {
        let end = memchr::memchr(b'\n', &message[start..]).map_or(message.len(), |i| start + i + 1);
        let line = &message[start..end];
        if line == b"\r\n" || line == b"\n" {
            return &message[..start];
        }
        start = end;
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_section_ends_before_the_empty_line() {
        for (message, headers) in [
            (
                &b"Subject: a\r\nFrom: b\r\n\r\nbody\r\n\r\nmore\r\n"[..],
                &b"Subject: a\r\nFrom: b\r\n"[..],
            ),
            (b"Subject: a\n\nbody\n", b"Subject: a\n"),
            (b"Subject: a\r\n", b"Subject: a\r\n"),
            (b"Subject: a", b"Subject: a"),
            (b"\r\nbody", b""),
            (b"", b""),
        ] {
            assert_eq!(
                String::from_utf8_lossy(header_section(message)),
                String::from_utf8_lossy(headers)
            );
        }
    }
}
