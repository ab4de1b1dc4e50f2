//! Runs the built binary as kubectl would.

use std::process::Command;

fn switchboard(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_kubectl-switchboard"))
        .args(args)
        .output()
        .expect("the binary runs")
}

#[test]
fn plan_prints_json_for_scripts() {
    let output = switchboard(&[
        "plan",
        "--baseline-rate",
        "0.15",
        "--mde-absolute",
        "-0.01",
        "--traffic-per-day",
        "10000",
        "-o",
        "json",
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON output");
    assert_eq!(json["plan"]["unitsPerVariant"], 19_461);
    assert_eq!(json["plan"]["totalUnits"], 38_922);
    let days = json["eta"]["days"].as_f64().expect("days");
    assert!((3.0..4.0).contains(&days), "{days}");
}

#[test]
fn plan_prints_text_by_default() {
    let output = switchboard(&["plan", "--baseline-rate", "15%", "--mde-relative", "-10%"]);
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).expect("utf-8");
    assert!(text.contains("Per variant"), "{text}");
    assert!(text.contains("give --traffic-per-day"), "{text}");
}

#[test]
fn invalid_input_fails_with_a_message() {
    let output = switchboard(&["plan", "--baseline-rate", "1.5", "--mde-absolute", "0.01"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("baselineRate must be strictly between 0 and 1"),
        "{stderr}"
    );
}
