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
use pyo3::types::PyList;
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
    user: u32, // index into `Index::users`
}

/// The rows by key.
#[derive(Default)]
pub(crate) struct Index {
    at: HashMap<Box<[u8]>, u32>,
    rows: Vec<Row>,
    users: Vec<Box<[u8]>>,
}

impl Index {
    pub(crate) fn get(&self, key: &[u8]) -> Option<(u32, &Row)> {
        let at = *self.at.get(key)?;
        Some((at, &self.rows[at as usize]))
    }
}

fn checksum_of(body: &[u8]) -> u64 {
    let mut hasher = FxHasher::default();
    hasher.write(body);
    hasher.write_usize(body.len());
    hasher.finish()
}

/// A cursor over the body; every read fails on anything but the format.
struct Reader<'a> {
    body: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn number(&mut self, end: u8) -> Option<i64> {
        let rest = &self.body[self.at..];
        let length = rest.iter().position(|byte| *byte == end)?;
        let text = std::str::from_utf8(&rest[..length]).ok()?;
        self.at += length + 1;
        text.parse().ok()
    }

    fn bytes(&mut self, length: i64) -> Option<&'a [u8]> {
        let length = usize::try_from(length).ok()?;
        let end = self.at.checked_add(length)?;
        let bytes = self.body.get(self.at..end)?;
        self.at = end;
        Some(bytes)
    }

    fn row(&mut self, index: &mut Index, users: &mut HashMap<&'a [u8], u32>) -> Option<()> {
        let size = self.number(b' ')?;
        let mtime_ns = self.number(b' ')?;
        let flags = u8::try_from(self.number(b' ')?)
            .ok()
            .filter(|flags| *flags <= SETTLED | VANISHED)?;
        let user_length = self.number(b' ')?;
        let user = self.bytes(user_length)?;
        let key_length = self.number(b' ')?;
        let key = self.bytes(key_length)?;
        if self.bytes(1)? != b"\n" || std::str::from_utf8(key).is_err() {
            return None;
        }
        let next_user = u32::try_from(users.len()).ok()?;
        let user = *users.entry(user).or_insert_with(|| {
            index.users.push(user.into());
            next_user
        });
        let at = u32::try_from(index.rows.len()).ok()?;
        if index.at.insert(key.into(), at).is_some() {
            return None; // a key twice: not what a state table (keyed by file) gives
        }
        index.rows.push(Row {
            size,
            mtime_ns,
            settled: flags & SETTLED != 0,
            vanished: flags & VANISHED != 0,
            user,
        });
        Some(())
    }
}

fn parse(body: &[u8]) -> Option<Index> {
    let mut index = Index::default();
    let mut users = HashMap::default();
    let mut reader = Reader { body, at: 0 };
    while reader.at < body.len() {
        reader.row(&mut index, &mut users)?;
    }
    Some(index)
}

/// A scan index read from its body, and which of its rows the walks so far met.
#[pyclass(module = "sessionpipe_native")]
pub struct ScanIndex {
    index: Index,
    matched: Vec<bool>,
}

#[pymethods]
impl ScanIndex {
    /// The index of `body`; `ValueError` unless it has `rows` rows, `checksum`, and the format.
    #[new]
    fn new(body: &[u8], rows: usize, checksum: u64) -> PyResult<Self> {
        if checksum_of(body) != checksum {
            return Err(PyValueError::new_err("scan index: checksum mismatch"));
        }
        let index = parse(body).ok_or_else(|| PyValueError::new_err("scan index: malformed body"))?;
        if index.rows.len() != rows {
            return Err(PyValueError::new_err("scan index: row count mismatch"));
        }
        let matched = vec![false; rows];
        Ok(Self { index, matched })
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
        let Self { index, matched } = self;
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
            .at
            .iter()
            .filter(|(_, at)| wanted(**at as usize, &self.index.rows[**at as usize]))
            .map(|(key, _)| String::from_utf8_lossy(key).into_owned()) // UTF-8: checked when read
            .collect();
        keys.sort_unstable();
        keys
    }
}
