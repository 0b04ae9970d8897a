//! Hotplug: which bus events concern this terminal, as a pure state machine fed by
//! `nusb::watch_devices` events where udev reaches the process and by periodic rescans
//! everywhere (containers and machines without udev netlink events never see events).

use std::collections::HashMap;

use super::aoa::is_relevant;
use super::{DevId, DevInfo};
use crate::config::UsbFilter;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Arrived(DevInfo),
    Left(DevId),
    /// A full bus listing (the rescan fallback).
    Scan(Vec<DevInfo>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// A register (or its accessory) appeared while no link is up: connect now.
    Connect,
    /// The device under the live link left the bus: the link is dead.
    Lost(DevId),
}

#[derive(Debug, Default)]
pub struct Presence {
    filter: UsbFilter,
    seen: HashMap<DevId, DevInfo>,
    linked: Option<DevId>,
}

impl Presence {
    pub fn new(filter: UsbFilter) -> Presence {
        Presence { filter, ..Default::default() }
    }

    /// The link is up on `id` (or down, `None`).
    pub fn set_linked(&mut self, id: Option<DevId>) {
        self.linked = id;
    }

    pub fn linked(&self) -> Option<DevId> {
        self.linked
    }

    /// Relevant devices currently on the bus.
    pub fn present(&self) -> usize {
        self.seen.len()
    }

    pub fn on(&mut self, ev: Event) -> Vec<Action> {
        let mut out = Vec::new();
        match ev {
            Event::Arrived(d) => self.arrived(d, &mut out),
            Event::Left(id) => self.left(id, &mut out),
            Event::Scan(devs) => {
                let now: Vec<DevInfo> =
                    devs.into_iter().filter(|d| is_relevant(d, &self.filter)).collect();
                let gone: Vec<DevId> = self
                    .seen
                    .keys()
                    .filter(|id| !now.iter().any(|d| d.id() == **id))
                    .copied()
                    .collect();
                for id in gone {
                    self.left(id, &mut out);
                }
                for d in now {
                    self.arrived(d, &mut out);
                }
            }
        }
        out
    }

    fn arrived(&mut self, d: DevInfo, out: &mut Vec<Action>) {
        if !is_relevant(&d, &self.filter) || self.seen.contains_key(&d.id()) {
            return;
        }
        self.seen.insert(d.id(), d);
        if self.linked.is_none() && !out.contains(&Action::Connect) {
            out.push(Action::Connect);
        }
    }

    fn left(&mut self, id: DevId, out: &mut Vec<Action>) {
        self.seen.remove(&id);
        if self.linked == Some(id) {
            self.linked = None;
            out.push(Action::Lost(id));
        }
    }
}
