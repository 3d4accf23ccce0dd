//! Language-model likelihood of token rows (`rlhf eval lm`): the LM head runs only at the scored
//! positions, every token after the first of each row.
use crate::model::{Llama, Mask};
use tch::{Kind, Tensor};

/// Summed NLL and token count of right-padded rows.
pub fn batch_nll(model: &Llama, rows: &[Vec<u32>]) -> Result<(f64, i64), tch::TchError> {
    let device = model.device();
    let b = rows.len() as i64;
    let t = rows.iter().map(Vec::len).max().unwrap_or(0) as i64;
    if t < 2 {
        return Ok((0.0, 0));
    }
    let mut ids = vec![0i64; (b * t) as usize];
    let mut valid = vec![false; (b * t) as usize];
    for (i, r) in rows.iter().enumerate() {
        for (j, &x) in r.iter().enumerate() {
            ids[i * t as usize + j] = x as i64;
            valid[i * t as usize + j] = true;
        }
    }
    let ids = Tensor::from_slice(&ids).view([b, t]).to_device(device);
    let valid = Tensor::from_slice(&valid).view([b, t]).to_device(device);
    let positions = Tensor::arange(t, (Kind::Int64, device)).unsqueeze(0).expand([b, t], false);
    let mask = if rows.iter().all(|r| r.len() as i64 == t) { Mask::Causal } else { Mask::padded_causal(&valid, 0, t) };
    let hidden = model.forward(&ids, &positions, &mask, None);
    let d = hidden.size()[2];
    let scored = valid.narrow(1, 1, t - 1).reshape([-1]).nonzero().squeeze_dim(1);
    let h = hidden.narrow(1, 0, t - 1).reshape([-1, d]).index_select(0, &scored);
    let targets = ids.narrow(1, 1, t - 1).reshape([-1]).index_select(0, &scored);
    let logits = model.lm_logits(&h);
    let nll = logits.log_softmax(-1, Kind::Float).gather(1, &targets.unsqueeze(1), false).neg().to_kind(Kind::Double).sum(Kind::Double);
    Ok((f64::try_from(nll)?, scored.size()[0]))
}

/// Summed NLL and token count over all rows, `batch` rows at a time, without gradients.
pub fn total_nll(model: &Llama, rows: &[Vec<u32>], batch: usize) -> Result<(f64, i64), tch::TchError> {
    let _g = tch::no_grad_guard();
    let (mut nll, mut n) = (0f64, 0i64);
    for chunk in rows.chunks(batch.max(1)) {
        let (s, k) = batch_nll(model, chunk)?;
        nll += s;
        n += k;
    }
    Ok((nll, n))
}
