//! Visual-token reduction. For now the accounting side: [`flops`] counts what a forward pass
//! costs for a given number of tokens per layer, and [`budget`] turns a budget (tokens, a
//! fraction, or the paper's LLM-prefill TFLOPs) into those per-layer counts.

pub mod budget;
pub mod flops;
