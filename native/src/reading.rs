//! Opening and reading a session file as `sessionpipe_runner.reading.read_snapshot` does, with the
//! GIL released twice per file instead of at each of its system calls.
//!
//! The Python reading stays the reference: the same calls with the same flags (the walk down from
//! the sessions root one component at a time, each `openat` relative to its folder with
//! `O_NOFOLLOW`; `fstat` of the open file; reads of the size it had then), the same errors. What is
//! left to Python is what needs Python: the exceptions, the check of a last line without its
//! newline, the hash, and a file longer than a line may be (read in bounded pieces from the
//! descriptor this hands back).
//!
//! Worker threads read files while the runner's thread writes to DuckDB: in Python every `open`,
//! `fstat`, `read` and `close` released the GIL and took it back, and each took-back waited for
//! whichever thread held it then (bench/README.md, "Session 9: cold run").

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use memchr::memchr_iter;
use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

const ROOT_FLAGS: libc::c_int = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC;
const FOLDER_FLAGS: libc::c_int = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
const FILE_FLAGS: libc::c_int = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC;

/// What [`read_below`] found: read whole, too long to read whole, or why it could not be read.
pub(crate) const READ: i32 = 0;
pub(crate) const TOO_LONG: i32 = 1;
pub(crate) const OS_ERROR: i32 = 2;
pub(crate) const SYMLINK: i32 = 3;
pub(crate) const NOT_A_FILE: i32 = 4;
/// What `usage_files` (`lib.rs`) did with a file it read: its last line has no newline and is not
/// blank, so whether it is complete (a whole JSON object) or still being written is the Python
/// reading's call.
pub(crate) const UNDECIDED_TAIL: i32 = 5;

enum Refused {
    Os(i32),
    Symlink,
    NotAFile,
}

impl Refused {
    /// What was found and the errno of the `OSError` the Python reading raises for it.
    fn code(&self) -> (i32, i32) {
        match self {
            Refused::Os(error) => (OS_ERROR, *error),
            Refused::Symlink => (SYMLINK, libc::ELOOP),
            Refused::NotAFile => (NOT_A_FILE, libc::EINVAL),
        }
    }
}

/// Whether a file of `size` bytes is read whole (else it is `TOO_LONG`).
fn whole(size: i64, limit: u64) -> bool {
    size >= 0 && size as u64 <= limit
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn retrying(call: impl Fn() -> libc::c_int) -> Result<libc::c_int, i32> {
    loop {
        let done = call();
        if done >= 0 {
            return Ok(done);
        }
        let error = errno();
        if error != libc::EINTR {
            return Err(error); // Python's os.open retries on EINTR too (PEP 475)
        }
    }
}

/// `Symlink` if `name` in `parent` is a symlink, else the error itself (`reading._refuse_symlink`).
fn refuse_symlink(error: i32, name: &CString, parent: libc::c_int) -> Refused {
    let mut info = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `name` is NUL-terminated; `info` is read only after a successful call wrote it.
    let done = unsafe { libc::fstatat(parent, name.as_ptr(), info.as_mut_ptr(), libc::AT_SYMLINK_NOFOLLOW) };
    if done == 0 && unsafe { info.assume_init() }.st_mode & libc::S_IFMT == libc::S_IFLNK {
        Refused::Symlink
    } else {
        Refused::Os(error)
    }
}

fn close(fd: libc::c_int) {
    // SAFETY: `fd` is a descriptor this module opened and closes once.
    unsafe { libc::close(fd) };
}

/// `reading._open_walking`: the file's descriptor, reached from `root` without following a symlink.
fn open_walking(root: &CString, parts: &[CString]) -> Result<libc::c_int, Refused> {
    // SAFETY (each call below): the names are NUL-terminated; the descriptors are this function's.
    let mut folder = retrying(|| unsafe { libc::open(root.as_ptr(), ROOT_FLAGS) }).map_err(Refused::Os)?;
    let (last, folders) = parts.split_last().expect("at least the file's name");
    for name in folders {
        match retrying(|| unsafe { libc::openat(folder, name.as_ptr(), FOLDER_FLAGS) }) {
            Ok(child) => {
                close(folder);
                folder = child;
            }
            Err(error) => {
                let refused = refuse_symlink(error, name, folder);
                close(folder);
                return Err(refused);
            }
        }
    }
    let opened = retrying(|| unsafe { libc::openat(folder, last.as_ptr(), FILE_FLAGS) })
        .map_err(|error| refuse_symlink(error, last, folder));
    close(folder);
    opened
}

/// `reading.open_session_file`: the descriptor, its size and its mtime in ns; a regular file only.
fn open_file(root: &CString, parts: &[CString]) -> Result<(libc::c_int, i64, i128), Refused> {
    let fd = open_walking(root, parts)?;
    let mut info = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `fd` is open; `info` is read only after a successful call wrote it.
    if unsafe { libc::fstat(fd, info.as_mut_ptr()) } != 0 {
        let error = errno();
        close(fd);
        return Err(Refused::Os(error));
    }
    let info = unsafe { info.assume_init() };
    if info.st_mode & libc::S_IFMT != libc::S_IFREG {
        close(fd);
        return Err(Refused::NotAFile);
    }
    let mtime = i128::from(info.st_mtime) * 1_000_000_000 + i128::from(info.st_mtime_nsec);
    Ok((fd, info.st_size, mtime))
}

/// `reading._read`: up to `buffer.len()` bytes from `fd`'s position (fewer at the end of the file).
fn read_into(fd: libc::c_int, buffer: &mut [u8]) -> Result<usize, i32> {
    let mut got = 0;
    while got < buffer.len() {
        let rest = &mut buffer[got..];
        // SAFETY: `rest` is writable for its length.
        let read = unsafe { libc::read(fd, rest.as_mut_ptr().cast(), rest.len()) };
        if read < 0 {
            let error = errno();
            if error == libc::EINTR {
                continue;
            }
            return Err(error);
        }
        if read == 0 {
            break;
        }
        got += read as usize;
    }
    Ok(got)
}

fn c_name(path: &Path) -> PyResult<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| PyValueError::new_err("embedded null byte"))
}

/// A file's root and the parts below it as C strings; `ValueError` for no part or a NUL byte.
pub(crate) fn c_names(root: &Path, parts: &[PathBuf]) -> PyResult<(CString, Vec<CString>)> {
    if parts.is_empty() {
        return Err(PyValueError::new_err("no path below the root"));
    }
    let parts = parts.iter().map(|part| c_name(part)).collect::<PyResult<Vec<_>>>()?;
    Ok((c_name(root)?, parts))
}

/// Open the file at `parts` below `root` as `reading.open_session_file` does, and read it whole if
/// it is at most `limit` bytes long.
///
/// Returns `(what, number, size, mtime_ns, data, newlines)`. `what` is 0: read whole, `data` the
/// bytes read (the file's size when opened, fewer if it shrank), `newlines` how many `\n` they hold,
/// the descriptor closed; 1: longer than `limit`, `number` the open descriptor (the caller reads
/// and closes it); 2: an `OSError`, `number` its errno; 3: a symlink below the root; 4: not a
/// regular file.
#[pyfunction]
#[allow(clippy::type_complexity)]
pub fn read_below<'py>(
    py: Python<'py>,
    root: PathBuf,
    parts: Vec<PathBuf>,
    limit: u64,
) -> PyResult<(i32, i64, i64, i128, Option<Bound<'py, PyBytes>>, usize)> {
    let (root, parts) = c_names(&root, &parts)?;
    let opened = py.allow_threads(|| open_file(&root, &parts));
    let (fd, size, mtime) = match opened {
        Ok(found) => found,
        Err(refused) => {
            let (what, error) = refused.code();
            return Ok((what, i64::from(error), 0, 0, None, 0));
        }
    };
    if !whole(size, limit) {
        return Ok((TOO_LONG, i64::from(fd), size, mtime, None, 0));
    }
    let mut outcome: Result<(usize, usize), i32> = Ok((0, 0));
    let whole = PyBytes::new_with(py, size as usize, |buffer| {
        outcome = py.allow_threads(|| {
            let got = read_into(fd, buffer);
            close(fd);
            let got = got?;
            Ok((got, memchr_iter(b'\n', &buffer[..got]).count()))
        });
        Ok(())
    })?;
    match outcome {
        Ok((got, newlines)) => {
            let data = if got == size as usize {
                whole
            } else {
                PyBytes::new(py, &whole.as_bytes()[..got]) // shrank while being read
            };
            Ok((READ, -1, got as i64, mtime, Some(data), newlines))
        }
        Err(error) => Err(PyOSError::new_err((
            error,
            std::io::Error::from_raw_os_error(error).to_string(),
        ))),
    }
}

/// One file of [`read_files`]: where its bytes are in the shared buffer, or why there are none.
pub(crate) struct FileRead {
    /// [`READ`], [`TOO_LONG`] (not read: the caller reads it its own way), or why it could not be read.
    pub what: i32,
    /// The errno of an `OSError`.
    pub number: i64,
    pub start: usize,
    /// Bytes read: the size the file had when opened, or fewer if it shrank while being read.
    pub length: usize,
    pub mtime_ns: i128,
}

/// Open and read `files` (each a root and the parts below it) as [`read_below`] does, one after
/// another into one buffer, with no Python object per file: for a caller that releases the GIL once
/// for many files. A file longer than `limit` is opened, not read (`TOO_LONG`, descriptor closed).
pub(crate) fn read_files(files: &[(CString, Vec<CString>)], limit: u64) -> (Vec<u8>, Vec<FileRead>) {
    let opened: Vec<_> = files.iter().map(|(root, parts)| open_file(root, parts)).collect();
    let total: usize = opened
        .iter()
        .filter_map(|found| match found {
            Ok((_, size, _)) if whole(*size, limit) => Some(*size as usize),
            _ => None,
        })
        .sum();
    let mut buffer = vec![0u8; total];
    let mut start = 0;
    let mut reads = Vec::with_capacity(opened.len());
    for found in opened {
        let refused = |what: i32, number: i32| FileRead {
            what,
            number: i64::from(number),
            start: 0,
            length: 0,
            mtime_ns: 0,
        };
        reads.push(match found {
            Ok((fd, size, mtime_ns)) if whole(size, limit) => {
                let got = read_into(fd, &mut buffer[start..start + size as usize]);
                close(fd);
                match got {
                    Ok(got) => {
                        let read = FileRead {
                            what: READ,
                            number: -1,
                            start,
                            length: got,
                            mtime_ns,
                        };
                        start += size as usize;
                        read
                    }
                    Err(error) => refused(OS_ERROR, error),
                }
            }
            Ok((fd, _, _)) => {
                close(fd);
                refused(TOO_LONG, 0)
            }
            Err(refusal) => {
                let (what, error) = refusal.code();
                refused(what, error)
            }
        });
    }
    (buffer, reads)
}
