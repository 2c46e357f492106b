//! Leader election on a `coordination.k8s.io/v1` Lease, as Kubernetes' own controllers do it:
//! the holder renews the Lease every retry period; a candidate takes it over once its
//! `renewTime` is older than `leaseDurationSeconds`; every write carries the resourceVersion
//! read, so two candidates cannot both win. A leader that has not renewed within the renew
//! deadline stops leading (stops writing) before its Lease can expire and be taken over.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, PostParams};
use tokio::sync::watch;

/// The timing of an election (Kubernetes' controllers' defaults: 15 s, 10 s, 2 s).
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    /// Where the Lease lives (`knative-serving`).
    pub namespace: String,
    /// The Lease's name, one per elected component.
    pub name: String,
    /// This candidate (the pod name).
    pub identity: String,
    /// How long a Lease holds without renewal before others may take it.
    pub lease_duration: Duration,
    /// How long a leader keeps leading without a successful renewal; shorter than
    /// `lease_duration`, so it steps down before anyone can take over.
    pub renew_deadline: Duration,
    /// How often candidates try and leaders renew.
    pub retry_period: Duration,
}

impl LeaseConfig {
    /// Kubernetes' defaults for `identity` in `namespace/name`.
    pub fn new(namespace: &str, name: &str, identity: &str) -> LeaseConfig {
        LeaseConfig {
            namespace: namespace.into(),
            name: name.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// The outcome of one try.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// This candidate holds the Lease (acquired, renewed or taken over).
    Leader,
    /// Another candidate holds a live Lease, or won the race for it (`holder` empty when it
    /// won the race to create the Lease).
    Follower { holder: String },
}

/// Why a try failed (the API unreachable or refusing); the election just tries again.
#[derive(Debug, thiserror::Error)]
#[error("lease {lease}: {source}")]
pub struct LeaseError {
    lease: String,
    #[source]
    source: kube::Error,
}

/// One Lease, tried by one candidate.
pub struct LeaseLock {
    api: Api<Lease>,
    cfg: LeaseConfig,
}

impl LeaseLock {
    /// The Lease `cfg.namespace/cfg.name` on this client.
    pub fn new(client: kube::Client, cfg: LeaseConfig) -> LeaseLock {
        LeaseLock {
            api: Api::namespaced(client, &cfg.namespace),
            cfg,
        }
    }

    fn err(&self, source: kube::Error) -> LeaseError {
        LeaseError {
            lease: format!("{}/{}", self.cfg.namespace, self.cfg.name),
            source,
        }
    }

    /// Acquires, renews or takes over the Lease as of `now`, or learns who holds it.
    pub async fn try_acquire_or_renew(&self, now: Timestamp) -> Result<Attempt, LeaseError> {
        let me = &self.cfg.identity;
        let duration = i32::try_from(self.cfg.lease_duration.as_secs()).unwrap_or(i32::MAX);
        let current = match self.api.get_opt(&self.cfg.name).await {
            Ok(l) => l,
            Err(e) => return Err(self.err(e)),
        };
        let Some(mut lease) = current else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.cfg.name.clone()),
                    namespace: Some(self.cfg.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(me.clone()),
                    lease_duration_seconds: Some(duration),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(Attempt::Leader),
                // Another candidate created it first.
                Err(e) if is_status(&e, 409) => Ok(Attempt::Follower {
                    holder: String::new(),
                }),
                Err(e) => Err(self.err(e)),
            };
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let held_for = spec
            .lease_duration_seconds
            .map(|s| SignedDuration::from_secs(i64::from(s)))
            .unwrap_or_else(|| SignedDuration::from_secs(i64::from(duration)));
        let expired = spec
            .renew_time
            .as_ref()
            .is_none_or(|t| t.0.checked_add(held_for).is_ok_and(|end| end < now));
        if holder != *me && !holder.is_empty() && !expired {
            return Ok(Attempt::Follower { holder });
        }
        if holder != *me {
            spec.holder_identity = Some(me.clone());
            spec.acquire_time = Some(MicroTime(now));
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.renew_time = Some(MicroTime(now));
        spec.lease_duration_seconds = Some(duration);
        // The resourceVersion read makes this a compare-and-swap: one winner per race.
        match self
            .api
            .replace(&self.cfg.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(Attempt::Leader),
            Err(e) if is_status(&e, 409) => Ok(Attempt::Follower { holder }),
            Err(e) => Err(self.err(e)),
        }
    }
}

fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

/// Runs the election until the returned receiver's senders are dropped: tries every retry
/// period and publishes whether this candidate leads. A leader that cannot renew for the
/// renew deadline (API unreachable, Lease taken) publishes `false` at once; errors never end
/// the election.
pub fn elect(lock: LeaseLock) -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(lock.cfg.retry_period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_renewed: Option<tokio::time::Instant> = None;
        // The error last logged: a lasting one (a missing permission) is logged once.
        let mut last_error = String::new();
        loop {
            ticker.tick().await;
            if tx.is_closed() {
                return;
            }
            let started = tokio::time::Instant::now();
            // A leader's try may last only until its renew deadline; a hanging API server must
            // not keep it leading past that.
            let budget = match last_renewed {
                Some(t) => lock.cfg.renew_deadline.saturating_sub(t.elapsed()),
                None => lock.cfg.renew_deadline,
            };
            let attempt = tokio::time::timeout(budget, lock.try_acquire_or_renew(Timestamp::now()));
            let leading = match attempt.await {
                Err(_elapsed) => {
                    tracing::warn!(lease = %lock.cfg.name, "leader election: the API server did not answer in time");
                    false
                }
                Ok(Ok(Attempt::Leader)) => {
                    last_error.clear();
                    last_renewed = Some(started);
                    true
                }
                Ok(Ok(Attempt::Follower { .. })) => {
                    last_error.clear();
                    last_renewed = None;
                    false
                }
                Ok(Err(e)) => {
                    let message = e.to_string();
                    if message != last_error {
                        tracing::warn!(error = %message, "leader election: could not reach the Lease");
                        last_error = message;
                    }
                    last_renewed.is_some_and(|t| t.elapsed() < lock.cfg.renew_deadline)
                }
            };
            if !leading {
                last_renewed = None;
            }
            tx.send_if_modified(|now| std::mem::replace(now, leading) != leading);
        }
    });
    rx
}
