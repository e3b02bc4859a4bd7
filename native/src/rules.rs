//! ccusage's rules for one usage line, checked in the order of the reference's `usage_line`
//! (so a line with several faults is counted under the same reason).

use std::borrow::Cow;

use crate::decode::{self, Node, Value};

const MAX_TOKENS: i128 = 1_000_000_000_000_000;

/// A kept line's timestamp: its parts when it has the plain shape, else its text for the reference.
pub enum Timestamp<'a> {
    Parts(i32, u8, u8, u8, u8, u8, u32),
    Text(Cow<'a, str>),
}

impl Timestamp<'_> {
    pub fn text(&self) -> String {
        match self {
            Timestamp::Parts(y, mo, d, h, mi, s, us) => {
                format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{us:06}Z")
            }
            Timestamp::Text(text) => text.to_string(),
        }
    }
}

/// The fields of a kept line (`parse.UsageLine`), its cost from the transcript if it has one.
pub struct Line<'a> {
    pub session_id: Option<Cow<'a, str>>,
    pub cwd: Option<Cow<'a, str>>,
    pub git_branch: Option<Cow<'a, str>>,
    pub agent_id: Option<Cow<'a, str>>,
    pub is_sidechain: bool,
    pub model: Option<Cow<'a, str>>,
    pub message_id: Option<Cow<'a, str>>,
    pub request_id: Option<Cow<'a, str>>,
    pub timestamp: Timestamp<'a>,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cache_write_5m_tokens: i64,
    pub cache_write_1h_tokens: i64,
    pub cache_read_tokens: i64,
    pub web_search_requests: i64,
    pub speed: Option<Cow<'a, str>>,
    pub cost_usd: Option<f64>,
    pub version: Option<Cow<'a, str>>,
    pub line_no: i64,
    /// The reason the line is left out if its timestamp parses (the reference checks the
    /// timestamp first; a timestamp only Python can parse is parsed later, with the GIL).
    pub after_timestamp: Option<&'static str>,
}

/// What became of one line that contains `"usage"`.
pub enum Outcome<'a> {
    /// No usage (no message, or a usage that is absent or null): not counted.
    NoUsage,
    Skip(&'static str),
    Kept(Box<Line<'a>>),
    /// Read by the Python reference instead (a line serde_json refuses, or a rule only Python states exactly).
    Defer,
}

type Rule<T> = Result<T, Outcome<'static>>;

fn skip<T>(reason: &'static str) -> Rule<T> {
    Err(Outcome::Skip(reason))
}

/// `_text`: absent or null is None, a string is itself, anything else is `wrong_type`.
fn text<'a, T>(value: &Node<'a, T>) -> Rule<Option<Cow<'a, str>>> {
    match value {
        Node::Absent | Node::Null => Ok(None),
        Node::Str(text) => Ok(Some(text.clone())),
        _ => skip("wrong_type"),
    }
}

/// `_identifier`: `_text`, and an empty string is `empty_id`.
fn identifier<'a>(value: &Value<'a>) -> Rule<Option<Cow<'a, str>>> {
    let found = text(value)?;
    if found.as_deref() == Some("") {
        return skip("empty_id");
    }
    Ok(found)
}

fn is_null<T>(value: &Node<'_, T>) -> bool {
    matches!(value, Node::Null)
}

/// A token count as the reference takes it: a Python int (absent is `default`); `None` otherwise.
fn count<T>(value: &Node<'_, T>, default: i128) -> Option<i128> {
    match value {
        Node::Absent => Some(default),
        Node::Int(number) => Some(*number),
        _ => None,
    }
}

/// `VERSION_PREFIX.match` (`\d+\.\d+\.\d`) on an ASCII string.
fn version_supported(version: &str) -> bool {
    let bytes = version.as_bytes();
    let digits = |from: usize| bytes[from..].iter().take_while(|b| b.is_ascii_digit()).count();
    let first = digits(0);
    if first == 0 || bytes.get(first) != Some(&b'.') {
        return false;
    }
    let second = digits(first + 1);
    if second == 0 || bytes.get(first + 1 + second) != Some(&b'.') {
        return false;
    }
    bytes.get(first + second + 2).is_some_and(u8::is_ascii_digit)
}

fn number(bytes: &[u8]) -> Option<u32> {
    if bytes.is_empty() || !bytes.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(
        bytes
            .iter()
            .fold(0u32, |total, digit| total * 10 + u32::from(digit - b'0')),
    )
}

/// `YYYY-MM-DDTHH:MM:SS[.fff|.ffffff][Z|+00:00]`, the shape Claude Code writes; `None` for any
/// other (which `datetime.fromisoformat` may still accept: the reference parses those).
fn plain_timestamp(text: &str) -> Option<Timestamp<'static>> {
    let b = text.as_bytes();
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let year = number(&b[0..4])?;
    let (month, day) = (number(&b[5..7])?, number(&b[8..10])?);
    let (hour, minute, second) = (number(&b[11..13])?, number(&b[14..16])?, number(&b[17..19])?);
    let mut rest = &b[19..];
    let mut micros = 0u32;
    if rest.first() == Some(&b'.') {
        let digits = rest[1..].iter().take_while(|c| c.is_ascii_digit()).count();
        micros = match digits {
            3 => number(&rest[1..4])? * 1000,
            6 => number(&rest[1..7])?,
            _ => return None,
        };
        rest = &rest[1 + digits..];
    }
    if !(rest.is_empty() || rest == b"Z" || rest == b"+00:00") {
        return None;
    }
    if year == 0 || !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    Some(Timestamp::Parts(
        year as i32,
        month as u8,
        day as u8,
        hour as u8,
        minute as u8,
        second as u8,
        micros,
    ))
}

/// The rules of the reference's `usage_line`, over a decoded record.
fn usage_line<'a, const FAST: bool>(line_no: i64, mut record: decode::Record<'a, FAST>) -> Rule<Outcome<'a>> {
    if record.message_refused {
        // The reference then decodes the whole line (every number range-checked, every value
        // built) to tell "no usage" from "not an object" or worse: it reads this rare line itself.
        return Ok(Outcome::Defer);
    }
    let message = match std::mem::take(&mut record.message) {
        Node::Object(message) => message,
        _ => return Ok(Outcome::NoUsage),
    };
    let usage = match message.usage {
        Node::Object(usage) => usage,
        Node::Absent | Node::Null => return Ok(Outcome::NoUsage),
        _ => return skip("wrong_type"),
    };
    if is_null(&record.cwd)
        || is_null(&record.version)
        || is_null(&record.session_id)
        || is_null(&record.request_id)
        || is_null(&record.cost_usd)
        || is_null(&record.is_api_error)
        || is_null(&record.speed)
        || is_null(&message.id)
        || is_null(&message.model)
        || is_null(&usage.speed)
        || is_null(&usage.cache_read_input_tokens)
        || is_null(&usage.cache_creation_input_tokens)
    {
        return skip("null_field");
    }
    let request_id = identifier(&record.request_id)?;
    let session_id = identifier(&record.session_id)?;
    let message_id = identifier(&message.id)?;
    let model = identifier(&message.model)?;
    let version = text(&record.version)?;
    if let Some(version) = &version {
        if !version.is_ascii() {
            return Err(Outcome::Defer); // Python's \d matches every Unicode digit
        }
        if !version_supported(version) {
            return skip("unsupported_version");
        }
    }
    let timestamp = match &record.timestamp {
        Node::Str(text) if text.contains('T') => match plain_timestamp(text) {
            Some(parts) => parts,
            None => Timestamp::Text(text.clone()),
        },
        _ => return skip("bad_timestamp"),
    };
    let mut line = Line {
        session_id,
        cwd: None,
        git_branch: None,
        agent_id: None,
        is_sidechain: false,
        model,
        message_id,
        request_id,
        timestamp,
        input_tokens: 0,
        output_tokens: 0,
        cache_write_5m_tokens: 0,
        cache_write_1h_tokens: 0,
        cache_read_tokens: 0,
        web_search_requests: 0,
        speed: None,
        cost_usd: None,
        version,
        line_no,
        after_timestamp: None,
    };
    if let Err(reason) = after_timestamp(&mut line, &record, &usage) {
        line.after_timestamp = Some(reason);
    }
    Ok(Outcome::Kept(Box::new(line)))
}

/// The reference's rules after the timestamp: they all leave a line out as `wrong_type`.
fn after_timestamp<'a, const FAST: bool>(
    line: &mut Line<'a>,
    record: &decode::Record<'a, FAST>,
    usage: &decode::Usage<'a>,
) -> Result<(), &'static str> {
    const WRONG: &str = "wrong_type";
    line.is_sidechain = match record.is_sidechain {
        Node::Absent => false,
        Node::Bool(value) => value,
        _ => return Err(WRONG),
    };
    if !matches!(record.is_api_error, Node::Absent | Node::Bool(_)) {
        return Err(WRONG);
    }
    line.cost_usd = match record.cost_usd {
        Node::Absent => None,
        Node::Int(number) => Some(number as f64),
        Node::Float(number) => Some(number),
        _ => return Err(WRONG),
    };
    let cache_write = count(&usage.cache_creation_input_tokens, 0);
    let (write_5m, write_1h) = match &usage.cache_creation {
        Node::Absent | Node::Null => (cache_write, Some(0)),
        Node::Object(breakdown) => (
            count(&breakdown.ephemeral_5m_input_tokens, 0),
            count(&breakdown.ephemeral_1h_input_tokens, 0),
        ),
        _ => return Err(WRONG),
    };
    let tokens = [
        count(&usage.input_tokens, 0),
        count(&usage.output_tokens, 0),
        cache_write,
        count(&usage.cache_read_input_tokens, 0),
        write_5m,
        write_1h,
    ];
    let mut checked = [0i64; 6];
    for (slot, value) in checked.iter_mut().zip(tokens) {
        match value {
            Some(number) if (0..=MAX_TOKENS).contains(&number) => *slot = number as i64,
            _ => return Err(WRONG),
        }
    }
    [
        line.input_tokens,
        line.output_tokens,
        _,
        line.cache_read_tokens,
        line.cache_write_5m_tokens,
        line.cache_write_1h_tokens,
    ] = checked;
    line.web_search_requests = match &usage.server_tool_use {
        Node::Object(tools) => match count(&tools.web_search_requests, 0) {
            Some(number) if (0..=MAX_TOKENS).contains(&number) => number as i64,
            _ => 0,
        },
        _ => 0,
    };
    let speed = if matches!(usage.speed, Node::Absent) {
        &record.speed
    } else {
        &usage.speed
    };
    line.speed = match speed {
        Node::Str(text) => Some(text.clone()),
        _ => None,
    };
    line.cwd = text(&record.cwd).map_err(|_| WRONG)?;
    line.git_branch = text(&record.git_branch).map_err(|_| WRONG)?;
    line.agent_id = text(&record.agent_id).map_err(|_| WRONG)?;
    Ok(())
}

/// One line containing `"usage"`: the reference's `read_line`, or `Defer` to it.
pub fn read_line(line_no: i64, raw: &[u8]) -> Outcome<'_> {
    let Ok(text) = simdutf8::basic::from_utf8(raw) else {
        return Outcome::Skip("invalid_utf8");
    };
    if skips_fast(raw) {
        decided(line_no, decode::line::<true>(text))
    } else {
        decided(line_no, decode::line::<false>(text))
    }
}

/// Whether the unread values of a line may be skipped unvisited (see `decode`): no `\ud…` escape,
/// and fewer than 128 opening brackets.
fn skips_fast(raw: &[u8]) -> bool {
    let finder = memchr::memmem::Finder::new(b"\\u");
    let surrogate = finder
        .find_iter(raw)
        .any(|at| matches!(raw.get(at + 2), Some(b'd' | b'D')));
    !surrogate && memchr::memchr2_iter(b'[', b'{', raw).nth(127).is_none()
}

fn decided<'a, const FAST: bool>(
    line_no: i64,
    decoded: Result<Node<'a, decode::Record<'a, FAST>>, serde_json::Error>,
) -> Outcome<'a> {
    match decoded {
        Err(_) => Outcome::Defer,
        Ok(Node::Object(record)) => usage_line(line_no, *record).unwrap_or_else(|outcome| outcome),
        Ok(_) => Outcome::Skip("not_an_object"),
    }
}
