//! The leadloop binary's library: command-line interface, config file, daemon lifecycle and
//! admin HTTP. It is the only crate that knows the config format and the CLI; the rest of the
//! workspace gets plain values from it.

pub mod admin;
pub mod cli;
pub mod config;
pub mod connect_cmd;
pub mod daemon;
pub mod demo;
pub mod email_cmd;
pub mod exit;
pub mod guard_cmd;
pub mod links;
pub mod nurture_cmd;
pub mod report;
pub mod runtime;
pub mod serve;
pub mod simulate;
pub mod sla_cmd;
pub mod sync_cmd;
pub mod telemetry;

/// Prints a line on stdout, like `println!`, except that a reader that went away
/// (`leadloop leads list | head`) ends the command quietly with exit 0, as Unix tools do,
/// instead of a panic.
#[macro_export]
macro_rules! outln {
    () => {
        $crate::out_line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::out_line(format_args!($($arg)*))
    };
}

/// What [`outln!`] calls. Control characters (CRM text can hold any) are escaped, so no
/// value can move the cursor, clear the screen or forge a line; the line breaks of the text
/// itself stay.
pub fn out_line(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let text = args.to_string();
    let text = escape_controls(&text, true);
    let mut out = std::io::stdout().lock();
    let written = out.write_all(text.as_bytes()).and_then(|()| out.write_all(b"\n"));
    if let Err(error) = written {
        if error.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("cannot write to standard output: {error}");
        std::process::exit(i32::from(exit::FAILURE));
    }
}

/// `text` with every character that can steer a terminal or forge a line written as
/// `\uXXXX`: C0 controls (line feeds too unless `keep_newlines`), DEL, C1 controls and the
/// bidirectional overrides. The form is a JSON escape, so JSON output stays JSON and means
/// the same.
pub fn escape_controls(text: &str, keep_newlines: bool) -> std::borrow::Cow<'_, str> {
    let escaped = |c: char| {
        (c.is_control() && !(keep_newlines && c == '\n'))
            || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    if !text.chars().any(escaped) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if escaped(c) {
            out.push_str(&format!("\\u{:04x}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn control_characters_are_escaped_as_json_escapes() {
        let text = "Ana\u{1b}[2J\r\nEvil\tLine\u{7f}\u{9b}\u{202e}ok";
        assert_eq!(
            super::escape_controls(text, false),
            "Ana\\u001b[2J\\u000d\\u000aEvil\\u0009Line\\u007f\\u009b\\u202eok"
        );
        assert_eq!(super::escape_controls("a\nb\u{7}", true), "a\nb\\u0007");
        assert!(matches!(super::escape_controls("Zoë Ünal", false), std::borrow::Cow::Borrowed(_)));
        // JSON with a DEL inside a string stays JSON, with the same value.
        let json = serde_json::json!({"name": "a\u{7f}b\u{85}"}).to_string();
        let escaped = super::escape_controls(&json, true);
        let back: serde_json::Value = serde_json::from_str(&escaped).expect("still JSON");
        assert_eq!(back["name"], "a\u{7f}b\u{85}");
    }
}
