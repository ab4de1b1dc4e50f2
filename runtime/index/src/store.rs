//! File formats of a generation directory.
//!
//! ```text
//! gen-000007/
//!   manifest.json    written last; its presence marks a complete generation
//!   chunks.jsonl     one Chunk per line; line i = row i of the vector matrix = tantivy `row` i
//!   sections.jsonl   one SectionRecord per line
//!   vectors.f32      "SBVEC001", dim: u32 LE, rows: u64 LE, then rows*dim f32 LE (L2-normalised)
//!   vectors.ids      chunk id of each row, one per line (checked against chunks.jsonl on load)
//!   tantivy/         BM25 index
//! ```

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

pub(crate) const MANIFEST: &str = "manifest.json";
pub(crate) const CHUNKS: &str = "chunks.jsonl";
pub(crate) const SECTIONS: &str = "sections.jsonl";
pub(crate) const VECTORS: &str = "vectors.f32";
pub(crate) const VECTOR_IDS: &str = "vectors.ids";
pub(crate) const TANTIVY_DIR: &str = "tantivy";

const VECTOR_MAGIC: &[u8; 8] = b"SBVEC001";

/// Creates `path`, lets `fill` write it, flushes and fsyncs.
pub(crate) fn write_synced(
    path: &Path,
    fill: impl FnOnce(&mut BufWriter<File>) -> std::io::Result<()>,
) -> Result<()> {
    let file = File::create(path).map_err(Error::io("create", path))?;
    let mut w = BufWriter::with_capacity(1 << 16, file);
    fill(&mut w).map_err(Error::io("write", path))?;
    let file = w.into_inner().map_err(|e| Error::Io {
        op: "write",
        path: path.into(),
        source: e.into_error(),
    })?;
    file.sync_all().map_err(Error::io("fsync", path))
}

pub(crate) fn write_jsonl<T: Serialize>(path: &Path, items: &[T]) -> Result<()> {
    write_synced(path, |w| {
        for item in items {
            serde_json::to_writer(&mut *w, item)?;
            w.write_all(b"\n")?;
        }
        Ok(())
    })
}

pub(crate) fn read_jsonl<T: DeserializeOwned>(path: &Path) -> Result<Vec<T>> {
    let file = File::open(path).map_err(Error::io("open", path))?;
    let mut out = Vec::new();
    for (i, line) in BufReader::with_capacity(1 << 16, file).lines().enumerate() {
        let line = line.map_err(Error::io("read", path))?;
        if line.is_empty() {
            continue;
        }
        out.push(serde_json::from_str(&line).map_err(|e| Error::Format {
            op: "parse",
            path: path.into(),
            message: format!("line {}: {e}", i + 1),
        })?);
    }
    Ok(out)
}

pub(crate) fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    write_synced(path, |w| {
        serde_json::to_writer_pretty(&mut *w, value)?;
        w.write_all(b"\n")
    })
}

pub(crate) fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let bytes = std::fs::read(path).map_err(Error::io("read", path))?;
    serde_json::from_slice(&bytes).map_err(|e| Error::Format {
        op: "parse",
        path: path.into(),
        message: e.to_string(),
    })
}

/// Writes a row-major matrix of `dim`-wide rows.
pub(crate) fn write_vectors(path: &Path, dim: usize, rows: &[Vec<f32>]) -> Result<()> {
    write_synced(path, |w| {
        w.write_all(VECTOR_MAGIC)?;
        w.write_all(&(dim as u32).to_le_bytes())?;
        w.write_all(&(rows.len() as u64).to_le_bytes())?;
        let mut bytes = Vec::with_capacity(rows.len() * dim * 4);
        for x in rows.iter().flatten() {
            bytes.extend_from_slice(&x.to_le_bytes());
        }
        w.write_all(&bytes)
    })
}

/// Reads a matrix written by [`write_vectors`]: `(dim, rows, flat data)`.
pub(crate) fn read_vectors(path: &Path) -> Result<(usize, usize, Vec<f32>)> {
    let bytes = std::fs::read(path).map_err(Error::io("read", path))?;
    let bad = |message: String| Error::Format {
        op: "parse",
        path: path.into(),
        message,
    };
    if bytes.len() < 20 || &bytes[..8] != VECTOR_MAGIC {
        return Err(bad("not a vector file (bad magic)".into()));
    }
    let dim = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize;
    let mut n = [0u8; 8];
    n.copy_from_slice(&bytes[12..20]);
    let rows = u64::from_le_bytes(n) as usize;
    let body = &bytes[20..];
    if rows.checked_mul(dim).and_then(|x| x.checked_mul(4)) != Some(body.len()) {
        return Err(bad(format!(
            "{} bytes of data for {rows} x {dim} f32",
            body.len()
        )));
    }
    let data = body
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Ok((dim, rows, data))
}

/// fsyncs a directory so that a rename inside it is durable.
pub(crate) fn sync_dir(path: &Path) -> Result<()> {
    File::open(path)
        .and_then(|d| d.sync_all())
        .map_err(Error::io("fsync", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors_round_trip_and_truncation_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("v.f32");
        write_vectors(&p, 3, &[vec![1.0, 2.0, 3.0], vec![-1.0, 0.5, 0.25]]).unwrap();
        let (dim, rows, data) = read_vectors(&p).unwrap();
        assert_eq!((dim, rows), (3, 2));
        assert_eq!(data, [1.0, 2.0, 3.0, -1.0, 0.5, 0.25]);
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() - 4]).unwrap();
        assert!(read_vectors(&p).is_err());
    }
}
