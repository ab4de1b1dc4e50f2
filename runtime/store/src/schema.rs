//! The schema, as numbered migrations written once for both databases.
//!
//! Only types both SQLite and PostgreSQL read the same way through sqlx's Any driver are used:
//! `TEXT`, `BIGINT` (booleans are 0/1, times are Unix seconds) and `DOUBLE PRECISION`. A
//! migration is applied in one transaction together with its row in `switchboard_migrations`, so
//! replicas that start together apply it once (the loser of the race sees the primary key taken
//! and re-reads the version).

/// `(version, statements)`, in order. Never edit a published migration: add the next one.
pub const MIGRATIONS: &[(i64, &[&str])] = &[
    (
        1,
        &[
            // One row per answered interaction: what a helpdesk outcome is joined to.
            "CREATE TABLE interactions (
            id TEXT PRIMARY KEY,
            created_at BIGINT NOT NULL,
            expires_at BIGINT NOT NULL,
            router TEXT NOT NULL,
            unit TEXT,
            experiment TEXT NOT NULL,
            arm TEXT NOT NULL,
            lineage TEXT NOT NULL,
            adapter_version TEXT NOT NULL,
            adapter_role TEXT NOT NULL,
            model TEXT NOT NULL,
            kb_generation TEXT NOT NULL,
            config_revision TEXT NOT NULL,
            route_reason TEXT NOT NULL,
            query TEXT NOT NULL,
            rewritten_query TEXT,
            answer TEXT NOT NULL,
            refused BIGINT NOT NULL,
            invalid_citation BIGINT NOT NULL,
            retrieval_failed BIGINT NOT NULL,
            best_score DOUBLE PRECISION,
            cited_documents TEXT NOT NULL,
            retrieved_documents TEXT NOT NULL
        )",
            "CREATE INDEX interactions_created ON interactions (created_at)",
            "CREATE INDEX interactions_experiment ON interactions (experiment, created_at)",
            "CREATE INDEX interactions_unit ON interactions (router, unit, created_at)",
            // One row per (interaction, outcome kind): the primary key is the replay guard, shared by
            // every replica and kept across restarts.
            "CREATE TABLE outcomes (
            interaction_id TEXT NOT NULL,
            kind TEXT NOT NULL,
            value BIGINT,
            recorded_at BIGINT NOT NULL,
            PRIMARY KEY (interaction_id, kind)
        )",
            "CREATE INDEX outcomes_recorded ON outcomes (recorded_at)",
        ],
    ),
    (
        2,
        &[
            // The request attributes an enrolled interaction's Experiment breaks its results down
            // by (`spec.segments`), as `name=value` lines.
            "ALTER TABLE interactions ADD COLUMN segments TEXT NOT NULL DEFAULT ''",
        ],
    ),
    (
        3,
        &[
            // The routing decision's difficulty, threshold, propensity and features (JSON; empty
            // for interactions answered before this column): what `router fit` learns from.
            "ALTER TABLE interactions ADD COLUMN routing TEXT NOT NULL DEFAULT ''",
        ],
    ),
];

/// Bookkeeping table of applied migrations.
pub const CREATE_MIGRATIONS_TABLE: &str = "CREATE TABLE IF NOT EXISTS switchboard_migrations (
    version BIGINT PRIMARY KEY,
    applied_at BIGINT NOT NULL
)";

/// The newest schema version this build knows.
pub fn latest() -> i64 {
    MIGRATIONS.last().map_or(0, |m| m.0)
}
