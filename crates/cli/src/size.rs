//! Sizes on the command line: `4096`, `4KiB`, `64MiB`, `2GiB`, `1TiB`.
//! Units are binary; `K`, `M`, `G`, `T` alone mean the same as `KiB` ... and
//! `KB`, `MB`, `GB`, `TB` are decimal.

/// Parses a size; errors say what was wrong.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    if digits.is_empty() {
        return Err(format!(
            "{text:?} is not a size: expected a number with an optional unit, like 64MiB"
        ));
    }
    let number: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?}: the number is too large"))?;
    let multiplier: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "KiB" | "k" | "kib" | "KIB" => 1 << 10,
        "M" | "MiB" | "mib" | "MIB" => 1 << 20,
        "G" | "GiB" | "gib" | "GIB" => 1 << 30,
        "T" | "TiB" | "tib" | "TIB" => 1 << 40,
        "KB" | "kB" | "kb" => 1_000,
        "MB" | "mb" => 1_000_000,
        "GB" | "gb" => 1_000_000_000,
        "TB" | "tb" => 1_000_000_000_000,
        other => {
            return Err(format!(
                "{text:?}: unknown unit {other:?} (use B, KiB, MiB, GiB, TiB, or KB, MB, GB, TB)"
            ));
        }
    };
    number
        .checked_mul(multiplier)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// Formats bytes with a binary unit, for humans.
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Guards the accepted spellings and the errors for bad ones.
    #[test]
    fn parses_units_and_rejects_garbage() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("4KiB"), Ok(4096));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("1MB"), Ok(1_000_000));
        assert!(parse_size("").is_err());
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("12XB").unwrap_err().contains("unknown unit"));
        assert!(parse_size("99999999999999999999").is_err());
        assert!(parse_size("99999999TiB").unwrap_err().contains("too large"));
    }

    #[test]
    fn formats_bytes() {
        assert_eq!(format_bytes(512), "512 B");
        assert_eq!(format_bytes(64 << 20), "64.0 MiB");
    }
}
