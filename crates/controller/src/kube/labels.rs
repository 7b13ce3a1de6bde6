//! `matchLabels`: reads an involved object's labels with a metadata-only GET (any kind, found
//! through discovery), cached briefly so a burst of events costs one request.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::core::GroupVersionKind;

use api::Event;

use crate::config::hooks::{LabelError, LabelSource};

/// How long an object's labels are reused.
const TTL: Duration = Duration::from_secs(10);
/// Objects whose labels are remembered at most.
const CAP: usize = 10_000;

type ObjectKey = (String, String, String, String);
type Labels = BTreeMap<String, String>;

pub struct KubeLabels {
    client: Client,
    kinds: Mutex<HashMap<(String, String), ApiResource>>,
    cache: Mutex<HashMap<ObjectKey, (Instant, Labels)>>,
}

impl KubeLabels {
    pub fn new(client: Client) -> Self {
        Self {
            client,
            kinds: Mutex::default(),
            cache: Mutex::default(),
        }
    }

    async fn fetch(&self, event: &Event) -> Result<BTreeMap<String, String>, LabelError> {
        let o = &event.involved_object;
        let key = (
            o.api_version.clone(),
            o.kind.clone(),
            o.namespace.clone(),
            o.name.clone(),
        );
        if let Some((at, labels)) = self
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            && at.elapsed() < TTL
        {
            return Ok(labels.clone());
        }
        let kind_key = (o.api_version.clone(), o.kind.clone());
        let known = self
            .kinds
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&kind_key)
            .cloned();
        let resource = match known {
            Some(r) => r,
            None => {
                let (group, version) = match o.api_version.split_once('/') {
                    Some((g, v)) => (g, v),
                    None => ("", o.api_version.as_str()),
                };
                let gvk = GroupVersionKind::gvk(group, version, &o.kind);
                let (resource, _) = kube::discovery::pinned_kind(&self.client, &gvk).await?;
                self.kinds
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(kind_key, resource.clone());
                resource
            }
        };
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), &o.namespace, &resource);
        let meta = api.get_metadata(&o.name).await?;
        let labels = meta.metadata.labels.unwrap_or_default();
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= CAP {
            cache.retain(|_, (at, _)| at.elapsed() < TTL);
            if cache.len() >= CAP {
                cache.clear();
            }
        }
        cache.insert(key, (Instant::now(), labels.clone()));
        Ok(labels)
    }
}

impl LabelSource for KubeLabels {
    fn labels<'a>(
        &'a self,
        event: &'a Event,
    ) -> BoxFuture<'a, Result<BTreeMap<String, String>, LabelError>> {
        Box::pin(self.fetch(event))
    }
}

impl From<kube::Error> for LabelError {
    fn from(e: kube::Error) -> LabelError {
        LabelError(Box::new(e))
    }
}
