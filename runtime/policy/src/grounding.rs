//! Grounding an answer in its evidence (DESIGN.md "The runtime, one request", step 4), without
//! models: the caller embeds, this module does the text and the arithmetic.
//!
//! 1. **Evidence**: the prompt passages are split into sentences ([`evidence_sentences`]); each
//!    gets [`EvidenceFeatures`] against the question (the encoder's cosine, IDF-weighted term
//!    overlap with the sentence and with its passage, the passage's rank, whether a question
//!    asking for a number meets a sentence holding one, question terms the knowledge base
//!    doesn't know) and a probability of answering it from a logistic [`EvidenceModel`] fitted
//!    in-project (`switchboard-runtime eval --answers --fit-evidence`).
//! 2. **Prompt**: the best sentences, numbered `[1]`..`[n]` in plain text, are all the model
//!    sees ([`grounded_prompt`]): no breadcrumbs or headers it could copy, a few hundred
//!    prompt tokens instead of a thousand.
//! 3. **Check**: the output's citations are parsed, invalid ones removed, and every sentence
//!    must be supported by the facts it cites ([`check_output`]); the answer must carry the
//!    specifics (numbers, amounts) of the best evidence when the question asks for them.
//! 4. **Decision** ([`choose`]): the generated answer when it passes, else the extractive
//!    answer (the best evidence sentences with their citation), or a refusal when no sentence
//!    clears the calibrated answerability threshold.
use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};
use switchboard_analysis::logistic;

use crate::answer::{is_refusal, parse_citations};
use crate::text::{is_stopword, words};

/// The refusal the runtime serves when the evidence does not answer the question.
pub const REFUSAL: &str =
    "I don't know: the knowledge base doesn't answer this. A support agent can help you further.";

/// Words longer than this in an evidence sentence are cut (a PDF table row without stops).
const MAX_SENTENCE_WORDS: usize = 60;

/// Strips Markdown emphasis and code marks that chunk text may keep.
fn plain(text: &str) -> String {
    text.replace("**", "")
        .replace("__", "")
        .replace('`', "")
        .replace(['“', '”'], "\"")
        .replace(['‘', '’'], "'")
}

/// Abbreviations after which a full stop does not end a sentence.
fn is_abbreviation(word: &str) -> bool {
    const ABBREVIATIONS: &[&str] = &[
        "e.g", "i.e", "etc", "vs", "mr", "mrs", "ms", "dr", "no", "approx", "incl", "inc", "ltd",
        "st", "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec",
    ];
    let w = word.trim_start_matches(['(', '"', '\'']).to_lowercase();
    ABBREVIATIONS.contains(&w.as_str())
        || (w.chars().count() == 1 && w.chars().all(char::is_alphabetic))
}

/// Splits one line into sentences at `.`, `!` or `?` followed by a space and a capital, digit or
/// opening quote/bracket, except after abbreviations and initials.
fn split_line(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut start = 0;
    let chars: Vec<(usize, char)> = line.char_indices().collect();
    for (i, &(at, c)) in chars.iter().enumerate() {
        if !matches!(c, '.' | '!' | '?') {
            continue;
        }
        let Some(&(_, next)) = chars.get(i + 1) else {
            continue;
        };
        if !next.is_whitespace() {
            continue;
        }
        let Some(&(_, after)) = chars[i + 1..].iter().find(|(_, c)| !c.is_whitespace()) else {
            continue;
        };
        if !(after.is_uppercase() || after.is_ascii_digit() || matches!(after, '"' | '(' | '[')) {
            continue;
        }
        let before = &line[start..at];
        let last_word = before.rsplit(char::is_whitespace).next().unwrap_or("");
        if c == '.' && is_abbreviation(last_word) {
            continue;
        }
        let end = at + c.len_utf8();
        out.push(line[start..end].trim().to_owned());
        start = end;
    }
    let rest = line[start..].trim();
    if !rest.is_empty() {
        out.push(rest.to_owned());
    }
    out
}

/// Whether a line starts a list item (`- `, `* `, `• `, `1. `, `2) `).
fn is_list_item(line: &str) -> bool {
    line.starts_with("- ")
        || line.starts_with("* ")
        || line.starts_with("• ")
        || strip_ordinal(line).len() < line.len()
}

/// The logical units of a text: paragraphs (blank-line separated) with hard-wrapped lines joined,
/// list items and table rows kept apart. A table (`a | b` lines) becomes one unit per data row,
/// each cell labelled with its column header (`Plan: Growth, Monthly price: $39`), so a row
/// reads as a sentence.
fn units(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for paragraph in text.split("\n\n") {
        let lines: Vec<&str> = paragraph
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        let rows = lines.iter().filter(|l| l.contains(" | ")).count();
        if rows >= 2 && rows == lines.len() {
            let cells = |l: &str| -> Vec<String> {
                l.trim_matches('|')
                    .split('|')
                    .map(|c| c.trim().to_owned())
                    .collect()
            };
            let header = cells(lines[0]);
            for row in &lines[1..] {
                let labelled: Vec<String> = cells(row)
                    .into_iter()
                    .enumerate()
                    .filter(|(_, c)| !c.is_empty() && !c.chars().all(|x| x == '-' || x == ':'))
                    .map(|(i, c)| match header.get(i) {
                        Some(h) if i > 0 && !h.is_empty() => format!("{h}: {c}"),
                        _ => c,
                    })
                    .collect();
                if !labelled.is_empty() {
                    out.push(format!("{}.", labelled.join(", ")));
                }
            }
            continue;
        }
        let mut current = String::new();
        for line in lines {
            if is_list_item(line) || line.contains(" | ") {
                if !current.is_empty() {
                    out.push(std::mem::take(&mut current));
                }
                out.push(line.to_owned());
                continue;
            }
            // A list item's wrapped continuation joins it.
            if current.is_empty()
                && let Some(last) = out.last_mut().filter(|l| is_list_item(l))
            {
                last.push(' ');
                last.push_str(line);
                continue;
            }
            if !current.is_empty() {
                current.push(' ');
            }
            current.push_str(line);
        }
        if !current.is_empty() {
            out.push(current);
        }
    }
    out
}

/// A leading `Label:` or `Label (Name):` of a ticket or thread (`Problem:`, `Resolution:`,
/// `Answer (Ana):`): the lower-cased label and the text after it; `None` and the text when
/// there is none of the known labels.
fn speaker_label(unit: &str) -> (Option<String>, &str) {
    const LABELS: [&str; 5] = ["problem", "question", "resolution", "answer", "solution"];
    let Some(colon) = unit.find(':') else {
        return (None, unit);
    };
    let head = unit[..colon].trim();
    let word = head
        .split(|c: char| c.is_whitespace() || c == '(')
        .next()
        .unwrap_or("")
        .to_lowercase();
    let rest_of_head = head[word.len()..].trim();
    let parenthetical = rest_of_head.is_empty()
        || (rest_of_head.starts_with('(') && rest_of_head.ends_with(')') && colon < 48);
    if LABELS.contains(&word.as_str()) && parenthetical {
        (Some(word), unit[colon + 1..].trim())
    } else {
        (None, unit)
    }
}

/// The evidence sentences of a passage's text: paragraphs with their hard-wrapped lines joined,
/// split into sentences; list markers and Markdown emphasis removed; table rows read with their
/// headers; headings (a short line without a full stop, or a line equal to one of `headings`),
/// questions (FAQ prompts) and a ticket's `Problem:` paragraph (the customer's words: context,
/// not evidence) dropped; a `Resolution:` label removed; very long runs cut to
/// [`MAX_SENTENCE_WORDS`] words. Bracketed numbers in the text (a document's own footnote marks,
/// `[3]`) are removed: in the prompt and in a quoted answer they would read as citations of facts
/// that were never given (found by fuzzing, `fuzz/regressions/model_output/`).
pub fn evidence_sentences(text: &str, headings: &[String]) -> Vec<String> {
    let headings: HashSet<String> = headings.iter().map(|h| h.trim().to_lowercase()).collect();
    let mut out = Vec::new();
    for unit in units(&plain(text)) {
        let unit = unit
            .trim()
            .trim_start_matches(['-', '*', '•', '#', '>'])
            .trim();
        let unit = strip_ordinal(unit);
        if unit.is_empty() || headings.contains(&unit.to_lowercase()) {
            continue;
        }
        let (label, rest) = speaker_label(unit);
        if matches!(label.as_deref(), Some("problem" | "question")) {
            continue;
        }
        let unit = if label.is_some() { rest } else { unit };
        for sentence in split_line(unit) {
            let n_words = sentence.split_whitespace().count();
            let terminated = sentence.ends_with(['.', '!', ':', ';', ')']);
            let has_digit = sentence.chars().any(|c| c.is_ascii_digit());
            if sentence.ends_with('?') {
                continue;
            }
            // A heading-like fragment ("Annual plans") says nothing on its own.
            if !terminated && n_words < 5 && !has_digit {
                continue;
            }
            if n_words < 2 {
                continue;
            }
            let stripped;
            let sentence: &str = if sentence.contains('[') {
                stripped = strip_citations(&sentence);
                &stripped
            } else {
                &sentence
            };
            let n_words = sentence.split_whitespace().count();
            if n_words < 2 {
                continue;
            }
            let sentence = if n_words > MAX_SENTENCE_WORDS {
                let cut: Vec<&str> = sentence
                    .split_whitespace()
                    .take(MAX_SENTENCE_WORDS)
                    .collect();
                format!("{} …", cut.join(" "))
            } else {
                sentence.split_whitespace().collect::<Vec<_>>().join(" ")
            };
            out.push(sentence);
        }
    }
    out
}

/// `1. text` / `2) text` -> `text`.
fn strip_ordinal(line: &str) -> &str {
    let digits = line.chars().take_while(char::is_ascii_digit).count();
    if digits > 0 && digits <= 2 {
        let rest = &line[digits..];
        if let Some(r) = rest.strip_prefix(". ").or_else(|| rest.strip_prefix(") ")) {
            return r.trim();
        }
    }
    line
}

/// A word reduced to a rough stem so that `refunds`, `refunded` and `refunding` meet `refund`.
pub fn stem(word: &str) -> String {
    let w = word.trim_end_matches("'s");
    let n = w.chars().count();
    let cut = |suffix: &str, min: usize| n > min && w.ends_with(suffix);
    let stemmed = if cut("ies", 4) {
        format!("{}y", &w[..w.len() - 3])
    } else if cut("ing", 5) {
        w[..w.len() - 3].to_owned()
    } else if (cut("ed", 4) && !w.ends_with("eed"))
        || (cut("es", 4) && (w.ends_with("ches") || w.ends_with("shes") || w.ends_with("xes")))
    {
        w[..w.len() - 2].to_owned()
    } else if cut("s", 3) && !w.ends_with("ss") && !w.ends_with("us") {
        w[..w.len() - 1].to_owned()
    } else {
        w.to_owned()
    };
    stemmed.trim_end_matches('e').to_owned()
}

/// Stemmed content words of `text` (stop words, and single characters other than digits, left
/// out), without repeats.
pub fn terms(text: &str) -> Vec<String> {
    let mut seen = HashSet::new();
    words(&plain(text))
        .into_iter()
        .filter(|w| !is_stopword(w))
        .filter(|w| w.chars().count() > 1 || w.chars().all(|c| c.is_ascii_digit()))
        .map(|w| stem(&w))
        .filter(|w| !w.is_empty() && seen.insert(w.clone()))
        .collect()
}

/// Document frequencies of stemmed terms over a knowledge base's chunks: the inverse document
/// frequency weighs question terms (a rare term the evidence lacks matters, `the` doesn't).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TermStats {
    df: HashMap<String, u32>,
    documents: u32,
}

impl TermStats {
    /// Counts the terms of every text (one text = one document).
    pub fn from_texts<'a>(texts: impl IntoIterator<Item = &'a str>) -> Self {
        let mut df: HashMap<String, u32> = HashMap::new();
        let mut documents = 0;
        for text in texts {
            documents += 1;
            for t in terms(text) {
                *df.entry(t).or_default() += 1;
            }
        }
        Self { df, documents }
    }

    /// Whether the knowledge base uses `term` at all.
    pub fn knows(&self, term: &str) -> bool {
        self.df.contains_key(term)
    }

    /// The known term an unknown `term` most likely misspells (`refnd` -> `refund`,
    /// `authenticater` -> `authenticator`): one edit away (insertion, deletion, substitution or
    /// a swap of neighbours) for terms of 5 to 8 characters, two for longer ones; the most
    /// frequent such term. `None` for a known term, a short or numeric one, or one with no
    /// near neighbour: a word the knowledge base really doesn't use (`netflix`, `shopify`)
    /// stays unknown.
    pub fn correct(&self, term: &str) -> Option<&str> {
        let n = term.chars().count();
        if self.knows(term) || n < 5 || term.chars().any(|c| c.is_ascii_digit()) {
            return None;
        }
        let max = if n > 8 { 2 } else { 1 };
        let a: Vec<char> = term.chars().collect();
        self.df
            .iter()
            .filter(|(k, _)| k.starts_with(a[0]) && k.chars().count().abs_diff(n) <= max)
            .filter(|(k, _)| edit_distance(&a, &k.chars().collect::<Vec<_>>()) <= max)
            .max_by(|(ka, da), (kb, db)| da.cmp(db).then(kb.cmp(ka)))
            .map(|(k, _)| k.as_str())
    }

    /// `ln((N + 1) / (df + 1)) + 1`: 1 for a term in every chunk, largest for unknown terms.
    pub fn idf(&self, term: &str) -> f64 {
        let df = f64::from(self.df.get(term).copied().unwrap_or(0));
        ((f64::from(self.documents) + 1.0) / (df + 1.0)).ln() + 1.0
    }
}

/// Optimal-string-alignment distance: insertions, deletions, substitutions and swaps of
/// neighbouring characters, each one edit.
fn edit_distance(a: &[char], b: &[char]) -> usize {
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

/// What kind of answer a question asks for, as far as its words say (the answer-type step of
/// classic question answering): a sentence of the asked kind is likelier to answer it, and when
/// no evidence has that kind the knowledge base may not answer it at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Expects {
    /// How often: `every hour`, `daily`, `once a year`.
    Frequency,
    /// What time of day: `06:00`, `2 pm`.
    Clock,
    /// An email address.
    Email,
    /// A price or fee: `$39`, `30% off`, `free`.
    Money,
    /// A percentage or rate.
    Percent,
    /// A duration or deadline: `14 days`, `within 48 hours`, `immediately`.
    Duration,
    /// A count or limit: a number.
    Count,
    /// Where in the product: `Settings > Billing`, a page, a button.
    Location,
    /// A date: a month or a year.
    Date,
    /// A person or role: owner, admin, team lead.
    Person,
    /// Anything else (yes/no, how-to, why).
    Other,
}

impl Expects {
    /// Whether answers of this kind are numbers (their figures must survive into the answer).
    pub fn is_numeric(self) -> bool {
        matches!(
            self,
            Self::Money | Self::Percent | Self::Duration | Self::Count | Self::Clock
        )
    }
}

const TIME_UNITS: &[&str] = &[
    "second", "seconds", "minute", "minutes", "min", "mins", "hour", "hours", "day", "days",
    "week", "weeks", "month", "months", "year", "years",
];
const NUMBER_WORDS: &[&str] = &[
    "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "twelve",
    "fourteen", "thirty", "ninety",
];
const MONTHS: &[&str] = &[
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

/// What `question` asks for.
pub fn expects(question: &str) -> Expects {
    let lower = question.to_lowercase();
    let w = words(question);
    let has = |s: &str| w.iter().any(|x| x == s);
    let any = |set: &[&str]| w.iter().any(|x| set.contains(&x.as_str()));
    let pair = |a: &str, b: &[&str]| {
        w.windows(2)
            .any(|p| p[0] == a && b.contains(&p[1].as_str()))
    };
    let triple = |a: &str, b: &[&str], c: &[&str]| {
        w.windows(3)
            .any(|p| p[0] == a && b.contains(&p[1].as_str()) && c.contains(&p[2].as_str()))
    };
    let email_word = has("email") || has("e-mail");
    if pair("how", &["often", "frequently"]) {
        Expects::Frequency
    } else if pair("what", &["time", "hour"]) {
        Expects::Clock
    } else if (email_word && any(&["address", "send", "contact"]))
        || pair("what", &["address"])
        || pair("which", &["address"])
        || triple("where", &["do", "should", "can"], &["i", "we"]) && has("send")
    {
        Expects::Email
    } else if pair("how", &["much"])
        || any(&[
            "cost",
            "costs",
            "price",
            "prices",
            "pricing",
            "priced",
            "fee",
            "fees",
            "cheap",
            "cheaper",
            "cheapest",
            "expensive",
            "discount",
            "discounts",
        ])
        || pair("anything", &["off"])
        || pair("something", &["off"])
    {
        Expects::Money
    } else if any(&["percent", "percentage", "rate"])
        || lower.contains('%')
        || (has("credit") && !pair("credit", &["card", "cards"]))
    {
        Expects::Percent
    } else if pair("how", &["long", "soon", "quickly", "fast"])
        || any(&["deadline", "until", "expire", "expires", "expired", "valid"])
        || (pair("how", &["many"]) && w.windows(3).any(|p| TIME_UNITS.contains(&p[2].as_str())))
        || pair(
            "when",
            &["will", "does", "do", "should", "is", "can", "are", "would"],
        )
    {
        Expects::Duration
    } else if pair("how", &["many"]) || any(&["max", "maximum", "limit", "limits"]) {
        Expects::Count
    } else if pair("where", &["do", "can", "is", "are", "should", "does"])
        || triple("how", &["do", "can"], &["i", "we"])
            && any(&[
                "find", "turn", "enable", "disable", "set", "switch", "change", "add", "create",
                "export", "download", "delete", "cancel", "connect", "generate", "get",
            ])
    {
        Expects::Location
    } else if pair("what", &["date", "day"])
        || pair("which", &["date", "day"])
        || pair("since", &["when"])
    {
        Expects::Date
    } else if has("who") {
        Expects::Person
    } else {
        Expects::Other
    }
}

/// Whether `sentence` holds an answer of kind `kind` (always true for [`Expects::Other`]).
pub fn states(kind: Expects, sentence: &str) -> bool {
    let lower = sentence.to_lowercase();
    let w = words(sentence);
    let any = |set: &[&str]| w.iter().any(|x| set.contains(&x.as_str()));
    let numbered_unit = |units: &[&str]| {
        w.windows(2).any(|p| {
            (p[0].chars().all(|c| c.is_ascii_digit()) || NUMBER_WORDS.contains(&p[0].as_str()))
                && units.contains(&p[1].as_str())
        })
    };
    let chars: Vec<char> = lower.chars().collect();
    let digit_after = |i: usize| {
        chars[i + 1..]
            .iter()
            .find(|c| !c.is_whitespace())
            .is_some_and(char::is_ascii_digit)
    };
    match kind {
        Expects::Frequency => {
            any(&[
                "every", "daily", "hourly", "weekly", "nightly", "once", "twice",
            ]) || lower.contains("per day")
                || lower.contains("per hour")
                || lower.contains("per minute")
                || lower.contains("times a")
        }
        Expects::Clock => {
            chars
                .windows(3)
                .any(|c| c[0].is_ascii_digit() && c[1] == ':' && c[2].is_ascii_digit())
                || (has_number(sentence) && any(&["am", "pm"]))
                || any(&["midnight", "noon"])
        }
        Expects::Email => sentence.contains('@'),
        Expects::Money => {
            chars
                .iter()
                .enumerate()
                .any(|(i, c)| matches!(c, '$' | '€' | '£') && digit_after(i))
                || any(&["usd", "eur", "gbp", "dollars", "euros", "free"])
                || lower.contains("% off")
                || lower.contains("no charge")
                || lower.contains("no fee")
        }
        Expects::Percent => lower.contains('%') || any(&["percent"]),
        Expects::Duration => {
            numbered_unit(TIME_UNITS)
                || any(&["immediately", "instantly", "within"])
                || lower.contains("same day")
                || lower.contains("end of")
        }
        Expects::Count => has_number(sentence) || any(&["unlimited"]),
        Expects::Location => {
            sentence.contains(" > ")
                || any(&[
                    "settings", "menu", "page", "tab", "button", "click", "choose", "open",
                ])
                || lower.contains("go to")
        }
        Expects::Date => {
            any(MONTHS)
                || w.iter().any(|x| {
                    x.len() == 4 && x.starts_with("20") && x.chars().all(|c| c.is_ascii_digit())
                })
        }
        Expects::Person => any(&[
            "owner",
            "owners",
            "admin",
            "admins",
            "administrator",
            "lead",
            "manager",
            "agent",
            "agents",
            "support",
            "team",
            "engineer",
            "engineers",
            "accountant",
            "member",
        ]),
        Expects::Other => true,
    }
}

/// Whether `text` holds a number.
fn has_number(text: &str) -> bool {
    text.chars().any(|c| c.is_ascii_digit())
}

/// Features of one (question, evidence sentence) pair: the inputs of [`EvidenceModel`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EvidenceFeatures {
    /// Cosine of the question's and the sentence's embeddings (the sentence embedded with its
    /// section heading).
    pub cosine: f64,
    /// IDF-weighted share of the question's terms found in the sentence.
    pub sentence_overlap: f64,
    /// IDF-weighted share of the question's terms found in the sentence's passage (text and
    /// breadcrumb).
    pub passage_overlap: f64,
    /// `1 / rank` of the passage in the retrieval order.
    pub passage_rank: f64,
    /// The question asks for a kind of answer ([`Expects`]) and the sentence states one of that
    /// kind (+1) or doesn't (-1); 0 when the question's kind is [`Expects::Other`].
    pub answer_type: f64,
    /// IDF-weighted share of the question's terms the knowledge base doesn't know at all (an
    /// unknown product or integration, or a typo).
    pub unknown_terms: f64,
    /// The cosine minus the best cosine among the question's candidates (0 for the closest):
    /// how the sentence ranks against its rivals, whatever the question's overall similarity.
    pub relative_cosine: f64,
}

impl EvidenceFeatures {
    /// Number of features.
    pub const LEN: usize = 7;

    /// The features in [`EvidenceModel`]'s weight order.
    pub fn to_array(self) -> [f64; Self::LEN] {
        [
            self.cosine,
            self.sentence_overlap,
            self.passage_overlap,
            self.passage_rank,
            self.answer_type,
            self.unknown_terms,
            self.relative_cosine,
        ]
    }

    /// Feature names, in [`Self::to_array`] order.
    pub const NAMES: [&'static str; Self::LEN] = [
        "cosine",
        "sentenceOverlap",
        "passageOverlap",
        "passageRank",
        "answerType",
        "unknownTerms",
        "relativeCosine",
    ];
}

/// The lexical features of one question, computed once and applied to each sentence.
#[derive(Clone, Debug)]
pub struct QuestionTerms {
    terms: Vec<(String, f64)>,
    unknown: f64,
    expects: Expects,
}

impl QuestionTerms {
    /// The question's stemmed terms with their IDF.
    pub fn new(question: &str, stats: &TermStats) -> Self {
        // A misspelt term is read as the term it misspells: it counts for overlap and is not
        // mistaken for something the knowledge base doesn't cover.
        let terms: Vec<(String, f64)> = terms(question)
            .into_iter()
            .map(|t| stats.correct(&t).map_or(t, str::to_owned))
            .map(|t| {
                let idf = stats.idf(&t);
                (t, idf)
            })
            .collect();
        let total: f64 = terms.iter().map(|(_, w)| w).sum();
        let unknown: f64 = terms
            .iter()
            .filter(|(t, _)| !stats.knows(t))
            .map(|(_, w)| w)
            .sum();
        Self {
            unknown: if total > 0.0 { unknown / total } else { 0.0 },
            terms,
            expects: expects(question),
        }
    }

    /// What the question asks for.
    pub fn expects(&self) -> Expects {
        self.expects
    }

    fn overlap(&self, found: &HashSet<String>) -> f64 {
        let total: f64 = self.terms.iter().map(|(_, w)| w).sum();
        if total <= 0.0 {
            return 0.0;
        }
        self.terms
            .iter()
            .filter(|(t, _)| found.contains(t))
            .map(|(_, w)| w)
            .sum::<f64>()
            / total
    }

    /// Features of `sentence` from passage `passage_text` (breadcrumb included) at 0-based
    /// retrieval rank `rank`, with the embeddings' `cosine` and the best cosine among the
    /// question's candidates.
    pub fn features(
        &self,
        sentence: &str,
        passage_text: &str,
        rank: usize,
        (cosine, best_cosine): (f64, f64),
    ) -> EvidenceFeatures {
        let in_sentence: HashSet<String> = terms(sentence).into_iter().collect();
        let in_passage: HashSet<String> = terms(passage_text).into_iter().collect();
        EvidenceFeatures {
            cosine,
            sentence_overlap: self.overlap(&in_sentence),
            passage_overlap: self.overlap(&in_passage),
            passage_rank: 1.0 / (rank as f64 + 1.0),
            answer_type: match self.expects {
                Expects::Other => 0.0,
                kind if states(kind, sentence) => 1.0,
                _ => -1.0,
            },
            unknown_terms: self.unknown,
            relative_cosine: cosine - best_cosine,
        }
    }
}

/// Logistic model of "this sentence answers the question": `sigmoid(bias + w . features)`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EvidenceModel {
    /// Intercept.
    pub bias: f64,
    /// One weight per feature, in [`EvidenceFeatures::NAMES`] order.
    pub weights: [f64; EvidenceFeatures::LEN],
}

impl Default for EvidenceModel {
    /// The weights fitted on the train half of `examples/kb/golden-answers.jsonl` (see
    /// docs/evaluation.md, "Answers": the command and the held-out numbers).
    fn default() -> Self {
        Self {
            bias: -2.114,
            weights: [5.216, 1.601, 0.154, 1.066, 0.824, -1.279, 3.591],
        }
    }
}

impl EvidenceModel {
    /// Probability that the sentence answers the question.
    pub fn score(&self, features: &EvidenceFeatures) -> f64 {
        let z = self.bias
            + self
                .weights
                .iter()
                .zip(features.to_array())
                .map(|(w, x)| w * x)
                .sum::<f64>();
        logistic::sigmoid(z)
    }

    /// Fits the model to labelled pairs by full-batch gradient descent on the L2-regularised
    /// log loss (`l2` on the weights, not the bias). Positives are re-weighted to balance the
    /// classes (a question has one or two answering sentences among dozens).
    pub fn fit(examples: &[(EvidenceFeatures, bool)], l2: f64, iterations: usize) -> Self {
        let labels: Vec<bool> = examples.iter().map(|(_, y)| *y).collect();
        let (positive, negative) = logistic::balanced_weights(&labels);
        let rows: Vec<[f64; EvidenceFeatures::LEN]> =
            examples.iter().map(|(f, _)| f.to_array()).collect();
        let weighted: Vec<logistic::Example<'_>> = rows
            .iter()
            .zip(&labels)
            .map(|(x, y)| logistic::Example {
                features: x,
                label: *y,
                weight: if *y { positive } else { negative },
            })
            .collect();
        let fitted = logistic::Logistic::fit(&weighted, l2, 0.5, iterations);
        let mut weights = [0.0; EvidenceFeatures::LEN];
        weights.copy_from_slice(&fitted.weights);
        Self {
            bias: fitted.bias,
            weights,
        }
    }
}

/// One scored evidence sentence.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Evidence {
    /// 0-based index of its passage in the prompt passages.
    pub passage: usize,
    /// The sentence.
    pub text: String,
    /// Probability that it answers the question.
    pub score: f64,
    /// Its features.
    pub features: EvidenceFeatures,
}

/// The evidence the model is given: the best sentences, highest score first, at most `max`,
/// none scoring below `best * relative` (a weak sentence beside a strong one is noise), one copy
/// of each text.
pub fn select_evidence(mut scored: Vec<Evidence>, max: usize, relative: f64) -> Vec<Evidence> {
    scored.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.passage.cmp(&b.passage)));
    let best = scored.first().map_or(0.0, |e| e.score);
    let mut seen = HashSet::new();
    scored
        .into_iter()
        .filter(|e| e.score >= best * relative)
        .filter(|e| seen.insert(e.text.to_lowercase()))
        .take(max)
        .collect()
}

/// The system turn of a grounded answer.
pub const GROUNDED_SYSTEM: &str = "You are a customer support assistant. Answer the customer's question in one or two short sentences, using only the numbered facts. After each sentence, write the number of the fact it uses in square brackets, like [1]. If the facts do not answer the question, reply only: I don't know.";

/// The user turn of a grounded answer: the facts as `[n] sentence` lines, then the question.
pub fn grounded_prompt(question: &str, evidence: &[Evidence]) -> String {
    let mut user = String::from("Facts:\n");
    for (i, e) in evidence.iter().enumerate() {
        user.push_str(&format!("[{}] {}\n", i + 1, e.text));
    }
    user.push_str(&format!("\nQuestion: {}", question.trim()));
    user
}

/// Splits an answer into sentences (citations stay with the sentence they follow).
pub fn answer_sentences(answer: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for line in answer.lines() {
        for s in split_line(line.trim()) {
            // A citation written after the full stop ("... days. [1]") belongs to the sentence
            // before it.
            if parse_citations(&s).len() == 1
                && strip_citations(&s).trim().is_empty()
                && let Some(last) = out.last_mut()
            {
                last.push(' ');
                last.push_str(s.trim());
                continue;
            }
            if !s.trim().is_empty() {
                out.push(s);
            }
        }
    }
    out
}

/// `text` without `[n]` citations, including those that removing one would make (`[[1]2]`).
pub fn strip_citations(text: &str) -> String {
    let mut out = strip_citations_once(text);
    // Each pass that changes the text removes a citation: this ends.
    loop {
        let again = strip_citations_once(&out);
        if again == out {
            return out;
        }
        out = again;
    }
}

fn strip_citations_once(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find('[') {
        let after = &rest[open + 1..];
        match after.find(']') {
            Some(close) if !parse_citations(&rest[open..open + close + 2]).is_empty() => {
                out.push_str(&rest[..open]);
                rest = &after[close + 1..];
            }
            _ => {
                out.push_str(&rest[..=open]);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace(" .", ".")
        .replace(" ,", ",")
}

/// Numbers written in `text` (`14`, `5`, `99.9`, `$1,200` -> `1200`).
fn numbers(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let chars: Vec<char> = text.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        let inside = c.is_ascii_digit()
            || (matches!(c, '.' | ',')
                && !current.is_empty()
                && chars.get(i + 1).is_some_and(char::is_ascii_digit));
        if inside {
            if c != ',' {
                current.push(c);
            }
        } else if !current.is_empty() {
            out.push(std::mem::take(&mut current));
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// How one answer sentence stands against the facts.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SentenceCheck {
    /// The sentence, citations removed.
    pub text: String,
    /// Facts it cites (1-based, valid ones only).
    pub cites: Vec<usize>,
    /// Share of its terms found in the cited facts (all facts when it cites none).
    pub support: f64,
    /// Every number in it appears in a cited fact.
    pub numbers_supported: bool,
    /// Every capitalised word in it (a name: a product, a plan, a menu) appears in a cited fact:
    /// a 135M model that writes "Ethereum" for "Enterprise" has invented a name.
    pub names_supported: bool,
}

/// The model's output against its facts.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OutputCheck {
    /// The model said it does not know.
    pub refused: bool,
    /// Sentences with their support.
    pub sentences: Vec<SentenceCheck>,
    /// Cited numbers that name no fact (removed from the answer).
    pub invalid_citations: Vec<usize>,
    /// The answer repeats the prompt's scaffolding (`Facts:`, `Question:`) or breadcrumbs.
    pub echo: bool,
    /// Every sentence is supported by the facts it cites, and the answer carries the numbers
    /// of the best fact when the question asks for a quantity.
    pub grounded: bool,
}

/// Share of a sentence's terms needed in its cited facts.
pub const MIN_SUPPORT: f64 = 0.6;

/// Checks `answer` against the `facts` it was given for `question`. `echoes` are strings whose
/// appearance in the answer means it copied the prompt's scaffolding (breadcrumbs, labels).
pub fn check_output(
    answer: &str,
    facts: &[&str],
    expects: Expects,
    echoes: &[&str],
) -> OutputCheck {
    // Lines written like the prompt's fact list (`[1] ...`): one is a sentence cited up front,
    // several are the list copied.
    let listed = answer
        .lines()
        .filter(|l| leading_citation(l.trim()).is_some())
        .count();
    let answer = &normalise_leading_citations(answer);
    let refused = is_refusal(answer);
    let cited = parse_citations(answer);
    let invalid: Vec<usize> = cited
        .iter()
        .copied()
        .filter(|n| !(1..=facts.len()).contains(n))
        .collect();
    let lower = answer.to_lowercase();
    let echo = listed > 1
        || ["facts:", "question:", "passages:", "passage:"]
            .iter()
            .any(|s| lower.contains(s))
        || echoes
            .iter()
            .filter(|e| !e.trim().is_empty())
            .any(|e| lower.contains(&e.to_lowercase()));
    let mut sentences = Vec::new();
    for s in answer_sentences(answer) {
        let cites: Vec<usize> = parse_citations(&s)
            .into_iter()
            .filter(|n| (1..=facts.len()).contains(n))
            .collect();
        let text = strip_citations(&s);
        let sources: Vec<&str> = if cites.is_empty() {
            facts.to_vec()
        } else {
            cites.iter().map(|n| facts[n - 1]).collect()
        };
        let source_terms: HashSet<String> = sources.iter().flat_map(|f| terms(f)).collect();
        let own = terms(&text);
        let support = if own.is_empty() {
            0.0
        } else {
            own.iter().filter(|t| source_terms.contains(*t)).count() as f64 / own.len() as f64
        };
        let source_numbers: HashSet<String> = sources.iter().flat_map(|f| numbers(f)).collect();
        let numbers_supported = numbers(&text).iter().all(|n| source_numbers.contains(n));
        let source_words: HashSet<String> = sources
            .iter()
            .flat_map(|f| words(f))
            .map(|w| stem(&w))
            .collect();
        let names_supported = plain(&text)
            .split(|c: char| !(c.is_alphanumeric() || c == '\'' || c == '-'))
            .filter(|w| w.chars().next().is_some_and(char::is_uppercase))
            .map(str::to_lowercase)
            .filter(|w| !is_stopword(w))
            .all(|w| source_words.contains(&stem(&w)));
        sentences.push(SentenceCheck {
            text,
            cites,
            support,
            numbers_supported,
            names_supported,
        });
    }
    let carries_specifics = match (expects, facts.first()) {
        (kind, Some(best)) if kind.is_numeric() && has_number(best) => {
            let said: HashSet<String> = numbers(answer).into_iter().collect();
            numbers(best).iter().any(|n| said.contains(n))
        }
        _ => true,
    };
    let grounded = !refused
        && !echo
        && !sentences.is_empty()
        && sentences.len() <= 3
        && sentences.iter().all(|s| {
            !s.cites.is_empty()
                && s.text.split_whitespace().count() >= 3
                && s.support >= MIN_SUPPORT
                && s.numbers_supported
                && s.names_supported
        })
        && carries_specifics;
    OutputCheck {
        refused,
        sentences,
        invalid_citations: invalid,
        echo,
        grounded,
    }
}

/// The `[n]` a line starts with, and the rest of the line.
fn leading_citation(line: &str) -> Option<(&str, &str)> {
    let rest = line.strip_prefix('[')?;
    let close = rest.find(']')?;
    let inner = &rest[..close];
    (!inner.is_empty()
        && inner
            .chars()
            .all(|c| c.is_ascii_digit() || c == ',' || c == ' '))
    .then(|| (&line[..close + 2], rest[close + 1..].trim()))
}

/// Lines of the form `[n] text` rewritten as `text [n]` (the citation after the sentence it
/// supports), so the check reads them like any other cited sentence.
fn normalise_leading_citations(answer: &str) -> String {
    answer
        .lines()
        .map(|line| match leading_citation(line.trim()) {
            Some((citation, rest)) if !rest.is_empty() => match rest.strip_suffix(['.', '!']) {
                Some(body) => format!("{body} {citation}."),
                None => format!("{rest} {citation}"),
            },
            _ => line.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// How an answer was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AnswerPath {
    /// The model's answer, checked against its facts.
    Generative,
    /// The best evidence sentences, quoted with their citation.
    Extractive,
    /// Not answered: no evidence cleared the threshold (or retrieval found nothing).
    Refusal,
}

impl AnswerPath {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Generative => "generative",
            Self::Extractive => "extractive",
            Self::Refusal => "refusal",
        }
    }
}

/// A second evidence sentence joins the extractive answer when it scores at least this share of
/// the best one: the evidence does not say which of the two answers, so both are quoted
/// (measured: key-fact accuracy +10-15 points on the sample golden set for 0.5 more sentence per
/// answer, docs/evaluation.md).
pub const EXTRACTIVE_SECOND: f64 = 0.85;

/// The extractive answer: the best fact, and the second best when it scores nearly as well
/// ([`EXTRACTIVE_SECOND`]), each with its fact number.
pub fn extractive_answer(evidence: &[Evidence]) -> String {
    let Some(best) = evidence.first() else {
        return REFUSAL.to_owned();
    };
    let mut out = cite(&best.text, 1);
    if let Some(second) = evidence.get(1)
        && second.score >= EXTRACTIVE_SECOND * best.score
    {
        out.push(' ');
        out.push_str(&cite(&second.text, 2));
    }
    out
}

/// `sentence [n]`, the citation before the sentence's final stop moved after it.
fn cite(sentence: &str, n: usize) -> String {
    let s = sentence.trim().trim_end_matches('…').trim_end();
    match s.strip_suffix(['.', '!', ';', ':']) {
        Some(body) => format!("{body} [{n}]."),
        None => format!("{s} [{n}]."),
    }
}

/// The answer served, its path, and the citations it keeps (1-based fact numbers in order of
/// appearance; the text's citations renumbered to 1..k in that order).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Decision {
    /// The answer text.
    pub text: String,
    /// How it was made.
    pub path: AnswerPath,
    /// Fact numbers (1-based, into the evidence) cited by the text, in order; the text cites
    /// them as `[1]`..`[k]`.
    pub facts: Vec<usize>,
}

/// The facts (1-based) the extractive answer quotes: the best, and the second when it scores
/// at least [`EXTRACTIVE_SECOND`] of the best.
pub fn extractive_facts(evidence: &[Evidence]) -> Vec<usize> {
    let Some(best) = evidence.first() else {
        return Vec::new();
    };
    let mut out = vec![1];
    if evidence
        .get(1)
        .is_some_and(|second| second.score >= EXTRACTIVE_SECOND * best.score)
    {
        out.push(2);
    }
    out
}

/// Chooses between the generated answer (`None` when the model was not called), the extractive
/// answer and a refusal. `threshold` is the calibrated answerability score: below it nothing
/// is answered. Above it, the generated answer is served when it passed the check **and** cites
/// every fact the extractive answer would quote — the model may say it better, never less: a
/// 135M model picking one of three facts picks worse than the evidence score does (measured,
/// docs/evaluation.md). A model that says it doesn't know is not believed over evidence that
/// cleared the threshold (its refusals were wrong 12 times in 16 on the golden set): the
/// extractive answer is served.
pub fn choose(
    generated: Option<(&str, &OutputCheck)>,
    evidence: &[Evidence],
    threshold: f64,
) -> Decision {
    let best = evidence.first().map_or(0.0, |e| e.score);
    if evidence.is_empty() || best < threshold {
        return refusal();
    }
    if let Some((text, check)) = generated {
        let cited: HashSet<usize> = check
            .sentences
            .iter()
            .flat_map(|s| s.cites.clone())
            .collect();
        if check.grounded && extractive_facts(evidence).iter().all(|f| cited.contains(f)) {
            let text = normalise_leading_citations(text).replace('\n', " ");
            return renumber(&drop_invalid(&text, evidence.len()), AnswerPath::Generative);
        }
    }
    renumber(&extractive_answer(evidence), AnswerPath::Extractive)
}

fn refusal() -> Decision {
    Decision {
        text: REFUSAL.to_owned(),
        path: AnswerPath::Refusal,
        facts: Vec::new(),
    }
}

/// `text` without citations of numbers outside `1..=facts`.
fn drop_invalid(text: &str, facts: usize) -> String {
    rewrite_citations(text, |n| (1..=facts).contains(&n).then_some(n))
}

/// Rewrites every `[..]` citation group with `map` (numbers mapped to `None` are dropped; an
/// empty group disappears).
fn rewrite_citations(text: &str, mut map: impl FnMut(usize) -> Option<usize>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find('[') {
        let after = &rest[open + 1..];
        let Some(close) = after.find(']') else { break };
        let group = &rest[open..open + close + 2];
        let numbers = parse_citations(group);
        out.push_str(&rest[..open]);
        if numbers.is_empty() {
            out.push_str(group);
        } else {
            let mut kept: Vec<usize> = Vec::new();
            for n in numbers.into_iter().filter_map(&mut map) {
                if !kept.contains(&n) {
                    kept.push(n);
                }
            }
            if !kept.is_empty() {
                let inner: Vec<String> = kept.iter().map(usize::to_string).collect();
                out.push_str(&format!("[{}]", inner.join(", ")));
            } else if out.ends_with(' ') {
                out.pop();
            }
        }
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    out.trim().to_owned()
}

/// Renumbers the citations of `text` 1..k in order of first appearance.
fn renumber(text: &str, path: AnswerPath) -> Decision {
    let order = parse_citations(text);
    let text = rewrite_citations(text, |n| order.iter().position(|&m| m == n).map(|i| i + 1));
    Decision {
        text,
        path,
        facts: order,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(passage: usize, text: &str, score: f64) -> Evidence {
        Evidence {
            passage,
            text: text.into(),
            score,
            features: EvidenceFeatures::default(),
        }
    }

    #[test]
    fn passages_split_into_evidence_sentences() {
        assert_eq!(
            evidence_sentences(
                "Question (Dev): Can I?\n\nAnswer (Ana): Yes, within 30 days.",
                &[]
            ),
            ["Yes, within 30 days."]
        );
        let text = "Refund window\n\nYou can request a full refund within **14 days** of your first payment, e.g. for an\nupgrade. After 14 days, payments are non-refundable.\n\n- Duplicate charges are always refunded,\n  whatever the window.\n- Add-ons are non-refundable once used.\n\nHow long do I have?\n\nPlan | Monthly price | Seats\nStarter | $12 | 1\nGrowth | $39 | 5\n\nProblem: I was charged twice. Please help.\n\nResolution: The second charge was refunded. It shows in 5 days.";
        let s = evidence_sentences(text, &["Refund window".to_owned()]);
        assert_eq!(
            s,
            [
                "You can request a full refund within 14 days of your first payment, e.g. for an upgrade.",
                "After 14 days, payments are non-refundable.",
                "Duplicate charges are always refunded, whatever the window.",
                "Add-ons are non-refundable once used.",
                "Starter, Monthly price: $12, Seats: 1.",
                "Growth, Monthly price: $39, Seats: 5.",
                "The second charge was refunded.",
                "It shows in 5 days.",
            ]
        );
    }

    #[test]
    fn stems_meet() {
        assert_eq!(stem("refunds"), stem("refund"));
        assert_eq!(stem("refunded"), stem("refund"));
        assert_eq!(stem("charges"), stem("charge"));
        assert_eq!(stem("policies"), stem("policy"));
        assert_eq!(stem("syncing"), stem("sync"));
        assert_eq!(stem("days"), "day");
        assert_eq!(stem("business"), "business");
    }

    #[test]
    fn answer_types() {
        let cases = [
            (
                "How many days do I have to request a refund?",
                Expects::Duration,
            ),
            ("what does the Pro plan cost per month?", Expects::Money),
            ("when will my refund show up", Expects::Duration),
            ("how often does the bank feed refresh", Expects::Frequency),
            ("what time are recurring invoices created", Expects::Clock),
            (
                "what address do your reset emails come from?",
                Expects::Email,
            ),
            ("how many invoices can go in one request?", Expects::Count),
            ("where do i set up tax rates", Expects::Location),
            ("what credit do we get below 99% uptime?", Expects::Percent),
            ("who approves refunds over $500?", Expects::Person),
            ("how much is the dispute fee?", Expects::Money),
            ("Can I pause my subscription?", Expects::Other),
        ];
        for (q, kind) in cases {
            assert_eq!(expects(q), kind, "{q}");
        }
        assert!(states(Expects::Duration, "Links are valid for 60 minutes."));
        assert!(!states(Expects::Duration, "Links can be used once."));
        assert!(states(Expects::Money, "Growth costs $39 per month."));
        assert!(!states(
            Expects::Money,
            "Service credit: 10% of the monthly fee."
        ));
        assert!(states(Expects::Frequency, "Feeds refresh every 6 hours."));
        assert!(states(Expects::Clock, "Invoices are created at 06:00."));
        assert!(states(Expects::Email, "Write to privacy@example.com."));
        assert!(states(Expects::Location, "Go to Settings > Billing."));
        assert!(states(Expects::Date, "It applies from September 1, 2026."));
        assert!(states(Expects::Other, "anything"));
    }

    #[test]
    fn features_reward_the_answering_sentence() {
        let stats = TermStats::from_texts([
            "You can request a full refund within 14 days of your first payment.",
            "Refunds go back to the original payment method.",
            "Bank feeds sync every night.",
        ]);
        let q = QuestionTerms::new("How many days do I have to request a refund?", &stats);
        let good = q.features(
            "You can request a full refund within 14 days of your first payment.",
            "Refund window. You can request a full refund within 14 days of your first payment.",
            0,
            (0.7, 0.7),
        );
        let bad = q.features(
            "Refunds go back to the original payment method.",
            "Refunds go back to the original payment method.",
            1,
            (0.5, 0.7),
        );
        assert_eq!(good.answer_type, 1.0);
        assert_eq!(bad.answer_type, -1.0);
        assert!((bad.relative_cosine + 0.2).abs() < 1e-9);
        assert!(
            good.sentence_overlap > bad.sentence_overlap,
            "{good:?} {bad:?}"
        );
        let model = EvidenceModel::default();
        assert!(model.score(&good) > model.score(&bad));

        let unknown = QuestionTerms::new("Can I pay with bitcoin?", &stats);
        let f = unknown.features(
            "Refunds go back to the original payment method.",
            "",
            0,
            (0.3, 0.3),
        );
        assert!(f.unknown_terms > 0.3, "{f:?}");
    }

    #[test]
    fn misspelt_terms_are_read_as_the_term_they_misspell() {
        let stats = TermStats::from_texts([
            "Request a refund from Settings > Billing.",
            "Use an authenticator app for two-factor authentication.",
            "Bank feeds refresh every night.",
        ]);
        assert_eq!(stats.correct("refnd"), Some("refund"));
        assert_eq!(stats.correct("refesh"), Some("refresh"));
        assert_eq!(stats.correct("authenticater"), Some("authenticator"));
        // Known, short or numeric terms and real unknown words are left alone.
        assert_eq!(stats.correct("refund"), None);
        assert_eq!(stats.correct("bank"), None);
        assert_eq!(stats.correct("netflix"), None);
        assert_eq!(stats.correct("12345"), None);

        let typo = QuestionTerms::new("where do i request a refnd?", &stats);
        let f = typo.features(
            "Request a refund from Settings > Billing.",
            "",
            0,
            (0.5, 0.5),
        );
        assert_eq!(f.unknown_terms, 0.0, "{f:?}");
        assert!(f.sentence_overlap > 0.5, "{f:?}");
    }

    #[test]
    fn fitting_separates_the_classes() {
        let mut data = Vec::new();
        for i in 0..40 {
            let x = f64::from(i) / 40.0;
            let f = EvidenceFeatures {
                cosine: x,
                sentence_overlap: x,
                ..EvidenceFeatures::default()
            };
            data.push((f, x > 0.6));
        }
        let model = EvidenceModel::fit(&data, 1e-4, 3000);
        let p = |x: f64| {
            model.score(&EvidenceFeatures {
                cosine: x,
                sentence_overlap: x,
                ..EvidenceFeatures::default()
            })
        };
        assert!(p(0.9) > 0.5 && p(0.3) < 0.5, "{model:?}");
    }

    #[test]
    fn the_prompt_has_facts_and_no_breadcrumbs() {
        let e = [ev(0, "You can request a full refund within 14 days.", 0.9)];
        let p = grounded_prompt(" How many days? ", &e);
        assert_eq!(
            p,
            "Facts:\n[1] You can request a full refund within 14 days.\n\nQuestion: How many days?"
        );
    }

    #[test]
    fn supported_answers_pass_and_unsupported_ones_do_not() {
        let facts = ["You can request a full refund within 14 days of your first payment."];
        let ok = check_output(
            "You have 14 days from your first payment to request a full refund [1].",
            &facts,
            Expects::Duration,
            &[],
        );
        assert!(ok.grounded, "{ok:?}");
        let wrong_number = check_output(
            "You can request a full refund within 30 days [1].",
            &facts,
            Expects::Duration,
            &[],
        );
        assert!(!wrong_number.grounded);
        let uncited = check_output(
            "You can request a full refund within 14 days.",
            &facts,
            Expects::Duration,
            &[],
        );
        assert!(!uncited.grounded);
        let invented = check_output(
            "Refunds are sent by cheque to your office in Paris [1].",
            &facts,
            Expects::Other,
            &[],
        );
        assert!(!invented.grounded);
        let sso = ["Enterprise includes SAML SSO with Okta, Azure AD and Google Workspace."];
        let renamed = check_output(
            "Ethereum includes SAML SSO with Okta, Azure AD and Google Workspace [1].",
            &sso,
            Expects::Other,
            &[],
        );
        assert!(
            !renamed.grounded && !renamed.sentences[0].names_supported,
            "{renamed:?}"
        );
        let same = check_output(
            "Enterprise includes SAML SSO with Okta and Azure AD [1].",
            &sso,
            Expects::Other,
            &[],
        );
        assert!(same.grounded, "{same:?}");
        let invalid = check_output("Within 14 days [3].", &facts, Expects::Duration, &[]);
        assert_eq!(invalid.invalid_citations, [3]);
        assert!(!invalid.grounded);
        let echo = check_output(
            "[Refund policy > Refund window] 14 days [1].",
            &facts,
            Expects::Duration,
            &["[Refund policy > Refund window]"],
        );
        assert!(echo.echo && !echo.grounded);
        let after_stop = check_output(
            "You can request a full refund within 14 days. [1]",
            &facts,
            Expects::Duration,
            &[],
        );
        assert!(after_stop.grounded, "{after_stop:?}");
        let up_front = check_output(
            "[1] You can request a full refund within 14 days.",
            &facts,
            Expects::Duration,
            &[],
        );
        assert!(up_front.grounded, "{up_front:?}");
        let two = ["Refunds take 14 days.", "Card refunds take 5 days."];
        let copied = check_output(
            "[1] Refunds take 14 days.\n[2] Card refunds take 5 days.",
            &two,
            Expects::Duration,
            &[],
        );
        assert!(copied.echo && !copied.grounded, "{copied:?}");
        let bare = check_output("[1]\n", &facts, Expects::Duration, &[]);
        assert!(!bare.grounded, "{bare:?}");
    }

    #[test]
    fn the_decision_renumbers_and_falls_back() {
        let evidence = [
            ev(2, "Card refunds appear within 5 to 10 business days.", 0.9),
            ev(0, "Refunds go back to the original payment method.", 0.7),
        ];
        let facts: Vec<&str> = evidence.iter().map(|e| e.text.as_str()).collect();
        let text =
            "Refunds go back to your card [2] and appear within 5 to 10 business days [1][7].";
        let check = check_output(text, &facts, Expects::Other, &[]);
        let d = choose(Some((text, &check)), &evidence, 0.5);
        assert_eq!(d.path, AnswerPath::Generative, "{check:?}");
        assert_eq!(
            d.text,
            "Refunds go back to your card [1] and appear within 5 to 10 business days [2]."
        );
        assert_eq!(d.facts, [2, 1]);

        let bad = "Refunds take 30 days [1].";
        let check = check_output(bad, &facts, Expects::Duration, &[]);
        let d = choose(Some((bad, &check)), &evidence, 0.5);
        assert_eq!(d.path, AnswerPath::Extractive);
        assert_eq!(
            d.text,
            "Card refunds appear within 5 to 10 business days [1]."
        );
        assert_eq!(d.facts, [1]);

        let close = [
            ev(2, "Card refunds appear within 5 to 10 business days.", 0.9),
            ev(0, "Refunds go back to the original payment method.", 0.8),
        ];
        assert_eq!(
            extractive_answer(&close),
            "Card refunds appear within 5 to 10 business days [1]. Refunds go back to the original payment method [2]."
        );

        let d = choose(None, &evidence, 0.95);
        assert_eq!(d.path, AnswerPath::Refusal);
        assert!(is_refusal(&d.text));

        // The model declines, the evidence cleared the threshold: the evidence is quoted.
        let idk = "I don't know.";
        let check = check_output(idk, &facts, Expects::Other, &[]);
        assert_eq!(
            choose(Some((idk, &check)), &evidence, 0.5).path,
            AnswerPath::Extractive
        );
        // A grounded answer that leaves out a fact the extractive answer would quote is not
        // served.
        let close = [
            ev(2, "Card refunds appear within 5 to 10 business days.", 0.9),
            ev(0, "Refunds go back to the original payment method.", 0.85),
        ];
        let close_facts: Vec<&str> = close.iter().map(|e| e.text.as_str()).collect();
        let one = "Card refunds appear within 5 to 10 business days [1].";
        let check = check_output(one, &close_facts, Expects::Duration, &[]);
        assert!(check.grounded);
        assert_eq!(
            choose(Some((one, &check)), &close, 0.5).path,
            AnswerPath::Extractive
        );
        assert_eq!(extractive_facts(&close), [1, 2]);
    }
}
