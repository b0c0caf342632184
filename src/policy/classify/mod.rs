//! Classification: every reply or local failure becomes an [`Outcome`] with a [`Class`]
//! here, and nowhere else. The rules are data: `data/classify.toml` ships with knock
//! (phrases from real receivers), and operators can put their own file in front of it.
//!
//! Order, first to say something wins:
//! 1. an enhanced code with a meaning of its own (`[codes]`);
//! 2. the first phrase, in file order, that occurs in the reply (rules without `weak`);
//! 3. the enhanced code's subject and detail (`5.1.1` hard, `4.2.2` mailbox, ...);
//! 4. the first weak phrase (vague words: "rejected", "try again later");
//! 5. an enhanced code that only names its subject (`x.y.0`);
//! 6. the basic code.
//!
//! The class is then fitted to the disposition (`Class::transient` / `Class::permanent`).
//! `docs/classification.md` explains each step and the decisions behind the shipped rules.

use crate::outcome::{Class, Disposition, Failure, Observed, Outcome};
use crate::policy::logline::{self, Line};
use crate::reply::{Enhanced, Reply};
use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use anyhow::Context;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

/// The rules knock ships with.
pub const SHIPPED_RULES: &str = include_str!("../../../data/classify.toml");

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    #[serde(default)]
    codes: BTreeMap<String, Class>,
    #[serde(default, rename = "rule")]
    rules: Vec<Rule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Rule {
    class: Class,
    phrases: Vec<String>,
    /// Vague words: used only when the enhanced code says nothing specific.
    #[serde(default)]
    weak: bool,
}

/// Whether a rule's phrases say something on their own, or only when the codes do not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Strength {
    Strong,
    Weak,
}

pub struct Classifier {
    codes: HashMap<Enhanced, Class>,
    /// For each phrase in the matcher, its rule's class and strength; among the phrases
    /// found, the earliest listed wins, so file order is priority.
    phrase_class: Vec<(Class, Strength)>,
    matcher: AhoCorasick,
}

impl Default for Classifier {
    fn default() -> Self {
        Classifier::new(&[("shipped rules", SHIPPED_RULES)]).expect("the shipped rules are valid")
    }
}

impl Classifier {
    /// Rules from several TOML texts; earlier texts take precedence.
    pub fn new(sources: &[(&str, &str)]) -> anyhow::Result<Classifier> {
        let mut codes = HashMap::new();
        let mut phrases: Vec<(String, (Class, Strength))> = Vec::new();
        for (name, text) in sources {
            let file: RuleFile = toml::from_str(text)
                .map_err(|e| anyhow::anyhow!("{name}: {}", crate::config::toml_error(text, &e)))?;
            for (code, class) in file.codes {
                let enhanced = Enhanced::parse(&code).with_context(|| {
                    format!("{name}: codes.\"{code}\" is not an enhanced status code")
                })?;
                codes.entry(enhanced).or_insert(class);
            }
            for (i, rule) in file.rules.into_iter().enumerate() {
                if rule.phrases.iter().any(|p| p.trim().is_empty()) {
                    anyhow::bail!("{name}: rule[{i}].phrases: a phrase is empty");
                }
                let strength = match rule.weak {
                    true => Strength::Weak,
                    false => Strength::Strong,
                };
                phrases.extend(
                    rule.phrases
                        .into_iter()
                        .map(|p| (p, (rule.class, strength))),
                );
            }
        }
        let matcher = AhoCorasickBuilder::new()
            .ascii_case_insensitive(true)
            .match_kind(MatchKind::Standard)
            .build(phrases.iter().map(|(p, _)| p))
            .context("building the phrase matcher")?;
        Ok(Classifier {
            codes,
            phrase_class: phrases.into_iter().map(|(_, c)| c).collect(),
            matcher,
        })
    }

    /// The classifier `[classify]` asks for: the operator's rules, if any, before the shipped.
    pub fn from_config(config: &crate::config::ClassifyConfig) -> anyhow::Result<Classifier> {
        match &config.rules {
            Some(path) => Classifier::with_file(path),
            None => Ok(Classifier::default()),
        }
    }

    /// The shipped rules behind an operator's file.
    pub fn with_file(path: &Path) -> anyhow::Result<Classifier> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("classify.rules: reading {}", path.display()))?;
        let name = format!("classify.rules ({})", path.display());
        Classifier::new(&[(&name, &text), ("shipped rules", SHIPPED_RULES)])
    }

    /// The class of a non-2xx reply; `None` for 2xx and 3xx.
    pub fn class(&self, code: u16, enhanced: Option<Enhanced>, text: &str) -> Option<Class> {
        let disposition = disposition(code)?;
        let specific = enhanced.filter(|&e| says_more_than_subject(disposition, e));
        let class = enhanced
            .and_then(|e| self.codes.get(&e).copied())
            .or_else(|| self.by_text(text, Strength::Strong))
            .or_else(|| specific.and_then(|e| by_subject(disposition, e)))
            .or_else(|| self.by_text(text, Strength::Weak))
            .or_else(|| enhanced.and_then(|e| by_subject(disposition, e)))
            .unwrap_or_else(|| by_code(code));
        Some(fit(class, disposition))
    }

    /// The class of words alone (a bounce's text with no code): phrases only, strong before
    /// weak. `None` when no phrase occurs.
    pub fn text_class(&self, text: &str) -> Option<Class> {
        self.by_text(text, Strength::Strong)
            .or_else(|| self.by_text(text, Strength::Weak))
    }

    fn by_text(&self, text: &str, strength: Strength) -> Option<Class> {
        self.matcher
            .find_overlapping_iter(text)
            .map(|m| m.pattern().as_usize())
            .filter(|&i| self.phrase_class[i].1 == strength)
            .min()
            .map(|i| self.phrase_class[i].0)
    }

    /// The outcome of what an attempt observed.
    pub fn outcome(&self, observed: &Observed) -> Outcome {
        match observed {
            Observed::Reply(reply) => self.reply(reply),
            Observed::Failure(failure) => self.failure(failure),
        }
    }

    /// A failure knock saw itself: its kind says the class, unless the operator's `[codes]`
    /// give the kind's enhanced code a class of their own.
    pub fn failure(&self, failure: &Failure) -> Outcome {
        let enhanced = failure.kind.enhanced();
        let disposition = match enhanced.class {
            5 => Disposition::Permanent,
            _ => Disposition::Transient,
        };
        let class = self
            .codes
            .get(&enhanced)
            .copied()
            .unwrap_or(failure.kind.class());
        Outcome {
            disposition,
            class: Some(fit(class, disposition)),
            code: None,
            enhanced: Some(enhanced),
            text: failure.to_string(),
            failure: Some(failure.kind),
        }
    }

    /// The outcome of a line [`logline::read`](crate::policy::logline::read) read: a reply,
    /// a logged reply or status, a sending MTA's diagnostic (classified as knock's own
    /// failure of the same kind), or words alone. `None` for words no phrase knows.
    pub fn line(&self, line: &Line) -> Option<Outcome> {
        Some(match line {
            Line::Reply(reply) | Line::Logged(reply) => self.reply(reply),
            Line::Status(enhanced, text) => self.status(*enhanced, text),
            Line::Diagnostic(failure) => self.failure(failure),
            Line::Text(text) => self.words(text)?,
        })
    }

    /// A status with no basic code: the enhanced code's class stands for the basic code
    /// (`5.7.1 ...` is read as a `500`, which says nothing more than "permanent").
    fn status(&self, enhanced: Enhanced, text: &str) -> Outcome {
        let code = u16::from(enhanced.class) * 100;
        Outcome {
            disposition: disposition(code).unwrap_or(Disposition::Delivered),
            class: self.class(code, Some(enhanced), text),
            code: None,
            enhanced: Some(enhanced),
            text: text.to_string(),
            failure: None,
        }
    }

    /// Words with no code: the class comes from phrases alone, and the disposition from the
    /// class. A class that can be either (`mailbox`, `policy`, `auth`) is read as permanent:
    /// a text without a code is what a bounce quotes.
    fn words(&self, text: &str) -> Option<Outcome> {
        let class = self.text_class(text)?;
        let disposition = match class {
            Class::Greylist
            | Class::Throttle
            | Class::System
            | Class::Network
            | Class::Reputation => Disposition::Transient,
            Class::Mailbox | Class::Policy | Class::Auth | Class::Hard | Class::Block => {
                Disposition::Permanent
            }
        };
        Some(Outcome {
            disposition,
            class: Some(class),
            code: None,
            enhanced: None,
            text: text.to_string(),
            failure: None,
        })
    }

    /// The outcome of a reply. A reply with no enhanced code at the start may carry one
    /// qmail's way, `(#5.1.1)`: that one counts.
    pub fn reply(&self, reply: &Reply) -> Outcome {
        let text = reply.text.replace('\n', " ");
        let enhanced = reply
            .enhanced
            .or_else(|| logline::hash_code(&text).map(|(e, _)| e));
        Outcome {
            disposition: disposition(reply.code).unwrap_or(Disposition::Delivered),
            class: self.class(reply.code, enhanced, &text),
            code: Some(reply.code),
            enhanced,
            text,
            failure: None,
        }
    }
}

fn disposition(code: u16) -> Option<Disposition> {
    match code {
        400..=499 => Some(Disposition::Transient),
        500..=599 => Some(Disposition::Permanent),
        _ => None,
    }
}

/// The class the enhanced code's subject and detail give, when they give one (not `x.0.x`).
/// RFC 3463 and RFC 7372 name them; `[codes]` in the rules may say more.
fn by_subject(disposition: Disposition, e: Enhanced) -> Option<Class> {
    let class = match (e.subject, e.detail) {
        // Addressing: the sender's address (x.1.7) or its domain (x.1.8) is bad, which is
        // not the recipient's fault; else the recipient's address or domain is wrong.
        (1, 7 | 8) => Class::Policy,
        (1, _) => Class::Hard,
        // The message is longer than the receiver allows: not the mailbox's fault.
        (2, 3) => Class::Policy,
        (2, _) => Class::Mailbox,
        (3, 4) => Class::Policy,
        (3, _) => Class::System,
        // Permanent, the network class is fitted to `hard` (5.4.4: unable to route), but for
        // a loop and an expired message (in `[codes]`).
        (4, _) => Class::Network,
        (5, 3) => Class::Throttle,
        (5, _) | (6, _) => Class::Policy,
        (7, 1) if disposition == Disposition::Permanent => Class::Block,
        (7, _) => Class::Policy,
        _ => return None,
    };
    Some(class)
}

/// Whether an enhanced code says more than its subject: `x.y.0` does not ("other or
/// undefined"), and neither does a temporary `4.7.1`, which receivers send for anything from
/// greylisting to a rate limit (its words say which).
fn says_more_than_subject(disposition: Disposition, e: Enhanced) -> bool {
    let vague =
        e.detail == 0 || (disposition == Disposition::Transient && (e.subject, e.detail) == (7, 1));
    !vague
}

/// The class fitted to the disposition (see [`Class::transient`] and [`Class::permanent`]).
fn fit(class: Class, disposition: Disposition) -> Class {
    match disposition {
        Disposition::Permanent => class.permanent(),
        _ => class.transient(),
    }
}

/// The class the basic reply code gives, when nothing else says more.
fn by_code(code: u16) -> Class {
    match code {
        421 | 451 | 452 => Class::System,
        450 => Class::Mailbox,
        550 | 551 | 553 => Class::Hard,
        552 => Class::Mailbox,
        _ if code < 500 => Class::System,
        _ => Class::Policy,
    }
}

/// A delay the receiver states in its reply: "try again in 180 seconds", "greylisted for
/// 5 minutes", "please retry after 300s". `None` when it states none.
pub fn stated_delay(text: &str) -> Option<Duration> {
    // Most replies state no number at all: no word starts with a digit.
    let b = text.as_bytes();
    let word_starts_with_digit = b.first().is_some_and(u8::is_ascii_digit)
        || b.windows(2)
            .any(|w| !(w[0].is_ascii_alphanumeric() || w[0] == b'.') && w[1].is_ascii_digit());
    if !word_starts_with_digit {
        return None;
    }
    let lower = text.to_ascii_lowercase();
    let words: Vec<&str> = lower
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '.'))
        .filter(|w| !w.is_empty())
        .collect();
    for (i, w) in words.iter().enumerate() {
        let (number, glued_unit) = split_number(w);
        let Some(number) = number else { continue };
        let unit = if glued_unit.is_empty() {
            words.get(i + 1).copied().unwrap_or("")
        } else {
            glued_unit
        };
        let Some(seconds) = unit_seconds(unit) else {
            continue;
        };
        let lead_in = words[i.saturating_sub(4)..i]
            .iter()
            .any(|w| matches!(*w, "in" | "for" | "after" | "wait" | "retry" | "again"));
        if lead_in && number > 0.0 && number < 100_000.0 {
            return Some(Duration::from_secs_f64(number * seconds as f64));
        }
    }
    None
}

fn split_number(word: &str) -> (Option<f64>, &str) {
    let end = word
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(word.len());
    (word[..end].parse().ok(), &word[end..])
}

fn unit_seconds(unit: &str) -> Option<u64> {
    match unit {
        "s" | "sec" | "secs" | "second" | "seconds" => Some(1),
        "m" | "min" | "mins" | "minute" | "minutes" => Some(60),
        "h" | "hr" | "hrs" | "hour" | "hours" => Some(3600),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
