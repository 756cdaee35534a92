//! Visual-token reduction in the filter / correlate / compress paradigm.
//!
//! - [`stages`]: the three stages as data ([`Filter`] with its [`Score`] terms, [`Correlate`]
//!   with its [`Grouping`] into new tokens, [`Compress`]) and a [`Reduction`] combining them.
//! - [`method`]: each method as a short composition of the stages, with the papers' defaults
//!   and the ablations of FiCoCo's tables.
//! - [`step`]: one reduction step recorded on the GPU (`shaders/reduce_{filter,correlate,compress}.wgsl`).
//! - [`random`]: numpy's legacy permutation for the random baseline.
//! - [`sites`]: where the steps attach to the model (vision layers, LLM prefill layers).
//! - [`spec`]: `METHOD[:BUDGET]` planned into per-layer steps for a model.
//! - [`flops`] and [`budget`]: what a schedule costs and the per-layer schedule that meets a
//!   budget (tokens, a fraction, or the paper's LLM-prefill TFLOPs).

pub mod budget;
pub mod flops;
pub mod method;
pub mod random;
pub mod schedule;
pub mod sites;
pub mod spec;
pub mod stages;
pub mod step;

pub use crate::ops::reduce::PositionKind;
pub use method::{
    by_name, every_method, Ablation, FicocoL, FicocoV, Pool, PruMerge, RandomDrop, SparseVlm,
    VisionZip, AUTHORS_READINGS, METHODS, PLANNED_METHODS,
};
pub use sites::{KvReduction, ProjectorReduction, ReductionPlan, SiteReduction, SiteScratch};
pub use spec::{KvKeep, KvReduceSpec, Planned, ReduceSpec, KV_METHODS};
pub use stages::{Compress, Correlate, Filter, Grouping, LocalPenalty, Reduction, Rows, Score};
pub use step::{run_once, ReductionStep, Spans, StepInput, StepOutput, NEW_TOKEN};
