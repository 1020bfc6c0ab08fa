//! The policy engine: rules evaluated in order against a message and a
//! recipient, then the first method in the rule's order that the
//! recipient can really receive (per the probes) is chosen.

use std::net::IpAddr;
use std::sync::Arc;

use serde::Serialize;

use super::detectors::{Detector, Detectors};
use super::facts::MessageFacts;
use super::file::{self, Compiled, Rule};
use super::pattern;
use super::{Method, TlsRequirement};
use crate::capability::{Capability, ProbeReport};
use crate::config::ConfigProblem;

/// The default policy, used when `[policy] files` is empty, and shipped as
/// `config/policy.d/00-default.toml`.
pub const DEFAULT_POLICY: &str = include_str!("../../config/policy.d/00-default.toml");

/// Methods this build can apply. A method not listed here is skipped
/// ("not available") wherever a rule names it.
pub const AVAILABLE_METHODS: &[Method] = &[Method::Pgp, Method::Tls];

/// Whether a rule decides or only records what it would have decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Enforce,
    Monitor,
}

/// What a rule does with a matching recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleAction {
    /// Deliver with the strongest method available in the rule's order.
    Deliver,
    /// Refuse: the recipient bounces with the rule's message.
    Reject,
    /// Quarantine until an operator releases it (`sealgate queue release`).
    Hold,
}

/// What happens to the recipient now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Deliver,
    Reject,
    Hold,
    /// No method in the rule's order can serve the recipient now: it stays
    /// queued and is decided again at the next attempt (fail closed).
    Wait,
}

/// A method skipped, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Skip {
    pub method: Method,
    pub reason: String,
}

/// What a monitor-mode rule would have decided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Shadow {
    pub rule: String,
    pub action: Action,
    pub method: Option<Method>,
    pub tls: TlsRequirement,
}

/// Why the decision is what it is. Holds names, counts and probe evidence,
/// never message content.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Explanation {
    /// Conditions of the deciding rule that matched.
    pub matched: Vec<String>,
    /// Detectors that found something (name, count), over the whole message.
    pub detectors: Vec<(String, usize)>,
    /// Whether a PHI detector fired (raises the TLS floor).
    pub phi: bool,
    /// The method order that applied.
    pub methods: Vec<Method>,
    /// The TLS floor that applied.
    pub min_tls: Option<TlsRequirement>,
    pub skipped: Vec<Skip>,
    pub probes: Vec<ProbeReport>,
    pub monitors: Vec<Shadow>,
    /// The content was longer than `max_scan_size`; only its start was scanned.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub scan_truncated: bool,
    /// What the detectors could not read, and why (positions and types,
    /// never content): `attachment 2 (application/pdf): encrypted`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unscannable: Vec<String>,
    /// Why the content counts as PHI: `detector us-ssn`, or
    /// `unscannable attachment 2 (application/pdf): encrypted`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub phi_reasons: Vec<String>,
}

/// The decision for one recipient.
#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    pub action: Action,
    /// The method (meaningful for `deliver`).
    pub method: Method,
    /// What the hop to the recipient's server must prove.
    pub tls: TlsRequirement,
    pub sign: bool,
    /// The rule that decided (`default` when none matched).
    pub rule: String,
    /// Hash of the loaded policy files.
    pub policy_version: String,
    /// Subject tag to remove before delivery.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub strip_tag: Option<String>,
    /// For reject, hold and wait: why, in words.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// RFC 8689: deliver only to hosts that offer REQUIRETLS, and pass it on.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub requiretls: bool,
    /// The recipient key (OpenPGP fingerprint) for an end-to-end method.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The TLS requirement rests on DNSSEC (DANE, or the mandatory TLS of
    /// a secure but unusable TLSA RRset): delivery uses only the hosts of
    /// the validated MX RRset, every name through the validating resolver.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub dnssec_mx: bool,
    /// `TLS-Required: No` was honoured: what the destination publishes
    /// (DANE, MTA-STS) is not enforced for this message (RFC 8689 section 5).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub published_ignored: bool,
    pub explanation: Explanation,
}

impl Decision {
    /// A decision no rule made (`builtin-notification`): the base of
    /// decisions taken without evaluating the policy, such as the `wait`
    /// for a message that cannot be read. Mail sealgate generates itself
    /// (DSNs, TLS reports) is decided by the policy like any other.
    pub fn notification(policy_version: &str) -> Decision {
        Decision {
            action: Action::Deliver,
            method: Method::Tls,
            tls: TlsRequirement::Opportunistic,
            sign: false,
            rule: "builtin-notification".into(),
            policy_version: policy_version.to_string(),
            strip_tag: None,
            reason: String::new(),
            requiretls: false,
            key: None,
            dnssec_mx: false,
            published_ignored: false,
            explanation: Explanation::default(),
        }
    }
}

/// Errors loading policy files: every problem, with file, line and key.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("{}", render(.0))]
    Invalid(Vec<ConfigProblem>),
}

fn render(problems: &[ConfigProblem]) -> String {
    let mut s = format!(
        "invalid policy ({} problem{}):",
        problems.len(),
        if problems.len() == 1 { "" } else { "s" }
    );
    for p in problems {
        s.push_str("\n  ");
        s.push_str(&p.to_string());
    }
    s
}

/// The loaded policy.
#[derive(Debug, Clone)]
pub struct Policy {
    version: String,
    files: Vec<std::path::PathBuf>,
    compiled: Compiled,
    detectors: Arc<Detectors>,
    /// Detectors any rule or the PHI guard uses.
    needed: Vec<Detector>,
    /// Whether any rule looks at content (so the message must be read).
    needs_content: bool,
}

/// The envelope and client facts of a message (content facts are added
/// by [`MessageFacts::parse`]).
#[derive(Debug, Clone, Default)]
pub struct Envelope {
    pub sender: String,
    pub client_ip: Option<IpAddr>,
    pub auth_user: Option<String>,
    pub size: u64,
    /// MAIL FROM had REQUIRETLS: verified TLS to hosts that support it.
    pub requiretls: bool,
}

impl Policy {
    /// Loads the files matching `patterns`, in order (or the built-in
    /// default policy when there are none). The version is the SHA-256 of
    /// the files' names and contents.
    pub fn load(patterns: &[String]) -> Result<Policy, PolicyError> {
        let mut problems = Vec::new();
        let mut files = Vec::new();
        for pat in patterns {
            match glob::glob(pat) {
                Ok(paths) => {
                    let mut matched: Vec<_> = paths
                        .filter_map(Result::ok)
                        .filter(|p| p.is_file())
                        .collect();
                    matched.sort();
                    files.extend(matched);
                }
                Err(e) => problems.push(ConfigProblem {
                    file: pat.into(),
                    line: None,
                    column: None,
                    key: Some("policy.files".into()),
                    message: e.to_string(),
                }),
            }
        }
        let mut compiled = Compiled::default();
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        if files.is_empty() {
            file::compile_file(
                std::path::Path::new("<built-in default policy>"),
                DEFAULT_POLICY,
                &mut compiled,
                &mut problems,
            );
            ctx.update(DEFAULT_POLICY.as_bytes());
        }
        for f in &files {
            match std::fs::read_to_string(f) {
                Ok(text) => {
                    ctx.update(f.display().to_string().as_bytes());
                    ctx.update(&[0]);
                    ctx.update(text.as_bytes());
                    ctx.update(&[0]);
                    file::compile_file(f, &text, &mut compiled, &mut problems);
                }
                Err(e) => problems.push(ConfigProblem {
                    file: f.clone(),
                    line: None,
                    column: None,
                    key: None,
                    message: format!("cannot read the file: {e}"),
                }),
            }
        }
        for (i, msg) in file::unreachable_rules(&compiled.rules) {
            let r = &compiled.rules[i];
            let (path, line) = r.origin.rsplit_once(':').unwrap_or((&r.origin, ""));
            problems.push(ConfigProblem {
                file: path.into(),
                line: line.parse().ok(),
                column: None,
                key: Some("rule".into()),
                message: msg,
            });
        }
        if !problems.is_empty() {
            return Err(PolicyError::Invalid(problems));
        }
        let mut needed: Vec<Detector> = compiled.defaults.phi_detectors.clone();
        for r in &compiled.rules {
            needed.extend(r.matcher.detectors.iter().copied());
        }
        needed.sort();
        needed.dedup();
        let needs_content = !needed.is_empty()
            || compiled.defaults.honor_tls_required_no
            || compiled.rules.iter().any(|r| {
                let m = &r.matcher;
                !m.header.is_empty()
                    || m.subject_tag.is_some()
                    || !m.body.is_empty()
                    || !m.attachment_content.is_empty()
                    || !m.attachment_type.is_empty()
            });
        Ok(Policy {
            version: hex::encode(&ctx.finish().as_ref()[..8]),
            files,
            compiled,
            detectors: Arc::new(Detectors::new()),
            needed,
            needs_content,
        })
    }

    /// The policy version (short hash).
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The files that were loaded (empty: the built-in default).
    pub fn files(&self) -> &[std::path::PathBuf] {
        &self.files
    }

    /// The rules, in order.
    pub fn rules(&self) -> &[Rule] {
        &self.compiled.rules
    }

    /// Capabilities declared with `[[capability]]`.
    pub fn declared_capabilities(&self) -> Vec<crate::capability::Declared> {
        self.compiled.capabilities.clone()
    }

    /// Whether rules need the message content (else only the envelope).
    pub fn needs_content(&self) -> bool {
        self.needs_content
    }

    /// How much of a message is scanned.
    pub fn max_scan_size(&self) -> u64 {
        self.compiled.defaults.max_scan_size
    }

    /// Evaluates everything that depends only on the message, once per
    /// delivery attempt.
    pub fn prepare(&self, envelope: Envelope, facts: MessageFacts) -> Prepared<'_> {
        let findings = if self.needs_content {
            facts.detect(&self.detectors, &self.needed)
        } else {
            Vec::new()
        };
        let defaults = &self.compiled.defaults;
        let mut phi_reasons: Vec<String> = findings
            .iter()
            .filter(|(d, _)| defaults.phi_detectors.contains(d))
            .map(|(d, _)| format!("detector {}", d.name()))
            .collect();
        // Fail closed: what no detector could read may hold PHI. Only where
        // PHI detection is on at all (an empty `phi_detectors` turns it off).
        if defaults.unscannable_is_phi && !defaults.phi_detectors.is_empty() {
            phi_reasons.extend(facts.unscannable.iter().map(|u| format!("unscannable {u}")));
        }
        let phi = !phi_reasons.is_empty();
        // Content conditions may match what could not be read, as the
        // PHI floor does (and only where `unscannable_is_phi` is on).
        let unread = defaults.unscannable_is_phi && !facts.unscannable.is_empty();
        let message_matches = self
            .compiled
            .rules
            .iter()
            .map(|r| message_conditions(r, &envelope, &facts, &findings, unread))
            .collect();
        let tls_required_no = self.compiled.defaults.honor_tls_required_no
            && facts
                .headers
                .get("tls-required")
                .is_some_and(|v| v.iter().any(|v| v.trim().eq_ignore_ascii_case("no")));
        Prepared {
            policy: self,
            envelope,
            truncated: facts.truncated,
            unscannable: facts.unscannable.clone(),
            phi_reasons,
            findings,
            phi,
            tls_required_no,
            message_matches,
        }
    }
}

/// A message, evaluated against the policy's message-level conditions.
pub struct Prepared<'p> {
    policy: &'p Policy,
    envelope: Envelope,
    truncated: bool,
    unscannable: Vec<String>,
    phi_reasons: Vec<String>,
    findings: Vec<(Detector, usize)>,
    phi: bool,
    tls_required_no: bool,
    /// Per rule: `Some((descriptions, possible))` if every message-level
    /// condition matched (`possible`: a content condition matched only
    /// content that could not be read).
    message_matches: Vec<Option<(Vec<String>, bool)>>,
}

/// What the rules say for one recipient, before probing.
#[derive(Debug, Clone)]
pub struct RuleOutcome {
    pub rule: String,
    pub action: RuleAction,
    pub methods: Vec<Method>,
    pub min_tls: TlsRequirement,
    pub sign: bool,
    pub strip_tag: Option<String>,
    pub reject_message: String,
    pub matched: Vec<String>,
    /// RFC 8689 REQUIRETLS applies.
    pub requiretls: bool,
    /// `TLS-Required: No` is present and the policy honours it: published
    /// DANE/MTA-STS requirements are not enforced.
    pub ignore_published: bool,
    /// The rule matched only because what it looks for may be in content
    /// that could not be read (a `reject` rule then holds).
    pub possible: bool,
}

/// The rule outcome for a recipient plus the monitor-mode rules that
/// matched before it.
#[derive(Debug, Clone)]
pub struct Evaluation {
    pub outcome: RuleOutcome,
    pub monitors: Vec<RuleOutcome>,
}

impl Evaluation {
    /// Whether the probe called `name` is needed to decide.
    pub fn wants_probe(&self, name: &str) -> bool {
        let needs = |o: &RuleOutcome| match name {
            "tls-offered" => {
                o.action == RuleAction::Deliver
                    && o.methods.contains(&Method::Tls)
                    && o.min_tls >= TlsRequirement::Encrypted
            }
            // Key discovery costs lookups per recipient: only when OpenPGP
            // is in the method order.
            "pgp" => o.action == RuleAction::Deliver && o.methods.contains(&Method::Pgp),
            _ => o.action == RuleAction::Deliver,
        };
        needs(&self.outcome) || self.monitors.iter().any(needs)
    }
}

impl Prepared<'_> {
    /// The rules' outcome for `recipient`. A recipient an operator released
    /// from hold is not held again by the same policy.
    pub fn evaluate(&self, recipient: &str, released: bool) -> Evaluation {
        let d = &self.policy.compiled.defaults;
        let mut monitors = Vec::new();
        for (rule, msg) in self.policy.compiled.rules.iter().zip(&self.message_matches) {
            let Some((msg_matched, possible)) = msg else {
                continue;
            };
            let Some(mut matched) = recipient_conditions(rule, recipient) else {
                continue;
            };
            // A reject rule that only may match holds: an operator looks,
            // nobody is bounced for what could not be read.
            let action = match rule.action {
                RuleAction::Reject if *possible => RuleAction::Hold,
                a => a,
            };
            if released && action == RuleAction::Hold {
                continue;
            }
            matched.extend(msg_matched.iter().cloned());
            let mut outcome = self.outcome_of(Some(rule), matched);
            outcome.action = action;
            outcome.possible = *possible;
            if rule.mode == Mode::Monitor {
                monitors.push(outcome);
                continue;
            }
            return Evaluation { outcome, monitors };
        }
        let _ = d;
        Evaluation {
            outcome: self.outcome_of(None, Vec::new()),
            monitors,
        }
    }

    fn outcome_of(&self, rule: Option<&Rule>, matched: Vec<String>) -> RuleOutcome {
        let d = &self.policy.compiled.defaults;
        let mut min_tls = rule.and_then(|r| r.min_tls).unwrap_or(d.min_tls);
        if self.phi {
            min_tls = min_tls.max(d.phi_min_tls);
        }
        if self.envelope.requiretls {
            min_tls = min_tls.max(TlsRequirement::Verified);
        }
        RuleOutcome {
            rule: rule
                .map(|r| r.name.clone())
                .unwrap_or_else(|| "default".into()),
            action: rule.map(|r| r.action).unwrap_or(RuleAction::Deliver),
            methods: rule
                .and_then(|r| r.methods.clone())
                .unwrap_or_else(|| d.methods.clone()),
            min_tls,
            sign: rule.and_then(|r| r.sign).unwrap_or(d.sign),
            strip_tag: rule
                .filter(|r| r.strip_tag)
                .and_then(|r| r.matcher.subject_tag.clone()),
            reject_message: rule.map(|r| r.reject_message.clone()).unwrap_or_default(),
            matched,
            requiretls: self.envelope.requiretls,
            ignore_published: self.tls_required_no && !self.envelope.requiretls,
            possible: false,
        }
    }

    /// Chooses the method for `eval` given what the probes said.
    pub fn decide(&self, eval: &Evaluation, probes: Vec<ProbeReport>) -> Decision {
        let mut decision = choose(&eval.outcome, &probes, &self.policy.version);
        decision.explanation.monitors = eval
            .monitors
            .iter()
            .map(|m| {
                let d = choose(m, &probes, &self.policy.version);
                Shadow {
                    rule: m.rule.clone(),
                    action: d.action,
                    method: (d.action == Action::Deliver).then_some(d.method),
                    tls: d.tls,
                }
            })
            .collect();
        decision.explanation.detectors = self
            .findings
            .iter()
            .map(|(d, n)| (d.name().to_string(), *n))
            .collect();
        decision.explanation.phi = self.phi;
        decision.explanation.scan_truncated = self.truncated;
        decision.explanation.unscannable = self.unscannable.clone();
        decision.explanation.phi_reasons = self.phi_reasons.clone();
        if decision.action == Action::Wait && self.phi {
            decision.reason = format!(
                "{}; the content counts as PHI ({})",
                decision.reason,
                self.phi_reasons.join("; ")
            );
        }
        decision.explanation.probes = probes;
        decision
    }
}

/// The strongest TLS requirement the destination publishes (DANE, the
/// mandatory TLS of a secure but unusable TLSA RRset, MTA-STS), which is
/// enforced whatever the rule's floor and the content method: never a
/// downgrade. On a smarthost route, the same for what the smarthost meets
/// (`probe::smarthost`): a hop with a verified certificate or TLS is never
/// used with less.
fn published_level(probes: &[ProbeReport], from: impl Fn(&str) -> bool) -> TlsRequirement {
    probes
        .iter()
        .filter(|p| from(p.probe))
        .filter_map(|p| p.result.as_ref().ok().map(|r| (p.probe, r)))
        .flat_map(|(probe, caps)| caps.iter().map(move |c| (probe, c)))
        .filter_map(|(probe, c)| match c {
            Capability::Tls { level } if *level >= TlsRequirement::MtaSts => Some(*level),
            Capability::Tls {
                level: TlsRequirement::Encrypted,
            } if probe == "dane" || probe == "smarthost" => Some(TlsRequirement::Encrypted),
            _ => None,
        })
        .max()
        .unwrap_or(TlsRequirement::Opportunistic)
}

/// The OpenPGP probe's failure, if it failed (it fails only when a key
/// source failed for an address that had a key, see `probe::keys`).
fn pgp_error(probes: &[ProbeReport]) -> Option<String> {
    probes
        .iter()
        .find(|p| p.probe == "pgp")
        .and_then(|p| p.result.as_ref().err().cloned())
}

/// What the probes say about an OpenPGP key for the recipient.
enum PgpKey {
    /// A real key (by fingerprint).
    Found(String),
    /// A key that must not be used until an operator decides.
    Held(String),
    /// Only `[[capability]] pgp = true`: a declaration, no key to encrypt to.
    DeclaredOnly,
    None,
}

/// A real key wins over a policy declaration (which names no key), and a
/// held key holds the recipient rather than letting a weaker method send.
fn pgp_key(caps: &[&Capability]) -> PgpKey {
    let mut declared = false;
    for c in caps {
        match c {
            Capability::Pgp {
                fingerprint,
                source,
            } if source != "policy" => {
                return PgpKey::Found(fingerprint.clone());
            }
            Capability::Pgp { .. } => declared = true,
            _ => {}
        }
    }
    if let Some(reason) = caps.iter().find_map(|c| match c {
        Capability::PgpHeld { reason } => Some(reason.clone()),
        _ => None,
    }) {
        return PgpKey::Held(reason);
    }
    if declared {
        PgpKey::DeclaredOnly
    } else {
        PgpKey::None
    }
}

/// Whether the DANE probe is what asks for `level` (so delivery must use
/// the DNSSEC-validated MX set).
/// Whether the DANE probe found the destination's MX RRset DNSSEC-secure.
/// Then delivery takes the hosts from that validated set whatever the
/// decision's level: with TLSA or without, a `verified` or REQUIRETLS hop
/// must not be chosen by one forged answer from the plain resolver
/// (RFC 8689 section 4.2.1 wants the MX list from DNSSEC or MTA-STS).
fn mx_secure(probes: &[ProbeReport]) -> bool {
    probes
        .iter()
        .any(|p| p.probe == "dane" && p.result.is_ok() && p.evidence["dnssec"] == "secure")
}

/// Whether the names of the next hop come from an authenticated source:
/// a DNSSEC-secure MX RRset, an MTA-STS enforce policy (DANE implies the
/// first), or the configuration (a smarthost).
fn hop_names_authenticated(probes: &[ProbeReport]) -> bool {
    mx_secure(probes)
        || published_level(probes, |p| p == "mta-sts" || p == "dane") >= TlsRequirement::MtaSts
        || probes.iter().any(|p| p.probe == "smarthost")
}

fn from_dane(probes: &[ProbeReport], level: TlsRequirement) -> bool {
    level >= TlsRequirement::Encrypted
        && (level == TlsRequirement::Dane
            || probes
                .iter()
                .filter(|p| p.probe == "dane")
                .filter_map(|p| p.result.as_ref().ok())
                .flatten()
                .any(|c| *c == Capability::Tls { level }))
}

fn choose(o: &RuleOutcome, probes: &[ProbeReport], version: &str) -> Decision {
    let mut d = Decision {
        action: Action::Wait,
        method: Method::Tls,
        tls: o.min_tls,
        sign: o.sign,
        rule: o.rule.clone(),
        policy_version: version.to_string(),
        strip_tag: o.strip_tag.clone(),
        reason: String::new(),
        requiretls: o.requiretls,
        key: None,
        dnssec_mx: false,
        published_ignored: o.ignore_published,
        explanation: Explanation {
            matched: o.matched.clone(),
            methods: o.methods.clone(),
            min_tls: Some(o.min_tls),
            ..Default::default()
        },
    };
    match o.action {
        RuleAction::Reject => {
            d.action = Action::Reject;
            d.method = Method::Reject;
            d.reason = o.reject_message.clone();
            return d;
        }
        RuleAction::Hold => {
            d.action = Action::Hold;
            d.reason = if o.possible {
                format!(
                    "held by rule `{}` until an operator releases it: what the rule looks for may be in content that could not be read",
                    o.rule
                )
            } else {
                format!("held by rule `{}` until an operator releases it", o.rule)
            };
            return d;
        }
        RuleAction::Deliver => {}
    }
    // An honoured `TLS-Required: No` sets aside what the destination
    // publishes, never what our own smarthost meets.
    let published = if o.ignore_published {
        published_level(probes, |p| p == "smarthost")
    } else {
        published_level(probes, |p| p != "tls-offered")
    };
    // What binds every method, whatever it does to the content: what the
    // destination publishes, and what the message demands (REQUIRETLS:
    // verified TLS at least, RFC 8689 section 4.2.1).
    let transport = if o.requiretls {
        published.max(TlsRequirement::Verified)
    } else {
        published
    };
    d.requiretls = o.requiretls;
    if o.requiretls && !hop_names_authenticated(probes) {
        // RFC 8689 section 4.2.1: the MX list must come from DNSSEC or be
        // confirmed by MTA-STS; a name taken from an unvalidated answer
        // could carry the message to whoever forged it, TLS or not.
        d.reason = "the sender asked for REQUIRETLS, but the destination's MX records are neither DNSSEC-signed nor covered by an MTA-STS enforce policy (RFC 8689 section 4.2.1); waiting".into();
        d.explanation.skipped.push(Skip {
            method: Method::Tls,
            reason: d.reason.clone(),
        });
        return d;
    }
    let caps: Vec<&Capability> = probes
        .iter()
        .filter_map(|p| p.result.as_ref().ok())
        .flatten()
        .collect();
    // RFC 7672 section 2.2: a bogus or failed DNSSEC lookup of the MX or
    // TLSA records means the destination cannot be trusted at all: wait.
    // The same when the smarthost, our only hop, could not be checked
    // (its TLSA answers bogus, its certificate or credentials refused).
    let hop_error = probes
        .iter()
        .find(|p| p.probe == "dane" || p.probe == "smarthost")
        .and_then(|p| p.result.as_ref().err().map(|e| (p.probe, e)));
    let pgp_failed = pgp_error(probes);
    let errors: Vec<String> = probes
        .iter()
        .filter_map(|p| p.result.as_ref().err().map(|e| format!("{}: {e}", p.probe)))
        .collect();
    for &m in &o.methods {
        if !AVAILABLE_METHODS.contains(&m) {
            d.explanation.skipped.push(Skip {
                method: m,
                reason: "not available in this version of sealgate".into(),
            });
            continue;
        }
        let ok = match m {
            // Whatever the method, the message travels over a hop to the
            // destination: with its DNSSEC answers bogus, none can be trusted.
            _ if hop_error.is_some() && m != Method::Reject => Err(match hop_error {
                Some(("smarthost", e)) => {
                    format!("the smarthost could not be checked, so it cannot be trusted: {e}")
                }
                _ => format!(
                    "the destination's DNSSEC answers failed validation, so no TLS hop can be trusted: {}",
                    hop_error.map(|(_, e)| e.as_str()).unwrap_or("")
                ),
            }),
            Method::Tls => {
                let levels: Vec<TlsRequirement> = caps
                    .iter()
                    .filter_map(|c| {
                        if let Capability::Tls { level } = c {
                            Some(*level)
                        } else {
                            None
                        }
                    })
                    .collect();
                let level = levels.iter().copied().max();
                // The floor is met by the weakest mechanism the destination
                // has that reaches it: a floor of mta-sts at a DANE-only
                // destination is delivered over DANE, which exists, not
                // over an MTA-STS policy that does not.
                let meets = levels.iter().copied().filter(|l| *l >= o.min_tls).min();
                if o.min_tls == TlsRequirement::Opportunistic {
                    Ok(transport)
                } else {
                    match level {
                        Some(l) if l >= o.min_tls => Ok(meets.unwrap_or(o.min_tls).max(transport)),
                        Some(l) => Err(format!(
                            "the destination supports {} TLS, the rule needs {}",
                            l.as_str(),
                            o.min_tls.as_str()
                        )),
                        None if !errors.is_empty() => {
                            Err(format!("TLS capability unknown ({})", errors.join("; ")))
                        }
                        None => Err(format!(
                            "no probe showed {} TLS for the destination",
                            o.min_tls.as_str()
                        )),
                    }
                }
            }
            // The key lookup failed for an address that had a key: wait
            // (like a bogus DNSSEC answer), never fall to a weaker method.
            Method::Pgp if pgp_failed.is_some() => {
                d.reason = pgp_failed.clone().unwrap_or_default();
                d.explanation.skipped.push(Skip {
                    method: m,
                    reason: d.reason.clone(),
                });
                return d;
            }
            Method::Pgp => match pgp_key(&caps) {
                PgpKey::Found(fpr) => {
                    d.key = Some(fpr);
                    Ok(transport)
                }
                PgpKey::Held(reason) => {
                    d.action = Action::Hold;
                    d.method = Method::Pgp;
                    d.reason = reason;
                    return d;
                }
                PgpKey::DeclaredOnly => Err(
                    "the policy declares an OpenPGP key, but no usable key was found".to_string(),
                ),
                PgpKey::None => Err("no usable OpenPGP key".to_string()),
            },
            Method::Smime => caps
                .iter()
                .any(|c| matches!(c, Capability::Smime { .. }))
                .then_some(transport)
                .ok_or_else(|| "no S/MIME certificate".to_string()),
            Method::Portal => caps
                .iter()
                .any(|c| matches!(c, Capability::Portal))
                .then_some(transport)
                .ok_or_else(|| "the portal is not configured".to_string()),
            Method::Reject => Err("not a delivery method".into()),
        };
        match ok {
            Ok(tls) => {
                d.action = Action::Deliver;
                d.method = m;
                d.tls = tls;
                d.dnssec_mx = from_dane(probes, tls) || mx_secure(probes);
                return d;
            }
            Err(reason) => d.explanation.skipped.push(Skip { method: m, reason }),
        }
    }
    let reasons: Vec<String> = d
        .explanation
        .skipped
        .iter()
        .map(|s| format!("{}: {}", s.method.as_str(), s.reason))
        .collect();
    d.reason = format!("no protection method available ({})", reasons.join("; "));
    d
}

/// Whether a content condition (`body`, `attachment_content`,
/// `detectors`) that did not match the text that was read may still match
/// what could not be read, for a rule with `action`. Fail closed, but
/// never into a bounce: a `detectors` condition (it looks for PHI, and
/// unscannable content counts as PHI) may match for every action; a
/// regex condition only for `hold` and `reject` (a `deliver` rule keyed
/// on a regex may lower the floor, so it must match what was read). A
/// `reject` rule that only may match holds instead (see
/// [`Prepared::evaluate`]): nobody is bounced because of an image.
fn may_match_unread(unread: bool, action: RuleAction, regex: bool) -> bool {
    unread && (!regex || action != RuleAction::Deliver)
}

/// Message-level conditions of `rule`; `Some(descriptions, possible)` if
/// all match, `possible` when a content condition matched only because
/// part of the content could not be read (`unread`).
fn message_conditions(
    rule: &Rule,
    env: &Envelope,
    facts: &MessageFacts,
    findings: &[(Detector, usize)],
    unread: bool,
) -> Option<(Vec<String>, bool)> {
    let m = &rule.matcher;
    let mut why = Vec::new();
    let mut possible = false;
    if !m.sender.is_empty() {
        pattern::any(&m.sender, &env.sender).then_some(())?;
        why.push("sender".into());
    }
    if !m.sender_domain.is_empty() {
        pattern::any(&m.sender_domain, &crate::queue::domain_of(&env.sender)).then_some(())?;
        why.push("sender_domain".into());
    }
    for (name, re) in &m.header {
        facts
            .headers
            .get(name)?
            .iter()
            .any(|v| re.is_match(v))
            .then_some(())?;
        why.push(format!("header {name}"));
    }
    if let Some(tag) = &m.subject_tag {
        facts
            .subject
            .to_lowercase()
            .contains(&tag.to_lowercase())
            .then_some(())?;
        why.push(format!("subject_tag {tag}"));
    }
    const UNREAD: &str = "(may be in the content that could not be read)";
    if !m.body.is_empty() {
        if m.body.iter().any(|re| re.is_match(&facts.body_text)) {
            why.push("body".into());
        } else {
            may_match_unread(unread, rule.action, true).then_some(())?;
            possible = true;
            why.push(format!("body {UNREAD}"));
        }
    }
    if !m.attachment_content.is_empty() {
        if m.attachment_content
            .iter()
            .any(|re| re.is_match(&facts.attachment_text))
        {
            why.push("attachment_content".into());
        } else {
            may_match_unread(unread, rule.action, true).then_some(())?;
            possible = true;
            why.push(format!("attachment_content {UNREAD}"));
        }
    }
    if !m.detectors.is_empty() {
        let hit: Vec<&str> = findings
            .iter()
            .filter(|(d, _)| m.detectors.contains(d))
            .map(|(d, _)| d.name())
            .collect();
        if !hit.is_empty() {
            why.push(format!("detectors {}", hit.join(",")));
        } else {
            may_match_unread(unread, rule.action, false).then_some(())?;
            possible = true;
            why.push(format!("detectors {UNREAD}"));
        }
    }
    if !m.attachment_type.is_empty() {
        facts
            .attachments
            .iter()
            .any(|a| {
                pattern::any(&m.attachment_type, &a.content_type)
                    || a.detected_type
                        .is_some_and(|t| pattern::any(&m.attachment_type, t))
                    || a.name
                        .as_deref()
                        .is_some_and(|n| pattern::any(&m.attachment_type, n))
            })
            .then_some(())?;
        why.push("attachment_type".into());
    }
    if let Some(n) = m.size_over {
        (env.size > n).then_some(())?;
        why.push("size_over".into());
    }
    if let Some(n) = m.size_under {
        (env.size < n).then_some(())?;
        why.push("size_under".into());
    }
    if !m.client_network.is_empty() {
        let ip = env.client_ip.map(crate::config::canonical_ip)?;
        m.client_network
            .iter()
            .any(|n| n.contains(&ip))
            .then_some(())?;
        why.push("client_network".into());
    }
    if !m.auth_user.is_empty() {
        pattern::any(&m.auth_user, env.auth_user.as_deref()?).then_some(())?;
        why.push("auth_user".into());
    }
    Some((why, possible))
}

/// Recipient-level conditions of `rule`.
fn recipient_conditions(rule: &Rule, recipient: &str) -> Option<Vec<String>> {
    let m = &rule.matcher;
    let mut why = Vec::new();
    if !m.recipient.is_empty() {
        pattern::any(&m.recipient, recipient).then_some(())?;
        why.push("recipient".into());
    }
    if !m.recipient_domain.is_empty() {
        pattern::any(&m.recipient_domain, &crate::queue::domain_of(recipient)).then_some(())?;
        why.push("recipient_domain".into());
    }
    Some(why)
}

#[cfg(test)]
mod tests;
