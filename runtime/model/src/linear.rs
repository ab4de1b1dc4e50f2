//! Linear layers in the form decoding wants them.
//!
//! Generating a token multiplies one activation row by every weight of the model, so decoding on a
//! CPU is bound by how many bytes of weights it reads per token. Two forms:
//! - **dense**: the weight transposed to `[in, out]` and contiguous, so `x @ w` is one GEMM/GEMV
//!   with no transpose copy (what prompt prefill, many rows at once, wants);
//! - **int4**: 4-bit values in groups of 32 with a scale and an offset per group — exactly the
//!   GGUF Q4_0/Q4_1 storage, so nothing is requantised — packed for libtorch's CPU int4 kernel
//!   (`_weight_int4pack_mm_for_cpu`, bf16 activations: 1/8 of the bytes of f32 weights). Used for
//!   steps of up to [`INT4_MAX_ROWS`] rows (decoding one token for each of a few sequences), where
//!   reading the weights dominates; above it the dense weight is faster (the kernel's unpacking
//!   costs more than the bytes it saves once the step is compute-bound);
//! - **int8**: one byte per weight and one scale per output row (`_weight_int8pack_mm`), for the
//!   output head, whose GGUF source is Q8_0 (measured per decoding step on 2 cores: f32 5.1 ms,
//!   int8 2.1 ms, against 3.5 ms for all 30 layers' int4 projections).
//!
//! Kernel convention (PyTorch's `int4pack_mm` reference): `w = (q − 8) · scale + zero`, so a GGUF
//! block `w = d · q + m` becomes `scale = d`, `zero = m + 8d`.
use tch::{Device, Kind, Tensor};

use crate::error::{ModelError, Result};

/// Largest number of rows a step multiplies with the int4 weights.
pub const INT4_MAX_ROWS: i64 = 16;
/// Weights per group of the int4 form (GGUF's block size).
pub const INT4_GROUP: i64 = 32;

/// 4-bit weights packed for libtorch's CPU kernel.
#[derive(Debug)]
pub struct Int4Weight {
    packed: Tensor,
    scales_zeros: Tensor,
    out_features: i64,
}

/// 8-bit weights with one scale per output row, for libtorch's CPU int8 kernel.
#[derive(Debug)]
pub struct Int8Weight {
    weight: Tensor,
    scales: Tensor,
    out_features: i64,
}

/// The low-bit form of a layer.
#[derive(Debug)]
enum LowBit {
    Int4(Int4Weight),
    Int8(Int8Weight),
}

/// One (possibly fused) linear layer without bias.
#[derive(Debug)]
pub struct Linear {
    /// `[in, out]`, contiguous.
    dense: Tensor,
    low: Option<LowBit>,
}

/// 4-bit values (0..=15, `[out, in]` row-major), scales and offsets (`[out, in / 32]`) of a
/// weight: `w = scale · q + offset` per group of 32 along the input dimension.
#[derive(Debug)]
pub struct Q4Parts {
    /// `[out, in]` int32 values in 0..=15.
    pub values: Tensor,
    /// `[out, in / 32]` f32.
    pub scales: Tensor,
    /// `[out, in / 32]` f32.
    pub offsets: Tensor,
}

impl Q4Parts {
    /// Quantises a dense `[out, in]` weight to 4 bits per weight, asymmetric, per group of 32
    /// (the Q4_1 scheme: each group's minimum and range). `in` must be a multiple of 32.
    pub fn quantize(weight: &Tensor) -> Result<Self> {
        let size = weight.size();
        let [out, inp] = size[..] else {
            return Err(ModelError::InvalidRequest(format!(
                "quantising a weight of shape {size:?}"
            )));
        };
        if inp % INT4_GROUP != 0 {
            return Err(ModelError::Unsupported(format!(
                "int4 weights need an input size divisible by {INT4_GROUP}, got {inp}"
            )));
        }
        let groups =
            weight
                .f_to_kind(Kind::Float)?
                .f_reshape([out, inp / INT4_GROUP, INT4_GROUP])?;
        let min = groups.f_amin([-1], false)?;
        let max = groups.f_amax([-1], false)?;
        let scales = max.f_sub(&min)?.f_div_scalar(15.0)?.f_clamp_min(1e-12)?;
        let values = groups
            .f_sub(&min.f_unsqueeze(-1)?)?
            .f_div(&scales.f_unsqueeze(-1)?)?
            .f_round()?
            .f_clamp(0.0, 15.0)?
            .f_to_kind(Kind::Int)?
            .f_reshape([out, inp])?;
        Ok(Self {
            values,
            scales,
            offsets: min,
        })
    }

    /// The dense `[out, in]` f32 weight these parts encode.
    pub fn dequantize(&self) -> Result<Tensor> {
        let size = self.values.size();
        let (out, inp) = (size[0], size[1]);
        Ok(self
            .values
            .f_reshape([out, inp / INT4_GROUP, INT4_GROUP])?
            .f_to_kind(Kind::Float)?
            .f_mul(&self.scales.f_unsqueeze(-1)?)?
            .f_add(&self.offsets.f_unsqueeze(-1)?)?
            .f_reshape([out, inp])?)
    }

    /// Stacks the parts of several weights with the same input size along the output dimension
    /// (fused projections).
    pub fn cat(parts: &[Q4Parts]) -> Result<Self> {
        let values: Vec<&Tensor> = parts.iter().map(|p| &p.values).collect();
        let scales: Vec<&Tensor> = parts.iter().map(|p| &p.scales).collect();
        let offsets: Vec<&Tensor> = parts.iter().map(|p| &p.offsets).collect();
        Ok(Self {
            values: Tensor::f_cat(&values, 0)?,
            scales: Tensor::f_cat(&scales, 0)?,
            offsets: Tensor::f_cat(&offsets, 0)?,
        })
    }

    /// Applies a permutation of the output rows (the Q/K un-permutation of GGUF checkpoints).
    pub fn map_rows(self, f: impl Fn(&Tensor) -> Result<Tensor>) -> Result<Self> {
        Ok(Self {
            values: f(&self.values)?,
            scales: f(&self.scales)?,
            offsets: f(&self.offsets)?,
        })
    }
}

impl Int4Weight {
    /// Packs `parts` for the CPU kernel.
    pub fn pack(parts: &Q4Parts) -> Result<Self> {
        let out_features = parts.values.size()[0];
        let packed = parts
            .values
            .f_contiguous()?
            .f_internal_convert_weight_to_int4pack_for_cpu(1)?;
        // [in / 32, out, 2]: (scale, zero) with zero = offset + 8 · scale.
        let zeros = parts.offsets.f_add(&parts.scales.f_mul_scalar(8.0)?)?;
        let scales_zeros = Tensor::f_stack(&[parts.scales.f_tr()?, zeros.f_tr()?], -1)?
            .f_contiguous()?
            .f_to_kind(Kind::BFloat16)?;
        Ok(Self {
            packed,
            scales_zeros,
            out_features,
        })
    }
}

impl Linear {
    /// A dense layer from a checkpoint weight `[out, in]`, kept in `kind`.
    pub fn dense(weight: &Tensor, kind: Kind) -> Result<Self> {
        Ok(Self {
            dense: weight.f_to_kind(kind)?.f_tr()?.f_contiguous()?,
            low: None,
        })
    }

    /// A layer that multiplies few rows with an 8-bit copy of `weight` (`[out, in]`; symmetric,
    /// one scale per output row) and many with the dense weight.
    pub fn int8(weight: &Tensor, kind: Kind, device: Device) -> Result<Self> {
        let dense = Self::dense(weight, kind)?;
        if device != Device::Cpu {
            return Ok(dense);
        }
        let w = weight.f_to_kind(Kind::Float)?;
        let scales = w
            .f_abs()?
            .f_amax([1], false)?
            .f_div_scalar(127.0)?
            .f_clamp_min(1e-12)?;
        let q = w
            .f_div(&scales.f_unsqueeze(1)?)?
            .f_round()?
            .f_clamp(-127.0, 127.0)?
            .f_to_kind(Kind::Int8)?
            .f_contiguous()?;
        Ok(Self {
            low: Some(LowBit::Int8(Int8Weight {
                out_features: q.size()[0],
                weight: q,
                scales: scales.f_to_kind(Kind::BFloat16)?,
            })),
            ..dense
        })
    }

    /// A layer that multiplies few rows with 4-bit weights and many with the dense weight those
    /// weights encode (so both paths compute with the same numbers, up to bf16 activations).
    pub fn int4(parts: &Q4Parts, kind: Kind, device: Device) -> Result<Self> {
        let dense = parts.dequantize()?.f_to_device(device)?;
        let int4 = if device == Device::Cpu {
            Some(Int4Weight::pack(parts)?)
        } else {
            // The packed CPU layout is not what the CUDA kernel reads: dense on accelerators.
            None
        };
        Ok(Self {
            dense: dense.f_to_kind(kind)?.f_tr()?.f_contiguous()?,
            low: int4.map(LowBit::Int4),
        })
    }

    /// Whether this layer has a 4-bit form.
    pub fn is_int4(&self) -> bool {
        matches!(self.low, Some(LowBit::Int4(_)))
    }

    /// Output features.
    pub fn out_features(&self) -> i64 {
        self.dense.size()[1]
    }

    /// `x @ Wᵀ` for `x` of shape `[..., in]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let size = x.size();
        let inp = *size.last().unwrap_or(&0);
        let rows = size[..size.len().saturating_sub(1)].iter().product::<i64>();
        if let Some(low) = &self.low
            && rows <= INT4_MAX_ROWS
        {
            let x16 = x.f_reshape([rows, inp])?.f_to_kind(Kind::BFloat16)?;
            let (y, out) = match low {
                LowBit::Int4(q) => (
                    x16.f_internal_weight_int4pack_mm_for_cpu(
                        &q.packed,
                        INT4_GROUP,
                        &q.scales_zeros,
                    )?,
                    q.out_features,
                ),
                LowBit::Int8(q) => (
                    x16.f_internal_weight_int8pack_mm(&q.weight, &q.scales)?,
                    q.out_features,
                ),
            };
            let mut shape = size;
            if let Some(last) = shape.last_mut() {
                *last = out;
            }
            return Ok(y.f_to_kind(x.kind())?.f_reshape(shape)?);
        }
        Ok(x.f_matmul(&self.dense)?)
    }

    /// The dense weight as the checkpoint spells it: `[out, in]` (a transposed view, rows
    /// `offset .. offset + len` of the fused output).
    pub fn weight_rows(&self, offset: i64, len: i64) -> Result<Tensor> {
        Ok(self.dense.f_narrow(1, offset, len)?.f_tr()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int4_steps_match_the_dense_weight_they_encode() {
        tch::manual_seed(3);
        let weight = Tensor::randn([96, 64], (Kind::Float, Device::Cpu)).f_mul_scalar(0.05);
        let parts = Q4Parts::quantize(&weight.unwrap()).unwrap();
        let dense = parts.dequantize().unwrap();
        // The 4-bit grid is within half a step of the original.
        let layer = Linear::int4(&parts, Kind::Float, Device::Cpu).unwrap();
        assert!(layer.is_int4());
        let x = Tensor::randn([3, 2, 64], (Kind::Float, Device::Cpu));
        let reference = x.matmul(&dense.tr());
        let few = layer.forward(&x).unwrap();
        assert_eq!(few.size(), [3, 2, 96]);
        // bf16 activations and scales: about 3 significant digits.
        let scale = reference.abs().max().double_value(&[]);
        let error = (&few - &reference).abs().max().double_value(&[]);
        assert!(error < 0.02 * scale, "{error} vs {scale}");
        // Many rows take the dense weight: f32 exact.
        let many = Tensor::randn([40, 64], (Kind::Float, Device::Cpu));
        let diff = (layer.forward(&many).unwrap() - many.matmul(&dense.tr()))
            .abs()
            .max()
            .double_value(&[]);
        assert!(diff < 1e-5, "{diff}");
        assert_eq!(
            layer.weight_rows(10, 5).unwrap().size(),
            [5, 64],
            "checkpoint layout"
        );
    }
}
