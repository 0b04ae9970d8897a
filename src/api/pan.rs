//! No full card number (PAN) is ever stored, logged or published (`mqtt-api.md`:
//! Durability promise 10): any run of 13–19 digits that passes the Luhn check — written
//! straight, or in groups separated by single spaces or dashes — is masked to its first
//! 6 and last 4 digits before a device answer is kept or sent.
//!
//! A run longer than 19 digits (a numeric UUID, a long reference) is not a card number
//! and is left alone; so are shorter ones (RRNs, approval codes).

use std::borrow::Cow;

use serde_json::Value;

const MIN: usize = 13;
const MAX: usize = 19;

/// `s` with every card number in it masked (`4111111111111111` → `411111******1111`).
pub fn mask_str(s: &str) -> Cow<'_, str> {
    let chars: Vec<char> = s.chars().collect();
    let mut out: Option<Vec<char>> = None;
    let mut i = 0;
    while i < chars.len() {
        if !chars[i].is_ascii_digit() || (i > 0 && chars[i - 1].is_ascii_digit()) {
            i += 1;
            continue;
        }
        // A span of digit groups joined by single separators; every window of whole
        // groups is a candidate (so `12 4111 1111 1111 1111` still finds the card).
        let start = i;
        let mut end = i;
        let mut groups: Vec<Vec<usize>> = vec![Vec::new()];
        while end < chars.len() {
            let c = chars[end];
            if c.is_ascii_digit() {
                if let Some(g) = groups.last_mut() {
                    g.push(end);
                }
                end += 1;
            } else if (c == ' ' || c == '-')
                && end + 1 < chars.len()
                && chars[end + 1].is_ascii_digit()
                && end > start
            {
                groups.push(Vec::new());
                end += 1;
            } else {
                break;
            }
        }
        for a in 0..groups.len() {
            let mut digits: Vec<usize> = Vec::new();
            for g in &groups[a..] {
                digits.extend_from_slice(g);
                if digits.len() > MAX {
                    break;
                }
                if digits.len() >= MIN && luhn(digits.iter().map(|&p| chars[p])) {
                    let o = out.get_or_insert_with(|| chars.clone());
                    for &p in &digits[6..digits.len() - 4] {
                        o[p] = '*';
                    }
                }
            }
        }
        i = end.max(start + 1);
    }
    match out {
        Some(o) => Cow::Owned(o.into_iter().collect()),
        None => Cow::Borrowed(s),
    }
}

/// Whether a field holds a device's own reference, which the agent needs intact to ask the
/// device again (a Kaspi `processId` is a 13-digit millisecond count, and one in ten such
/// numbers passes the Luhn check): `…id`, `ref`, `rrn`, `orderNumber`. A card number is
/// never sent as one of those.
pub fn is_reference_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    k.ends_with("id") || matches!(k.as_str(), "ref" | "rrn" | "ordernumber" | "order_number")
}

/// Mask every card number in every string of `v` (but in reference fields, see
/// [`is_reference_key`]), and turn a JSON number that is one into its masked string.
pub fn mask_value(v: &mut Value) {
    match v {
        Value::String(s) => {
            if let Cow::Owned(m) = mask_str(s) {
                *s = m;
            }
        }
        Value::Number(n) => {
            let text = n.to_string();
            if let Cow::Owned(m) = mask_str(&text) {
                *v = Value::String(m);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(mask_value),
        Value::Object(o) => {
            o.iter_mut().filter(|(k, _)| !is_reference_key(k)).for_each(|(_, v)| mask_value(v))
        }
        Value::Bool(_) | Value::Null => {}
    }
}

fn luhn(digits: impl DoubleEndedIterator<Item = char>) -> bool {
    let mut sum = 0u32;
    for (i, c) in digits.rev().enumerate() {
        let Some(mut d) = c.to_digit(10) else {
            return false;
        };
        if i % 2 == 1 {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
    }
    sum % 10 == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn card_numbers_are_masked_wherever_they_hide() {
        assert_eq!(mask_str("4111111111111111"), "411111******1111");
        assert_eq!(mask_str("card 4111 1111 1111 1111 ok"), "card 4111 11** **** 1111 ok");
        assert_eq!(mask_str("4111-1111-1111-1111"), "4111-11**-****-1111");
        // Track 2: the PAN ends at the separator.
        assert_eq!(
            mask_str(";4111111111111111=25121010000000000000?"),
            ";411111******1111=25121010000000000000?"
        );
        // 13 and 19 digits (Luhn-valid).
        assert_eq!(mask_str("4222222222222"), "422222***2222");
        assert_eq!(mask_str("6011111111111111110"), "601111*********1110");
    }

    #[test]
    fn a_card_beside_other_numbers_is_still_found() {
        assert_eq!(mask_str("qty 12 4111 1111 1111 1111"), "qty 12 4111 11** **** 1111");
    }

    #[test]
    fn other_numbers_are_left_alone() {
        for s in [
            "4111111111111112",                     // fails Luhn
            "307208187011",                         // an RRN: 12 digits
            "123456789012345678901234",             // too long to be a card
            "12345678-1234-1234-1234-123456789012", // a numeric UUID
            "440043*****6389",                      // already a mask
            "T000005267932",
        ] {
            assert_eq!(mask_str(s), s, "{s}");
        }
    }

    #[test]
    fn json_values_are_masked_deep_and_numbers_become_strings() {
        let mut v = json!({"a": [{"pan": "5555555555554444"}], "n": 4111111111111111u64, "k": 12});
        mask_value(&mut v);
        assert_eq!(v["a"][0]["pan"], "555555******4444");
        assert_eq!(v["n"], "411111******1111");
        assert_eq!(v["k"], 12);
    }

    #[test]
    fn device_references_stay_intact() {
        // A Kaspi processId (epoch milliseconds) that happens to pass the Luhn check.
        assert_eq!(mask_str("1678090451701"), "167809***1701");
        let mut v = json!({"processId": "1678090451701", "data": {"transactionId": "1678090451701",
            "ref": "1678090451701", "message": "1678090451701"}});
        mask_value(&mut v);
        assert_eq!(v["processId"], "1678090451701");
        assert_eq!(v["data"]["transactionId"], "1678090451701");
        assert_eq!(v["data"]["ref"], "1678090451701");
        assert_eq!(v["data"]["message"], "167809***1701", "free text is still masked");
    }
}
