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
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).try_init(),
    };
    // Already installed (tests call this more than once): keep the first.
    let _ = result;
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
        .install_recorder()?;
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
