//! sessionpipe's compiled usage-line parser: the Python reading in
//! `sessionpipe_runner.processors.usage.parse` is the reference, and a differential test holds this
//! one to it, row for row and issue for issue.
//!
//! [`usage_rows`] does for one file's bytes what `parse_usage_lines` (with `read_line`) and
//! `UsageProcessor.process_appended` do together: find the lines that contain `"usage"`, decode the
//! fields accounting reads (every other value is only checked for JSON syntax), apply ccusage's
//! rules in the reference's order, price each kept line, and return the `usage_rows` tuples and the
//! issue counts. The parse runs without the GIL.
//!
//! Exactness comes from a narrow fast path: whatever this parser cannot decide the way msgspec and
//! Python would (a line serde_json refuses, a timestamp that is not the plain `…THH:MM:SS[.fff]Z`
//! shape, a non-ASCII `version`) is handed back to the Python reading, line by line.

mod columns;
mod decode;
mod listing;
mod reading;
mod rules;
mod scanindex;

use rustc_hash::FxHashMap as HashMap;

use memchr::{memchr, memchr_iter, memmem, memrchr};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple};

use rules::{Line, Outcome, Timestamp};

const USAGE_MARK: &[u8] = b"\"usage\"";
const COST_FROM_TRANSCRIPT: &str = "transcript";
const COST_FROM_PRICES: &str = "prices";
const COST_UNPRICED: &str = "unpriced";
const LONG_CONTEXT_THRESHOLD: i64 = 200_000;
const CACHE_WRITE_1H_INPUT_MULTIPLIER: f64 = 2.0;

/// One usage line's place in the file and what the rules made of it.
struct Found<'a> {
    line_no: i64,
    raw: &'a [u8],
    outcome: Outcome<'a>,
}

/// Every line of `data` that contains `"usage"`, read (the part that runs without the GIL).
fn scan<'a>(data: &'a [u8], first_line: i64, max_line_bytes: usize, too_long: &mut u64) -> Vec<Found<'a>> {
    let finder = memmem::Finder::new(USAGE_MARK);
    let mut found = Vec::new();
    let mut position = 0usize;
    let mut line_no = first_line;
    let mut counted_to = 0usize;
    while position <= data.len() {
        let Some(relative) = finder.find(&data[position..]) else {
            break;
        };
        let hit = position + relative;
        let start = memrchr(b'\n', &data[..hit]).map_or(0, |at| at + 1);
        let end = memchr(b'\n', &data[hit..]).map_or(data.len(), |at| hit + at);
        line_no += memchr_iter(b'\n', &data[counted_to..start]).count() as i64;
        counted_to = start;
        position = end + 1;
        if end - start > max_line_bytes {
            *too_long += 1;
            continue;
        }
        let raw = &data[start..end];
        found.push(Found {
            line_no,
            raw,
            outcome: rules::read_line(line_no, raw),
        });
    }
    found
}

/// `ModelPrice`'s fields as `price_rates` passes them: input, output, cache write, cache read, the
/// four rates above 200k tokens (None when the model has none), the fast multiplier.
type Rates = (
    f64,
    f64,
    f64,
    f64,
    Option<f64>,
    Option<f64>,
    Option<f64>,
    Option<f64>,
    f64,
);

/// The per-token rates of one model, as `pricing.ModelPrice` holds them.
#[derive(Clone, Copy)]
struct Price {
    input: f64,
    output: f64,
    cache_write: f64,
    cache_read: f64,
    input_above_200k: Option<f64>,
    output_above_200k: Option<f64>,
    cache_write_above_200k: Option<f64>,
    cache_read_above_200k: Option<f64>,
    fast_multiplier: f64,
}

/// `pricing.tiered`, in the same operations (so the result is the same double).
fn tiered(tokens: i64, rate: f64, above: Option<f64>) -> f64 {
    if tokens <= 0 {
        return 0.0;
    }
    match above {
        Some(above) if tokens > LONG_CONTEXT_THRESHOLD => {
            LONG_CONTEXT_THRESHOLD as f64 * rate + (tokens - LONG_CONTEXT_THRESHOLD) as f64 * above
        }
        _ => tokens as f64 * rate,
    }
}

/// `pricing.call_cost`, summed in the same order.
fn call_cost(price: &Price, line: &Line<'_>) -> f64 {
    let write_1h_above = price
        .input_above_200k
        .map(|rate| rate * CACHE_WRITE_1H_INPUT_MULTIPLIER);
    let cost = tiered(line.input_tokens, price.input, price.input_above_200k)
        + tiered(line.output_tokens, price.output, price.output_above_200k)
        + tiered(
            line.cache_write_5m_tokens,
            price.cache_write,
            price.cache_write_above_200k,
        )
        + tiered(
            line.cache_write_1h_tokens,
            price.input * CACHE_WRITE_1H_INPUT_MULTIPLIER,
            write_1h_above,
        )
        + tiered(line.cache_read_tokens, price.cache_read, price.cache_read_above_200k);
    if line.speed.as_deref() == Some("fast") {
        cost * price.fast_multiplier
    } else {
        cost
    }
}

fn has_tokens(line: &Line<'_>) -> bool {
    line.input_tokens != 0
        || line.output_tokens != 0
        || line.cache_write_5m_tokens != 0
        || line.cache_write_1h_tokens != 0
        || line.cache_read_tokens != 0
}

/// The pricing of one call and the reference's timestamp parser, for either shape of output.
struct Context<'py> {
    price_of: Bound<'py, PyAny>,
    parse_timestamp: Bound<'py, PyAny>,
    prices: HashMap<String, Option<Price>>,
}

impl<'py> Context<'py> {
    /// The price of `model` from the Python price table, asked once per model per call.
    fn price(&mut self, model: &str) -> PyResult<Option<Price>> {
        if let Some(price) = self.prices.get(model) {
            return Ok(*price);
        }
        let found = self.price_of.call1((model,))?;
        let price = if found.is_none() {
            None
        } else {
            let rates: Rates = found.extract()?;
            Some(Price {
                input: rates.0,
                output: rates.1,
                cache_write: rates.2,
                cache_read: rates.3,
                input_above_200k: rates.4,
                output_above_200k: rates.5,
                cache_write_above_200k: rates.6,
                cache_read_above_200k: rates.7,
                fast_multiplier: rates.8,
            })
        };
        self.prices.insert(model.to_owned(), price);
        Ok(price)
    }

    /// A kept line's (cost, cost source, whether its model had no price though it used tokens).
    fn cost(&mut self, line: &Line<'_>) -> PyResult<(f64, &'static str, bool)> {
        if let Some(cost) = line.cost_usd {
            return Ok((cost, COST_FROM_TRANSCRIPT, false));
        }
        let price = match line.model.as_deref() {
            Some(model) if !model.is_empty() => self.price(model)?,
            _ => None,
        };
        Ok(match price {
            Some(price) => (call_cost(&price, line), COST_FROM_PRICES, false),
            None => (0.0, COST_UNPRICED, has_tokens(line)),
        })
    }

    /// The reference's parse of a timestamp's text; `None` when it refuses it.
    fn parse(&self, text: &str) -> PyResult<Option<Bound<'py, PyAny>>> {
        let parsed = self.parse_timestamp.call1((text,))?;
        Ok(if parsed.is_none() { None } else { Some(parsed) })
    }
}

/// Where the rows of one call go: Python tuples, or columns.
trait Sink<'py> {
    /// A kept line's timestamp as the sink stores it.
    type Time;
    /// The timestamp, or `None` when the reference refuses it (`bad_timestamp`).
    fn timestamp(&mut self, context: &Context<'py>, timestamp: &Timestamp<'_>) -> PyResult<Option<Self::Time>>;
    fn kept(&mut self, line: &Line<'_>, time: Self::Time, cost: f64, source: &'static str) -> PyResult<()>;
    /// A row the Python reading made for a line this parser handed back.
    fn deferred(&mut self, row: Bound<'py, PyAny>) -> PyResult<()>;
}

/// Rows as `usage_rows` tuples, values shared where the rows of a call repeat them.
struct Tuples<'py> {
    py: Python<'py>,
    rows: Bound<'py, PyList>,
    session: [Bound<'py, PyAny>; 4],
    pricing_version: Bound<'py, PyAny>,
    datetime: Bound<'py, PyAny>,
    utc: Bound<'py, PyAny>,
    strings: HashMap<String, Bound<'py, PyAny>>,
}

impl<'py> Tuples<'py> {
    /// A Python string, shared by the rows of this call that repeat it (cwd, model, version…).
    fn shared(&mut self, text: &Option<std::borrow::Cow<'_, str>>) -> Bound<'py, PyAny> {
        match text {
            None => self.py.None().into_bound(self.py),
            Some(text) => {
                if let Some(known) = self.strings.get(text.as_ref()) {
                    return known.clone();
                }
                let made = PyString::new(self.py, text).into_any();
                self.strings.insert(text.to_string(), made.clone());
                made
            }
        }
    }

    fn text(&self, text: &Option<std::borrow::Cow<'_, str>>) -> Bound<'py, PyAny> {
        match text {
            None => self.py.None().into_bound(self.py),
            Some(text) => PyString::new(self.py, text).into_any(),
        }
    }
}

impl<'py> Sink<'py> for Tuples<'py> {
    type Time = Bound<'py, PyAny>;

    /// An aware UTC datetime.
    fn timestamp(&mut self, context: &Context<'py>, timestamp: &Timestamp<'_>) -> PyResult<Option<Self::Time>> {
        match timestamp {
            Timestamp::Parts(y, mo, d, h, mi, s, us) => {
                match self.datetime.call1((*y, *mo, *d, *h, *mi, *s, *us, &self.utc)) {
                    Ok(made) => Ok(Some(made)),
                    // Out of range (a 30th of February): the reference's parse decides.
                    Err(_) => context.parse(&timestamp.text()),
                }
            }
            Timestamp::Text(text) => context.parse(text),
        }
    }

    fn kept(&mut self, line: &Line<'_>, timestamp: Self::Time, cost: f64, source: &'static str) -> PyResult<()> {
        let py = self.py;
        let items: [Bound<'py, PyAny>; 25] = [
            self.session[0].clone(),
            line.line_no.into_pyobject(py)?.into_any(),
            self.session[1].clone(),
            self.session[2].clone(),
            self.session[3].clone(),
            self.shared(&line.session_id),
            self.shared(&line.cwd),
            self.shared(&line.git_branch),
            self.shared(&line.agent_id),
            pyo3::types::PyBool::new(py, line.is_sidechain).to_owned().into_any(),
            self.shared(&line.model),
            self.text(&line.message_id),
            self.text(&line.request_id),
            timestamp,
            line.input_tokens.into_pyobject(py)?.into_any(),
            line.output_tokens.into_pyobject(py)?.into_any(),
            line.cache_write_5m_tokens.into_pyobject(py)?.into_any(),
            line.cache_write_1h_tokens.into_pyobject(py)?.into_any(),
            line.cache_read_tokens.into_pyobject(py)?.into_any(),
            line.web_search_requests.into_pyobject(py)?.into_any(),
            self.shared(&line.speed),
            cost.into_pyobject(py)?.into_any(),
            PyString::intern(py, source).into_any(),
            self.pricing_version.clone(),
            self.shared(&line.version),
        ];
        let row = PyTuple::new(py, items)?;
        // A run keeps a batch's rows alive until it writes them: left tracked, each is scanned by
        // the cyclic GC until a collection untracks it (~0.1 CPU-s over 120,000 rows).
        // SAFETY: `row` is a live tuple we own; its items are str, int, float, bool, None and
        // datetime objects, none of which can form a reference cycle, so CPython itself would
        // untrack it (as `_PyTuple_MaybeUntrack` does).
        unsafe { pyo3::ffi::PyObject_GC_UnTrack(row.as_ptr().cast()) };
        self.rows.append(row)
    }

    fn deferred(&mut self, row: Bound<'py, PyAny>) -> PyResult<()> {
        self.rows.append(row)
    }
}

/// Days from 1970-01-01 to a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = if year >= 0 { year } else { year - 399 } / 400;
    let year_of_era = year - era * 400;
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// Microseconds since the epoch of a UTC date and time that Python's `datetime` accepts, else None.
fn epoch_micros(year: i32, month: u8, day: u8, hour: u8, minute: u8, second: u8, micros: u32) -> Option<i64> {
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let month_days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return None,
    };
    let valid = (1..=9999).contains(&year)
        && (1..=month_days).contains(&day)
        && hour < 24
        && minute < 60
        && second < 60
        && micros < 1_000_000;
    if !valid {
        return None;
    }
    let days = days_from_civil(i64::from(year), i64::from(month), i64::from(day));
    let seconds = days * 86_400 + i64::from(hour) * 3_600 + i64::from(minute) * 60 + i64::from(second);
    Some(seconds * 1_000_000 + i64::from(micros))
}

impl<'py> Sink<'py> for columns::Columns {
    /// Microseconds since the epoch, UTC.
    type Time = i64;

    fn timestamp(&mut self, context: &Context<'py>, timestamp: &Timestamp<'_>) -> PyResult<Option<i64>> {
        if let Timestamp::Parts(y, mo, d, h, mi, s, us) = timestamp {
            if let Some(micros) = epoch_micros(*y, *mo, *d, *h, *mi, *s, *us) {
                return Ok(Some(micros));
            }
        }
        // The parse given to `usage_columns` returns microseconds.
        context
            .parse(&timestamp.text())?
            .map(|micros| micros.extract())
            .transpose()
    }

    fn kept(&mut self, line: &Line<'_>, ts: i64, cost_usd: f64, cost_source: &'static str) -> PyResult<()> {
        self.push(&columns::Row {
            line_no: line.line_no,
            texts: [
                line.session_id.as_deref(),
                line.cwd.as_deref(),
                line.git_branch.as_deref(),
                line.agent_id.as_deref(),
                line.model.as_deref(),
                line.message_id.as_deref(),
                line.request_id.as_deref(),
            ],
            is_sidechain: line.is_sidechain,
            ts,
            counts: [
                line.input_tokens,
                line.output_tokens,
                line.cache_write_5m_tokens,
                line.cache_write_1h_tokens,
                line.cache_read_tokens,
                line.web_search_requests,
            ],
            speed: line.speed.as_deref(),
            cost_usd,
            cost_source,
            claude_version: line.version.as_deref(),
        });
        Ok(())
    }

    /// A `usage_rows` tuple whose `ts` is already microseconds.
    fn deferred(&mut self, row: Bound<'py, PyAny>) -> PyResult<()> {
        let row = row.downcast::<PyTuple>()?;
        let texts: Vec<Option<String>> = [5, 6, 7, 8, 10, 11, 12, 20, 22, 24]
            .into_iter()
            .map(|index| row.get_item(index)?.extract())
            .collect::<PyResult<_>>()?;
        let counts: Vec<i64> = (14..20)
            .map(|index| row.get_item(index)?.extract())
            .collect::<PyResult<_>>()?;
        let text = |index: usize| texts[index].as_deref();
        self.push(&columns::Row {
            line_no: row.get_item(1)?.extract()?,
            texts: [text(0), text(1), text(2), text(3), text(4), text(5), text(6)],
            is_sidechain: row.get_item(9)?.extract()?,
            ts: row.get_item(13)?.extract()?,
            counts: [counts[0], counts[1], counts[2], counts[3], counts[4], counts[5]],
            speed: text(7),
            cost_usd: row.get_item(21)?.extract()?,
            cost_source: text(8).unwrap_or_default(),
            claude_version: text(9),
        });
        Ok(())
    }
}

/// The bytes of one call, where their first line is in the file, and the longest line read.
struct Lines<'a> {
    data: &'a [u8],
    first_line: i64,
    max_line_bytes: usize,
}

/// Reads the usage lines into `sink` (parsing without the GIL); returns the issue counts.
fn read_into<'py, S: Sink<'py>>(
    py: Python<'py>,
    lines: &Lines<'_>,
    price_of: Bound<'py, PyAny>,
    parse_timestamp: Bound<'py, PyAny>,
    reference: &Bound<'py, PyAny>,
    sink: &mut S,
) -> PyResult<Bound<'py, PyDict>> {
    let mut too_long = 0u64;
    let found = py.allow_threads(|| scan(lines.data, lines.first_line, lines.max_line_bytes, &mut too_long));
    let mut context = Context {
        price_of,
        parse_timestamp,
        prices: HashMap::default(),
    };
    settle(py, &found, too_long, &mut context, reference, sink)
}

/// The lines [`scan`] found, priced and given to `sink` (with the GIL: the reference may be asked);
/// returns the issue counts.
fn settle<'py, S: Sink<'py>>(
    py: Python<'py>,
    found: &[Found<'_>],
    too_long: u64,
    context: &mut Context<'py>,
    reference: &Bound<'py, PyAny>,
    sink: &mut S,
) -> PyResult<Bound<'py, PyDict>> {
    let count =
        |reason: &str, counted: &mut Vec<(String, u64)>| match counted.iter_mut().find(|(name, _)| name == reason) {
            Some(entry) => entry.1 += 1,
            None => counted.push((reason.to_owned(), 1)),
        };
    let mut counted: Vec<(String, u64)> = Vec::new();
    if too_long > 0 {
        counted.push(("line_too_long".to_owned(), too_long));
    }
    let mut missing_prices = 0u64;
    for item in found {
        match &item.outcome {
            Outcome::NoUsage => {}
            Outcome::Skip(reason) => count(reason, &mut counted),
            Outcome::Kept(line) => match sink.timestamp(context, &line.timestamp)? {
                None => count("bad_timestamp", &mut counted),
                Some(timestamp) => match &line.after_timestamp {
                    Some(reason) => count(reason, &mut counted),
                    None => {
                        let (cost, source, missing) = context.cost(line)?;
                        missing_prices += u64::from(missing);
                        sink.kept(line, timestamp, cost, source)?;
                    }
                },
            },
            Outcome::Defer => {
                let answer = reference.call1((item.line_no, PyBytes::new(py, item.raw)))?;
                if answer.is_none() {
                } else if let Ok(reason) = answer.downcast::<PyString>() {
                    count(&reason.to_cow()?, &mut counted);
                } else {
                    let (row, missing): (Bound<'py, PyAny>, bool) = answer.extract()?;
                    missing_prices += u64::from(missing);
                    sink.deferred(row)?;
                }
            }
        }
    }
    if missing_prices > 0 {
        counted.push(("missing_price".to_owned(), missing_prices));
    }
    let result = PyDict::new(py);
    for (reason, number) in counted {
        result.set_item(reason, number)?;
    }
    Ok(result)
}

/// The `usage_rows` tuples and the issue counts of one file's bytes (or of the lines appended to it).
///
/// `session` is (session_file key, user, project, session id); `price_of(model)` returns the nine
/// rates of `pricing.ModelPrice` as a tuple, or None; `parse_timestamp` is the reference's;
/// `reference(line_no, raw)` reads one line the Python way and returns None (no usage), a skip
/// reason, or `(row, missing_price)`. Returns `(rows, issues)`.
#[pyfunction]
#[pyo3(signature = (data, first_line, max_line_bytes, session, pricing_version, price_of, parse_timestamp, reference, datetime, utc))]
#[allow(clippy::too_many_arguments)]
fn usage_rows<'py>(
    py: Python<'py>,
    data: &Bound<'py, PyBytes>,
    first_line: i64,
    max_line_bytes: usize,
    session: (
        Bound<'py, PyAny>,
        Bound<'py, PyAny>,
        Bound<'py, PyAny>,
        Bound<'py, PyAny>,
    ),
    pricing_version: Bound<'py, PyAny>,
    price_of: Bound<'py, PyAny>,
    parse_timestamp: Bound<'py, PyAny>,
    reference: Bound<'py, PyAny>,
    datetime: Bound<'py, PyAny>,
    utc: Bound<'py, PyAny>,
) -> PyResult<(Bound<'py, PyList>, Bound<'py, PyDict>)> {
    let lines = Lines {
        data: data.as_bytes(),
        first_line,
        max_line_bytes,
    };
    let mut rows = Tuples {
        py,
        rows: PyList::empty(py),
        session: [session.0, session.1, session.2, session.3],
        pricing_version,
        datetime,
        utc,
        strings: HashMap::default(),
    };
    let issues = read_into(py, &lines, price_of, parse_timestamp, &reference, &mut rows)?;
    Ok((rows.rows, issues))
}

/// [`usage_rows`] with the rows as columns: a [`columns::UsageColumns`] (joined into Arrow buffers by
/// [`columns::arrow_buffers`]) instead of tuples. `parse_timestamp` returns microseconds since the
/// epoch (or None), and the rows `reference` returns hold `ts` in microseconds.
#[pyfunction]
#[pyo3(signature = (data, first_line, max_line_bytes, session, pricing_version, price_of, parse_timestamp, reference))]
#[allow(clippy::too_many_arguments)]
fn usage_columns<'py>(
    py: Python<'py>,
    data: &Bound<'py, PyBytes>,
    first_line: i64,
    max_line_bytes: usize,
    session: [String; 4],
    pricing_version: String,
    price_of: Bound<'py, PyAny>,
    parse_timestamp: Bound<'py, PyAny>,
    reference: Bound<'py, PyAny>,
) -> PyResult<(columns::UsageColumns, Bound<'py, PyDict>)> {
    let lines = Lines {
        data: data.as_bytes(),
        first_line,
        max_line_bytes,
    };
    let mut columns = columns::Columns {
        session,
        pricing_version,
        ..Default::default()
    };
    let issues = read_into(py, &lines, price_of, parse_timestamp, &reference, &mut columns)?;
    columns.shrink_to_fit(); // held until its batch commits: no room to grow left over
    Ok((columns::UsageColumns { columns }, issues))
}

/// Whether `tail` is empty once ASCII whitespace is stripped (as Python's `bytes.strip()` strips).
fn blank(tail: &[u8]) -> bool {
    tail.iter()
        .all(|byte| matches!(byte, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c))
}

/// One file of [`usage_files`], read and scanned without the GIL.
struct Scanned<'a> {
    read: reading::FileRead,
    /// The complete lines (the whole file when it ends in a newline or blanks).
    data: &'a [u8],
    newlines: usize,
    content_hash: u128,
    found: Vec<Found<'a>>,
    too_long: u64,
}

/// New session files read and parsed in one call: for each, what `reading.read_snapshot` and then
/// [`usage_columns`] would make of it, with the GIL released once for the whole list.
///
/// Worker threads examine chunks of files beside the runner's thread. Per file, `read_below` and
/// `usage_columns` released the GIL three times, and each take-back waited for whichever thread
/// held it then (a context switch, tens of µs on a VM): two such threads read and parsed no faster
/// than one. `files` are `(root, parts)` as `read_below` takes them, `sessions` the
/// `(session_file key, user, project, session id)` of each; `reference(index, line_no, raw)` is
/// [`usage_columns`]'s with the file's index in `files` first. Returns, per file, `(what, number,
/// size, mtime_ns, length, lines, content_hash, columns, issues)`: `what` is `read_below`'s code,
/// or [`reading::UNDECIDED_TAIL`]; the hash, columns and issues are set only for a file read
/// (`what` 0), `number` only for an `OSError`. A file too long to read whole (`limit`) or with an
/// undecided tail is left to the per-file way.
#[pyfunction]
#[pyo3(signature = (files, limit, max_line_bytes, sessions, pricing_version, price_of, parse_timestamp, reference))]
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
fn usage_files<'py>(
    py: Python<'py>,
    files: Vec<(std::path::PathBuf, Vec<std::path::PathBuf>)>,
    limit: u64,
    max_line_bytes: usize,
    sessions: Vec<[String; 4]>,
    pricing_version: String,
    price_of: Bound<'py, PyAny>,
    parse_timestamp: Bound<'py, PyAny>,
    reference: Bound<'py, PyAny>,
) -> PyResult<
    Vec<(
        i32,
        i64,
        i64,
        i128,
        usize,
        usize,
        Option<String>,
        Option<columns::UsageColumns>,
        Option<Bound<'py, PyDict>>,
    )>,
> {
    if sessions.len() != files.len() {
        return Err(pyo3::exceptions::PyValueError::new_err("one session per file"));
    }
    let names = files
        .iter()
        .map(|(root, parts)| reading::c_names(root, parts))
        .collect::<PyResult<Vec<_>>>()?;
    let (buffer, reads) = py.allow_threads(|| reading::read_files(&names, limit));
    let scanned: Vec<Scanned<'_>> = py.allow_threads(|| {
        reads
            .into_iter()
            .map(|read| {
                let raw = &buffer[read.start..read.start + read.length];
                let mut scanned = Scanned {
                    read,
                    data: raw,
                    newlines: 0,
                    content_hash: 0,
                    found: Vec::new(),
                    too_long: 0,
                };
                if scanned.read.what != reading::READ {
                    return scanned;
                }
                let cut = memrchr(b'\n', raw).map_or(0, |at| at + 1);
                if !blank(&raw[cut..]) {
                    scanned.read.what = reading::UNDECIDED_TAIL;
                    return scanned;
                }
                scanned.newlines = memchr_iter(b'\n', raw).count();
                scanned.content_hash = xxhash_rust::xxh3::xxh3_128(raw);
                scanned.found = scan(raw, 1, max_line_bytes, &mut scanned.too_long);
                scanned
            })
            .collect()
    });
    let mut context = Context {
        price_of,
        parse_timestamp,
        prices: HashMap::default(),
    };
    let partial = py.import("functools")?.getattr("partial")?;
    let mut results = Vec::with_capacity(scanned.len());
    for (index, (file, session)) in scanned.into_iter().zip(sessions).enumerate() {
        let read = &file.read;
        if read.what != reading::READ {
            results.push((read.what, read.number, 0, 0, 0, 0, None, None, None));
            continue;
        }
        let mut columns = columns::Columns {
            session,
            pricing_version: pricing_version.clone(),
            ..Default::default()
        };
        let reference = partial.call1((&reference, index))?;
        let issues = settle(py, &file.found, file.too_long, &mut context, &reference, &mut columns)?;
        columns.shrink_to_fit();
        let data = file.data;
        let lines = file.newlines + usize::from(!data.is_empty() && data[data.len() - 1] != b'\n');
        results.push((
            reading::READ,
            -1,
            read.length as i64,
            read.mtime_ns,
            data.len(),
            lines,
            Some(format!("{:032x}", file.content_hash)),
            Some(columns::UsageColumns { columns }),
            Some(issues),
        ));
    }
    Ok(results)
}

#[pymodule]
fn sessionpipe_native(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_function(wrap_pyfunction!(usage_rows, module)?)?;
    module.add_function(wrap_pyfunction!(listing::walk_user_folders, module)?)?;
    module.add_function(wrap_pyfunction!(reading::read_below, module)?)?;
    module.add_function(wrap_pyfunction!(usage_columns, module)?)?;
    module.add_function(wrap_pyfunction!(usage_files, module)?)?;
    module.add_function(wrap_pyfunction!(columns::arrow_buffers, module)?)?;
    module.add_class::<columns::UsageColumns>()?;
    module.add_class::<scanindex::ScanIndex>()?;
    Ok(())
}
