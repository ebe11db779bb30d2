//! Many open SLA hand-offs written straight into a store, as a daemon stopped with that many
//! pending timers would have left it: the restart fault test (case 9, tests/e2e/faults.rs) and
//! `leadloop-bench restart` load the same shape.

use chrono::TimeDelta;
use leadloop_core::sla::Handoff;
use leadloop_core::{Lead, LeadRecord, Person, PersonId, Role, Timer, TimerKey, TimerKind, Timestamp};
use leadloop_store::{Batch, Store};

/// Leads written per durable batch.
const BATCH: u64 = 5_000;

fn person(id: &str, manager: Option<&str>) -> Person {
    Person {
        id: PersonId::new(id),
        email: format!("{id}@x.example"),
        name: id.to_owned(),
        manager: manager.map(PersonId::new),
        time_zone: Some("America/New_York".into()),
        role: Role::Rep,
        active: true,
        capacity: None,
    }
}

/// An executive `exec`, a manager `mgr` and ten reps `rep0`…`rep9` reporting to `mgr`.
pub fn people() -> Vec<Person> {
    let mut people = vec![person("exec", None), person("mgr", Some("exec"))];
    people.extend((0..10).map(|i| person(&format!("rep{i}"), Some("mgr"))));
    people
}

/// The id of the `i`-th lead [`write_handoffs`] writes.
pub fn handoff_lead(i: u64) -> String {
    format!("00Q{i:012}")
}

/// Writes [`people`] and `total` open hand-offs under the default ladder (a lead and its SLA
/// timer each, `BATCH` per durable commit): leads `0..due_now` have their 24 h reminder
/// overdue at `t0` (by 10 s, 20 s, …), the others have it due within the 24 h after `t0`.
pub async fn write_handoffs(
    store: &dyn Store,
    t0: Timestamp,
    total: u64,
    due_now: u64,
) -> leadloop_store::Result<()> {
    let mut batch = Batch::new();
    for p in people() {
        batch.put_person(p);
    }
    store.commit(batch).await?;
    let mut n = 0;
    while n < total {
        let mut batch = Batch::new();
        for i in n..(n + BATCH).min(total) {
            let owner = PersonId::new(format!("rep{}", i % 10));
            let started = if i < due_now {
                t0 - TimeDelta::hours(24) - TimeDelta::seconds(10 * (i as i64 + 1))
            } else {
                t0 - TimeDelta::seconds((i % 86_399) as i64)
            };
            let mut lead = Lead::new(handoff_lead(i));
            lead.email = Some(format!("lead{i}@acme{}.example", i % 1000));
            lead.first_name = Some("Ana".into());
            lead.company = Some(format!("Acme {}", i % 1000));
            lead.status = Some("Open - Not Contacted".into());
            lead.owner_id = Some(owner.clone());
            let mut record = LeadRecord::new(lead, started);
            record.handoffs = 1;
            record.handoff = Some(Handoff {
                number: 1,
                owner,
                status: record.lead.status.clone(),
                started_at: started,
                policy: "default".into(),
                next_step: 1,
                paused_seconds: 0,
                hold: None,
                status_written_over: None,
            });
            let id = record.lead.id.clone();
            batch.put_lead(record).set_timer(Timer {
                key: TimerKey::new(format!("sla/{id}")),
                due: started + TimeDelta::hours(24),
                lead_id: Some(id),
                kind: TimerKind::SlaStep { handoff: 1, step: 1 },
            });
        }
        store.commit(batch).await?;
        n += BATCH;
    }
    Ok(())
}
