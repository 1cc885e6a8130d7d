//! Quick single-thread timing of the row kernel: `cargo run --release --example rowbench`.
use fastnll::softmax::logsumexp;
use fastnll::View;
use std::time::Instant;

fn main() {
    fastnll::parallel::set_num_threads(1);
    for c in [33usize, 64, 128, 1000] {
        let n = (64 << 20) / (4 * c);
        let x: Vec<f32> = (0..n * c)
            .map(|i| ((i * 7919) % 1000) as f32 * 0.01)
            .collect();
        let v = View::from_slice(&x, n, c);
        let mut out = vec![0f32; n];
        for _ in 0..3 {
            let t = Instant::now();
            logsumexp(&v, &mut out).unwrap();
            let dt = t.elapsed().as_secs_f64();
            println!(
                "C={c}: {:.1} ns/row, {:.2} GB/s",
                dt / n as f64 * 1e9,
                (n * c * 4) as f64 / dt / 1e9
            );
        }
    }
}
