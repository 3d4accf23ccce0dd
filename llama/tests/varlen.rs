//! Packed rows as variable-length sequences: the cumulative lengths cut every row at its segment
//! boundaries (CPU); on CUDA in bf16, variable-length FlashAttention equals the masked path
//! (skipped with a message where no GPU is present).
use llama::model::{cu_seqlens, Mask};
use llama::{checkpoint, Config, Llama};
use tch::{Device, Kind, Tensor};

#[test]
fn segments_become_cumulative_lengths_cut_at_row_ends() {
    // Row 0: segments 1,1,1,2,2,0 (padding); row 1: 1,1,2,2,2,2 — a run never crosses a row.
    let seg = Tensor::from_slice(&[1i64, 1, 1, 2, 2, 0, 1, 1, 2, 2, 2, 2]).view([2, 6]);
    let (cu, max_len) = cu_seqlens(&seg);
    assert_eq!(cu.kind(), Kind::Int);
    assert_eq!(Vec::<i32>::try_from(&cu).unwrap(), vec![0, 3, 5, 6, 8, 12]);
    assert_eq!(max_len, 4);
    // A row that is one segment and the next row the same id: still two sequences.
    let (cu, max_len) = cu_seqlens(&Tensor::from_slice(&[7i64, 7, 7, 7]).view([2, 2]));
    assert_eq!(Vec::<i32>::try_from(&cu).unwrap(), vec![0, 2, 4]);
    assert_eq!(max_len, 2);
    // On the CPU the packed mask stays the explicit one.
    assert!(matches!(Mask::packed(&seg), Mask::Explicit(_)));
}

#[test]
fn varlen_flash_attention_equals_the_masked_path_on_cuda() {
    if !tch::Cuda::is_available() {
        eprintln!("skipped: no CUDA device (the CPU keeps the explicit mask)");
        return;
    }
    let device = Device::Cuda(0);
    tch::manual_seed(3);
    let vs = checkpoint::var_store(device, Kind::BFloat16);
    let cfg = Config::micro();
    let m = Llama::new(&vs.root(), &cfg);
    let seg: Vec<i64> = [vec![1; 9], vec![2; 20], vec![3; 3], vec![1; 32]].concat();
    let seg = Tensor::from_slice(&seg).view([2, 32]).to_device(device);
    let ids = Tensor::randint(cfg.vocab_size, [2, 32], (Kind::Int64, device));
    // Positions restart in every segment, as the SFT collate makes them.
    let mut pos = vec![0i64; 64];
    for r in 0..2 {
        let s: Vec<i64> = Vec::try_from(seg.get(r).to_device(Device::Cpu)).unwrap();
        for j in 0..32 {
            pos[r as usize * 32 + j] = if j > 0 && s[j] == s[j - 1] { pos[r as usize * 32 + j - 1] + 1 } else { 0 };
        }
    }
    let pos = Tensor::from_slice(&pos).view([2, 32]).to_device(device);
    let _g = tch::no_grad_guard();
    let varlen = Mask::packed(&seg);
    let Mask::Varlen { dense, .. } = &varlen else { panic!("CUDA packed rows should be Varlen") };
    let a = m.forward(&ids, &pos, &varlen, None).to_kind(Kind::Float);
    let b = m.forward(&ids, &pos, &Mask::Explicit(dense.shallow_clone()), None).to_kind(Kind::Float);
    let d = f64::try_from((&a - &b).abs().max()).unwrap();
    let scale = f64::try_from(b.abs().max()).unwrap();
    eprintln!("varlen vs masked: max abs diff {d:e} (scale {scale:e})");
    assert!(d <= 2e-2 * scale.max(1.0), "variable-length flash attention differs from the masked path by {d:e}");
}
