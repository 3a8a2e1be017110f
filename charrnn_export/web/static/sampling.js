// The project's one sampling rule and random numbers, ported bit for bit from
// charrnn_export/sampling.py and charrnn_export/rng.py (read their docstrings first).
// Every intermediate that numpy computes in float32 is rounded to float32 here (Float32Array
// stores, Math.fround), sums are sequential, and the generator uses only exact 32-bit integer
// arithmetic, so the same logits, settings and seed choose the same id in Python and here.

export const SEED_LIMIT = 2 ** 32;

// ------------------------------------------------------------------ Philox4x32-10 (rng.py)

const M0 = 0xd2511f53;
const M1 = 0xcd9e8d57;
const W0 = 0x9e3779b9;
const W1 = 0xbb67ae85;

// The high 32 bits of the 64-bit product of two uint32 (the low half is Math.imul). Built from
// 16-bit halves so that every partial product and sum is an exact double (< 2**53).
function mulhi(a, b) {
  const al = a & 0xffff, ah = a >>> 16, bl = b & 0xffff, bh = b >>> 16;
  const mid = al * bh + ah * bl; // < 2**33
  const low = al * bl + (mid % 65536) * 65536; // < 2**33
  return (ah * bh + Math.floor(mid / 65536) + Math.floor(low / 4294967296)) >>> 0;
}

// Uniform number `counter` (0, 1, 2, ...) of the stream `seed`: Philox4x32-10 with key
// (seed, 0) and counter (counter, 0, 0, 0); its first two words make one float64 in [0, 1).
export function uniform(seed, counter) {
  let c0 = counter >>> 0, c1 = 0, c2 = 0, c3 = 0;
  let k0 = seed >>> 0, k1 = 0;
  for (let round = 0; round < 10; round++) {
    if (round) {
      k0 = (k0 + W0) >>> 0;
      k1 = (k1 + W1) >>> 0;
    }
    const hi0 = mulhi(M0, c0), lo0 = Math.imul(M0, c0) >>> 0;
    const hi1 = mulhi(M1, c2), lo1 = Math.imul(M1, c2) >>> 0;
    [c0, c1, c2, c3] = [(hi1 ^ c1 ^ k0) >>> 0, lo1, (hi0 ^ c3 ^ k1) >>> 0, lo0];
  }
  return ((c0 >>> 5) * 67108864 + (c1 >>> 6)) / 9007199254740992;
}

// One seeded stream read in order, as rng.Stream: a request draws one number per sampled
// character (greedy characters draw none).
export class Stream {
  constructor(seed) {
    if (!Number.isInteger(seed) || seed < 0 || seed >= SEED_LIMIT) {
      throw new RangeError(`seed must be an integer in [0, 2**32), got ${seed}`);
    }
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
  if (settings.greedy) return argmax(logits);
  const vocab = logits.length;
  const temperature = f32(settings.temperature);
  const scaled = new Float32Array(vocab); // stores round to float32, like numpy's float32 ops
  for (let i = 0; i < vocab; i++) scaled[i] = logits[i] / temperature;
  cutTopK(scaled, settings.topK | 0);
  let max = -Infinity;
  for (let i = 0; i < vocab; i++) if (scaled[i] > max) max = scaled[i];
  const weights = new Float32Array(vocab);
  // exp in float64 of the float32 difference, rounded to float32 (step 4 of sampling.py).
  for (let i = 0; i < vocab; i++) weights[i] = Math.exp(f32(scaled[i] - max));
  const topP = f32(settings.topP ?? 1);
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
