//! Encodings of stored values compared per record type: the format the store writes today
//! (MessagePack with named fields behind a tag, `leadloop_store::codec`), MessagePack with
//! positional fields, `serde_json`, and `postcard` (not self-describing). The records are what
//! the daemon's rules write for one nurture send (the lead, its email, its re-armed timer),
//! an SLA hand-off lead and a history event. Each figure is the mean over many runs in memory:
//! encode, decode, and the encoded size; "cannot decode" names what the format refused.

use std::hint::black_box;
use std::time::Instant;

use leadloop_core::policy::Policy;
use leadloop_core::{Actor, EventKind, HistoryEvent, LeadRecord, OutboxEntry, Timer, TimerKind};
use serde::Serialize;
use serde::de::DeserializeOwned;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Runs per record type and format.
    #[arg(long, default_value_t = 100_000)]
    runs: u32,
}

struct Format {
    name: &'static str,
    encode: fn(&dyn erased::Encode) -> Vec<u8>,
}

/// Encoding behind a trait object, so one table can hold every record type.
mod erased {
    pub trait Encode {
        fn named(&self) -> Vec<u8>;
        fn positional(&self) -> Vec<u8>;
        fn json(&self) -> Vec<u8>;
        fn postcard(&self) -> Vec<u8>;
    }
}

impl<T: Serialize> erased::Encode for T {
    fn named(&self) -> Vec<u8> {
        leadloop_store::codec::encode(self).unwrap_or_default()
    }
    fn positional(&self) -> Vec<u8> {
        rmp_serde::to_vec(self).unwrap_or_default()
    }
    fn json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
    fn postcard(&self) -> Vec<u8> {
        postcard::to_allocvec(self).unwrap_or_default()
    }
}

const FORMATS: [Format; 4] = [
    Format { name: "MessagePack, named fields (stored today)", encode: |v| v.named() },
    Format { name: "MessagePack, positional", encode: |v| v.positional() },
    Format { name: "serde_json", encode: |v| v.json() },
    Format { name: "postcard", encode: |v| v.postcard() },
];

fn decode<T: DeserializeOwned>(format: usize, raw: &[u8]) -> Result<T, String> {
    match format {
        0 => leadloop_store::codec::decode(raw).map_err(|e| e.to_string()),
        1 => rmp_serde::from_slice(raw).map_err(|e| e.to_string()),
        2 => serde_json::from_slice(raw).map_err(|e| e.to_string()),
        _ => postcard::from_bytes(raw).map_err(|e| e.to_string()),
    }
}

fn measure<T: Serialize + DeserializeOwned + PartialEq>(name: &str, value: &T, runs: u32) {
    for (index, format) in FORMATS.iter().enumerate() {
        let raw = (format.encode)(value);
        if raw.is_empty() {
            println!("| {name} | {} | – | cannot encode | – |", format.name);
            continue;
        }
        let started = Instant::now();
        for _ in 0..runs {
            black_box((format.encode)(black_box(value)));
        }
        let encode_ns = started.elapsed().as_nanos() as f64 / f64::from(runs);
        let decoded = match decode::<T>(index, &raw) {
            Ok(back) if back == *value => {
                let started = Instant::now();
                for _ in 0..runs {
                    black_box(decode::<T>(index, black_box(&raw)).ok());
                }
                format!("{:.0} ns", started.elapsed().as_nanos() as f64 / f64::from(runs))
            }
            Ok(_) => "reads back a different value".to_owned(),
            Err(error) => format!("cannot decode ({})", error.chars().take(60).collect::<String>()),
        };
        println!("| {name} | {} | {} | {encode_ns:.0} ns | {decoded} |", format.name, raw.len());
    }
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let (config, t0, due_at) = crate::nurture::setup(64)?;
    let (rules, _) = leadloop::runtime::engine_rules(&config).map_err(|e| anyhow::anyhow!(e))?;
    let record = crate::nurture::enrolled(7, t0, due_at);
    let timer = Timer {
        key: leadloop_core::nurture::timer_key(record.lead.id.as_str()),
        due: due_at,
        lead_id: Some(record.lead.id.clone()),
        kind: TimerKind::NurtureStep { track: "long-term".into(), step: 0 },
    };
    let chart = leadloop_core::OrgChart::default();
    let decision = rules.on_timer(&timer, Some(&record), &chart, due_at);
    let lead = decision.lead.clone().ok_or_else(|| anyhow::anyhow!("the send changes the lead"))?;
    let (key, effect) =
        decision.effects.first().cloned().ok_or_else(|| anyhow::anyhow!("the send queues an email"))?;
    let entry = OutboxEntry::new(key, effect, due_at);
    let next = decision.set_timers.first().cloned().ok_or_else(|| anyhow::anyhow!("a next step"))?;
    let mut sla_lead: LeadRecord = crate::lead(1);
    sla_lead.handoff = Some(leadloop_core::handoff::Handoff {
        number: 1,
        owner: leadloop_core::PersonId::new("005000000000001"),
        status: Some("Open - Not Contacted".into()),
        started_at: t0,
        policy: "default".into(),
        next_step: 1,
        paused_seconds: 0,
        hold: None,
        status_written_over: None,
    });
    let event = HistoryEvent::new(
        due_at,
        Actor::System,
        EventKind::Activity {
            activity: "sla_backup".into(),
            detail: [("step".to_owned(), serde_json::json!("reminder"))].into_iter().collect(),
        },
    );
    println!("| record | format | bytes | encode | decode |");
    println!("|---|---|---|---|---|");
    measure("lead after a nurture send", &lead, args.runs);
    measure("lead in a hand-off", &sla_lead, args.runs);
    measure("nurture email (outbox entry)", &entry, args.runs);
    measure("timer", &next, args.runs);
    measure("history event", &event, args.runs);
    Ok(())
}
