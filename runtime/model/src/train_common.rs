//! What the in-project trainers share: reading a BERT checkpoint's configuration for training,
//! and AdamW on a warm-up + linear-decay schedule with gradient clipping.
use std::path::Path;

use serde_json::Value;
use tch::Tensor;
use tch::nn::{self, OptimizerConfig};

use crate::bert::BertConfig;
use crate::error::{ModelError, Result, read_json};

/// A checkpoint's `config.json`, raw (rewritten on save) and parsed (validated).
pub(crate) fn read_config(dir: &Path) -> Result<(Value, BertConfig)> {
    let path = dir.join("config.json");
    let raw: Value = read_json(&path)?;
    let cfg: BertConfig = serde_json::from_value(raw.clone())
        .map_err(|source| ModelError::Config { path, source })?;
    cfg.validate()?;
    Ok((raw, cfg))
}

/// Checks `max_len` against the checkpoint and resolves the training dropout (`None`: the
/// checkpoint's `hidden_dropout_prob`, else 0.1).
pub(crate) fn check_inputs(
    max_len: usize,
    dropout: Option<f64>,
    raw: &Value,
    cfg: &BertConfig,
) -> Result<f64> {
    if max_len < 8 || max_len > cfg.max_position_embeddings as usize {
        return Err(ModelError::InvalidRequest(format!(
            "max_len {max_len} must be in 8..={} (max_position_embeddings)",
            cfg.max_position_embeddings
        )));
    }
    let dropout = dropout.unwrap_or_else(|| {
        raw.get("hidden_dropout_prob")
            .and_then(Value::as_f64)
            .unwrap_or(0.1)
    });
    if !(0.0..1.0).contains(&dropout) {
        return Err(ModelError::InvalidRequest(format!(
            "dropout {dropout} must be in [0, 1)"
        )));
    }
    Ok(dropout)
}

/// AdamW whose learning rate follows [`schedule`], with gradient-norm clipping.
#[derive(Debug)]
pub(crate) struct ScheduledAdamW {
    optimizer: nn::Optimizer,
    peak: f64,
    warmup_share: f64,
    max_grad_norm: f64,
    step: usize,
    total_steps: usize,
}

impl ScheduledAdamW {
    pub(crate) fn new(
        vs: &nn::VarStore,
        peak: f64,
        weight_decay: f64,
        warmup_share: f64,
        max_grad_norm: f64,
    ) -> Result<Self> {
        let optimizer = nn::AdamW {
            wd: weight_decay,
            ..Default::default()
        }
        .build(vs, peak)?;
        Ok(Self {
            optimizer,
            peak,
            warmup_share,
            max_grad_norm,
            step: 0,
            total_steps: 0,
        })
    }

    /// The schedule's length; without it the learning rate stays at its peak.
    pub(crate) fn set_total_steps(&mut self, steps: usize) {
        self.total_steps = steps;
    }

    pub(crate) fn steps(&self) -> usize {
        self.step
    }

    /// The learning rate of the next step.
    pub(crate) fn learning_rate(&self) -> f64 {
        schedule(self.peak, self.step, self.total_steps, self.warmup_share)
    }

    /// One step on `loss`; `groups` run at a multiple of the rate (optimiser group, multiplier).
    /// Returns the loss before the step; a non-finite loss is refused before any update.
    pub(crate) fn step(&mut self, loss: &Tensor, groups: &[(usize, f64)]) -> Result<f64> {
        let value = f64::try_from(loss)?;
        if !value.is_finite() {
            return Err(ModelError::InvalidRequest(format!(
                "training diverged: loss {value} at step {}",
                self.step
            )));
        }
        // zero_grad registers the variables (and their groups) with the optimiser first.
        self.optimizer.zero_grad();
        let lr = self.learning_rate();
        self.optimizer.set_lr(lr);
        for &(group, multiplier) in groups {
            self.optimizer.set_lr_group(group, lr * multiplier);
        }
        loss.f_backward()?;
        self.optimizer.clip_grad_norm(self.max_grad_norm);
        self.optimizer.step();
        self.step += 1;
        Ok(value)
    }
}

/// Linear warm-up over `warmup_share` of `total` steps, then linear decay to 0 at `total`.
/// With `total = 0` (unknown), the peak.
pub(crate) fn schedule(peak: f64, step: usize, total: usize, warmup_share: f64) -> f64 {
    if total == 0 {
        return peak;
    }
    let warmup = ((total as f64) * warmup_share).ceil().max(1.0);
    let step = step as f64;
    if step < warmup {
        peak * (step + 1.0) / warmup
    } else {
        peak * ((total as f64 - step) / (total as f64 - warmup).max(1.0)).clamp(0.0, 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_warms_up_then_decays_to_zero() {
        let lr = |s| schedule(1.0, s, 10, 0.2);
        assert!((lr(0) - 0.5).abs() < 1e-12);
        assert!((lr(1) - 1.0).abs() < 1e-12);
        assert!((lr(2) - 1.0).abs() < 1e-12);
        assert!((lr(6) - 0.5).abs() < 1e-12);
        assert_eq!(lr(10), 0.0);
        assert_eq!(schedule(0.3, 5, 0, 0.1), 0.3);
    }
}
