//! Struct layouts of a LuaJIT build, read from the DWARF of its ELF file.
//!
//! When the `luajit` / `nginx` binary (or its separate debug file) carries
//! `.debug_info`, this module turns the definitions of the LuaJIT structs
//! listed in [`STRUCTS`] into a [`FieldMap`]: `Struct.field -> (offset, size)`
//! for every *named top-level member* of each struct, plus
//! `Struct.SIZEOF -> (0, byte_size)`. The keys and numbers are the same as
//! those of the built-in tables in `layouts/*.txt` (which are `ptype /o`
//! dumps), so either source can be used interchangeably.
//!
//! What it is not:
//! - not a general DWARF type printer: members of anonymous nested
//!   structs/unions are not flattened into the parent (the anonymous member
//!   itself has no name and is skipped, as in the tables);
//! - not a debug-file locator: it reads the bytes it is given and does not
//!   follow `.gnu_debuglink`, build-ids, `.gnu_debugaltlink` (dwz) or split
//!   DWARF (`.dwo`). Members whose types live in such places are left out;
//! - not a symbol reader: addresses of globals come from elsewhere.
//!
//! Only struct (and union) definitions that are direct children of a unit
//! are considered; this is where C compilers put them, and it keeps
//! namespaced C++/Rust types of the same name out. For each name the first
//! complete definition wins, in `.debug_info` order, then type units.
//! Compressed debug sections (`SHF_COMPRESSED`, `.zdebug_*`) are handled.
//! Malformed DWARF yields a [`DwarfError`], never a panic.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use gimli::{
    AttributeValue, DebugAbbrevOffset, DebugStrOffsetsBase, EndianSlice, Operation, RunTimeEndian,
    UnitHeader, UnitOffset, UnitSectionOffset, UnitType,
};
use object::{Object, ObjectSection};

use super::fields::FieldMap;

/// The struct names extracted.
pub const STRUCTS: &[&str] = &[
    "global_State",
    "GCState",
    "StrInternState",
    "SBuf",
    "lua_State",
    "GCstr",
    "GCtab",
    "Node",
    "GCudata",
    "GCcdata",
    "GCcdataVar",
    "GCproto",
    "GCfuncL",
    "GCfuncC",
    "GCupval",
    "GCtrace",
    "SnapShot",
    "CType",
    "CTState",
    "CCallback",
    "GG_State",
    "jit_State",
];

/// Why DWARF could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DwarfError {
    /// The bytes are not an object file `object` can read, or a section
    /// could not be decompressed.
    #[error("cannot read object file: {0}")]
    Object(#[from] object::Error),
    /// gimli rejected the DWARF data.
    #[error("malformed DWARF: {0}")]
    Gimli(#[from] gimli::Error),
    /// The DWARF parsed but is inconsistent (e.g. a cycle of type references).
    #[error("malformed DWARF: {0}")]
    Malformed(String),
}

type Result<T> = std::result::Result<T, DwarfError>;
type R<'a> = EndianSlice<'a, RunTimeEndian>;

/// Extract a FieldMap for the LuaJIT structs from DWARF in an ELF file's bytes.
/// Returns Ok(None) when the file has no .debug_info or none of the structs.
pub fn field_map(elf_data: &[u8]) -> std::result::Result<Option<FieldMap>, DwarfError> {
    Ok(extract(elf_data)?.map(|entries| {
        let mut map = FieldMap::default();
        for (key, (offset, size)) in entries {
            map.insert(key, offset, size);
        }
        map
    }))
}

/// Same as [`field_map`], as an ordered map (for tests and diagnostics).
fn extract(elf_data: &[u8]) -> Result<Option<BTreeMap<String, (u64, u64)>>> {
    let file = object::File::parse(elf_data)?;
    let endian = if file.is_little_endian() {
        RunTimeEndian::Little
    } else {
        RunTimeEndian::Big
    };
    let load = |name: &str| load_section(&file, name);
    let info = load(".debug_info")?;
    let types = load(".debug_types")?;
    if info.is_empty() && types.is_empty() {
        return Ok(None);
    }
    let abbrev = load(".debug_abbrev")?;
    let str_ = load(".debug_str")?;
    let str_offsets = load(".debug_str_offsets")?;
    let line_str = load(".debug_line_str")?;
    let sections = Sections {
        info: gimli::DebugInfo::new(&info, endian),
        types: gimli::DebugTypes::new(&types, endian),
        abbrev: gimli::DebugAbbrev::new(&abbrev, endian),
        str_: gimli::DebugStr::new(&str_, endian),
        str_offsets: gimli::DebugStrOffsets::from(EndianSlice::new(&str_offsets, endian)),
        line_str: gimli::DebugLineStr::from(EndianSlice::new(&line_str, endian)),
    };
    let ctx = Ctx::new(sections)?;
    let found = ctx.find_structs()?;
    if found.is_empty() {
        return Ok(None);
    }
    let mut out = BTreeMap::new();
    for (name, def) in found {
        out.insert(format!("{name}.SIZEOF"), (0, def.size));
        for (member, offset, size) in def.members {
            out.insert(format!("{name}.{member}"), (offset, size));
        }
    }
    Ok(Some(out))
}

/// A section's (decompressed) bytes; empty when absent.
fn load_section<'data>(file: &object::File<'data>, name: &str) -> Result<Cow<'data, [u8]>> {
    match file.section_by_name(name) {
        Some(section) => Ok(section.uncompressed_data()?),
        None => Ok(Cow::Borrowed(&[][..])),
    }
}

struct Sections<'a> {
    info: gimli::DebugInfo<R<'a>>,
    types: gimli::DebugTypes<R<'a>>,
    abbrev: gimli::DebugAbbrev<R<'a>>,
    str_: gimli::DebugStr<R<'a>>,
    str_offsets: gimli::DebugStrOffsets<R<'a>>,
    line_str: gimli::DebugLineStr<R<'a>>,
}

/// A unit header with what is needed to read its entries (no line program).
struct Unit<'a> {
    header: UnitHeader<R<'a>>,
    abbrevs: Arc<gimli::Abbreviations>,
    str_base: DebugStrOffsetsBase<usize>,
}

/// A DIE anywhere: (index into `Ctx::units`, offset in that unit).
type DieRef = (usize, UnitOffset<usize>);

struct Ctx<'a> {
    s: Sections<'a>,
    /// `.debug_info` units in section order, then `.debug_types` units.
    units: Vec<Unit<'a>>,
    /// Number of `.debug_info` units at the front of `units`.
    n_info: usize,
    /// Type signature -> type DIE, for `DW_FORM_ref_sig8`.
    sigs: HashMap<u64, DieRef>,
}

/// A struct definition reduced to what the tables hold.
struct StructDef {
    size: u64,
    /// (name, offset, size) of named top-level members.
    members: Vec<(String, u64, u64)>,
}

/// Limit on typedef/qualifier/array chains, against reference cycles.
const MAX_TYPE_DEPTH: u32 = 64;

impl<'a> Ctx<'a> {
    fn new(s: Sections<'a>) -> Result<Ctx<'a>> {
        let mut cache: HashMap<DebugAbbrevOffset<usize>, Arc<gimli::Abbreviations>> =
            HashMap::new();
        let mut headers = Vec::new();
        let mut iter = s.info.units();
        while let Some(h) = iter.next()? {
            headers.push(h);
        }
        let n_info = headers.len();
        let mut iter = s.types.units();
        while let Some(h) = iter.next()? {
            headers.push(h);
        }
        let mut units = Vec::with_capacity(headers.len());
        let mut sigs = HashMap::new();
        for header in headers {
            let off = header.debug_abbrev_offset();
            let abbrevs = match cache.get(&off) {
                Some(a) => a.clone(),
                None => {
                    let a = Arc::new(s.abbrev.abbreviations(off)?);
                    cache.insert(off, a.clone());
                    a
                }
            };
            let mut str_base = DebugStrOffsetsBase::default_for_encoding_and_file(
                header.encoding(),
                gimli::DwarfFileType::Main,
            );
            {
                let mut cursor = header.entries(&abbrevs);
                if let Some((_, root)) = cursor.next_dfs()? {
                    if let Some(AttributeValue::DebugStrOffsetsBase(base)) =
                        root.attr_value(gimli::DW_AT_str_offsets_base)?
                    {
                        str_base = base;
                    }
                }
            }
            if let UnitType::Type {
                type_signature,
                type_offset,
            } = header.type_()
            {
                sigs.entry(type_signature.0)
                    .or_insert((units.len(), type_offset));
            }
            units.push(Unit {
                header,
                abbrevs,
                str_base,
            });
        }
        Ok(Ctx {
            s,
            units,
            n_info,
            sigs,
        })
    }

    /// The string of a name-like attribute value (None for forms that need
    /// a supplementary file).
    fn attr_str(&self, u: usize, value: AttributeValue<R<'a>>) -> Result<Option<&'a [u8]>> {
        let unit = &self.units[u];
        Ok(match value {
            AttributeValue::String(s) => Some(s.slice()),
            AttributeValue::DebugStrRef(off) => Some(self.s.str_.get_str(off)?.slice()),
            AttributeValue::DebugStrOffsetsIndex(index) => {
                let off = self.s.str_offsets.get_str_offset(
                    unit.header.format(),
                    unit.str_base,
                    index,
                )?;
                Some(self.s.str_.get_str(off)?.slice())
            }
            AttributeValue::DebugLineStrRef(off) => Some(self.s.line_str.get_str(off)?.slice()),
            _ => None,
        })
    }

    /// Resolve a `DW_AT_type`-like reference to a DIE.
    fn resolve(&self, u: usize, value: AttributeValue<R<'a>>) -> Option<DieRef> {
        match value {
            AttributeValue::UnitRef(off) => Some((u, off)),
            AttributeValue::DebugInfoRef(off) => {
                // Last .debug_info unit starting at or before `off`.
                let info = &self.units[..self.n_info];
                let idx = info.partition_point(|unit| match unit.header.offset() {
                    UnitSectionOffset::DebugInfoOffset(start) => start.0 <= off.0,
                    _ => false,
                });
                let idx = idx.checked_sub(1)?;
                let unit_off = off.to_unit_offset(&info[idx].header)?;
                Some((idx, unit_off))
            }
            AttributeValue::DebugTypesRef(sig) => self.sigs.get(&sig.0).copied(),
            _ => None,
        }
    }

    /// Byte size of the type at `die`, following typedefs and qualifiers.
    /// None when the size cannot be known from this file.
    fn type_size(&self, die: DieRef, depth: u32) -> Result<Option<u64>> {
        if depth > MAX_TYPE_DEPTH {
            return Err(DwarfError::Malformed(format!(
                "type reference chain deeper than {MAX_TYPE_DEPTH} at unit {} offset {:#x}",
                die.0, die.1 .0
            )));
        }
        let (u, off) = die;
        let unit = &self.units[u];
        let entry = unit.header.entry(&unit.abbrevs, off)?;
        if let Some(attr) = entry.attr(gimli::DW_AT_byte_size)? {
            // A constant; a non-constant (VLA) size is unknown.
            return Ok(attr.udata_value());
        }
        let follow = |this: &Self| -> Result<Option<u64>> {
            match entry.attr_value(gimli::DW_AT_type)? {
                Some(v) => match this.resolve(u, v) {
                    Some(target) => this.type_size(target, depth + 1),
                    None => Ok(None),
                },
                // e.g. `const void`: no size.
                None => Ok(None),
            }
        };
        match entry.tag() {
            gimli::DW_TAG_typedef
            | gimli::DW_TAG_const_type
            | gimli::DW_TAG_volatile_type
            | gimli::DW_TAG_restrict_type
            | gimli::DW_TAG_atomic_type
            | gimli::DW_TAG_packed_type
            | gimli::DW_TAG_shared_type
            | gimli::DW_TAG_immutable_type => follow(self),
            gimli::DW_TAG_pointer_type
            | gimli::DW_TAG_reference_type
            | gimli::DW_TAG_rvalue_reference_type
            | gimli::DW_TAG_ptr_to_member_type => Ok(Some(u64::from(unit.header.address_size()))),
            gimli::DW_TAG_array_type => {
                let Some(elem) = follow(self)? else {
                    return Ok(None);
                };
                let Some(count) = self.array_count(die)? else {
                    return Ok(None);
                };
                Ok(elem.checked_mul(count))
            }
            _ => Ok(None),
        }
    }

    /// Number of elements of an array type (product over its dimensions).
    /// A dimension without bounds (flexible array member) counts 0.
    fn array_count(&self, die: DieRef) -> Result<Option<u64>> {
        let (u, off) = die;
        let unit = &self.units[u];
        let mut tree = unit.header.entries_tree(&unit.abbrevs, Some(off))?;
        let root = tree.root()?;
        let mut children = root.children();
        let mut total: u64 = 1;
        let mut dims = 0;
        while let Some(child) = children.next()? {
            let e = child.entry();
            if e.tag() != gimli::DW_TAG_subrange_type {
                continue;
            }
            dims += 1;
            let n = if let Some(attr) = e.attr(gimli::DW_AT_count)? {
                match constant(&attr.value()) {
                    Some(c) => c.max(0) as u64,
                    None => return Ok(None),
                }
            } else if let Some(attr) = e.attr(gimli::DW_AT_upper_bound)? {
                let Some(upper) = constant(&attr.value()) else {
                    return Ok(None);
                };
                let lower = match e.attr(gimli::DW_AT_lower_bound)? {
                    Some(attr) => match constant(&attr.value()) {
                        Some(l) => l,
                        None => return Ok(None),
                    },
                    None => 0,
                };
                let n = upper
                    .checked_sub(lower)
                    .and_then(|d| d.checked_add(1))
                    .unwrap_or(0);
                n.max(0) as u64
            } else {
                0
            };
            total = match total.checked_mul(n) {
                Some(t) => t,
                None => return Ok(None),
            };
        }
        Ok(Some(if dims == 0 { 0 } else { total }))
    }

    /// Read a struct/union definition: its size and named top-level members.
    /// Returns the definition and whether every named member was resolved.
    fn read_struct(&self, die: DieRef) -> Result<Option<(StructDef, bool)>> {
        let (u, off) = die;
        let unit = &self.units[u];
        let mut tree = unit.header.entries_tree(&unit.abbrevs, Some(off))?;
        let root = tree.root()?;
        let Some(size) = root
            .entry()
            .attr(gimli::DW_AT_byte_size)?
            .and_then(|a| a.udata_value())
        else {
            return Ok(None);
        };
        let mut def = StructDef {
            size,
            members: Vec::new(),
        };
        let mut complete = true;
        let mut children = root.children();
        while let Some(child) = children.next()? {
            let e = child.entry();
            if e.tag() != gimli::DW_TAG_member {
                continue;
            }
            if let Some(AttributeValue::Flag(true)) = e.attr_value(gimli::DW_AT_declaration)? {
                continue; // C++ static data member
            }
            let Some(name) = e.attr_value(gimli::DW_AT_name)? else {
                continue; // anonymous struct/union member: not flattened
            };
            let Some(name) = self.attr_str(u, name)? else {
                complete = false;
                continue;
            };
            let name = String::from_utf8_lossy(name).into_owned();
            let offset = if let Some(attr) = e.attr(gimli::DW_AT_data_member_location)? {
                member_location(&attr.raw_value(), unit.header.encoding())?
            } else if let Some(attr) = e.attr(gimli::DW_AT_data_bit_offset)? {
                attr.udata_value().map(|bits| bits / 8)
            } else {
                Some(0) // union members, or a first member without location
            };
            let size = match e.attr_value(gimli::DW_AT_type)? {
                Some(v) => match self.resolve(u, v) {
                    Some(t) => self.type_size(t, 0)?,
                    None => None,
                },
                None => None,
            };
            match (offset, size) {
                (Some(o), Some(s)) => def.members.push((name, o, s)),
                _ => complete = false,
            }
        }
        Ok(Some((def, complete)))
    }

    /// Find the best definition of every name in [`STRUCTS`].
    fn find_structs(&self) -> Result<BTreeMap<&'static str, StructDef>> {
        // Rank of a candidate: complete beats partial, a struct named X
        // beats an anonymous/other-named struct reached via `typedef X`.
        // For equal rank the first one wins.
        let mut best: HashMap<&'static str, (u8, StructDef)> = HashMap::new();
        let rank = |complete: bool, named: bool| u8::from(complete) * 2 + u8::from(named);
        let mut done = 0usize;

        for u in 0..self.units.len() {
            let unit = &self.units[u];
            let mut tree = unit.header.entries_tree(&unit.abbrevs, None)?;
            let root = tree.root()?;
            let mut children = root.children();
            while let Some(child) = children.next()? {
                let e = child.entry();
                let named = match e.tag() {
                    gimli::DW_TAG_structure_type | gimli::DW_TAG_union_type => true,
                    gimli::DW_TAG_typedef => false,
                    _ => continue,
                };
                let Some(name) = e.attr_value(gimli::DW_AT_name)? else {
                    continue;
                };
                let Some(name) = self.attr_str(u, name)? else {
                    continue;
                };
                let Some(&wanted) = STRUCTS.iter().find(|s| s.as_bytes() == name) else {
                    continue;
                };
                let current = best.get(wanted).map(|(r, _)| *r);
                // Skip when this kind of candidate cannot beat the current one.
                if current.is_some_and(|c| c >= rank(true, named)) {
                    continue;
                }
                let target = if named {
                    if let Some(AttributeValue::Flag(true)) =
                        e.attr_value(gimli::DW_AT_declaration)?
                    {
                        continue;
                    }
                    (u, e.offset())
                } else {
                    // typedef X -> a struct/union definition of another name
                    // (or none); `typedef struct X X` is covered above.
                    let Some(v) = e.attr_value(gimli::DW_AT_type)? else {
                        continue;
                    };
                    let Some(t) = self.resolve(u, v) else {
                        continue;
                    };
                    let tu = &self.units[t.0];
                    let te = tu.header.entry(&tu.abbrevs, t.1)?;
                    if !matches!(
                        te.tag(),
                        gimli::DW_TAG_structure_type | gimli::DW_TAG_union_type
                    ) {
                        continue;
                    }
                    if let Some(AttributeValue::Flag(true)) =
                        te.attr_value(gimli::DW_AT_declaration)?
                    {
                        continue;
                    }
                    if let Some(n) = te.attr_value(gimli::DW_AT_name)? {
                        if self.attr_str(t.0, n)? == Some(name) {
                            continue;
                        }
                    }
                    t
                };
                let Some((def, complete)) = self.read_struct(target)? else {
                    continue;
                };
                let r = rank(complete, named);
                if current.is_none_or(|c| r > c) {
                    if r == rank(true, true) {
                        done += 1;
                    }
                    best.insert(wanted, (r, def));
                }
            }
            if done == STRUCTS.len() {
                break;
            }
        }
        Ok(best
            .into_iter()
            .map(|(name, (_, def))| (name, def))
            .collect())
    }
}

/// A constant attribute value as a signed integer.
fn constant(value: &AttributeValue<R<'_>>) -> Option<i64> {
    match *value {
        AttributeValue::Sdata(v) => Some(v),
        AttributeValue::Data1(v) => Some(i64::from(v)),
        AttributeValue::Data2(v) => Some(i64::from(v)),
        AttributeValue::Data4(v) => Some(i64::from(v)),
        AttributeValue::Data8(v) => i64::try_from(v).ok(),
        AttributeValue::Udata(v) => i64::try_from(v).ok(),
        _ => None,
    }
}

/// `DW_AT_data_member_location`: a constant, or a location expression
/// relative to the struct address (`DW_OP_plus_uconst N`, as DWARF 2 wrote
/// it). None for anything else.
fn member_location(
    value: &AttributeValue<R<'_>>,
    encoding: gimli::Encoding,
) -> Result<Option<u64>> {
    let expr = match *value {
        AttributeValue::Exprloc(expr) => expr,
        AttributeValue::Block(data) => gimli::Expression(data),
        ref other => return Ok(constant(other).and_then(|v| u64::try_from(v).ok())),
    };
    // The struct's address is pushed first; evaluate a tiny subset.
    let mut stack: Vec<u64> = vec![0];
    let mut ops = expr.operations(encoding);
    while let Some(op) = ops.next()? {
        match op {
            Operation::PlusConstant { value } => {
                let Some(top) = stack.last_mut() else {
                    return Ok(None);
                };
                *top = top.wrapping_add(value);
            }
            Operation::UnsignedConstant { value } => stack.push(value),
            Operation::SignedConstant { value } => stack.push(value as u64),
            Operation::Plus => {
                let (Some(a), Some(b)) = (stack.pop(), stack.pop()) else {
                    return Ok(None);
                };
                stack.push(a.wrapping_add(b));
            }
            _ => return Ok(None),
        }
        if stack.len() > 64 {
            return Ok(None);
        }
    }
    Ok(stack.last().copied())
}

#[cfg(test)]
mod tests;
