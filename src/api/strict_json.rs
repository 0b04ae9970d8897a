//! JSON objects with a key given twice are refused (`mqtt-api.md`: Signed commands): a
//! signer and the agent must read the same bytes the same way, and parsers disagree on
//! which of two equal keys wins (serde_json takes the last, others the first).
//!
//! [`parse`] reads a payload into a [`Value`] and finds a key given twice in the same
//! pass: a command is parsed once, not once for the value and again for the check
//! (`docs/performance.md`, seventeenth measurement).

use std::cell::RefCell;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::map::Entry;
use serde_json::{Map, Number, Value};

/// Why a payload is not a strict JSON value.
#[derive(Debug)]
pub enum Strict {
    /// Not JSON at all (serde_json's error, with its line and column).
    Invalid(serde_json::Error),
    /// Valid JSON with this key (quoted, as JSON writes it) twice in one object: the first
    /// found.
    Duplicate(String),
}

/// `bytes` as one JSON value, refused when not JSON or when an object at any depth holds
/// a key twice. Keys are compared decoded (`"id"` and `"\u0069d"` are the same key).
pub fn parse(bytes: &[u8]) -> Result<Value, Strict> {
    let duplicate = RefCell::new(None);
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let parsed = StrictValue(&duplicate).deserialize(&mut de).and_then(|v| de.end().map(|()| v));
    match (parsed, duplicate.into_inner()) {
        (_, Some(key)) => Err(Strict::Duplicate(key)),
        (Ok(v), None) => Ok(v),
        (Err(e), None) => Err(Strict::Invalid(e)),
    }
}

/// A [`Value`] builder that stops at the first key given twice, noting it in the cell
/// (serde's error type cannot carry it, only a message).
#[derive(Clone, Copy)]
struct StrictValue<'a>(&'a RefCell<Option<String>>);

impl<'de> DeserializeSeed<'de> for StrictValue<'_> {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StrictValue<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut obj = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            // The key is checked before its value is read: the key found twice is named,
            // not one inside its second value.
            match obj.entry(key) {
                Entry::Vacant(slot) => {
                    slot.insert(map.next_value_seed(self)?);
                }
                Entry::Occupied(taken) => {
                    let quoted = format!("{:?}", taken.key());
                    let msg = format!("duplicate key {quoted}");
                    *self.0.borrow_mut() = Some(quoted);
                    return Err(serde::de::Error::custom(msg));
                }
            }
        }
        Ok(Value::Object(obj))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(v) = seq.next_element_seed(self)? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }

    fn visit_bool<E>(self, b: bool) -> Result<Value, E> {
        Ok(Value::Bool(b))
    }
    fn visit_i64<E>(self, n: i64) -> Result<Value, E> {
        Ok(Value::Number(n.into()))
    }
    fn visit_u64<E>(self, n: u64) -> Result<Value, E> {
        Ok(Value::Number(n.into()))
    }
    fn visit_f64<E>(self, n: f64) -> Result<Value, E> {
        // JSON text has no NaN or infinity; serde_json's own Value maps them to null too.
        Ok(Number::from_f64(n).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, s: &str) -> Result<Value, E> {
        Ok(Value::String(s.to_owned()))
    }
    fn visit_string<E>(self, s: String) -> Result<Value, E> {
        Ok(Value::String(s))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first key found twice in one object of `bytes`, if any (malformed JSON: `None`).
    fn duplicate_key(bytes: &[u8]) -> Option<String> {
        match parse(bytes) {
            Err(Strict::Duplicate(key)) => Some(key),
            _ => None,
        }
    }

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
        assert_eq!(duplicate_key(br#"{"a":1,"a":{"b":1,"b":2}}"#).as_deref(), Some("\"a\""));
    }

    /// The one-pass value is serde_json's own value for every kind of JSON, and what
    /// serde_json refuses (trailing bytes, bad syntax, too deep) is refused here too.
    #[test]
    fn the_value_is_serde_jsons_and_bad_json_is_refused_alike() {
        let samples: &[&str] = &[
            r#"{"v":1,"id":"a-1","op":"payment","amount":1500,"neg":-3,"f":1.25,"big":18446744073709551615}"#,
            r#"{"s":"\u00e9\n\"q\"","t":true,"f":false,"n":null,"a":[1,[2,{"x":[]}],{}],"e":""}"#,
            r#"  [1, 2.5e3, -0.0, "x"]  "#,
            "\"just a string\"",
            "42",
            "null",
        ];
        for s in samples {
            let ours = parse(s.as_bytes()).expect("valid");
            let theirs: Value = serde_json::from_slice(s.as_bytes()).expect("valid");
            assert_eq!(ours, theirs, "{s}");
        }
        let deep = "[".repeat(200) + &"]".repeat(200);
        for bad in ["{not json", r#"{"a":1} x"#, r#"{"a":1,}"#, "", "[1,2", deep.as_str()] {
            let theirs = serde_json::from_slice::<Value>(bad.as_bytes()).expect_err("invalid");
            match parse(bad.as_bytes()) {
                Err(Strict::Invalid(e)) => assert_eq!(e.to_string(), theirs.to_string(), "{bad}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
    }
}
