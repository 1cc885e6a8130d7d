//! Timing of evaluate vs cross_entropy and logsumexp without Python, on 512 MiB float32
//! arrays (MIB=n for another size): `T=2 C=2,10,1000 cargo run --release --example evalbench` (T threads, default 1; C the
//! class counts; KIND=log_probs or probs scores the rows' log_softmax / softmax instead;
//! DT=f64 runs the same values as float64, 512 MiB of them; CMP=1 also times `compare` of the
//! array against a perturbed copy, against two cross_entropy calls).
use fastnll::eval::{compare, evaluate};
use fastnll::loss::cross_entropy;
use fastnll::softmax::logsumexp;
use fastnll::{ClassOptions, EvalOptions, IntView, Kind, View};
use std::time::Instant;

#[cfg(target_os = "linux")]
extern "C" {
    fn madvise(addr: *mut u8, len: usize, advice: i32) -> i32;
}

/// A zeroed Vec<f32> of n backed by transparent huge pages where the kernel allows (as NumPy's
/// large arrays are), so timings match the Python benchmark's.
fn huge_vec<T: Copy + Default>(n: usize) -> Vec<T> {
    let mut v: Vec<T> = Vec::with_capacity(n + 1024);
    let p = v.as_mut_ptr() as usize;
    let a = (p + 2 * 1024 * 1024 - 1) & !(2 * 1024 * 1024 - 1);
    // SAFETY: [a, a + len) lies inside the allocation; MADV_HUGEPAGE only changes paging.
    #[cfg(target_os = "linux")]
    unsafe {
        madvise(
            a as *mut u8,
            (p + std::mem::size_of::<T>() * n).saturating_sub(a),
            14,
        )
    };
    v.resize(n, T::default());
    v
}

fn main() {
    let threads: usize = std::env::var("T")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    fastnll::parallel::set_num_threads(threads);
    let cs: Vec<usize> = std::env::var("C")
        .unwrap_or_else(|_| "2,10,128,1000,32000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    for c in cs {
        let f64_input = std::env::var("DT").as_deref() == Ok("f64");
        let mib: usize = std::env::var("MIB")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(512);
        let n = (mib << 20) / (if f64_input { 8 } else { 4 } * c);
        let mut seed = 1u64;
        let mut x: Vec<f32> = huge_vec(n * c);
        for v in &mut x {
            *v = {
                seed = seed
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                let u = (seed >> 11) as f64 / (1u64 << 53) as f64;
                (((u * 12.0) - 6.0) * 0.7) as f32
            };
        }
        let kind = match std::env::var("KIND").as_deref() {
            Ok("log_probs") => Kind::LogProbs,
            Ok("probs") => Kind::Probs,
            _ => Kind::Logits,
        };
        if kind != Kind::Logits {
            for row in x.chunks_mut(c) {
                let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
                let s: f32 = row.iter().map(|&v| (v - m).exp()).sum();
                for v in row.iter_mut() {
                    *v = if kind == Kind::Probs {
                        (*v - m).exp() / s
                    } else {
                        *v - m - s.ln()
                    };
                }
            }
        }
        let t: Vec<i64> = (0..n).map(|i| ((i * 31) % c) as i64).collect();
        let mut x64: Vec<f64> = Vec::new();
        if f64_input {
            x64 = huge_vec(n * c);
            for (d, &v) in x64.iter_mut().zip(&x) {
                *d = f64::from(v);
            }
        }
        let v = if f64_input {
            drop(std::mem::take(&mut x));
            View::from_slice(&x64, n, c)
        } else {
            View::from_slice(&x, n, c)
        };
        let tv = IntView::from_slice(&t);
        let opt = EvalOptions {
            kind,
            ignore_index: -100,
            top_k: vec![1, 5],
            n_bins: 15,
            ties_first: false,
        };
        let mut best = [f64::INFINITY; 3];
        let mut lse = vec![0f32; n];
        for _ in 0..5 {
            let t0 = Instant::now();
            cross_entropy::<f32>(&v, &tv, &ClassOptions::default(), None).unwrap();
            best[0] = best[0].min(t0.elapsed().as_secs_f64());
            let t0 = Instant::now();
            evaluate(&v, &tv, &opt, None).unwrap();
            best[1] = best[1].min(t0.elapsed().as_secs_f64());
            let t0 = Instant::now();
            logsumexp(&v, &mut lse).unwrap();
            best[2] = best[2].min(t0.elapsed().as_secs_f64());
        }
        println!("  logsumexp {:.1} ns/row", best[2] / n as f64 * 1e9);
        if std::env::var("CMP").as_deref() == Ok("1") && !f64_input {
            let mut y: Vec<f32> = huge_vec(n * c);
            for (k, (d, &v)) in y.iter_mut().zip(&x).enumerate() {
                *d = v + 0.05 * (((k * 2_654_435_761) % 1000) as f32 / 500.0 - 1.0);
            }
            let w = View::from_slice(&y, n, c);
            let (mut two, mut cmp) = (f64::INFINITY, f64::INFINITY);
            for _ in 0..5 {
                let t0 = Instant::now();
                cross_entropy::<f32>(&v, &tv, &ClassOptions::default(), None).unwrap();
                cross_entropy::<f32>(&w, &tv, &ClassOptions::default(), None).unwrap();
                two = two.min(t0.elapsed().as_secs_f64());
                let t0 = Instant::now();
                compare(&v, &w, &tv, kind, -100).unwrap();
                cmp = cmp.min(t0.elapsed().as_secs_f64());
            }
            println!(
                "  compare {:.1} ns/row, two CE {:.1} ns/row, ratio {:.2}",
                cmp / n as f64 * 1e9,
                two / n as f64 * 1e9,
                cmp / two
            );
        }
        println!(
            "C={c} threads={threads}: CE {:.1} ns/row, evaluate {:.1} ns/row, ratio {:.2}",
            best[0] / n as f64 * 1e9,
            best[1] / n as f64 * 1e9,
            best[1] / best[0]
        );
    }
}
