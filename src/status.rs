//! The status a reconcile reports: the Ready condition, timestamps and
//! counters, and the server-side apply that writes them.

use chrono::{DateTime, Utc};
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use crate::api::{Condition, RegistryCredential, RegistryCredentialStatus, FIELD_MANAGER, READY};

/// Reasons of the Ready condition besides the source error categories, and
/// of Events.
pub mod reason {
    pub const ROTATED: &str = "Rotated";
    pub const SECRET_CONFLICT: &str = "SecretConflict";
    /// The API server refused the Secret regcred wrote.
    pub const SECRET_REJECTED: &str = "SecretRejected";
    /// A reconcile panicked; the credential is retried with backoff.
    pub const INTERNAL_ERROR: &str = "InternalError";
    /// Event reason of failed attempts.
    pub const MINT_FAILED: &str = "MintFailed";
    /// Credentials live too short to be renewed safely.
    pub const LIFETIME_TOO_SHORT: &str = "LifetimeTooShort";
    /// Revoking a replaced token (RFC 7009) or a registry key (`rotate`) failed.
    pub const REVOCATION_FAILED: &str = "RevocationFailed";
    /// Every reason a failure metric can carry (the source categories and
    /// the two above), so a deleted credential's series can all be removed.
    pub const FAILURES: &[&str] = &[
        "MintFailed", "AccessDenied", "Throttled", "ExpiredToken", "CredentialsNotFound", "InvalidResponse",
        "InvalidSpec", "IdentityNotAllowed", "EgressDenied", "RegistryRejected", SECRET_REJECTED, INTERNAL_ERROR,
    ];
}

/// Condition type set while credentials live too short to be renewed
/// safely (a warning: the credential still rotates).
pub const SHORT_LIVED: &str = "ShortLived";

/// Set or clear the ShortLived warning condition.
pub fn set_short_lived(s: &mut RegistryCredentialStatus, warning: Option<String>, now: DateTime<Utc>) {
    match warning {
        Some(message) => s.set_condition(Condition {
            type_: SHORT_LIVED.into(),
            status: "True".into(),
            reason: reason::LIFETIME_TOO_SHORT.into(),
            message,
            last_transition_time: now,
            observed_generation: s.observed_generation,
        }),
        None => s.conditions.retain(|c| c.type_ != SHORT_LIVED),
    }
}

/// Condition type set while a ServiceAccount entry this credential wants
/// is owned by another credential (both name one Secret in one namespace).
pub const SA_CLASH: &str = "ServiceAccountClash";
/// Its reason while True.
pub const SA_CLASH_REASON: &str = "EntryOwnedByAnotherCredential";

/// Set or clear the ServiceAccountClash condition.
pub fn set_clash(s: &mut RegistryCredentialStatus, clash: Option<String>, generation: Option<i64>, now: DateTime<Utc>) {
    match clash {
        Some(message) => s.set_condition(Condition {
            type_: SA_CLASH.into(),
            status: "True".into(),
            reason: SA_CLASH_REASON.into(),
            message,
            last_transition_time: now,
            observed_generation: generation,
        }),
        None => s.conditions.retain(|c| c.type_ != SA_CLASH),
    }
}

fn condition(status: bool, reason: &str, message: String, generation: Option<i64>, now: DateTime<Utc>) -> Condition {
    Condition {
        type_: READY.into(),
        status: if status { "True" } else { "False" }.into(),
        reason: reason.into(),
        message,
        last_transition_time: now,
        observed_generation: generation,
    }
}

/// After a successful rotation.
#[allow(clippy::too_many_arguments)]
pub fn rotated(
    prev: &RegistryCredentialStatus,
    generation: Option<i64>,
    inputs: &str,
    secret_name: &str,
    registries: Vec<String>,
    not_after: Option<DateTime<Utc>>,
    renewal: DateTime<Utc>,
    now: DateTime<Utc>,
) -> RegistryCredentialStatus {
    let mut s = prev.clone();
    let until = not_after.map(|t| format!(" valid until {}", t.to_rfc3339())).unwrap_or_default();
    let message = format!(
        "Secret {secret_name} holds a credential for {} registr{}{until}; next renewal at {}",
        registries.len(),
        if registries.len() == 1 { "y" } else { "ies" },
        renewal.to_rfc3339()
    );
    s.set_condition(condition(true, reason::ROTATED, message, generation, now));
    s.secret_name = Some(secret_name.into());
    s.registries = registries;
    s.not_after = not_after;
    s.renewal_time = Some(renewal);
    s.last_rotation_time = Some(now);
    s.restarted_pods = None;
    s.failed_attempts = 0;
    s.last_failure_time = None;
    s.observed_generation = generation;
    s.observed_inputs = Some(inputs.into());
    s
}

/// After a failed attempt: the previous credential's fields stay as they are.
pub fn failed(
    prev: &RegistryCredentialStatus,
    generation: Option<i64>,
    inputs: &str,
    reason: &str,
    message: String,
    next_retry: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> RegistryCredentialStatus {
    let mut s = prev.clone();
    let retry = next_retry.map(|t| format!("; retrying at {}", t.to_rfc3339())).unwrap_or_default();
    s.set_condition(condition(false, reason, format!("{message}{retry}"), generation, now));
    s.failed_attempts = s.failed_attempts.saturating_add(1);
    s.last_failure_time = Some(now);
    s.observed_generation = generation;
    s.observed_inputs = Some(inputs.into());
    s
}

/// The target Secret belongs to someone else.
pub fn conflict(prev: &RegistryCredentialStatus, generation: Option<i64>, secret_name: &str, now: DateTime<Utc>) -> RegistryCredentialStatus {
    let mut s = prev.clone();
    let message = format!(
        "Secret {secret_name} exists and is not owned by this RegistryCredential; regcred leaves it untouched. Delete it or set spec.secretName to another name"
    );
    s.set_condition(condition(false, reason::SECRET_CONFLICT, message, generation, now));
    s.secret_name = Some(secret_name.into());
    s.observed_generation = generation;
    s
}

/// Write the whole status with server-side apply, only when it changed.
/// Returns the resourceVersion the write produced (None when nothing changed
/// and nothing was written).
pub async fn patch(api: &Api<RegistryCredential>, cr: &RegistryCredential, status: &RegistryCredentialStatus) -> Result<Option<String>, kube::Error> {
    if cr.status.as_ref() == Some(status) {
        return Ok(None);
    }
    let name = cr.metadata.name.clone().unwrap_or_default();
    let body = json!({
        "apiVersion": "regcred.dev/v1alpha1",
        "kind": "RegistryCredential",
        "status": status,
    });
    let written = api.patch_status(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(body)).await?;
    Ok(written.metadata.resource_version)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::schedule::test_instant as t;

    #[test]
    fn failure_keeps_the_credential_fields_and_counts() {
        let ok = rotated(&Default::default(), Some(2), "g2", "pull", vec!["r".into()], Some(t(100)), t(66), t(0));
        assert_eq!(ok.failed_attempts, 0);
        let f1 = failed(&ok, Some(2), "g2", "MintFailed", "https://x/t answered HTTP 503".into(), Some(t(75)), t(70));
        let f2 = failed(&f1, Some(2), "g2", "MintFailed", "https://x/t answered HTTP 503".into(), Some(t(85)), t(80));
        assert_eq!(f2.failed_attempts, 2);
        assert_eq!(f2.not_after, Some(t(100)));
        assert_eq!(f2.renewal_time, Some(t(66)));
        assert_eq!(f2.last_failure_time, Some(t(80)));
        let c = &f2.conditions[0];
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("False", "MintFailed"));
        // Transition time is when it became False, not the latest failure.
        assert_eq!(c.last_transition_time, t(70));
        let back = rotated(&f2, Some(2), "g2", "pull", vec!["r".into()], Some(t(200)), t(166), t(90));
        assert_eq!((back.failed_attempts, back.last_failure_time), (0, None));
        assert_eq!(back.conditions[0].status, "True");
        assert_eq!(back.conditions.len(), 1);
    }

    #[test]
    fn short_lived_warning_comes_and_goes() {
        let mut s = rotated(&Default::default(), Some(1), "g1", "pull", vec!["r".into()], Some(t(1)), t(10), t(0));
        set_short_lived(&mut s, Some("lives 1s".into()), t(0));
        assert_eq!(s.conditions.len(), 2);
        let c = s.conditions.iter().find(|c| c.type_ == SHORT_LIVED).unwrap();
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("True", "LifetimeTooShort"));
        set_short_lived(&mut s, None, t(20));
        assert_eq!(s.conditions.len(), 1);
        assert_eq!(s.conditions[0].type_, "Ready");
    }
}
