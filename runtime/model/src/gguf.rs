//! GGUF reader (format version 2 and 3) with dequantisation of the common llama.cpp block formats.
//!
//! Layout, as specified in ggml's `docs/gguf.md`: a header (`GGUF` magic, version, tensor count,
//! metadata count), the metadata key/value pairs, the tensor infos (name, dimensions with the fastest
//! varying first, type, offset relative to the data section), then the tensor data, starting at the
//! next multiple of `general.alignment` (default 32). Everything is little-endian.
//!
//! The reader parses the header and infos only; tensor data is read on request with plain file reads
//! (no memory mapping, so no `unsafe`) and dequantised to `f32`:
//! F32, F16, BF16, Q4_0, Q4_1 and Q8_0 (block layouts from ggml's `ggml-common.h`, values as
//! `dequantize_row_*` in `ggml-quants.c` compute them).
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use tch::{Device, Tensor};

use crate::error::{ModelError, Result};

const MAGIC: [u8; 4] = *b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// Bound on any count or length read from a header, so a corrupt file fails with a message instead
/// of attempting a huge allocation.
const MAX_LEN: u64 = 1 << 32;

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum MetadataValue {
    /// `uint8`.
    U8(u8),
    /// `int8`.
    I8(i8),
    /// `uint16`.
    U16(u16),
    /// `int16`.
    I16(i16),
    /// `uint32`.
    U32(u32),
    /// `int32`.
    I32(i32),
    /// `float32`.
    F32(f32),
    /// `bool`.
    Bool(bool),
    /// UTF-8 string.
    String(String),
    /// Homogeneous array.
    Array(Vec<MetadataValue>),
    /// `uint64`.
    U64(u64),
    /// `int64`.
    I64(i64),
    /// `float64`.
    F64(f64),
}

impl MetadataValue {
    /// The value as an unsigned integer, when it is a non-negative integer of any width.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Self::U8(v) => Some(v.into()),
            Self::U16(v) => Some(v.into()),
            Self::U32(v) => Some(v.into()),
            Self::U64(v) => Some(v),
            Self::I8(v) => u64::try_from(v).ok(),
            Self::I16(v) => u64::try_from(v).ok(),
            Self::I32(v) => u64::try_from(v).ok(),
            Self::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a signed integer, when it is an integer that fits.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Self::U64(v) => i64::try_from(v).ok(),
            Self::I8(v) => Some(v.into()),
            Self::I16(v) => Some(v.into()),
            Self::I32(v) => Some(v.into()),
            Self::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    /// The value as a float, when it is a float or an integer.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Self::F32(v) => Some(v.into()),
            Self::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    /// The value as a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(s) => Some(s),
            _ => None,
        }
    }

    /// The value as a bool.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Self::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// The elements, when the value is an array.
    pub fn as_array(&self) -> Option<&[MetadataValue]> {
        match self {
            Self::Array(items) => Some(items),
            _ => None,
        }
    }
}

/// ggml tensor types this reader knows by name; only some can be dequantised
/// ([`GgmlType::block`] is `Some`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)] // the ggml names
pub enum GgmlType {
    /// 32-bit float.
    F32,
    /// IEEE half.
    F16,
    /// bfloat16.
    BF16,
    /// 32 weights: f16 scale, 16 bytes of 4-bit values offset by 8.
    Q4_0,
    /// 32 weights: f16 scale, f16 minimum, 16 bytes of 4-bit values.
    Q4_1,
    /// 32 weights: f16 scale, 32 signed bytes.
    Q8_0,
    /// Any other type id (Q5_x, K-quants, IQ-quants, ...): recognised, not dequantised.
    Other(u32),
}

impl GgmlType {
    fn from_id(id: u32) -> Self {
        match id {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            8 => Self::Q8_0,
            30 => Self::BF16,
            other => Self::Other(other),
        }
    }

    /// (weights per block, bytes per block), for the types this reader dequantises.
    pub fn block(self) -> Option<(usize, usize)> {
        match self {
            Self::F32 => Some((1, 4)),
            Self::F16 | Self::BF16 => Some((1, 2)),
            Self::Q4_0 => Some((32, 18)),
            Self::Q4_1 => Some((32, 20)),
            Self::Q8_0 => Some((32, 34)),
            Self::Other(_) => None,
        }
    }
}

/// Where a tensor lives in the file and what it holds.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    /// Name as llama.cpp spells it (`blk.0.attn_q.weight`).
    pub name: String,
    /// Dimensions, fastest varying first (ggml `ne`); the PyTorch shape is the reverse.
    pub dims: Vec<u64>,
    /// Storage type.
    pub ggml_type: GgmlType,
    /// Offset from the start of the data section.
    pub offset: u64,
}

impl TensorInfo {
    /// Number of elements.
    pub fn len(&self) -> u64 {
        self.checked_len().unwrap_or(u64::MAX)
    }

    /// Number of elements, `None` when the dimensions' product does not fit in 64 bits (a
    /// malformed file: [`GgufFile::open`] refuses it).
    pub fn checked_len(&self) -> Option<u64> {
        self.dims.iter().try_fold(1u64, |n, d| n.checked_mul(*d))
    }

    /// Whether the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The row-major (PyTorch) shape: `dims` reversed.
    pub fn shape(&self) -> Vec<i64> {
        self.dims.iter().rev().map(|&d| d as i64).collect()
    }
}

/// A parsed GGUF file: metadata and tensor infos; tensor data is read on demand.
#[derive(Debug)]
pub struct GgufFile {
    path: PathBuf,
    version: u32,
    metadata: BTreeMap<String, MetadataValue>,
    tensors: Vec<TensorInfo>,
    data_start: u64,
    file_len: u64,
}

impl GgufFile {
    /// Parses the header, metadata and tensor infos of a GGUF file.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(ModelError::io(&path))?;
        let file_len = file.metadata().map_err(ModelError::io(&path))?.len();
        let mut r = HeaderReader {
            inner: BufReader::new(file),
            path: &path,
            pos: 0,
        };
        let magic = r.bytes::<4>()?;
        if magic != MAGIC {
            return Err(r.invalid(format!("not a GGUF file (magic {magic:02x?})")));
        }
        let version = r.u32()?;
        if !(2..=3).contains(&version) {
            return Err(r.invalid(format!("GGUF version {version} (2 and 3 are supported)")));
        }
        let tensor_count = r.len("tensor count")?;
        let kv_count = r.len("metadata count")?;
        let mut metadata = BTreeMap::new();
        for _ in 0..kv_count {
            let key = r.string()?;
            let type_id = r.u32()?;
            let value = r.value(type_id, &key)?;
            metadata.insert(key, value);
        }
        let mut tensors = Vec::with_capacity(tensor_count.min(1 << 16) as usize);
        for _ in 0..tensor_count {
            let name = r.string()?;
            let n_dims = r.u32()?;
            if n_dims > 4 {
                return Err(r.invalid(format!(
                    "tensor `{name}` has {n_dims} dimensions (at most 4)"
                )));
            }
            let dims = (0..n_dims).map(|_| r.u64()).collect::<Result<Vec<_>>>()?;
            let ggml_type = GgmlType::from_id(r.u32()?);
            let offset = r.u64()?;
            tensors.push(TensorInfo {
                name,
                dims,
                ggml_type,
                offset,
            });
        }
        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() => a,
                _ => {
                    return Err(r.invalid(format!("general.alignment {v:?} is not a power of two")));
                }
            },
        };
        let Some(data_start) = r.pos.div_ceil(alignment).checked_mul(alignment) else {
            return Err(r.invalid(format!("general.alignment {alignment} is too large")));
        };
        let gguf = Self {
            path,
            version,
            metadata,
            tensors,
            data_start,
            file_len,
        };
        for info in &gguf.tensors {
            if info.offset % alignment != 0 {
                return Err(gguf.invalid(format!(
                    "tensor `{}` offset {} is not aligned to {alignment}",
                    info.name, info.offset
                )));
            }
            if info.checked_len().is_none() {
                return Err(gguf.invalid(format!(
                    "tensor `{}` has dimensions {:?}, more elements than 64 bits count",
                    info.name, info.dims
                )));
            }
            // Only the extent of types we can size is checked here; others fail when read.
            // Sums that overflow are past the end too (found by fuzzing,
            // fuzz/regressions/gguf/).
            if let Ok(n) = gguf.byte_len(info)
                && gguf
                    .data_start
                    .checked_add(info.offset)
                    .and_then(|start| start.checked_add(n))
                    .is_none_or(|end| end > gguf.file_len)
            {
                return Err(gguf.invalid(format!(
                    "tensor `{}` ends past the end of the file ({} bytes)",
                    info.name, gguf.file_len
                )));
            }
        }
        Ok(gguf)
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// GGUF format version.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// All metadata, by key.
    pub fn metadata(&self) -> &BTreeMap<String, MetadataValue> {
        &self.metadata
    }

    /// One metadata value.
    pub fn get(&self, key: &str) -> Option<&MetadataValue> {
        self.metadata.get(key)
    }

    /// The tensor infos, in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The info of the tensor of this name.
    pub fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// Byte offset of the data section (after alignment padding).
    pub fn data_start(&self) -> u64 {
        self.data_start
    }

    fn invalid(&self, reason: String) -> ModelError {
        ModelError::Gguf {
            path: self.path.clone(),
            reason,
        }
    }

    fn byte_len(&self, info: &TensorInfo) -> Result<u64> {
        let Some((per_block, block_bytes)) = info.ggml_type.block() else {
            return Err(self.invalid(format!(
                "tensor `{}` has ggml type {:?}, which is not supported (F32, F16, BF16, Q4_0, Q4_1, Q8_0 are)",
                info.name, info.ggml_type
            )));
        };
        let row = info.dims.first().copied().unwrap_or(1);
        if row % per_block as u64 != 0 {
            return Err(self.invalid(format!(
                "tensor `{}`: row length {row} is not a multiple of the {per_block}-weight block",
                info.name
            )));
        }
        (info.len() / per_block as u64)
            .checked_mul(block_bytes as u64)
            .ok_or_else(|| {
                self.invalid(format!(
                    "tensor `{}` has more bytes than 64 bits count",
                    info.name
                ))
            })
    }

    /// Reads the raw bytes of a tensor.
    pub fn read_raw(&self, info: &TensorInfo) -> Result<Vec<u8>> {
        let len = self.byte_len(info)?;
        let mut file = File::open(&self.path).map_err(ModelError::io(&self.path))?;
        file.seek(SeekFrom::Start(self.data_start + info.offset))
            .map_err(ModelError::io(&self.path))?;
        let mut buf = vec![0u8; len as usize];
        file.read_exact(&mut buf)
            .map_err(ModelError::io(&self.path))?;
        Ok(buf)
    }

    /// Reads and dequantises the tensor `name` into an `f32` tensor of its PyTorch shape on `device`.
    pub fn tensor(&self, name: &str, device: Device) -> Result<Tensor> {
        let info = self
            .tensor_info(name)
            .ok_or_else(|| ModelError::MissingTensor {
                path: self.path.clone(),
                name: name.to_owned(),
            })?;
        let raw = self.read_raw(info)?;
        let values = dequantize(info.ggml_type, &raw)
            .map_err(|reason| self.invalid(format!("tensor `{name}`: {reason}")))?;
        Ok(Tensor::from_slice(&values)
            .f_reshape(info.shape())?
            .f_to_device(device)?)
    }

    /// The 4-bit blocks of tensor `name` when it is stored as Q4_0 or Q4_1 (`Ok(None)` for any
    /// other type).
    pub fn q4_blocks(&self, name: &str) -> Result<Option<Q4Blocks>> {
        let info = self
            .tensor_info(name)
            .ok_or_else(|| ModelError::MissingTensor {
                path: self.path.clone(),
                name: name.to_owned(),
            })?;
        if !matches!(info.ggml_type, GgmlType::Q4_0 | GgmlType::Q4_1) {
            return Ok(None);
        }
        let raw = self.read_raw(info)?;
        q4_blocks(info.ggml_type, &raw)
            .map(Some)
            .ok_or_else(|| self.invalid(format!("tensor `{name}`: truncated Q4 blocks")))
    }

    /// Reads and dequantises every tensor, in file order, keeping one file handle open.
    pub fn tensors_f32(&self, device: Device) -> Result<Vec<(String, Tensor)>> {
        let mut infos: Vec<&TensorInfo> = self.tensors.iter().collect();
        infos.sort_by_key(|t| t.offset);
        let file = File::open(&self.path).map_err(ModelError::io(&self.path))?;
        let mut reader = BufReader::with_capacity(1 << 20, file);
        let mut out = Vec::with_capacity(infos.len());
        for info in infos {
            let len = self.byte_len(info)?;
            reader
                .seek(SeekFrom::Start(self.data_start + info.offset))
                .map_err(ModelError::io(&self.path))?;
            let mut raw = vec![0u8; len as usize];
            reader
                .read_exact(&mut raw)
                .map_err(ModelError::io(&self.path))?;
            let values = dequantize(info.ggml_type, &raw)
                .map_err(|reason| self.invalid(format!("tensor `{}`: {reason}", info.name)))?;
            let tensor = Tensor::from_slice(&values)
                .f_reshape(info.shape())?
                .f_to_device(device)?;
            out.push((info.name.clone(), tensor));
        }
        Ok(out)
    }
}

/// The 4-bit values of a Q4_0 or Q4_1 tensor with one scale and one offset per block of 32:
/// weight = `scale · q + offset`, exactly as ggml dequantises them (Q4_0: `offset = -8 · scale`).
#[derive(Debug, Clone, PartialEq)]
pub struct Q4Blocks {
    /// One value in 0..=15 per weight, in element order.
    pub values: Vec<u8>,
    /// Per block of 32 weights.
    pub scales: Vec<f32>,
    /// Per block of 32 weights.
    pub offsets: Vec<f32>,
}

/// Splits Q4_0 / Q4_1 blocks into their 4-bit values, scales and offsets (`None` for other
/// types). Within a block the low nibbles are weights 0..16 and the high nibbles 16..32.
pub fn q4_blocks(ty: GgmlType, raw: &[u8]) -> Option<Q4Blocks> {
    let (header, bytes) = match ty {
        GgmlType::Q4_0 => (2, 18),
        GgmlType::Q4_1 => (4, 20),
        _ => return None,
    };
    if !raw.len().is_multiple_of(bytes) {
        return None;
    }
    let blocks = raw.len() / bytes;
    let mut out = Q4Blocks {
        values: Vec::with_capacity(blocks * 32),
        scales: Vec::with_capacity(blocks),
        offsets: Vec::with_capacity(blocks),
    };
    for b in raw.chunks_exact(bytes) {
        let d = f16_to_f32(u16::from_le_bytes([b[0], b[1]]));
        let m = if ty == GgmlType::Q4_1 {
            f16_to_f32(u16::from_le_bytes([b[2], b[3]]))
        } else {
            -8.0 * d
        };
        let qs = &b[header..bytes];
        out.values.extend(qs.iter().map(|&q| q & 0x0f));
        out.values.extend(qs.iter().map(|&q| q >> 4));
        out.scales.push(d);
        out.offsets.push(m);
    }
    Some(out)
}

/// Dequantises `raw` blocks of type `ty` to `f32`, as ggml's `dequantize_row_*` does.
pub fn dequantize(ty: GgmlType, raw: &[u8]) -> std::result::Result<Vec<f32>, String> {
    let Some((per_block, block_bytes)) = ty.block() else {
        return Err(format!("ggml type {ty:?} cannot be dequantised"));
    };
    if !raw.len().is_multiple_of(block_bytes) {
        return Err(format!(
            "{} bytes is not a whole number of {ty:?} blocks",
            raw.len()
        ));
    }
    let mut out = Vec::with_capacity(raw.len() / block_bytes * per_block);
    let blocks = raw.chunks_exact(block_bytes);
    match ty {
        GgmlType::F32 => out.extend(blocks.map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))),
        GgmlType::F16 => out.extend(blocks.map(|b| f16_to_f32(u16::from_le_bytes([b[0], b[1]])))),
        GgmlType::BF16 => out.extend(
            blocks.map(|b| f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16)),
        ),
        GgmlType::Q4_0 => {
            for b in blocks {
                let d = f16_to_f32(u16::from_le_bytes([b[0], b[1]]));
                let qs = &b[2..18];
                out.extend(qs.iter().map(|&q| (i32::from(q & 0x0f) - 8) as f32 * d));
                out.extend(qs.iter().map(|&q| (i32::from(q >> 4) - 8) as f32 * d));
            }
        }
        GgmlType::Q4_1 => {
            for b in blocks {
                let d = f16_to_f32(u16::from_le_bytes([b[0], b[1]]));
                let m = f16_to_f32(u16::from_le_bytes([b[2], b[3]]));
                let qs = &b[4..20];
                out.extend(qs.iter().map(|&q| f32::from(q & 0x0f) * d + m));
                out.extend(qs.iter().map(|&q| f32::from(q >> 4) * d + m));
            }
        }
        GgmlType::Q8_0 => {
            for b in blocks {
                let d = f16_to_f32(u16::from_le_bytes([b[0], b[1]]));
                out.extend(b[2..34].iter().map(|&q| f32::from(q as i8) * d));
            }
        }
        GgmlType::Other(_) => unreachable!("block() is None for Other"),
    }
    Ok(out)
}

/// IEEE 754 binary16 to binary32, exact (subnormals, infinities and NaN included).
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h >> 15) << 31;
    let exp = u32::from((h >> 10) & 0x1f);
    let mant = u32::from(h & 0x3ff);
    let bits = match (exp, mant) {
        (0, 0) => sign,
        (0, _) => {
            // Subnormal: value = mant * 2^-24; normalise it.
            let shift = mant.leading_zeros() - 21; // bring the top set bit to bit 10
            let mant = (mant << shift) & 0x3ff;
            let exp = 127 - 15 + 1 - shift;
            sign | (exp << 23) | (mant << 13)
        }
        (0x1f, _) => sign | 0x7f80_0000 | (mant << 13),
        _ => sign | ((exp + 127 - 15) << 23) | (mant << 13),
    };
    f32::from_bits(bits)
}

/// Inverse of llama.cpp's `LlamaModel.permute` (convert_hf_to_gguf.py) for the Q and K projections:
/// GGUF stores each head's rows interleaved (pairs for GPT-J style rotation); Hugging Face's
/// `rotate_half` layout keeps the two halves apart. Same as transformers'
/// `_reverse_permute_weights`: `w.reshape(heads, dim/2, 2, in).swapaxes(1, 2).reshape(w.shape)`.
pub fn unpermute_qk(weight: &Tensor, heads: i64) -> Result<Tensor> {
    let shape = weight.size();
    let rows = shape[0];
    if heads <= 0 || rows % (2 * heads) != 0 {
        return Err(ModelError::Unsupported(format!(
            "cannot un-permute a Q/K weight of shape {shape:?} over {heads} heads"
        )));
    }
    let mut split = vec![heads, rows / heads / 2, 2];
    split.extend_from_slice(&shape[1..]);
    Ok(weight
        .f_reshape(&split)?
        .f_swapaxes(1, 2)?
        .f_reshape(&shape)?
        .f_contiguous()?)
}

struct HeaderReader<'a> {
    inner: BufReader<File>,
    path: &'a Path,
    pos: u64,
}

impl HeaderReader<'_> {
    fn invalid(&self, reason: String) -> ModelError {
        ModelError::Gguf {
            path: self.path.to_path_buf(),
            reason,
        }
    }

    fn bytes<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut buf = [0u8; N];
        self.inner
            .read_exact(&mut buf)
            .map_err(|e| self.invalid(format!("header truncated at byte {}: {e}", self.pos)))?;
        self.pos += N as u64;
        Ok(buf)
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.bytes()?))
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.bytes()?))
    }

    fn len(&mut self, what: &str) -> Result<u64> {
        let n = self.u64()?;
        if n > MAX_LEN {
            return Err(self.invalid(format!(
                "{what} {n} at byte {} is implausible",
                self.pos - 8
            )));
        }
        Ok(n)
    }

    fn string(&mut self) -> Result<String> {
        let n = self.len("string length")? as usize;
        let mut buf = vec![0u8; n];
        self.inner
            .read_exact(&mut buf)
            .map_err(|e| self.invalid(format!("header truncated at byte {}: {e}", self.pos)))?;
        self.pos += n as u64;
        String::from_utf8(buf).map_err(|_| {
            self.invalid(format!(
                "string at byte {} is not UTF-8",
                self.pos - n as u64
            ))
        })
    }

    fn value(&mut self, type_id: u32, key: &str) -> Result<MetadataValue> {
        Ok(match type_id {
            0 => MetadataValue::U8(u8::from_le_bytes(self.bytes()?)),
            1 => MetadataValue::I8(i8::from_le_bytes(self.bytes()?)),
            2 => MetadataValue::U16(u16::from_le_bytes(self.bytes()?)),
            3 => MetadataValue::I16(i16::from_le_bytes(self.bytes()?)),
            4 => MetadataValue::U32(self.u32()?),
            5 => MetadataValue::I32(i32::from_le_bytes(self.bytes()?)),
            6 => MetadataValue::F32(f32::from_le_bytes(self.bytes()?)),
            7 => match self.bytes::<1>()?[0] {
                0 => MetadataValue::Bool(false),
                1 => MetadataValue::Bool(true),
                b => return Err(self.invalid(format!("metadata `{key}`: bool byte {b}"))),
            },
            8 => MetadataValue::String(self.string()?),
            9 => {
                let elem = self.u32()?;
                let n = self.len("array length")?;
                let mut items = Vec::with_capacity(n.min(1 << 20) as usize);
                for _ in 0..n {
                    items.push(self.value(elem, key)?);
                }
                MetadataValue::Array(items)
            }
            10 => MetadataValue::U64(self.u64()?),
            11 => MetadataValue::I64(i64::from_le_bytes(self.bytes()?)),
            12 => MetadataValue::F64(f64::from_le_bytes(self.bytes()?)),
            other => {
                return Err(
                    self.invalid(format!("metadata `{key}` has unknown value type {other}"))
                );
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    #[test]
    fn f16_conversion_is_exact() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x7bff), 65504.0);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert_eq!(f16_to_f32(0x03ff), 1023.0 * 2f32.powi(-24));
        assert_eq!(f16_to_f32(0x8000).to_bits(), (-0.0f32).to_bits());
        assert!(f16_to_f32(0x7c00).is_infinite());
        assert!(f16_to_f32(0x7e00).is_nan());
    }

    #[test]
    fn q4_0_block_by_hand() {
        // d = 0.5, nibbles: low = j % 16, high = 15 - j % 16
        let mut block = vec![0x00, 0x38];
        block.extend((0u8..16).map(|j| j | ((15 - j) << 4)));
        let v = dequantize(GgmlType::Q4_0, &block).unwrap();
        assert_eq!(v.len(), 32);
        assert_eq!(v[0], -4.0);
        assert_eq!(v[15], 3.5);
        assert_eq!(v[16], 3.5);
        assert_eq!(v[31], -4.0);
    }

    #[test]
    fn q4_blocks_give_back_the_dequantised_values() {
        let mut raw = Vec::new();
        // Q4_1: d = 0.5, m = -1.0, values 0..16 then 15..0.
        raw.extend_from_slice(&0x3800u16.to_le_bytes());
        raw.extend_from_slice(&0xbc00u16.to_le_bytes());
        raw.extend((0..16u8).map(|i| i | ((15 - i) << 4)));
        let q = q4_blocks(GgmlType::Q4_1, &raw).unwrap();
        let values = dequantize(GgmlType::Q4_1, &raw).unwrap();
        let again: Vec<f32> = q
            .values
            .iter()
            .map(|&v| f32::from(v) * q.scales[0] + q.offsets[0])
            .collect();
        assert_eq!(again, values);
        // Q4_0: offset = -8 d.
        let mut raw = 0x3c00u16.to_le_bytes().to_vec();
        raw.extend((0..16u8).map(|i| i | (i << 4)));
        let q = q4_blocks(GgmlType::Q4_0, &raw).unwrap();
        let values = dequantize(GgmlType::Q4_0, &raw).unwrap();
        let again: Vec<f32> = q
            .values
            .iter()
            .map(|&v| f32::from(v) + q.offsets[0])
            .collect();
        assert_eq!(again, values);
        assert!(q4_blocks(GgmlType::Q8_0, &[0; 34]).is_none());
    }

    #[test]
    fn q8_0_block_by_hand() {
        let mut block = vec![0x00, 0x3c]; // d = 1
        block.extend((0..32).map(|j: i32| (j - 16) as i8 as u8));
        let v = dequantize(GgmlType::Q8_0, &block).unwrap();
        assert_eq!(v[0], -16.0);
        assert_eq!(v[31], 15.0);
        assert!(dequantize(GgmlType::Q8_0, &block[..33]).is_err());
    }

    #[test]
    fn unpermute_inverts_llama_cpp_permute() {
        // llama.cpp: w.reshape(h, 2, rows/h/2, in).swapaxes(1, 2).reshape(rows, in)
        let (heads, rows, cols) = (3, 12, 5);
        let hf = Tensor::arange(rows * cols, (Kind::Float, Device::Cpu)).reshape([rows, cols]);
        let permuted = hf
            .reshape([heads, 2, rows / heads / 2, cols])
            .swapaxes(1, 2)
            .reshape([rows, cols]);
        assert!(!permuted.equal(&hf));
        assert!(unpermute_qk(&permuted, heads).unwrap().equal(&hf));
    }
}
