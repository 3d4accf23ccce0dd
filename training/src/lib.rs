//! What every stage shares: AdamW over plain tensors (so its moments can be saved and resumed
//! exactly, which tch's `nn::Optimizer` cannot), learning-rate schedules, gradient clipping,
//! trainer checkpoints with exact resume, and per-step metrics (JSON lines and TensorBoard event files).
pub mod bench;
pub mod checkpoint;
pub mod config;
pub mod dist;
pub mod error;
pub mod lock;
pub mod metrics;
pub mod optim;
pub mod plan;
pub mod plot;
pub mod runner;
pub mod schedule;
pub mod stage;
pub mod tensorboard;
pub mod zero;
pub mod zero3_frozen;

pub use config::TrainConfig;
pub use error::TrainError;
pub use lock::RunLock;
pub use optim::AdamW;
pub use schedule::LrSchedule;
