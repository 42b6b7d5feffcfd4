//! Every PTX kernel the crate emits (the whole catalog) goes through NVIDIA's `ptxas` for sm_80
//! and sm_90, which checks syntax, types and register use without a GPU. `ptxas -v` must report
//! no errors and no warnings, and no kernel may spill registers.
//!
//! `ptxas` is found through the env var `PTXAS`, then `PATH`, then `.tools/ptxas` at the
//! workspace root (`bash scripts/fetch-ptxas.sh` puts it there). Without it the test is skipped
//! loudly, except under `CI=true`, where a missing `ptxas` fails it.
//!
//! Run with `--nocapture` for the register table.

use std::collections::HashMap;

use tensor_fn_kernels::check::{assemble, check_no_spills, ptxas_or_skip};
use tensor_fn_kernels::ptx::{Header, Module};
use tensor_fn_kernels::Program;

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
        // Every entry reported once; no function spills (stores or loads).
        let used = check_no_spills(&log, &ptx).unwrap_or_else(|e| panic!("{arch}: {e}"));
        let mut rows: Vec<_> = used.iter().filter(|f| f.entry).collect();
        rows.sort_by(|a, b| what[&a.name].cmp(&what[&b.name]).then(a.name.cmp(&b.name)));
        table.push_str(&format!("\n{arch}: registers / stack frame bytes\n"));
        for f in rows {
            table.push_str(&format!(
                "  {:>3} regs {:>4} stack  {:<32} {}\n",
                f.registers.unwrap_or(0),
                f.stack_frame,
                f.name,
                what[&f.name]
            ));
        }
    }
    println!("{table}");

    // The newest header we may emit assembles too.
    let mut m = Module::new(Header::new((9, 0), 90, 64).unwrap());
    programs[0].1.add_to(&mut m);
    let v90 = m.to_ptx();
    let log = assemble(&ptxas, &v90, "sm_90", "v90");
    check_no_spills(&log, &v90).unwrap_or_else(|e| panic!("sm_90, .version 9.0: {e}"));
}

/// The spill check on a real `ptxas -v` log: a module of two kernels where only the second
/// spills, limited to 32 registers while it keeps 96 values live.
#[test]
fn a_spilling_kernel_is_named() {
    let Some(ptxas) = ptxas_or_skip() else {
        return;
    };
    let n = 96;
    let mut ptx = String::from(
        ".version 7.8\n.target sm_80\n.address_size 64\n\n\
         .visible .entry fits(.param .u64 p)\n{\n\tret;\n}\n\n\
         .visible .entry spills(.param .u64 p) .maxnreg 32\n{\n",
    );
    ptx.push_str(&format!(
        "\t.reg .f32 %f<{n}>;\n\t.reg .b64 %rd<2>;\n\tld.param.u64 %rd1, [p];\n"
    ));
    for i in 0..n {
        ptx.push_str(&format!(
            "\tld.volatile.global.f32 %f{i}, [%rd1+{}];\n",
            4 * i
        ));
    }
    for i in 0..n {
        ptx.push_str(&format!(
            "\tst.volatile.global.f32 [%rd1+{}], %f{};\n",
            4 * i,
            n - 1 - i
        ));
    }
    ptx.push_str("\tret;\n}\n");
    let log = assemble(&ptxas, &ptx, "sm_80", "spills");
    let err = check_no_spills(&log, &ptx).expect_err(&log);
    assert!(err.contains("1 of 2 functions spill"), "{err}");
    assert!(err.contains("spills ("), "{err}");
    assert!(!err.contains("fits"), "{err}");
}
