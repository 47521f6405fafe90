//! Logging: text or JSON lines on stderr, filtered by `RUST_LOG` or the
//! `--log-level` flag.

use tracing_subscriber::{fmt, EnvFilter};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Crates that may print request headers or bodies (tokens, signed AWS
/// requests, Secret data) at debug or trace level: never below info, whatever
/// the filter asks.
const CAPPED: &[&str] = &["hyper", "hyper_util", "h2", "reqwest", "rustls", "tower", "aws_smithy_runtime", "aws_smithy_http_client", "aws_sigv4", "aws_config", "aws_runtime", "kube_client"];

pub fn init(format: LogFormat, level: &str) {
    let mut filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    for krate in CAPPED {
        if let Ok(d) = format!("{krate}=info").parse() {
            filter = filter.add_directive(d);
        }
    }
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
