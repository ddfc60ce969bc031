//! `Steps` over a fake decoder that keeps each sequence's cache as a token list and derives
//! its logits from the whole of it, so a wrong position, a lost token or a stale cache shows
//! up as another continuation.

use super::*;

const VOCAB: usize = 32;

struct Fake {
    capacity: usize,
    caches: Vec<Vec<u32>>,
    rows: Vec<Vec<f32>>,
    calls: usize,
    /// The sequence id of each entry of the last batch, in batch order.
    order: Vec<u32>,
}

impl Fake {
    fn new(sequences: usize, capacity: usize) -> Self {
        Fake {
            capacity,
            caches: vec![Vec::new(); sequences],
            rows: Vec::new(),
            calls: 0,
            order: Vec::new(),
        }
    }
}

fn logits_of(cache: &[u32]) -> Vec<f32> {
    let mut h: u64 = 1469598103934665603;
    for &t in cache {
        h = (h ^ u64::from(t)).wrapping_mul(1099511628211);
    }
    (0..VOCAB as u64)
        .map(|i| ((h.rotate_left(i as u32 * 2) ^ i.wrapping_mul(0x9e37)) % 1000) as f32 / 100.0)
        .collect()
}

impl Decoder for Fake {
    fn capacity(&self) -> usize {
        self.capacity
    }

    fn decode(&mut self, batch: &[Entry]) -> Result<(), i32> {
        assert!(batch.len() <= self.capacity);
        self.calls += 1;
        self.order = batch.iter().map(|e| e.seq).collect();
        self.rows = vec![Vec::new(); batch.len()];
        for (row, e) in batch.iter().enumerate() {
            let cache = &mut self.caches[e.seq as usize];
            if e.pos as usize != cache.len() {
                return Err(-1);
            }
            cache.push(e.token);
            if e.logits {
                self.rows[row] = logits_of(cache);
            }
        }
        Ok(())
    }

    fn logits(&mut self, row: usize) -> &mut [f32] {
        assert!(!self.rows[row].is_empty(), "no logits kept for row {row}");
        &mut self.rows[row]
    }

    fn forget(&mut self, seq: u32, from: u32) -> bool {
        self.caches[seq as usize].truncate(from as usize);
        true
    }
}

const GREEDY: Sampling = Sampling {
    temperature: 0.0,
    top_k: 40,
    top_p: 0.95,
    repetition_penalty: 1.1,
    seed: -1,
};

fn want(seq: usize) -> Want<'static> {
    Want {
        seq,
        sampling: GREEDY,
        constraint: None,
    }
}

/// `n` tokens of each prompt, the sequences decoded together (or one per call: `group`).
fn generate(prompts: &[&[u32]], n: usize, group: Option<usize>, capacity: usize) -> Vec<Vec<u32>> {
    let mut steps = Steps::new(
        Fake::new(prompts.len(), capacity),
        prompts.len(),
        4096,
        group,
    );
    for (seq, p) in prompts.iter().enumerate() {
        steps.prefill(seq, 0, p);
    }
    let mut out = vec![Vec::new(); prompts.len()];
    for _ in 0..n {
        let mut wants: Vec<_> = (0..prompts.len()).map(want).collect();
        for (seq, t) in steps.step(&mut wants).unwrap().into_iter().enumerate() {
            out[seq].push(t.unwrap());
        }
    }
    out
}

#[test]
fn batched_sequences_continue_as_they_would_alone() {
    let a: &[u32] = &[1, 2, 3];
    let b: &[u32] = &[4, 5, 6, 7, 8];
    let together = generate(&[a, b], 12, None, 64);
    assert_eq!(together[0], generate(&[a], 12, None, 64)[0]);
    assert_eq!(together[1], generate(&[b], 12, None, 64)[0]);
    assert_eq!(together, generate(&[a, b], 12, Some(1), 64));
}

#[test]
fn a_prompt_longer_than_the_batch_is_split_with_the_logits_in_the_last_call() {
    let long: Vec<u32> = (0..50).map(|i| i % VOCAB as u32).collect();
    assert_eq!(
        generate(&[&long], 5, None, 7),
        generate(&[&long], 5, None, 512)
    );
}

#[test]
fn a_cut_back_sequence_equals_a_fresh_one() {
    let mut steps = Steps::new(Fake::new(1, 64), 1, 4096, None);
    steps.prefill(0, 0, &[1, 2, 3, 4]);
    for _ in 0..6 {
        steps.step(&mut [want(0)]).unwrap();
    }
    let held = steps.held(0).to_vec();
    assert_eq!(held.len(), 9);
    assert_eq!(steps.evaluated(0), &held[..]);
    // Keep the first 3, continue with another turn; compare with evaluating it from nothing.
    steps.prefill(0, 3, &[9, 9]);
    let reused: Vec<_> = (0..4)
        .map(|_| steps.step(&mut [want(0)]).unwrap()[0].unwrap())
        .collect();
    assert_eq!(reused, generate(&[&[1, 2, 3, 9, 9]], 4, None, 64)[0]);
}

#[test]
fn riders_evaluate_in_the_step_of_the_decoding_sequences() {
    let mut steps = Steps::new(Fake::new(2, 64), 2, 4096, None);
    steps.prefill(0, 0, &[1, 2]);
    steps.step(&mut [want(0)]).unwrap();
    steps.prefill(1, 0, &[3, 4, 5]);
    let calls = steps.decoder().calls;
    steps.step(&mut [want(0)]).unwrap();
    assert_eq!(steps.decoder().calls, calls + 1);
    assert_eq!(steps.evaluated(1), &[3, 4, 5]);
}

#[test]
fn a_batch_lists_its_sequences_in_id_order_whatever_order_they_are_asked_in() {
    // llama.cpp evaluates one micro-batch per run of consecutive sequence ids.
    let prompts: [&[u32]; 3] = [&[1, 2], &[3, 4, 5], &[6]];
    let mut steps = Steps::new(Fake::new(3, 64), 3, 4096, None);
    for (seq, ids) in prompts.iter().enumerate() {
        steps.prefill(seq, 0, ids);
    }
    let first = steps.step(&mut [want(2), want(0), want(1)]).unwrap();
    assert_eq!(steps.decoder().order, vec![0, 0, 1, 1, 1, 2]);
    let second = steps.step(&mut [want(1), want(2), want(0)]).unwrap();
    assert_eq!(steps.decoder().order, vec![0, 1, 2]);
    // Each answer still goes to the sequence that asked for it.
    for (seq, ids) in prompts.iter().enumerate() {
        let alone = generate(&[*ids], 2, None, 64).remove(0);
        let at = [1, 2, 0][seq];
        assert_eq!(
            vec![first[at].unwrap(), second[[2, 0, 1][seq]].unwrap()],
            alone
        );
    }
}

#[test]
fn a_full_context_gives_none_and_keeps_the_sequence() {
    let mut steps = Steps::new(Fake::new(1, 64), 1, 5, None);
    steps.prefill(0, 0, &[1, 2, 3, 4]);
    assert!(steps.step(&mut [want(0)]).unwrap()[0].is_some());
    assert!(steps.step(&mut [want(0)]).unwrap()[0].is_some());
    assert_eq!(steps.step(&mut [want(0)]).unwrap(), vec![None]);
    assert_eq!(steps.held(0).len(), 5);
}

#[test]
fn a_failed_decode_clears_the_sequences_it_held() {
    let mut steps = Steps::new(Fake::new(1, 64), 1, 4096, None);
    steps.prefill(0, 0, &[1, 2]);
    steps.step(&mut [want(0)]).unwrap();
    // Corrupt the fake's cache so the next position does not line up: the decode fails.
    steps.decoder().caches[0].push(7);
    assert!(matches!(
        steps.step(&mut [want(0)]),
        Err(crate::error::Error::Backend(_))
    ));
    assert!(steps.held(0).is_empty());
}

#[test]
fn a_restored_sequence_continues_from_its_tokens() {
    let prompt: &[u32] = &[5, 6, 7];
    let mut steps = Steps::new(Fake::new(1, 64), 1, 4096, None);
    steps.decoder().caches[0] = prompt.to_vec();
    steps.restore(0, prompt);
    // Nothing new to evaluate: the last token is evaluated again for its logits.
    let first = steps.step(&mut [want(0)]).unwrap()[0].unwrap();
    let mut fresh = Steps::new(Fake::new(1, 64), 1, 4096, None);
    fresh.prefill(0, 0, prompt);
    assert_eq!(first, fresh.step(&mut [want(0)]).unwrap()[0].unwrap());
}
