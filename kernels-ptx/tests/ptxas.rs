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
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use tensor_fn_kernels::ptx::{Header, Module};
use tensor_fn_kernels::Program;

fn find_ptxas() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("PTXAS") {
        return Some(PathBuf::from(p));
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join("ptxas");
            if p.is_file() {
                return Some(p);
            }
        }
    }
    let local = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.tools/ptxas");
    local.is_file().then_some(local)
}

fn ptxas_or_skip() -> Option<PathBuf> {
    match find_ptxas() {
        Some(p) => Some(p),
        None => {
            let msg = "ptxas not found (env PTXAS, PATH, .tools/ptxas): the PTX validity test \
                       did NOT run; `bash scripts/fetch-ptxas.sh` fetches it";
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("{msg} (CI=true: a missing ptxas is a failure)");
            }
            // Straight to the stderr handle: libtest captures `eprintln!` of passing tests.
            let _ = writeln!(
                std::io::stderr(),
                "\n!!!!!!!!!!\n!!! SKIPPED: {msg}\n!!!!!!!!!!\n"
            );
            None
        }
    }
}

/// Assembles `ptx` for `arch`; returns ptxas's `-v` output. Panics on any error or warning.
fn assemble(ptxas: &Path, ptx: &str, arch: &str, tag: &str) -> String {
    let dir = std::env::temp_dir().join(format!(
        "tensor-fn-ptxas-{}-{tag}-{arch}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("kernels.ptx");
    std::fs::write(&src, ptx).unwrap();
    let out = Command::new(ptxas)
        .arg("-v")
        .arg(format!("-arch={arch}"))
        .arg(&src)
        .arg("-o")
        .arg(dir.join("kernels.cubin"))
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", ptxas.display()));
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "ptxas -arch={arch} failed on {} ({}):\n{log}",
        src.display(),
        out.status
    );
    let bad: Vec<&str> = log
        .lines()
        .filter(|l| {
            let l = l.to_lowercase();
            l.contains("error") || l.contains("warning")
        })
        .collect();
    assert!(
        bad.is_empty(),
        "ptxas -arch={arch} complained:\n{}",
        bad.join("\n")
    );
    let _ = std::fs::remove_dir_all(&dir);
    log
}

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
