//! Loading safetensors checkpoints into a [`tch::nn::VarStore`] with strict checks.
//!
//! tch's own `VarStore::load` reports a missing tensor but not a mismatched shape in terms a user can
//! act on; here every variable the model defines must be present with exactly the expected shape,
//! and the error names the tensor as the checkpoint spells it.
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use tch::{Tensor, nn::VarStore};

use crate::error::{ModelError, Result};

/// The tensors of one safetensors file, by name.
#[derive(Debug)]
pub struct Checkpoint {
    path: PathBuf,
    tensors: HashMap<String, Tensor>,
}

impl Checkpoint {
    /// Reads a `.safetensors` file.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        if !path.is_file() {
            return Err(ModelError::Io {
                path,
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
            });
        }
        let tensors = Tensor::read_safetensors(&path)?.into_iter().collect();
        Ok(Self { path, tensors })
    }

    /// The file this checkpoint was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the checkpoint holds a tensor of this name.
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// The first of `candidates` under which `probe` exists (e.g. `""` or `"bert."`).
    /// The prefix of a BERT encoder's tensors: `""` (sentence encoders) or `"bert."`
    /// (`BertFor*` checkpoints); an error naming the probe tensor when neither holds it.
    pub fn bert_prefix(&self) -> Result<&'static str> {
        const PROBE: &str = "embeddings.word_embeddings.weight";
        self.detect_prefix(PROBE, &["", "bert."])
            .ok_or_else(|| ModelError::MissingTensor {
                path: self.path.clone(),
                name: PROBE.to_owned(),
            })
    }

    /// The first of `candidates` under which the checkpoint holds the tensor `probe`.
    pub fn detect_prefix<'a>(&self, probe: &str, candidates: &[&'a str]) -> Option<&'a str> {
        candidates
            .iter()
            .copied()
            .find(|prefix| self.contains(&format!("{prefix}{probe}")))
    }

    /// Copies every variable of `vs` from the tensor named `prefix + variable name`, checking
    /// shapes; tensors of the checkpoint the model does not use (e.g. a pooler) are ignored.
    pub fn load_into(&self, vs: &VarStore, prefix: &str) -> Result<()> {
        let mut variables: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        variables.sort_by(|a, b| a.0.cmp(&b.0));
        tch::no_grad(|| {
            for (name, mut var) in variables {
                let full = format!("{prefix}{name}");
                let src = self
                    .tensors
                    .get(&full)
                    .ok_or_else(|| ModelError::MissingTensor {
                        path: self.path.clone(),
                        name: full.clone(),
                    })?;
                if src.size() != var.size() {
                    return Err(ModelError::ShapeMismatch {
                        path: self.path.clone(),
                        name: full,
                        expected: var.size(),
                        found: src.size(),
                    });
                }
                var.f_copy_(&src.f_to_kind(var.kind())?)?;
            }
            Ok(())
        })
    }
}
