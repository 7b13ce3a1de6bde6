//! The loaded configuration as one immutable snapshot: Alerts indexed by the (namespace, kind)
//! of the events they can match, Providers with their forge ready to use, and Secrets.
//!
//! A snapshot is never mutated: a reload builds a new one and swaps it in, so an event being
//! dispatched keeps the configuration it started with.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use regex::Regex;
use serde_json::Value;

use api::{Alert, Provider, Secret};
use notify::{ClientCache, Forge, ForgeKind};

use crate::config::error::ConfigError;
use crate::config::resolve;
use crate::config::status_expr::ProviderExprs;

pub type ObjectKey = (String, String);

/// An Alert with its expressions compiled.
#[derive(Debug)]
pub struct AlertEntry {
    pub alert: Alert,
    pub inclusion: Vec<Regex>,
    pub exclusion: Vec<Regex>,
}

/// Alerts that can select one (namespace, kind): those naming `*`, and those naming an object,
/// by name, so that matching never walks Alerts written for other objects.
#[derive(Debug, Default)]
struct SourceIndex {
    any_name: Vec<usize>,
    by_name: HashMap<String, Vec<usize>>,
}

/// A Provider with its status expression compiled and, for the types this controller posts
/// to, its forge built (or the reason it cannot be).
#[derive(Debug)]
pub struct ProviderEntry {
    pub provider: Provider,
    pub json: Value,
    pub exprs: ProviderExprs,
    pub forge: Option<Result<Arc<Forge>, ConfigError>>,
    /// The repository address in effect (the Secret's `address` overrides the spec's).
    pub address: String,
}

impl ProviderEntry {
    pub fn key(&self) -> String {
        format!(
            "{}/{}",
            self.provider.metadata.namespace, self.provider.metadata.name
        )
    }
}

#[derive(Debug, Default)]
pub struct Catalog {
    alerts: Vec<Arc<AlertEntry>>,
    by_source: HashMap<ObjectKey, SourceIndex>,
    providers: HashMap<ObjectKey, Arc<ProviderEntry>>,
    secrets: HashMap<ObjectKey, Arc<Secret>>,
}

/// What a load produced: objects that passed validation, in load order.
#[derive(Debug, Default)]
pub struct Objects {
    pub providers: Vec<(Provider, ProviderExprs)>,
    pub alerts: Vec<Alert>,
    pub secrets: Vec<Secret>,
}

impl Catalog {
    /// Builds the snapshot. Providers whose forge cannot be built are kept, with the error,
    /// which is reported when an event is dispatched to them (as Flux does).
    pub fn build(objects: Objects, clients: &ClientCache) -> Catalog {
        let secrets: HashMap<ObjectKey, Arc<Secret>> = objects
            .secrets
            .into_iter()
            .map(|s| {
                (
                    (s.metadata.namespace.clone(), s.metadata.name.clone()),
                    Arc::new(s),
                )
            })
            .collect();

        let mut providers = HashMap::new();
        for (provider, exprs) in objects.providers {
            let mut address = provider.spec.address.clone().unwrap_or_default();
            let forge = ForgeKind::from_provider_type(&provider.spec.type_).map(|kind| {
                resolve::forge_config(&provider, kind, &secrets)
                    .and_then(|cfg| {
                        address = cfg.address.clone();
                        Forge::new(cfg, clients).map_err(ConfigError::from)
                    })
                    .map(Arc::new)
            });
            let json = serde_json::to_value(&provider).unwrap_or(Value::Null);
            let key = (
                provider.metadata.namespace.clone(),
                provider.metadata.name.clone(),
            );
            providers.insert(
                key,
                Arc::new(ProviderEntry {
                    provider,
                    json,
                    exprs,
                    forge,
                    address,
                }),
            );
        }

        let mut alerts = Vec::new();
        let mut by_source: HashMap<ObjectKey, SourceIndex> = HashMap::new();
        for alert in objects.alerts {
            let compile =
                |list: &[String]| list.iter().filter_map(|r| Regex::new(r).ok()).collect();
            let ns = alert.metadata.namespace.clone();
            let index = alerts.len();
            let mut keys = BTreeSet::new();
            for src in &alert.spec.event_sources {
                let src_ns = src.namespace.clone().unwrap_or_else(|| ns.clone());
                keys.insert((src_ns, src.kind.clone(), src.name.clone()));
            }
            for (src_ns, kind, name) in keys {
                let slot = by_source.entry((src_ns, kind)).or_default();
                let list = if name == "*" {
                    &mut slot.any_name
                } else {
                    slot.by_name.entry(name).or_default()
                };
                // Sources are visited in order per Alert, so an index is pushed at most once per list.
                if list.last() != Some(&index) {
                    list.push(index);
                }
            }
            alerts.push(Arc::new(AlertEntry {
                inclusion: compile(&alert.spec.inclusion_list),
                exclusion: compile(&alert.spec.exclusion_list),
                alert,
            }));
        }
        Catalog {
            alerts,
            by_source,
            providers,
            secrets,
        }
    }

    /// Alerts with a source for this namespace, kind and name (or `*`), in load order. The
    /// index makes matching cost independent of Alerts that cannot match.
    pub fn candidates<'a>(
        &'a self,
        namespace: &str,
        kind: &str,
        name: &str,
    ) -> impl Iterator<Item = &'a Arc<AlertEntry>> {
        let mut hits: Vec<usize> = Vec::new();
        if let Some(slot) = self
            .by_source
            .get(&(namespace.to_string(), kind.to_string()))
        {
            hits.extend(&slot.any_name);
            if let Some(named) = slot.by_name.get(name) {
                hits.extend(named);
                hits.sort_unstable();
                hits.dedup();
            }
        }
        hits.into_iter().map(|i| &self.alerts[i])
    }

    pub fn provider(&self, namespace: &str, name: &str) -> Option<&Arc<ProviderEntry>> {
        self.providers
            .get(&(namespace.to_string(), name.to_string()))
    }

    /// Every Alert, in load order.
    pub fn alerts(&self) -> impl Iterator<Item = &Arc<AlertEntry>> {
        self.alerts.iter()
    }

    pub fn providers(&self) -> impl Iterator<Item = &Arc<ProviderEntry>> {
        self.providers.values()
    }

    pub fn counts(&self) -> (usize, usize, usize) {
        (self.providers.len(), self.alerts.len(), self.secrets.len())
    }
}

/// The configuration snapshot, swapped whole on reload.
pub type SharedCatalog = std::sync::Arc<std::sync::RwLock<std::sync::Arc<Catalog>>>;
