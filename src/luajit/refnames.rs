//! Names for references and objects, the way a Lua programmer reads them:
//! `.name` or `["a.b"]` for string keys, `[3]` for array slots and number
//! keys, `[table: 0x…]` for object keys, `upvalue cache` (from the
//! prototype's upvalue names, lj_debug.c `lj_debug_uvname`), and
//! `function @/srv/app/handler.lua:12` (chunk name and first line).
//!
//! Only called for the few edges a report prints, so it reads memory
//! freely and allocates.

use super::backtrace::{lua_backtrace, FuncKind};
use super::frames::{ProtoIndex, SLOT};
use super::funcname::local_var;
use super::refs::{decode_tv, Label, Refs, Tv};
use super::vm::{gct, type_name};
use crate::target::{Memory, ReadExt};

/// Longest string key shown before it is cut with `…`.
const MAX_KEY: usize = 60;
/// Most Lua frames walked to find the frame owning a stack slot.
const MAX_LOCAL_FRAMES: usize = 200;
/// Number of metamethod names at the start of `g->gcroot` (lj_obj.h
/// GCROOT_MMNAME..; MM__MAX with the FFI and pairs/ipairs entries).
const GCROOT_MMNAMES: u16 = 22;
/// Base metatables follow, one per type up to ~LJ_TNUMX.
const GCROOT_BASEMTS: u16 = 14;

impl<M: Memory + ?Sized> Refs<'_, '_, M> {
    /// Name of the reference `label` from object `src` to `target`.
    pub fn name(&self, src: u64, label: Label, target: u64) -> String {
        match label {
            Label::Registry => "registry".into(),
            Label::MainThread => "main thread".into(),
            Label::MainEnv => "_G".into(),
            Label::GcRoot(i) => gcroot_name(i),
            Label::CurrentThread => "current thread".into(),
            Label::FfiFinalizer => "ffi finalizers".into(),
            Label::PendingFinalizer => "pending finalizer".into(),
            Label::Fixed => "fixed".into(),
            Label::Array(i) => format!("[{i}]"),
            Label::KeyOf => "(as weak key) value".into(),
            Label::HashVal(i) | Label::WeakKeyVal(i) => self
                .key_name(src, i)
                .unwrap_or_else(|| format!("[node {i}]")),
            Label::HashKey(i) => {
                let k = self
                    .key_name(src, i)
                    .unwrap_or_else(|| format!("[node {i}]"));
                format!("(key){k}")
            }
            Label::Metatable => "metatable".into(),
            Label::Env => "env".into(),
            Label::Proto => "prototype".into(),
            Label::Upvalue(i) => match self.upvalue_name(src, i) {
                Some(n) if !n.is_empty() => format!("upvalue {n}"),
                _ => format!("upvalue #{i}"),
            },
            Label::CUpvalue(i) => format!("upvalue #{i}"),
            Label::UpvalValue => String::new(),
            Label::OpenUpvalue => "open upvalue".into(),
            Label::Const(i) => match self.vm().header(target) {
                Ok((_, gct::PROTO)) => format!(
                    "inner function {}",
                    self.proto_where(target).unwrap_or_default()
                ),
                Ok((_, gct::STR)) => format!("constant {}", self.quoted(target)),
                _ => format!("constant #{i}"),
            },
            Label::ChunkName => "chunkname".into(),
            Label::Trace => "trace".into(),
            Label::Stack(i) | Label::Frame(i) => {
                let what = if label == Label::Frame(i) {
                    "frame"
                } else {
                    "stack"
                };
                let local = match label {
                    Label::Stack(_) => self.stack_local(src, i),
                    _ => None,
                };
                match (local, self.func_where(target)) {
                    (Some(l), Some(w)) => format!("{l} function {w}"),
                    (Some(l), None) => l,
                    (None, w) => match w {
                        Some(w) => format!("{what}[{i}] function {w}"),
                        None => format!("{what}[{i}]"),
                    },
                }
            }
            Label::StartPt => "start prototype".into(),
            Label::TraceLink => "linked trace".into(),
        }
    }

    /// `table: 0x…`, `function @file.lua:3`, `cdata<struct foo>: 0x…`,
    /// `string "abc"`.
    pub fn describe(&self, o: u64) -> String {
        let vm = self.vm();
        let Ok((_, t)) = vm.header(o) else {
            return format!("object: {o:#x}");
        };
        match t {
            gct::FUNC => match self.func_where(o) {
                Some(w) => format!("function {w}"),
                None => format!("function: builtin: {o:#x}"),
            },
            gct::PROTO => format!("proto {}", self.proto_where(o).unwrap_or_default()),
            gct::STR => format!("string {}", self.quoted(o)),
            gct::CDATA => {
                let id = vm.lay.f.cd_ctypeid.get(vm.m, o).unwrap_or(0);
                format!("cdata<{}>: {o:#x}", super::ctype::ctype_name(vm, id))
            }
            _ => format!("{}: {o:#x}", type_name(t)),
        }
    }

    /// `@chunk:line` of a Lua function, None for C and fast functions.
    pub fn func_where(&self, func: u64) -> Option<String> {
        let vm = self.vm();
        let f = &vm.lay.f;
        let (_, t) = vm.header(func).ok()?;
        if t != gct::FUNC || f.f_ffid.get(vm.m, func).ok()? != 0 {
            return None;
        }
        self.proto_where(self.proto_of(func).ok()?)
    }

    /// `@chunk:firstline` of a prototype.
    pub fn proto_where(&self, pt: u64) -> Option<String> {
        let vm = self.vm();
        let f = &vm.lay.f;
        let name = vm.gcref(pt + f.p_chunkname.off).ok()?;
        let line = f.p_firstline.get(vm.m, pt).ok()?;
        let chunk = String::from_utf8_lossy(&self.str_bytes(name, 200).ok()?).into_owned();
        let chunk = if chunk.starts_with('@') || chunk.starts_with('=') {
            chunk
        } else {
            // Source text used as its own name (loadstring without a name).
            let first = chunk.lines().next().unwrap_or("");
            format!("[string \"{}\"]", truncate(first, 40))
        };
        Some(format!("{chunk}:{line}"))
    }

    /// Name of upvalue `i` of Lua function `func`: the `i`th NUL-terminated
    /// string of `pt->uvinfo` (empty when the bytecode was stripped).
    fn upvalue_name(&self, func: u64, i: u16) -> Option<String> {
        let vm = self.vm();
        let f = &vm.lay.f;
        let pt = self.proto_of(func).ok()?;
        if i as u64 >= f.p_sizeuv.get(vm.m, pt).ok()? {
            return None;
        }
        let info = vm.gcref(pt + f.p_uvinfo.off).ok()?;
        if info == 0 {
            return None;
        }
        let mut left = i;
        let mut name = Vec::new();
        for off in 0..(1u64 << 16) {
            let c = vm.m.u8(info + off).ok()?;
            if c == 0 {
                if left == 0 {
                    return Some(String::from_utf8_lossy(&name).into_owned());
                }
                left -= 1;
                name.clear();
            } else {
                name.push(c);
            }
        }
        None
    }

    /// `local NAME (file.lua:LINE)` for stack slot `i` of thread `th` when
    /// it is an active local variable of a Lua frame whose prototype keeps
    /// its varinfo (lj_debug.c `lj_debug_slotname` → `debug_varname`: slot
    /// n above a frame's base is the n-th variable active at its PC). The
    /// line is where the variable was declared: the instruction before its
    /// `startpc` (lj_parse.c `var_add` runs after the initialiser).
    fn stack_local(&self, th: u64, i: u32) -> Option<String> {
        let vm = self.vm();
        let f = &vm.lay.f;
        let stack = vm.gcref(th + f.l_stack.off).ok()?;
        let at = stack.checked_add(u64::from(i) * SLOT)?;
        let frames = lua_backtrace(vm, &ProtoIndex::default(), th, MAX_LOCAL_FRAMES);
        // Innermost first: the first frame whose base is at or below the
        // slot owns it.
        let fr = frames.iter().find(|fr| fr.frame + SLOT <= at)?;
        let (FuncKind::Lua { proto }, Some(pos)) = (fr.what, fr.pos) else {
            return None;
        };
        let n = u32::try_from((at - (fr.frame + SLOT)) / SLOT).ok()?;
        let mut ix = ProtoIndex::default();
        ix.insert(vm, proto).ok()?;
        let p = ix.proto(proto)?;
        let (name, startpc) = local_var(vm, p, pos, n).ok()??;
        if name.is_empty() || name.starts_with('(') {
            // Internal loop variables are not what a reader looks for.
            return None;
        }
        let loc = ix.loc(p, startpc.saturating_sub(1));
        let name = truncate(&name, MAX_KEY);
        Some(if loc.line > 0 {
            format!("local {name} ({})", loc.short())
        } else {
            format!("local {name}")
        })
    }

    /// The key of hash node `i` of table `t` as an index expression.
    fn key_name(&self, t: u64, i: u32) -> Option<String> {
        let vm = self.vm();
        let f = &vm.lay.f;
        let node = f.t_node.get(vm.m, t).ok()?;
        let raw =
            vm.m.u64(node + i as u64 * f.n_size.off + f.n_key.off)
                .ok()?;
        Some(match decode_tv(raw, vm.lay.gc64) {
            Tv::Gc(gct::STR, s) => {
                let b = self.str_bytes(s, MAX_KEY + 1).ok()?;
                if is_ident(&b) {
                    format!(".{}", String::from_utf8_lossy(&b))
                } else {
                    format!("[{}]", self.quoted(s))
                }
            }
            Tv::Gc(_, o) => format!("[{}]", self.describe(o)),
            Tv::Num(n) => format!("[{}]", num(n)),
            Tv::Bool(b) => format!("[{b}]"),
            Tv::LightUd(p) => format!("[userdata: {p:#x}]"),
            Tv::Nil => "[nil]".into(),
        })
    }

    /// A string object as a quoted Lua literal, cut at [`MAX_KEY`] bytes.
    fn quoted(&self, s: u64) -> String {
        let b = self.str_bytes(s, MAX_KEY + 1).unwrap_or_default();
        let cut = b.len() > MAX_KEY;
        let mut out = String::from("\"");
        for &c in &b[..b.len().min(MAX_KEY)] {
            match c {
                b'"' => out.push_str("\\\""),
                b'\\' => out.push_str("\\\\"),
                b'\n' => out.push_str("\\n"),
                0x20..=0x7e => out.push(c as char),
                _ => out.push_str(&format!("\\{c}")),
            }
        }
        if cut {
            out.push('…');
        }
        out.push('"');
        out
    }
}

/// Lua identifier that is not a reserved word.
fn is_ident(b: &[u8]) -> bool {
    const RESERVED: &[&[u8]] = &[
        b"and",
        b"break",
        b"do",
        b"else",
        b"elseif",
        b"end",
        b"false",
        b"for",
        b"function",
        b"goto",
        b"if",
        b"in",
        b"local",
        b"nil",
        b"not",
        b"or",
        b"repeat",
        b"return",
        b"then",
        b"true",
        b"until",
        b"while",
    ];
    !b.is_empty()
        && b.len() <= MAX_KEY
        && !b[0].is_ascii_digit()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
        && !RESERVED.contains(&b)
}

fn num(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() < 1e15 {
        format!("{}", n as i64)
    } else {
        format!("{n}")
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        s.chars().take(max).collect::<String>() + "…"
    }
}

/// What `g->gcroot[i]` holds (lj_obj.h: metamethod names, base metatables,
/// default io input and output).
fn gcroot_name(i: u16) -> String {
    const BASE: [&str; GCROOT_BASEMTS as usize] = [
        "nil",
        "false",
        "true",
        "lightuserdata",
        "string",
        "upvalue",
        "thread",
        "proto",
        "function",
        "trace",
        "cdata",
        "table",
        "userdata",
        "number",
    ];
    if i < GCROOT_MMNAMES {
        format!("metamethod name #{i}")
    } else if i < GCROOT_MMNAMES + GCROOT_BASEMTS {
        format!("{} metatable", BASE[(i - GCROOT_MMNAMES) as usize])
    } else if i == GCROOT_MMNAMES + GCROOT_BASEMTS {
        "io default input".into()
    } else if i == GCROOT_MMNAMES + GCROOT_BASEMTS + 1 {
        "io default output".into()
    } else {
        format!("gcroot[{i}]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_and_numbers() {
        assert!(is_ident(b"_LOADED"));
        assert!(is_ident(b"cache2"));
        assert!(!is_ident(b"kong.plugins.x"));
        assert!(!is_ident(b"end"));
        assert!(!is_ident(b"3d"));
        assert!(!is_ident(b""));
        assert_eq!(num(3.0), "3");
        assert_eq!(num(1.5), "1.5");
        assert_eq!(gcroot_name(33), "table metatable");
        assert_eq!(gcroot_name(37), "io default output");
    }
}
