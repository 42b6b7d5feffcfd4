//! The tutorial examples' shared parts: numpy's `RandomState` reproduced bit for bit (the
//! tutorials' initial weights), the tutorials' early stopping rule, their error measure, and a
//! short run of the logistic regression example's training loop with its files, and the stacked
//! denoising autoencoders example end to end on a small network.

// Each example binary has its own copy of the shared tutorials module; this test loads two.
#![allow(clippy::duplicate_mod)]

#[allow(dead_code)]
#[path = "../examples/logistic_sgd.rs"]
mod logistic_sgd;

#[allow(dead_code)]
#[path = "../examples/sda.rs"]
mod sda;

use clap::Parser;
use logistic_sgd::tutorials::{
    self, Common, Data, EarlyStopping, NumpyRandomState, Part, Schedule,
};
use ndarray::{arr1, Array1, Array2};

#[test]
fn random_state_matches_numpy() {
    // numpy 2.4: RandomState(1234).random_sample(3)
    let mut r = NumpyRandomState::new(1234);
    let want = [0.1915194503788923, 0.6221087710398319, 0.4377277390071145];
    for w in want {
        assert_eq!(r.random_sample(), w);
    }
    // RandomState(123).randint(2**30), then the dA tutorial's W: uniform(+-4 sqrt(6/1284)).
    let mut r = NumpyRandomState::new(123);
    assert_eq!(r.randint_2_30(), 843828734);
    let b = 4.0 * (6.0f64 / 1284.0).sqrt();
    let w = r.uniform(-b, b, 784, 500);
    assert_eq!(w[[0, 0]] as f64, 0.11645860970020294);
    assert_eq!(w[[0, 1]] as f64, -0.03911701589822769);
    assert_eq!(w[[0, 2]] as f64, 0.10438895970582962);
    assert_eq!(w[[783, 499]] as f64, 0.2316545844078064);
    let sum: f64 = w.iter().map(|&v| v as f64).sum();
    assert!((sum - 256.23555634060915).abs() < 1e-9, "{sum}");
    // The MLP tutorial's W1.
    let b = (6.0f64 / 1284.0).sqrt();
    let w = NumpyRandomState::new(1234).uniform(-b, b, 784, 500);
    assert_eq!(w[[0, 0]] as f64, -0.04217459261417389);
    let sum: f64 = w.iter().map(|&v| v as f64).sum();
    assert!((sum - -24.91027101463527).abs() < 1e-9, "{sum}");
}

#[test]
fn early_stopping_follows_the_tutorial() {
    // 83 steps per epoch, patience 5000: validate every 83 steps.
    let mut s = EarlyStopping::new(5000, 83);
    assert_eq!(s.validation_frequency, 83);
    assert!(s.validates_after(82) && !s.validates_after(83));
    assert!(s.record(82, 0.2));
    assert_eq!(s.patience, 5000); // 2 * 82 < 5000
                                  // A large improvement late extends the patience to twice the step.
    assert!(s.record(4000, 0.1));
    assert_eq!(s.patience, 8000);
    // Better, but by less than 0.5%: recorded, patience unchanged.
    assert!(s.record(6000, 0.0999));
    assert_eq!((s.patience, s.best_iter), (8000, 6000));
    assert!(!s.record(7000, 0.2));
    assert!(!s.done(7999) && s.done(8000));
    // Patience below two epochs validates every patience / 2 steps.
    assert_eq!(EarlyStopping::new(10, 2500).validation_frequency, 5);
}

#[test]
fn the_tutorial_error_counts_whole_minibatches() {
    let set = Part {
        x: Array2::zeros((5, 784)),
        y: arr1(&[0, 1, 2, 3, 4]),
    };
    // A "model" wrong on the odd labels.
    let odd = |_: ndarray::ArrayView2<f32>, y: ndarray::ArrayView1<i64>| {
        Ok(y.iter().filter(|&&l| l % 2 == 1).count() as f32 / y.len() as f32)
    };
    // Two whole minibatches of 2 (the 5th image is left out), looked at in one chunk.
    let mut calls = 0;
    let e = tutorials::tutorial_error(
        |x, y| {
            calls += 1;
            odd(x, y)
        },
        &set,
        2,
    )
    .unwrap();
    assert_eq!((e, calls), (0.5, 1));
    // Chunks of 3 and 2 images, 1/3 and 1/2 wrong: 2 of 5 in all.
    assert_eq!(tutorials::full_error(odd, &set, 3).unwrap(), 0.4);
    // Minibatches of one image are counted exactly too (their rates are 0 or 1).
    assert_eq!(tutorials::tutorial_error(odd, &set, 1).unwrap(), 0.4);
}

#[test]
fn a_short_logistic_run_learns_and_writes_its_files() {
    let out = std::env::temp_dir().join(format!("tensor-fn-tutorial-{}", std::process::id()));
    let common = Common {
        data: None,
        limit: Some(3000),
        out: out.clone(),
        device: "cpu".into(),
        quiet: true,
    };
    let data = Data::load(&common).expect("the shipped MNIST loads");
    let mut model =
        logistic_sgd::LogisticRegression::new(Array2::zeros((784, 10)), Array1::zeros(10)).unwrap();
    let sch = Schedule {
        max_epochs: 3,
        batch: 600,
        lr: 0.13,
        patience: 5000,
    };
    let fit = tutorials::fit(&mut model, &data, &common, &sch).unwrap();
    assert_eq!(fit.epochs.len(), 3);
    // Epoch 1 of the full tutorial starts at ln(10) and falls; 5 steps of 600 already help.
    assert!(fit.epochs[0].cost < 10f64.ln() && fit.epochs[2].cost < fit.epochs[0].cost);
    assert!(fit.stop.best_valid < 0.25, "{}", fit.stop.best_valid);
    tutorials::report::<logistic_sgd::LogisticRegression>(
        "logistic_sgd",
        tensor_fn::Device::Cpu,
        &fit,
        &data,
        &common,
        std::time::Instant::now(),
        &[("extra", "1".into())],
    )
    .unwrap();
    let results = std::fs::read_to_string(out.join("results.json")).unwrap();
    assert!(results.contains("\"epochs\": 3"), "{results}");
    assert!(results.contains("\"extra\": 1"), "{results}");
    let csv = std::fs::read_to_string(out.join("epochs.csv")).unwrap();
    assert_eq!(csv.lines().count(), 4, "{csv}");
    let ck = tensor_fn::io::Checkpoint::load(out.join("checkpoint.tfck")).unwrap();
    assert!(ck.meta("valid_error").is_some());
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn stacked_denoising_autoencoders_start_as_the_tutorial_and_resume_pretrained() {
    // numpy 2.4: rng = RandomState(89677); rng.randint(2**30); then each sigmoid layer's
    // W = float32(rng.uniform(+-sqrt(6 / (fan_in + fan_out)))) * 4.
    let m = sda::initial(89677, [1000, 1000, 1000]).unwrap();
    assert_eq!(m.random_stream().0, 1054665268);
    let w1 = m.w1.get_value().unwrap();
    assert_eq!(w1[[0, 0]] as f64, 0.06179409474134445);
    assert_eq!(w1[[783, 999]] as f64, -0.07788003981113434);
    let sum: f64 = w1.iter().map(|&v| v as f64).sum();
    assert!((sum - 210.63031457816123).abs() < 1e-9, "{sum}");
    let w2 = m.w2.get_value().unwrap();
    assert_eq!(w2[[0, 0]] as f64, 0.12110964953899384);
    let sum: f64 = w2.iter().map(|&v| v as f64).sum();
    assert!((sum - -75.52146654620495).abs() < 1e-9, "{sum}");

    // A small network end to end: pretraining, fine-tuning, the files; then fine-tuning again
    // from the pretrained network it wrote.
    let out = std::env::temp_dir().join(format!("tensor-fn-sda-{}", std::process::id()));
    let o = out.to_str().unwrap();
    let args = |extra: &[&str]| {
        let base = [
            "sda", "--quiet", "--limit", "300", "--hidden", "30,20,10", "--out", o,
        ];
        sda::Args::parse_from(base.iter().chain(extra))
    };
    sda::run(args(&[
        "--pretrain-epochs",
        "2",
        "--epochs",
        "2",
        "--batch",
        "3",
    ]))
    .unwrap();
    for f in [
        "results.json",
        "epochs.csv",
        "pretraining.csv",
        "pretrained.tfck",
        "checkpoint.tfck",
        "filters.png",
    ] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    let log = std::fs::read_to_string(out.join("pretraining.csv")).unwrap();
    assert_eq!(log.lines().count(), 1 + 3 * 2, "{log}");
    let ck = tensor_fn::io::Checkpoint::load(out.join("pretrained.tfck")).unwrap();
    assert_eq!(ck.meta("pretrained_layer"), Some("3"));
    let pretrained = out.join("pretrained.tfck");
    let resumed = out.join("resumed");
    sda::run(sda::Args::parse_from([
        "sda",
        "--quiet",
        "--limit",
        "300",
        "--epochs",
        "1",
        "--out",
        resumed.to_str().unwrap(),
        "--pretrained",
        pretrained.to_str().unwrap(),
    ]))
    .unwrap();
    let results = std::fs::read_to_string(resumed.join("results.json")).unwrap();
    assert!(results.contains("\"pretrained_from\": \""), "{results}");
    // A pretraining that was stopped part way: refused, saying where it stopped.
    let mut partial = tensor_fn::io::Checkpoint::load(&pretrained).unwrap();
    partial.set_meta("pretrained_layer", "2");
    let partial_path = out.join("partial.tfck");
    partial.save_atomic(&partial_path).unwrap();
    let e = sda::run(sda::Args::parse_from([
        "sda",
        "--quiet",
        "--limit",
        "300",
        "--out",
        resumed.to_str().unwrap(),
        "--pretrained",
        partial_path.to_str().unwrap(),
    ]))
    .unwrap_err();
    assert!(
        e.to_string().contains("stopped at layer 2, epoch 2 of 2"),
        "{e}"
    );
    // Not a checkpoint of this model: a clear error, nothing trained.
    let e = sda::run(sda::Args::parse_from([
        "sda",
        "--quiet",
        "--limit",
        "300",
        "--out",
        resumed.to_str().unwrap(),
        "--pretrained",
        out.join("checkpoint.tfck")
            .with_extension("missing")
            .to_str()
            .unwrap(),
    ]))
    .unwrap_err();
    assert!(e.to_string().contains("missing"), "{e}");
    std::fs::remove_dir_all(&out).unwrap();
}
