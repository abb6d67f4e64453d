//! How long this process stood still (tether-netmon's pulse), and how
//! much of it a sans-I/O core has heard of: the driver asks before every
//! input, and tells the core the growth, so the deadlines pending across
//! a stall are moved before anything else is decided.

use std::time::Duration;

use tether_netmon::Pulse;

pub(crate) struct Stillness {
    pulse: Option<Pulse>,
    seen: Duration,
}

impl Stillness {
    /// From now on; `None`: nothing is watched, nothing is ever told.
    pub(crate) fn new(pulse: Option<Pulse>) -> Stillness {
        let seen = pulse.as_ref().map(Pulse::stood_still).unwrap_or_default();
        Stillness { pulse, seen }
    }

    /// How much longer this process stood still since the last call, if
    /// it did.
    pub(crate) fn more(&mut self) -> Option<Duration> {
        let total = self.pulse.as_ref()?.stood_still();
        let more = total.checked_sub(self.seen).filter(|d| !d.is_zero())?;
        self.seen = total;
        Some(more)
    }
}
