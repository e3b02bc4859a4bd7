//! A file's kept rows as columns (the `usage_rows` table's, in its order), and a batch of files'
//! columns as Arrow buffers: what `usage_columns` returns and `arrow_buffers` joins, so a batch of
//! sessions reaches DuckDB as one Arrow table without a Python object per value.

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyTuple};

/// A nullable string column: the bytes end to end, each value's end, and which values are set.
#[derive(Default)]
pub struct Text {
    data: Vec<u8>,
    ends: Vec<i64>,
    valid: Vec<bool>,
}

impl Text {
    fn shrink_to_fit(&mut self) {
        self.data.shrink_to_fit();
        self.ends.shrink_to_fit();
        self.valid.shrink_to_fit();
    }

    pub fn push(&mut self, value: Option<&str>) {
        if let Some(value) = value {
            self.data.extend_from_slice(value.as_bytes());
        }
        self.ends.push(self.data.len() as i64);
        self.valid.push(value.is_some());
    }
}

/// One file's rows. The session's four columns and the pricing version are the same on every row
/// and are stored once.
#[derive(Default)]
pub struct Columns {
    pub session: [String; 4],
    pub pricing_version: String,
    pub line_no: Vec<i64>,
    pub transcript_session_id: Text,
    pub cwd: Text,
    pub git_branch: Text,
    pub agent_id: Text,
    pub is_sidechain: Vec<bool>,
    pub model: Text,
    pub message_id: Text,
    pub request_id: Text,
    /// Microseconds since the Unix epoch, UTC (DuckDB's TIMESTAMPTZ).
    pub ts: Vec<i64>,
    /// input, output, cache write 5m, cache write 1h, cache read tokens, web search requests.
    pub counts: [Vec<i64>; 6],
    pub speed: Text,
    pub cost_usd: Vec<f64>,
    pub cost_source: Text,
    pub claude_version: Text,
}

/// One row's values other than the session's and the pricing version.
pub struct Row<'a> {
    pub line_no: i64,
    pub texts: [Option<&'a str>; 7], // transcript_session_id, cwd, git_branch, agent_id, model, message_id, request_id
    pub is_sidechain: bool,
    pub ts: i64,
    pub counts: [i64; 6],
    pub speed: Option<&'a str>,
    pub cost_usd: f64,
    pub cost_source: &'a str,
    pub claude_version: Option<&'a str>,
}

impl Columns {
    pub fn rows(&self) -> usize {
        self.line_no.len()
    }

    /// The string columns a line sets, in table order (`Row::texts`).
    fn line_texts(&mut self) -> [&mut Text; 7] {
        [
            &mut self.transcript_session_id,
            &mut self.cwd,
            &mut self.git_branch,
            &mut self.agent_id,
            &mut self.model,
            &mut self.message_id,
            &mut self.request_id,
        ]
    }

    /// Give back the room each column grew into but did not fill.
    pub fn shrink_to_fit(&mut self) {
        self.line_texts().into_iter().for_each(Text::shrink_to_fit);
        for text in [&mut self.speed, &mut self.cost_source, &mut self.claude_version] {
            text.shrink_to_fit();
        }
        self.line_no.shrink_to_fit();
        self.is_sidechain.shrink_to_fit();
        self.ts.shrink_to_fit();
        self.counts.iter_mut().for_each(Vec::shrink_to_fit);
        self.cost_usd.shrink_to_fit();
    }

    pub fn push(&mut self, row: &Row<'_>) {
        self.line_no.push(row.line_no);
        for (column, value) in self.line_texts().into_iter().zip(row.texts) {
            column.push(value);
        }
        self.is_sidechain.push(row.is_sidechain);
        self.ts.push(row.ts);
        for (column, value) in self.counts.iter_mut().zip(row.counts) {
            column.push(value);
        }
        self.speed.push(row.speed);
        self.cost_usd.push(row.cost_usd);
        self.cost_source.push(Some(row.cost_source));
        self.claude_version.push(row.claude_version);
    }
}

/// One file's `usage_rows` rows as columns (made by `usage_columns`; joined by `arrow_buffers`).
#[pyclass(frozen, module = "sessionpipe_native")]
pub struct UsageColumns {
    pub columns: Columns,
}

#[pymethods]
impl UsageColumns {
    /// How many rows.
    fn __len__(&self) -> usize {
        self.columns.rows()
    }
}

/// The string columns a line sets, in table order.
fn texts(part: &Columns) -> [&Text; 7] {
    [
        &part.transcript_session_id,
        &part.cwd,
        &part.git_branch,
        &part.agent_id,
        &part.model,
        &part.message_id,
        &part.request_id,
    ]
}

/// Validity bits, least significant first (Arrow's layout); `None` when every value is set.
fn bitmap(values: impl Iterator<Item = bool>, length: usize, all_set: bool) -> Option<Vec<u8>> {
    if all_set {
        return None;
    }
    let mut bits = vec![0u8; length.div_ceil(8)];
    for (index, value) in values.enumerate() {
        if value {
            bits[index / 8] |= 1 << (index % 8);
        }
    }
    Some(bits)
}

fn booleans(values: impl Iterator<Item = bool>, length: usize) -> Vec<u8> {
    bitmap(values, length, false).unwrap_or_default()
}

fn fixed<T: Copy, const N: usize>(
    parts: &[&Columns],
    column: impl Fn(&Columns) -> &[T],
    bytes: impl Fn(T) -> [u8; N],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(parts.iter().map(|part| column(part).len() * N).sum());
    for part in parts {
        for value in column(part) {
            out.extend_from_slice(&bytes(*value));
        }
    }
    out
}

/// (validity or None, offsets, data) of a large_string column joined from the parts.
fn text(parts: &[&Columns], column: impl Fn(&Columns) -> &Text) -> (Option<Vec<u8>>, Vec<u8>, Vec<u8>) {
    let length: usize = parts.iter().map(|part| column(part).ends.len()).sum();
    let mut data = Vec::with_capacity(parts.iter().map(|part| column(part).data.len()).sum());
    let mut offsets = Vec::with_capacity((length + 1) * 8);
    offsets.extend_from_slice(&0i64.to_le_bytes());
    for part in parts {
        let base = data.len() as i64;
        let part = column(part);
        data.extend_from_slice(&part.data);
        for end in &part.ends {
            offsets.extend_from_slice(&(base + end).to_le_bytes());
        }
    }
    let all_set = parts.iter().all(|part| column(part).valid.iter().all(|set| *set));
    let valid = parts.iter().flat_map(|part| column(part).valid.iter().copied());
    (bitmap(valid, length, all_set), offsets, data)
}

/// A string repeated on each of a part's rows (a session column, the pricing version).
fn repeated(parts: &[&Columns], value: impl Fn(&Columns) -> &str) -> (Option<Vec<u8>>, Vec<u8>, Vec<u8>) {
    let length: usize = parts.iter().map(|part| part.rows()).sum();
    let mut data = Vec::new();
    let mut offsets = Vec::with_capacity((length + 1) * 8);
    offsets.extend_from_slice(&0i64.to_le_bytes());
    for part in parts {
        let text = value(part).as_bytes();
        for _ in 0..part.rows() {
            data.extend_from_slice(text);
            offsets.extend_from_slice(&(data.len() as i64).to_le_bytes());
        }
    }
    (None, offsets, data)
}

/// One Arrow column's buffers: validity bitmap (None: all set), offsets (strings only), data.
type Buffers = (Option<Vec<u8>>, Option<Vec<u8>>, Vec<u8>);

fn text_buffers((valid, offsets, data): (Option<Vec<u8>>, Vec<u8>, Vec<u8>)) -> Buffers {
    (valid, Some(offsets), data)
}

fn fixed_buffers(data: Vec<u8>) -> Buffers {
    (None, None, data)
}

/// Every column of `parts` joined, in `usage_rows`' order (plain Rust: runs without the GIL).
fn joined(parts: &[&Columns]) -> (usize, Vec<Buffers>) {
    let length: usize = parts.iter().map(|part| part.rows()).sum();
    let mut out: Vec<Buffers> = Vec::with_capacity(25);
    out.push(text_buffers(repeated(parts, |part| &part.session[0])));
    out.push(fixed_buffers(fixed(parts, |part| &part.line_no, i64::to_le_bytes)));
    for index in 1..4 {
        out.push(text_buffers(repeated(parts, |part| &part.session[index])));
    }
    for index in 0..4 {
        out.push(text_buffers(text(parts, |part| texts(part)[index])));
    }
    let sidechain = parts.iter().flat_map(|part| part.is_sidechain.iter().copied());
    out.push(fixed_buffers(booleans(sidechain, length)));
    for index in 4..7 {
        out.push(text_buffers(text(parts, |part| texts(part)[index])));
    }
    out.push(fixed_buffers(fixed(parts, |part| &part.ts, i64::to_le_bytes)));
    for index in 0..6 {
        out.push(fixed_buffers(fixed(
            parts,
            |part| &part.counts[index],
            i64::to_le_bytes,
        )));
    }
    out.push(text_buffers(text(parts, |part| &part.speed)));
    out.push(fixed_buffers(fixed(parts, |part| &part.cost_usd, f64::to_le_bytes)));
    out.push(text_buffers(text(parts, |part| &part.cost_source)));
    out.push(text_buffers(repeated(parts, |part| &part.pricing_version)));
    out.push(text_buffers(text(parts, |part| &part.claude_version)));
    (length, out)
}

/// The joined columns of `parts`, in `usage_rows`' order, as Arrow buffers: per column a tuple
/// (validity bitmap or None, offsets or None, data). Strings are large_string (i64 offsets),
/// `is_sidechain` a bit-packed bool, `ts` int64 microseconds UTC, numbers little-endian.
///
/// The columns are joined without the GIL: a batch of a whole row group takes tens of
/// milliseconds, which the worker threads reading files would otherwise wait out.
#[pyfunction]
pub fn arrow_buffers<'py>(
    py: Python<'py>,
    parts: Vec<PyRef<'py, UsageColumns>>,
) -> PyResult<(usize, Vec<Bound<'py, PyTuple>>)> {
    let parts: Vec<&Columns> = parts.iter().map(|part| &part.columns).collect();
    let (length, buffers) = py.allow_threads(|| joined(&parts));
    let bytes = |data: Option<Vec<u8>>| match data {
        Some(data) => PyBytes::new(py, &data).into_any(),
        None => py.None().into_bound(py),
    };
    let out = buffers
        .into_iter()
        .map(|(valid, offsets, data)| PyTuple::new(py, [bytes(valid), bytes(offsets), bytes(Some(data))]))
        .collect::<PyResult<Vec<_>>>()?;
    Ok((length, out))
}
