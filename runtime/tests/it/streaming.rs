//! Streamed answers with the real binary and SmolLM2: server-sent events on `POST /v1/answer`
//! (`started`, `delta`s, the final `answer`), OpenAI `stream: true` chunks on
//! `/v1/chat/completions` (a stop sequence ends the generation), and gRPC `AnswerStream`.

use crate::support;
use support::{dechunk, http_full, post_json, prepare, sse_events, start};

use serde_json::{Value, json};
use switchboard_proto::v1::{
    AnswerRequest, answer_event::Event, assistant_client::AssistantClient,
};

fn post_sse(
    addr: std::net::SocketAddr,
    path: &str,
    body: &Value,
) -> (u16, String, Vec<(String, String)>) {
    let (status, head, body) = http_full(addr, "POST", path, &body.to_string());
    let body = dechunk(&head, &body);
    (status, head, sse_events(&body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_stream_over_http_sse_openai_chunks_and_grpc() {
    let work = tempfile::tempdir().unwrap();
    let work = work.path();
    let (config_path, key) = prepare(work, json!({"smallModel": {"maxNewTokens": 24}}));
    let rt = start(work, "stream", &config_path, &key);

    // HTTP: started (the passages), deltas, then the same answer body as without streaming.
    let question = "How many days do I have to request a refund?";
    let (status, head, events) = post_sse(
        rt.http,
        "/v1/answer",
        &json!({"query": question, "unit": "u1", "stream": true}),
    );
    assert_eq!(status, 200, "{head}");
    assert!(
        head.to_ascii_lowercase().contains("text/event-stream"),
        "{head}"
    );
    let names: Vec<&str> = events.iter().map(|e| e.0.as_str()).collect();
    assert_eq!(names.first(), Some(&"started"), "{names:?}");
    assert_eq!(names.last(), Some(&"answer"), "{names:?}");
    assert!(
        names.iter().filter(|n| **n == "delta").count() >= 2,
        "{names:?}"
    );
    let started: Value = serde_json::from_str(&events[0].1).unwrap();
    assert_eq!(started["model"], "small");
    assert!(!started["passages"].as_array().unwrap().is_empty());
    let streamed: String = events
        .iter()
        .filter(|e| e.0 == "delta")
        .map(|e| {
            serde_json::from_str::<Value>(&e.1).unwrap()["text"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    let answer: Value = serde_json::from_str(&events.last().unwrap().1).unwrap();
    // The deltas are the model's draft; the `answer` event is what is served. They agree when the
    // draft passed the grounding check; otherwise `path` says what replaced it (here the base
    // model, cut at 24 tokens, is replaced by the quoted evidence).
    match answer["path"].as_str().unwrap() {
        "generative" => assert_eq!(streamed.trim(), answer["answer"].as_str().unwrap()),
        "extractive" => {
            assert_ne!(streamed.trim(), answer["answer"].as_str().unwrap());
            assert!(
                answer["answer"].as_str().unwrap().contains("14 days"),
                "{answer}"
            );
        }
        other => panic!("{other}: {answer}"),
    }
    let ids = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|p| p["chunkId"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(ids(&answer["passages"]), ids(&started["passages"]));
    // Its token takes feedback like any answer's.
    let (status, body) = post_json(
        rt.http,
        "/v1/feedback",
        &json!({"token": answer["interactionToken"], "outcome": "resolved"}),
    );
    assert_eq!(status, 200, "{body}");

    // Nothing relevant retrieved: no model call, only the final answer.
    let (_, _, events) = post_sse(
        rt.http,
        "/v1/answer",
        &json!({"query": "What is the capital of France?", "stream": true}),
    );
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].0, "answer");
    // Bad input is a plain 400 naming the field, before any event.
    let (status, body) = post_json(rt.http, "/v1/answer", &json!({"query": "", "stream": true}));
    assert_eq!(status, 400);
    assert!(
        body["message"].as_str().unwrap().contains("query"),
        "{body}"
    );

    // OpenAI chunks: the role, content pieces, the finish reason, [DONE]; the same text as the
    // whole response.
    let request = json!({
        "model": "small", "temperature": 0, "max_tokens": 20,
        "messages": [{"role": "user", "content": "Write three short sentences about the sea."}],
    });
    let (status, whole) = post_json(rt.http, "/v1/chat/completions", &request);
    assert_eq!(status, 200, "{whole}");
    let whole_text = whole["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut streaming = request.clone();
    streaming["stream"] = true.into();
    let (status, _, events) = post_sse(rt.http, "/v1/chat/completions", &streaming);
    assert_eq!(status, 200);
    assert_eq!(events.last().unwrap().1, "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(&e.1).unwrap())
        .collect();
    assert!(
        chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk")
    );
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let content: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content, whole_text);
    assert!(chunks.len() >= 4, "{chunks:?}");
    assert!(chunks.last().unwrap()["choices"][0]["finish_reason"].is_string());
    // A stop sequence that appears ends the stream there, never showing it.
    let cut_at = whole_text
        .char_indices()
        .nth(whole_text.chars().count() / 2)
        .map(|(i, _)| i)
        .unwrap();
    let stop: String = whole_text[cut_at..].chars().take(3).collect();
    let mut stopped = streaming.clone();
    stopped["stop"] = json!([stop]);
    let (_, _, events) = post_sse(rt.http, "/v1/chat/completions", &stopped);
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(&e.1).unwrap())
        .collect();
    let content: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content, whole_text[..whole_text.find(&stop).unwrap()]);
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "stop"
    );

    // gRPC: the same three kinds of events.
    let mut grpc = AssistantClient::connect(format!("http://{}", rt.grpc))
        .await
        .unwrap();
    let mut stream = grpc
        .answer_stream(AnswerRequest {
            query: question.into(),
            user_id: "u2".into(),
            ..AnswerRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut kinds = Vec::new();
    let mut text = String::new();
    let mut last = None;
    while let Some(event) = stream.message().await.unwrap() {
        match event.event.unwrap() {
            Event::Started(s) => {
                assert!(!s.passages.is_empty());
                kinds.push("started");
            }
            Event::Delta(d) => {
                text.push_str(&d);
                kinds.push("delta");
            }
            Event::Answer(a) => {
                kinds.push("answer");
                last = Some(a);
            }
        }
    }
    assert_eq!(kinds.first(), Some(&"started"));
    assert_eq!(kinds.last(), Some(&"answer"));
    let last = last.unwrap();
    if last.path == "generative" {
        assert_eq!(text.trim(), last.answer);
    } else {
        assert_eq!(last.path, "extractive");
        assert!(last.answer.contains("14 days"), "{}", last.answer);
    }
    let err = grpc
        .answer_stream(AnswerRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
}
