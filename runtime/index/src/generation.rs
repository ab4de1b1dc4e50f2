//! Index generations: immutable directories built off to the side and published by an atomic
//! pointer switch.
//!
//! ```text
//! <root>/
//!   CURRENT.json          {"current": "gen-000007", "history": ["gen-000006", ...]}
//!   generations/gen-000007/   complete generations only (see `store` for the layout)
//!   tmp/                  builds in progress; renamed into generations/ when complete
//! ```

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::bm25::{self, Bm25Index};
use crate::chunk::{Chunk, SectionRecord, chunk_document};
use crate::consistency::{self, ConsistencyOptions, ConsistencyReport, ConsistencySummary};
use crate::embed::{Embedder, embed_checked};
use crate::error::{Error, Result};
use crate::ingest::{self, SourceReport, hex};
use crate::spec::{ChunkingSpec, FreshnessClass, IndexSpec};
use crate::store;

/// Version of the on-disk layout; loading refuses other versions.
pub const LAYOUT_VERSION: u32 = 1;

const POINTER: &str = "CURRENT.json";
const GENERATIONS: &str = "generations";
const TMP: &str = "tmp";
const HISTORY_LIMIT: usize = 16;

/// The embedding model a generation was built with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmbeddingInfo {
    /// [`Embedder::model_id`].
    pub model_id: String,
    /// Vector dimension.
    pub dim: usize,
}

/// `manifest.json`: what a generation contains and how it was built.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`LAYOUT_VERSION`] at build time.
    pub layout_version: u32,
    /// Generation id (`gen-000007`).
    pub generation: String,
    /// Build start, Unix seconds.
    pub built_at: i64,
    /// Wall time of the build.
    pub build_millis: u64,
    /// Embedding model and dimension.
    pub embedding: EmbeddingInfo,
    /// Chunking used.
    pub chunking: ChunkingSpec,
    /// Freshness classes (half-lives) in force for this generation.
    pub freshness_classes: BTreeMap<String, FreshnessClass>,
    /// Per-source outcome, digests included.
    pub sources: Vec<SourceReport>,
    /// Documents indexed.
    pub documents: usize,
    /// Sections stored.
    pub sections: usize,
    /// Chunks indexed.
    pub chunks: usize,
    /// Contradiction candidates between chunks ([`consistency`]): the count and the best few.
    /// The full list is the generation's `contradictions.json`. Absent in generations built
    /// before the check existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistency: Option<ConsistencySummary>,
}

/// Contradiction candidates kept in a manifest (the count covers all).
pub const MANIFEST_CONTRADICTIONS: usize = 5;

impl Manifest {
    /// Bad files across all sources.
    pub fn source_errors(&self) -> usize {
        self.sources.iter().map(|s| s.errors.len()).sum()
    }
}

/// Knobs of a build that are not part of the spec.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Texts per `Embedder::embed` call.
    pub embed_batch: usize,
    /// Reuse chunks (unchanged source digests) and vectors (unchanged chunk text, same model)
    /// from the current generation. Off = rebuild everything.
    pub reuse: bool,
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            embed_batch: 64,
            reuse: true,
        }
    }
}

/// What a build did. The generation is complete on disk but not published.
#[derive(Debug, Clone)]
pub struct BuildReport {
    /// The new generation's manifest (sources, counts, digests).
    pub manifest: Manifest,
    /// Its directory.
    pub path: PathBuf,
    /// Generation the build reused from, if any.
    pub reused_from: Option<String>,
    /// Sources whose chunks came from the previous generation.
    pub sources_reused: usize,
    /// Chunks sent to the embedder.
    pub chunks_embedded: usize,
    /// Chunks whose vector was copied from the previous generation.
    pub vectors_reused: usize,
    /// Time reading and parsing sources.
    pub ingest_time: Duration,
    /// Time in the embedder.
    pub embed_time: Duration,
    /// Time writing tantivy, vectors and chunk store.
    pub write_time: Duration,
    /// Contradiction candidates between the generation's chunks (also in `contradictions.json`).
    pub consistency: ConsistencyReport,
    /// Time finding them.
    pub consistency_time: Duration,
}

impl BuildReport {
    /// Bad files across all sources.
    pub fn source_errors(&self) -> usize {
        self.manifest.source_errors()
    }
}

/// The directory holding generations and the pointer to the published one.
#[derive(Debug, Clone)]
pub struct Generations {
    root: PathBuf,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Pointer {
    current: Option<String>,
    /// Previously published generations, most recent first.
    history: Vec<String>,
}

/// A generation as listed by [`Generations::list`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GenerationInfo {
    /// Id.
    pub id: String,
    /// Its manifest.
    pub manifest: Manifest,
}

fn generation_seq(id: &str) -> Option<u64> {
    id.strip_prefix("gen-")?.parse().ok()
}

impl Generations {
    /// Opens (creating if needed) a store rooted at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        for dir in [root.join(GENERATIONS), root.join(TMP)] {
            std::fs::create_dir_all(&dir).map_err(Error::io("create", &dir))?;
        }
        Ok(Generations { root })
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Directory of generation `id`.
    pub fn path(&self, id: &str) -> PathBuf {
        self.root.join(GENERATIONS).join(id)
    }

    /// Complete generations (manifest present and readable), oldest first. Builds in progress
    /// live under `tmp/` and are never listed.
    pub fn list(&self) -> Result<Vec<GenerationInfo>> {
        let dir = self.root.join(GENERATIONS);
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(Error::io("list", &dir))? {
            let entry = entry.map_err(Error::io("list", &dir))?;
            let id = entry.file_name().to_string_lossy().into_owned();
            if generation_seq(&id).is_none() {
                continue;
            }
            if let Ok(manifest) = store::read_json::<Manifest>(&entry.path().join(store::MANIFEST))
            {
                out.push(GenerationInfo { id, manifest });
            }
        }
        out.sort_by_key(|g| generation_seq(&g.id));
        Ok(out)
    }

    fn pointer(&self) -> Result<Pointer> {
        let path = self.root.join(POINTER);
        if !path.exists() {
            return Ok(Pointer::default());
        }
        store::read_json(&path)
    }

    fn write_pointer(&self, pointer: &Pointer) -> Result<()> {
        let tmp = self.root.join(format!(".{POINTER}.{}", std::process::id()));
        store::write_json(&tmp, pointer)?;
        let path = self.root.join(POINTER);
        std::fs::rename(&tmp, &path).map_err(Error::io("rename", &path))?;
        store::sync_dir(&self.root)
    }

    /// The published generation, if any.
    pub fn current(&self) -> Result<Option<String>> {
        Ok(self.pointer()?.current)
    }

    /// Publishes `id`: the pointer file is replaced atomically (write + fsync + rename), so readers
    /// see either the old or the new generation. The generation must be complete and loadable.
    pub fn publish(&self, id: &str) -> Result<()> {
        Generation::load(self, id)?;
        let mut p = self.pointer()?;
        if p.current.as_deref() == Some(id) {
            return Ok(());
        }
        if let Some(prev) = p.current.take() {
            p.history.retain(|h| *h != prev);
            p.history.insert(0, prev);
        }
        p.history.retain(|h| h != id);
        p.history.truncate(HISTORY_LIMIT);
        p.current = Some(id.to_string());
        self.write_pointer(&p)?;
        tracing::info!(generation = id, "published index generation");
        Ok(())
    }

    /// Switches back to the generation published before the current one and returns its id.
    /// Repeated calls walk further back. Generations pruned since are skipped.
    pub fn switch_back(&self) -> Result<String> {
        let mut p = self.pointer()?;
        while !p.history.is_empty() {
            let prev = p.history.remove(0);
            if self.path(&prev).join(store::MANIFEST).exists() {
                Generation::load(self, &prev)?;
                p.current = Some(prev.clone());
                self.write_pointer(&p)?;
                tracing::info!(generation = %prev, "switched back to index generation");
                return Ok(prev);
            }
        }
        Err(Error::NothingPublished(
            "no previous generation to switch back to",
        ))
    }

    /// Deletes all but the `keep` newest generations, never deleting the current one or the
    /// switch-back target; also removes abandoned build directories older than an hour.
    /// Returns the deleted ids.
    pub fn prune(&self, keep: usize) -> Result<Vec<String>> {
        let p = self.pointer()?;
        let all = self.list()?;
        let protected: Vec<&str> = p
            .current
            .iter()
            .chain(p.history.first())
            .map(String::as_str)
            .collect();
        let mut deleted = Vec::new();
        let cut = all.len().saturating_sub(keep);
        for g in &all[..cut] {
            if protected.contains(&g.id.as_str()) {
                continue;
            }
            let path = self.path(&g.id);
            std::fs::remove_dir_all(&path).map_err(Error::io("remove", &path))?;
            deleted.push(g.id.clone());
        }
        let tmp = self.root.join(TMP);
        if let Ok(entries) = std::fs::read_dir(&tmp) {
            for e in entries.flatten() {
                let old = e
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age > Duration::from_secs(3600));
                if old {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        if !deleted.is_empty() {
            let mut p = p;
            p.history.retain(|h| !deleted.contains(h));
            self.write_pointer(&p)?;
        }
        Ok(deleted)
    }

    /// Loads the published generation.
    pub fn load_current(&self) -> Result<Generation> {
        let id = self
            .current()?
            .ok_or(Error::NothingPublished("no generation has been published"))?;
        Generation::load(self, &id)
    }

    /// The contradiction candidates of generation `id` (`contradictions.json`); `None` for a
    /// generation built before the check existed.
    pub fn consistency(&self, id: &str) -> Result<Option<ConsistencyReport>> {
        let path = self.path(id).join(consistency::REPORT_FILE);
        if !path.exists() {
            return Ok(None);
        }
        store::read_json(&path).map(Some)
    }

    fn next_id(&self) -> Result<String> {
        let dir = self.root.join(GENERATIONS);
        let mut max = 0;
        for entry in std::fs::read_dir(&dir)
            .map_err(Error::io("list", &dir))?
            .flatten()
        {
            if let Some(seq) = generation_seq(&entry.file_name().to_string_lossy()) {
                max = max.max(seq);
            }
        }
        Ok(format!("gen-{:06}", max + 1))
    }
}

/// A loaded generation: BM25 index, vectors, chunks and sections in memory.
#[derive(Debug)]
pub struct Generation {
    /// Id.
    pub id: String,
    /// Manifest.
    pub manifest: Manifest,
    pub(crate) bm25: Bm25Index,
    pub(crate) chunks: Vec<Chunk>,
    pub(crate) sections: Vec<SectionRecord>,
    pub(crate) section_index: HashMap<String, usize>,
    /// Row-major, L2-normalised, `chunks.len() * dim`.
    pub(crate) vectors: Vec<f32>,
}

impl Generation {
    /// Loads generation `id` of `store`, checking that its parts agree.
    pub fn load(store: &Generations, id: &str) -> Result<Self> {
        Self::load_dir(&store.path(id), id)
    }

    fn load_dir(dir: &Path, id: &str) -> Result<Self> {
        let corrupt = |message: String| Error::CorruptGeneration {
            generation: id.to_string(),
            message,
        };
        if !dir.join(store::MANIFEST).exists() {
            return Err(Error::GenerationNotFound(id.to_string()));
        }
        let manifest: Manifest = store::read_json(&dir.join(store::MANIFEST))?;
        if manifest.layout_version != LAYOUT_VERSION {
            return Err(corrupt(format!(
                "layout version {} (expected {LAYOUT_VERSION})",
                manifest.layout_version
            )));
        }
        let chunks: Vec<Chunk> = store::read_jsonl(&dir.join(store::CHUNKS))?;
        let sections: Vec<SectionRecord> = store::read_jsonl(&dir.join(store::SECTIONS))?;
        let (dim, rows, vectors) = store::read_vectors(&dir.join(store::VECTORS))?;
        let ids_path = dir.join(store::VECTOR_IDS);
        let ids = std::fs::read_to_string(&ids_path).map_err(Error::io("read", &ids_path))?;
        if dim != manifest.embedding.dim || rows != chunks.len() || chunks.len() != manifest.chunks
        {
            return Err(corrupt(format!(
                "{rows} vectors of dim {dim}, {} chunks; manifest says {} chunks of dim {}",
                chunks.len(),
                manifest.chunks,
                manifest.embedding.dim
            )));
        }
        if !ids.lines().eq(chunks.iter().map(|c| c.chunk_id.as_str())) {
            return Err(corrupt("vectors.ids does not match chunks.jsonl".into()));
        }
        let bm25 = Bm25Index::open(&dir.join(store::TANTIVY_DIR))?;
        if bm25.num_docs() != chunks.len() as u64 {
            return Err(corrupt(format!(
                "tantivy has {} docs for {} chunks",
                bm25.num_docs(),
                chunks.len()
            )));
        }
        let section_index = sections
            .iter()
            .enumerate()
            .map(|(i, s)| (s.section_id.clone(), i))
            .collect();
        Ok(Generation {
            id: id.to_string(),
            manifest,
            bm25,
            chunks,
            sections,
            section_index,
            vectors,
        })
    }

    /// All chunks, in row order.
    pub fn chunks(&self) -> &[Chunk] {
        &self.chunks
    }

    /// All sections.
    pub fn sections(&self) -> &[SectionRecord] {
        &self.sections
    }

    /// The section with this id.
    pub fn section(&self, section_id: &str) -> Option<&SectionRecord> {
        self.section_index
            .get(section_id)
            .map(|&i| &self.sections[i])
    }

    /// Every document of the generation, once, in chunk order, with what decides whether it is
    /// stale: its last modification and its freshness class's `staleAfter` (as recorded in the
    /// manifest).
    pub fn documents(&self) -> Vec<DocumentFreshness> {
        let mut seen = std::collections::HashSet::new();
        self.chunks
            .iter()
            .filter(|c| seen.insert(c.doc_id.as_str()))
            .map(|c| DocumentFreshness {
                doc_id: c.doc_id.clone(),
                freshness_class: c.freshness_class.clone(),
                last_modified: c.last_modified,
                class: self
                    .manifest
                    .freshness_classes
                    .get(&c.freshness_class)
                    .copied()
                    .unwrap_or(FreshnessClass {
                        half_life_days: None,
                        stale_after_days: None,
                    }),
            })
            .collect()
    }

    /// Finds contradiction candidates among the chunks with `options` (a build does it with the
    /// defaults and stores the result; this re-runs it, e.g. with other thresholds).
    pub fn contradictions(&self, options: &ConsistencyOptions) -> ConsistencyReport {
        let rows: Vec<&[f32]> = (0..self.chunks.len()).map(|r| self.vector(r)).collect();
        consistency::find_contradictions(&self.chunks, &rows, options)
    }

    pub(crate) fn dim(&self) -> usize {
        self.manifest.embedding.dim
    }

    /// The embedding of chunk `row` (as built; normalised when the encoder normalises).
    pub fn vector(&self, row: usize) -> &[f32] {
        let dim = self.dim();
        &self.vectors[row * dim..(row + 1) * dim]
    }
}

/// A document of a generation and what decides whether it is stale.
#[derive(Debug, Clone, PartialEq)]
pub struct DocumentFreshness {
    /// Document id (the `document` label of the runtime's per-document metrics).
    pub doc_id: String,
    /// Its source's freshness class.
    pub freshness_class: String,
    /// Last modification (Unix seconds), when known.
    pub last_modified: Option<i64>,
    /// The class as recorded in the generation's manifest.
    pub class: FreshnessClass,
}

impl DocumentFreshness {
    /// Whether the document is older than its class's `staleAfter` at `now` (Unix seconds).
    pub fn is_stale(&self, now: i64) -> bool {
        self.class.is_stale(self.last_modified, now)
    }
}

/// What a previous generation offers for reuse.
struct Previous {
    id: String,
    digests: HashMap<String, String>,
    chunks: Vec<Chunk>,
    sections: Vec<SectionRecord>,
    /// text hash -> row, only when the embedding model matches.
    vectors_by_text: HashMap<String, usize>,
    vectors: Vec<f32>,
    dim: usize,
}

/// Hard-links (or, across filesystems, copies) every file under `from` into `to`, except `skip`
/// at the top level.
fn link_tree(from: &Path, to: &Path, skip: &[&str]) -> Result<()> {
    for entry in std::fs::read_dir(from).map_err(Error::io("list", from))? {
        let entry = entry.map_err(Error::io("list", from))?;
        let name = entry.file_name();
        if skip.iter().any(|s| name == *s) {
            continue;
        }
        let (src, dst) = (entry.path(), to.join(&name));
        if entry.file_type().map_err(Error::io("stat", &src))?.is_dir() {
            std::fs::create_dir_all(&dst).map_err(Error::io("create", &dst))?;
            link_tree(&src, &dst, &[])?;
        } else if std::fs::hard_link(&src, &dst).is_err() {
            std::fs::copy(&src, &dst).map_err(Error::io("copy", &dst))?;
        }
    }
    Ok(())
}

fn text_hash(chunk: &Chunk) -> String {
    hex(&Sha256::digest(chunk.embedding_text().as_bytes())[..16])
}

fn load_previous(store: &Generations, embedding: &EmbeddingInfo) -> Option<Previous> {
    let id = store
        .current()
        .ok()
        .flatten()
        .or_else(|| store.list().ok()?.pop().map(|g| g.id))?;
    let dir = store.path(&id);
    let load = || -> Result<Previous> {
        let manifest: Manifest = store::read_json(&dir.join(store::MANIFEST))?;
        let chunks: Vec<Chunk> = store::read_jsonl(&dir.join(store::CHUNKS))?;
        let sections: Vec<SectionRecord> = store::read_jsonl(&dir.join(store::SECTIONS))?;
        let same_model = manifest.embedding == *embedding;
        let (dim, rows, vectors) = if same_model {
            store::read_vectors(&dir.join(store::VECTORS))?
        } else {
            (0, 0, Vec::new())
        };
        let vectors_by_text = if same_model && rows == chunks.len() {
            chunks
                .iter()
                .enumerate()
                .map(|(i, c)| (text_hash(c), i))
                .collect()
        } else {
            HashMap::new()
        };
        let digests = manifest
            .sources
            .iter()
            .filter(|s| manifest.layout_version == LAYOUT_VERSION && !s.digest.is_empty())
            .map(|s| (s.name.clone(), s.digest.clone()))
            .collect();
        Ok(Previous {
            id: id.clone(),
            digests,
            chunks,
            sections,
            vectors_by_text,
            vectors,
            dim,
        })
    };
    match load() {
        Ok(p) => Some(p),
        Err(e) => {
            tracing::warn!(generation = %id, error = %e, "previous generation not reusable; rebuilding everything");
            None
        }
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Builds a new generation of `spec` in `store` with `embedder`, reusing work from the current
/// generation. The generation is written under `tmp/` and renamed into place only when complete;
/// on any error the partial directory is removed and nothing new is listed. Bad files are
/// reported in the per-source reports and never abort the build. The result is not published:
/// call [`Generations::publish`].
pub fn build(
    spec: &IndexSpec,
    store: &Generations,
    embedder: &dyn Embedder,
    options: &BuildOptions,
) -> Result<BuildReport> {
    spec.validate()?;
    let started = Instant::now();
    let built_at = unix_now();
    let embedding = EmbeddingInfo {
        model_id: embedder.model_id(),
        dim: embedder.dim(),
    };
    if embedding.dim == 0 {
        return Err(Error::Embedding {
            model: embedding.model_id,
            message: "dimension 0".into(),
        });
    }
    let previous = if options.reuse {
        load_previous(store, &embedding)
    } else {
        None
    };

    // 1. Ingest: read, digest, parse + chunk (or reuse) each source.
    let mut reports = Vec::new();
    let mut chunks: Vec<Chunk> = Vec::new();
    let mut sections: Vec<SectionRecord> = Vec::new();
    let mut doc_ids: HashMap<String, String> = HashMap::new();
    let mut sources_reused = 0;
    for source in &spec.sources {
        let class = spec
            .freshness_classes
            .get(&source.freshness_class)
            .and_then(|c| c.half_life_days);
        let read = ingest::read_source(source, class, &spec.chunking);
        let mut report = SourceReport {
            name: source.name.clone(),
            format: Some(source.format),
            digest: read.digest.clone(),
            files: read.files.len(),
            ..Default::default()
        };
        let reusable = previous
            .as_ref()
            .filter(|p| p.digests.get(&source.name) == Some(&read.digest));
        let (mut source_chunks, source_sections) = if let Some(prev) = reusable {
            // Same bytes, same settings, same ingest version: same chunks. Carry the old report's
            // findings (errors, skips) over, since the files were not parsed again.
            sources_reused += 1;
            report.reused = true;
            if let Ok(old) =
                store::read_json::<Manifest>(&store.path(&prev.id).join(store::MANIFEST))
                && let Some(old_report) = old.sources.iter().find(|s| s.name == source.name)
            {
                report.errors = old_report.errors.clone();
                report.skipped = old_report.skipped.clone();
                report.skipped_examples = old_report.skipped_examples.clone();
                report.documents = old_report.documents;
            }
            let c: Vec<Chunk> = prev
                .chunks
                .iter()
                .filter(|c| c.source == source.name)
                .cloned()
                .collect();
            let s: Vec<SectionRecord> = prev
                .sections
                .iter()
                .filter(|s| {
                    s.doc_id
                        .split_once('/')
                        .is_some_and(|(src, _)| src == source.name)
                })
                .cloned()
                .collect();
            (c, s)
        } else {
            let docs = ingest::parse_source(source, &read, &mut report);
            let mut c = Vec::new();
            let mut s = Vec::new();
            let mut documents = 0;
            for doc in docs {
                if let Some(first) = doc_ids.get(&doc.doc_id) {
                    report.errors.push(ingest::SourceIssue {
                        item: doc.doc_id.clone(),
                        reason: format!("duplicate document id (first seen in source {first})"),
                    });
                    continue;
                }
                doc_ids.insert(doc.doc_id.clone(), source.name.clone());
                let (dc, ds) = chunk_document(&doc, &source.freshness_class, &spec.chunking);
                documents += 1;
                c.extend(dc);
                s.extend(ds);
            }
            report.documents = documents;
            (c, s)
        };
        for c in &source_chunks {
            doc_ids
                .entry(c.doc_id.clone())
                .or_insert_with(|| source.name.clone());
        }
        report.chunks = source_chunks.len();
        for e in &report.errors {
            tracing::warn!(source = %source.name, item = %e.item, reason = %e.reason, "source item not ingested");
        }
        chunks.append(&mut source_chunks);
        sections.extend(source_sections);
        reports.push(report);
    }
    let ingest_time = started.elapsed();

    // 2. Vectors: copy unchanged ones, embed the rest.
    let embed_started = Instant::now();
    let dim = embedding.dim;
    let mut rows: Vec<Option<Vec<f32>>> = vec![None; chunks.len()];
    let mut vectors_reused = 0;
    if let Some(prev) = previous.as_ref().filter(|p| p.dim == dim) {
        for (i, c) in chunks.iter().enumerate() {
            if let Some(&row) = prev.vectors_by_text.get(&text_hash(c)) {
                rows[i] = Some(prev.vectors[row * dim..(row + 1) * dim].to_vec());
                vectors_reused += 1;
            }
        }
    }
    let missing: Vec<usize> = (0..chunks.len()).filter(|&i| rows[i].is_none()).collect();
    let texts: Vec<String> = missing
        .iter()
        .map(|&i| chunks[i].embedding_text())
        .collect();
    let embedded = embed_checked(embedder, &texts, options.embed_batch)?;
    for (i, v) in missing.iter().zip(embedded) {
        rows[*i] = Some(v);
    }
    let rows: Vec<Vec<f32>> = rows.into_iter().map(Option::unwrap_or_default).collect();
    let embed_time = embed_started.elapsed();

    // 3. KB rot: contradiction candidates between the chunks, on the vectors just computed (or
    // the previous generation's report, when its chunks and vectors are these).
    let consistency_started = Instant::now();
    let unchanged_from = previous
        .as_ref()
        .filter(|p| p.dim == dim && vectors_reused == chunks.len() && p.chunks == chunks)
        .map(|p| p.id.as_str());
    let consistency = unchanged_from
        .and_then(|id| store.consistency(id).ok().flatten())
        .filter(|r| r.version == consistency::FINDER_VERSION)
        .unwrap_or_else(|| {
            let row_refs: Vec<&[f32]> = rows.iter().map(Vec::as_slice).collect();
            consistency::find_contradictions(&chunks, &row_refs, &ConsistencyOptions::default())
        });
    let consistency_time = consistency_started.elapsed();

    // 4. Write everything into a private directory, then rename it into place.
    let write_started = Instant::now();
    let tmp = store.root.join(TMP).join(format!(
        "build-{}-{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ));
    let result = (|| -> Result<BuildReport> {
        std::fs::create_dir_all(tmp.join(store::TANTIVY_DIR)).map_err(Error::io("create", &tmp))?;
        // Nothing changed: the previous generation's files are immutable, so link them instead of
        // rewriting the same bytes (re-indexing an unchanged KB then costs reading and hashing).
        let unchanged = previous.as_ref().filter(|p| {
            p.dim == dim
                && vectors_reused == chunks.len()
                && p.chunks == chunks
                && p.sections == sections
        });
        if let Some(prev) = unchanged {
            link_tree(
                &store.path(&prev.id),
                &tmp,
                &[store::MANIFEST, consistency::REPORT_FILE],
            )?;
        } else {
            bm25::write_index(&tmp.join(store::TANTIVY_DIR), &chunks)?;
            store::write_vectors(&tmp.join(store::VECTORS), dim, &rows)?;
            let ids: String = chunks.iter().map(|c| format!("{}\n", c.chunk_id)).collect();
            store::write_synced(&tmp.join(store::VECTOR_IDS), |w| {
                std::io::Write::write_all(w, ids.as_bytes())
            })?;
            store::write_jsonl(&tmp.join(store::CHUNKS), &chunks)?;
            store::write_jsonl(&tmp.join(store::SECTIONS), &sections)?;
        }
        // Always written: the finder may have changed since the generation it would link from.
        store::write_json(&tmp.join(consistency::REPORT_FILE), &consistency)?;
        let documents = reports.iter().map(|r| r.documents).sum();
        let mut manifest = Manifest {
            layout_version: LAYOUT_VERSION,
            generation: String::new(),
            built_at,
            build_millis: 0,
            embedding: embedding.clone(),
            chunking: spec.chunking,
            freshness_classes: spec.freshness_classes.clone(),
            sources: reports.clone(),
            documents,
            sections: sections.len(),
            chunks: chunks.len(),
            consistency: Some(consistency.summary(MANIFEST_CONTRADICTIONS)),
        };
        // Pick the next id; if another build takes it first, the rename fails and we retry.
        let mut attempts = 0;
        loop {
            let id = store.next_id()?;
            manifest.generation = id.clone();
            manifest.build_millis = started.elapsed().as_millis() as u64;
            store::write_json(&tmp.join(store::MANIFEST), &manifest)?;
            store::sync_dir(&tmp)?;
            let target = store.path(&id);
            match std::fs::rename(&tmp, &target) {
                Ok(()) => {
                    store::sync_dir(&store.root.join(GENERATIONS))?;
                    return Ok(BuildReport {
                        manifest,
                        path: target,
                        reused_from: previous.as_ref().map(|p| p.id.clone()),
                        sources_reused,
                        chunks_embedded: texts.len(),
                        vectors_reused,
                        ingest_time,
                        embed_time,
                        write_time: write_started.elapsed(),
                        consistency: consistency.clone(),
                        consistency_time,
                    });
                }
                Err(_) if attempts < 8 && target.exists() => attempts += 1,
                Err(e) => {
                    return Err(Error::Io {
                        op: "rename",
                        path: target,
                        source: e,
                    });
                }
            }
        }
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    if let Ok(report) = &result {
        tracing::info!(
            generation = %report.manifest.generation,
            documents = report.manifest.documents,
            chunks = report.manifest.chunks,
            source_errors = report.source_errors(),
            embedded = report.chunks_embedded,
            reused = report.vectors_reused,
            contradictions = report.consistency.total,
            "built index generation"
        );
    }
    result
}
