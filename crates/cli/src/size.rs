//! Sizes on the command line, the same rule for every size flag:
//!
//! - a plain number is bytes, as is a number with `B`;
//! - `KiB`, `MiB`, `GiB`, `TiB` are binary (1024-based): `4GiB` is 4 * 2^30;
//! - `KB`, `MB`, `GB`, `TB` are decimal (1000-based): `4GB` is 4 * 10^9;
//! - `K`, `M`, `G`, `T` alone are refused: half the tools that accept them
//!   mean binary units and half decimal ones, so the reader of a command line
//!   could not tell which was meant. The refusal suggests both spellings.
//!
//! Unit letters are case-insensitive except that `kB` is the SI spelling of
//! `KB`; `b` alone is bytes.

/// A unit's spelling and its multiplier, longest spellings first so that
/// `KiB` is not read as `K` followed by garbage.
const UNITS: [(&str, u64); 9] = [
    ("KiB", 1 << 10),
    ("MiB", 1 << 20),
    ("GiB", 1 << 30),
    ("TiB", 1 << 40),
    ("KB", 1_000),
    ("MB", 1_000_000),
    ("GB", 1_000_000_000),
    ("TB", 1_000_000_000_000),
    ("B", 1),
];

/// Parses a size; errors say what was wrong and how to write it, without
/// repeating the text: clap's message and the config file's excerpt quote
/// it already.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let unit = unit.trim();
    if digits.is_empty() {
        return Err("not a size: expected a number with an optional unit, like 64MiB".into());
    }
    let number: u64 = digits
        .parse()
        .map_err(|_| "the number is too large (at most 2^64 bytes)".to_string())?;
    let multiplier = if unit.is_empty() {
        1
    } else if let Some((_, multiplier)) = UNITS
        .iter()
        .find(|(spelling, _)| spelling.eq_ignore_ascii_case(unit))
    {
        *multiplier
    } else if ["K", "M", "G", "T"]
        .iter()
        .any(|letter| letter.eq_ignore_ascii_case(unit))
    {
        let letter = unit.to_ascii_uppercase();
        let power = match letter.as_str() {
            "K" => 1,
            "M" => 2,
            "G" => 3,
            _ => 4,
        };
        return Err(format!(
            "the unit is ambiguous: write {number}{letter}iB for binary units \
             ({number} * 2^{}) or {number}{letter}B for decimal ones ({number} * 10^{})",
            10 * power,
            3 * power
        ));
    } else {
        return Err(format!(
            "unknown unit {unit:?} (use B, KiB, MiB, GiB, TiB, or KB, MB, GB, TB)"
        ));
    };
    number
        .checked_mul(multiplier)
        .ok_or_else(|| "the size is too large (at most 2^64 bytes)".to_string())
}

/// A size setting of `pagoda node`: read with [`parse_size`] from a flag,
/// an environment variable or the config file (where a bare integer is
/// bytes too), and written back exactly ([`format_size_exact`]), so that a
/// printed configuration reads back as the same bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Size(pub u64);

impl std::str::FromStr for Size {
    type Err = String;

    fn from_str(text: &str) -> Result<Size, String> {
        parse_size(text).map(Size)
    }
}

impl std::fmt::Display for Size {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&format_size_exact(self.0))
    }
}

impl serde::Serialize for Size {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Size {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Size, D::Error> {
        struct SizeVisitor;

        impl serde::de::Visitor<'_> for SizeVisitor {
            type Value = Size;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a size like \"64MiB\" or a number of bytes")
            }

            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Size, E> {
                parse_size(text).map(Size).map_err(E::custom)
            }

            fn visit_u64<E: serde::de::Error>(self, bytes: u64) -> Result<Size, E> {
                Ok(Size(bytes))
            }

            fn visit_i64<E: serde::de::Error>(self, bytes: i64) -> Result<Size, E> {
                u64::try_from(bytes)
                    .map(Size)
                    .map_err(|_| E::custom(format!("{bytes} is not a size: it is negative")))
            }
        }

        deserializer.deserialize_any(SizeVisitor)
    }
}

/// A size as written on the command line and what it means.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SizeArg {
    /// What the user wrote, for messages.
    pub text: String,
    /// Its value in bytes.
    pub bytes: u64,
}

/// Parses a size and keeps its spelling, for flags whose errors quote it.
pub fn parse_size_arg(text: &str) -> Result<SizeArg, String> {
    Ok(SizeArg {
        text: text.trim().to_owned(),
        bytes: parse_size(text)?,
    })
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

/// Writes bytes exactly, as a command-line size: the largest binary unit
/// that divides them (`3906248KiB`, `4GiB`, `4097`).
pub fn format_size_exact(bytes: u64) -> String {
    const UNITS: [(&str, u32); 4] = [("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)];
    for (unit, shift) in UNITS {
        if bytes != 0 && bytes.trailing_zeros() >= shift {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    bytes.to_string()
}

/// Checks that a region's `size` (as written, `text`) is a non-zero multiple
/// of `page_size`; the error names the nearest multiples, and the binary
/// spelling when a decimal unit was the cause (`4GB` for `4GiB`).
pub fn check_region_size(text: &str, size: u64, page_size: u64) -> Result<(), String> {
    assert!(page_size > 0, "page sizes are checked to be non-zero first");
    if size == 0 {
        return Err(format!(
            "--size {text} is zero: a region holds at least one page ({})",
            format_size_exact(page_size)
        ));
    }
    if size.is_multiple_of(page_size) {
        return Ok(());
    }
    let below = size / page_size * page_size;
    let above = below.checked_add(page_size);
    let mut suggestions: Vec<String> = Vec::new();
    // A decimal unit where a binary one was meant is the usual cause.
    let trimmed = text.trim();
    let split = trimmed.len().saturating_sub(2);
    if let (Some(number), Some(unit)) = (trimmed.get(..split), trimmed.get(split..))
        && let Some(decimal) = ["KB", "MB", "GB", "TB"]
            .iter()
            .find(|decimal| decimal.eq_ignore_ascii_case(unit))
    {
        let binary = format!("{}{}iB", number.trim(), &decimal[..1]);
        if parse_size(&binary).is_ok_and(|bytes| bytes.is_multiple_of(page_size)) {
            suggestions.push(binary);
        }
    }
    if below > 0 {
        suggestions.push(format_size_exact(below));
    }
    if let Some(above) = above {
        suggestions.push(format_size_exact(above));
    }
    Err(format!(
        "--size {text} ({size} bytes) is not a multiple of the page size ({}); try {}",
        format_size_exact(page_size),
        suggestions.join(" or ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Guards the accepted spellings, one meaning each, and the errors for
    // bad ones.
    #[test]
    fn parses_units_and_rejects_garbage() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("4096B"), Ok(4096));
        assert_eq!(parse_size("4KiB"), Ok(4096));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("64mib"), Ok(64 << 20));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("1TiB"), Ok(1 << 40));
        assert_eq!(parse_size("1KB"), Ok(1_000));
        assert_eq!(parse_size("1kB"), Ok(1_000));
        assert_eq!(parse_size("1MB"), Ok(1_000_000));
        assert_eq!(parse_size("4GB"), Ok(4_000_000_000));
        assert_eq!(parse_size("1TB"), Ok(1_000_000_000_000));
        assert!(parse_size("").is_err());
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("12XB").unwrap_err().contains("unknown unit"));
        assert!(parse_size("99999999999999999999").is_err());
        assert!(parse_size("99999999TiB").unwrap_err().contains("too large"));
    }

    // Guards against `4G` silently meaning GiB: every bare letter is refused
    // with both spellings suggested.
    #[test]
    fn refuses_ambiguous_units() {
        for (text, binary, decimal) in [
            ("4G", "4GiB", "4GB"),
            ("4g", "4GiB", "4GB"),
            ("16K", "16KiB", "16KB"),
            ("64M", "64MiB", "64MB"),
            ("1T", "1TiB", "1TB"),
        ] {
            let error = parse_size(text).unwrap_err();
            assert!(error.contains("ambiguous"), "{error}");
            assert!(error.contains(binary), "{error}");
            assert!(error.contains(decimal), "{error}");
        }
    }

    // Guards the advice for a size that is not a multiple of the page size.
    #[test]
    fn region_size_suggests_multiples() {
        assert_eq!(check_region_size("4GiB", 4 << 30, 4096), Ok(()));
        let error = check_region_size("4GB", 4_000_000_000, 4096).unwrap_err();
        assert!(
            error.contains("not a multiple of the page size (4KiB)"),
            "{error}"
        );
        assert!(
            error.contains("try 4GiB or 3906248KiB or 3906252KiB"),
            "{error}"
        );
        let error = check_region_size("10000", 10_000, 4096).unwrap_err();
        assert!(error.contains("try 8KiB or 12KiB"), "{error}");
        let error = check_region_size("100", 100, 4096).unwrap_err();
        assert!(error.contains("try 4KiB"), "{error}");
        assert!(
            check_region_size("0", 0, 4096)
                .unwrap_err()
                .contains("zero")
        );
    }

    #[test]
    fn formats_bytes() {
        assert_eq!(format_bytes(512), "512 B");
        assert_eq!(format_bytes(64 << 20), "64.0 MiB");
        assert_eq!(format_size_exact(4 << 30), "4GiB");
        assert_eq!(format_size_exact(3_999_997_952), "3906248KiB");
        assert_eq!(format_size_exact(4097), "4097");
        assert_eq!(format_size_exact(0), "0");
    }
}
