//! The tantivy side: schema, writing a generation's index, and field-boosted BM25 queries.

use std::collections::BTreeSet;
use std::path::Path;

use tantivy::collector::TopDocs;
use tantivy::query::{BooleanQuery, BoostQuery, Occur, Query, TermQuery};
use tantivy::schema::{
    FAST, Field, IndexRecordOption, STORED, STRING, Schema, TextFieldIndexing, TextOptions,
};
use tantivy::tokenizer::TokenStream;
use tantivy::{Index, IndexReader, ReloadPolicy, TantivyDocument, Term};

use crate::chunk::Chunk;
use crate::error::{Error, Result};
use crate::spec::FieldBoosts;

/// English stemming (refunds -> refund) and lower-casing; registered by tantivy by default.
const TOKENIZER: &str = "en_stem";
const WRITER_HEAP_BYTES: usize = 64 * 1024 * 1024;

#[derive(Debug, Clone, Copy)]
pub(crate) struct Fields {
    pub chunk_id: Field,
    pub doc_id: Field,
    pub row: Field,
    pub title: Field,
    pub headings: Field,
    pub body: Field,
    pub tags: Field,
}

fn schema() -> (Schema, Fields) {
    let mut b = Schema::builder();
    // Frequencies without positions: BM25 needs term frequencies; phrase queries are not used.
    let text = TextOptions::default().set_indexing_options(
        TextFieldIndexing::default()
            .set_tokenizer(TOKENIZER)
            .set_index_option(IndexRecordOption::WithFreqs),
    );
    let fields = Fields {
        chunk_id: b.add_text_field("chunk_id", STRING | STORED),
        doc_id: b.add_text_field("doc_id", STRING | STORED),
        row: b.add_u64_field("row", FAST | STORED),
        title: b.add_text_field("title", text.clone()),
        headings: b.add_text_field("headings", text.clone()),
        body: b.add_text_field("body", text.clone()),
        tags: b.add_text_field("tags", text),
    };
    (b.build(), fields)
}

/// Writes the BM25 index of `chunks` (row i = chunks[i]) into `dir`.
pub(crate) fn write_index(dir: &Path, chunks: &[Chunk]) -> Result<()> {
    let (schema, f) = schema();
    let index = Index::create_in_dir(dir, schema).map_err(Error::tantivy("create index"))?;
    // One indexing thread: builds run next to serving on small nodes, and one segment is what
    // search wants anyway.
    let mut writer = index
        .writer_with_num_threads::<TantivyDocument>(1, WRITER_HEAP_BYTES)
        .map_err(Error::tantivy("open writer"))?;
    for (row, c) in chunks.iter().enumerate() {
        let mut doc = TantivyDocument::default();
        doc.add_text(f.chunk_id, &c.chunk_id);
        doc.add_text(f.doc_id, &c.doc_id);
        doc.add_u64(f.row, row as u64);
        doc.add_text(f.title, &c.title);
        doc.add_text(f.headings, c.headings().join(" \n "));
        doc.add_text(f.body, &c.text);
        doc.add_text(f.tags, c.tags.join(" \n "));
        writer
            .add_document(doc)
            .map_err(Error::tantivy("add document"))?;
    }
    writer.commit().map_err(Error::tantivy("commit"))?;
    writer
        .wait_merging_threads()
        .map_err(Error::tantivy("merge"))?;
    Ok(())
}

/// An opened BM25 index: one reader for the lifetime of the loaded generation.
pub(crate) struct Bm25Index {
    index: Index,
    reader: IndexReader,
    fields: Fields,
}

impl std::fmt::Debug for Bm25Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bm25Index")
            .field("docs", &self.reader.searcher().num_docs())
            .finish()
    }
}

impl Bm25Index {
    pub(crate) fn open(dir: &Path) -> Result<Self> {
        let index = Index::open_in_dir(dir).map_err(Error::tantivy("open index"))?;
        let (expected, fields) = schema();
        if index.schema() != expected {
            return Err(Error::Tantivy {
                op: "open index",
                source: tantivy::TantivyError::SchemaError(
                    "schema differs from this version's".into(),
                ),
            });
        }
        // The generation is immutable: no reloads.
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()
            .map_err(Error::tantivy("open reader"))?;
        Ok(Bm25Index {
            index,
            reader,
            fields,
        })
    }

    pub(crate) fn num_docs(&self) -> u64 {
        self.reader.searcher().num_docs()
    }

    /// Analyzed, de-duplicated query terms.
    fn terms(&self, query: &str) -> Result<Vec<String>> {
        let mut analyzer =
            self.index
                .tokenizers()
                .get(TOKENIZER)
                .ok_or_else(|| Error::Tantivy {
                    op: "tokenize query",
                    source: tantivy::TantivyError::SchemaError(format!(
                        "tokenizer {TOKENIZER} missing"
                    )),
                })?;
        let mut stream = analyzer.token_stream(query);
        let mut terms = BTreeSet::new();
        while stream.advance() {
            terms.insert(stream.token().text.clone());
        }
        Ok(terms.into_iter().collect())
    }

    /// Top `limit` rows by field-boosted BM25: `(row, score)`, best first. Query text is analyzed
    /// like the fields, never parsed as query syntax, so user input cannot produce syntax errors.
    pub(crate) fn search(
        &self,
        query: &str,
        boosts: &FieldBoosts,
        limit: usize,
    ) -> Result<Vec<(usize, f32)>> {
        let f = self.fields;
        let terms = self.terms(query)?;
        let mut clauses: Vec<(Occur, Box<dyn Query>)> = Vec::new();
        for (field, boost) in [
            (f.title, boosts.title),
            (f.headings, boosts.headings),
            (f.body, boosts.body),
            (f.tags, boosts.tags),
        ] {
            if boost <= 0.0 {
                continue;
            }
            for t in &terms {
                let q = TermQuery::new(
                    Term::from_field_text(field, t),
                    IndexRecordOption::WithFreqs,
                );
                clauses.push((Occur::Should, Box::new(BoostQuery::new(Box::new(q), boost))));
            }
        }
        if clauses.is_empty() || limit == 0 {
            return Ok(Vec::new());
        }
        let searcher = self.reader.searcher();
        let hits = searcher
            .search(
                &BooleanQuery::new(clauses),
                &TopDocs::with_limit(limit).order_by_score(),
            )
            .map_err(Error::tantivy("search"))?;
        let mut out = Vec::with_capacity(hits.len());
        let mut columns = Vec::new();
        for segment in searcher.segment_readers() {
            columns.push(
                segment
                    .fast_fields()
                    .u64("row")
                    .map_err(Error::tantivy("open row column"))?,
            );
        }
        for (score, addr) in hits {
            let row = columns
                .get(addr.segment_ord as usize)
                .and_then(|c| c.first(addr.doc_id))
                .ok_or_else(|| Error::Tantivy {
                    op: "read row",
                    source: tantivy::TantivyError::InternalError(format!("no row for {addr:?}")),
                })?;
            out.push((row as usize, score));
        }
        Ok(out)
    }
}
