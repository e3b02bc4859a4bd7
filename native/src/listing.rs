//! The scan's walk of user folders (`sessionpipe_runner.scan._walk`), on several threads.
//!
//! Python's walk is the reference; this one makes the same system calls in the same order per
//! folder (a listing of a `dup` of the folder's descriptor, `fstatat` without following, `openat`
//! with `O_NOFOLLOW`), so it meets the same entries and counts the same issues. Names stay bytes:
//! Python decodes them as it decodes any listing (surrogateescape) and makes the keys, so keys and
//! escaping are the reference's own.

use std::ffi::{CStr, CString};
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};

use crate::scanindex::Index;

const SESSION_SUFFIX: &[u8] = b".jsonl";
const FOLDER_FLAGS: libc::c_int = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;

/// Session files added at once with one origin: the folder's path below the user's folder
/// (components joined by `/`), and each file's name (joined by `/`), size and mtime in ns.
#[derive(Default)]
struct Group {
    parts: Vec<u8>,
    names: Vec<u8>,
    sizes: Vec<u64>,
    mtimes: Vec<i128>,
}

impl Group {
    fn add(&mut self, name: &[u8], info: &libc::stat) {
        if !self.sizes.is_empty() {
            self.names.push(b'/');
        }
        self.names.extend_from_slice(name);
        self.sizes.push(info.st_size as u64);
        self.mtimes
            .push(i128::from(info.st_mtime) * 1_000_000_000 + i128::from(info.st_mtime_nsec));
    }
}

/// What a walk checks each regular session file against (`ScanIndex.walk_user_folders`): the
/// index of the state, and the key component of the user folder walked.
#[derive(Clone, Copy)]
pub(crate) struct Filter<'a> {
    pub(crate) index: &'a Index,
    pub(crate) user_key: &'a [u8],
}

/// One user folder's walk: its groups in the reference's order, and its issues; with a filter, the
/// files it found plainly unchanged (left out of the groups) and the index rows it met.
#[derive(Default)]
pub(crate) struct Walk<'a> {
    groups: Vec<Group>,
    issues: Vec<(&'static str, u64)>,
    filter: Option<Filter<'a>>,
    pub(crate) unchanged: u64,
    /// Whether a name below the user folder is not UTF-8 (its key is escaped: only Python makes it).
    pub(crate) odd_name: bool,
    /// The index rows whose key a regular session file of this walk has.
    pub(crate) matched: Vec<u32>,
    key: Vec<u8>,    // the key being looked up (one buffer for the walk)
    buffer: Vec<u8>, // the listing's (one for the walk)
}

impl Walk<'_> {
    /// Whether the file `name` in the folder at `parts`, of lstat `info`, is plainly unchanged by
    /// the filter's index (then it is left out); notes the index row it has, if any.
    fn plainly_unchanged(&mut self, parts: &[u8], name: &[u8], info: &libc::stat) -> bool {
        let Some(filter) = self.filter else {
            return false;
        };
        if std::str::from_utf8(name).is_err() || std::str::from_utf8(parts).is_err() {
            self.odd_name = true; // its key is `key_part`'s escape: Python's to make
            return false;
        }
        self.key.clear();
        self.key.extend_from_slice(filter.user_key);
        self.key.push(b'/');
        if !parts.is_empty() {
            self.key.extend_from_slice(parts);
            self.key.push(b'/');
        }
        self.key.extend_from_slice(name);
        let Some((at, row)) = filter.index.get(&self.key) else {
            return false;
        };
        self.matched.push(at);
        let mtime = i128::from(info.st_mtime) * 1_000_000_000 + i128::from(info.st_mtime_nsec);
        let unchanged =
            row.settled && i128::from(row.size) == i128::from(info.st_size) && i128::from(row.mtime_ns) == mtime;
        self.unchanged += u64::from(unchanged);
        unchanged
    }

    fn count(&mut self, reason: &'static str) {
        match self.issues.iter_mut().find(|(name, _)| *name == reason) {
            Some(entry) => entry.1 += 1,
            None => self.issues.push((reason, 1)),
        }
    }
}

struct Entry {
    name: CString,
    kind: u8,                 // d_type, or what the lstat said when the listing gave none
    info: Option<libc::stat>, // the lstat, once made (DirEntry caches it the same way)
}

impl Entry {
    fn jsonl(&self) -> bool {
        self.name.to_bytes().ends_with(SESSION_SUFFIX)
    }
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// The issue an entry that cannot be looked at is counted under (`scan._os_reason`).
fn os_reason(error: i32) -> &'static str {
    if error == libc::ENOENT {
        "vanished"
    } else {
        "unreadable"
    }
}

fn stat_at(fd: RawFd, name: &CStr, flags: libc::c_int) -> Result<libc::stat, i32> {
    let mut info = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `name` is NUL-terminated and `info` is written by a successful call before it is read.
    let done = unsafe { libc::fstatat(fd, name.as_ptr(), info.as_mut_ptr(), flags) };
    if done == 0 {
        Ok(unsafe { info.assume_init() })
    } else {
        Err(errno())
    }
}

fn kind_of(mode: libc::mode_t) -> u8 {
    match mode & libc::S_IFMT {
        libc::S_IFREG => libc::DT_REG,
        libc::S_IFDIR => libc::DT_DIR,
        libc::S_IFLNK => libc::DT_LNK,
        _ => libc::DT_FIFO, // anything else: neither a file to read nor a folder to enter
    }
}

/// The entries of the folder open as `fd`, as `os.scandir(fd)` lists them (without `.` and `..`);
/// an error anywhere loses the whole listing, as `list(os.scandir(fd))` does.
///
/// Read with `getdents64` on `fd` itself: `os.scandir` lists a `dup` (which shares the offset) and
/// rewinds it, five more system calls per folder than the listing needs. The folders this walk
/// opens are listed once and closed; a folder the caller lent is rewound by [`walk_user`].
fn list(fd: RawFd, buffer: &mut Vec<u8>) -> Result<Vec<Entry>, i32> {
    const HEADER: usize = 19; // d_ino (8), d_off (8), d_reclen (2), d_type (1), then the name
    buffer.resize(32 * 1024, 0);
    let mut entries = Vec::new();
    loop {
        // SAFETY: the kernel writes at most `buffer.len()` bytes into `buffer`.
        let read = unsafe { libc::syscall(libc::SYS_getdents64, fd, buffer.as_mut_ptr(), buffer.len()) };
        if read < 0 {
            return Err(errno());
        }
        if read == 0 {
            return Ok(entries);
        }
        let mut at = 0usize;
        let end = read as usize;
        while at + HEADER <= end {
            let length = usize::from(u16::from_ne_bytes([buffer[at + 16], buffer[at + 17]]));
            if length < HEADER || at + length > end {
                return Err(libc::EIO); // not what the kernel writes
            }
            let record = &buffer[at..at + length];
            let name = CStr::from_bytes_until_nul(&record[HEADER..]).map_err(|_| libc::EIO)?;
            let bytes = name.to_bytes();
            if bytes != b"." && bytes != b".." {
                entries.push(Entry {
                    name: name.to_owned(),
                    kind: record[18],
                    info: None,
                });
            }
            at += length;
        }
    }
}

/// `scan._enter`: list the folder, add its regular `.jsonl` files as one group, return the rest.
fn enter(fd: RawFd, parts: &[u8], walk: &mut Walk) -> Vec<Entry> {
    let entries = list(fd, &mut walk.buffer).unwrap_or_else(|_| {
        walk.count("unreadable_dir");
        Vec::new()
    });
    let mut group = Group {
        parts: parts.to_vec(),
        ..Group::default()
    };
    let mut rest = Vec::new();
    for mut entry in entries {
        if !entry.jsonl() {
            rest.push(entry);
            continue;
        }
        if entry.kind == libc::DT_UNKNOWN {
            match stat_at(fd, &entry.name, libc::AT_SYMLINK_NOFOLLOW) {
                Ok(info) => {
                    entry.kind = kind_of(info.st_mode);
                    entry.info = Some(info);
                }
                Err(error) => {
                    walk.count(os_reason(error)); // where `_kind` counts it
                    continue;
                }
            }
        }
        if entry.kind == libc::DT_REG {
            add_regular(fd, &entry, &mut group, walk);
        } else {
            rest.push(entry);
        }
    }
    if !group.sizes.is_empty() {
        walk.groups.push(group);
    }
    rest
}

/// `scan._add_odd_file`.
fn add_odd_file(fd: RawFd, parts: &[u8], entry: &Entry, symlink: bool, walk: &mut Walk) {
    if !entry.jsonl() {
        walk.count("not_jsonl");
        return;
    }
    if symlink {
        walk.count("symlink_skipped");
        return;
    }
    let mut group = Group {
        parts: parts.to_vec(),
        ..Group::default()
    };
    add_regular(fd, entry, &mut group, walk);
    if !group.sizes.is_empty() {
        walk.groups.push(group);
    }
}

/// Add `entry` to `group` if its lstat (made now, unless made already) says it is a regular file;
/// else count why not (`scan._stat_each`, `scan._append_files`).
fn add_regular(fd: RawFd, entry: &Entry, group: &mut Group, walk: &mut Walk) {
    let info = match entry.info {
        Some(info) => info,
        None => match stat_at(fd, &entry.name, libc::AT_SYMLINK_NOFOLLOW) {
            Ok(info) => info,
            Err(error) => {
                walk.count(os_reason(error));
                return;
            }
        },
    };
    if info.st_mode & libc::S_IFMT == libc::S_IFREG {
        if !walk.plainly_unchanged(&group.parts, entry.name.to_bytes(), &info) {
            group.add(entry.name.to_bytes(), &info);
        }
    } else {
        walk.count("not_a_file");
    }
}

struct Open {
    fd: RawFd,
    owned: bool,
    parts: Vec<u8>,
    rest: std::vec::IntoIter<Entry>,
}

/// `scan._walk` of the user folder open as `user_fd` (borrowed: the caller closes it).
fn walk_user(user_fd: RawFd, max_depth: usize, filter: Option<Filter<'_>>) -> Walk<'_> {
    let mut walk = Walk {
        filter,
        ..Walk::default()
    };
    let rest = enter(user_fd, b"", &mut walk).into_iter();
    // SAFETY: a plain descriptor call: the caller's folder is left at its start, as `os.scandir` leaves it.
    unsafe { libc::lseek(user_fd, 0, libc::SEEK_SET) };
    let mut stack = vec![Open {
        fd: user_fd,
        owned: false,
        parts: Vec::new(),
        rest,
    }];
    while let Some(depth) = std::num::NonZeroUsize::new(stack.len()) {
        let top = stack.last_mut().expect("the stack is not empty");
        let Some(mut entry) = top.rest.next() else {
            let done = stack.pop().expect("the stack has a top");
            if done.owned {
                // SAFETY: a descriptor this walk opened and no one else holds.
                unsafe { libc::close(done.fd) };
            }
            continue;
        };
        let fd = top.fd;
        let mut kind = entry.kind;
        if kind == libc::DT_UNKNOWN {
            match stat_at(fd, &entry.name, libc::AT_SYMLINK_NOFOLLOW) {
                Ok(info) => {
                    kind = kind_of(info.st_mode);
                    entry.info = Some(info);
                }
                Err(error) => {
                    walk.count(os_reason(error));
                    continue;
                }
            }
        }
        if kind == libc::DT_LNK {
            let to_directory = stat_at(fd, &entry.name, 0)
                .map(|info| info.st_mode & libc::S_IFMT == libc::S_IFDIR)
                .unwrap_or(false);
            if to_directory {
                walk.count("symlinked_dir_skipped");
            } else {
                add_odd_file(fd, &top.parts, &entry, true, &mut walk);
            }
        } else if kind == libc::DT_DIR {
            if depth.get() > max_depth {
                walk.count("too_deep");
                continue;
            }
            // SAFETY: `entry.name` is NUL-terminated; the result is checked.
            let child = unsafe { libc::openat(fd, entry.name.as_ptr(), FOLDER_FLAGS) };
            if child < 0 {
                let error = errno();
                walk.count(if error == libc::ENOENT {
                    "vanished"
                } else {
                    "unreadable_dir"
                });
                continue;
            }
            let mut parts = top.parts.clone();
            if !parts.is_empty() {
                parts.push(b'/');
            }
            parts.extend_from_slice(entry.name.to_bytes());
            let rest = enter(child, &parts, &mut walk).into_iter();
            stack.push(Open {
                fd: child,
                owned: true,
                parts,
                rest,
            });
        } else {
            add_odd_file(fd, &top.parts, &entry, false, &mut walk);
        }
    }
    walk
}

/// The walks of the user folders open as `fds`, several at once, in `fds`' order (with `filters`,
/// one per folder, each checks its files against an index).
pub(crate) fn walk_users<'a>(fds: &[RawFd], max_depth: usize, filters: Option<&[Filter<'a>]>) -> Vec<Walk<'a>> {
    let filter = |index: usize| filters.map(|filters| filters[index]);
    let threads = std::thread::available_parallelism()
        .map(usize::from)
        .unwrap_or(1)
        .min(fds.len());
    if threads <= 1 {
        return fds
            .iter()
            .enumerate()
            .map(|(index, fd)| walk_user(*fd, max_depth, filter(index)))
            .collect();
    }
    let next = AtomicUsize::new(0);
    let done: Mutex<Vec<(usize, Walk<'a>)>> = Mutex::new(Vec::with_capacity(fds.len()));
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                let Some(fd) = fds.get(index) else { break };
                let walk = walk_user(*fd, max_depth, filter(index));
                done.lock().expect("no walk panics").push((index, walk));
            });
        }
    });
    let mut done = done.into_inner().expect("no walk panics");
    done.sort_unstable_by_key(|(index, _)| *index);
    done.into_iter().map(|(_, walk)| walk).collect()
}

/// Times in ns as Python ints: as `i64` when they fit (PyO3's `i128` conversion takes several Python
/// operations each under the stable ABI), which every time before the year 2262 does.
fn nanoseconds<'py>(py: Python<'py>, times: &[i128]) -> PyResult<Bound<'py, PyList>> {
    let list = PyList::empty(py);
    for time in times {
        match i64::try_from(*time) {
            Ok(time) => list.append(time)?,
            Err(_) => list.append(*time)?,
        }
    }
    Ok(list)
}

/// For each user folder open as one of `fds` (borrowed), what `scan._walk` finds in it:
/// `(groups, issues)`, each group `(parts, names, sizes, mtimes_ns)` with `parts` and `names`
/// the raw bytes of the folder's path below the user's folder and of the file names, each joined
/// by `/`. The walks run on several threads without the GIL.
#[pyfunction]
pub fn walk_user_folders<'py>(py: Python<'py>, fds: Vec<RawFd>, max_depth: usize) -> PyResult<Bound<'py, PyList>> {
    let walks = py.allow_threads(|| walk_users(&fds, max_depth, None));
    let result = PyList::empty(py);
    for walk in walks {
        result.append(walk_result(py, walk)?)?;
    }
    Ok(result)
}

/// One walk as `walk_user_folders` gives it: `(groups, issues)`.
pub(crate) fn walk_result<'py>(py: Python<'py>, walk: Walk<'_>) -> PyResult<(Bound<'py, PyList>, Bound<'py, PyDict>)> {
    let groups = PyList::empty(py);
    for group in walk.groups {
        let item = (
            PyBytes::new(py, &group.parts),
            PyBytes::new(py, &group.names),
            group.sizes,
            nanoseconds(py, &group.mtimes)?,
        );
        groups.append(item)?;
    }
    let issues = PyDict::new(py);
    for (reason, number) in walk.issues {
        issues.set_item(reason, number)?;
    }
    Ok((groups, issues))
}
