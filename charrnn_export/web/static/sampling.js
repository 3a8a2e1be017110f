// The project's one sampling rule and random numbers, ported bit for bit from
// charrnn_export/sampling.py and charrnn_export/rng.py (read their docstrings first).
// Every intermediate that numpy computes in float32 is rounded to float32 here (Float32Array
// stores, Math.fround), sums are sequential, and the generator uses exact 64-bit BigInt
// arithmetic, so the same logits, settings and seed choose the same id in Python and here.

// The bounds of checks.py (SEED_LIMIT, MIN_TEMPERATURE, MAX_TEMPERATURE, TOP_K_LIMIT, LENGTH_LIMIT):
// their one home on the JavaScript side (tests/test_one_home.py holds them equal to Python's).
export const SEED_LIMIT = 2 ** 32;
export const MIN_TEMPERATURE = 1e-6;
export const MAX_TEMPERATURE = 1e30;
export const TOP_K_LIMIT = 2 ** 31 - 1;
export const LENGTH_LIMIT = 2 ** 40;

// What is wrong with a seed (checks.check_seed's rule), or null when it is one.
export function seedProblem(seed) {
  if (Number.isInteger(seed) && seed >= 0 && seed < SEED_LIMIT) return null;
  return `seed must be an integer in [0, 2**32), got ${seed}`;
}

// ------------------------------------------------------------------ SplitMix64 (rng.py)

const GOLDEN = 0x9e3779b97f4a7c15n;
const MIX1 = 0xbf58476d1ce4e5b9n;
const MIX2 = 0x94d049bb133111ebn;
const MASK = (1n << 64n) - 1n;

// Uniform number `counter` (0, 1, 2, ...) of the stream `seed`: output `counter` of SplitMix64
// started at state `seed`, its top 53 bits as a float64 in [0, 1). BigInt keeps every 64-bit
// product exact; a number costs far less than a model step.
export function uniform(seed, counter) {
  let z = (BigInt(seed) + (BigInt(counter) + 1n) * GOLDEN) & MASK;
  z = ((z ^ (z >> 30n)) * MIX1) & MASK;
  z = ((z ^ (z >> 27n)) * MIX2) & MASK;
  z = z ^ (z >> 31n);
  return Number(z >> 11n) / 9007199254740992;
}

// One seeded stream read in order, as rng.Stream: a request draws one number per sampled
// character (greedy characters draw none).
export class Stream {
  constructor(seed) {
    const problem = seedProblem(seed);
    if (problem) throw new RangeError(problem);
    this.seed = seed;
    this.count = 0;
  }

  uniform() {
    return uniform(this.seed, this.count++);
  }
}

// ------------------------------------------------------------------ choose (sampling.py)

const f32 = Math.fround;

export function argmax(logits) {
  let best = 0;
  for (let i = 1; i < logits.length; i++) if (logits[i] > logits[best]) best = i; // first of ties
  return best;
}

// settings: {temperature, topK (0 = off), topP (1 = off), greedy}; rng: a Stream, used
// (one uniform) only when the row is sampled. logits: Float32Array, not modified.
export function choose(logits, settings, rng) {
  const topP = f32(settings.topP ?? 1);
  // Rule 1: greedy, also for a topP that is not above 0 in float32 (below about 1.4e-45).
  if (settings.greedy || !(topP > 0)) return argmax(logits);
  const vocab = logits.length;
  const temperature = f32(settings.temperature);
  let top = -Infinity;
  for (let i = 0; i < vocab; i++) if (logits[i] > top) top = logits[i];
  const scaled = new Float32Array(vocab); // stores round to float32, like numpy's float32 ops
  // Rule 2: (logits - max) / temperature, each operation rounded to float32: at most 0, never NaN.
  for (let i = 0; i < vocab; i++) scaled[i] = f32(logits[i] - top) / temperature;
  cutTopK(scaled, settings.topK | 0);
  let max = -Infinity;
  for (let i = 0; i < vocab; i++) if (scaled[i] > max) max = scaled[i];
  const weights = new Float32Array(vocab);
  // exp in float64 of the float32 difference, rounded to float32 (step 4 of sampling.py).
  for (let i = 0; i < vocab; i++) weights[i] = Math.exp(f32(scaled[i] - max));
  if (topP < 1) cutTopP(weights, topP);
  const cdf = new Float32Array(vocab);
  let running = 0;
  for (let i = 0; i < vocab; i++) cdf[i] = running = f32(running + weights[i]);
  const threshold = rng.uniform() * cdf[vocab - 1]; // float64, as numpy's uniforms * float64(total)
  let id = 0;
  for (let i = 0; i < vocab; i++) if (cdf[i] <= threshold) id++;
  return id;
}

// Remove (-Infinity) ids whose scaled logit is below the k-th largest; ties with it stay.
function cutTopK(scaled, topK) {
  if (topK <= 0 || topK >= scaled.length) return;
  const kth = Float32Array.from(scaled).sort().reverse()[topK - 1];
  for (let i = 0; i < scaled.length; i++) if (scaled[i] < kth) scaled[i] = -Infinity;
}

// Keep the most probable ids while the probability of those before them is below topP.
function cutTopP(weights, topP) {
  const vocab = weights.length;
  let total = 0;
  for (let i = 0; i < vocab; i++) total = f32(total + weights[i]);
  const probs = new Float32Array(vocab);
  for (let i = 0; i < vocab; i++) probs[i] = weights[i] / total;
  // Descending by probability, ties by lower id: numpy's stable argsort of -probs.
  const order = Array.from({ length: vocab }, (_, i) => i).sort((a, b) => probs[b] - probs[a] || a - b);
  let running = 0; // sequential float32 cumsum of the sorted probabilities
  for (const id of order) {
    running = f32(running + probs[id]);
    const before = f32(running - probs[id]); // mass of the more probable ids, as numpy's cumsum - p
    if (!(before < topP)) weights[id] = 0;
  }
}
