//! How values are written in the file: `""` means "not set" (`None` in the types), and
//! durations are humantime strings (`"120s"`, `"5m"`), read and written back that way.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// A default of `N` seconds: `#[serde(default = "secs::<30>", with = "duration_str")]`.
pub(super) fn secs<const N: u64>() -> Duration {
    Duration::from_secs(N)
}

/// config.md writes "not set" as `""`; the typed config says `None`.
pub(super) fn non_empty<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: From<String>,
{
    let text: Option<String> = Option::deserialize(d)?;
    Ok(text.filter(|s| !s.is_empty()).map(T::from))
}

/// Durations are humantime strings in the file (`"120s"`, `"5m"`) and in `check` output.
pub(super) mod duration_str {
    use std::time::Duration;

    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(text.trim()).map_err(|e| {
            D::Error::custom(format!(
                "invalid duration {text:?} ({e}); write e.g. \"30s\" or \"5m\""
            ))
        })
    }

    pub fn serialize<S: Serializer>(value: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*value))
    }
}
