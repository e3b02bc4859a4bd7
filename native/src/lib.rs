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

mod decode;
mod rules;

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

/// What stays the same for every row of one call, and the Python callables the rows need.
struct Context<'py> {
    py: Python<'py>,
    session: [Bound<'py, PyAny>; 4],
    pricing_version: Bound<'py, PyAny>,
    price_of: Bound<'py, PyAny>,
    parse_timestamp: Bound<'py, PyAny>,
    datetime: Bound<'py, PyAny>,
    utc: Bound<'py, PyAny>,
    prices: HashMap<String, Option<Price>>,
    strings: HashMap<String, Bound<'py, PyAny>>,
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

    /// The line's timestamp as an aware UTC datetime; `None` when Python's reading refuses it.
    fn timestamp(&self, timestamp: &Timestamp<'_>) -> PyResult<Option<Bound<'py, PyAny>>> {
        match timestamp {
            Timestamp::Parts(y, mo, d, h, mi, s, us) => {
                match self.datetime.call1((*y, *mo, *d, *h, *mi, *s, *us, &self.utc)) {
                    Ok(made) => Ok(Some(made)),
                    // Out of range (a 30th of February): the reference's parse decides.
                    Err(_) => self.parse(&timestamp.text()),
                }
            }
            Timestamp::Text(text) => self.parse(text),
        }
    }

    fn parse(&self, text: &str) -> PyResult<Option<Bound<'py, PyAny>>> {
        let parsed = self.parse_timestamp.call1((text,))?;
        Ok(if parsed.is_none() { None } else { Some(parsed) })
    }

    /// The `usage_rows` tuple of a kept line, and whether its model had no price though it used tokens.
    fn row(&mut self, line: &Line<'_>, timestamp: Bound<'py, PyAny>) -> PyResult<(Bound<'py, PyTuple>, bool)> {
        let py = self.py;
        let (cost, source, missing) = match line.cost_usd {
            Some(cost) => (cost, COST_FROM_TRANSCRIPT, false),
            None => {
                let price = match line.model.as_deref() {
                    Some(model) if !model.is_empty() => self.price(model)?,
                    _ => None,
                };
                match price {
                    Some(price) => (call_cost(&price, line), COST_FROM_PRICES, false),
                    None => (0.0, COST_UNPRICED, has_tokens(line)),
                }
            }
        };
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
        Ok((row, missing))
    }
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
    let bytes: &[u8] = data.as_bytes();
    let mut too_long = 0u64;
    let found = py.allow_threads(|| scan(bytes, first_line, max_line_bytes, &mut too_long));
    let mut context = Context {
        py,
        session: [session.0, session.1, session.2, session.3],
        pricing_version,
        price_of,
        parse_timestamp,
        datetime,
        utc,
        prices: HashMap::default(),
        strings: HashMap::default(),
    };
    let count =
        |reason: &str, counted: &mut Vec<(String, u64)>| match counted.iter_mut().find(|(name, _)| name == reason) {
            Some(entry) => entry.1 += 1,
            None => counted.push((reason.to_owned(), 1)),
        };
    let mut counted: Vec<(String, u64)> = Vec::new();
    if too_long > 0 {
        counted.push(("line_too_long".to_owned(), too_long));
    }
    let rows = PyList::empty(py);
    let mut missing_prices = 0u64;
    for item in &found {
        match &item.outcome {
            Outcome::NoUsage => {}
            Outcome::Skip(reason) => count(reason, &mut counted),
            Outcome::Kept(line) => match context.timestamp(&line.timestamp)? {
                None => count("bad_timestamp", &mut counted),
                Some(timestamp) => match &line.after_timestamp {
                    Some(reason) => count(reason, &mut counted),
                    None => {
                        let (row, missing) = context.row(line.as_ref(), timestamp)?;
                        missing_prices += u64::from(missing);
                        rows.append(row)?;
                    }
                },
            },
            Outcome::Defer => {
                let answer = context.reference_call(&reference, item.line_no, item.raw)?;
                if answer.is_none() {
                } else if let Ok(reason) = answer.downcast::<PyString>() {
                    count(&reason.to_cow()?, &mut counted);
                } else {
                    let (row, missing): (Bound<'py, PyAny>, bool) = answer.extract()?;
                    missing_prices += u64::from(missing);
                    rows.append(row)?;
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
    Ok((rows, result))
}

impl<'py> Context<'py> {
    fn reference_call(&self, reference: &Bound<'py, PyAny>, line_no: i64, raw: &[u8]) -> PyResult<Bound<'py, PyAny>> {
        reference.call1((line_no, PyBytes::new(self.py, raw)))
    }
}

mod listing;

#[pymodule]
fn sessionpipe_native(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_function(wrap_pyfunction!(usage_rows, module)?)?;
    module.add_function(wrap_pyfunction!(listing::walk_user_folders, module)?)?;
    Ok(())
}
