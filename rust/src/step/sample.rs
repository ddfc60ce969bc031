//! Picking the next token from one row of logits, with one sequence's settings: ctransformers'
//! order (repetition penalty over the recent tokens, then top-k, top-p and temperature), greedy
//! at temperature 0. It works on the backend's own logits row, in place: llama.cpp's output
//! buffer, which only this step reads and the next decode overwrites.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// One sequence's sampling settings (`SamplingParams` on the Python side).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    pub temperature: f32,
    /// 0: the whole vocabulary.
    pub top_k: usize,
    pub top_p: f32,
    pub repetition_penalty: f32,
    /// Negative: a random seed.
    pub seed: i64,
}

impl Sampling {
    pub fn greedy(&self) -> bool {
        self.temperature <= 0.0
    }

    /// The generator a sampled sequence draws from, made once per generation.
    pub fn rng(&self) -> StdRng {
        if self.seed < 0 {
            StdRng::from_os_rng()
        } else {
            StdRng::seed_from_u64(self.seed as u64)
        }
    }
}

/// Divides a recent token's positive logit by the penalty and multiplies a negative one, so a
/// repeated token always moves down. Each token counts once however often it recurs.
pub fn penalize(logits: &mut [f32], recent: &[u32], penalty: f32) {
    if penalty == 1.0 || recent.is_empty() {
        return;
    }
    let mut seen = recent.to_vec();
    seen.sort_unstable();
    seen.dedup();
    for token in seen {
        if let Some(v) = logits.get_mut(token as usize) {
            *v = if *v > 0.0 { *v / penalty } else { *v * penalty };
        }
    }
}

/// The first index of the largest value (-inf rows give 0).
pub fn argmax(logits: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best
}

/// The next token. `rng` is required unless the settings are greedy.
pub fn pick(logits: &mut [f32], recent: &[u32], s: &Sampling, rng: Option<&mut StdRng>) -> u32 {
    penalize(logits, recent, s.repetition_penalty);
    let rng = match rng {
        Some(rng) if !s.greedy() => rng,
        _ => return argmax(logits) as u32,
    };
    let n = logits.len();
    let k = if s.top_k > 0 && s.top_k < n {
        s.top_k
    } else {
        n
    };
    let mut top: Vec<u32> = (0..n as u32).collect();
    let by_logit_desc = |a: &u32, b: &u32| logits[*b as usize].total_cmp(&logits[*a as usize]);
    if k < n {
        top.select_nth_unstable_by(k - 1, by_logit_desc);
        top.truncate(k);
    }
    top.sort_unstable_by(by_logit_desc);
    let best = logits[top[0] as usize];
    if !best.is_finite() {
        return top[0];
    }
    let temperature = f64::from(s.temperature);
    let mut probs: Vec<f64> = top
        .iter()
        .map(|&t| ((f64::from(logits[t as usize]) - f64::from(best)) / temperature).exp())
        .collect();
    let total: f64 = probs.iter().sum();
    if s.top_p < 1.0 {
        // Keep the head whose mass first reaches top_p (at least one token).
        let target = f64::from(s.top_p) * total;
        let mut mass = 0.0;
        let mut keep = probs.len();
        for (i, p) in probs.iter().enumerate() {
            mass += p;
            if mass >= target {
                keep = i + 1;
                break;
            }
        }
        probs.truncate(keep);
        top.truncate(keep);
    }
    let total: f64 = probs.iter().sum();
    let mut draw = rng.random::<f64>() * total;
    for (i, p) in probs.iter().enumerate() {
        if draw < *p {
            return top[i];
        }
        draw -= p;
    }
    top[top.len() - 1]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    const GREEDY: Sampling = Sampling {
        temperature: 0.0,
        top_k: 40,
        top_p: 0.95,
        repetition_penalty: 1.0,
        seed: -1,
    };

    fn warm(top_k: usize, top_p: f32) -> Sampling {
        Sampling {
            temperature: 1.0,
            top_k,
            top_p,
            repetition_penalty: 1.0,
            seed: 0,
        }
    }

    #[test]
    fn greedy_is_the_first_argmax() {
        assert_eq!(pick(&mut [0.1, 3.0, 2.0, 3.0], &[], &GREEDY, None), 1);
    }

    #[test]
    fn repetition_penalty_demotes_recent_tokens_of_both_signs() {
        let s = Sampling {
            repetition_penalty: 1.1,
            ..GREEDY
        };
        // 2.0 / 1.1 = 1.82 < 1.9: the recent token loses its lead; twice counts once.
        assert_eq!(pick(&mut [2.0, 1.9], &[0, 0], &s, None), 1);
        assert_eq!(pick(&mut [2.0, 1.9], &[1], &s, None), 0);
        let mut negative = [-1.0, -1.05];
        pick(&mut negative, &[0], &s, None);
        assert!(negative[0] < -1.05);
    }

    #[test]
    fn top_k_and_top_p_keep_only_the_head() {
        let logits = [5.0, 4.9, 4.8, 0.0];
        let mut rng = StdRng::seed_from_u64(0);
        let mut draws = |s: Sampling, n: usize| -> BTreeSet<u32> {
            (0..n)
                .map(|_| pick(&mut logits.clone(), &[], &s, Some(&mut rng)))
                .collect()
        };
        assert_eq!(draws(warm(1, 1.0), 50), BTreeSet::from([0]));
        assert_eq!(draws(warm(0, 0.01), 50), BTreeSet::from([0]));
        assert_eq!(draws(warm(3, 1.0), 300), BTreeSet::from([0, 1, 2]));
    }

    #[test]
    fn masked_tokens_are_never_drawn() {
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..200 {
            let mut row = [1.0, f32::NEG_INFINITY, 1.0, f32::NEG_INFINITY];
            let t = pick(&mut row, &[], &warm(0, 1.0), Some(&mut rng));
            assert!(t == 0 || t == 2);
        }
        // Everything masked but one: that one, even at top_k 1 with ties at -inf.
        let mut row = [f32::NEG_INFINITY, f32::NEG_INFINITY, 0.5];
        assert_eq!(pick(&mut row, &[], &warm(1, 0.5), Some(&mut rng)), 2);
    }

    #[test]
    fn a_seed_repeats_its_choices() {
        let s = Sampling {
            temperature: 1.5,
            top_k: 0,
            seed: 7,
            ..warm(0, 1.0)
        };
        let logits: Vec<f32> = (0..50).map(|i| i as f32 / 49.0).collect();
        let draws = || {
            let mut rng = s.rng();
            (0..20)
                .map(|_| pick(&mut logits.clone(), &[], &s, Some(&mut rng)))
                .collect::<Vec<_>>()
        };
        let first = draws();
        assert_eq!(first, draws());
        assert!(first.iter().collect::<BTreeSet<_>>().len() > 3);
    }

    #[test]
    fn frequencies_follow_the_softmax() {
        // logits ln(1), ln(3): token 1 should come up about three times in four.
        let mut rng = StdRng::seed_from_u64(3);
        let s = warm(0, 1.0);
        let ones = (0..4000)
            .filter(|_| pick(&mut [0.0, 3f32.ln()], &[], &s, Some(&mut rng)) == 1)
            .count();
        assert!((2850..3150).contains(&ones), "{ones}");
    }
}
