//! The real Prometheus, started by the harness: scrape targets set after start are picked up,
//! instant queries return vectors and scalars, bad PromQL is an error.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::time::Duration;

use switchboard_testkit::prometheus::{Prometheus, Target};

#[test]
fn scrapes_targets_set_after_start_and_answers_queries() {
    let Some(_) = Prometheus::binary() else {
        panic!("no prometheus binary: run hack/setup.sh tools");
    };
    let dir = std::env::temp_dir().join(format!("testkit-prometheus-{}", std::process::id()));
    let prometheus = Prometheus::start(&dir, &[]).unwrap();
    assert!(prometheus.query("up").unwrap().is_empty(), "no targets yet");

    // Prometheus scrapes itself once told to.
    let itself = Target::new("self", prometheus.addr()).label("pod", "p-0");
    prometheus.set_targets(&[itself]).unwrap();
    let up = prometheus
        .wait_for_value("up{job=\"self\"}", Duration::from_secs(30), |v| v == 1.0)
        .unwrap();
    assert_eq!(up, 1.0);
    let samples = prometheus.query("up").unwrap();
    assert_eq!(samples.len(), 1);
    assert_eq!(samples[0].labels["pod"], "p-0");
    assert_eq!(samples[0].labels["job"], "self");

    assert_eq!(
        prometheus.query_value("scalar(vector(2.5))").unwrap(),
        Some(2.5)
    );
    assert_eq!(
        prometheus.query_value("absent_metric_for_sure").unwrap(),
        None
    );
    assert!(prometheus.query("sum(").is_err());
    drop(prometheus);
    std::fs::remove_dir_all(&dir).unwrap();
}
