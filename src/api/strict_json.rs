//! JSON objects with a key given twice are refused (`mqtt-api.md`: Signed commands): a
//! signer and the agent must read the same bytes the same way, and parsers disagree on
//! which of two equal keys wins (serde_json takes the last, others the first).

use std::collections::HashSet;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

/// The first key found twice in one object of `bytes`, if any. Malformed JSON is not this
/// check's business (`None`): the parser that follows reports it.
pub fn duplicate_key(bytes: &[u8]) -> Option<String> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    match Check.deserialize(&mut de) {
        Err(e) => {
            let msg = e.to_string();
            msg.strip_prefix(PREFIX)
                .map(|rest| rest.split(" at line ").next().unwrap_or(rest).to_string())
        }
        Ok(()) => None,
    }
}

const PREFIX: &str = "duplicate key ";

#[derive(Clone, Copy)]
struct Check;

impl<'de> DeserializeSeed<'de> for Check {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Check {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(key.clone()) {
                return Err(serde::de::Error::custom(format!("{PREFIX}{key:?}")));
            }
            map.next_value_seed(Check)?;
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Check)?.is_some() {}
        Ok(())
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_keys_are_found_at_any_depth() {
        assert_eq!(duplicate_key(br#"{"a":1,"b":2}"#), None);
        assert_eq!(
            duplicate_key(br#"{"id":"x","amount":1,"amount":100000}"#).as_deref(),
            Some("\"amount\"")
        );
        assert_eq!(
            duplicate_key(br#"{"basket":{"items":[{"price":1,"price":2}]}}"#).as_deref(),
            Some("\"price\"")
        );
        // Equal keys in different objects are fine; escapes are compared decoded.
        assert_eq!(duplicate_key(br#"{"a":{"k":1},"b":{"k":2}}"#), None);
        assert_eq!(duplicate_key(br#"{"id":1,"\u0069d":2}"#).as_deref(), Some("\"id\""));
        assert_eq!(duplicate_key(b"{not json"), None);
    }
}
