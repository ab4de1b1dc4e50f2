//! Output formats shared by all subcommands.

use clap::ValueEnum;

/// How a command prints its result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Aligned, human-readable text.
    Text,
    /// One JSON document, for scripts.
    Json,
}

/// Formats an integer with thousands separators: 19461 -> "19,461".
pub fn thousands(value: u64) -> String {
    let digits = value.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A number with at most six decimals and no trailing zeros: 4.1499999999999995 -> "4.15".
pub fn short(value: f64) -> String {
    let text = format!("{value:.6}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    if text == "-0" {
        "0".to_owned()
    } else {
        text.to_owned()
    }
}

/// Parses a number written as a fraction ("0.15"), a percentage ("15%") or percentage points
/// ("-1pp", "-1pt"): the last two are divided by 100.
pub fn parse_scaled(text: &str) -> Result<f64, String> {
    let trimmed = text.trim();
    let (number, scale) = ["%", "pp", "pt"]
        .iter()
        .find_map(|suffix| trimmed.strip_suffix(suffix).map(|n| (n.trim(), 0.01)))
        .unwrap_or((trimmed, 1.0));
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a number (examples: 0.15, 15%, -1pp)"))?;
    if !value.is_finite() {
        return Err(format!("`{text}` is not finite"));
    }
    Ok(value * scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(19_461), "19,461");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }

    #[test]
    fn short_numbers() {
        assert_eq!(short(4.1499999999999995), "4.15");
        assert_eq!(short(0.04999999999999982), "0.05");
        assert_eq!(short(12.0), "12");
        assert_eq!(short(-1e-9), "0");
    }

    #[test]
    fn scaled_numbers() {
        assert_eq!(parse_scaled("0.15"), Ok(0.15));
        assert!((parse_scaled("15%").unwrap() - 0.15).abs() < 1e-15);
        assert!((parse_scaled("-1pp").unwrap() + 0.01).abs() < 1e-15);
        assert!((parse_scaled(" -1 pt ").unwrap() + 0.01).abs() < 1e-15);
        assert!(parse_scaled("abc").is_err());
        assert!(parse_scaled("inf").is_err());
    }
}
