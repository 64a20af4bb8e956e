//! The implicit quality score, as processors/quality.py computes it, bit for bit.

/// QualityWeights, in the order Python passes them.
#[derive(Clone, Copy, Debug)]
pub struct Weights {
    pub regenerated: f64,
    pub edited: f64,
    pub latency: f64,
    pub token_efficiency: f64,
    pub rating: f64,
    pub latency_target_ms: f64,
    pub latency_limit_ms: f64,
    pub max_completion_ratio: f64,
}

/// Python's `math.fsum`: the correctly rounded sum (Shewchuk's partials, then CPython's half-even
/// fix-up across partials). Written out because the score must equal the reference's to the last
/// bit, and a naive sum of the weighted signals differs from it in the last place now and then.
/// Finite inputs only (weights are checked finite at start, signals lie in [0, 1]).
pub fn fsum(values: &[f64]) -> f64 {
    let mut partials: Vec<f64> = Vec::with_capacity(values.len());
    for &value in values {
        let mut x = value;
        let mut kept = 0;
        for j in 0..partials.len() {
            let mut y = partials[j];
            if x.abs() < y.abs() {
                std::mem::swap(&mut x, &mut y);
            }
            let hi = x + y;
            let lo = y - (hi - x);
            if lo != 0.0 {
                partials[kept] = lo;
                kept += 1;
            }
            x = hi;
        }
        partials.truncate(kept);
        if x != 0.0 {
            partials.push(x);
        }
    }
    let mut n = partials.len();
    if n == 0 {
        return 0.0;
    }
    n -= 1;
    let mut hi = partials[n];
    let mut lo = 0.0;
    while n > 0 {
        let x = hi;
        n -= 1;
        let y = partials[n];
        hi = x + y;
        let yr = hi - x;
        lo = y - yr;
        if lo != 0.0 {
            break;
        }
    }
    if n > 0 && ((lo < 0.0 && partials[n - 1] < 0.0) || (lo > 0.0 && partials[n - 1] > 0.0)) {
        let y = lo * 2.0;
        let x = hi + y;
        let yr = x - hi;
        if y == yr {
            hi = x;
        }
    }
    hi
}

/// Python's `min(a, b)` for floats: `a` unless `b < a`.
fn py_min(a: f64, b: f64) -> f64 {
    if b < a { b } else { a }
}

/// Python's `max(a, b)` for floats: `a` unless `b > a`.
fn py_max(a: f64, b: f64) -> f64 {
    if b > a { b } else { a }
}

pub fn latency_signal(latency_ms: f64, weights: &Weights) -> f64 {
    if latency_ms <= weights.latency_target_ms {
        return 1.0;
    }
    if !(latency_ms < weights.latency_limit_ms) {
        return 0.0;
    }
    let x = (latency_ms - weights.latency_target_ms) / (weights.latency_limit_ms - weights.latency_target_ms);
    py_min(1.0, py_max(0.0, 1.0 - x * x * (3.0 - 2.0 * x)))
}

/// `truncated`: the finish reason is "length" or "max_tokens" in any case (ASCII only: the caller
/// sends other finish reasons to the Python path, whose str.lower() knows all of Unicode).
pub fn token_efficiency_signal(prompt_tokens: i64, completion_tokens: i64, truncated: bool, weights: &Weights) -> f64 {
    if truncated || completion_tokens <= 0 {
        return 0.0;
    }
    // Exact integers below 2^53: the f64 division is Python's int / int, correctly rounded.
    let ratio = completion_tokens as f64 / prompt_tokens.max(1) as f64;
    py_min(1.0, weights.max_completion_ratio / ratio)
}

pub struct Behaviour {
    pub success: bool,
    pub regenerated: bool,
    pub edited: bool,
    pub latency_ms: f64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub truncated: bool,
    pub rating: Option<i64>,
}

pub fn score(behaviour: &Behaviour, weights: &Weights) -> f64 {
    if !behaviour.success {
        return 0.0;
    }
    let mut signals = vec![
        (weights.regenerated, if behaviour.regenerated { 0.0 } else { 1.0 }),
        (weights.edited, if behaviour.edited { 0.0 } else { 1.0 }),
        (weights.latency, latency_signal(behaviour.latency_ms, weights)),
        (
            weights.token_efficiency,
            token_efficiency_signal(behaviour.prompt_tokens, behaviour.completion_tokens, behaviour.truncated, weights),
        ),
    ];
    if let Some(rating) = behaviour.rating {
        signals.push((weights.rating, (rating + 1) as f64 / 2.0));
    }
    let total_weight = fsum(&signals.iter().map(|(weight, _)| *weight).collect::<Vec<_>>());
    let weighted = fsum(&signals.iter().map(|(weight, signal)| weight * signal).collect::<Vec<_>>());
    py_min(1.0, py_max(0.0, weighted / total_weight))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fsum_rounds_as_python_does() {
        assert_eq!(fsum(&[0.1, 0.2, 0.3]), 0.6);
        assert_eq!(fsum(&[1e-16, 1.0, 1e16]), 10000000000000002.0);
        assert_eq!(fsum(&[1e100, 1.0, -1e100, 1e-100, 1e50, -1.0, -1e50]), 1e-100);
        assert_eq!(fsum(&[]), 0.0);
    }
}
