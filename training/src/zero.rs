//! ZeRO-1/2/3 sharding of AdamW's state over the ranks of a distributed run.
//!
//! Every trainable parameter (in the optimizer's sorted-name order) is laid end to end in one
//! flat fp32 index space, cut into buckets of at most `bucket` elements (the last padded to a
//! multiple of the world size). Rank r owns the r-th of the W equal parts of every bucket; its
//! shard is those parts, end to end. A bucket is one collective: gradients reduce-scattered
//! (ZeRO-2; ZeRO-1 all-reduces and keeps its part), the updated masters all-gathered. Each rank
//! holds fp32 masters and both moments for its shard only: 12 bytes per parameter / W.
//!
//! The layout depends on the parameter sizes, W and the bucket size only, so a checkpoint's
//! shards are reassembled into whole tensors for any other world size ([`ZeroLayout::pieces`]).
use tch::{Device, Kind, Tensor};

/// Elements per bucket: 2^26 fp32 = 256 MiB per collective.
pub const DEFAULT_BUCKET: i64 = 1 << 26;

/// A run of parameter `param`'s flat elements `[param_off, param_off + len)` held at
/// `[shard_off, shard_off + len)` of a rank's shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    pub param: usize,
    pub param_off: i64,
    pub shard_off: i64,
    pub len: i64,
}

/// One bucket: its start in the flat space, its length, its padded length, and this rank's
/// part's offset in the shard. The padding (`start + len .. start + padded`) holds no parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bucket {
    pub start: i64,
    pub len: i64,
    pub padded: i64,
    pub shard_off: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZeroLayout {
    pub world: i64,
    pub rank: i64,
    pub bucket: i64,
    /// Elements of each parameter, in order.
    pub sizes: Vec<i64>,
    pub buckets: Vec<Bucket>,
    pub shard_len: i64,
    /// ZeRO-3: the buckets of each group of parameters (`group_ends`), `buckets[range]`; one
    /// group under [`ZeroLayout::new`].
    pub group_buckets: Vec<std::ops::Range<usize>>,
}

impl ZeroLayout {
    pub fn new(sizes: &[i64], world: i64, rank: i64, bucket: i64) -> ZeroLayout {
        Self::grouped(sizes, &[sizes.len()], world, rank, bucket)
    }

    /// As [`ZeroLayout::new`], with no bucket crossing the end of a group: group g is parameters
    /// `group_ends[g-1]..group_ends[g]` (the last end is `sizes.len()`). ZeRO-3 gathers and
    /// reduces one group (a decoder layer) at a time, so its collectives are its buckets. With a
    /// single group this is exactly [`ZeroLayout::new`]'s layout.
    pub fn grouped(sizes: &[i64], group_ends: &[usize], world: i64, rank: i64, bucket: i64) -> ZeroLayout {
        // Buckets a multiple of the world size, so every rank's part of a full one is equal.
        let bucket = (bucket.max(world) / world) * world;
        let (mut buckets, mut start, mut shard_off) = (Vec::new(), 0i64, 0i64);
        let mut group_buckets = Vec::with_capacity(group_ends.len());
        let mut first = 0;
        for &end in group_ends {
            let group_end: i64 = sizes[..end.min(sizes.len())].iter().sum();
            let b0 = buckets.len();
            while start < group_end {
                let len = (group_end - start).min(bucket);
                let padded = (len + world - 1) / world * world;
                buckets.push(Bucket { start, len, padded, shard_off });
                shard_off += padded / world;
                start += len;
            }
            group_buckets.push(b0..buckets.len());
            first = end;
        }
        debug_assert_eq!(first, sizes.len(), "the last group ends at the last parameter");
        ZeroLayout { world, rank, bucket, sizes: sizes.to_vec(), buckets, shard_len: shard_off, group_buckets }
    }

    /// The flat offset of each parameter.
    pub fn offsets(&self) -> Vec<i64> {
        let mut off = 0;
        self.sizes
            .iter()
            .map(|&n| {
                let o = off;
                off += n;
                o
            })
            .collect()
    }

    /// The flat range `[lo, hi)` this rank owns in `b` (part of it may be the bucket's padding:
    /// clip at `b.start + b.len`).
    pub fn owned(&self, b: &Bucket) -> (i64, i64) {
        let part = b.padded / self.world;
        (b.start + self.rank * part, b.start + (self.rank + 1) * part)
    }

    /// Where each of this rank's shard elements comes from, as runs of whole parameters' elements.
    pub fn pieces(&self) -> Vec<Piece> {
        let offsets = self.offsets();
        let mut out = Vec::new();
        for b in &self.buckets {
            let (lo, hi) = self.owned(b);
            let hi = hi.min(b.start + b.len);
            for (param, (&po, &n)) in offsets.iter().zip(&self.sizes).enumerate() {
                let (a, z) = (lo.max(po), hi.min(po + n));
                if a < z {
                    out.push(Piece { param, param_off: a - po, shard_off: b.shard_off + (a - lo), len: z - a });
                }
            }
        }
        out
    }

    /// The parameters overlapping flat range `[lo, hi)`, as (param, param_off, offset in the
    /// range, len).
    pub fn overlapping(&self, lo: i64, hi: i64) -> Vec<(usize, i64, i64, i64)> {
        let offsets = self.offsets();
        let mut out = Vec::new();
        for (param, (&po, &n)) in offsets.iter().zip(&self.sizes).enumerate() {
            let (a, z) = (lo.max(po), hi.min(po + n));
            if a < z {
                out.push((param, a - po, a - lo, z - a));
            }
        }
        out
    }
}

/// Reassembles whole flat tensors from every rank's shard of one state (`shards[r]` is rank r's
/// shard, written under a layout of `shards.len()` ranks and `bucket`): the flat fp32 vector of
/// all parameters end to end.
pub fn unshard(sizes: &[i64], bucket: i64, shards: &[Tensor]) -> Tensor {
    unshard_grouped(sizes, &[sizes.len()], bucket, shards)
}

/// [`unshard`] of shards written under [`ZeroLayout::grouped`] with `group_ends` (ZeRO-3).
pub fn unshard_grouped(sizes: &[i64], group_ends: &[usize], bucket: i64, shards: &[Tensor]) -> Tensor {
    let world = shards.len() as i64;
    let total: i64 = sizes.iter().sum();
    let flat = Tensor::zeros([total], (Kind::Float, Device::Cpu));
    for (r, shard) in shards.iter().enumerate() {
        let layout = ZeroLayout::grouped(sizes, group_ends, world, r as i64, bucket);
        for b in &layout.buckets {
            let (lo, hi) = layout.owned(b);
            let hi = hi.min(total).min(b.start + b.len);
            if lo < hi {
                flat.narrow(0, lo, hi - lo).copy_(&shard.narrow(0, b.shard_off, hi - lo));
            }
        }
    }
    flat
}

/// ZeRO-3 shard-on-load: this rank's part of one group of parameters (a decoder layer; `sizes`
/// in layout order) as [`ZeroLayout::grouped`] lays it out, filled from each parameter's values
/// `get(i)` (any shape, converted to fp32), asked for one at a time and dropped after. A group's
/// buckets start at the group's own start, so its part of a rank's shard depends on the group's
/// sizes only: the parts of every group, end to end in group order, are the rank's shard.
pub fn group_shard<E>(
    sizes: &[i64],
    world: i64,
    rank: i64,
    bucket: i64,
    device: Device,
    mut get: impl FnMut(usize) -> Result<Tensor, E>,
) -> Result<Tensor, E> {
    let layout = ZeroLayout::new(sizes, world, rank, bucket);
    let pieces = layout.pieces();
    let part = Tensor::zeros([layout.shard_len], (Kind::Float, device));
    for i in 0..sizes.len() {
        let t = get(i)?;
        tch::no_grad(|| {
            let flat = t.reshape([-1]);
            for pc in pieces.iter().filter(|pc| pc.param == i) {
                part.narrow(0, pc.shard_off, pc.len).copy_(&flat.narrow(0, pc.param_off, pc.len));
            }
        });
    }
    Ok(part)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Shard-on-load builds each group's part alone; end to end they equal the shard cut from
    /// the whole flat vector by the grouped layout, for any world and bucket size.
    #[test]
    fn group_shards_end_to_end_are_the_grouped_shard() {
        let sizes = [7i64, 1, 12, 5, 3, 9, 2];
        let ends = [1usize, 3, 4, 7];
        let total: i64 = sizes.iter().sum();
        let flat = Tensor::arange(total, (Kind::Float, Device::Cpu)) + 1.0;
        let offsets = ZeroLayout::new(&sizes, 1, 0, 1).offsets();
        for world in 1..=4 {
            for bucket in [1, 3, 4, 6, 1000] {
                for rank in 0..world {
                    let l = ZeroLayout::grouped(&sizes, &ends, world, rank, bucket);
                    let whole = Tensor::zeros([l.shard_len], (Kind::Float, Device::Cpu));
                    for p in l.pieces() {
                        whole.narrow(0, p.shard_off, p.len).copy_(&flat.narrow(0, offsets[p.param] + p.param_off, p.len));
                    }
                    let mut parts = Vec::new();
                    let mut start = 0;
                    for &end in &ends {
                        let part = group_shard::<()>(&sizes[start..end], world, rank, bucket, Device::Cpu, |i| {
                            let p = start + i;
                            Ok(flat.narrow(0, offsets[p], sizes[p]).shallow_clone())
                        })
                        .unwrap();
                        parts.push(part);
                        start = end;
                    }
                    assert!(Tensor::cat(&parts, 0).equal(&whole), "world {world} bucket {bucket} rank {rank}");
                }
            }
        }
    }

    #[test]
    fn shards_cover_every_element_once_for_any_world_and_bucket() {
        let sizes = [7i64, 1, 12, 5, 3];
        let total: i64 = sizes.iter().sum();
        for world in 1..=4 {
            for bucket in [1, 4, 6, 10, 1000] {
                let mut seen = vec![0; total as usize];
                let mut shard_total = 0;
                for rank in 0..world {
                    let l = ZeroLayout::new(&sizes, world, rank, bucket);
                    let offsets = l.offsets();
                    let mut in_shard = vec![false; l.shard_len as usize];
                    for p in l.pieces() {
                        for i in 0..p.len {
                            seen[(offsets[p.param] + p.param_off + i) as usize] += 1;
                            assert!(!in_shard[(p.shard_off + i) as usize]);
                            in_shard[(p.shard_off + i) as usize] = true;
                        }
                    }
                    shard_total += l.shard_len;
                    assert_eq!(l.shard_len, ZeroLayout::new(&sizes, world, 0, bucket).shard_len, "equal shards");
                }
                assert!(seen.iter().all(|&c| c == 1), "world {world} bucket {bucket}: {seen:?}");
                assert!(shard_total - total < world * l_buckets(&sizes, world, bucket), "padding per bucket < world");
            }
        }
    }

    /// ZeRO-3's bookkeeping: uneven parameter sizes, groups of one or several parameters, any
    /// world and bucket size. Every element is owned once, no bucket crosses a group's end, each
    /// group's buckets cover exactly its parameters, and unsharding inverts the sharding.
    #[test]
    fn grouped_layouts_cut_buckets_at_group_ends_and_unshard_exactly() {
        let sizes = [7i64, 1, 12, 5, 3, 9, 2];
        let ends = [1usize, 3, 4, 7];
        let total: i64 = sizes.iter().sum();
        let flat = Tensor::arange(total, (Kind::Float, Device::Cpu));
        let starts: Vec<i64> = std::iter::once(0).chain(ends.iter().map(|&e| sizes[..e].iter().sum())).collect();
        for world in 1..=4 {
            for bucket in [1, 3, 4, 6, 1000] {
                let mut seen = vec![0; total as usize];
                let mut shards = Vec::new();
                for rank in 0..world {
                    let l = ZeroLayout::grouped(&sizes, &ends, world, rank, bucket);
                    assert_eq!(l.group_buckets.len(), ends.len());
                    for (g, range) in l.group_buckets.iter().enumerate() {
                        let bs = &l.buckets[range.clone()];
                        assert_eq!(bs.first().unwrap().start, starts[g], "group {g} starts its first bucket");
                        let last = bs.last().unwrap();
                        assert!(bs.iter().all(|b| (starts[g]..starts[g + 1]).contains(&b.start)), "no bucket crosses a group end");
                        // The unpadded lengths of the group's buckets add up to the group.
                        let lens: i64 = bs.windows(2).map(|w| w[1].start - w[0].start).sum::<i64>() + (starts[g + 1] - last.start);
                        assert_eq!(lens, starts[g + 1] - starts[g], "world {world} bucket {bucket} group {g}");
                    }
                    let offsets = l.offsets();
                    let s = Tensor::full([l.shard_len], -1.0, (Kind::Float, Device::Cpu));
                    for p in l.pieces() {
                        for i in 0..p.len {
                            seen[(offsets[p.param] + p.param_off + i) as usize] += 1;
                        }
                        s.narrow(0, p.shard_off, p.len).copy_(&flat.narrow(0, offsets[p.param] + p.param_off, p.len));
                    }
                    shards.push(s);
                }
                assert!(seen.iter().all(|&c| c == 1), "world {world} bucket {bucket}: {seen:?}");
                assert!(unshard_grouped(&sizes, &ends, bucket, &shards).equal(&flat), "world {world} bucket {bucket}");
            }
        }
        assert_eq!(ZeroLayout::grouped(&sizes, &[7], 3, 1, 4), ZeroLayout::new(&sizes, 3, 1, 4), "one group is the plain layout");
    }

    fn l_buckets(sizes: &[i64], world: i64, bucket: i64) -> i64 {
        ZeroLayout::new(sizes, world, 0, bucket).buckets.len() as i64
    }

    #[test]
    fn unshard_inverts_sharding_across_world_sizes() {
        let sizes = [5i64, 9, 2];
        let total: i64 = sizes.iter().sum();
        let flat = Tensor::arange(total, (Kind::Float, Device::Cpu));
        for world in 1..=3 {
            let shards: Vec<Tensor> = (0..world)
                .map(|r| {
                    let l = ZeroLayout::new(&sizes, world, r, 4);
                    let offsets = l.offsets();
                    let s = Tensor::full([l.shard_len], -1.0, (Kind::Float, Device::Cpu));
                    for p in l.pieces() {
                        s.narrow(0, p.shard_off, p.len).copy_(&flat.narrow(0, offsets[p.param] + p.param_off, p.len));
                    }
                    s
                })
                .collect();
            assert!(unshard(&sizes, 4, &shards).equal(&flat), "world {world}");
        }
    }
}
