//! Claims in text: durations, prices, percentages, dates, counts and policy terms, each with the
//! words around it. Pure and model-free; the contradiction finder compares claims of one kind and
//! unit across passages.
//!
//! What is recognised (English):
//! - durations: `14 days`, `30-day`, `two weeks`, `48 hours`, `5 to 10 business days`, `a month`
//!   (after `within`, `after`, `for`, ...); business days are their own unit;
//! - money: `$29`, `$29/month`, `€9 per seat`, `500 USD`, `$5-$10`;
//! - percentages: `15%`, `20 percent`;
//! - dates: `2026-09-01`, `September 1, 2026`, `1 September 2026`, `Sep 2026` (a month);
//! - counts: a number followed by a noun, with an optional rate (`100 requests per minute`,
//!   `5 users`); years, versions and codes (`2FA`, `E-2041`) are not counts;
//! - policy terms with their polarity: `refundable` / `non-refundable` / `not refundable`,
//!   `allowed` / `prohibited`, `supported`, `available`, `included`, `required` / `optional`,
//!   `eligible`, `transferable`.

use std::ops::Range;

use serde::{Deserialize, Serialize};

/// What a claim states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClaimKind {
    /// A length of time, in days (or business days, or business hours).
    Duration,
    /// An amount of money in one currency (per period or unit when stated).
    Money,
    /// A percentage.
    Percent,
    /// A calendar date (or month), in days since 1970-01-01.
    Date,
    /// A number of things (`5 users`, `100 requests per minute`).
    Count,
    /// A policy term with its polarity (1 = holds, 0 = negated).
    Policy,
}

impl ClaimKind {
    /// Lower-case name, as serialised.
    pub fn as_str(self) -> &'static str {
        match self {
            ClaimKind::Duration => "duration",
            ClaimKind::Money => "money",
            ClaimKind::Percent => "percent",
            ClaimKind::Date => "date",
            ClaimKind::Count => "count",
            ClaimKind::Policy => "policy",
        }
    }
}

/// One claim found in a passage.
#[derive(Debug, Clone, PartialEq)]
pub struct Claim {
    /// What it states.
    pub kind: ClaimKind,
    /// What the value is measured in: `day`, `business_day`, `usd/month`, `percent`, `date`, the
    /// counted noun with its rate (`request/minute`), or the policy term (`refundable`). Claims
    /// are only compared within one kind and unit.
    pub unit: String,
    /// Smallest value (a range `5 to 10` gives 5; a point gives the value).
    pub lo: f64,
    /// Largest value.
    pub hi: f64,
    /// The claim as written (`14 days`, `$29/month`, `non-refundable`).
    pub text: String,
    /// Byte range of the claim's sentence in the passage.
    pub sentence: Range<usize>,
    /// Content words around the claim (lower case, not stemmed, stop words and the claim's own
    /// words left out): what the claim is about.
    pub context: Vec<String>,
}

impl Claim {
    /// Whether `self` and `other` state values that cannot both hold (the ranges are disjoint,
    /// allowing 7% for month/week conversions of durations).
    pub fn disagrees_with(&self, other: &Claim) -> bool {
        if self.kind != other.kind || self.unit != other.unit {
            return false;
        }
        let tolerance = match self.kind {
            ClaimKind::Duration => 0.07,
            _ => 0.0,
        };
        let apart = |low: &Claim, high: &Claim| high.lo > low.hi + tolerance * high.lo + 1e-9;
        apart(self, other) || apart(other, self)
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Word(String),
    Num(f64),
    Sym(char),
    /// An ISO date, in days since the epoch.
    Date(i64),
    /// Digits glued to letters (`2FA`, `10x`, `4th`): never a value.
    Code,
}

#[derive(Debug, Clone, PartialEq)]
struct Token {
    tok: Tok,
    start: usize,
    end: usize,
    /// A number written with separators or decimals (`2,000`, `9.99`): never a year.
    grouped: bool,
}

impl Token {
    fn word(&self) -> Option<&str> {
        match &self.tok {
            Tok::Word(w) => Some(w),
            _ => None,
        }
    }

    fn is_word(&self, options: &[&str]) -> bool {
        self.word().is_some_and(|w| options.contains(&w))
    }

    fn is_sym(&self, options: &[char]) -> bool {
        matches!(self.tok, Tok::Sym(c) if options.contains(&c))
    }
}

const STOP_WORDS: &[&str] = &[
    "a", "about", "above", "after", "again", "all", "also", "am", "an", "and", "any", "are", "as",
    "at", "be", "been", "before", "being", "below", "between", "both", "but", "by", "can", "could",
    "did", "do", "does", "doing", "down", "during", "each", "either", "else", "ever", "every",
    "few", "for", "from", "further", "get", "gets", "got", "had", "has", "have", "having", "he",
    "her", "here", "hers", "him", "his", "how", "i", "if", "in", "into", "is", "it", "its", "just",
    "least", "less", "let", "may", "me", "might", "more", "most", "much", "must", "my", "no",
    "nor", "not", "now", "of", "off", "on", "once", "one", "only", "or", "other", "our", "ours",
    "out", "over", "own", "per", "same", "shall", "she", "should", "so", "some", "such", "than",
    "that", "the", "their", "theirs", "them", "then", "there", "these", "they", "this", "those",
    "through", "to", "too", "under", "until", "up", "upon", "us", "very", "via", "was", "we",
    "were", "what", "when", "where", "whether", "which", "while", "who", "whom", "why", "will",
    "with", "within", "would", "yes", "yet", "you", "your", "yours", "up", "e", "g", "etc", "ie",
    "eg", "s", "t", "ll", "re", "ve", "d",
];

const NEGATORS: &[&str] = &[
    "not", "no", "never", "cannot", "can't", "isn't", "aren't", "won't", "don't", "doesn't",
    "didn't", "wasn't", "weren't", "nor", "neither", "without",
];

const NUMBER_WORDS: &[(&str, f64)] = &[
    ("one", 1.0),
    ("two", 2.0),
    ("three", 3.0),
    ("four", 4.0),
    ("five", 5.0),
    ("six", 6.0),
    ("seven", 7.0),
    ("eight", 8.0),
    ("nine", 9.0),
    ("ten", 10.0),
    ("eleven", 11.0),
    ("twelve", 12.0),
    ("thirteen", 13.0),
    ("fourteen", 14.0),
    ("fifteen", 15.0),
    ("sixteen", 16.0),
    ("seventeen", 17.0),
    ("eighteen", 18.0),
    ("nineteen", 19.0),
    ("twenty", 20.0),
    ("thirty", 30.0),
    ("forty", 40.0),
    ("fifty", 50.0),
    ("sixty", 60.0),
    ("seventy", 70.0),
    ("eighty", 80.0),
    ("ninety", 90.0),
    ("hundred", 100.0),
];

/// Duration units and their length in days, as a fraction (exact for hours: 48 hours = 2 days).
const DURATION_UNITS: &[(&str, f64, f64)] = &[
    ("minute", 1.0, 1440.0),
    ("minutes", 1.0, 1440.0),
    ("min", 1.0, 1440.0),
    ("mins", 1.0, 1440.0),
    ("hour", 1.0, 24.0),
    ("hours", 1.0, 24.0),
    ("hr", 1.0, 24.0),
    ("hrs", 1.0, 24.0),
    ("day", 1.0, 1.0),
    ("days", 1.0, 1.0),
    ("week", 7.0, 1.0),
    ("weeks", 7.0, 1.0),
    ("month", 30.0, 1.0),
    ("months", 30.0, 1.0),
    ("year", 365.0, 1.0),
    ("years", 365.0, 1.0),
    ("yr", 365.0, 1.0),
    ("yrs", 365.0, 1.0),
];

/// Words after which `a`/`an` is the number one (`within a month`), not an article of a rate
/// (`twice a day`).
const ONE_TRIGGERS: &[&str] = &[
    "within", "after", "for", "in", "than", "least", "over", "about", "takes", "take", "lasts",
];

const CURRENCY_SYMBOLS: &[(char, &str)] = &[('$', "usd"), ('€', "eur"), ('£', "gbp")];
const CURRENCY_WORDS: &[(&str, &str)] = &[
    ("usd", "usd"),
    ("dollar", "usd"),
    ("dollars", "usd"),
    ("eur", "eur"),
    ("euro", "eur"),
    ("euros", "eur"),
    ("gbp", "gbp"),
    ("pounds", "gbp"),
];

/// Rate words: `monthly` -> `month`.
const RATE_ADVERBS: &[(&str, &str)] = &[
    ("monthly", "month"),
    ("annually", "year"),
    ("yearly", "year"),
    ("weekly", "week"),
    ("daily", "day"),
    ("hourly", "hour"),
];

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];

/// Policy terms: surface word -> (term, holds).
const POLICY_TERMS: &[(&str, &str, bool)] = &[
    ("refundable", "refundable", true),
    ("non-refundable", "refundable", false),
    ("nonrefundable", "refundable", false),
    ("allowed", "allowed", true),
    ("permitted", "allowed", true),
    ("prohibited", "allowed", false),
    ("forbidden", "allowed", false),
    ("disallowed", "allowed", false),
    ("supported", "supported", true),
    ("unsupported", "supported", false),
    ("available", "available", true),
    ("unavailable", "available", false),
    ("included", "included", true),
    ("excluded", "included", false),
    ("required", "required", true),
    ("mandatory", "required", true),
    ("optional", "required", false),
    ("eligible", "eligible", true),
    ("ineligible", "eligible", false),
    ("transferable", "transferable", true),
    ("non-transferable", "transferable", false),
];

/// Words that make the number before them an ordinal or an identifier, not a count.
const NOT_COUNTED_AFTER: &[&str] = &[
    "step", "steps", "section", "page", "version", "v", "chapter", "option", "tier", "level",
    "phase", "item", "line", "table", "figure", "code", "error", "article", "ticket", "order",
    "invoice", "number", "no", "id", "rule", "part", "question", "point", "week", "day", "year",
    "q",
];

fn number_word(w: &str) -> Option<f64> {
    if let Some(v) = NUMBER_WORDS.iter().find(|(n, _)| *n == w).map(|(_, v)| *v) {
        return Some(v);
    }
    // twenty-four
    let (tens, units) = w.split_once('-')?;
    let tens = NUMBER_WORDS
        .iter()
        .find(|(n, v)| *n == tens && *v >= 20.0 && *v < 100.0)?
        .1;
    let units = NUMBER_WORDS
        .iter()
        .find(|(n, v)| *n == units && *v < 10.0)?
        .1;
    Some(tens + units)
}

fn month_index(w: &str) -> Option<u8> {
    if w.len() < 3 {
        return None;
    }
    let full = [
        "january",
        "february",
        "march",
        "april",
        "may",
        "june",
        "july",
        "august",
        "september",
        "october",
        "november",
        "december",
    ];
    let i = MONTHS.iter().position(|m| w.starts_with(m))?;
    // `mar` and `march`, `sept`; not `market` or `mayor`.
    let ok = w.len() == 3 || full[i] == w || (i == 8 && w == "sept");
    ok.then_some(i as u8 + 1)
}

pub(crate) fn is_stop(w: &str) -> bool {
    STOP_WORDS.contains(&w)
}

/// Days since 1970-01-01 of a civil date (proleptic Gregorian); `None` when out of range.
fn days_from_civil(year: i64, month: u8, day: u8) -> Option<i64> {
    let days_in_month = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        _ => return None,
    };
    if !(1..=days_in_month).contains(&day) || !(1900..=2200).contains(&year) {
        return None;
    }
    // Howard Hinnant's days_from_civil.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some(era * 146_097 + doe - 719_468)
}

/// Splits `text` into sentences of tokens. Sentences end at a line break and at `.`, `?`, `!`
/// or `;` followed by a space or the end.
fn lex(text: &str) -> Vec<Vec<Token>> {
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let at = |i: usize| chars.get(i).map(|&(_, c)| c);
    let offset = |i: usize| chars.get(i).map_or(text.len(), |&(o, _)| o);
    let mut sentences = Vec::new();
    let mut current: Vec<Token> = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i].1;
        let start = offset(i);
        if c == '\n'
            || (matches!(c, '.' | '?' | '!' | ';') && at(i + 1).is_none_or(char::is_whitespace))
        {
            if !current.is_empty() {
                sentences.push(std::mem::take(&mut current));
            }
            i += 1;
        } else if c.is_ascii_digit() {
            let mut j = i;
            while at(j).is_some_and(|c| c.is_ascii_digit()) {
                j += 1;
            }
            let int_len = j - i;
            // ISO date: 2026-09-01
            let digits = |from: usize, n: usize| {
                (from..from + n).all(|k| at(k).is_some_and(|c| c.is_ascii_digit()))
            };
            if int_len == 4
                && at(j) == Some('-')
                && digits(j + 1, 2)
                && at(j + 3) == Some('-')
                && digits(j + 4, 2)
                && !at(j + 6).is_some_and(|c| c.is_ascii_digit())
            {
                let s = &text[start..offset(j + 6)];
                let parsed = (|| {
                    let y: i64 = s.get(0..4)?.parse().ok()?;
                    let m: u8 = s.get(5..7)?.parse().ok()?;
                    let d: u8 = s.get(8..10)?.parse().ok()?;
                    days_from_civil(y, m, d)
                })();
                if let Some(days) = parsed {
                    current.push(Token {
                        tok: Tok::Date(days),
                        start,
                        end: offset(j + 6),
                        grouped: false,
                    });
                    i = j + 6;
                    continue;
                }
            }
            // Thousands separators (1,000) and decimals (9.99).
            loop {
                if at(j) == Some(',')
                    && digits(j + 1, 3)
                    && !at(j + 4).is_some_and(|c| c.is_ascii_digit())
                {
                    j += 4;
                } else {
                    break;
                }
            }
            if at(j) == Some('.') && at(j + 1).is_some_and(|c| c.is_ascii_digit()) {
                j += 1;
                while at(j).is_some_and(|c| c.is_ascii_digit()) {
                    j += 1;
                }
            }
            if at(j).is_some_and(char::is_alphabetic) {
                while at(j).is_some_and(char::is_alphanumeric) {
                    j += 1;
                }
                current.push(Token {
                    tok: Tok::Code,
                    start,
                    end: offset(j),
                    grouped: false,
                });
            } else {
                let raw: String = text[start..offset(j)]
                    .chars()
                    .filter(|c| *c != ',')
                    .collect();
                current.push(Token {
                    tok: raw.parse().map_or(Tok::Code, Tok::Num),
                    start,
                    end: offset(j),
                    grouped: j - i != int_len,
                });
            }
            i = j;
        } else if c.is_alphabetic() {
            let mut j = i;
            loop {
                match at(j) {
                    Some(c) if c.is_alphanumeric() => j += 1,
                    Some('\'' | '’' | '-') if at(j + 1).is_some_and(char::is_alphabetic) => {
                        j += 1
                    }
                    _ => break,
                }
            }
            let word = text[start..offset(j)].to_lowercase().replace('’', "'");
            current.push(Token {
                tok: Tok::Word(word),
                start,
                end: offset(j),
                grouped: false,
            });
            i = j;
        } else {
            if matches!(
                c,
                '$' | '€' | '£' | '%' | '/' | '-' | '–' | '—' | ',' | '|' | '(' | ')' | '#'
            ) {
                current.push(Token {
                    tok: Tok::Sym(c),
                    start,
                    end: offset(i + 1),
                    grouped: false,
                });
            }
            i += 1;
        }
    }
    if !current.is_empty() {
        sentences.push(current);
    }
    sentences
}

/// Finds the claims of `text`.
pub fn extract(text: &str) -> Vec<Claim> {
    let sentences = lex(text);
    let mut out = Vec::new();
    for (s, tokens) in sentences.iter().enumerate() {
        let found = claims_in_sentence(tokens);
        if found.is_empty() {
            continue;
        }
        let range = tokens[0].start..tokens[tokens.len() - 1].end;
        for (kind, unit, lo, hi, span) in found {
            let mut context = context_words(tokens, span.clone(), 12);
            if context.len() < 4 && s > 0 {
                // A short answer ("Within 30 days you get everything back.") is about its
                // question or lead-in sentence.
                context.extend(context_words(&sentences[s - 1], 0..0, usize::MAX));
            }
            context.sort();
            context.dedup();
            out.push(Claim {
                kind,
                unit,
                lo,
                hi,
                text: text[tokens[span.start].start..tokens[span.end - 1].end].to_owned(),
                sentence: range.clone(),
                context,
            });
        }
    }
    out
}

fn is_unit_word(w: &str) -> bool {
    DURATION_UNITS.iter().any(|(u, _, _)| *u == w)
        || CURRENCY_WORDS.iter().any(|(u, _)| *u == w)
        || RATE_ADVERBS.iter().any(|(u, _)| *u == w)
        || matches!(w, "percent" | "business" | "working" | "calendar")
}

/// Content words of `tokens` within `window` tokens of `span` (outside it).
fn context_words(tokens: &[Token], span: Range<usize>, window: usize) -> Vec<String> {
    let from = span.start.saturating_sub(window);
    let to = span.end.saturating_add(window).min(tokens.len());
    tokens[from..to]
        .iter()
        .enumerate()
        .filter(|(k, _)| !span.contains(&(k + from)))
        .filter_map(|(_, t)| t.word())
        .filter(|w| {
            w.len() > 1
                && !is_stop(w)
                && !NEGATORS.contains(w)
                && number_word(w).is_none()
                && month_index(w).is_none()
                && !is_unit_word(w)
                && !POLICY_TERMS.iter().any(|(p, _, _)| p == w)
        })
        .map(str::to_owned)
        .collect()
}

type Found = (ClaimKind, String, f64, f64, Range<usize>);

/// The number at `i` (digits, a number word, or `a`/`an` after a trigger word).
fn number_at(tokens: &[Token], i: usize) -> Option<f64> {
    match &tokens.get(i)?.tok {
        Tok::Num(v) => Some(*v),
        Tok::Word(w) if w == "a" || w == "an" => {
            let triggered = i > 0 && tokens[i - 1].is_word(ONE_TRIGGERS);
            let unit_next = tokens
                .get(i + 1)
                .and_then(Token::word)
                .is_some_and(|u| DURATION_UNITS.iter().any(|(d, _, _)| *d == u));
            (triggered && unit_next).then_some(1.0)
        }
        Tok::Word(w) => number_word(w),
        _ => None,
    }
}

/// A rate after a unit: `/month`, `per seat`, `a month`, `monthly`. Returns the rate word and the
/// tokens it took.
fn rate_at(tokens: &[Token], j: usize) -> Option<(String, usize)> {
    let t = tokens.get(j)?;
    if let Some(w) = t.word()
        && let Some((_, r)) = RATE_ADVERBS.iter().find(|(a, _)| *a == w)
    {
        return Some(((*r).to_owned(), 1));
    }
    let per = t.is_sym(&['/']) || t.is_word(&["per", "each", "every"]);
    let a = t.is_word(&["a", "an"]);
    if !(per || a) {
        return None;
    }
    let next = tokens.get(j + 1)?.word()?;
    let normalised = match next {
        "mo" | "month" | "months" => "month",
        "yr" | "year" | "years" | "annum" => "year",
        "week" | "weeks" => "week",
        "day" | "days" => "day",
        "hour" | "hours" | "hr" => "hour",
        "minute" | "minutes" | "min" => "minute",
        "second" | "seconds" | "sec" | "s" => "second",
        _ if per && !is_stop(next) => next,
        _ => return None,
    };
    Some((singular(normalised), 2))
}

/// A crude singular (`users` -> `user`, `invoices` -> `invoice`), enough to compare units.
fn singular(w: &str) -> String {
    if let Some(stem) = w.strip_suffix("ies")
        && stem.len() >= 2
    {
        return format!("{stem}y");
    }
    if let Some(stem) = w.strip_suffix('s')
        && stem.len() >= 3
        && !stem.ends_with('s')
    {
        return stem.to_owned();
    }
    w.to_owned()
}

/// Words before a value that make it a past one (`previously 30 days`, `the earlier 30-day
/// policy`): not a current claim.
const PAST_BEFORE: &[&str] = &[
    "previously",
    "formerly",
    "earlier",
    "former",
    "old",
    "legacy",
    "was",
    "were",
    "used",
];

/// Words after a value that make it a past or rejected one (`the 30-day article is outdated`,
/// `20 days ago`).
const PAST_AFTER: &[&str] = &["outdated", "obsolete", "deprecated", "superseded", "ago"];

/// Whether the claim at `span` states a past value.
fn is_past(t: &[Token], span: &Range<usize>) -> bool {
    let before = &t[span.start.saturating_sub(4)..span.start];
    let after = &t[span.end..(span.end + 5).min(t.len())];
    before.iter().any(|x| x.is_word(PAST_BEFORE)) || after.iter().any(|x| x.is_word(PAST_AFTER))
}

/// Whether a value at `span` is negated (`a full refund is no longer possible after 20 days`):
/// such a sentence states what does not hold, which a different value does not contradict.
fn is_negated(t: &[Token], span: &Range<usize>) -> bool {
    t[span.start.saturating_sub(6)..span.start]
        .iter()
        .any(|x| x.is_word(NEGATORS))
}

fn claims_in_sentence(t: &[Token]) -> Vec<Found> {
    let mut out: Vec<Found> = Vec::new();
    let mut i = 0;
    while i < t.len() {
        if let Some((mut found, next)) = claim_at(t, i) {
            // `120 requests per minute on Growth and 600 per minute on Scale`: the second
            // count takes the noun of the first.
            if let Some(rate) = found.1.strip_prefix("?/") {
                let noun = out.iter().rev().find_map(|f| {
                    (f.0 == ClaimKind::Count)
                        .then(|| f.1.strip_suffix(&format!("/{rate}")))
                        .flatten()
                });
                match noun {
                    Some(noun) => found.1 = format!("{noun}/{rate}"),
                    None => {
                        i = next.max(i + 1);
                        continue;
                    }
                }
            }
            let negated = found.0 != ClaimKind::Policy && is_negated(t, &found.4);
            if !is_past(t, &found.4) && !negated {
                out.push(found);
            }
            i = next.max(i + 1);
        } else {
            i += 1;
        }
    }
    out
}

/// A claim starting at token `i`, and the index after it.
fn claim_at(t: &[Token], i: usize) -> Option<(Found, usize)> {
    let word = |k: usize| t.get(k).and_then(Token::word);
    let num = |k: usize| match t.get(k).map(|x| &x.tok) {
        Some(Tok::Num(v)) => Some(*v),
        _ => None,
    };
    let year = |k: usize| {
        num(k).filter(|y| {
            y.fract() == 0.0
                && (1900.0..=2200.0).contains(y)
                && !t.get(k).is_some_and(|x| x.grouped)
        })
    };
    // Dates.
    if let Tok::Date(days) = t[i].tok {
        let d = days as f64;
        return Some(((ClaimKind::Date, "date".into(), d, d, i..i + 1), i + 1));
    }
    if let Some(month) = word(i).and_then(month_index) {
        // `may` is also a verb: only a date when a day or year follows.
        let day = num(i + 1).filter(|d| d.fract() == 0.0 && (1.0..=31.0).contains(d));
        let comma = usize::from(t.get(i + 2).is_some_and(|x| x.is_sym(&[','])));
        if let (Some(d), Some(y)) = (day, year(i + 2 + comma)) {
            let days = days_from_civil(y as i64, month, d as u8)? as f64;
            let end = i + 3 + comma;
            return Some(((ClaimKind::Date, "date".into(), days, days, i..end), end));
        }
        if let Some(y) = year(i + 1) {
            let first = days_from_civil(y as i64, month, 1)? as f64;
            let next_month = if month == 12 {
                days_from_civil(y as i64 + 1, 1, 1)
            } else {
                days_from_civil(y as i64, month + 1, 1)
            }? as f64;
            return Some((
                (
                    ClaimKind::Date,
                    "date".into(),
                    first,
                    next_month - 1.0,
                    i..i + 2,
                ),
                i + 2,
            ));
        }
        return None;
    }
    if let Some(d) = num(i).filter(|d| d.fract() == 0.0 && (1.0..=31.0).contains(d))
        && let Some(month) = word(i + 1).and_then(month_index)
        && let Some(y) = year(i + 2)
    {
        let days = days_from_civil(y as i64, month, d as u8)? as f64;
        return Some((
            (ClaimKind::Date, "date".into(), days, days, i..i + 3),
            i + 3,
        ));
    }
    // Money with a symbol: $29, $29/month, $5-$10, $5 to $10.
    if let Tok::Sym(c) = t[i].tok
        && let Some((_, currency)) = CURRENCY_SYMBOLS.iter().find(|(s, _)| *s == c)
        && let Some(lo) = num(i + 1)
    {
        let mut j = i + 2;
        let mut hi = lo;
        if t.get(j)
            .is_some_and(|x| x.is_sym(&['-', '–']) || x.is_word(&["to"]))
        {
            let k = j + 1 + usize::from(t.get(j + 1).is_some_and(|x| x.is_sym(&[c])));
            if let Some(v) = num(k).filter(|v| *v > lo) {
                hi = v;
                j = k + 1;
            }
        }
        let mut unit = (*currency).to_owned();
        if let Some((rate, took)) = rate_at(t, j) {
            unit = format!("{unit}/{rate}");
            j += took;
        }
        return Some(((ClaimKind::Money, unit, lo, hi, i..j), j));
    }
    // Policy terms.
    if let Some(w) = word(i)
        && let Some((_, term, holds)) = POLICY_TERMS.iter().find(|(p, _, _)| *p == w)
    {
        let from = i.saturating_sub(3);
        let negated = t[from..i].iter().any(|x| x.is_word(NEGATORS));
        let holds = *holds != negated;
        let start = t[from..i]
            .iter()
            .position(|x| x.is_word(NEGATORS))
            .map_or(i, |p| from + p);
        let value = if holds { 1.0 } else { 0.0 };
        return Some((
            (
                ClaimKind::Policy,
                (*term).to_owned(),
                value,
                value,
                start..i + 1,
            ),
            i + 1,
        ));
    }
    // A number and what follows it.
    let lo = number_at(t, i)?;
    // Identifiers: `E-2041`, `step 3`, `v2`.
    if i > 0 {
        let prev = &t[i - 1];
        if prev.is_word(NOT_COUNTED_AFTER) || prev.is_sym(&['#']) {
            return None;
        }
        if prev.is_sym(&['-'])
            && prev.start == t[i].start.saturating_sub(1)
            && i > 1
            && t[i - 2].end == prev.start
        {
            return None;
        }
    }
    let mut j = i + 1;
    let mut hi = lo;
    // Ranges: 5 to 10, 5-10, between 5 and 10.
    let between = i > 0 && t[i - 1].is_word(&["between"]);
    if t.get(j).is_some_and(|x| {
        x.is_sym(&['-', '–']) || x.is_word(&["to"]) || (between && x.is_word(&["and"]))
    }) && let Some(v) = number_at(t, j + 1).filter(|v| *v > lo)
    {
        hi = v;
        j += 2;
    }
    // 30-day
    if t.get(j).is_some_and(|x| x.is_sym(&['-'])) {
        j += 1;
    }
    let next = word(j);
    if t.get(j).is_some_and(|x| x.is_sym(&['%'])) || next == Some("percent") {
        return Some((
            (ClaimKind::Percent, "percent".into(), lo, hi, i..j + 1),
            j + 1,
        ));
    }
    let mut business = false;
    let mut k = j;
    if matches!(next, Some("business" | "working")) {
        business = true;
        k += 1;
    } else if next == Some("calendar") {
        k += 1;
    }
    if let Some(unit) = word(k)
        && let Some(&(_, num, den)) = DURATION_UNITS.iter().find(|(u, _, _)| *u == unit)
    {
        let (unit, num, den) = match (business, num < den) {
            (true, true) => ("business_hour", 1.0, 1.0),
            (true, false) => ("business_day", 1.0, 1.0),
            (false, _) => ("day", num, den),
        };
        return Some((
            (
                ClaimKind::Duration,
                unit.into(),
                lo * num / den,
                hi * num / den,
                i..k + 1,
            ),
            k + 1,
        ));
    }
    if let Some(w) = next
        && let Some((_, currency)) = CURRENCY_WORDS.iter().find(|(c, _)| *c == w)
    {
        let mut end = j + 1;
        let mut unit = (*currency).to_owned();
        if let Some((rate, took)) = rate_at(t, end) {
            unit = format!("{unit}/{rate}");
            end += took;
        }
        return Some(((ClaimKind::Money, unit, lo, hi, i..end), end));
    }
    // Counts: a number followed by a noun. Years and lone `a`/`one` are not counts.
    let is_year = year(i).is_some() && hi == lo;
    if is_year || !matches!(t[i].tok, Tok::Num(_)) && lo < 2.0 {
        return None;
    }
    if let Some((rate, took)) = rate_at(t, j) {
        // A rate without its noun (`600 per minute`): the sentence's previous count names it.
        return Some((
            (ClaimKind::Count, format!("?/{rate}"), lo, hi, i..j + took),
            j + took,
        ));
    }
    let noun = next.filter(|w| {
        w.len() >= 3
            && !is_stop(w)
            && !NEGATORS.contains(w)
            && month_index(w).is_none()
            && number_word(w).is_none()
            && w.chars().all(|c| c.is_alphabetic() || c == '-')
    })?;
    let mut unit = singular(noun);
    let mut end = j + 1;
    if let Some((rate, took)) = rate_at(t, end) {
        unit = format!("{unit}/{rate}");
        end += took;
    }
    Some(((ClaimKind::Count, unit, lo, hi, i..end), end))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> Claim {
        let all = extract(text);
        assert_eq!(all.len(), 1, "{text}: {all:?}");
        all.into_iter().next().unwrap_or_else(|| unreachable!())
    }

    fn kind_unit_value(c: &Claim) -> (ClaimKind, &str, f64, f64) {
        (c.kind, c.unit.as_str(), c.lo, c.hi)
    }

    #[test]
    fn durations_are_normalised_to_days() {
        let c = one("You can request a full refund within 14 days of your first payment.");
        assert_eq!(
            kind_unit_value(&c),
            (ClaimKind::Duration, "day", 14.0, 14.0)
        );
        assert_eq!(c.text, "14 days");
        assert!(c.context.contains(&"refund".to_owned()), "{:?}", c.context);
        assert!(!c.context.contains(&"within".to_owned()));
        let c = one("It replaces the 30-day refund policy.");
        assert_eq!((c.lo, c.text.as_str()), (30.0, "30-day"));
        assert_eq!(one("You have two weeks to ask.").lo, 14.0);
        assert_eq!(one("Contact us within 48 hours of the charge.").lo, 2.0);
        assert_eq!(one("Refunds arrive within a month.").lo, 30.0);
        let c = one("Card refunds appear within 5 to 10 business days.");
        assert_eq!(
            kind_unit_value(&c),
            (ClaimKind::Duration, "business_day", 5.0, 10.0)
        );
        // `twice a day` is a rate, not a duration of one day.
        assert!(extract("We sync twice a day.").is_empty());
    }

    #[test]
    fn money_percent_dates_counts_and_policy_terms() {
        let c = one("The Pro plan costs $29/month.");
        assert_eq!(
            kind_unit_value(&c),
            (ClaimKind::Money, "usd/month", 29.0, 29.0)
        );
        assert_eq!(one("Refunds above $500 need approval.").unit, "usd");
        assert_eq!(one("Seats cost €9 per seat.").unit, "eur/seat");
        assert_eq!(
            kind_unit_value(&one("A 15% discount applies.")),
            (ClaimKind::Percent, "percent", 15.0, 15.0)
        );
        let iso = one("This applies from 2026-09-01 on.");
        let long = one("This applies from September 1, 2026 on.");
        let euro = one("This applies from 1 September 2026 on.");
        assert_eq!(iso.kind, ClaimKind::Date);
        assert_eq!((iso.lo, long.lo, euro.lo), (iso.lo, iso.lo, iso.lo));
        assert_eq!(iso.lo, 20_697.0, "days since 1970-01-01");
        let month = one("Released in Sep 2026.");
        assert_eq!((month.lo, month.hi), (20_697.0, 20_726.0));
        let c = one("The API allows 100 requests per minute.");
        assert_eq!(
            kind_unit_value(&c),
            (ClaimKind::Count, "request/minute", 100.0, 100.0)
        );
        let both = extract(
            "The API allows 120 requests per minute on Growth and 600 per minute on Scale.",
        );
        assert_eq!(both.len(), 2, "{both:?}");
        assert_eq!(
            (both[1].unit.as_str(), both[1].lo),
            ("request/minute", 600.0)
        );
        assert!(
            extract("Sync runs 4 per day.").is_empty(),
            "no noun to borrow"
        );
        assert_eq!(
            one("Send at most 2,000 invoice emails per day.").lo,
            2000.0,
            "not a year"
        );
        let c = one("Add-on purchases are non-refundable once used.");
        assert_eq!(
            kind_unit_value(&c),
            (ClaimKind::Policy, "refundable", 0.0, 0.0)
        );
        assert_eq!(one("Monthly renewals are not refundable.").lo, 0.0);
        assert_eq!(one("Seats are refundable if never assigned.").lo, 1.0);
    }

    #[test]
    fn past_values_are_not_claims() {
        assert!(extract("It replaces the earlier 30-day refund policy.").is_empty());
        assert_eq!(
            extract("Refunds within 14 days of the first payment (previously 30 days).").len(),
            1
        );
        assert!(extract("I bought the plan 20 days ago.").is_empty());
        assert!(extract("The 30-day article you found is outdated.").is_empty());
        assert!(extract("A full refund is no longer possible after 20 days.").is_empty());
    }

    #[test]
    fn years_versions_and_codes_are_not_values() {
        assert!(extract("In 2024 we launched the v2 API with 2FA.").is_empty());
        assert!(extract("Error E-2041 means the feed expired.").is_empty());
        assert!(extract("See step 3 of the guide.").is_empty());
        // `may` the verb is not a month.
        assert!(extract("You may cancel at any time.").is_empty());
    }

    #[test]
    fn disagreement_needs_the_same_unit_and_disjoint_values() {
        let fourteen = one("Refunds within 14 days.");
        let thirty = one("Refunds within 30 days.");
        let two_weeks = one("Refunds within two weeks.");
        let month = one("Refunds within a month.");
        let four_weeks = one("Refunds within four weeks.");
        assert!(fourteen.disagrees_with(&thirty));
        assert!(!fourteen.disagrees_with(&two_weeks));
        assert!(!thirty.disagrees_with(&month));
        assert!(
            !month.disagrees_with(&four_weeks),
            "28 vs 30 days is a paraphrase"
        );
        let range = one("Refunds take 5 to 10 business days.");
        assert!(!range.disagrees_with(&one("Refunds take 7 business days.")));
        assert!(range.disagrees_with(&one("Refunds take 2 business days.")));
        assert!(
            !range.disagrees_with(&one("Refunds take 2 days.")),
            "other unit"
        );
    }
}
