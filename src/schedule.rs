//! All time math of the rotation, pure: `now` is always passed in.
//!
//! The renewal instant of a credential, the ordered decision of what a
//! reconcile does, the failure backoff and the requeue clamp live here, so
//! they can be tested as tables without a clock or an API server.

use chrono::{DateTime, Duration, Utc};

/// Renewal policy from the spec, already parsed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    /// Renew this long before expiry.
    pub renew_before: Option<Duration>,
    /// Renew when this percentage (1–99) of the lifetime remains.
    pub renew_before_percentage: Option<u8>,
    /// Refresh interval for credentials without an expiry.
    pub refresh_interval: Duration,
    /// The least time between two mints of one credential, whatever its
    /// source answers (`--min-mint-interval`).
    pub min_interval: Duration,
}

/// How often credentials without an expiry (the `basic` source) are re-read
/// when nothing changes.
pub const DEFAULT_REFRESH_INTERVAL: Duration = Duration::hours(1);
/// Bounds of the refresh interval (the CRD allows 1m..168h).
pub const MIN_REFRESH_INTERVAL: Duration = Duration::minutes(1);
pub const MAX_REFRESH_INTERVAL: Duration = Duration::hours(168);
/// The longest lifetime regcred believes: a credential that claims to live
/// longer (a hostile `expires_in: 1e20`, a JWT `exp` in the year 9999) is
/// treated as living this long, so every instant derived from it is a date
/// the API server accepts and no arithmetic can overflow.
pub const MAX_LIFETIME: Duration = Duration::days(365);
/// Default of `--min-mint-interval`.
pub const DEFAULT_MIN_MINT_INTERVAL: Duration = Duration::seconds(10);
/// The longest the safety margin before expiry gets.
const MAX_SAFETY_MARGIN: Duration = Duration::minutes(5);
/// The most jitter ever taken off a renewal instant.
const MAX_JITTER: Duration = Duration::minutes(5);
/// First retry delay after a failure.
pub const BACKOFF_BASE: Duration = Duration::seconds(5);
/// Longest retry delay after failures while a valid credential is in place.
pub const BACKOFF_MAX: Duration = Duration::minutes(5);
/// Longest retry delay when no valid credential is in place (pulls may be
/// failing right now).
pub const BACKOFF_MAX_URGENT: Duration = Duration::minutes(1);
/// Requeue bounds: never spin faster than this ...
const MIN_REQUEUE: Duration = Duration::seconds(1);
/// ... and look again at least this often even when nothing is due.
const MAX_REQUEUE: Duration = Duration::hours(1);

/// A stable 64-bit hash (FNV-1a) of an object's identity, so the jitter of a
/// credential is the same after an operator restart.
pub fn seed(identity: &str) -> u64 {
    identity.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn whole_seconds(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp(t.timestamp(), 0).unwrap_or(t)
}

/// The safety margin before expiry: a tenth of the lifetime, at least one
/// second, at most five minutes.
pub fn safety_margin(lifetime: Duration) -> Duration {
    (lifetime / 10).clamp(Duration::seconds(1), MAX_SAFETY_MARGIN)
}

/// `t + d`, saturating instead of panicking (chrono panics on overflow).
pub fn add(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    t.checked_add_signed(d).unwrap_or(if d < Duration::zero() { DateTime::<Utc>::MIN_UTC } else { DateTime::<Utc>::MAX_UTC })
}

/// The expiry of a credential that a source says lives `seconds` from
/// `issued_at` (any i64, hostile values included), with the lifetime clamped
/// to `[1 s, MAX_LIFETIME]`.
pub fn expiry_after(issued_at: DateTime<Utc>, seconds: i64) -> DateTime<Utc> {
    let secs = seconds.clamp(1, MAX_LIFETIME.num_seconds());
    add(issued_at, Duration::seconds(secs))
}

/// An absolute expiry from a source, with the lifetime clamped to at most
/// `MAX_LIFETIME` (an expiry in the past stays in the past: it is refused).
pub fn clamp_expiry(issued_at: DateTime<Utc>, expires_at: DateTime<Utc>) -> DateTime<Utc> {
    expires_at.min(add(issued_at, MAX_LIFETIME))
}

/// When to mint next, and whether that is early enough.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Renewal {
    /// The renewal instant, whole seconds.
    pub at: DateTime<Utc>,
    /// False when the credential lives too short to be renewed safely: the
    /// least interval between mints puts the renewal after the safety margin
    /// before expiry (or after expiry itself).
    pub safe: bool,
}

/// When to mint the next credential.
///
/// - `renewBefore`: `not_after - renew_before`; a `renewBefore` as long as the
///   lifetime or longer falls back to the default (it would otherwise renew
///   every credential as soon as it was minted);
/// - `renewBeforePercentage` p: at `(100 - p)%` of the lifetime;
/// - default: at two thirds of the lifetime;
/// - then a deterministic jitter of up to 5% of the lifetime (at most five
///   minutes) is taken off, never later than the safety margin before
///   `not_after`, never before `issued_at + min_interval`, truncated to whole
///   seconds.
///
/// Without an expiry the credential is refreshed every `refresh_interval`.
/// Lifetimes are clamped to `MAX_LIFETIME` first, so nothing here overflows.
pub fn renewal(issued_at: DateTime<Utc>, not_after: Option<DateTime<Utc>>, policy: &Policy, seed: u64) -> Renewal {
    let min_interval = policy.min_interval.clamp(Duration::zero(), MAX_REFRESH_INTERVAL);
    let earliest = add(issued_at, min_interval);
    let Some(not_after) = not_after else {
        let every = policy.refresh_interval.clamp(MIN_REFRESH_INTERVAL, MAX_REFRESH_INTERVAL).max(min_interval);
        return Renewal { at: whole_seconds(add(issued_at, every)), safe: true };
    };
    let not_after = clamp_expiry(issued_at, not_after);
    let lifetime = not_after - issued_at;
    if lifetime <= Duration::zero() {
        return Renewal { at: whole_seconds(earliest), safe: false };
    }
    // From here on every duration is at most MAX_LIFETIME; `add` still
    // guards the instants at the ends of chrono's range.
    let default = add(issued_at, lifetime * 2 / 3);
    let before = policy.renew_before.map(|b| b.clamp(Duration::zero(), MAX_LIFETIME));
    let base = match (before, policy.renew_before_percentage) {
        (Some(before), _) if before < lifetime => add(not_after, -before),
        (Some(_), _) => default,
        (None, Some(p)) => add(issued_at, lifetime * i32::from(100 - p.clamp(1, 99)) / 100),
        (None, None) => default,
    };
    let max_jitter = (lifetime / 20).min(MAX_JITTER).num_seconds();
    let jitter = if max_jitter > 0 { (seed % (max_jitter as u64 + 1)) as i64 } else { 0 };
    let latest = add(not_after, -safety_margin(lifetime));
    let at = add(base, -Duration::seconds(jitter)).min(latest).max(issued_at);
    let at = whole_seconds(at.max(earliest));
    Renewal { at, safe: at <= latest }
}

/// The renewal instant alone (see [`renewal`]).
pub fn renewal_time(issued_at: DateTime<Utc>, not_after: Option<DateTime<Utc>>, policy: &Policy, seed: u64) -> DateTime<Utc> {
    renewal(issued_at, not_after, policy, seed).at
}

/// Delay before retry number `failures` (1 = after the first failure):
/// `5s * 2^(failures-1)`, up to +25% deterministic jitter, capped at five
/// minutes, and capped again so a retry happens well before a credential
/// that is still valid expires (a quarter of its remaining life). Without a
/// valid credential the cap is one minute.
pub fn backoff(
    failures: u32,
    seed: u64,
    now: DateTime<Utc>,
    current_not_after: Option<DateTime<Utc>>,
) -> Duration {
    let exp = failures.saturating_sub(1).min(16);
    let base = (BACKOFF_BASE * 2i32.pow(exp)).min(BACKOFF_MAX);
    let spread = base.num_milliseconds() / 4;
    let jitter = if spread > 0 {
        (seed.rotate_left(failures) % (spread as u64 + 1)) as i64
    } else {
        0
    };
    let delay = base + Duration::milliseconds(jitter);
    let left = current_not_after.map(|t| t - now).filter(|l| *l > Duration::zero());
    let cap = match left {
        Some(left) => BACKOFF_MAX.min(left / 4),
        None => BACKOFF_MAX_URGENT,
    };
    delay.min(cap).max(MIN_REQUEUE)
}

/// Clamp a wait so the controller neither spins nor sleeps for hours without a look.
pub fn requeue_after(now: DateTime<Utc>, until: DateTime<Utc>) -> std::time::Duration {
    (until - now)
        .clamp(MIN_REQUEUE, MAX_REQUEUE)
        .to_std()
        .unwrap_or(std::time::Duration::from_secs(1))
}

/// What regcred knows about the target Secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretState {
    /// No Secret of that name.
    Missing,
    /// A Secret of that name exists and is not controlled by this credential.
    Foreign,
    /// Our Secret.
    Ours(OurSecret),
}

/// The parts of our Secret that the decision needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OurSecret {
    /// Data present, well-formed and not partial.
    pub intact: bool,
    /// Fingerprint of the inputs that produced it.
    pub inputs: Option<String>,
    pub not_after: Option<DateTime<Utc>>,
    pub renewal_time: Option<DateTime<Utc>>,
}

/// Everything `decide` looks at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    pub secret: SecretState,
    /// Fingerprint of the current spec generation and referenced Secrets.
    pub desired_inputs: String,
    /// Fingerprint of the inputs of the last attempt, successful or not.
    pub attempted_inputs: Option<String>,
    pub failed_attempts: u32,
    pub last_failure: Option<DateTime<Utc>>,
    /// When the last mint was attempted (successful or not).
    pub last_attempt: Option<DateTime<Utc>>,
    /// The least time between two mints.
    pub min_interval: Duration,
    /// Someone asked for a new credential now (and was not served yet).
    pub renew_requested: bool,
    pub seed: u64,
}

/// Why a mint happens now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MintReason {
    /// No Secret yet.
    SecretMissing,
    /// The Secret's data was changed or damaged by someone else.
    SecretChanged,
    /// The spec or a referenced Secret changed.
    InputsChanged,
    /// The renewal instant has come.
    Renewal,
    /// The backoff after a failure is over.
    Retry,
    /// Someone asked for a new credential (`regcred renew`).
    RenewRequested,
}

/// What a reconcile does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Mint a credential and write it now.
    Mint(MintReason),
    /// Nothing to do until this instant.
    WaitUntil(DateTime<Utc>),
    /// The target Secret belongs to someone else: touch nothing, look again later.
    Blocked,
    /// A failure happened recently: retry at this instant.
    BackOffUntil(DateTime<Utc>),
}

/// How long to wait before looking again at a Secret we cannot touch.
pub const BLOCKED_RECHECK: Duration = Duration::minutes(1);

/// The ordered decision:
/// 0. whatever the rest says, no mint sooner than `min_interval` after the
///    last attempt (a source answering 1 s lifetimes cannot make a loop),
///    except a retry after a recorded failure: the backoff paces those, and
///    fits them in what is left of the credential's life (the interval would
///    push the second retry after a short outage past the expiry);
/// 1. a foreign Secret blocks everything;
/// 2. changed inputs (spec or referenced Secrets) mint now, even during backoff;
/// 3. within the backoff after a failure, wait;
/// 4. a missing or damaged Secret mints now;
/// 5. after a failure whose backoff is over, retry;
/// 6. at or after the renewal instant, mint;
/// 7. otherwise wait for the renewal instant.
pub fn decide(now: DateTime<Utc>, o: &Observed) -> Decision {
    let d = decide_unlimited(now, o);
    let paced_by_backoff = d == Decision::Mint(MintReason::Retry) && o.last_failure.is_some_and(|f| Some(f) >= o.last_attempt);
    if paced_by_backoff {
        return d;
    }
    if let (Decision::Mint(_), Some(last)) = (&d, o.last_attempt) {
        let earliest = add(last, o.min_interval);
        if now < earliest {
            return Decision::WaitUntil(earliest);
        }
    }
    d
}

fn decide_unlimited(now: DateTime<Utc>, o: &Observed) -> Decision {
    let ours = match &o.secret {
        SecretState::Foreign => return Decision::Blocked,
        SecretState::Missing => None,
        SecretState::Ours(s) => Some(s),
    };
    if o.attempted_inputs.as_deref() != Some(o.desired_inputs.as_str()) {
        return Decision::Mint(MintReason::InputsChanged);
    }
    if o.renew_requested {
        return Decision::Mint(MintReason::RenewRequested);
    }
    if o.failed_attempts > 0 {
        if let Some(last) = o.last_failure {
            let current = ours.filter(|s| s.intact).and_then(|s| s.not_after);
            let retry_at = add(last, backoff(o.failed_attempts, o.seed, last, current));
            if now < retry_at {
                return Decision::BackOffUntil(retry_at);
            }
        }
    }
    let Some(ours) = ours else {
        return Decision::Mint(MintReason::SecretMissing);
    };
    if !ours.intact || ours.inputs.as_deref() != Some(o.desired_inputs.as_str()) {
        return Decision::Mint(MintReason::SecretChanged);
    }
    if o.failed_attempts > 0 {
        return Decision::Mint(MintReason::Retry);
    }
    match ours.renewal_time {
        Some(at) if now < at => Decision::WaitUntil(at),
        _ => Decision::Mint(MintReason::Renewal),
    }
}

/// A fixed instant plus `s` seconds, for tests.
#[cfg(test)]
pub(crate) fn test_instant(s: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::test_instant as t;
    fn secs(s: i64) -> Duration {
        Duration::seconds(s)
    }
    fn policy(before: Option<i64>, pct: Option<u8>) -> Policy {
        Policy {
            renew_before: before.map(secs),
            renew_before_percentage: pct,
            refresh_interval: DEFAULT_REFRESH_INTERVAL,
            min_interval: Duration::zero(),
        }
    }

    #[test]
    fn renewal_time_table() {
        // (issued, not_after, renewBefore, percentage, seed, expected)
        let h12 = 12 * 3600;
        let cases: &[(i64, Option<i64>, Option<i64>, Option<u8>, u64, i64)] = &[
            // default: 2/3 of 12 h = 8 h, no jitter with seed 0
            (0, Some(h12), None, None, 0, 8 * 3600),
            // renewBefore 1h
            (0, Some(h12), Some(3600), None, 0, 11 * 3600),
            // percentage 50 -> half the lifetime
            (0, Some(h12), None, Some(50), 0, 6 * 3600),
            // percentage 99 -> after 1% of the lifetime
            (0, Some(h12), None, Some(99), 0, h12 / 100),
            // percentage 1 -> at 99% of the lifetime
            (0, Some(h12), None, Some(1), 0, h12 * 99 / 100),
            // percentage 1 on a 100 s token wants 99 s, capped at the 10 s margin
            (0, Some(100), None, Some(1), 0, 90),
            // renewBefore longer than the lifetime falls back to 2/3
            (0, Some(30), Some(3600), None, 0, 20),
            // renewBefore 1s on a 30 s token is capped at the 3 s safety margin
            (0, Some(30), Some(1), None, 0, 27),
            // 30 s token, default: 20 s; jitter up to 1 s (5%), seed 1 -> 1 s
            (0, Some(30), None, None, 1, 19),
            // jitter never exceeds 5 minutes: seed 300 on 12 h -> 300 s earlier
            (0, Some(h12), None, None, 300, 8 * 3600 - 300),
            // seed 301 wraps to 0 on a 301-value range
            (0, Some(h12), None, None, 301, 8 * 3600),
            // already expired on arrival -> renew at issue time
            (100, Some(50), None, None, 7, 100),
            // no expiry -> refresh interval
            (0, None, None, None, 5, 3600),
        ];
        for (i, &(issued, not_after, before, pct, seed, want)) in cases.iter().enumerate() {
            let got = renewal_time(t(issued), not_after.map(t), &policy(before, pct), seed);
            assert_eq!(got, t(want), "case {i}");
        }
    }

    #[test]
    fn renewal_time_is_whole_seconds_and_before_expiry() {
        for seed in 0..500u64 {
            for life in [2i64, 7, 20, 30, 61, 3600, 43_200] {
                let issued = t(0) + Duration::milliseconds(437);
                let na = issued + secs(life);
                let r = renewal_time(issued, Some(na), &policy(None, None), seed);
                assert_eq!(r.timestamp_subsec_nanos(), 0);
                assert!(r < na, "seed {seed} life {life}: {r} !< {na}");
                assert!(r + Duration::seconds(1) >= issued);
            }
        }
    }

    #[test]
    fn backoff_table() {
        let now = t(0);
        // (failures, seed, current not_after, min, max)
        let h = 3600;
        let cases: &[(u32, u64, Option<i64>, i64, i64)] = &[
            (1, 0, Some(h), 5_000, 5_000),
            (1, 12345, Some(h), 5_000, 6_250),
            (2, 0, Some(h), 10_000, 10_000),
            (3, 99, Some(h), 20_000, 25_000),
            (7, 0, Some(h), 300_000, 300_000),
            (40, u64::MAX, Some(h), 300_000, 300_000),
            // a credential with 40 s left caps the delay at 10 s
            (7, 0, Some(40), 10_000, 10_000),
            // with 2 s left: never below one second
            (7, 0, Some(2), 1_000, 1_000),
            // no valid credential: capped at one minute
            (2, 0, None, 10_000, 10_000),
            (9, 0, None, 60_000, 60_000),
            (9, 0, Some(-5), 60_000, 60_000),
        ];
        for (i, &(n, seed, na, lo, hi)) in cases.iter().enumerate() {
            let d = backoff(n, seed, now, na.map(t)).num_milliseconds();
            assert!(d >= lo && d <= hi, "case {i}: {d} not in {lo}..={hi}");
        }
    }

    #[test]
    fn requeue_is_clamped() {
        assert_eq!(requeue_after(t(0), t(-10)).as_secs(), 1);
        assert_eq!(requeue_after(t(0), t(42)).as_secs(), 42);
        assert_eq!(requeue_after(t(0), t(8 * 3600)).as_secs(), 3600);
    }

    fn ours(intact: bool, inputs: &str, renewal: i64) -> SecretState {
        SecretState::Ours(OurSecret {
            intact,
            inputs: Some(inputs.into()),
            not_after: Some(t(3600)),
            renewal_time: Some(t(renewal)),
        })
    }

    #[test]
    fn decide_table() {
        use Decision::*;
        use MintReason::*;
        let obs = |secret: SecretState, attempted: Option<&str>, failures: u32, last: Option<i64>| Observed {
            secret,
            desired_inputs: "g2".into(),
            attempted_inputs: attempted.map(Into::into),
            failed_attempts: failures,
            last_failure: last.map(t),
            last_attempt: None,
            min_interval: Duration::zero(),
            renew_requested: false,
            seed: 0,
        };
        let now = t(100);
        let cases: Vec<(Observed, Decision)> = vec![
            // foreign Secret: hands off, whatever else holds
            (obs(SecretState::Foreign, None, 0, None), Blocked),
            (obs(SecretState::Foreign, Some("g2"), 3, Some(99)), Blocked),
            // first reconcile: nothing attempted yet
            (obs(SecretState::Missing, None, 0, None), Mint(InputsChanged)),
            // spec changed since the last attempt: now, even mid-backoff
            (obs(ours(true, "g1", 500), Some("g1"), 2, Some(99)), Mint(InputsChanged)),
            // our Secret deleted by someone
            (obs(SecretState::Missing, Some("g2"), 0, None), Mint(SecretMissing)),
            // our Secret's data damaged
            (obs(ours(false, "g2", 500), Some("g2"), 0, None), Mint(SecretChanged)),
            // all good, before the renewal instant: wait
            (obs(ours(true, "g2", 500), Some("g2"), 0, None), WaitUntil(t(500))),
            // renewal instant reached
            (obs(ours(true, "g2", 100), Some("g2"), 0, None), Mint(Renewal)),
            // failed 1 s ago: back off 5 s from the failure
            (obs(ours(true, "g2", 50), Some("g2"), 1, Some(99)), BackOffUntil(t(104))),
            // failed 10 s ago, first failure: retry
            (obs(ours(true, "g2", 50), Some("g2"), 1, Some(90)), Mint(Retry)),
            // missing Secret during backoff: still wait (no hot loop)
            (obs(SecretState::Missing, Some("g2"), 2, Some(99)), BackOffUntil(t(109))),
        ];
        for (i, (o, want)) in cases.iter().enumerate() {
            assert_eq!(&decide(now, o), want, "case {i}");
        }
    }

    #[test]
    fn at_most_one_mint_per_interval() {
        let o = |last: Option<i64>, secret: SecretState| Observed {
            secret,
            desired_inputs: "g2".into(),
            attempted_inputs: Some("g2".into()),
            failed_attempts: 0,
            last_failure: None,
            last_attempt: last.map(t),
            min_interval: secs(10),
            renew_requested: false,
            seed: 0,
        };
        let now = t(100);
        // renewal due, but the last mint was 3 s ago: wait for the interval
        assert_eq!(decide(now, &o(Some(97), ours(true, "g2", 90))), Decision::WaitUntil(t(107)));
        // even a deleted Secret waits for the interval
        assert_eq!(decide(now, &o(Some(95), SecretState::Missing)), Decision::WaitUntil(t(105)));
        // interval over: mint
        assert_eq!(decide(now, &o(Some(90), ours(true, "g2", 90))), Decision::Mint(MintReason::Renewal));
        // waiting decisions are not changed
        assert_eq!(decide(now, &o(Some(99), ours(true, "g2", 500))), Decision::WaitUntil(t(500)));
        assert_eq!(decide(now, &o(Some(99), SecretState::Foreign)), Decision::Blocked);
        // a renew request mints now, but not sooner than the interval either
        let mut r = o(Some(50), ours(true, "g2", 500));
        r.renew_requested = true;
        assert_eq!(decide(now, &r), Decision::Mint(MintReason::RenewRequested));
        r.last_attempt = Some(t(95));
        assert_eq!(decide(now, &r), Decision::WaitUntil(t(105)));
    }

    #[test]
    fn retries_after_a_short_outage_fit_in_the_credential_s_life() {
        // A 30 s credential (issued at 0, renewal due at 15, expiring at 30),
        // the endpoint down from 15 to 26 (the soak's 10 s outage and a
        // restart): retries are paced by the backoff, capped by the life
        // left, not by the 10 s mint interval (which put the third attempt
        // at 35, after the expiry).
        let mut o = Observed {
            secret: SecretState::Ours(OurSecret { intact: true, inputs: Some("g2".into()), not_after: Some(t(30)), renewal_time: Some(t(15)) }),
            desired_inputs: "g2".into(),
            attempted_inputs: Some("g2".into()),
            failed_attempts: 0,
            last_failure: None,
            last_attempt: Some(t(0)),
            min_interval: secs(10),
            renew_requested: false,
            seed: 0,
        };
        let mut now = t(15);
        let mut attempts = Vec::new();
        for _ in 0..20 {
            match decide(now, &o) {
                Decision::Mint(_) => {
                    attempts.push(now);
                    if now >= t(26) {
                        break;
                    }
                    o.failed_attempts += 1;
                    o.last_failure = Some(now);
                    o.last_attempt = Some(now);
                }
                Decision::BackOffUntil(at) | Decision::WaitUntil(at) => now = at,
                d => panic!("{d:?}"),
            }
        }
        let last = *attempts.last().unwrap();
        assert!(last >= t(26) && last < t(30) - safety_margin(secs(30)), "the retry after the outage came at {last}: {attempts:?}");
        assert!(attempts.len() <= 7, "{attempts:?}");
        // A change of inputs after a failure still waits for the interval.
        o.desired_inputs = "g3".into();
        o.last_attempt = Some(t(24));
        o.last_failure = Some(t(24));
        assert_eq!(decide(t(25), &o), Decision::WaitUntil(t(34)));
    }

    #[test]
    fn hostile_lifetimes_never_overflow() {
        let p = Policy { min_interval: secs(10), ..policy(None, None) };
        let max = DateTime::<Utc>::MAX_UTC;
        for issued in [t(0), DateTime::<Utc>::MIN_UTC, max] {
            for na in [None, Some(max), Some(DateTime::<Utc>::MIN_UTC), Some(issued)] {
                for before in [None, Some(Duration::MAX), Some(Duration::MIN)] {
                    let q = Policy { renew_before: before, refresh_interval: Duration::MAX, ..p };
                    let _ = renewal(issued, na, &q, u64::MAX);
                }
            }
        }
        for s in [i64::MIN, -1, 0, 1, i64::MAX] {
            let e = expiry_after(t(0), s);
            assert!(e >= t(1) && e <= t(0) + MAX_LIFETIME, "{s}: {e}");
        }
        // a year-9999 expiry is believed for a year at most
        assert_eq!(clamp_expiry(t(0), max), t(0) + MAX_LIFETIME);
        assert_eq!(add(max, secs(1)), max);
    }

    #[test]
    fn short_lifetimes_are_flagged_not_looped() {
        let p = Policy { min_interval: secs(10), ..policy(None, None) };
        // 1 s tokens: renewal no sooner than 10 s after issue, and flagged
        let r = renewal(t(0), Some(t(1)), &p, 0);
        assert_eq!(r, Renewal { at: t(10), safe: false });
        // 20 s tokens renew safely at 2/3
        let r = renewal(t(0), Some(t(20)), &p, 0);
        assert_eq!(r.at, t(13));
        assert!(r.safe);
        // renewBeforePercentage 80 on 40 s: 8 s would be too soon, 10 s is safe
        let r = renewal(t(0), Some(t(40)), &Policy { renew_before_percentage: Some(80), ..p }, 0);
        assert_eq!(r, Renewal { at: t(10), safe: true });
        // refresh intervals are clamped to 1m..168h
        let q = Policy { refresh_interval: Duration::zero(), ..p };
        assert_eq!(renewal(t(0), None, &q, 0).at, t(60));
    }

    #[test]
    fn seed_is_stable() {
        assert_eq!(seed(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(seed("a"), 0xaf63_dc4c_8601_ec8c);
        assert_ne!(seed("uid-1"), seed("uid-2"));
    }
}
