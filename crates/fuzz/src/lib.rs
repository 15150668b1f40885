//! A mutation fuzzer for the decoders of untrusted bytes (WAL segments, snapshot files,
//! internal-plane messages, SSE resume cursors), that runs as an ordinary test on the stable
//! toolchain.
//!
//! `cargo fuzz` needs nightly and a coverage-instrumented build; CI has neither, and a decoder
//! that panics on a torn WAL tail or a hostile peer's message stops a node. So each target is a
//! `#[test]` that calls [`fuzz`]: every input of the target's corpus (`fuzz/corpus/<target>/`
//! in the repository, plus seeds the test builds from valid encodings) is decoded as it is,
//! then mutated (bit flips, byte edits, truncations, insertions, duplications, splices of two
//! inputs, interesting integers) for a bounded number of rounds from a fixed seed, so a run is
//! reproducible. The decoder may refuse anything; it must never panic.
//!
//! Budget: `INTENTD_FUZZ_ITERATIONS` (default 2000 per target) or `INTENTD_FUZZ_SECONDS`
//! (runs until that much time passed; for long runs outside CI). `INTENTD_FUZZ_SEED` changes
//! the seed. An input that panics is written under the system temp directory
//! (`intentd-fuzz-crashes/`) and named in the failure; copy it into the corpus once fixed, so
//! it is replayed by every later run.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::panic::{self, AssertUnwindSafe};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const DEFAULT_ITERATIONS: u64 = 2000;
/// Mutated inputs stay below this: the decoders bound their own reads, and huge inputs only
/// slow the run.
const MAX_LEN: usize = 64 * 1024;

/// The repository's corpus directory of `target`.
pub fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target)
}

/// The corpus files of `target`, in name order (empty if the directory does not exist).
pub fn corpus(target: &str) -> Vec<Vec<u8>> {
    let Ok(dir) = std::fs::read_dir(corpus_dir(target)) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = dir.filter_map(|e| Some(e.ok()?.path())).collect();
    paths.sort();
    paths.iter().filter_map(|p| std::fs::read(p).ok()).collect()
}

enum Budget {
    Iterations(u64),
    Time(Duration),
}

fn budget() -> Budget {
    if let Some(s) = env_u64("INTENTD_FUZZ_SECONDS") {
        return Budget::Time(Duration::from_secs(s));
    }
    Budget::Iterations(env_u64("INTENTD_FUZZ_ITERATIONS").unwrap_or(DEFAULT_ITERATIONS))
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok()?.parse().ok()
}

/// Feeds `decode` every corpus input of `target` and `seeds`, then mutations of them.
/// Panics (failing the test) with the saved input's path if `decode` panics on any of them.
/// Returns how many inputs were tried.
pub fn fuzz(target: &str, seeds: Vec<Vec<u8>>, decode: impl Fn(&[u8])) -> u64 {
    let mut inputs = corpus(target);
    inputs.extend(seeds);
    if inputs.is_empty() {
        inputs.push(Vec::new());
    }
    let mut hasher = DefaultHasher::new();
    target.hash(&mut hasher);
    let seed = hasher.finish() ^ env_u64("INTENTD_FUZZ_SEED").unwrap_or(0);
    let mut rng = StdRng::seed_from_u64(seed);

    let mut tried = 0;
    for input in &inputs {
        run_one(target, input, &decode);
        tried += 1;
    }
    let started = Instant::now();
    let budget = budget();
    let mut round = 0u64;
    loop {
        match budget {
            Budget::Iterations(n) if round >= n => break,
            Budget::Time(d) if started.elapsed() >= d => break,
            _ => {}
        }
        round += 1;
        let mut input = inputs[rng.gen_range(0..inputs.len())].clone();
        // Several edits on one input reach states one edit alone does not.
        for _ in 0..rng.gen_range(1..=4) {
            let other = &inputs[rng.gen_range(0..inputs.len())];
            mutate(&mut rng, &mut input, other);
        }
        input.truncate(MAX_LEN);
        run_one(target, &input, &decode);
        tried += 1;
    }
    tried
}

fn run_one(target: &str, input: &[u8], decode: &impl Fn(&[u8])) {
    if panic::catch_unwind(AssertUnwindSafe(|| decode(input))).is_ok() {
        return;
    }
    let dir = std::env::temp_dir().join("intentd-fuzz-crashes");
    let mut hasher = DefaultHasher::new();
    input.hash(&mut hasher);
    let path = dir.join(format!("{target}-{:016x}", hasher.finish()));
    let saved = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, input));
    match saved {
        Ok(()) => panic!(
            "fuzz target {target}: the decoder panicked on {} bytes, saved at {}",
            input.len(),
            path.display()
        ),
        Err(e) => {
            panic!("fuzz target {target}: the decoder panicked on {input:?} (not saved: {e})")
        }
    }
}

/// Integers decoders treat specially: lengths at and around type limits.
const INTERESTING: [u64; 10] = [
    0,
    1,
    0x7f,
    0xff,
    0x7fff,
    0xffff,
    0x7fff_ffff,
    0xffff_ffff,
    0x7fff_ffff_ffff_ffff,
    u64::MAX,
];

fn mutate(rng: &mut StdRng, input: &mut Vec<u8>, other: &[u8]) {
    let len = input.len();
    match rng.gen_range(0..9) {
        0 if len > 0 => {
            let i = rng.gen_range(0..len);
            input[i] ^= 1 << rng.gen_range(0..8);
        }
        1 if len > 0 => {
            let i = rng.gen_range(0..len);
            input[i] = rng.gen();
        }
        2 if len > 0 => input.truncate(rng.gen_range(0..len)),
        3 => {
            let at = rng.gen_range(0..=len);
            let n = rng.gen_range(1..=16);
            let bytes: Vec<u8> = (0..n).map(|_| rng.gen()).collect();
            input.splice(at..at, bytes);
        }
        4 if len > 0 => {
            let from = rng.gen_range(0..len);
            let to = rng.gen_range(from..=len.min(from + 64));
            input.drain(from..to);
        }
        5 if len > 0 => {
            // Duplicate a run: repeated records and fields.
            let from = rng.gen_range(0..len);
            let to = rng.gen_range(from..=len.min(from + 256));
            let run = input[from..to].to_vec();
            let at = rng.gen_range(0..=input.len());
            input.splice(at..at, run);
        }
        6 if !other.is_empty() => {
            // Splice: the head of this input and the tail of another.
            let cut = rng.gen_range(0..=len);
            let from = rng.gen_range(0..other.len());
            input.truncate(cut);
            input.extend_from_slice(&other[from..]);
        }
        7 if len > 0 => {
            let value = INTERESTING[rng.gen_range(0..INTERESTING.len())];
            let width = [1usize, 2, 4, 8][rng.gen_range(0..4)].min(len);
            let at = rng.gen_range(0..=len - width);
            let bytes = if rng.gen() {
                value.to_le_bytes()
            } else {
                value.to_be_bytes()
            };
            input[at..at + width].copy_from_slice(&bytes[..width]);
        }
        _ => {
            // Text decoders: an ASCII digit, quote, brace or comma where a byte was.
            if len > 0 {
                let i = rng.gen_range(0..len);
                input[i] = *b"0123456789\"{}[],:-e."
                    .get(rng.gen_range(0..20))
                    .unwrap_or(&b'0');
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_decoder_that_never_panics_passes_and_is_fed_every_round() {
        let tried = fuzz("selftest", vec![b"seed".to_vec()], |_| {});
        assert!(tried > 1);
    }

    #[test]
    fn a_panicking_decoder_fails_the_run_and_its_input_is_saved() {
        let caught = panic::catch_unwind(|| {
            fuzz("selftest-panics", vec![b"ok".to_vec()], |b| {
                assert!(b.len() < 3, "too long");
            })
        });
        let message = caught.unwrap_err();
        let text = message
            .downcast_ref::<String>()
            .cloned()
            .unwrap_or_default();
        assert!(text.contains("saved at"), "{text}");
        let path = text.rsplit("saved at ").next().unwrap();
        assert!(std::fs::read(path).unwrap().len() >= 3);
    }
}
