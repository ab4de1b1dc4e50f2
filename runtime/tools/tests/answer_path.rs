//! The answer path in-process, through the [`Serving`] trait both front ends call: the demo's
//! manifests indexed and served by the embedded default's engine (MiniLM, SmolLM2 and the
//! demo's adapters from `.cache`, as `hack/setup.sh` installs them), with no process and no
//! transport in between.

use std::path::Path;
use std::sync::Arc;

use clap::Parser;
use switchboard_serving::answer::{AnswerItem, AnswerRequest, FeedbackError, FeedbackRequest};
use switchboard_serving::serving::{Runtime, Serving};

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    eval: switchboard_tools::eval::EvalArgs,
}

const REFUND: &str = "How many days do I have to request a refund?";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_question_is_answered_cited_streamed_and_its_feedback_counted_once() {
    // The tools resolve `.cache/...` and `examples/...` from the repository root, as the
    // command line does.
    std::env::set_current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."))
        .expect("repository root");
    let args = Cli::parse_from([
        "answer-path",
        "--answers",
        "--manifests",
        "examples/scenario.yaml",
        "--golden",
        "examples/kb/golden-answers.jsonl",
    ])
    .eval
    .answers;
    let (harness, _) = switchboard_tools::eval_answers::harness(
        Path::new("examples/scenario.yaml"),
        None,
        None,
        &args,
    )
    .await
    .expect("the demo's manifests are served");
    let serving: Arc<dyn Serving> = Arc::new(Runtime::engine(Arc::clone(&harness.engine)));

    let request = || AnswerRequest {
        query: REFUND.to_owned(),
        ..AnswerRequest::default()
    };
    let answer = serving.answer(request()).await.expect("answered");
    assert!(!answer.refused, "{answer:?}");
    assert!(answer.answer.contains("14 days"), "{}", answer.answer);
    assert!(
        answer
            .citations
            .iter()
            .any(|c| c.document_id.contains("refund")),
        "cites the refund policy: {:?}",
        answer.citations
    );
    assert!(answer.invalid_citations.is_empty(), "{answer:?}");

    // Streamed: the same answer arrives last, whatever was streamed before it.
    let mut items = serving.answer_stream(request()).await.expect("started");
    let mut last = None;
    while let Some(item) = items.recv().await {
        if let AnswerItem::Done(done) = item {
            last = Some(*done);
        }
    }
    let streamed = last.expect("a final item").expect("answered");
    assert!(streamed.answer.contains("14 days"), "{}", streamed.answer);

    // The outcome of an interaction counts once.
    let feedback = || FeedbackRequest {
        token: answer.interaction_token.clone(),
        outcome: "resolved".to_owned(),
        csat: None,
    };
    serving.feedback(feedback()).await.expect("recorded");
    let replay = serving.feedback(feedback()).await.unwrap_err();
    assert!(matches!(replay, FeedbackError::Replayed(_)), "{replay}");
}
