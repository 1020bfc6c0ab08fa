//! Built-in PHI detectors, named by policy rules
//! (`match.detectors = ["us-ssn", "npi", ...]`).
//!
//! Each detector answers one question about a text: how many findings of
//! its kind it holds. The matched text never leaves this module, so a
//! decision, a log line or an audit row can say "2 × us-ssn" without ever
//! holding the number itself.
//!
//! How the scan works, and why:
//!
//! * Every shape that stands on its own (SSN, MBI, NPI and the ICD-10-CM code
//!   shape) is one alternation in one regex, so a body is read once for all
//!   of them. The `regex` crate has no look-around, so the checks a regex
//!   cannot express (word boundaries against Unicode letters, "not part of a
//!   longer digit run", SSN number ranges, the NPI check digit, calendar
//!   ranges) are done in code on each candidate.
//! * Detectors that need context (SSNs without dashes, dates of birth,
//!   ICD-10 codes) share a second regex of keywords, run only when a
//!   candidate needs it or a date of birth is asked for, and at most once
//!   per scan.
//! * Dates are searched only in the short window after a date-of-birth
//!   keyword, because dates are common in mail and only a date of birth is
//!   PHI.
//! * Distances ("within 40 characters") are counted in characters, not
//!   bytes, and every slice is taken at a boundary the regex reported or
//!   checked with `str::get`, so no text can make the scan panic.

use regex::Regex;

/// A built-in detector.
///
/// Ordered so that a set of detectors prints and serialises in a stable
/// order; serialised under its config name (`"us-ssn"`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum Detector {
    /// `us-ssn`: a US Social Security number.
    ///
    /// `AAA-GG-SSSS`, separated by dashes or by single spaces (the same
    /// separator twice), where the area `AAA` is not 000, 666 or 900–999,
    /// the group `GG` is not 00 and the serial `SSSS` is not 0000. The
    /// well-known invalid numbers 078-05-1120 (the Woolworth wallet card)
    /// and 219-09-9999 (an advertisement) are not SSNs. Nine digits without
    /// separators count only when "SSN" or "social security" (any case)
    /// ends at most 40 characters before them. The number must stand
    /// alone: no letter or digit directly before or after it, and not
    /// joined to another digit by `-`, `.`, `/` (or a space, for the spaced
    /// form), so `1-800-123-45-6789` and `123-45-67890` are not SSNs.
    #[serde(rename = "us-ssn")]
    UsSsn,
    /// `medicare-mbi`: a Medicare Beneficiary Identifier (CMS format).
    ///
    /// Eleven characters: position 1 a digit 1–9; positions 2, 5, 8 and 9 an
    /// uppercase letter other than S, L, O, I, B and Z; positions 3 and 6
    /// such a letter or a digit; positions 4, 7, 10 and 11 a digit. It may be
    /// written with dashes after positions 4 and 7 (`1EG4-TE5-MK73`), both
    /// or neither. Uppercase only. No letter or digit directly before or
    /// after it.
    #[serde(rename = "medicare-mbi")]
    MedicareMbi,
    /// `npi`: a US National Provider Identifier.
    ///
    /// Ten digits starting with 1 or 2 whose last digit is the Luhn check
    /// digit of the number prefixed with 80840, as CMS specifies
    /// (1234567893 is valid, 1234567890 is not). No letter or digit directly
    /// before or after it, and not joined to another digit by `-`, `.` or
    /// `/`.
    #[serde(rename = "npi")]
    Npi,
    /// `dob`: a date of birth.
    ///
    /// A date that starts at most 40 characters after one of the keywords
    /// DOB, D.O.B., date of birth, birth date, birthdate or born (any case).
    /// Dates are `MM/DD/YYYY`, `M/D/YY`, the same with dashes, `YYYY-MM-DD`,
    /// `YYYY/MM/DD`, `DD.MM.YYYY` (or `.YY`), and written months in English,
    /// full or abbreviated, day first or month first: "March 4, 1961",
    /// "Mar. 4th 1961", "4 March 1961". The month must be 1–12 and the day
    /// 1–31; a slashed or dashed date whose first number cannot be a month
    /// is read day first (`25/12/1961`). A date without such a keyword
    /// before it does not count.
    #[serde(rename = "dob")]
    DateOfBirth,
    /// `icd10`: an ICD-10-CM diagnosis code in clinical context.
    ///
    /// The code shape `[A-TV-Z][0-9][0-9AB]` optionally followed by `.` and
    /// one to four of `[0-9A-TV-Z]` (E11.9, I10, J45.909, S72.001A),
    /// uppercase, with no letter or digit directly before or after it and
    /// not part of a dotted run (`B12.34.56`). It counts only when a clinical
    /// word is within 60 characters before or after it: diagnosis,
    /// diagnosed, diagnoses, dx, ICD, ICD-10, ICD-10-CM, condition(s),
    /// patient(s), admitted, admission(s), discharge(d), history of,
    /// assessment(s), problem list (any case). "Room B12" or "gate C22" with
    /// no clinical word nearby does not count.
    #[serde(rename = "icd10")]
    Icd10,
}

impl Detector {
    /// Every built-in detector, in declaration order.
    pub const ALL: [Detector; 5] = [
        Detector::UsSsn,
        Detector::MedicareMbi,
        Detector::Npi,
        Detector::DateOfBirth,
        Detector::Icd10,
    ];

    /// The name used in policy rules, logs and audit rows.
    pub fn name(self) -> &'static str {
        match self {
            Detector::UsSsn => "us-ssn",
            Detector::MedicareMbi => "medicare-mbi",
            Detector::Npi => "npi",
            Detector::DateOfBirth => "dob",
            Detector::Icd10 => "icd10",
        }
    }

    /// The detector called `s` in policy rules (exact, lowercase name).
    pub fn from_name(s: &str) -> Option<Detector> {
        Detector::ALL.into_iter().find(|d| d.name() == s)
    }

    /// Position in [`Detector::ALL`] and in per-scan count arrays.
    fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for Detector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// How far before a nine-digit number an SSN keyword may end.
const SSN_KEYWORD_WINDOW: usize = 40;
/// How far after a date-of-birth keyword a date may start.
const DOB_KEYWORD_WINDOW: usize = 40;
/// How far from an ICD-10 code (either side) a clinical word may be.
const ICD_KEYWORD_WINDOW: usize = 60;
/// Longer than any date the date regex can match, in bytes; bounds the
/// text searched after each date-of-birth keyword.
const MAX_DATE_LEN: usize = 48;

/// Letters allowed in an MBI: A–Z without S, L, O, I, B and Z.
const MBI_L: &str = "[AC-HJKMNP-RT-Y]";
/// An MBI letter or a digit.
const MBI_LD: &str = "[AC-HJKMNP-RT-Y0-9]";

/// Month names the date regex accepts, any case.
const MONTHS: &str = "jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?\
                      |aug(?:ust)?|sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?";

/// Precompiled detectors: build once, share via `Arc`.
///
/// Holds only compiled regexes, so it is `Send + Sync` and a scan takes
/// `&self`.
#[derive(Debug, Clone)]
pub struct Detectors {
    /// Every stand-alone shape (SSN, NPI, MBI, ICD-10 code) in one
    /// alternation, so one pass over the text finds all candidates.
    /// Candidates are told apart by their shape (see [`Candidate::of`]).
    candidates: Regex,
    /// Every context keyword (SSN, date of birth, clinical), told apart by
    /// their first letters (see [`KeywordKind::of`]).
    keywords: Regex,
    /// A date in any accepted format; only run after a DOB keyword.
    dates: Regex,
}

impl Default for Detectors {
    fn default() -> Self {
        Detectors::new()
    }
}

impl Detectors {
    /// Compile the detectors. Cheap enough for start-up and reloads (a few
    /// milliseconds); not meant to be called per message.
    pub fn new() -> Detectors {
        // `(?-u:\b)` is an ASCII word boundary: the lazy DFA can use it on
        // any text, where a Unicode `\b` would force the slow engine on
        // non-ASCII input. Unicode letters next to a match are rejected in
        // code by `stands_alone`.
        let ssn = r"[0-9]{3}-[0-9]{2}-[0-9]{4}|[0-9]{3} [0-9]{2} [0-9]{4}|[0-9]{9}";
        let npi = r"[12][0-9]{9}";
        let mbi = format!(
            "[1-9]{l}{ld}[0-9]{l}{ld}[0-9]{l}{l}[0-9]{{2}}\
             |[1-9]{l}{ld}[0-9]-{l}{ld}[0-9]-{l}{l}[0-9]{{2}}",
            l = MBI_L,
            ld = MBI_LD
        );
        let icd = r"[A-TV-Z][0-9][0-9AB](?:\.[0-9A-TV-Z]{1,4})?";
        let candidates = format!(r"(?-u)\b(?:{ssn}|{npi}|{mbi}|{icd})\b");
        let keywords = concat!(
            r"(?i-u)\b(?:",
            r"ssns?|social\s+security",
            r"|dob|d\.o\.b|date\s+of\s+birth|birth\s*date|born",
            r"|diagnos(?:is|ed|es)|dx|icd(?:-?10(?:-cm)?)?|conditions?|patients?",
            r"|admitted|admissions?|discharged?|history\s+of|assessments?|problem\s+list",
            r")\b"
        );
        let month = format!(r"(?:{MONTHS})\.?");
        let ordinal = r"(?:st|nd|rd|th)?";
        let numeric_year = r"(?:[0-9]{4}|[0-9]{2})";
        let dates = [
            format!(r"[0-9]{{1,2}}/[0-9]{{1,2}}/{numeric_year}"),
            format!(r"[0-9]{{1,2}}-[0-9]{{1,2}}-{numeric_year}"),
            format!(r"[0-9]{{1,2}}\.[0-9]{{1,2}}\.{numeric_year}"),
            r"[0-9]{4}-[0-9]{1,2}-[0-9]{1,2}".to_owned(),
            r"[0-9]{4}/[0-9]{1,2}/[0-9]{1,2}".to_owned(),
            format!(r"{month}\s{{1,3}}[0-9]{{1,2}}{ordinal},?\s{{1,3}}[0-9]{{4}}"),
            format!(r"[0-9]{{1,2}}{ordinal}\s{{1,3}}{month},?\s{{1,3}}[0-9]{{4}}"),
        ];
        let dates = format!(r"(?i-u)\b(?:{})\b", dates.join("|"));
        Detectors {
            candidates: Regex::new(&candidates)
                .expect("built-in candidate pattern (constant) must compile"),
            keywords: Regex::new(keywords)
                .expect("built-in keyword pattern (constant) must compile"),
            dates: Regex::new(&dates).expect("built-in date pattern (constant) must compile"),
        }
    }

    /// Number of findings of `d` in `text` (0 = no match). Never returns
    /// the matched text.
    pub fn count(&self, d: Detector, text: &str) -> usize {
        let mut wanted = [false; 5];
        wanted[d.index()] = true;
        self.counts(text, wanted)[d.index()]
    }

    /// All of `which` in one pass where possible: one `(detector, count)`
    /// per distinct detector in `which`, in the order first named, counts
    /// of 0 included.
    pub fn scan(&self, text: &str, which: &[Detector]) -> Vec<(Detector, usize)> {
        let mut wanted = [false; 5];
        let mut order = Vec::with_capacity(which.len().min(5));
        for &d in which {
            if !wanted[d.index()] {
                wanted[d.index()] = true;
                order.push(d);
            }
        }
        let counts = self.counts(text, wanted);
        order.into_iter().map(|d| (d, counts[d.index()])).collect()
    }

    /// Findings per detector (indexed by [`Detector::index`]) for the
    /// detectors marked in `wanted`; the others stay 0.
    fn counts(&self, text: &str, wanted: [bool; 5]) -> [usize; 5] {
        let mut counts = [0usize; 5];
        // Keywords are collected at most once, and only when needed.
        let mut keywords: Option<Keywords> = None;
        let want = |d: Detector| wanted[d.index()];

        if want(Detector::UsSsn)
            || want(Detector::MedicareMbi)
            || want(Detector::Npi)
            || want(Detector::Icd10)
        {
            for m in self.candidates.find_iter(text) {
                let (start, end) = (m.start(), m.end());
                let b = m.as_str().as_bytes();
                let Some(candidate) = Candidate::of(b) else {
                    continue;
                };
                let found = match candidate {
                    Candidate::SsnSeparated(sep) => {
                        want(Detector::UsSsn)
                            && stands_alone(
                                text,
                                start,
                                end,
                                &['-', '.', '/', char::from(sep)],
                                is_digit,
                            )
                            && valid_ssn(b)
                    }
                    Candidate::SsnDigits => {
                        want(Detector::UsSsn)
                            && stands_alone(text, start, end, &['-', '.', '/'], is_digit)
                            && valid_ssn(b)
                            && keywords
                                .get_or_insert_with(|| self.find_keywords(text))
                                .ssn
                                .ends_before(text, start, SSN_KEYWORD_WINDOW)
                    }
                    Candidate::Npi => {
                        want(Detector::Npi)
                            && stands_alone(text, start, end, &['-', '.', '/'], is_digit)
                            && valid_npi(b)
                    }
                    Candidate::Mbi => {
                        want(Detector::MedicareMbi) && stands_alone(text, start, end, &[], is_digit)
                    }
                    Candidate::Icd => {
                        want(Detector::Icd10)
                            && stands_alone(text, start, end, &['.'], char::is_alphanumeric)
                            && {
                                let clinical = &keywords
                                    .get_or_insert_with(|| self.find_keywords(text))
                                    .clinical;
                                clinical.ends_before(text, start, ICD_KEYWORD_WINDOW)
                                    || clinical.starts_after(text, end, ICD_KEYWORD_WINDOW)
                            }
                    }
                };
                if found {
                    counts[candidate.detector().index()] += 1;
                }
            }
        }

        if want(Detector::DateOfBirth) {
            let keywords = keywords.get_or_insert_with(|| self.find_keywords(text));
            counts[Detector::DateOfBirth.index()] = self.count_dates_of_birth(text, &keywords.dob);
        }
        counts
    }

    /// Every context keyword in `text`, by kind, in text order.
    fn find_keywords(&self, text: &str) -> Keywords {
        let mut k = Keywords::default();
        for m in self.keywords.find_iter(text) {
            let span = (m.start(), m.end());
            match KeywordKind::of(m.as_str().as_bytes()) {
                KeywordKind::Ssn => k.ssn.0.push(span),
                KeywordKind::Dob => k.dob.0.push(span),
                KeywordKind::Clinical => k.clinical.0.push(span),
            }
        }
        k
    }

    /// Valid dates starting within [`DOB_KEYWORD_WINDOW`] characters after
    /// a date-of-birth keyword; a date near two keywords counts once.
    fn count_dates_of_birth(&self, text: &str, dob: &Spans) -> usize {
        let mut count = 0;
        // No uncounted date starts between the first keyword and `resume`:
        // windows of nearby keywords overlap, and text already searched is
        // not searched again, so a body full of keywords stays linear.
        let mut resume = 0;
        for &(_, kw_end) in &dob.0 {
            let mut from = kw_end.max(resume);
            // A date starting in the window (at most 4 bytes a character)
            // ends before `limit`. A date cut short by the limit is rejected
            // by `stands_alone`, which looks at the whole text.
            let limit = floor_char_boundary(
                text,
                kw_end.saturating_add(4 * DOB_KEYWORD_WINDOW + MAX_DATE_LEN),
            );
            while from < limit {
                let Some(m) = text.get(from..limit).and_then(|hay| self.dates.find(hay)) else {
                    // Any date starting this far from the limit fits in the
                    // slice, so none starts before this point.
                    resume = resume.max(floor_char_boundary(
                        text,
                        limit.saturating_sub(MAX_DATE_LEN),
                    ));
                    break;
                };
                let (start, end) = (from + m.start(), from + m.end());
                if !within_chars(text, kw_end, start, DOB_KEYWORD_WINDOW) {
                    // Nothing before this match; it may be in the window of
                    // a later keyword.
                    resume = resume.max(start);
                    break;
                }
                if stands_alone(text, start, end, &['-', '.', '/'], is_digit)
                    && valid_date(m.as_str().as_bytes())
                {
                    count += 1;
                }
                from = end;
                resume = end;
            }
        }
        count
    }
}

/// The largest char boundary of `text` at or below `at` (clamped to the
/// text's length).
fn floor_char_boundary(text: &str, at: usize) -> usize {
    let mut at = at.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

/// What a match of the candidate regex is, told by its shape: the regex
/// alternatives cannot overlap at one start position, so the first bytes
/// and the length are enough.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Candidate {
    /// `AAA-GG-SSSS` or `AAA GG SSSS`, with the separator byte.
    SsnSeparated(u8),
    /// Nine digits in a row.
    SsnDigits,
    /// Ten digits starting with 1 or 2.
    Npi,
    /// Digit then MBI letter.
    Mbi,
    /// Letter then digits: the ICD-10-CM code shape.
    Icd,
}

impl Candidate {
    fn of(b: &[u8]) -> Option<Candidate> {
        let (first, second) = (*b.first()?, *b.get(1)?);
        Some(if first.is_ascii_uppercase() {
            Candidate::Icd
        } else if second.is_ascii_uppercase() {
            Candidate::Mbi
        } else {
            match b.len() {
                9 => Candidate::SsnDigits,
                10 => Candidate::Npi,
                _ => Candidate::SsnSeparated(*b.get(3)?),
            }
        })
    }

    fn detector(self) -> Detector {
        match self {
            Candidate::SsnSeparated(_) | Candidate::SsnDigits => Detector::UsSsn,
            Candidate::Npi => Detector::Npi,
            Candidate::Mbi => Detector::MedicareMbi,
            Candidate::Icd => Detector::Icd10,
        }
    }
}

/// The three kinds of context keyword.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeywordKind {
    /// "SSN", "social security".
    Ssn,
    /// "DOB", "D.O.B", "date of birth", "birth date", "birthdate", "born".
    Dob,
    /// Clinical words for ICD-10 codes.
    Clinical,
}

impl KeywordKind {
    /// Told apart by the first two letters of a keyword-regex match: only
    /// the SSN words start with `s`, only date-of-birth words with `b`, `da`,
    /// `do` or `d.`.
    fn of(b: &[u8]) -> KeywordKind {
        let lower = |i: usize| b.get(i).map(u8::to_ascii_lowercase);
        match (lower(0), lower(1)) {
            (Some(b's'), _) => KeywordKind::Ssn,
            (Some(b'b'), _) | (Some(b'd'), Some(b'a' | b'o' | b'.')) => KeywordKind::Dob,
            _ => KeywordKind::Clinical,
        }
    }
}

/// Keyword spans found in one text, by kind.
#[derive(Debug, Default)]
struct Keywords {
    ssn: Spans,
    dob: Spans,
    clinical: Spans,
}

/// Non-overlapping byte spans in text order (so sorted by start and by end).
#[derive(Debug, Default)]
struct Spans(Vec<(usize, usize)>);

impl Spans {
    /// A span ends at most `window` characters before byte offset `at`.
    fn ends_before(&self, text: &str, at: usize, window: usize) -> bool {
        let i = self.0.partition_point(|&(_, end)| end <= at);
        i > 0
            && self
                .0
                .get(i - 1)
                .is_some_and(|&(_, end)| within_chars(text, end, at, window))
    }

    /// A span starts at most `window` characters after byte offset `at`.
    fn starts_after(&self, text: &str, at: usize, window: usize) -> bool {
        let i = self.0.partition_point(|&(start, _)| start < at);
        self.0
            .get(i)
            .is_some_and(|&(start, _)| within_chars(text, at, start, window))
    }
}

/// At most `n` characters lie between byte offsets `a <= b` of `text`.
/// Counts characters only when the byte distance leaves a doubt.
fn within_chars(text: &str, a: usize, b: usize, n: usize) -> bool {
    let Some(gap) = b.checked_sub(a) else {
        return false;
    };
    if gap <= n {
        return true;
    }
    if gap > 4 * n {
        return false;
    }
    text.get(a..b).is_some_and(|s| s.chars().count() <= n)
}

fn is_digit(c: char) -> bool {
    c.is_ascii_digit()
}

fn is_word(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// The match `text[start..end]` is a token of its own: no letter, digit or
/// `_` (any script) directly next to it, and no `joiner` next to it that
/// itself touches a character for which `continues` holds (so
/// `1-800-123-45-6789` is a phone number, not an SSN after `1-800-`).
fn stands_alone(
    text: &str,
    start: usize,
    end: usize,
    joiners: &[char],
    continues: fn(char) -> bool,
) -> bool {
    let (Some(before), Some(after)) = (text.get(..start), text.get(end..)) else {
        return false;
    };
    side_is_clear(before.chars().rev(), joiners, continues)
        && side_is_clear(after.chars(), joiners, continues)
}

/// One side of [`stands_alone`]: `chars` walks away from the match.
fn side_is_clear(
    mut chars: impl Iterator<Item = char>,
    joiners: &[char],
    continues: fn(char) -> bool,
) -> bool {
    match chars.next() {
        None => true,
        Some(c) if is_word(c) => false,
        Some(c) if joiners.contains(&c) => !chars.next().is_some_and(continues),
        Some(_) => true,
    }
}

/// The ASCII digits of `b` (anything else skipped) as a number, saturating
/// rather than overflowing on long input.
fn number(b: &[u8]) -> u32 {
    b.iter().filter(|c| c.is_ascii_digit()).fold(0u32, |n, c| {
        n.saturating_mul(10).saturating_add(u32::from(c - b'0'))
    })
}

/// SSN number ranges on a match of 9 digits, with or without separators.
fn valid_ssn(b: &[u8]) -> bool {
    let mut digits = [0u8; 9];
    let mut n = 0;
    for &c in b.iter().filter(|c| c.is_ascii_digit()) {
        match digits.get_mut(n) {
            Some(d) => *d = c,
            None => return false,
        }
        n += 1;
    }
    if n != 9 {
        return false;
    }
    let area = number(&digits[..3]);
    let group = number(&digits[3..5]);
    let serial = number(&digits[5..]);
    area != 0
        && area != 666
        && area < 900
        && group != 0
        && serial != 0
        && &digits != b"078051120"
        && &digits != b"219099999"
}

/// Luhn check of an NPI (10 ASCII digits) with the CMS prefix 80840.
fn valid_npi(b: &[u8]) -> bool {
    if b.len() != 10 || !b.iter().all(u8::is_ascii_digit) {
        return false;
    }
    // Luhn over "80840" + the NPI, from the right: every second digit,
    // starting with the one left of the check digit, is doubled.
    let sum: u32 = b"80840"
        .iter()
        .chain(b)
        .rev()
        .enumerate()
        .map(|(i, c)| {
            let d = u32::from(c - b'0');
            if i % 2 == 1 {
                let d2 = d * 2;
                if d2 > 9 { d2 - 9 } else { d2 }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// Month from an English month name or abbreviation (its first three
/// letters, any case).
fn month_from_name(word: &[u8]) -> Option<u32> {
    let key = [
        word.first()?.to_ascii_lowercase(),
        word.get(1)?.to_ascii_lowercase(),
        word.get(2)?.to_ascii_lowercase(),
    ];
    const NAMES: [&[u8; 3]; 12] = [
        b"jan", b"feb", b"mar", b"apr", b"may", b"jun", b"jul", b"aug", b"sep", b"oct", b"nov",
        b"dec",
    ];
    NAMES.iter().position(|n| **n == key).map(|i| i as u32 + 1)
}

/// Month 1–12 and day 1–31 in a match of the date regex.
fn valid_date(b: &[u8]) -> bool {
    // Up to three numbers (with their digit counts) and the month name.
    let mut numbers = [(0u32, 0usize); 3];
    let mut n = 0;
    let mut named_month = None;
    let mut separator = None;
    let mut i = 0;
    while i < b.len() {
        let run_end = |pred: fn(&u8) -> bool| {
            b[i..]
                .iter()
                .position(|c| !pred(c))
                .map_or(b.len(), |p| i + p)
        };
        if b[i].is_ascii_digit() {
            let end = run_end(u8::is_ascii_digit);
            match numbers.get_mut(n) {
                Some(slot) => *slot = (number(&b[i..end]), end - i),
                None => return false,
            }
            n += 1;
            i = end;
        } else if b[i].is_ascii_alphabetic() {
            let end = run_end(u8::is_ascii_alphabetic);
            // Ordinal suffixes ("st", "th") are too short to be months.
            if end - i >= 3 {
                named_month = month_from_name(&b[i..end]);
            }
            i = end;
        } else {
            if separator.is_none() && matches!(b[i], b'/' | b'-' | b'.') {
                separator = Some(b[i]);
            }
            i += 1;
        }
    }
    let ok = |month: u32, day: u32| (1..=12).contains(&month) && (1..=31).contains(&day);
    let [(a, a_len), (b2, _), (c, _)] = numbers;
    match named_month {
        // Day and year; the day is the number that is not four digits.
        Some(month) => {
            n == 2 && {
                let day = if a_len == 4 { b2 } else { a };
                ok(month, day)
            }
        }
        None if n != 3 => false,
        // YYYY-MM-DD, YYYY/MM/DD.
        None if a_len == 4 => ok(b2, c),
        // DD.MM.YYYY.
        None if separator == Some(b'.') => ok(b2, a),
        // MM/DD/YYYY, or day first when the first number cannot be a month.
        None => ok(a, b2) || ok(b2, a),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detectors() -> &'static Detectors {
        static D: std::sync::OnceLock<Detectors> = std::sync::OnceLock::new();
        D.get_or_init(Detectors::new)
    }

    /// `(text, expected count)` for one detector.
    fn check(d: Detector, cases: &[(&str, usize)]) {
        let det = detectors();
        for &(text, want) in cases {
            assert_eq!(det.count(d, text), want, "{} in {text:?}", d.name());
            // The combined scan must agree with the single count.
            let all = det.scan(text, &Detector::ALL);
            let got = all.iter().find(|(x, _)| *x == d).map(|(_, n)| *n);
            assert_eq!(got, Some(want), "{} in scan of {text:?}", d.name());
        }
    }

    #[test]
    fn names_round_trip() {
        for d in Detector::ALL {
            assert_eq!(Detector::from_name(d.name()), Some(d));
            assert_eq!(d.to_string(), d.name());
            assert_eq!(
                serde_json::to_string(&d).expect("serialise"),
                format!("\"{}\"", d.name())
            );
        }
        assert_eq!(Detector::from_name("ssn"), None);
        assert_eq!(Detector::from_name("US-SSN"), None);
        assert_eq!(Detector::from_name(""), None);
    }

    #[test]
    fn detectors_are_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Detectors>();
    }

    #[test]
    fn us_ssn() {
        check(
            Detector::UsSsn,
            &[
                // True positives.
                ("SSN: 123-45-6789", 1),
                ("123-45-6789", 1),
                ("her number is 123 45 6789.", 1),
                ("(123-45-6789)", 1),
                ("a 123-45-6789 b 234-56-7890", 2),
                ("899-99-9999", 1),
                ("SSN 123456789", 1),
                ("ssn#123456789", 1),
                ("Social Security number: 123456789", 1),
                ("social  security no. on file is 123456789", 1),
                ("né 123-45-6789 à Paris", 1),
                ("SSN 123-45-6789\n", 1),
                // Not SSNs: number ranges.
                ("000-12-3456", 0),
                ("666-12-3456", 0),
                ("900-12-3456", 0),
                ("999-12-3456", 0),
                ("123-00-4567", 0),
                ("123-45-0000", 0),
                ("078-05-1120", 0),
                ("219-09-9999", 0),
                ("SSN 078051120", 0),
                // Not SSNs: part of something longer.
                ("call 1-800-123-45-6789", 0),
                ("123-45-67890", 0),
                ("9123-45-6789", 0),
                ("123-45-6789-1", 0),
                ("x123-45-6789", 0),
                ("é123-45-6789", 0),
                ("123-45-6789é", 0),
                ("1.123-45-6789", 0),
                ("1 800 123 45 6789", 0),
                ("SSN 1234567890", 0),
                ("SSN 12345678", 0),
                // Mixed separators are not the SSN shape.
                ("123-45 6789", 0),
                ("123  45  6789", 0),
                // Nine digits without a keyword (or too far from one).
                ("order 123456789 shipped", 0),
                (
                    "SSN is unknown; the tracking number for the parcel we sent is 123456789",
                    0,
                ),
                ("123456789 SSN", 0),
                // Phone numbers.
                ("555-123-4567", 0),
                ("(555) 123-4567", 0),
            ],
        );
    }

    #[test]
    fn medicare_mbi() {
        check(
            Detector::MedicareMbi,
            &[
                ("MBI 1EG4-TE5-MK73", 1),
                ("1EG4TE5MK73", 1),
                ("ids: 1EG4TE5MK73, 9AA0-AA0-AA00.", 2),
                ("1E34T45MK73", 1),
                ("medicare: 1eg4-te5-mk73", 0),
                // Forbidden letters in each letter position.
                ("1SG4TE5MK73", 0),
                ("1EL4TE5MK73", 0),
                ("1EG4OE5MK73", 0),
                ("1EG4TI5MK73", 0),
                ("1EG4TE5BK73", 0),
                ("1EG4TE5MZ73", 0),
                // Wrong first digit, wrong digit positions, length.
                ("0EG4TE5MK73", 0),
                ("1EGATE5MK73", 0),
                ("1EG4TE5MK7", 0),
                ("1EG4TE5MK734", 0),
                ("X1EG4TE5MK73", 0),
                // One dash but not the other.
                ("1EG4-TE5MK73", 0),
            ],
        );
    }

    #[test]
    fn npi() {
        check(
            Detector::Npi,
            &[
                ("NPI 1234567893", 1),
                ("npi:1234567893.", 1),
                ("1245319599", 1),
                ("2000000002", 1),
                ("1234567893 and 1245319599", 2),
                // Wrong check digit.
                ("NPI 1234567890", 0),
                ("NPI 1245319598", 0),
                // Wrong first digit.
                ("3234567891", 0),
                // Part of a longer digit run.
                ("11234567893", 0),
                ("12345678931", 0),
                ("+1-1234567893", 0),
                ("1234567893-5", 0),
                ("NPI1234567893", 0),
            ],
        );
    }

    #[test]
    fn npi_luhn_examples() {
        assert!(valid_npi(b"1234567893"));
        assert!(!valid_npi(b"1234567890"));
        assert!(!valid_npi(b"123456789"));
        assert!(!valid_npi(b"12345678a3"));
    }

    #[test]
    fn date_of_birth() {
        check(
            Detector::DateOfBirth,
            &[
                ("DOB: 03/04/1961", 1),
                ("dob 3/4/61", 1),
                ("D.O.B. 1961-03-04", 1),
                ("Date of birth: 04.03.1961", 1),
                ("birth date March 4, 1961", 1),
                ("Birthdate: 4 March 1961", 1),
                ("born Mar 4 1961 in Ohio", 1),
                ("born on Sept. 4th, 1961", 1),
                ("DOB 25/12/1961", 1),
                ("DOB 3-4-1961", 1),
                ("Patient (DOB 03/04/1961, née Müller) was seen", 1),
                ("DOB: 03/04/1961 or 1961-04-03", 2),
                // Window counted in characters: 30 two-byte characters.
                ("DOB ééééééééééééééééééééééééééééé 03/04/1961", 1),
                // One date near two keywords counts once.
                ("born, DOB 03/04/1961", 1),
                ("DOB dob D.O.B.: 03/04/1961", 1),
                // Out of the first keyword's window, in the second's.
                (
                    "born in Ohio, a long way from here; her DOB is 03/04/1961",
                    1,
                ),
                (
                    "DOB: see the attached letter, which explains at some length why the form \
                     was returned; the lab has the rest of the record, and the clinic will \
                     call back. DOB 03/04/1961",
                    1,
                ),
                // No keyword nearby.
                ("Meeting on 03/04/1961", 0),
                ("Date: March 4, 1961", 0),
                ("03/04/1961 DOB", 0),
                (
                    "DOB unknown; the appointment that was booked by phone is 03/04/1961",
                    0,
                ),
                ("stubborn 03/04/1961", 0),
                // Invalid month or day.
                ("DOB 13/13/1961", 0),
                ("DOB 00/04/1961", 0),
                ("DOB 1961-13-04", 0),
                ("DOB 1961-04-32", 0),
                ("DOB 32.03.1961", 0),
                ("DOB March 32, 1961", 0),
                // Not a date shape.
                ("DOB 03/04/196", 0),
                ("DOB 03/04/19611", 0),
                ("DOB 1-800-123-4567", 0),
            ],
        );
    }

    #[test]
    fn icd10() {
        check(
            Detector::Icd10,
            &[
                ("Diagnosis: E11.9", 1),
                ("dx I10", 1),
                ("J45.909 (asthma) per the assessment", 1),
                ("ICD-10: S72.001A", 1),
                ("Problem list: E11.9, I10, J45.909.", 3),
                ("patient admitted with I10", 1),
                ("history of C50.911", 1),
                ("E11.9 was diagnosed last year", 1),
                ("Patient was seen. Plan: E11.9", 1),
                ("Diagnóstico por el médico de familia: E11.9", 0),
                ("Patient – diagnóstico: E11.9", 1),
                // No clinical word nearby.
                ("room B12", 0),
                ("flight A320", 0),
                ("gate C22 boards at 10", 0),
                (
                    "The patient was discharged. Many paragraphs later, well beyond the sixty-character window, room B12.",
                    0,
                ),
                // Not the code shape.
                ("diagnosis: U07.1", 0),
                ("diagnosis: e11.9", 0),
                ("diagnosis: E1.9", 0),
                ("diagnosis: E11.99999", 0),
                ("diagnosis: XE11.9", 0),
                ("diagnosis: E11.9x", 0),
                ("patient version B12.34.56", 0),
                ("diagnosis: ÉE11", 0),
            ],
        );
    }

    #[test]
    fn keyword_kinds() {
        let cases: &[(&str, KeywordKind)] = &[
            ("SSN", KeywordKind::Ssn),
            ("social security", KeywordKind::Ssn),
            ("DOB", KeywordKind::Dob),
            ("D.O.B", KeywordKind::Dob),
            ("Date of birth", KeywordKind::Dob),
            ("birthdate", KeywordKind::Dob),
            ("born", KeywordKind::Dob),
            ("diagnosis", KeywordKind::Clinical),
            ("DX", KeywordKind::Clinical),
            ("discharge", KeywordKind::Clinical),
            ("ICD-10", KeywordKind::Clinical),
            ("problem list", KeywordKind::Clinical),
        ];
        let det = detectors();
        for &(word, kind) in cases {
            let m = det.keywords.find(word).map(|m| m.as_str());
            assert_eq!(m, Some(word), "keyword regex on {word:?}");
            assert_eq!(KeywordKind::of(word.as_bytes()), kind, "{word:?}");
        }
    }

    #[test]
    fn scan_reports_each_requested_detector_once_in_order() {
        let det = detectors();
        let text = "SSN 123-45-6789, NPI 1234567893, DOB 03/04/1961, dx E11.9, MBI 1EG4-TE5-MK73";
        assert_eq!(
            det.scan(text, &Detector::ALL),
            vec![
                (Detector::UsSsn, 1),
                (Detector::MedicareMbi, 1),
                (Detector::Npi, 1),
                (Detector::DateOfBirth, 1),
                (Detector::Icd10, 1),
            ]
        );
        assert_eq!(
            det.scan(text, &[Detector::Npi, Detector::UsSsn, Detector::Npi]),
            vec![(Detector::Npi, 1), (Detector::UsSsn, 1)]
        );
        assert_eq!(det.scan(text, &[]), vec![]);
        assert_eq!(
            det.scan("", &Detector::ALL)
                .iter()
                .map(|(_, n)| n)
                .sum::<usize>(),
            0
        );
    }

    #[test]
    fn random_text_never_panics() {
        // Pieces that make partial and complete matches likely, mixed with
        // multi-byte characters next to every boundary.
        const PIECES: &[&str] = &[
            "0",
            "1",
            "2",
            "9",
            "-",
            " ",
            ".",
            "/",
            ",",
            "E",
            "I",
            "A",
            "S",
            "Z",
            "1EG4",
            "TE5",
            "MK73",
            "123",
            "45",
            "6789",
            "SSN",
            "ssn ",
            "DOB",
            "D.O.B.",
            "born ",
            "dx ",
            "patient ",
            "March",
            "Mar.",
            "th",
            "é",
            "€",
            "😀",
            "\u{0}",
            "\u{200B}",
            "٣",
            "Ⅻ",
            "\n",
            "\t",
            "ICD-10",
            "history of ",
            "1234567893",
        ];
        let det = detectors();
        let mut rng = fastrand::Rng::with_seed(0x5ea1_9a7e);
        for _ in 0..3000 {
            let mut text = String::new();
            for _ in 0..rng.usize(0..40) {
                text.push_str(PIECES[rng.usize(..PIECES.len())]);
            }
            let all = det.scan(&text, &Detector::ALL);
            for (d, n) in all {
                assert_eq!(det.count(d, &text), n, "{} in {text:?}", d.name());
            }
        }
        // Arbitrary characters, too.
        for _ in 0..500 {
            let text: String = (0..rng.usize(0..200)).map(|_| rng.char(..)).collect();
            det.scan(&text, &Detector::ALL);
        }
    }

    #[test]
    fn one_megabyte_scan_completes() {
        // One finding of each detector per block, far enough apart that no
        // window reaches into the next block, so counts add up exactly.
        let filler = "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor \
                      incididunt ut labore et dolore magna aliqua, 555-123-4567 room B12 on 03/04/2020; \
                      ünïcödé — 测试 — ok. ";
        let phi = "SSN 123-45-6789. NPI 1234567893. MBI 1EG4-TE5-MK73. DOB: 03/04/1961. Diagnosis: E11.9. ";
        let block = format!("{filler}{filler}{phi}{filler}{filler}");
        let per_block = detectors().scan(&block, &Detector::ALL);
        assert!(per_block.iter().all(|&(_, n)| n == 1), "{per_block:?}");

        let repeats = (1 << 20) / block.len() + 1;
        let text = block.repeat(repeats);
        let det = detectors();
        let started = std::time::Instant::now();
        let found = det.scan(&text, &Detector::ALL);
        let elapsed = started.elapsed();
        eprintln!(
            "detectors: scanned {} bytes in {elapsed:?} ({:.0} MB/s)",
            text.len(),
            text.len() as f64 / 1e6 / elapsed.as_secs_f64()
        );
        assert!(
            found.iter().all(|&(_, n)| n == repeats),
            "{found:?}, {repeats} blocks"
        );
    }
}
