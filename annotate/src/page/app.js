// The annotation page: shows the pair the server leases to this annotator and sends back the
// Llama 2 protocol's answer. Every piece of pair text is set with textContent (never innerHTML):
// replies may contain HTML and scripts, and must show as the text they are.
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const NAME_KEY = "rlhf-annotate-name";
  const STRENGTH_KEYS = { a: "significantly_better", s: "better", d: "slightly_better", f: "negligibly_better" };
  const SAFETY_KEYS = { z: "only_chosen_safe", x: "both_safe", c: "both_unsafe" };
  const POLL_MS = 4000;
  const ui = { name: "", view: null, choice: null, strength: null, safety: null, busy: false, poll: null };

  function setState(s) {
    document.body.dataset.state = s;
    for (const id of ["signin", "task", "done"]) $(id).hidden = id !== s;
    $("who").hidden = s === "signin";
  }

  function setStatus(text, isError) {
    $("status").textContent = text || "";
    $("status").classList.toggle("error", !!isError);
  }

  async function call(path, body) {
    const res = await fetch(path, {
      method: "POST",
      headers: { "Content-Type": "application/json", "X-Rlhf-Annotate": "1" },
      body: JSON.stringify(Object.assign({ annotator: ui.name }, body || {})),
      credentials: "same-origin",
      cache: "no-store",
    });
    let data = null;
    try {
      data = await res.json();
    } catch (_) {
      data = null;
    }
    if (!res.ok) throw new Error((data && data.error) || res.status + " " + res.statusText);
    return data;
  }

  // One request at a time: a second key press while one is in flight is ignored, so a rating is
  // never sent twice and the page moves on only once the server has saved it.
  async function act(path, body, pending) {
    if (ui.busy) return;
    ui.busy = true;
    document.body.classList.add("busy");
    setStatus(pending);
    try {
      show(await call(path, body));
    } catch (e) {
      setStatus(e.message, true);
    } finally {
      ui.busy = false;
      document.body.classList.remove("busy");
    }
  }

  function renderPrompt(messages) {
    const box = $("prompt");
    box.replaceChildren();
    for (const m of messages) {
      const div = document.createElement("div");
      div.className = "msg " + (m.role === "user" || m.role === "assistant" || m.role === "system" ? m.role : "other");
      const role = document.createElement("div");
      role.className = "role";
      role.textContent = m.role;
      const text = document.createElement("div");
      text.className = "text";
      text.textContent = m.content;
      div.append(role, text);
      box.append(div);
    }
  }

  function show(view) {
    ui.view = view;
    ui.choice = ui.strength = ui.safety = null;
    const p = view.progress;
    const overlap = p.overlap > 1 ? " · each pair rated by " + p.overlap : "";
    $("progress").textContent = p.done + " done · " + p.left + " left · you rated " + p.you + overlap;
    $("who-name").textContent = view.annotator;
    $("undo").disabled = $("undo-done").disabled = !view.can_undo;
    const notices = { saved: "Saved.", skipped: "Skipped.", undone: "Last rating undone: rate this pair again." };
    setStatus(notices[view.notice] || "");
    clearTimeout(ui.poll);
    if (!view.pair) {
      $("done-message").textContent = view.message || "Nothing to rate.";
      $("task").dataset.pairId = "";
      setState("done");
      // Pairs still with other annotators: ask again now and then (a lease may lapse, or an
      // undo may free a pair).
      if (p.left > 0) ui.poll = setTimeout(() => act("/api/next", {}, ""), POLL_MS);
      return;
    }
    $("task").dataset.pairId = view.pair.id;
    renderPrompt(view.pair.prompt);
    view.pair.responses.forEach((t, i) => {
      $("reply-" + (i + 1)).querySelector(".text").textContent = t;
    });
    if (view.pair.skipped_before) setStatus("You skipped this pair before; it is back because nothing else is left.");
    setState("task");
    refresh();
    window.scrollTo(0, 0);
  }

  function refresh() {
    for (const n of [1, 2]) {
      const el = $("reply-" + n);
      el.classList.toggle("chosen", ui.choice === n);
      el.classList.toggle("other", ui.choice !== null && ui.choice !== n);
    }
    for (const [id, value] of [["strength", ui.strength], ["safety", ui.safety]]) {
      for (const b of $(id).querySelectorAll("button")) b.setAttribute("aria-pressed", String(b.dataset.value === value));
    }
    $("submit").disabled = !(ui.choice && ui.strength && ui.safety);
  }

  function submit() {
    if (!ui.view || !ui.view.pair) return;
    if (!(ui.choice && ui.strength && ui.safety)) {
      setStatus("Choose the better response (1 or 2), how much better (A S D F) and the safety bin (Z X C).", true);
      return;
    }
    act("/api/rate", { pair_id: ui.view.pair.id, choice: ui.choice, strength: ui.strength, safety: ui.safety }, "Saving…");
  }

  const skip = () => ui.view && ui.view.pair && act("/api/skip", { pair_id: ui.view.pair.id }, "Skipping…");
  const undo = () => ui.view && ui.view.can_undo && act("/api/undo", {}, "Undoing…");

  function onKey(e) {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    if (e.target instanceof HTMLInputElement) return;
    const state = document.body.dataset.state;
    const k = e.key.length === 1 ? e.key.toLowerCase() : e.key;
    let handled = true;
    if (state === "task" && (k === "1" || k === "ArrowLeft")) ui.choice = 1;
    else if (state === "task" && (k === "2" || k === "ArrowRight")) ui.choice = 2;
    else if (state === "task" && k in STRENGTH_KEYS) ui.strength = STRENGTH_KEYS[k];
    else if (state === "task" && k in SAFETY_KEYS) ui.safety = SAFETY_KEYS[k];
    else if (state === "task" && k === "Enter") submit();
    else if (state === "task" && k === "k") skip();
    else if ((state === "task" || state === "done") && k === "u") undo();
    else handled = false;
    if (handled) {
      e.preventDefault();
      refresh();
    }
  }

  function start(name) {
    ui.name = name;
    localStorage.setItem(NAME_KEY, name);
    act("/api/next", {}, "Loading…");
  }

  document.addEventListener("DOMContentLoaded", () => {
    document.addEventListener("keydown", onKey);
    for (const n of [1, 2]) {
      $("reply-" + n).addEventListener("click", () => {
        ui.choice = n;
        refresh();
      });
    }
    for (const id of ["strength", "safety"]) {
      $(id).addEventListener("click", (e) => {
        const b = e.target.closest("button");
        if (!b) return;
        ui[id] = b.dataset.value;
        refresh();
      });
    }
    $("submit").addEventListener("click", submit);
    $("skip").addEventListener("click", skip);
    $("undo").addEventListener("click", undo);
    $("undo-done").addEventListener("click", undo);
    $("switch").addEventListener("click", () => {
      localStorage.removeItem(NAME_KEY);
      ui.view = null;
      $("name").value = "";
      setState("signin");
      $("name").focus();
    });
    $("signin-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const name = $("name").value.trim();
      if (name) start(name);
    });
    const saved = localStorage.getItem(NAME_KEY);
    if (saved) {
      start(saved);
    } else {
      setState("signin");
      $("name").focus();
    }
  });
})();
