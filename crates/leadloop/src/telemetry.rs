//! Logs (tracing, human or JSON on stderr) and metrics (a Prometheus recorder rendered by the
//! admin listener's `/metrics`).

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber; `RUST_LOG` filters (default `info`).
pub fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    let result = match format {
        LogFormat::Human => builder.fmt_fields(human_fields()).try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).try_init(),
    };
    // Already installed (tests call this more than once): keep the first.
    let _ = result;
}

/// How human-format lines write an event's fields: as tracing's default does, but with every
/// control character escaped (`\u001b`, `\u000a`), so CRM text in a field or message can
/// neither steer the terminal nor start a forged log line. JSON lines escape on their own.
pub fn human_fields() -> impl for<'w> tracing_subscriber::fmt::FormatFields<'w> + Send + Sync + 'static {
    use tracing_subscriber::field::MakeExt;
    tracing_subscriber::fmt::format::debug_fn(|writer, field, value| {
        let text = format!("{value:?}");
        let text = crate::escape_controls(&text, false);
        match field.name() {
            "message" => write!(writer, "{text}"),
            name => write!(writer, "{}={text}", name.strip_prefix("r#").unwrap_or(name)),
        }
    })
    .delimited(" ")
}

/// Installs the global metrics recorder and returns the handle that renders it.
pub fn init_metrics() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets(&[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0])?
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full("leadloop_sla_time_to_first_touch_seconds".into()),
            &[
                300.0,
                900.0,
                3600.0,
                4.0 * 3600.0,
                8.0 * 3600.0,
                86400.0,
                2.0 * 86400.0,
                3.0 * 86400.0,
                7.0 * 86400.0,
            ],
        )?
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full("leadloop_speed_to_alert_seconds".into()),
            &[1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0],
        )?
        .install_recorder()?;
    metrics::describe_histogram!(
        "leadloop_speed_to_alert_seconds",
        "from the CRM change that qualified a lead to the SMTP server accepting the rep's alert"
    );
    metrics::describe_counter!("leadloop_crm_events_total", "change events read from the CRM");
    metrics::describe_counter!(
        "leadloop_crm_event_fallbacks_total",
        "change events that may have missed changes (expired replay id, gap, overflow): the poll ran at once"
    );
    metrics::describe_gauge!("leadloop_crm_events_live", "1 while CRM change events flow, else 0");
    metrics::describe_counter!("leadloop_timers_fired_total", "timers handled by the engine");
    metrics::describe_histogram!("leadloop_tick_seconds", "time to handle the timers due in one tick");
    metrics::describe_counter!(
        "leadloop_tick_failures_total",
        "ticks that failed (store errors) and were retried"
    );
    metrics::describe_counter!("leadloop_config_reloads_total", "SIGHUP reloads by result");
    metrics::describe_counter!("leadloop_sla_handoffs_started_total", "hand-offs whose SLA ladder started");
    metrics::describe_counter!(
        "leadloop_sla_handoffs_ended_total",
        "hand-offs ended, by outcome (satisfied, reassigned, lead deleted)"
    );
    metrics::describe_histogram!(
        "leadloop_sla_time_to_first_touch_seconds",
        "from hand-off to the first status change"
    );
    metrics::describe_counter!("leadloop_sla_steps_total", "SLA ladder emails queued, by step");
    metrics::describe_gauge!(
        "leadloop_funnel_leads",
        "leads per lifecycle stage (recounted every 5 minutes)"
    );
    metrics::describe_gauge!(
        "leadloop_sla_open_handoffs",
        "hand-offs whose SLA is running (recounted every 5 minutes)"
    );
    metrics::describe_gauge!(
        "leadloop_sla_overdue_handoffs",
        "open hand-offs past their first reminder, by the last step sent (recounted every 5 minutes)"
    );
    metrics::describe_counter!("leadloop_email_sent_total", "emails accepted by the server, by kind");
    metrics::describe_counter!(
        "leadloop_email_retried_total",
        "email sends that failed temporarily and will be retried, by kind"
    );
    metrics::describe_counter!("leadloop_email_failed_total", "emails refused for good, by kind");
    metrics::describe_counter!(
        "leadloop_email_dropped_total",
        "emails dropped unsent (no or only suppressed recipients), by kind"
    );
    metrics::describe_counter!(
        "leadloop_email_suppressed_total",
        "recipients removed at send time by the suppression list"
    );
    metrics::describe_gauge!("leadloop_email_queue_depth", "emails waiting in the outbox");
    metrics::describe_gauge!(
        "leadloop_email_oldest_due_seconds",
        "how long the most overdue pending email has been due"
    );
    metrics::describe_counter!(
        "leadloop_nurture_clicks_ignored_total",
        "tracked-link clicks redirected but not counted, by reason (head, early, repeated, replayed, unknown_lead)"
    );
    metrics::describe_counter!(
        "leadloop_links_throttled_total",
        "public listener requests refused or not acted on past a rate limit, by client or link"
    );
    metrics::describe_gauge!("leadloop_store_size_bytes", "size of the state directory's store on disk");
    metrics::describe_gauge!("leadloop_store_commits", "batches committed since start");
    metrics::describe_gauge!("leadloop_store_flushes", "flushes to disk since start (commits share flushes)");
    metrics::describe_gauge!("leadloop_ready", "1 when the daemon is ready, 0 while starting or draining");
    metrics::describe_gauge!("leadloop_build_info", "always 1; labels carry the version");
    metrics::gauge!("leadloop_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    Ok(handle)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn human_logs_escape_control_characters_from_data() {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .fmt_fields(super::human_fields())
            .finish();
        let name = "Ana\u{1b}[2J\n2026-01-01T00:00:00Z  INFO forged line";
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(lead = %name, reason = ?name, "lead {name} quarantined");
        });
        let text =
            String::from_utf8(buffer.0.lock().unwrap_or_else(|p| p.into_inner()).clone()).expect("utf8");
        assert_eq!(text.lines().count(), 1, "one event, one line: {text}");
        assert!(!text.contains('\u{1b}'), "{text}");
        assert!(
            text.contains("lead Ana\\u001b[2J\\u000a2026-01-01T00:00:00Z  INFO forged line quarantined"),
            "{text}"
        );
        assert!(text.contains("lead=Ana\\u001b[2J\\u000a2026"), "{text}");
    }
}
