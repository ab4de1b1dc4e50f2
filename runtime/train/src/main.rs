//! `switchboard-train`: trains a LoRA adapter (SFT or DPO) on a Llama-family base model, writes
//! it as a PEFT directory with its digest and a training report, and makes it the next version
//! of an AdapterPatch (a manifest for GitOps, or `--apply` through the Kubernetes API).
//! See docs/training.md.
#![forbid(unsafe_code)]

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use switchboard_artifact::PVC_ROOT;
use switchboard_train::alignment;
use switchboard_train::data::{self, LabelPolicy};
use switchboard_train::grpo::{self, GrpoSettings, RewardWeights};
use switchboard_train::manifest::{CurrentPatch, NextVersion, expand_output};
use switchboard_train::report::{Alignment, BaseModel, DataReport, PatchReport, TrainingReport};
use switchboard_train::train::{StepLog, TrainingLog};
use switchboard_train::{Hyperparameters, LoraSettings, Schedule, Trainer, apply, output};
use tch::Device;

#[derive(Parser, Debug)]
#[command(name = "switchboard-train", version, about)]
struct Cli {
    #[command(subcommand)]
    method: Method,
}

#[derive(Subcommand, Debug)]
enum Method {
    /// Supervised fine-tuning: learn the answers of SFT examples (or of the positively rated
    /// interactions of a flywheel export).
    Sft(Args),
    /// Direct preference optimisation: prefer the chosen over the rejected answers (or, from a
    /// flywheel export, the positively over the negatively rated answer to the same question).
    Dpo(Args),
    /// Group relative policy optimisation: sample --group answers per prompt from the adapter
    /// being trained, reward them (citations, groundedness, format, key facts), and move towards
    /// the better ones of each group under a KL to the reference (docs/training.md).
    Grpo(Args),
}

/// Which method a run uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Sft,
    Dpo,
    Grpo,
}

#[derive(clap::Args, Debug)]
struct Args {
    /// Base model: a GGUF file or a Hugging Face directory (loaded with dense f32 weights).
    #[arg(long, env = "SWITCHBOARD_TRAIN_MODEL")]
    model: PathBuf,
    /// Training data (JSONL): SFT examples, DPO pairs, or the outcome store's flywheel export.
    #[arg(long)]
    data: PathBuf,
    /// Held-out data (same format); without it, --held-out-fraction of --data is held out.
    #[arg(long)]
    held_out: Option<PathBuf>,
    /// Share of --data held out for evaluation when no --held-out file is given (0: none).
    #[arg(long, default_value_t = 0.1)]
    held_out_fraction: f64,
    /// Where the PEFT directory goes: pvc://<claim>/<path>, file:///<dir> or a directory.
    /// `{version}` and `{lineage}` are replaced by the new version and the AdapterPatch's lineage.
    #[arg(long)]
    output: String,
    /// Where PersistentVolumeClaims are mounted (pvc://<claim>/<path> is <pvc-root>/<claim>/<path>).
    #[arg(long, default_value = PVC_ROOT)]
    pvc_root: PathBuf,
    /// Replace an existing artifact directory (artifacts are immutable by default).
    #[arg(long)]
    overwrite: bool,
    /// Also write the training report here (it is always written into the artifact directory).
    #[arg(long)]
    report: Option<PathBuf>,
    /// LoRA rank (default: the AdapterPatch's lora.rank, else 8).
    #[arg(long)]
    rank: Option<i64>,
    /// LoRA alpha (default: the AdapterPatch's lora.alpha, else 2 x rank).
    #[arg(long)]
    alpha: Option<f64>,
    /// Modules to adapt, comma-separated PEFT names (default: the AdapterPatch's, else q_proj,v_proj).
    #[arg(long, value_delimiter = ',')]
    target_modules: Option<Vec<String>>,
    /// Peak learning rate (default 2e-4 for sft, 5e-5 for dpo).
    #[arg(long)]
    lr: Option<f64>,
    /// Passes over the training data.
    #[arg(long, default_value_t = 3)]
    epochs: usize,
    /// Examples (pairs) per forward pass.
    #[arg(long, default_value_t = 4)]
    batch_size: usize,
    /// Forward passes per optimizer step.
    #[arg(long, default_value_t = 1)]
    grad_accum: usize,
    /// Seed of the initialisation, the data order and the held-out split.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// AdamW weight decay.
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f64,
    /// Linear warm-up steps.
    #[arg(long, default_value_t = 0)]
    warmup_steps: usize,
    /// Learning-rate schedule after warm-up: constant, linear or cosine.
    #[arg(long, default_value = "linear")]
    schedule: Schedule,
    /// Clip the global gradient norm to this (0: no clipping).
    #[arg(long, default_value_t = 1.0)]
    max_grad_norm: f64,
    /// Drop examples longer than this many tokens (prompt + answer).
    #[arg(long, default_value_t = 1024)]
    max_seq_len: usize,
    /// DPO beta.
    #[arg(long, default_value_t = 0.1)]
    beta: f64,
    /// SFT: the loss on every assistant turn of a multi-turn example (`all`) or on the final
    /// answer only (`last`).
    #[arg(long, default_value = "all")]
    loss_turns: switchboard_train::train::LossTurns,
    /// Hot-fix (SFT): questions about the old behaviour with answers that say it changed
    /// (same format as --data), trained on and measured as their own set.
    #[arg(long)]
    negative_rejection: Option<PathBuf>,
    /// Hot-fix (SFT): stability anchors, good answers unrelated to the change. Part is trained
    /// on (kept), --anchor-held-out-fraction is held out to measure the regression.
    #[arg(long)]
    anchors: Option<PathBuf>,
    /// Share of the anchors held out to measure regression.
    #[arg(long, default_value_t = 0.5)]
    anchor_held_out_fraction: f64,
    /// Fail (no manifest, no --apply) when the anchors' held-out loss rises more than this
    /// share over the starting adapter's (0.05: 5%); the artifact and report are still written.
    #[arg(long, requires = "anchors")]
    max_anchor_regression: Option<f64>,
    /// Start from this PEFT directory (a previous version) instead of a fresh adapter.
    #[arg(long, conflicts_with = "from_previous")]
    init_adapter: Option<PathBuf>,
    /// Start from the AdapterPatch's current version (`spec.artifact.uri`, a pvc:// or file://
    /// directory on this machine).
    #[arg(long)]
    from_previous: bool,
    /// DPO: the reference policy, an SFT adapter's PEFT directory (default: the base model).
    /// The policy starts from it too; same rank and modules.
    #[arg(long)]
    reference_adapter: Option<PathBuf>,
    /// Red-team cases (JSONL: `prompt` or `messages`, `should_refuse`): refusal precision,
    /// recall and false-positive / false-negative rates before and after training.
    #[arg(long)]
    red_team: Option<PathBuf>,
    /// Factual cases (JSONL: `prompt` or `messages`, `key_facts`): the share of answers stating
    /// every key fact, before and after training.
    #[arg(long)]
    facts: Option<PathBuf>,
    /// Longest answer generated for --red-team and --facts.
    #[arg(long, default_value_t = 48)]
    eval_max_new_tokens: usize,
    /// GRPO: answers sampled per prompt (the group).
    #[arg(long, default_value_t = GrpoSettings::default().group)]
    group: usize,
    /// GRPO: prompts per optimizer step.
    #[arg(long, default_value_t = GrpoSettings::default().prompts_per_step)]
    prompts_per_step: usize,
    /// GRPO: optimizer steps (each samples a fresh batch; --epochs does not apply).
    #[arg(long, default_value_t = GrpoSettings::default().steps)]
    steps: usize,
    /// GRPO: longest sampled answer, in tokens.
    #[arg(long, default_value_t = GrpoSettings::default().max_new_tokens)]
    max_new_tokens: usize,
    /// GRPO: sampling temperature.
    #[arg(long, default_value_t = GrpoSettings::default().temperature)]
    temperature: f64,
    /// GRPO: sampling top-p.
    #[arg(long, default_value_t = GrpoSettings::default().top_p)]
    top_p: f64,
    /// GRPO: PPO clip range.
    #[arg(long, default_value_t = GrpoSettings::default().clip)]
    clip: f64,
    /// GRPO: initial KL coefficient.
    #[arg(long, default_value_t = GrpoSettings::default().kl_beta)]
    kl_beta: f64,
    /// GRPO: per-token KL target the coefficient adapts to (0: fixed).
    #[arg(long, default_value_t = GrpoSettings::default().kl_target)]
    kl_target: f64,
    /// GRPO: gradient steps per sampled batch.
    #[arg(long, default_value_t = GrpoSettings::default().inner_steps)]
    inner_steps: usize,
    /// GRPO: the reward's weights, `citations=1,groundedness=1,format=0.5,facts=1,resolution=1`.
    #[arg(
        long,
        default_value = "citations=1,groundedness=1,format=0.5,facts=1,resolution=1"
    )]
    reward_weights: RewardWeights,
    /// GRPO: sentence encoder for the groundedness reward.
    #[arg(
        long,
        env = "SWITCHBOARD_ENCODER",
        default_value = ".cache/models/all-MiniLM-L6-v2"
    )]
    encoder: PathBuf,
    /// L2 pull `λ · Σ‖θ - θ₀‖²` towards the starting weights (the previous version's, else the
    /// initialisation); 0: none.
    #[arg(long, default_value_t = 0.0)]
    l2_to_start: f64,
    /// Flywheel export: lowest CSAT of a positive interaction.
    #[arg(long, default_value_t = 4)]
    min_csat: i64,
    /// libtorch threads (default: libtorch's choice, one per core).
    #[arg(long)]
    threads: Option<i32>,
    /// `auto` (CUDA when available), `cpu`, `cuda` or `cuda:N`.
    #[arg(long, default_value = "auto")]
    device: String,
    /// `base_model_name_or_path` to record (default: the AdapterPatch's baseModel when it is a
    /// model id, else the model's Hugging Face id or file name).
    #[arg(long)]
    base_model_name: Option<String>,
    /// The AdapterPatch (YAML) the adapter becomes the next version of; with --apply, only its
    /// metadata is used and the object is read from the cluster.
    #[arg(long)]
    adapter_patch: Option<PathBuf>,
    /// AdapterPatch name (with --apply, instead of --adapter-patch).
    #[arg(long)]
    name: Option<String>,
    /// AdapterPatch namespace (default: the file's, else `default`).
    #[arg(long)]
    namespace: Option<String>,
    /// The new spec.version (default: the next minor version).
    #[arg(long)]
    version: Option<String>,
    /// The URI to put in the AdapterPatch when the directory is published elsewhere (e.g. pushed
    /// to an OCI registry after training); default: the --output location.
    #[arg(long)]
    artifact_uri: Option<String>,
    /// Write the next AdapterPatch manifest here (default: standard output).
    #[arg(long)]
    manifest_out: Option<PathBuf>,
    /// Patch the AdapterPatch in the cluster (KUBECONFIG or in-cluster service account).
    #[arg(long)]
    apply: bool,
}

fn device(spec: &str) -> anyhow::Result<Device> {
    Ok(match spec {
        "auto" => Device::cuda_if_available(),
        "cpu" => Device::Cpu,
        "cuda" => Device::Cuda(0),
        other => match other.strip_prefix("cuda:").map(str::parse) {
            Some(Ok(n)) => Device::Cuda(n),
            _ => bail!("--device {other}: auto, cpu, cuda or cuda:N"),
        },
    })
}

fn device_name(device: Device) -> String {
    match device {
        Device::Cuda(n) => format!("cuda:{n}"),
        Device::Mps => "mps".to_owned(),
        Device::Vulkan => "vulkan".to_owned(),
        Device::Cpu => "cpu".to_owned(),
    }
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switchboard-train: {}", message(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// The error and its causes, each said once (errors that print their source and also return
/// it as their `source()` would otherwise repeat it).
fn message(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
    }
    out
}

/// The training notes the next version carries (`training.switchboard.dev/*`): what it started
/// from, its anchors' regression, each set's held-out loss before -> after, and the version
/// they describe (the offline evaluation gate and a reviewer read them).
fn annotations(log: &TrainingLog, version: &str) -> std::collections::BTreeMap<String, String> {
    use switchboard_train::manifest::ANNOTATION_PREFIX as P;
    let mut out = std::collections::BTreeMap::new();
    out.insert(format!("{P}version"), version.to_owned());
    out.insert(format!("{P}method"), log.method.clone());
    out.insert(
        format!("{P}started-from"),
        log.started_from
            .clone()
            .unwrap_or_else(|| "a fresh adapter".to_owned()),
    );
    if let Some(r) = log.anchor_regression {
        out.insert(format!("{P}anchor-regression"), format!("{r:.4}"));
    }
    if !log.sets.is_empty() {
        let sets: serde_json::Map<String, serde_json::Value> = log
            .sets
            .iter()
            .map(|s| {
                (
                    s.set.as_str().to_owned(),
                    serde_json::json!({"before": s.loss_before, "after": s.loss_after,
                                       "heldOut": s.held_out_examples}),
                )
            })
            .collect();
        out.insert(
            format!("{P}held-out-loss"),
            serde_json::Value::Object(sets).to_string(),
        );
    } else if let Some(m) = log.final_held_out() {
        out.insert(format!("{P}held-out-loss"), format!("{:.4}", m.loss));
    }
    out
}

/// Where the current AdapterPatch comes from.
enum PatchSource {
    None,
    File(CurrentPatch),
    Cluster {
        client: kube::Client,
        runtime: tokio::runtime::Runtime,
        current: CurrentPatch,
    },
}

impl PatchSource {
    fn current(&self) -> Option<&CurrentPatch> {
        match self {
            Self::None => None,
            Self::File(c) | Self::Cluster { current: c, .. } => Some(c),
        }
    }
}

fn patch_source(args: &Args) -> anyhow::Result<PatchSource> {
    let file = args
        .adapter_patch
        .as_deref()
        .map(CurrentPatch::from_file)
        .transpose()?;
    if !args.apply {
        if args.name.is_some() {
            bail!(
                "--name reads the AdapterPatch from the cluster: add --apply, or give --adapter-patch FILE"
            );
        }
        return Ok(file.map_or(PatchSource::None, PatchSource::File));
    }
    let name = args
        .name
        .clone()
        .or_else(|| file.as_ref().map(CurrentPatch::name))
        .context(
            "--apply needs the AdapterPatch: --name (and --namespace) or --adapter-patch FILE",
        )?;
    let namespace = args
        .namespace
        .clone()
        .or_else(|| file.as_ref().map(CurrentPatch::namespace))
        .unwrap_or_else(|| "default".to_owned());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let (client, current) = runtime.block_on(async {
        let client = apply::client().await?;
        let current = apply::fetch(&client, &namespace, &name).await?;
        Ok::<_, switchboard_train::TrainError>((client, current))
    })?;
    Ok(PatchSource::Cluster {
        client,
        runtime,
        current,
    })
}

fn hyperparameters(args: &Args, kind: Kind, current: Option<&CurrentPatch>) -> Hyperparameters {
    let defaults = match kind {
        Kind::Sft => Hyperparameters::sft(),
        Kind::Dpo => Hyperparameters::dpo(),
        Kind::Grpo => Hyperparameters {
            learning_rate: 1e-4,
            ..Hyperparameters::dpo()
        },
    };
    let declared = current.map(CurrentPatch::lora);
    let rank = args
        .rank
        .or(declared.as_ref().map(|l| l.rank))
        .unwrap_or(defaults.lora.rank);
    let alpha = args.alpha.unwrap_or(match &declared {
        // The spec's alpha goes with the spec's rank; a new rank gets the CRD's default 2·rank.
        Some(l) if l.rank == rank => l.alpha,
        _ => 2.0 * rank as f64,
    });
    Hyperparameters {
        lora: LoraSettings {
            rank,
            alpha,
            target_modules: args
                .target_modules
                .clone()
                .or(declared.map(|l| l.target_modules))
                .unwrap_or(defaults.lora.target_modules),
        },
        learning_rate: args.lr.unwrap_or(defaults.learning_rate),
        epochs: args.epochs,
        batch_size: args.batch_size,
        grad_accum: args.grad_accum,
        seed: args.seed,
        weight_decay: args.weight_decay,
        warmup_steps: args.warmup_steps,
        schedule: args.schedule,
        max_grad_norm: args.max_grad_norm,
        max_seq_len: args.max_seq_len,
        beta: args.beta,
        loss_turns: args.loss_turns,
        l2_to_start: args.l2_to_start,
    }
}

fn log_step(step: &StepLog) {
    tracing::info!(
        epoch = step.epoch,
        step = %format!("{}/{}", step.step, step.total_steps),
        loss = %format!("{:.4}", step.loss),
        lr = %format!("{:.2e}", step.learning_rate),
        grad_norm = %format!("{:.3}", step.grad_norm),
        seconds = %format!("{:.2}", step.seconds),
        "step"
    );
}

/// Training and held-out data, read and mapped before the model is loaded.
enum Data {
    Sft {
        train: Vec<data::SftExample>,
        held: Vec<data::SftExample>,
        report: DataReport,
    },
    Dpo {
        train: Vec<data::DpoPair>,
        held: Vec<data::DpoPair>,
        report: DataReport,
    },
    Grpo {
        train: Vec<grpo::GrpoPrompt>,
        held: Vec<grpo::GrpoPrompt>,
        report: DataReport,
    },
}

/// Rows of a data file mapped to examples or pairs, with the file's statistics.
type Mapped<T> = switchboard_train::Result<(Vec<T>, data::DataStats)>;

/// The training and held-out items of `--data` and `--held-out` (or the held-out share of
/// `--data`), mapped by `map`, and the data report.
fn train_and_held<T>(
    args: &Args,
    policy: &LabelPolicy,
    map: impl Fn(&std::path::Path, Vec<data::Row>, usize, &LabelPolicy) -> Mapped<T>,
) -> anyhow::Result<(Vec<T>, Vec<T>, DataReport)> {
    let (rows, lines) = data::read_rows(&args.data)?;
    let (items, stats) = map(&args.data, rows, lines, policy)?;
    let (train, held, held_stats) = match &args.held_out {
        Some(path) => {
            let (rows, lines) = data::read_rows(path)?;
            let (held, s) = map(path, rows, lines, policy)?;
            (items, held, Some(s))
        }
        None => {
            let (t, h) = data::split(items, args.held_out_fraction, args.seed)?;
            (t, h, None)
        }
    };
    let report = DataReport {
        train: stats,
        held_out_fraction: held_stats.is_none().then_some(args.held_out_fraction),
        held_out: held_stats,
        hot_fix_sets: Vec::new(),
    };
    Ok((train, held, report))
}

/// Adds a hot-fix's negative-rejection and anchor sets (each split on its own) to `train`,
/// `held` and the report.
fn add_hot_fix_sets(
    args: &Args,
    policy: &LabelPolicy,
    train: &mut Vec<data::SftExample>,
    held: &mut Vec<data::SftExample>,
    report: &mut DataReport,
) -> anyhow::Result<()> {
    let sets = [
        (
            &args.negative_rejection,
            data::DataSet::NegativeRejection,
            args.held_out_fraction,
            "--negative-rejection",
        ),
        (
            &args.anchors,
            data::DataSet::Anchor,
            args.anchor_held_out_fraction,
            "--anchors",
        ),
    ];
    for (path, set, fraction, flag) in sets {
        let Some(path) = path else { continue };
        let (rows, lines) = data::read_rows(path)?;
        let (mut items, stats) = data::sft_examples(path, rows, lines, policy)
            .with_context(|| format!("{flag} {}", path.display()))?;
        for e in &mut items {
            e.set = set;
        }
        let (t, h) = data::split(items, fraction, args.seed)
            .with_context(|| format!("{flag} {}", path.display()))?;
        train.extend(t);
        held.extend(h);
        report.hot_fix_sets.push(stats);
    }
    Ok(())
}

fn read_data(args: &Args, kind: Kind, policy: &LabelPolicy) -> anyhow::Result<Data> {
    let hot_fix = args.negative_rejection.is_some() || args.anchors.is_some();
    if kind == Kind::Sft && args.reference_adapter.is_some() {
        bail!(
            "--reference-adapter is DPO's reference policy; an SFT run starts from --init-adapter"
        );
    }
    if kind != Kind::Sft && (hot_fix || args.l2_to_start > 0.0) {
        bail!(
            "--negative-rejection, --anchors and --l2-to-start are for sft (a hot-fix), not {kind:?}"
        );
    }
    if kind == Kind::Dpo && (args.init_adapter.is_some() || args.from_previous) {
        bail!("dpo starts from its reference: give --reference-adapter, not --init-adapter");
    }
    if !(0.0..1.0).contains(&args.anchor_held_out_fraction) || args.anchor_held_out_fraction == 0.0
    {
        bail!(
            "--anchor-held-out-fraction {}: in (0, 1): the anchors held out measure the regression",
            args.anchor_held_out_fraction
        );
    }
    Ok(match kind {
        Kind::Sft => {
            let (mut train, mut held, mut report) =
                train_and_held(args, policy, data::sft_examples)?;
            add_hot_fix_sets(args, policy, &mut train, &mut held, &mut report)?;
            Data::Sft {
                train,
                held,
                report,
            }
        }
        Kind::Dpo => {
            let (train, held, report) = train_and_held(args, policy, data::dpo_pairs)?;
            Data::Dpo {
                train,
                held,
                report,
            }
        }
        Kind::Grpo => {
            let stats = |path: &std::path::Path, n: usize| data::DataStats {
                file: path.to_path_buf(),
                lines: n,
                examples: n,
                ..data::DataStats::default()
            };
            let prompts = grpo::read_prompts(&args.data)?;
            let train_stats = stats(&args.data, prompts.len());
            let (train, held, held_stats) = match &args.held_out {
                Some(path) => {
                    let held = grpo::read_prompts(path)?;
                    let s = stats(path, held.len());
                    (prompts, held, Some(s))
                }
                None => {
                    let (t, h) = data::split(prompts, args.held_out_fraction, args.seed)?;
                    (t, h, None)
                }
            };
            Data::Grpo {
                train,
                held,
                report: DataReport {
                    train: train_stats,
                    held_out_fraction: held_stats.is_none().then_some(args.held_out_fraction),
                    held_out: held_stats,
                    hot_fix_sets: Vec::new(),
                },
            }
        }
    })
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let (kind, args) = match &cli.method {
        Method::Sft(a) => (Kind::Sft, a),
        Method::Dpo(a) => (Kind::Dpo, a),
        Method::Grpo(a) => (Kind::Grpo, a),
    };
    if let Some(n) = args.threads {
        tch::set_num_threads(n);
    }
    let source = patch_source(args)?;
    let current = source.current();
    let hp = hyperparameters(args, kind, current);
    hp.validate()?;
    let version = match current {
        Some(c) => Some(c.next_version(args.version.as_deref())?),
        None => args.version.clone(),
    };
    let lineage = current.map(|c| c.patch.spec.lineage.clone());
    if args.output.contains("{version}") && version.is_none() {
        bail!(
            "--output uses {{version}}: give --adapter-patch (the next version is computed) or --version"
        );
    }
    if args.output.contains("{lineage}") && lineage.is_none() {
        bail!("--output uses {{lineage}}: give --adapter-patch");
    }
    let out = expand_output(
        &args.output,
        version.as_deref().unwrap_or_default(),
        lineage.as_deref().unwrap_or_default(),
    );
    // Resolve the output before minutes of training, so a bad location fails at once.
    let (out_dir, out_uri) = output::resolve(&out, &args.pvc_root)?;
    output::check_free(&out_dir, &out_uri, args.overwrite)?;

    // Read and check the data before loading the model, so a bad file fails at once.
    let policy = LabelPolicy {
        min_positive_csat: args.min_csat,
        ..LabelPolicy::default()
    };
    let data = read_data(args, kind, &policy)?;

    // Where a hot-fix starts: a previous version's directory.
    let start_dir: Option<(PathBuf, String)> = match (&args.init_adapter, args.from_previous) {
        (Some(dir), _) => Some((dir.clone(), dir.display().to_string())),
        (None, true) => {
            let c = current.context(
                "--from-previous starts from the AdapterPatch's current version: give --adapter-patch FILE (or --apply)",
            )?;
            let uri = &c.patch.spec.artifact.uri;
            let (dir, _) = output::resolve(uri, &args.pvc_root).with_context(|| {
                format!(
                    "--from-previous: spec.artifact.uri {uri} (version {})",
                    c.patch.spec.version
                )
            })?;
            Some((dir, format!("{} ({uri})", c.patch.spec.version)))
        }
        (None, false) => None,
    };
    if let Some((dir, label)) = &start_dir
        && !dir.join("adapter_model.safetensors").is_file()
    {
        bail!(
            "the adapter to start from, {label}, is not on this machine: no {}",
            dir.join("adapter_model.safetensors").display()
        );
    }

    // The alignment sets, read before minutes of training.
    let red_team = args
        .red_team
        .as_deref()
        .map(alignment::read_red_team)
        .transpose()?
        .unwrap_or_default();
    let facts = args
        .facts
        .as_deref()
        .map(alignment::read_facts)
        .transpose()?
        .unwrap_or_default();

    let device = device(&args.device)?;
    tracing::info!(model = %args.model.display(), device = %device_name(device), "loading the base model");
    let mut trainer = Trainer::load(&args.model, device)?;
    let names = trainer.model().source().names.clone();
    if let Some(c) = current {
        c.check_base_model(&names)?;
        if let Some(id) = c.base_model_id() {
            trainer.set_base_model_name(id);
        }
    }
    if let Some(name) = &args.base_model_name {
        // The trained adapter is loaded back against the base model before it is written: a
        // name the model does not answer to would fail there, after the whole run.
        if !switchboard_model::lora::base_model_matches(name, &names) {
            anyhow::bail!(
                "--base-model-name {name:?} is not a name of {} (it answers to {names:?}); the adapter would not load on it",
                args.model.display()
            );
        }
        trainer.set_base_model_name(name.clone());
    }

    let mut on_step = |s: &StepLog| log_step(s);
    let (trained, data_report) = match data {
        Data::Sft {
            train,
            held,
            report,
        } => {
            tracing::info!(train = train.len(), held_out = held.len(), "SFT examples");
            let start = match &start_dir {
                Some((dir, label)) => Some((trainer.load_start(dir)?, label.clone())),
                None => None,
            };
            (
                trainer.sft_from(
                    &train,
                    &held,
                    &hp,
                    start.as_ref().map(|(a, l)| (a, l.clone())),
                    &mut on_step,
                )?,
                report,
            )
        }
        Data::Grpo {
            train,
            held,
            report,
        } => {
            tracing::info!(train = train.len(), held_out = held.len(), "GRPO prompts");
            let settings = GrpoSettings {
                group: args.group,
                prompts_per_step: args.prompts_per_step,
                steps: args.steps,
                max_new_tokens: args.max_new_tokens,
                temperature: args.temperature,
                top_p: args.top_p,
                clip: args.clip,
                kl_beta: args.kl_beta,
                kl_target: args.kl_target,
                inner_steps: args.inner_steps,
                weights: args.reward_weights,
            };
            settings.validate()?;
            let encoder = switchboard_model::SentenceEncoder::load(&args.encoder, device)
                .with_context(|| {
                    format!(
                        "loading the sentence encoder {} (the groundedness reward)",
                        args.encoder.display()
                    )
                })?;
            let mut embed = |texts: &[String]| -> switchboard_train::Result<Vec<Vec<f32>>> {
                let v = encoder.embed(texts, 32)?;
                Ok(v.into_iter()
                    .map(|x| {
                        let n = x.iter().map(|a| a * a).sum::<f32>().sqrt().max(1e-12);
                        x.into_iter().map(|a| a / n).collect()
                    })
                    .collect())
            };
            let start = match &start_dir {
                Some((dir, label)) => Some((trainer.load_start(dir)?, label.clone())),
                None => None,
            };
            let reference = match &args.reference_adapter {
                Some(dir) => Some(trainer.load_start(dir)?),
                None => None,
            };
            let mut on_grpo = |s: &grpo::GrpoStep| {
                tracing::info!(
                    step = %format!("{}/{}", s.step, args.steps),
                    reward = %format!("{:.3}", s.mean_reward),
                    reward_std = %format!("{:.3}", s.reward_std),
                    kl = %format!("{:.4}", s.kl),
                    beta = %format!("{:.4}", s.beta),
                    diversity = %format!("{:.2}", s.diversity),
                    length = %format!("{:.1}", s.mean_length),
                    seconds = %format!("{:.1}", s.seconds),
                    "grpo step"
                );
            };
            (
                trainer.grpo(
                    &train,
                    &held,
                    &hp,
                    &settings,
                    start.as_ref().map(|(a, l)| (a, l.clone())),
                    reference.as_ref(),
                    &mut embed,
                    &mut on_grpo,
                )?,
                report,
            )
        }
        Data::Dpo {
            train,
            held,
            report,
        } => {
            tracing::info!(train = train.len(), held_out = held.len(), "DPO pairs");
            let reference = match &args.reference_adapter {
                Some(dir) => Some((trainer.load_start(dir)?, dir.display().to_string())),
                None => None,
            };
            (
                trainer.dpo_from(
                    &train,
                    &held,
                    &hp,
                    reference.as_ref().map(|(a, l)| (a, l.clone())),
                    &mut on_step,
                )?,
                report,
            )
        }
    };
    if let Some(g) = &trained.log.grpo {
        tracing::info!(
            train_reward_gain = %format!("{:+.3}", g.train_reward_gain),
            held_out_reward_gain = %g.held_out_reward_gain.map_or("-".to_owned(), |x| format!("{x:+.3}")),
            length_drift = %format!("{:.2}", g.length_drift),
            "grpo monitors"
        );
    }
    for epoch in &trained.log.epochs {
        tracing::info!(
            epoch = epoch.epoch,
            train_loss = %format!("{:.4}", epoch.train.loss),
            held_out = %epoch.held_out.as_ref().map_or("-".to_owned(), |m| serde_json::to_string(m).unwrap_or_default()),
            "epoch"
        );
    }

    let artifact = output::write(
        &trained.adapter,
        trainer.model(),
        &out_dir,
        &out_uri,
        args.overwrite,
    )?;
    tracing::info!(dir = %artifact.dir.display(), uri = %artifact.uri, sha256 = %artifact.sha256, "adapter written");

    // Red team and facts: the starting point (reference / previous adapter, else the base
    // model) against the trained adapter, answered greedily by the serving generator.
    let alignment_report = if red_team.is_empty() && facts.is_empty() {
        None
    } else {
        let mut generator = switchboard_model::generate::Generator::load(&args.model, device)
            .context("loading the model to answer --red-team / --facts")?;
        let before_dir = args
            .reference_adapter
            .clone()
            .or_else(|| start_dir.as_ref().map(|(d, _)| d.clone()));
        if let Some(dir) = &before_dir {
            generator.load_adapter("before", dir)?;
        }
        generator.load_adapter("after", &artifact.dir)?;
        let before_adapter = before_dir
            .as_ref()
            .map(|_| generator.adapter("before"))
            .transpose()?;
        let after_adapter = generator.adapter("after")?;
        let n = args.eval_max_new_tokens;
        let before_label = before_dir
            .as_ref()
            .map_or("base model".to_owned(), |d| d.display().to_string());
        let before = alignment::evaluate(
            &generator,
            before_adapter.as_deref(),
            &before_label,
            &red_team,
            &facts,
            n,
        )?;
        let after = alignment::evaluate(
            &generator,
            Some(&after_adapter),
            "trained",
            &red_team,
            &facts,
            n,
        )?;
        for r in [&before, &after] {
            tracing::info!(
                adapter = %r.adapter,
                refusal_recall = %r.refusal.as_ref().and_then(|m| m.recall).map_or("-".to_owned(), |x| format!("{x:.2}")),
                refusal_precision = %r.refusal.as_ref().and_then(|m| m.precision).map_or("-".to_owned(), |x| format!("{x:.2}")),
                false_positive_rate = %r.refusal.as_ref().and_then(|m| m.false_positive_rate).map_or("-".to_owned(), |x| format!("{x:.2}")),
                factual_accuracy = %r.factual_accuracy.map_or("-".to_owned(), |x| format!("{x:.2}")),
                "alignment"
            );
        }
        Some(Alignment { before, after })
    };

    for set in &trained.log.sets {
        tracing::info!(
            set = set.set.as_str(),
            train = set.train_examples,
            held_out = set.held_out_examples,
            loss_before = %set.loss_before.map_or("-".to_owned(), |l| format!("{l:.4}")),
            loss_after = %set.loss_after.map_or("-".to_owned(), |l| format!("{l:.4}")),
            "hot-fix set"
        );
    }
    let regressed = match (args.max_anchor_regression, trained.log.anchor_regression) {
        (Some(max), Some(r)) if r > max => Some((r, max)),
        _ => None,
    };

    // The next AdapterPatch version (not when the anchors regressed past the limit).
    let mut patch_report = None;
    let mut manifest = None;
    if let (Some(c), Some(version), None) = (current, &version, regressed) {
        let next = NextVersion {
            annotations: annotations(&trained.log, version),
            version: version.clone(),
            uri: args
                .artifact_uri
                .clone()
                .unwrap_or_else(|| artifact.uri.clone()),
            sha256: artifact.sha256.clone(),
            lora: hp.lora.clone(),
        };
        let mut based_on = c.clone();
        let applied = if let PatchSource::Cluster {
            client, runtime, ..
        } = &source
        {
            // Read it again: its status moved on while we trained; its spec must not have.
            let latest = runtime.block_on(apply::fetch(client, &c.namespace(), &c.name()))?;
            if latest.patch.spec.version != c.patch.spec.version {
                bail!(
                    "AdapterPatch {}: spec.version moved from {} to {} during training; the adapter is at {} ({}): re-run, or patch it in by hand",
                    c.label,
                    c.patch.spec.version,
                    latest.patch.spec.version,
                    artifact.uri,
                    artifact.sha256
                );
            }
            runtime.block_on(apply::apply(client, &latest, &next))?;
            tracing::info!(adapter_patch = %latest.label, version = %next.version, "AdapterPatch patched: the operator verifies the artifact and starts the rollout");
            based_on = latest;
            true
        } else {
            false
        };
        manifest = Some(based_on.next_manifest(&next)?);
        patch_report = Some(PatchReport {
            name: format!("{}/{}", c.namespace(), c.name()),
            previous_version: c.patch.spec.version.clone(),
            version: version.clone(),
            applied,
        });
    }

    let report = TrainingReport {
        trainer_version: env!("CARGO_PKG_VERSION").to_owned(),
        created_at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        base_model: BaseModel {
            path: args.model.clone(),
            names,
            base_model_name_or_path: trainer.base_model_name().to_owned(),
        },
        device: device_name(device),
        threads: tch::get_num_threads(),
        data: data_report,
        hyperparameters: hp,
        training: trained.log,
        artifact: artifact.clone(),
        adapter_patch: patch_report,
        alignment: alignment_report,
    };
    report.write(&artifact.dir.join(output::REPORT_FILE))?;
    if let Some(path) = &args.report {
        report.write(path)?;
    }

    if let Some((r, max)) = regressed {
        bail!(
            "the stability anchors' held-out loss rose {:.1}% over the starting adapter's (--max-anchor-regression {:.1}%): no next version written; the adapter and its report are at {}",
            r * 100.0,
            max * 100.0,
            artifact.dir.display()
        );
    }
    let mut stdout = std::io::stdout().lock();
    match manifest {
        Some(doc) => {
            let yaml = serde_yaml::to_string(&doc).context("writing the manifest")?;
            match &args.manifest_out {
                Some(path) => std::fs::write(path, &yaml)
                    .with_context(|| format!("writing {}", path.display()))?,
                None => stdout.write_all(yaml.as_bytes())?,
            }
        }
        None => writeln!(
            stdout,
            "{}",
            serde_json::json!({"uri": artifact.uri, "sha256": artifact.sha256, "dir": artifact.dir})
        )?,
    }
    Ok(())
}
