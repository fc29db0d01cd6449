//! Writing an output file (`-o`, `--folded`) as root next to other users
//! without ever following a link they planted.
//!
//! The destination's directory is opened once; everything after is relative
//! to that descriptor (`openat`, `fstatat`, `renameat`), so a directory
//! swapped under us cannot redirect the write. The bytes go to a fresh file
//! with a random name created with `O_CREAT|O_EXCL|O_NOFOLLOW` and mode
//! 0600, are fsynced, and the file is renamed over the destination only when
//! the destination is absent or a regular file (looked at with `lstat`, not
//! `stat`). `rename(2)` replaces a directory entry and never follows a
//! symlink in the last component, so a link appearing between the check and
//! the rename is replaced itself, its target untouched. A regular file that
//! is a hard link to something else is likewise replaced, not written
//! through.
//!
//! What is refused, with a one-line error naming the path and exit code 10:
//! a symbolic link (dangling or looping too), a directory, a block device, a
//! socket. A FIFO is opened with `O_NONBLOCK` (no reader: refused, never a
//! hang). A character device (`-o /dev/null`, a terminal) is written in
//! place: only root can create one, and renaming over `/dev/null` would
//! replace it with a regular file.

use std::ffi::{CString, OsStr};
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Why an output file was not written.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// The destination is of a kind ljleak never writes to.
    #[error("refusing to write {path}: {why}")]
    Refused {
        /// The destination as given.
        path: String,
        /// What it is and what to do.
        why: String,
    },
    /// The OS said no.
    #[error("cannot write {path}: {source}")]
    Io {
        /// The destination as given.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
}

impl OutputError {
    /// The documented exit code.
    pub fn exit_code(&self) -> crate::error::ExitCode {
        match self {
            OutputError::Refused { .. } => crate::error::ExitCode::OutputRefused,
            OutputError::Io { .. } => crate::error::ExitCode::Failure,
        }
    }
}

fn cstr(s: &OsStr) -> std::io::Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))
}

fn last_err() -> std::io::Error {
    std::io::Error::last_os_error()
}

/// Write `bytes` to `path` by the rules of this module.
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<(), OutputError> {
    write_file_with(path, |w| w.write_all(bytes))
}

/// [`write_file`] for output too large to hold in memory (core files,
/// heap snapshots): `render` streams it into the temporary file. A FIFO or
/// character device destination is written in place, so there it renders
/// into memory first.
pub fn write_file_with(
    path: &Path,
    render: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<(), OutputError> {
    let shown = crate::safety::escape::escape_text(&path.to_string_lossy()).into_owned();
    let io = |source: std::io::Error| OutputError::Io {
        path: shown.clone(),
        source,
    };
    let refuse = |why: &str| OutputError::Refused {
        path: shown.clone(),
        why: why.to_string(),
    };
    let name = match path.file_name() {
        Some(n) if n != ".." && n != "." => n,
        _ => return Err(refuse("it names a directory, give a file name")),
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    // The directory itself may be reached through links the operator chose
    // (the kernel's fs.protected_symlinks guards links in sticky dirs).
    let cdir = cstr(dir.as_os_str()).map_err(io)?;
    // SAFETY: plain syscall on a NUL-terminated path; the fd is owned below.
    let dfd = unsafe {
        libc::open(
            cdir.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if dfd < 0 {
        return Err(io(last_err()));
    }
    // SAFETY: dfd is a fresh descriptor we own.
    let dfd = unsafe { OwnedFd::from_raw_fd(dfd) };
    let cname = cstr(name).map_err(io)?;

    // SAFETY: zeroed stat is a valid out-parameter.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid dirfd, NUL-terminated name, valid out pointer.
    let rc = unsafe {
        libc::fstatat(
            dfd.as_raw_fd(),
            cname.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc == 0 {
        match st.st_mode & libc::S_IFMT {
            libc::S_IFREG => {}
            libc::S_IFLNK => {
                return Err(refuse(&link_why(&dfd, &cname)));
            }
            libc::S_IFDIR => return Err(refuse("it is a directory; give a file name")),
            libc::S_IFBLK => return Err(refuse("it is a block device")),
            libc::S_IFSOCK => return Err(refuse("it is a socket")),
            kind @ (libc::S_IFIFO | libc::S_IFCHR) => {
                let mut bytes = Vec::new();
                render(&mut bytes).map_err(io)?;
                return write_in_place(&dfd, &cname, &bytes, kind == libc::S_IFIFO, &shown);
            }
            _ => return Err(refuse("it is not a regular file")),
        }
    } else {
        let e = last_err();
        if e.raw_os_error() != Some(libc::ENOENT) {
            return Err(io(e));
        }
    }

    // A fresh, unguessable temporary name in the same directory (rename
    // needs the same file system); O_EXCL|O_NOFOLLOW never opens anything
    // that already exists, link or not.
    let mut tries = 0;
    let (tmp_name, file) = loop {
        let tmp =
            CString::new(format!(".ljleak-{:016x}.tmp", random_u64())).expect("hex has no NUL");
        // SAFETY: valid dirfd and NUL-terminated name.
        let fd = unsafe {
            libc::openat(
                dfd.as_raw_fd(),
                tmp.as_ptr(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                0o600 as libc::c_uint,
            )
        };
        if fd >= 0 {
            // SAFETY: fresh descriptor we own.
            break (tmp, unsafe { std::fs::File::from_raw_fd(fd) });
        }
        let e = last_err();
        tries += 1;
        if e.raw_os_error() != Some(libc::EEXIST) || tries > 16 {
            return Err(io(e));
        }
    };
    let unlink_tmp = || {
        // SAFETY: valid dirfd and name.
        unsafe { libc::unlinkat(dfd.as_raw_fd(), tmp_name.as_ptr(), 0) };
    };
    let res = {
        let mut w = std::io::BufWriter::with_capacity(1 << 20, &file);
        render(&mut w).and_then(|_| w.flush())
    }
    .and_then(|_| file.sync_all());
    if let Err(e) = res {
        unlink_tmp();
        return Err(io(e));
    }
    drop(file);
    // SAFETY: valid dirfd and names.
    let rc = unsafe {
        libc::renameat(
            dfd.as_raw_fd(),
            tmp_name.as_ptr(),
            dfd.as_raw_fd(),
            cname.as_ptr(),
        )
    };
    if rc != 0 {
        let e = last_err();
        unlink_tmp();
        return Err(io(e));
    }
    Ok(())
}

/// The refusal text for a symlink: where it points, or that it dangles.
fn link_why(dfd: &OwnedFd, name: &CString) -> String {
    let mut buf = [0u8; 4096];
    // SAFETY: valid dirfd, name and buffer of the given length.
    let n = unsafe {
        libc::readlinkat(
            dfd.as_raw_fd(),
            name.as_ptr(),
            buf.as_mut_ptr() as *mut libc::c_char,
            buf.len(),
        )
    };
    let target = if n > 0 {
        crate::safety::escape::escape_text(&String::from_utf8_lossy(&buf[..n as usize]))
            .into_owned()
    } else {
        "?".into()
    };
    // SAFETY: zeroed stat is a valid out-parameter.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid dirfd, name and out pointer.
    let follows = unsafe { libc::fstatat(dfd.as_raw_fd(), name.as_ptr(), &mut st, 0) };
    let state = if follows == 0 {
        String::new()
    } else {
        match last_err().raw_os_error() {
            Some(libc::ELOOP) => " (a symlink loop)".into(),
            Some(libc::ENOENT) => " (dangling)".into(),
            _ => String::new(),
        }
    };
    format!(
        "it is a symbolic link to {target}{state}; ljleak never writes through a link: name the real file"
    )
}

/// FIFOs and character devices: opened where they are, never created,
/// never followed, never blocking on open.
fn write_in_place(
    dfd: &OwnedFd,
    name: &CString,
    bytes: &[u8],
    fifo: bool,
    shown: &str,
) -> Result<(), OutputError> {
    // SAFETY: valid dirfd and NUL-terminated name.
    let fd = unsafe {
        libc::openat(
            dfd.as_raw_fd(),
            name.as_ptr(),
            libc::O_WRONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        let e = last_err();
        if fifo && e.raw_os_error() == Some(libc::ENXIO) {
            return Err(OutputError::Refused {
                path: shown.into(),
                why: "it is a FIFO with no reader (start the reader first)".into(),
            });
        }
        return Err(OutputError::Io {
            path: shown.into(),
            source: e,
        });
    }
    // SAFETY: fresh descriptor we own.
    let mut f = unsafe { std::fs::File::from_raw_fd(fd) };
    // The reader is there: write with ordinary blocking semantics.
    // SAFETY: fcntl on our own descriptor.
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        if fl >= 0 {
            libc::fcntl(fd, libc::F_SETFL, fl & !libc::O_NONBLOCK);
        }
    }
    f.write_all(bytes).map_err(|source| OutputError::Io {
        path: shown.into(),
        source,
    })
}

/// 64 random bits from the kernel (getrandom(2)); falls back to time and
/// PID mixing only if the call is unavailable, which O_EXCL still makes safe.
pub fn random_u64() -> u64 {
    let mut v = [0u8; 8];
    // SAFETY: buffer of 8 writable bytes.
    let n = unsafe { libc::getrandom(v.as_mut_ptr() as *mut libc::c_void, v.len(), 0) };
    if n == 8 {
        return u64::from_ne_bytes(v);
    }
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    t ^ ((std::process::id() as u64) << 32)
}

/// A private directory (mode 0700, random name) removed with everything in
/// it on drop: where child processes leave their files.
pub struct PrivateDir {
    path: std::path::PathBuf,
}

impl PrivateDir {
    /// mkdtemp(3) under `base` (the temp dir when None).
    pub fn new(base: Option<&Path>) -> std::io::Result<PrivateDir> {
        let base = base
            .map(Path::to_path_buf)
            .unwrap_or_else(std::env::temp_dir);
        let mut templ = base.join("ljleak-XXXXXX").into_os_string().into_vec();
        templ.push(0);
        // SAFETY: NUL-terminated writable template, as mkdtemp requires.
        let p = unsafe { libc::mkdtemp(templ.as_mut_ptr() as *mut libc::c_char) };
        if p.is_null() {
            return Err(last_err());
        }
        templ.pop();
        Ok(PrivateDir {
            path: std::path::PathBuf::from(std::ffi::OsString::from_vec(templ)),
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

use std::os::unix::ffi::OsStringExt;

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};

    fn scratch() -> PrivateDir {
        PrivateDir::new(None).unwrap()
    }

    #[test]
    fn regular_files_are_replaced_owner_only() {
        let d = scratch();
        let p = d.path().join("a.json");
        write_file(&p, b"one").unwrap();
        write_file(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // No temp file left behind.
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
        let m = std::fs::metadata(d.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(m, 0o700);
    }

    #[test]
    fn links_of_every_kind_are_refused_and_left_alone() {
        let d = scratch();
        let target = d.path().join("target");
        std::fs::write(&target, "keep").unwrap();
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let dangling = d.path().join("dangling");
        std::os::unix::fs::symlink(d.path().join("nowhere"), &dangling).unwrap();
        let loop_a = d.path().join("loop");
        std::os::unix::fs::symlink(&loop_a, &loop_a).unwrap();
        for (p, word) in [
            (&link, "symbolic link"),
            (&dangling, "dangling"),
            (&loop_a, "loop"),
        ] {
            let e = write_file(p, b"evil").unwrap_err();
            let msg = e.to_string();
            assert!(msg.contains(&*p.to_string_lossy()), "{msg}");
            assert!(msg.contains(word), "{msg}");
            assert_eq!(e.exit_code(), crate::error::ExitCode::OutputRefused);
        }
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
        assert!(!d.path().join("nowhere").exists());
        assert!(std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
    }

    #[test]
    fn fifo_without_reader_is_refused_at_once_and_with_one_is_written() {
        let d = scratch();
        let fifo = d.path().join("fifo");
        let c = CString::new(fifo.as_os_str().as_bytes()).unwrap();
        // SAFETY: NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let t = std::time::Instant::now();
        let e = write_file(&fifo, b"x").unwrap_err();
        assert!(e.to_string().contains("no reader"), "{e}");
        assert!(t.elapsed() < std::time::Duration::from_secs(1));
        let reader = {
            let fifo = fifo.clone();
            std::thread::spawn(move || std::fs::read(fifo).unwrap())
        };
        // Let the reader open its end first.
        let mut ok = false;
        for _ in 0..200 {
            if write_file(&fifo, b"abc").is_ok() {
                ok = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(ok);
        assert_eq!(reader.join().unwrap(), b"abc");
        assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo());
    }

    #[test]
    fn directories_are_refused_and_dev_null_written_in_place() {
        let d = scratch();
        let e = write_file(d.path(), b"x").unwrap_err();
        assert!(e.to_string().contains("directory"), "{e}");
        write_file(Path::new("/dev/null"), b"x").unwrap();
        assert!(std::fs::metadata("/dev/null")
            .unwrap()
            .file_type()
            .is_char_device());
    }
}
