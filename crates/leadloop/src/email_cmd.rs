//! `leadloop email test` and `leadloop email preview`.
#![allow(clippy::print_stdout)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use leadloop_core::connector::OutgoingEmail;
use leadloop_core::{Clock, IdempotencyKey, LeadId, Mailer, SystemClock};
use leadloop_plugin::BuildContext;
use leadloop_smtp::EmailConfig;

use crate::cli::load_for_reading;
use crate::exit;

fn email_config(path: &Path) -> Result<(crate::config::Config, EmailConfig), u8> {
    let config = load_for_reading(path)?;
    match config.email() {
        Some(email) => Ok((config, email)),
        None => {
            eprintln!("{}: no [email] table: configure the email connector first", path.display());
            Err(exit::CONFIG)
        }
    }
}

/// Sends the `sla_alert` template with sample data to `to` and prints the server's reply.
/// With `deliver = "directory"` the message goes to the daemon's mail directory, which must
/// already exist: a test never creates a state directory.
pub fn test(path: &Path, to: &str, state_dir: Option<PathBuf>) -> u8 {
    let (config, _) = match email_config(path) {
        Ok(found) => found,
        Err(code) => return code,
    };
    let source = crate::sla_cmd::Source { config_path: path, state_dir, admin: None };
    let (dir, origin) = source.dir(&config);
    let mut config = config;
    config.daemon.state_dir = dir;
    let Some(email) = config.email() else { return exit::CONFIG };
    if email.deliver == leadloop_smtp::Deliver::Directory && !config.daemon.state_dir.is_dir() {
        eprintln!(
            "no leadloop state in {} ({origin}); nothing was created.\n\
             deliver = \"directory\" writes the test message under the daemon's state directory: \
             pass the daemon's --state-dir, or configure [email.smtp].",
            config.daemon.state_dir.display()
        );
        return exit::STORE;
    }
    let runtime = match crate::cli::runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    runtime.block_on(async {
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let cx = BuildContext { clock: Arc::clone(&clock), shutdown: Default::default() };
        let mailer = match email.build(&cx) {
            Ok(mailer) => mailer,
            Err(error) => {
                eprintln!("{}: {error}", path.display());
                return exit::CONFIG;
            }
        };
        // Two fixed-form parts (a word and a number): the key cannot be refused.
        let key = IdempotencyKey::from_parts(["test".to_owned(), clock.now().timestamp_micros().to_string()]);
        let Ok(key) = key else { return exit::FAILURE };
        let message = OutgoingEmail {
            key,
            kind: "test".into(),
            template: "sla_alert".into(),
            to: vec![to.to_owned()],
            cc: vec![],
            vars: leadloop_smtp::sample_vars("sla_alert"),
            deliver_to: None,
        };
        match mailer.send(&message).await {
            Ok(receipt) => {
                crate::outln!("{} {}", receipt.message_id, receipt.reply);
                exit::OK
            }
            Err(error) => {
                eprintln!("send failed: {error}");
                exit::FAILURE
            }
        }
    })
}

/// Renders `template` with sample data, or with lead `lead` from the state directory.
pub fn preview(path: &Path, template: &str, lead: Option<&str>, state_dir: Option<PathBuf>) -> u8 {
    let (config, email) = match email_config(path) {
        Ok(found) => found,
        Err(code) => return code,
    };
    let templates = match email.templates() {
        Ok(templates) => templates,
        Err(problem) => {
            eprintln!("{problem}");
            return exit::CONFIG;
        }
    };
    let mut vars = leadloop_smtp::sample_vars(template);
    if let Some(id) = lead {
        let runtime = match crate::cli::runtime() {
            Ok(runtime) => runtime,
            Err(code) => return code,
        };
        let record = runtime.block_on(async {
            let store = crate::runtime::open_store_for_reading(&config, state_dir)
                .await
                .map_err(|e| e.to_string())?;
            store.lead(&LeadId::new(id)).await.map_err(|e| e.to_string())
        });
        match record {
            Ok(Some(record)) => {
                vars["lead"] = leadloop_core::vars::lead_scored(&record, &config.scoring, chrono::Utc::now())
            }
            Ok(None) => {
                eprintln!("no lead {id} in the store");
                return exit::FAILURE;
            }
            Err(error) => {
                eprintln!("{error}");
                return exit::STORE;
            }
        }
    }
    match templates.render(template, &vars) {
        Ok(rendered) => {
            crate::outln!(
                "Subject: {}\n\n--- text ---\n{}\n--- html ---\n{}",
                rendered.subject,
                rendered.text,
                rendered.html
            );
            exit::OK
        }
        Err(error) => {
            eprintln!("{error}");
            exit::FAILURE
        }
    }
}
