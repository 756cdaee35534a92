// erf.wgsl: float32-accurate erf, the exact (erf) GELU, the tanh-approximated GELU (torch's
// approximate="tanh", SigLIP's gelu_pytorch_tanh), quick GELU and SiLU, as functions only (no
// bindings), for `#include "erf"`. erfc uses the Chebyshev fit of Numerical Recipes (fractional error < 1.2e-7),
// so erf has absolute error below ~1.2e-7 everywhere.

fn erf_f32(x: f32) -> f32 {
    let z = abs(x);
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 +
        t * (-0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 +
        t * (-0.82215223 + t * 0.17087277))))))));
    let erfc = t * exp(-z * z + poly);
    return select(erfc - 1.0, 1.0 - erfc, x >= 0.0);
}

fn gelu_erf(x: f32) -> f32 {
    return 0.5 * x * (1.0 + erf_f32(x * 0.70710678118654752));
}

// 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3))), tanh written with exp(-2|u|) <= 1 so large
// |x| cannot overflow to inf / inf.
fn gelu_tanh(x: f32) -> f32 {
    let u = 0.7978845608028654 * (x + 0.044715 * x * x * x);
    let e = exp(-2.0 * abs(u));
    let t = sign(u) * (1.0 - e) / (1.0 + e);
    return 0.5 * x * (1.0 + t);
}

fn quick_gelu(x: f32) -> f32 {
    return x / (1.0 + exp(-1.702 * x));
}

fn silu(x: f32) -> f32 {
    return x / (1.0 + exp(-x));
}
