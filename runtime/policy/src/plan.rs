//! Which version of each adapter lineage serves a request, and which requests are mirrored to a
//! Shadow candidate.
//!
//! The RuntimeConfig lists, per lineage, one `Stable` version and at most one candidate: a
//! `Canary` with a traffic weight or a `Shadow` with a sample share. A unit's canary draw is
//! `hash("canary", lineage, candidate version, key)`, so a user stays on the same version for
//! the whole step (sticky), and moving from a 10% to a 25% step only adds users to the canary
//! (the draw is compared with a growing weight). A new candidate version redraws.
use std::collections::BTreeMap;

use switchboard_crds::runtime_config::{AdapterConfig, AdapterRole, RuntimeConfig};

use crate::experiment::Assignment;
use crate::hash::unit_interval;

/// The adapter versions of one lineage.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Lineage<'a> {
    /// The stable version.
    pub stable: Option<&'a AdapterConfig>,
    /// The canary and its share of traffic (0..=1).
    pub canary: Option<(&'a AdapterConfig, f64)>,
    /// The shadow candidate and its sample share (0..=1).
    pub shadow: Option<(&'a AdapterConfig, f64)>,
}

/// The version chosen for a request.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Served<'a> {
    /// The adapter entry.
    pub adapter: &'a AdapterConfig,
    /// `Stable` or `Canary` (a pinned experiment version reports the role it has in the config).
    pub role: AdapterRole,
}

/// Per-lineage serving plan of a RuntimeConfig.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ServingPlan<'a> {
    lineages: BTreeMap<&'a str, Lineage<'a>>,
    all: Vec<&'a AdapterConfig>,
}

impl<'a> ServingPlan<'a> {
    /// Indexes the config's adapters by lineage.
    pub fn new(config: &'a RuntimeConfig) -> Self {
        let mut lineages: BTreeMap<&str, Lineage<'_>> = BTreeMap::new();
        for adapter in &config.adapters {
            let entry = lineages.entry(adapter.lineage.as_str()).or_default();
            match adapter.role {
                AdapterRole::Stable => entry.stable = Some(adapter),
                AdapterRole::Canary => {
                    let weight = f64::from(adapter.traffic_weight.unwrap_or(0)) / 100.0;
                    entry.canary = Some((adapter, weight.clamp(0.0, 1.0)));
                }
                AdapterRole::Shadow => {
                    let share = adapter
                        .shadow_sample_share
                        .as_ref()
                        .map_or(0.0, |p| p.fraction());
                    entry.shadow = Some((adapter, share.clamp(0.0, 1.0)));
                }
                // Served to the Router holdout only ([`ServingPlan::serve_held_out`]).
                AdapterRole::Pinned => {}
            }
        }
        Self {
            lineages,
            all: config.adapters.iter().collect(),
        }
    }

    /// Lineages with a servable version, sorted.
    pub fn lineages(&self) -> impl Iterator<Item = (&'a str, &Lineage<'a>)> {
        self.lineages.iter().map(|(k, v)| (*k, v))
    }

    /// The lineage's versions.
    pub fn lineage(&self, lineage: &str) -> Option<&Lineage<'a>> {
        self.lineages.get(lineage)
    }

    /// The version of `lineage` that serves a request with sticky key `key` (the unit id, else
    /// the interaction id). An experiment arm that pins a version (`overrides.adapterVersions`)
    /// wins when that version is loaded; the holdout never gets the canary.
    pub fn serve(
        &self,
        lineage: &str,
        key: &str,
        assignment: Option<&Assignment<'_>>,
    ) -> Option<Served<'a>> {
        let plan = self.lineages.get(lineage)?;
        if let Some(pinned) = assignment
            .and_then(|a| a.overrides)
            .and_then(|o| o.adapter_versions.get(lineage))
            && let Some(adapter) = self.all.iter().find(|a| {
                a.lineage == lineage && &a.version == pinned && a.role != AdapterRole::Shadow
            })
        {
            return Some(Served {
                adapter,
                role: adapter.role,
            });
        }
        let holdout = assignment.is_some_and(Assignment::is_holdout);
        if !holdout && let Some((canary, weight)) = plan.canary {
            let draw = unit_interval(&["canary", lineage, &canary.version, key]);
            if draw < weight || plan.stable.is_none() {
                return Some(Served {
                    adapter: canary,
                    role: AdapterRole::Canary,
                });
            }
        }
        plan.stable.map(|adapter| Served {
            adapter,
            role: AdapterRole::Stable,
        })
    }

    /// The version of `lineage` a unit of the Router's permanent holdout is served: the one the
    /// holdout pinned when it started; a lineage it did not pin (created since) serves it no
    /// adapter. Never a canary.
    pub fn serve_held_out(
        &self,
        lineage: &str,
        pinned: &BTreeMap<String, String>,
    ) -> Option<Served<'a>> {
        let version = pinned.get(lineage)?;
        self.all
            .iter()
            .find(|a| {
                a.lineage == lineage && a.version == *version && a.role != AdapterRole::Shadow
            })
            .map(|adapter| Served {
                adapter,
                role: AdapterRole::Pinned,
            })
    }

    /// The Shadow candidate of `lineage` when this request (`request_key`: the interaction id, so
    /// a share of requests, not of users) is sampled for mirroring.
    pub fn shadow(&self, lineage: &str, request_key: &str) -> Option<&'a AdapterConfig> {
        let (adapter, share) = self.lineages.get(lineage)?.shadow?;
        (unit_interval(&["shadow", lineage, &adapter.version, request_key]) < share)
            .then_some(adapter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_crds::experiment::Overrides;
    use switchboard_crds::runtime_config::{AdapterArtifact, DomainConfig, LoraConfig};
    use switchboard_crds::units::Percent;

    fn adapter(lineage: &str, version: &str, role: AdapterRole) -> AdapterConfig {
        AdapterConfig {
            name: lineage.into(),
            lineage: lineage.into(),
            version: version.into(),
            role,
            artifact: AdapterArtifact {
                uri: None,
                sha256: format!("sha256:{}", "a".repeat(64)).parse().unwrap(),
                pull_secret: None,
            },
            lora: LoraConfig {
                rank: 8,
                alpha: 16.0,
                target_modules: vec!["q_proj".into()],
            },
            domain: DomainConfig {
                description: "d".into(),
                example_queries: vec![],
                fallback: false,
            },
            traffic_weight: (role == AdapterRole::Canary).then_some(25),
            shadow_sample_share: (role == AdapterRole::Shadow).then(|| Percent::from_fraction(0.5)),
        }
    }

    fn config(adapters: Vec<AdapterConfig>) -> RuntimeConfig {
        let mut c: RuntimeConfig = serde_json::from_value(serde_json::json!({
            "apiVersion": "switchboard.dev/v1alpha1", "kind": "RuntimeConfig",
            "router": {"namespace": "ns", "name": "r"},
            "knowledgeBase": {"name": "kb", "indexGeneration": 1, "embeddingModel": "m", "retrieval": {}},
            "smallModel": {"model": "m", "maxActiveAdapters": 4, "maxNewTokens": 64},
            "largeModel": {"maxQueueDepth": 8},
            "routerPolicy": {"difficultyThreshold": 0.6, "adapterSelection": {}, "queryRewrite": {},
                             "explorationShare": "5%", "shadowMaxConcurrent": 2}
        }))
        .unwrap();
        c.adapters = adapters;
        c
    }

    #[test]
    fn canary_gets_its_weight_sticky_and_growing() {
        let c = config(vec![
            adapter("pricing", "1.0.0", AdapterRole::Stable),
            adapter("pricing", "1.1.0", AdapterRole::Canary),
        ]);
        let plan = ServingPlan::new(&c);
        let on_canary: Vec<bool> = (0..8_000)
            .map(|i| {
                plan.serve("pricing", &format!("u{i}"), None).unwrap().role == AdapterRole::Canary
            })
            .collect();
        let share = on_canary.iter().filter(|x| **x).count() as f64 / 8_000.0;
        assert!((share - 0.25).abs() < 0.02, "{share}");
        // Sticky.
        assert_eq!(
            plan.serve("pricing", "u1", None),
            plan.serve("pricing", "u1", None)
        );
        // A bigger step keeps everyone who was on the canary.
        let mut bigger = c.clone();
        bigger.adapters[1].traffic_weight = Some(50);
        let plan50 = ServingPlan::new(&bigger);
        for (i, was) in on_canary.iter().enumerate() {
            if *was {
                let now = plan50.serve("pricing", &format!("u{i}"), None).unwrap();
                assert_eq!(now.role, AdapterRole::Canary);
            }
        }
        assert!(plan.serve("other", "u1", None).is_none());
    }

    #[test]
    fn holdout_and_pinned_versions() {
        let c = config(vec![
            adapter("pricing", "1.0.0", AdapterRole::Stable),
            adapter("pricing", "1.1.0", AdapterRole::Canary),
        ]);
        let plan = ServingPlan::new(&c);
        let holdout = Assignment {
            experiment: "e",
            arm: "holdout",
            overrides: None,
            unit: "u",
        };
        for i in 0..500 {
            let s = plan
                .serve("pricing", &i.to_string(), Some(&holdout))
                .unwrap();
            assert_eq!(s.adapter.version, "1.0.0");
        }
        let mut pin = Overrides::default();
        pin.adapter_versions
            .insert("pricing".into(), "1.1.0".into());
        let arm = Assignment {
            experiment: "e",
            arm: "treatment",
            overrides: Some(&pin),
            unit: "u",
        };
        for i in 0..200 {
            let s = plan.serve("pricing", &i.to_string(), Some(&arm)).unwrap();
            assert_eq!(s.adapter.version, "1.1.0");
        }
    }

    #[test]
    fn the_router_holdout_gets_its_pinned_versions_and_never_a_canary() {
        let c = config(vec![
            adapter("pricing", "1.1.0", AdapterRole::Stable),
            adapter("pricing", "1.2.0", AdapterRole::Canary),
            adapter("pricing", "1.0.0", AdapterRole::Pinned),
            adapter("billing", "2.0.0", AdapterRole::Stable),
        ]);
        let plan = ServingPlan::new(&c);
        // Everyone else never gets the pinned version.
        for i in 0..500 {
            let served = plan.serve("pricing", &format!("user-{i}"), None).unwrap();
            assert_ne!(served.adapter.version, "1.0.0");
        }
        let pinned: BTreeMap<String, String> = [("pricing".to_owned(), "1.0.0".to_owned())].into();
        let held = plan.serve_held_out("pricing", &pinned).unwrap();
        assert_eq!(
            (held.adapter.version.as_str(), held.role),
            ("1.0.0", AdapterRole::Pinned)
        );
        // A lineage created after the holdout started serves it no adapter.
        assert!(plan.serve_held_out("billing", &pinned).is_none());

        // The holdout's share of units, stable per unit, independent of the experiment layer.
        let held_out = (0..100_000)
            .filter(|i| crate::experiment::in_router_holdout(0.05, &format!("user-{i}")))
            .count();
        assert!((4_700..=5_300).contains(&held_out), "{held_out}");
        let both = (0..100_000)
            .map(|i| format!("user-{i}"))
            .filter(|u| {
                crate::experiment::in_router_holdout(0.05, u)
                    && crate::experiment::layer_bucket(u) < 5_000
            })
            .count();
        assert!((2_200..=2_800).contains(&both), "{both}");
    }

    #[test]
    fn shadow_is_sampled_per_request_and_never_served() {
        let c = config(vec![
            adapter("pricing", "1.0.0", AdapterRole::Stable),
            adapter("pricing", "1.1.0", AdapterRole::Shadow),
        ]);
        let plan = ServingPlan::new(&c);
        let mirrored = (0..4_000)
            .filter(|i| plan.shadow("pricing", &format!("req-{i}")).is_some())
            .count();
        assert!((1_850..2_150).contains(&mirrored), "{mirrored}");
        for i in 0..200 {
            assert_eq!(
                plan.serve("pricing", &i.to_string(), None)
                    .unwrap()
                    .adapter
                    .version,
                "1.0.0"
            );
        }
    }
}
