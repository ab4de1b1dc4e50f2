//! Stand-ins for the operator's outside world, for tests of the real reconcilers (here and in
//! the end-to-end crate): a metrics source answering from a function, a settable clock, an
//! artifact check with a fixed answer, and a runtime outcome source with settable answers.

use std::{
    collections::BTreeMap,
    fmt,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use switchboard_analysis::{CupedArm, ExperimentUnits};
use switchboard_crds::AdapterPatchSpec;

use crate::{
    context::Clock,
    ports::{
        ArtifactCheck, ArtifactChecker, BoxFuture, CoverageReport, CoverageRequest, CupedRequest,
        HoldoutRequest, MetricsSource, OutcomeSource, Sample, UnitsRequest,
    },
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

/// What [`FixedOutcomes`] answers.
#[derive(Debug, Clone)]
struct OutcomeAnswers {
    cuped: Result<BTreeMap<String, CupedArm>, String>,
    units: Result<ExperimentUnits, String>,
    holdout: Result<ExperimentUnits, String>,
    holdout_asked: Vec<HoldoutRequest>,
    coverage: BTreeMap<String, Result<CoverageReport, String>>,
    asked: Vec<CoverageRequest>,
}

/// Runtimes answering with settable values: CUPED arms, and coverage gaps per Router
/// (`namespace/name`; a Router not set answers like an unreachable runtime).
#[derive(Debug, Clone)]
pub struct FixedOutcomes(Arc<Mutex<OutcomeAnswers>>);

impl Default for FixedOutcomes {
    fn default() -> Self {
        Self(Arc::new(Mutex::new(OutcomeAnswers {
            cuped: Err("no CUPED data in this test".to_owned()),
            units: Err("no unit-level data in this test".to_owned()),
            holdout: Err("no holdout data in this test".to_owned()),
            holdout_asked: Vec::new(),
            coverage: BTreeMap::new(),
            asked: Vec::new(),
        })))
    }
}

impl FixedOutcomes {
    /// The CUPED answer of every runtime.
    pub fn set_cuped(&self, arms: Result<BTreeMap<String, CupedArm>, String>) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).cuped = arms;
    }

    /// The unit-level answer of every runtime.
    pub fn set_units(&self, units: Result<ExperimentUnits, String>) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).units = units;
    }

    /// The holdout answer of every runtime.
    pub fn set_holdout(&self, units: Result<ExperimentUnits, String>) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .holdout = units;
    }

    /// Every holdout request so far.
    pub fn holdout_asked(&self) -> Vec<HoldoutRequest> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .holdout_asked
            .clone()
    }

    /// The coverage-gap answer of the runtimes of `router` (`namespace/name`).
    pub fn set_coverage(&self, router: &str, report: Result<CoverageReport, String>) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .coverage
            .insert(router.to_owned(), report);
    }

    /// Every coverage request so far.
    pub fn coverage_asked(&self) -> Vec<CoverageRequest> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .asked
            .clone()
    }
}

impl OutcomeSource for FixedOutcomes {
    fn units<'a>(
        &'a self,
        _request: &'a UnitsRequest,
    ) -> BoxFuture<'a, Result<ExperimentUnits, String>> {
        let answer = self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .units
            .clone();
        Box::pin(async move { answer })
    }

    fn holdout_units<'a>(
        &'a self,
        request: &'a HoldoutRequest,
    ) -> BoxFuture<'a, Result<ExperimentUnits, String>> {
        let mut answers = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        answers.holdout_asked.push(request.clone());
        let answer = answers.holdout.clone();
        Box::pin(async move { answer })
    }

    fn cuped<'a>(
        &'a self,
        _request: &'a CupedRequest,
    ) -> BoxFuture<'a, Result<BTreeMap<String, CupedArm>, String>> {
        let answer = self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .cuped
            .clone();
        Box::pin(async move { answer })
    }

    fn coverage_gaps<'a>(
        &'a self,
        request: &'a CoverageRequest,
    ) -> BoxFuture<'a, Result<CoverageReport, String>> {
        let mut answers = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        answers.asked.push(request.clone());
        let router = format!("{}/{}", request.namespace, request.router);
        let answer = answers.coverage.get(&router).cloned().unwrap_or_else(|| {
            Err(format!(
                "GET http://{}-runtime-admin.{}.svc:8081/v1/coverage-gaps: connection refused",
                request.router, request.namespace
            ))
        });
        Box::pin(async move { answer })
    }
}
