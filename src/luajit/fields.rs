//! Struct field offsets as data: `struct.field -> (offset, size)`.
//!
//! A [`FieldMap`] comes either from a binary's DWARF (see `dwarf`) or from a
//! built-in table. The built-in tables are the `ptype /o` facts of each
//! supported build (shared/reference/luajit), kept as text files in
//! `layouts/` so that adding a build is adding a file.

use std::collections::HashMap;

/// Which LuaJIT line a build belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Variant {
    /// OpenResty's branch (luajit2): lua_State carries exdata fields.
    Luajit2,
    /// Upstream LuaJIT 2.1.
    Upstream,
}

impl Variant {
    /// Name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            Variant::Luajit2 => "luajit2",
            Variant::Upstream => "upstream",
        }
    }
}

/// Offsets and sizes of struct members, keyed `Struct.field`; the size of a
/// struct itself is under `Struct.SIZEOF`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldMap {
    map: HashMap<String, (u64, u64)>,
}

impl FieldMap {
    /// Parse `Struct.field offset size` lines (`#` starts a comment).
    pub fn parse(text: &str) -> FieldMap {
        let mut map = HashMap::new();
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or("").trim();
            let mut it = line.split_whitespace();
            if let (Some(k), Some(o), Some(s)) = (it.next(), it.next(), it.next()) {
                if let (Ok(o), Ok(s)) = (o.parse(), s.parse()) {
                    map.entry(k.to_string()).or_insert((o, s));
                }
            }
        }
        FieldMap { map }
    }

    /// Add or replace an entry.
    pub fn insert(&mut self, key: impl Into<String>, offset: u64, size: u64) {
        self.map.insert(key.into(), (offset, size));
    }

    /// `(offset, size)` of `Struct.field`.
    pub fn get(&self, key: &str) -> Option<(u64, u64)> {
        self.map.get(key).copied()
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// A built-in layout table.
#[derive(Debug, Clone, Copy)]
pub struct Builtin {
    /// Name shown in reports (`luajit2-gc64`...).
    pub name: &'static str,
    /// Line of LuaJIT.
    pub variant: Variant,
    /// GC64 build.
    pub gc64: bool,
    /// The table text.
    pub text: &'static str,
}

/// Every build ljleak knows without debug info.
pub const BUILTINS: &[Builtin] = &[
    Builtin {
        name: "luajit2-gc64",
        variant: Variant::Luajit2,
        gc64: true,
        text: include_str!("layouts/luajit2-gc64.txt"),
    },
    Builtin {
        name: "luajit2-nogc64",
        variant: Variant::Luajit2,
        gc64: false,
        text: include_str!("layouts/luajit2-nogc64.txt"),
    },
    Builtin {
        name: "upstream-gc64",
        variant: Variant::Upstream,
        gc64: true,
        text: include_str!("layouts/upstream-gc64.txt"),
    },
    Builtin {
        name: "upstream-nogc64",
        variant: Variant::Upstream,
        gc64: false,
        text: include_str!("layouts/upstream-nogc64.txt"),
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_tables_parse() {
        for b in BUILTINS {
            let f = FieldMap::parse(b.text);
            assert!(f.len() > 200, "{} has {} entries", b.name, f.len());
            let (_, gcref) = f.get("GCtab.metatable").unwrap();
            assert_eq!(gcref == 8, b.gc64, "{}", b.name);
        }
    }
}
