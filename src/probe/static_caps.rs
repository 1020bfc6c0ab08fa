//! Capabilities declared in the policy files (`[[capability]]`): what an
//! operator asserts a recipient can receive. Used for partners whose
//! capabilities are agreed out of band, and by the tests.

use std::sync::{Arc, RwLock};

use serde_json::json;

use super::{Probe, ProbeAnswer, ProbeFuture};
pub use crate::capability::Declared;
use crate::util::pattern;

/// The static probe; its declarations are replaced on policy reload.
#[derive(Clone, Default)]
pub struct StaticCaps {
    entries: Arc<RwLock<Vec<Declared>>>,
}

impl StaticCaps {
    /// Replaces the declarations.
    pub fn set(&self, entries: Vec<Declared>) {
        *self.entries.write().unwrap_or_else(|p| p.into_inner()) = entries;
    }
}

impl Probe for StaticCaps {
    fn name(&self) -> &'static str {
        "static"
    }

    fn cache_key(&self, recipient: &str) -> String {
        recipient.to_lowercase()
    }

    fn probe<'a>(&'a self, recipient: &'a str) -> ProbeFuture<'a> {
        let entries = self
            .entries
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        Box::pin(async move {
            let mut caps = Vec::new();
            let mut origins = Vec::new();
            for d in entries
                .iter()
                .filter(|d| pattern::any(&d.patterns, recipient))
            {
                caps.extend(d.capabilities.iter().cloned());
                origins.push(d.origin.clone());
            }
            ProbeAnswer {
                result: Ok(caps),
                evidence: json!({ "declared_in": origins }),
            }
        })
    }
}
