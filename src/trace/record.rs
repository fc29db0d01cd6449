//! Decoding perf ring-buffer records into typed values with explicit
//! little-endian reads. Pure functions over byte slices, so they are tested
//! on synthetic records.

use super::perf::sample;

/// PERF_RECORD_LOST.
const RECORD_LOST: u32 = 2;
/// PERF_RECORD_THROTTLE.
const RECORD_THROTTLE: u32 = 5;
/// PERF_RECORD_SAMPLE.
const RECORD_SAMPLE: u32 = 9;

/// x86-64 perf register numbers (arch/x86/include/uapi/asm/perf_regs.h).
pub mod reg {
    /// rax.
    pub const AX: u32 = 0;
    /// rbx.
    pub const BX: u32 = 1;
    /// r8 (r9..r15 follow).
    pub const R8: u32 = 16;
    /// r15.
    pub const R15: u32 = 23;
    /// rcx.
    pub const CX: u32 = 2;
    /// rdx.
    pub const DX: u32 = 3;
    /// rsi.
    pub const SI: u32 = 4;
    /// rdi.
    pub const DI: u32 = 5;
    /// rbp.
    pub const BP: u32 = 6;
    /// rsp.
    pub const SP: u32 = 7;
    /// rip.
    pub const IP: u32 = 8;
}

/// The registers ljleak samples: arguments, return value, what the
/// unwinder starts from, and every general register (USDT arguments may
/// live in any of them).
pub const REGS_MASK: u64 = (1 << reg::AX)
    | (1 << reg::BX)
    | (0xff << reg::R8)
    | (1 << reg::CX)
    | (1 << reg::DX)
    | (1 << reg::SI)
    | (1 << reg::DI)
    | (1 << reg::BP)
    | (1 << reg::SP)
    | (1 << reg::IP);

/// Sampled user registers (0 when not sampled).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Regs {
    /// rax (return value).
    pub ax: u64,
    /// rcx (4th argument).
    pub cx: u64,
    /// rdx (3rd argument).
    pub dx: u64,
    /// rsi (2nd argument).
    pub si: u64,
    /// rdi (1st argument).
    pub di: u64,
    /// rbp.
    pub bp: u64,
    /// rsp.
    pub sp: u64,
    /// rip.
    pub ip: u64,
    /// rbx.
    pub bx: u64,
    /// r8..r15.
    pub r: [u64; 8],
}

/// One PERF_RECORD_SAMPLE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample<'a> {
    /// Event id (PERF_SAMPLE_IDENTIFIER).
    pub id: u64,
    /// Thread.
    pub tid: u32,
    /// Timestamp (ns, perf clock).
    pub time: u64,
    /// Registers.
    pub regs: Regs,
    /// The copied user stack starting at `regs.sp` (only the valid part).
    pub stack: &'a [u8],
    /// The stack copy was cut short of what was asked (deep stack).
    pub stack_full: bool,
}

/// A decoded record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record<'a> {
    /// A probe hit.
    Sample(Sample<'a>),
    /// The kernel dropped this many records (ring full).
    Lost(u64),
    /// The kernel throttled the event.
    Throttle,
    /// Anything else.
    Other(u32),
}

/// Why a record did not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The record ends before a field.
    #[error("perf record truncated")]
    Truncated,
    /// A sample from an event we did not open.
    #[error("sample from unknown event id {0}")]
    UnknownId(u64),
}

struct Cursor<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn u64(&mut self) -> Result<u64, DecodeError> {
        let s = self
            .b
            .get(self.pos..self.pos + 8)
            .ok_or(DecodeError::Truncated)?;
        self.pos += 8;
        Ok(u64::from_le_bytes(s.try_into().expect("8 bytes")))
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let s = self
            .b
            .get(self.pos..self.pos + n)
            .ok_or(DecodeError::Truncated)?;
        self.pos += n;
        Ok(s)
    }
}

/// Decode one record. `sample_type_of` gives the sample_type and regs mask
/// of the event a sample's identifier names.
pub fn decode<'a>(
    rec: &'a [u8],
    sample_type_of: impl Fn(u64) -> Option<(u64, u64)>,
) -> Result<Record<'a>, DecodeError> {
    if rec.len() < 8 {
        return Err(DecodeError::Truncated);
    }
    let ty = u32::from_le_bytes(rec[0..4].try_into().expect("4 bytes"));
    let mut c = Cursor { b: rec, pos: 8 };
    match ty {
        RECORD_LOST => {
            let _id = c.u64()?;
            Ok(Record::Lost(c.u64()?))
        }
        RECORD_THROTTLE => Ok(Record::Throttle),
        RECORD_SAMPLE => {
            let id = c.u64()?;
            let (st, mask) = sample_type_of(id).ok_or(DecodeError::UnknownId(id))?;
            decode_sample(&mut c, id, st, mask).map(Record::Sample)
        }
        other => Ok(Record::Other(other)),
    }
}

fn decode_sample<'a>(
    c: &mut Cursor<'a>,
    id: u64,
    st: u64,
    mask: u64,
) -> Result<Sample<'a>, DecodeError> {
    let mut s = Sample {
        id,
        tid: 0,
        time: 0,
        regs: Regs::default(),
        stack: &[],
        stack_full: false,
    };
    // Field order of perf_output_sample() in kernel/events/core.c.
    if st & sample::IP != 0 {
        s.regs.ip = c.u64()?;
    }
    if st & sample::TID != 0 {
        let v = c.u64()?;
        s.tid = (v >> 32) as u32;
    }
    if st & sample::TIME != 0 {
        s.time = c.u64()?;
    }
    if st & sample::REGS_USER != 0 {
        let abi = c.u64()?;
        if abi != 0 {
            for bit in 0..64u32 {
                if mask & (1 << bit) == 0 {
                    continue;
                }
                let v = c.u64()?;
                let r = &mut s.regs;
                match bit {
                    reg::AX => r.ax = v,
                    reg::CX => r.cx = v,
                    reg::DX => r.dx = v,
                    reg::SI => r.si = v,
                    reg::DI => r.di = v,
                    reg::BP => r.bp = v,
                    reg::SP => r.sp = v,
                    reg::IP => r.ip = v,
                    reg::BX => r.bx = v,
                    reg::R8..=reg::R15 => r.r[(bit - reg::R8) as usize] = v,
                    _ => {}
                }
            }
        }
    }
    if st & sample::STACK_USER != 0 {
        let size = c.u64()? as usize;
        if size > 0 {
            let data = c.take(size)?;
            let dyn_size = (c.u64()? as usize).min(size);
            s.stack = &data[..dyn_size];
            s.stack_full = dyn_size == size;
        }
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(ty: u32, body: &[u64], extra: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        let size = 8 + body.len() * 8 + extra.len();
        v.extend_from_slice(&ty.to_le_bytes());
        v.extend_from_slice(&0u16.to_le_bytes());
        v.extend_from_slice(&(size as u16).to_le_bytes());
        for b in body {
            v.extend_from_slice(&b.to_le_bytes());
        }
        v.extend_from_slice(extra);
        v
    }

    #[test]
    fn sample_with_regs_and_stack() {
        let st = sample::IDENTIFIER
            | sample::IP
            | sample::TID
            | sample::TIME
            | sample::REGS_USER
            | sample::STACK_USER;
        // id, ip, pid/tid, time, abi, 8 regs (ax cx dx si di bp sp ip), stack size
        let mut body = vec![7, 0x1000, (42u64 << 32) | 41, 999, 2];
        // ax bx cx dx si di bp sp ip r8..r15
        body.extend_from_slice(&[1, 11, 2, 3, 4, 5, 6, 0x7ff0, 0x1000]);
        body.extend_from_slice(&[8, 9, 10, 11, 12, 13, 14, 15]);
        body.push(16);
        let mut extra = vec![0xaa; 16];
        extra.extend_from_slice(&8u64.to_le_bytes());
        let r = rec(RECORD_SAMPLE, &body, &extra);
        let Record::Sample(s) = decode(&r, |id| (id == 7).then_some((st, REGS_MASK))).unwrap()
        else {
            panic!("not a sample")
        };
        assert_eq!(s.tid, 42);
        assert_eq!(s.time, 999);
        assert_eq!(s.regs.di, 5);
        assert_eq!(s.regs.cx, 2);
        assert_eq!(s.regs.sp, 0x7ff0);
        assert_eq!(s.regs.bx, 11);
        assert_eq!(s.regs.r[7], 15);
        assert_eq!(s.stack.len(), 8);
        assert!(!s.stack_full);
    }

    #[test]
    fn lost_and_errors() {
        let r = rec(RECORD_LOST, &[1, 123], &[]);
        assert_eq!(decode(&r, |_| None).unwrap(), Record::Lost(123));
        let r = rec(RECORD_SAMPLE, &[5], &[]);
        assert_eq!(decode(&r, |_| None).unwrap_err(), DecodeError::UnknownId(5));
        let st = sample::IDENTIFIER | sample::TIME;
        let r = rec(RECORD_SAMPLE, &[5], &[]);
        assert_eq!(
            decode(&r, |_| Some((st, 0))).unwrap_err(),
            DecodeError::Truncated
        );
    }
}
