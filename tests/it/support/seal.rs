//! The sealed run (tests/seal/sealed.sh): whether this process runs in it,
//! and the test addresses it puts on the namespace's loopback.

/// True inside tests/run.sh's sealed namespaces; false with
/// `USE_EXISTING_CLUSTER=true`, which runs unsealed.
pub fn sealed() -> bool {
    std::env::var("REGCRED_SEALED").as_deref() == Ok("1")
}

pub fn unsealed_by_choice() -> bool {
    std::env::var("USE_EXISTING_CLUSTER").as_deref() == Ok("true")
}

/// A test address for a host that must never be reached: the sealed run's
/// stand-in named by `var` (an address where cloud metadata or a private host
/// would be, present only in the run's namespace), or, unsealed, `fallback`
/// (a loopback address).
pub fn standin(var: &str, fallback: &str) -> String {
    if sealed() {
        std::env::var(var).unwrap_or_else(|_| panic!("the sealed run sets {var}"))
    } else {
        fallback.to_string()
    }
}

/// Where cloud metadata would be (169.254.169.254 when sealed).
pub fn metadata_standin() -> String {
    standin("REGCRED_METADATA_STANDIN", "127.0.0.2")
}

/// A private 10.x host, the `kubernetes` Service address (10.96.0.1 when sealed).
pub fn private_standin() -> String {
    standin("REGCRED_PRIVATE_STANDIN", "127.0.0.3")
}
