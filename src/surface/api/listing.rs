//! `GET /api/v1/messages`: the queue listed and searched, like Postfix's `mailq` with
//! filters. The spool is read in id order (ids are time-ordered, so the oldest mail comes
//! first) and paged by id, so that paging stays stable while mail comes and goes; the
//! scheduler adds what only it knows (each domain's provider, which groups are being
//! delivered now). Only recipients that are not final are listed: a finished message is
//! read with `GET /api/v1/messages/{id}`.

use super::{ApiError, ApiState};
use crate::engine::scheduler::QueueIndex;
use crate::message::{Attempt, Envelope, Group, MessageId, Recipient, State};
use crate::outcome::Class;
use crate::time::Timestamp;
use axum::extract::State as AxState;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

/// Messages on a page when `limit` is not given, and the most a page may have.
pub const DEFAULT_LIMIT: usize = 100;
pub const MAX_LIMIT: usize = 1000;

/// The query parameters, in the order the doc lists them.
pub const PARAMETERS: &[&str] = &[
    "recipient",
    "domain",
    "provider",
    "state",
    "class",
    "older_than",
    "newer_than",
    "reply",
    "limit",
    "after",
];

/// A pending recipient's state as the listing filters it: its own state, or `active`
/// while its group is with a worker (Postfix's active queue).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listed {
    Queued,
    Deferred,
    Active,
}

impl Listed {
    const ALL: [(&'static str, Listed); 3] = [
        ("queued", Listed::Queued),
        ("deferred", Listed::Deferred),
        ("active", Listed::Active),
    ];

    fn parse(text: &str) -> Result<Listed, String> {
        if let Some((_, l)) = Listed::ALL.iter().find(|(name, _)| *name == text) {
            return Ok(*l);
        }
        let final_state = [
            State::Delivered,
            State::Bounced,
            State::Expired,
            State::Suppressed,
        ]
        .iter()
        .any(|s| s.as_str() == text);
        Err(match final_state {
            true => format!(
                "{text} recipients are not in the queue (GET /api/v1/messages/{{id}} shows them); one of queued, deferred, active"
            ),
            false => format!("{text:?} is not a state; one of queued, deferred, active"),
        })
    }

    fn matches(self, r: &Recipient, in_flight: bool) -> bool {
        match self {
            Listed::Queued => r.state == State::Queued,
            Listed::Deferred => r.state == State::Deferred,
            Listed::Active => in_flight,
        }
    }
}

/// What to list. Every filter given must hold for a recipient to be listed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    /// Part of the address, in any case.
    pub recipient: Option<String>,
    /// The recipient's domain, whole, in any case.
    pub domain: Option<String>,
    pub provider: Option<String>,
    /// Any of these.
    pub states: Vec<Listed>,
    /// The class of the recipient's last attempt.
    pub class: Option<Class>,
    pub older_than: Option<Duration>,
    pub newer_than: Option<Duration>,
    /// Part of the last reply (`code enhanced text`), in any case.
    pub reply: Option<String>,
}

/// Where a page starts and how long it is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Paging {
    pub limit: usize,
    /// The page starts after this message.
    pub after: Option<MessageId>,
}

impl Default for Paging {
    fn default() -> Self {
        Paging {
            limit: DEFAULT_LIMIT,
            after: None,
        }
    }
}

/// Reads the query: each parameter at most once, none unknown, every value checked; the
/// error names the parameter.
pub fn parse_query(pairs: Vec<(String, String)>) -> Result<(Filter, Paging), ApiError> {
    let params = super::query_params(pairs, PARAMETERS)?;
    let mut filter = Filter::default();
    let mut paging = Paging::default();
    for (name, value) in params {
        let bad = |why: String| ApiError::field(name.clone(), why);
        if value.trim().is_empty() {
            return Err(bad("is empty".into()));
        }
        let duration = || {
            humantime::parse_duration(value.trim())
                .map_err(|e| bad(format!("not a duration (e.g. 30m, 1h): {e}")))
        };
        match name.as_str() {
            "recipient" => filter.recipient = Some(value.to_lowercase()),
            "domain" => filter.domain = Some(value.to_lowercase()),
            "provider" => filter.provider = Some(value),
            "state" => {
                filter.states = value
                    .split(',')
                    .map(|s| Listed::parse(s.trim()))
                    .collect::<Result<_, _>>()
                    .map_err(bad)?;
            }
            "class" => {
                use serde::de::IntoDeserializer;
                let de: serde::de::value::StrDeserializer<'_, serde::de::value::Error> =
                    value.as_str().into_deserializer();
                filter.class = Some(Class::deserialize(de).map_err(|_| {
                    bad(format!(
                        "{value:?} is not a class; one of greylist, throttle, mailbox, system, network, policy, reputation, auth, hard, block"
                    ))
                })?);
            }
            "older_than" => filter.older_than = Some(duration()?),
            "newer_than" => filter.newer_than = Some(duration()?),
            "reply" => filter.reply = Some(value.to_lowercase()),
            "limit" => {
                paging.limit = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| bad(format!("a number from 1 to {MAX_LIMIT}")))?;
            }
            "after" => {
                paging.after = Some(value.parse().map_err(|_| {
                    bad(format!(
                        "{value:?} is not a message id (give the `next` of the page before)"
                    ))
                })?);
            }
            _ => unreachable!("query_params lets only the known through"),
        }
    }
    Ok((filter, paging))
}

impl Filter {
    fn message_matches(&self, envelope: &Envelope, now: Timestamp) -> bool {
        let age = now.since(envelope.received_at);
        self.older_than.is_none_or(|min| age >= min) && self.newer_than.is_none_or(|max| age < max)
    }

    fn group_matches(&self, group: &Group, provider: Option<&str>) -> bool {
        self.domain
            .as_ref()
            .is_none_or(|d| group.domain.eq_ignore_ascii_case(d))
            && self
                .provider
                .as_ref()
                .is_none_or(|p| provider == Some(p.as_str()))
    }

    fn recipient_matches(&self, r: &Recipient, in_flight: bool) -> bool {
        let last = r.attempts.last();
        !r.state.is_final()
            && self
                .recipient
                .as_ref()
                .is_none_or(|needle| r.address.to_lowercase().contains(needle))
            && (self.states.is_empty() || self.states.iter().any(|s| s.matches(r, in_flight)))
            && self
                .class
                .is_none_or(|c| last.and_then(|a| a.class) == Some(c))
            && self.reply.as_ref().is_none_or(|needle| {
                last.is_some_and(|a| reply_line(a).to_lowercase().contains(needle))
            })
    }
}

/// The last reply as one line, `451 4.3.0 try later`, for the `reply` filter.
fn reply_line(a: &Attempt) -> String {
    let mut line = String::new();
    if let Some(code) = a.code {
        line.push_str(&format!("{code} "));
    }
    if let Some(e) = a.enhanced {
        line.push_str(&format!("{e} "));
    }
    line.push_str(&a.text);
    line
}

/// One page of the listing.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ListView {
    pub messages: Vec<ListedMessage>,
    /// Pass as `after` for the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// A message with the pending recipients that matched.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ListedMessage {
    pub id: String,
    pub from: String,
    pub received_at: Timestamp,
    pub age_seconds: u64,
    pub size: u64,
    pub recipients: Vec<ListedRecipient>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ListedRecipient {
    pub address: String,
    pub domain: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    pub state: State,
    /// Its group is being delivered now.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub in_flight: bool,
    pub attempts: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_attempt: Option<Attempt>,
}

/// Gathers one page from the spool's pending groups, offered in id order.
pub struct Collector<'a> {
    filter: &'a Filter,
    index: &'a QueueIndex,
    limit: usize,
    now: Timestamp,
    page: Vec<ListedMessage>,
    /// The message being gathered, and its id.
    current: Option<(MessageId, ListedMessage)>,
    more: bool,
}

impl<'a> Collector<'a> {
    pub fn new(filter: &'a Filter, index: &'a QueueIndex, limit: usize, now: Timestamp) -> Self {
        Collector {
            filter,
            index,
            limit,
            now,
            page: Vec::new(),
            current: None,
            more: false,
        }
    }

    /// Takes a pending group; breaks once the page is full and one more message matched.
    pub fn offer(&mut self, envelope: &Envelope, group: Group) -> ControlFlow<()> {
        if self
            .current
            .as_ref()
            .is_some_and(|(id, _)| *id != envelope.id)
        {
            let (_, done) = self.current.take().expect("checked");
            self.page.push(done);
        }
        let provider = self.index.providers.get(&group.domain).map(String::as_str);
        if !self.filter.message_matches(envelope, self.now)
            || !self.filter.group_matches(&group, provider)
        {
            return ControlFlow::Continue(());
        }
        let in_flight = self
            .index
            .in_flight
            .contains(&(envelope.id, group.domain.clone()));
        let matching: Vec<ListedRecipient> = group
            .recipients
            .iter()
            .filter(|r| self.filter.recipient_matches(r, in_flight))
            .map(|r| ListedRecipient {
                address: r.address.clone(),
                domain: group.domain.clone(),
                provider: provider.map(str::to_string),
                state: r.state,
                in_flight,
                attempts: r.attempts.len(),
                next_attempt: group.next_attempt,
                last_attempt: r.attempts.last().cloned(),
            })
            .collect();
        if matching.is_empty() {
            return ControlFlow::Continue(());
        }
        let (_, message) = match &mut self.current {
            Some(current) => current,
            None => {
                if self.page.len() == self.limit {
                    self.more = true;
                    return ControlFlow::Break(());
                }
                self.current.insert((
                    envelope.id,
                    ListedMessage {
                        id: envelope.id.to_string(),
                        from: envelope.from.clone(),
                        received_at: envelope.received_at,
                        age_seconds: self.now.since(envelope.received_at).as_secs(),
                        size: envelope.size,
                        recipients: Vec::new(),
                    },
                ))
            }
        };
        message.recipients.extend(matching);
        ControlFlow::Continue(())
    }

    pub fn finish(mut self) -> ListView {
        if let Some((_, last)) = self.current.take() {
            self.page.push(last);
        }
        let next = match self.more {
            true => self.page.last().map(|m| m.id.clone()),
            false => None,
        };
        ListView {
            messages: self.page,
            next,
        }
    }
}

/// `GET /api/v1/messages?domain=…&state=deferred&limit=50&after=…`.
#[utoipa::path(get, path = "/api/v1/messages", tag = "messages", params(("recipient" = Option<String>, Query, description = "Recipients whose address contains this"), ("domain" = Option<String>, Query, description = "Recipients at this domain"), ("provider" = Option<String>, Query, description = "Recipients of this provider"), ("state" = Option<String>, Query, description = "queued, deferred, active (comma-separated)"), ("class" = Option<String>, Query, description = "Class of the last attempt"), ("older_than" = Option<String>, Query, description = "Messages that waited at least this long"), ("newer_than" = Option<String>, Query, description = "Messages that waited less than this long"), ("reply" = Option<String>, Query, description = "Last reply contains this"), ("limit" = Option<usize>, Query, description = "Messages per page (1-1000)"), ("after" = Option<String>, Query, description = "Go on after this message id")), responses((status = 200, description = "A page of queued messages and their pending recipients"), (status = 400, description = "A bad parameter, named in field")))]
pub(super) async fn get_messages(
    AxState(state): AxState<Arc<ApiState>>,
    query: Result<
        axum::extract::Query<Vec<(String, String)>>,
        axum::extract::rejection::QueryRejection,
    >,
) -> Result<axum::Json<ListView>, ApiError> {
    let axum::extract::Query(pairs) = query.map_err(|e| ApiError::field("query", e.body_text()))?;
    let (filter, paging) = parse_query(pairs)?;
    let index = state.intake.scheduler.index().await;
    let now = state.intake.clock.now();
    let spool = state.intake.spool.clone();
    let view = tokio::task::spawn_blocking(move || {
        let mut collector = Collector::new(&filter, &index, paging.limit, now);
        spool
            .scan_pending(paging.after, &mut |envelope, group| {
                collector.offer(envelope, group)
            })
            .map(|()| collector.finish())
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
    .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    Ok(axum::Json(view))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reply::Enhanced;

    const MIN: Duration = Duration::from_secs(60);
    const NOW: Timestamp = Timestamp(1_800_000_000_000);

    fn query(q: &[(&str, &str)]) -> Result<(Filter, Paging), ApiError> {
        parse_query(
            q.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn the_query_is_read_and_a_bad_parameter_is_named() {
        let (filter, paging) = query(&[
            ("recipient", "Ann@"),
            ("domain", "Example.TEST"),
            ("provider", "google"),
            ("state", "deferred, active"),
            ("class", "throttle"),
            ("older_than", "1h"),
            ("newer_than", "2days"),
            ("reply", "Try Later"),
            ("limit", "20"),
            ("after", "01a20765-b5e3-77c1-9a3b-f54f15e7b095"),
        ])
        .unwrap();
        assert_eq!(
            filter,
            Filter {
                recipient: Some("ann@".into()),
                domain: Some("example.test".into()),
                provider: Some("google".into()),
                states: vec![Listed::Deferred, Listed::Active],
                class: Some(Class::Throttle),
                older_than: Some(60 * MIN),
                newer_than: Some(48 * 60 * MIN),
                reply: Some("try later".into()),
            }
        );
        assert_eq!(paging.limit, 20);
        assert!(paging.after.is_some());
        assert_eq!(query(&[]).unwrap(), (Filter::default(), Paging::default()));

        for (q, field, says) in [
            (("sender", "x"), "sender", "unknown parameter"),
            (("state", "delivered"), "state", "not in the queue"),
            (("state", "queued,stuck"), "state", "not a state"),
            (("class", "slow"), "class", "not a class"),
            (("older_than", "an hour"), "older_than", "not a duration"),
            (("newer_than", "5"), "newer_than", "not a duration"),
            (("limit", "0"), "limit", "1 to 1000"),
            (("limit", "5000"), "limit", "1 to 1000"),
            (("limit", "ten"), "limit", "1 to 1000"),
            (("after", "01a2"), "after", "not a message id"),
            (("domain", " "), "domain", "empty"),
        ] {
            let e = query(&[q]).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{q:?}");
            assert_eq!(e.field.as_deref(), Some(field), "{q:?}");
            assert!(e.error.contains(says), "{q:?}: {}", e.error);
        }
        let e = query(&[("domain", "a.test"), ("domain", "b.test")]).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("domain"));
        assert!(e.error.contains("more than once"), "{}", e.error);
    }

    fn envelope(n: u128, age: Duration) -> Envelope {
        Envelope {
            id: MessageId::from_u128(n),
            from: "s@tx.test".into(),
            received_at: Timestamp(NOW.0 - age.as_millis() as u64),
            size: 100,
            source: "test".into(),
            stream: None,
            done_at: None,
            params: Default::default(),
        }
    }

    fn attempt(code: u16, enhanced: &str, text: &str, class: Class) -> Attempt {
        Attempt {
            at: NOW,
            mx: None,
            source: None,
            local_ip: None,
            code: Some(code),
            enhanced: Enhanced::parse(enhanced),
            text: text.into(),
            class: Some(class),
            failure: None,
            tls: None,
            down: false,
            tried: Vec::new(),
        }
    }

    fn group(domain: &str, rcpts: &[(&str, State, Option<Attempt>)]) -> Group {
        Group {
            domain: domain.into(),
            recipients: rcpts
                .iter()
                .map(|(a, state, attempt)| Recipient {
                    attempts: attempt.iter().cloned().collect(),
                    ..Recipient::new(a.to_string(), *state)
                })
                .collect(),
            next_attempt: Some(NOW + MIN),
        }
    }

    /// Three messages: 1 (an hour old) to ann@a.test, greylisted, and bob@b.test, new;
    /// 2 (ten minutes old) to cat@a.test, throttled, in flight, and dan@a.test, delivered;
    /// 3 (a minute old) to eve@c.test.
    fn queue() -> Vec<(Envelope, Group)> {
        let grey = attempt(450, "4.2.0", "Greylisted, try later", Class::Greylist);
        let slow = attempt(421, "4.7.0", "Too many messages", Class::Throttle);
        vec![
            (
                envelope(1, 60 * MIN),
                group("a.test", &[("ann@a.test", State::Deferred, Some(grey))]),
            ),
            (
                envelope(1, 60 * MIN),
                group("b.test", &[("bob@b.test", State::Queued, None)]),
            ),
            (
                envelope(2, 10 * MIN),
                group(
                    "a.test",
                    &[
                        ("cat@a.test", State::Deferred, Some(slow)),
                        ("dan@a.test", State::Delivered, None),
                    ],
                ),
            ),
            (
                envelope(3, MIN),
                group("c.test", &[("Eve@c.test", State::Queued, None)]),
            ),
        ]
    }

    fn index() -> QueueIndex {
        let mut index = QueueIndex::default();
        index.providers.insert("a.test".into(), "pa".into());
        index.providers.insert("b.test".into(), "pb".into());
        index
            .in_flight
            .insert((MessageId::from_u128(2), "a.test".into()));
        index
    }

    /// The recipients listed with `q`, a page of `limit`, and the page's `next`.
    fn list(q: &[(&str, &str)], limit: usize) -> (Vec<String>, Option<String>) {
        let (filter, _) = query(q).unwrap();
        let index = index();
        let mut c = Collector::new(&filter, &index, limit, NOW);
        for (e, g) in queue() {
            if c.offer(&e, g).is_break() {
                break;
            }
        }
        let view = c.finish();
        let rcpts = view
            .messages
            .iter()
            .flat_map(|m| m.recipients.iter().map(|r| r.address.clone()))
            .collect();
        (rcpts, view.next)
    }

    #[test]
    fn the_doc_names_every_parameter_and_its_example_reads() {
        let section = super::super::doc_section("GET /api/v1/messages`");
        for p in PARAMETERS {
            assert!(section.contains(&format!("`{p}`")), "http-api.md: {p}");
        }
        for (name, _) in Listed::ALL {
            assert!(
                section.contains(&format!("`{name}`")),
                "http-api.md: {name}"
            );
        }
        let start = section.find("{\"messages\"").unwrap();
        let end = start + section[start..].find("\n```").unwrap();
        let view: ListView = serde_json::from_str(&section[start..end]).unwrap();
        assert_eq!(view.messages.len(), 2);
        assert_eq!(view.next.as_deref(), Some(view.messages[1].id.as_str()));
        assert!(view.messages[1].recipients[0].in_flight);
    }

    /// Query parameters, and the recipients they list.
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a [&'a str]);

    #[test]
    fn filters_pick_pending_recipients() {
        let table: &[Case] = &[
            (
                &[],
                &["ann@a.test", "bob@b.test", "cat@a.test", "Eve@c.test"],
            ),
            (&[("recipient", "EVE")], &["Eve@c.test"]),
            (&[("recipient", "@a.test")], &["ann@a.test", "cat@a.test"]),
            (&[("domain", "A.test")], &["ann@a.test", "cat@a.test"]),
            (&[("provider", "pb")], &["bob@b.test"]),
            (&[("provider", "c.test")], &[]),
            (&[("state", "queued")], &["bob@b.test", "Eve@c.test"]),
            (&[("state", "deferred")], &["ann@a.test", "cat@a.test"]),
            (&[("state", "active")], &["cat@a.test"]),
            (
                &[("state", "queued,active")],
                &["bob@b.test", "cat@a.test", "Eve@c.test"],
            ),
            (&[("class", "greylist")], &["ann@a.test"]),
            (&[("reply", "TRY LATER")], &["ann@a.test"]),
            (&[("reply", "4.7.0")], &["cat@a.test"]),
            (&[("reply", "421 4.7")], &["cat@a.test"]),
            (
                &[("older_than", "10m")],
                &["ann@a.test", "bob@b.test", "cat@a.test"],
            ),
            (&[("newer_than", "10m")], &["Eve@c.test"]),
            (
                &[("older_than", "5m"), ("newer_than", "30m")],
                &["cat@a.test"],
            ),
            (&[("domain", "a.test"), ("state", "queued")], &[]),
        ];
        for (q, expected) in table {
            let (seen, next) = list(q, 100);
            assert_eq!(seen, *expected, "{q:?}");
            assert_eq!(next, None, "{q:?}");
        }
    }

    #[test]
    fn pages_end_at_whole_messages_and_say_where_the_next_starts() {
        let (seen, next) = list(&[], 1);
        assert_eq!(
            seen,
            ["ann@a.test", "bob@b.test"],
            "a message's groups together"
        );
        assert_eq!(next, Some(MessageId::from_u128(1).to_string()));
        let (seen, next) = list(&[], 2);
        assert_eq!(seen, ["ann@a.test", "bob@b.test", "cat@a.test"]);
        assert_eq!(next, Some(MessageId::from_u128(2).to_string()));
        // A full page with nothing after it has no next.
        let (seen, next) = list(&[], 3);
        assert_eq!(seen.len(), 4);
        assert_eq!(next, None);
        let (_, next) = list(&[("domain", "a.test")], 2);
        assert_eq!(next, None, "nothing more matches");
    }

    #[test]
    fn a_listed_recipient_carries_its_provider_state_and_last_reply() {
        let (filter, _) = query(&[("recipient", "cat@")]).unwrap();
        let index = index();
        let mut c = Collector::new(&filter, &index, 10, NOW);
        for (e, g) in queue() {
            let _ = c.offer(&e, g);
        }
        let view = c.finish();
        let m = &view.messages[0];
        assert_eq!(
            (m.id.as_str(), m.age_seconds, m.size),
            ("00000000-0000-0000-0000-000000000002", 600, 100)
        );
        let r = &m.recipients[0];
        assert_eq!(r.provider.as_deref(), Some("pa"));
        assert_eq!(
            (r.state, r.in_flight, r.attempts),
            (State::Deferred, true, 1)
        );
        assert_eq!(r.next_attempt, Some(NOW + MIN));
        assert_eq!(r.last_attempt.as_ref().unwrap().code, Some(421));
    }
}
