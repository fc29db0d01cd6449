//! The object graph as a V8 heap snapshot (`.heapsnapshot` JSON), the
//! format Chrome DevTools' Memory panel and memlab load: Summary,
//! Comparison, Containment, Retainers and Dominators views for a Lua heap
//! with no UI of ljleak's own.
//!
//! Mapping (V8's `snapshot.meta` vocabulary):
//! - node 0 is the synthetic root; its one edge leads to a synthetic
//!   `(GC roots)` node whose edges are the VM's roots, named as `refs` names
//!   them (`registry`, `_G`, `main thread`, `fixed`, `pending finalizer`);
//! - every Lua object is a node: `type` from its GC type (table → object,
//!   function → closure, string → string, proto and trace → code, cdata and
//!   userdata → native, upvalue → hidden, thread → object), `name` as `refs`
//!   describes it without the address (`table`, `function @app.lua:12`,
//!   `cdata<struct foo>`, `string "abc"`: DevTools' Summary groups by name),
//!   `self_size` its exact allocation size, `id` odd and unique;
//! - every reference is an edge named as `refs` names it: array slots are
//!   `element` edges (shown `[3]`), the rest `property` edges (`.name`,
//!   `["a.b"]`, `metatable`, `upvalue cache`, the upvalue object's own
//!   `value`), and the weak side of weak tables `weak` edges, which DevTools
//!   and memlab leave out of dominators, as the Lua GC does.

use std::collections::HashMap;
use std::io::{self, Write};

use crate::analysis::graph::{Graph, NodeId};
use crate::luajit::refs::{Label, Refs};
use crate::luajit::vm::gct;
use crate::target::Memory;

// V8 node and edge type indexes (the order of `node_types[0]` and
// `edge_types[0]` below).
const N_HIDDEN: u8 = 0;
const N_STRING: u8 = 2;
const N_OBJECT: u8 = 3;
const N_CODE: u8 = 4;
const N_CLOSURE: u8 = 5;
const N_NATIVE: u8 = 8;
const N_SYNTHETIC: u8 = 9;
const E_ELEMENT: u8 = 1;
const E_PROPERTY: u8 = 2;
const E_INTERNAL: u8 = 3;
const E_WEAK: u8 = 6;

const META: &str = r#"{"node_fields":["type","name","id","self_size","edge_count","trace_node_id","detachedness"],"node_types":[["hidden","array","string","object","code","closure","regexp","number","native","synthetic","concatenated string","sliced string","symbol","bigint","object shape"],"string","number","number","number","number","number"],"edge_fields":["type","name_or_index","to_node"],"edge_types":[["context","element","property","internal","hidden","shortcut","weak"],"string_or_number","node"],"trace_function_info_fields":["function_id","name","script_name","script_id","line","column"],"trace_node_fields":["id","function_info_index","count","size","children"],"sample_fields":["timestamp_us","last_assigned_id"],"location_fields":["object_index","script_id","line","column"]}"#;
const NODE_FIELDS: u32 = 7;

fn node_type(t: u8) -> u8 {
    match t {
        gct::STR => N_STRING,
        gct::UPVAL => N_HIDDEN,
        gct::PROTO | gct::TRACE => N_CODE,
        gct::FUNC => N_CLOSURE,
        gct::CDATA | gct::UDATA => N_NATIVE,
        _ => N_OBJECT,
    }
}

/// Interned strings.
#[derive(Default)]
struct Strings {
    index: HashMap<String, u32>,
    list: Vec<String>,
}

impl Strings {
    fn id(&mut self, s: &str) -> u32 {
        if let Some(&i) = self.index.get(s) {
            return i;
        }
        let i = self.list.len() as u32;
        self.list.push(s.to_string());
        self.index.insert(s.to_string(), i);
        i
    }
}

/// `describe` without the trailing `: 0x…` address, so that objects of a
/// kind share a name.
fn class_name(desc: &str) -> &str {
    match desc.rfind(": 0x") {
        Some(i) if desc[i + 4..].bytes().all(|b| b.is_ascii_hexdigit()) => &desc[..i],
        _ => desc,
    }
}

/// Figures of a written snapshot.
#[derive(Debug, Clone, Copy, Default)]
pub struct Written {
    /// Nodes, synthetic ones included.
    pub nodes: u64,
    /// Edges, weak ones included.
    pub edges: u64,
    /// Bytes written.
    pub bytes: u64,
}

struct Counting<W> {
    w: W,
    n: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        let n = self.w.write(b)?;
        self.n += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.w.flush()
    }
}

/// Node id of graph node `v` (V8 gives heap objects odd ids; 1 and 3 are the
/// synthetic root and `(GC roots)`).
pub fn node_id(v: NodeId) -> u64 {
    2 * v as u64 + 5
}

/// Write `g` (read through `refs` for names) as a heap snapshot.
pub fn write<M: Memory + ?Sized>(
    out: impl Write,
    g: &Graph,
    refs: &mut Refs<'_, '_, M>,
) -> io::Result<Written> {
    let mut w = Counting { w: out, n: 0 };
    let mut strings = Strings::default();
    let n = g.len();
    // Edges of every object, in node order: (type, name or index, target).
    let mut edges: Vec<(u8, u32, NodeId)> = Vec::with_capacity(g.edges() + n / 8);
    let mut counts: Vec<u32> = Vec::with_capacity(n);
    for u in 0..n as NodeId {
        let (a, t) = (g.addr[u as usize], g.gct[u as usize]);
        let before = edges.len();
        let mut found: Vec<(Label, u64)> = Vec::new();
        let _ = refs.refs(a, t, &mut |l, x| found.push((l, x)));
        let strong = found.len();
        if t == gct::TAB {
            let _ = refs.weak_refs(a, &mut |l, x| found.push((l, x)));
        }
        // A weak-keyed entry's value is held by the table only when the
        // graph kept that edge (see analysis::graph: usually its key holds
        // it, or the next cycle clears it).
        let kept: std::collections::HashSet<NodeId> =
            if found.iter().any(|(l, _)| matches!(l, Label::WeakKeyVal(_))) {
                g.succ(u).iter().copied().collect()
            } else {
                Default::default()
            };
        for (k, (l, x)) in found.into_iter().enumerate() {
            let Some(v) = g.index(x) else { continue };
            let weak = k >= strong || (matches!(l, Label::WeakKeyVal(_)) && !kept.contains(&v));
            let e = match l {
                Label::Array(i) if !weak => (E_ELEMENT, i, v),
                Label::UpvalValue => (E_PROPERTY, strings.id("value"), v),
                _ => {
                    let name = refs.name(a, l, x);
                    (if weak { E_WEAK } else { E_PROPERTY }, strings.id(&name), v)
                }
            };
            edges.push(e);
        }
        // The key of a weak-keyed entry holds its value (what V8 writes for
        // a WeakMap entry: an internal key → value edge).
        let from = g.key_edges.partition_point(|&(k, _)| k < u);
        for &(_, v) in g.key_edges[from..].iter().take_while(|&&(k, _)| k == u) {
            edges.push((E_INTERNAL, strings.id("(weak-keyed entry value)"), v));
        }
        counts.push((edges.len() - before) as u32);
    }
    // Root edges, named as `refs` names them.
    let mut root_edges: Vec<(u32, NodeId)> = Vec::with_capacity(g.roots.len());
    let mut seen = std::collections::HashSet::new();
    let _ = refs.roots(|l, x| {
        if let Some(v) = g.index(x) {
            let name = strings.id(&refs.name(0, l, x));
            if seen.insert((v, name)) {
                root_edges.push((name, v));
            }
        }
    });
    let pending = strings.id("pending finalizer");
    root_edges.extend(g.pending.iter().map(|&v| (pending, v)));
    let fixed = strings.id("fixed");
    root_edges.extend(g.fixed.iter().map(|&v| (fixed, v)));

    let total_nodes = n as u64 + 2;
    let total_edges = edges.len() as u64 + root_edges.len() as u64 + 1;
    write!(
        w,
        "{{\"snapshot\":{{\"meta\":{META},\"node_count\":{total_nodes},\"edge_count\":{total_edges},\"trace_function_count\":0}},\n\"nodes\":["
    )?;
    let empty = strings.id("");
    let gc_roots = strings.id("(GC roots)");
    write!(
        w,
        "{N_SYNTHETIC},{empty},1,0,1,0,0,\n{N_SYNTHETIC},{gc_roots},3,0,{},0,0",
        root_edges.len()
    )?;
    for (v, count) in counts.iter().enumerate() {
        let desc = refs.describe(g.addr[v]);
        let name = strings.id(class_name(&desc));
        write!(
            w,
            ",\n{},{name},{},{},{},0,0",
            node_type(g.gct[v]),
            node_id(v as NodeId),
            g.size[v],
            count
        )?;
    }
    // to_node is the index of the target's first field in `nodes`.
    let to = |v: NodeId| (v + 2) * NODE_FIELDS;
    write!(w, "],\n\"edges\":[{E_ELEMENT},1,{NODE_FIELDS}")?;
    for (name, v) in &root_edges {
        write!(w, ",\n{E_PROPERTY},{name},{}", to(*v))?;
    }
    for (ty, name, v) in &edges {
        write!(w, ",\n{ty},{name},{}", to(*v))?;
    }
    w.write_all(
        b"],\n\"trace_function_infos\":[],\"trace_tree\":[],\"samples\":[],\"locations\":[],\n\"strings\":[",
    )?;
    for (i, s) in strings.list.iter().enumerate() {
        if i > 0 {
            w.write_all(b",\n")?;
        }
        serde_json::to_writer(&mut w, s)?;
    }
    w.write_all(b"]}\n")?;
    w.flush()?;
    Ok(Written {
        nodes: total_nodes,
        edges: total_edges,
        bytes: w.n,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_names_drop_addresses_only() {
        assert_eq!(class_name("table: 0x7f00deadbeef"), "table");
        assert_eq!(class_name("cdata<struct foo>: 0x1234"), "cdata<struct foo>");
        assert_eq!(class_name("function @a.lua:3"), "function @a.lua:3");
        assert_eq!(class_name("string \"x: 0xzz\""), "string \"x: 0xzz\"");
    }
}
