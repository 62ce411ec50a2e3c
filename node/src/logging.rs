//! The node's tracing subscriber: text or JSON lines on stderr, filtered by an `EnvFilter`
//! directive (`[log]` in the configuration).
//!
//! Libraries only emit `tracing` events; the `herald` binary installs the one subscriber.

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoggingError {
    /// The filter directive does not parse.
    #[error("log filter {filter:?}: {message}")]
    Filter {
        /// The directive.
        filter: String,
        /// The parser's message.
        message: String,
    },
    /// A global subscriber is installed already.
    #[error("a tracing subscriber is installed already")]
    AlreadyInstalled,
}

/// Install the global subscriber: `format` lines on stderr, filtered by `filter`.
///
/// # Errors
/// [`LoggingError`] if the filter is invalid or a subscriber is installed already.
pub fn init(format: LogFormat, filter: &str) -> Result<(), LoggingError> {
    let env_filter = EnvFilter::try_new(filter).map_err(|e| LoggingError::Filter {
        filter: filter.to_owned(),
        message: e.to_string(),
    })?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(env_filter)
        .with_writer(std::io::stderr);
    let installed = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
    };
    installed.map_err(|_| LoggingError::AlreadyInstalled)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_filter_is_refused() {
        let err = init(LogFormat::Json, "info,herald=notalevel[").unwrap_err();
        assert!(matches!(err, LoggingError::Filter { .. }), "{err}");
    }
}
