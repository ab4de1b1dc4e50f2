//! Fills an outcome store with synthetic interactions and outcomes, to measure the export and
//! the coverage-gap report at volume (docs/training-data.md, "Measured"):
//!
//! ```sh
//! cargo run -p switchboard-flywheel --example synthetic_store -- sqlite:///tmp/fw.db 10000
//! time switchboard-runtime export --outcome-store sqlite:///tmp/fw.db --out /tmp/fw.jsonl
//! ```
//!
//! 60 topics x 4 wordings of support questions (so near-duplicates exist), half of them with an
//! account number of their own (so most texts are distinct and embedded), 2,000 users, spread
//! over the last 10 days; outcomes drawn with a fixed seed: 55% resolved (5% of those reopened),
//! 15% escalated, 25% rated; 4% refusals with no passage found (a "payroll" topic the knowledge
//! base lacks is one of them, the top coverage gap).
#![allow(clippy::print_stdout)]

use std::time::Instant;

use switchboard_policy::{Outcome, Variant};
use switchboard_store::{Interaction, OutcomeStore};

const TOPICS: [&str; 60] = [
    "reset my password",
    "enable two-factor authentication",
    "change my email address",
    "export my invoices",
    "connect Stripe",
    "cancel my subscription",
    "get a refund",
    "add a team member",
    "remove a team member",
    "change a user's role",
    "set up sales tax",
    "charge VAT to EU customers",
    "create a recurring invoice",
    "pause a recurring invoice",
    "fix a broken bank feed",
    "reconnect my bank",
    "change my payment method",
    "update my billing address",
    "download a receipt",
    "see my API rate limits",
    "get an API key",
    "rotate my API key",
    "import customers from a CSV",
    "export my data",
    "delete my account",
    "change the invoice template",
    "add my logo to invoices",
    "send a payment reminder",
    "mark an invoice as paid",
    "issue a credit note",
    "handle a chargeback",
    "dispute a chargeback",
    "upgrade my plan",
    "downgrade my plan",
    "see the price list",
    "read the SLA",
    "contact support",
    "change the currency",
    "add a second currency",
    "reconcile a transaction",
    "split a transaction",
    "undo a reconciliation",
    "set up multi-entity accounting",
    "close the books for a month",
    "reopen a closed period",
    "create a budget",
    "run a profit and loss report",
    "run a balance sheet",
    "schedule a report by email",
    "share a report with my accountant",
    "invite my accountant",
    "set up SSO",
    "change my time zone",
    "use the mobile app",
    "turn on dark mode",
    "set up webhooks",
    "retry a failed webhook",
    "archive a customer",
    "merge two customers",
    "run payroll for my employees",
];

const WORDINGS: [&str; 4] = [
    "How do I {}?",
    "how do i {}",
    "Can you tell me how to {}?",
    "I need to {}, what are the steps?",
];

/// A small deterministic generator (splitmix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(url), Some(n)) = (args.next(), args.next()) else {
        return Err(
            "usage: synthetic_store <sqlite://path | postgres://...> <interactions>".into(),
        );
    };
    let n: u64 = n.parse().map_err(|e| format!("interactions: {e}"))?;
    let store = OutcomeStore::connect(&url).await?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let now = i64::try_from(now)?;
    let mut rng = Rng(12);
    let started = Instant::now();
    for i in 0..n {
        let topic_index = rng.below(TOPICS.len() as u64) as usize;
        let topic = TOPICS[topic_index];
        let gap = topic_index == TOPICS.len() - 1;
        let mut query = WORDINGS[rng.below(WORDINGS.len() as u64) as usize].replace("{}", topic);
        // Half the customers add a detail of their own: mostly distinct texts to embed.
        if rng.chance(50) {
            query.push_str(&format!(" (account {})", rng.below(100_000)));
        }
        let created_at = now - 10 * 86_400 + i64::try_from(i * 10 * 86_400 / n.max(1))?;
        let refused = gap || rng.chance(3);
        let id = format!("syn-{i:07}");
        let document = format!("guides/{}.md", topic.replace(' ', "-"));
        store
            .record_interaction(&Interaction {
                id: id.clone(),
                created_at,
                expires_at: created_at + 7 * 86_400,
                unit: Some(format!("user-{}", rng.below(2_000))),
                variant: Variant {
                    router: "support/helpdesk".into(),
                    model: "small".into(),
                    ..Variant::default()
                },
                kb_generation: "gen-000001".into(),
                config_revision: "sha256:synthetic".into(),
                route_reason: "easy".into(),
                query,
                rewritten_query: None,
                answer: if refused {
                    "I don't know: the knowledge base has nothing on that.".into()
                } else {
                    format!("To {topic}, open Settings and follow the steps in the guide [1].")
                },
                refused,
                invalid_citation: false,
                retrieval_failed: refused,
                best_score: Some(if refused {
                    0.1
                } else {
                    0.5 + rng.below(50) as f64 / 100.0
                }),
                cited_documents: if refused {
                    Vec::new()
                } else {
                    vec![document.clone()]
                },
                retrieved_documents: if refused { Vec::new() } else { vec![document] },
                segments: String::new(),
                routing: None,
            })
            .await?;
        let at = created_at + 600;
        if rng.chance(15) || (gap && rng.chance(60)) {
            store.record_outcome(&id, Outcome::Escalated, at).await?;
        } else if rng.chance(55) {
            store.record_outcome(&id, Outcome::Resolved, at).await?;
            if rng.chance(5) {
                store
                    .record_outcome(&id, Outcome::Reopened, at + 3_600)
                    .await?;
            }
        }
        if rng.chance(25) {
            let csat = u8::try_from(1 + rng.below(5))?;
            store
                .record_outcome(&id, Outcome::Csat(csat), at + 60)
                .await?;
        }
    }
    println!(
        "stored {n} synthetic interactions in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
