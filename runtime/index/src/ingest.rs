//! Reading sources: files -> digests -> parsed documents, with per-source reports. A bad file is
//! recorded (named, with a reason) and the rest of the source is still ingested.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::document::Document;
use crate::parse::{self, InputFile};
use crate::spec::{ChunkingSpec, SourceFormat, SourceLocation, SourceSpec};

/// Bumped whenever parsing or chunking changes what a source yields, so that digests of
/// unchanged files no longer match and sources are re-ingested after an upgrade.
pub const INGEST_VERSION: u32 = 1;

/// Largest file read (bigger ones are reported, not read).
pub const MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;

/// What happened to one source during a build.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SourceReport {
    /// Source name.
    pub name: String,
    /// Format.
    pub format: Option<SourceFormat>,
    /// sha256 over the ingest version, the source's settings and every file (path + bytes).
    pub digest: String,
    /// Files read.
    pub files: usize,
    /// Documents indexed.
    pub documents: usize,
    /// Chunks indexed.
    pub chunks: usize,
    /// Items skipped on purpose, counted by reason (`spam`, `not marked resolved`, ...).
    pub skipped: BTreeMap<String, usize>,
    /// Examples of skipped items (at most [`MAX_LISTED_SKIPS`]).
    pub skipped_examples: Vec<SourceIssue>,
    /// Files (or items) that could not be ingested.
    pub errors: Vec<SourceIssue>,
    /// True when chunks were taken from the previous generation (digest unchanged).
    pub reused: bool,
}

/// How many skipped items a report lists by name.
pub const MAX_LISTED_SKIPS: usize = 20;

/// A problem with one file or item of a source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceIssue {
    /// File path relative to the source, or an item (`ticket 123`).
    pub item: String,
    /// What is wrong.
    pub reason: String,
}

/// A source's files, read into memory, and its digest.
#[derive(Debug)]
pub(crate) struct ReadSource {
    pub files: Vec<InputFile>,
    pub digest: String,
    pub errors: Vec<SourceIssue>,
}

/// Reads every file of a source. Unreadable entries become errors in the result.
pub(crate) fn read_source(
    source: &SourceSpec,
    freshness_half_life: Option<f64>,
    chunking: &ChunkingSpec,
) -> ReadSource {
    let mut files = Vec::new();
    let mut errors = Vec::new();
    match &source.location {
        SourceLocation::Inline { files: inline } => {
            for f in inline {
                files.push(InputFile {
                    rel_path: f.name.clone(),
                    bytes: f.content.clone().into_bytes(),
                    mtime: None,
                });
            }
        }
        SourceLocation::Path { path } => match std::fs::metadata(path) {
            Ok(meta) if meta.is_dir() => {
                let mut walker = Walk::new(path, source.format);
                walker.walk(path, &mut files, &mut errors);
            }
            Ok(_) => {
                let name = path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                read_file(path, name, &mut files, &mut errors);
            }
            Err(e) => errors.push(SourceIssue {
                item: path.display().to_string(),
                reason: format!("cannot read: {e}"),
            }),
        },
    }
    files.sort_by(|a, b| a.rel_path.cmp(&b.rel_path));

    let mut h = Sha256::new();
    h.update(INGEST_VERSION.to_le_bytes());
    h.update(source.format.as_str());
    h.update([0]);
    h.update(source.freshness_class.as_bytes());
    h.update([0]);
    h.update(format!("{freshness_half_life:?}/{chunking:?}"));
    for f in &files {
        h.update((f.rel_path.len() as u64).to_le_bytes());
        h.update(f.rel_path.as_bytes());
        h.update((f.bytes.len() as u64).to_le_bytes());
        h.update(&f.bytes);
    }
    // Errors change the outcome too (a file that became unreadable must not reuse old chunks).
    for e in &errors {
        h.update(e.item.as_bytes());
    }
    ReadSource {
        files,
        digest: hex(&h.finalize()),
        errors,
    }
}

/// A directory walk that stays inside the source's folder: symbolic links are followed (a
/// ConfigMap volume is a farm of them) only where they lead to a file or folder inside it, so
/// a link to the pod's own files (`/var/run/secrets/...`, `/etc`) is reported, not indexed; a
/// folder reached twice (a link to a parent) is read once.
struct Walk<'a> {
    root: &'a Path,
    /// The folder's real path (`None` when it cannot be resolved: then nothing is followed).
    real_root: Option<PathBuf>,
    format: SourceFormat,
    visited: std::collections::HashSet<PathBuf>,
}

impl<'a> Walk<'a> {
    fn new(root: &'a Path, format: SourceFormat) -> Self {
        Self {
            root,
            real_root: std::fs::canonicalize(root).ok(),
            format,
            visited: std::collections::HashSet::new(),
        }
    }

    /// Whether `path` (a symbolic link) resolves inside the source's folder.
    fn inside(&self, path: &Path) -> Result<bool, std::io::Error> {
        let real = std::fs::canonicalize(path)?;
        Ok(self
            .real_root
            .as_ref()
            .is_some_and(|root| real.starts_with(root)))
    }

    fn walk(&mut self, dir: &Path, files: &mut Vec<InputFile>, errors: &mut Vec<SourceIssue>) {
        let root = self.root;
        if let Ok(real) = std::fs::canonicalize(dir)
            && !self.visited.insert(real)
        {
            return;
        }
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) => {
                errors.push(SourceIssue {
                    item: rel(root, dir),
                    reason: format!("cannot list: {e}"),
                });
                return;
            }
        };
        for entry in entries {
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    errors.push(SourceIssue {
                        item: rel(root, dir),
                        reason: format!("cannot list: {e}"),
                    });
                    continue;
                }
            };
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            if entry.file_type().is_ok_and(|t| t.is_symlink()) {
                match self.inside(&path) {
                    Ok(true) => {}
                    Ok(false) => {
                        errors.push(SourceIssue {
                            item: rel(root, &path),
                            reason: "a symbolic link leading outside the source's folder is not followed".into(),
                        });
                        continue;
                    }
                    Err(e) => {
                        errors.push(SourceIssue {
                            item: rel(root, &path),
                            reason: format!("cannot resolve the symbolic link: {e}"),
                        });
                        continue;
                    }
                }
            }
            match std::fs::metadata(&path) {
                Ok(m) if m.is_dir() => self.walk(&path, files, errors),
                Ok(_) => {
                    let ext = name
                        .rsplit_once('.')
                        .map(|(_, e)| e.to_ascii_lowercase())
                        .unwrap_or_default();
                    if self.format.extensions().contains(&ext.as_str()) {
                        read_file(&path, rel(root, &path), files, errors);
                    }
                }
                Err(e) => errors.push(SourceIssue {
                    item: rel(root, &path),
                    reason: format!("cannot stat: {e}"),
                }),
            }
        }
    }
}

fn rel(root: &Path, path: &Path) -> String {
    let r = path.strip_prefix(root).unwrap_or(path);
    r.components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

fn read_file(
    path: &Path,
    rel_path: String,
    files: &mut Vec<InputFile>,
    errors: &mut Vec<SourceIssue>,
) {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) => {
            errors.push(SourceIssue {
                item: rel_path,
                reason: format!("cannot stat: {e}"),
            });
            return;
        }
    };
    if meta.len() > MAX_FILE_BYTES {
        errors.push(SourceIssue {
            item: rel_path,
            reason: format!("file is {} bytes, limit {MAX_FILE_BYTES}", meta.len()),
        });
        return;
    }
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs() as i64);
    match std::fs::read(path) {
        Ok(bytes) => files.push(InputFile {
            rel_path,
            bytes,
            mtime,
        }),
        Err(e) => errors.push(SourceIssue {
            item: rel_path,
            reason: format!("cannot read: {e}"),
        }),
    }
}

/// Parses a read source. Returns documents; errors and skips are added to `report`.
pub(crate) fn parse_source(
    source: &SourceSpec,
    read: &ReadSource,
    report: &mut SourceReport,
) -> Vec<Document> {
    report.errors.extend(read.errors.iter().cloned());
    let mut docs = Vec::new();
    let mut skipped = Vec::new();
    if source.format == SourceFormat::SlackExport {
        let tags: Vec<String> = source.resolved_tags.clone().unwrap_or_else(|| {
            parse::slack::DEFAULT_RESOLVED_TAGS
                .iter()
                .map(|t| (*t).to_owned())
                .collect()
        });
        let (parsed, errors) = parse::parse_slack_export(&source.name, &read.files, &tags);
        docs.extend(parsed.documents);
        skipped.extend(parsed.skipped);
        report.errors.extend(
            errors
                .into_iter()
                .map(|(item, reason)| SourceIssue { item, reason }),
        );
    } else {
        for file in &read.files {
            match parse::parse_file(source.format, &source.name, file) {
                Ok(parsed) => {
                    if parsed.documents.is_empty() && parsed.skipped.is_empty() {
                        report.errors.push(SourceIssue {
                            item: file.rel_path.clone(),
                            reason: "no documents found".into(),
                        });
                    }
                    docs.extend(parsed.documents);
                    skipped.extend(parsed.skipped);
                }
                Err(reason) => report.errors.push(SourceIssue {
                    item: file.rel_path.clone(),
                    reason,
                }),
            }
        }
    }
    for (item, reason) in skipped {
        *report.skipped.entry(reason.clone()).or_default() += 1;
        if report.skipped_examples.len() < MAX_LISTED_SKIPS {
            report.skipped_examples.push(SourceIssue { item, reason });
        }
    }
    // Documents whose text is entirely empty are reported rather than indexed as nothing.
    let (docs, empty): (Vec<_>, Vec<_>) = docs.into_iter().partition(|d| d.text_len() > 0);
    for d in empty {
        report.errors.push(SourceIssue {
            item: d.doc_id,
            reason: "no text content".into(),
        });
    }
    docs
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_are_followed_inside_the_source_only_and_loops_end() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("pod");
        std::fs::create_dir_all(outside.join("secrets")).unwrap();
        std::fs::write(outside.join("secrets/token"), "eyJhbGciOi.secret").unwrap();
        let root = tmp.path().join("kb");
        std::fs::create_dir_all(root.join("..2026_12_07/guides")).unwrap();
        std::fs::write(
            root.join("..2026_12_07/guides/refunds.txt"),
            "Refunds take 14 days.",
        )
        .unwrap();
        // A ConfigMap volume's shape: visible names are links into a hidden, timestamped folder.
        std::os::unix::fs::symlink("..2026_12_07", root.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/guides", root.join("guides")).unwrap();
        // What an author must not get indexed: the pod's own files, and a loop.
        std::os::unix::fs::symlink(outside.join("secrets/token"), root.join("token.txt")).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("pod")).unwrap();
        std::os::unix::fs::symlink(".", root.join("again")).unwrap();
        let source = SourceSpec {
            name: "notes".into(),
            format: SourceFormat::PlainText,
            freshness_class: "standard".into(),
            location: SourceLocation::Path { path: root.clone() },
            resolved_tags: None,
        };
        let read = read_source(&source, None, &ChunkingSpec::default());
        let names: Vec<&str> = read.files.iter().map(|f| f.rel_path.as_str()).collect();
        assert_eq!(names, ["guides/refunds.txt"]);
        let mut refused: Vec<(&str, &str)> = read
            .errors
            .iter()
            .map(|e| (e.item.as_str(), e.reason.as_str()))
            .collect();
        refused.sort_unstable();
        let outside_link = "a symbolic link leading outside the source's folder is not followed";
        assert_eq!(
            refused,
            [("pod", outside_link), ("token.txt", outside_link)]
        );
    }
}
