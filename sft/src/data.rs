//! SFT examples and packing. An example is a chat-formatted dialog with, per token, whether it
//! belongs to an assistant reply (those tokens, EOS included, are the loss targets).
//!
//! Packing (Llama 2 Section 3.1 concatenates examples to fill 4096-token sequences) puts whole
//! examples one after another into rows of `max_len`. Each example keeps its own positions
//! (reset to 0 at its start) and a segment id; the attention mask is block-diagonal by segment,
//! so the packed loss equals the sum of the examples' own losses.
use llama::rng::SplitMix64;
use tch::{Device, Kind, Tensor};

#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub ids: Vec<u32>,
    /// `loss_mask[i]`: token i is a target (an assistant token).
    pub loss_mask: Vec<bool>,
}

impl Example {
    pub fn len(&self) -> usize {
        self.ids.len()
    }
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
    /// Tokens that are predicted (targets after the first position).
    pub fn num_targets(&self) -> usize {
        self.loss_mask.iter().skip(1).filter(|&&m| m).count()
    }
}

/// One training row: examples laid end to end, padded to the row length.
#[derive(Debug, Clone, PartialEq)]
pub struct PackedRow {
    pub ids: Vec<u32>,
    pub positions: Vec<i64>,
    /// Segment of each token; padding is segment -1.
    pub segments: Vec<i64>,
    /// `targets[i]`: position i predicts token i+1, which is a loss target of the same segment.
    pub targets: Vec<bool>,
}

impl PackedRow {
    pub fn num_targets(&self) -> usize {
        self.targets.iter().filter(|&&t| t).count()
    }
}

/// Packs examples in order into rows of at most `max_len` tokens (greedy, first fit in order;
/// examples are never split). Without packing, each example is its own row.
pub fn pack(examples: &[Example], max_len: usize, packing: bool) -> Vec<PackedRow> {
    let mut rows = Vec::new();
    let mut cur: Vec<&Example> = Vec::new();
    let mut cur_len = 0;
    for ex in examples.iter().filter(|e| e.len() >= 2) {
        let len = ex.len().min(max_len);
        if !cur.is_empty() && (!packing || cur_len + len > max_len) {
            rows.push(build_row(&cur, max_len));
            cur.clear();
            cur_len = 0;
        }
        cur.push(ex);
        cur_len += len;
    }
    if !cur.is_empty() {
        rows.push(build_row(&cur, max_len));
    }
    rows
}

fn build_row(examples: &[&Example], max_len: usize) -> PackedRow {
    let mut row = PackedRow { ids: vec![], positions: vec![], segments: vec![], targets: vec![] };
    for (s, ex) in examples.iter().enumerate() {
        let len = ex.len().min(max_len);
        for i in 0..len {
            row.ids.push(ex.ids[i]);
            row.positions.push(i as i64);
            row.segments.push(s as i64);
            row.targets.push(i + 1 < len && ex.loss_mask[i + 1]);
        }
    }
    row
}

/// Shuffles row indices for an epoch, deterministically from (seed, epoch).
pub fn epoch_order(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    SplitMix64::permutation(n, seed, epoch)
}

/// The held-out split every stage uses when it has no separate evaluation file: a seeded
/// `fraction` of `items` (rounded), chosen by a permutation of (seed ^ 0xE7A1); both halves keep
/// their original order. Returns (train, held out).
pub fn held_out_split<T>(items: Vec<T>, fraction: f64, seed: u64) -> (Vec<T>, Vec<T>) {
    let order = epoch_order(items.len(), seed ^ 0xE7A1, 0);
    let n_eval = ((items.len() as f64) * fraction).round() as usize;
    let held: std::collections::HashSet<usize> = order[..n_eval.min(order.len())].iter().copied().collect();
    let (mut train, mut eval) = (Vec::new(), Vec::new());
    for (i, x) in items.into_iter().enumerate() {
        if held.contains(&i) {
            eval.push(x)
        } else {
            train.push(x)
        }
    }
    (train, eval)
}

/// A micro-batch as tensors: rows right-padded to the longest.
pub struct Batch {
    pub ids: Tensor,
    pub positions: Tensor,
    pub segments: Tensor,
    pub targets: Tensor,
    pub labels: Tensor,
    pub num_tokens: usize,
}

pub fn collate(rows: &[&PackedRow], device: Device) -> Batch {
    let b = rows.len();
    let t = rows.iter().map(|r| r.ids.len()).max().unwrap_or(1);
    let mut ids = vec![0i64; b * t];
    let mut pos = vec![0i64; b * t];
    let mut seg = vec![-1i64; b * t];
    let mut tgt = vec![false; b * t];
    let mut labels = vec![0i64; b * t];
    let mut num_tokens = 0;
    for (r, row) in rows.iter().enumerate() {
        num_tokens += row.ids.len();
        for (i, &id) in row.ids.iter().enumerate() {
            let k = r * t + i;
            ids[k] = id as i64;
            pos[k] = row.positions[i];
            seg[k] = row.segments[i];
            tgt[k] = row.targets[i];
            if i + 1 < row.ids.len() {
                labels[k] = row.ids[i + 1] as i64;
            }
        }
    }
    let shape = [b as i64, t as i64];
    Batch {
        ids: Tensor::from_slice(&ids).view(shape).to_device(device),
        positions: Tensor::from_slice(&pos).view(shape).to_device(device),
        segments: Tensor::from_slice(&seg).view(shape).to_device(device),
        targets: Tensor::from_slice(&tgt).view(shape).to_device(device),
        labels: Tensor::from_slice(&labels).view(shape).to_kind(Kind::Int64).to_device(device),
        num_tokens,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(ids: &[u32], mask: &[bool]) -> Example {
        Example { ids: ids.to_vec(), loss_mask: mask.to_vec() }
    }

    #[test]
    fn packing_keeps_examples_whole_and_resets_positions() {
        let a = ex(&[1, 10, 11, 12], &[false, false, true, true]);
        let b = ex(&[1, 20, 21], &[false, true, true]);
        let c = ex(&[1, 30, 31, 32, 33], &[false, false, false, true, true]);
        let rows = pack(&[a, b, c], 8, true);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].ids, vec![1, 10, 11, 12, 1, 20, 21]);
        assert_eq!(rows[0].positions, vec![0, 1, 2, 3, 0, 1, 2]);
        assert_eq!(rows[0].segments, vec![0, 0, 0, 0, 1, 1, 1]);
        // Position i predicts token i+1 of its own example: never across the boundary.
        assert_eq!(rows[0].targets, vec![false, true, true, false, true, true, false]);
        assert_eq!(rows[1].targets, vec![false, false, true, true, false]);
        assert_eq!(rows[0].num_targets() + rows[1].num_targets(), 2 + 2 + 2);
    }

    #[test]
    fn no_packing_one_row_each_and_truncation() {
        let a = ex(&[1, 10, 11, 12, 13, 14], &[false, true, true, true, true, true]);
        let b = ex(&[1, 20], &[false, true]);
        let rows = pack(&[a, b], 4, false);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].ids, vec![1, 10, 11, 12]);
        assert_eq!(rows[0].targets, vec![true, true, true, false]);
    }

    #[test]
    fn held_out_split_is_seeded_disjoint_and_ordered() {
        let (t, e) = held_out_split((0..100).collect::<Vec<_>>(), 0.1, 3);
        assert_eq!((t.len(), e.len()), (90, 10));
        assert!(t.windows(2).all(|w| w[0] < w[1]) && e.windows(2).all(|w| w[0] < w[1]));
        let mut all: Vec<i32> = t.iter().chain(&e).copied().collect();
        all.sort();
        assert_eq!(all, (0..100).collect::<Vec<_>>());
        assert_eq!(held_out_split((0..100).collect::<Vec<_>>(), 0.1, 3).1, e);
        assert_ne!(held_out_split((0..100).collect::<Vec<_>>(), 0.1, 4).1, e);
        let mut expect: Vec<i32> = epoch_order(100, 3 ^ 0xE7A1, 0)[..10].iter().map(|&i| i as i32).collect();
        expect.sort();
        assert_eq!(e, expect);
        assert_eq!(held_out_split(vec![1, 2, 3], 0.0, 0), (vec![1, 2, 3], vec![]));
    }

    #[test]
    fn epoch_order_is_a_seeded_permutation() {
        let a = epoch_order(100, 7, 0);
        let mut s = a.clone();
        s.sort();
        assert_eq!(s, (0..100).collect::<Vec<_>>());
        assert_eq!(a, epoch_order(100, 7, 0));
        assert_ne!(a, epoch_order(100, 7, 1));
    }
}
