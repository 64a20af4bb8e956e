//! onfinish's native per-event core: one call per batch of raw records does what the Python
//! reference path (processors/decoding.py, enrichment.py, pricing.py, quality.py, redaction.py,
//! schemas/avro_encoder.py) does to each of them, for the records it is sure about.
//!
//! The contract with the Python side (processors/engines.py): a record the core returns is
//! byte-identical to what the reference would have produced; a record it is not sure about
//! (refused, unusual, or outside what this core reads) comes back as None and the caller runs the
//! reference path on it, so dead letters and their reasons are the reference's by construction.
//! Registry I/O, state, snapshots, rules and delivery stay in Python.

mod avro;
mod pricing;
mod quality;
mod redaction;

use std::borrow::Cow;
use std::collections::HashMap;
use std::time::Instant;

use chrono::{DateTime, Utc};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString};

use avro::{Type, Val};
use redaction::{Gate, Pattern, Patterns, Replacement, Validator};

const MAX_ID_CHARS: usize = 256;
const MAX_TEXT_CHARS: usize = 8_192;
const MAX_ATTRIBUTE_CHARS: usize = 1_024;
const MAX_CONTENT_CHARS: usize = 1_000_000;
const MAX_TOKENS: i32 = 10_000_000;
const MAX_COUNT: i32 = 1_000_000;
const MAX_ITEMS: usize = 64;
// A start more than a year before the finish is possible but odd: the reference decides.
const MAX_NATIVE_DURATION_US: i64 = 366 * 86_400 * 1_000_000;
// Keys of each pseudonym cache (a user makes many calls), cleared when full.
const PSEUDONYM_CACHE_ENTRIES: usize = 65_536;
// Repeating texts kept as Python strings (a few hundred dimensions; session keys come and go).
const INTERNED_STRINGS: usize = 16_384;

fn error(message: impl Into<String>) -> PyErr {
    PyValueError::new_err(message.into())
}

fn chars(text: &str) -> usize {
    if text.is_ascii() { text.len() } else { text.chars().count() }
}

fn identifier(text: &str) -> bool {
    !text.is_empty() && chars(text) <= MAX_ID_CHARS
}

/// The canonical form `str(uuid.UUID(...))` gives back: a record with any other spelling is left
/// to the reference (whose UUID() accepts braces, upper case and missing hyphens).
fn canonical_uuid(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.len() == 36
        && bytes.iter().enumerate().all(|(i, &b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_digit() || (b'a'..=b'f').contains(&b),
        })
}

/// redaction.py's is_opaque_id: a UUID in its 8-4-4-4-12 form (either case) or a lowercase hex
/// digest of 32, 40 or 64 digits; such ids skip the pattern passes.
fn opaque_id(text: &str) -> bool {
    let bytes = text.as_bytes();
    match bytes.len() {
        36 => bytes.iter().enumerate().all(|(i, &b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        }),
        32 | 40 | 64 => bytes.iter().all(|&b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        _ => false,
    }
}

fn text<'a>(value: &Val<'a>) -> Option<&'a str> {
    match value {
        Val::Str(text) => Some(text),
        _ => None,
    }
}

/// Some(None) for null, Some(Some(text)) for a string, None for anything else.
fn optional_text<'a>(value: &Val<'a>) -> Option<Option<&'a str>> {
    match value {
        Val::Null => Some(None),
        Val::Str(text) => Some(Some(text)),
        _ => None,
    }
}

fn optional_identifier<'a>(value: &Val<'a>) -> Option<Option<&'a str>> {
    let text = optional_text(value)?;
    if text.is_some_and(|t| !identifier(t)) {
        return None;
    }
    Some(text)
}

fn int(value: &Val<'_>, low: i32, high: i32) -> Option<i32> {
    match value {
        Val::Int(n) if (low..=high).contains(n) => Some(*n),
        _ => None,
    }
}

fn optional_int(value: &Val<'_>, low: i32, high: i32) -> Option<Option<i32>> {
    match value {
        Val::Null => Some(None),
        value => Some(Some(int(value, low, high)?)),
    }
}

fn boolean(value: &Val<'_>) -> Option<bool> {
    match value {
        Val::Boolean(b) => Some(*b),
        _ => None,
    }
}

/// A finite double in [low, high] (pydantic's ge/le with allow_inf_nan=False).
fn double(value: &Val<'_>, low: f64, high: f64) -> Option<f64> {
    match value {
        Val::Double(x) if x.is_finite() && *x >= low && *x <= high => Some(*x),
        _ => None,
    }
}

fn optional_double(value: &Val<'_>, low: f64, high: f64) -> Option<Option<f64>> {
    match value {
        Val::Null => Some(None),
        value => Some(Some(double(value, low, high)?)),
    }
}

fn long(value: &Val<'_>) -> Option<i64> {
    match value {
        Val::Long(n) => Some(*n),
        _ => None,
    }
}

fn symbol(value: &Val<'_>) -> Option<u32> {
    match value {
        Val::Enum(index) => Some(*index),
        _ => None,
    }
}

fn field(record: &avro::Record, name: &str) -> PyResult<usize> {
    record.index(name).ok_or_else(|| error(format!("the contract's {} has no field {name}", record.full_name)))
}

macro_rules! indices {
    ($name:ident { $($field:ident),* $(,)? }) => {
        #[allow(dead_code)]
        struct $name { $($field: usize),* }
        impl $name {
            fn of(record: &avro::Record) -> PyResult<Self> {
                Ok(Self { $($field: field(record, stringify!($field))?),* })
            }
        }
    };
}

indices!(EventFields {
    event_id, request_id, trace_id, span_id, session_id, user_id, service, environment, region,
    deployment_id, feature_id, variant_id, prompt_template_id, routing_strategy, operation, provider,
    model_id, model_version, started_at, finished_at, latency_ms, ttft_ms, queue_ms, streamed,
    stream_chunks, prompt_tokens, completion_tokens, cached_tokens, reasoning_tokens,
    reported_cost_usd, status, finish_reason, error_type, error_code, error_message, http_status,
    retry_count, tool_call_count, safety_flags, safety_score, regenerated, edited, rating,
    prompt_hash, prompt_chars, completion_chars, attributes, schema_version, sdk_name, sdk_version,
    prompt_text, completion_text,
});

indices!(FeedbackFields {
    feedback_id, request_id, session_id, regenerated, edited, rating, at, schema_version, sdk_name,
    sdk_version,
});

/// Where a field of the enriched record comes from.
enum Source {
    Event(usize),
    /// An identifier of the event, pseudonymised when a pattern finds PII in it.
    Identifier(usize),
    UserId,
    FreeText(usize),
    SafetyFlags,
    Attributes,
    CostInput,
    CostCachedInput,
    CostOutput,
    CostReasoning,
    Cost,
    CostSource,
    ModelFamily,
    ContextWindow,
    Quality,
    CacheHit,
    ProcessedAt,
    RedactionVersion,
    RawPartition,
    RawOffset,
}

fn optional(ty: Type) -> Type {
    Type::Union(vec![Type::Null, ty])
}

/// How each field of the enriched schema is filled, checked against the types this core writes.
/// `identifiers` names the event's identifiers (processors/enrichment.py's IDENTIFIER_FIELDS and
/// TRACE_ID_LENGTHS, given by the Python side so that one list decides for both engines).
fn enriched_sources(
    enriched: &avro::Record,
    event: &avro::Record,
    identifiers: &[(String, Option<usize>)],
) -> PyResult<Vec<(Type, Source)>> {
    let mut sources = Vec::new();
    for field in &enriched.fields {
        let (expected, source) = match field.name.as_str() {
            "user_id" => (Some(optional(Type::String)), Source::UserId),
            name if identifiers.iter().any(|(n, _)| n == name) => {
                let index = self::field(event, name)?;
                if event.fields[index].ty != field.ty
                    || !(field.ty == Type::String || field.ty == optional(Type::String))
                {
                    return Err(error(format!("the identifier {name} is not a string of the event")));
                }
                (None, Source::Identifier(index))
            }
            "error_message" | "error_code" | "error_type" | "finish_reason" => {
                (Some(optional(Type::String)), Source::FreeText(self::field(event, &field.name)?))
            }
            "safety_flags" => (Some(Type::Array(Box::new(Type::String))), Source::SafetyFlags),
            "attributes" => (Some(Type::Map(Box::new(Type::String))), Source::Attributes),
            "cost_input_usd" => (Some(Type::Double), Source::CostInput),
            "cost_cached_input_usd" => (Some(Type::Double), Source::CostCachedInput),
            "cost_output_usd" => (Some(Type::Double), Source::CostOutput),
            "cost_reasoning_usd" => (Some(Type::Double), Source::CostReasoning),
            "cost_usd" => (Some(Type::Double), Source::Cost),
            "cost_source" => (Some(Type::String), Source::CostSource),
            "model_family" => (Some(optional(Type::String)), Source::ModelFamily),
            "context_window" => (Some(optional(Type::Int)), Source::ContextWindow),
            "quality_score" => (Some(Type::Double), Source::Quality),
            "cache_hit" => (Some(Type::Boolean), Source::CacheHit),
            "processed_at" => (Some(Type::TimestampMicros), Source::ProcessedAt),
            "redaction_version" => (Some(Type::Int), Source::RedactionVersion),
            "raw_partition" => (Some(Type::Int), Source::RawPartition),
            "raw_offset" => (Some(Type::Long), Source::RawOffset),
            name => {
                let index = self::field(event, name)?;
                // Copied as decoded: the enriched type must be the event's, and one the encoder writes.
                if event.fields[index].ty != field.ty {
                    return Err(error(format!("field {name} differs between the event and the enriched event")));
                }
                (None, Source::Event(index))
            }
        };
        if let Some(expected) = expected {
            if field.ty != expected {
                return Err(error(format!("the enriched field {} is not of the type this core writes", field.name)));
            }
        }
        if let Type::Union(branches) = &field.ty {
            if branches.len() != 2 || branches[0] != Type::Null {
                return Err(error(format!("the enriched field {} is a union this core does not write", field.name)));
            }
        }
        sources.push((field.ty.clone(), source));
    }
    Ok(sources)
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Event,
    Feedback,
}

/// Everything but the writer plans, so that a plan can be borrowed while this changes (caches).
struct Engine {
    event: EventFields,
    feedback: FeedbackFields,
    enriched: Vec<(Type, Source)>,
    success: u32,
    cache: u32,
    status_members: Vec<Py<PyAny>>,
    routing_members: Vec<Py<PyAny>>,
    catalog: pricing::Catalog,
    weights: quality::Weights,
    patterns: Patterns,
    python_redact: Py<PyAny>,
    allow_list: Vec<String>,
    pseudonym_key: Vec<u8>,
    pseudonyms: HashMap<String, String>,
    identifier_pseudonyms: HashMap<String, String>,
    /// (event field index, W3C length for a trace context id) of every identifier field.
    identifiers: Vec<(usize, Option<usize>)>,
    strings: HashMap<String, Py<PyString>>,
    max_future_us: i64,
    max_past_us: i64,
    margin_us: i64,
    max_value_bytes: usize,
}

/// One batch's clock and time spent per stage.
struct Batch<'a> {
    now_us: i64,
    processed_at_us: i64,
    prefix: &'a [u8],
    decode: f64,
    enrich: f64,
    encode: f64,
}

/// A call the core enriched: the framed enriched record and what Python's state stages read of it
/// (the numeric fields of the enriched event too, for event rules). Its texts and times are Python
/// objects made once, as a model's attributes are: the state stages read each several times.
#[pyclass(module = "onfinish_native", frozen)]
struct Call {
    #[pyo3(get)]
    value: Py<PyBytes>,
    #[pyo3(get)]
    key: Py<PyString>,
    #[pyo3(get)]
    event_id: Py<PyString>,
    #[pyo3(get)]
    request_id: Py<PyString>,
    #[pyo3(get)]
    session_id: Option<Py<PyString>>,
    #[pyo3(get)]
    user_id: Option<Py<PyString>>,
    #[pyo3(get)]
    service: Py<PyString>,
    #[pyo3(get)]
    environment: Py<PyString>,
    #[pyo3(get)]
    provider: Py<PyString>,
    #[pyo3(get)]
    model_id: Py<PyString>,
    #[pyo3(get)]
    feature_id: Option<Py<PyString>>,
    #[pyo3(get)]
    variant_id: Option<Py<PyString>>,
    /// As redacted: what the session keeps to score the call again when feedback comes.
    #[pyo3(get)]
    finish_reason: Option<Py<PyString>>,
    #[pyo3(get)]
    status: Py<PyAny>,
    #[pyo3(get)]
    routing_strategy: Py<PyAny>,
    #[pyo3(get)]
    started_at: Py<PyAny>,
    #[pyo3(get)]
    finished_at: Py<PyAny>,
    #[pyo3(get)]
    latency_ms: f64,
    #[pyo3(get)]
    ttft_ms: Option<f64>,
    #[pyo3(get)]
    queue_ms: Option<f64>,
    #[pyo3(get)]
    streamed: bool,
    #[pyo3(get)]
    stream_chunks: i32,
    #[pyo3(get)]
    prompt_tokens: i32,
    #[pyo3(get)]
    completion_tokens: i32,
    #[pyo3(get)]
    cached_tokens: i32,
    #[pyo3(get)]
    reasoning_tokens: i32,
    #[pyo3(get)]
    reported_cost_usd: Option<f64>,
    #[pyo3(get)]
    http_status: Option<i32>,
    #[pyo3(get)]
    retry_count: i32,
    #[pyo3(get)]
    tool_call_count: i32,
    #[pyo3(get)]
    safety_score: Option<f64>,
    #[pyo3(get)]
    regenerated: bool,
    #[pyo3(get)]
    edited: bool,
    #[pyo3(get)]
    rating: Option<i32>,
    #[pyo3(get)]
    prompt_chars: i32,
    #[pyo3(get)]
    completion_chars: i32,
    #[pyo3(get)]
    schema_version: i32,
    #[pyo3(get)]
    cost_input_usd: f64,
    #[pyo3(get)]
    cost_cached_input_usd: f64,
    #[pyo3(get)]
    cost_output_usd: f64,
    #[pyo3(get)]
    cost_reasoning_usd: f64,
    #[pyo3(get)]
    cost_usd: f64,
    #[pyo3(get)]
    context_window: Option<i32>,
    #[pyo3(get)]
    quality_score: f64,
    #[pyo3(get)]
    cache_hit: bool,
    #[pyo3(get)]
    redaction_version: i64,
    #[pyo3(get)]
    raw_partition: i64,
    #[pyo3(get)]
    raw_offset: i64,
}

fn utc(micros: i64) -> PyResult<DateTime<Utc>> {
    DateTime::<Utc>::from_timestamp_micros(micros).ok_or_else(|| error(format!("{micros} µs is out of range")))
}


enum Redacted<'a> {
    Kept(&'a str),
    Changed(String),
}

impl Redacted<'_> {
    fn as_str(&self) -> &str {
        match self {
            Redacted::Kept(text) => text,
            Redacted::Changed(text) => text,
        }
    }
}

impl Engine {
    fn redact<'a>(&mut self, py: Python<'_>, text: &'a str) -> PyResult<Redacted<'a>> {
        let redacted = match self.patterns.redact(text) {
            Some(redacted) => redacted,
            None => self.python_redact.call1(py, (text,))?.extract::<String>(py)?,
        };
        Ok(if redacted == text { Redacted::Kept(text) } else { Redacted::Changed(redacted) })
    }

    /// The Python string of a text that repeats from call to call (dimensions, session keys,
    /// pseudonyms): one object for all, as a dict's keys would share it.
    fn interned(&mut self, py: Python<'_>, text: &str) -> Py<PyString> {
        if let Some(interned) = self.strings.get(text) {
            return interned.clone_ref(py);
        }
        let string = PyString::new(py, text).unbind();
        if self.strings.len() >= INTERNED_STRINGS {
            self.strings.clear();
        }
        self.strings.insert(text.to_string(), string.clone_ref(py));
        string
    }

    fn pseudonym(&mut self, user_id: &str) -> String {
        cached_pseudonym(&mut self.pseudonyms, user_id, &self.pseudonym_key, "u_")
    }

    /// `clean_identifier`: the identifier as it is, or its "p_" pseudonym when a pattern finds PII
    /// in it (percent-decoded included).
    /// Checked as written, then with "-" and "_" read as spaces (redaction.py's _ID_SEPARATORS:
    /// the patterns do not match PII glued to a word by them, as it is in an id).
    fn identifier<'a>(&mut self, py: Python<'_>, text: &'a str) -> PyResult<Cow<'a, str>> {
        if opaque_id(text) {
            return Ok(Cow::Borrowed(text));
        }
        let mut found = matches!(self.redact(py, text)?, Redacted::Changed(_));
        if !found && text.contains(['-', '_']) {
            let spaced = text.replace(['-', '_'], " ");
            found = matches!(self.redact(py, &spaced)?, Redacted::Changed(_));
        }
        Ok(if found {
            Cow::Owned(cached_pseudonym(&mut self.identifier_pseudonyms, text, &self.pseudonym_key, "p_"))
        } else {
            Cow::Borrowed(text)
        })
    }

    /// Whether a finish lies well inside the decoder's bounds; near them the reference decides,
    /// with its own clock.
    fn plausible(&self, moment_us: i64, now_us: i64) -> bool {
        moment_us <= now_us.saturating_add(self.max_future_us).saturating_sub(self.margin_us)
            && moment_us >= now_us.saturating_sub(self.max_past_us).saturating_add(self.margin_us)
    }

    fn event(
        &mut self,
        py: Python<'_>,
        values: &[Val<'_>],
        partition: i64,
        offset: i64,
        batch: &mut Batch<'_>,
        started: Instant,
    ) -> PyResult<Option<Py<PyAny>>> {
        let f = &self.event;
        let v = |index: usize| &values[index];
        // --- validate: what the contract model (schemas/models.py) and the decoder check -----------
        macro_rules! get {
            ($e:expr) => {
                match $e {
                    Some(value) => value,
                    None => return Ok(None),
                }
            };
        }
        let event_id = get!(text(v(f.event_id)));
        if !canonical_uuid(event_id) {
            return Ok(None);
        }
        let request_id = get!(text(v(f.request_id)).filter(|t| identifier(t)));
        let mut optional_ids = [None; 9];
        for (slot, index) in optional_ids.iter_mut().zip([
            f.trace_id,
            f.span_id,
            f.session_id,
            f.user_id,
            f.region,
            f.deployment_id,
            f.feature_id,
            f.variant_id,
            f.prompt_template_id,
        ]) {
            *slot = get!(optional_identifier(v(index)));
        }
        let [_, _, session_id, user_id, _, _, feature_id, variant_id, _] = optional_ids;
        let service = get!(text(v(f.service)).filter(|t| identifier(t)));
        let environment = get!(text(v(f.environment)).filter(|t| identifier(t)));
        let provider = get!(text(v(f.provider)).filter(|t| identifier(t)));
        let model_id = get!(text(v(f.model_id)).filter(|t| identifier(t)));
        let model_version = get!(optional_identifier(v(f.model_version)));
        let routing = get!(symbol(v(f.routing_strategy)));
        get!(symbol(v(f.operation)));
        let status = get!(symbol(v(f.status)));
        let started_at = get!(long(v(f.started_at)));
        let finished_at = get!(long(v(f.finished_at)));
        if !self.plausible(finished_at, batch.now_us)
            || started_at > finished_at
            || started_at < finished_at - MAX_NATIVE_DURATION_US
        {
            return Ok(None);
        }
        let latency_ms = get!(double(v(f.latency_ms), 0.0, f64::MAX));
        let ttft_ms = get!(optional_double(v(f.ttft_ms), 0.0, f64::MAX));
        let queue_ms = get!(optional_double(v(f.queue_ms), 0.0, f64::MAX));
        let streamed = get!(boolean(v(f.streamed)));
        let stream_chunks = get!(int(v(f.stream_chunks), 0, MAX_COUNT));
        let prompt_tokens = get!(int(v(f.prompt_tokens), 0, MAX_TOKENS));
        let completion_tokens = get!(int(v(f.completion_tokens), 0, MAX_TOKENS));
        let cached_tokens = get!(int(v(f.cached_tokens), 0, MAX_TOKENS));
        let reasoning_tokens = get!(int(v(f.reasoning_tokens), 0, MAX_TOKENS));
        let reported_cost_usd = get!(optional_double(v(f.reported_cost_usd), 0.0, f64::MAX));
        let finish_reason = get!(optional_identifier(v(f.finish_reason)));
        get!(optional_identifier(v(f.error_type)));
        get!(optional_identifier(v(f.error_code)));
        let error_message = get!(optional_text(v(f.error_message)));
        if error_message.is_some_and(|t| chars(t) > MAX_TEXT_CHARS) {
            return Ok(None);
        }
        let http_status = get!(optional_int(v(f.http_status), 100, 599));
        let retry_count = get!(int(v(f.retry_count), 0, MAX_COUNT));
        let tool_call_count = get!(int(v(f.tool_call_count), 0, MAX_COUNT));
        let Val::Strs(safety_flags) = v(f.safety_flags) else { return Ok(None) };
        if safety_flags.len() > MAX_ITEMS || !safety_flags.iter().all(|flag| identifier(flag)) {
            return Ok(None);
        }
        let safety_score = get!(optional_double(v(f.safety_score), 0.0, 1.0));
        let regenerated = get!(boolean(v(f.regenerated)));
        let edited = get!(boolean(v(f.edited)));
        let rating = get!(optional_int(v(f.rating), -1, 1));
        get!(optional_identifier(v(f.prompt_hash)));
        let prompt_chars = get!(int(v(f.prompt_chars), 0, i32::MAX));
        let completion_chars = get!(int(v(f.completion_chars), 0, i32::MAX));
        let Val::Pairs(attributes) = v(f.attributes) else { return Ok(None) };
        if attributes.len() > MAX_ITEMS
            || !attributes.iter().all(|(key, value)| identifier(key) && chars(value) <= MAX_ATTRIBUTE_CHARS)
        {
            return Ok(None);
        }
        let schema_version = get!(int(v(f.schema_version), i32::MIN, i32::MAX));
        get!(text(v(f.sdk_name)));
        get!(text(v(f.sdk_version)));
        for index in [f.prompt_text, f.completion_text] {
            if get!(optional_text(v(index))).is_some_and(|t| chars(t) > MAX_CONTENT_CHARS) {
                return Ok(None);
            }
        }
        if cached_tokens > prompt_tokens || ttft_ms.is_some_and(|ttft| ttft > latency_ms) {
            return Ok(None);
        }
        // The quality score lower-cases the finish reason; Unicode case rules are the reference's.
        if finish_reason.is_some_and(|reason| !reason.is_ascii()) {
            return Ok(None);
        }
        let decoded = Instant::now();
        batch.decode += (decoded - started).as_secs_f64();

        // --- enrich: price, score, redact (processors/enrichment.py) ----------------------------
        let tokens = pricing::Tokens {
            prompt: i64::from(prompt_tokens),
            completion: i64::from(completion_tokens),
            cached: i64::from(cached_tokens),
            reasoning: i64::from(reasoning_tokens),
        };
        let cost = self.catalog.cost(provider, model_id, model_version, finished_at, &tokens, reported_cost_usd);
        let (family, context_window) = match self.catalog.metadata(provider, model_id) {
            Some(metadata) => (Some(metadata.family.clone()), Some(metadata.context_window)),
            None => (None, None),
        };
        let truncated = finish_reason
            .is_some_and(|reason| reason.eq_ignore_ascii_case("length") || reason.eq_ignore_ascii_case("max_tokens"));
        let quality_score = quality::score(
            &quality::Behaviour {
                success: status == self.success,
                regenerated,
                edited,
                latency_ms,
                prompt_tokens: tokens.prompt,
                completion_tokens: tokens.completion,
                truncated,
                rating: rating.map(i64::from),
            },
            &self.weights,
        );
        let mut free_texts: Vec<(usize, Option<Redacted<'_>>)> = Vec::with_capacity(4);
        for index in [f.error_message, f.error_code, f.error_type, f.finish_reason] {
            let redacted = match get!(optional_text(v(index))) {
                Some(text) if !text.is_empty() => Some(self.redact(py, text)?),
                Some(text) => Some(Redacted::Kept(text)),
                None => None,
            };
            free_texts.push((index, redacted));
        }
        let mut flags = Vec::with_capacity(safety_flags.len());
        for flag in safety_flags {
            flags.push(self.redact(py, flag)?);
        }
        let mut kept_attributes = Vec::with_capacity(attributes.len());
        for (key, value) in attributes {
            if self.allow_list.iter().any(|allowed| allowed == key) {
                kept_attributes.push((*key, self.redact(py, value)?));
            }
        }
        let pseudonym = user_id.map(|user_id| self.pseudonym(user_id));
        // Identifiers a pattern finds PII in, pseudonymised: (event field index, pseudonym); none
        // for nearly every event.
        let mut cleaned: Vec<(usize, String)> = Vec::new();
        for slot in 0..self.identifiers.len() {
            let (index, trace_length) = self.identifiers[slot];
            let Val::Str(text) = v(index) else { continue };
            if text.is_empty() || trace_length.is_some_and(|length| trace_context_id(text, length)) {
                continue;
            }
            if let Cow::Owned(pseudonym) = self.identifier(py, text)? {
                cleaned.push((index, pseudonym));
            }
        }
        let fields = &self.event;
        let request_id = cleaned_text(&cleaned, fields.request_id, request_id);
        let session_id = session_id.map(|text| cleaned_text(&cleaned, fields.session_id, text));
        let service = cleaned_text(&cleaned, fields.service, service);
        let environment = cleaned_text(&cleaned, fields.environment, environment);
        let provider_cleaned = cleaned_text(&cleaned, fields.provider, provider);
        let model_id_cleaned = cleaned_text(&cleaned, fields.model_id, model_id);
        let feature_id = feature_id.map(|text| cleaned_text(&cleaned, fields.feature_id, text));
        let variant_id = variant_id.map(|text| cleaned_text(&cleaned, fields.variant_id, text));
        let finish_reason_index = fields.finish_reason;
        let enriched = Instant::now();
        batch.enrich += (enriched - decoded).as_secs_f64();

        // --- encode: the enriched record as schemas/avro_encoder.py writes it -------------------
        let mut out = Vec::with_capacity(batch.prefix.len() + 512);
        out.extend_from_slice(batch.prefix);
        let optional_string = |out: &mut Vec<u8>, text: Option<&str>| match text {
            None => out.push(0),
            Some(text) => {
                out.push(2);
                avro::write_string(out, text);
            }
        };
        for (ty, source) in &self.enriched {
            match source {
                Source::Event(index) => {
                    if avro::write(&mut out, ty, &values[*index]).is_none() {
                        return Ok(None);
                    }
                }
                Source::Identifier(index) => match cleaned.iter().find(|(i, _)| i == index) {
                    Some((_, pseudonym)) => {
                        if *ty != Type::String {
                            out.push(2);
                        }
                        avro::write_string(&mut out, pseudonym);
                    }
                    None => {
                        if avro::write(&mut out, ty, &values[*index]).is_none() {
                            return Ok(None);
                        }
                    }
                },
                Source::UserId => optional_string(&mut out, pseudonym.as_deref()),
                Source::FreeText(index) => {
                    let redacted = free_texts.iter().find(|(i, _)| i == index).and_then(|(_, r)| r.as_ref());
                    optional_string(&mut out, redacted.map(Redacted::as_str));
                }
                Source::SafetyFlags => avro::write_strings(&mut out, &flags.iter().map(Redacted::as_str).collect::<Vec<_>>()),
                Source::Attributes => avro::write_pairs(
                    &mut out,
                    &kept_attributes.iter().map(|(key, value)| (*key, value.as_str())).collect::<Vec<_>>(),
                ),
                Source::CostInput => avro::write_double(&mut out, cost.input),
                Source::CostCachedInput => avro::write_double(&mut out, cost.cached_input),
                Source::CostOutput => avro::write_double(&mut out, cost.output),
                Source::CostReasoning => avro::write_double(&mut out, cost.reasoning),
                Source::Cost => avro::write_double(&mut out, cost.total),
                Source::CostSource => avro::write_string(
                    &mut out,
                    match cost.source {
                        pricing::Source::Catalog => &self.catalog.source,
                        pricing::Source::Reported => "reported",
                        pricing::Source::Unpriced => "unpriced",
                    },
                ),
                Source::ModelFamily => optional_string(&mut out, family.as_deref()),
                Source::ContextWindow => match context_window {
                    None => out.push(0),
                    Some(window) => {
                        out.push(2);
                        avro::write_long(&mut out, i64::from(window));
                    }
                },
                Source::Quality => avro::write_double(&mut out, quality_score),
                Source::CacheHit => avro::write_boolean(&mut out, routing == self.cache),
                Source::ProcessedAt => avro::write_long(&mut out, batch.processed_at_us),
                Source::RedactionVersion => avro::write_long(&mut out, self.patterns.version),
                Source::RawPartition => avro::write_long(&mut out, partition),
                Source::RawOffset => avro::write_long(&mut out, offset),
            }
        }
        let call = Call {
            value: PyBytes::new(py, &out).unbind(),
            key: self.interned(py, session_id.unwrap_or(request_id)),
            event_id: PyString::new(py, event_id).unbind(),
            request_id: PyString::new(py, request_id).unbind(),
            session_id: session_id.map(|text| self.interned(py, text)),
            user_id: pseudonym.as_deref().map(|text| self.interned(py, text)),
            service: self.interned(py, service),
            environment: self.interned(py, environment),
            provider: self.interned(py, provider_cleaned),
            model_id: self.interned(py, model_id_cleaned),
            feature_id: feature_id.map(|text| self.interned(py, text)),
            variant_id: variant_id.map(|text| self.interned(py, text)),
            finish_reason: free_texts
                .iter()
                .find(|(i, _)| *i == finish_reason_index)
                .and_then(|(_, redacted)| redacted.as_ref())
                .map(|redacted| self.interned(py, redacted.as_str())),
            status: self.status_members[status as usize].clone_ref(py),
            routing_strategy: self.routing_members[routing as usize].clone_ref(py),
            started_at: utc(started_at)?.into_pyobject(py)?.into_any().unbind(),
            finished_at: utc(finished_at)?.into_pyobject(py)?.into_any().unbind(),
            latency_ms,
            ttft_ms,
            queue_ms,
            streamed,
            stream_chunks,
            prompt_tokens,
            completion_tokens,
            cached_tokens,
            reasoning_tokens,
            reported_cost_usd,
            http_status,
            retry_count,
            tool_call_count,
            safety_score,
            regenerated,
            edited,
            rating,
            prompt_chars,
            completion_chars,
            schema_version,
            cost_input_usd: cost.input,
            cost_cached_input_usd: cost.cached_input,
            cost_output_usd: cost.output,
            cost_reasoning_usd: cost.reasoning,
            cost_usd: cost.total,
            context_window,
            quality_score,
            cache_hit: routing == self.cache,
            redaction_version: self.patterns.version,
            raw_partition: partition,
            raw_offset: offset,
        };
        let object = Py::new(py, call)?.into_any();
        batch.encode += enriched.elapsed().as_secs_f64();
        Ok(Some(object))
    }

    /// A Feedback record as the tuple engines.py makes a Feedback of, its ids cleaned as an event's
    /// (Enricher.feedback).
    fn feedback(
        &mut self,
        py: Python<'_>,
        values: &[Val<'_>],
        batch: &mut Batch<'_>,
        started: Instant,
    ) -> PyResult<Option<Py<PyAny>>> {
        let f = &self.feedback;
        let fields = (|| {
            let feedback_id = text(&values[f.feedback_id]).filter(|t| canonical_uuid(t))?;
            let request_id = text(&values[f.request_id]).filter(|t| identifier(t))?;
            let session_id = optional_identifier(&values[f.session_id])?;
            let regenerated = boolean(&values[f.regenerated])?;
            let edited = boolean(&values[f.edited])?;
            let rating = optional_int(&values[f.rating], -1, 1)?;
            let at = long(&values[f.at]).filter(|at| self.plausible(*at, batch.now_us))?;
            let schema_version = int(&values[f.schema_version], i32::MIN, i32::MAX)?;
            let sdk_name = text(&values[f.sdk_name])?;
            let sdk_version = text(&values[f.sdk_version])?;
            Some((feedback_id, request_id, session_id, regenerated, edited, rating, at, schema_version, sdk_name, sdk_version))
        })();
        let Some((feedback_id, request_id, session_id, regenerated, edited, rating, at, schema_version, sdk_name, sdk_version)) =
            fields
        else {
            return Ok(None);
        };
        let request_id = self.identifier(py, request_id)?;
        let session_id = match session_id {
            Some(text) => Some(self.identifier(py, text)?),
            None => None,
        };
        let tuple = (feedback_id, request_id, session_id, regenerated, edited, rating, utc(at)?, schema_version, sdk_name, sdk_version)
            .into_pyobject(py)?
            .into_any()
            .unbind();
        batch.decode += started.elapsed().as_secs_f64();
        Ok(Some(tuple))
    }
}

/// The core of one processor worker: configured once from the Python side's catalog, patterns,
/// weights and contract schemas (processors/engines.py builds it), then called once per batch.
#[pyclass(module = "onfinish_native", unsendable)]
struct Core {
    event_reader: avro::Record,
    feedback_reader: avro::Record,
    writers: HashMap<u32, Option<(Kind, avro::Plan)>>,
    engine: Engine,
}

fn item<'py, T: FromPyObjectOwned<'py>>(config: &Bound<'py, PyDict>, key: &str) -> PyResult<T> {
    config.get_item(key)?.ok_or_else(|| error(format!("the core's configuration lacks {key}")))?.extract::<T>().map_err(Into::into)
}

fn patterns(config: &Bound<'_, PyDict>) -> PyResult<Patterns> {
    type Definition = (String, String, Vec<String>, Vec<(bool, String)>, Option<String>, Option<String>, Option<usize>);
    let definitions: Vec<Definition> = item(config, "patterns")?;
    let gates: Vec<(Vec<String>, bool)> = item(config, "gates")?;
    let version: i64 = item(config, "redaction_version")?;
    let mut compiled = Vec::new();
    for (name, regex, flags, parts, validator, validated_group, gate) in definitions {
        let mut inline = String::new();
        for flag in &flags {
            inline.push_str(match flag.as_str() {
                "IGNORECASE" => "(?i)",
                "MULTILINE" => "(?m)",
                "DOTALL" => "(?s)",
                other => return Err(error(format!("pattern {name}: flag {other} is not read natively"))),
            });
        }
        let compiled_regex = fancy_regex::RegexBuilder::new(&format!("{inline}{regex}"))
            .build()
            .map_err(|e| error(format!("pattern {name} does not compile natively: {e}")))?;
        let replacement = if parts.iter().all(|(is_group, _)| !is_group) {
            Replacement::Literal(parts.into_iter().map(|(_, text)| text).collect())
        } else {
            Replacement::Parts(parts)
        };
        let validator = match validator {
            None => None,
            Some(v) => Some(Validator::named(&v).ok_or_else(|| error(format!("validator {v} is unknown natively")))?),
        };
        if gate.is_some_and(|g| g >= gates.len()) {
            return Err(error(format!("pattern {name} names a gate that is not there")));
        }
        // Sizes as the regex crate's defaults; a prefilter that will not build is simply absent.
        let prefilter = redaction::superset(&regex).and_then(|superset| regex::Regex::new(&format!("{inline}{superset}")).ok());
        compiled.push(Pattern { name, regex: compiled_regex, replacement, validator, validated_group, gate, prefilter });
    }
    Ok(Patterns::new(
        version,
        compiled,
        gates.into_iter().map(|(needles, folded)| Gate { needles, folded }).collect(),
    ))
}

fn members(config: &Bound<'_, PyDict>, key: &str, symbols: usize) -> PyResult<Vec<Py<PyAny>>> {
    let members: Vec<Py<PyAny>> = item(config, key)?;
    if members.len() != symbols {
        return Err(error(format!("{key} has {} members for {symbols} symbols", members.len())));
    }
    Ok(members)
}

fn enum_symbols<'a>(record: &'a avro::Record, name: &str) -> PyResult<&'a [String]> {
    match &record.fields[field(record, name)?].ty {
        Type::Enum(e) => Ok(&e.symbols),
        _ => Err(error(format!("{name} is not an enum"))),
    }
}

fn symbol_index(symbols: &[String], name: &str) -> PyResult<u32> {
    symbols.iter().position(|s| s == name).map(|i| i as u32).ok_or_else(|| error(format!("no symbol {name}")))
}

#[pymethods]
impl Core {
    #[new]
    fn new(config: &Bound<'_, PyDict>) -> PyResult<Self> {
        let event_reader = avro::parse_record(&item::<String>(config, "event_schema")?).map_err(error)?;
        let feedback_reader = avro::parse_record(&item::<String>(config, "feedback_schema")?).map_err(error)?;
        let enriched = avro::parse_record(&item::<String>(config, "enriched_schema")?).map_err(error)?;
        let statuses = enum_symbols(&event_reader, "status")?;
        let routes = enum_symbols(&event_reader, "routing_strategy")?;
        type PriceRow = (String, String, Option<String>, i128, i128, i128, i128, i64, Option<i64>);
        let prices: Vec<PriceRow> = item(config, "prices")?;
        let metadata: Vec<(String, String, String, i32)> = item(config, "metadata")?;
        let weights: (f64, f64, f64, f64, f64, f64, f64, f64) = item(config, "weights")?;
        // The contract's strings a producer chooses (a value a pattern finds PII in is pseudonymised
        // whole), then the W3C trace context ids with the lowercase-hex length they pass as.
        let identifiers: Vec<(String, Option<usize>)> = item::<Vec<String>>(config, "identifier_fields")?
            .into_iter()
            .map(|name| (name, None))
            .chain(item::<Vec<(String, usize)>>(config, "trace_id_lengths")?.into_iter().map(|(n, l)| (n, Some(l))))
            .collect();
        let engine = Engine {
            event: EventFields::of(&event_reader)?,
            feedback: FeedbackFields::of(&feedback_reader)?,
            enriched: enriched_sources(&enriched, &event_reader, &identifiers)?,
            success: symbol_index(statuses, "success")?,
            cache: symbol_index(routes, "cache")?,
            status_members: members(config, "status_members", statuses.len())?,
            routing_members: members(config, "routing_members", routes.len())?,
            catalog: pricing::Catalog {
                prices: prices
                    .into_iter()
                    .map(|(provider, model, model_version, input, cached_input, output, reasoning, from_us, to_us)| {
                        pricing::Price { provider, model, model_version, input, cached_input, output, reasoning, from_us, to_us }
                    })
                    .collect(),
                metadata: metadata
                    .into_iter()
                    .map(|(provider, model, family, context_window)| pricing::Metadata {
                        provider,
                        model,
                        family,
                        context_window,
                    })
                    .collect(),
                source: item(config, "catalog_source")?,
            },
            weights: quality::Weights {
                regenerated: weights.0,
                edited: weights.1,
                latency: weights.2,
                token_efficiency: weights.3,
                rating: weights.4,
                latency_target_ms: weights.5,
                latency_limit_ms: weights.6,
                max_completion_ratio: weights.7,
            },
            patterns: patterns(config)?,
            python_redact: item(config, "python_redact")?,
            allow_list: item(config, "allow_list")?,
            pseudonym_key: item(config, "pseudonym_key")?,
            pseudonyms: HashMap::new(),
            identifier_pseudonyms: HashMap::new(),
            identifiers: identifiers
                .iter()
                .map(|(name, length)| Ok((field(&event_reader, name)?, *length)))
                .collect::<PyResult<_>>()?,
            strings: HashMap::new(),
            max_future_us: item(config, "max_future_us")?,
            max_past_us: item(config, "max_past_us")?,
            margin_us: item(config, "margin_us")?,
            max_value_bytes: item(config, "max_value_bytes")?,
        };
        if engine.pseudonym_key.is_empty() {
            return Err(error("the pseudonymisation key must not be empty"));
        }
        Ok(Self { event_reader, feedback_reader, writers: HashMap::new(), engine })
    }

    /// Registers a writer schema by id: `kind` 0 for an OnFinishEvent, 1 for a Feedback, None for
    /// an id that is not a schema of the contract. Returns None when its records are read here,
    /// else why not (they take the Python path).
    fn add_writer(&mut self, schema_id: u32, kind: Option<u8>, text: Option<&str>) -> Option<String> {
        let planned = match (kind, text) {
            (Some(0), Some(text)) => avro::parse(text).and_then(|w| avro::plan(&w, &self.event_reader)).map(|p| (Kind::Event, p)),
            (Some(1), Some(text)) => {
                avro::parse(text).and_then(|w| avro::plan(&w, &self.feedback_reader)).map(|p| (Kind::Feedback, p))
            }
            _ => Err("not a schema of the contract".to_string()),
        };
        let (entry, why) = match planned {
            Ok(plan) => (Some(plan), None),
            Err(why) => (None, Some(why)),
        };
        self.writers.insert(schema_id, entry);
        why
    }

    fn knows_writer(&self, schema_id: u32) -> bool {
        self.writers.contains_key(&schema_id)
    }

    /// One batch: for each raw value, a Call (an event enriched and encoded), a tuple (a Feedback's
    /// fields), or None (the reference path decides); and the seconds spent decoding and
    /// validating, enriching, and encoding.
    #[allow(clippy::too_many_arguments)]
    fn process<'py>(
        &mut self,
        py: Python<'py>,
        values: &Bound<'py, PyList>,
        partitions: Vec<i64>,
        offsets: Vec<i64>,
        now_us: i64,
        processed_at_us: i64,
        prefix: &[u8],
    ) -> PyResult<(Bound<'py, PyList>, (f64, f64, f64))> {
        if partitions.len() != values.len() || offsets.len() != values.len() {
            return Err(error("values, partitions and offsets differ in length"));
        }
        let Core { writers, engine, .. } = self;
        let mut batch = Batch { now_us, processed_at_us, prefix, decode: 0.0, enrich: 0.0, encode: 0.0 };
        let results = PyList::empty(py);
        for (index, value) in values.iter().enumerate() {
            let started = Instant::now();
            let result = match value.cast::<PyBytes>() {
                Ok(bytes) => {
                    let bytes = bytes.as_bytes();
                    match unframe(bytes, engine.max_value_bytes).and_then(|id| writers.get(&id)?.as_ref()) {
                        Some((kind, plan)) => match avro::decode(plan, bytes, 5) {
                            Some(decoded) => match kind {
                                Kind::Event => engine.event(py, &decoded, partitions[index], offsets[index], &mut batch, started)?,
                                Kind::Feedback => engine.feedback(py, &decoded, &mut batch, started)?,
                            },
                            None => None,
                        },
                        None => None,
                    }
                }
                Err(_) => None,
            };
            results.append(result)?;
        }
        Ok((results, (batch.decode, batch.enrich, batch.encode)))
    }
}

/// A pseudonym from `cache`, made (and the cache cleared when full) on a miss.
fn cached_pseudonym(cache: &mut HashMap<String, String>, value: &str, key: &[u8], prefix: &str) -> String {
    if let Some(pseudonym) = cache.get(value) {
        return pseudonym.clone();
    }
    let pseudonym = redaction::pseudonym(value, key, prefix);
    if cache.len() >= PSEUDONYM_CACHE_ENTRIES {
        cache.clear();
    }
    cache.insert(value.to_string(), pseudonym.clone());
    pseudonym
}

/// The text of an event's field as the enriched record has it: its pseudonym when `cleaned` holds
/// one for that field, else `text` as decoded.
fn cleaned_text<'a>(cleaned: &'a [(usize, String)], index: usize, text: &'a str) -> &'a str {
    cleaned.iter().find(|(i, _)| *i == index).map_or(text, |(_, pseudonym)| pseudonym.as_str())
}

/// `is_trace_context_id`: `length` lowercase hex digits.
fn trace_context_id(text: &str, length: usize) -> bool {
    text.len() == length && text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Confluent framing: magic byte 0, then the schema id in 4 bytes, big-endian. None for a value
/// the reference refuses (empty, oversized, not framed): it says why.
fn unframe(value: &[u8], max_value_bytes: usize) -> Option<u32> {
    if value.len() < 5 || value.len() > max_value_bytes || value[0] != 0 {
        return None;
    }
    Some(u32::from_be_bytes(value[1..5].try_into().ok()?))
}

/// The redaction patterns alone, for the redaction corpora run on both engines: `redact` and
/// `findings` as PatternSet's, each text the native side cannot vouch for asked of Python.
#[pyclass(module = "onfinish_native", unsendable)]
struct Redactor {
    patterns: Patterns,
    python_redact: Py<PyAny>,
    python_findings: Py<PyAny>,
}

#[pymethods]
impl Redactor {
    #[new]
    fn new(config: &Bound<'_, PyDict>) -> PyResult<Self> {
        Ok(Self {
            patterns: patterns(config)?,
            python_redact: item(config, "python_redact")?,
            python_findings: item(config, "python_findings")?,
        })
    }

    fn redact(&mut self, py: Python<'_>, text: &str) -> PyResult<String> {
        match self.patterns.redact(text) {
            Some(redacted) => Ok(redacted),
            None => self.python_redact.call1(py, (text,))?.extract(py),
        }
    }

    fn findings(&self, py: Python<'_>, text: &str) -> PyResult<Vec<(String, String)>> {
        match self.patterns.findings(text) {
            Some(found) => Ok(found),
            None => self.python_findings.call1(py, (text,))?.extract(py),
        }
    }

    /// The names of the patterns that have a prefilter (redaction.rs's `superset`).
    fn prefiltered(&self) -> Vec<String> {
        self.patterns.patterns.iter().filter(|p| p.prefilter.is_some()).map(|p| p.name.clone()).collect()
    }

    /// Whether a text is redacted natively (printable ASCII and the usual white space).
    #[staticmethod]
    fn native_text(text: &str) -> bool {
        redaction::native_text(text)
    }
}

/// The keyed pseudonym, as processors/redaction.py's `pseudonymise`.
#[pyfunction]
fn pseudonymise(user_id: &str, key: &[u8]) -> PyResult<String> {
    if key.is_empty() {
        return Err(error("the pseudonymisation key must not be empty"));
    }
    Ok(redaction::pseudonym(user_id, key, "u_"))
}

#[pymodule]
fn onfinish_native(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_class::<Core>()?;
    module.add_class::<Call>()?;
    module.add_class::<Redactor>()?;
    module.add_function(wrap_pyfunction!(pseudonymise, module)?)?;
    Ok(())
}
