//! Durable interactions and outcomes.
//!
//! Every answered interaction is a row (who served it, what was asked and answered, which
//! documents were cited), and every outcome the helpdesk reports is a row keyed by
//! `(interaction, outcome kind)`. That primary key is the feedback replay guard: a second report
//! of the same kind is refused whichever replica receives it and however often the runtime
//! restarted. The same tables give the experiment analysis its per-unit data (CUPED) and the
//! training data flywheel its labelled examples.
//!
//! One schema ([`schema`]) for both databases, through sqlx's Any driver:
//! - `sqlite://<path>` — the embedded default (a file next to the runtime's cache, created on
//!   first use; WAL journal, so readers never block the writer);
//! - `postgres://user@host/db` — a cluster, shared by every replica of a Router.
#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod schema;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::any::{AnyConnectOptions, AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Connection, Executor, Row};
pub use switchboard_analysis::{ArmUnits, ExperimentUnits};
use switchboard_analysis::{CupedArm, CupedMoments, RatioMoments};
use switchboard_crds::Metric;
pub use switchboard_policy::RouteRecord;
use switchboard_policy::{Outcome, Variant};

/// Which database a store talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// An SQLite file (the embedded default; one process, or several on one machine).
    Sqlite,
    /// PostgreSQL (shared by replicas).
    Postgres,
}

impl Backend {
    /// `sqlite` or `postgres` (a metric label).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
        }
    }
}

/// Why a store operation failed. Messages name the database (password redacted) and the step.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The URL is not one this store understands.
    #[error("outcome store URL {url}: {reason}")]
    Url {
        /// The URL, password redacted.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The database could not be reached or opened.
    #[error("connecting to the outcome store {url}: {source}")]
    Connect {
        /// The URL, password redacted.
        url: String,
        /// The driver's error.
        source: sqlx::Error,
    },
    /// A migration failed (nothing of it was applied: it runs in one transaction).
    #[error("migrating the outcome store {url} to schema version {version}: {source}")]
    Migrate {
        /// The URL, password redacted.
        url: String,
        /// The migration.
        version: i64,
        /// The driver's error.
        source: sqlx::Error,
    },
    /// The database was migrated by a newer release.
    #[error(
        "the outcome store {url} has schema version {found}; this build knows up to {supported} (downgrade refused: nothing was changed)"
    )]
    SchemaTooNew {
        /// The URL, password redacted.
        url: String,
        /// Version found.
        found: i64,
        /// Newest version this build knows.
        supported: i64,
    },
    /// A query failed.
    #[error("outcome store {op}: {source}")]
    Query {
        /// The operation (`record_interaction`, `record_outcome`, ...).
        op: &'static str,
        /// The driver's error.
        source: sqlx::Error,
    },
    /// The request cannot be answered from the stored data.
    #[error("{0}")]
    Unsupported(String),
}

impl StoreError {
    /// Short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Url { .. } => "url",
            Self::Connect { .. } => "connect",
            Self::Migrate { .. } => "migrate",
            Self::SchemaTooNew { .. } => "schema_too_new",
            Self::Query { op, .. } => op,
            Self::Unsupported(_) => "unsupported",
        }
    }
}

/// `Result` of this crate.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

fn query_error(op: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |source| StoreError::Query { op, source }
}

/// One answered interaction, as stored.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Interaction {
    /// The interaction id of the signed token.
    pub id: String,
    /// Unix seconds.
    pub created_at: i64,
    /// When the token expires (Unix seconds).
    pub expires_at: i64,
    /// Assignment unit (user, account or conversation id), when the caller gave one.
    pub unit: Option<String>,
    /// Who served it.
    pub variant: Variant,
    /// Index generation searched.
    pub kb_generation: String,
    /// RuntimeConfig revision in force.
    pub config_revision: String,
    /// Why the model was chosen.
    pub route_reason: String,
    /// The customer's message.
    pub query: String,
    /// The query searched, when it was rewritten.
    pub rewritten_query: Option<String>,
    /// The answer returned.
    pub answer: String,
    /// The answer declined to answer.
    pub refused: bool,
    /// The answer cited a passage number that was not in the prompt.
    pub invalid_citation: bool,
    /// No passage cleared the relevance floor.
    pub retrieval_failed: bool,
    /// Final score of the best passage.
    pub best_score: Option<f64>,
    /// Documents of the valid citations.
    pub cited_documents: Vec<String>,
    /// Documents of the passages in the prompt, in rank order.
    pub retrieved_documents: Vec<String>,
    /// The request attributes the interaction's Experiment breaks its results down by, as
    /// `name=value` lines (empty when not enrolled or none declared).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub segments: String,
    /// The routing decision with its features and propensity (absent for interactions stored
    /// before they were recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing: Option<RouteRecord>,
}

/// Whether an outcome was new or a replay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recorded {
    /// Stored now: count it.
    New,
    /// This kind of outcome was already stored for the interaction (by any replica, before any
    /// restart): refuse it.
    Replayed,
}

/// Outcomes of one interaction, as reported so far.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Outcomes {
    /// Handed to a human.
    pub escalated: bool,
    /// Resolved by the answer.
    pub resolved: bool,
    /// Reopened after being resolved.
    pub reopened: bool,
    /// CSAT rating 1..=5.
    pub csat: Option<i64>,
}

/// An interaction with its outcomes (the flywheel's raw material).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InteractionWithOutcomes {
    /// The interaction.
    #[serde(flatten)]
    pub interaction: Interaction,
    /// Its outcomes.
    pub outcomes: Outcomes,
}

/// Events and trials of one metric for one unit (and arm) over a period.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnitOutcome {
    /// The unit.
    pub unit: String,
    /// Its arm (empty for periods outside an experiment).
    pub arm: String,
    /// Interactions with the event.
    pub events: i64,
    /// Interactions that count for the metric.
    pub trials: i64,
}

/// What [`OutcomeStore::unit_outcomes`] reads.
#[derive(Clone, Debug)]
pub struct UnitQuery<'a> {
    /// `<namespace>/<name>` of the Router.
    pub router: &'a str,
    /// Only interactions enrolled in this experiment (grouped by arm); `None`: every interaction
    /// of the router, arms ignored (a pre-period).
    pub experiment: Option<&'a str>,
    /// The metric.
    pub metric: Metric,
    /// From (Unix seconds, inclusive).
    pub from: i64,
    /// Until (Unix seconds, exclusive).
    pub until: i64,
}

/// What [`OutcomeStore::cuped`] reads.
#[derive(Clone, Debug)]
pub struct CupedQuery<'a> {
    /// `<namespace>/<name>` of the Router.
    pub router: &'a str,
    /// The experiment.
    pub experiment: &'a str,
    /// The metric compared.
    pub metric: Metric,
    /// The pre-period covariate (usually the same metric).
    pub covariate: Metric,
    /// When the experiment started (Unix seconds).
    pub started_at: i64,
    /// Length of the pre-period.
    pub preperiod: Duration,
    /// Now (Unix seconds).
    pub now: i64,
}

/// What [`OutcomeStore::experiment_units`] reads.
#[derive(Clone, Debug)]
pub struct UnitsQuery<'a> {
    /// `<namespace>/<name>` of the Router.
    pub router: &'a str,
    /// The experiment.
    pub experiment: &'a str,
    /// Metrics to summarise per unit.
    pub metrics: &'a [Metric],
    /// When the experiment started (Unix seconds).
    pub started_at: i64,
    /// Now (Unix seconds).
    pub now: i64,
    /// Per metric: only interactions at least this old count for it (their outcomes have had
    /// time to arrive); missing: no wait.
    pub settle: &'a BTreeMap<Metric, Duration>,
    /// Request attributes to break the first metric down by (the Experiment's `segments`).
    pub segments: &'a [String],
}

/// What [`OutcomeStore::holdout_units`] reads.
#[derive(Clone, Debug)]
pub struct HoldoutQuery<'a> {
    /// `<namespace>/<name>` of the Router.
    pub router: &'a str,
    /// When the holdout started (Unix seconds).
    pub started_at: i64,
    /// Now (Unix seconds).
    pub now: i64,
    /// Metrics to summarise per unit.
    pub metrics: &'a [Metric],
    /// Per metric: only interactions at least this old count for it.
    pub settle: &'a BTreeMap<Metric, Duration>,
}

/// The two groups of [`OutcomeStore::holdout_units`]: the Router holdout's units and everyone
/// else.
pub const HOLDOUT_GROUPS: [&str; 2] = ["holdout", "exposed"];

/// Values of one segment attribute reported on their own; the rest are [`OTHER_SEGMENT`].
pub const MAX_SEGMENT_VALUES: usize = 10;
/// The value standing for the rarer values of an attribute, and for interactions without it.
pub const OTHER_SEGMENT: &str = "(other)";

/// The value of `attribute` in a `name=value` lines string.
pub fn segment_value<'a>(segments: &'a str, attribute: &str) -> Option<&'a str> {
    segments
        .lines()
        .filter_map(|l| l.split_once('='))
        .find(|(k, _)| *k == attribute)
        .map(|(_, v)| v)
}

/// The end of the interactions that count for `metric`: those at least its settle window old
/// (no earlier than `started_at`).
fn settled_before(
    settle: &BTreeMap<Metric, Duration>,
    metric: Metric,
    started_at: i64,
    until: i64,
) -> i64 {
    let wait = settle
        .get(&metric)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    until.saturating_sub(wait).max(started_at)
}

/// Adds `metric`'s delta-method moments per arm from per-unit `(arm, events, trials)`.
fn insert_moments(
    out: &mut ExperimentUnits,
    metric: Metric,
    per_unit: impl IntoIterator<Item = (String, i64, i64)>,
) {
    let mut arms: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for (arm, events, trials) in per_unit {
        arms.entry(arm)
            .or_default()
            .push((events as f64, trials as f64));
    }
    for (arm, units) in arms {
        out.arms
            .entry(arm)
            .or_default()
            .metrics
            .insert(metric.as_str().to_owned(), RatioMoments::from_units(units));
    }
}

/// Per-arm CUPED sufficient statistics of an experiment, from the stored per-unit outcomes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CupedData {
    /// The metric compared (`y`: its per-unit rate during the experiment).
    pub metric: Metric,
    /// The covariate (`x`: its per-unit rate during the pre-period).
    pub covariate: Metric,
    /// Per arm.
    pub arms: BTreeMap<String, CupedArm>,
}

/// The store.
#[derive(Clone, Debug)]
pub struct OutcomeStore {
    pool: AnyPool,
    backend: Backend,
    url: String,
}

/// `url` with the password replaced by `***`.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:***@{host}"),
            None => format!("{userinfo}@{host}"),
        },
        None => authority.to_owned(),
    };
    let mut out = format!("{scheme}://{authority}");
    if !path.is_empty() || rest.contains('/') {
        out.push('/');
        out.push_str(path);
    }
    out
}

/// Advisory lock key serialising migrations of replicas that start together (PostgreSQL).
const MIGRATION_LOCK: i64 = 0x5357_4254_4348;

fn flag(b: bool) -> i64 {
    i64::from(b)
}

fn json_list(items: &[String]) -> String {
    serde_json::to_string(items).unwrap_or_else(|_| "[]".to_owned())
}

fn parse_list(text: &str) -> Vec<String> {
    serde_json::from_str(text).unwrap_or_default()
}

/// SQL of the per-interaction `(event, trial)` of `metric`, over `interactions i` joined with
/// its `outcomes o` and grouped by interaction. The definitions are those of the Prometheus
/// queries (docs/metrics.md), so an estimate from the store and one from Prometheus agree.
fn metric_sql(metric: Metric) -> Result<(&'static str, &'static str)> {
    const ONE: &str = "1";
    const RATED: &str = "MAX(CASE WHEN o.kind = 'csat' THEN 1 ELSE 0 END)";
    Ok(match metric {
        Metric::EscalationRate => ("MAX(CASE WHEN o.kind = 'escalated' THEN 1 ELSE 0 END)", ONE),
        Metric::ReopenRate => ("MAX(CASE WHEN o.kind = 'reopened' THEN 1 ELSE 0 END)", ONE),
        Metric::ResolutionRate => ("MAX(CASE WHEN o.kind = 'resolved' THEN 1 ELSE 0 END)", ONE),
        Metric::CsatLow => (
            "MAX(CASE WHEN o.kind = 'csat' AND o.value <= 2 THEN 1 ELSE 0 END)",
            RATED,
        ),
        Metric::CsatHigh => (
            "MAX(CASE WHEN o.kind = 'csat' AND o.value >= 4 THEN 1 ELSE 0 END)",
            RATED,
        ),
        Metric::RefusalRate => ("MAX(i.refused)", ONE),
        Metric::InvalidCitationRate => ("MAX(i.invalid_citation)", ONE),
        Metric::RetrievalFailureRate => ("MAX(i.retrieval_failed)", ONE),
        Metric::ShadowDivergence => {
            return Err(StoreError::Unsupported(
                "shadowDivergence is measured on mirrored answers, which are not stored per unit"
                    .to_owned(),
            ));
        }
    })
}

const INTERACTION_COLUMNS: &str = "i.id, i.created_at, i.expires_at, i.router, i.unit, \
    i.experiment, i.arm, i.lineage, i.adapter_version, i.adapter_role, i.model, i.kb_generation, \
    i.config_revision, i.route_reason, i.query, i.rewritten_query, i.answer, i.refused, \
    i.invalid_citation, i.retrieval_failed, i.best_score, i.cited_documents, i.retrieved_documents, \
    i.segments, i.routing";

fn routing_json(routing: Option<&RouteRecord>) -> String {
    routing
        .and_then(|r| serde_json::to_string(r).ok())
        .unwrap_or_default()
}

/// The stored routing record; an empty or unreadable one (a newer writer's format) is absent
/// rather than an error: it only feeds `router fit`, which skips interactions without one.
fn parse_routing(text: &str) -> Option<RouteRecord> {
    (!text.is_empty())
        .then(|| serde_json::from_str(text).ok())
        .flatten()
}

fn interaction_from_row(row: &AnyRow) -> Result<Interaction, sqlx::Error> {
    Ok(Interaction {
        id: row.try_get("id")?,
        created_at: row.try_get("created_at")?,
        expires_at: row.try_get("expires_at")?,
        unit: row.try_get("unit")?,
        variant: Variant {
            router: row.try_get("router")?,
            lineage: row.try_get("lineage")?,
            adapter_version: row.try_get("adapter_version")?,
            adapter_role: row.try_get("adapter_role")?,
            experiment: row.try_get("experiment")?,
            arm: row.try_get("arm")?,
            model: row.try_get("model")?,
        },
        kb_generation: row.try_get("kb_generation")?,
        config_revision: row.try_get("config_revision")?,
        route_reason: row.try_get("route_reason")?,
        query: row.try_get("query")?,
        rewritten_query: row.try_get("rewritten_query")?,
        answer: row.try_get("answer")?,
        refused: row.try_get::<i64, _>("refused")? != 0,
        invalid_citation: row.try_get::<i64, _>("invalid_citation")? != 0,
        retrieval_failed: row.try_get::<i64, _>("retrieval_failed")? != 0,
        best_score: row.try_get("best_score")?,
        cited_documents: parse_list(&row.try_get::<String, _>("cited_documents")?),
        retrieved_documents: parse_list(&row.try_get::<String, _>("retrieved_documents")?),
        segments: row.try_get("segments")?,
        routing: parse_routing(&row.try_get::<String, _>("routing")?),
    })
}

impl OutcomeStore {
    /// Opens (creating an SQLite file and its folder when needed) and migrates the store at
    /// `url`: `sqlite://<path>`, `sqlite::memory:` (tests), or `postgres://...`.
    pub async fn connect(url: &str) -> Result<Self> {
        sqlx::any::install_default_drivers();
        let redacted = redact(url);
        let bad = |reason: String| StoreError::Url {
            url: redacted.clone(),
            reason,
        };
        let (backend, connect_url, max_connections) = if let Some(path) = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
        {
            let (path, params) = path.split_once('?').unwrap_or((path, ""));
            if path.is_empty() {
                return Err(bad("no database file path (sqlite://<path>)".to_owned()));
            }
            if path == ":memory:" {
                // One connection: each in-memory connection is a database of its own.
                (Backend::Sqlite, "sqlite::memory:".to_owned(), 1)
            } else {
                if let Some(parent) = std::path::Path::new(path).parent()
                    && !parent.as_os_str().is_empty()
                {
                    std::fs::create_dir_all(parent).map_err(|e| {
                        bad(format!("cannot create folder {}: {e}", parent.display()))
                    })?;
                }
                let params = if params.contains("mode=") {
                    params.to_owned()
                } else if params.is_empty() {
                    "mode=rwc".to_owned()
                } else {
                    format!("{params}&mode=rwc")
                };
                (Backend::Sqlite, format!("sqlite://{path}?{params}"), 4)
            }
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            (Backend::Postgres, url.to_owned(), 8)
        } else {
            return Err(bad(
                "expected sqlite://<path> (embedded) or postgres://<user>@<host>/<database>"
                    .to_owned(),
            ));
        };
        let options: AnyConnectOptions = connect_url
            .parse()
            .map_err(|e: sqlx::Error| bad(e.to_string()))?;
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        // Writers wait for each other instead of failing with SQLITE_BUSY; WAL
                        // lets readers (exports, analysis) run beside the writer.
                        conn.execute("PRAGMA busy_timeout = 10000").await?;
                        conn.execute("PRAGMA journal_mode = WAL").await?;
                        conn.execute("PRAGMA synchronous = NORMAL").await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await
            .map_err(|source| StoreError::Connect {
                url: redacted.clone(),
                source,
            })?;
        let store = Self {
            pool,
            backend,
            url: redacted,
        };
        store.migrate().await?;
        Ok(store)
    }

    /// The database kind.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The URL, password redacted.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Applies the migrations this database lacks; refuses a database migrated by a newer build.
    async fn migrate(&self) -> Result<()> {
        let connect = |source| StoreError::Connect {
            url: self.url.clone(),
            source,
        };
        let mut conn = self.pool.acquire().await.map_err(connect)?;
        if self.backend == Backend::Postgres {
            conn.execute(format!("SELECT pg_advisory_lock({MIGRATION_LOCK})").as_str())
                .await
                .map_err(connect)?;
        }
        let result = async {
            conn.execute(schema::CREATE_MIGRATIONS_TABLE)
                .await
                .map_err(|source| StoreError::Migrate {
                    url: self.url.clone(),
                    version: 0,
                    source,
                })?;
            let current: i64 = sqlx::query(
                "SELECT CAST(COALESCE(MAX(version), 0) AS BIGINT) AS v FROM switchboard_migrations",
            )
            .fetch_one(&mut *conn)
            .await
            .and_then(|row| row.try_get("v"))
            .map_err(|source| StoreError::Migrate {
                url: self.url.clone(),
                version: 0,
                source,
            })?;
            if current > schema::latest() {
                return Err(StoreError::SchemaTooNew {
                    url: self.url.clone(),
                    found: current,
                    supported: schema::latest(),
                });
            }
            for (version, statements) in schema::MIGRATIONS.iter().filter(|m| m.0 > current) {
                let failed = |source| StoreError::Migrate {
                    url: self.url.clone(),
                    version: *version,
                    source,
                };
                let mut tx = conn.begin().await.map_err(failed)?;
                for statement in *statements {
                    tx.execute(*statement).await.map_err(failed)?;
                }
                sqlx::query(
                    "INSERT INTO switchboard_migrations (version, applied_at) VALUES ($1, $2)",
                )
                .bind(*version)
                .bind(now_secs())
                .execute(&mut *tx)
                .await
                .map_err(failed)?;
                tx.commit().await.map_err(failed)?;
                tracing::info!(store = %self.url, version, "outcome store migrated");
            }
            Ok(())
        }
        .await;
        if self.backend == Backend::Postgres {
            let _ = conn
                .execute(format!("SELECT pg_advisory_unlock({MIGRATION_LOCK})").as_str())
                .await;
        }
        result
    }

    /// Checks that the database answers (readiness).
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(|_| ())
            .map_err(query_error("ping"))
    }

    /// Stores an answered interaction. Idempotent on the id.
    pub async fn record_interaction(&self, i: &Interaction) -> Result<()> {
        sqlx::query(
            "INSERT INTO interactions (id, created_at, expires_at, router, unit, experiment, arm, \
             lineage, adapter_version, adapter_role, model, kb_generation, config_revision, \
             route_reason, query, rewritten_query, answer, refused, invalid_citation, \
             retrieval_failed, best_score, cited_documents, retrieved_documents, segments, \
             routing) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, \
             $18, $19, $20, $21, $22, $23, $24, $25) ON CONFLICT (id) DO NOTHING",
        )
        .bind(&i.id)
        .bind(i.created_at)
        .bind(i.expires_at)
        .bind(&i.variant.router)
        .bind(i.unit.as_deref())
        .bind(&i.variant.experiment)
        .bind(&i.variant.arm)
        .bind(&i.variant.lineage)
        .bind(&i.variant.adapter_version)
        .bind(&i.variant.adapter_role)
        .bind(&i.variant.model)
        .bind(&i.kb_generation)
        .bind(&i.config_revision)
        .bind(&i.route_reason)
        .bind(&i.query)
        .bind(i.rewritten_query.as_deref())
        .bind(&i.answer)
        .bind(flag(i.refused))
        .bind(flag(i.invalid_citation))
        .bind(flag(i.retrieval_failed))
        .bind(i.best_score)
        .bind(json_list(&i.cited_documents))
        .bind(json_list(&i.retrieved_documents))
        .bind(&i.segments)
        .bind(routing_json(i.routing.as_ref()))
        .execute(&self.pool)
        .await
        .map(|_| ())
        .map_err(query_error("record_interaction"))
    }

    /// Stores an outcome of interaction `id` once per kind (one CSAT rating, whatever its
    /// value): [`Recorded::Replayed`] when that kind was already stored.
    pub async fn record_outcome(&self, id: &str, outcome: Outcome, at: i64) -> Result<Recorded> {
        let value = match outcome {
            Outcome::Csat(r) => Some(i64::from(r)),
            _ => None,
        };
        let result = sqlx::query(
            "INSERT INTO outcomes (interaction_id, kind, value, recorded_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (interaction_id, kind) DO NOTHING",
        )
        .bind(id)
        .bind(outcome.kind())
        .bind(value)
        .bind(at)
        .execute(&self.pool)
        .await
        .map_err(query_error("record_outcome"))?;
        Ok(if result.rows_affected() == 1 {
            Recorded::New
        } else {
            Recorded::Replayed
        })
    }

    /// The interaction `id` with its outcomes, if stored.
    pub async fn interaction(&self, id: &str) -> Result<Option<InteractionWithOutcomes>> {
        let rows = self
            .export_query("i.id = $1", vec![Arg::Text(id.to_owned())], 1)
            .await?;
        Ok(rows.into_iter().next())
    }

    /// Interactions created in `[from, until)` with their outcomes, oldest first, at most
    /// `limit`, continuing after `after` (`(created_at, id)` of the last row of the previous
    /// page).
    pub async fn export(
        &self,
        from: i64,
        until: i64,
        after: Option<(i64, String)>,
        limit: i64,
    ) -> Result<Vec<InteractionWithOutcomes>> {
        let (after_at, after_id) = after.unwrap_or((i64::MIN, String::new()));
        self.export_query(
            "i.created_at >= $1 AND i.created_at < $2 \
             AND (i.created_at > $3 OR (i.created_at = $3 AND i.id > $4))",
            vec![
                Arg::Int(from),
                Arg::Int(until),
                Arg::Int(after_at),
                Arg::Text(after_id),
            ],
            limit,
        )
        .await
    }

    /// Like [`export`](Self::export), only the interactions of `router` when given (the
    /// training-data export's page).
    pub async fn export_page(
        &self,
        router: Option<&str>,
        from: i64,
        until: i64,
        after: Option<(i64, String)>,
        limit: i64,
    ) -> Result<Vec<InteractionWithOutcomes>> {
        let Some(router) = router else {
            return self.export(from, until, after, limit).await;
        };
        let (after_at, after_id) = after.unwrap_or((i64::MIN, String::new()));
        self.export_query(
            "i.created_at >= $1 AND i.created_at < $2 \
             AND (i.created_at > $3 OR (i.created_at = $3 AND i.id > $4)) AND i.router = $5",
            vec![
                Arg::Int(from),
                Arg::Int(until),
                Arg::Int(after_at),
                Arg::Text(after_id),
                Arg::Text(router.to_owned()),
            ],
            limit,
        )
        .await
    }

    /// The knowledge base's coverage-gap signals created in `[from, until)` (of `router`, when
    /// given): interactions that were escalated, found no passage, were refused, or (with
    /// `min_score`) whose best passage scored below it; the newest `limit`, newest first.
    pub async fn coverage_signals(
        &self,
        router: Option<&str>,
        from: i64,
        until: i64,
        min_score: Option<f64>,
        limit: i64,
    ) -> Result<Vec<InteractionWithOutcomes>> {
        let mut filter = "i.created_at >= $1 AND i.created_at < $2 AND (i.retrieval_failed = 1 \
             OR i.refused = 1 OR i.id IN (SELECT interaction_id FROM outcomes WHERE kind = 'escalated')"
            .to_owned();
        let mut args = vec![Arg::Int(from), Arg::Int(until)];
        if let Some(min_score) = min_score {
            args.push(Arg::Float(min_score));
            filter.push_str(&format!(" OR i.best_score < ${}", args.len()));
        }
        filter.push(')');
        if let Some(router) = router {
            args.push(Arg::Text(router.to_owned()));
            filter.push_str(&format!(" AND i.router = ${}", args.len()));
        }
        self.query_interactions("coverage_gaps", &filter, args, "DESC", limit)
            .await
    }

    /// How many interactions were created in `[from, until)` (of `router`, when given): the
    /// denominator of a coverage gap's share.
    pub async fn count_interactions(
        &self,
        router: Option<&str>,
        from: i64,
        until: i64,
    ) -> Result<u64> {
        let mut sql =
            "SELECT COUNT(*) AS n FROM interactions WHERE created_at >= $1 AND created_at < $2"
                .to_owned();
        if router.is_some() {
            sql.push_str(" AND router = $3");
        }
        let mut query = sqlx::query(&sql).bind(from).bind(until);
        if let Some(router) = router {
            query = query.bind(router.to_owned());
        }
        let row = query
            .fetch_one(&self.pool)
            .await
            .map_err(query_error("count_interactions"))?;
        let n = cast_i64(&row, "n").map_err(query_error("count_interactions"))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn export_query(
        &self,
        filter: &str,
        args: Vec<Arg>,
        limit: i64,
    ) -> Result<Vec<InteractionWithOutcomes>> {
        self.query_interactions("export", filter, args, "ASC", limit)
            .await
    }

    /// Interactions matching `filter` with their outcomes, in creation order (`order`: `ASC`
    /// or `DESC`), at most `limit`; failures are labelled `op`.
    async fn query_interactions(
        &self,
        op: &'static str,
        filter: &str,
        args: Vec<Arg>,
        order: &str,
        limit: i64,
    ) -> Result<Vec<InteractionWithOutcomes>> {
        // Grouped by the primary key, so the interaction's own columns are single-valued.
        let sql = format!(
            "SELECT {INTERACTION_COLUMNS}, \
             MAX(CASE WHEN o.kind = 'escalated' THEN 1 ELSE 0 END) AS o_escalated, \
             MAX(CASE WHEN o.kind = 'resolved' THEN 1 ELSE 0 END) AS o_resolved, \
             MAX(CASE WHEN o.kind = 'reopened' THEN 1 ELSE 0 END) AS o_reopened, \
             MAX(CASE WHEN o.kind = 'csat' THEN o.value END) AS o_csat \
             FROM interactions i LEFT JOIN outcomes o ON o.interaction_id = i.id \
             WHERE {filter} GROUP BY i.id ORDER BY i.created_at {order}, i.id {order} LIMIT {}",
            limit.clamp(1, 100_000)
        );
        let mut query = sqlx::query(&sql);
        for arg in args {
            query = match arg {
                Arg::Int(v) => query.bind(v),
                Arg::Text(v) => query.bind(v),
                Arg::Float(v) => query.bind(v),
            };
        }
        let rows = query.fetch_all(&self.pool).await.map_err(query_error(op))?;
        rows.iter()
            .map(|row| {
                Ok(InteractionWithOutcomes {
                    interaction: interaction_from_row(row)?,
                    outcomes: Outcomes {
                        escalated: cast_i64(row, "o_escalated")? != 0,
                        resolved: cast_i64(row, "o_resolved")? != 0,
                        reopened: cast_i64(row, "o_reopened")? != 0,
                        csat: row.try_get("o_csat")?,
                    },
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(query_error(op))
    }

    /// Per-unit events and trials of a metric over a period (units without trials are left
    /// out). With `experiment`, only its enrolled interactions, per (unit, arm).
    pub async fn unit_outcomes(&self, q: &UnitQuery<'_>) -> Result<Vec<UnitOutcome>> {
        let (event, trial) = metric_sql(q.metric)?;
        let (arm, filter) = match q.experiment {
            Some(_) => ("i.arm", "AND i.experiment = $4"),
            None => ("''", ""),
        };
        let sql = format!(
            "SELECT unit, arm, CAST(SUM(ev) AS BIGINT) AS events, CAST(SUM(tr) AS BIGINT) AS trials \
             FROM (SELECT i.unit AS unit, {arm} AS arm, {event} AS ev, {trial} AS tr \
                   FROM interactions i LEFT JOIN outcomes o ON o.interaction_id = i.id \
                   WHERE i.router = $1 AND i.unit IS NOT NULL \
                     AND i.created_at >= $2 AND i.created_at < $3 {filter} \
                   GROUP BY i.id, i.unit, i.arm) per_interaction \
             GROUP BY unit, arm HAVING SUM(tr) > 0"
        );
        let mut query = sqlx::query(&sql).bind(q.router).bind(q.from).bind(q.until);
        if let Some(experiment) = q.experiment {
            query = query.bind(experiment);
        }
        let rows = query
            .fetch_all(&self.pool)
            .await
            .map_err(query_error("unit_outcomes"))?;
        rows.iter()
            .map(|row| {
                Ok(UnitOutcome {
                    unit: row.try_get("unit")?,
                    arm: row.try_get("arm")?,
                    events: row.try_get("events")?,
                    trials: row.try_get("trials")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(query_error("unit_outcomes"))
    }

    /// Unit-level statistics of an experiment since its start: per arm the distinct units and
    /// interactions enrolled, and per metric the delta-method moments of Σevents/Σtrials over
    /// units, counting only interactions older than the metric's settle window (an escalation
    /// reported a day after the answer must not make a young arm look better than an old one).
    pub async fn experiment_units(&self, q: &UnitsQuery<'_>) -> Result<ExperimentUnits> {
        let until = q.now.max(q.started_at);
        let rows = sqlx::query(
            "SELECT arm, COUNT(DISTINCT unit) AS units, COUNT(*) AS interactions \
             FROM interactions WHERE router = $1 AND experiment = $2 AND unit IS NOT NULL \
             AND created_at >= $3 AND created_at < $4 GROUP BY arm",
        )
        .bind(q.router)
        .bind(q.experiment)
        .bind(q.started_at)
        .bind(until)
        .fetch_all(&self.pool)
        .await
        .map_err(query_error("experiment_units"))?;
        let mut out = ExperimentUnits::default();
        for row in &rows {
            let arm: String = row
                .try_get("arm")
                .map_err(query_error("experiment_units"))?;
            let count = |c| {
                cast_i64(row, c)
                    .map(|n| u64::try_from(n).unwrap_or(0))
                    .map_err(query_error("experiment_units"))
            };
            let entry = out.arms.entry(arm).or_default();
            entry.units = count("units")?;
            entry.interactions = count("interactions")?;
        }
        for (i, &metric) in q.metrics.iter().enumerate() {
            let settled = settled_before(q.settle, metric, q.started_at, until);
            // The first metric, broken down by segments: one read gives both the segments and,
            // summed over them, each unit's outcomes.
            let per_unit: Vec<UnitOutcome> = if i == 0 && !q.segments.is_empty() {
                let rows = self.segment_outcomes(q, metric, settled).await?;
                out.segments = segment_arms(&rows, q.segments, metric);
                let mut units: BTreeMap<(&str, &str), (i64, i64)> = BTreeMap::new();
                for (u, _) in &rows {
                    let e = units.entry((u.unit.as_str(), u.arm.as_str())).or_default();
                    e.0 += u.events;
                    e.1 += u.trials;
                }
                units
                    .into_iter()
                    .map(|((unit, arm), (events, trials))| UnitOutcome {
                        unit: unit.to_owned(),
                        arm: arm.to_owned(),
                        events,
                        trials,
                    })
                    .collect()
            } else {
                self.unit_outcomes(&UnitQuery {
                    router: q.router,
                    experiment: Some(q.experiment),
                    metric,
                    from: q.started_at,
                    until: settled,
                })
                .await?
            };
            insert_moments(
                &mut out,
                metric,
                per_unit.iter().map(|u| (u.arm.clone(), u.events, u.trials)),
            );
            let recent = sqlx::query(
                "SELECT COUNT(*) AS n FROM interactions WHERE router = $1 AND experiment = $2 \
                 AND unit IS NOT NULL AND created_at >= $3 AND created_at < $4",
            )
            .bind(q.router)
            .bind(q.experiment)
            .bind(settled)
            .bind(until)
            .fetch_one(&self.pool)
            .await
            .map_err(query_error("experiment_units"))?;
            let n = cast_i64(&recent, "n").map_err(query_error("experiment_units"))?;
            out.unsettled
                .insert(metric.as_str().to_owned(), u64::try_from(n).unwrap_or(0));
        }
        Ok(out)
    }

    /// The Router's permanent holdout against everyone else since it started: per group
    /// ([`HOLDOUT_GROUPS`]: interactions stored with the arm
    /// [`switchboard_crds::runtime_config::HOLDOUT_ARM`], and all others) the distinct units and
    /// interactions, and per metric the delta-method moments of `Σevents/Σtrials` over units,
    /// counting only interactions older than the metric's settle window.
    pub async fn holdout_units(&self, q: &HoldoutQuery<'_>) -> Result<ExperimentUnits> {
        const GROUP: &str = "CASE WHEN i.arm = $2 THEN 'holdout' ELSE 'exposed' END";
        let arm = switchboard_crds::runtime_config::HOLDOUT_ARM;
        let until = q.now.max(q.started_at);
        let sql = format!(
            "SELECT grp, COUNT(DISTINCT unit) AS units, COUNT(*) AS interactions \
             FROM (SELECT i.unit AS unit, {GROUP} AS grp FROM interactions i \
                   WHERE i.router = $1 AND i.unit IS NOT NULL \
                     AND i.created_at >= $3 AND i.created_at < $4) per_interaction \
             GROUP BY grp"
        );
        let rows = sqlx::query(&sql)
            .bind(q.router)
            .bind(arm)
            .bind(q.started_at)
            .bind(until)
            .fetch_all(&self.pool)
            .await
            .map_err(query_error("holdout_units"))?;
        let mut out = ExperimentUnits::default();
        for group in HOLDOUT_GROUPS {
            out.arms.insert(group.to_owned(), ArmUnits::default());
        }
        for row in &rows {
            let group: String = row.try_get("grp").map_err(query_error("holdout_units"))?;
            let count = |c| {
                cast_i64(row, c)
                    .map(|n| u64::try_from(n).unwrap_or(0))
                    .map_err(query_error("holdout_units"))
            };
            let entry = out.arms.entry(group).or_default();
            entry.units = count("units")?;
            entry.interactions = count("interactions")?;
        }
        for &metric in q.metrics {
            let (event, trial) = metric_sql(metric)?;
            let settled = settled_before(q.settle, metric, q.started_at, until);
            let sql = format!(
                "SELECT unit, grp, CAST(SUM(ev) AS BIGINT) AS events, \
                 CAST(SUM(tr) AS BIGINT) AS trials \
                 FROM (SELECT i.unit AS unit, {GROUP} AS grp, {event} AS ev, {trial} AS tr \
                       FROM interactions i LEFT JOIN outcomes o ON o.interaction_id = i.id \
                       WHERE i.router = $1 AND i.unit IS NOT NULL \
                         AND i.created_at >= $3 AND i.created_at < $4 \
                       GROUP BY i.id, i.unit, i.arm) per_interaction \
                 GROUP BY unit, grp HAVING SUM(tr) > 0"
            );
            let rows = sqlx::query(&sql)
                .bind(q.router)
                .bind(arm)
                .bind(q.started_at)
                .bind(settled)
                .fetch_all(&self.pool)
                .await
                .map_err(query_error("holdout_units"))?;
            let per_unit = rows
                .iter()
                .map(|row| {
                    Ok((
                        row.try_get("grp")?,
                        row.try_get("events")?,
                        row.try_get("trials")?,
                    ))
                })
                .collect::<Result<Vec<(String, i64, i64)>, sqlx::Error>>()
                .map_err(query_error("holdout_units"))?;
            insert_moments(&mut out, metric, per_unit);
            let recent = sqlx::query(
                "SELECT COUNT(*) AS n FROM interactions WHERE router = $1 \
                 AND unit IS NOT NULL AND created_at >= $2 AND created_at < $3",
            )
            .bind(q.router)
            .bind(settled)
            .bind(until)
            .fetch_one(&self.pool)
            .await
            .map_err(query_error("holdout_units"))?;
            let n = cast_i64(&recent, "n").map_err(query_error("holdout_units"))?;
            out.unsettled
                .insert(metric.as_str().to_owned(), u64::try_from(n).unwrap_or(0));
        }
        Ok(out)
    }

    /// Per (unit, arm, segments) events and trials of `metric` for an experiment's interactions
    /// from its start until `until`.
    async fn segment_outcomes(
        &self,
        q: &UnitsQuery<'_>,
        metric: Metric,
        until: i64,
    ) -> Result<Vec<(UnitOutcome, String)>> {
        let (event, trial) = metric_sql(metric)?;
        let sql = format!(
            "SELECT unit, arm, segments, CAST(SUM(ev) AS BIGINT) AS events, \
             CAST(SUM(tr) AS BIGINT) AS trials \
             FROM (SELECT i.unit AS unit, i.arm AS arm, i.segments AS segments, {event} AS ev, \
                   {trial} AS tr \
                   FROM interactions i LEFT JOIN outcomes o ON o.interaction_id = i.id \
                   WHERE i.router = $1 AND i.unit IS NOT NULL AND i.experiment = $2 \
                     AND i.created_at >= $3 AND i.created_at < $4 \
                   GROUP BY i.id, i.unit, i.arm, i.segments) per_interaction \
             GROUP BY unit, arm, segments HAVING SUM(tr) > 0"
        );
        let rows = sqlx::query(&sql)
            .bind(q.router)
            .bind(q.experiment)
            .bind(q.started_at)
            .bind(until)
            .fetch_all(&self.pool)
            .await
            .map_err(query_error("experiment_units"))?;
        rows.iter()
            .map(|row| {
                Ok((
                    UnitOutcome {
                        unit: row.try_get("unit")?,
                        arm: row.try_get("arm")?,
                        events: row.try_get("events")?,
                        trials: row.try_get("trials")?,
                    },
                    row.try_get("segments")?,
                ))
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(query_error("experiment_units"))
    }

    /// CUPED statistics of an experiment (Deng et al. 2013): per unit, `y` = the metric's rate
    /// over the unit's enrolled interactions since the start, `x` = the covariate's rate over
    /// the unit's interactions on the same Router in the pre-period before it.
    pub async fn cuped(&self, q: &CupedQuery<'_>) -> Result<CupedData> {
        let period = self
            .unit_outcomes(&UnitQuery {
                router: q.router,
                experiment: Some(q.experiment),
                metric: q.metric,
                from: q.started_at,
                until: q.now.max(q.started_at),
            })
            .await?;
        let preperiod = i64::try_from(q.preperiod.as_secs()).unwrap_or(i64::MAX);
        let pre = self
            .unit_outcomes(&UnitQuery {
                router: q.router,
                experiment: None,
                metric: q.covariate,
                from: q.started_at.saturating_sub(preperiod),
                until: q.started_at,
            })
            .await?;
        Ok(CupedData {
            metric: q.metric,
            covariate: q.covariate,
            arms: cuped_arms(&period, &pre),
        })
    }

    /// Deletes interactions created before `before` (Unix seconds) and their outcomes; returns
    /// the interactions deleted. Tokens of deleted interactions must have expired: pass a time
    /// older than the token lifetime, or a replay of such a token would count again.
    pub async fn prune(&self, before: i64) -> Result<u64> {
        let mut tx = self.pool.begin().await.map_err(query_error("prune"))?;
        sqlx::query(
            "DELETE FROM outcomes WHERE interaction_id IN \
             (SELECT id FROM interactions WHERE created_at < $1 AND expires_at < $1)",
        )
        .bind(before)
        .execute(&mut *tx)
        .await
        .map_err(query_error("prune"))?;
        let deleted =
            sqlx::query("DELETE FROM interactions WHERE created_at < $1 AND expires_at < $1")
                .bind(before)
                .execute(&mut *tx)
                .await
                .map_err(query_error("prune"))?
                .rows_affected();
        tx.commit().await.map_err(query_error("prune"))?;
        Ok(deleted)
    }
}

/// A bound parameter of a query assembled at run time.
enum Arg {
    Int(i64),
    Text(String),
    Float(f64),
}

/// Reads an integer column that SQLite may type as integer and PostgreSQL as int4 or int8.
fn cast_i64(row: &AnyRow, column: &str) -> Result<i64, sqlx::Error> {
    row.try_get::<i64, _>(column)
        .or_else(|_| row.try_get::<i32, _>(column).map(i64::from))
}

/// Per-arm CUPED moments from per-unit rates: `period` rows carry each unit's arm; `pre` rows its
/// pre-period covariate. A unit enrolled in several arms (an assignment change) is counted in
/// each; units without pre-period data get the mean covariate of those with it.
pub fn cuped_arms(period: &[UnitOutcome], pre: &[UnitOutcome]) -> BTreeMap<String, CupedArm> {
    let rate = |u: &UnitOutcome| u.events as f64 / u.trials as f64;
    let covariates: HashMap<&str, f64> = pre.iter().map(|u| (u.unit.as_str(), rate(u))).collect();
    let with: Vec<f64> = period
        .iter()
        .filter_map(|u| covariates.get(u.unit.as_str()).copied())
        .collect();
    let fill = if with.is_empty() {
        0.0
    } else {
        with.iter().sum::<f64>() / with.len() as f64
    };
    let mut arms: BTreeMap<String, (Vec<(f64, f64)>, u64)> = BTreeMap::new();
    for u in period {
        let entry = arms.entry(u.arm.clone()).or_default();
        let x = match covariates.get(u.unit.as_str()) {
            Some(x) => {
                entry.1 += 1;
                *x
            }
            None => fill,
        };
        entry.0.push((rate(u), x));
    }
    arms.into_iter()
        .map(|(arm, (units, with))| {
            (
                arm,
                CupedArm {
                    moments: CupedMoments::from_units(units),
                    units_with_covariate: with,
                },
            )
        })
        .collect()
}

/// Per attribute, value and arm: the units and the metric's per-unit moments. An attribute's
/// [`MAX_SEGMENT_VALUES`] values with the most units are reported on their own, the rest (and
/// interactions without the attribute) as [`OTHER_SEGMENT`]; a unit's interactions with one value
/// are one sample of that value.
pub fn segment_arms(
    rows: &[(UnitOutcome, String)],
    attributes: &[String],
    metric: Metric,
) -> BTreeMap<String, BTreeMap<String, BTreeMap<String, ArmUnits>>> {
    let mut out = BTreeMap::new();
    for attribute in attributes {
        let value_of = |segments: &str| {
            segment_value(segments, attribute)
                .unwrap_or(OTHER_SEGMENT)
                .to_owned()
        };
        // Units per value, to keep the most common values.
        let mut units: HashMap<String, std::collections::HashSet<&str>> = HashMap::new();
        for (u, segments) in rows {
            units
                .entry(value_of(segments))
                .or_default()
                .insert(u.unit.as_str());
        }
        let mut ranked: Vec<(&String, usize)> = units.iter().map(|(v, s)| (v, s.len())).collect();
        ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        let kept: std::collections::HashSet<&str> = ranked
            .iter()
            .filter(|(v, _)| v.as_str() != OTHER_SEGMENT)
            .take(MAX_SEGMENT_VALUES)
            .map(|(v, _)| v.as_str())
            .collect();
        // (value, arm, unit) -> (events, trials)
        let mut per_unit: BTreeMap<(String, String, &str), (f64, f64)> = BTreeMap::new();
        for (u, segments) in rows {
            let value = value_of(segments);
            let value = if kept.contains(value.as_str()) {
                value
            } else {
                OTHER_SEGMENT.to_owned()
            };
            let e = per_unit
                .entry((value, u.arm.clone(), u.unit.as_str()))
                .or_default();
            e.0 += u.events as f64;
            e.1 += u.trials as f64;
        }
        let mut grouped: BTreeMap<(String, String), Vec<(f64, f64)>> = BTreeMap::new();
        for ((value, arm, _), pair) in per_unit {
            grouped.entry((value, arm)).or_default().push(pair);
        }
        let by_value: &mut BTreeMap<String, BTreeMap<String, ArmUnits>> =
            out.entry(attribute.clone()).or_default();
        for ((value, arm), pairs) in grouped {
            let moments = RatioMoments::from_units(pairs);
            by_value.entry(value).or_default().insert(
                arm,
                ArmUnits {
                    units: moments.units,
                    interactions: moments.denominator as u64,
                    metrics: [(metric.as_str().to_owned(), moments)].into(),
                },
            );
        }
    }
    out
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("postgres://sb:s3cret@db.svc:5432/switchboard"),
            "postgres://sb:***@db.svc:5432/switchboard"
        );
        assert_eq!(redact("postgres://sb@db/x"), "postgres://sb@db/x");
        assert_eq!(redact("sqlite://.cache/o.db"), "sqlite://.cache/o.db");
    }

    #[test]
    fn segments_keep_the_common_values_and_merge_the_rest() {
        let row = |unit: &str, arm: &str, events, trials, segments: &str| {
            (
                UnitOutcome {
                    unit: unit.into(),
                    arm: arm.into(),
                    events,
                    trials,
                },
                segments.to_owned(),
            )
        };
        let mut rows = vec![
            // u1 asks on chat twice (two segment strings: same channel, other plans).
            row("u1", "control", 1, 2, "channel=chat\nplan=pro"),
            row("u1", "control", 0, 1, "channel=chat\nplan=free"),
            row("u2", "treatment", 0, 3, "channel=email"),
            row("u3", "treatment", 1, 1, ""),
        ];
        // Eleven rare channels with one unit each: one of them is folded into (other).
        for i in 0..11 {
            rows.push(row(
                &format!("r{i}"),
                "control",
                0,
                1,
                &format!("channel=rare{i:02}"),
            ));
        }
        let out = segment_arms(&rows, &["channel".to_owned()], Metric::EscalationRate);
        let channel = &out["channel"];
        let chat = channel["chat"]["control"].metrics["escalationRate"];
        assert_eq!(
            (chat.units, chat.numerator, chat.denominator),
            (1, 1.0, 3.0)
        );
        assert_eq!(channel["email"]["treatment"].units, 1);
        assert_eq!(
            channel.len(),
            11,
            "10 values and (other): {:?}",
            channel.keys()
        );
        let other = &channel[OTHER_SEGMENT];
        assert_eq!(other["treatment"].units, 1, "u3 had no channel");
        assert_eq!(other["control"].units, 3, "rare08, rare09, rare10 by rank");
        assert_eq!(segment_value("channel=chat\nplan=pro", "plan"), Some("pro"));
    }

    #[test]
    fn units_without_a_pre_period_get_the_mean_covariate() {
        let u = |unit: &str, arm: &str, events, trials| UnitOutcome {
            unit: unit.into(),
            arm: arm.into(),
            events,
            trials,
        };
        let period = [
            u("a", "control", 1, 2),
            u("b", "control", 0, 1),
            u("c", "treatment", 1, 1),
        ];
        let pre = [u("a", "", 1, 4), u("c", "", 3, 4)];
        let arms = cuped_arms(&period, &pre);
        let control = &arms["control"];
        assert_eq!(control.units_with_covariate, 1);
        assert_eq!(control.moments.units, 2);
        // a: (0.5, 0.25); b: (0.0, mean(0.25, 0.75) = 0.5).
        assert!((control.moments.sum_y - 0.5).abs() < 1e-12);
        assert!((control.moments.sum_x - 0.75).abs() < 1e-12);
        assert!((arms["treatment"].moments.sum_xy - 0.75).abs() < 1e-12);
    }
}
