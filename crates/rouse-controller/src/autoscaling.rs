//! The autoscaling loop: per-revision KPA state (metric windows, decider, the PA's activity
//! state machine), fed by a scrape of every instance's queue-proxy each second and by the
//! activator's stats and pokes, ticked every 2 s. Ticks only decide; the PodAutoscaler
//! reconciler applies (scale through the runtime, SKS mode, PA status).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rouse_api::Kind;
use rouse_api::autoscaling::annotations::RevisionScaling;
use rouse_api::config::autoscaler::AutoscalerConfig;
use rouse_autoscaler::{
    DeciderSpec, PaState, RevisionAutoscaler, ScalingParams, SksMode, Stat, TICK_INTERVAL,
};
use rouse_runtime::InstanceState;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::{Context, Key};

/// How often instances are scraped (Knative's 1 s).
pub const SCRAPE_INTERVAL: Duration = Duration::from_secs(1);

/// A revision's identity.
pub type RevisionId = (String, String);

/// One revision's autoscaling state.
pub struct RevisionState {
    pub auto: RevisionAutoscaler,
    pub pa: PaState,
    pub params: ScalingParams,
    /// The scale last applied through the runtime.
    pub scale: i32,
    pub mode: SksMode,
    pub proxy_since: Option<Instant>,
    /// The answer to the last "is the activator in the path?" check, for the next reconcile.
    pub activator_probe: Option<bool>,
    /// What the state was built from, to notice annotation/config changes.
    pub built_from: (RevisionScaling, i64, bool),
}

/// Every revision's autoscaling state.
pub struct Autoscaling {
    revisions: Mutex<HashMap<RevisionId, RevisionState>>,
}

impl Default for Autoscaling {
    fn default() -> Self {
        Self::new()
    }
}

impl Autoscaling {
    /// Empty.
    pub fn new() -> Self {
        Self {
            revisions: Mutex::new(HashMap::new()),
        }
    }

    /// Runs `f` on the revision's state, creating it (at `ready` instances) when absent and
    /// rebuilding its decider inputs when the scaling settings changed.
    #[allow(clippy::too_many_arguments)]
    pub fn with_revision<R>(
        &self,
        id: &RevisionId,
        scaling: &RevisionScaling,
        container_concurrency: i64,
        reachable: bool,
        cfg: &AutoscalerConfig,
        progress_deadline: Duration,
        ready: i32,
        f: impl FnOnce(&mut RevisionState) -> R,
    ) -> R {
        let now = Instant::now();
        let mut map = self.revisions.lock().expect("autoscaling lock");
        let built_from = (scaling.clone(), container_concurrency, reachable);
        let state = map.entry(id.clone()).or_insert_with(|| {
            let spec = DeciderSpec::new(scaling, container_concurrency, cfg, reachable);
            RevisionState {
                auto: RevisionAutoscaler::new(
                    scaling,
                    container_concurrency,
                    cfg,
                    reachable,
                    ready,
                    now,
                ),
                pa: PaState::new(now),
                params: ScalingParams::new(scaling, &spec, cfg, progress_deadline),
                scale: -1,
                mode: SksMode::Proxy,
                proxy_since: Some(now),
                activator_probe: None,
                built_from: built_from.clone(),
            }
        });
        if state.built_from != built_from {
            let spec = DeciderSpec::new(scaling, container_concurrency, cfg, reachable);
            state.params = ScalingParams::new(scaling, &spec, cfg, progress_deadline);
            state.auto.update(scaling, spec, now);
            state.built_from = built_from;
        }
        f(state)
    }

    /// Forgets a deleted revision.
    pub fn remove(&self, id: &RevisionId) {
        self.revisions.lock().expect("autoscaling lock").remove(id);
    }

    /// The revisions being autoscaled.
    pub fn ids(&self) -> Vec<RevisionId> {
        self.revisions
            .lock()
            .expect("autoscaling lock")
            .keys()
            .cloned()
            .collect()
    }

    /// Records a stat; returns true when it pokes a revision at zero (decide now).
    fn record(&self, id: &RevisionId, now: Instant, stat: &Stat) -> bool {
        let mut map = self.revisions.lock().expect("autoscaling lock");
        match map.get_mut(id) {
            Some(s) => s.auto.record(now, stat),
            None => false,
        }
    }

    /// Runs the decider; true when the PA reconciler must hear of the result.
    fn tick(&self, id: &RevisionId, now: Instant, ready: i32) -> bool {
        let mut map = self.revisions.lock().expect("autoscaling lock");
        match map.get_mut(id) {
            Some(s) => s.auto.tick(now, ready).is_some_and(|(_, changed)| changed),
            None => false,
        }
    }
}

/// Ready instances of a revision as the runtime reports them.
pub fn ready_count(ctx: &Context, ns: &str, rev: &str) -> i32 {
    ctx.runtime
        .instances(ns, rev)
        .iter()
        .filter(|i| i.state == InstanceState::Ready)
        .count() as i32
}

/// Scrapes every revision each second and records the sum (plus the activator's stats). Each
/// revision's scrape runs on its own, so one whose pods answer slowly delays only itself; it is
/// not started again while the previous one runs.
pub(crate) async fn scrape_loop(ctx: Arc<Context>) {
    let mut every = tokio::time::interval(SCRAPE_INTERVAL);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Dropped with the loop, which aborts the scrapes still running.
    let mut scrapes = JoinSet::new();
    let mut in_flight: HashMap<tokio::task::Id, RevisionId> = HashMap::new();
    loop {
        tokio::select! {
            _ = every.tick() => {
                for id in ctx.autoscaling.ids() {
                    if in_flight.values().any(|r| *r == id) {
                        continue;
                    }
                    let scrape = ctx.runtime.scrape(&id.0, &id.1);
                    let task = scrapes.spawn(scrape);
                    in_flight.insert(task.id(), id);
                }
                record_activator_stats(&ctx);
            }
            Some(done) = scrapes.join_next_with_id() => {
                let (task, reports) = match done {
                    Ok((task, reports)) => (task, reports),
                    Err(e) => (e.id(), Vec::new()),
                };
                if let Some(id) = in_flight.remove(&task) {
                    record_scrape(&ctx, &id, &reports);
                }
            }
        }
    }
}

/// Records one revision's scrape as one stat: the sum of its reports (a runtime that samples
/// has extrapolated its one report to every instance already).
fn record_scrape(ctx: &Context, id: &RevisionId, reports: &[(String, rouse_queue::QueueStats)]) {
    if reports.is_empty() {
        return;
    }
    let mut total = Stat {
        pod_name: rouse_autoscaler::collector::SCRAPER_POD_NAME.to_string(),
        ..Stat::default()
    };
    for (_, q) in reports {
        total.average_concurrent_requests += q.average_concurrency;
        total.average_proxied_concurrent_requests += q.average_proxied_concurrency;
        total.request_count += q.request_count;
        total.proxied_request_count += q.proxied_request_count;
        total.process_uptime = total.process_uptime.max(q.process_uptime);
    }
    if ctx.autoscaling.record(id, Instant::now(), &total) {
        decide_now(ctx, id);
    }
}

/// Records what the activators reported since the last call.
fn record_activator_stats(ctx: &Context) {
    let now = Instant::now();
    let mut poked = Vec::new();
    for a in ctx.networking.take_activator_stats() {
        let id = (a.namespace, a.revision);
        let stat = Stat {
            pod_name: "activator".to_string(),
            average_concurrent_requests: a.average_concurrency,
            request_count: a.request_count,
            ..Stat::default()
        };
        if ctx.autoscaling.record(&id, now, &stat) {
            poked.push(id);
        }
    }
    for id in poked {
        decide_now(ctx, &id);
    }
}

/// Ticks every decider every 2 s; tells the PA reconciler about changes.
pub(crate) async fn tick_loop(ctx: Arc<Context>) {
    let mut every = tokio::time::interval(TICK_INTERVAL);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        for id in ctx.autoscaling.ids() {
            decide_now(&ctx, &id);
        }
    }
}

/// Pokes from the activator: the first request for a revision without ready instances.
pub(crate) async fn poke_loop(ctx: Arc<Context>, mut pokes: mpsc::UnboundedReceiver<RevisionId>) {
    while let Some(id) = pokes.recv().await {
        // Knative's activator reports concurrency 1 at once for a revision it just saw.
        let stat = Stat {
            pod_name: "activator".to_string(),
            average_concurrent_requests: 1.0,
            request_count: 1.0,
            ..Stat::default()
        };
        ctx.autoscaling.record(&id, Instant::now(), &stat);
        decide_now(&ctx, &id);
        // The PA reconciler also runs at once, even when the decider had no news.
        ctx.queue.add(Key::new(Kind::PodAutoscaler, &id.0, &id.1));
    }
}

fn decide_now(ctx: &Context, id: &RevisionId) {
    let ready = ready_count(ctx, &id.0, &id.1);
    if ctx.autoscaling.tick(id, Instant::now(), ready) {
        ctx.queue.add(Key::new(Kind::PodAutoscaler, &id.0, &id.1));
    }
}
