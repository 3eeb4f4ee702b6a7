//! Configuration: the models file (`models.json`) and the layered appliance settings.

pub mod keygen;
pub mod models;
pub mod settings;

pub use models::{
    CheckOptions, ConfigError, DeviceSetting, ModelEntry, ModelKind, ModelsFile, Problem, TokenIds,
};
pub use settings::{Balance, LogFormat, Secret, Settings};
