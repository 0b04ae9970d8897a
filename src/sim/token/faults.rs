//! Fault knobs: the [`Knobs`] a test flips through `SimControl::set`, and the choice of
//! how the next sale result is spoiled (lost, garbled, foreign) — from the knobs first,
//! else drawn against `lose_rate` and `garble_rate` from the device's own seeded generator.

use super::device::{SimOptions, State};
use crate::sim::faults::{draw_fault, AnswerFault};

/// Fault knobs, each applying to the next occasion (cleared when used unless noted).
#[derive(Debug, Clone, Default)]
pub struct Knobs {
    /// Answer the next basket with a type 60 carrying this text instead of `1 OK`.
    pub error_next_basket: Option<String>,
    /// Answer the next basket with `1 OK` then type 9 (not processed) and no sale.
    pub not_processed_next: bool,
    /// The next basket is cancelled by the customer (type 3 status -1, no sale).
    pub cancel_next: bool,
    /// After `1 OK` for the next basket, drop the link; the sale still completes.
    pub drop_link_mid_sale: bool,
    /// Sticky: results that could not be delivered are sent after the next handshake.
    pub redeliver_after_reconnect: bool,
    /// Corrupt the CRC of the next frame sent.
    pub corrupt_next_crc: bool,
    /// Sticky: sign the challenge wrongly.
    pub bad_signature: bool,
    /// Sticky: answer `4 OK` right after the certificate instead of late (after the
    /// host's key switch, as in the vendor log).
    pub early_hello_ok: bool,
    /// The next basket sold: `1 OK` is sent, the sale completes, but its type 3 result
    /// is never sent; the link stays up. Cleared by the next sale.
    pub lose_next_result: bool,
    /// The next basket sold: its type 3 result is sent in a valid frame whose JSON is cut
    /// short (the first half of the text). Cleared by the next sale.
    pub garble_next_result: bool,
    /// The next basket sold: its type 3 result carries another (non-empty) `basketID`,
    /// `other-<id>`. Cleared by the next sale.
    pub foreign_next_result: bool,
    /// The next basket sold: a careless firmware puts the full card number and track 2
    /// data in its type 3 payment item (the host must mask both).
    pub card_number_next: bool,
}

/// Mixed into the seed for the result-fault generator (any constant would do).
pub(super) const FAULT_SEED_MIX: u64 = 0x5eed_fa17_0000_0003;

impl State {
    /// The spoiling of the sale result about to go out: the knobs first (lose, garble,
    /// foreign), else one draw against the rates (none while both are 0).
    pub(super) fn take_result_fault(&mut self, opts: &SimOptions) -> Option<AnswerFault> {
        let k = &mut self.knobs;
        let knob = [
            (std::mem::take(&mut k.lose_next_result), AnswerFault::Lose),
            (std::mem::take(&mut k.garble_next_result), AnswerFault::Garble),
            (std::mem::take(&mut k.foreign_next_result), AnswerFault::Foreign),
        ]
        .into_iter()
        .find_map(|(on, f)| on.then_some(f));
        if knob.is_some() {
            return knob;
        }
        draw_fault(self.fault_rng.as_mut()?, opts.lose_rate, opts.garble_rate)
    }
}
