//! Cross-entropy on short rows against the read-only roofline, without Python, on ~512 MiB
//! float32 logits: `T=2 C=2,10,32 cargo run --release --example cebench` (T threads, default 1).
use fastnll::loss::cross_entropy;
use fastnll::{stream_sum, ClassOptions, IntView, View};
use std::time::Instant;

fn main() {
    let threads: usize = std::env::var("T")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let cs: Vec<usize> = std::env::var("C")
        .unwrap_or_else(|_| "2,10,32".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    fastnll::parallel::set_num_threads(threads);
    for c in cs {
        let n = (512 << 20) / (4 * c);
        let mut seed = 1u64;
        let x: Vec<f32> = (0..n * c)
            .map(|_| {
                seed = seed
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                ((((seed >> 11) as f64 / (1u64 << 53) as f64) * 12.0 - 6.0) * 0.7) as f32
            })
            .collect();
        let t: Vec<i64> = (0..n).map(|i| ((i * 31) % c) as i64).collect();
        // the targets read as f32 pairs: the roofline for their bytes
        let tf: Vec<f32> = vec![1.0; 2 * n];
        let (v, tv) = (View::from_slice(&x, n, c), IntView::from_slice(&t));
        let (vt, mut best) = (View::from_slice(&tf, 2 * n, 1), [f64::INFINITY; 2]);
        for _ in 0..7 {
            let t0 = Instant::now();
            cross_entropy::<f32>(&v, &tv, &ClassOptions::default(), None).unwrap();
            best[0] = best[0].min(t0.elapsed().as_secs_f64());
            let t0 = Instant::now();
            std::hint::black_box(stream_sum(&v) + stream_sum(&vt));
            best[1] = best[1].min(t0.elapsed().as_secs_f64());
        }
        println!(
            "C={c} threads={threads}: CE {:.2} ns/row ({:.1} GB/s), roofline ratio {:.2}",
            best[0] / n as f64 * 1e9,
            (n * (4 * c + 8)) as f64 / best[0] / 1e9,
            best[1] / best[0]
        );
    }
}
