//! Timing of the per-row statistics passes of `compare` (exact quantiles and the log-spaced
//! histogram) on N float64 values spread over decades, as per-row KL values are:
//! `T=2 N=8388608 cargo run --release --example selbench`.
use fastnll::select::{log_hist, quantiles, LogBins};
use std::time::Instant;

fn main() {
    let env = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(d)
    };
    fastnll::parallel::set_num_threads(env("T", 1));
    let n = env("N", 1 << 23);
    let mut seed = 7u64;
    let v: Vec<f64> = (0..n)
        .map(|_| {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let u = (seed >> 11) as f64 / (1u64 << 53) as f64;
            (u * 14.0 - 12.0).exp() // e^-12 .. e^2
        })
        .collect();
    let qs = [
        1.0, 0.999, 0.99, 0.95, 0.9, 0.5, 0.1, 0.05, 0.01, 0.001, 0.0,
    ];
    let b = LogBins {
        lo: 1e-15,
        per_decade: 10,
        nb: 200,
        signed: false,
    };
    let (mut tq, mut th) = (f64::INFINITY, f64::INFINITY);
    for _ in 0..7 {
        let t0 = Instant::now();
        quantiles(&v, &qs).unwrap();
        tq = tq.min(t0.elapsed().as_secs_f64());
        let t0 = Instant::now();
        log_hist(&v, b).unwrap();
        th = th.min(t0.elapsed().as_secs_f64());
    }
    println!(
        "N={n}: quantiles {:.2} ms ({:.2} ns/value), log_hist {:.2} ms ({:.2} ns/value)",
        tq * 1e3,
        tq / n as f64 * 1e9,
        th * 1e3,
        th / n as f64 * 1e9
    );
}
