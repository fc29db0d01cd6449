//! Test fixture for `ljleak probes` and `ljleak leaks --alloc-usdt`: a toy
//! allocator that hands out ids and reports them through USDT probes
//! (`ljfix:alloc(id, size)` with a semaphore, `ljfix:free(id)`).
//!
//! Prints `ready`; on `go` allocates five 3000-byte blocks, frees the 2nd
//! and 4th, prints `done enabled=BOOL` (whether a tracer had the alloc
//! probe's semaphore raised); on `quit` exits.

use std::io::BufRead;

fn main() {
    println!("ready");
    let mut next = 0x1000usize;
    let mut kept = Vec::new();
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        match line.trim() {
            "go" => {
                let mut enabled = false;
                for i in 0..5 {
                    let id = next;
                    next += 0x1000;
                    enabled |= probe::probe_lazy!(ljfix, alloc, id, 3000usize);
                    if i % 2 == 1 {
                        probe::probe!(ljfix, free, id);
                    } else {
                        kept.push(id);
                    }
                }
                println!("done enabled={enabled}");
            }
            "quit" => break,
            _ => {}
        }
    }
}
