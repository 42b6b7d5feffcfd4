//! Writes every PTX module tensor-fn ships or emits into a directory, for reading or profiling:
//! the library kernels (GEMMs, reductions, every fused-kernel form) and the module of every
//! compiled function of the examples, the seed's autoencoder with its gradients included.
//!
//! Run: `cargo run --release --example dump_ptx -- DIR`

use std::path::PathBuf;

use tensor_fn::prelude::*;

#[allow(dead_code)]
#[path = "autoencoder.rs"]
mod autoencoder;
#[allow(dead_code)]
#[path = "theano_intro.rs"]
mod theano_intro;

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let dir: PathBuf = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .ok_or("usage: dump_ptx DIR")?;
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;

    // The intro's closures, as theano_intro writes them.
    let f = tensor_fn!(|a: f64[n, m], v: f64[m]| dot(a, v));
    let g = tensor_fn!(|v: f64[n], w: f64[n]| grad(dot(v, w), w));
    let h = tensor_fn!(|x: f64| x + (-x));
    let functions: Vec<(&str, FnInfo)> = vec![
        ("autoencoder_train", autoencoder::Autoencoder::TRAIN_INFO),
        ("autoencoder_hidden", autoencoder::Autoencoder::HIDDEN_INFO),
        (
            "autoencoder_reconstruct",
            autoencoder::Autoencoder::RECONSTRUCT_INFO,
        ),
        ("intro_x_2", theano_intro::x_2::INFO),
        ("intro_x_10", theano_intro::x_10::INFO),
        ("intro_av", theano_intro::av::INFO),
        ("intro_silly_f", theano_intro::Silly::F_INFO),
        ("intro_dot", f.info),
        ("intro_grad", g.info),
        ("intro_zero", h.info),
    ];
    let mut written = 0;
    for (name, info) in &functions {
        let path = dir.join(format!("{name}.ptx"));
        tensor_fn::io::write_atomic(&path, info.ptx.as_bytes())?;
        tensor_fn::io::write_atomic(
            dir.join(format!("{name}.launches.txt")),
            info.launches.as_bytes(),
        )?;
        written += 1;
    }
    let catalog = tensor_fn::kernels::catalog::module_ptx();
    tensor_fn::io::write_atomic(dir.join("library_kernels.ptx"), catalog.as_bytes())?;
    println!("wrote {} modules to {}", written + 1, dir.display());
    Ok(())
}
