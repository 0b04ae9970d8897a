//! The contract's identifiers and money as types (`mqtt-api.md`: Commands): a value of
//! one of these has passed its check, so code that holds one never checks again.

use std::fmt;

use serde::{Deserialize, Serialize};

macro_rules! checked_string {
    ($(#[$doc:meta])* $name:ident, $check:path, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// `None` unless `s` passes the check.
            pub fn parse(s: &str) -> Option<Self> {
                $check(s).then(|| $name(s.to_string()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl std::ops::Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl TryFrom<String> for $name {
            type Error = String;
            fn try_from(s: String) -> Result<Self, String> {
                if $check(&s) {
                    Ok($name(s))
                } else {
                    Err(format!("{s:?} is not {}", $what))
                }
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }
    };
}

checked_string!(
    /// A command's `id`: `[A-Za-z0-9._:-]{1,64}`.
    RequestId,
    super::is_valid_request_id,
    "a request id (1-64 characters of [A-Za-z0-9._:-])"
);

checked_string!(
    /// A terminal's (or an agent's) id: `[A-Za-z0-9_-]{1,64}`.
    TerminalId,
    super::is_valid_name,
    "a terminal id (1-64 characters of [A-Za-z0-9_-])"
);

checked_string!(
    /// An ISO 4217 currency code: three capital letters.
    Currency,
    is_currency,
    "an ISO 4217 code (3 capital letters)"
);

fn is_currency(s: &str) -> bool {
    s.len() == 3 && s.bytes().all(|b| b.is_ascii_uppercase())
}

/// An amount of money: a positive number of minor units (kuruş, tiyn, qəpik…) in a currency.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Money {
    pub minor: i64,
    pub currency: Currency,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checked_on_the_way_in_including_from_json() {
        assert!(RequestId::parse("pos-1:a.b_c").is_some());
        assert!(RequestId::parse("has space").is_none());
        assert!(TerminalId::parse("ip-1").is_some());
        assert!(TerminalId::parse("ip.1").is_none());
        assert!(Currency::parse("AZN").is_some());
        assert!(Currency::parse("azn").is_none());
        let id: RequestId = serde_json::from_str("\"x-1\"").expect("valid");
        assert_eq!(id, "x-1");
        assert!(serde_json::from_str::<RequestId>("\"\"").is_err());
        assert_eq!(serde_json::to_string(&id).expect("json"), "\"x-1\"");
    }
}
