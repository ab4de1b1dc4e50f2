//! A hot-fix the way seed section 6 trains one, on the real SmolLM2-135M: version 1 learns the
//! Quillpad policies; the refund window then changes (45 -> 30 days) and the hot-fix starts from
//! version 1 with the three sets — the fix, negative-rejection answers ("that changed"), and
//! stability anchors (the unrelated policies, half trained on, half held out) — and reports
//! each set's held-out loss before (under version 1) and after, the anchors' regression and how
//! far the weights moved; an L2 pull towards version 1 keeps them closer; the next
//! AdapterPatch manifest carries the numbers as annotations; and a regression past
//! `--max-anchor-regression` writes no next version.
//!
//! CPU-cheap: one epoch each, 2 libtorch threads.

use crate::support;

use serde_json::Value;

fn common(model: &str) -> Vec<String> {
    [
        "--model",
        model,
        "--rank",
        "8",
        "--target-modules",
        "q_proj,v_proj",
        "--lr",
        "3e-3",
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--threads",
        "2",
        "--device",
        "cpu",
    ]
    .map(str::to_owned)
    .to_vec()
}

fn run(args: Vec<String>) -> std::process::Output {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    support::train(&args, &[])
}

fn path(p: &std::path::Path) -> String {
    p.to_str().unwrap().to_owned()
}

#[test]
fn a_hot_fix_starts_from_the_previous_version_and_reports_its_anchors() {
    let model = path(&support::model());
    let work = tempfile::tempdir().unwrap();
    let v1 = work.path().join("v1");

    // Version 1: the policies, refunds within 45 days.
    let mut args = vec!["sft".to_owned(), "--data".into()];
    args.push(path(&support::data("support_sft.jsonl")));
    args.extend([
        "--held-out-fraction".into(),
        "0".into(),
        "--output".into(),
        path(&v1),
    ]);
    args.extend(common(&model));
    let out = run(args);
    assert!(out.status.success(), "{}", support::stderr(&out));

    // The hot-fix, from version 1, with its three sets; the next version of the example
    // AdapterPatch.
    let hotfix = |dir: &std::path::Path, l2: &str, extra: &[&str]| {
        let mut args = vec!["sft".to_owned(), "--data".into()];
        args.push(path(&support::data("hotfix_fix.jsonl")));
        args.extend(["--negative-rejection".into()]);
        args.push(path(&support::data("hotfix_rejection.jsonl")));
        args.extend(["--anchors".into()]);
        args.push(path(&support::data("hotfix_anchors.jsonl")));
        args.extend([
            "--held-out-fraction".into(),
            "0.3".into(),
            "--init-adapter".into(),
            path(&v1),
            "--l2-to-start".into(),
            l2.into(),
            "--output".into(),
            path(dir),
            "--adapter-patch".into(),
            path(&support::example("adapterpatch.yaml")),
        ]);
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        args.extend(common(&model));
        run(args)
    };
    let free = work.path().join("free");
    let out = hotfix(&free, "0", &[]);
    assert!(out.status.success(), "{}", support::stderr(&out));
    let report: Value =
        serde_json::from_slice(&std::fs::read(free.join("training_report.json")).unwrap()).unwrap();
    let t = &report["training"];
    println!("hot-fix report: {t}");
    assert_eq!(t["startedFrom"], path(&v1));
    let set = |name: &str| {
        t["sets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["set"] == name)
            .unwrap_or_else(|| panic!("no set {name} in {t}"))
            .clone()
    };
    let (fix, rejection, anchors) = (set("fix"), set("negativeRejection"), set("anchor"));
    assert_eq!(fix["trainExamples"], 7);
    assert_eq!(rejection["heldOutExamples"], 2);
    // Half the anchors are held out to measure the regression, half are trained on.
    assert!(
        anchors["heldOutExamples"].as_u64().unwrap() >= 10,
        "{anchors}"
    );
    assert!(
        anchors["trainExamples"].as_u64().unwrap() >= 10,
        "{anchors}"
    );
    // The fix is learned: its held-out questions (other wordings) are likelier than under v1.
    let loss = |s: &Value, k: &str| s[k].as_f64().unwrap();
    assert!(
        loss(&fix, "lossAfter") < loss(&fix, "lossBefore") - 0.1,
        "{fix}"
    );
    assert!(
        loss(&rejection, "lossAfter") < loss(&rejection, "lossBefore"),
        "{rejection}"
    );
    let regression = t["anchorRegression"].as_f64().unwrap();
    let expected =
        (loss(&anchors, "lossAfter") - loss(&anchors, "lossBefore")) / loss(&anchors, "lossBefore");
    assert!((regression - expected).abs() < 1e-9, "{t}");
    let moved_free = t["distanceFromStart"].as_f64().unwrap();
    assert!(moved_free > 0.0);

    // The next manifest carries the training notes for the evaluation gate and reviewers.
    let manifest: Value = serde_yaml::from_slice(&out.stdout).unwrap();
    let notes = &manifest["metadata"]["annotations"];
    assert_eq!(
        notes["training.switchboard.dev/version"],
        manifest["spec"]["version"]
    );
    assert_eq!(notes["training.switchboard.dev/started-from"], path(&v1));
    assert_eq!(
        notes["training.switchboard.dev/anchor-regression"],
        format!("{regression:.4}")
    );
    let losses: Value = serde_json::from_str(
        notes["training.switchboard.dev/held-out-loss"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(losses["anchor"]["before"], anchors["lossBefore"]);

    // A strong pull towards v1 keeps the weights closer to it; an impossible regression limit
    // stops the version (the adapter and its report are still written, for a look).
    let pulled = work.path().join("pulled");
    let out = hotfix(&pulled, "50", &["--max-anchor-regression=-1"]);
    assert!(!out.status.success());
    let err = support::stderr(&out);
    assert!(
        err.contains("stability anchors") && err.contains("no next version"),
        "{err}"
    );
    assert!(out.stdout.is_empty(), "no manifest");
    let report: Value =
        serde_json::from_slice(&std::fs::read(pulled.join("training_report.json")).unwrap())
            .unwrap();
    let moved_pulled = report["training"]["distanceFromStart"].as_f64().unwrap();
    println!(
        "distance from v1: {moved_free:.3} free, {moved_pulled:.3} with --l2-to-start 50; pulled report: {}",
        report["training"]
    );
    assert!(
        moved_pulled < moved_free * 0.8,
        "L2 pull: moved {moved_pulled} vs {moved_free} without"
    );
    assert!(report["adapterPatch"].is_null(), "{report}");

    // Starting from an adapter of another rank is refused before training, saying what to do.
    let mut args = vec!["sft".to_owned(), "--data".into()];
    args.push(path(&support::data("hotfix_fix.jsonl")));
    args.extend([
        "--init-adapter".into(),
        path(&v1),
        "--output".into(),
        path(&work.path().join("bad")),
    ]);
    args.extend(common(&model));
    let i = args.iter().position(|a| a == "--rank").unwrap();
    args[i + 1] = "4".into();
    let out = run(args);
    assert!(!out.status.success());
    let err = support::stderr(&out);
    assert!(err.contains("rank 8") && err.contains("--rank 8"), "{err}");
}
