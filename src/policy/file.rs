//! Policy files: TOML mapped one to one, compiled into rules with every
//! problem reported with file, line and key.

use std::path::Path;

use ipnet::IpNet;
use regex::Regex;
use serde::Deserialize;
use toml::Spanned;

use super::detectors::Detector;
use super::pattern::Pattern;
use super::{Method, Mode, RuleAction, TlsRequirement};
use crate::capability::{Capability, Declared};
use crate::config::{ConfigProblem, line_col};

type List = Vec<Spanned<String>>;

/// What a pattern list is matched against, which decides its canonical form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PatternKind {
    /// Free text (content types, AUTH user names): lowercased only.
    Plain,
    /// Envelope addresses.
    Address,
    /// Domains of envelope addresses.
    Domain,
}

/// One policy file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    /// `[policy]`: settings of this file.
    policy: Option<RawFileSettings>,
    /// `[defaults]`: what applies when no rule matches.
    defaults: Option<RawDefaults>,
    /// `[[rule]]`, in order.
    #[serde(default)]
    rule: Vec<RawRule>,
    /// `[[capability]]`: capabilities declared by the operator.
    #[serde(default)]
    capability: Vec<RawCapability>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFileSettings {
    /// `enforce` (default) or `monitor` for every rule in this file.
    mode: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDefaults {
    methods: Option<Spanned<List>>,
    min_tls: Option<Spanned<String>>,
    phi_min_tls: Option<Spanned<String>>,
    phi_detectors: Option<List>,
    sign: Option<bool>,
    max_scan_size: Option<Spanned<String>>,
    honor_tls_required_no: Option<bool>,
    unscannable_is_phi: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: Spanned<String>,
    mode: Option<Spanned<String>>,
    #[serde(rename = "match", default)]
    matches: RawMatch,
    action: Option<Spanned<String>>,
    methods: Option<Spanned<List>>,
    min_tls: Option<Spanned<String>>,
    sign: Option<bool>,
    strip_tag: Option<bool>,
    reject_message: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMatch {
    #[serde(default)]
    sender: List,
    #[serde(default)]
    sender_domain: List,
    #[serde(default)]
    recipient: List,
    #[serde(default)]
    recipient_domain: List,
    #[serde(default)]
    header: Vec<RawHeader>,
    subject_tag: Option<Spanned<String>>,
    #[serde(default)]
    body: List,
    #[serde(default)]
    attachment_content: List,
    #[serde(default)]
    detectors: List,
    #[serde(default)]
    attachment_type: List,
    size_over: Option<Spanned<String>>,
    size_under: Option<Spanned<String>>,
    #[serde(default)]
    client_network: List,
    #[serde(default)]
    auth_user: List,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHeader {
    name: Spanned<String>,
    pattern: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCapability {
    recipients: Spanned<List>,
    tls: Option<Spanned<String>>,
    #[serde(default)]
    pgp: bool,
    #[serde(default)]
    smime: bool,
    #[serde(default)]
    portal: bool,
}

/// The conditions of a rule, compiled. Within a list any entry may match;
/// every condition that is set must match.
#[derive(Debug, Clone, Default)]
pub struct Matcher {
    pub sender: Vec<Pattern>,
    pub sender_domain: Vec<Pattern>,
    pub recipient: Vec<Pattern>,
    pub recipient_domain: Vec<Pattern>,
    pub header: Vec<(String, Regex)>,
    pub subject_tag: Option<String>,
    pub body: Vec<Regex>,
    pub attachment_content: Vec<Regex>,
    pub detectors: Vec<Detector>,
    pub attachment_type: Vec<Pattern>,
    pub size_over: Option<u64>,
    pub size_under: Option<u64>,
    pub client_network: Vec<IpNet>,
    pub auth_user: Vec<Pattern>,
    /// A normalised text of the conditions, to find duplicates.
    pub signature: String,
}

impl Matcher {
    /// Whether the rule has no condition at all (matches every recipient).
    pub fn is_always(&self) -> bool {
        self.signature.is_empty()
    }
}

/// A compiled rule.
#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    pub mode: Mode,
    pub matcher: Matcher,
    pub action: RuleAction,
    pub methods: Option<Vec<Method>>,
    pub min_tls: Option<TlsRequirement>,
    pub sign: Option<bool>,
    pub strip_tag: bool,
    pub reject_message: String,
    /// `file:line`.
    pub origin: String,
}

/// `[defaults]`, merged over every file (later files win per key).
#[derive(Debug, Clone)]
pub struct Defaults {
    pub methods: Vec<Method>,
    pub min_tls: TlsRequirement,
    pub phi_min_tls: TlsRequirement,
    pub phi_detectors: Vec<Detector>,
    pub sign: bool,
    pub max_scan_size: u64,
    /// Honour `TLS-Required: No` (RFC 8689 section 5) from senders.
    pub honor_tls_required_no: bool,
    /// Content the detectors could not read (past `max_scan_size`, an
    /// encrypted or unparseable document, an image, a message nested too
    /// deep) counts as PHI, and as a possible match of a rule's content
    /// conditions (see `engine::may_match_unread`). `false` is weaker:
    /// such content is treated as clean, so PHI in an encrypted PDF or a
    /// scan can leave on the non-PHI floor.
    pub unscannable_is_phi: bool,
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            methods: vec![Method::Pgp, Method::Smime, Method::Tls, Method::Portal],
            min_tls: TlsRequirement::MtaSts,
            phi_min_tls: TlsRequirement::MtaSts,
            phi_detectors: Detector::ALL.to_vec(),
            sign: false,
            max_scan_size: 10 * 1000 * 1000,
            honor_tls_required_no: false,
            unscannable_is_phi: true,
        }
    }
}

/// Everything compiled from the policy files.
#[derive(Debug, Clone, Default)]
pub struct Compiled {
    pub defaults: Defaults,
    pub rules: Vec<Rule>,
    pub capabilities: Vec<Declared>,
}

struct Ctx<'a> {
    file: &'a Path,
    text: &'a str,
    problems: &'a mut Vec<ConfigProblem>,
}

impl Ctx<'_> {
    fn problem<T>(&mut self, key: &str, at: &Spanned<T>, msg: impl Into<String>) {
        let (line, col) = line_col(self.text, at.span().start);
        self.problems.push(ConfigProblem {
            file: self.file.to_path_buf(),
            line: Some(line),
            column: Some(col),
            key: Some(key.to_string()),
            message: msg.into(),
        });
    }

    fn tls(&mut self, key: &str, v: &Spanned<String>) -> Option<TlsRequirement> {
        let r = TlsRequirement::parse(v.get_ref());
        if r.is_none() {
            self.problem(
                key,
                v,
                format!(
                    "`{}` is not a TLS requirement (opportunistic, encrypted, verified, mta-sts, dane)",
                    v.get_ref()
                ),
            );
        }
        r
    }

    fn methods(&mut self, key: &str, v: &Spanned<List>) -> Vec<Method> {
        let mut out = Vec::new();
        if v.get_ref().is_empty() {
            self.problem(key, v, "needs at least one method");
        }
        for m in v.get_ref() {
            match Method::parse(m.get_ref()) {
                Some(Method::Reject) | None => self.problem(
                    key,
                    m,
                    format!(
                        "`{}` is not a method (pgp, smime, tls, portal)",
                        m.get_ref()
                    ),
                ),
                Some(x) if out.contains(&x) => {
                    self.problem(key, m, format!("`{}` is listed twice", m.get_ref()))
                }
                Some(x) => out.push(x),
            }
        }
        out
    }

    fn patterns(&mut self, key: &str, v: &List, kind: PatternKind) -> Vec<Pattern> {
        let mut out = Vec::new();
        for p in v {
            let s = p.get_ref();
            if kind == PatternKind::Domain && s.contains('@') {
                self.problem(
                    key,
                    p,
                    format!(
                        "`{s}` is an address; use a domain such as example.org or *.example.org"
                    ),
                );
                continue;
            }
            // Addresses and domains are compared in their canonical form
            // (A-labels, no trailing dot), the form the listener gives them.
            let compiled = match kind {
                PatternKind::Plain => Pattern::new(s).ok_or_else(|| "empty pattern".to_string()),
                PatternKind::Address => Pattern::address(s),
                PatternKind::Domain => Pattern::domain(s),
            };
            match compiled {
                Ok(pat) => out.push(pat),
                Err(e) => self.problem(key, p, e),
            }
        }
        out
    }

    fn regexes(&mut self, key: &str, v: &List) -> Vec<Regex> {
        let mut out = Vec::new();
        for p in v {
            match regex::RegexBuilder::new(p.get_ref())
                .size_limit(1 << 22)
                .build()
            {
                Ok(r) => out.push(r),
                Err(e) => self.problem(key, p, format!("bad regular expression: {e}")),
            }
        }
        out
    }

    fn detectors(&mut self, key: &str, v: &List) -> Vec<Detector> {
        let mut out = Vec::new();
        for d in v {
            match Detector::from_name(d.get_ref()) {
                Some(x) => out.push(x),
                None => {
                    let known: Vec<&str> = Detector::ALL.iter().map(|d| d.name()).collect();
                    self.problem(
                        key,
                        d,
                        format!(
                            "unknown detector `{}` (known: {})",
                            d.get_ref(),
                            known.join(", ")
                        ),
                    )
                }
            }
        }
        out
    }

    fn size(&mut self, key: &str, v: &Option<Spanned<String>>) -> Option<u64> {
        let v = v.as_ref()?;
        match crate::util::parse_size(v.get_ref()) {
            Ok(n) => Some(n),
            Err(e) => {
                self.problem(key, v, e);
                None
            }
        }
    }

    fn mode(&mut self, key: &str, v: &Option<Spanned<String>>) -> Option<Mode> {
        let v = v.as_ref()?;
        match v.get_ref().as_str() {
            "enforce" => Some(Mode::Enforce),
            "monitor" => Some(Mode::Monitor),
            other => {
                self.problem(
                    key,
                    v,
                    format!("`{other}` is not a mode (enforce, monitor)"),
                );
                None
            }
        }
    }
}

/// Parses and compiles one file into `out`, adding problems to `problems`.
pub fn compile_file(
    file: &Path,
    text: &str,
    out: &mut Compiled,
    problems: &mut Vec<ConfigProblem>,
) {
    let first = problems.len();
    let mut parsed = crate::config::toml_de::from_str::<RawFile>(file, text);
    problems.append(&mut parsed.problems);
    let Some(raw) = parsed.value.take() else {
        return;
    };
    let checked = problems.len();
    compile_raw(file, text, &raw, out, problems);
    // A value read as a stand-in already has its problem.
    let more = problems.split_off(checked);
    problems.extend(more.into_iter().filter(|p| !parsed.is_follow_on(p)));
    problems[first..].sort_by_key(|p| (p.line, p.column));
}

fn compile_raw(
    file: &Path,
    text: &str,
    raw: &RawFile,
    out: &mut Compiled,
    problems: &mut Vec<ConfigProblem>,
) {
    let mut c = Ctx {
        file,
        text,
        problems,
    };
    let file_mode = raw
        .policy
        .as_ref()
        .and_then(|p| c.mode("policy.mode", &p.mode))
        .unwrap_or(Mode::Enforce);
    if let Some(d) = &raw.defaults {
        if let Some(m) = &d.methods {
            out.defaults.methods = c.methods("defaults.methods", m);
        }
        if let Some(t) = &d.min_tls {
            if let Some(t) = c.tls("defaults.min_tls", t) {
                out.defaults.min_tls = t;
            }
        }
        if let Some(t) = &d.phi_min_tls {
            if let Some(req) = c.tls("defaults.phi_min_tls", t) {
                if req < TlsRequirement::Verified {
                    c.problem("defaults.phi_min_tls", t, "content with PHI never goes out on opportunistic or unauthenticated TLS: use verified, mta-sts or dane");
                } else {
                    out.defaults.phi_min_tls = req;
                }
            }
        }
        if let Some(list) = &d.phi_detectors {
            out.defaults.phi_detectors = c.detectors("defaults.phi_detectors", list);
        }
        if let Some(s) = d.sign {
            out.defaults.sign = s;
        }
        if let Some(h) = d.honor_tls_required_no {
            out.defaults.honor_tls_required_no = h;
        }
        if let Some(u) = d.unscannable_is_phi {
            out.defaults.unscannable_is_phi = u;
        }
        if let Some(n) = c.size("defaults.max_scan_size", &d.max_scan_size) {
            out.defaults.max_scan_size = n;
        }
    }
    for r in &raw.rule {
        let name = r.name.get_ref().trim().to_string();
        if name.is_empty() {
            c.problem("rule.name", &r.name, "a rule needs a name");
        }
        if out.rules.iter().any(|x| x.name == name) {
            c.problem(
                "rule.name",
                &r.name,
                format!("rule name `{name}` is used twice"),
            );
        }
        let m = &r.matches;
        let mut matcher = Matcher {
            sender: c.patterns("rule.match.sender", &m.sender, PatternKind::Address),
            sender_domain: c.patterns(
                "rule.match.sender_domain",
                &m.sender_domain,
                PatternKind::Domain,
            ),
            recipient: c.patterns("rule.match.recipient", &m.recipient, PatternKind::Address),
            recipient_domain: c.patterns(
                "rule.match.recipient_domain",
                &m.recipient_domain,
                PatternKind::Domain,
            ),
            header: Vec::new(),
            subject_tag: m
                .subject_tag
                .as_ref()
                .map(|t| t.get_ref().trim().to_string())
                .filter(|t| !t.is_empty()),
            body: c.regexes("rule.match.body", &m.body),
            attachment_content: c.regexes("rule.match.attachment_content", &m.attachment_content),
            detectors: c.detectors("rule.match.detectors", &m.detectors),
            attachment_type: c.patterns(
                "rule.match.attachment_type",
                &m.attachment_type,
                PatternKind::Plain,
            ),
            size_over: c.size("rule.match.size_over", &m.size_over),
            size_under: c.size("rule.match.size_under", &m.size_under),
            client_network: Vec::new(),
            auth_user: c.patterns("rule.match.auth_user", &m.auth_user, PatternKind::Plain),
            signature: String::new(),
        };
        for h in &m.header {
            let hname = h.name.get_ref().trim().to_ascii_lowercase();
            if hname.is_empty() || hname.contains(':') || hname.contains(' ') {
                c.problem(
                    "rule.match.header.name",
                    &h.name,
                    "must be a header field name such as X-Sensitivity",
                );
            }
            match regex::RegexBuilder::new(h.pattern.get_ref())
                .size_limit(1 << 22)
                .build()
            {
                Ok(re) => matcher.header.push((hname, re)),
                Err(e) => c.problem(
                    "rule.match.header.pattern",
                    &h.pattern,
                    format!("bad regular expression: {e}"),
                ),
            }
        }
        for n in &m.client_network {
            let t = n.get_ref().trim();
            match t
                .parse::<IpNet>()
                .or_else(|_| t.parse::<std::net::IpAddr>().map(IpNet::from))
            {
                Ok(net) => matcher.client_network.push(net),
                Err(_) => c.problem(
                    "rule.match.client_network",
                    n,
                    format!("`{t}` is not a network such as 10.0.0.0/8"),
                ),
            }
        }
        matcher.signature = signature(m);
        let action = match r.action.as_ref().map(|a| (a, a.get_ref().as_str())) {
            None | Some((_, "deliver")) => RuleAction::Deliver,
            Some((_, "reject")) => RuleAction::Reject,
            Some((_, "hold")) => RuleAction::Hold,
            Some((a, other)) => {
                c.problem(
                    "rule.action",
                    a,
                    format!("`{other}` is not an action (deliver, reject, hold)"),
                );
                RuleAction::Deliver
            }
        };
        let methods = r.methods.as_ref().map(|m| c.methods("rule.methods", m));
        let min_tls = r.min_tls.as_ref().and_then(|t| c.tls("rule.min_tls", t));
        if r.strip_tag == Some(true) && matcher.subject_tag.is_none() {
            c.problem(
                "rule.strip_tag",
                &r.name,
                "strip_tag needs match.subject_tag",
            );
        }
        if action == RuleAction::Reject && r.reject_message.is_none() {
            c.problem(
                "rule.reject_message",
                &r.name,
                "a reject rule needs a reject_message (sent to the sender in the bounce)",
            );
        }
        let mode = c.mode("rule.mode", &r.mode).unwrap_or(file_mode);
        let (line, _) = line_col(text, r.name.span().start);
        out.rules.push(Rule {
            name,
            mode,
            matcher,
            action,
            methods,
            min_tls,
            sign: r.sign,
            strip_tag: r.strip_tag.unwrap_or(false),
            reject_message: r
                .reject_message
                .as_ref()
                .map(|m| m.get_ref().clone())
                .unwrap_or_default(),
            origin: format!("{}:{line}", file.display()),
        });
    }
    for cap in &raw.capability {
        let patterns = c.patterns(
            "capability.recipients",
            cap.recipients.get_ref(),
            PatternKind::Address,
        );
        if patterns.is_empty() {
            c.problem(
                "capability.recipients",
                &cap.recipients,
                "needs at least one address pattern",
            );
        }
        let mut caps = Vec::new();
        if let Some(t) = &cap.tls {
            if let Some(level) = c.tls("capability.tls", t) {
                caps.push(Capability::Tls { level });
            }
        }
        if cap.pgp {
            caps.push(Capability::Pgp {
                fingerprint: "declared".into(),
                source: "policy".into(),
            });
        }
        if cap.smime {
            caps.push(Capability::Smime {
                serial: "declared".into(),
                source: "policy".into(),
            });
        }
        if cap.portal {
            caps.push(Capability::Portal);
        }
        let (line, _) = line_col(text, cap.recipients.span().start);
        out.capabilities.push(Declared {
            patterns,
            capabilities: caps,
            origin: format!("{}:{line}", file.display()),
        });
    }
}

/// A normalised text of every condition, so two rules with the same
/// conditions compare equal whatever their order in the file.
fn signature(m: &RawMatch) -> String {
    let mut parts = Vec::new();
    let mut list = |name: &str, v: &List| {
        if !v.is_empty() {
            let mut s: Vec<String> = v
                .iter()
                .map(|x| x.get_ref().trim().to_lowercase())
                .collect();
            s.sort();
            parts.push(format!("{name}={}", s.join(",")));
        }
    };
    list("sender", &m.sender);
    list("sender_domain", &m.sender_domain);
    list("recipient", &m.recipient);
    list("recipient_domain", &m.recipient_domain);
    list("body", &m.body);
    list("attachment_content", &m.attachment_content);
    list("detectors", &m.detectors);
    list("attachment_type", &m.attachment_type);
    list("client_network", &m.client_network);
    list("auth_user", &m.auth_user);
    let mut headers: Vec<String> = m
        .header
        .iter()
        .map(|h| {
            format!(
                "{}~{}",
                h.name.get_ref().to_lowercase(),
                h.pattern.get_ref()
            )
        })
        .collect();
    headers.sort();
    if !headers.is_empty() {
        parts.push(format!("header={}", headers.join(",")));
    }
    if let Some(t) = &m.subject_tag {
        parts.push(format!("subject_tag={}", t.get_ref().trim().to_lowercase()));
    }
    if let Some(s) = &m.size_over {
        parts.push(format!("size_over={}", s.get_ref()));
    }
    if let Some(s) = &m.size_under {
        parts.push(format!("size_under={}", s.get_ref()));
    }
    parts.join(";")
}

/// Rules that can never match because an earlier enforce rule always
/// matches first (no conditions, or the same conditions).
pub fn unreachable_rules(rules: &[Rule]) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (i, r) in rules.iter().enumerate() {
        for earlier in rules[..i].iter().filter(|e| e.mode == Mode::Enforce) {
            if earlier.matcher.is_always() || earlier.matcher.signature == r.matcher.signature {
                out.push((
                    i,
                    format!(
                        "rule `{}` can never match: rule `{}` ({}) {} and comes first",
                        r.name,
                        earlier.name,
                        earlier.origin,
                        if earlier.matcher.is_always() {
                            "matches every recipient"
                        } else {
                            "has the same conditions"
                        }
                    ),
                ));
                break;
            }
        }
    }
    out
}
