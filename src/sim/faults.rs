//! The seeded randomness and the fault-rate knobs the device simulators share (`sim ip`,
//! `sim token`, `sim kaspi`): rates checked to lie in [0, 1], generators seeded from the
//! run's `seed` (one per purpose, apart so the outcomes of a seed stay put whatever else
//! is drawn), and the draw that decides whether the answer of an operation that did run
//! is lost or garbled on its way back.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// How the first delivery of an answer (IP terminal) or result (Token register) is
/// spoiled on the wire; the operation ran and the books keep the real answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AnswerFault {
    /// Never arrives (the connection closes, or the result is not sent).
    Lose,
    /// Arrives with its JSON cut short (its first half).
    Garble,
    /// Arrives well-formed, for another operation (`other-<id>`).
    Foreign,
}

/// `Err` names the first rate outside [0, 1] (NaN included): `"{name} must be within
/// [0, 1], got {rate}"`.
pub(crate) fn check_rates(rates: &[(&str, f64)]) -> Result<(), String> {
    match rates.iter().find(|(_, rate)| !(0.0..=1.0).contains(rate)) {
        Some((name, rate)) => Err(format!("{name} must be within [0, 1], got {rate}")),
        None => Ok(()),
    }
}

/// A generator seeded from `seed ^ mix` (each purpose mixes its own constant, `0` for the
/// main one), or from OS entropy when the run has no seed.
pub(crate) fn seeded(seed: Option<u64>, mix: u64) -> StdRng {
    match seed {
        Some(seed) => StdRng::seed_from_u64(seed ^ mix),
        None => StdRng::from_os_rng(),
    }
}

/// One draw against the rates: below `lose_rate` lost, below `lose_rate + garble_rate`
/// garbled, else delivered. Nothing is drawn while both rates are 0.
pub(crate) fn draw_fault(
    rng: &mut StdRng, lose_rate: f64, garble_rate: f64,
) -> Option<AnswerFault> {
    if lose_rate <= 0.0 && garble_rate <= 0.0 {
        return None;
    }
    let draw: f64 = rng.random();
    if draw < lose_rate {
        Some(AnswerFault::Lose)
    } else if draw < lose_rate + garble_rate {
        Some(AnswerFault::Garble)
    } else {
        None
    }
}
