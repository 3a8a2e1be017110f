// The page: reads the form, calls the API in charrnn.js, shows the text as it is made.
// The loaded model is window.charrnn, so a console (or a test) can call the same API.
// ?threads=N in the page's URL sets the WebAssembly threads (default: onnxruntime-web's choice).

import { load, CharRNNError } from "./charrnn.js";
import site from "./site-config.js";

const $ = (id) => document.getElementById(id);
const setState = (state) => (document.body.dataset.state = state); // loading | ready | generating | error

function showMessage(text) {
  $("message").textContent = text;
  $("message").hidden = !text;
}

// An empty field is "off" (null); anything else must be a number (the API checks its range).
function numberField(id, name) {
  const raw = $(id).value.trim();
  if (raw === "") return null;
  const value = Number(raw);
  if (!Number.isFinite(value)) throw new CharRNNError(`${name} must be a number, got ${JSON.stringify(raw)}`);
  return value;
}

function readForm() {
  const length = numberField("length", "length");
  const options = {
    temperature: numberField("temperature", "temperature") ?? 1,
    topK: numberField("top-k", "top-k"),
    topP: numberField("top-p", "top-p"),
    seed: numberField("seed", "seed"),
    greedy: $("greedy").checked,
  };
  if (length === null) throw new CharRNNError("length is empty; give the number of characters to generate");
  return { start: $("start").value, length, options };
}

function showRate(progress) {
  if (progress && progress.seconds > 0) {
    $("rate").textContent = `${progress.made} chars, ${Math.round(progress.made / progress.seconds).toLocaleString("en")} chars/s`;
  }
}

async function generate(charrnn) {
  showMessage("");
  let request;
  let chars;
  try {
    request = readForm();
    chars = charrnn.stream(request.start, request.length, request.options); // checks everything first
  } catch (e) {
    if (!(e instanceof CharRNNError)) throw e;
    showMessage(e.message);
    return;
  }
  setState("generating");
  $("generate").disabled = true;
  $("stop").disabled = false;
  $("rate").textContent = "";
  $("shown-start").textContent = request.start;
  const generated = document.createTextNode(""); // appendData per character: no re-layout of the whole text
  $("generated").replaceChildren(generated);
  let shown = 0;
  try {
    for await (const ch of chars) {
      generated.appendData(ch);
      if (charrnn.progress && charrnn.progress.made !== shown) {
        shown = charrnn.progress.made;
        showRate(charrnn.progress);
      }
    }
    const run = charrnn.lastRun;
    showRate(run);
    $("status").textContent = `${run.stopped ? "stopped" : "done"}: seed ${run.seed}, ${run.made} characters`;
  } catch (e) {
    showMessage(e.message);
  } finally {
    setState("ready");
    $("generate").disabled = false;
    $("stop").disabled = true;
  }
}

async function main() {
  const threads = new URLSearchParams(location.search).get("threads");
  let charrnn;
  try {
    charrnn = await load(site.model, site.vocab, { threads: threads === null ? undefined : Number(threads) });
  } catch (e) {
    $("status").textContent = "the model could not be loaded";
    showMessage(e.message);
    setState("error");
    return;
  }
  window.charrnn = charrnn;
  const isolation = charrnn.crossOriginIsolated ? "cross-origin isolated" : "not cross-origin isolated";
  $("status").textContent = `${site.model}: ${charrnn.vocab.length} characters, ${charrnn.units} units; ` +
    `${charrnn.threads} thread(s), ${isolation}`;
  $("settings").addEventListener("submit", (event) => {
    event.preventDefault();
    generate(charrnn);
  });
  $("stop").addEventListener("click", () => charrnn.stop());
  $("generate").disabled = false;
  setState("ready");
}

main();
