//! Sends planned commit statuses, off the request path: bounded per-shard queues, one worker
//! per shard, and a memory of what was last posted so an identical repeat costs no API call.
//!
//! Jobs for the same (provider, commit, status name) always land on the same shard and so are
//! sent in the order they were accepted: a `pending` can never overtake the `success` after it.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tokio::task::JoinSet;

use notify::Outcome;

use crate::route::Job;

/// Identity of one commit status on one forge, as far as we post it.
type StatusKey = (String, String, String);

/// How many (provider, commit, status) fingerprints to remember. Each entry is ~200 bytes, so
/// the cap bounds this memory at about 20 MiB.
const MEMORY_CAP: usize = 100_000;

/// What was last posted, per status: lets a repeat of the same state skip the forge entirely.
#[derive(Default)]
pub struct LastPosted {
    map: Mutex<HashMap<StatusKey, String>>,
}

impl LastPosted {
    fn key(job: &Job) -> StatusKey {
        (
            job.provider_uid.clone(),
            job.plan.sha.clone(),
            job.plan.status_id.clone(),
        )
    }

    pub fn is_current(&self, job: &Job) -> bool {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&Self::key(job))
            .is_some_and(|f| *f == job.plan.fingerprint())
    }

    pub fn remember(&self, job: &Job) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MEMORY_CAP {
            // Forgetting costs one read on the forge later, never a wrong status.
            let drop: Vec<_> = map.keys().take(MEMORY_CAP / 10).cloned().collect();
            for k in drop {
                map.remove(&k);
            }
        }
        map.insert(Self::key(job), job.plan.fingerprint());
    }

    pub fn forget(&self, job: &Job) {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&Self::key(job));
    }
}

/// Hands jobs to the workers.
#[derive(Clone)]
pub struct Dispatcher {
    shards: Arc<[mpsc::Sender<Job>]>,
    hasher: std::collections::hash_map::RandomState,
}

/// The jobs could not be queued: the queues are full.
#[derive(Debug)]
pub struct Full;

impl Dispatcher {
    /// Starts `shards` workers, each with a queue of `capacity` jobs.
    pub fn start(
        shards: usize,
        capacity: usize,
        memory: Arc<LastPosted>,
    ) -> (Dispatcher, JoinSet<()>) {
        let mut senders = Vec::with_capacity(shards);
        let mut workers = JoinSet::new();
        for _ in 0..shards.max(1) {
            let (tx, rx) = mpsc::channel(capacity.max(1));
            senders.push(tx);
            workers.spawn(worker(rx, memory.clone()));
        }
        (
            Dispatcher {
                shards: senders.into(),
                hasher: Default::default(),
            },
            workers,
        )
    }

    fn shard(&self, job: &Job) -> usize {
        let mut h = self.hasher.build_hasher();
        LastPosted::key(job).hash(&mut h);
        (std::hash::Hasher::finish(&h) % self.shards.len() as u64) as usize
    }

    /// Queues all of an event's jobs, or none of them.
    pub fn enqueue(&self, jobs: Vec<Job>) -> Result<(), Full> {
        let mut per_shard: HashMap<usize, Vec<Job>> = HashMap::new();
        for job in jobs {
            per_shard.entry(self.shard(&job)).or_default().push(job);
        }
        let mut permits = Vec::new();
        for (shard, jobs) in per_shard {
            match self.shards[shard].try_reserve_many(jobs.len()) {
                Ok(p) => permits.push((p, jobs)),
                Err(_) => return Err(Full),
            }
        }
        for (mut permit, jobs) in permits {
            for job in jobs {
                if let Some(p) = permit.next() {
                    p.send(job);
                }
            }
        }
        Ok(())
    }

    /// Closes the queues; workers finish what is queued and stop.
    pub fn close(self) {
        drop(self.shards);
    }
}

async fn worker(mut rx: mpsc::Receiver<Job>, memory: Arc<LastPosted>) {
    while let Some(job) = rx.recv().await {
        deliver(&job, &memory).await;
    }
}

async fn deliver(job: &Job, memory: &LastPosted) {
    let plan = &job.plan;
    if memory.is_current(job) {
        tracing::debug!(provider = %job.provider, alert = %job.alert, object = %job.object, commit = %plan.sha, status = %plan.status_id, state = %plan.state, "commit status already posted, skipping");
        return;
    }
    match job.forge.execute(plan).await {
        Ok(outcome) => {
            memory.remember(job);
            let already = matches!(outcome, Outcome::AlreadySet);
            tracing::info!(provider = %job.provider, alert = %job.alert, object = %job.object, commit = %plan.sha, status = %plan.status_id, state = %plan.state, already_set = already, "commit status posted");
        }
        Err(e) => {
            memory.forget(job);
            let msg = crate::route::Routed::failure_message(
                &job.object,
                crate::route::Stage::Send,
                &e.to_string(),
            );
            tracing::error!(provider = %job.provider, alert = %job.alert, object = %job.object, commit = %plan.sha, status = %plan.status_id, http_status = e.status(), error = %msg, "failed to send notification");
        }
    }
}
