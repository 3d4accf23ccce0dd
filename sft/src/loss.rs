//! The SFT loss: summed next-token NLL at the target positions only. The LM head runs only at
//! those positions (on short answers after long prompts that is most of its FLOPs saved).
use crate::data::Batch;
use llama::model::Mask;
use llama::Llama;
use tch::{Kind, Tensor};

/// Sum of NLL over the batch's targets, and their count. Attention is block-diagonal by segment.
pub fn sft_loss_sum(model: &Llama, batch: &Batch) -> (Tensor, i64) {
    let hidden = model.forward(&batch.ids, &batch.positions, &Mask::packed(&batch.segments), None);
    nll_of_hidden(model, &hidden, batch)
}

/// [`sft_loss_sum`] with activation checkpointing ([`Llama::backward_checkpointed`]): back-propagates
/// `nll / scale` and returns the summed NLL (detached) and the target count.
pub fn sft_backward_checkpointed(model: &Llama, batch: &Batch, scale: f64) -> (Tensor, i64) {
    let mut out = None;
    let _ = model.backward_checkpointed(&batch.ids, &batch.positions, &Mask::packed(&batch.segments), None, |h| {
        let (nll, n) = nll_of_hidden(model, h, batch);
        out = Some((nll.detach(), n));
        nll / scale
    });
    out.expect("the loss ran")
}

/// Summed NLL at the targets from the final hidden states `[B, T, D]`.
fn nll_of_hidden(model: &Llama, hidden: &Tensor, batch: &Batch) -> (Tensor, i64) {
    let d = hidden.size()[2];
    let idx = batch.targets.reshape([-1]).nonzero().squeeze_dim(1);
    let n = idx.size()[0];
    if n == 0 {
        return (Tensor::zeros([], (Kind::Float, hidden.device())), 0);
    }
    let h = hidden.reshape([-1, d]).index_select(0, &idx);
    let labels = batch.labels.reshape([-1]).index_select(0, &idx);
    let logits = model.lm_logits(&h);
    let nll = logits.log_softmax(-1, Kind::Float).gather(1, &labels.unsqueeze(1), false).neg().sum(Kind::Float);
    (nll, n)
}
