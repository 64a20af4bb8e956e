//! Avro for the contract's records: the schema subset they use, writer-to-reader resolution plans,
//! and the binary codec.
//!
//! Why not the apache-avro crate: its `Value::Map` is a `HashMap`, which loses the producer's key
//! order that the enriched record must keep byte for byte (the Python reference keeps it), and its
//! generic value tree allocates a field name per field per record. A plan compiled once per writer
//! schema id reads the bytes straight into the reader's field order instead. Only what the
//! contract's records use is read natively (primitives, enums, uuid and timestamp-micros strings
//! and longs, arrays and maps of strings, unions with null); anything else makes the writer schema
//! "unsupported" and its records take the Python path, so no divergence hides in a rare construct.

use std::collections::HashMap;

use serde_json::Value as Json;

#[derive(Clone, Debug, PartialEq)]
pub enum Type {
    Null,
    Boolean,
    Int,
    Long,
    Float,
    Double,
    Bytes,
    String,
    Uuid,
    TimestampMicros,
    /// A logical type this core does not read: skipped by its base type, never read.
    Logical(Box<Type>),
    Enum(Enum),
    Array(Box<Type>),
    Map(Box<Type>),
    Union(Vec<Type>),
    Record(Record),
    Fixed { name: String, size: usize },
}

#[derive(Clone, Debug, PartialEq)]
pub struct Enum {
    /// Unqualified, as fastavro compares enum names when it resolves.
    pub name: String,
    pub symbols: Vec<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Field {
    pub name: String,
    pub ty: Type,
    pub default: Option<Json>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    pub full_name: String,
    pub fields: Vec<Field>,
}

impl Record {
    pub fn index(&self, name: &str) -> Option<usize> {
        self.fields.iter().position(|field| field.name == name)
    }
}

/// Parses a schema's JSON text; Err for anything outside the subset or malformed.
pub fn parse(text: &str) -> Result<Type, String> {
    let json: Json = serde_json::from_str(text).map_err(|error| format!("not JSON: {error}"))?;
    let mut names = HashMap::new();
    parse_type(&json, "", &mut names)
}

pub fn parse_record(text: &str) -> Result<Record, String> {
    match parse(text)? {
        Type::Record(record) => Ok(record),
        _ => Err("not a record schema".into()),
    }
}

fn primitive(name: &str) -> Option<Type> {
    Some(match name {
        "null" => Type::Null,
        "boolean" => Type::Boolean,
        "int" => Type::Int,
        "long" => Type::Long,
        "float" => Type::Float,
        "double" => Type::Double,
        "bytes" => Type::Bytes,
        "string" => Type::String,
        _ => return None,
    })
}

fn full_name(name: &str, namespace: &str) -> String {
    if name.contains('.') || namespace.is_empty() { name.to_string() } else { format!("{namespace}.{name}") }
}

fn unqualified(name: &str) -> String {
    name.rsplit('.').next().unwrap_or(name).to_string()
}

fn named(name: &str, namespace: &str, names: &HashMap<String, Type>) -> Result<Type, String> {
    names
        .get(&full_name(name, namespace))
        .or_else(|| names.get(name))
        .cloned()
        .ok_or_else(|| format!("unknown type {name:?}"))
}

fn parse_type(json: &Json, namespace: &str, names: &mut HashMap<String, Type>) -> Result<Type, String> {
    match json {
        Json::String(name) => match primitive(name) {
            Some(ty) => Ok(ty),
            None => named(name, namespace, names),
        },
        Json::Array(branches) => {
            let parsed = branches
                .iter()
                .map(|branch| parse_type(branch, namespace, names))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Type::Union(parsed))
        }
        Json::Object(object) => {
            let kind = object.get("type").ok_or("a schema object without type")?;
            if let Some(logical) = object.get("logicalType") {
                let base = parse_type(kind, namespace, names)?;
                return Ok(match (&base, logical.as_str()) {
                    (Type::String, Some("uuid")) => Type::Uuid,
                    (Type::Long, Some("timestamp-micros")) => Type::TimestampMicros,
                    _ => Type::Logical(Box::new(base)),
                });
            }
            let Json::String(kind) = kind else {
                // {"type": {...}}: a nested schema object.
                return parse_type(kind, namespace, names);
            };
            let own_namespace = || -> String {
                object.get("namespace").and_then(Json::as_str).map_or_else(|| namespace.to_string(), str::to_string)
            };
            let name = || -> Result<&str, String> {
                object.get("name").and_then(Json::as_str).ok_or_else(|| "a named type without name".to_string())
            };
            match kind.as_str() {
                "record" | "error" => {
                    let name = name()?;
                    let space = own_namespace();
                    let full = full_name(name, &space);
                    let record_space = full.rsplit_once('.').map_or(String::new(), |(space, _)| space.to_string());
                    let mut fields = Vec::new();
                    for field in object.get("fields").and_then(Json::as_array).ok_or("a record without fields")? {
                        let field_name = field.get("name").and_then(Json::as_str).ok_or("a field without name")?;
                        let ty = parse_type(field.get("type").ok_or("a field without type")?, &record_space, names)?;
                        fields.push(Field { name: field_name.to_string(), ty, default: field.get("default").cloned() });
                    }
                    // Registered once complete: a recursive reference is unknown, so unsupported.
                    let record = Type::Record(Record { full_name: full.clone(), fields });
                    names.insert(full, record.clone());
                    Ok(record)
                }
                "enum" => {
                    let name = name()?;
                    let symbols = object
                        .get("symbols")
                        .and_then(Json::as_array)
                        .ok_or("an enum without symbols")?
                        .iter()
                        .map(|symbol| symbol.as_str().map(str::to_string).ok_or("a symbol that is not a string"))
                        .collect::<Result<Vec<_>, _>>()?;
                    let ty = Type::Enum(Enum { name: unqualified(name), symbols });
                    names.insert(full_name(name, &own_namespace()), ty.clone());
                    Ok(ty)
                }
                "fixed" => {
                    let name = name()?;
                    let size = object.get("size").and_then(Json::as_u64).ok_or("a fixed without size")? as usize;
                    let ty = Type::Fixed { name: unqualified(name), size };
                    names.insert(full_name(name, &own_namespace()), ty.clone());
                    Ok(ty)
                }
                "array" => Ok(Type::Array(Box::new(parse_type(
                    object.get("items").ok_or("an array without items")?,
                    namespace,
                    names,
                )?))),
                "map" => Ok(Type::Map(Box::new(parse_type(
                    object.get("values").ok_or("a map without values")?,
                    namespace,
                    names,
                )?))),
                other => match primitive(other) {
                    Some(ty) => Ok(ty),
                    None => named(other, namespace, names),
                },
            }
        }
        _ => Err(format!("not a schema: {json}")),
    }
}

// --- Resolution -------------------------------------------------------------------------------

/// How one writer value is read into the reader's value.
#[derive(Clone, Debug)]
pub enum Read {
    Null,
    Boolean,
    Int,
    Long,
    Double,
    String,
    Uuid,
    Timestamp,
    /// Writer symbol index -> reader symbol index; None: a symbol the reader lacks (fastavro would
    /// use the reader's default or refuse): that record takes the Python path.
    Enum(Vec<Option<u32>>),
    StringArray,
    StringMap,
    /// One entry per writer branch; None: the branch cannot be read natively.
    Union(Vec<Option<Read>>),
}

#[derive(Clone, Debug)]
pub enum Step {
    Field(usize, Read),
    Skip(Type),
}

/// A reader field's default when the writer lacks the field.
#[derive(Clone, Debug)]
pub enum Default {
    Null,
    Boolean(bool),
    Int(i32),
    Long(i64),
    Double(f64),
    String(String),
    Enum(u32),
    EmptyArray,
    EmptyMap,
}

/// How a writer schema's records are read into the reader's fields.
#[derive(Debug)]
pub struct Plan {
    pub steps: Vec<Step>,
    pub defaults: Vec<(usize, Default)>,
    pub reader_fields: usize,
}

fn base(ty: &Type) -> &Type {
    match ty {
        Type::Uuid => &Type::String,
        Type::TimestampMicros => &Type::Long,
        Type::Logical(inner) => base(inner),
        other => other,
    }
}

/// fastavro's `match_types`: whether a writer type can be read as a reader type, promotions
/// included and logical types ignored. Used to pick the reader union branch fastavro would pick.
fn fastavro_matches(writer: &Type, reader: &Type) -> bool {
    let (writer, reader) = (base(writer), base(reader));
    match (writer, reader) {
        (Type::Union(_), _) | (_, Type::Union(_)) => true,
        (Type::Int, Type::Long | Type::Float | Type::Double)
        | (Type::Long, Type::Float | Type::Double)
        | (Type::Float, Type::Double)
        | (Type::String, Type::Bytes)
        | (Type::Bytes, Type::String) => true,
        (Type::Array(w), Type::Array(r)) | (Type::Map(w), Type::Map(r)) => fastavro_matches(w, r),
        (Type::Enum(w), Type::Enum(r)) => w.name == r.name,
        (Type::Fixed { name: w, .. }, Type::Fixed { name: r, .. }) => w == r,
        (Type::Record(w), Type::Record(r)) => unqualified(&w.full_name) == unqualified(&r.full_name),
        (w, r) => std::mem::discriminant(w) == std::mem::discriminant(r),
    }
}

/// How to read a non-union writer type as a non-union reader type, None when not natively.
fn resolve_plain(writer: &Type, reader: &Type) -> Option<Read> {
    Some(match (writer, reader) {
        (Type::Null, Type::Null) => Read::Null,
        (Type::Boolean, Type::Boolean) => Read::Boolean,
        (Type::Int, Type::Int) => Read::Int,
        (Type::Long, Type::Long) => Read::Long,
        (Type::Double, Type::Double) => Read::Double,
        (Type::String, Type::String) => Read::String,
        (Type::Uuid, Type::Uuid) => Read::Uuid,
        (Type::TimestampMicros, Type::TimestampMicros) => Read::Timestamp,
        (Type::Enum(w), Type::Enum(r)) if w.name == r.name => Read::Enum(
            w.symbols.iter().map(|symbol| r.symbols.iter().position(|s| s == symbol).map(|i| i as u32)).collect(),
        ),
        (Type::Array(w), Type::Array(r)) if **w == Type::String && **r == Type::String => Read::StringArray,
        (Type::Map(w), Type::Map(r)) if **w == Type::String && **r == Type::String => Read::StringMap,
        _ => return None,
    })
}

/// A non-union writer type read into a reader union: the first branch fastavro matches, read
/// natively only when that branch is the same type (not a promotion).
fn resolve_into_union(writer: &Type, branches: &[Type]) -> Option<Read> {
    let branch = branches.iter().find(|branch| fastavro_matches(writer, branch))?;
    resolve_plain(writer, branch)
}

pub fn resolve(writer: &Type, reader: &Type) -> Option<Read> {
    match (writer, reader) {
        (Type::Union(writers), Type::Union(readers)) => Some(Read::Union(
            writers.iter().map(|w| if matches!(w, Type::Union(_)) { None } else { resolve_into_union(w, readers) }).collect(),
        )),
        (Type::Union(writers), reader) => Some(Read::Union(
            writers
                .iter()
                .map(|w| if fastavro_matches(w, reader) { resolve_plain(w, reader) } else { None })
                .collect(),
        )),
        (writer, Type::Union(readers)) => resolve_into_union(writer, readers),
        (writer, reader) => resolve_plain(writer, reader),
    }
}

fn default_of(ty: &Type, json: &Json) -> Option<Default> {
    Some(match (ty, json) {
        // A union's default is of its first branch (the Avro specification; fastavro takes it as is).
        (Type::Union(branches), json) => return default_of(branches.first()?, json),
        (Type::Null, Json::Null) => Default::Null,
        (Type::Boolean, Json::Bool(value)) => Default::Boolean(*value),
        (Type::Int, Json::Number(n)) => Default::Int(i32::try_from(n.as_i64()?).ok()?),
        (Type::Long, Json::Number(n)) => Default::Long(n.as_i64()?),
        (Type::Double, Json::Number(n)) if n.is_f64() => Default::Double(n.as_f64()?),
        (Type::String, Json::String(text)) => Default::String(text.clone()),
        (Type::Enum(e), Json::String(symbol)) => Default::Enum(e.symbols.iter().position(|s| s == symbol)? as u32),
        (Type::Array(items), Json::Array(values)) if **items == Type::String && values.is_empty() => {
            Default::EmptyArray
        }
        (Type::Map(values), Json::Object(entries)) if **values == Type::String && entries.is_empty() => {
            Default::EmptyMap
        }
        _ => return None,
    })
}

/// The plan that reads records written with `writer` into `reader`'s fields; Err says why the
/// writer schema is not read natively (its records then take the Python path).
pub fn plan(writer: &Type, reader: &Record) -> Result<Plan, String> {
    let Type::Record(writer) = writer else { return Err("the writer schema is not a record".into()) };
    if unqualified(&writer.full_name) != unqualified(&reader.full_name) {
        return Err("the writer record has another name".into());
    }
    let mut covered = vec![false; reader.fields.len()];
    let mut steps = Vec::with_capacity(writer.fields.len());
    for field in &writer.fields {
        match reader.index(&field.name) {
            Some(index) => {
                if covered[index] {
                    return Err(format!("field {} twice", field.name));
                }
                covered[index] = true;
                let read = resolve(&field.ty, &reader.fields[index].ty)
                    .ok_or_else(|| format!("field {} is not read natively", field.name))?;
                steps.push(Step::Field(index, read));
            }
            None => steps.push(Step::Skip(field.ty.clone())),
        }
    }
    let mut defaults = Vec::new();
    for (index, field) in reader.fields.iter().enumerate() {
        if !covered[index] {
            let json = field.default.as_ref().ok_or_else(|| format!("field {} has no default", field.name))?;
            let default =
                default_of(&field.ty, json).ok_or_else(|| format!("the default of {} is not read natively", field.name))?;
            defaults.push((index, default));
        }
    }
    Ok(Plan { steps, defaults, reader_fields: reader.fields.len() })
}

// --- Values -----------------------------------------------------------------------------------

/// A decoded value, borrowing its text from the record's bytes or the plan's defaults.
#[derive(Clone, Debug, PartialEq)]
pub enum Val<'a> {
    Null,
    Boolean(bool),
    Int(i32),
    Long(i64),
    Double(f64),
    Str(&'a str),
    Enum(u32),
    Strs(Vec<&'a str>),
    Pairs(Vec<(&'a str, &'a str)>),
}

// Arrays and maps longer than the contract allows (64 safety flags, 64 attributes) are not read
// natively: their records are refused, and the Python path says how.
const MAX_ITEMS: usize = 64;

pub struct Reader<'a> {
    bytes: &'a [u8],
    position: usize,
}

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8], position: usize) -> Self {
        Self { bytes, position }
    }

    pub fn at_end(&self) -> bool {
        self.position == self.bytes.len()
    }

    fn byte(&mut self) -> Option<u8> {
        let byte = *self.bytes.get(self.position)?;
        self.position += 1;
        Some(byte)
    }

    /// A zig-zag varint of at most 10 bytes whose value fits 64 bits.
    pub fn long(&mut self) -> Option<i64> {
        let mut value: u64 = 0;
        for shift in (0..70).step_by(7) {
            let byte = self.byte()?;
            if shift == 63 && byte > 1 {
                return None;
            }
            value |= u64::from(byte & 0x7F) << shift;
            if byte & 0x80 == 0 {
                return Some((value >> 1) as i64 ^ -((value & 1) as i64));
            }
        }
        None
    }

    fn int(&mut self) -> Option<i32> {
        i32::try_from(self.long()?).ok()
    }

    fn take(&mut self, count: usize) -> Option<&'a [u8]> {
        let end = self.position.checked_add(count)?;
        let taken = self.bytes.get(self.position..end)?;
        self.position = end;
        Some(taken)
    }

    fn length(&mut self) -> Option<usize> {
        usize::try_from(self.long()?).ok()
    }

    fn string(&mut self) -> Option<&'a str> {
        let length = self.length()?;
        std::str::from_utf8(self.take(length)?).ok()
    }

    fn double(&mut self) -> Option<f64> {
        Some(f64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }

    fn boolean(&mut self) -> Option<bool> {
        match self.byte()? {
            0 => Some(false),
            1 => Some(true),
            _ => None,
        }
    }

    /// Item counts of an array or map: positive blocks only, ending with 0, at most MAX_ITEMS.
    fn blocks(&mut self, mut item: impl FnMut(&mut Self) -> Option<()>) -> Option<usize> {
        let mut total = 0usize;
        loop {
            let count = self.long()?;
            if count == 0 {
                return Some(total);
            }
            if count < 0 {
                return None;
            }
            total = total.checked_add(count as usize)?;
            if total > MAX_ITEMS {
                return None;
            }
            for _ in 0..count {
                item(self)?;
            }
        }
    }

    pub fn read(&mut self, read: &Read) -> Option<Val<'a>> {
        Some(match read {
            Read::Null => Val::Null,
            Read::Boolean => Val::Boolean(self.boolean()?),
            Read::Int => Val::Int(self.int()?),
            Read::Long | Read::Timestamp => Val::Long(self.long()?),
            Read::Double => Val::Double(self.double()?),
            Read::String | Read::Uuid => Val::Str(self.string()?),
            Read::Enum(symbols) => {
                let index = usize::try_from(self.long()?).ok()?;
                Val::Enum((*symbols.get(index)?)?)
            }
            Read::StringArray => {
                let mut items = Vec::new();
                self.blocks(|reader| {
                    items.push(reader.string()?);
                    Some(())
                })?;
                Val::Strs(items)
            }
            Read::StringMap => {
                let mut pairs: Vec<(&'a str, &'a str)> = Vec::new();
                self.blocks(|reader| {
                    let key = reader.string()?;
                    let value = reader.string()?;
                    // A repeated key: fastavro keeps the last value at the first one's place; rare
                    // enough to leave to the Python path.
                    if pairs.iter().any(|(k, _)| *k == key) {
                        return None;
                    }
                    pairs.push((key, value));
                    Some(())
                })?;
                Val::Pairs(pairs)
            }
            Read::Union(branches) => {
                let index = usize::try_from(self.long()?).ok()?;
                let branch = branches.get(index)?.as_ref()?;
                self.read(branch)?
            }
        })
    }

    pub fn skip(&mut self, ty: &Type) -> Option<()> {
        match ty {
            Type::Null => {}
            Type::Boolean => {
                self.boolean()?;
            }
            Type::Int | Type::Long | Type::TimestampMicros | Type::Enum(_) => {
                self.long()?;
            }
            Type::Float => {
                self.take(4)?;
            }
            Type::Double => {
                self.take(8)?;
            }
            Type::Bytes => {
                let length = self.length()?;
                self.take(length)?;
            }
            // Validated even when skipped: refusing more than fastavro only sends a record to the
            // Python path, never the other way round.
            Type::String | Type::Uuid => {
                self.string()?;
            }
            Type::Logical(inner) => self.skip(inner)?,
            Type::Fixed { size, .. } => {
                self.take(*size)?;
            }
            Type::Array(items) => loop {
                let count = self.long()?;
                if count == 0 {
                    break;
                }
                if count < 0 {
                    return None;
                }
                for _ in 0..count {
                    self.skip(items)?;
                }
            },
            Type::Map(values) => loop {
                let count = self.long()?;
                if count == 0 {
                    break;
                }
                if count < 0 {
                    return None;
                }
                for _ in 0..count {
                    self.string()?;
                    self.skip(values)?;
                }
            },
            Type::Union(branches) => {
                let index = usize::try_from(self.long()?).ok()?;
                self.skip(branches.get(index)?)?;
            }
            Type::Record(record) => {
                for field in &record.fields {
                    self.skip(&field.ty)?;
                }
            }
        }
        Some(())
    }
}

/// Reads one record's body with `plan`; None for anything not read natively, trailing bytes
/// included.
pub fn decode<'a>(plan: &'a Plan, body: &'a [u8], start: usize) -> Option<Vec<Val<'a>>> {
    let mut values = vec![Val::Null; plan.reader_fields];
    let mut reader = Reader::new(body, start);
    for step in &plan.steps {
        match step {
            Step::Field(index, read) => values[*index] = reader.read(read)?,
            Step::Skip(ty) => reader.skip(ty)?,
        }
    }
    if !reader.at_end() {
        return None;
    }
    for (index, default) in &plan.defaults {
        values[*index] = match default {
            Default::Null => Val::Null,
            Default::Boolean(value) => Val::Boolean(*value),
            Default::Int(value) => Val::Int(*value),
            Default::Long(value) => Val::Long(*value),
            Default::Double(value) => Val::Double(*value),
            Default::String(text) => Val::Str(text),
            Default::Enum(index) => Val::Enum(*index),
            Default::EmptyArray => Val::Strs(Vec::new()),
            Default::EmptyMap => Val::Pairs(Vec::new()),
        };
    }
    Some(values)
}

// --- Writing ----------------------------------------------------------------------------------

pub fn write_long(out: &mut Vec<u8>, value: i64) {
    let mut n = ((value << 1) ^ (value >> 63)) as u64;
    while n & !0x7F != 0 {
        out.push((n as u8 & 0x7F) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

pub fn write_string(out: &mut Vec<u8>, text: &str) {
    write_long(out, text.len() as i64);
    out.extend_from_slice(text.as_bytes());
}

pub fn write_double(out: &mut Vec<u8>, value: f64) {
    out.extend_from_slice(&value.to_le_bytes());
}

pub fn write_boolean(out: &mut Vec<u8>, value: bool) {
    out.push(u8::from(value));
}

/// An array of strings as schemas/avro_encoder.py writes it: one block, then the end marker.
pub fn write_strings<S: AsRef<str>>(out: &mut Vec<u8>, items: &[S]) {
    if !items.is_empty() {
        write_long(out, items.len() as i64);
        for item in items {
            write_string(out, item.as_ref());
        }
    }
    out.push(0);
}

pub fn write_pairs<K: AsRef<str>, V: AsRef<str>>(out: &mut Vec<u8>, pairs: &[(K, V)]) {
    if !pairs.is_empty() {
        write_long(out, pairs.len() as i64);
        for (key, value) in pairs {
            write_string(out, key.as_ref());
            write_string(out, value.as_ref());
        }
    }
    out.push(0);
}

/// Writes a decoded value as `ty`, the way schemas/avro_encoder.py does; None for a value that
/// does not fit the type (a bug in the caller: the enriched schema is checked at start).
pub fn write(out: &mut Vec<u8>, ty: &Type, value: &Val<'_>) -> Option<()> {
    match (ty, value) {
        (Type::Union(branches), Val::Null) if branches.first() == Some(&Type::Null) => out.push(0),
        (Type::Union(branches), value) if branches.len() == 2 && branches[0] == Type::Null => {
            out.push(2);
            write(out, &branches[1], value)?;
        }
        (Type::Boolean, Val::Boolean(value)) => write_boolean(out, *value),
        (Type::Int, Val::Int(value)) => write_long(out, i64::from(*value)),
        (Type::Long | Type::TimestampMicros, Val::Long(value)) => write_long(out, *value),
        (Type::Double, Val::Double(value)) => write_double(out, *value),
        (Type::String | Type::Uuid, Val::Str(text)) => write_string(out, text),
        (Type::Enum(_), Val::Enum(index)) => write_long(out, i64::from(*index)),
        (Type::Array(items), Val::Strs(values)) if **items == Type::String => write_strings(out, values),
        (Type::Map(items), Val::Pairs(pairs)) if **items == Type::String => write_pairs(out, pairs),
        _ => return None,
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip() {
        for value in [0i64, 1, -1, 63, -64, 64, 8191, -8192, i64::from(i32::MAX), i64::MIN, i64::MAX] {
            let mut out = Vec::new();
            write_long(&mut out, value);
            assert_eq!(Reader::new(&out, 0).long(), Some(value));
        }
    }

    #[test]
    fn an_eleventh_varint_byte_is_refused() {
        let bytes = [0xFFu8; 11];
        assert_eq!(Reader::new(&bytes, 0).long(), None);
    }

    #[test]
    fn a_string_past_the_end_is_refused() {
        let bytes = [0x08u8, b'a'];
        assert_eq!(Reader::new(&bytes, 0).string(), None);
    }
}
