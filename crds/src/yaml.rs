//! YAML that Kubernetes tooling reads the same way.
//!
//! `kubectl`, Helm, kustomize, Argo CD and Flux parse manifests with go-yaml v2
//! (`sigs.k8s.io/yaml` -> `go.yaml.in/yaml/v2`, a port of libyaml 0.1). The YAML crate used here
//! (`serde_yaml`, a port of libyaml 0.2.5) is more lenient in one place that manifests hit: inside
//! a flow collection (`[...]`, `{...}`), go-yaml ends an unquoted (plain) value at a `?`, so
//!
//! ```yaml
//! exampleQueries: [How much is the Team plan?, Is there a discount?]
//! ```
//!
//! is a parse error for kubectl (`did not find expected ',' or ']'`) while `serde_yaml` reads two
//! strings. A manifest the runtime accepts and `kubectl apply` refuses is a trap for anyone who
//! moves from the embedded mode to a cluster or a GitOps repository, so [`check_kubectl_compatible`]
//! refuses those documents up front, naming the line and column and the fix (quote the value).
//! `crds/tests/it/examples.rs` checks the verdicts against kubectl's own parser.

use std::fmt;

/// Where and why a YAML stream would be read differently (or refused) by kubectl.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct YamlCompatError {
    /// 1-based line.
    pub line: usize,
    /// 1-based column (characters).
    pub column: usize,
    /// 0-based index of the document in the stream that holds the line.
    pub document: usize,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl fmt::Display for YamlCompatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "line {} column {}: {}",
            self.line, self.column, self.message
        )
    }
}

impl std::error::Error for YamlCompatError {}

/// Scanner state carried from line to line.
#[derive(Default)]
struct Scanner {
    /// How many flow collections (`[`, `{`) are open.
    flow: usize,
    /// Inside a quoted scalar that continues on the next line.
    quote: Option<char>,
    /// Inside a plain scalar of a flow collection that continues on the next line.
    plain: bool,
    /// Indentation of the line that opened a block scalar (`|`, `>`): deeper lines are its text.
    block_scalar: Option<usize>,
    document: usize,
}

/// Checks a YAML stream (one or more documents) for constructs that go-yaml v2, and so kubectl,
/// Helm, kustomize, Argo CD and Flux, parse differently from `serde_yaml`: an unquoted `?` inside
/// a value of a flow collection (after its first character). The stream is assumed to be YAML
/// `serde_yaml` accepts; anything this scanner does not understand is left to the parser.
pub fn check_kubectl_compatible(text: &str) -> Result<(), YamlCompatError> {
    let mut s = Scanner::default();
    for (n, line) in text.lines().enumerate() {
        s.line(n + 1, line)?;
    }
    Ok(())
}

fn is_blank(c: Option<char>) -> bool {
    c.is_none_or(char::is_whitespace)
}

fn is_flow_indicator(c: char) -> bool {
    matches!(c, ',' | '[' | ']' | '{' | '}')
}

impl Scanner {
    fn error(&self, line: usize, column: usize, message: &str) -> YamlCompatError {
        YamlCompatError {
            line,
            column,
            document: self.document,
            message: message.to_owned(),
        }
    }

    fn line(&mut self, number: usize, line: &str) -> Result<(), YamlCompatError> {
        let chars: Vec<char> = line.chars().collect();
        let indent = chars.iter().take_while(|c| **c == ' ').count();
        if let Some(parent) = self.block_scalar {
            if chars.iter().all(|c| c.is_whitespace()) || indent > parent {
                return Ok(());
            }
            self.block_scalar = None;
        }
        if self.quote.is_none()
            && (line.starts_with("---") || line.starts_with("...") || line.starts_with('%'))
            && is_blank(chars.get(3).copied())
        {
            // A document marker or directive: a new document in block context.
            if line.starts_with("---") {
                self.document += usize::from(number > 1 || self.flow > 0);
            }
            self.flow = 0;
            self.plain = false;
            // `--- |` and the like: content may follow the marker.
            return self.scan(number, &chars, 3.min(chars.len()), indent);
        }
        self.scan(number, &chars, 0, indent)
    }

    /// Scans `chars` from `start`; `indent` is the line's indentation.
    fn scan(
        &mut self,
        number: usize,
        chars: &[char],
        start: usize,
        indent: usize,
    ) -> Result<(), YamlCompatError> {
        let mut i = start;
        // At the start of a token (after indentation, `- `, `: `, `? `, `,`, an opening bracket).
        let mut token_start = !self.plain;
        while i < chars.len() {
            let c = chars[i];
            let next = chars.get(i + 1).copied();
            if let Some(q) = self.quote {
                i = self.skip_quoted(chars, i, q);
                token_start = false;
                continue;
            }
            if c == '#' && (i == 0 || chars[i - 1].is_whitespace()) {
                return Ok(()); // a comment: the rest of the line
            }
            if self.flow == 0 {
                // Block context.
                if c.is_whitespace() {
                    i += 1;
                    continue;
                }
                if !token_start {
                    // Inside a block plain scalar: until `: ` or a comment.
                    if c == ':' && is_blank(next) {
                        token_start = true;
                    }
                    i += 1;
                    continue;
                }
                match c {
                    '-' | '?' | ':' if is_blank(next) => i += 1,
                    '"' | '\'' => {
                        self.quote = Some(c);
                        i = self.skip_quoted(chars, i + 1, c);
                        token_start = false;
                    }
                    '[' | '{' => {
                        self.flow += 1;
                        i += 1;
                    }
                    '|' | '>' => {
                        self.block_scalar = Some(indent);
                        return Ok(());
                    }
                    '&' | '*' | '!' => {
                        while i < chars.len() && !chars[i].is_whitespace() {
                            i += 1;
                        }
                    }
                    _ => {
                        token_start = false;
                        i += 1;
                    }
                }
                continue;
            }
            // Flow context.
            if self.plain {
                if c == '?' {
                    return Err(self.error(
                        number,
                        i + 1,
                        "an unquoted value inside [...] or {...} contains `?`: kubectl, Helm, \
                         kustomize, Argo CD and Flux (go-yaml) end the value there and refuse the \
                         file (\"did not find expected ',' or ']'\"); quote the value",
                    ));
                }
                if is_flow_indicator(c)
                    || (c == ':' && (is_blank(next) || next.is_some_and(is_flow_indicator)))
                {
                    self.plain = false;
                } else {
                    i += 1;
                    continue;
                }
            }
            match c {
                _ if c.is_whitespace() => i += 1,
                '[' | '{' => {
                    self.flow += 1;
                    i += 1;
                }
                ']' | '}' => {
                    self.flow = self.flow.saturating_sub(1);
                    i += 1;
                    token_start = false;
                }
                ',' | ':' => i += 1,
                '"' | '\'' => {
                    self.quote = Some(c);
                    i = self.skip_quoted(chars, i + 1, c);
                }
                '?' => i += 1,
                '&' | '*' | '!' => {
                    while i < chars.len()
                        && !chars[i].is_whitespace()
                        && !is_flow_indicator(chars[i])
                    {
                        i += 1;
                    }
                }
                _ => {
                    self.plain = true;
                    i += 1;
                }
            }
        }
        Ok(())
    }

    /// Skips a quoted scalar's text from `i` (after the opening quote or at a continuation line);
    /// returns the index after the closing quote, or the line's end with the quote still open.
    fn skip_quoted(&mut self, chars: &[char], mut i: usize, quote: char) -> usize {
        while i < chars.len() {
            let c = chars[i];
            if quote == '"' && c == '\\' {
                i += 2;
                continue;
            }
            if c == quote {
                if quote == '\'' && chars.get(i + 1) == Some(&'\'') {
                    i += 2;
                    continue;
                }
                self.quote = None;
                return i + 1;
            }
            i += 1;
        }
        chars.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(yaml: &str) -> Result<(), (usize, usize)> {
        check_kubectl_compatible(yaml).map_err(|e| (e.line, e.column))
    }

    #[test]
    fn a_question_mark_in_an_unquoted_flow_value_is_refused_with_its_position() {
        let yaml =
            "spec:\n  domain:\n    exampleQueries: [How much is the Team plan?, Is it free?]\n";
        assert_eq!(verdict(yaml), Err((3, 47)));
        let e = check_kubectl_compatible(yaml).unwrap_err();
        assert!(e.to_string().contains("quote the value"), "{e}");
        assert_eq!(verdict("a: {q: why?}\n"), Err((1, 11)));
        // Over several lines, in the second document.
        let e = check_kubectl_compatible("a: 1\n---\nb: [one,\n  two?]\n").unwrap_err();
        assert_eq!((e.line, e.column, e.document), (4, 6, 1));
    }

    #[test]
    fn what_kubectl_reads_is_accepted() {
        for yaml in [
            "exampleQueries: [\"How much is the Team plan?\", 'Is it free?']\n",
            "description: Is there a non-profit discount?\n",
            "- What does it cost?\n- [a, b]\n",
            "lora: { rank: 8, alpha: 16 }\nurl: http://x:8080/a?b=c\n",
            "a: [http://x:8080/a, {b: c}]\n",
            "a: [? x : y]\n",
            "a: [x, ?y]\n",
            "text: |\n  [Is it free?, yes]\n  {x?}\nb: [1, 2]\n",
            "a: \"multi [line?\n  still] quoted\"\nb: 'it''s [ok?]'\n",
            "a: [x, y] # why? [z?]\n",
            "a: b # [c?\n",
            "key: value with [brackets?] in a block scalar\n",
            "a: &anchor [x]\nb: *anchor\nc: !!str [y]\n",
        ] {
            assert_eq!(verdict(yaml), Ok(()), "{yaml}");
        }
    }
}
