//! A simulated helpdesk: customers ask the runtime questions over `POST /v1/answer`, and the
//! ticket's outcome comes back over `POST /v1/feedback` — escalated with a probability that
//! depends on the adapter version that answered (from the answer's provenance), resolved otherwise.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::{Value, json};
use switchboard_testkit::process::http_request;

/// Support questions about billing (the lineage the stories roll out).
pub const QUESTIONS: &[&str] = &[
    "How many days do I have to request a refund?",
    "When is my invoice sent each month?",
    "Can I get a refund for an annual plan?",
    "How do I update the card used for payments?",
    "Why was I charged twice this month?",
    "Where can I download past invoices?",
    "How do I change my billing address on invoices?",
    "Do you refund unused seats when I downgrade?",
];

/// The simulated customers' generator: the same seed gives the same tickets.
pub use switchboard_testkit::rng::Rng;

/// What one ticket looked like.
#[derive(Debug, Clone, PartialEq)]
pub struct Ticket {
    /// Adapter version in the provenance (`None`: no adapter).
    pub adapter_version: Option<String>,
    /// Adapter role in the provenance.
    pub adapter_role: Option<String>,
    /// Whether the customer escalated.
    pub escalated: bool,
    /// The RuntimeConfig revision that served it.
    pub config_revision: String,
}

/// Counts per adapter version ("" for none): (answers, escalations).
pub type Tally = BTreeMap<String, (u64, u64)>;

/// Escalation probability for an adapter version (`None`: answered without an adapter).
pub type EscalationModel = Arc<dyn Fn(Option<&str>) -> f64 + Send + Sync>;

/// One question and its feedback. Errors name the call that failed.
pub fn ticket(
    runtime: SocketAddr,
    customer: u64,
    rng: &mut Rng,
    escalation: &EscalationModel,
) -> Result<Ticket, String> {
    let query = QUESTIONS[(customer as usize) % QUESTIONS.len()];
    let request = json!({"query": query, "userId": format!("customer-{customer}")});
    let (status, body) = http_request(runtime, "POST", "/v1/answer", Some(&request.to_string()))?;
    if status != 200 {
        return Err(format!("POST /v1/answer: {status} {body}"));
    }
    let answer: Value =
        serde_json::from_str(&body).map_err(|e| format!("answer is not JSON ({e}): {body}"))?;
    let provenance = &answer["provenance"];
    let adapter_version = provenance["adapter"]["version"].as_str().map(str::to_owned);
    let adapter_role = provenance["adapter"]["role"].as_str().map(str::to_owned);
    let token = answer["interactionToken"]
        .as_str()
        .ok_or_else(|| format!("answer without interactionToken: {body}"))?;
    let escalated = rng.next_f64() < escalation(adapter_version.as_deref());
    let outcome = if escalated { "escalated" } else { "resolved" };
    let feedback = json!({"token": token, "outcome": outcome});
    let (status, body) =
        http_request(runtime, "POST", "/v1/feedback", Some(&feedback.to_string()))?;
    if status != 200 {
        return Err(format!("POST /v1/feedback: {status} {body}"));
    }
    Ok(Ticket {
        adapter_version,
        adapter_role,
        escalated,
        config_revision: provenance["configRevision"]
            .as_str()
            .unwrap_or("")
            .to_owned(),
    })
}

/// The helpdesk running in the background until dropped.
pub struct Helpdesk {
    stop: Arc<AtomicBool>,
    tally: Arc<Mutex<Tally>>,
    recent: Arc<Mutex<Vec<Ticket>>>,
    errors: Arc<Mutex<Vec<String>>>,
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Helpdesk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Helpdesk")
            .field("tally", &self.tally())
            .finish_non_exhaustive()
    }
}

/// Customers the helpdesk serves at once (a helpdesk has many customers waiting; two keep the
/// runtime's retrieval and generation busy at the same time on a small machine).
pub const CONCURRENT_CUSTOMERS: u64 = 2;

impl Helpdesk {
    /// Starts [`CONCURRENT_CUSTOMERS`] customers, each sending tickets to `runtime` one after
    /// another (a failed call is recorded and retried after a pause: a runtime that is reloading
    /// may refuse briefly).
    pub fn start(runtime: SocketAddr, seed: u64, escalation: EscalationModel) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(Mutex::new(Tally::new()));
        let recent = Arc::new(Mutex::new(Vec::new()));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..CONCURRENT_CUSTOMERS)
            .map(|lane| {
                let (stop, tally, recent, errors) =
                    (stop.clone(), tally.clone(), recent.clone(), errors.clone());
                let escalation = escalation.clone();
                std::thread::spawn(move || {
                    let mut rng = Rng::new(seed.wrapping_mul(31).wrapping_add(lane));
                    // Lanes number their customers apart: unit ids never collide.
                    let mut customer = seed.wrapping_mul(1_000_003) + lane * 1_000_000_000;
                    while !stop.load(Ordering::Relaxed) {
                        customer += 1;
                        match ticket(runtime, customer, &mut rng, &escalation) {
                            Ok(t) => {
                                let mut tally = tally.lock().unwrap_or_else(|e| e.into_inner());
                                let entry = tally
                                    .entry(t.adapter_version.clone().unwrap_or_default())
                                    .or_default();
                                entry.0 += 1;
                                entry.1 += u64::from(t.escalated);
                                let mut recent = recent.lock().unwrap_or_else(|e| e.into_inner());
                                recent.push(t);
                                let excess = recent.len().saturating_sub(200);
                                recent.drain(..excess);
                            }
                            Err(e) => {
                                errors.lock().unwrap_or_else(|e| e.into_inner()).push(e);
                                std::thread::sleep(Duration::from_millis(500));
                            }
                        }
                    }
                })
            })
            .collect();
        Self {
            stop,
            tally,
            recent,
            errors,
            threads,
        }
    }

    /// Answers and escalations so far, per adapter version.
    pub fn tally(&self) -> Tally {
        self.tally.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The last (up to 200) tickets, oldest first.
    pub fn recent(&self) -> Vec<Ticket> {
        self.recent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Failed calls so far.
    pub fn errors(&self) -> Vec<String> {
        self.errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Stops after the tickets in progress.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

impl Drop for Helpdesk {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_is_uniform_and_deterministic() {
        let mut a = Rng::new(7);
        let mut b = Rng::new(7);
        let draws: Vec<f64> = (0..10_000).map(|_| a.next_f64()).collect();
        assert!(draws.iter().all(|x| (0.0..1.0).contains(x)));
        let mean = draws.iter().sum::<f64>() / draws.len() as f64;
        assert!((mean - 0.5).abs() < 0.02, "{mean}");
        let below = draws.iter().filter(|x| **x < 0.3).count() as f64 / draws.len() as f64;
        assert!((below - 0.3).abs() < 0.02, "{below}");
        assert_eq!(b.next_f64(), draws[0]);
    }
}
