//! The ladder: a hand-off starts for the lead's owner, its steps fall due (in business hours
//! when the policy says so, paused while the rep is away, caught up after downtime by the
//! policy's rule), and it ends when the rep answers, the owner changes or the lead goes.

use std::collections::BTreeMap;

use chrono::TimeDelta;
use serde_json::{Value, json};

use super::reports::item_key;
use super::{
    ActionOutcome, CatchUp, DigestRole, Handoff, HandoffOutcome, Recipient, SalesAction, SlaPolicy, SlaRules,
    StepAction, WhenAway, actor, human_duration, step_key, timer_key,
};
use crate::Timestamp;
use crate::connector::Activity;
use crate::decision::{Decision, Fact};
use crate::effect::{Effect, IdempotencyKey};
use crate::history::{Actor, EventKind, HistoryEvent};
use crate::lead::LeadRecord;
use crate::local_time::{add_business_time, next_local};
use crate::person::{OrgChart, Person, PersonId, Role};
use crate::policy::Policy;
use crate::timer::{ReportBucket, ReportKind, Timer, TimerKind};
use crate::vars;

impl SlaRules {
    /// Where the rep is away at `now` under a `backup` policy: who gets their steps.
    fn backup<'a>(&self, policy: &SlaPolicy, owner: &PersonId, people: &'a OrgChart) -> Option<&'a Person> {
        let to = policy.backup.as_deref()?;
        let person = if to == "manager" { people.manager_of(owner) } else { people.get(&PersonId::new(to)) };
        person.filter(|p| p.active && p.role != Role::Queue && &p.id != owner)
    }

    /// A rep answered hand-off `handoff` of `lead` through a link. Pure: returns the decision
    /// (CRM write-back, the ladder stopped, the stage moved where the stage table allows).
    #[allow(clippy::too_many_arguments)]
    pub fn sales_action(
        &self,
        lead: &LeadRecord,
        handoff: u32,
        action: SalesAction,
        reason: Option<&str>,
        by: &Actor,
        people: &OrgChart,
        now: Timestamp,
    ) -> (Decision, ActionOutcome) {
        let mut decision = Decision::default();
        if lead.handoff.as_ref().map(|h| h.number) != Some(handoff) {
            return (decision, ActionOutcome::AlreadyClosed);
        }
        let mut record = lead.clone();
        let (status, stage, outcome) = match action {
            SalesAction::Accept => {
                (&self.config.accept_status, crate::Stage::SalesQualified, "accepted".to_owned())
            }
            SalesAction::Recycle => {
                (&self.config.recycle_status, crate::Stage::Recycled, "recycled".to_owned())
            }
            SalesAction::Disqualify => (
                &self.config.disqualify_status,
                crate::Stage::Disqualified,
                format!("disqualified: {}", reason.unwrap_or("no reason given")),
            ),
        };
        let answered = HandoffOutcome::Answered { action, reason: reason.map(str::to_owned) };
        self.end(&mut record, answered, people, now, &mut decision);
        let mut fields = serde_json::Map::new();
        fields.insert("status".into(), json!(status));
        if let (SalesAction::Disqualify, Some(reason)) = (action, reason) {
            fields.insert("disqualify_reason".into(), json!(reason));
        }
        decision.queue(
            IdempotencyKey::from_parts([
                "sla",
                record.lead.id.as_str(),
                &handoff.to_string(),
                "answer",
                action.as_str(),
            ]),
            Effect::CrmUpdate { lead_id: record.lead.id.clone(), fields },
            now,
        );
        let actor = by.clone();
        decision.events.push(HistoryEvent::new(
            now,
            actor.clone(),
            EventKind::StatusChanged { from: record.lead.status.clone(), to: Some(status.clone()) },
        ));
        record.lead.status = Some(status.clone());
        if record.stage != stage && crate::stage::check(record.stage, stage, &actor).is_ok() {
            decision.events.push(HistoryEvent::new(
                now,
                actor,
                EventKind::StageChanged { from: record.stage, to: stage, reason: outcome },
            ));
            record.stage = stage;
            record.stage_since = now;
        }
        record.updated_at = now;
        record.version += 1;
        decision.lead = Some(record);
        (decision, ActionOutcome::Done)
    }

    fn links_for(&self, record: &LeadRecord, handoff: u32, recipient: &str, now: Timestamp) -> Value {
        let mut links = serde_json::Map::new();
        for action in SalesAction::ALL {
            let url = self
                .links
                .as_ref()
                .map(|m| m.link(action, &record.lead.id, handoff, recipient, now))
                .unwrap_or_default();
            links.insert(action.as_str().to_owned(), json!(url));
        }
        Value::Object(links)
    }

    /// When step `index` of `policy` is due for `handoff`.
    pub fn due(
        &self,
        policy: &SlaPolicy,
        handoff: &Handoff,
        index: usize,
        people: &OrgChart,
    ) -> Option<Timestamp> {
        let step = policy.steps.get(index)?;
        let started_at = handoff.started_at + TimeDelta::seconds(handoff.paused_seconds);
        Some(match &policy.business_hours {
            None => started_at + TimeDelta::from_std(step.after).unwrap_or(TimeDelta::MAX),
            Some(hours) => {
                let holidays = hours
                    .holidays
                    .as_ref()
                    .and_then(|name| self.config.holidays.get(name))
                    .map(Vec::as_slice)
                    .unwrap_or(&[]);
                add_business_time(
                    started_at,
                    step.after,
                    Self::tz_of(people.get(&handoff.owner)),
                    hours,
                    holidays,
                )
            }
        })
    }

    fn qualifies(&self, record: &LeadRecord, people: &OrgChart) -> Option<PersonId> {
        let owner = record.lead.owner_id.as_ref()?;
        let person = people.get(owner)?;
        let open =
            record.lead.status.as_deref().is_some_and(|s| self.config.open_statuses.iter().any(|o| o == s));
        (person.active && person.role != Role::Queue && open).then(|| owner.clone())
    }

    pub(super) fn end(
        &self,
        record: &mut LeadRecord,
        outcome: HandoffOutcome,
        people: &OrgChart,
        now: Timestamp,
        decision: &mut Decision,
    ) {
        if let Some(handoff) = record.handoff.take() {
            decision.cancel_timers.push(timer_key(record.lead.id.as_str()));
            let satisfied = outcome.is_satisfied();
            let entry = json!({
                "lead_id": record.lead.id,
                "owner": handoff.owner,
                "met": handoff.next_step <= 1 && satisfied,
                "first_touch_seconds": satisfied.then(|| (now - handoff.started_at).num_seconds()),
                "outcome": outcome.to_string(),
            });
            self.weekly_entry(record, &handoff, entry, people, now, decision);
            decision.events.push(HistoryEvent::new(
                now,
                actor(),
                EventKind::HandoffEnded {
                    owner: Some(handoff.owner.clone()),
                    handoff: handoff.number,
                    outcome,
                    open_seconds: (now - handoff.started_at).num_seconds(),
                },
            ));
        }
    }

    /// Sends what is due and arms the timer for the next step.
    fn advance(&self, record: &mut LeadRecord, people: &OrgChart, now: Timestamp, decision: &mut Decision) {
        let Some(mut handoff) = record.handoff.clone() else { return };
        let Some(policy) = self.policy_named(&handoff.policy) else {
            let outcome = HandoffOutcome::PolicyRemoved { policy: handoff.policy.clone() };
            self.end(record, outcome, people, now, decision);
            return;
        };
        let mut due = Vec::new();
        let mut index = handoff.next_step;
        while let Some(at) = self.due(policy, &handoff, index, people) {
            if at > now {
                break;
            }
            due.push(index);
            index += 1;
        }
        // The rep is away: escalations wait until they are back, and later steps move with them.
        let away = people.calendar.away_until(&handoff.owner, now);
        let mut resume_at = None;
        if let (WhenAway::Pause, Some(back), Some(cut)) =
            (policy.when_away, away, due.iter().position(|i| *i >= 1))
        {
            let first = due[cut];
            if let Some(was_due) = self.due(policy, &handoff, first, people) {
                handoff.paused_seconds += (back - was_due).num_seconds().max(0);
            }
            decision.events.push(HistoryEvent::new(
                now,
                actor(),
                EventKind::Activity {
                    activity: "sla_paused".into(),
                    detail: BTreeMap::from([
                        ("step".to_owned(), json!(policy.steps[first].name)),
                        ("until".to_owned(), json!(back)),
                        ("reason".to_owned(), json!("the rep's calendar says they are away")),
                    ]),
                },
            ));
            due.truncate(cut);
            index = first;
            resume_at = Some(back);
        }
        let send: Vec<usize> = match policy.catch_up {
            CatchUp::All => due.clone(),
            // Skip only steps due before the latest one: steps due at the same instant are
            // not missed, they are simultaneous.
            CatchUp::Latest => {
                let latest = due.last().and_then(|i| self.due(policy, &handoff, *i, people));
                due.iter().copied().filter(|i| self.due(policy, &handoff, *i, people) == latest).collect()
            }
        };
        let missed = due.len().saturating_sub(send.len());
        if missed > 0 {
            decision.events.push(HistoryEvent::new(
                now,
                actor(),
                EventKind::Activity {
                    activity: "sla_catch_up".into(),
                    detail: BTreeMap::from([
                        (
                            "skipped".to_owned(),
                            json!(
                                due[..missed]
                                    .iter()
                                    .map(|i| policy.steps[*i].name.clone())
                                    .collect::<Vec<_>>()
                            ),
                        ),
                        (
                            "sent".to_owned(),
                            json!(send.iter().map(|i| policy.steps[*i].name.clone()).collect::<Vec<_>>()),
                        ),
                    ]),
                },
            ));
        }
        handoff.next_step = index;
        let mut reassign_to = None;
        for &i in &send {
            if let Some(target) = self.send_step(record, policy, &handoff, i, missed, people, now, decision) {
                reassign_to = Some(target);
            }
            // A status leadloop writes to the CRM itself is not the rep's answer: record it
            // here too, so its echo from the next sync changes nothing.
            for action in &policy.steps[i].actions {
                if let StepAction::SetStatus { status } = action {
                    if handoff.status_written_over.is_none() {
                        handoff.status_written_over =
                            Some(crate::handoff::StatusBefore { status: handoff.status.clone() });
                    }
                    record.lead.status = Some(status.clone());
                    handoff.status = Some(status.clone());
                }
            }
        }
        record.handoff = Some(handoff.clone());
        if let Some(target) = reassign_to {
            decision.events.push(HistoryEvent::new(
                now,
                actor(),
                EventKind::OwnerChanged {
                    from: record.lead.owner_id.clone(),
                    to: Some(target.clone()),
                    reason: format!("SLA policy {}: reassigned after no answer", policy.name),
                },
            ));
            record.lead.owner_id = Some(target.clone());
            self.end(record, HandoffOutcome::ReassignedByLadder, people, now, decision);
            self.start(record, target, people, now, decision);
            return;
        }
        if let Some(next) = self.due(policy, &handoff, index, people) {
            decision.set_timers.push(Timer {
                key: timer_key(record.lead.id.as_str()),
                due: resume_at.map_or(next, |back| next.max(back)),
                lead_id: Some(record.lead.id.clone()),
                kind: TimerKind::SlaStep { handoff: handoff.number, step: index as u32 },
            });
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn send_step(
        &self,
        record: &LeadRecord,
        policy: &SlaPolicy,
        handoff: &Handoff,
        index: usize,
        missed: usize,
        people: &OrgChart,
        now: Timestamp,
        decision: &mut Decision,
    ) -> Option<PersonId> {
        let step = &policy.steps[index];
        let owner = people.get(&handoff.owner);
        let away = people.calendar.away_until(&handoff.owner, now);
        let backup = away
            .filter(|_| policy.when_away == WhenAway::Backup)
            .and_then(|_| self.backup(policy, &handoff.owner, people));
        // An inactive manager or executive is treated as missing: the fallback gets the copy.
        let manager = people.manager_of(&handoff.owner).filter(|p| p.active);
        let executive = self.executive(&handoff.owner, people);
        let fallback = self.config.fallback_email.as_deref();
        let mut missing = Vec::new();
        let digest_roles: &[DigestRole] = policy.digest.as_ref().map(|d| d.roles.as_slice()).unwrap_or(&[]);
        let mut digested: Vec<&Person> = Vec::new();
        let mut resolve = |recipients: &[Recipient]| -> Vec<String> {
            let mut out = Vec::new();
            for recipient in recipients {
                let address = match recipient {
                    Recipient::Rep => backup.or(owner).map(|p| p.email.clone()),
                    Recipient::Manager
                        if manager.is_some() && digest_roles.contains(&DigestRole::Manager) =>
                    {
                        digested.extend(manager);
                        None
                    }
                    Recipient::Executive
                        if executive.is_some() && digest_roles.contains(&DigestRole::Executive) =>
                    {
                        digested.extend(executive);
                        None
                    }
                    Recipient::Manager => manager.map(|p| p.email.clone()).or_else(|| {
                        missing.push("manager");
                        fallback.map(str::to_owned)
                    }),
                    Recipient::Executive => executive.map(|p| p.email.clone()).or_else(|| {
                        missing.push("executive");
                        fallback.map(str::to_owned)
                    }),
                    Recipient::Address(address) => Some(address.trim_start_matches("address:").to_owned()),
                };
                if let Some(address) = address
                    && !out.contains(&address)
                {
                    out.push(address);
                }
            }
            out
        };
        let mut to = resolve(&step.to);
        let mut cc: Vec<String> = resolve(&step.cc).into_iter().filter(|a| !to.contains(a)).collect();
        if to.is_empty() {
            to = std::mem::take(&mut cc);
        }
        let tz = Self::tz_of(owner);
        let local = |at: Timestamp| at.with_timezone(&tz).format("%Y-%m-%d %H:%M %Z").to_string();
        let next = policy.steps.get(index + 1);
        // Who the next step reaches that this one does not (the rep aside): the rep reads
        // "if unchanged by …, NAME is copied". Digested roles get a digest, not a copy.
        let reached = |step: &super::Step| -> Vec<String> {
            let mut names = Vec::new();
            for recipient in step.to.iter().chain(&step.cc) {
                let name = match recipient {
                    Recipient::Rep => None,
                    Recipient::Manager if digest_roles.contains(&DigestRole::Manager) => None,
                    Recipient::Executive if digest_roles.contains(&DigestRole::Executive) => None,
                    Recipient::Manager => manager.map(|p| p.name.clone()),
                    Recipient::Executive => executive.map(|p| p.name.clone()),
                    Recipient::Address(address) => Some(address.trim_start_matches("address:").to_owned()),
                };
                if let Some(name) = name
                    && !names.contains(&name)
                {
                    names.push(name);
                }
            }
            names
        };
        let now_reached = reached(step);
        let next_copies: Vec<String> =
            next.map(&reached).unwrap_or_default().into_iter().filter(|n| !now_reached.contains(n)).collect();
        let lead_vars = match &self.scoring {
            Some(scoring) => vars::lead_scored(record, scoring, now),
            None => vars::lead(record),
        };
        let placeholder = |role: &str| json!({ "id": "", "name": format!("(no {role} on record)"), "email": fallback, "time_zone": null });
        let mut vars = json!({
            "kind": step.kind,
            "lead": lead_vars,
            "owner": owner.map(vars::person).unwrap_or_else(|| placeholder("owner")),
            "manager": manager.map(vars::person).unwrap_or_else(|| placeholder("manager")),
            "executive": executive.map(vars::person).unwrap_or_else(|| placeholder("executive")),
            "handoff": {
                "number": handoff.number,
                "started": local(handoff.started_at),
                "age": human_duration(now - handoff.started_at),
                "step": step.name,
                "next_step": next.map(|s| s.name.clone()),
                "next_step_at": self.due(policy, handoff, index + 1, people).map(local),
                "next_copies": next_copies,
                "missed_steps": missed,
            },
            "crm_url": self.config.crm_url.as_deref().map(|u| u.replace("{id}", record.lead.id.as_str())).unwrap_or_default(),
            "unsubscribe_url": "",
            "links": Value::Null,
        });
        if let Some(map) = vars.as_object_mut() {
            map.insert("step".into(), Value::String(step.name.clone()));
            map.insert(
                "hold".into(),
                handoff.hold.map_or(Value::Null, |(s, e)| json!({ "start": local(s), "end": local(e) })),
            );
            map.insert(
                "away".into(),
                away.map_or(
                    Value::Null,
                    |back| json!({ "until": local(back), "backup": backup.map(vars::person) }),
                ),
            );
        }
        if let Some(backup) = backup {
            decision.events.push(HistoryEvent::new(
                now,
                actor(),
                EventKind::Activity {
                    activity: "sla_backup".into(),
                    detail: BTreeMap::from([
                        ("step".to_owned(), json!(step.name)),
                        ("to".to_owned(), json!(backup.id)),
                        ("reason".to_owned(), json!("the rep's calendar says they are away")),
                    ]),
                },
            ));
        }
        missing.sort_unstable();
        missing.dedup();
        for role in missing {
            decision.events.push(HistoryEvent::new(
                now,
                actor(),
                EventKind::Activity {
                    activity: "sla_missing_recipient".into(),
                    detail: BTreeMap::from([
                        ("role".to_owned(), json!(role)),
                        ("step".to_owned(), json!(step.name)),
                        ("fallback".to_owned(), json!(fallback)),
                    ]),
                },
            ));
        }
        let lead_id = record.lead.id.clone();
        let key = step_key(lead_id.as_str(), handoff.number, &step.name);
        digested.sort_by(|a, b| a.id.cmp(&b.id));
        digested.dedup_by(|a, b| a.id == b.id);
        if let Some(digest) = &policy.digest {
            for person in digested {
                let bucket = ReportBucket::new(ReportKind::Digest, person.id.clone());
                decision.items.push((
                    bucket.clone(),
                    item_key(record, handoff),
                    json!({
                        "lead_id": lead_id,
                        "handoff": handoff.number,
                        "lead": record.lead.display_name(),
                        "company": record.lead.company,
                        "owner": owner.map(|p| p.name.clone()),
                        "owner_email": owner.map(|p| p.email.clone()),
                        "step": step.name,
                        "started": local(handoff.started_at),
                        "age": human_duration(now - handoff.started_at),
                        "crm_url": vars["crm_url"],
                    }),
                ));
                decision.set_timers.push(Timer {
                    key: bucket.timer_key(),
                    due: next_local(now, Self::tz_of(Some(person)), digest.time, None),
                    lead_id: None,
                    kind: TimerKind::Report { bucket },
                });
            }
        }
        if !to.is_empty() {
            // One copy per recipient, each with its own one-click links (bound to its address)
            // and delivered to that address alone; every copy shows the same To and Cc.
            // Each copy goes by the step's channels the recipient is reachable on: the email,
            // a chat message (keyed `COPYKEY/SERVICE`) or both. A chat message to someone the
            // step does not mail carries the email as its fallback, under the email's key.
            let recipients: Vec<String> = to.iter().chain(&cc).cloned().collect();
            let known: Vec<&Person> = [backup.or(owner), manager, executive].into_iter().flatten().collect();
            for (n, recipient) in recipients.iter().enumerate() {
                let mut vars = vars.clone();
                vars["links"] = self.links_for(record, handoff.number, recipient, now);
                let person = known.iter().find(|p| p.email.eq_ignore_ascii_case(recipient)).copied();
                let via = self.reach.narrow(&step.channels, person.map(|p| &p.id));
                let by_email = via.contains(&crate::person::Reach::Email);
                let copy =
                    key.as_ref().map_err(Clone::clone).and_then(|k| super::copy_key(k, recipient, n == 0));
                let mut counted = false;
                for service in via.iter().filter_map(|r| r.chat()) {
                    let fallback = match (&copy, by_email) {
                        (Ok(email_key), false) => Some(crate::effect::ChatFallback {
                            key: email_key.clone(),
                            template: step.template.clone(),
                            to: to.clone(),
                            cc: cc.clone(),
                        }),
                        _ => None,
                    };
                    let chat = Effect::Chat {
                        kind: step.kind.clone(),
                        service,
                        to: recipient.clone(),
                        person: person.map(|p| p.id.clone()),
                        lead_id: Some(lead_id.clone()),
                        vars: vars.clone(),
                        fallback,
                    };
                    let chat_key =
                        copy.as_ref().map_err(Clone::clone).and_then(|k| super::chat_key(k, service));
                    if let Some(key) = decision.queue(chat_key, chat, now)
                        && n == 0
                        && !by_email
                        && !counted
                    {
                        counted = true;
                        decision.facts.push(Fact::SlaStep { key, step: step.name.clone() });
                    }
                }
                if !by_email {
                    continue;
                }
                let email = Effect::Email {
                    kind: step.kind.clone(),
                    template: step.template.clone(),
                    to: to.clone(),
                    cc: cc.clone(),
                    lead_id: Some(lead_id.clone()),
                    vars,
                    deliver_to: Some(recipient.clone()),
                };
                if let Some(key) = decision.queue(copy, email, now)
                    && n == 0
                {
                    decision.facts.push(Fact::SlaStep { key, step: step.name.clone() });
                }
            }
        }
        if index >= 1 {
            // Past the first reminder: breached, whether or not it ends this week.
            let entry = json!({
                "lead_id": lead_id,
                "owner": handoff.owner,
                "met": false,
                "first_touch_seconds": null,
                "outcome": format!("open, past step {}", step.name),
            });
            self.weekly_entry(record, handoff, entry, people, now, decision);
        }
        let mut reassign_to = None;
        for (n, action) in step.actions.iter().enumerate() {
            // `sla/LEAD/HANDOFF/STEP/action/N`: refused with the step's own key, if that was.
            let action_key =
                key.as_ref().map_err(Clone::clone).and_then(|k| k.child(["action", &n.to_string()]));
            let effect = match action {
                StepAction::Reassign { to } => {
                    // Never on the first step: a new hand-off starts there, and reassigning at
                    // once could chase a manager loop forever.
                    let target = if index == 0 {
                        None
                    } else if to == "manager" {
                        manager
                    } else {
                        people.get(&PersonId::new(to.clone()))
                    }
                    .filter(|p| p.active && p.role != Role::Queue && p.id != handoff.owner);
                    let Some(target) = target else {
                        decision.events.push(HistoryEvent::new(
                            now,
                            actor(),
                            EventKind::Activity {
                                activity: "sla_reassign_skipped".into(),
                                detail: BTreeMap::from([
                                    ("step".to_owned(), json!(step.name)),
                                    ("to".to_owned(), json!(to)),
                                    ("reason".to_owned(), json!("no active person to reassign to")),
                                ]),
                            },
                        ));
                        continue;
                    };
                    reassign_to = Some(target.id.clone());
                    let mut fields = serde_json::Map::new();
                    fields.insert("owner_id".into(), json!(target.id));
                    Effect::CrmUpdate { lead_id: lead_id.clone(), fields }
                }
                StepAction::CreateTask { subject } => Effect::CrmTask {
                    lead_id: lead_id.clone(),
                    owner_id: handoff.owner.clone(),
                    subject: subject.replace("{lead}", &record.lead.display_name()),
                    due: Some(now + TimeDelta::hours(24)),
                },
                StepAction::SetStatus { status } => {
                    let mut fields = serde_json::Map::new();
                    fields.insert("status".into(), json!(status));
                    Effect::CrmUpdate { lead_id: lead_id.clone(), fields }
                }
            };
            decision.queue(action_key, effect, now);
        }
        reassign_to
    }

    /// Starts hand-off `record.handoffs + 1` for `owner` under the lead's policy, and sends
    /// what is due at once (the alert).
    fn start(
        &self,
        record: &mut LeadRecord,
        owner: PersonId,
        people: &OrgChart,
        now: Timestamp,
        decision: &mut Decision,
    ) {
        let Some(policy) = self.policy_for(record) else { return };
        record.handoffs += 1;
        let handoff = Handoff {
            number: record.handoffs,
            owner: owner.clone(),
            status: record.lead.status.clone(),
            started_at: now,
            policy: policy.name.clone(),
            next_step: 0,
            paused_seconds: 0,
            hold: None,
            status_written_over: None,
        };
        let mut handoff = handoff;
        if let Some(length) = self.hold {
            let hours = policy.business_hours.clone().unwrap_or_default();
            let holidays = hours
                .holidays
                .as_ref()
                .and_then(|name| self.config.holidays.get(name))
                .map(Vec::as_slice)
                .unwrap_or(&[]);
            let length = TimeDelta::from_std(length).unwrap_or(TimeDelta::minutes(30));
            let tz = Self::tz_of(people.get(&owner));
            if let Some((start, end)) =
                people.calendar.next_free_slot(&owner, now, length, tz, &hours, holidays)
            {
                handoff.hold = Some((start, end));
                let company = record.lead.company.as_deref().map(|c| format!(" ({c})")).unwrap_or_default();
                decision.queue(
                    IdempotencyKey::from_parts([
                        "hold",
                        record.lead.id.as_str(),
                        &handoff.number.to_string(),
                    ]),
                    Effect::CalendarHold {
                        person: owner.clone(),
                        lead_id: record.lead.id.clone(),
                        start,
                        end,
                        summary: format!("Call {}{company}", record.lead.display_name()),
                    },
                    now,
                );
            }
        }
        decision.events.push(HistoryEvent::new(
            now,
            actor(),
            EventKind::HandoffStarted { handoff: handoff.number, owner },
        ));
        record.handoff = Some(handoff);
        self.advance(record, people, now, decision);
    }
}

/// The first touch `activity` is under `policy`, if it is one: a completed CRM task of a
/// `first_touch_activities` type, logged by the hand-off's owner at or after the hand-off
/// started (leadloop's own follow-up tasks carry no type and are never one). The kind,
/// lowercased, names the outcome.
fn first_touch(policy: Option<&SlaPolicy>, handoff: &Handoff, activity: &Activity) -> Option<String> {
    let policy = policy?;
    if activity.kind != "task_completed" || activity.at < handoff.started_at {
        return None;
    }
    let detail = |key: &str| activity.detail.get(key).and_then(Value::as_str);
    let kind = detail("type")?;
    if !policy.first_touch_kind(kind) || detail("owner_id") != Some(handoff.owner.as_str()) {
        return None;
    }
    Some(kind.trim().to_lowercase().replace(char::is_whitespace, "_"))
}

impl Policy for SlaRules {
    fn on_sales_action(
        &self,
        lead: &LeadRecord,
        handoff: u32,
        action: SalesAction,
        reason: Option<&str>,
        by: &Actor,
        people: &OrgChart,
        now: Timestamp,
    ) -> (Decision, ActionOutcome) {
        self.sales_action(lead, handoff, action, reason, by, people, now)
    }

    fn on_lead(
        &self,
        before: Option<&LeadRecord>,
        mut after: LeadRecord,
        people: &OrgChart,
        now: Timestamp,
    ) -> Decision {
        let mut decision = Decision::default();
        let qualifying = self.qualifies(&after, people);
        if let Some(current) = after.handoff.clone() {
            if after.lead.owner_id.as_ref() != Some(&current.owner) {
                self.end(&mut after, HandoffOutcome::Reassigned, people, now, &mut decision);
            } else if after.lead.status != current.status
                // The CRM has not taken (or refused) the status a step wrote: not an answer.
                && current.status_written_over.as_ref().is_none_or(|before| before.status != after.lead.status)
                && self.policy_named(&current.policy).is_none_or(SlaPolicy::satisfied_by_status)
            {
                let outcome = HandoffOutcome::StatusChanged { to: after.lead.status.clone() };
                self.end(&mut after, outcome, people, now, &mut decision);
            }
        }
        if after.handoff.is_none()
            && let Some(owner) = qualifying
            && before.is_none_or(|b| {
                b.lead.owner_id != after.lead.owner_id
                    || b.lead.status != after.lead.status
                    || b.handoff.is_some()
            })
        {
            self.start(&mut after, owner, people, now, &mut decision);
        }
        decision.lead = Some(after);
        decision
    }

    fn on_activity(
        &self,
        lead: &LeadRecord,
        activity: &Activity,
        people: &OrgChart,
        now: Timestamp,
    ) -> Decision {
        let mut decision = Decision::default();
        let Some(handoff) = &lead.handoff else { return decision };
        let policy = self.policy_named(&handoff.policy);
        let outcome = if let Some(kind) = first_touch(policy, handoff, activity) {
            Some(HandoffOutcome::ActivityLogged { kind })
        } else if activity.kind == "task_completed" && policy.is_some_and(|p| p.stop_on_task) {
            Some(HandoffOutcome::TaskCompleted)
        } else {
            None
        };
        if let Some(outcome) = outcome {
            let mut record = lead.clone();
            self.end(&mut record, outcome, people, now, &mut decision);
            decision.lead = Some(record);
        }
        decision
    }

    fn on_report(
        &self,
        timer: &Timer,
        items: &[(String, Value, Option<LeadRecord>)],
        people: &OrgChart,
        now: Timestamp,
    ) -> Decision {
        self.report(timer, items, people, now)
    }

    fn on_delete(&self, lead: &LeadRecord, people: &OrgChart, now: Timestamp) -> Decision {
        let mut decision = Decision::default();
        let mut record = lead.clone();
        self.end(&mut record, HandoffOutcome::LeadDeleted, people, now, &mut decision);
        decision
    }

    fn on_timer(
        &self,
        timer: &Timer,
        lead: Option<&LeadRecord>,
        people: &OrgChart,
        now: Timestamp,
    ) -> Decision {
        let mut decision = Decision::default();
        let TimerKind::SlaStep { handoff, .. } = timer.kind else { return decision };
        let Some(record) = lead else { return decision };
        // A timer from an ended hand-off is stale.
        if record.handoff.as_ref().map(|h| h.number) != Some(handoff) {
            return decision;
        }
        let mut record = record.clone();
        self.advance(&mut record, people, now, &mut decision);
        decision.lead = Some(record);
        decision
    }
}

#[cfg(test)]
mod tests {
    //! The ladder driven directly: a hand-off, its timer fired when due (or late, after
    //! downtime), and the emails each step sends.

    use std::time::Duration;

    use super::*;
    use crate::Lead;
    use crate::local_time::BusinessHours;
    use crate::sla::{SlaConfig, default_policy};

    fn at(s: &str) -> Timestamp {
        s.parse().expect("instant")
    }

    fn person(id: &str, manager: Option<&str>, zone: &str) -> Person {
        Person {
            id: PersonId::new(id),
            email: format!("{id}@corp.example"),
            name: id.to_owned(),
            manager: manager.map(PersonId::new),
            time_zone: Some(zone.to_owned()),
            role: Role::Rep,
            active: true,
            capacity: None,
        }
    }

    /// One sent email: when, its key, to, cc.
    type Sent = (Timestamp, String, Vec<String>, Vec<String>);

    struct World {
        sla: SlaRules,
        people: OrgChart,
        record: LeadRecord,
        timer: Option<Timer>,
        /// The rep's copy of each email (its key is the step's).
        sent: Vec<Sent>,
        /// The template variables of each email in `sent`.
        vars: Vec<Value>,
        /// Every copy queued: key, the address it is delivered to, its variables.
        copies: Vec<(String, Option<String>, Value)>,
        events: Vec<HistoryEvent>,
    }

    impl World {
        /// Lead `00Q1` handed to `rep` at `t0` (rep → mgr → exec, all in `zone`).
        fn handoff(policy: SlaPolicy, zone: &str, t0: Timestamp) -> Self {
            let sla = SlaRules::new(SlaConfig { policies: vec![policy], ..SlaConfig::default() });
            let people = OrgChart::new([
                person("rep", Some("mgr"), zone),
                person("mgr", Some("exec"), zone),
                person("exec", None, zone),
            ]);
            let mut lead = Lead::new("00Q1");
            lead.owner_id = Some(PersonId::new("rep"));
            lead.status = Some("Open - Not Contacted".into());
            let record = LeadRecord::new(lead, t0);
            let mut world = World {
                sla,
                people,
                record: record.clone(),
                timer: None,
                sent: Vec::new(),
                vars: Vec::new(),
                copies: Vec::new(),
                events: Vec::new(),
            };
            let decision = world.sla.on_lead(None, record, &world.people, t0);
            world.take(decision, t0);
            world
        }

        fn take(&mut self, decision: Decision, now: Timestamp) {
            for (key, effect) in decision.effects {
                if let Effect::Email { to, cc, vars, deliver_to, .. } = effect {
                    self.copies.push((key.to_string(), deliver_to, vars.clone()));
                    if !key.as_str().contains("/to/") {
                        self.sent.push((now, key.to_string(), to, cc));
                        self.vars.push(vars);
                    }
                }
            }
            if decision.cancel_timers.iter().any(|k| Some(k) == self.timer.as_ref().map(|t| &t.key)) {
                self.timer = None;
            }
            for timer in decision.set_timers {
                if matches!(timer.kind, TimerKind::SlaStep { .. }) {
                    self.timer = Some(timer);
                }
            }
            if let Some(record) = decision.lead {
                self.record = record;
            }
            self.events.extend(decision.events);
        }

        /// Fires the ladder's timer each time it is due, up to `end`.
        fn run_until(&mut self, end: Timestamp) {
            while let Some(timer) = self.timer.clone().filter(|t| t.due <= end) {
                self.fire(&timer, timer.due);
            }
        }

        /// Fires the pending timer at `now` (late, as after downtime).
        fn fire_late(&mut self, now: Timestamp) {
            let timer = self.timer.clone().expect("a pending timer");
            self.fire(&timer, now);
        }

        fn fire(&mut self, timer: &Timer, now: Timestamp) {
            self.timer = None;
            let decision = self.sla.on_timer(timer, Some(&self.record), &self.people, now);
            self.take(decision, now);
        }

        fn keys(&self) -> Vec<&str> {
            self.sent.iter().map(|(_, key, _, _)| key.as_str()).collect()
        }
    }

    fn addresses(ids: &[&str]) -> Vec<String> {
        ids.iter().map(|id| format!("{id}@corp.example")).collect()
    }

    #[test]
    fn the_default_ladder_escalates_alert_reminder_manager_executive() {
        let t0 = at("2026-03-02T14:00:00Z");
        let mut world = World::handoff(default_policy(), "UTC", t0);
        world.run_until(t0 + TimeDelta::hours(100));
        let expected: Vec<Sent> = vec![
            (t0, "sla/00Q1/1/alert".into(), addresses(&["rep"]), vec![]),
            (t0 + TimeDelta::hours(24), "sla/00Q1/1/reminder".into(), addresses(&["rep"]), vec![]),
            (
                t0 + TimeDelta::hours(48),
                "sla/00Q1/1/manager".into(),
                addresses(&["rep"]),
                addresses(&["mgr"]),
            ),
            (
                t0 + TimeDelta::hours(72),
                "sla/00Q1/1/executive".into(),
                addresses(&["rep", "mgr"]),
                addresses(&["exec"]),
            ),
        ];
        assert_eq!(world.sent, expected);
        assert_eq!(world.timer, None, "nothing after the top of the ladder");
        assert_eq!(world.record.handoff.as_ref().map(|h| h.next_step), Some(4));
    }

    /// A completed CRM task as the connector reports it.
    fn task(at: Timestamp, kind: &str, owner: &str) -> Activity {
        let mut detail = BTreeMap::new();
        detail.insert("task_id".to_owned(), json!("00T1"));
        detail.insert("type".to_owned(), json!(kind));
        detail.insert("owner_id".to_owned(), json!(owner));
        Activity { lead_id: crate::LeadId::new("00Q1"), at, kind: "task_completed".into(), detail }
    }

    /// What the hand-off ended with, if it did.
    fn ended(world: &World) -> Option<HandoffOutcome> {
        world.events.iter().find_map(|e| match &e.kind {
            EventKind::HandoffEnded { outcome, .. } => Some(outcome.clone()),
            _ => None,
        })
    }

    #[test]
    fn a_call_logged_by_the_owner_is_the_first_touch_when_the_policy_counts_activities() {
        use crate::sla::SatisfiedBy;
        let t0 = at("2026-03-02T14:00:00Z");
        let policy = SlaPolicy {
            satisfied_by: vec![SatisfiedBy::Status, SatisfiedBy::Activity],
            first_touch_activities: vec!["call".into(), "email".into()],
            ..default_policy()
        };
        let mut world = World::handoff(policy.clone(), "UTC", t0);
        world.run_until(t0 + TimeDelta::hours(3));
        // Not touches: someone else's call, a meeting (not a listed kind), an open call, a
        // call logged before the hand-off; none stops the ladder.
        let mut open = task(t0 + TimeDelta::hours(1), "Call", "rep");
        open.kind = "task_open".into();
        for activity in [
            task(t0 + TimeDelta::hours(1), "Call", "mgr"),
            task(t0 + TimeDelta::hours(1), "Meeting", "rep"),
            open,
            task(t0 - TimeDelta::hours(1), "Call", "rep"),
        ] {
            let decision =
                world.sla.on_activity(&world.record, &activity, &world.people, t0 + TimeDelta::hours(2));
            assert!(decision.is_empty(), "{activity:?} ended the hand-off: {decision:?}");
        }
        // The owner logs a call, 3 hours in: the hand-off ends, satisfied, as its own outcome.
        let now = t0 + TimeDelta::hours(3);
        let decision = world.sla.on_activity(&world.record, &task(now, "Call", "rep"), &world.people, now);
        world.take(decision, now);
        assert_eq!(ended(&world), Some(HandoffOutcome::ActivityLogged { kind: "call".into() }));
        assert_eq!(world.record.handoff, None);
        assert_eq!(world.timer, None, "the ladder's timer is cancelled");
        world.run_until(t0 + TimeDelta::hours(100));
        assert_eq!(world.keys(), ["sla/00Q1/1/alert"], "no reminder after the touch");

        // The default policy (status only) lets the same call pass: the ladder goes on.
        let mut world = World::handoff(default_policy(), "UTC", t0);
        let decision = world.sla.on_activity(&world.record, &task(now, "Call", "rep"), &world.people, now);
        assert!(decision.is_empty());
        world.run_until(t0 + TimeDelta::hours(30));
        assert_eq!(world.keys(), ["sla/00Q1/1/alert", "sla/00Q1/1/reminder"]);

        // `satisfied_by = ["activity"]` alone: a status change no longer ends the hand-off.
        let only = SlaPolicy { satisfied_by: vec![SatisfiedBy::Activity], ..policy };
        let mut world = World::handoff(only, "UTC", t0);
        let mut after = world.record.clone();
        after.lead.status = Some("Working - Contacted".into());
        let decision = world.sla.on_lead(Some(&world.record), after, &world.people, now);
        world.take(decision, now);
        assert_eq!(ended(&world), None);
        assert!(world.record.handoff.is_some());
    }

    /// Links that say whom they were made for.
    #[derive(Debug)]
    struct NamedLinks;

    impl super::super::LinkMaker for NamedLinks {
        fn link(
            &self,
            action: SalesAction,
            _: &crate::LeadId,
            _: u32,
            recipient: &str,
            _: Timestamp,
        ) -> String {
            format!("https://l.example/{}/{recipient}", action.as_str())
        }
    }

    #[test]
    fn every_recipient_gets_a_copy_with_links_of_their_own() {
        let t0 = at("2026-03-02T14:00:00Z");
        let mut world = World::handoff(default_policy(), "UTC", t0);
        world.sla = world.sla.clone().with_links(std::sync::Arc::new(NamedLinks));
        world.run_until(t0 + TimeDelta::hours(100));
        let executive: Vec<_> =
            world.copies.iter().filter(|(key, _, _)| key.starts_with("sla/00Q1/1/executive")).collect();
        // The rep's copy keeps the step's key; the others are keyed by a hash of the address.
        let expected = [
            ("sla/00Q1/1/executive".to_owned(), "rep"),
            (format!("sla/00Q1/1/executive/to/{:016x}", fnv("mgr@corp.example")), "mgr"),
            (format!("sla/00Q1/1/executive/to/{:016x}", fnv("exec@corp.example")), "exec"),
        ];
        assert_eq!(executive.len(), 3);
        for ((key, deliver_to, vars), (expected_key, who)) in executive.iter().zip(&expected) {
            let address = format!("{who}@corp.example");
            assert_eq!((key, deliver_to.as_deref()), (expected_key, Some(address.as_str())));
            assert_eq!(vars["links"]["accept"], json!(format!("https://l.example/accept/{address}")));
        }
        // Every copy shows the same headers (the rep's copy is in `sent`).
        assert_eq!(world.sent[3].2, addresses(&["rep", "mgr"]));
        assert_eq!(world.sent[3].3, addresses(&["exec"]));
    }

    fn fnv(text: &str) -> u64 {
        text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
    }

    #[test]
    fn steps_reach_people_in_chat_where_both_name_it_and_fall_back_to_the_email() {
        let mut policy = default_policy();
        // The alert in Slack only; the manager step by Slack and email.
        policy.steps[0].channels = vec![crate::person::Reach::Slack];
        policy.steps[2].channels = vec![crate::person::Reach::Slack, crate::person::Reach::Email];
        let t0 = at("2026-03-02T14:00:00Z");
        let mut world = World::handoff(policy.clone(), "UTC", t0);
        // Nobody is reachable in Slack yet: the alert goes by email, as before.
        assert_eq!(world.keys(), ["sla/00Q1/1/alert"]);

        let reach = crate::person::Reachability {
            default: vec![crate::person::Reach::Email, crate::person::Reach::Slack],
            people: BTreeMap::from([(PersonId::new("mgr"), vec![crate::person::Reach::Email])]),
        };
        let sla = SlaRules::new(SlaConfig { policies: vec![policy], ..SlaConfig::default() })
            .with_links(std::sync::Arc::new(NamedLinks))
            .with_reach(reach);
        let mut record = world.record.clone();
        record.handoff = None;
        record.handoffs = 0;
        let decision = sla.on_lead(None, record, &world.people, t0);
        let chats: Vec<(String, Effect)> = decision
            .effects
            .iter()
            .filter(|(_, e)| matches!(e, Effect::Chat { .. }))
            .map(|(k, e)| (k.to_string(), e.clone()))
            .collect();
        let emails = decision.effects.iter().filter(|(_, e)| matches!(e, Effect::Email { .. })).count();
        assert_eq!(emails, 0, "the alert is in Slack only");
        assert_eq!(chats.len(), 1);
        let (key, chat) = &chats[0];
        assert_eq!(key, "sla/00Q1/1/alert/slack");
        let Effect::Chat { service, to, person, vars, .. } = chat else { unreachable!() };
        assert_eq!((*service, to.as_str()), (crate::effect::ChatService::Slack, "rep@corp.example"));
        assert_eq!(person.as_ref().map(PersonId::as_str), Some("rep"));
        assert_eq!(vars["links"]["accept"], json!("https://l.example/accept/rep@corp.example"));
        // The fallback is the email the step would have sent, under its key.
        let (fallback_key, email) = chat.chat_fallback().expect("a fallback");
        assert_eq!(fallback_key.as_str(), "sla/00Q1/1/alert");
        assert!(matches!(email, Effect::Email { ref template, ref deliver_to, .. }
            if template == "sla_alert" && deliver_to.as_deref() == Some("rep@corp.example")));
        // The step counts once, by its message.
        assert_eq!(decision.summary(None).sla_steps.len(), 1);
        assert!(crate::sla::is_chat_key(&fallback_key.child(["slack"]).expect("key")));
        assert!(!crate::sla::is_copy_key(&fallback_key.child(["slack"]).expect("key")));

        // The manager step: the rep by Slack and email (no fallback needed), the manager by
        // email only (not reachable in Slack).
        world.sla = sla;
        world.record = decision.lead.clone().expect("lead");
        world.timer = decision.set_timers.first().cloned();
        world.copies.clear();
        world.run_until(t0 + TimeDelta::hours(49));
        let manager_step: Vec<(String, Option<String>)> = world
            .copies
            .iter()
            .filter(|(k, _, _)| k.contains("/manager"))
            .map(|(k, to, _)| (k.clone(), to.clone()))
            .collect();
        assert_eq!(
            manager_step,
            [
                ("sla/00Q1/1/manager".to_owned(), Some("rep@corp.example".to_owned())),
                (
                    format!("sla/00Q1/1/manager/to/{:016x}", fnv("mgr@corp.example")),
                    Some("mgr@corp.example".to_owned())
                ),
            ]
        );
    }

    #[test]
    fn each_step_tells_who_the_next_one_copies_and_why_the_lead_matters() {
        let t0 = at("2026-03-02T14:00:00Z");
        let mut world = World::handoff(default_policy(), "UTC", t0);
        world.run_until(t0 + TimeDelta::hours(100));
        let copies: Vec<&Value> = world.vars.iter().map(|v| &v["handoff"]["next_copies"]).collect();
        // The reminder copies no one new; the manager step copies mgr; the executive step
        // copies exec (mgr already had the manager step); nothing follows the executive step.
        assert_eq!(copies, [&json!([]), &json!(["mgr"]), &json!(["exec"]), &json!([])]);
        assert_eq!(world.vars[3]["handoff"]["next_step_at"], Value::Null);
        // Without scoring rules the reasons are an empty list, never missing.
        assert_eq!(world.vars[0]["lead"]["score_reasons"], json!([]));

        // With them, the lead's top reasons.
        let scoring = crate::scoring::ScoringConfig {
            fit: vec![crate::scoring::FitRule {
                name: "senior title".into(),
                field: "title".into(),
                equals: vec![],
                contains: vec!["vp".into()],
                min: None,
                max: None,
                points: 40.0,
            }],
            ..Default::default()
        };
        let sla = SlaRules::new(SlaConfig::default()).with_scoring(scoring);
        let mut record = world.record.clone();
        record.handoff = None;
        record.lead.title = Some("VP Sales".into());
        let decision = sla.on_lead(None, record, &world.people, t0);
        let reasons = decision.effects.iter().find_map(|(_, e)| match e {
            Effect::Email { vars, .. } => Some(vars["lead"]["score_reasons"].clone()),
            _ => None,
        });
        assert_eq!(reasons, Some(json!(["senior title (+40)"])));
    }

    #[test]
    fn business_hours_count_only_working_time_in_the_reps_zone() {
        let mut policy = default_policy();
        policy.business_hours = Some(BusinessHours::default());
        policy.steps.truncate(2);
        policy.steps[1].after = Duration::from_secs(8 * 3600);
        // Friday 6 March 2026, 16:00 in Berlin (15:00 UTC): one working hour left that day.
        let t0 = at("2026-03-06T15:00:00Z");
        let mut world = World::handoff(policy, "Europe/Berlin", t0);
        world.run_until(t0 + TimeDelta::days(7));
        // The alert at once, though late in the day; the 8-hour reminder Monday 16:00 Berlin.
        assert_eq!(
            world.sent.iter().map(|(at, key, _, _)| (*at, key.as_str())).collect::<Vec<_>>(),
            [(t0, "sla/00Q1/1/alert"), (at("2026-03-09T15:00:00Z"), "sla/00Q1/1/reminder")]
        );
    }

    #[test]
    fn after_downtime_latest_sends_only_the_latest_due_step() {
        let t0 = at("2026-03-02T14:00:00Z");
        let mut world = World::handoff(default_policy(), "UTC", t0);
        // Down from just after the alert until past the executive step.
        let back = t0 + TimeDelta::hours(73);
        world.fire_late(back);
        assert_eq!(world.keys(), ["sla/00Q1/1/alert", "sla/00Q1/1/executive"]);
        assert_eq!(world.sent[1].0, back, "sent when leadloop is back");
        let catch_up = world.events.iter().find_map(|e| match &e.kind {
            EventKind::Activity { activity, detail } if activity == "sla_catch_up" => Some(detail.clone()),
            _ => None,
        });
        let detail = catch_up.expect("the catch-up is recorded");
        assert_eq!(detail["skipped"], json!(["reminder", "manager"]));
        assert_eq!(detail["sent"], json!(["executive"]));
    }

    #[test]
    fn after_downtime_all_sends_every_missed_step_in_order() {
        let mut policy = default_policy();
        policy.catch_up = CatchUp::All;
        let t0 = at("2026-03-02T14:00:00Z");
        let mut world = World::handoff(policy, "UTC", t0);
        world.fire_late(t0 + TimeDelta::hours(50));
        assert_eq!(world.keys(), ["sla/00Q1/1/alert", "sla/00Q1/1/reminder", "sla/00Q1/1/manager"]);
        // The executive step is still ahead, on its own schedule.
        assert_eq!(world.timer.as_ref().map(|t| t.due), Some(t0 + TimeDelta::hours(72)));
    }

    #[test]
    fn a_status_change_ends_the_ladder_and_its_timer() {
        let t0 = at("2026-03-02T14:00:00Z");
        let mut world = World::handoff(default_policy(), "UTC", t0);
        let stale = world.timer.clone().expect("the reminder's timer");
        let mut answered = world.record.clone();
        answered.lead.status = Some("Working - Contacted".into());
        let now = t0 + TimeDelta::hours(3);
        let decision = world.sla.on_lead(Some(&world.record), answered, &world.people, now);
        world.take(decision, now);
        assert_eq!(world.timer, None);
        assert!(world.record.handoff.is_none());
        let outcome = world.events.iter().find_map(|e| match &e.kind {
            EventKind::HandoffEnded { outcome, open_seconds, .. } => Some((outcome.clone(), *open_seconds)),
            _ => None,
        });
        assert_eq!(
            outcome,
            Some((HandoffOutcome::StatusChanged { to: Some("Working - Contacted".into()) }, 3 * 3600))
        );
        // A timer of the ended hand-off that fires anyway sends nothing.
        world.fire(&stale, stale.due);
        assert_eq!(world.keys(), ["sla/00Q1/1/alert"]);
    }
}
