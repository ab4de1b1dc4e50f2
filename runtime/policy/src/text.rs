//! Word splitting shared by the rewrite policy and the difficulty estimate; the key-fact match
//! the evaluations share (`eval --answers`, the trainer's alignment report).

/// Lower-cased alphanumeric words (apostrophes inside words kept: `don't`).
pub fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !(c.is_alphanumeric() || c == '\'' || c == '-'))
        .map(|w| w.trim_matches(|c| c == '\'' || c == '-'))
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// Function words that carry no topic; ignored when measuring vocabulary overlap.
pub fn is_stopword(word: &str) -> bool {
    const STOP: &[&str] = &[
        "a", "about", "am", "an", "and", "any", "are", "as", "at", "be", "been", "but", "by",
        "can", "could", "did", "do", "does", "for", "from", "had", "has", "have", "how", "i",
        "i'm", "if", "in", "is", "it", "it's", "its", "me", "my", "of", "on", "or", "our",
        "please", "should", "so", "that", "the", "their", "them", "then", "there", "this", "to",
        "us", "was", "we", "were", "what", "when", "where", "which", "who", "why", "will", "with",
        "would", "you", "your",
    ];
    STOP.contains(&word)
}

/// Content words of `text`: [`words`] minus [`is_stopword`].
pub fn content_words(text: &str) -> Vec<String> {
    words(text)
        .into_iter()
        .filter(|w| !is_stopword(w))
        .collect()
}

/// Lower-cased, whitespace-collapsed text with Markdown emphasis and curly quotes made plain:
/// the form in which key facts are looked for.
pub fn normalise(text: &str) -> String {
    text.replace("**", "")
        .replace(['’', '‘'], "'")
        .replace(['“', '”'], "\"")
        .to_lowercase()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// Whether `text` states every fact (each fact: any of its alternatives).
pub fn has_key_facts(text: &str, facts: &[Vec<String>]) -> bool {
    let text = normalise(text);
    !facts.is_empty()
        && facts
            .iter()
            .all(|alternatives| alternatives.iter().any(|a| text.contains(&normalise(a))))
}

/// Whether `text` states any of `stale` (outdated facts).
pub fn has_any(text: &str, stale: &[String]) -> bool {
    let text = normalise(text);
    stale.iter().any(|s| text.contains(&normalise(s)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_and_lowercases() {
        assert_eq!(
            words("Can't log in to Ledgerly-Pro, v2.3?"),
            ["can't", "log", "in", "to", "ledgerly-pro", "v2", "3"]
        );
        assert_eq!(
            content_words("How do I export my invoices"),
            ["export", "invoices"]
        );
    }
}
