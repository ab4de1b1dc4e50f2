//! Stand-ins for the operator's outside world, for tests of the real reconcilers (here and in
//! the end-to-end crate): a metrics source answering from a function, a settable clock, and an
//! artifact check with a fixed answer.

use std::{
    fmt,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use switchboard_crds::AdapterPatchSpec;

use crate::{
    adapter_patch::{artifact::ArtifactChecker, rollout::ArtifactCheck},
    context::Clock,
    observe::{BoxFuture, MetricsSource, Sample},
};

type Answer = dyn Fn(&str) -> Result<Vec<Sample>, String> + Send + Sync;

/// A metrics source answering every query with a function of the PromQL text.
#[derive(Clone)]
pub struct FnSource {
    answer: Arc<Answer>,
    asked: Arc<Mutex<Vec<String>>>,
}

impl fmt::Debug for FnSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FnSource").finish_non_exhaustive()
    }
}

impl FnSource {
    /// A source answering with `answer`.
    pub fn new(
        answer: impl Fn(&str) -> Result<Vec<Sample>, String> + Send + Sync + 'static,
    ) -> Self {
        Self {
            answer: Arc::new(answer),
            asked: Arc::default(),
        }
    }

    /// A source with no series at all.
    pub fn empty() -> Self {
        Self::new(|_| Ok(Vec::new()))
    }

    /// Every query asked so far.
    pub fn asked(&self) -> Vec<String> {
        self.asked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// One unlabelled sample (the answer to a `sum(...)` query).
pub fn scalar(value: f64) -> Vec<Sample> {
    vec![Sample {
        labels: Default::default(),
        value,
    }]
}

impl MetricsSource for FnSource {
    fn query<'a>(&'a self, promql: &'a str) -> BoxFuture<'a, Result<Vec<Sample>, String>> {
        self.asked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(promql.to_owned());
        let answer = (self.answer)(promql);
        Box::pin(async move { answer })
    }
}

/// A clock that moves only when told.
#[derive(Debug, Clone)]
pub struct FakeClock(Arc<Mutex<Timestamp>>);

impl FakeClock {
    /// A clock at `start`.
    pub fn new(start: Timestamp) -> Self {
        Self(Arc::new(Mutex::new(start)))
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        let mut now = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Ok(d) = SignedDuration::try_from(by)
            && let Ok(t) = now.checked_add(d)
        {
            *now = t;
        }
    }
}

impl FakeClock {
    /// Now, as an RFC 3339 string (for fixtures of `metav1.Time` fields).
    pub fn now_string(&self) -> String {
        self.now().to_string()
    }
}

impl Clock for FakeClock {
    fn now(&self) -> Timestamp {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// An artifact check with a settable answer.
#[derive(Debug, Clone)]
pub struct FixedArtifacts(Arc<Mutex<ArtifactCheck>>);

impl FixedArtifacts {
    /// Answers `check` until told otherwise.
    pub fn new(check: ArtifactCheck) -> Self {
        Self(Arc::new(Mutex::new(check)))
    }

    /// Changes the answer.
    pub fn set(&self, check: ArtifactCheck) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = check;
    }
}

impl ArtifactChecker for FixedArtifacts {
    fn check<'a>(
        &'a self,
        _spec: &'a AdapterPatchSpec,
        _credentials: &'a switchboard_artifact::oci::Credentials,
    ) -> BoxFuture<'a, ArtifactCheck> {
        let answer = self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        Box::pin(async move { answer })
    }
}
