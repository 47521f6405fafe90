//! Publishing Kubernetes Events (`events.k8s.io/v1`), with repeats folded
//! into one series as kubectl and the kubelet do, but keyed by what the
//! Event says as well as why: an Event whose note changed (a failure whose
//! cause went from a missing password to DNS to HTTP 401) is a new Event,
//! so `kubectl describe` never shows an old cause under a new status. The
//! same note again within [`TTL`] only counts up its series.
//!
//! kube-runtime's `Recorder` keys its series by reason alone and keeps the
//! first note, which is why this module exists. Whether to publish at all
//! (once per change of state) is the callers' decision; the cache here is
//! bounded ([`CAP`]) so a flood of distinct notes cannot grow it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event as K8sEvent, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::Client;
use tokio::sync::Mutex;

/// How long a published Event takes repeats into its series.
pub const TTL: Duration = Duration::from_secs(6 * 60);
/// The most Events remembered for series at once.
pub const CAP: usize = 4096;
/// Notes are cut to this many characters.
pub const NOTE_CHARS: usize = 1000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Type {
    Normal,
    Warning,
}

/// One Event to publish about an object.
#[derive(Clone, Debug)]
pub struct Event<'a> {
    pub type_: Type,
    pub reason: &'a str,
    pub action: &'a str,
    pub note: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    type_: Type,
    reason: String,
    action: String,
    note: String,
    regarding: (Option<String>, Option<String>, Option<String>, Option<String>),
}

struct Published {
    name: String,
    namespace: String,
    count: i32,
    at: Instant,
}

/// The Events published lately, by everything they said: which one a
/// repeat counts up. At most [`CAP`]; an entry is forgotten [`TTL`] after
/// its last repeat.
#[derive(Default)]
struct Series {
    map: HashMap<Key, Published>,
}

impl Series {
    /// The Event `key` repeats (name, namespace, its next count), if one
    /// was published within [`TTL`].
    fn repeat(&mut self, key: &Key, now: Instant) -> Option<(String, String, i32)> {
        self.map.retain(|_, p| now.saturating_duration_since(p.at) < TTL);
        self.map.get(key).map(|p| (p.name.clone(), p.namespace.clone(), p.count.saturating_add(1)))
    }

    fn remember(&mut self, key: Key, p: Published) {
        if self.map.len() >= CAP && !self.map.contains_key(&key) {
            // Full of live series: the oldest stops folding its repeats.
            if let Some(oldest) = self.map.iter().min_by_key(|(_, p)| p.at).map(|(k, _)| k.clone()) {
                self.map.remove(&oldest);
            }
        }
        self.map.insert(key, p);
    }

    fn forget(&mut self, key: &Key) {
        self.map.remove(key);
    }
}

/// The Event publisher every part of the operator shares.
pub struct Recorder {
    client: Client,
    controller: String,
    instance: String,
    series: Mutex<Series>,
}

impl Recorder {
    pub fn new(client: Client, controller: &str, instance: &str) -> Self {
        Self { client, controller: controller.into(), instance: instance.into(), series: Mutex::new(Series::default()) }
    }

    /// Publish `ev` about `regarding`: a new Event, or the next count of the
    /// series of the same Event (same type, reason, action and note) seen
    /// within [`TTL`].
    pub async fn publish(&self, ev: Event<'_>, regarding: &ObjectReference) -> Result<(), kube::Error> {
        let note: String = ev.note.chars().take(NOTE_CHARS).collect();
        let key = Key {
            type_: ev.type_,
            reason: ev.reason.into(),
            action: ev.action.into(),
            note: note.clone(),
            regarding: (regarding.kind.clone(), regarding.namespace.clone(), regarding.name.clone(), regarding.uid.clone()),
        };
        let now = Instant::now();
        let repeat = self.series.lock().await.repeat(&key, now);
        if let Some((name, namespace, count)) = repeat {
            let series = EventSeries { count, last_observed_time: MicroTime(Timestamp::now()) };
            let patch = serde_json::json!({"series": series});
            match Api::<K8sEvent>::namespaced(self.client.clone(), &namespace).patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await {
                Ok(_) => {
                    self.series.lock().await.remember(key, Published { name, namespace, count, at: now });
                    return Ok(());
                }
                // The Event is gone (the API server keeps Events an hour):
                // a new one.
                Err(kube::Error::Api(e)) if e.code == 404 => self.series.lock().await.forget(&key),
                Err(e) => {
                    self.series.lock().await.forget(&key);
                    return Err(e);
                }
            }
        }
        let event = self.new_event(&ev, note, regarding);
        let namespace = event.metadata.namespace.clone().unwrap_or_default();
        let created = Api::<K8sEvent>::namespaced(self.client.clone(), &namespace).create(&PostParams::default(), &event).await?;
        let name = created.metadata.name.unwrap_or_default();
        self.series.lock().await.remember(key, Published { name, namespace, count: 1, at: now });
        Ok(())
    }

    fn new_event(&self, ev: &Event<'_>, note: String, regarding: &ObjectReference) -> K8sEvent {
        let now = Timestamp::now();
        let namespace = regarding.namespace.clone().unwrap_or_else(|| "default".into());
        K8sEvent {
            action: Some(ev.action.into()),
            reason: Some(ev.reason.into()),
            event_time: Some(MicroTime(now)),
            regarding: Some(regarding.clone()),
            note: Some(note),
            metadata: ObjectMeta {
                namespace: Some(namespace),
                name: Some(format!("{}.{:x}", regarding.name.as_deref().unwrap_or(&self.controller), now.as_nanosecond())),
                ..Default::default()
            },
            reporting_controller: Some(self.controller.clone()),
            reporting_instance: Some(self.instance.clone()),
            type_: Some(match ev.type_ {
                Type::Normal => "Normal".into(),
                Type::Warning => "Warning".into(),
            }),
            ..Default::default()
        }
    }

}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(note: &str) -> Key {
        Key { type_: Type::Warning, reason: "MintFailed".into(), action: "Reconcile".into(), note: note.into(), regarding: (None, Some("ns".into()), Some("c".into()), None) }
    }

    fn published(name: &str, at: Instant) -> Published {
        Published { name: name.into(), namespace: "ns".into(), count: 1, at }
    }

    #[test]
    fn a_repeat_counts_up_and_a_new_note_is_a_new_event() {
        let t0 = Instant::now();
        let mut s = Series::default();
        s.remember(key("AccessDenied: HTTP 401"), published("e1", t0));
        assert_eq!(s.repeat(&key("AccessDenied: HTTP 401"), t0 + Duration::from_secs(5)), Some(("e1".into(), "ns".into(), 2)));
        // Same reason, another cause: not a repeat.
        assert_eq!(s.repeat(&key("MintFailed: DNS lookup failed"), t0 + Duration::from_secs(5)), None);
        // After TTL without a repeat: forgotten, the next one is new.
        assert_eq!(s.repeat(&key("AccessDenied: HTTP 401"), t0 + TTL + Duration::from_secs(1)), None);
        assert!(s.map.is_empty());
    }

    #[test]
    fn a_flood_of_distinct_notes_stays_within_the_cap() {
        let t0 = Instant::now();
        let mut s = Series::default();
        for i in 0..CAP + 50 {
            s.remember(key(&format!("cause {i}")), published(&format!("e{i}"), t0 + Duration::from_millis(i as u64)));
        }
        assert_eq!(s.map.len(), CAP);
        let now = t0 + Duration::from_secs(10);
        // The oldest were let go; the newest still count up.
        assert_eq!(s.repeat(&key("cause 0"), now), None);
        assert_eq!(s.repeat(&key("cause 49"), now), None);
        assert!(s.repeat(&key("cause 50"), now).is_some());
        assert!(s.repeat(&key(&format!("cause {}", CAP + 49)), now).is_some());
    }
}
