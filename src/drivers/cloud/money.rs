//! Minor units ⇄ decimal text, exactly (never through floating point).
//!
//! The MQTT contract carries integer minor units; Paywall wants a JSON decimal and Kuveyt
//! a decimal string, both with exactly the currency's exponent (`paywall.md`: Decisions).

/// ISO 4217 exponent of the currencies posbridge's cloud terminals may see. A currency
/// not listed is refused before any request: guessing its exponent could charge 100×.
pub fn exponent(currency: &str) -> Option<u32> {
    Some(match currency {
        "TRY" | "EUR" | "USD" | "GBP" | "AZN" | "KZT" | "RUB" | "UZS" | "GEL" => 2,
        "JPY" | "KRW" => 0,
        "KWD" | "BHD" | "OMR" | "JOD" | "TND" => 3,
        _ => return None,
    })
}

/// `2250, 2` → `"22.50"`; `7, 3` → `"0.007"`; `22, 0` → `"22"`. Negative amounts keep
/// their sign.
pub fn format_minor(minor: i64, exp: u32) -> String {
    let sign = if minor < 0 { "-" } else { "" };
    let abs = minor.unsigned_abs();
    if exp == 0 {
        return format!("{sign}{abs}");
    }
    let scale = 10u64.pow(exp);
    format!("{sign}{}.{:0width$}", abs / scale, abs % scale, width = exp as usize)
}

/// `"22.50"` (or `22.5`, `22`) with exponent 2 → `2250`. More fraction digits than the
/// exponent (other than trailing zeros), exponents, signs other than a leading `-`, or
/// anything but digits is an error naming what is wrong.
pub fn parse_decimal(text: &str, exp: u32) -> Result<i64, String> {
    let t = text.trim();
    let (neg, t) = match t.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, t),
    };
    let (int, frac) = match t.split_once('.') {
        Some((i, f)) => (i, f),
        None => (t, ""),
    };
    if int.is_empty() || !int.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{text:?} is not a decimal amount"));
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) || (t.contains('.') && frac.is_empty()) {
        return Err(format!("{text:?} is not a decimal amount"));
    }
    let frac = frac.trim_end_matches('0');
    if frac.len() > exp as usize {
        return Err(format!("{text:?} has more than {exp} decimal places for this currency"));
    }
    let scale = 10i64.pow(exp);
    let whole: i64 = int.parse().map_err(|_| format!("{text:?} is out of range"))?;
    let mut fraction: i64 = 0;
    if !frac.is_empty() {
        let padded = format!("{frac:0<width$}", width = exp as usize);
        fraction = padded.parse().map_err(|_| format!("{text:?} is not a decimal amount"))?;
    }
    let v = whole
        .checked_mul(scale)
        .and_then(|w| w.checked_add(fraction))
        .ok_or_else(|| format!("{text:?} is out of range"))?;
    Ok(if neg { -v } else { v })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_exactly_with_the_currency_exponent() {
        assert_eq!(format_minor(2200, 2), "22.00");
        assert_eq!(format_minor(2250, 2), "22.50");
        assert_eq!(format_minor(1, 2), "0.01");
        assert_eq!(format_minor(0, 2), "0.00");
        assert_eq!(format_minor(7, 3), "0.007");
        assert_eq!(format_minor(1500, 0), "1500");
        assert_eq!(format_minor(-105, 2), "-1.05");
        // Far beyond f64's exact integers: still exact.
        assert_eq!(format_minor(i64::MAX, 2), "92233720368547758.07");
        assert_eq!(format_minor(i64::MIN, 2), "-92233720368547758.08");
    }

    #[test]
    fn parses_back_exactly() {
        for (minor, exp) in [(2200, 2), (1, 2), (7, 3), (1500, 0), (9_007_199_254_740_993, 2)] {
            assert_eq!(parse_decimal(&format_minor(minor, exp), exp), Ok(minor));
        }
        assert_eq!(parse_decimal("22", 2), Ok(2200));
        assert_eq!(parse_decimal("22.5", 2), Ok(2250));
        assert_eq!(parse_decimal("22.500", 2), Ok(2250));
        assert!(parse_decimal("22.505", 2).is_err());
        assert!(parse_decimal("1e3", 2).is_err());
        assert!(parse_decimal("", 2).is_err());
        assert!(parse_decimal("22.", 2).is_err());
        assert!(parse_decimal(".5", 2).is_err());
        assert!(parse_decimal("+1", 2).is_err());
        assert!(parse_decimal("99999999999999999999", 2).is_err());
    }

    #[test]
    fn unknown_currency_has_no_exponent() {
        assert_eq!(exponent("TRY"), Some(2));
        assert_eq!(exponent("JPY"), Some(0));
        assert_eq!(exponent("KWD"), Some(3));
        assert_eq!(exponent("XXX"), None);
    }
}
