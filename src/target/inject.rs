//! Running one system call in a paused thread of the target, by registers
//! only: save the thread's registers, point its instruction pointer at a
//! `syscall` instruction already in its libc text, run it to the system
//! call's exit under `PTRACE_SYSCALL`, and restore the registers. Nothing is
//! written to the target's memory.
//!
//! The `syscall` used is one inside libc's `_exit`, chosen because the
//! instructions after it, run by a child of a `clone` (where the result is
//! 0), can only reach `exit`/`exit_group`: that is checked by emulating them
//! before anything is injected. If ljleak dies before it has set
//! `PTRACE_O_EXITKILL` on a new child, the child exits by itself.

use std::time::{Duration, Instant};

use iced_x86::{Code, Decoder, DecoderOptions, Mnemonic, OpKind, Register};
use nix::errno::Errno;
use nix::libc::user_regs_struct;
use nix::sys::ptrace;
use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use super::elf::ElfFile;
use super::maps::Maps;
use super::mem::{Memory, ProcessMemory};

/// x86_64 system call numbers used here.
pub mod nr {
    /// clone(flags, newsp, parent_tid, child_tid, tls).
    pub const CLONE: u64 = 56;
    /// exit(code): the calling thread.
    pub const EXIT: u64 = 60;
    /// wait4(pid, status, options, rusage).
    pub const WAIT4: u64 = 61;
    /// restart_syscall(): what -ERESTART_RESTARTBLOCK resumes as.
    pub const RESTART_SYSCALL: u64 = 219;
    /// exit_group(code).
    pub const EXIT_GROUP: u64 = 231;
}

/// `__WALL` for wait4: any child, whatever its exit signal.
pub const WALL: u64 = 0x4000_0000;

/// Why an injection could not be done.
#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    /// No libc, or no `_exit` whose code is the expected shape.
    #[error("no safe syscall instruction found in the target's libc ({0})")]
    NoSite(String),
    /// A ptrace request failed.
    #[error("{what}: {errno}")]
    Ptrace {
        /// The request.
        what: &'static str,
        /// Its error.
        errno: Errno,
    },
    /// The thread did not reach the expected stop in time, or vanished.
    #[error("thread {tid}: {what}")]
    Lost {
        /// The thread.
        tid: i32,
        /// What happened.
        what: String,
    },
}

fn pt(what: &'static str) -> impl FnOnce(Errno) -> InjectError {
    move |errno| InjectError::Ptrace { what, errno }
}

/// A `syscall` instruction in the target's libc text.
#[derive(Debug, Clone, Copy)]
pub struct Site {
    /// AVMA of the 2-byte `syscall` instruction.
    pub addr: u64,
    /// The value to give `rdx` so the code after it exits (the register
    /// the code moves into `eax` before its next `syscall`).
    pub rdx: u64,
}

/// Find a `syscall` in libc's `_exit` after which a clone child (rax = 0,
/// every other register as injected) can only exit.
pub fn find_site(pid: i32, maps: &Maps) -> Result<Site, InjectError> {
    let libc = crate::trace::probes::find_libc(pid, maps)
        .ok_or_else(|| InjectError::NoSite("no libc mapped".into()))?;
    site_in(pid, maps, &libc)
}

fn site_in(pid: i32, maps: &Maps, libc: &ElfFile) -> Result<Site, InjectError> {
    let (svma, _) = libc
        .symbol("_exit", true)
        .ok_or_else(|| InjectError::NoSite("libc exports no _exit".into()))?;
    let bias = libc
        .bias(maps)
        .ok_or_else(|| InjectError::NoSite("libc load address unknown".into()))?;
    let start = svma.wrapping_add(bias);
    match maps.find(start) {
        Some(m) if m.exec => {}
        _ => {
            return Err(InjectError::NoSite(
                "_exit is not in executable memory".into(),
            ))
        }
    }
    let mut code = vec![0u8; 128];
    ProcessMemory::new(pid)
        .read(start, &mut code)
        .map_err(|e| InjectError::NoSite(format!("reading _exit: {e}")))?;
    choose(&code, start)
}

/// Pick a site in `code` (at AVMA `ip`): every `syscall` is tried with the
/// child's registers, for each candidate value of `rdx`.
pub fn choose(code: &[u8], ip: u64) -> Result<Site, InjectError> {
    let mut dec = Decoder::with_ip(64, code, ip, DecoderOptions::NONE);
    let syscalls: Vec<u64> = dec
        .iter()
        .filter(|i| i.code() == Code::Syscall)
        .map(|i| i.ip())
        .collect();
    for &s in &syscalls {
        for rdx in [nr::EXIT_GROUP, nr::EXIT] {
            let mut regs = Regs::default();
            regs.set(Register::RAX, 0);
            regs.set(Register::RDX, rdx);
            if emulate_exits(code, ip, s + 2, regs) {
                return Ok(Site { addr: s, rdx });
            }
        }
    }
    Err(InjectError::NoSite(format!(
        "none of the {} syscall instructions of _exit is followed by a plain exit",
        syscalls.len()
    )))
}

/// The 16 general registers, for the small emulation below.
#[derive(Default, Clone, Copy)]
struct Regs([u64; 16]);

impl Regs {
    fn idx(r: Register) -> Option<usize> {
        let full = r.full_register();
        let i = (full as usize).checked_sub(Register::RAX as usize)?;
        (i < 16).then_some(i)
    }
    fn get(&self, r: Register) -> Option<u64> {
        let v = self.0[Self::idx(r)?];
        Some(if r.size() == 4 { v & 0xffff_ffff } else { v })
    }
    fn set(&mut self, r: Register, v: u64) -> Option<()> {
        // A 32-bit write zero-extends (x86-64 rule).
        let v = if r.size() == 4 { v & 0xffff_ffff } else { v };
        self.0[Self::idx(r)?] = v;
        Some(())
    }
}

/// Emulate from `pc` with `regs`: true when the path reaches a `syscall`
/// with eax = exit or exit_group, having only moved registers, compared
/// and branched inside `code`. Anything else (a memory access, an unknown
/// instruction, `hlt`, leaving the code, too many steps) is false.
fn emulate_exits(code: &[u8], base: u64, mut pc: u64, mut regs: Regs) -> bool {
    // (a, b) of the last cmp, for the conditional jumps.
    let mut cmp: Option<(u64, u64)> = None;
    for _ in 0..32 {
        let Some(off) = pc.checked_sub(base).filter(|&o| o < code.len() as u64) else {
            return false;
        };
        let mut dec = Decoder::with_ip(64, &code[off as usize..], pc, DecoderOptions::NONE);
        let i = dec.decode();
        if i.is_invalid() {
            return false;
        }
        let mut next = i.next_ip();
        let op_val = |regs: &Regs, n: u32| -> Option<u64> {
            match i.op_kind(n) {
                OpKind::Register => regs.get(i.op_register(n)),
                OpKind::Immediate8to64 | OpKind::Immediate32to64 => Some(i.immediate(n)),
                OpKind::Immediate32 | OpKind::Immediate8 | OpKind::Immediate64 => {
                    Some(i.immediate(n))
                }
                _ => None,
            }
        };
        match i.mnemonic() {
            Mnemonic::Syscall => {
                let eax = regs.get(Register::EAX).unwrap_or(u64::MAX);
                return eax == nr::EXIT || eax == nr::EXIT_GROUP;
            }
            Mnemonic::Nop => {}
            Mnemonic::Mov if i.op_count() == 2 && i.op_kind(0) == OpKind::Register => {
                let Some(v) = op_val(&regs, 1) else {
                    return false;
                };
                if regs.set(i.op0_register(), v).is_none() {
                    return false;
                }
            }
            Mnemonic::Cmp if i.op_kind(0) == OpKind::Register => {
                let (Some(a), Some(b)) = (op_val(&regs, 0), op_val(&regs, 1)) else {
                    return false;
                };
                cmp = Some((a, b));
            }
            Mnemonic::Jmp if i.op_kind(0) == OpKind::NearBranch64 => next = i.near_branch64(),
            m @ (Mnemonic::Ja
            | Mnemonic::Jae
            | Mnemonic::Jb
            | Mnemonic::Jbe
            | Mnemonic::Je
            | Mnemonic::Jne) => {
                let Some((a, b)) = cmp else { return false };
                let taken = match m {
                    Mnemonic::Ja => a > b,
                    Mnemonic::Jae => a >= b,
                    Mnemonic::Jb => a < b,
                    Mnemonic::Jbe => a <= b,
                    Mnemonic::Je => a == b,
                    _ => a != b,
                };
                if taken {
                    next = i.near_branch64();
                }
            }
            _ => return false,
        }
        pc = next;
    }
    false
}

/// How a wait for a thread's next stop ended.
enum Stop {
    /// A syscall-enter or syscall-exit stop (TRACESYSGOOD).
    Syscall,
    /// A ptrace event stop with this event number.
    Event(i32),
    /// A signal-delivery stop: the signal must be delivered later.
    Signal(Signal),
}

/// Wait (polling, bounded) for `tid`'s next stop.
fn next_stop(tid: i32, deadline: Instant) -> Result<Stop, InjectError> {
    loop {
        match waitpid(
            Pid::from_raw(tid),
            Some(WaitPidFlag::__WALL | WaitPidFlag::WNOHANG),
        ) {
            Ok(WaitStatus::StillAlive) => {}
            Ok(WaitStatus::PtraceSyscall(_)) => return Ok(Stop::Syscall),
            Ok(WaitStatus::PtraceEvent(_, _, ev)) => return Ok(Stop::Event(ev)),
            Ok(WaitStatus::Stopped(_, sig)) => return Ok(Stop::Signal(sig)),
            Ok(other) => {
                return Err(InjectError::Lost {
                    tid,
                    what: format!("ended while running an injected call ({other:?})"),
                })
            }
            Err(e) => return Err(pt("waitpid")(e)),
        }
        if Instant::now() > deadline {
            return Err(InjectError::Lost {
                tid,
                what: "did not stop in time during an injected call".into(),
            });
        }
        std::thread::sleep(Duration::from_micros(20));
    }
}

/// Wait for a new child's first stop (it is born stopped when its parent
/// was seized with PTRACE_O_TRACECLONE).
pub fn wait_born(pid: i32, deadline: Instant) -> Result<(), InjectError> {
    match next_stop(pid, deadline)? {
        Stop::Signal(Signal::SIGKILL) => Err(InjectError::Lost {
            tid: pid,
            what: "killed at birth".into(),
        }),
        _ => Ok(()),
    }
}

/// The result of one injected call.
#[derive(Debug, Clone, Copy)]
pub struct Call {
    /// rax at syscall exit: the result, or -errno.
    pub ret: i64,
    /// The new task's PID, for a clone seen by PTRACE_O_TRACECLONE.
    pub child: Option<i32>,
}

/// Registers as they must be restored after an injection into a thread
/// stopped inside an interrupted system call. The kernel restarts such a
/// call on the way back to user mode only when it handles a signal there
/// (arch_do_signal_or_restart); after our call there is none, so the
/// restart is done by hand as the kernel would: back over the 2-byte
/// `syscall`, with its number in rax (kernel/signal.c, -ERESTARTSYS,
/// -ERESTARTNOINTR, -ERESTARTNOHAND; -ERESTART_RESTARTBLOCK resumes as
/// restart_syscall).
pub fn restartable(saved: &user_regs_struct) -> user_regs_struct {
    let mut r = *saved;
    if (r.orig_rax as i64) >= 0 {
        match r.rax as i64 {
            -514..=-512 => {
                r.rax = r.orig_rax;
                r.rip -= 2;
            }
            -516 => {
                r.rax = nr::RESTART_SYSCALL;
                r.rip -= 2;
            }
            _ => {}
        }
    }
    r
}

/// Run system call `no` with `args` (rdi, rsi, rdx, r10, r8, r9; rdx is
/// overridden by the site's exit value when `args[2]` is None) in the
/// stopped thread `tid`, then put back `restore`. `tid` must be seized with
/// PTRACE_O_TRACESYSGOOD (and TRACECLONE for a clone). Signals that arrive
/// meanwhile are returned, to be delivered at detach.
pub fn call(
    tid: i32,
    site: Site,
    no: u64,
    args: [Option<u64>; 6],
    restore: &user_regs_struct,
    timeout: Duration,
    on_child: &mut dyn FnMut(i32) -> Result<(), InjectError>,
) -> Result<(Call, Vec<Signal>), InjectError> {
    let pid = Pid::from_raw(tid);
    let mut r = *restore;
    r.rip = site.addr;
    r.rax = no;
    // Not inside a system call any more: no restart logic may apply to
    // these registers on the way out of the stop.
    r.orig_rax = u64::MAX;
    let a = |i: usize, d: u64| args[i].unwrap_or(d);
    r.rdi = a(0, 0);
    r.rsi = a(1, 0);
    r.rdx = a(2, site.rdx);
    r.r10 = a(3, 0);
    r.r8 = a(4, 0);
    r.r9 = a(5, 0);
    let deadline = Instant::now() + timeout;
    let mut signals = Vec::new();
    ptrace::setregs(pid, r).map_err(pt("PTRACE_SETREGS"))?;
    // From here until the registers are restored, the thread must not run
    // free: every exit path below restores them.
    let res = (|| {
        let mut entered = false;
        let mut child = None;
        loop {
            ptrace::syscall(pid, None).map_err(pt("PTRACE_SYSCALL"))?;
            match next_stop(tid, deadline)? {
                Stop::Syscall if !entered => entered = true,
                Stop::Syscall => break,
                Stop::Event(e) if e == libc::PTRACE_EVENT_CLONE => {
                    let c = ptrace::getevent(pid).map_err(pt("PTRACE_GETEVENTMSG"))? as i32;
                    child = Some(c);
                    on_child(c)?;
                }
                Stop::Event(_) => {}
                Stop::Signal(s) => signals.push(s),
            }
        }
        let out = ptrace::getregs(pid).map_err(pt("PTRACE_GETREGS"))?;
        Ok(Call {
            ret: out.rax as i64,
            child,
        })
    })();
    let restored = ptrace::setregs(pid, *restore).map_err(pt("PTRACE_SETREGS (restore)"));
    let c = res?;
    restored?;
    Ok((c, signals))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// glibc 2.36 (Debian bookworm) `_exit`, bytes as disassembled.
    const BOOKWORM_EXIT: &[u8] = &[
        0x4c, 0x8b, 0x05, 0xf9, 0xe9, 0x0f, 0x00, // mov r8, [rip+..]
        0xbe, 0xe7, 0x00, 0x00, 0x00, // mov esi, 0xe7
        0xba, 0x3c, 0x00, 0x00, 0x00, // mov edx, 0x3c
        0xeb, 0x12, // jmp +37
        0x0f, 0x1f, 0x44, 0x00, 0x00, // nop
        0x89, 0xd0, // +24 mov eax, edx
        0x0f, 0x05, // +26 syscall
        0x48, 0x3d, 0x00, 0xf0, 0xff, 0xff, // cmp rax, -4096
        0x77, 0x1c, // ja +64
        0xf4, // +36 hlt
        0x89, 0xf0, // +37 mov eax, esi
        0x0f, 0x05, // +39 syscall
        0x48, 0x3d, 0x00, 0xf0, 0xff, 0xff, // cmp rax, -4096
        0x76, 0xe7, // jbe +24
        0xf7, 0xd8, // neg eax
        0x64, 0x41, 0x89, 0x00, // mov fs:[r8], eax
        0xeb, 0xdf, // jmp +24
    ];

    #[test]
    fn picks_the_exit_group_syscall_of_bookworm_exit() {
        let site = choose(BOOKWORM_EXIT, 0x1000).unwrap();
        // The syscall at +39: the child (rax = 0) goes on to +24, moves
        // edx into eax and calls exit_group.
        assert_eq!(site.addr, 0x1000 + 39);
        assert_eq!(site.rdx, nr::EXIT_GROUP);
    }

    #[test]
    fn refuses_code_that_does_anything_else() {
        // syscall; ret
        assert!(choose(&[0x0f, 0x05, 0xc3], 0x1000).is_err());
        // syscall; mov [rax], edx; ...
        assert!(choose(&[0x0f, 0x05, 0x89, 0x10, 0x0f, 0x05], 0x1000).is_err());
        // syscall; jmp back to itself: never exits
        assert!(choose(&[0x0f, 0x05, 0xeb, 0xfc], 0x1000).is_err());
    }

    #[test]
    fn restart_by_hand() {
        let mut r: user_regs_struct = unsafe_zeroed();
        r.orig_rax = 232;
        r.rax = (-514i64) as u64;
        r.rip = 0x1002;
        let f = restartable(&r);
        assert_eq!((f.rax, f.rip), (232, 0x1000));
        // Idempotent: a second restore changes nothing more.
        let g = restartable(&f);
        assert_eq!((g.rax, g.rip), (232, 0x1000));
        r.rax = (-516i64) as u64;
        assert_eq!(restartable(&r).rax, nr::RESTART_SYSCALL);
        // Stopped in user code: untouched.
        r.orig_rax = u64::MAX;
        assert_eq!(restartable(&r).rip, 0x1002);
    }

    fn unsafe_zeroed() -> user_regs_struct {
        // SAFETY: user_regs_struct is plain integers; all-zero is valid.
        unsafe { std::mem::zeroed() }
    }
}
