//! Token-count approximation used for chunk budgets.
//!
//! The encoder (MiniLM) uses an uncased WordPiece vocabulary of ~30k entries. Running it here would
//! tie this crate to the model, so budgets use a conservative estimate instead: text is split into
//! runs of letters, runs of digits and single punctuation characters (as BERT's basic tokenizer
//! does), and each run is charged for the word pieces it likely becomes — letters `ceil(len / 6)`,
//! digits `ceil(len / 3)`, punctuation 1. Common English words cost 1, long or rare words 2-3,
//! numbers and codes more. The estimate is deliberately on the high side so that a chunk under
//! `maxTokens` stays under the encoder's 256-token limit (see docs/retrieval.md for the measured
//! ratio against the real tokenizer).

/// Estimated word-piece count of `text`.
pub fn count(text: &str) -> usize {
    let mut total = 0;
    let mut run_len = 0usize;
    let mut run_kind = RunKind::None;
    for c in text.chars() {
        let kind = if c.is_alphabetic() {
            RunKind::Alpha
        } else if c.is_numeric() {
            RunKind::Digit
        } else {
            RunKind::None
        };
        if kind != run_kind || kind == RunKind::None {
            total += run_kind.cost(run_len);
            run_len = 0;
        }
        run_kind = kind;
        if kind == RunKind::None {
            if !c.is_whitespace() && !c.is_control() {
                total += 1;
            }
        } else {
            run_len += 1;
        }
    }
    total + run_kind.cost(run_len)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum RunKind {
    None,
    Alpha,
    Digit,
}

impl RunKind {
    fn cost(self, len: usize) -> usize {
        match self {
            RunKind::None => 0,
            RunKind::Alpha => len.div_ceil(6),
            RunKind::Digit => len.div_ceil(3),
        }
    }
}

/// A whitespace-delimited word of a text: byte range and estimated tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Word {
    /// Byte offset of the first character.
    pub start: usize,
    /// Byte offset one past the last character.
    pub end: usize,
    /// Estimated tokens ([`count`] of the word).
    pub tokens: usize,
}

/// Splits `text` into whitespace-delimited words with their token estimates.
pub fn words(text: &str) -> Vec<Word> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, c) in text.char_indices() {
        match (c.is_whitespace(), start) {
            (true, Some(s)) => {
                out.push(Word {
                    start: s,
                    end: i,
                    tokens: count(&text[s..i]),
                });
                start = None;
            }
            (false, None) => start = Some(i),
            _ => {}
        }
    }
    if let Some(s) = start {
        out.push(Word {
            start: s,
            end: text.len(),
            tokens: count(&text[s..]),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_words_numbers_and_punctuation() {
        assert_eq!(count(""), 0);
        assert_eq!(count("refund policy"), 2);
        // "refunds" (7 letters) is charged 2, as WordPiece splits it: refund ##s.
        assert_eq!(count("Refunds, please!"), 5);
        // "$", "1", ",", "000" -> 1 + 1 + 1 + 1
        assert_eq!(count("$1,000"), 4);
        // letters and digits are separate runs: "e", "-", "2041" -> 1 + 1 + 2
        assert_eq!(count("E-2041"), 4);
        assert_eq!(count("internationalisation"), 4);
    }

    #[test]
    fn words_keep_byte_ranges() {
        let text = "  Plan  Price\nGrowth $39 ";
        let w = words(text);
        let got: Vec<&str> = w.iter().map(|w| &text[w.start..w.end]).collect();
        assert_eq!(got, ["Plan", "Price", "Growth", "$39"]);
        assert_eq!(w[3].tokens, 2);
    }
}
