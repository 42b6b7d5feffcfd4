//! Every PTX kernel the crate emits (the whole catalog) goes through NVIDIA's `ptxas` for sm_80
//! and sm_90, which checks syntax, types and register use without a GPU. `ptxas -v` must report
//! no errors and no warnings, and no kernel may spill registers.
//!
//! `ptxas` is found through the env var `PTXAS`, then `PATH`, then `.tools/ptxas` at the
//! workspace root (`bash scripts/fetch-ptxas.sh` puts it there). Without it the test is skipped
//! loudly, except under `CI=true`, where a missing `ptxas` fails it.
//!
//! Run with `--nocapture` for the register and spill table.

use std::collections::HashMap;

use tensor_fn_kernels::check::{assemble, ptxas_or_skip};
use tensor_fn_kernels::ptx::{Header, Module};
use tensor_fn_kernels::Program;

/// Per entry: (registers, spill stores + loads in bytes), from `ptxas -v`.
fn usage(log: &str) -> HashMap<String, (u32, u32)> {
    let mut out = HashMap::new();
    let mut cur: Option<String> = None;
    let mut spill = 0u32;
    for line in log.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            cur = rest.split('\'').next().map(str::to_string);
            spill = 0;
        } else if line.contains("spill stores") {
            // "N bytes stack frame, N bytes spill stores, N bytes spill loads"
            let nums: Vec<u32> = line
                .split(',')
                .filter_map(|p| p.split_whitespace().next().and_then(|n| n.parse().ok()))
                .collect();
            spill = nums.iter().skip(1).sum();
        } else if let Some(rest) = line.split("Used ").nth(1) {
            let regs: u32 = rest
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            if let Some(name) = cur.take() {
                out.insert(name, (regs, spill));
            }
        }
    }
    out
}

#[test]
fn every_emitted_kernel_assembles() {
    let Some(ptxas) = ptxas_or_skip() else {
        return;
    };
    let programs: Vec<(String, Program)> = tensor_fn_kernels::catalog::programs();
    let mut module = Module::default();
    let mut what: HashMap<String, String> = HashMap::new();
    for (name, p) in &programs {
        p.add_to(&mut module);
        for l in &p.launches {
            what.entry(l.kernel.name.clone())
                .or_insert_with(|| name.clone());
        }
    }
    let ptx = module.to_ptx();
    let mut table = String::new();
    for arch in ["sm_80", "sm_90"] {
        let log = assemble(&ptxas, &ptx, arch, "catalog");
        let used = usage(&log);
        assert_eq!(
            used.len(),
            module.kernels.len(),
            "ptxas -v reported {} of {} entries for {arch}",
            used.len(),
            module.kernels.len()
        );
        let mut rows: Vec<(&String, &(u32, u32))> = used.iter().collect();
        rows.sort_by(|a, b| what[a.0].cmp(&what[b.0]).then(a.0.cmp(b.0)));
        table.push_str(&format!("\n{arch}: registers / spill bytes\n"));
        for (name, (regs, spill)) in rows {
            table.push_str(&format!(
                "  {regs:>3} regs {spill:>4} spill  {name:<32} {}\n",
                what[name]
            ));
            assert_eq!(
                *spill, 0,
                "{name} ({}) spills {spill} bytes on {arch}",
                what[name]
            );
        }
    }
    println!("{table}");

    // The newest header we may emit assembles too.
    let mut m = Module::new(Header::new((9, 0), 90, 64).unwrap());
    programs[0].1.add_to(&mut m);
    assemble(&ptxas, &m.to_ptx(), "sm_90", "v90");
}
