// The JavaScript API, mirroring Python's Generator (charrnn_export/generate.py):
//
//   import { load } from "./charrnn.js";
//   const charrnn = await load("model.onnx", "vocab.json");         // vocabUrl may be left out
//   await charrnn.generate("ROMEO:", 200, { temperature: 0.8, topK: 20, seed: 1 })  // -> the new text
//   for await (const ch of charrnn.stream("ROMEO:", 200, { seed: 1 })) ...         // char by char
//   charrnn.stop()   // ends the running generation: generate() resolves with the text so far
//
// Options: temperature ([1e-6, 1e30], default 1), topK (integer in [1, 2**31 - 1], null = off), topP ((0, 1], null =
// off), greedy (ignores the others), seed (integer in [0, 2**32); default a random one, read it
// back from charrnn.lastRun.seed). The same seed and settings give the same text as Python.
// Bad arguments raise CharRNNError: stream() throws at once, generate() rejects.
// The model runs in a Web Worker (worker.js, which must be served from the page's origin).

import site from "./site-config.js";
import { LENGTH_LIMIT, MAX_TEMPERATURE, MIN_TEMPERATURE, TOP_K_LIMIT, seedProblem } from "./sampling.js";

export class CharRNNError extends Error {
  constructor(message, unknown = []) {
    super(message);
    this.name = "CharRNNError";
    this.unknown = unknown; // the start's characters outside the vocabulary, if that is the problem
  }
}

// Resolves to a CharRNN once the worker has loaded onnxruntime-web and the model.
// options.threads: WebAssembly threads (default: onnxruntime-web's choice; 1 unless the page is
// cross-origin isolated, see `charrnn-export to-web --serve`).
export async function load(modelUrl, vocabUrl = null, options = {}) {
  const base = globalThis.document?.baseURI ?? globalThis.location.href; // the worker resolves against its own URL
  const worker = new Worker(new URL("./worker.js", import.meta.url), { type: "module" });
  const loaded = await new Promise((resolve, reject) => {
    worker.onmessage = ({ data }) => (data.type === "loaded" ? resolve(data) : reject(new CharRNNError(data.message)));
    worker.onerror = (e) => reject(new CharRNNError(`the generation worker failed to start: ${e.message ?? "see the console"}`));
    worker.postMessage({
      type: "load",
      modelUrl: new URL(modelUrl, base).href,
      vocabUrl: vocabUrl && new URL(vocabUrl, base).href,
      threads: options.threads,
      site: resolveSite(site),
    });
  }).catch((e) => {
    worker.terminate();
    throw e;
  });
  return new CharRNN(worker, loaded);
}

function resolveSite(config) {
  const here = (url) => new URL(url, import.meta.url).href; // site-config.js's URLs are relative to this module
  return { ...config, ort: { ...config.ort, module: here(config.ort.module), wasm: here(config.ort.wasm) } };
}

class CharRNN {
  #worker;
  #jobs = new Map(); // job id -> its message handler
  #nextJob = 1;
  #running = null; // the job id now generating
  #queue = Promise.resolve(); // one generation at a time, in call order

  constructor(worker, { vocab, config, units, threads, isolated }) {
    this.#worker = worker;
    this.vocab = vocab; // characters in id order
    this.config = config; // the model's config (rnn_units, unk_id, ...)
    this.units = units;
    this.threads = threads;
    this.crossOriginIsolated = isolated;
    this.index = new Map(vocab.map((ch, id) => [ch, id]));
    this.lastRun = null; // {seed, made, seconds, primeSeconds, stopped} of the latest generation
    this.progress = null; // {made, seconds} of the running generation, updated a few dozen times a second
    worker.onmessage = ({ data }) => this.#jobs.get(data.job)?.(data);
  }

  // The start's ids; throws CharRNNError listing unknown characters, as Python's Vocab.encode.
  encode(start) {
    if (typeof start !== "string" || start.length === 0) {
      throw new CharRNNError("the start text is empty; give at least one character of the model's vocabulary");
    }
    const chars = Array.from(start); // code points, as Python's str
    const unknown = [...new Set(chars.filter((ch) => !this.index.has(ch)))];
    if (unknown.length) {
      const shown = unknown.slice(0, 20).map((ch) => JSON.stringify(ch)).join(" ");
      throw new CharRNNError(`${unknown.length} character(s) are not in the model's vocabulary: ${shown}; remove them`, unknown);
    }
    return chars.map((ch) => this.index.get(ch));
  }

  async generate(start, length, options = {}) {
    let text = "";
    for await (const ch of this.stream(start, length, options)) text += ch;
    return text;
  }

  // An async iterator of the generated characters (checked now, started when first read).
  stream(start, length, options = {}) {
    const job = this.#prepare(start, length, options);
    return this.#run(job);
  }

  stop() {
    if (this.#running !== null) this.#worker.postMessage({ type: "stop", job: this.#running });
  }

  dispose() {
    this.#worker.terminate();
  }

  #prepare(start, length, { temperature = 1, topK = null, topP = null, greedy = false, seed = null } = {}) {
    // The checks of Python's checks.py (SamplingConfig.validate, check_length), with its ranges.
    if (!(typeof temperature === "number" && temperature > 0 && Number.isFinite(temperature))) {
      throw new CharRNNError(`temperature must be a positive number, got ${temperature}`);
    }
    if (temperature < MIN_TEMPERATURE || temperature > MAX_TEMPERATURE) {
      throw new CharRNNError(`temperature must be in [1e-06, 1e+30], got ${temperature}` +
        (temperature < MIN_TEMPERATURE ? ": below 1e-06 sampling is greedy in all but name; ask for greedy decoding instead" : ""));
    }
    if (topK !== null && !(Number.isInteger(topK) && topK >= 1 && topK <= TOP_K_LIMIT)) {
      throw new CharRNNError(`topK must be an integer >= 1 and <= 2**31 - 1, got ${topK}`);
    }
    if (topP !== null && !(typeof topP === "number" && topP > 0 && topP <= 1)) throw new CharRNNError(`topP must be in (0, 1], got ${topP}`);
    if (!(Number.isInteger(length) && length >= 0 && length <= LENGTH_LIMIT)) {
      throw new CharRNNError(`length must be an integer >= 0 and <= 2**40, got ${length}`);
    }
    if (seed === null || seed === undefined) seed = crypto.getRandomValues(new Uint32Array(1))[0];
    if (seedProblem(seed)) throw new CharRNNError(seedProblem(seed));
    const startIds = this.encode(start);
    const settings = { temperature, topK: topK ?? 0, topP: topP ?? 1, greedy: Boolean(greedy) }; // sampling.Settings
    return { startIds, length, settings, seed };
  }

  #record(request, { made, seconds, primeSeconds, stopped }) {
    this.lastRun = { seed: request.seed, made, seconds, primeSeconds, stopped };
  }

  async *#run(request) {
    const job = this.#nextJob++;
    const chunks = []; // messages not yet consumed
    let wake = null;
    this.#jobs.set(job, (message) => {
      if (message.type === "chars") this.progress = { made: message.made, seconds: message.seconds };
      chunks.push(message);
      wake?.();
    });
    const turn = this.#queue.then(() => {});
    let release;
    this.#queue = new Promise((resolve) => (release = resolve));
    let finished = false;
    try {
      await turn;
      this.#running = job;
      this.#worker.postMessage({ type: "generate", job, ...request });
      while (!finished) {
        if (!chunks.length) await new Promise((resolve) => (wake = resolve));
        wake = null;
        const message = chunks.shift();
        if (message.type === "chars") {
          yield* message.text;
        } else if (message.type === "done") {
          finished = true;
          this.#record(request, message);
        } else if (message.type === "error") {
          finished = true;
          throw new CharRNNError(message.message);
        }
      }
    } finally {
      // A reader that stops early (break) stops the worker too; wait for it to finish.
      if (!finished && this.#running === job) {
        this.stop();
        let end;
        while (!(end = chunks.find((m) => m.type === "done" || m.type === "error"))) {
          await new Promise((resolve) => (wake = resolve));
        }
        if (end.type === "done") this.#record(request, end);
      }
      this.#running = null;
      this.#jobs.delete(job);
      release();
    }
  }
}
