//! Interning of unwound stacks: each distinct list of frame addresses gets a
//! small id, so the live map stores four bytes per allocation.

use std::collections::HashMap;

/// Distinct stacks (innermost frame first).
#[derive(Debug, Default)]
pub struct StackTable {
    ids: HashMap<Vec<u64>, u32>,
    list: Vec<Vec<u64>>,
}

impl StackTable {
    /// An empty table.
    pub fn new() -> StackTable {
        StackTable::default()
    }

    /// The id of `frames`, adding it if new.
    pub fn intern(&mut self, frames: &[u64]) -> u32 {
        if let Some(&id) = self.ids.get(frames) {
            return id;
        }
        let id = self.list.len() as u32;
        self.list.push(frames.to_vec());
        self.ids.insert(frames.to_vec(), id);
        id
    }

    /// The frames of `id`.
    pub fn get(&self, id: u32) -> &[u64] {
        self.list
            .get(id as usize)
            .map(|v| v.as_slice())
            .unwrap_or(&[])
    }

    /// Number of distinct stacks.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn interns() {
        let mut t = super::StackTable::new();
        let a = t.intern(&[1, 2, 3]);
        let b = t.intern(&[1, 2]);
        assert_ne!(a, b);
        assert_eq!(t.intern(&[1, 2, 3]), a);
        assert_eq!(t.get(b), &[1, 2]);
    }
}
