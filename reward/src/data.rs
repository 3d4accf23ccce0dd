//! Preference pairs as token rows. A pair is encoded in the Llama-2 chat format twice
//! (`<s>[INST] prompt [/INST] chosen </s>` and the same with the rejected reply); their common
//! prefix (at least the whole prompt) is laid out once, followed by the two continuations:
//! `[prefix][chosen rest][rejected rest]`. With the shared-prefix attention mask and each
//! continuation's positions starting where the prefix ends, both scores equal those of separate
//! encodings while the prompt goes through the trunk once.
use datasets::{PreferenceRecord, Rating};
use llama::model::Mask;
use llama::{AssistantMask, Message, Tokenizer};
use tch::{Device, Kind, Tensor};

#[derive(Debug, Clone, PartialEq)]
pub struct PairTokens {
    pub prefix: Vec<u32>,
    pub chosen: Vec<u32>,
    pub rejected: Vec<u32>,
    pub rating: Option<Rating>,
    pub kind: Option<datasets::PreferenceKind>,
    pub source: Option<String>,
    pub chosen_safe: Option<bool>,
    pub rejected_safe: Option<bool>,
    /// The chosen or the rejected encoding was longer than `max_len` and lost its start.
    pub truncated: bool,
}

impl PairTokens {
    pub fn len(&self) -> usize {
        self.prefix.len() + self.chosen.len() + self.rejected.len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn full(tok: &Tokenizer, prompt: &[Message], reply: &str) -> Result<Vec<u32>, llama::LlamaError> {
    let mut d = prompt.to_vec();
    d.push(Message::assistant(reply));
    Ok(llama::encode_dialog(tok, &d, AssistantMask::AllTurns)?.ids)
}

/// Tokenizes one record; both sequences are cut to `max_len` from the left of the reply side
/// (the prompt's start is dropped first) so the final token (EOS) where the score is read stays.
pub fn encode_pair(tok: &Tokenizer, r: &PreferenceRecord, max_len: usize) -> Result<PairTokens, llama::LlamaError> {
    let c = full(tok, &r.prompt, &r.chosen)?;
    let j = full(tok, &r.prompt, &r.rejected)?;
    let meta =
        PairMeta { rating: r.rating, kind: r.kind, source: r.source.clone(), chosen_safe: r.chosen_safe, rejected_safe: r.rejected_safe };
    Ok(pair_from_sequences(c, j, max_len, meta))
}

/// What a pair carries besides its tokens.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PairMeta {
    pub rating: Option<Rating>,
    pub kind: Option<datasets::PreferenceKind>,
    pub source: Option<String>,
    pub chosen_safe: Option<bool>,
    pub rejected_safe: Option<bool>,
}

/// The one-row layout of a pair from its two full encodings (prompt + chosen, prompt +
/// rejected), each cut to `max_len` as [`encode_pair`] does. Shared by the tokenizing path and
/// the tokenized cache (`datasets::cache`), so both give the same rows.
pub fn pair_from_sequences(mut c: Vec<u32>, mut j: Vec<u32>, max_len: usize, meta: PairMeta) -> PairTokens {
    let truncated = c.len() > max_len || j.len() > max_len;
    for s in [&mut c, &mut j] {
        if s.len() > max_len {
            s.drain(..s.len() - max_len);
        }
    }
    let common = c.iter().zip(&j).take_while(|(a, b)| a == b).count();
    // Each continuation keeps at least its last token (the score is read there).
    let common = common.min(c.len() - 1).min(j.len() - 1);
    PairTokens {
        prefix: c[..common].to_vec(),
        chosen: c[common..].to_vec(),
        rejected: j[common..].to_vec(),
        rating: meta.rating,
        kind: meta.kind,
        source: meta.source,
        chosen_safe: meta.chosen_safe,
        rejected_safe: meta.rejected_safe,
        truncated,
    }
}

/// What a set of pairs lacks or lost, counted so that training and evaluation can say so instead
/// of silently giving no margin, leaving out Table 29 or scoring cut sequences.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PairGaps {
    pub pairs: usize,
    /// Pairs without a `rating`: no margin in Eq. 2 and in no Table 8 bin.
    pub unrated: usize,
    /// Pairs without a safety label on either response (`chosen_safe`, `rejected_safe`).
    pub without_safety_labels: usize,
    /// Pairs whose chosen or rejected encoding was cut to `max_seq_len` (its start dropped).
    pub truncated: usize,
}

impl PairGaps {
    pub fn of<'a>(pairs: impl IntoIterator<Item = &'a PairTokens>) -> Self {
        let mut g = PairGaps::default();
        for p in pairs {
            g.pairs += 1;
            g.unrated += p.rating.is_none() as usize;
            g.without_safety_labels += (p.chosen_safe.is_none() && p.rejected_safe.is_none()) as usize;
            g.truncated += p.truncated as usize;
        }
        g
    }

    /// Logs (`tracing::warn`) what training on these pairs does silently otherwise: unrated pairs
    /// get no margin (with a margin configured) and cut pairs are scored on their last
    /// `max_seq_len` tokens. `what` names the data (e.g. `training`).
    pub fn warn_training(&self, what: &str, margin: crate::loss::MarginKind, max_seq_len: usize) {
        if self.unrated > 0 && margin != crate::loss::MarginKind::None {
            tracing::warn!(
                "{} of {} {what} pairs have no rating: they train with margin 0 (Eq. 1), not the {margin:?} margin of Table 27",
                self.unrated,
                self.pairs
            );
        }
        self.warn_truncated(what, max_seq_len);
    }

    pub fn warn_truncated(&self, what: &str, max_seq_len: usize) {
        if self.truncated > 0 {
            tracing::warn!(
                "{} of {} {what} pairs are longer than max_seq_len = {max_seq_len} tokens: their start (the prompt's first) is cut",
                self.truncated,
                self.pairs
            );
        }
    }
}

/// A batch of pairs, one row each.
pub struct PairBatch {
    pub ids: Tensor,
    pub positions: Tensor,
    pub mask: Mask,
    /// Row-local indices of the chosen and rejected score tokens, `[B, 2]`.
    pub read: Tensor,
    pub num_tokens: usize,
}

pub fn collate(pairs: &[&PairTokens], device: Device) -> PairBatch {
    let b = pairs.len();
    let t = pairs.iter().map(|p| p.len()).max().unwrap_or(1);
    let mut ids = vec![0i64; b * t];
    let mut pos = vec![0i64; b * t];
    let mut seg = vec![-1i64; b * t];
    let mut read = Vec::with_capacity(2 * b);
    let mut num_tokens = 0;
    for (row, p) in pairs.iter().enumerate() {
        let base = row * t;
        let np = p.prefix.len();
        let mut k = 0;
        for (i, &x) in p.prefix.iter().enumerate() {
            (ids[base + k], pos[base + k], seg[base + k]) = (x as i64, i as i64, 0);
            k += 1;
        }
        for (s, cont) in [(1i64, &p.chosen), (2, &p.rejected)] {
            for (i, &x) in cont.iter().enumerate() {
                (ids[base + k], pos[base + k], seg[base + k]) = (x as i64, (np + i) as i64, s);
                k += 1;
            }
            read.push((k - 1) as i64);
        }
        num_tokens += k;
    }
    let shape = [b as i64, t as i64];
    let segments = Tensor::from_slice(&seg).view(shape).to_device(device);
    PairBatch {
        ids: Tensor::from_slice(&ids).view(shape).to_device(device),
        positions: Tensor::from_slice(&pos).view(shape).to_device(device),
        mask: Mask::shared_prefix(&segments),
        read: Tensor::from_slice(&read).view([b as i64, 2]).to_device(device),
        num_tokens,
    }
}

/// One row per sequence (prompt + reply), right-padded: for scoring single responses. Returns
/// ids, positions, mask and the row-local index `[B, 1]` of each sequence's last token.
pub fn collate_single(seqs: &[&[u32]], device: Device) -> (Tensor, Tensor, Mask, Tensor) {
    let b = seqs.len();
    let t = seqs.iter().map(|s| s.len()).max().unwrap_or(1);
    let mut ids = vec![0i64; b * t];
    let mut seg = vec![-1i64; b * t];
    let mut at = Vec::with_capacity(b);
    for (r, s) in seqs.iter().enumerate() {
        for (i, &x) in s.iter().enumerate() {
            ids[r * t + i] = x as i64;
            seg[r * t + i] = 0;
        }
        at.push((s.len() - 1) as i64);
    }
    let shape = [b as i64, t as i64];
    let positions = Tensor::arange(t as i64, (Kind::Int64, device)).unsqueeze(0).expand(shape, false);
    let segments = Tensor::from_slice(&seg).view(shape).to_device(device);
    (
        Tensor::from_slice(&ids).view(shape).to_device(device),
        positions,
        Mask::packed(&segments),
        Tensor::from_slice(&at).view([b as i64, 1]).to_device(device),
    )
}
