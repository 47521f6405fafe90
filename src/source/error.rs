//! Why a mint failed, in words that are safe to show anywhere.

/// A failed mint. Messages name the step and the object, never secret
/// material: endpoint errors are summarised (status code, endpoint without
/// query, a bounded error code), never echoed whole.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("Secret {name:?} not found in namespace {namespace:?}")]
    SecretNotFound { namespace: String, name: String },
    #[error("key {key:?} is missing or empty in Secret {name:?}")]
    SecretKeyMissing { name: String, key: String },
    #[error("reading Secret {name:?}: {reason}")]
    SecretRead { name: String, reason: String },
    #[error("ServiceAccount {name:?} not found in namespace {namespace:?} (webIdentity.serviceAccountName)")]
    ServiceAccountNotFound { namespace: String, name: String },
    #[error("{what} of ServiceAccount {name:?}: {reason}")]
    ServiceAccountRead { what: &'static str, name: String, reason: String },
    #[error("{field}: {problem}")]
    InvalidSpec { field: &'static str, problem: String },
    #[error("{endpoint} answered HTTP {status}{}", code.as_ref().map(|c| format!(" ({c})")).unwrap_or_default())]
    HttpStatus { endpoint: String, status: u16, code: Option<String> },
    #[error("request to {endpoint} failed: {kind}")]
    Transport { endpoint: String, kind: &'static str },
    #[error("invalid response from {endpoint}: {problem}")]
    InvalidResponse { endpoint: String, problem: String },
    #[error("TLS settings: {0}")]
    Tls(String),
    #[error("the operator's own AWS identity may not be used from namespace {namespace:?}; set credentialsSecretRef or webIdentity, or ask the cluster admin to allow this namespace")]
    IdentityNotAllowed { namespace: String },
    #[error("AWS {operation}: {code}: {message}")]
    Aws { operation: &'static str, code: String, message: String },
    #[error("egress to {host} is denied by the operator's egress policy; nothing was sent")]
    EgressDenied { host: String },
    #[error("{0}")]
    NotAllowed(String),
    #[error("{0}")]
    Deadline(String),
    #[error("registry {registry} refused the new credential (HTTP {status}); the current Secret is kept")]
    RegistryRejected { registry: String, status: u16 },
}

impl SourceError {
    /// A bounded CamelCase reason for conditions, Events and metric labels.
    pub fn category(&self) -> &'static str {
        match self {
            Self::SecretNotFound { .. } | Self::SecretKeyMissing { .. } => "CredentialsNotFound",
            Self::SecretRead { .. } | Self::ServiceAccountNotFound { .. } | Self::ServiceAccountRead { .. } => "CredentialsNotFound",
            Self::InvalidSpec { .. } | Self::Tls(_) => "InvalidSpec",
            Self::HttpStatus { status: 401 | 403, .. } => "AccessDenied",
            Self::HttpStatus { status: 429, .. } => "Throttled",
            Self::HttpStatus { .. } | Self::Transport { .. } => "MintFailed",
            Self::InvalidResponse { .. } => "InvalidResponse",
            Self::IdentityNotAllowed { .. } | Self::NotAllowed(_) => "IdentityNotAllowed",
            Self::EgressDenied { .. } => "EgressDenied",
            Self::Deadline(_) => "MintFailed",
            Self::RegistryRejected { .. } => "RegistryRejected",
            Self::Aws { code, .. } => aws_category(code),
        }
    }
}

fn aws_category(code: &str) -> &'static str {
    match code {
        "AccessDenied" | "AccessDeniedException" | "UnrecognizedClientException"
        | "InvalidClientTokenId" | "SignatureDoesNotMatch" | "InvalidIdentityToken" => "AccessDenied",
        "ExpiredToken" | "ExpiredTokenException" => "ExpiredToken",
        "Throttling" | "ThrottlingException" | "TooManyRequestsException" => "Throttled",
        "RepositoryNotFoundException" | "RegistryNotFoundException" | "InvalidParameterException" => {
            "InvalidSpec"
        }
        _ => "MintFailed",
    }
}

/// Keep only an error code that looks like one (`invalid_client`,
/// `AccessDenied`); anything longer or odder may be a reflected secret.
pub fn bounded_code(code: &str) -> Option<String> {
    let ok = !code.is_empty()
        && code.len() <= 64
        && code.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    ok.then(|| code.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn categories_are_bounded() {
        let http = |status| SourceError::HttpStatus { endpoint: "https://x/t".into(), status, code: None };
        assert_eq!(http(401).category(), "AccessDenied");
        assert_eq!(http(403).category(), "AccessDenied");
        assert_eq!(http(429).category(), "Throttled");
        assert_eq!(http(500).category(), "MintFailed");
        let aws = |code: &str| SourceError::Aws { operation: "GetAuthorizationToken", code: code.into(), message: String::new() };
        assert_eq!(aws("AccessDeniedException").category(), "AccessDenied");
        assert_eq!(aws("ThrottlingException").category(), "Throttled");
        assert_eq!(aws("ExpiredTokenException").category(), "ExpiredToken");
        assert_eq!(aws("SomethingNew").category(), "MintFailed");
        assert_eq!(
            SourceError::SecretNotFound { namespace: "a".into(), name: "b".into() }.category(),
            "CredentialsNotFound"
        );
    }

    #[test]
    fn only_plain_codes_survive() {
        assert_eq!(bounded_code("invalid_client").as_deref(), Some("invalid_client"));
        assert_eq!(bounded_code(""), None);
        assert_eq!(bounded_code("token=abc def"), None);
        assert_eq!(bounded_code(&"a".repeat(65)), None);
    }

    #[test]
    fn http_message_names_status_and_endpoint() {
        let e = SourceError::HttpStatus { endpoint: "https://auth.example/token".into(), status: 401, code: Some("invalid_client".into()) };
        assert_eq!(e.to_string(), "https://auth.example/token answered HTTP 401 (invalid_client)");
    }
}
