//! Exact order statistics of a large float64 array (the percentiles of `compare`'s per-row KL
//! and Δp): a radix pre-selection, then a partial sort of only the values that can hold the
//! requested ranks.
//!
//! Pass 1 counts the values per bucket of the top 16 bits of an order-preserving key (sign,
//! exponent and 4 mantissa bits: a bucket spans a factor 2^(1/16) of magnitude), on the pool.
//! The prefix sums name the bucket of each requested rank. Pass 2 copies the values of those
//! buckets (at most one per rank) out, and a multi-select (`select_nth_unstable`) on each
//! bucket finds the ranks. For a continuous distribution the buckets are a few percent of the
//! values, so the work is two streaming reads instead of a partial sort of the whole array.

use crate::error::{Error, Result};
use crate::parallel;

const BITS: u32 = 16;
const BUCKETS: usize = 1 << BITS;

/// An order-preserving u64 key of a non-NaN f64 (-0.0 and +0.0 are the same key).
#[inline]
fn key(x: f64) -> u64 {
    let b = (x + 0.0).to_bits();
    if b >> 63 == 1 {
        !b
    } else {
        b | (1 << 63)
    }
}

#[inline]
fn bucket(x: f64) -> usize {
    (key(x) >> (64 - BITS)) as usize
}

/// The values of rank `ks` (0-based, ascending order of value) of `v`, which must hold no NaN;
/// `ks` in any order, each < `v.len()`. `v` is only read. -0.0 is returned as 0.0.
///
/// # Errors
/// A rank out of range, or a NaN in `v` (named by its position).
pub fn order_stats(v: &[f64], ks: &[usize]) -> Result<Vec<f64>> {
    let n = v.len();
    if let Some(&k) = ks.iter().find(|&&k| k >= n) {
        return Err(Error::Value(format!(
            "rank {k} is out of range for {n} values"
        )));
    }
    if ks.is_empty() {
        return Ok(Vec::new());
    }
    let per = parallel::chunk_rows(8);
    // pass 1: bucket counts per chunk (u32: a chunk holds far fewer than 2^32 values), merged
    let parts = parallel::map_chunks(n, per, |r| {
        let mut h = vec![0u32; BUCKETS];
        let mut nan = None;
        for (i, &x) in v[r.clone()].iter().enumerate() {
            if x.is_nan() {
                nan.get_or_insert(r.start + i);
            }
            h[bucket(x)] += 1;
        }
        (h, nan)
    });
    let mut hist = vec![0u64; BUCKETS];
    for (h, nan) in &parts {
        if let Some(i) = nan {
            return Err(Error::Value(format!(
                "order statistics of values holding NaN (at position {i})"
            )));
        }
        for (a, &b) in hist.iter_mut().zip(h) {
            *a += u64::from(b);
        }
    }
    drop(parts);
    // the bucket of each rank and the number of values in the buckets below it
    let mut below = vec![0u64; BUCKETS];
    let mut acc = 0u64;
    for (b, &c) in below.iter_mut().zip(&hist) {
        *b = acc;
        acc += c;
    }
    let find = |k: usize| {
        let k = k as u64;
        // the last bucket whose start is <= k and which is not empty
        let b = below.partition_point(|&s| s <= k) - 1;
        debug_assert!(hist[b] > 0 && k < below[b] + hist[b]);
        b
    };
    let mut wanted: Vec<usize> = ks.iter().map(|&k| find(k)).collect();
    wanted.sort_unstable();
    wanted.dedup();
    // slot of each wanted bucket, + 1 (0: not wanted)
    let mut slot = vec![0u32; BUCKETS];
    for (s, &b) in wanted.iter().enumerate() {
        slot[b] = s as u32 + 1;
    }
    // pass 2: the values of the wanted buckets, in chunk order
    let picked = parallel::map_chunks(n, per, |r| {
        let mut out: Vec<Vec<f64>> = vec![Vec::new(); wanted.len()];
        for &x in &v[r] {
            let s = slot[bucket(x)] as usize;
            if s != 0 {
                out[s - 1].push(x);
            }
        }
        out
    });
    let mut vals: Vec<Vec<f64>> = wanted
        .iter()
        .map(|&b| Vec::with_capacity(hist[b] as usize))
        .collect();
    for part in picked {
        for (dst, src) in vals.iter_mut().zip(part) {
            dst.extend_from_slice(&src);
        }
    }
    // each rank within its bucket
    let mut found: Vec<(usize, f64)> = Vec::with_capacity(ks.len());
    for (s, &b) in wanted.iter().enumerate() {
        let start = below[b] as usize;
        let mut local: Vec<usize> = ks
            .iter()
            .filter(|&&k| find(k) == b)
            .map(|&k| k - start)
            .collect();
        local.sort_unstable();
        local.dedup();
        let mut got = Vec::new();
        multiselect(&mut vals[s], &local, 0, &mut got);
        found.extend(got.into_iter().map(|(k, x)| (k + start, x + 0.0)));
    }
    Ok(ks
        .iter()
        .map(|k| {
            found
                .iter()
                .find(|(j, _)| j == k)
                .map_or(f64::NAN, |&(_, x)| x)
        })
        .collect())
}

/// The values of the sorted, distinct ranks `ranks` (relative to `offset`) of `v`, appended
/// to `out` as (rank, value); `v` is reordered.
fn multiselect(v: &mut [f64], ranks: &[usize], offset: usize, out: &mut Vec<(usize, f64)>) {
    if ranks.is_empty() {
        return;
    }
    let m = ranks.len() / 2;
    let k = ranks[m] - offset;
    let (left, kth, right) = v.select_nth_unstable_by(k, f64::total_cmp);
    out.push((ranks[m], *kth));
    multiselect(left, &ranks[..m], offset, out);
    multiselect(right, &ranks[m + 1..], offset + k + 1, out);
}

#[cfg(test)]
mod tests {
    use super::order_stats;

    fn sorted(v: &[f64]) -> Vec<f64> {
        let mut s = v.to_vec();
        s.sort_by(f64::total_cmp);
        s.iter().map(|x| x + 0.0).collect()
    }

    #[test]
    fn order_stats_match_a_full_sort() {
        let mut seed = 3u64;
        let mut next = || {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            (seed >> 11) as f64 / (1u64 << 53) as f64
        };
        let mut cases: Vec<Vec<f64>> = vec![
            vec![1.0],
            vec![0.0, -0.0, 0.0, -0.0],
            vec![2.5; 5000],
            vec![
                f64::INFINITY,
                f64::NEG_INFINITY,
                0.0,
                1e-300,
                -1e300,
                5e-324,
            ],
        ];
        // continuous, heavy-tailed and signed values, with ties; 3 M values span several chunks
        cases.push(
            (0..3_000_000)
                .map(|_| (next() * 30.0 - 25.0).exp())
                .collect(),
        );
        cases.push((0..200_001).map(|_| (next() - 0.5) * 1e-3).collect());
        cases.push((0..100_000).map(|_| (next() * 8.0).floor() - 4.0).collect());
        for v in &cases {
            let s = sorted(v);
            let n = v.len();
            let ks: Vec<usize> = [0, 1, n / 1000, n / 10, n / 2, n / 2 + 1, n - 2, n - 1, 0]
                .into_iter()
                .map(|k| k.min(n - 1))
                .collect();
            let got = order_stats(v, &ks).unwrap();
            for (k, g) in ks.iter().zip(&got) {
                assert_eq!(g.to_bits(), s[*k].to_bits(), "n={n} k={k}");
            }
        }
        assert!(order_stats(&[1.0, f64::NAN], &[0]).is_err());
        assert!(order_stats(&[1.0], &[1]).is_err());
        assert!(order_stats(&[], &[]).unwrap().is_empty());
    }
}
