//! The real stories260K (karpathy's llama2.c checkpoint, converted by tools/convert_stories260k.py)
//! decodes greedily to the same token ids as llama2.c's own `run.c`: a check of the conversion
//! and of our forward + engine on a trained model. The weights are not in the repository
//! (docs/benchmarks.md, "Rollout engine"): the test runs when `assets/stories260K` (or
//! `RLHF_STORIES260K`) holds the converted model and says it was skipped otherwise.
use llama::{checkpoint, generate, SamplingParams};
use std::path::PathBuf;
use tch::{Device, Kind};

/// `run -t 0.0 -n 256 -i ""` (karpathy/llama2.c run.c, gcc -O2) on stories260K.bin (sha256
/// b0a507e7...): the 256 tokens after BOS, read through a tokenizer.bin whose piece i is "[i]".
/// With tok512.bin they read "Once upon a time, there was a little girl named Lily. ...".
const RUN_C_GREEDY: [u32; 256] = [
    403, 407, 261, 378, 432, 383, 286, 261, 376, 298, 315, 421, 395, 317, 426, 338, 401, 396, 267, 337, 410, 408, 419, 292, 411, 322, 265,
    282, 295, 433, 426, 385, 328, 432, 358, 394, 261, 370, 432, 352, 266, 268, 388, 426, 338, 391, 266, 267, 337, 335, 312, 432, 398, 312,
    286, 267, 414, 270, 333, 415, 426, 13, 438, 310, 439, 419, 357, 336, 432, 313, 438, 310, 432, 278, 316, 439, 419, 298, 414, 267, 265,
    282, 295, 433, 426, 436, 317, 286, 296, 418, 269, 279, 292, 416, 439, 413, 409, 416, 327, 263, 415, 294, 267, 400, 426, 338, 336, 432,
    313, 442, 391, 267, 337, 335, 364, 420, 268, 388, 432, 398, 359, 280, 303, 439, 413, 272, 417, 264, 312, 426, 436, 13, 438, 310, 286,
    296, 418, 269, 279, 292, 416, 439, 413, 409, 416, 327, 263, 415, 294, 267, 400, 426, 338, 336, 432, 313, 442, 439, 423, 262, 304, 420,
    422, 432, 317, 426, 359, 279, 292, 416, 439, 413, 409, 416, 327, 263, 415, 294, 267, 400, 426, 436, 13, 438, 310, 279, 292, 416, 439,
    413, 391, 267, 281, 421, 427, 311, 357, 432, 384, 358, 336, 432, 313, 442, 439, 423, 262, 304, 420, 422, 432, 357, 426, 359, 279, 292,
    416, 439, 413, 409, 416, 327, 263, 415, 294, 267, 400, 426, 436, 320, 285, 357, 336, 432, 313, 455, 289, 439, 413, 263, 304, 420, 422,
    432, 317, 426, 410, 448, 411, 280, 303, 281, 421, 427, 364, 426,
];

#[test]
fn greedy_ids_equal_llama2c_run_c() {
    let dir = std::env::var_os("RLHF_STORIES260K")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../assets/stories260K"));
    if !dir.join("model.safetensors").exists() {
        eprintln!("skipped: no converted stories260K at {} (tools/convert_stories260k.py)", dir.display());
        return;
    }
    let (_vs, m) = checkpoint::load_causal_lm(&dir, Device::Cpu, Kind::Float).unwrap();
    let p = SamplingParams { max_new_tokens: 256, temperature: 0.0, stop_at_eos: true, eos_token_id: 1, ..Default::default() };
    // One row alone, and the same prompt among others in a continuous batch of 2 slots.
    let alone = generate(&m, &[vec![1]], &p).unwrap();
    assert_eq!(alone.tokens[0], RUN_C_GREEDY.to_vec());
    let prompts = vec![vec![1u32, 403, 407], vec![1], vec![1, 261]];
    let batched = llama::generate_with(&m, &prompts, &p, &llama::EngineConfig::continuous(2)).unwrap();
    assert_eq!(batched.tokens[1], RUN_C_GREEDY.to_vec());
}
