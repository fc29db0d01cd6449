//! A hasher for integer keys (addresses, block numbers, thread ids) in hot
//! maps: two multiplies instead of SipHash, which showed as the
//! largest user-space cost of the leak tracer after copying records. Not
//! for keys a hostile input chooses freely: a flood of colliding keys slows
//! the map down (memory stays bounded by the map's own limits).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Hashes integers with splitmix64's finaliser: every key bit reaches the
/// low bits the map indexes buckets by (addresses have theirs zero).
#[derive(Debug, Default, Clone, Copy)]
pub struct IntHasher(u64);

impl Hasher for IntHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for c in bytes.chunks(8) {
            let mut w = [0u8; 8];
            w[..c.len()].copy_from_slice(c);
            self.write_u64(u64::from_le_bytes(w));
        }
    }
    fn write_u64(&mut self, n: u64) {
        // splitmix64's finaliser over the key and what came before.
        let mut x = n ^ self.0.rotate_left(23);
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        self.0 = x ^ (x >> 31);
    }
    fn write_u32(&mut self, n: u32) {
        self.write_u64(n as u64);
    }
    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
}

/// A map with integer keys hashed by [`IntHasher`].
pub type IntMap<K, V> = HashMap<K, V, BuildHasherDefault<IntHasher>>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    #[test]
    fn aligned_addresses_spread_over_low_bits() {
        let b = BuildHasherDefault::<IntHasher>::default();
        let mut seen = std::collections::HashSet::new();
        for i in 0..1024u64 {
            seen.insert(b.hash_one(0x7f00_0000_0000u64 + i * 64) & 1023);
        }
        // 1024 addresses 64 bytes apart hit most of 1024 buckets.
        assert!(seen.len() > 600, "{} distinct buckets", seen.len());
    }

    #[test]
    fn a_map_works() {
        let mut m: IntMap<u64, u32> = IntMap::default();
        for i in 0..1000u64 {
            m.insert(i << 4, i as u32);
        }
        assert_eq!(m.get(&(500 << 4)), Some(&500));
        assert_eq!(m.len(), 1000);
    }
}
