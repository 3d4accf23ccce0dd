//! The Llama network, one struct per block, each named by its HF checkpoint key so that
//! safetensors load by name (`model.layers.{i}.self_attn.q_proj.weight`, ...).
//!
//! The model is immutable; the KV cache lives outside it ([`KvCache`]) and is passed to
//! `forward`. `forward` returns hidden states: heads are separate (`lm_logits` here, the scalar
//! heads in the reward and PPO crates), so training computes the LM head only at the positions
//! it scores and generation only at the last position.
use crate::config::Config;
use tch::{nn, Device, Kind, Tensor};

/// `y = w ⊙ cast_back(x32 · rsqrt(mean(x32²) + eps))`: normalised in float32, weight applied in
/// the activation dtype, as HF `LlamaRMSNorm` and Meta's `_norm(x.float()).type_as(x) * weight`.
#[derive(Debug)]
pub struct RmsNorm {
    pub weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    pub fn new(p: nn::Path, dim: i64, eps: f64) -> Self {
        RmsNorm { weight: p.var("weight", &[dim], nn::Init::Const(1.0)), eps }
    }
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let kind = x.kind();
        if kind != Kind::Float || x.device() != Device::Cpu {
            let x32 = x.to_kind(Kind::Float);
            let var = x32.square().mean_dim(-1, true, Kind::Float);
            let y = (x32 * (var + self.eps).rsqrt()).to_kind(kind);
            return y * &self.weight;
        }
        // float32 on CPU: the same arithmetic in 6 ops instead of 8: no casts, and libtorch's CPU
        // `mean` is `sum(dtype).div_(n)` (CUDA's is not: it multiplies by 1/n), written out here,
        // the scalar steps in place on the `[.., 1]` statistic. Bit-identical, gradients included
        // (llama/tests/fused.rs). (`x * x` for `square` gives the same forward bits but other
        // gradient bits: autograd sums its two branches where `pow`'s backward multiplies by 2x.)
        let n = x.size().last().copied().unwrap_or(1);
        let mut s = x.square().sum_dim_intlist(-1, true, Kind::Float);
        let _ = s.g_div_scalar_(n).g_add_scalar_(self.eps).rsqrt_();
        (x * s) * &self.weight
    }
}

/// A bias-free linear layer storing `weight` as `[out, in]` (HF `nn.Linear` layout), with an
/// optional LoRA update ([`crate::lora`]).
#[derive(Debug)]
pub struct Linear {
    pub weight: Tensor,
    pub lora: Option<crate::lora::LoraAdapter>,
}

impl Linear {
    pub fn new(p: nn::Path, in_dim: i64, out_dim: i64) -> Self {
        // HF `_init_weights`: normal(0, initializer_range = 0.02).
        Linear { weight: p.var("weight", &[out_dim, in_dim], nn::Init::Randn { mean: 0.0, stdev: 0.02 }), lora: None }
    }
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let y = x.matmul(&self.weight.tr());
        match &self.lora {
            Some(l) => y + l.forward(x),
            None => y,
        }
    }
}

/// Rotary position embedding tables in the HF half-split layout: `emb = cat(freqs, freqs)`,
/// cos/sin computed in float32 then cast to the activation dtype. The sin table is stored with
/// its first half negated (`cat(-sin, sin)`), so that HF's `rotate_half(x) * sin` =
/// `cat(-x2, x1) * sin` becomes `roll(x, hd/2) * sin_signed` = `cat(x2 * -sin, x1 * sin)`: the
/// same products bit for bit (negation is exact), one op instead of four (narrow, narrow, neg, cat).
#[derive(Debug)]
pub struct Rope {
    cos: Tensor,
    sin: Tensor,
}

impl Rope {
    pub fn new(cfg: &Config, device: Device, kind: Kind) -> Self {
        let hd = cfg.head_dim;
        let inv_freq = Tensor::arange_start_step(0, hd, 2, (Kind::Int64, device)).to_kind(Kind::Float).divide_scalar(hd as f64);
        let inv_freq = Tensor::from(cfg.rope_theta as f32).to_device(device).pow(&inv_freq).reciprocal();
        let t = Tensor::arange(cfg.max_position_embeddings, (Kind::Int64, device)).to_kind(Kind::Float);
        let freqs = t.unsqueeze(1).matmul(&inv_freq.unsqueeze(0));
        let emb = Tensor::cat(&[&freqs, &freqs], -1);
        let sin = emb.sin().to_kind(kind);
        let half = hd / 2;
        let sin = Tensor::cat(&[sin.narrow(1, 0, half).neg(), sin.narrow(1, half, hd - half)], 1);
        Rope { cos: emb.cos().to_kind(kind), sin }
    }

    /// cos and (signed) sin for `positions` `[B, T]`, shaped `[B, 1, T, hd]` to broadcast over heads.
    pub fn at(&self, positions: &Tensor) -> (Tensor, Tensor) {
        let (b, t) = positions.size2().expect("positions must be [B, T]");
        let flat = positions.reshape([-1]);
        let cos = self.cos.index_select(0, &flat).view([b, 1, t, -1]);
        let sin = self.sin.index_select(0, &flat).view([b, 1, t, -1]);
        (cos, sin)
    }
}

/// HF `x * cos + rotate_half(x) * sin`, with `sin` signed ([`Rope`]): `roll` by half the head
/// dimension swaps the halves, the sign is in the table.
fn apply_rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
    let hd = x.size()[x.dim() - 1];
    x * cos + x.roll([hd / 2], [-1]) * sin
}

/// Grouped-query self-attention (`self_attn`): query head h reads KV head `h / (H / KV)`.
#[derive(Debug)]
pub struct Attention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
    n_heads: i64,
    n_kv: i64,
    head_dim: i64,
}

impl Attention {
    pub fn new(p: nn::Path, cfg: &Config) -> Self {
        let (d, hd) = (cfg.hidden_size, cfg.head_dim);
        Attention {
            q_proj: Linear::new(&p / "q_proj", d, cfg.num_attention_heads * hd),
            k_proj: Linear::new(&p / "k_proj", d, cfg.num_key_value_heads * hd),
            v_proj: Linear::new(&p / "v_proj", d, cfg.num_key_value_heads * hd),
            o_proj: Linear::new(&p / "o_proj", cfg.num_attention_heads * hd, d),
            n_heads: cfg.num_attention_heads,
            n_kv: cfg.num_key_value_heads,
            head_dim: hd,
        }
    }

    fn forward(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: &Mask,
        cache: Option<&mut LayerCache>,
        fused: Option<&FusedLayer>,
    ) -> Tensor {
        let t = x.size()[1];
        let (attn_mask, is_causal) = match mask {
            Mask::Causal => (None, t > 1),
            Mask::None => (None, false),
            Mask::Explicit(m) => (Some(m), false),
            Mask::Varlen { cu_seqlens, max_len, dense } => {
                if cache.is_none() && flash_varlen_eligible(x) {
                    return self.attend_varlen(x, (cos, sin), cu_seqlens, *max_len);
                }
                (Some(dense), false)
            }
        };
        match fused {
            Some(f) => self.attend_fused(x, (cos, sin), attn_mask, is_causal, cache, f),
            None => self.attend(x, x, (cos, sin), (cos, sin), attn_mask, is_causal, cache),
        }
    }

    /// [`Attention::attend`] with queries and keys from the same rows, through the inference-only
    /// fused weight ([`FusedWeights`]): one matmul gives q, k, v and the half-swapped q and k
    /// (`roll(q, hd/2)`, from rows permuted in the weight), so RoPE is three in-place ops on q and
    /// k together, and k and v come out adjacent, written into the cache with one op. `rope` is
    /// cos/sin as `[B, T, 1, hd]` (heads third, as q and k are here).
    fn attend_fused(
        &self,
        x: &Tensor,
        rope: (&Tensor, &Tensor),
        attn_mask: Option<&Tensor>,
        is_causal: bool,
        cache: Option<&mut LayerCache>,
        f: &FusedLayer,
    ) -> Tensor {
        let (b, t, _) = x.size3().expect("hidden states must be [B, T, D]");
        let (h, kv) = (self.n_heads, self.n_kv);
        // [B, T, heads, hd] with heads = q (H), k (KV), v (KV), roll(q) (H), roll(k) (KV).
        let y = x.matmul(&f.qkv_t).view([b, t, 2 * h + 3 * kv, self.head_dim]);
        // cos/sin come as [B, T, 1, hd] here (heads third; transposed once in Llama::forward_with).
        let (cos, sin) = rope;
        let mut qk = y.narrow(2, 0, h + kv);
        let mut rolled = y.narrow(2, h + 2 * kv, h + kv);
        // x * cos + roll(x) * sin, as apply_rope computes it, in place.
        let _ = qk.g_mul_(cos);
        let _ = rolled.g_mul_(sin);
        let _ = qk.g_add_(&rolled);
        let q = y.narrow(2, 0, h).transpose(1, 2);
        let kv_new = y.narrow(2, h, 2 * kv).transpose(1, 2); // [B, 2 KV, T, hd]
        let (k, v) = match cache {
            Some(c) => c.append_kv(&kv_new),
            None => (kv_new.narrow(1, 0, kv), kv_new.narrow(1, kv, kv)),
        };
        self.sdpa(&q, k, v, attn_mask, is_causal, b, t)
    }

    /// Packed sequences through variable-length FlashAttention (CUDA, fp16/bf16): the
    /// `[B, T]` rows are one stream of `B·T` tokens cut at `cu_seqlens`; no `[B, 1, T, T]` mask,
    /// and grouped-query heads stay grouped (the kernel reads K/V heads directly).
    fn attend_varlen(&self, x: &Tensor, rope: (&Tensor, &Tensor), cu_seqlens: &Tensor, max_len: i64) -> Tensor {
        let (b, t, _) = x.size3().expect("hidden states must be [B, T, D]");
        let q = self.q_proj.forward(x).view([b, t, self.n_heads, self.head_dim]).transpose(1, 2);
        let k = self.k_proj.forward(x).view([b, t, self.n_kv, self.head_dim]).transpose(1, 2);
        let v = self.v_proj.forward(x).view([b, t, self.n_kv, self.head_dim]);
        let q = apply_rope(&q, rope.0, rope.1).transpose(1, 2).reshape([b * t, self.n_heads, self.head_dim]);
        let k = apply_rope(&k, rope.0, rope.1).transpose(1, 2).reshape([b * t, self.n_kv, self.head_dim]);
        let v = v.reshape([b * t, self.n_kv, self.head_dim]);
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let y = distributed::kernels::flash_varlen(&q, &k, &v, cu_seqlens, max_len, scale)
            .unwrap_or_else(|e| panic!("variable-length flash attention failed (set RLHF_FLASH_VARLEN=0 to use the masked path): {e}"));
        self.o_proj.forward(&y.reshape([b, t, self.n_heads * self.head_dim]))
    }

    /// Attention of the queries from `xq` `[B, R, D]` over the keys and values from `xkv`
    /// `[B, T, D]` (plus the cache), each rotated by its own cos/sin.
    #[allow(clippy::too_many_arguments)]
    fn attend(
        &self,
        xq: &Tensor,
        xkv: &Tensor,
        rope_q: (&Tensor, &Tensor),
        rope_k: (&Tensor, &Tensor),
        attn_mask: Option<&Tensor>,
        is_causal: bool,
        cache: Option<&mut LayerCache>,
    ) -> Tensor {
        let (b, r, _) = xq.size3().expect("hidden states must be [B, T, D]");
        let t = xkv.size()[1];
        let q = self.q_proj.forward(xq).view([b, r, self.n_heads, self.head_dim]).transpose(1, 2);
        let k = self.k_proj.forward(xkv).view([b, t, self.n_kv, self.head_dim]).transpose(1, 2);
        let v = self.v_proj.forward(xkv).view([b, t, self.n_kv, self.head_dim]).transpose(1, 2);
        let q = apply_rope(&q, rope_q.0, rope_q.1);
        let k = apply_rope(&k, rope_k.0, rope_k.1);
        let (k, v) = match cache {
            Some(c) => c.append(&k, &v),
            None => (k, v),
        };
        self.sdpa(&q, k, v, attn_mask, is_causal, b, r)
    }

    /// Scaled dot-product attention of `q` `[B, H, R, hd]` over `k`, `v` `[B, KV, S, hd]`, then
    /// the output projection: `[B, R, D]`.
    #[allow(clippy::too_many_arguments)]
    fn sdpa(&self, q: &Tensor, k: Tensor, v: Tensor, attn_mask: Option<&Tensor>, is_causal: bool, b: i64, r: i64) -> Tensor {
        let mut gqa = self.n_kv != self.n_heads;
        let (k, v) = if gqa && attn_mask.is_some() && q.device().is_cuda() {
            // With a mask, SDPA's grouped-query support is the math kernel's only: give the
            // memory-efficient kernel its full heads instead (70B: 8 KV heads for 64).
            gqa = false;
            let rep = self.n_heads / self.n_kv;
            (k.repeat_interleave_self_int(rep, 1, None), v.repeat_interleave_self_int(rep, 1, None))
        } else {
            (k, v)
        };
        let y = Tensor::scaled_dot_product_attention(q, &k, &v, attn_mask, 0.0, is_causal, None::<f64>, gqa);
        let y = y.transpose(1, 2).reshape([b, r, self.n_heads * self.head_dim]);
        self.o_proj.forward(&y)
    }
}

/// SwiGLU feed-forward (`mlp`): `down(silu(gate(x)) ⊙ up(x))`.
#[derive(Debug)]
pub struct Mlp {
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
}

impl Mlp {
    pub fn new(p: nn::Path, cfg: &Config) -> Self {
        let (d, i) = (cfg.hidden_size, cfg.intermediate_size);
        Mlp {
            gate_proj: Linear::new(&p / "gate_proj", d, i),
            up_proj: Linear::new(&p / "up_proj", d, i),
            down_proj: Linear::new(&p / "down_proj", i, d),
        }
    }
    fn forward(&self, x: &Tensor) -> Tensor {
        self.down_proj.forward(&(self.gate_proj.forward(x).silu() * self.up_proj.forward(x)))
    }

    /// [`Mlp::forward`] with gate and up in one matmul (the fused `[gate; up]` weight, given
    /// transposed as `Linear::forward` multiplies: a `[D, 2 I]` view). The gate
    /// half is made contiguous before `silu`: libtorch's CPU `silu` computes a vector loop's scalar
    /// tail with another `exp` than its vector body, so its bits depend on the layout.
    fn forward_fused(&self, x: &Tensor, gate_up: &Tensor) -> Tensor {
        let i = gate_up.size()[1] / 2;
        let gu = x.matmul(gate_up);
        let gate = gu.narrow(-1, 0, i).contiguous();
        self.down_proj.forward(&(gate.silu() * gu.narrow(-1, i, i)))
    }
}

/// Inference-only copies of each decoder layer's projections concatenated by rows, so a
/// forward runs two GEMMs where it ran five (with many fewer ops around them):
/// `qkv` = `[W_q; W_k; W_v; roll(W_q); roll(W_k)]` (the last two with each head's halves swapped,
/// for RoPE) and `gate_up` = `[W_gate; W_up]`. A GEMM's output element is one dot product, so
/// the fused one gives the separate ones' bits when the BLAS computes an element the same way
/// whatever the matrix's other rows (MKL on the CPUs checked: llama/tests/fused.rs); the
/// constructor ([`Llama::fused_weights`]) checks it on this machine for the model's shapes and
/// several row counts and falls back to the separate weights if not. HF checkpoints, training,
/// LoRA and ZeRO-3 see the separate weights only; the copy is stale once they change.
#[derive(Debug)]
pub struct FusedWeights {
    layers: Vec<FusedLayer>,
}

#[derive(Debug)]
struct FusedLayer {
    /// The fused weights' transposed views (`w.tr()`, what `Linear::forward` multiplies by), made
    /// once instead of in every forward.
    qkv_t: Tensor,
    gate_up_t: Tensor,
}

/// Largest model (bytes of the fused copy) [`Llama::fused_weights`] fuses.
pub const FUSED_MAX_BYTES: i64 = 256 << 20;

impl FusedWeights {
    /// Whether every layer's fused GEMMs give the separate GEMMs' outputs bit for bit, on a
    /// deterministic probe input of each of several row counts (the engine's decode steps run
    /// one row per slot, its prefills `prompts × length`).
    fn matches(&self, model: &Llama) -> bool {
        let d = model.cfg.hidden_size;
        [1i64, 2, 3, 5, 8, 13, 16, 17, 32, 64, 100, 256, 1000].iter().all(|&m| {
            // Values without the global RNG (drawing would change the caller's random stream).
            let x = (Tensor::arange(m * d, (Kind::Float, Device::Cpu)) * 0.7311).sin().view([m, 1, d]);
            model.layers.iter().zip(&self.layers).all(|(l, f)| {
                let (a, mlp) = (&l.self_attn, &l.mlp);
                let hd = a.head_dim;
                let qkv = x.matmul(&f.qkv_t);
                let gu = x.matmul(&f.gate_up_t);
                let (q, k) = (a.q_proj.forward(&x), a.k_proj.forward(&x));
                let roll = |y: &Tensor, heads: i64| y.view([m, 1, heads, hd]).roll([hd / 2], [-1]).view([m, 1, heads * hd]);
                let (nq, nk) = (a.n_heads * hd, a.n_kv * hd);
                let parts = [(0, q.shallow_clone()), (nq, k.shallow_clone()), (nq + nk, a.v_proj.forward(&x))];
                let rolled = [(nq + 2 * nk, roll(&q, a.n_heads)), (2 * nq + 2 * nk, roll(&k, a.n_kv))];
                let i = mlp.gate_proj.weight.size()[0];
                parts.iter().chain(&rolled).all(|(at, y)| qkv.narrow(-1, *at, y.size()[2]).equal(y))
                    && gu.narrow(-1, 0, i).equal(&mlp.gate_proj.forward(&x))
                    && gu.narrow(-1, i, i).equal(&mlp.up_proj.forward(&x))
            })
        })
    }
}

/// One pre-norm decoder layer (`model.layers.{i}`).
#[derive(Debug)]
pub struct DecoderLayer {
    pub input_layernorm: RmsNorm,
    pub self_attn: Attention,
    pub post_attention_layernorm: RmsNorm,
    pub mlp: Mlp,
}

impl DecoderLayer {
    pub fn new(p: nn::Path, cfg: &Config) -> Self {
        DecoderLayer {
            input_layernorm: RmsNorm::new(&p / "input_layernorm", cfg.hidden_size, cfg.rms_norm_eps),
            self_attn: Attention::new(&p / "self_attn", cfg),
            post_attention_layernorm: RmsNorm::new(&p / "post_attention_layernorm", cfg.hidden_size, cfg.rms_norm_eps),
            mlp: Mlp::new(&p / "mlp", cfg),
        }
    }
    fn forward(&self, x: &Tensor, cos: &Tensor, sin: &Tensor, mask: &Mask, cache: Option<&mut LayerCache>) -> Tensor {
        self.forward_with(x, cos, sin, mask, cache, None)
    }

    fn forward_with(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: &Mask,
        cache: Option<&mut LayerCache>,
        fused: Option<&FusedLayer>,
    ) -> Tensor {
        let h = x + self.self_attn.forward(&self.input_layernorm.forward(x), cos, sin, mask, cache, fused);
        let hn = self.post_attention_layernorm.forward(&h);
        let m = match fused {
            Some(f) => self.mlp.forward_fused(&hn, &f.gate_up_t),
            None => self.mlp.forward(&hn),
        };
        &h + m
    }

    /// The layer's output at the row-local positions `read` `[B, R]` only: keys and values come
    /// from every position, queries and the MLP only from the read ones. Each output row equals
    /// the same row of [`DecoderLayer::forward`].
    fn forward_at(&self, x: &Tensor, cos: &Tensor, sin: &Tensor, mask: &Mask, read: &Tensor) -> Tensor {
        let (b, t, d) = x.size3().expect("hidden states must be [B, T, D]");
        let r = read.size()[1];
        let hd = cos.size()[3];
        let xn = self.input_layernorm.forward(x);
        let pick = |z: &Tensor| z.gather(1, &read.unsqueeze(-1).expand([b, r, d], false), false);
        let rope_rows = |z: &Tensor| z.gather(2, &read.view([b, 1, r, 1]).expand([b, 1, r, hd], false), false);
        let (cos_q, sin_q) = (rope_rows(cos), rope_rows(sin));
        let rows = match mask {
            Mask::Causal => {
                let k_pos = Tensor::arange(t, (Kind::Int64, x.device())).view([1, 1, 1, t]);
                Some(k_pos.le_tensor(&read.view([b, 1, r, 1])))
            }
            Mask::None => None,
            Mask::Explicit(m) | Mask::Varlen { dense: m, .. } => {
                Some(m.gather(2, &read.view([b, 1, r, 1]).expand([b, 1, r, m.size()[3]], false), false))
            }
        };
        let a = self.self_attn.attend(&pick(&xn), &xn, (&cos_q, &sin_q), (cos, sin), rows.as_ref(), false, None);
        let h = pick(x) + a;
        &h + self.mlp.forward(&self.post_attention_layernorm.forward(&h))
    }
}

/// How the queries of one forward may attend.
#[derive(Debug)]
pub enum Mask {
    /// Plain causal attention over the sequence (no padding, no past).
    Causal,
    /// Every query sees every key (single-token decode without padding).
    None,
    /// A boolean mask `[B, 1, T, S]`, true where attention is allowed.
    Explicit(Tensor),
    /// Packed sequences on CUDA ([`Mask::packed`]): variable-length FlashAttention over the
    /// cumulative sequence lengths `cu_seqlens` (int32 `[S + 1]` over the flattened `B·T` tokens;
    /// `max_len` the longest); `dense` is the same mask as `Explicit`, for the paths the kernel
    /// does not serve (a KV cache, float32, the scalar heads' last layer).
    Varlen { cu_seqlens: Tensor, max_len: i64, dense: Tensor },
}

/// Whether packed rows on `x`'s device and dtype go through variable-length FlashAttention:
/// CUDA, fp16 or bf16, and not turned off with `RLHF_FLASH_VARLEN=0`.
fn flash_varlen_eligible(x: &Tensor) -> bool {
    x.device().is_cuda() && matches!(x.kind(), Kind::BFloat16 | Kind::Half) && varlen_enabled()
}

/// Variable-length attention is on unless `RLHF_FLASH_VARLEN=0`.
fn varlen_enabled() -> bool {
    std::env::var("RLHF_FLASH_VARLEN").as_deref() != Ok("0")
}

/// The runs of equal segment id of each row of `segment_ids` `[B, T]` as cumulative lengths over
/// the flattened `B·T` tokens (int32 `[S + 1]`), and the longest run: the sequences of packed rows
/// as variable-length attention sees them (padding forms runs of its own, attended by nothing else).
pub fn cu_seqlens(segment_ids: &Tensor) -> (Tensor, i64) {
    let (b, t) = segment_ids.size2().expect("segment ids must be [B, T]");
    let device = segment_ids.device();
    let n = b * t;
    let flat = segment_ids.reshape([n]);
    let row = Tensor::arange(n, (Kind::Int64, device)).divide_scalar_mode(t, "floor");
    let change = flat.narrow(0, 1, n - 1).ne_tensor(&flat.narrow(0, 0, n - 1)).logical_or(&row.narrow(0, 1, n - 1).ne_tensor(&row.narrow(
        0,
        0,
        n - 1,
    )));
    let starts = change.nonzero().squeeze_dim(1) + 1;
    let zero = Tensor::zeros([1], (Kind::Int64, device));
    let end = Tensor::full([1], n, (Kind::Int64, device));
    let cu = Tensor::cat(&[zero, starts, end], 0);
    let lens = cu.narrow(0, 1, cu.size()[0] - 1) - cu.narrow(0, 0, cu.size()[0] - 1);
    let max_len = i64::try_from(lens.max()).unwrap_or(t);
    (cu.to_kind(Kind::Int), max_len)
}

impl Mask {
    /// Causal attention restricted to valid (non-pad) keys, for `q_len` new queries after
    /// `past` cached positions. `key_valid` is `[B, past + q_len]`. Each query also sees itself,
    /// so a pad query never has an empty row (an all-masked row would give NaN, and a NaN value
    /// vector poisons valid rows through `0 · NaN`).
    pub fn padded_causal(key_valid: &Tensor, past: i64, q_len: i64) -> Mask {
        let device = key_valid.device();
        let s = past + q_len;
        let q_pos = Tensor::arange_start(past, s, (Kind::Int64, device)).unsqueeze(1);
        let k_pos = Tensor::arange(s, (Kind::Int64, device)).unsqueeze(0);
        let causal = k_pos.le_tensor(&q_pos); // [q, s]
        let diag = k_pos.eq_tensor(&q_pos);
        let valid = key_valid.to_kind(Kind::Bool).unsqueeze(1).unsqueeze(1); // [B,1,1,s]
        let m = causal.unsqueeze(0).unsqueeze(0).logical_and(&valid).logical_or(&diag.unsqueeze(0).unsqueeze(0));
        Mask::Explicit(m)
    }

    /// Block-diagonal causal mask for packed sequences: `segment_ids` `[B, T]`, a query sees earlier
    /// keys of its own segment only.
    /// On CUDA the mask is [`Mask::Varlen`]: half-precision attention then runs as
    /// variable-length FlashAttention over the segments instead of a `[B, 1, T, T]` mask.
    pub fn packed(segment_ids: &Tensor) -> Mask {
        let t = segment_ids.size()[1];
        let device = segment_ids.device();
        let pos = Tensor::arange(t, (Kind::Int64, device));
        let causal = pos.unsqueeze(0).le_tensor(&pos.unsqueeze(1));
        let same = segment_ids.unsqueeze(2).eq_tensor(&segment_ids.unsqueeze(1));
        let dense = same.logical_and(&causal.unsqueeze(0)).unsqueeze(1);
        if device.is_cuda() && varlen_enabled() {
            let (cu_seqlens, max_len) = cu_seqlens(segment_ids);
            return Mask::Varlen { cu_seqlens, max_len, dense };
        }
        Mask::Explicit(dense)
    }
}

impl Mask {
    /// Two continuations sharing one prompt in a single row (reward-model pairs):
    /// `segments` is 0 on the shared prefix, 1 and 2 on the two continuations, -1 on padding.
    /// A query sees earlier keys of its own segment and the whole prefix, never the other
    /// continuation; with positions restarting after the prefix for each continuation, each
    /// continuation is computed exactly as if the pair had been encoded separately.
    pub fn shared_prefix(segments: &Tensor) -> Mask {
        let t = segments.size()[1];
        let device = segments.device();
        let pos = Tensor::arange(t, (Kind::Int64, device));
        let causal = pos.unsqueeze(0).le_tensor(&pos.unsqueeze(1)).unsqueeze(0);
        let same = segments.unsqueeze(2).eq_tensor(&segments.unsqueeze(1));
        let key_is_prefix = segments.eq(0).unsqueeze(1);
        Mask::Explicit(same.logical_or(&key_is_prefix).logical_and(&causal).unsqueeze(1))
    }
}

/// Keys and values of one layer, preallocated to `capacity` positions, in one tensor
/// `[B, 2 KV, capacity, hd]` (keys in heads `0..KV`, values in `KV..2 KV`): the fused inference
/// path ([`FusedWeights`]) writes a step's keys and values with one op.
#[derive(Debug)]
pub struct LayerCache {
    kv: Tensor,
    n_kv: i64,
    len: i64,
    /// Per-row write positions of the next single-token step (`[B, 2 KV, 1, hd]`, the row's
    /// position broadcast) and the key span it reads; set by [`KvCache::set_row_positions`].
    rows: Option<(Tensor, i64)>,
}

impl LayerCache {
    /// Keys and values `[B, KV, len, hd]` over the first `len` positions.
    fn read(&self, len: i64) -> (Tensor, Tensor) {
        let kv = self.kv.narrow(2, 0, len);
        (kv.narrow(1, 0, self.n_kv), kv.narrow(1, self.n_kv, self.n_kv))
    }

    fn append(&mut self, k: &Tensor, v: &Tensor) -> (Tensor, Tensor) {
        let n = self.n_kv;
        if let Some((index, span)) = self.rows.take() {
            // Continuous batching: each row writes its one new key/value at its own position and
            // the step reads the first `span` positions (the mask hides what a row does not own).
            let index = index.narrow(1, 0, n);
            let _ = self.kv.narrow(1, 0, n).scatter_(2, &index, k);
            let _ = self.kv.narrow(1, n, n).scatter_(2, &index, v);
            return self.read(span);
        }
        let t = k.size()[2];
        assert!(self.len + t <= self.kv.size()[2], "KV cache overflow: grow the capacity");
        self.kv.narrow(1, 0, n).narrow(2, self.len, t).copy_(k);
        self.kv.narrow(1, n, n).narrow(2, self.len, t).copy_(v);
        self.len += t;
        self.read(self.len)
    }

    /// [`LayerCache::append`] of keys and values given together, `[B, 2 KV, T, hd]`: one write.
    fn append_kv(&mut self, kv: &Tensor) -> (Tensor, Tensor) {
        if let Some((index, span)) = self.rows.take() {
            let _ = self.kv.scatter_(2, &index, kv);
            return self.read(span);
        }
        let t = kv.size()[2];
        assert!(self.len + t <= self.kv.size()[2], "KV cache overflow: grow the capacity");
        self.kv.narrow(2, self.len, t).copy_(kv);
        self.len += t;
        self.read(self.len)
    }
}

/// The KV cache of every layer, kept outside the immutable model. Preallocated so decoding
/// writes in place instead of concatenating a growing tensor each step.
#[derive(Debug)]
pub struct KvCache {
    layers: Vec<LayerCache>,
}

impl KvCache {
    pub fn new(cfg: &Config, batch: i64, capacity: i64, device: Device, kind: Kind) -> Self {
        let n_kv = cfg.num_key_value_heads;
        let shape = [batch, 2 * n_kv, capacity, cfg.head_dim];
        let layers =
            (0..cfg.num_hidden_layers).map(|_| LayerCache { kv: Tensor::zeros(shape, (kind, device)), n_kv, len: 0, rows: None }).collect();
        KvCache { layers }
    }

    /// Number of cached positions.
    pub fn len(&self) -> i64 {
        self.layers.first().map_or(0, |l| l.len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Repeats every row `k` times (row i becomes rows i*k .. i*k+k): prefill a prompt once,
    /// then sample K continuations from the same cache.
    pub fn repeat_interleave(&self, k: i64) -> KvCache {
        let layers = self
            .layers
            .iter()
            .map(|l| LayerCache { kv: l.kv.repeat_interleave_self_int(k, 0, None), n_kv: l.n_kv, len: l.len, rows: None })
            .collect();
        KvCache { layers }
    }

    /// Rows (batch size) and positions per row the cache holds.
    pub fn shape(&self) -> (i64, i64) {
        self.layers.first().map_or((0, 0), |l| (l.kv.size()[0], l.kv.size()[2]))
    }

    /// Per-row positions for the next forward, which must feed one token per row: row `b` writes
    /// its key and value at `positions[b]` (`[B]` int64, on the cache's device) instead of after a
    /// shared length, and attention reads positions `0..span` (the caller's mask keeps each row
    /// to its own `0..=positions[b]`). Applies to one forward only. Rows of different lengths so
    /// decode together in one fixed buffer (continuous batching, `crate::engine`).
    pub fn set_row_positions(&mut self, positions: &Tensor, span: i64) {
        let Some((b, h2, _, hd)) = self.layers.first().map(|l| l.kv.size4().expect("cache is [B, 2 KV, S, hd]")) else { return };
        // One index for every layer (they share the shape).
        let index = positions.view([b, 1, 1, 1]).expand([b, h2, 1, hd], false);
        for l in &mut self.layers {
            l.rows = Some((index.shallow_clone(), span));
        }
    }

    /// Copies rows `src_rows` of `src` (their first `src.len()` positions) into rows `dst_rows`
    /// of this cache (`[N]` int64 each): a prompt prefilled once lands in the K slots of its samples.
    pub fn copy_rows(&mut self, src: &KvCache, src_rows: &Tensor, dst_rows: &Tensor) {
        let n = src.len();
        for (d, s) in self.layers.iter_mut().zip(&src.layers) {
            let _ = d.kv.narrow(2, 0, n).index_copy_(0, dst_rows, &s.kv.narrow(2, 0, n).index_select(0, src_rows));
        }
    }

    /// Keeps rows `keep` (`[N]` int64) only, in that order: a batch whose rows have ended shrinks
    /// so that later steps no longer compute them. Allocates the smaller cache once.
    pub fn select_rows(&mut self, keep: &Tensor) {
        for l in &mut self.layers {
            l.kv = l.kv.index_select(0, keep);
        }
    }
}

/// Weight sharding over the ranks of a distributed run (ZeRO-3, `training::optim`): a decoder
/// layer's weights are present only between [`ShardHooks::gather`] and [`ShardHooks::release`];
/// after the layer's backward [`ShardHooks::reduce`] sums its gradients over the ranks into each
/// rank's shard and frees them. Every rank must call the same hooks in the same order (they are
/// collectives), so the model calls them for every layer whatever its inputs.
pub trait ShardHooks: Send {
    /// Layer `layer`'s full weights into its tensors.
    fn gather(&self, layer: usize);
    /// Frees layer `layer`'s full weights.
    fn release(&self, layer: usize);
    /// Layer `layer`'s gradients (zeros where it has none) summed over the ranks into this
    /// rank's shard; its full gradients freed.
    fn reduce(&self, layer: usize);
}

/// `LlamaForCausalLM`: `model.embed_tokens`, `model.layers.*`, `model.norm`, `lm_head`
/// (absent when tied to the embeddings).
#[derive(Debug)]
pub struct Llama {
    pub cfg: Config,
    pub embed_tokens: Tensor,
    pub layers: Vec<DecoderLayer>,
    pub norm: RmsNorm,
    pub lm_head: Option<Linear>,
    rope: Rope,
    shard: Option<Hooks>,
}

/// The model's [`ShardHooks`] (a `Debug` wrapper).
struct Hooks(Box<dyn ShardHooks>);

impl std::fmt::Debug for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ShardHooks")
    }
}

impl Llama {
    /// Builds the causal LM under `root` (the VarStore root). The trunk lives under `model.`.
    pub fn new(root: &nn::Path, cfg: &Config) -> Self {
        Self::new_with(root, cfg, &mut |_| {})
    }

    /// As [`Llama::new`], calling `built(i)` as soon as decoder layer `i`'s variables exist (in
    /// the VarStore, initialised), before the next layer's are made: ZeRO-3's shard-on-load keeps
    /// its shard of each layer and empties the variables there, so no more than one layer is
    /// ever whole. The variables are made in the same order, from the same RNG draws, as by
    /// [`Llama::new`].
    pub fn new_with(root: &nn::Path, cfg: &Config, built: &mut dyn FnMut(usize)) -> Self {
        let mut llama = Self::trunk_with(root, cfg, built);
        if !cfg.tie_word_embeddings {
            llama.lm_head = Some(Linear::new(root / "lm_head", cfg.hidden_size, cfg.vocab_size));
        }
        llama
    }

    /// Builds only the trunk (`model.*`), for models with their own head (reward, value).
    pub fn trunk(root: &nn::Path, cfg: &Config) -> Self {
        Self::trunk_with(root, cfg, &mut |_| {})
    }

    /// [`Llama::trunk`] with [`Llama::new_with`]'s `built` callback.
    pub fn trunk_with(root: &nn::Path, cfg: &Config, built: &mut dyn FnMut(usize)) -> Self {
        let m = root / "model";
        let embed_tokens =
            (&m / "embed_tokens").var("weight", &[cfg.vocab_size, cfg.hidden_size], nn::Init::Randn { mean: 0.0, stdev: 0.02 });
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| {
                let layer = DecoderLayer::new(&m / "layers" / i, cfg);
                built(i as usize);
                layer
            })
            .collect();
        let norm = RmsNorm::new(&m / "norm", cfg.hidden_size, cfg.rms_norm_eps);
        let rope = Rope::new(cfg, root.device(), root.kind());
        Llama { cfg: cfg.clone(), embed_tokens, layers, norm, lm_head: None, rope, shard: None }
    }

    /// Shards the decoder layers' weights (ZeRO-3): from now on every forward gathers each layer
    /// just before it runs and frees it after, and [`Llama::backward_checkpointed`] reduces each
    /// layer's gradients as soon as its backward is done. A plain `forward` with gradient cannot
    /// back-propagate into freed weights: training must use the checkpointed backward.
    pub fn set_shard_hooks(&mut self, hooks: Box<dyn ShardHooks>) {
        self.shard = Some(Hooks(hooks));
    }

    /// Whether the layers are sharded ([`Llama::set_shard_hooks`]).
    pub fn is_sharded(&self) -> bool {
        self.shard.is_some()
    }

    fn gather(&self, i: usize) {
        if let Some(h) = &self.shard {
            h.0.gather(i);
        }
    }

    fn release(&self, i: usize) {
        if let Some(h) = &self.shard {
            h.0.release(i);
        }
    }

    fn reduce(&self, i: usize) {
        if let Some(h) = &self.shard {
            h.0.reduce(i);
        }
    }

    /// Hidden states after the final norm, `[B, T, D]`.
    /// `positions` `[B, T]` are the RoPE positions; with a cache they continue after its length.
    pub fn forward(&self, ids: &Tensor, positions: &Tensor, mask: &Mask, cache: Option<&mut KvCache>) -> Tensor {
        self.forward_with(ids, positions, mask, cache, None)
    }

    /// [`Llama::forward`], through `fused` weights ([`Llama::fused_weights`], inference only)
    /// when given: the same hidden states bit for bit, in fewer ops.
    pub fn forward_with(
        &self,
        ids: &Tensor,
        positions: &Tensor,
        mask: &Mask,
        mut cache: Option<&mut KvCache>,
        fused: Option<&FusedWeights>,
    ) -> Tensor {
        let mut x = Tensor::embedding(&self.embed_tokens, ids, -1, false, false);
        let (cos, sin) = self.rope.at(positions);
        // The fused path keeps q and k as [B, T, heads, hd]: cos/sin as [B, T, 1, hd].
        let (cos, sin) = if fused.is_some() { (cos.transpose(1, 2), sin.transpose(1, 2)) } else { (cos, sin) };
        for (i, layer) in self.layers.iter().enumerate() {
            let lc = cache.as_deref_mut().map(|c| &mut c.layers[i]);
            self.gather(i);
            x = layer.forward_with(&x, &cos, &sin, mask, lc, fused.map(|f| &f.layers[i]));
            self.release(i);
        }
        self.norm.forward(&x)
    }

    /// The decoder layers' projections fused for inference ([`FusedWeights`]), or `None` where
    /// the fused path is not used: a model off the CPU or not in float32 (its GEMMs were not
    /// checked), sharded (ZeRO-3: weights exist only between gathers), with LoRA adapters, larger
    /// than [`FUSED_MAX_BYTES`] (the copy costs memory; on a large model the GEMMs, not the op
    /// count, dominate a step), or whose fused GEMM does not give the separate GEMMs' bits on this
    /// machine ([`FusedWeights`]'s probe). Build it after the weights last changed (a copy).
    pub fn fused_weights(&self) -> Option<FusedWeights> {
        if self.device() != Device::Cpu || self.kind() != Kind::Float || self.is_sharded() || self.layers.is_empty() {
            return None;
        }
        let c = &self.cfg;
        let per_layer = c.hidden_size * (c.head_dim * (2 * c.num_attention_heads + 3 * c.num_key_value_heads) + 2 * c.intermediate_size);
        if 4 * per_layer * c.num_hidden_layers > FUSED_MAX_BYTES {
            return None;
        }
        let _guard = tch::no_grad_guard();
        let mut layers = Vec::with_capacity(self.layers.len());
        for l in &self.layers {
            let (a, m) = (&l.self_attn, &l.mlp);
            let linears = [&a.q_proj, &a.k_proj, &a.v_proj, &a.o_proj, &m.gate_proj, &m.up_proj, &m.down_proj];
            if linears.iter().any(|x| x.lora.is_some()) {
                return None;
            }
            // The half-swapped q and k rows: row block h of roll(W) is head h's rows with its two
            // halves exchanged, so `x · roll(W)ᵀ` is `roll(x · Wᵀ, hd/2)` per head.
            let hd = a.head_dim;
            let rolled = |w: &Tensor, heads: i64| w.view([heads, hd, -1]).roll([hd / 2], [1]).reshape([heads * hd, -1]);
            let qkv = Tensor::cat(
                &[
                    a.q_proj.weight.shallow_clone(),
                    a.k_proj.weight.shallow_clone(),
                    a.v_proj.weight.shallow_clone(),
                    rolled(&a.q_proj.weight, a.n_heads),
                    rolled(&a.k_proj.weight, a.n_kv),
                ],
                0,
            );
            let gate_up = Tensor::cat(&[&m.gate_proj.weight, &m.up_proj.weight], 0);
            layers.push(FusedLayer { qkv_t: qkv.tr(), gate_up_t: gate_up.tr() });
        }
        let fused = FusedWeights { layers };
        fused.matches(self).then_some(fused)
    }

    /// Final hidden states at the row-local positions `read` `[B, R]` only, `[B, R, D]`: equal to
    /// gathering them from [`Llama::forward`], but the last layer computes queries, attention
    /// output and MLP for the read positions alone (scalar heads read one token per sequence,
    /// so on a shallow model that is most of a layer saved). No cache.
    pub fn forward_at(&self, ids: &Tensor, positions: &Tensor, mask: &Mask, read: &Tensor) -> Tensor {
        let mut x = Tensor::embedding(&self.embed_tokens, ids, -1, false, false);
        let (cos, sin) = self.rope.at(positions);
        let n = self.layers.len();
        for (i, layer) in self.layers[..n.saturating_sub(1)].iter().enumerate() {
            self.gather(i);
            x = layer.forward(&x, &cos, &sin, mask, None);
            self.release(i);
        }
        let x = match self.layers.last() {
            Some(last) => {
                self.gather(n - 1);
                let y = last.forward_at(&x, &cos, &sin, mask, read);
                self.release(n - 1);
                y
            }
            None => {
                let (b, r, d) = (read.size()[0], read.size()[1], x.size()[2]);
                x.gather(1, &read.unsqueeze(-1).expand([b, r, d], false), false)
            }
        };
        self.norm.forward(&x)
    }

    /// Activation checkpointing (layer-wise recomputation): the forward keeps only each
    /// recomputed layer's input, `loss` of the final hidden states (after the norm) is built with
    /// gradient and back-propagated, then each layer runs forward again, with gradient, in reverse
    /// as the gradient reaches its output, and passes it on to its input; last, the embeddings.
    /// The parameters' gradients accumulate as `loss(self.forward(..)).backward()` leaves them
    /// (equal up to the order of float sums). With `read` (`[B, R]`, as
    /// [`Llama::forward_at`]) the last layer is not recomputed but runs in the head, at the read
    /// positions only. Returns the loss, detached. Activations held: one `[B, T, D]` input per
    /// layer plus one layer's graph at a time, instead of every layer's graph.
    pub fn backward_checkpointed(
        &self,
        ids: &Tensor,
        positions: &Tensor,
        mask: &Mask,
        read: Option<&Tensor>,
        loss: impl FnOnce(&Tensor) -> Tensor,
    ) -> Tensor {
        let (cos, sin) = self.rope.at(positions);
        let n = self.layers.len();
        let recomputed = if read.is_some() { n.saturating_sub(1) } else { n };
        let mut inputs = Vec::with_capacity(recomputed);
        let mut x = tch::no_grad(|| Tensor::embedding(&self.embed_tokens, ids, -1, false, false));
        for (i, layer) in self.layers[..recomputed].iter().enumerate() {
            self.gather(i);
            let y = tch::no_grad(|| layer.forward(&x, &cos, &sin, mask, None));
            self.release(i);
            inputs.push(std::mem::replace(&mut x, y));
        }
        let top = x.detach().set_requires_grad(true);
        // ZeRO-3 with `read`: the last layer runs in the head, gathered until the loss's backward.
        let head_layer = (read.is_some() && n > 0).then(|| n - 1);
        if let Some(i) = head_layer {
            self.gather(i);
        }
        let h = match (read, self.layers.last()) {
            (Some(r), Some(last)) => last.forward_at(&top, &cos, &sin, mask, r),
            (Some(r), None) => {
                let (b, k, d) = (r.size()[0], r.size()[1], top.size()[2]);
                top.gather(1, &r.unsqueeze(-1).expand([b, k, d], false), false)
            }
            (None, _) => top.shallow_clone(),
        };
        let l = loss(&self.norm.forward(&h));
        l.backward();
        drop(h);
        if let Some(i) = head_layer {
            self.reduce(i);
            self.release(i);
        }
        let mut g = top.grad();
        for (i, (layer, xin)) in self.layers[..recomputed].iter().zip(inputs).enumerate().rev() {
            if !g.defined() {
                if self.shard.is_none() {
                    break;
                }
                // Sharded: every rank gathers and reduces every layer (zeros here).
                self.gather(i);
                self.reduce(i);
                self.release(i);
                continue;
            }
            self.gather(i);
            let xin = xin.detach().set_requires_grad(true);
            let y = layer.forward(&xin, &cos, &sin, mask, None);
            // d/dy of sum(y * g) is g exactly: the layer's backward with the incoming gradient.
            (y * &g).sum(Kind::Float).backward();
            g = xin.grad();
            self.reduce(i);
            self.release(i);
        }
        if g.defined() && self.embed_tokens.requires_grad() {
            (Tensor::embedding(&self.embed_tokens, ids, -1, false, false) * &g).sum(Kind::Float).backward();
        }
        l.detach()
    }

    /// LM logits in float32 for the given hidden states (any leading shape).
    pub fn lm_logits(&self, hidden: &Tensor) -> Tensor {
        let logits = match &self.lm_head {
            Some(h) => h.forward(hidden),
            None => hidden.matmul(&self.embed_tokens.tr()),
        };
        logits.to_kind(Kind::Float)
    }

    pub fn device(&self) -> Device {
        self.embed_tokens.device()
    }

    pub fn kind(&self) -> Kind {
        self.embed_tokens.kind()
    }
}

/// HF-style positions for a left-padded batch: `cumsum(mask) - 1`, clamped at 0.
pub fn positions_from_mask(valid: &Tensor) -> Tensor {
    (valid.to_kind(Kind::Int64).cumsum(1, Kind::Int64) - 1).clamp_min(0)
}
