//! The public ndarray API against the float64 NumPy reference in `tests/nd_expected.txt` (the
//! same file `tests/test_nd_api.py` checks the Python package against), on C-order,
//! Fortran-order, sliced, transposed and 3-d views of every logits dtype and several target
//! integer types.

use fastnll::half::{bf16, f16};
use fastnll::ndarray::{
    s, Array, Array1, Array2, ArrayView1, ArrayView2, Axis, IxDyn, ShapeBuilder,
};
use fastnll::{ClassOptions, EvalOptions, Float, Kind};
use std::collections::HashMap;

const N: usize = 6;
const C: usize = 5;

fn expected() -> HashMap<String, Vec<f64>> {
    include_str!("nd_expected.txt")
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let mut it = l.split_whitespace();
            let name = it.next().unwrap().to_string();
            (name, it.map(|v| v.parse::<f64>().unwrap()).collect())
        })
        .collect()
}

fn close(got: &[f64], want: &[f64], f64_input: bool, what: &str) {
    let (rtol, atol) = if f64_input {
        (1e-12, 1e-12)
    } else {
        (2e-6, 2e-5)
    };
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= atol + rtol * w.abs(),
            "{what}[{i}]: got {g}, want {w}"
        );
    }
}

/// Converts the reference logits to `A` (exact: they are multiples of 1/4 in [-4, 4]).
trait FromF64: Float {
    fn from(v: f64) -> Self;
    fn to_f64(o: Self::Out) -> f64;
}
impl FromF64 for f32 {
    fn from(v: f64) -> Self {
        v as f32
    }
    fn to_f64(o: f32) -> f64 {
        o as f64
    }
}
impl FromF64 for f64 {
    fn from(v: f64) -> Self {
        v
    }
    fn to_f64(o: f64) -> f64 {
        o
    }
}
impl FromF64 for f16 {
    fn from(v: f64) -> Self {
        f16::from_f64(v)
    }
    fn to_f64(o: f32) -> f64 {
        o as f64
    }
}
impl FromF64 for bf16 {
    fn from(v: f64) -> Self {
        bf16::from_f64(v)
    }
    fn to_f64(o: f32) -> f64 {
        o as f64
    }
}

/// The reference logits as owned arrays whose views have different layouts:
/// (name, storage) pairs; `views` turns each into an `ArrayView2` of shape [N, C].
struct Layouts<A> {
    c_order: Array2<A>,
    f_order: Array2<A>,
    padded: Array2<A>, // [2N, 3C]: the logits every other row and column, from (1, 2)
    by_class: Array2<A>, // [C, N]: its transpose is the logits
    reversed: Array2<A>, // rows and classes reversed: a negative-stride view gives the logits
}

fn layouts<A: FromF64 + Default>(x: &[f64]) -> Layouts<A> {
    let c_order = Array2::from_shape_fn((N, C), |(i, j)| A::from(x[i * C + j]));
    let mut f_order = Array2::from_elem((N, C).f(), A::default());
    f_order.assign(&c_order);
    let mut padded = Array2::from_elem((2 * N, 3 * C), A::from(100.0));
    padded.slice_mut(s![1..;2, 2..2 + 2 * C;2]).assign(&c_order);
    let by_class = c_order.t().to_owned();
    let reversed = c_order.slice(s![..;-1, ..;-1]).to_owned();
    Layouts {
        c_order,
        f_order,
        padded,
        by_class,
        reversed,
    }
}

impl<A: Clone> Layouts<A> {
    fn views(&self) -> Vec<(&'static str, ArrayView2<'_, A>)> {
        vec![
            ("C order", self.c_order.view()),
            ("Fortran order", self.f_order.view()),
            ("sliced", self.padded.slice(s![1..;2, 2..2 + 2 * C;2])),
            ("transposed", self.by_class.t()),
            ("negative strides", self.reversed.slice(s![..;-1, ..;-1])),
        ]
    }
}

fn check_dtype<A: FromF64 + Default>() {
    let e = expected();
    let f64_input = std::any::TypeId::of::<A>() == std::any::TypeId::of::<f64>();
    let lay = layouts::<A>(&e["logits"]);
    let t64: Array1<i64> = e["target"].iter().map(|&v| v as i64).collect();
    let t32: Array1<i32> = t64.mapv(|v| v as i32);
    // The targets strided too: every other element of a longer array.
    let mut t_long = Array1::<i16>::zeros(2 * N);
    t_long.slice_mut(s![..;2]).assign(&t64.mapv(|v| v as i16));
    let opts = ClassOptions::default();
    for (name, x) in lay.views() {
        assert_eq!(x.shape(), &[N, C], "{name}");
        let rows = fastnll::cross_entropy_rows(x, t64.view(), &opts).unwrap();
        close(
            &rows.iter().map(|&v| A::to_f64(v)).collect::<Vec<_>>(),
            &e["ce_rows"],
            f64_input,
            &format!("ce_rows {name}"),
        );
        let tot = fastnll::cross_entropy(x, t32.view(), &opts).unwrap();
        close(
            &[tot.mean()],
            &e["ce_mean"],
            f64_input,
            &format!("ce_mean {name}"),
        );
        let ts: ArrayView1<i16> = t_long.slice(s![..;2]);
        let smooth = ClassOptions {
            label_smoothing: 0.1,
            ..ClassOptions::default()
        };
        let tot = fastnll::cross_entropy(x, ts, &smooth).unwrap();
        close(
            &[tot.sum],
            &e["ce_smooth_sum"],
            f64_input,
            &format!("ce_smooth_sum {name}"),
        );
        let lse = fastnll::logsumexp(x).unwrap();
        close(
            &lse.iter().map(|&v| A::to_f64(v)).collect::<Vec<_>>(),
            &e["lse"],
            f64_input,
            &format!("lse {name}"),
        );
        let lp = fastnll::log_softmax(x).unwrap();
        assert_eq!(lp.shape(), &[N, C]);
        close(
            &lp.iter().map(|&v| A::to_f64(v)).collect::<Vec<_>>(),
            &e["log_softmax"],
            f64_input,
            &format!("log_softmax {name}"),
        );
        let p = fastnll::softmax(x).unwrap();
        close(
            &p.iter().map(|&v| A::to_f64(v)).collect::<Vec<_>>(),
            &e["softmax"],
            f64_input,
            &format!("softmax {name}"),
        );
        // 3-d, dynamic dimension: [2, 3, C] with [2, 3] targets.
        let x3 = Array::from_shape_vec(IxDyn(&[2, 3, C]), x.iter().copied().collect()).unwrap();
        let t3 = t64.clone().into_shape_with_order(IxDyn(&[2, 3])).unwrap();
        let rows3 = fastnll::cross_entropy_rows(x3.view(), t3.view(), &opts).unwrap();
        assert_eq!(rows3.shape(), &[2, 3]);
        close(
            &rows3.iter().map(|&v| A::to_f64(v)).collect::<Vec<_>>(),
            &e["ce_rows"],
            f64_input,
            &format!("ce_rows 3-d {name}"),
        );
    }
}

#[test]
fn f32_views_match_the_reference() {
    check_dtype::<f32>();
}

#[test]
fn f64_views_match_the_reference() {
    check_dtype::<f64>();
}

#[test]
fn f16_views_match_the_reference() {
    check_dtype::<f16>();
}

#[test]
fn bf16_views_match_the_reference() {
    check_dtype::<bf16>();
}

#[test]
fn nll_of_reference_log_probs() {
    let e = expected();
    let lp = Array2::from_shape_vec((N, C), e["log_softmax"].clone()).unwrap();
    let t: Array1<u8> = e["target"]
        .iter()
        .map(|&v| if v < 0.0 { 255 } else { v as u8 })
        .collect();
    let opts = ClassOptions {
        ignore_index: 255,
        ..ClassOptions::default()
    };
    let rows = fastnll::nll_loss_rows(lp.view(), t.view(), &opts).unwrap();
    close(rows.as_slice().unwrap(), &e["nll_rows"], true, "nll_rows");
    let tot = fastnll::nll_loss(lp.t().to_owned().t(), t.view(), &opts).unwrap();
    close(&[tot.mean()], &e["ce_mean"], true, "nll mean");
    // Probabilities are not log-probabilities: an error naming the value's position.
    let p = lp.mapv(f64::exp);
    let err = fastnll::nll_loss(p.view(), t.view(), &opts).unwrap_err();
    assert!(err.to_string().contains("position (0, 0)"), "{err}");
}

#[test]
fn soft_targets_evaluate_and_compare() {
    let e = expected();
    let x = Array2::from_shape_vec((N, C), e["logits"].clone()).unwrap();
    let p = Array2::from_shape_vec((N, C), e["softmax"].clone())
        .unwrap()
        .mapv(|v| v as f32);
    let t: Array1<i64> = e["target"].iter().map(|&v| v as i64).collect();
    // Against its own softmax, soft cross-entropy is the entropy; check it by the reference:
    // Σ_c p·(lse - x) per row.
    let lse = &e["lse"];
    let want: f64 = (0..N)
        .map(|i| {
            (0..C)
                .map(|j| p[[i, j]] as f64 * (lse[i] - x[[i, j]]))
                .sum::<f64>()
        })
        .sum::<f64>()
        / N as f64;
    let tot = fastnll::cross_entropy_soft(x.view(), p.view(), &ClassOptions::default()).unwrap();
    close(&[tot.mean()], &[want], true, "soft mean");
    let opts = EvalOptions {
        kind: Kind::Logits,
        ignore_index: -100,
        top_k: vec![1, 5],
        n_bins: 4,
        ties_first: false,
    };
    let sums = fastnll::evaluate(x.t().to_owned().t(), t.view(), &opts).unwrap();
    assert_eq!((sums.n, sums.n_ignored), (5, 1));
    // float64 input: evaluate is exact (float64 rows are finished in float64)
    close(
        &[sums.sum_nll / sums.n as f64],
        &e["ce_mean"],
        true,
        "evaluate mean nll",
    );
    assert_eq!(sums.topk_correct[1], 5); // C = 5: every target is in the top 5
    let xb = x.mapv(bf16::from_f64);
    let cmp = fastnll::compare(x.view(), xb.view(), t.view(), Kind::Logits, -100).unwrap();
    assert_eq!(cmp.n, 5);
    // bf16 holds these logits exactly: KL and the NLL difference are 0 (to float32 rounding).
    assert!(
        cmp.sum_kl.abs() < 1e-5 && cmp.sum_dnll.abs() < 1e-5,
        "{cmp:?}"
    );
}

#[test]
fn shape_errors() {
    let x = Array::<f32, _>::zeros((3, 4));
    let t = Array1::<i64>::zeros(2);
    let err = fastnll::cross_entropy(x.view(), t.view(), &ClassOptions::default()).unwrap_err();
    assert!(
        err.to_string()
            .contains("target shape [2] does not match input shape [3, 4]"),
        "{err}"
    );
    let scalar = fastnll::ndarray::arr0(1.0f32);
    assert!(fastnll::logsumexp(scalar.view()).is_err());
    let sums = fastnll::logsumexp(x.view().insert_axis(Axis(0))).unwrap();
    assert_eq!(sums.shape(), &[1, 3]);
    assert!(sums.iter().all(|&v| (v as f64 - 4f64.ln()).abs() < 1e-6));
}
