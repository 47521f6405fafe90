//! Fair slots for attempts: who may ask a source now, and who goes next.
//!
//! Every attempt (both kinds) waits here for a slot before it asks its
//! source. Slots are limited three ways: in all, per namespace, and per
//! endpoint origin (scheme, host and port of what the source dials). An
//! origin also gets at most half of one namespace's share, so a namespace
//! whose token server hangs keeps the other half for its other sources,
//! and a hanging origin shared by many namespaces holds only its own
//! slots, never the whole operator.
//!
//! When a slot frees, the waiting attempt that goes next is chosen by
//! [`Queue::next`], a pure decision: among the attempts whose namespace and
//! origin are below their limits, due renewals and repairs of existing
//! Secrets first, then first mints (new credentials, changed specs, renew
//! requests), then retries of failing ones; the same kind of work in the
//! order it arrived. Attempts blocked only by their own namespace's or
//! origin's limit never hold up anyone else.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;
use tokio::time::Instant;
use tracing::debug;

use crate::metrics::{Metrics, SourceLabels, WorkLabels};
use crate::schedule::MintReason;

/// The kind of work an attempt is, in the order it is served.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Work {
    /// The renewal instant of a running credential has come.
    Renewal,
    /// A credential that had a Secret must write it again (edited,
    /// damaged or deleted).
    Repair,
    /// A new credential, a changed spec, a renew request.
    FirstMint,
    /// The backoff after a failure is over.
    Retry,
}

impl Work {
    pub const ALL: [Work; 4] = [Work::Renewal, Work::Repair, Work::FirstMint, Work::Retry];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Work::Renewal => "renewal",
            Work::Repair => "repair",
            Work::FirstMint => "first_mint",
            Work::Retry => "retry",
        }
    }

    /// Lower goes first; renewals and repairs share the first rank.
    fn rank(self) -> u8 {
        match self {
            Work::Renewal | Work::Repair => 0,
            Work::FirstMint => 1,
            Work::Retry => 2,
        }
    }

    /// What a mint made for `reason` is; `had_secret`: the credential has
    /// written a Secret before (its status has a rotation time).
    pub fn of(reason: MintReason, had_secret: bool) -> Self {
        match reason {
            MintReason::Renewal => Work::Renewal,
            MintReason::SecretChanged => Work::Repair,
            MintReason::SecretMissing if had_secret => Work::Repair,
            MintReason::SecretMissing | MintReason::InputsChanged | MintReason::RenewRequested => Work::FirstMint,
            MintReason::Retry => Work::Retry,
        }
    }
}

/// Where an attempt's slot counts: its namespace (`""` for cluster-scoped
/// credentials) and the origin its source dials (`None`: none, e.g. a
/// `basic` source reading a Secret).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub namespace: String,
    pub origin: Option<String>,
}

/// The three limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Attempts at once, in all.
    pub total: usize,
    /// Attempts of one namespace at once.
    pub namespace: usize,
    /// Attempts to one origin at once, over every namespace.
    pub origin: usize,
}

impl Limits {
    /// Attempts to one origin from one namespace: half the namespace's
    /// share, rounded up.
    pub fn namespace_origin(&self) -> usize {
        self.namespace.div_ceil(2).max(1)
    }
}

/// An attempt granted a slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Granted {
    /// Its place in arrival order.
    pub seq: u64,
    pub work: Work,
    pub key: Key,
    pub source: &'static str,
}

#[derive(Clone, Debug)]
struct Entry {
    work: Work,
    source: &'static str,
}

/// Who waits and who runs; [`Queue::next`] decides who goes next.
pub struct Queue {
    limits: Limits,
    next_seq: u64,
    /// Waiting attempts per key, in the order they are served.
    waiting: HashMap<Key, BTreeMap<(u8, u64), Entry>>,
    /// The first of each key's waiting attempts, in the order they are served.
    heads: BTreeSet<(u8, u64, Key)>,
    running: usize,
    by_namespace: HashMap<String, usize>,
    by_origin: HashMap<String, usize>,
    by_key: HashMap<Key, usize>,
}

impl Queue {
    pub fn new(limits: Limits) -> Self {
        let limits = Limits { total: limits.total.max(1), namespace: limits.namespace.max(1), origin: limits.origin.max(1) };
        Self {
            limits,
            next_seq: 0,
            waiting: HashMap::new(),
            heads: BTreeSet::new(),
            running: 0,
            by_namespace: HashMap::new(),
            by_origin: HashMap::new(),
            by_key: HashMap::new(),
        }
    }

    /// An attempt arrives; its number in arrival order.
    pub fn push(&mut self, work: Work, key: Key, source: &'static str) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        let at = (work.rank(), seq);
        let group = self.waiting.entry(key.clone()).or_default();
        let old_head = group.keys().next().copied();
        group.insert(at, Entry { work, source });
        if old_head.is_none_or(|h| at < h) {
            if let Some((r, s)) = old_head {
                self.heads.remove(&(r, s, key.clone()));
            }
            self.heads.insert((at.0, at.1, key));
        }
        seq
    }

    /// A waiting attempt gives up; false when it is not waiting (granted,
    /// or never there).
    pub fn cancel(&mut self, seq: u64, work: Work, key: &Key) -> bool {
        let at = (work.rank(), seq);
        let Some(group) = self.waiting.get_mut(key) else { return false };
        let was_head = group.keys().next() == Some(&at);
        if group.remove(&at).is_none() {
            return false;
        }
        if was_head {
            self.heads.remove(&(at.0, at.1, key.clone()));
            if let Some(&(r, s)) = group.keys().next() {
                self.heads.insert((r, s, key.clone()));
            }
        }
        if group.is_empty() {
            self.waiting.remove(key);
        }
        true
    }

    /// Whether an attempt of `key` may start now.
    pub fn may_run(&self, key: &Key) -> bool {
        let l = &self.limits;
        self.running < l.total
            && self.by_namespace.get(&key.namespace).copied().unwrap_or(0) < l.namespace
            && key.origin.as_ref().is_none_or(|o| {
                self.by_origin.get(o).copied().unwrap_or(0) < l.origin && self.by_key.get(key).copied().unwrap_or(0) < l.namespace_origin()
            })
    }

    /// The attempt that goes next, now running; `None` when every slot is
    /// taken or everyone waiting is held by their own limits.
    pub fn next(&mut self) -> Option<Granted> {
        if self.running >= self.limits.total {
            return None;
        }
        let (rank, seq, key) = self.heads.iter().find(|(_, _, k)| self.may_run(k))?.clone();
        self.heads.remove(&(rank, seq, key.clone()));
        let group = self.waiting.get_mut(&key)?;
        let entry = group.remove(&(rank, seq))?;
        if let Some(&(r, s)) = group.keys().next() {
            self.heads.insert((r, s, key.clone()));
        } else {
            self.waiting.remove(&key);
        }
        self.running += 1;
        *self.by_namespace.entry(key.namespace.clone()).or_default() += 1;
        if let Some(o) = &key.origin {
            *self.by_origin.entry(o.clone()).or_default() += 1;
            *self.by_key.entry(key.clone()).or_default() += 1;
        }
        Some(Granted { seq, work: entry.work, key, source: entry.source })
    }

    /// A running attempt of `key` is done.
    pub fn release(&mut self, key: &Key) {
        self.running = self.running.saturating_sub(1);
        fn down<K: std::hash::Hash + Eq>(m: &mut HashMap<K, usize>, k: &K) {
            if let Some(n) = m.get_mut(k) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    m.remove(k);
                }
            }
        }
        down(&mut self.by_namespace, &key.namespace);
        if let Some(o) = &key.origin {
            down(&mut self.by_origin, o);
            down(&mut self.by_key, key);
        }
    }

    /// Everyone waiting, removed (the operator is stopping).
    pub fn drain(&mut self) -> Vec<(u64, &'static str)> {
        self.heads.clear();
        let out = self.waiting.drain().flat_map(|(_, g)| g.into_iter().map(|((_, seq), e)| (seq, e.source))).collect();
        out
    }

    pub fn running(&self) -> usize {
        self.running
    }

    pub fn waiting(&self) -> usize {
        self.waiting.values().map(|g| g.len()).sum()
    }
}

/// What an attempt asks for.
pub struct Ask {
    pub work: Work,
    pub key: Key,
    /// The source kind, for metrics.
    pub source: &'static str,
}

struct State {
    queue: Queue,
    wake: HashMap<u64, oneshot::Sender<()>>,
    closed: bool,
    /// Grants so far (the record's order).
    granted: u64,
}

/// The queue shared by every attempt of the process.
pub struct Slots {
    state: Mutex<State>,
    metrics: Arc<Metrics>,
}

impl Slots {
    pub fn new(limits: Limits, metrics: Arc<Metrics>) -> Self {
        let state = State { queue: Queue::new(limits), wake: HashMap::new(), closed: false, granted: 0 };
        Self { state: Mutex::new(state), metrics }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wait for a slot; `None` when the operator is stopping. Dropping the
    /// future while it waits gives its place up.
    pub async fn acquire(self: &Arc<Self>, ask: Ask) -> Option<Permit> {
        let asked = Instant::now();
        let (seq, rx) = {
            let mut st = self.lock();
            if st.closed {
                return None;
            }
            self.enqueue(&mut st, &ask)
        };
        let mut pending = Pending { slots: self.clone(), seq, work: ask.work, key: ask.key.clone(), source: ask.source, rx: Some(rx) };
        let granted = match pending.rx.as_mut() {
            Some(rx) => rx.await.is_ok(),
            None => false,
        };
        // Settled either way: nothing for `Pending` to undo.
        pending.rx = None;
        if !granted {
            return None;
        }
        self.metrics.queue_wait.get_or_create(&WorkLabels { work: ask.work.label().into() }).observe(asked.elapsed().as_secs_f64());
        Some(Permit { slots: self.clone(), key: ask.key, source: ask.source })
    }

    /// A slot now, when one is free for `ask` (nobody who may run is
    /// waiting: [`dispatch`](Self::dispatch) never leaves one waiting);
    /// else the ask back, its place given up. Spares a reconcile a second
    /// pass when nothing is contended.
    pub fn try_acquire(self: &Arc<Self>, ask: Ask) -> Result<Permit, Ask> {
        let mut st = self.lock();
        if st.closed {
            return Err(ask);
        }
        let (seq, mut rx) = self.enqueue(&mut st, &ask);
        if rx.try_recv().is_ok() {
            self.metrics.queue_wait.get_or_create(&WorkLabels { work: ask.work.label().into() }).observe(0.0);
            return Ok(Permit { slots: self.clone(), key: ask.key, source: ask.source });
        }
        if st.queue.cancel(seq, ask.work, &ask.key) {
            st.wake.remove(&seq);
            self.waiting(ask.source).dec();
        }
        Err(ask)
    }

    /// Queue `ask` and grant what may be granted (under the lock).
    fn enqueue(&self, st: &mut State, ask: &Ask) -> (u64, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        let seq = st.queue.push(ask.work, ask.key.clone(), ask.source);
        st.wake.insert(seq, tx);
        self.waiting(ask.source).inc();
        self.dispatch(st);
        (seq, rx)
    }

    /// Grant slots while any may be granted.
    fn dispatch(&self, st: &mut State) {
        while let Some(g) = st.queue.next() {
            self.waiting(g.source).dec();
            self.in_flight(g.source).inc();
            st.granted += 1;
            // The queue's own record of its order (see tests/it/alone/slots.rs).
            debug!(target: "regcred::slots", seq = g.seq, order = st.granted, work = %g.work.label(), namespace = %g.key.namespace,
                origin = %g.key.origin.as_deref().unwrap_or("-"), "slot granted");
            let delivered = st.wake.remove(&g.seq).is_some_and(|tx| tx.send(()).is_ok());
            if !delivered {
                // Nobody to take it: free it again.
                self.in_flight(g.source).dec();
                st.queue.release(&g.key);
            }
        }
    }

    /// Stop: everyone waiting is sent away (their `acquire` returns
    /// `None`), and nobody new is queued.
    pub fn close(&self) {
        let mut st = self.lock();
        st.closed = true;
        for (seq, source) in st.queue.drain() {
            self.waiting(source).dec();
            st.wake.remove(&seq);
        }
    }

    fn waiting(&self, source: &str) -> prometheus_client::metrics::gauge::Gauge {
        self.metrics.attempts_waiting.get_or_create(&SourceLabels { source: source.into() }).clone()
    }

    fn in_flight(&self, source: &str) -> prometheus_client::metrics::gauge::Gauge {
        self.metrics.attempts_in_flight.get_or_create(&SourceLabels { source: source.into() }).clone()
    }

    /// (running, waiting), for tests.
    pub fn counts(&self) -> (usize, usize) {
        let st = self.lock();
        (st.queue.running(), st.queue.waiting())
    }
}

/// A waiting `acquire`: when it is dropped before it settles, its place is
/// given up (or, when the slot was granted in the meantime, the slot).
struct Pending {
    slots: Arc<Slots>,
    seq: u64,
    work: Work,
    key: Key,
    source: &'static str,
    rx: Option<oneshot::Receiver<()>>,
}

impl Drop for Pending {
    fn drop(&mut self) {
        let Some(mut rx) = self.rx.take() else { return };
        let mut st = self.slots.lock();
        // Under the lock, as grants are: what the receiver holds is settled.
        match rx.try_recv() {
            Ok(()) => {
                st.queue.release(&self.key);
                self.slots.in_flight(self.source).dec();
            }
            Err(oneshot::error::TryRecvError::Empty) => {
                if st.queue.cancel(self.seq, self.work, &self.key) {
                    st.wake.remove(&self.seq);
                    self.slots.waiting(self.source).dec();
                }
            }
            Err(oneshot::error::TryRecvError::Closed) => {}
        }
        self.slots.dispatch(&mut st);
    }
}

/// A slot, freed when dropped.
pub struct Permit {
    slots: Arc<Slots>,
    key: Key,
    source: &'static str,
}

impl Permit {
    /// Whether this slot counts where `ask` would (same namespace and origin).
    pub fn fits(&self, ask: &Ask) -> bool {
        self.key == ask.key
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut st = self.slots.lock();
        st.queue.release(&self.key);
        self.slots.in_flight(self.source).dec();
        self.slots.dispatch(&mut st);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(ns: &str, origin: &str) -> Key {
        Key { namespace: ns.into(), origin: (!origin.is_empty()).then(|| origin.to_string()) }
    }

    const WIDE: Limits = Limits { total: 32, namespace: 8, origin: 16 };

    #[test]
    fn renewals_and_repairs_then_first_mints_then_retries() {
        let mut q = Queue::new(Limits { total: 1, ..WIDE });
        let k = key("a", "https://t");
        q.push(Work::FirstMint, k.clone(), "oauth2");
        assert!(q.next().is_some());
        for w in [Work::Retry, Work::FirstMint, Work::Renewal, Work::Repair, Work::Renewal] {
            q.push(w, k.clone(), "oauth2");
        }
        assert_eq!(q.next(), None, "the one slot is taken");
        let mut order = Vec::new();
        for _ in 0..5 {
            q.release(&k);
            let g = q.next().unwrap();
            order.push((g.work, g.seq));
        }
        // Same rank in arrival order; ranks in order.
        assert_eq!(order, vec![(Work::Renewal, 3), (Work::Repair, 4), (Work::Renewal, 5), (Work::FirstMint, 2), (Work::Retry, 1)]);
        assert_eq!(q.waiting(), 0);
    }

    #[test]
    fn a_hanging_origin_holds_only_its_own_slots() {
        let mut q = Queue::new(WIDE);
        let hang = |ns: &str| key(ns, "http://127.0.0.1:9");
        for _ in 0..33 {
            q.push(Work::FirstMint, hang("team"), "http");
        }
        let granted = std::iter::from_fn(|| q.next()).count();
        assert_eq!(granted, 4, "half of the namespace's 8");
        // A healthy origin of the same namespace, after them: at once.
        q.push(Work::FirstMint, key("team", "https://api.ecr.eu-west-1.amazonaws.com"), "ecr");
        assert_eq!(q.next().map(|g| g.source), Some("ecr"));
        // The hanging origin in other namespaces: 16 over all of them.
        for ns in ["b", "c", "d", "e"] {
            for _ in 0..10 {
                q.push(Work::FirstMint, hang(ns), "http");
            }
        }
        let more = std::iter::from_fn(|| q.next()).count();
        assert_eq!(more, 12, "16 to one origin in all");
        assert_eq!(q.running(), 17);
        // The rest of the operator still serves other origins.
        q.push(Work::Retry, key("z", "https://elsewhere"), "oauth2");
        assert!(q.next().is_some());
        // A source that dials nothing is held only by its namespace.
        q.push(Work::FirstMint, key("team", ""), "basic");
        q.push(Work::FirstMint, key("team", ""), "basic");
        q.push(Work::FirstMint, key("team", ""), "basic");
        q.push(Work::FirstMint, key("team", ""), "basic");
        assert_eq!(std::iter::from_fn(|| q.next()).count(), 3, "team had 5 of its 8");
    }

    #[test]
    fn work_held_by_its_own_limits_holds_up_nobody() {
        let mut q = Queue::new(Limits { total: 4, namespace: 2, origin: 4 });
        let (a, b) = (key("a", "https://t"), key("b", "https://t"));
        q.push(Work::FirstMint, a.clone(), "http");
        assert!(q.next().is_some());
        // a's renewal waits for a's share (one per origin in a namespace of 2)...
        q.push(Work::Renewal, a.clone(), "http");
        q.push(Work::Retry, b.clone(), "http");
        // ...and b's retry, which came later, goes.
        assert_eq!(q.next().map(|g| g.key), Some(b.clone()));
        assert_eq!(q.next(), None);
        q.release(&a);
        assert_eq!(q.next().map(|g| g.work), Some(Work::Renewal));
    }

    #[test]
    fn cancelled_work_leaves_no_trace() {
        let mut q = Queue::new(Limits { total: 1, ..WIDE });
        let k = key("a", "https://t");
        q.push(Work::Renewal, k.clone(), "http");
        q.next().unwrap();
        let first = q.push(Work::Renewal, k.clone(), "http");
        let second = q.push(Work::Renewal, k.clone(), "http");
        assert!(q.cancel(first, Work::Renewal, &k));
        assert!(!q.cancel(first, Work::Renewal, &k), "twice");
        q.release(&k);
        assert_eq!(q.next().map(|g| g.seq), Some(second));
        assert!(!q.cancel(second, Work::Renewal, &k), "granted is not waiting");
        q.release(&k);
        assert_eq!((q.running(), q.waiting(), q.heads.len()), (0, 0, 0));
        assert!(q.by_namespace.is_empty() && q.by_origin.is_empty() && q.by_key.is_empty());
    }

    /// Random arrivals, departures and give-ups against the rules: limits
    /// never exceeded; every grant is the first waiting attempt (by rank,
    /// then arrival) among those whose limits allow them; nobody waits while
    /// they could run.
    #[test]
    fn a_random_day_keeps_the_rules() {
        let limits = Limits { total: 6, namespace: 3, origin: 4 };
        let mut q = Queue::new(limits);
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut next = |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        let keys: Vec<Key> = ["a", "b", "c"].iter().flat_map(|ns| ["https://x", "https://y", ""].iter().map(move |o| key(ns, o))).collect();
        let mut waiting: Vec<(u64, Work, Key)> = Vec::new();
        let mut running: Vec<Key> = Vec::new();
        for _ in 0..20_000 {
            match next(3) {
                0 => {
                    let (w, k) = (Work::ALL[next(4) as usize], keys[next(keys.len() as u64) as usize].clone());
                    let seq = q.push(w, k.clone(), "http");
                    waiting.push((seq, w, k));
                }
                1 if !running.is_empty() => {
                    let k = running.swap_remove(next(running.len() as u64) as usize);
                    q.release(&k);
                }
                _ if !waiting.is_empty() && next(4) == 0 => {
                    let (seq, w, k) = waiting.swap_remove(next(waiting.len() as u64) as usize);
                    assert!(q.cancel(seq, w, &k));
                }
                _ => {}
            }
            while let Some(g) = q.next() {
                let allowed = |k: &Key| {
                    let ns = running.iter().filter(|r| r.namespace == k.namespace).count();
                    let origin = running.iter().filter(|r| r.origin.is_some() && r.origin == k.origin).count();
                    let both = running.iter().filter(|r| r.origin.is_some() && *r == k).count();
                    running.len() < limits.total && ns < limits.namespace && (k.origin.is_none() || (origin < limits.origin && both < limits.namespace_origin()))
                };
                let first = waiting.iter().filter(|(_, _, k)| allowed(k)).min_by_key(|(seq, w, _)| (w.rank(), *seq)).cloned();
                assert_eq!(first.as_ref().map(|f| f.0), Some(g.seq), "granted {g:?}");
                waiting.retain(|(seq, _, _)| *seq != g.seq);
                running.push(g.key);
            }
            // Nobody left waiting could run.
            assert!(running.len() == limits.total || !waiting.iter().any(|(_, _, k)| q.may_run(k)));
            assert_eq!((q.running(), q.waiting()), (running.len(), waiting.len()));
        }
    }

    #[test]
    fn work_of_each_reason() {
        assert_eq!(Work::of(MintReason::Renewal, true), Work::Renewal);
        assert_eq!(Work::of(MintReason::SecretChanged, true), Work::Repair);
        assert_eq!(Work::of(MintReason::SecretMissing, true), Work::Repair);
        assert_eq!(Work::of(MintReason::SecretMissing, false), Work::FirstMint);
        assert_eq!(Work::of(MintReason::InputsChanged, false), Work::FirstMint);
        assert_eq!(Work::of(MintReason::RenewRequested, true), Work::FirstMint);
        assert_eq!(Work::of(MintReason::Retry, true), Work::Retry);
    }

    fn ask(work: Work, k: &Key) -> Ask {
        Ask { work, key: k.clone(), source: "oauth2" }
    }

    fn gauge(m: &Metrics, name: &str) -> String {
        m.encode().lines().filter(|l| l.starts_with(&format!("regcred_{name}{{"))).collect::<Vec<_>>().join(" ")
    }

    #[tokio::test]
    async fn a_waiter_that_gives_up_loses_nothing_for_the_others() {
        let metrics = Arc::new(Metrics::default());
        let slots = Arc::new(Slots::new(Limits { total: 1, ..WIDE }, metrics.clone()));
        let k = key("a", "https://t");
        let held = slots.acquire(ask(Work::FirstMint, &k)).await.unwrap();
        assert!(gauge(&metrics, "attempts_in_flight").ends_with(" 1"), "{}", gauge(&metrics, "attempts_in_flight"));
        // One gives up while waiting (a reconcile's deadline, a deletion).
        let s2 = slots.clone();
        let k2 = k.clone();
        let quitter = tokio::spawn(async move { s2.acquire(ask(Work::Renewal, &k2)).await.is_some() });
        let s3 = slots.clone();
        let k3 = k.clone();
        let stayer = tokio::spawn(async move { s3.acquire(ask(Work::Retry, &k3)).await.map(|_| ()) });
        while slots.counts().1 < 2 {
            tokio::task::yield_now().await;
        }
        quitter.abort();
        assert!(quitter.await.unwrap_err().is_cancelled());
        assert_eq!(slots.counts(), (1, 1));
        drop(held);
        assert!(stayer.await.unwrap().is_some());
        assert_eq!(slots.counts(), (0, 0));
        assert!(gauge(&metrics, "attempts_in_flight").ends_with(" 0") && gauge(&metrics, "attempts_waiting").ends_with(" 0"), "{}", metrics.encode());
        assert!(metrics.encode().contains(r#"regcred_queue_wait_seconds_count{work="retry"} 1"#), "{}", metrics.encode());
    }

    #[tokio::test]
    async fn a_slot_granted_to_a_waiter_as_it_gives_up_is_freed() {
        let slots = Arc::new(Slots::new(Limits { total: 1, ..WIDE }, Arc::new(Metrics::default())));
        let k = key("a", "https://t");
        let held = slots.acquire(ask(Work::FirstMint, &k)).await.unwrap();
        let mut waiter = Box::pin(slots.acquire(ask(Work::Renewal, &k)));
        assert!(futures::poll!(waiter.as_mut()).is_pending());
        // Granted (the slot is freed) but never polled again: dropped.
        drop(held);
        assert_eq!(slots.counts(), (1, 0));
        drop(waiter);
        assert_eq!(slots.counts(), (0, 0), "the granted slot went with the waiter");
        assert!(slots.acquire(ask(Work::Retry, &k)).await.is_some());
    }

    #[tokio::test]
    async fn a_free_slot_is_taken_at_once_and_a_busy_one_leaves_no_place_behind() {
        let metrics = Arc::new(Metrics::default());
        let slots = Arc::new(Slots::new(Limits { total: 1, ..WIDE }, metrics.clone()));
        let k = key("a", "https://t");
        let held = slots.try_acquire(ask(Work::Renewal, &k)).ok().unwrap();
        assert_eq!(slots.counts(), (1, 0));
        let back = slots.try_acquire(ask(Work::FirstMint, &k)).err().unwrap();
        assert_eq!((back.work, slots.counts()), (Work::FirstMint, (1, 0)), "a busy slot left a place in the queue");
        assert!(gauge(&metrics, "attempts_waiting").ends_with(" 0"), "{}", metrics.encode());
        drop(held);
        assert!(slots.try_acquire(back).is_ok());
        assert_eq!(slots.counts(), (0, 0));
    }

    #[tokio::test]
    async fn closing_sends_every_waiter_away() {
        let slots = Arc::new(Slots::new(Limits { total: 1, ..WIDE }, Arc::new(Metrics::default())));
        let k = key("a", "https://t");
        let held = slots.acquire(ask(Work::FirstMint, &k)).await.unwrap();
        let s2 = slots.clone();
        let k2 = k.clone();
        let waiter = tokio::spawn(async move { s2.acquire(ask(Work::Renewal, &k2)).await.is_some() });
        while slots.counts().1 < 1 {
            tokio::task::yield_now().await;
        }
        slots.close();
        assert!(!waiter.await.unwrap(), "a waiter got a slot after close");
        assert!(slots.acquire(ask(Work::Renewal, &k)).await.is_none());
        drop(held);
        assert_eq!(slots.counts(), (0, 0));
    }
}
