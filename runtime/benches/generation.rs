//! Generation benchmark, one run on one machine, 2 threads for every engine, the same
//! SmolLM2-135M-Instruct GGUF (Q4_1) file and the same prompt token ids (a grounded support prompt
//! of about 600 tokens rendered with the model's chat template), greedy decoding:
//!
//! 1. One request at a time: prompt processing (tokens/s of one forward over the prompt), time to
//!    first token, decode tokens/s, for
//!    - switchboard int4 (the serving default: the file's 4-bit weights, `WeightFormat::Int4`),
//!    - switchboard dense (f32, the reference's numbers),
//!    - HF transformers eager f32 (`hack/reference/bench_generation.py`), the reference,
//!    - llama.cpp `llama-bench` on the same GGUF: the speed-of-light anchor,
//!
//!    with and without a PEFT LoRA adapter (`runtime/model/tests/fixtures/lora/qv`, r=4 on q_proj
//!    and v_proj of every layer, unmerged) on switchboard and HF.
//! 2. Eight concurrent users, each sending requests back to back (different questions, up to 48
//!    new tokens): request latency p50/p99, time to first token p50/p99 and total tokens/s, for the
//!    runtime's batching worker (8 slots) and the same worker with one slot (what a
//!    request-at-a-time server gives), and llama.cpp's `llama-server --parallel 8` (continuous
//!    batching) as the anchor.
//!
//! Goals (issue 15): decode tokens/s >= 1.5x HF eager, within 2x of llama.cpp.
//!
//!     hack/setup-reference.sh && cargo bench -p switchboard-runtime --bench generation
//!
//! Not a test: timings are only compared within one run; run it on an otherwise idle machine.
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchboard_model::chat::ChatMessage;
use switchboard_model::generate::{Generation, GenerationConfig, Sampling};
use switchboard_model::generator_worker::{StreamEvent, WorkerOptions};
use switchboard_model::llama::{LoadOptions, WeightFormat};
use switchboard_model::lora::LoraAdapter;
use switchboard_model::{Generator, GeneratorWorker};
use tch::Tensor;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const THREADS: i32 = 2;
const USERS: usize = 8;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn greedy(max_new_tokens: usize) -> GenerationConfig {
    GenerationConfig {
        sampling: Sampling::Greedy,
        max_new_tokens,
        stop_token_ids: Vec::new(),
    }
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    let mid = xs.len() / 2;
    if xs.is_empty() {
        f64::NAN
    } else if xs.len().is_multiple_of(2) {
        (xs[mid - 1] + xs[mid]) / 2.0
    } else {
        xs[mid]
    }
}

/// The `p`-th percentile (nearest rank).
fn percentile(mut xs: Vec<f64>, p: f64) -> f64 {
    xs.sort_by(f64::total_cmp);
    if xs.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * xs.len() as f64).ceil().max(1.0) as usize;
    xs[rank.min(xs.len()) - 1]
}

/// One engine's single-request numbers.
#[derive(Debug, Clone, Default)]
struct Single {
    prompt_tps: f64,
    ttft_s: f64,
    decode_tps: f64,
    request_s: f64,
    tokens: usize,
    ids: Vec<u64>,
}

fn single(
    generator: &Generator,
    ids: &[u32],
    adapter: Option<&LoraAdapter>,
    (max_new_tokens, runs): (usize, usize),
    label: &str,
) -> Result<Single, BoxError> {
    let model = generator.model();
    let input =
        Tensor::from_slice(&ids.iter().map(|&i| i64::from(i)).collect::<Vec<_>>()).unsqueeze(0);
    // Warm-up (allocator, kernels, thread pool).
    generator.generate_ids(ids, &greedy(4), adapter)?;
    let mut prefill = Vec::new();
    let mut ttft = Vec::new();
    for _ in 0..runs {
        let started = Instant::now();
        let logits = model.forward_last(&input, &mut model.new_cache(), adapter)?;
        let _first = logits.argmax(-1, false).int64_value(&[0]);
        prefill.push(started.elapsed().as_secs_f64());
        let started = Instant::now();
        generator.generate_ids(ids, &greedy(1), adapter)?;
        ttft.push(started.elapsed().as_secs_f64());
    }
    let mut requests = Vec::new();
    let mut last: Option<Generation> = None;
    for _ in 0..runs {
        let started = Instant::now();
        let g = generator.generate_ids(ids, &greedy(max_new_tokens), adapter)?;
        requests.push(started.elapsed().as_secs_f64());
        eprintln!(
            "  switchboard {label}: {} tokens in {:.2}s",
            g.token_ids.len(),
            requests.last().copied().unwrap_or_default()
        );
        last = Some(g);
    }
    let g = last.ok_or("no run")?;
    let (request_s, ttft_s) = (median(requests), median(ttft));
    Ok(Single {
        prompt_tps: ids.len() as f64 / median(prefill),
        ttft_s,
        decode_tps: (g.token_ids.len().saturating_sub(1)) as f64 / (request_s - ttft_s).max(1e-9),
        request_s,
        tokens: g.token_ids.len(),
        ids: g.token_ids.iter().map(|&t| u64::from(t)).collect(),
    })
}

fn from_reference(v: &serde_json::Value) -> Single {
    let f = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    Single {
        prompt_tps: f("prompt_tokens_per_s"),
        ttft_s: f("ttft_s"),
        decode_tps: f("decode_tokens_per_s"),
        request_s: f("median_s"),
        tokens: v["tokens"].as_u64().unwrap_or(0) as usize,
        ids: v["ids"]
            .as_array()
            .map(|a| a.iter().filter_map(serde_json::Value::as_u64).collect())
            .unwrap_or_default(),
    }
}

/// llama.cpp's own benchmark on the same file: prompt processing and generation tokens/s.
fn llama_bench(
    bin: &Path,
    gguf: &Path,
    prompt: usize,
    tokens: usize,
    runs: usize,
) -> Option<Single> {
    let output = Command::new(bin)
        .args(["-m".as_ref(), gguf.as_os_str()])
        .args(["-p", &prompt.to_string(), "-n", &tokens.to_string()])
        .args([
            "-t",
            &THREADS.to_string(),
            "-r",
            &runs.to_string(),
            "-o",
            "json",
        ])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let rows: serde_json::Value = serde_json::from_slice(&output.stdout).ok()?;
    let ts = |prompt_tokens: bool| {
        rows.as_array()?
            .iter()
            .find(|r| (r["n_prompt"].as_u64().unwrap_or(0) > 0) == prompt_tokens)
            .and_then(|r| r["avg_ts"].as_f64())
    };
    let (pp, tg) = (ts(true)?, ts(false)?);
    Some(Single {
        prompt_tps: pp,
        ttft_s: prompt as f64 / pp + 1.0 / tg,
        decode_tps: tg,
        request_s: prompt as f64 / pp + tokens as f64 / tg,
        tokens,
        ids: Vec::new(),
    })
}

/// Latencies of one concurrent run.
#[derive(Debug, Default)]
struct Load {
    latency: Vec<f64>,
    ttft: Vec<f64>,
    tokens: usize,
    wall_s: f64,
}

impl Load {
    fn row(&self, name: &str) {
        println!(
            "{name:<34} {:>8.2}s {:>8.2}s {:>8.2}s {:>8.2}s {:>9.1}",
            percentile(self.latency.clone(), 50.0),
            percentile(self.latency.clone(), 99.0),
            percentile(self.ttft.clone(), 50.0),
            percentile(self.ttft.clone(), 99.0),
            self.tokens as f64 / self.wall_s
        );
    }
}

/// `USERS` users, each sending `per_user` requests back to back, on a batching worker.
async fn concurrent(
    worker: &GeneratorWorker,
    questions: &[Vec<ChatMessage>],
    per_user: usize,
    max_new_tokens: usize,
) -> Result<Load, BoxError> {
    let started = Instant::now();
    let mut users = Vec::new();
    for user in 0..USERS {
        let worker = worker.clone();
        let questions = questions.to_vec();
        users.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for k in 0..per_user {
                let messages = questions[(user * per_user + k) % questions.len()].clone();
                let sent = Instant::now();
                let mut stream = worker.chat_stream(messages, greedy(max_new_tokens), None)?;
                let mut first = None;
                while let Some(StreamEvent::Delta(_)) = stream.deltas.recv().await {
                    first.get_or_insert_with(|| sent.elapsed().as_secs_f64());
                }
                let g = stream.done.await.map_err(|e| e.to_string())??;
                let latency = sent.elapsed().as_secs_f64();
                out.push((latency, first.unwrap_or(latency), g.token_ids.len()));
            }
            Ok::<_, BoxError>(out)
        }));
    }
    let mut load = Load::default();
    for user in users {
        for (latency, ttft, tokens) in user.await.map_err(|e| e.to_string())?? {
            load.latency.push(latency);
            load.ttft.push(ttft);
            load.tokens += tokens;
        }
    }
    load.wall_s = started.elapsed().as_secs_f64();
    Ok(load)
}

fn free_addr() -> std::io::Result<SocketAddr> {
    TcpListener::bind("127.0.0.1:0")?.local_addr()
}

/// A POST with a JSON body over a fresh connection; the response body.
fn post(addr: SocketAddr, path: &str, body: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(addr)?;
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default())
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The same load on `llama-server --parallel 8` (continuous batching), prompts as token ids.
fn llama_server_load(
    bin: &Path,
    gguf: &Path,
    prompts: &[Vec<u32>],
    per_user: usize,
    max_new_tokens: usize,
    context: usize,
) -> Option<Load> {
    let addr = free_addr().ok()?;
    let _server = Server(
        Command::new(bin)
            .args(["-m".as_ref(), gguf.as_os_str()])
            .args(["--host", "127.0.0.1", "--port", &addr.port().to_string()])
            .args(["-t", &THREADS.to_string(), "--parallel", &USERS.to_string()])
            .args(["-c", &(context * USERS).to_string(), "--no-webui"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?,
    );
    let ready = Instant::now();
    while post(addr, "/completion", r#"{"prompt":[1],"n_predict":1}"#)
        .map_or(true, |b| !b.contains("content"))
    {
        if ready.elapsed() > Duration::from_secs(60) {
            return None;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let prompts = Arc::new(prompts.to_vec());
    let started = Instant::now();
    let users: Vec<_> = (0..USERS)
        .map(|user| {
            let prompts = Arc::clone(&prompts);
            std::thread::spawn(move || {
                let mut out = Vec::new();
                for k in 0..per_user {
                    let prompt = &prompts[(user * per_user + k) % prompts.len()];
                    let body = serde_json::json!({
                        "prompt": prompt, "n_predict": max_new_tokens, "temperature": 0,
                        "cache_prompt": false,
                    });
                    let sent = Instant::now();
                    let response = post(addr, "/completion", &body.to_string()).ok()?;
                    let latency = sent.elapsed().as_secs_f64();
                    let v: serde_json::Value = serde_json::from_str(&response).ok()?;
                    let timings = &v["timings"];
                    // Queueing before the slot started is part of the first token's wait.
                    let busy =
                        (timings["prompt_ms"].as_f64()? + timings["predicted_ms"].as_f64()?) / 1e3;
                    let ttft = latency - busy + timings["prompt_ms"].as_f64()? / 1e3;
                    out.push((latency, ttft, timings["predicted_n"].as_u64()? as usize));
                }
                Some(out)
            })
        })
        .collect();
    let mut load = Load::default();
    for user in users {
        for (latency, ttft, tokens) in user.join().ok()?? {
            load.latency.push(latency);
            load.ttft.push(ttft);
            load.tokens += tokens;
        }
    }
    load.wall_s = started.elapsed().as_secs_f64();
    Some(load)
}

/// A grounded prompt about the sample KB: its refund policy as numbered passages and a question.
fn grounded(question: &str, root: &Path) -> Result<Vec<ChatMessage>, BoxError> {
    let policy = std::fs::read_to_string(root.join("examples/kb/policies/refund-policy.md"))?;
    let passages: Vec<&str> = policy
        .split("\n## ")
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .take(4)
        .collect();
    let mut user = String::from("Passages:\n");
    for (i, p) in passages.iter().enumerate() {
        user.push_str(&format!(
            "[{}] [Refund policy]\n{}\n\n",
            i + 1,
            p.replace('\n', " ")
        ));
    }
    user.push_str(&format!(
        "Question: {question}\nAnswer in one or two sentences and cite the passage you used in brackets, for example [1]. \
         If no passage answers the question, say \"I don't know.\""
    ));
    Ok(vec![
        ChatMessage::system(
            "You are a customer support assistant. Use only the passages the user gives you.",
        ),
        ChatMessage::user(user),
    ])
}

#[allow(clippy::too_many_lines)]
fn main() -> Result<(), BoxError> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let gguf = root.join(".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let adapter_dir = root.join("runtime/model/tests/fixtures/lora/qv");
    let python = root.join(".cache/venv-ref/bin/python");
    let llama_dir = root.join(".cache/llama.cpp");
    for (path, fix) in [
        (&gguf, "hack/setup.sh models"),
        (&python, "hack/setup-reference.sh"),
    ] {
        if !path.exists() {
            return Err(format!("{} is missing: run {fix}", path.display()).into());
        }
    }
    // SWITCHBOARD_BENCH_TOKENS / _RUNS / _PER_USER shorten a run on a busy machine.
    let max_new_tokens = env_usize("SWITCHBOARD_BENCH_TOKENS", 64);
    let runs = env_usize("SWITCHBOARD_BENCH_RUNS", 3).max(1);
    let per_user = env_usize("SWITCHBOARD_BENCH_PER_USER", 3).max(1);
    let load_tokens = 48;
    tch::set_num_threads(THREADS);

    let questions = [
        "Explain in detail how refunds work, step by step, and what happens after 14 days.",
        "Can I get my money back three weeks after upgrading?",
        "How long does a card refund take to show up?",
        "Do you refund partial months when I downgrade?",
        "Who approves exceptions to the refund window?",
        "Can a refund go to a different card?",
        "What happens to my plan after a refund?",
        "Is the setup fee refundable?",
    ];
    let conversations: Vec<Vec<ChatMessage>> = questions
        .iter()
        .map(|q| grounded(q, &root))
        .collect::<Result<_, _>>()?;

    // 1. One request at a time.
    let mut int4 = Generator::load_with(
        &gguf,
        LoadOptions {
            weights: WeightFormat::Int4,
            ..LoadOptions::new(tch::Device::Cpu)
        },
    )?;
    int4.load_adapter("qv", &adapter_dir)?;
    let ids = int4.chat_prompt_ids(&conversations[0])?;
    let eos: Vec<String> = int4
        .tokenizer()
        .eos_token_ids()
        .iter()
        .map(u32::to_string)
        .collect();
    let limits = (max_new_tokens, runs);
    let int4_base = single(&int4, &ids, None, limits, "int4")?;
    let int4_lora = single(
        &int4,
        &ids,
        Some(int4.adapter("qv")?.as_ref()),
        limits,
        "int4 lora",
    )?;
    drop(int4);
    let mut dense = Generator::load(&gguf, tch::Device::Cpu)?;
    dense.load_adapter("qv", &adapter_dir)?;
    let dense_base = single(&dense, &ids, None, limits, "dense")?;
    let dense_lora = single(
        &dense,
        &ids,
        Some(dense.adapter("qv")?.as_ref()),
        limits,
        "dense lora",
    )?;
    drop(dense);

    eprintln!("running the reference (HF transformers + PEFT)...");
    let scratch = std::env::temp_dir().join(format!("sb-bench-gen-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let ids_file = scratch.join("prompt_ids.json");
    std::fs::write(&ids_file, serde_json::to_string(&ids)?)?;
    let output = Command::new(&python)
        .arg(root.join("hack/reference/bench_generation.py"))
        .args(["--prompt-ids".as_ref(), ids_file.as_os_str()])
        .args(["--adapter".as_ref(), adapter_dir.as_os_str()])
        .args(["--max-new-tokens", &max_new_tokens.to_string()])
        .args(["--runs", &runs.to_string()])
        .args(["--threads", &THREADS.to_string()])
        .args(["--eos", &eos.join(",")])
        .env("OMP_NUM_THREADS", THREADS.to_string())
        .stderr(Stdio::inherit())
        .output()?;
    let _ = std::fs::remove_dir_all(&scratch);
    if !output.status.success() {
        return Err(format!(
            "reference benchmark failed: {}",
            String::from_utf8_lossy(&output.stderr)
        )
        .into());
    }
    let reference: serde_json::Value = serde_json::from_slice(
        output
            .stdout
            .split(|b| *b == b'\n')
            .rfind(|l| !l.is_empty())
            .unwrap_or_default(),
    )?;
    let hf_base = from_reference(&reference["base"]);
    let hf_lora = from_reference(&reference["lora"]);
    eprintln!("running llama.cpp (llama-bench)...");
    let llama = llama_bench(
        &llama_dir.join("llama-bench"),
        &gguf,
        ids.len(),
        max_new_tokens,
        runs,
    );

    println!(
        "\ngeneration benchmark: SmolLM2-135M-Instruct (GGUF Q4_1), prompt {} tokens, greedy, up to \
         {max_new_tokens} new tokens, median of {runs}, {THREADS} threads each (torch {})",
        ids.len(),
        reference["torch"].as_str().unwrap_or("?")
    );
    println!(
        "{:<34} {:>12} {:>9} {:>12} {:>10} {:>7}",
        "one request at a time", "prompt tok/s", "TTFT", "decode tok/s", "request", "tokens"
    );
    let same = |ours: &Single, theirs: &Single| {
        let common = ours
            .ids
            .iter()
            .zip(&theirs.ids)
            .take_while(|(a, b)| a == b)
            .count();
        format!(
            "{common}/{} tokens identical to HF",
            ours.ids.len().max(theirs.ids.len())
        )
    };
    let rows: Vec<(&str, &Single, String)> = vec![
        (
            "switchboard int4 (default)",
            &int4_base,
            same(&int4_base, &hf_base),
        ),
        (
            "switchboard int4 + LoRA",
            &int4_lora,
            same(&int4_lora, &hf_lora),
        ),
        (
            "switchboard dense f32",
            &dense_base,
            same(&dense_base, &hf_base),
        ),
        (
            "switchboard dense f32 + LoRA",
            &dense_lora,
            same(&dense_lora, &hf_lora),
        ),
        ("HF transformers eager f32", &hf_base, String::new()),
        ("HF transformers + PEFT", &hf_lora, String::new()),
    ];
    let print_row = |name: &str, s: &Single, note: &str| {
        println!(
            "{name:<34} {:>12.1} {:>8.3}s {:>12.1} {:>9.2}s {:>7}  {note}",
            s.prompt_tps, s.ttft_s, s.decode_tps, s.request_s, s.tokens
        );
    };
    for (name, s, note) in &rows {
        print_row(name, s, note);
    }
    match &llama {
        Some(l) => print_row(
            "llama.cpp llama-bench (anchor)",
            l,
            "TTFT and request from pp/tg",
        ),
        None => println!(
            "llama.cpp: not measured ({} missing: hack/setup-reference.sh builds it)",
            llama_dir.join("llama-bench").display()
        ),
    }
    let ratio = |a: f64, b: f64| a / b;
    println!(
        "decode tok/s: switchboard int4 / HF eager = {:.2}x (goal >= 1.5x); dense / HF = {:.2}x",
        ratio(int4_base.decode_tps, hf_base.decode_tps),
        ratio(dense_base.decode_tps, hf_base.decode_tps)
    );
    println!(
        "prompt tok/s: switchboard int4 / HF = {:.2}x; TTFT: HF / switchboard int4 = {:.2}x",
        ratio(int4_base.prompt_tps, hf_base.prompt_tps),
        ratio(hf_base.ttft_s, int4_base.ttft_s)
    );
    if let Some(l) = &llama {
        println!(
            "llama.cpp / switchboard int4: decode {:.2}x (goal <= 2x), prompt {:.2}x",
            ratio(l.decode_tps, int4_base.decode_tps),
            ratio(l.prompt_tps, int4_base.prompt_tps)
        );
    }
    let overhead = |base: &Single, lora: &Single| (base.decode_tps / lora.decode_tps - 1.0) * 100.0;
    println!(
        "LoRA decode overhead: switchboard int4 {:+.1}%, dense {:+.1}%, HF PEFT {:+.1}% (goal <= 15%)",
        overhead(&int4_base, &int4_lora),
        overhead(&dense_base, &dense_lora),
        overhead(&hf_base, &hf_lora)
    );

    // 2. Eight concurrent users.
    eprintln!("running {USERS} concurrent users...");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut loads = Vec::new();
    for (name, max_batch) in [
        ("switchboard int4, batching (8 slots)", USERS),
        ("switchboard int4, one at a time", 1),
    ] {
        let worker = GeneratorWorker::spawn_with(
            "bench",
            &gguf,
            WorkerOptions {
                max_batch,
                ..WorkerOptions::new(tch::Device::Cpu).weights(WeightFormat::Int4)
            },
        )?;
        let load = runtime.block_on(concurrent(&worker, &conversations, per_user, load_tokens))?;
        loads.push((name, load));
    }
    let prompts: Vec<Vec<u32>> = {
        let g = Generator::load(&gguf, tch::Device::Cpu)?;
        conversations
            .iter()
            .map(|c| g.chat_prompt_ids(c))
            .collect::<Result<_, _>>()?
    };
    let context = prompts.iter().map(Vec::len).max().unwrap_or(0) + load_tokens + 16;
    let server = llama_server_load(
        &llama_dir.join("llama-server"),
        &gguf,
        &prompts,
        per_user,
        load_tokens,
        context,
    );
    println!(
        "\n{USERS} concurrent users x {per_user} requests, up to {load_tokens} new tokens each, prompts {}-{} tokens",
        prompts.iter().map(Vec::len).min().unwrap_or(0),
        prompts.iter().map(Vec::len).max().unwrap_or(0)
    );
    println!(
        "{:<34} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "", "p50 req", "p99 req", "p50 TTFT", "p99 TTFT", "tok/s"
    );
    for (name, load) in &loads {
        load.row(name);
    }
    match &server {
        Some(load) => load.row("llama-server --parallel 8 (anchor)"),
        None => println!("llama-server: not measured (missing or did not start)"),
    }
    if let [(_, batched), (_, serial)] = &loads[..] {
        let p = |l: &Load, q: f64, ttft: bool| {
            percentile(
                if ttft {
                    l.ttft.clone()
                } else {
                    l.latency.clone()
                },
                q,
            )
        };
        println!(
            "batching vs one at a time (ratio of times, > 1: batching faster): p50 request {:.2}x, \
             p99 request {:.2}x, p50 TTFT {:.2}x, p99 TTFT {:.2}x; throughput {:.2}x",
            p(serial, 50.0, false) / p(batched, 50.0, false),
            p(serial, 99.0, false) / p(batched, 99.0, false),
            p(serial, 50.0, true) / p(batched, 50.0, true),
            p(serial, 99.0, true) / p(batched, 99.0, true),
            (batched.tokens as f64 / batched.wall_s) / (serial.tokens as f64 / serial.wall_s)
        );
        if let Some(s) = &server {
            println!(
                "switchboard batching vs llama-server (> 1: switchboard better): p99 request {:.2}x, \
                 p99 TTFT {:.2}x, throughput {:.2}x",
                p(s, 99.0, false) / p(batched, 99.0, false),
                p(s, 99.0, true) / p(batched, 99.0, true),
                (batched.tokens as f64 / batched.wall_s) / (s.tokens as f64 / s.wall_s)
            );
        }
    }
    Ok(())
}
