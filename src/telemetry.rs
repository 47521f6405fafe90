//! Logging: text or JSON lines on stderr, filtered by `RUST_LOG` or the
//! `--log-level` flag.

use tracing::Level;
use tracing_subscriber::filter::{filter_fn, EnvFilter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, Layer};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Crates that may print request headers or bodies (tokens, signed AWS
/// requests, Secret data) at debug or trace level: never below info, whatever
/// the filter asks.
const CAPPED: &[&str] = &["hyper", "hyper_util", "h2", "reqwest", "rustls", "tower", "aws_smithy_runtime", "aws_smithy_http_client", "aws_sigv4", "aws_config", "aws_runtime", "kube_client"];

/// Is an event of this target and level allowed past the caps? A separate
/// filter from the user's, so no directive (`aws_sigv4::sign=trace`) can
/// lift a cap.
pub fn within_caps(target: &str, level: &Level) -> bool {
    let capped = CAPPED.iter().any(|k| target == *k || target.strip_prefix(k).is_some_and(|rest| rest.starts_with("::")));
    !capped || *level <= Level::INFO
}

pub fn init(format: LogFormat, level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let caps = filter_fn(|meta| within_caps(meta.target(), meta.level()));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let layer = match format {
        LogFormat::Text => fmt::layer().with_ansi(ansi).with_writer(std::io::stderr).boxed(),
        LogFormat::Json => fmt::layer().json().flatten_event(true).with_writer(std::io::stderr).boxed(),
    };
    let _ = tracing_subscriber::registry().with(layer.with_filter(caps).with_filter(filter)).try_init();
}

/// Drive a controller's results to their end. Each reconcile reports its own
/// failures (conditions, Events, metrics); what arrives here is
/// kube-runtime's (a queue or watch error), logged at debug as `what`.
pub async fn drain<T, E: std::fmt::Display>(results: impl futures::Stream<Item = Result<T, E>>, what: &str) {
    futures::StreamExt::for_each(results, |res| async move {
        if let Err(e) = res {
            tracing::debug!(error = %e, "{what}");
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_hold_for_submodules() {
        assert!(!within_caps("aws_sigv4", &Level::TRACE));
        assert!(!within_caps("aws_sigv4::http_request::sign", &Level::DEBUG));
        assert!(!within_caps("hyper_util::client", &Level::DEBUG));
        assert!(within_caps("aws_sigv4::sign", &Level::INFO));
        assert!(within_caps("regcred::controller", &Level::TRACE));
        // a prefix is not a crate: `hyperion` is not `hyper`
        assert!(within_caps("hyperion", &Level::DEBUG));
    }
}
