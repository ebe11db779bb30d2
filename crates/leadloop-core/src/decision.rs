//! The output of a pure decision: the lead's new state, what to append to its history, which
//! timers to set or cancel, and which effects to queue. The engine writes all of it in one
//! store transaction, then performs the effects from the outbox.

use crate::effect::{Effect, IdempotencyKey};
use crate::history::HistoryEvent;
use crate::lead::LeadRecord;
use crate::timer::{Timer, TimerKey};

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Decision {
    /// The lead's new state; `None` leaves it as it was.
    pub lead: Option<LeadRecord>,
    pub events: Vec<HistoryEvent>,
    pub set_timers: Vec<Timer>,
    pub cancel_timers: Vec<TimerKey>,
    pub effects: Vec<(IdempotencyKey, Effect)>,
    /// Items for digests and summaries: (bucket, key, value); a later item with the same key
    /// replaces an earlier one.
    pub items: Vec<(String, String, serde_json::Value)>,
    /// Items to remove (those a digest or summary just sent): (bucket, key).
    pub remove_items: Vec<(String, String)>,
    /// Cursors to set (a routing rule's next turn): (name, value).
    pub cursors: Vec<(String, String)>,
}

impl Decision {
    pub fn is_empty(&self) -> bool {
        self.lead.is_none()
            && self.events.is_empty()
            && self.set_timers.is_empty()
            && self.cancel_timers.is_empty()
            && self.effects.is_empty()
            && self.items.is_empty()
            && self.remove_items.is_empty()
            && self.cursors.is_empty()
    }
}
