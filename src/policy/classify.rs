//! Classification: every reply or local failure becomes an [`Outcome`] with a [`Class`]
//! here, and nowhere else. The rules are data: `data/classify.toml` ships with knock
//! (phrases from real receivers), and operators can put their own file in front of it.
//!
//! Order: an enhanced code with a meaning of its own (`[codes]`), then the first text rule
//! whose phrase occurs in the reply, then the enhanced code's subject, then the basic code.
//! The class is then fitted to the disposition (`Class::transient` / `Class::permanent`).

use crate::outcome::{Class, Disposition, Failure, Observed, Outcome};
use crate::reply::{Enhanced, Reply};
use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use anyhow::Context;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

/// The rules knock ships with.
pub const SHIPPED_RULES: &str = include_str!("../../data/classify.toml");

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

pub struct Classifier {
    codes: HashMap<Enhanced, Class>,
    /// For each phrase in the matcher, its rule's class and weakness; among the phrases
    /// found, the earliest listed wins, so file order is priority.
    phrase_class: Vec<(Class, bool)>,
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
        let mut phrases: Vec<(String, (Class, bool))> = Vec::new();
        for (name, text) in sources {
            let file: RuleFile =
                toml::from_str(text).map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
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
                phrases.extend(
                    rule.phrases
                        .into_iter()
                        .map(|p| (p, (rule.class, rule.weak))),
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
        let class = enhanced
            .and_then(|e| self.codes.get(&e).copied())
            .or_else(|| self.by_text(text, false))
            .or_else(|| by_subject(code, enhanced))
            .or_else(|| self.by_text(text, true))
            .unwrap_or_else(|| by_code(code));
        Some(match disposition {
            Disposition::Permanent => class.permanent(),
            _ => class.transient(),
        })
    }

    fn by_text(&self, text: &str, weak: bool) -> Option<Class> {
        self.matcher
            .find_overlapping_iter(text)
            .map(|m| m.pattern().as_usize())
            .filter(|&i| self.phrase_class[i].1 == weak)
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
            class: Some(match disposition {
                Disposition::Permanent => class.permanent(),
                _ => class.transient(),
            }),
            code: None,
            enhanced: Some(enhanced),
            text: failure.to_string(),
            failure: Some(failure.kind),
        }
    }

    pub fn reply(&self, reply: &Reply) -> Outcome {
        let text = reply.text.replace('\n', " ");
        Outcome {
            disposition: disposition(reply.code).unwrap_or(Disposition::Delivered),
            class: self.class(reply.code, reply.enhanced, &text),
            code: Some(reply.code),
            enhanced: reply.enhanced,
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

/// The class the enhanced code's subject gives, when it gives one (not `x.0.x`).
fn by_subject(code: u16, enhanced: Option<Enhanced>) -> Option<Class> {
    let class = match enhanced.map(|e| (e.subject, e.detail))? {
        (1, _) => Class::Hard,
        (2, _) => Class::Mailbox,
        (3, _) => Class::System,
        (4, _) => Class::Network,
        (7, 1) if code >= 500 => Class::Block,
        (5..=7, _) => Class::Policy,
        _ => return None,
    };
    Some(class)
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
mod tests {
    use super::*;

    /// Real reply lines, one per line: `class<TAB>reply`.
    const REPLIES: &str = include_str!("../../tests/data/replies.tsv");

    #[test]
    fn real_replies_table() {
        let c = Classifier::default();
        let mut wrong = Vec::new();
        let mut count = 0;
        for line in REPLIES
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        {
            let (expected, raw) = line
                .split_once('\t')
                .unwrap_or_else(|| panic!("no tab in {line:?}"));
            let reply = Reply::parse(format!("{raw}\r\n").as_bytes())
                .unwrap_or_else(|e| panic!("{raw:?}: {e}"));
            let got = c.reply(&reply).class.map(Class::as_str).unwrap_or("none");
            if got != expected {
                wrong.push(format!("expected {expected}, got {got}: {raw}"));
            }
            count += 1;
        }
        assert!(
            count >= 100,
            "the table needs at least 100 lines, has {count}"
        );
        assert!(
            wrong.is_empty(),
            "{} of {count} misclassified:\n{}",
            wrong.len(),
            wrong.join("\n")
        );
    }

    #[test]
    fn operator_rules_come_first() {
        let mine = "[[rule]]\nclass = \"throttle\"\nphrases = [\"greylisted\"]\n";
        let c = Classifier::new(&[("mine", mine), ("shipped", SHIPPED_RULES)]).unwrap();
        assert_eq!(
            c.class(450, None, "Greylisted, come back later"),
            Some(Class::Throttle)
        );
        assert_eq!(
            Classifier::default().class(450, None, "Greylisted, come back later"),
            Some(Class::Greylist)
        );
    }

    #[test]
    fn bad_rule_files_are_errors_naming_the_place() {
        for (text, needle) in [
            ("[codes]\n\"4.x.1\" = \"throttle\"", "codes.\"4.x.1\""),
            ("[[rule]]\nclass = \"sleepy\"\nphrases = [\"x\"]", "sleepy"),
            (
                "[[rule]]\nclass = \"throttle\"\nphrases = [\"\"]",
                "rule[0].phrases",
            ),
        ] {
            let err = Classifier::new(&[("mine", text)])
                .err()
                .map(|e| format!("{e:#}"))
                .unwrap();
            assert!(err.contains(needle) && err.contains("mine"), "{err}");
        }
    }

    #[test]
    fn disposition_fits_the_class() {
        let c = Classifier::default();
        assert_eq!(
            c.class(550, None, "blocked using zen.spamhaus.org"),
            Some(Class::Block)
        );
        assert_eq!(
            c.class(450, None, "blocked using zen.spamhaus.org"),
            Some(Class::Reputation)
        );
        assert_eq!(c.class(450, None, "User unknown"), Some(Class::Mailbox));
        assert_eq!(c.class(550, None, "Greylisted"), Some(Class::Policy));
        assert_eq!(c.class(250, None, "Ok"), None);
    }

    #[test]
    fn stated_delays() {
        let cases = [
            ("Greylisted, please try again in 180 seconds", Some(180)),
            ("Greylisted for 5 minutes", Some(300)),
            (
                "<a@b>: Recipient address rejected: Greylisted for 300 seconds (see http://x/help)",
                Some(300),
            ),
            ("try again after 300s", Some(300)),
            ("Please retry in 2 min", Some(120)),
            (
                "451 4.7.1 Greylisting in action, please come back later",
                None,
            ),
            (
                "Greylisted, see http://postgrey.schweikert.ch/help/b.test.html",
                None,
            ),
            ("too many connections from 192.0.2.1", None),
            ("mailbox is 5 minutes old", None),
        ];
        for (text, secs) in cases {
            assert_eq!(stated_delay(text), secs.map(Duration::from_secs), "{text}");
        }
    }
}
