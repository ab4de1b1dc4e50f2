//! Word splitting shared by the rewrite policy and the difficulty estimate.

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
