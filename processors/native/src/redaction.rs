//! Redaction with the same patterns file as processors/redaction.py, and the keyed pseudonym.
//!
//! The patterns are compiled with fancy-regex, a backtracking engine like Python's `re` (look-around,
//! back-references, possessive quantifiers), so a match is the one `re` finds. The engines differ
//! outside ASCII (Python's `\w`, `\s` and case folding follow str methods, Rust's follow Unicode
//! properties) and on the ASCII separators 0x1C-0x1F, which Python counts as whitespace: a text
//! with any such character is not redacted here but handed back (`None`), and the caller asks the
//! Python reference. So are texts on which fancy-regex gives up (its backtracking limit) and any
//! empty match, where the two engines' iteration rules differ. Percent escapes are decoded here
//! only when they decode to ASCII (as `urllib.parse.unquote` does then, byte for byte); a text
//! with any other escape is the reference's too.
//!
//! Each pattern also gets a prefilter (`superset`): the same regex without its look-arounds,
//! possessive quantifiers and back-references, which the regex crate runs as a DFA in one pass.
//! It matches every text the pattern matches and more, so a text it does not match cannot hold a
//! match of the pattern, and fancy-regex's backtracking VM (most of the core's redaction time on
//! clean text: the digit-gated patterns open with look-behinds) is skipped for it.

use std::collections::HashMap;

use fancy_regex::{Captures, Regex};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

const MAX_ROUNDS: usize = 4;
// Percent-decoding rounds, as redaction.py's _MAX_DECODES.
const MAX_DECODES: usize = 4;
const CACHED_TEXT_CHARS: usize = 256;
const CACHE_ENTRIES: usize = 4096;

#[derive(Clone, Copy, Debug)]
pub enum Validator {
    Luhn,
    Iban,
    Ipv4,
}

impl Validator {
    pub fn named(name: &str) -> Option<Self> {
        Some(match name {
            "luhn" => Self::Luhn,
            "iban_mod97" => Self::Iban,
            "ipv4_octets" => Self::Ipv4,
            _ => return None,
        })
    }

    fn valid(self, candidate: &str) -> bool {
        match self {
            Self::Luhn => luhn_valid(candidate),
            Self::Iban => iban_valid(candidate),
            Self::Ipv4 => ipv4_octets_valid(candidate),
        }
    }
}

/// ASCII texts only (see the module docstring), as the redaction.py functions of the same names.
fn luhn_valid(candidate: &str) -> bool {
    let digits: Vec<u32> = candidate.chars().filter_map(|c| c.to_digit(10)).collect();
    if !(13..=19).contains(&digits.len()) {
        return false;
    }
    let total: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(position, &digit)| {
            if position % 2 == 1 {
                if digit > 4 { digit * 2 - 9 } else { digit * 2 }
            } else {
                digit
            }
        })
        .sum();
    total % 10 == 0
}

fn iban_valid(candidate: &str) -> bool {
    let compact: Vec<u8> = candidate.bytes().filter(|&b| b != b' ').map(|b| b.to_ascii_uppercase()).collect();
    if !(15..=34).contains(&compact.len()) || !compact.iter().all(u8::is_ascii_alphanumeric) {
        return false;
    }
    let mut remainder: u32 = 0;
    for &byte in compact[4..].iter().chain(&compact[..4]) {
        let value = if byte.is_ascii_digit() { u32::from(byte - b'0') } else { u32::from(byte - b'A') + 10 };
        remainder = if value >= 10 { (remainder * 100 + value) % 97 } else { (remainder * 10 + value) % 97 };
    }
    remainder == 1
}

fn ipv4_octets_valid(candidate: &str) -> bool {
    let octets: Vec<&str> = candidate.split('.').collect();
    octets.len() == 4
        && octets.iter().all(|octet| {
            !octet.is_empty() && octet.bytes().all(|b| b.is_ascii_digit()) && octet.parse::<u64>().is_ok_and(|v| v <= 255)
        })
}

pub enum Replacement {
    Literal(String),
    /// Literal text, or the name of a group to insert (empty when it did not take part).
    Parts(Vec<(bool, String)>),
}

pub struct Pattern {
    pub name: String,
    pub regex: Regex,
    pub replacement: Replacement,
    pub validator: Option<Validator>,
    /// The group a validator checks: "value" when the regex has one, else the whole match.
    pub validated_group: Option<String>,
    pub gate: Option<usize>,
    /// A regex that matches wherever `regex` could (see `superset`); None: always run `regex`.
    pub prefilter: Option<regex::Regex>,
}

pub struct Gate {
    pub needles: Vec<String>,
    pub folded: bool,
}

pub struct Patterns {
    pub version: i64,
    pub patterns: Vec<Pattern>,
    pub gates: Vec<Gate>,
    cache: HashMap<String, String>,
}

/// Whether a text is redacted here: printable ASCII, tab, newline, vertical tab, form feed and
/// carriage return, on which Python's `re` and fancy-regex agree.
pub fn native_text(text: &str) -> bool {
    text.bytes().all(|b| (0x20..0x7F).contains(&b) || (0x09..=0x0D).contains(&b))
}

impl Patterns {
    pub fn new(version: i64, patterns: Vec<Pattern>, gates: Vec<Gate>) -> Self {
        Self { version, patterns, gates, cache: HashMap::new() }
    }

    /// PatternSet.redact: rounds until nothing changes (at most four); None: ask Python.
    pub fn redact(&mut self, text: &str) -> Option<String> {
        if let Some(cached) = self.cache.get(text) {
            return Some(cached.clone());
        }
        if !native_text(text) {
            return None;
        }
        let redacted = self.decoded(text, None)?;
        // Python counts characters; these texts are ASCII, so bytes are characters.
        if text.len() <= CACHED_TEXT_CHARS {
            if self.cache.len() >= CACHE_ENTRIES {
                self.cache.clear();
            }
            self.cache.insert(text.to_string(), redacted.clone());
        }
        Some(redacted)
    }

    /// PatternSet.findings: (pattern name, matched text) in the order masked; None: ask Python.
    pub fn findings(&self, text: &str) -> Option<Vec<(String, String)>> {
        if !native_text(text) {
            return None;
        }
        let mut found = Vec::new();
        self.decoded(text, Some(&mut found))?;
        Some(found)
    }

    /// PatternSet._decoded: the text as written masked, then each percent-decoding of what is
    /// left; the text decoded down to the deepest level that revealed PII, masked, or else the text
    /// as written, masked. `text` is native (native_text).
    fn decoded(&self, text: &str, mut found: Option<&mut Vec<(String, String)>>) -> Option<String> {
        if let Some(found) = found.as_deref_mut() {
            self.apply(text, Some(found))?;
        }
        let first = self.fixpoint(text)?;
        if !has_escape(&first) {
            return Some(first);
        }
        let mut revealed: Option<String> = None;
        let mut masked = first.clone();
        for _ in 0..MAX_DECODES {
            if !has_escape(&masked) {
                break;
            }
            let decoded = percent_decoded(&masked)?;
            if !native_text(&decoded) {
                return None;
            }
            if let Some(found) = found.as_deref_mut() {
                self.apply(&decoded, Some(found))?;
            }
            masked = self.fixpoint(&decoded)?;
            if masked != decoded {
                revealed = Some(masked.clone());
            }
        }
        Some(revealed.unwrap_or(first))
    }

    /// Rounds of the patterns until nothing changes (at most four), as PatternSet._fixpoint.
    fn fixpoint(&self, text: &str) -> Option<String> {
        let mut current = text.to_string();
        let mut redacted = self.apply(&current, None)?;
        let mut rounds = 1;
        while redacted != current && rounds < MAX_ROUNDS {
            current = redacted;
            redacted = self.apply(&current, None)?;
            rounds += 1;
        }
        Some(redacted)
    }

    fn admits(&self, gate: usize, text: &str, lowered: &mut Option<String>) -> bool {
        let gate = &self.gates[gate];
        let haystack: &str = if gate.folded { lowered.get_or_insert_with(|| text.to_ascii_lowercase()) } else { text };
        gate.needles.iter().any(|needle| haystack.contains(needle.as_str()))
    }

    fn apply(&self, text: &str, mut found: Option<&mut Vec<(String, String)>>) -> Option<String> {
        let mut text = text.to_string();
        let mut admitted: Vec<Option<bool>> = vec![None; self.gates.len()];
        let mut lowered: Option<String> = None;
        for pattern in &self.patterns {
            if let Some(gate) = pattern.gate {
                let verdict = match admitted[gate] {
                    Some(verdict) => verdict,
                    None => {
                        let verdict = self.admits(gate, &text, &mut lowered);
                        admitted[gate] = Some(verdict);
                        verdict
                    }
                };
                if !verdict {
                    continue;
                }
            }
            if pattern.prefilter.as_ref().is_some_and(|prefilter| !prefilter.is_match(&text)) {
                continue;
            }
            let redacted = substitute(pattern, &text, found.as_deref_mut())?;
            if redacted != text {
                text = redacted;
                admitted.iter_mut().for_each(|verdict| *verdict = None);
                lowered = None;
            }
        }
        Some(text)
    }
}

fn masked(pattern: &Pattern, captures: &Captures<'_, str>) -> Option<Option<String>> {
    if let Some(validator) = pattern.validator {
        let candidate = match &pattern.validated_group {
            Some(group) => captures.name(group)?.as_str(),
            None => captures.get(0)?.as_str(),
        };
        if !validator.valid(candidate) {
            return Some(None);
        }
    }
    Some(Some(match &pattern.replacement {
        Replacement::Literal(text) => text.clone(),
        Replacement::Parts(parts) => parts
            .iter()
            .map(|(is_group, text)| {
                if *is_group { captures.name(text).map_or("", |m| m.as_str()) } else { text.as_str() }
            })
            .collect(),
    }))
}

/// `regex.sub(substitute, text)`: every non-overlapping match from the left, a refused candidate
/// left as it is (and its span passed over, as `re.sub` does).
fn substitute(pattern: &Pattern, text: &str, mut found: Option<&mut Vec<(String, String)>>) -> Option<String> {
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for captures in pattern.regex.captures_iter(text) {
        let captures = captures.ok()?;
        let whole = captures.get(0)?;
        if whole.start() == whole.end() {
            return None;
        }
        out.push_str(&text[last..whole.start()]);
        match masked(pattern, &captures)? {
            Some(replacement) => {
                if let Some(found) = found.as_deref_mut() {
                    found.push((pattern.name.clone(), whole.as_str().to_string()));
                }
                out.push_str(&replacement);
            }
            None => out.push_str(whole.as_str()),
        }
        last = whole.end();
    }
    if last == 0 {
        return Some(text.to_string());
    }
    out.push_str(&text[last..]);
    Some(out)
}

/// The prefilter of a pattern written in Python's `re` syntax: a regex for the regex crate that
/// matches every text the pattern matches. Look-arounds go (they only constrain a match),
/// possessive quantifiers and atomic groups become ordinary ones (possessive matching only fails
/// more often), named groups become plain groups, a back-reference matches anything. None when the
/// pattern holds something this reading does not know for sure (a character class with a nested
/// "[" or the regex crate's set operators, which Python reads as literals; an unbalanced group),
/// and the caller then compiles no prefilter for it: the regex crate refuses the rest (`\Z`, ...).
pub fn superset(pattern: &str) -> Option<String> {
    let chars: Vec<char> = pattern.chars().collect();
    let mut out = String::with_capacity(pattern.len());
    let mut index = 0;
    // Whether the last thing written was a quantifier, after which "+" marks it possessive.
    let mut quantified = false;
    while index < chars.len() {
        let c = chars[index];
        match c {
            '\\' => {
                let next = *chars.get(index + 1)?;
                out.push(c);
                out.push(next);
                index += 2;
                quantified = false;
            }
            '[' => {
                let end = class_end(&chars, index)?;
                out.extend(&chars[index..end]);
                index = end;
                quantified = false;
            }
            '(' => {
                let rest: String = chars[index..chars.len().min(index + 4)].iter().collect();
                if rest.starts_with("(?=") || rest.starts_with("(?!") || rest.starts_with("(?<=") || rest.starts_with("(?<!") {
                    index = group_end(&chars, index)?;
                } else if rest.starts_with("(?P=") {
                    index = group_end(&chars, index)?;
                    out.push_str("(?s:.*)");
                } else if rest.starts_with("(?P<") || rest.starts_with("(?>") {
                    let open = if rest.starts_with("(?>") { index + 3 } else { chars[index..].iter().position(|&c| c == '>')? + index + 1 };
                    out.push_str("(?:");
                    index = open;
                } else if rest.starts_with("(?") {
                    out.push_str("(?"); // a group's flags or "(?:", never a quantifier
                    index += 2;
                } else {
                    out.push(c);
                    index += 1;
                }
                quantified = false;
            }
            // Python's "$" also matches before a text's last newline, the regex crate's does not.
            '$' => return None,
            '*' | '?' | '}' => {
                out.push(c);
                index += 1;
                if quantified && c == '?' {
                    quantified = false; // a lazy mark: "??" or "+?" ends the quantifier
                    continue;
                }
                quantified = true;
                if chars.get(index) == Some(&'+') {
                    index += 1;
                }
            }
            '+' => {
                out.push(c);
                index += 1;
                quantified = true;
                if chars.get(index) == Some(&'+') {
                    index += 1;
                }
            }
            _ => {
                out.push(c);
                index += 1;
                quantified = false;
            }
        }
    }
    Some(out)
}

/// The index after the "]" that closes the character class opening at `start`.
fn class_end(chars: &[char], start: usize) -> Option<usize> {
    let mut index = start + 1;
    if chars.get(index) == Some(&'^') {
        index += 1;
    }
    if chars.get(index) == Some(&']') {
        index += 1; // a "]" first in a class is a literal
    }
    while index < chars.len() {
        match chars[index] {
            '\\' => index += 2,
            ']' => return Some(index + 1),
            '[' => return None,
            c @ ('&' | '-' | '~') if chars.get(index + 1) == Some(&c) => return None,
            _ => index += 1,
        }
    }
    None
}

/// The index after the ")" that closes the group opening at `start`.
fn group_end(chars: &[char], start: usize) -> Option<usize> {
    let mut depth = 0;
    let mut index = start;
    while index < chars.len() {
        match chars[index] {
            '\\' => index += 1,
            '[' => {
                index = class_end(chars, index)?;
                continue;
            }
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return Some(index + 1);
                }
            }
            _ => {}
        }
        index += 1;
    }
    None
}

/// Whether a text holds a percent escape: "%" and two hex digits.
fn has_escape(text: &str) -> bool {
    text.as_bytes().windows(3).any(|w| w[0] == b'%' && w[1].is_ascii_hexdigit() && w[2].is_ascii_hexdigit())
}

/// `urllib.parse.unquote` of an ASCII text whose escapes all decode to ASCII: each "%" and two hex
/// digits becomes that byte, any other "%" stays. None when an escape decodes to 0x80 or above
/// (UTF-8 and its replacement of invalid sequences are the reference's).
fn percent_decoded(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let byte = bytes[index];
        if byte == b'%' && index + 2 < bytes.len() {
            let (high, low) = (bytes[index + 1], bytes[index + 2]);
            if let (Some(high), Some(low)) = ((high as char).to_digit(16), (low as char).to_digit(16)) {
                let decoded = (high * 16 + low) as u8;
                if decoded >= 0x80 {
                    return None;
                }
                out.push(decoded);
                index += 3;
                continue;
            }
        }
        out.push(byte);
        index += 1;
    }
    String::from_utf8(out).ok()
}

/// `pseudonymise` ("u_") and `pseudonymise_identifier` ("p_"): the prefix and the first 32 hex
/// digits of HMAC-SHA256(key, value).
pub fn pseudonym(value: &str, key: &[u8], prefix: &str) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(value.as_bytes());
    let digest = mac.finalize().into_bytes();
    format!("{prefix}{}", &hex::encode(digest)[..32])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validators_agree_with_the_reference() {
        assert!(luhn_valid("4111 1111 1111 1111"));
        assert!(!luhn_valid("4111 1111 1111 1112"));
        assert!(iban_valid("DE89 3704 0044 0532 0130 00"));
        assert!(!iban_valid("DE88 3704 0044 0532 0130 00"));
        assert!(ipv4_octets_valid("192.168.1.20"));
        assert!(!ipv4_octets_valid("256.1.1.1"));
    }

    #[test]
    fn pseudonyms_are_keyed_hashes() {
        let pseudonym = pseudonym("user-1", b"k", "u_");
        assert!(pseudonym.starts_with("u_"));
        assert_eq!(pseudonym.len(), 34);
    }

    #[test]
    fn a_prefilter_drops_what_only_constrains_a_match() {
        assert_eq!(superset(r"(?<![\w-])sk-[A-Za-z0-9_-]{20,}+").as_deref(), Some(r"sk-[A-Za-z0-9_-]{20,}"));
        assert_eq!(superset(r"(?P<label>\bkey\s++)(?=[a-z]{8})[a-z]++=*+").as_deref(), Some(r"(?:\bkey\s+)[a-z]+=*"));
        assert_eq!(superset(r"[0-9](?<![\w.][0-9])(?P<sep>[ .-])[0-9]{3}(?P=sep)").as_deref(), Some(r"[0-9](?:[ .-])[0-9]{3}(?s:.*)"));
        assert_eq!(superset(r"a+?b??(?:c)?+(?i)d").as_deref(), Some(r"a+?b??(?:c)?(?i)d"));
        assert_eq!(superset(r"[)(](?!x[)])y").as_deref(), Some(r"[)(]y"));
        assert_eq!(superset(r"(?>ab+)c").as_deref(), Some(r"(?:ab+)c"));
    }

    #[test]
    fn a_prefilter_is_refused_where_the_engines_read_differently() {
        assert_eq!(superset(r"done$"), None);
        assert_eq!(superset(r"[a[]x"), None);
        assert_eq!(superset(r"[a&&b]"), None);
        assert_eq!(superset(r"(?=unclosed"), None);
        assert_eq!(superset(r"trailing\"), None);
    }

    #[test]
    fn a_prefilter_matches_wherever_its_pattern_does() {
        let pattern = r"[0-8](?<![\w.-][0-8])[0-9]{2}(?<!000|666)-(?!00)[0-9]{2}-(?!0000)[0-9]{4}(?![\w-]|\.[0-9])";
        let full = fancy_regex::Regex::new(pattern).unwrap();
        let prefilter = regex::Regex::new(&superset(pattern).unwrap()).unwrap();
        for text in ["ssn 123-45-6789.", "x123-45-6789", "000-12-3456", "123-45-678", "no digits", "v1.2.3"] {
            if full.is_match(text).unwrap() {
                assert!(prefilter.is_match(text), "{text}");
            }
        }
        assert!(!prefilter.is_match("retry after 20s, v1.2.3"));
    }

    #[test]
    fn percent_decoding_is_unquote_for_ascii() {
        assert_eq!(percent_decoded("alice%40example.com").as_deref(), Some("alice@example.com"));
        assert_eq!(percent_decoded("%%41%4").as_deref(), Some("%A%4"));
        assert_eq!(percent_decoded("100%zz %2b1").as_deref(), Some("100%zz +1"));
        assert_eq!(percent_decoded("caf%C3%A9"), None);
        assert!(has_escape("a%2Fb") && !has_escape("50% off") && !has_escape("%4"));
    }
}
