//! Sizes on the command line: `1073741824`, `512M`, `512MiB`, `2G`, `2GB`.

/// Parses a size in bytes with an optional binary suffix (K, M, G, T, with
/// or without `iB`/`B`; all mean powers of 1024).
pub fn parse(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let digits_end = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, suffix) = text.split_at(digits_end);
    if digits.is_empty() {
        return Err(format!("{text:?} is not a size; use e.g. 1073741824, 512M or 2G"));
    }
    let shift = match suffix.to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        other => return Err(format!("unknown size suffix {other:?}; use K, M, G or T")),
    };
    let value: u64 = digits.parse().map_err(|_| format!("{text} is too large"))?;
    let bytes = value.checked_mul(1u64 << shift).ok_or_else(|| format!("{text} is too large"))?;
    if bytes == 0 {
        return Err("the size must be greater than 0".into());
    }
    Ok(bytes)
}

/// Like [`parse`], but 0 is a valid size (`gc --max-bytes 0` empties the cache).
pub fn parse_allow_zero(text: &str) -> Result<u64, String> {
    if text.trim() == "0" { Ok(0) } else { parse(text) }
}

/// A size for people: `512.0 MiB`.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{bytes} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_suffixes() {
        assert_eq!(parse("1073741824"), Ok(1 << 30));
        assert_eq!(parse("512M"), Ok(512 << 20));
        assert_eq!(parse("2GiB"), Ok(2 << 30));
        assert_eq!(parse("4k"), Ok(4096));
    }

    #[test]
    fn nonsense_zero_and_overflow_are_refused() {
        for bad in ["", "M", "12X", "-1", "0", "18446744073709551616", "16777216T", "1.5G"] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn human_sizes_round_to_one_decimal() {
        assert_eq!(human(512), "512 B");
        assert_eq!(human(3 << 19), "1.5 MiB");
    }
}
