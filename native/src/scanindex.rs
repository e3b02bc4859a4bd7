//! The scan index (`sessionpipe_runner.scanindex`): what the state table says of each session file
//! of one processor, as the walk needs it to leave out the files that are plainly unchanged.
//!
//! The body is written by DuckDB (`store.state.scan_index_body`), one row per state row:
//! `<size> <mtime_ns> <flags> <user bytes> <user><key bytes> <key>\n`, flags 1 = settled (the
//! row is for the processor's version and neither failed nor quarantined), 2 = marked vanished.
//! Python checks the header (processor, version, the state's aggregate) before the body is used;
//! here the body must have its checksum, its row count, unique UTF-8 keys, and parse to the end.

use std::hash::Hasher;
use std::os::fd::RawFd;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};
use rustc_hash::{FxHashMap as HashMap, FxHasher};

use crate::listing::{walk_result, walk_users, Filter};

const SETTLED: u8 = 1;
const VANISHED: u8 = 2;

/// One state row, as the walk compares a file with it.
pub(crate) struct Row {
    pub(crate) size: i64,
    pub(crate) mtime_ns: i64,
    pub(crate) settled: bool,
    vanished: bool,
    user: u32,                    // index into `Index::users`
    key: std::ops::Range<usize>,  // its key in the body
    line: std::ops::Range<usize>, // its line in the body
}

/// The rows by key. Keys are not copied out of the body: rows are found by the hash of their key
/// and the key compared; a key whose hash another key has already (practically never) is kept
/// apart, by value.
pub(crate) struct Index {
    body: Vec<u8>,
    by_hash: HashMap<u64, u32>,
    overflow: HashMap<Box<[u8]>, u32>,
    rows: Vec<Row>,
    users: Vec<Box<[u8]>>,
}

fn key_hash(key: &[u8]) -> u64 {
    let mut hasher = FxHasher::default();
    hasher.write(key);
    hasher.finish()
}

impl Index {
    pub(crate) fn get(&self, key: &[u8]) -> Option<(u32, &Row)> {
        let first = self.by_hash.get(&key_hash(key))?;
        let at = if self.body[self.rows[*first as usize].key.clone()] == *key {
            *first
        } else {
            *self.overflow.get(key)?
        };
        Some((at, &self.rows[at as usize]))
    }

    fn key(&self, row: &Row) -> &[u8] {
        &self.body[row.key.clone()]
    }
}

fn checksum_of(body: &[u8]) -> u64 {
    let mut hasher = FxHasher::default();
    hasher.write(body);
    hasher.write_usize(body.len());
    hasher.finish()
}

/// What is read of a body before it is owned by its index.
struct Parsed<'a> {
    by_hash: HashMap<u64, u32>,
    overflow: HashMap<Box<[u8]>, u32>,
    rows: Vec<Row>,
    users: HashMap<&'a [u8], u32>,
}

impl Parsed<'_> {
    /// Whether `key` (of the row to be added next) is not a key of the rows so far; adds it.
    fn add_key(&mut self, body: &[u8], key: &[u8]) -> bool {
        let at = self.rows.len() as u32;
        match self.by_hash.entry(key_hash(key)) {
            std::collections::hash_map::Entry::Vacant(entry) => {
                entry.insert(at);
                true
            }
            std::collections::hash_map::Entry::Occupied(entry) => {
                let first = &self.rows[*entry.get() as usize];
                body[first.key.clone()] != *key && self.overflow.insert(key.into(), at).is_none()
            }
        }
    }
}

/// A cursor over the body; every read fails on anything but the format.
struct Reader<'a> {
    body: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    /// A decimal integer (`-` and digits) ended by `end`.
    fn number(&mut self, end: u8) -> Option<i64> {
        let rest = &self.body[self.at..];
        let negative = rest.first() == Some(&b'-');
        let mut length = usize::from(negative);
        let mut value: i64 = 0;
        loop {
            let byte = *rest.get(length)?;
            if byte == end {
                break;
            }
            if !byte.is_ascii_digit() {
                return None;
            }
            value = value.checked_mul(10)?.checked_add(i64::from(byte - b'0'))?;
            length += 1;
        }
        if length == usize::from(negative) {
            return None;
        }
        self.at += length + 1;
        Some(if negative { -value } else { value })
    }

    fn bytes(&mut self, length: i64) -> Option<std::ops::Range<usize>> {
        let length = usize::try_from(length).ok()?;
        let end = self.at.checked_add(length)?;
        self.body.get(self.at..end)?;
        let range = self.at..end;
        self.at = end;
        Some(range)
    }

    fn row(&mut self, parsed: &mut Parsed<'a>) -> Option<()> {
        let start = self.at;
        let size = self.number(b' ')?;
        let mtime_ns = self.number(b' ')?;
        let flags = u8::try_from(self.number(b' ')?)
            .ok()
            .filter(|flags| *flags <= SETTLED | VANISHED)?;
        let user_length = self.number(b' ')?;
        let user = self.bytes(user_length)?;
        let key_length = self.number(b' ')?;
        let key = self.bytes(key_length)?;
        let body = self.body;
        if self.bytes(1).map(|end| &body[end]) != Some(b"\n") || std::str::from_utf8(&body[key.clone()]).is_err() {
            return None;
        }
        let next_user = u32::try_from(parsed.users.len()).ok()?;
        let user = *parsed.users.entry(&body[user]).or_insert(next_user);
        u32::try_from(parsed.rows.len()).ok()?;
        if !parsed.add_key(body, &body[key.clone()]) {
            return None; // a key twice: not what a state table (keyed by file) gives
        }
        parsed.rows.push(Row {
            size,
            mtime_ns,
            settled: flags & SETTLED != 0,
            vanished: flags & VANISHED != 0,
            user,
            key,
            line: start..self.at,
        });
        Some(())
    }
}

fn parse(body: Vec<u8>, rows: usize) -> Option<Index> {
    let mut parsed = Parsed {
        by_hash: HashMap::with_capacity_and_hasher(rows, Default::default()),
        overflow: HashMap::default(),
        rows: Vec::with_capacity(rows),
        users: HashMap::default(),
    };
    let mut reader = Reader { body: &body, at: 0 };
    while reader.at < body.len() {
        reader.row(&mut parsed)?;
    }
    let mut users: Vec<(&[u8], u32)> = parsed.users.into_iter().collect();
    users.sort_unstable_by_key(|(_, at)| *at);
    let users = users.into_iter().map(|(user, _)| user.into()).collect();
    Some(Index {
        by_hash: parsed.by_hash,
        overflow: parsed.overflow,
        rows: parsed.rows,
        users,
        body,
    })
}

/// A scan index read from its body, and which of its rows the walks so far met.
#[pyclass(module = "sessionpipe_native")]
pub struct ScanIndex {
    index: Index,
    matched: Vec<bool>,
}

#[pymethods]
impl ScanIndex {
    /// The index whose body is `data` from `offset` on (the file as read: no copy of the body is
    /// made in Python); `ValueError` unless it has `rows` rows, `checksum`, and the format.
    /// The checksum and the parse run without the GIL (20 ms at 76,731 rows, while the run's
    /// thread opens the database).
    #[new]
    fn new(py: Python<'_>, data: &[u8], offset: usize, rows: usize, checksum: u64) -> PyResult<Self> {
        let body = data
            .get(offset..)
            .ok_or_else(|| PyValueError::new_err("scan index: no body"))?;
        let parsed = py.allow_threads(|| {
            if checksum_of(body) != checksum {
                return Err("checksum mismatch");
            }
            let index = parse(body.to_vec(), rows).ok_or("malformed body")?;
            if index.rows.len() != rows {
                return Err("row count mismatch");
            }
            Ok(index)
        });
        let index = parsed.map_err(|why| PyValueError::new_err(format!("scan index: {why}")))?;
        let matched = vec![false; rows];
        Ok(Self { index, matched })
    }

    /// The body of this index with the rows of `keys` replaced by `lines` (the rows those keys
    /// have now, in the body's format; a key without one has none any more), and its checksum.
    fn patched<'py>(&self, py: Python<'py>, keys: Vec<String>, lines: &[u8]) -> PyResult<(Bound<'py, PyBytes>, u64)> {
        let mut left_out: Vec<&std::ops::Range<usize>> = keys
            .iter()
            .filter_map(|key| self.index.get(key.as_bytes()))
            .map(|(_, row)| &row.line)
            .collect();
        left_out.sort_unstable_by_key(|line| line.start);
        left_out.dedup();
        let old = &self.index.body;
        let mut kept = Vec::with_capacity(left_out.len() + 2);
        let mut from = 0;
        for line in left_out {
            kept.push(&old[from..line.start]);
            from = line.end;
        }
        kept.push(&old[from..]);
        kept.push(lines);
        let length = kept.iter().map(|part| part.len()).sum();
        let mut checksum = 0;
        let body = PyBytes::new_with(py, length, |buffer| {
            let mut at = 0;
            for part in &kept {
                buffer[at..at + part.len()].copy_from_slice(part);
                at += part.len();
            }
            checksum = checksum_of(buffer);
            Ok(())
        })?;
        Ok((body, checksum))
    }

    /// The checksum a body is written with.
    #[staticmethod]
    fn checksum(body: &[u8]) -> u64 {
        checksum_of(body)
    }

    fn __len__(&self) -> usize {
        self.index.rows.len()
    }

    /// `walk_user_folders` of the user folders open as `fds` (borrowed), whose key components are
    /// `user_keys`, leaving out each regular session file whose row is settled with the file's size
    /// and mtime: per folder `(groups, issues, unchanged, odd_name)`, `unchanged` the files left out,
    /// `odd_name` whether a name below the folder is not UTF-8 (the index cannot judge its key).
    fn walk_user_folders<'py>(
        &mut self,
        py: Python<'py>,
        fds: Vec<RawFd>,
        max_depth: usize,
        user_keys: Vec<Vec<u8>>,
    ) -> PyResult<Bound<'py, PyList>> {
        if user_keys.len() != fds.len() {
            return Err(PyValueError::new_err("one user key per folder"));
        }
        let Self { index, matched, .. } = self;
        let filters: Vec<Filter<'_>> = user_keys.iter().map(|user_key| Filter { index, user_key }).collect();
        let walks = py.allow_threads(|| walk_users(&fds, max_depth, Some(&filters)));
        let result = PyList::empty(py);
        for mut walk in walks {
            for at in std::mem::take(&mut walk.matched) {
                matched[at as usize] = true;
            }
            let (unchanged, odd_name) = (walk.unchanged, walk.odd_name);
            let (groups, issues) = walk_result(py, walk)?;
            result.append((groups, issues, unchanged, odd_name))?;
        }
        Ok(result)
    }

    /// The keys of the rows no walk met, not marked vanished, of `user` (of any user if `None`).
    #[pyo3(signature = (user=None))]
    fn vanished(&self, user: Option<&[u8]>) -> Vec<String> {
        self.keys(|at, row| {
            !self.matched[at] && !row.vanished && user.is_none_or(|user| *self.index.users[row.user as usize] == *user)
        })
    }

    /// The keys of the rows a walk met that are marked vanished.
    fn reappeared(&self) -> Vec<String> {
        self.keys(|at, row| self.matched[at] && row.vanished)
    }
}

impl ScanIndex {
    fn keys(&self, wanted: impl Fn(usize, &Row) -> bool) -> Vec<String> {
        let mut keys: Vec<String> = self
            .index
            .rows
            .iter()
            .enumerate()
            .filter(|(at, row)| wanted(*at, row))
            .map(|(_, row)| String::from_utf8_lossy(self.index.key(row)).into_owned()) // UTF-8: checked when read
            .collect();
        keys.sort_unstable();
        keys
    }
}
