//! `ljleak probes`: the USDT probes of every object mapped in a process.

use std::fmt::Write as _;

use anyhow::Result;

use super::emit;
use crate::cli::{ProbesArgs, PROBES_FORMATS};
use crate::report::output::{Format, Formats};
use crate::target::elf::ElfFile;
use crate::target::{self, Maps};
use crate::trace::usdt::{probes_of, SdtProbe};

/// Every SDT probe of every mapped object of `pid`.
pub fn all_probes(pid: i32, maps: &Maps) -> Vec<SdtProbe> {
    maps.files()
        .into_iter()
        .filter_map(|p| ElfFile::open(pid, p).ok())
        .flat_map(|elf| probes_of(&elf))
        .collect()
}

/// Run `ljleak probes`.
pub fn run(a: ProbesArgs) -> Result<()> {
    target::check_process(a.pid)?;
    let maps = Maps::read(a.pid)?;
    let outs = emit::outputs(
        &Formats {
            command: "probes",
            supported: PROBES_FORMATS,
            stdout: Format::Text,
            file: Format::Text,
        },
        &a.output,
        a.format,
    )?;
    let probes = all_probes(a.pid, &maps);
    emit::emit(&outs, |f| match f {
        Format::Json => emit::json(&probes),
        _ => {
            let mut t = String::new();
            for p in &probes {
                let _ = write!(
                    t,
                    "{}:{} {} address {:#x}",
                    p.provider, p.name, p.object, p.address
                );
                if p.semaphore != 0 {
                    let _ = write!(t, " semaphore {:#x}", p.semaphore);
                }
                let _ = writeln!(t, " args [{}]", p.args);
            }
            if probes.is_empty() {
                t.push_str("no USDT probes in any mapped object\n");
            }
            emit::text(t)
        }
    })
}
