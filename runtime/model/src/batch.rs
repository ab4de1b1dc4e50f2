//! Dynamic padding: tokenized inputs -> length-sorted, padded `[batch, seq]` tensors.
use tch::{Device, Tensor};

/// One tokenized input.
#[derive(Debug, Clone)]
pub(crate) struct Encoded {
    pub ids: Vec<u32>,
    pub type_ids: Vec<u32>,
}

/// A padded batch and the input positions its rows came from.
#[derive(Debug)]
pub(crate) struct PaddedBatch {
    /// `rows[r]` is the index (in the caller's input order) of row `r`.
    pub rows: Vec<usize>,
    pub input_ids: Tensor,
    pub attention_mask: Tensor,
    pub token_type_ids: Tensor,
}

/// Splits `inputs` into batches of at most `batch_size`, longest first (little compute is wasted
/// on padding), each padded only to its own longest member.
pub(crate) fn padded_batches(
    inputs: &[Encoded],
    batch_size: usize,
    device: Device,
) -> impl Iterator<Item = PaddedBatch> + '_ {
    let mut order: Vec<usize> = (0..inputs.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(inputs[i].ids.len()));
    let chunks: Vec<Vec<usize>> = order
        .chunks(batch_size.max(1))
        .map(<[usize]>::to_vec)
        .collect();
    chunks.into_iter().map(move |rows| {
        let seq = rows.iter().map(|&i| inputs[i].ids.len()).max().unwrap_or(0);
        let mut ids = vec![0i64; rows.len() * seq];
        let mut mask = vec![0i64; rows.len() * seq];
        let mut types = vec![0i64; rows.len() * seq];
        for (row, &i) in rows.iter().enumerate() {
            let input = &inputs[i];
            for (col, (&id, &ty)) in input.ids.iter().zip(&input.type_ids).enumerate() {
                ids[row * seq + col] = i64::from(id);
                mask[row * seq + col] = 1;
                types[row * seq + col] = i64::from(ty);
            }
        }
        let shape = [rows.len() as i64, seq as i64];
        let tensor = |data: &[i64]| Tensor::from_slice(data).view(shape).to_device(device);
        PaddedBatch {
            input_ids: tensor(&ids),
            attention_mask: tensor(&mask),
            token_type_ids: tensor(&types),
            rows,
        }
    })
}

/// A `[rows, width]` float tensor as row-major `f32`s on the CPU.
pub(crate) fn to_f32_rows(t: &Tensor) -> tch::Result<Vec<f32>> {
    Vec::try_from(
        t.to_kind(tch::Kind::Float)
            .to_device(Device::Cpu)
            .contiguous()
            .view([-1]),
    )
}
