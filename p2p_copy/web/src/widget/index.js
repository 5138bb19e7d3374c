// @ts-check
// The notebook panel of p2p_copy.drop() and p2p_copy.offer(): an anywidget module
// (render({model, el})). The browser is the other peer: drop runs the core's send() with
// what the person dropped or picked, offer runs receive() into a file or folder the person
// chose. The kernel's side runs the ordinary Python receive or send.
//
// The kernel writes the traits (panel.py): relay_url/proxy_port, mode, dest/offered, state
// and message. The code and a private relay's token come in custom messages (relay.js
// kernelSecrets), never as traits, which a notebook may save. This view writes no traits:
// it tells the kernel that it is on screen and asks for the code, with custom messages.
// Those reach the kernel while a cell awaits drop() (Run All, or one cell that awaits it),
// where trait changes may be held back by the widget manager for good. Nothing the
// transfer needs waits for them: the kernel waits in the relay from the start, sends the
// code every second meanwhile, and the browser's connection pairs with it. Bytes never go
// through the widget's messages.

import { send, receive } from "../index.js";
import { entriesFromDrop, entriesFromFiles, entriesFromDirectoryHandle, countEntries } from "../page/pick.js";
import { describeCounts, formatBytes, progressLine, Speedometer } from "../page/format.js";
import { describeError, isCancel } from "../page/messages.js";
import { directoryTarget, fileTarget, fsaUsable } from "../storage/fsa.js";
import { MEMORY_LIMIT, memoryTarget, zipDownloadTarget } from "../storage/download.js";
import { isSingleFile } from "../storage/zip.js";
import { jupyterBaseUrl, kernelSecrets, relayFor, NO_PROXY, UNHEARD } from "./relay.js";

/** @param {string} tag @param {string} [cls] @param {string} [text] */
function h(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  return node;
}

function render({ model, el }) {
  const mode = model.get("mode");
  const root = h("div", "p2p-copy-drop");
  root.dataset.mode = mode;
  const title = h("div", "p2p-copy-drop-title",
    mode === "drop" ? "Drop files into this kernel" : "Save to your computer");
  const where = h("div", "p2p-copy-drop-where");
  const zone = h("div", "p2p-copy-drop-zone");
  const buttons = h("div", "p2p-copy-drop-buttons");
  const status = h("div", "p2p-copy-drop-status");
  status.setAttribute("role", "status");
  status.setAttribute("aria-live", "polite");
  const bar = /** @type {HTMLProgressElement} */ (h("progress", "p2p-copy-drop-bar"));
  bar.max = 1;
  bar.value = 0;
  bar.hidden = true;
  const detail = h("div", "p2p-copy-drop-detail");
  const cancel = h("button", "p2p-copy-drop-button", "Cancel");
  cancel.hidden = true;
  root.append(title, where, zone, buttons, bar, detail, status);
  el.append(root);

  /** @type {AbortController | null} */
  let running = null;
  let usedProxy = false;
  /** Why this view's last transfer failed, as it said it: the kernel's "interrupted" keeps it. */
  let ownError = "";

  /** @param {string} text @param {string} [kind] */
  function say(text, kind = "") {
    status.textContent = text;
    status.dataset.kind = kind;
  }

  function relay() {
    const found = relayFor({ relayUrl: model.get("relay_url"), proxyPort: model.get("proxy_port") },
      location, jupyterBaseUrl(document));
    usedProxy = !model.get("relay_url");
    return found;
  }

  function setBusy(on) {
    root.classList.toggle("p2p-copy-busy", on);
    for (const b of buttons.querySelectorAll("button")) /** @type {HTMLButtonElement} */ (b).disabled = on || ended();
    cancel.hidden = !on;
    cancel.disabled = false;
  }

  const ended = () => ["done", "failed"].includes(model.get("state"));

  function onEvent(e) {
    if (e.type === "connecting") say("Connecting to the relay…");
    else if (e.type === "waiting") say("Waiting for the kernel…");
    else if (e.type === "paired" || e.type === "verifying") say("Connected: checking the code…");
    else if (e.type === "progress") {
      // Redrawn at most ten times a second: a layout per MiB would cost the notebook.
      const now = performance.now();
      if (now - lastDrawn < 100 && e.bytes < (e.total ?? 0)) return;
      lastDrawn = now;
      bar.hidden = false;
      bar.max = Math.max(e.total ?? 1, 1);
      bar.value = e.bytes;
      const { rate, eta } = speed.update(e.bytes, e.total ?? 0);
      detail.textContent = progressLine(e.bytes, e.total ?? 0, rate, eta);
      say(mode === "drop" ? "Sending…" : "Receiving…");
    }
  }
  let speed = new Speedometer();
  let lastDrawn = 0;

  const secrets = kernelSecrets(model);

  /** Runs one transfer (``work`` gets the relay, the abort signal, the events and the secrets). */
  async function run(work) {
    const found = relay();
    if ("problem" in found) {
      say(ownError = found.problem, "bad");
      return;
    }
    if (!globalThis.isSecureContext || !globalThis.crypto?.subtle) {
      const text = `This page was opened as ${location.protocol}//${location.host}, which the browser does not treat as secure, so it withholds the cryptography the transfer needs. Open Jupyter over https://, or as http://localhost.`;
      say(ownError = text, "bad");
      return;
    }
    running = new AbortController();
    speed = new Speedometer();
    setBusy(true);
    bar.hidden = true;
    detail.textContent = "";
    let paired = false;
    const events = (e) => {
      if (e.type === "waiting" || e.type === "paired") paired = true;
      onEvent(e);
    };
    ownError = "";
    try {
      const signal = running.signal;
      const cancelled = new Promise((resolve) => signal.addEventListener("abort", () => resolve("cancelled"), { once: true }));
      const known = await Promise.race([secrets.get(), cancelled]);
      if (known === "cancelled") throw new DOMException("Cancelled.", "AbortError");
      if (!known) throw new Error(UNHEARD);
      // The kernel's relay behind the proxy is public; the user's may be private.
      await work(found.relay, running.signal, events, { code: known.code, token: usedProxy ? undefined : known.token });
      bar.value = bar.max;
    } catch (error) {
      let text = describeError(error);
      // The proxy answers a missing route (no jupyter-server-proxy) by failing the upgrade.
      if (usedProxy && !paired && ["connection_lost", "relay_refused"].includes(error?.kind)) text = NO_PROXY;
      say(text, isCancel(error) ? "" : "bad");
      ownError = isCancel(error) ? "" : text;
      if (mode === "drop") where.textContent = `Into the kernel's folder “${model.get("dest")}”`;
    } finally {
      running = null;
      setBusy(false);
      if (ended()) showState();
    }
  }

  cancel.addEventListener("click", () => running?.abort());

  // --- drop: the browser sends -------------------------------------------------------

  /** @param {Promise<any[]> | any[]} chosen */
  async function sendEntries(chosen) {
    if (running || ended()) return;
    let entries;
    try {
      entries = await chosen;
    } catch (error) {
      if (!isCancel(error)) say(describeError(error), "bad");
      return;
    }
    if (!entries || entries.length === 0) return;
    const { files, dirs, bytes } = countEntries(entries);
    where.textContent = `Sending ${describeCounts(files, dirs, bytes)} into ${model.get("dest")} in the kernel`;
    await run(async (relayUrl, signal, events, { code, token }) => {
      await send({ relay: relayUrl, code, entries, fresh: false, onEvent: events, signal, token });
      where.textContent = `Sent ${describeCounts(files, dirs, bytes)} into ${model.get("dest")} in the kernel`;
    });
  }

  if (mode === "drop") {
    zone.textContent = "Drop files or folders here";
    zone.tabIndex = 0;
    const input = /** @type {HTMLInputElement} */ (h("input"));
    input.type = "file";
    input.multiple = true;
    input.hidden = true;
    input.className = "p2p-copy-drop-files";
    const folderInput = /** @type {HTMLInputElement} */ (h("input"));
    folderInput.type = "file";
    folderInput.webkitdirectory = true;
    folderInput.hidden = true;
    folderInput.className = "p2p-copy-drop-folder";
    const pickFiles = h("button", "p2p-copy-drop-button", "Choose files…");
    const pickFolder = h("button", "p2p-copy-drop-button", "Choose a folder…");
    buttons.append(pickFiles, pickFolder, cancel, input, folderInput);
    pickFiles.addEventListener("click", () => input.click());
    pickFolder.addEventListener("click", () => {
      const win = /** @type {any} */ (globalThis);
      // The handle walk keeps empty folders, which <input webkitdirectory> loses.
      if (fsaUsable()) sendEntries(win.showDirectoryPicker({ id: "p2p-copy-drop" }).then(entriesFromDirectoryHandle));
      else folderInput.click();
    });
    input.addEventListener("change", () => {
      const files = Array.from(input.files ?? []);
      input.value = "";
      sendEntries(entriesFromFiles(files));
    });
    folderInput.addEventListener("change", () => {
      const files = Array.from(folderInput.files ?? []);
      folderInput.value = "";
      sendEntries(entriesFromFiles(files));
    });
    zone.addEventListener("dragover", (event) => {
      event.preventDefault();
      // JupyterLab's own drop handlers (file browser upload) must not take it.
      event.stopPropagation();
      zone.classList.add("p2p-copy-over");
    });
    zone.addEventListener("dragleave", () => zone.classList.remove("p2p-copy-over"));
    zone.addEventListener("drop", (event) => {
      event.preventDefault();
      event.stopPropagation();
      zone.classList.remove("p2p-copy-over");
      if (event.dataTransfer) sendEntries(entriesFromDrop(event.dataTransfer));
    });
  }

  // --- offer: the browser receives ---------------------------------------------------

  if (mode === "offer") {
    const offered = model.get("offered") || {};
    zone.textContent = `${(offered.names || []).join(", ")}: ${describeCounts(offered.files ?? 0, offered.dirs ?? 0, offered.bytes ?? 0)}`;
    zone.classList.add("p2p-copy-offered");
    const save = h("button", "p2p-copy-drop-button p2p-copy-primary", "Save to this computer…");
    buttons.append(save, cancel);
    const fsa = fsaUsable();
    if (!fsa && (offered.bytes ?? 0) > MEMORY_LIMIT) {
      save.disabled = true;
      say(`This browser cannot save ${formatBytes(offered.bytes)} from a notebook: it has no file system access here `
        + "(Chrome or Edge on a computer has it). Or download it from Jupyter's file browser.", "bad");
    }
    save.addEventListener("click", async () => {
      if (running || ended()) return;
      const win = /** @type {any} */ (globalThis);
      let target;
      try {
        // The pickers must open inside the click (user activation).
        if (fsa && offered.single) target = fileTarget(await win.showSaveFilePicker({ suggestedName: offered.names[0] }));
        else if (fsa) target = directoryTarget(await win.showDirectoryPicker({ id: "p2p-copy-save", mode: "readwrite" }));
      } catch (error) {
        if (!isCancel(error)) say(describeError(error), "bad");
        return;
      }
      if (target) where.textContent = target.describe();
      const sink = {
        // The person said yes with the Save button. Without file system access, what the
        // manifest holds decides: one file is saved as itself, more as one zip that keeps
        // the folders (both kept in memory until complete; the panel allows that only for
        // small offers).
        offer: async (summary, entries = []) => {
          target ??= isSingleFile(summary) ? memoryTarget() : zipDownloadTarget(entries);
          where.textContent = target.describe();
          return true;
        },
        held: async (files) => (target.held ? target.held(files) : []),
        prefix: (index, offset) => target.prefix(index, offset),
        mkdir: (path) => target.mkdir(path),
        open: (path, size, options) => target.open(path, size, options ?? {}),
        done: async () => target.done(),
        abort: async (error) => target?.abort(error),
      };
      await run(async (relayUrl, signal, events, { code, token }) => {
        await receive({ relay: relayUrl, code, sink, onEvent: events, signal, token });
        where.textContent = target.describe(true);
      });
    });
  }

  // --- what the kernel says ------------------------------------------------------------

  function showState() {
    const state = model.get("state");
    const message = model.get("message");
    root.dataset.state = state;
    if (state === "starting") say("Starting…");
    else if (state === "ready" && !running) {
      const found = relay();
      if ("problem" in found) say(found.problem, "bad");
      else if (reachable === false) say(NO_PROXY, "bad");
      else say(mode === "drop" ? "Ready: drop files, or choose them." : "Ready: click Save.");
      if (reachable === undefined && "relay" in found && usedProxy) checkProxy();
    }
    else if (state === "running" && !running) {
      say(mode === "drop"
        ? "The transfer was cut (was the page reloaded?). Drop or choose the same files again to continue where it stopped."
        : "The transfer was cut (was the page reloaded?). Click Save and choose the same place again to continue.");
    } else if (state === "interrupted" && !running) {
      // This view's own failure is already said as it is; the kernel's gets its way out.
      say(ownError || `Stopped: ${message} Start again to continue where it stopped.`, "bad");
    }
    else if (state === "done") {
      say(mode === "drop" ? `Received in the kernel: ${message}.` : `Saved and verified: ${message}.`, "ok");
      bar.hidden = false;
      bar.value = bar.max;
    } else if (state === "failed") say(message, "bad");
    for (const b of buttons.querySelectorAll("button")) {
      if (b !== cancel) /** @type {HTMLButtonElement} */ (b).disabled = Boolean(running) || ended();
    }
    zone.classList.toggle("p2p-copy-disabled", ended());
    if (mode === "drop" && !where.textContent) where.textContent = `Into the kernel's folder “${model.get("dest")}”`;
  }

  /** Whether the kernel's relay answers through the proxy: undefined until asked. */
  let reachable;
  /** Asked once, before anyone picks a big file: /healthz of the relay, through the proxy. */
  async function checkProxy() {
    reachable = null;
    const base = jupyterBaseUrl(document);
    try {
      const answer = await fetch(`${base}proxy/${model.get("proxy_port")}/healthz`, { credentials: "same-origin", cache: "no-store" });
      reachable = answer.ok;
    } catch {
      reachable = false;
    }
    showState();
  }

  model.on("change:state", showState);
  model.on("change:message", showState);
  showState();
  // Tells the kernel that a front end shows the panel (else it says which one it needs).
  model.send({ event: "shown" });
  return () => {
    secrets.close();
    model.off("change:state", showState);
    model.off("change:message", showState);
  };
}

export default { render };
