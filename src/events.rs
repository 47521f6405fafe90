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

/// The Event publisher every part of the operator shares.
pub struct Recorder {
    client: Client,
    controller: String,
    instance: String,
    cache: Mutex<HashMap<Key, Published>>,
}

impl Recorder {
    pub fn new(client: Client, controller: &str, instance: &str) -> Self {
        Self { client, controller: controller.into(), instance: instance.into(), cache: Mutex::new(HashMap::new()) }
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
        let repeat = {
            let mut cache = self.cache.lock().await;
            cache.retain(|_, p| now.duration_since(p.at) < TTL);
            cache.get(&key).map(|p| (p.name.clone(), p.namespace.clone(), p.count.saturating_add(1)))
        };
        let (name, namespace, count) = match repeat {
            Some((name, namespace, count)) => {
                let series = EventSeries { count, last_observed_time: MicroTime(Timestamp::now()) };
                let patch = serde_json::json!({"series": series});
                Api::<K8sEvent>::namespaced(self.client.clone(), &namespace).patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
                (name, namespace, count)
            }
            None => {
                let event = self.new_event(&ev, note, regarding);
                let namespace = event.metadata.namespace.clone().unwrap_or_default();
                let created = Api::<K8sEvent>::namespaced(self.client.clone(), &namespace).create(&PostParams::default(), &event).await?;
                (created.metadata.name.unwrap_or_default(), namespace, 1)
            }
        };
        let mut cache = self.cache.lock().await;
        if cache.len() >= CAP && !cache.contains_key(&key) {
            // Full of live series: the oldest stops folding its repeats.
            if let Some(oldest) = cache.iter().min_by_key(|(_, p)| p.at).map(|(k, _)| k.clone()) {
                cache.remove(&oldest);
            }
        }
        cache.insert(key, Published { name, namespace, count, at: now });
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

    /// Series remembered now (for tests of the bound).
    pub async fn remembered(&self) -> usize {
        self.cache.lock().await.len()
    }
}
