// @ts-check
// The receive view: a code (typed, or from the link's #CODE), the offer, where to save,
// the transfer.

import { describeCounts, formatBytes, progressLine, Speedometer } from "./format.js";
import { describeError, errorKind, isCancel } from "./messages.js";
import { directoryTarget, fileTarget, fsaUsable } from "../storage/fsa.js";
import { downloadTarget, MEMORY_LIMIT, memoryTarget, serviceWorkerReady, zipDownloadTarget } from "../storage/download.js";
import { isSingleFile, zipName } from "../storage/zip.js";
import { storageError } from "../storage/errors.js";
import { $, announce, fillList, setState, show, throttle } from "./ui.js";

/**
 * How this browser will save ``summary`` (the offer; ``entries``, its manifest): "fsa"
 * (pickers), "download" (the service worker), "memory" (small only) or "none", with the
 * sentence that tells the person. Without the pickers, several files or any folder are
 * saved as one .zip that keeps the folders; a single file as itself.
 */
export async function planSaving(summary, { entries = [], fsa = fsaUsable(), sw = serviceWorkerReady } = {}) {
  const single = isSingleFile(summary);
  if (fsa) {
    return single
      ? { how: "fsa", text: "You will choose where to save the file." }
      : { how: "fsa", text: "You will choose a folder to save into; nothing in it is replaced." };
  }
  const zip = single || !entries.length ? "" : ` as one zip file, ${zipName(entries)}, that keeps the folders`;
  const worker = await sw();
  if (worker) {
    return single
      ? { how: "download", worker, text: "The file goes to your downloads folder." }
      : { how: "download", worker, text: `Everything goes to your downloads folder${zip}. Chrome or Edge on a computer can save straight into a folder.` };
  }
  if (summary.bytes <= MEMORY_LIMIT) {
    return { how: "memory", text: `This browser keeps the files in memory until they are complete, then saves them to your downloads folder${zip}.` };
  }
  return {
    how: "none",
    text: `This browser cannot save ${formatBytes(summary.bytes)} without holding it all in memory. Open this page in Chrome or Edge on a computer, or receive with the command line.`,
  };
}

/**
 * @param {{core: any, relay: () => {url: string, own: boolean}, busy: (on: boolean) => void}} ctx
 */
export function setupReceive({ core, relay: chosenRelay, busy }) {
  /** @type {AbortController | null} */
  let running = null;
  /** @type {((ok: boolean) => void) | null} */
  let answerOffer = null;
  /** @type {any} */
  let target = null;
  /** @type {{how: string, text: string, worker?: any}} */
  let plan = { how: "none", text: "" };
  let offered = null;
  /** The offer's manifest (entries in its order): what a zip is made of. */
  let offeredEntries = [];

  const input = $("code-input");

  function reset() {
    show("offer", false);
    show("recv-progress", false);
    show("code-form");
    target = null;
  }

  /** The Accept click: the picker must open inside this handler (user activation). */
  async function accept() {
    if (!answerOffer || !offered) return;
    const summary = offered;
    try {
      if (plan.how === "fsa") {
        if (isSingleFile(summary)) {
          target = fileTarget(await window.showSaveFilePicker({ suggestedName: summary.names[0] }));
        } else {
          target = directoryTarget(await window.showDirectoryPicker({ id: "p2p-copy-receive", mode: "readwrite" }));
        }
      } else if (plan.how === "download" || plan.how === "memory") {
        const worker = plan.how === "download" ? plan.worker : null;
        if (!isSingleFile(summary)) target = zipDownloadTarget(offeredEntries, worker);
        else target = worker ? downloadTarget(worker) : memoryTarget();
      } else {
        return;
      }
    } catch (e) {
      if (isCancel(e)) {
        announce("No place chosen. Choose one to accept, or decline.");
        return; // the offer stays open
      }
      const error = storageError(e);
      setState("recv-state", error.message, "bad", error.kind);
      show("recv-progress");
      return;
    }
    $("recv-where").textContent = target.describe();
    show("offer", false);
    show("recv-progress");
    setState("recv-state", "Receiving…");
    $("recv-cancel").focus();
    const answer = answerOffer;
    answerOffer = null;
    answer(true);
  }

  function decline() {
    if (!answerOffer) return;
    const answer = answerOffer;
    answerOffer = null;
    show("offer", false);
    show("recv-progress");
    answer(false);
  }

  const sink = {
    async offer(summary, entries = []) {
      offered = summary;
      offeredEntries = entries;
      plan = await planSaving(summary, { entries });
      $("offer-text").textContent = describeCounts(summary.files, summary.dirs, summary.bytes);
      const names = summary.names || [];
      fillList($("offer-names"), names.map((name) => ({ name, size: "" })));
      $("save-how").textContent = plan.text;
      $("accept").disabled = plan.how === "none";
      show("recv-progress", false);
      show("offer");
      $("accept").focus();
      announce(`The sender offers ${describeCounts(summary.files, summary.dirs, summary.bytes)}. Accept or decline.`);
      return new Promise((resolve) => { answerOffer = resolve; });
    },
    async held(files) {
      return target.held ? target.held(files) : [];
    },
    prefix: (index, offset) => target.prefix(index, offset),
    mkdir: (path) => target.mkdir(path),
    open: (path, size, options) => target.open(path, size, options ?? {}),
    async done() {
      await target?.done();
    },
    async abort(error) {
      await target?.abort(error);
    },
  };

  async function start(text) {
    if (running) return;
    let code;
    try {
      code = core.normalizeCode(text);
    } catch (error) {
      $("code-error").textContent = describeError(error);
      show("code-error");
      show("recv-progress", false);
      input.setAttribute("aria-invalid", "true");
      input.focus();
      announce(describeError(error), true);
      return;
    }
    input.removeAttribute("aria-invalid");
    show("code-error", false);
    input.value = code;
    const controller = new AbortController();
    running = controller;
    busy(true);
    show("code-form", false);
    show("offer", false);
    show("recv-progress");
    show("recv-cancel");
    show("recv-again", false);
    $("recv-where").textContent = "";
    $("recv-detail").textContent = "";
    const bar = $("recv-bar");
    bar.value = 0;
    bar.max = 1;
    setState("recv-state", "Connecting…");
    const speed = new Speedometer();
    let total = 0;
    let lastShown = 0;
    let finished = false;
    const showProgress = throttle((e) => {
      if (finished) return;
      total = e.total ?? total;
      const { rate, eta } = speed.update(e.bytes, total);
      bar.max = Math.max(total, 1);
      bar.value = e.bytes;
      setState("recv-state", "Receiving…");
      $("recv-detail").textContent = progressLine(e.bytes, total, rate, eta);
      const now = performance.now();
      if (now - lastShown > 10_000) {
        lastShown = now;
        announce(`Received ${Math.floor((100 * e.bytes) / Math.max(total, 1))} percent`);
      }
    });
    const onEvent = (e) => {
      if (e.type === "connecting") setState("recv-state", "Connecting to the relay…");
      else if (e.type === "waiting") setState("recv-state", "Waiting for the sender…");
      else if (e.type === "paired" || e.type === "verifying") setState("recv-state", "Connected: checking the code…");
      else if (e.type === "offer") total = e.summary?.bytes ?? total;
      else if (e.type === "progress") showProgress(e);
    };
    try {
      await core.receive({ relay: chosenRelay().url, code, sink, onEvent, signal: controller.signal });
      bar.max = 1;
      bar.value = 1;
      const what = offered ? describeCounts(offered.files, offered.dirs, offered.bytes) : "everything";
      const text = `Received and checked: ${what}.`;
      if (target) $("recv-where").textContent = target.describe(true);
      setState("recv-state", text, "ok", "done");
      $("recv-detail").textContent = "";
      announce(text);
    } catch (error) {
      const text = describeError(error);
      setState("recv-state", text, isCancel(error) ? "" : "bad", errorKind(error));
      announce(text, true);
      show("offer", false);
      answerOffer = null;
    } finally {
      finished = true;
      running = null;
      offered = null;
      offeredEntries = [];
      busy(false);
      show("recv-cancel", false);
      show("recv-again");
      $("recv-again").focus();
    }
  }

  $("code-form").addEventListener("submit", (event) => {
    event.preventDefault();
    start(input.value);
  });
  $("accept").addEventListener("click", accept);
  $("decline").addEventListener("click", decline);
  $("recv-cancel").addEventListener("click", () => {
    if (answerOffer) decline();
    running?.abort();
  });
  $("recv-again").addEventListener("click", () => {
    reset();
    input.value = "";
    input.focus();
  });

  return {
    start,
    get running() {
      return running !== null;
    },
    focus() {
      if (!running) input.focus();
    },
  };
}
