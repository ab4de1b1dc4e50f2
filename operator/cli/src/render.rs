//! `kubectl switchboard render <router> -f <manifests>`: the RuntimeConfig the operator would
//! write for a Router, compiled locally by the one RuntimeConfig compiler
//! (`switchboard_crds::compile::compile`), without a cluster.
//!
//! Manifests carry no status, so by default the render shows the steady state: every
//! KnowledgeBase without a status serves generation `--index-generation`, every AdapterPatch
//! without a status serves `spec.version` as its stable version, and every Experiment without a
//! status is running with its range of the Router's experiment layer, allocated in manifest order
//! (one that finds the layer full stays pending). Objects exported with their status (`kubectl get -o yaml`) render as they are.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::Value;
use switchboard_crds::adapter_patch::{AdapterPatchStatus, AdapterPhase};
use switchboard_crds::compile::{CompileInput, compile};
use switchboard_crds::experiment::{ExperimentPhase, ExperimentStatus};
use switchboard_crds::knowledge_base::KnowledgeBaseStatus;
use switchboard_crds::{
    AdapterPatch, Experiment, KnowledgeBase, Resource, Router, resource_from_value,
};
use switchboard_policy::experiment::allocate;

use crate::output::OutputFormat;

/// Arguments of `render`.
#[derive(Debug, Args)]
pub struct RenderArgs {
    /// The Router.
    router: String,
    /// Manifest files or directories (`*.yaml`, `*.yml`, `*.json`); repeatable.
    #[arg(short = 'f', long = "filename", required = true, value_name = "PATH")]
    files: Vec<PathBuf>,
    /// Read directories recursively.
    #[arg(short = 'R', long)]
    recursive: bool,
    /// The Router's namespace, when several Routers share its name.
    #[arg(short, long)]
    namespace: Option<String>,
    /// Index generation assumed for a KnowledgeBase without status.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(i64).range(1..))]
    index_generation: i64,
}

/// The Switchboard resources of a set of manifests.
#[derive(Debug, Default)]
pub struct Manifests {
    /// KnowledgeBases.
    pub knowledge_bases: Vec<KnowledgeBase>,
    /// AdapterPatches.
    pub adapter_patches: Vec<AdapterPatch>,
    /// Routers.
    pub routers: Vec<Router>,
    /// Experiments.
    pub experiments: Vec<Experiment>,
}

fn is_manifest(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml" | "json")
    )
}

fn collect_files(path: &Path, recursive: bool, top: bool, out: &mut Vec<PathBuf>) -> Result<()> {
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    if meta.is_dir() {
        if !top && !recursive {
            return Ok(());
        }
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
            .with_context(|| format!("listing {}", path.display()))?
            .map(|e| e.map(|e| e.path()))
            .collect::<std::io::Result<_>>()?;
        entries.sort();
        for entry in entries {
            if entry.is_dir() || is_manifest(&entry) {
                collect_files(&entry, recursive, false, out)?;
            }
        }
    } else {
        out.push(path.to_owned());
    }
    Ok(())
}

impl Manifests {
    /// Reads every manifest file under `paths`. Documents of other API groups (a Secret, a
    /// Namespace) are skipped; a malformed Switchboard document is an error naming file,
    /// document and field.
    pub fn read(paths: &[PathBuf], recursive: bool) -> Result<Self> {
        let mut files = Vec::new();
        for path in paths {
            collect_files(path, recursive, true, &mut files)?;
        }
        let mut manifests = Self::default();
        for file in files {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            manifests
                .add_yaml(&text)
                .with_context(|| format!("in {}", file.display()))?;
        }
        Ok(manifests)
    }

    /// Adds the Switchboard resources of a YAML (or JSON) stream.
    pub fn add_yaml(&mut self, text: &str) -> Result<()> {
        // What kubectl would refuse is refused here too (see switchboard_crds::yaml).
        switchboard_crds::check_kubectl_compatible(text).map_err(|e| {
            anyhow::anyhow!("document {}: not valid YAML for kubectl: {e}", e.document)
        })?;
        for (index, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let value: Value = serde::Deserialize::deserialize(document)
                .with_context(|| format!("document {index}: not valid YAML"))?;
            let is_ours = value
                .get("apiVersion")
                .and_then(Value::as_str)
                .is_some_and(|v| v.starts_with(&format!("{}/", switchboard_crds::GROUP)));
            if !is_ours {
                continue;
            }
            let resource = resource_from_value(value)
                .map_err(|errors| anyhow::anyhow!("document {index}: {errors}"))?;
            match resource {
                Resource::KnowledgeBase(r) => self.knowledge_bases.push(r),
                Resource::AdapterPatch(r) => self.adapter_patches.push(r),
                Resource::Router(r) => self.routers.push(r),
                Resource::Experiment(r) => self.experiments.push(r),
            }
        }
        Ok(())
    }

    /// Gives objects without status the steady-state status described in the module docs.
    pub fn assume_steady_state(&mut self, index_generation: i64) {
        for kb in &mut self.knowledge_bases {
            kb.status.get_or_insert_with(|| KnowledgeBaseStatus {
                index_generation: Some(index_generation),
                ..KnowledgeBaseStatus::default()
            });
        }
        for patch in &mut self.adapter_patches {
            let version = patch.spec.version.clone();
            patch.status.get_or_insert_with(|| AdapterPatchStatus {
                phase: AdapterPhase::Promoted,
                stable_version: Some(version),
                ..AdapterPatchStatus::default()
            });
        }
        // Experiments without status start in manifest order, each given its range of its
        // Router's layer as the operator would; one that finds the layer full stays Pending.
        for i in 0..self.experiments.len() {
            if self.experiments[i].status.is_some() {
                continue;
            }
            let x = &self.experiments[i];
            let occupied: Vec<_> = self
                .experiments
                .iter()
                .filter(|o| {
                    o.metadata.namespace == x.metadata.namespace
                        && o.spec.router_ref == x.spec.router_ref
                })
                .filter_map(|o| o.status.as_ref())
                .filter(|s| s.phase == ExperimentPhase::Running)
                .filter_map(|s| s.allocation)
                .collect();
            let allocation = allocate(x.spec.traffic.fraction(), &occupied).ok();
            self.experiments[i].status = Some(ExperimentStatus {
                phase: if allocation.is_some() {
                    ExperimentPhase::Running
                } else {
                    ExperimentPhase::Pending
                },
                allocation,
                ..ExperimentStatus::default()
            });
        }
    }

    /// The Router `name` (in `namespace` when given).
    pub fn router(&self, name: &str, namespace: Option<&str>) -> Result<&Router> {
        let found: Vec<&Router> = self
            .routers
            .iter()
            .filter(|r| r.metadata.name.as_deref() == Some(name))
            .filter(|r| namespace.is_none_or(|ns| r.metadata.namespace.as_deref() == Some(ns)))
            .collect();
        match found.as_slice() {
            [one] => Ok(one),
            [] => {
                let known: Vec<String> = self
                    .routers
                    .iter()
                    .map(|r| {
                        format!(
                            "{}/{}",
                            r.metadata.namespace.as_deref().unwrap_or(""),
                            r.metadata.name.as_deref().unwrap_or("")
                        )
                    })
                    .collect();
                bail!(
                    "no Router {name}{} in the manifests (Routers found: {})",
                    namespace
                        .map(|n| format!(" in namespace {n}"))
                        .unwrap_or_default(),
                    if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    }
                )
            }
            _ => bail!("several Routers are named {name}: pick one with --namespace"),
        }
    }
}

/// Compiles the RuntimeConfig of Router `name` from `manifests` (with their status as given).
pub fn render_config(
    manifests: &Manifests,
    name: &str,
    namespace: Option<&str>,
) -> Result<switchboard_crds::compile::Compiled> {
    let router = manifests.router(name, namespace)?;
    let router_namespace = router.metadata.namespace.clone().unwrap_or_default();
    let kb_name = &router.spec.knowledge_base_ref.name;
    let knowledge_base = manifests
        .knowledge_bases
        .iter()
        .find(|kb| {
            kb.metadata.name.as_deref() == Some(kb_name.as_str())
                && kb.metadata.namespace.clone().unwrap_or_default() == router_namespace
        })
        .with_context(|| {
            format!("Router {name} references KnowledgeBase {router_namespace}/{kb_name}, which is not in the manifests")
        })?;
    compile(CompileInput {
        router,
        knowledge_base,
        adapters: &manifests.adapter_patches,
        experiments: &manifests.experiments,
        // As the operator would compile it now (a holdout without status starts with it).
        holdout: switchboard_crds::compile::HoldoutPins::of(
            router,
            k8s_openapi::jiff::Timestamp::now(),
        ),
    })
    .with_context(|| format!("compiling Router {router_namespace}/{name}"))
}

/// Runs `render`: the RuntimeConfig JSON on stdout (both output formats), what was left out on
/// stderr.
pub fn run(args: &RenderArgs, _format: OutputFormat, out: &mut dyn Write) -> Result<()> {
    let mut manifests = Manifests::read(&args.files, args.recursive)?;
    manifests.assume_steady_state(args.index_generation);
    let compiled = render_config(&manifests, &args.router, args.namespace.as_deref())?;
    serde_json::to_writer_pretty(&mut *out, &compiled.config)?;
    writeln!(out)?;
    for skipped in &compiled.skipped {
        eprintln!(
            "note: {} {} left out ({}): {}",
            skipped.kind, skipped.name, skipped.reason, skipped.message
        );
    }
    Ok(())
}
