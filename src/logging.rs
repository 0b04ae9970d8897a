//! Log output: journald under systemd, human text on a terminal, JSON lines on request
//! (`log.format`, spec/config.md).
//!
//! Nothing here decides what is logged: secrets never reach a log call (config masking,
//! `secrets::Secret` redacts itself). This module only picks the sink and maps levels.

use std::io::IsTerminal;

use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

use crate::config::LogFormat;

/// journald's native socket; `tracing-journald` fails with `NotFound` without it.
pub const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

/// The sink actually used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sink {
    Journald,
    /// Text on stderr; `ansi` when stderr is a terminal.
    Text {
        ansi: bool,
    },
    Json,
}

/// What the environment looks like, for [`choose`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Env {
    /// `JOURNAL_STREAM` is set: systemd connected stderr to the journal.
    pub journal_stream: bool,
    /// journald's socket exists.
    pub journal_socket: bool,
    pub stderr_tty: bool,
}

impl Env {
    pub fn detect() -> Env {
        Env {
            journal_stream: std::env::var_os("JOURNAL_STREAM").is_some_and(|v| !v.is_empty()),
            journal_socket: std::path::Path::new(JOURNAL_SOCKET).exists(),
            stderr_tty: std::io::stderr().is_terminal(),
        }
    }
}

/// Picks the sink; the second value is a warning to log once logging is up (journald was
/// asked for but is not there).
pub fn choose(format: LogFormat, env: Env) -> (Sink, Option<String>) {
    let text = Sink::Text { ansi: env.stderr_tty };
    let want_journald = match format {
        LogFormat::Json => return (Sink::Json, None),
        LogFormat::Text => return (text, None),
        LogFormat::Journald => true,
        // Under systemd stderr already goes to the journal, but as one undifferentiated
        // priority; the native protocol keeps levels and fields.
        LogFormat::Auto => env.journal_stream && !env.stderr_tty,
    };
    if !want_journald {
        return (text, None);
    }
    if env.journal_socket {
        (Sink::Journald, None)
    } else {
        (
            text,
            Some(format!(
                "log.format: journald is not available ({JOURNAL_SOCKET} is missing); logging text to stderr"
            )),
        )
    }
}

/// The filter: `RUST_LOG` wins over `log.level`; noisy dependencies are kept quiet unless
/// asked for (sled logs at TRACE/DEBUG). Both are lists of `level` and `target=level`
/// directives (`tracing_subscriber::filter::Targets`: no regex engine in the binary).
pub fn filter(level: &str) -> Targets {
    if let Some(t) = std::env::var("RUST_LOG").ok().and_then(|v| v.parse::<Targets>().ok()) {
        return t;
    }
    format!("sled=warn,rumqttd=off,rumqttc=warn,{level}")
        .parse()
        .unwrap_or_else(|_| {
            eprintln!("posbridge: log.level {level:?} is not a list of level or target=level directives; using info");
            Targets::new()
                .with_default(tracing::Level::INFO)
                .with_target("sled", tracing::Level::WARN)
                .with_target("rumqttd", tracing_subscriber::filter::LevelFilter::OFF)
                .with_target("rumqttc", tracing::Level::WARN)
        })
}

/// Whether `level` is a valid `log.level` (config validation).
pub fn is_valid_filter(level: &str) -> bool {
    level.parse::<Targets>().is_ok()
}

/// journald priorities: error→err(3), warn→warning(4), info→info(6), debug/trace→debug(7).
/// (tracing-journald's default puts INFO at `notice`, which makes every routine line stand
/// out in `journalctl -p notice`.)
fn priorities() -> tracing_journald::PriorityMappings {
    use tracing_journald::Priority;
    tracing_journald::PriorityMappings {
        error: Priority::Error,
        warn: Priority::Warning,
        info: Priority::Informational,
        debug: Priority::Debug,
        trace: Priority::Debug,
    }
}

/// Install the global subscriber. Returns the sink in use. Safe to call once per process;
/// a second call is ignored (the first subscriber stays).
pub fn init(format: LogFormat, level: &str) -> Sink {
    let (mut sink, mut warning) = choose(format, Env::detect());
    let filter = filter(level);
    let registry = tracing_subscriber::registry();
    let result = match sink {
        Sink::Journald => match tracing_journald::layer() {
            Ok(layer) => registry
                .with(
                    layer
                        .with_syslog_identifier("posbridge".into())
                        .with_priority_mappings(priorities())
                        .with_filter(filter),
                )
                .try_init(),
            Err(e) => {
                sink = Sink::Text { ansi: std::io::stderr().is_terminal() };
                warning = Some(format!(
                    "log.format: cannot talk to journald ({e}); logging text to stderr"
                ));
                registry.with(text_layer(false).with_filter(filter)).try_init()
            }
        },
        Sink::Text { ansi } => registry.with(text_layer(ansi).with_filter(filter)).try_init(),
        Sink::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::io::stderr)
                    .with_filter(filter),
            )
            .try_init(),
    };
    if result.is_ok() {
        if let Some(w) = warning {
            tracing::warn!("{w}");
        }
    }
    sink
}

fn text_layer<S>(ansi: bool) -> impl Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    tracing_subscriber::fmt::layer().with_ansi(ansi).with_writer(std::io::stderr)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(journal_stream: bool, journal_socket: bool, stderr_tty: bool) -> Env {
        Env { journal_stream, journal_socket, stderr_tty }
    }

    /// `choose` over (format, journal stream, journal socket, stderr a terminal) → sink,
    /// for the cases without a warning.
    fn assert_chosen(cases: &[(LogFormat, (bool, bool, bool), Sink)]) {
        for &(format, (stream, socket, tty), want) in cases {
            assert_eq!(
                choose(format, env(stream, socket, tty)),
                (want, None),
                "{format:?} stream={stream} socket={socket} tty={tty}"
            );
        }
    }

    #[test]
    fn auto_uses_journald_under_systemd_and_text_elsewhere() {
        assert_chosen(&[
            (LogFormat::Auto, (true, true, false), Sink::Journald),
            // On a terminal (someone ran it by hand inside a unit's environment): text.
            (LogFormat::Auto, (true, true, true), Sink::Text { ansi: true }),
            (LogFormat::Auto, (false, true, false), Sink::Text { ansi: false }),
            (LogFormat::Auto, (false, false, true), Sink::Text { ansi: true }),
        ]);
    }

    #[test]
    fn journald_without_its_socket_falls_back_to_text_with_a_warning() {
        let (sink, warning) = choose(LogFormat::Journald, env(false, false, false));
        assert_eq!(sink, Sink::Text { ansi: false });
        assert!(warning.expect("warning").contains(JOURNAL_SOCKET));
        let (sink, warning) = choose(LogFormat::Auto, env(true, false, false));
        assert_eq!(sink, Sink::Text { ansi: false });
        assert!(warning.is_some());
        assert_chosen(&[(LogFormat::Journald, (false, true, true), Sink::Journald)]);
    }

    #[test]
    fn explicit_formats_win() {
        assert_chosen(&[
            (LogFormat::Json, (true, true, false), Sink::Json),
            (LogFormat::Text, (true, true, false), Sink::Text { ansi: false }),
        ]);
    }

    #[test]
    fn info_is_not_notice_in_the_journal() {
        let p = priorities();
        assert_eq!(p.info as u8, b'6');
        assert_eq!(p.warn as u8, b'4');
        assert_eq!(p.error as u8, b'3');
        assert_eq!(p.debug as u8, b'7');
    }
}

#[cfg(test)]
mod filter_tests {
    use super::*;

    #[test]
    fn log_level_takes_levels_and_target_directives_only() {
        for ok in ["info", "debug,sled=warn", "warn,posbridge::drivers=debug", "off"] {
            assert!(is_valid_filter(ok), "{ok}");
        }
        for bad in ["sled=loud", "info,rumqttc=chatty"] {
            assert!(!is_valid_filter(bad), "{bad}");
        }
        // The user's directive for a noisy dependency wins over the default for it.
        let t = filter("info,sled=debug");
        assert!(t.would_enable("sled::tree", &tracing::Level::DEBUG));
        assert!(!t.would_enable("rumqttc::state", &tracing::Level::INFO));
    }
}
