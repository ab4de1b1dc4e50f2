//! The training-data export: label, filter, cluster, deduplicate, write.
//!
//! ```text
//! rows (oldest first) -> labels -> anomaly filters -> embed unique queries -> leader clusters
//!   -> per (cluster, label): keep the best `keep_per_cluster`, drop the rest as near_duplicate
//!   -> records (oldest first) + summary
//! ```
//!
//! Dedup keeps a representative per cluster **and label**, so one question answered well and
//! answered badly keeps one of each: the trainer pairs them for DPO (same `cluster.id`, one
//! `positive` and one `negative`). Which representative: for positives the best rated (CSAT 5
//! before 4 before none), for negatives the one with most negative signals, then the newest (the
//! newest knowledge base and adapter).

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use switchboard_index::Embedder;
use switchboard_store::InteractionWithOutcomes;

use crate::cluster::{DEDUP_THRESHOLD, leader_clusters, normalize_text};
use crate::filter::{self, FilterSettings, Rule};
use crate::label::{Labels, Overall, label};
use crate::record::{ClusterInfo, ExportRecord, FORMAT};
use crate::{FlywheelError, embed_all};

/// How an export is made.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExportSettings {
    /// Interactions younger than this (seconds) are not labelled positive.
    pub settle_secs: i64,
    /// Anomaly filter bounds.
    pub filters: FilterSettings,
    /// Cosine at or above which two queries are one question.
    pub dedup_threshold: f32,
    /// Records kept per (cluster, label); `0` keeps every record (clusters are still reported).
    pub keep_per_cluster: usize,
}

impl Default for ExportSettings {
    fn default() -> Self {
        Self {
            settle_secs: 72 * 3600,
            filters: FilterSettings::default(),
            dedup_threshold: DEDUP_THRESHOLD,
            keep_per_cluster: 1,
        }
    }
}

/// Query clusters in a summary.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterSummary {
    /// Distinct query texts (after normalisation) embedded.
    pub unique_queries: u64,
    /// Clusters among the records that passed the filters.
    pub count: u64,
    /// Clusters with more than one interaction.
    pub with_duplicates: u64,
    /// Interactions in the largest cluster.
    pub largest: u64,
    /// Clusters written with both a positive and a negative record: DPO pairs.
    pub with_positive_and_negative: u64,
}

/// Seconds spent per step.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Timings {
    /// Reading the store.
    pub read_seconds: f64,
    /// Embedding the queries.
    pub embed_seconds: f64,
    /// Clustering.
    pub cluster_seconds: f64,
    /// Everything but writing the files (the encoder's loading included on the command line).
    pub total_seconds: f64,
}

/// What an export did: printed, and written next to the records.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    /// [`FORMAT`] of the records.
    pub format: String,
    /// When (Unix seconds).
    pub exported_at: i64,
    /// The Router filter, if any.
    pub router: Option<String>,
    /// Window start (Unix seconds, inclusive).
    pub from: i64,
    /// Window end (Unix seconds, exclusive).
    pub until: i64,
    /// The settings used.
    pub settings: ExportSettings,
    /// The encoder (`model_id`), or `exact-text` without one.
    pub encoder: String,
    /// Interactions read.
    pub read: u64,
    /// Records written.
    pub written: u64,
    /// Records written per overall label (`positive`, `negative`, `unknown`).
    pub labels: BTreeMap<String, u64>,
    /// Records written as `unknown` only because they had not settled (they would be positive).
    pub unsettled: u64,
    /// Interactions dropped, per rule (every rule listed, zeros included).
    pub dropped: BTreeMap<String, u64>,
    /// Query clusters.
    pub clusters: ClusterSummary,
    /// Time per step.
    pub timings: Timings,
    /// The curriculum sample written beside the export, when one was asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub curriculum: Option<crate::curriculum::CurriculumReport>,
}

/// Records and their summary.
#[derive(Clone, Debug, PartialEq)]
pub struct Export {
    /// Records, oldest first.
    pub records: Vec<ExportRecord>,
    /// The summary (`read_seconds`, `router`, `from`, `until` are the caller's to fill).
    pub summary: Summary,
}

/// Higher is a better representative of its (cluster, label) group.
fn preference(row: &InteractionWithOutcomes, labels: &Labels) -> (i64, i64) {
    let evidence = match labels.overall {
        Overall::Positive => labels.csat.unwrap_or(0),
        Overall::Negative => {
            i64::from(labels.escalated)
                + i64::from(labels.reopened)
                + i64::from(labels.csat.is_some_and(|c| c <= 2))
        }
        Overall::Unknown => 0,
    };
    (evidence, row.interaction.created_at)
}

/// Builds the export of `rows` (oldest first) at `now`. With an `embedder` queries are
/// clustered by embedding (unique normalised texts are embedded once); without one only exact
/// copies (after normalisation) share a cluster.
pub fn build(
    rows: &[InteractionWithOutcomes],
    now: i64,
    embedder: Option<&dyn Embedder>,
    settings: &ExportSettings,
) -> Result<Export, FlywheelError> {
    let started = Instant::now();
    let labels: Vec<Labels> = rows
        .iter()
        .map(|r| label(r, now, settings.settle_secs))
        .collect();
    let verdicts = filter::apply(rows, &labels, &settings.filters);
    let mut dropped: BTreeMap<String, u64> = Rule::ALL
        .iter()
        .map(|r| (r.as_str().to_owned(), 0))
        .collect();
    let mut kept = Vec::new();
    for (n, verdict) in verdicts.iter().enumerate() {
        match verdict {
            Some(rule) => *dropped.entry(rule.as_str().to_owned()).or_default() += 1,
            None => kept.push(n),
        }
    }

    // Unique texts, in order of first appearance, with how many kept rows share each.
    let mut text_ids: HashMap<String, usize> = HashMap::new();
    let mut texts: Vec<String> = Vec::new();
    let mut weights: Vec<usize> = Vec::new();
    let mut row_text = Vec::with_capacity(kept.len());
    for &n in &kept {
        let key = normalize_text(&rows[n].interaction.query);
        let id = *text_ids.entry(key).or_insert_with(|| {
            texts.push(rows[n].interaction.query.clone());
            weights.push(0);
            texts.len() - 1
        });
        weights[id] += 1;
        row_text.push(id);
    }
    let embed_started = Instant::now();
    let (text_cluster, encoder) = match embedder {
        Some(embedder) => {
            let vectors = embed_all(embedder, &texts)?;
            let embed_seconds = embed_started.elapsed().as_secs_f64();
            let cluster_started = Instant::now();
            let clusters = leader_clusters(&vectors, Some(&weights), settings.dedup_threshold);
            (
                (
                    clusters.assignment,
                    embed_seconds,
                    cluster_started.elapsed().as_secs_f64(),
                ),
                embedder.model_id(),
            )
        }
        None => (
            ((0..texts.len()).collect(), 0.0, 0.0),
            "exact-text".to_owned(),
        ),
    };
    let (text_cluster, embed_seconds, cluster_seconds) = text_cluster;

    // Group kept rows by (cluster, label); pick representatives.
    let mut groups: BTreeMap<(usize, Overall), Vec<usize>> = BTreeMap::new();
    let mut cluster_sizes: HashMap<usize, u64> = HashMap::new();
    for (k, &n) in kept.iter().enumerate() {
        let cluster = text_cluster[row_text[k]];
        groups
            .entry((cluster, labels[n].overall))
            .or_default()
            .push(n);
        *cluster_sizes.entry(cluster).or_default() += 1;
    }
    let mut chosen: Vec<(usize, usize, u64)> = Vec::new(); // (row, cluster, group size)
    for ((cluster, _), mut members) in groups {
        let size = members.len() as u64;
        members.sort_by(|&a, &b| {
            preference(&rows[b], &labels[b])
                .cmp(&preference(&rows[a], &labels[a]))
                .then(a.cmp(&b))
        });
        let keep = if settings.keep_per_cluster == 0 {
            members.len()
        } else {
            settings.keep_per_cluster.min(members.len())
        };
        *dropped
            .entry(Rule::NearDuplicate.as_str().to_owned())
            .or_default() += (members.len() - keep) as u64;
        chosen.extend(members[..keep].iter().map(|&n| (n, cluster, size)));
    }
    chosen.sort_by_key(|&(n, _, _)| n);

    let mut label_counts: BTreeMap<String, u64> = Overall::ALL
        .iter()
        .map(|o| (o.as_str().to_owned(), 0))
        .collect();
    let mut unsettled = 0;
    let mut cluster_labels: HashMap<usize, (bool, bool)> = HashMap::new();
    let records: Vec<ExportRecord> = chosen
        .into_iter()
        .map(|(n, cluster, size)| {
            let l = labels[n].clone();
            *label_counts
                .entry(l.overall.as_str().to_owned())
                .or_default() += 1;
            if l.overall == Overall::Unknown && !l.settled && l.reason.starts_with("not settled") {
                unsettled += 1;
            }
            let seen = cluster_labels.entry(cluster).or_default();
            seen.0 |= l.overall == Overall::Positive;
            seen.1 |= l.overall == Overall::Negative;
            ExportRecord::new(
                &rows[n],
                l,
                ClusterInfo {
                    id: cluster as u64,
                    size: cluster_sizes.get(&cluster).copied().unwrap_or(1),
                    label_size: size,
                },
            )
        })
        .collect();
    let clusters = ClusterSummary {
        unique_queries: texts.len() as u64,
        count: cluster_sizes.len() as u64,
        with_duplicates: cluster_sizes.values().filter(|s| **s > 1).count() as u64,
        largest: cluster_sizes.values().copied().max().unwrap_or(0),
        with_positive_and_negative: cluster_labels.values().filter(|(p, n)| *p && *n).count()
            as u64,
    };
    Ok(Export {
        summary: Summary {
            format: FORMAT.to_owned(),
            exported_at: now,
            router: None,
            from: 0,
            until: 0,
            settings: settings.clone(),
            encoder,
            read: rows.len() as u64,
            written: records.len() as u64,
            labels: label_counts,
            unsettled,
            dropped,
            clusters,
            timings: Timings {
                read_seconds: 0.0,
                embed_seconds,
                cluster_seconds,
                total_seconds: started.elapsed().as_secs_f64(),
            },
            curriculum: None,
        },
        records,
    })
}

/// Writes `records` as JSONL to `out`, atomically.
pub fn write_records(out: &Path, records: &[ExportRecord]) -> Result<(), FlywheelError> {
    write_atomically(out, |w| {
        for record in records {
            serde_json::to_writer(&mut *w, record)?;
            w.write_all(b"\n")?;
        }
        Ok(())
    })
}

/// Where the curriculum sample of an export written to `out` goes: `x.jsonl` ->
/// `x.curriculum.jsonl`.
pub fn curriculum_path(out: &Path) -> PathBuf {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = name.strip_suffix(".jsonl").unwrap_or(&name);
    out.with_file_name(format!("{stem}.curriculum.jsonl"))
}

/// Where the summary of an export written to `out` goes: `x.jsonl` -> `x.summary.json`.
pub fn summary_path(out: &Path) -> PathBuf {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = name.strip_suffix(".jsonl").unwrap_or(&name);
    out.with_file_name(format!("{stem}.summary.json"))
}

/// Writes `bytes` to `path` through a temporary file in the same folder renamed into place: a
/// reader never sees a half-written file, and a failure leaves the previous file as it was.
fn write_atomically(
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<(), FlywheelError> {
    let failed = |source| FlywheelError::Write {
        path: path.display().to_string(),
        source,
    };
    if let Some(parent) = path.parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent).map_err(failed)?;
    }
    let tmp = path.with_file_name(format!(
        ".{}.tmp-{}",
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        std::process::id()
    ));
    let result = (|| {
        let file = std::fs::File::create(&tmp)?;
        let mut out = std::io::BufWriter::new(file);
        write(&mut out)?;
        out.flush()?;
        out.get_ref().sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(failed(e));
    }
    Ok(())
}

/// Writes the records as JSON Lines (one record per line, UTF-8) and the summary (pretty JSON)
/// to [`summary_path`]; returns that path.
pub fn write_jsonl(out: &Path, export: &Export) -> Result<PathBuf, FlywheelError> {
    write_records(out, &export.records)?;
    let summary = summary_path(out);
    write_atomically(&summary, |w| {
        serde_json::to_writer_pretty(&mut *w, &export.summary)?;
        w.write_all(b"\n")
    })?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use switchboard_store::{Interaction, Outcomes};

    use super::*;

    const NOW: i64 = 1_800_000_000;

    /// Embeds by keyword: texts mentioning the same first keyword get the same direction.
    #[derive(Debug)]
    struct Keywords;

    impl Embedder for Keywords {
        fn dim(&self) -> usize {
            4
        }
        fn model_id(&self) -> String {
            "keywords".into()
        }
        fn embed(&self, texts: &[String]) -> switchboard_index::Result<Vec<Vec<f32>>> {
            Ok(texts
                .iter()
                .map(|t| {
                    let t = t.to_lowercase();
                    let mut v = vec![0.01; 4];
                    for (k, word) in ["password", "refund", "invoice", "okta"].iter().enumerate() {
                        if t.contains(word) {
                            v[k] = 1.0;
                            break;
                        }
                    }
                    v
                })
                .collect())
        }
    }

    fn row(id: &str, age_h: i64, query: &str, o: Outcomes) -> InteractionWithOutcomes {
        InteractionWithOutcomes {
            interaction: Interaction {
                id: id.into(),
                created_at: NOW - age_h * 3600,
                query: query.into(),
                answer: format!("Here is how: open Settings and follow the steps [1]. ({id})"),
                cited_documents: vec!["faq/a.md".into()],
                ..Interaction::default()
            },
            outcomes: o,
        }
    }

    fn good(csat: Option<i64>) -> Outcomes {
        Outcomes {
            resolved: true,
            csat,
            ..Outcomes::default()
        }
    }

    fn bad() -> Outcomes {
        Outcomes {
            escalated: true,
            ..Outcomes::default()
        }
    }

    #[test]
    fn one_record_per_cluster_and_label_keeps_dpo_pairs() {
        let rows = vec![
            row("p1", 200, "How do I reset my password?", good(None)),
            row("p2", 199, "I forgot my password", good(Some(5))),
            row("p3", 198, "password reset link broken", bad()),
            row("p4", 197, "password again", bad()),
            row("r1", 196, "Can I get a refund?", good(Some(4))),
            row("u1", 195, "Do you ship to Iceland?", Outcomes::default()),
        ];
        let export = build(&rows, NOW, Some(&Keywords), &ExportSettings::default()).unwrap();
        let ids: Vec<&str> = export.records.iter().map(|r| r.id.as_str()).collect();
        // p2 is the best-rated positive; of the two escalations the newer one stays.
        assert_eq!(ids, ["p2", "p4", "r1", "u1"]);
        assert_eq!(export.records[0].cluster.id, export.records[1].cluster.id);
        assert_eq!(export.records[0].cluster.size, 4);
        assert_eq!(export.records[0].cluster.label_size, 2);
        let s = &export.summary;
        assert_eq!(s.dropped["near_duplicate"], 2);
        assert_eq!(s.clusters.count, 3);
        assert_eq!(s.clusters.with_positive_and_negative, 1);
        assert_eq!(s.clusters.largest, 4);
        assert_eq!(
            (
                s.labels["positive"],
                s.labels["negative"],
                s.labels["unknown"]
            ),
            (2, 1, 1)
        );
        assert_eq!(s.encoder, "keywords");
        // keep_per_cluster 0 keeps everything, clusters still reported.
        let all = build(
            &rows,
            NOW,
            Some(&Keywords),
            &ExportSettings {
                keep_per_cluster: 0,
                ..ExportSettings::default()
            },
        )
        .unwrap();
        assert_eq!(all.records.len(), 6);
        assert_eq!(all.summary.dropped["near_duplicate"], 0);
        // Without an encoder only exact copies share a cluster.
        let exact = build(&rows, NOW, None, &ExportSettings::default()).unwrap();
        assert_eq!(exact.records.len(), 6);
        assert_eq!(exact.summary.encoder, "exact-text");
    }

    #[test]
    fn young_positives_are_written_as_unknown_and_counted() {
        let rows = vec![
            row("old", 100, "reset password", good(Some(5))),
            row("young", 2, "refund please", good(Some(5))),
        ];
        let export = build(&rows, NOW, Some(&Keywords), &ExportSettings::default()).unwrap();
        let young = &export.records[1];
        assert_eq!(young.labels.overall, Overall::Unknown);
        assert!(!young.labels.settled);
        assert_eq!(export.summary.unsettled, 1);
        assert_eq!(export.summary.labels["positive"], 1);
    }

    #[test]
    fn a_bad_encoder_is_an_error_not_a_partial_file() {
        #[derive(Debug)]
        struct Short;
        impl Embedder for Short {
            fn dim(&self) -> usize {
                4
            }
            fn model_id(&self) -> String {
                "short".into()
            }
            fn embed(&self, _: &[String]) -> switchboard_index::Result<Vec<Vec<f32>>> {
                Ok(vec![vec![1.0; 4]])
            }
        }
        let rows = vec![
            row("a", 100, "reset password", good(None)),
            row("b", 100, "refund", good(None)),
        ];
        let err = build(&rows, NOW, Some(&Short), &ExportSettings::default()).unwrap_err();
        assert!(err.to_string().contains("returned 1 vectors"), "{err}");
    }

    #[test]
    fn files_are_written_whole_with_the_summary_beside_them() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("sub/flywheel.jsonl");
        let rows = vec![row("a", 100, "reset password", good(None))];
        let export = build(&rows, NOW, None, &ExportSettings::default()).unwrap();
        let summary = write_jsonl(&out, &export).unwrap();
        assert_eq!(summary, dir.path().join("sub/flywheel.summary.json"));
        let text = std::fs::read_to_string(&out).unwrap();
        assert_eq!(text.lines().count(), 1);
        let back: ExportRecord = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(back, export.records[0]);
        assert_eq!(back.format, FORMAT);
        let s: Summary = serde_json::from_slice(&std::fs::read(&summary).unwrap()).unwrap();
        assert_eq!(s.written, 1);
        assert_eq!(
            summary_path(Path::new("x.json")),
            Path::new("x.json.summary.json")
        );
        // No temporary files left behind.
        assert_eq!(
            std::fs::read_dir(dir.path().join("sub")).unwrap().count(),
            2
        );
    }
}
