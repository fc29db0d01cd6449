//! Reading target memory through one small trait, so the LuaJIT model and the
//! heap walker work the same on a live process, a copied heap image, or a
//! byte buffer in a unit test.

/// A failed read. Cheap to copy: the walker produces many of these on a
/// corrupt heap and turns them into warnings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MemError {
    /// Part of `[addr, addr+len)` is not in readable memory (or not in the copy).
    #[error("address {addr:#x} (+{len}) is not readable")]
    Unmapped {
        /// Start of the failed read.
        addr: u64,
        /// Its length.
        len: usize,
    },
    /// The OS refused the read for another reason (errno).
    #[error("reading {addr:#x}: os error {errno}")]
    Os {
        /// Start of the failed read.
        addr: u64,
        /// errno.
        errno: i32,
    },
}

/// Something that can be read like target memory.
pub trait Memory {
    /// Fill `buf` from AVMA `addr`, entirely or not at all.
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemError>;

    /// Borrow `len` bytes at `addr` without copying, when the memory is
    /// already in this process (a heap image). Live memory returns `None`.
    fn borrow(&self, _addr: u64, _len: usize) -> Option<&[u8]> {
        None
    }

    /// Hint that `addr` will be read soon (list walks chase pointers, so
    /// fetching the next object while sizing this one hides a cache miss).
    #[inline]
    fn prefetch(&self, _addr: u64) {}
}

/// Little-endian typed reads on any [`Memory`].
pub trait ReadExt: Memory {
    /// Read `N` bytes.
    #[inline]
    fn bytes<const N: usize>(&self, addr: u64) -> Result<[u8; N], MemError> {
        if let Some(s) = self.borrow(addr, N) {
            let mut b = [0u8; N];
            b.copy_from_slice(s);
            return Ok(b);
        }
        let mut b = [0u8; N];
        self.read(addr, &mut b)?;
        Ok(b)
    }
    /// Read a u8.
    #[inline]
    fn u8(&self, addr: u64) -> Result<u8, MemError> {
        Ok(self.bytes::<1>(addr)?[0])
    }
    /// Read a little-endian u16.
    #[inline]
    fn u16(&self, addr: u64) -> Result<u16, MemError> {
        Ok(u16::from_le_bytes(self.bytes(addr)?))
    }
    /// Read a little-endian u32.
    #[inline]
    fn u32(&self, addr: u64) -> Result<u32, MemError> {
        Ok(u32::from_le_bytes(self.bytes(addr)?))
    }
    /// Read a little-endian u64.
    #[inline]
    fn u64(&self, addr: u64) -> Result<u64, MemError> {
        Ok(u64::from_le_bytes(self.bytes(addr)?))
    }
    /// Read an unsigned integer of `size` bytes (1, 2, 4 or 8).
    #[inline]
    fn uint(&self, addr: u64, size: u64) -> Result<u64, MemError> {
        match size {
            1 => self.u8(addr).map(u64::from),
            2 => self.u16(addr).map(u64::from),
            4 => self.u32(addr).map(u64::from),
            _ => self.u64(addr),
        }
    }
    /// Read `len` bytes into a new vector.
    fn vec(&self, addr: u64, len: usize) -> Result<Vec<u8>, MemError> {
        if let Some(s) = self.borrow(addr, len) {
            return Ok(s.to_vec());
        }
        let mut v = vec![0u8; len];
        self.read(addr, &mut v)?;
        Ok(v)
    }
}

impl<M: Memory + ?Sized> ReadExt for M {}

impl<M: Memory + ?Sized> Memory for &M {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemError> {
        (**self).read(addr, buf)
    }
    fn borrow(&self, addr: u64, len: usize) -> Option<&[u8]> {
        (**self).borrow(addr, len)
    }
    fn prefetch(&self, addr: u64) {
        (**self).prefetch(addr)
    }
}

/// Memory of a live process, read with `process_vm_readv`.
#[derive(Debug, Clone, Copy)]
pub struct ProcessMemory {
    pid: i32,
}

impl ProcessMemory {
    /// Memory of `pid`.
    pub fn new(pid: i32) -> Self {
        ProcessMemory { pid }
    }

    /// The process.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Read many ranges with as few syscalls as possible. Each element of
    /// `parts` is (remote AVMA, local buffer). Returns how many leading
    /// parts were read completely; reading stops at the first part that fails.
    pub fn read_many(&self, parts: &mut [(u64, &mut [u8])]) -> Result<usize, MemError> {
        const BATCH: usize = 512; // well under IOV_MAX (1024)
        let mut done = 0;
        while done < parts.len() {
            let end = (done + BATCH).min(parts.len());
            let mut local: Vec<libc::iovec> = Vec::with_capacity(end - done);
            let mut remote: Vec<libc::iovec> = Vec::with_capacity(end - done);
            let mut want = 0usize;
            for (addr, buf) in parts[done..end].iter_mut() {
                local.push(libc::iovec {
                    iov_base: buf.as_mut_ptr().cast(),
                    iov_len: buf.len(),
                });
                remote.push(libc::iovec {
                    iov_base: *addr as *mut libc::c_void,
                    iov_len: buf.len(),
                });
                want += buf.len();
            }
            // SAFETY: every local iovec points into a live, exclusively
            // borrowed buffer of the stated length; remote iovecs are only
            // addresses in the other process and are checked by the kernel.
            let n = unsafe {
                libc::process_vm_readv(
                    self.pid,
                    local.as_ptr(),
                    local.len() as libc::c_ulong,
                    remote.as_ptr(),
                    remote.len() as libc::c_ulong,
                    0,
                )
            };
            if n < 0 {
                let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
                if errno == libc::EFAULT {
                    return Ok(done);
                }
                return Err(MemError::Os {
                    addr: parts[done].0,
                    errno,
                });
            }
            let n = n as usize;
            if n < want {
                // Count the parts that were read whole.
                let mut acc = 0;
                for (_, buf) in parts[done..end].iter() {
                    if acc + buf.len() > n {
                        break;
                    }
                    acc += buf.len();
                    done += 1;
                }
                return Ok(done);
            }
            done = end;
        }
        Ok(done)
    }
}

impl Memory for ProcessMemory {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemError> {
        let len = buf.len();
        if len == 0 {
            return Ok(());
        }
        let mut parts = [(addr, buf)];
        match self.read_many(&mut parts)? {
            1 => Ok(()),
            _ => Err(MemError::Unmapped { addr, len }),
        }
    }
}

/// A few bytes already borrowed from a larger [`Memory`] (typically one
/// object's header), with reads outside them passed through: decoding several
/// fields of one object then costs one lookup instead of one per field.
pub struct Window<'a, M: ?Sized> {
    base: u64,
    data: &'a [u8],
    inner: &'a M,
}

impl<'a, M: Memory + ?Sized> Window<'a, M> {
    /// Borrow `len` bytes at `base` from `inner`, or `None` when they are not
    /// in one piece there (use `inner` directly then).
    #[inline]
    pub fn new(inner: &'a M, base: u64, len: usize) -> Option<Self> {
        let data = inner.borrow(base, len)?;
        Some(Window { base, data, inner })
    }
}

impl<M: Memory + ?Sized> Memory for Window<'_, M> {
    #[inline]
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemError> {
        match self.borrow(addr, buf.len()) {
            Some(s) => {
                buf.copy_from_slice(s);
                Ok(())
            }
            None => self.inner.read(addr, buf),
        }
    }

    #[inline]
    fn borrow(&self, addr: u64, len: usize) -> Option<&[u8]> {
        let off = addr.wrapping_sub(self.base) as usize;
        match off.checked_add(len) {
            Some(end) if end <= self.data.len() => Some(&self.data[off..end]),
            _ => self.inner.borrow(addr, len),
        }
    }
}

/// A byte buffer standing at a fixed address: for unit tests and for small
/// copies.
#[derive(Debug, Clone)]
pub struct BytesAt {
    /// AVMA of `data[0]`.
    pub base: u64,
    /// The bytes.
    pub data: Vec<u8>,
}

/// Visit `count` elements of `elem` bytes at `addr`, in order, passing each
/// one's index and bytes. One borrowed slice when the memory allows it;
/// otherwise reads of at most 256 elements through a fixed buffer, so a
/// length read from a damaged heap never turns into a huge allocation.
pub fn for_each_elem<M: Memory + ?Sized>(
    m: &M,
    addr: u64,
    count: u64,
    elem: usize,
    mut f: impl FnMut(u64, &[u8]),
) -> Result<(), MemError> {
    const BATCH: u64 = 256;
    let total = count
        .checked_mul(elem as u64)
        .ok_or(MemError::Unmapped { addr, len: 0 })?;
    if let Some(b) = usize::try_from(total).ok().and_then(|t| m.borrow(addr, t)) {
        for (i, e) in b.chunks_exact(elem).enumerate() {
            f(i as u64, e);
        }
        return Ok(());
    }
    let mut buf = vec![0u8; BATCH as usize * elem];
    let mut i = 0;
    while i < count {
        let n = (count - i).min(BATCH);
        let part = &mut buf[..n as usize * elem];
        m.read(addr + i * elem as u64, part)?;
        for (k, e) in part.chunks_exact(elem).enumerate() {
            f(i + k as u64, e);
        }
        i += n;
    }
    Ok(())
}

/// `read` for memory that lives in this process: copy what `borrow` lends.
pub fn read_borrowed<M: Memory + ?Sized>(m: &M, addr: u64, buf: &mut [u8]) -> Result<(), MemError> {
    let s = m.borrow(addr, buf.len()).ok_or(MemError::Unmapped {
        addr,
        len: buf.len(),
    })?;
    buf.copy_from_slice(s);
    Ok(())
}

impl Memory for BytesAt {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemError> {
        read_borrowed(self, addr, buf)
    }
    fn borrow(&self, addr: u64, len: usize) -> Option<&[u8]> {
        let off = addr.checked_sub(self.base)? as usize;
        self.data.get(off..off.checked_add(len)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_reads_are_little_endian_and_bounded() {
        let m = BytesAt {
            base: 0x1000,
            data: (0u8..16).collect(),
        };
        assert_eq!(m.u8(0x1001).unwrap(), 1);
        assert_eq!(m.u16(0x1002).unwrap(), 0x0302);
        assert_eq!(m.u32(0x1004).unwrap(), 0x07060504);
        assert_eq!(m.u64(0x1008).unwrap(), 0x0f0e0d0c0b0a0908);
        assert!(m.u64(0x1009).is_err());
        assert!(m.u8(0xfff).is_err());
        assert!(m.u8(u64::MAX).is_err());
    }

    #[test]
    fn reads_own_process() {
        let v: Vec<u64> = vec![0x1122334455667788, 42];
        let pm = ProcessMemory::new(std::process::id() as i32);
        assert_eq!(pm.u64(v.as_ptr() as u64).unwrap(), 0x1122334455667788);
        assert!(pm.u64(8).is_err(), "page 0 is never mapped");
    }
}
