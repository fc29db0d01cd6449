//! Every Lua thread (coroutine) of a heap with its status and Lua
//! backtrace: the data behind `ljleak threads`.
//!
//! Status follows lib_base.c `coroutine.status` (running, suspended,
//! normal, dead) with `L->status` > LUA_YIELD reported as `error`, and the
//! main thread, which is never dead, reported as `idle` when it runs no Lua
//! code (an nginx worker between requests).

use super::frames::{lua_backtrace, FuncKind, LuaFrame, ProtoIndex};
use super::names::FuncNames;
use super::vm::{gct, Vm, TVALUE};
use super::walk::{self, Limits, List};
use crate::target::{MemError, Memory};

/// `L->status` values (lua.h).
const LUA_YIELD: u64 = 1;

/// What a thread is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// `g->cur_L` inside a C frame: running when the copy was taken.
    Running,
    /// Yielded, or created and not started.
    Suspended,
    /// Active but not running (it resumed another coroutine).
    Normal,
    /// Finished.
    Dead,
    /// Stopped by an error (`L->status` is an error code).
    Error,
    /// The main thread with no Lua code on its stack.
    Idle,
}

impl Status {
    /// Name for reports.
    pub fn name(self) -> &'static str {
        match self {
            Status::Running => "running",
            Status::Suspended => "suspended",
            Status::Normal => "normal",
            Status::Dead => "dead",
            Status::Error => "error",
            Status::Idle => "idle",
        }
    }
}

/// One frame, named for reports.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct NamedFrame {
    /// `lua`, `c` or `builtin`.
    pub kind: &'static str,
    /// Short source name (`app.lua`, `content_by_lua(nginx.conf:40)`) for Lua
    /// frames.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Current line (Lua frames whose PC is known).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<i32>,
    /// Function name from the loaded modules, when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Line where the Lua function is defined.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub defined: Option<i32>,
    /// The name its caller used (`'inner'` in `debug.traceback`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub called: Option<String>,
    /// The line may be stale: the innermost Lua frame of a thread inside
    /// the VM takes its PC from the C frame, which the interpreter
    /// refreshes only when it leaves through a bytecode that saves it, not
    /// on a direct C function call (`BC_FUNCC`). Shown as `~` before the label.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub approx: bool,
}

impl NamedFrame {
    /// Build from a raw frame.
    pub fn new(f: &LuaFrame, names: &FuncNames) -> NamedFrame {
        let name = names.get(f.func).map(str::to_string);
        let called = f.called.as_ref().map(|c| c.name.clone());
        match f.what {
            FuncKind::Lua { .. } => NamedFrame {
                kind: "lua",
                source: f
                    .defined
                    .as_ref()
                    .map(|d| super::frames::short_src(&d.chunk)),
                line: f.loc.as_ref().map(|l| l.line).filter(|&l| l > 0),
                name,
                defined: f.defined.as_ref().map(|d| d.line),
                called,
                approx: false,
            },
            FuncKind::C { .. } => NamedFrame {
                kind: "c",
                source: None,
                line: None,
                name,
                defined: None,
                called,
                approx: false,
            },
            FuncKind::Fast { ffid, .. } => NamedFrame {
                kind: "builtin",
                source: None,
                line: None,
                name: name.or_else(|| Some(format!("builtin#{ffid}"))),
                defined: None,
                called,
                approx: false,
            },
        }
    }

    /// `app.lua:12 (mod.fn)`, `app.lua:12 (inner)`, `app.lua:12`,
    /// `ngx.sleep`, `[C]`: the module name when the function has one, else
    /// the name its caller used.
    pub fn label(&self) -> String {
        let l = self.plain_label();
        if self.approx {
            format!("~{l}")
        } else {
            l
        }
    }

    fn plain_label(&self) -> String {
        match (
            &self.source,
            self.line,
            self.name.as_ref().or(self.called.as_ref()),
        ) {
            (Some(s), Some(l), Some(n)) => format!("{s}:{l} ({n})"),
            (Some(s), Some(l), None) => format!("{s}:{l}"),
            (Some(s), None, Some(n)) => format!("{s} ({n})"),
            (Some(s), None, None) => format!("{s}:{}", self.defined.unwrap_or(0)),
            (None, _, Some(n)) => n.clone(),
            (None, _, None) => "[C]".into(),
        }
    }
}

/// One thread.
#[derive(Debug, Clone)]
pub struct ThreadInfo {
    /// `lua_State *`.
    pub addr: u64,
    /// Status.
    pub status: Status,
    /// The VM's main thread.
    pub main: bool,
    /// Bytes of the thread object and its stack (`sizeof(lua_State)` +
    /// 8 × stacksize) plus its open upvalues.
    pub stack_bytes: u64,
    /// Backtrace, innermost first.
    pub frames: Vec<NamedFrame>,
    /// Bytes freed if this thread became unreachable: its own size and
    /// stack and everything only it holds (its dominator subtree). None
    /// until computed, or when the thread is itself unreachable.
    pub retained: Option<u64>,
    /// The nearest other thread whose retained bytes include this one's
    /// (a coroutine only another coroutine holds).
    pub held_by: Option<u64>,
}

/// Result of a thread census.
#[derive(Debug, Clone, Default)]
pub struct Threads {
    /// Every thread found.
    pub threads: Vec<ThreadInfo>,
    /// Problems met.
    pub warnings: Vec<String>,
}

/// Find every live thread of `vm` (the root list; dead ones awaiting the
/// sweep are skipped) with status and backtrace of at most `max_depth` levels.
pub fn threads<M: Memory + ?Sized>(vm: &Vm<'_, M>, lim: Limits, max_depth: usize) -> Threads {
    let mut addrs: Vec<(u64, u64)> = Vec::new();
    let mut protos = Vec::new();
    let mut cur: Option<u64> = None;
    let rep = walk::walk(vm, lim, |o| {
        if o.dead {
            return;
        }
        match (o.gct, o.list) {
            (gct::THREAD, _) => {
                addrs.push((o.addr, o.size));
                cur = Some(o.addr);
            }
            // Open upvalues follow their thread in the walk.
            (gct::UPVAL, List::OpenUpvalues) => {
                if let Some(last) = addrs.last_mut() {
                    if Some(last.0) == cur {
                        last.1 += o.size;
                    }
                }
            }
            (gct::PROTO, _) => protos.push(o.addr),
            _ => {}
        }
    });
    let index = ProtoIndex::from_protos(vm, protos);
    let names = FuncNames::from_heap(vm);
    let cur_l = vm.lay.f.g_cur_l.get(vm.m, vm.g).unwrap_or(0);
    let mut out = Threads {
        warnings: rep.warnings,
        ..Default::default()
    };
    for (addr, bytes) in addrs {
        let status = match status(vm, addr, cur_l) {
            Ok(s) => s,
            Err(e) => {
                out.warnings.push(format!("thread {addr:#x}: {e}"));
                continue;
            }
        };
        let mut frames: Vec<NamedFrame> = lua_backtrace(vm, &index, addr, max_depth)
            .iter()
            .map(|f| NamedFrame::new(f, &names))
            .collect();
        // Only a thread inside the VM (with a C frame) reads its innermost
        // PC from the C frame; a suspended one saved it on yield.
        if matches!(status, Status::Running | Status::Normal) {
            if let Some(top) = frames.first_mut().filter(|f| f.kind == "lua") {
                top.approx = true;
            }
        }
        out.threads.push(ThreadInfo {
            addr,
            status,
            main: addr == vm.main,
            stack_bytes: bytes,
            frames,
            retained: None,
            held_by: None,
        });
    }
    out
}

/// lib_base.c `coroutine.status`, seen from outside the VM.
fn status<M: Memory + ?Sized>(vm: &Vm<'_, M>, l: u64, cur_l: u64) -> Result<Status, MemError> {
    let f = &vm.lay.f;
    let m = vm.m;
    let st = f.l_status.get(m, l)?;
    let cframe = f.l_cframe.get(m, l)?;
    let base = f.l_base.get(m, l)?;
    let top = f.l_top.get(m, l)?;
    let stack = vm.gcref(l + f.l_stack.off)?;
    // An empty stack holds the thread itself (and a nil slot with GC64):
    // lj_state.c stack_init.
    let empty_base = stack + TVALUE * (1 + vm.lay.gc64 as u64);
    Ok(if st == LUA_YIELD {
        Status::Suspended
    } else if st > LUA_YIELD {
        Status::Error
    } else if cframe != 0 {
        if l == cur_l {
            Status::Running
        } else {
            Status::Normal
        }
    } else if l == vm.main {
        Status::Idle
    } else if base > empty_base {
        Status::Normal
    } else if top == base {
        Status::Dead
    } else {
        Status::Suspended
    })
}
