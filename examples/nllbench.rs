//! nll_loss gathering one element per row of wide float32 log-probabilities, without Python:
//! `T=1 C=1000 cargo run --release --example nllbench` (T threads, default 1; ~128 MiB).
use fastnll::loss::nll_loss;
use fastnll::{ClassOptions, IntView, View};
use std::time::Instant;

fn main() {
    let env = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(d)
    };
    let (threads, c) = (env("T", 1), env("C", 1000).max(1));
    fastnll::parallel::set_num_threads(threads);
    let n = (128 << 20) / (4 * c);
    let x: Vec<f32> = (0..n * c)
        .map(|i| -(((i * 7919) % 1000) as f32) / 100.0 - 0.01)
        .collect();
    let t: Vec<i64> = (0..n).map(|i| ((i * 7_777) % c) as i64).collect();
    let (v, tv) = (View::from_slice(&x, n, c), IntView::from_slice(&t));
    let mut ts = Vec::new();
    for _ in 0..500 {
        let t0 = Instant::now();
        std::hint::black_box(nll_loss::<f32>(&v, &tv, &ClassOptions::default(), None).unwrap());
        ts.push(t0.elapsed().as_secs_f64());
    }
    ts.sort_by(f64::total_cmp);
    println!(
        "nll_loss {n} x {c}, {threads} thread(s): best {:.1} us, median {:.1} us ({:.2} ns per row)",
        ts[0] * 1e6,
        ts[ts.len() / 2] * 1e6,
        ts[ts.len() / 2] * 1e9 / n as f64
    );
}
