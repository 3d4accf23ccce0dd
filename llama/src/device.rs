//! `--device auto|cpu|cuda|cuda:N` and the compute dtype that goes with it (fp32 on CPU, bf16 on CUDA).
use crate::error::{LlamaError, Result};
use tch::{Device, Kind};

/// Parses a device string (`auto`, `cpu`, `cuda`, `cuda:N`) into a libtorch device.
pub fn parse_device(s: &str) -> Result<Device> {
    s.parse::<DeviceSpec>()?.device()
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

/// A device as the user wrote it (`auto`, `cpu`, `cuda`, `cuda:N`), checked when a config or a
/// flag is read; [`DeviceSpec::compute`] turns it (with an optional dtype) into the one typed
/// [`Compute`] value every stage runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceSpec {
    #[default]
    Auto,
    Cpu,
    Cuda(usize),
}

impl std::str::FromStr for DeviceSpec {
    type Err = LlamaError;
    fn from_str(s: &str) -> Result<Self> {
        let l = s.trim().to_ascii_lowercase();
        match l.as_str() {
            "auto" => Ok(DeviceSpec::Auto),
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" | "gpu" => Ok(DeviceSpec::Cuda(0)),
            _ => match l.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(i)) => Ok(DeviceSpec::Cuda(i)),
                _ => Err(LlamaError::Device(s.to_string())),
            },
        }
    }
}

impl std::fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceSpec::Auto => f.write_str("auto"),
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda(0) => f.write_str("cuda"),
            DeviceSpec::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

/// A compute or storage dtype (`float32`, `bfloat16`, `float16` and their short names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    Float32,
    BFloat16,
    Float16,
}

impl Dtype {
    pub fn kind(self) -> Kind {
        match self {
            Dtype::Float32 => Kind::Float,
            Dtype::BFloat16 => Kind::BFloat16,
            Dtype::Float16 => Kind::Half,
        }
    }
}

impl std::str::FromStr for Dtype {
    type Err = LlamaError;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match parse_kind(s)? {
            Kind::BFloat16 => Dtype::BFloat16,
            Kind::Half => Dtype::Float16,
            _ => Dtype::Float32,
        })
    }
}

impl std::fmt::Display for Dtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(kind_name(self.kind()))
    }
}

/// Both serialise as the strings users write, so configs and their hashes read as before.
macro_rules! serde_as_str {
    ($t:ty, $what:literal) => {
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(|e: LlamaError| serde::de::Error::custom(format!("{}: {e}", $what)))
            }
        }
    };
}
serde_as_str!(DeviceSpec, "device");
serde_as_str!(Dtype, "dtype");

/// Where and in what dtype a stage computes: resolved once from a [`DeviceSpec`] and an optional
/// dtype (default fp32 on CPU, bf16 on CUDA with fp32 master weights when training).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Compute {
    pub device: Device,
    pub kind: Kind,
}

impl DeviceSpec {
    /// The libtorch device; `auto` is CUDA device 0 when libtorch sees a GPU, else the CPU.
    pub fn device(self) -> Result<Device> {
        match self {
            DeviceSpec::Auto => Ok(Device::cuda_if_available()),
            DeviceSpec::Cpu => Ok(Device::Cpu),
            DeviceSpec::Cuda(i) => require_cuda(i),
        }
    }

    pub fn compute(self, dtype: Option<Dtype>) -> Result<Compute> {
        let device = self.device()?;
        Ok(Compute { device, kind: dtype.map(Dtype::kind).unwrap_or_else(|| default_kind(device)) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_specs_parse_and_print_as_written() {
        for (s, d, back) in [
            ("auto", DeviceSpec::Auto, "auto"),
            ("CPU", DeviceSpec::Cpu, "cpu"),
            ("cuda", DeviceSpec::Cuda(0), "cuda"),
            ("cuda:3", DeviceSpec::Cuda(3), "cuda:3"),
            ("gpu", DeviceSpec::Cuda(0), "cuda"),
        ] {
            let p: DeviceSpec = s.parse().unwrap();
            assert_eq!(p, d);
            assert_eq!(p.to_string(), back);
        }
        for bad in ["tpu", "cuda:x", "cuda:", ""] {
            assert!(bad.parse::<DeviceSpec>().is_err(), "{bad}");
        }
        assert_eq!(serde_json::to_string(&DeviceSpec::Auto).unwrap(), "\"auto\"");
        let e = serde_json::from_str::<DeviceSpec>("\"tpu\"").unwrap_err().to_string();
        assert!(e.contains("device") && e.contains("tpu"), "{e}");
        assert_eq!("bf16".parse::<Dtype>().unwrap().to_string(), "bfloat16");
        assert!("int8".parse::<Dtype>().is_err());
        assert_eq!(DeviceSpec::Cpu.compute(None).unwrap(), Compute { device: Device::Cpu, kind: Kind::Float });
        assert_eq!(DeviceSpec::Cpu.compute(Some(Dtype::BFloat16)).unwrap().kind, Kind::BFloat16);
    }
}
