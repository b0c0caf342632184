//! Classification against tables of real lines: the core lines that must classify exactly
//! (`tests/data/core-replies.tsv`), and a labelled collection of real receivers' replies and
//! sending MTAs' diagnostics (`tests/data/replies.tsv`) that knock must agree with often
//! enough. Both go through `logline::read`, as `knock classify` does.

use super::*;
use crate::policy::logline;

/// `class<TAB>disposition<TAB>line`: lines knock must classify exactly so.
const CORE: &str = include_str!("../../../tests/data/core-replies.tsv");

/// `class<TAB>second<TAB>reply<TAB>receiver<TAB>source<TAB>why`, labelled independently.
const LABELLED: &str = include_str!("../../../tests/data/replies.tsv");

/// Class agreement the labelled table must reach, over the whole table.
const CLASS_GOAL: f64 = 0.90;
/// Transient/permanent agreement the labelled table must reach, over the whole table.
const DISPOSITION_GOAL: f64 = 0.99;

fn class_named(name: &str) -> Class {
    serde_json::from_value(serde_json::Value::String(name.to_string()))
        .unwrap_or_else(|_| panic!("no class {name:?}"))
}

fn disposition_name(d: Disposition) -> &'static str {
    match d {
        Disposition::Delivered => "delivered",
        Disposition::Transient => "transient",
        Disposition::Permanent => "permanent",
    }
}

fn data_lines(table: &str) -> impl Iterator<Item = (usize, &str)> {
    table
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l))
        .filter(|(_, l)| !l.trim().is_empty() && !l.starts_with('#'))
}

#[test]
fn core_lines_classify_exactly() {
    let c = Classifier::default();
    let mut wrong = Vec::new();
    let mut count = 0;
    for (n, row) in data_lines(CORE) {
        let mut cols = row.splitn(3, '\t');
        let (Some(class), Some(disposition), Some(line)) = (cols.next(), cols.next(), cols.next())
        else {
            panic!("core-replies.tsv:{n}: want class<TAB>disposition<TAB>line");
        };
        class_named(class);
        let read = logline::read(line);
        let got = c.line(&read).map(|o| {
            (
                o.class.map(Class::as_str).unwrap_or("-"),
                disposition_name(o.disposition),
            )
        });
        if got != Some((class, disposition)) {
            wrong.push(format!(
                "core-replies.tsv:{n}: want {class} {disposition}, got {got:?} ({}): {line}",
                read.read_as()
            ));
        }
        count += 1;
    }
    assert!(count >= 150, "the core table has only {count} lines");
    assert!(
        wrong.is_empty(),
        "{} of {count} core lines classified otherwise:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

/// One labelled line.
struct Labelled<'a> {
    number: usize,
    class: Class,
    second: Option<Class>,
    reply: &'a str,
    receiver: &'a str,
}

impl Labelled<'_> {
    /// The half of the table the line falls in: a hash of its text, so that adding lines
    /// leaves the others where they were.
    fn half(&self) -> Half {
        let hash = self.reply.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        match hash % 2 {
            0 => Half::Dev,
            _ => Half::HeldOut,
        }
    }

    /// Whether the label makes the line transient: its class when the class can only be
    /// one or the other, else the first reply code in the line (`None` when there is none).
    fn transient(&self) -> Option<bool> {
        match self.class {
            Class::Greylist
            | Class::Throttle
            | Class::System
            | Class::Network
            | Class::Reputation => Some(true),
            Class::Hard | Class::Block => Some(false),
            Class::Mailbox | Class::Policy | Class::Auth => {
                first_code_class(self.reply).map(|c| c == b'4')
            }
        }
    }
}

/// The class digit of the first basic code (`550 `) in `text`, else of the first enhanced
/// code (`5.7.1`): a reading of the line independent of `logline`.
fn first_code_class(text: &str) -> Option<u8> {
    let b = text.as_bytes();
    let word_start =
        |i: usize| i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b"._".contains(&b[i - 1]));
    let basic = (0..b.len()).find(|&i| {
        word_start(i)
            && b.len() >= i + 3
            && b"245".contains(&b[i])
            && b[i + 1].is_ascii_digit()
            && b[i + 2].is_ascii_digit()
            && matches!(b.get(i + 3), None | Some(b' ' | b'-'))
    });
    let enhanced = || {
        (0..b.len()).find(|&i| {
            word_start(i)
                && b"245".contains(&b[i])
                && b.get(i + 1) == Some(&b'.')
                && b.get(i + 2).is_some_and(u8::is_ascii_digit)
        })
    };
    basic.or_else(enhanced).map(|i| b[i])
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Half {
    Dev,
    HeldOut,
}

/// Agreements counted over some lines.
#[derive(Default)]
struct Tally {
    lines: usize,
    class: usize,
    /// Lines whose label says transient or permanent, and the ones knock agrees with.
    disposed: usize,
    disposition: usize,
}

impl Tally {
    fn class_share(&self) -> f64 {
        self.class as f64 / self.lines.max(1) as f64
    }

    fn disposition_share(&self) -> f64 {
        self.disposition as f64 / self.disposed.max(1) as f64
    }

    fn row(&self, name: &str) -> String {
        format!(
            "{name:<9} {:>4} lines  class {:>4}/{:<4} {:>5.1} %   transient/permanent {:>4}/{:<4} {:>5.1} %",
            self.lines,
            self.class,
            self.lines,
            100.0 * self.class_share(),
            self.disposition,
            self.disposed,
            100.0 * self.disposition_share(),
        )
    }
}

fn labelled() -> Vec<Labelled<'static>> {
    data_lines(LABELLED)
        .map(|(number, row)| {
            let cols: Vec<&str> = row.split('\t').collect();
            assert_eq!(cols.len(), 6, "replies.tsv:{number}: want six columns");
            Labelled {
                number,
                class: class_named(cols[0]),
                second: (cols[1] != "-").then(|| class_named(cols[1])),
                reply: cols[2],
                receiver: cols[3],
            }
        })
        .collect()
}

/// Prints the disagreements and the figures (`cargo test --lib labelled_replies --
/// --nocapture`), and fails below the goals.
#[test]
fn labelled_replies_agree_with_knock() {
    let c = Classifier::default();
    let rows = labelled();
    let (mut dev, mut held_out, mut whole) = (Tally::default(), Tally::default(), Tally::default());
    let mut disagreements = Vec::new();
    for row in &rows {
        let read = logline::read(row.reply);
        let outcome = c.line(&read);
        let class = outcome.as_ref().and_then(|o| o.class);
        let class_agrees = class == Some(row.class) || (class.is_some() && class == row.second);
        let transient = outcome.as_ref().map(Outcome::is_transient);
        let expected = row.transient();
        let half = row.half();
        for tally in [
            &mut whole,
            match half {
                Half::Dev => &mut dev,
                Half::HeldOut => &mut held_out,
            },
        ] {
            tally.lines += 1;
            tally.class += usize::from(class_agrees);
            if let Some(expected) = expected {
                tally.disposed += 1;
                tally.disposition += usize::from(transient == Some(expected));
            }
        }
        let disposition_agrees = expected.is_none() || transient == expected;
        if !(class_agrees && disposition_agrees) {
            let label = match row.second {
                Some(second) => format!("{}/{}", row.class.as_str(), second.as_str()),
                None => row.class.as_str().to_string(),
            };
            let got = match &outcome {
                Some(o) => format!(
                    "{} {}",
                    o.class.map(Class::as_str).unwrap_or("-"),
                    disposition_name(o.disposition)
                ),
                None => "nothing".to_string(),
            };
            disagreements.push(format!(
                "{:<8} line {:>3}  label {label:<19} knock {got:<20} ({}) {}: {}",
                match half {
                    Half::Dev => "dev",
                    Half::HeldOut => "held-out",
                },
                row.number,
                read.read_as(),
                row.receiver,
                row.reply
            ));
        }
    }
    println!("disagreements with the labels in tests/data/replies.tsv:");
    for d in &disagreements {
        println!("  {d}");
    }
    println!("{}", dev.row("dev"));
    println!("{}", held_out.row("held-out"));
    println!("{}", whole.row("whole"));
    assert!(
        whole.lines >= 400,
        "the table has only {} lines",
        whole.lines
    );
    assert!(
        whole.class_share() >= CLASS_GOAL && whole.disposition_share() >= DISPOSITION_GOAL,
        "below the goals ({:.0} % class, {:.0} % transient/permanent):\n{}",
        100.0 * CLASS_GOAL,
        100.0 * DISPOSITION_GOAL,
        whole.row("whole")
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
    let e = |code: &str| Enhanced::parse(code);
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
    assert_eq!(
        c.class(550, None, "rate limit exceeded"),
        Some(Class::Policy)
    );
    // Permanent and of a network nature: the recipient's host is not there (hard), unless
    // the reason says nothing about the address (a loop, an expired message).
    assert_eq!(
        c.class(554, e("5.4.4"), "Unable to route"),
        Some(Class::Hard)
    );
    assert_eq!(c.class(550, None, "Host unknown"), Some(Class::Hard));
    assert_eq!(
        c.class(554, e("5.4.6"), "Routing loop detected"),
        Some(Class::Policy)
    );
    assert_eq!(
        c.class(554, e("5.4.7"), "Delivery time expired"),
        Some(Class::Policy)
    );
    assert_eq!(c.class(250, None, "Ok"), None);
}

#[test]
fn the_enhanced_code_counts_after_the_phrases_and_its_vague_forms_after_the_weak_ones() {
    let c = Classifier::default();
    let e = |code: &str| Enhanced::parse(code);
    // A phrase wins over the subject: 5.2.x is a mailbox code, but not here.
    assert_eq!(
        c.class(550, e("5.2.0"), "From: Domain is invalid"),
        Some(Class::Policy)
    );
    // A specific code wins over vague words...
    assert_eq!(c.class(550, e("5.1.1"), "Rejected"), Some(Class::Hard));
    // ... a code that only names its subject does not.
    assert_eq!(
        c.class(550, e("5.2.0"), "Mail rejected"),
        Some(Class::Policy)
    );
    assert_eq!(
        c.class(550, e("5.2.0"), "Recipient unavailable"),
        Some(Class::Mailbox)
    );
    // A temporary 4.7.1 says only "not now".
    assert_eq!(
        c.class(451, e("4.7.1"), "Service unavailable - try again later"),
        Some(Class::System)
    );
    // qmail gives its code at the end.
    let qmail = Reply::new(
        553,
        "",
        "sorry, that domain isn't in my list of allowed rcpthosts (#5.7.1)",
    );
    let o = c.reply(&qmail);
    assert_eq!((o.class, o.enhanced), (Some(Class::Policy), e("5.7.1")));
}

#[test]
fn words_alone_are_classified_only_by_known_phrases() {
    let c = Classifier::default();
    let o = c.line(&logline::read("Mailbox size exceeded")).unwrap();
    assert_eq!(
        (o.class, o.disposition, o.code),
        (Some(Class::Mailbox), Disposition::Permanent, None)
    );
    let o = c
        .line(&logline::read("Rate limit reached. Please try again later"))
        .unwrap();
    assert_eq!(
        (o.class, o.disposition),
        (Some(Class::Throttle), Disposition::Transient)
    );
    assert_eq!(c.line(&logline::read("not a reply")), None);
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
