//! The log settings every Coffer binary (`coffer`, `containerd-shim-coffer-v2`, `coffer-kbs`)
//! shares: the level comes from `COFFER_LOG` (`RUST_LOG` is read when `COFFER_LOG` is unset), in
//! `tracing_subscriber::EnvFilter` syntax (`warn`, `info,coffer_image=debug`, …); a value that does
//! not parse is an error naming the variable, never silently replaced by the default; escape
//! sequences for colour are written only to a terminal, never into a file or a pipe. A failure is
//! reported as one line ([`error_line`]).
#![forbid(unsafe_code)]

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// The variable that sets the log level of every Coffer binary.
pub const VARIABLE: &str = "COFFER_LOG";
/// Read when [`VARIABLE`] is unset, as most Rust programs do.
pub const FALLBACK: &str = "RUST_LOG";

/// How many characters of an invalid value an error quotes.
const QUOTED_CHARS: usize = 40;

/// A log setting that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The variable's value is not a filter.
    #[error("{variable}={value}: not a log filter (e.g. warn, info, coffer_image=debug)")]
    Invalid {
        /// The variable read.
        variable: &'static str,
        /// A short escaped prefix of its value.
        value: String,
        /// The parser's complaint.
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },
    /// A directive without `=` is not a level (a bare word would silently name a target).
    #[error(
        "{variable}={value}: {directive:?} is not a level (trace, debug, info, warn, error, off); write TARGET=LEVEL for one module"
    )]
    NotALevel {
        /// The variable read.
        variable: &'static str,
        /// A short escaped prefix of its value.
        value: String,
        /// The directive, a short escaped prefix.
        directive: String,
    },
    /// The variable's value is not UTF-8.
    #[error("{variable} is not valid UTF-8")]
    NotUnicode {
        /// The variable read.
        variable: &'static str,
    },
}

/// The filter `COFFER_LOG` (else `RUST_LOG`) asks for, or `default` when neither is set.
pub fn filter(default: &str) -> Result<EnvFilter, LogError> {
    for variable in [VARIABLE, FALLBACK] {
        match std::env::var(variable) {
            Ok(value) => return parse(variable, &value),
            Err(std::env::VarError::NotPresent) => {}
            Err(std::env::VarError::NotUnicode(_)) => {
                return Err(LogError::NotUnicode { variable });
            }
        }
    }
    Ok(EnvFilter::new(default))
}

/// `value` of `variable` as a filter.
fn parse(variable: &'static str, value: &str) -> Result<EnvFilter, LogError> {
    const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
    for directive in value.split(',').map(str::trim) {
        let bare = !directive.is_empty() && !directive.contains(['=', '[']);
        if bare && !LEVELS.iter().any(|l| l.eq_ignore_ascii_case(directive)) {
            return Err(LogError::NotALevel {
                variable,
                value: escaped_prefix(value, QUOTED_CHARS),
                directive: escaped_prefix(directive, QUOTED_CHARS),
            });
        }
    }
    EnvFilter::builder()
        .parse(value)
        .map_err(|source| LogError::Invalid {
            variable,
            value: escaped_prefix(value, QUOTED_CHARS),
            source,
        })
}

/// `value` as an error may quote it: escaped (`char::escape_debug`), at most `max_chars`
/// characters of it, and `…` when it was longer.
pub fn escaped_prefix(value: &str, max_chars: usize) -> String {
    let mut out: String = value
        .chars()
        .take(max_chars)
        .flat_map(char::escape_debug)
        .collect();
    if value.chars().count() > max_chars {
        out.push('…');
    }
    out
}

/// Whether to colour what goes to stderr: only on a terminal, and not when `NO_COLOR` is set.
pub fn ansi_on_stderr() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

/// `err` and its causes as one line, joined by `: `, white space folded, each cause once: a cause
/// whose text the message before it already quotes (a message that includes its source's) is left
/// out.
pub fn error_line(err: &(dyn std::error::Error + 'static)) -> String {
    error_line_with(err, |_| None)
}

/// [`error_line`] with `render` saying a cause in its own words where it returns `Some` (for
/// dependencies' errors whose `Display` is a `Debug` dump).
pub fn error_line_with(
    err: &(dyn std::error::Error + 'static),
    render: impl Fn(&(dyn std::error::Error + 'static)) -> Option<String>,
) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in std::iter::successors(Some(err), |e| e.source()) {
        let text = render(cause).unwrap_or_else(|| cause.to_string());
        let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
        if text.is_empty() || parts.iter().any(|p| p.contains(&text)) {
            continue;
        }
        parts.push(text);
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("{0}")]
    struct Outer(&'static str, #[source] std::io::Error);

    #[test]
    fn a_cause_the_message_quotes_is_printed_once() {
        let inner = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file");
        let err = Outer("reading x: No such file", inner);
        assert_eq!(error_line(&err), "reading x: No such file");
    }

    #[test]
    fn multi_line_messages_become_one_line() {
        let inner = std::io::Error::other("unknown field\n  |\n1 | x");
        let err = Outer("parse error", inner);
        assert_eq!(error_line(&err), "parse error: unknown field | 1 | x");
    }

    #[test]
    fn filters_parse_and_garbage_is_refused_with_the_variable_named() {
        assert!(parse(VARIABLE, "info,coffer_image=debug").is_ok());
        assert!(parse(VARIABLE, "WARN").is_ok());
        let err = parse(VARIABLE, "verbose").err().map(|e| e.to_string());
        assert!(
            err.unwrap_or_default()
                .contains("\"verbose\" is not a level")
        );
        let err = parse(VARIABLE, "coffer=loud\n")
            .err()
            .map(|e| e.to_string());
        let err = err.unwrap_or_default();
        assert!(
            err.starts_with("COFFER_LOG=coffer=loud\\n: not a log filter"),
            "{err}"
        );
    }

    #[test]
    fn long_values_are_quoted_as_a_prefix() {
        let quoted = escaped_prefix(&"x".repeat(100), QUOTED_CHARS);
        assert_eq!(quoted.chars().count(), QUOTED_CHARS + 1);
    }
}
