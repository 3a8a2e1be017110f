// The Web Worker that owns the model: it loads onnxruntime-web and the ONNX step model, and runs
// the generation loop (step -> choose -> step ...) off the page's thread, so the page never
// freezes. charrnn.js talks to it; nothing else should.
//
//   page -> worker  {type: "load", modelUrl, vocabUrl, threads, site}
//                   {type: "generate", job, startIds, length, settings, seed}   {type: "stop", job}
//   worker -> page  {type: "loaded", vocab, config, units (the state width), threads} | {type: "load-error", message}
//                   {type: "chars", job, text, made, seconds}  (batches, a few dozen per second)
//                   {type: "done", job, made, seconds, primeSeconds, stopped} | {type: "error", job, message}

import { onnxMetadata } from "./onnx-metadata.js";
import { choose, Stream } from "./sampling.js";

const FLUSH_MS = 25; // how often characters go to the page (and stop requests are looked at)

let ort, session, vocab, config, stateSize, names;
const stopped = new Set(); // job ids the page asked to stop

// Fetches a URL and checks its subresource-integrity hash (the CDN's copy must be the pinned one).
async function fetchChecked(url, integrity) {
  let response;
  try {
    response = await fetch(url, integrity ? { integrity, mode: "cors" } : {});
  } catch (e) {
    // fetch says only "Failed to fetch" for both causes; name them.
    const why = integrity ? `offline, blocked, or its content is not the pinned build (integrity ${integrity})` : "offline or blocked";
    throw new Error(`cannot fetch ${url}: ${why}`);
  }
  if (!response.ok) throw new Error(`cannot fetch ${url}: HTTP ${response.status}`);
  return response;
}

async function loadOrt(site) {
  // The module is fetched with its integrity hash, then imported from a blob: URL so the code
  // that runs is the code that was checked (an import() cannot carry an integrity hash here).
  const source = await (await fetchChecked(site.ort.module, site.ort.moduleIntegrity)).blob();
  const module = await import(URL.createObjectURL(new Blob([source], { type: "text/javascript" })));
  const wasm = await (await fetchChecked(site.ort.wasm, site.ort.wasmIntegrity)).arrayBuffer();
  module.env.wasm.wasmBinary = wasm; // the checked bytes; onnxruntime-web fetches nothing more
  return module;
}

async function load({ modelUrl, vocabUrl, threads, site }) {
  names = site.contract;
  ort = await loadOrt(site);
  // 0 lets onnxruntime-web choose; without cross-origin isolation it can only use 1.
  ort.env.wasm.numThreads = threads ?? 0;
  const response = await fetch(modelUrl);
  if (!response.ok) throw new Error(`cannot fetch the model ${modelUrl}: HTTP ${response.status}`);
  const bytes = new Uint8Array(await response.arrayBuffer());
  let meta;
  try {
    meta = onnxMetadata(bytes);
  } catch (e) {
    throw new Error(`${modelUrl} is not an ONNX model (${e.message})`);
  }
  config = JSON.parse(meta[names.metaConfig] ?? "{}");
  const metaVocab = meta[names.metaVocab] ? JSON.parse(meta[names.metaVocab]) : null;
  vocab = vocabUrl ? await (await fetchChecked(vocabUrl)).json() : metaVocab;
  if (!Array.isArray(vocab)) throw new Error(`no vocabulary: ${modelUrl} carries none in its metadata; pass vocabUrl`);
  if (metaVocab && JSON.stringify(metaVocab) !== JSON.stringify(vocab)) {
    throw new Error(`${vocabUrl} is not the vocabulary of ${modelUrl} (its metadata has another); use the vocab.json exported with it`);
  }
  session = await ort.InferenceSession.create(bytes, { executionProviders: ["wasm"], graphOptimizationLevel: "all" });
  const missing = [names.token, names.state].filter((n) => !session.inputNames.includes(n))
    .concat([names.logits, names.stateOut].filter((n) => !session.outputNames.includes(n)));
  if (missing.length) throw new Error(`${modelUrl} is not a charrnn-export step model (no ${missing.join(", ")})`);
  stateSize = stateSizeOf(config, session, modelUrl);
  // Warm up once so the first generation's rate does not include onnxruntime's first-run setup.
  await step(0, zeroState());
  // `units` is the state width for the page (charrnn.js); the layers are in config.architecture.
  return { vocab, config, units: stateSize, threads: ort.env.wasm.numThreads, isolated: self.crossOriginIsolated };
}

// The packed state's width, as cells.architecture.state_size_of reads it: config.state_size (every
// layer's state, LSTM h and c, packed layer by layer), else rnn_units (an export of one GRU made
// before the architecture was recorded); the graph's state input, when its width is fixed, must agree.
function stateSizeOf(config, session, modelUrl) {
  const recorded = config.state_size ?? config.rnn_units;
  const shape = session.inputMetadata?.find?.((m) => m.name === names.state)?.shape;
  const inGraph = Number.isInteger(shape?.[1]) ? shape[1] : undefined;
  if (recorded !== undefined && inGraph !== undefined && recorded !== inGraph) {
    throw new Error(`${modelUrl}: its graph's state is ${inGraph} wide but its metadata says ${recorded}; export it again`);
  }
  const width = recorded ?? inGraph;
  if (!Number.isInteger(width) || width < 1) throw new Error(`${modelUrl}: the state width is unknown; export it again`);
  return width;
}

// A zero state starts a sequence: every layer's slice zero.
function zeroState() {
  return new ort.Tensor("float32", new Float32Array(stateSize), [1, stateSize]);
}

// One step of the model: the id's logits (Float32Array, ours to change) and the next state.
async function step(id, state) {
  const token = new ort.Tensor("int32", Int32Array.of(id), [1]);
  const out = await session.run({ [names.token]: token, [names.state]: state });
  const logits = out[names.logits].data;
  if (config.unk_id != null) logits[config.unk_id] = -Infinity; // the [UNK] row is never sampled
  return [logits, out[names.stateOut]];
}

// A macrotask turn, so that a "stop" message can be handled mid-generation (session.run may
// resolve without ever leaving the microtask queue). MessageChannel: no setTimeout 4 ms clamp.
function yieldToEvents() {
  return new Promise((resolve) => {
    const channel = new MessageChannel();
    channel.port1.onmessage = () => resolve();
    channel.port2.postMessage(null);
  });
}

async function generate({ job, startIds, length, settings, seed }) {
  const t0 = performance.now();
  let made = 0;
  let pending = "";
  let logits;
  let state = zeroState();
  if (length > 0) for (const id of startIds) [logits, state] = await step(id, state);
  const rng = new Stream(seed); // greedy draws nothing from it
  const t1 = performance.now();
  let flushed = t1;
  const seconds = () => (performance.now() - t1) / 1000;
  for (let i = 0; i < length && !stopped.has(job); i++) {
    const id = choose(logits, settings, rng);
    pending += vocab[id];
    made++;
    if (i < length - 1) [logits, state] = await step(id, state); // the last one needs no step
    if (performance.now() - flushed >= FLUSH_MS) {
      postMessage({ type: "chars", job, text: pending, made, seconds: seconds() });
      pending = "";
      await yieldToEvents();
      flushed = performance.now();
    }
  }
  if (pending) postMessage({ type: "chars", job, text: pending, made, seconds: seconds() });
  postMessage({ type: "done", job, made, seconds: seconds(), primeSeconds: (t1 - t0) / 1000, stopped: stopped.has(job) });
  stopped.delete(job);
}

onmessage = async ({ data }) => {
  if (data.type === "stop") {
    stopped.add(data.job);
  } else if (data.type === "load") {
    try {
      postMessage({ type: "loaded", ...(await load(data)) });
    } catch (e) {
      postMessage({ type: "load-error", message: String(e?.message ?? e) });
    }
  } else if (data.type === "generate") {
    try {
      await generate(data);
    } catch (e) {
      stopped.delete(data.job);
      postMessage({ type: "error", job: data.job, message: String(e?.message ?? e) });
    }
  }
};
