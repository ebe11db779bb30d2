//! `leadloop email test` and `leadloop email preview`.
#![allow(clippy::print_stdout)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use leadloop_core::connector::OutgoingEmail;
use leadloop_core::{Clock, IdempotencyKey, LeadId, Mailer, SystemClock};
use leadloop_plugin::BuildContext;
use leadloop_smtp::EmailConfig;

use crate::cli::load_reporting;
use crate::exit;

fn email_config(path: &Path) -> Result<(crate::config::Config, EmailConfig), u8> {
    let config = load_reporting(path)?;
    match config.email() {
        Some(email) => Ok((config, email)),
        None => {
            eprintln!("{}: no [email] table: configure the email connector first", path.display());
            Err(exit::CONFIG)
        }
    }
}

/// Sends the `sla_alert` template with sample data to `to` and prints the server's reply.
pub fn test(path: &Path, to: &str) -> u8 {
    let (_, email) = match email_config(path) {
        Ok(found) => found,
        Err(code) => return code,
    };
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
        };
        match mailer.send(&message).await {
            Ok(receipt) => {
                println!("{} {}", receipt.message_id, receipt.reply);
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
            let store = crate::runtime::open_store(&config, state_dir).await.map_err(|e| e.to_string())?;
            store.lead(&LeadId::new(id)).await.map_err(|e| e.to_string())
        });
        match record {
            Ok(Some(record)) => vars["lead"] = leadloop_core::vars::lead(&record),
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
            println!(
                "Subject: {}\n\n--- text ---\n{}\n--- html ---\n{}",
                rendered.subject, rendered.text, rendered.html
            );
            exit::OK
        }
        Err(error) => {
            eprintln!("{error}");
            exit::FAILURE
        }
    }
}
