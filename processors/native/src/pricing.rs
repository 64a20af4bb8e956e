//! Cost from the versioned price catalog, exactly as processors/pricing.py computes it.
//!
//! Python prices in exact decimals and converts each part to the nearest double at the end. Every
//! catalog price has at most 9 decimal places (the catalog refuses more), so a price is an integer
//! number of nano-dollars per million tokens, a cost is an exact integer number of 1e-15 dollars,
//! and the nearest double of that decimal is what Rust's (correctly rounded) float parser gives.

pub struct Price {
    pub provider: String,
    pub model: String,
    pub model_version: Option<String>,
    /// Nano-dollars per million tokens.
    pub input: i128,
    pub cached_input: i128,
    pub output: i128,
    pub reasoning: i128,
    /// [from, to) in microseconds since the epoch (dates at 00:00 UTC).
    pub from_us: i64,
    pub to_us: Option<i64>,
}

pub struct Metadata {
    pub provider: String,
    pub model: String,
    pub family: String,
    pub context_window: i32,
}

pub struct Catalog {
    /// Sorted by effective date, as PriceCatalog keeps them per key.
    pub prices: Vec<Price>,
    pub metadata: Vec<Metadata>,
    /// "catalog:<version>"
    pub source: String,
}

pub struct Tokens {
    pub prompt: i64,
    pub completion: i64,
    pub cached: i64,
    pub reasoning: i64,
}

pub struct Cost {
    pub input: f64,
    pub cached_input: f64,
    pub output: f64,
    pub reasoning: f64,
    pub total: f64,
    pub source: Source,
}

pub enum Source {
    Catalog,
    Reported,
    Unpriced,
}

fn nearest(femto_dollars: i128) -> f64 {
    // A decimal string parses to the correctly rounded double, as Python's float(Decimal) does.
    format!("{femto_dollars}e-15").parse().unwrap_or(f64::NAN)
}

impl Catalog {
    fn price_for(&self, provider: &str, model: &str, version: Option<&str>, at_us: i64) -> Option<&Price> {
        let applies = |price: &&Price| {
            price.provider == provider
                && price.model == model
                && at_us >= price.from_us
                && price.to_us.is_none_or(|to| at_us < to)
        };
        if let Some(version) = version {
            if let Some(price) = self.prices.iter().filter(|p| p.model_version.as_deref() == Some(version)).find(applies) {
                return Some(price);
            }
        }
        self.prices.iter().filter(|p| p.model_version.is_none()).find(applies)
    }

    pub fn metadata(&self, provider: &str, model: &str) -> Option<&Metadata> {
        self.metadata.iter().find(|m| m.provider == provider && m.model == model)
    }

    pub fn cost(
        &self,
        provider: &str,
        model: &str,
        version: Option<&str>,
        finished_at_us: i64,
        tokens: &Tokens,
        reported_cost_usd: Option<f64>,
    ) -> Cost {
        let Some(price) = self.price_for(provider, model, version, finished_at_us) else {
            // float(Decimal(str(x))) is x itself: the shortest repr round-trips.
            let (total, source) = match reported_cost_usd {
                Some(reported) => (reported, Source::Reported),
                None => (0.0, Source::Unpriced),
            };
            return Cost { input: 0.0, cached_input: 0.0, output: 0.0, reasoning: 0.0, total, source };
        };
        let cached = tokens.cached.min(tokens.prompt);
        let input = i128::from(tokens.prompt - cached) * price.input;
        let cached_input = i128::from(cached) * price.cached_input;
        let output = i128::from((tokens.completion - tokens.reasoning).max(0)) * price.output;
        let reasoning = i128::from(tokens.reasoning) * price.reasoning;
        Cost {
            input: nearest(input),
            cached_input: nearest(cached_input),
            output: nearest(output),
            reasoning: nearest(reasoning),
            total: nearest(input + cached_input + output + reasoning),
            source: Source::Catalog,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn femto_dollars_round_to_the_nearest_double() {
        assert_eq!(nearest(250_000_000_000), 0.00025);
        assert_eq!(nearest(0), 0.0);
        assert_eq!(nearest(75), 7.5e-14);
    }
}
