//! `--device auto|cpu|cuda|cuda:N` and the compute dtype that goes with it (fp32 on CPU, bf16 on CUDA).
use crate::error::{LlamaError, Result};
use tch::{Device, Kind};

/// Parses a device string. `auto` picks CUDA device 0 when libtorch sees a GPU, else the CPU.
pub fn parse_device(s: &str) -> Result<Device> {
    let s = s.trim().to_ascii_lowercase();
    match s.as_str() {
        "auto" => Ok(Device::cuda_if_available()),
        "cpu" => Ok(Device::Cpu),
        "cuda" | "gpu" => require_cuda(0),
        _ => match s.strip_prefix("cuda:") {
            Some(n) => {
                let i: usize = n.parse().map_err(|_| LlamaError::Device(s.clone()))?;
                require_cuda(i)
            }
            None => Err(LlamaError::Device(s)),
        },
    }
}

fn require_cuda(i: usize) -> Result<Device> {
    let n = tch::Cuda::device_count() as usize;
    if i >= n {
        return Err(LlamaError::Invalid(format!("device cuda:{i} requested but libtorch sees {n} CUDA device(s)")));
    }
    Ok(Device::Cuda(i))
}

/// The compute dtype for a device: fp32 on CPU, bf16 on CUDA.
pub fn default_kind(device: Device) -> Kind {
    match device {
        Device::Cpu => Kind::Float,
        _ => Kind::BFloat16,
    }
}

/// Parses a dtype name as written in HF configs or on our command line.
pub fn parse_kind(s: &str) -> Result<Kind> {
    match s {
        "float32" | "fp32" | "f32" => Ok(Kind::Float),
        "bfloat16" | "bf16" => Ok(Kind::BFloat16),
        "float16" | "fp16" | "f16" | "half" => Ok(Kind::Half),
        _ => Err(LlamaError::Invalid(format!("unknown dtype {s:?}: expected float32, bfloat16 or float16"))),
    }
}

/// The HF `torch_dtype` name of a kind.
pub fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::BFloat16 => "bfloat16",
        Kind::Half => "float16",
        _ => "float32",
    }
}
