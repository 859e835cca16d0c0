// The nanogate console. No framework and no build step: every page reads and writes through the
// admin API (/admin/...) with the session cookie, echoing the CSRF token on every change.
"use strict";

const csrf = () => document.querySelector('meta[name="csrf-token"]')?.content || "";
const $ = (sel, root = document) => root.querySelector(sel);
const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

// Calls the admin API; a lost session sends the operator to the login page.
async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  if (method !== "GET") headers["X-CSRF-Token"] = csrf();
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const resp = await fetch(path, {
    method, headers, credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (resp.status === 401 && document.body.dataset.page !== "login") {
    location.href = "/console/login";
    throw new ApiError(401, "Your session has ended.");
  }
  if (!resp.ok) throw new ApiError(resp.status, await errorMessage(resp));
  if (resp.status === 204) return { data: null, resp };
  const type = resp.headers.get("content-type") || "";
  return { data: type.includes("json") ? await resp.json() : await resp.text(), resp };
}

async function errorMessage(resp) {
  try {
    const body = await resp.json();
    const err = Array.isArray(body) ? body[0]?.error : body.error;
    if (err?.message) return err.message;
  } catch (e) { /* not JSON */ }
  return `HTTP ${resp.status}`;
}

function say(message, bad = false) {
  const box = $("#status");
  if (!box) return;
  box.textContent = message;
  box.classList.toggle("bad", bad);
  box.hidden = !message;
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const num = (v) => (v === null || v === undefined ? "–" : Number(v).toLocaleString("en-US"));
const pct = (v) => `${(v * 100).toFixed(v < 0.1 && v > 0 ? 1 : 0)}%`;
const secs = (ms) => (ms === null || ms === undefined ? "–" : `${(ms / 1000).toFixed(1)} s`);
const badge = (text, tone) => el("span", { class: `badge ${tone}`, text });
const tries = (n) => (n === 1 ? "1 try" : `${num(n)} tries`);
const shorten = (text, most) => (text.length > most ? `${text.slice(0, most - 1)}…` : text);

// Times are shown in the viewer's own time zone; the API and the CSV keep UTC.
const ZONE = Intl.DateTimeFormat().resolvedOptions().timeZone || "local time";
const pad = (n) => String(n).padStart(2, "0");
const when = (iso) => {
  if (!iso) return "–";
  const d = new Date(iso);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
};
// A moment for a table or a record: local time, with the UTC instant on hover.
const stamp = (iso) => (iso ? el("time", { datetime: iso, title: `${iso} (UTC)` }, when(iso)) : "–");

// A datetime-local value is the browser's local time: send it as an instant.
const instant = (local) => (local ? new Date(local).toISOString() : null);
const localValue = (iso) => (iso ? when(iso).slice(0, 16).replace(" ", "T") : "");

// Credits as money, as nanogate/console/money.py formats them: the page carries the operator's
// currency prefix and rate (`currency`, `credits_per_unit`).
function money(credits) {
  const { moneyPrefix = "$", creditsPerUnit = "1000000" } = document.body.dataset;
  const amount = Math.abs(Number(credits)) / Number(creditsPerUnit);
  const digits = amount >= 1 || amount === 0 ? 2 : amount >= 0.01 ? 4 : 6;
  const text = amount.toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: digits });
  return `${Number(credits) < 0 ? "-" : ""}${moneyPrefix}${text}`;
}
const none = (v) => v === null || v === undefined || v === "";
// In a sentence: "38,766 credits ($0.0388)".
const creditsText = (v) => (none(v) ? "–" : `${num(v)} credits (${money(v)})`);
// In a table cell: the credits, their money beneath.
const creditsCell = (v) => (none(v) ? "–" : [el("span", { class: "credits" }, num(v)), el("span", { class: "money" }, money(v))]);

// An input of credits says what they are worth as the operator types.
function moneyHint(input) {
  const hint = el("span", { class: "money-hint", "aria-live": "polite" });
  const show = () => { hint.textContent = none(input.value) ? "" : `= ${money(input.value)}`; };
  input.addEventListener("input", show);
  input.form?.addEventListener("reset", () => setTimeout(show));
  const box = el("span", { class: "with-hint" });
  input.replaceWith(box);
  box.append(input, hint);
  show();
}
const intOrNull = (v) => (v === "" || v === null || v === undefined ? null : Number.parseInt(v, 10));

async function guarded(work) {
  try { return await work(); } catch (e) { say(e.message, true); return undefined; }
}

// ---- login -----------------------------------------------------------------------------------

function loginPage() {
  const form = $("#login-form");
  const error = $("#login-error");
  $("#admin-key").focus();
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.textContent = "";
    const key = $("#admin-key").value.trim();
    if (!key) { error.textContent = "Enter the admin key."; return; }
    try {
      await api("POST", "/admin/session", { key });
      location.href = "/console/overview";
    } catch (e) {
      error.textContent = e.message;
    }
  });
}

// ---- overview --------------------------------------------------------------------------------

function overviewPage() {
  const form = $("#overview-controls");
  let latest = 0;  // loads overlap (a quick second choice, the timer): only the newest is shown
  const load = () => guarded(async () => {
    const mine = ++latest;
    const params = new URLSearchParams(new FormData(form));
    const boxes = $$(".chart-box");
    const [{ data }, ...charts] = await Promise.all([
      api("GET", `/admin/stats?${params}`),
      // Drawn for the slot's real width, so chart text stays readable on a phone.
      ...boxes.map((box) => api("GET", `/admin/stats/chart?${params}&metric=${encodeURIComponent(box.dataset.metric)}` +
        `&width=${Math.max(280, Math.min(1600, Math.round($(".chart-slot", box).clientWidth) || 720))}`)),
    ]);
    if (mine !== latest) return;
    for (const [name, value] of Object.entries(data.totals)) {
      const slot = $(`[data-total="${name}"]`);
      if (slot) slot.textContent = name === "error_rate" ? pct(value) : num(value);
    }
    $('[data-total-money="credits"]').textContent = money(data.totals.credits);
    boxes.forEach((box, i) => {
      $(".chart-slot", box).innerHTML = charts[i].data;  // our own server-drawn SVG, text escaped there
    });
    document.body.dataset.loaded = "overview";
  });
  form.addEventListener("change", load);
  load();
  setInterval(() => { if (!document.hidden) load(); }, 30000);
}

// ---- accounts and keys -----------------------------------------------------------------------

let models = [];

async function loadModels() {
  if (!models.length) models = (await api("GET", "/admin/models")).data;
  return models;
}

function modelChecks(container, chosen) {
  container.replaceChildren(...models.map((m) => el("label", {},
    el("input", { type: "checkbox", name: "allowed_models", value: m.name,
      checked: chosen ? chosen.includes(m.name) : false }), m.name)));
}

function keyStatus(k) {
  return badge(k.status, k.status === "active" ? "good" : k.status === "revoked" ? "bad" : "warn");
}

function keysPage() {
  const refresh = () => guarded(async () => {
    await loadModels();
    const [{ data: accounts }, { data: keys }] = await Promise.all([
      api("GET", "/admin/accounts"), api("GET", "/admin/keys"),
    ]);
    $("#account-names").replaceChildren(...accounts.map((a) => el("option", { value: a.name })));
    $("#accounts-table tbody").replaceChildren(...accounts.map(accountRow));
    $("#keys-table tbody").replaceChildren(...keys.map(keyRow));
    if (!$("#model-checks").children.length) modelChecks($("#model-checks"), null);
    document.body.dataset.loaded = "keys";
  });

  const accountRow = (a) => {
    const amount = el("input", { type: "number", step: "1", "aria-label": `Credits for ${a.name}`, placeholder: "credits" });
    const note = el("input", { "aria-label": `Reason for ${a.name}`, placeholder: "reason", value: "top-up" });
    const go = el("button", { type: "button", class: "secondary", text: "Top up",
      onclick: () => guarded(async () => {
        const credits = intOrNull(amount.value);
        if (!credits) { say("Enter a whole number of credits (negative to take some back).", true); return; }
        const { data } = await api("POST", `/admin/accounts/${a.id}/topup`, { amount: credits, reason: note.value || "top-up" });
        say(`${data.account}: balance is now ${creditsText(data.balance)}.`);
        refresh();
      }) });
    return el("tr", { "data-account": a.name },
      el("td", {}, a.name), el("td", { class: "num" }, creditsCell(a.balance)), el("td", { class: "num" }, creditsCell(a.held)),
      el("td", { class: "num", "data-written-off": String(a.written_off) }, creditsCell(a.written_off)),
      el("td", {}, a.hold_policy ? a.hold_policy.replace("_", " ") : "fair (default)"),
      el("td", { class: "num" }, num(a.keys)), el("td", {}, el("div", { class: "row" }, amount, note, go)));
  };

  const keyRow = (k) => {
    const limits = [k.rpm_limit && `${k.rpm_limit}/min`, k.concurrency_limit && `${k.concurrency_limit} at once`].filter(Boolean).join(", ") || "none";
    const caps = [k.daily_cap !== null && `${creditsText(k.daily_cap)} a day`, k.monthly_cap !== null && `${creditsText(k.monthly_cap)} a month`].filter(Boolean).join(", ") || "none";
    const actions = el("div", { class: "row" });
    if (k.status !== "revoked") {
      actions.append(
        el("button", { type: "button", class: "secondary", text: "Edit", onclick: () => editKey(k) }),
        el("button", { type: "button", class: "danger", text: "Revoke", "aria-label": `Revoke ${k.prefix}`,
          onclick: () => guarded(async () => {
            if (!confirm(`Revoke ${k.prefix} (${k.name})? Calls with it stop at once.`)) return;
            await api("POST", `/admin/keys/${k.prefix}/revoke`);
            say(`${k.prefix} is revoked.`);
            refresh();
          }) }));
    }
    return el("tr", { "data-key": k.prefix },
      el("td", { class: "mono" }, k.prefix, k.is_admin ? " (admin)" : ""), el("td", { class: "nowrap" }, k.name),
      el("td", { class: "nowrap" }, k.account, el("span", { class: "money" }, creditsText(k.balance))), el("td", {}, keyStatus(k)),
      el("td", { class: "nowrap" }, stamp(k.expires_at)), el("td", {}, limits), el("td", {}, caps),
      el("td", {}, k.allowed_models ? k.allowed_models.join(", ") : "all"), el("td", {}, actions));
  };

  const fields = (form) => {
    const data = new FormData(form);
    const chosen = data.getAll("allowed_models");
    return {
      name: data.get("name") || undefined,
      expires_at: instant(data.get("expires_at")),
      rpm_limit: intOrNull(data.get("rpm_limit")),
      concurrency_limit: intOrNull(data.get("concurrency_limit")),
      daily_cap: intOrNull(data.get("daily_cap")),
      monthly_cap: intOrNull(data.get("monthly_cap")),
      image_output: data.get("image_output") || null,
      allowed_models: chosen.length ? chosen : null,
    };
  };

  $("#account-form").addEventListener("submit", (event) => guarded(async () => {
    event.preventDefault();
    const data = new FormData(event.target);
    const { data: created } = await api("POST", "/admin/accounts", { name: data.get("name"), credits: intOrNull(data.get("credits")) || 0 });
    say(`Account ${created.name} created with ${creditsText(created.balance)}.`);
    event.target.reset();
    refresh();
  }));

  $("#key-form").addEventListener("submit", (event) => guarded(async () => {
    event.preventDefault();
    const form = event.target;
    const data = new FormData(form);
    const body = { ...fields(form), account: data.get("account") || null,
      credits: intOrNull(data.get("credits")) || 0, is_admin: data.get("is_admin") === "on" };
    const { data: created } = await api("POST", "/admin/keys", body);
    $("#new-key").textContent = created.key;
    $("#copy-done").textContent = "";
    $("#key-shown").showModal();
    form.reset();
    say(`Key ${created.prefix} created on account ${created.account}.`);
    refresh();
  }));

  $("#copy-key").addEventListener("click", async () => {
    const key = $("#new-key").textContent;
    try {
      await navigator.clipboard.writeText(key);
      $("#copy-done").textContent = "Copied.";
    } catch (e) {
      // No clipboard permission (plain http, old browser): select it for Ctrl+C instead.
      const range = document.createRange();
      range.selectNodeContents($("#new-key"));
      getSelection().removeAllRanges();
      getSelection().addRange(range);
      $("#copy-done").textContent = "Selected: press Ctrl+C (⌘C) to copy.";
    }
  });
  $("#key-shown").addEventListener("close", () => { $("#new-key").textContent = ""; });

  const dialog = $("#key-edit");
  let editing = null;
  const editKey = (k) => {
    editing = k;
    const form = $("#edit-form");
    $("#edit-prefix").textContent = k.prefix;
    form.elements.name.value = k.name;
    form.elements.expires_at.value = localValue(k.expires_at);
    for (const f of ["rpm_limit", "concurrency_limit", "daily_cap", "monthly_cap"]) form.elements[f].value = k[f] ?? "";
    form.elements.image_output.value = k.image_output || "";
    modelChecks($("#edit-model-checks"), k.allowed_models);
    $$("input[data-credits]", form).forEach((input) => input.dispatchEvent(new Event("input")));
    dialog.showModal();
  };
  $$("input[data-credits]").forEach(moneyHint);
  $("#edit-cancel").addEventListener("click", () => dialog.close());
  $("#edit-form").addEventListener("submit", (event) => guarded(async () => {
    event.preventDefault();
    await api("PATCH", `/admin/keys/${editing.prefix}`, fields(event.target));
    dialog.close();
    say(`${editing.prefix} saved.`);
    refresh();
  }));
  refresh();
}

// ---- usage -----------------------------------------------------------------------------------

function usagePage() {
  const form = $("#usage-filter");
  $("#usage-time-h").textContent = `Time (${ZONE})`;
  let pages = [];  // the `before` cursor of each page shown, for Newest/Older
  const query = () => {
    const params = new URLSearchParams();
    for (const [name, value] of new FormData(form)) {
      if (!value) continue;
      params.set(name, name === "since" || name === "until" ? instant(value) : value);
    }
    return params;
  };
  const load = (before) => guarded(async () => {
    const params = query();
    $("#csv-link").href = `/admin/usage.csv?${params}`;
    params.set("limit", "50");
    if (before) params.set("before", before);
    const { data: rows, resp } = await api("GET", `/admin/usage?${params}`);
    const next = resp.headers.get("x-next-before");
    $("#usage-older").disabled = !next;
    $("#usage-older").dataset.next = next || "";
    $("#usage-newest").disabled = !before;
    $("#usage-table tbody").replaceChildren(...(rows.length ? rows.map((r) => el("tr", { "data-request": r.request_id },
      el("td", { class: "mono" }, stamp(r.created_at)), el("td", { class: "mono" }, r.key_prefix || "–"),
      el("td", { class: "nowrap" }, r.dialect), el("td", { class: "nowrap" }, r.model || "–"),
      el("td", { class: "nowrap" }, r.upstream || "–"),
      el("td", { class: "num" }, r.status >= 400 ? badge(String(r.status), "bad") : String(r.status)),
      el("td", { class: "num" }, num(r.latency_ms)), el("td", { class: "num" }, num(r.images)),
      el("td", { class: "num" }, num(r.total_tokens)), el("td", { class: "num" }, creditsCell(r.cost)),
      el("td", { class: "error-cell" }, r.error ? el("span", { class: "reason" }, r.error) : "",
        r.error_message ? el("span", { class: "message" }, r.error_message) : ""))) : [el("tr", {}, el("td", { colspan: "11", text: "No usage matches these filters." }))]));
    document.body.dataset.loaded = "usage";
  });
  form.addEventListener("submit", (event) => { event.preventDefault(); pages = []; load(null); });
  $("#usage-older").addEventListener("click", () => { const n = $("#usage-older").dataset.next; pages.push(n); load(n); });
  $("#usage-newest").addEventListener("click", () => { pages = []; load(null); });
  guarded(async () => {
    await loadModels();
    $("#model-names").replaceChildren(...models.map((m) => el("option", { value: m.name })));
  });
  load(null);
}

// ---- tasks -----------------------------------------------------------------------------------

function tasksPage() {
  const form = $("#task-filter");
  let next = null;
  const tone = { succeeded: "good", failed: "bad", running: "warn", pending: "muted" };
  const card = (t) => {
    const thumb = t.files.length
      ? el("img", { src: t.files[0].thumbnail, alt: `Result of: ${t.prompt.slice(0, 80)}`, loading: "lazy", width: "384", height: "384" })
      : el("span", { text: t.state === "failed" ? "no image" : t.state });
    const callback = t.callback_state === "none" ? "no callback" : `callback ${t.callback_state}`;
    const why = t.state === "failed" ? (t.error_message || "no reason was recorded") : null;
    return el("li", { "data-task": t.id }, el("button", { type: "button", "aria-label": `Task ${t.id}: ${t.state}`, onclick: () => openTask(t) },
      el("div", { class: "thumb" }, thumb),
      el("div", { class: "info" },
        el("span", { class: "prompt", title: t.prompt }, t.prompt || "(no prompt)"),
        el("span", { class: "line", title: t.model }, badge(t.state, tone[t.state] || "muted"), " ", t.model),
        why && el("span", { class: "failure", title: why }, shorten(why, 120)),
        el("span", { class: "line" }, creditsText(t.cost)),
        el("span", { class: "line" }, `ran ${secs(t.run_ms)} · queued ${secs(t.queued_ms)}`),
        el("span", {}, callback, t.callback_attempts ? ` (${tries(t.callback_attempts)})` : ""),
        el("span", { class: "mono" }, stamp(t.created_at)))));
  };
  const load = (more) => guarded(async () => {
    const params = new URLSearchParams();
    for (const [name, value] of new FormData(form)) if (value) params.set(name, value);
    params.set("limit", "48");
    if (more && next) params.set("before", next);
    const { data: tasks, resp } = await api("GET", `/admin/tasks?${params}`);
    next = resp.headers.get("x-next-before");
    $("#tasks-more").hidden = !next;
    const items = tasks.map(card);
    if (more) $("#gallery").append(...items);
    else $("#gallery").replaceChildren(...(items.length ? items : [el("li", { text: "No tasks yet." })]));
    document.body.dataset.loaded = "tasks";
  });
  const openTask = (t) => guarded(async () => {
    const [{ data: record }, { data: callbacks }] = await Promise.all([
      api("GET", `/admin/tasks/${t.id}`), api("GET", `/admin/callbacks?task_id=${t.id}`),
    ]);
    $("#task-dialog-h").textContent = `Task ${t.id}`;
    // Why it failed comes first: it is what the operator opened the record for.
    const failure = $("#task-failure");
    failure.hidden = t.state !== "failed";
    failure.textContent = t.state === "failed" ? `Failed (code ${t.error_code ?? "–"}): ${t.error_message || "no reason was recorded."}` : "";
    $("#task-images").replaceChildren(...t.files.map((f, i) => el("a", { href: f.url, target: "_blank", rel: "noopener" },
      el("img", { src: f.url, alt: `Image ${i + 1} of task ${t.id}` }))));
    const callback = record.callback_url
      ? [el("span", { class: "wrap" }, record.callback_url), ` · ${record.callback_state}`, t.callback_attempts ? ` after ${tries(t.callback_attempts)}` : ""]
      : "none";
    const rows = [
      ["Id", el("span", { class: "mono" }, t.id)],
      ["State", badge(t.state, t.state === "failed" ? "bad" : t.state === "succeeded" ? "good" : "warn")],
      ["Model", t.model],
      ["Created", stamp(t.created_at)], ["Started", stamp(t.started_at)], ["Completed", stamp(t.completed_at)],
      ["Queued", secs(t.queued_ms)], ["Ran", secs(t.run_ms)],
      ["Runs", num(record.attempts)],
      ["Cost", creditsText(t.cost)],
      ["Account", `#${t.account_id}`], ["Key", `#${t.key_id}`],
      ["Callback", callback],
    ];
    $("#task-record").replaceChildren(...rows.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", {}, v)]));
    $("#task-zone").textContent = `Times are in your time zone, ${ZONE}.`;
    // The create request as an indented object: the recordinfo form stores it as a JSON string.
    let param = record.task.param;
    if (typeof param === "string") { try { param = JSON.parse(param); } catch (e) { /* shown as it is */ } }
    $("#task-param").textContent = typeof param === "string" ? param : JSON.stringify(param, null, 2);
    $("#task-callbacks").replaceChildren(callbacks.attempts.length
      ? el("table", {}, el("thead", {}, el("tr", {}, ["Attempt", "Status", "Error", "Took", "At"].map((h) => el("th", { scope: "col", text: h })))),
        el("tbody", {}, callbacks.attempts.map((a) => el("tr", {}, el("td", {}, a.attempt), el("td", {}, a.status_code ?? "–"),
          el("td", { class: "wrap" }, a.error || ""), el("td", { class: "nowrap" }, a.duration_ms == null ? (a.error ? "–" : "in flight") : `${a.duration_ms} ms`), el("td", { class: "mono" }, stamp(a.at))))))
      : el("p", { class: "help", text: callbacks.callback_url ? "No delivery attempt yet." : "This task has no callback URL." }));
    $("#task-dialog").showModal();
  });
  form.addEventListener("submit", (event) => { event.preventDefault(); load(false); });
  $("#tasks-more").addEventListener("click", () => load(true));
  load(false);
}

// ---- upstreams -------------------------------------------------------------------------------

// The daily model check of a gemini upstream: what it does not list, and when it was asked.
function modelCheck(check) {
  if (!check) return ["–"];
  const asked = ` (checked ${when(check.checked_at)})`;
  if (check.error) return [badge("check failed", "bad"), ` ${check.error}${asked}`];
  if (check.missing.length) return [badge(`${check.missing.length} missing`, "bad"), ` ${check.missing.join(", ")}${asked}`];
  return [badge(`all ${check.expected} listed`, "good"), asked];
}

// The runtime switches: a change is sent at once, and the boxes show what the gateway holds.
function switches() {
  const maintenance = $("#switch-maintenance");
  const features = $$("[data-feature]");
  const show = (state) => {
    maintenance.checked = state.maintenance;
    for (const box of features) box.checked = state.disabled_features.includes(box.dataset.feature);
    document.body.dataset.switches = JSON.stringify(state);
  };
  const send = (change) => guarded(async () => {
    const { data } = await api("PATCH", "/admin/switches", change);
    show(data);
    say(data.maintenance ? "Maintenance mode is on: calls are refused." : "");
  });
  maintenance.addEventListener("change", () => send({ maintenance: maintenance.checked }));
  for (const box of features) {
    box.addEventListener("change", () => send({
      disabled_features: features.filter((b) => b.checked).map((b) => b.dataset.feature),
    }));
  }
  return () => guarded(async () => show((await api("GET", "/admin/switches")).data));
}

function upstreamsPage() {
  const tone = { closed: "good", open: "bad", "half-open": "warn" };
  const loadSwitches = switches();
  const load = () => guarded(async () => {
    await loadSwitches();
    const { data } = await api("GET", "/admin/upstreams");
    $("#upstreams-table tbody").replaceChildren(...data.map((u) => el("tr", { "data-upstream": u.name },
      el("td", {}, u.name), el("td", {}, u.kind),
      el("td", {}, badge(u.breaker, tone[u.breaker]), u.failures_in_a_row ? ` ${u.failures_in_a_row} failures in a row` : ""),
      el("td", { class: "num" }, `${u.in_flight}${u.max_concurrency ? ` / ${u.max_concurrency}` : ""}`),
      el("td", { class: "num" }, num(u.waiting)),
      el("td", { class: "num" }, u.p50_ms === null ? "–" : u.p50_ms.toFixed(0)),
      el("td", { class: "num" }, u.p99_ms === null ? "–" : u.p99_ms.toFixed(0)),
      el("td", { class: "num" }, `${pct(u.error_rate)} of ${num(u.recent_attempts)}`),
      el("td", {}, u.skip_until ? `${when(u.skip_until)} (${u.retry_after} s)` : "–"),
      el("td", { class: "model-check" }, ...modelCheck(u.models)))));
    document.body.dataset.loaded = "upstreams";
  });
  load();
  setInterval(() => { if ($("#auto-refresh").checked && !document.hidden) load(); }, 5000);
}

// ---- playground ------------------------------------------------------------------------------

const KEY_SLOT = "nanogate.playground.key";

function playgroundPage() {
  const refs = [];  // {file, url}
  const downloads = [];  // object URLs of the shown results, freed on the next run
  const empty = $("#play-empty");
  const keyInput = $("#play-key");
  keyInput.value = sessionStorage.getItem(KEY_SLOT) || "";
  keyInput.addEventListener("change", () => sessionStorage.setItem(KEY_SLOT, keyInput.value.trim()));
  const spec = () => models.find((m) => m.name === $("#play-model").value);

  const fillModel = () => {
    const m = spec();
    if (!m) return;
    const aspect = $("#play-aspect");
    aspect.replaceChildren(el("option", { value: "", text: "model default" }), ...m.aspect_ratios.map((r) => el("option", { value: r, text: r })));
    $("#play-size").replaceChildren(el("option", { value: "", text: `default (${m.default_image_size})` }), ...m.image_sizes.map((s) => el("option", { value: s, text: s })));
    $("#ref-limit").textContent = m.max_input_images;
    showRefs();
  };

  const showRefs = () => {
    const limit = spec()?.max_input_images ?? 0;
    $("#refs").replaceChildren(...refs.map((r, i) => el("li", {},
      el("img", { src: r.url, alt: `Reference ${i + 1}: ${r.file.name}` }),
      el("button", { type: "button", class: "danger", "aria-label": `Remove ${r.file.name}`, text: "×",
        onclick: () => { URL.revokeObjectURL(r.url); refs.splice(i, 1); showRefs(); } }))));
    if (refs.length > limit) say(`This model takes at most ${limit} reference images; remove ${refs.length - limit}.`, true);
  };

  const addFiles = (files) => {
    const limit = spec()?.max_input_images ?? 0;
    for (const file of files) {
      if (!file.type.startsWith("image/")) { say(`${file.name} is not an image.`, true); continue; }
      if (refs.length >= limit) { say(`This model takes at most ${limit} reference images.`, true); break; }
      refs.push({ file, url: URL.createObjectURL(file) });
    }
    showRefs();
  };

  const drop = $("#drop");
  drop.addEventListener("click", () => $("#play-files").click());
  drop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); $("#play-files").click(); } });
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); addFiles(e.dataTransfer.files); });
  $("#play-files").addEventListener("change", (e) => { addFiles(e.target.files); e.target.value = ""; });
  $("#play-model").addEventListener("change", fillModel);

  $("#play-issue").addEventListener("click", () => guarded(async () => {
    const expires = new Date(Date.now() + 24 * 3600 * 1000).toISOString();
    const { data } = await api("POST", "/admin/keys", { name: "playground", account: $("#play-account").value, expires_at: expires });
    keyInput.value = data.key;
    sessionStorage.setItem(KEY_SLOT, data.key);
    say(`Issued ${data.prefix} on account ${data.account} (${creditsText(data.balance)}), valid 24 hours.`);
  }));

  const base64 = (file) => new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result).split(",", 2)[1]);
    reader.onerror = () => reject(new Error(`Could not read ${file.name}.`));
    reader.readAsDataURL(file);
  });

  $("#play-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    say("");
    const key = keyInput.value.trim();
    const prompt = $("#play-prompt").value.trim();
    if (!key) { say("Enter a client key, or issue a playground key.", true); keyInput.focus(); return; }
    if (!prompt) { say("Write a prompt.", true); $("#play-prompt").focus(); return; }
    sessionStorage.setItem(KEY_SLOT, key);
    const model = $("#play-model").value;
    const imageConfig = {};
    if ($("#play-aspect").value) imageConfig.aspectRatio = $("#play-aspect").value;
    if ($("#play-size").value) imageConfig.imageSize = $("#play-size").value;
    const go = $("#play-go");
    const progress = $("#play-progress");
    const started = performance.now();
    const timer = setInterval(() => { $("#play-elapsed").textContent = ((performance.now() - started) / 1000).toFixed(1); }, 100);
    go.disabled = true;
    progress.hidden = false;
    $(".play-right").setAttribute("aria-busy", "true");
    $("#play-result").replaceChildren();
    downloads.splice(0).forEach((url) => URL.revokeObjectURL(url));
    $("#play-meta").hidden = true;
    try {
      const parts = [];
      for (const r of refs) parts.push({ inlineData: { mimeType: r.file.type, data: await base64(r.file) } });
      parts.push({ text: prompt });
      const body = { contents: [{ role: "user", parts }], generationConfig: { responseModalities: ["TEXT", "IMAGE"] } };
      if (Object.keys(imageConfig).length) body.generationConfig.imageConfig = imageConfig;
      // The public API, with the client key: what works here works for clients.
      const resp = await fetch(`/v1beta/models/${encodeURIComponent(model)}:generateContent`, {
        method: "POST", credentials: "omit",
        headers: { "Content-Type": "application/json", "x-goog-api-key": key },
        body: JSON.stringify(body),
      });
      const latency = performance.now() - started;
      if (!resp.ok) throw new Error(await errorMessage(resp));
      const answer = await resp.json();
      const cand = answer.candidates?.[0];
      const out = [];
      const requestId = resp.headers.get("x-request-id") || "result";
      for (const part of cand?.content?.parts || []) {
        if (part.thought) continue;
        if (part.inlineData) {
          const { mimeType, data } = part.inlineData;
          const n = downloads.length + 1;
          const blob = new Blob([Uint8Array.from(atob(data), (c) => c.charCodeAt(0))], { type: mimeType });
          const url = URL.createObjectURL(blob);
          downloads.push(url);
          const ext = (mimeType.split("/")[1] || "bin").replace("jpeg", "jpg");
          out.push(el("figure", {},
            el("img", { src: url, alt: `Generated: ${prompt.slice(0, 100)}` }),
            el("figcaption", {}, el("a", { href: url, download: `nanogate-${requestId}-${n}.${ext}`, class: "button secondary" },
              `Download image ${n}`), ` ${ext.toUpperCase()}, ${num(Math.round(blob.size / 1024))} KB`)));
        } else if (part.text) out.push(el("p", { text: part.text }));
      }
      if (!out.length) out.push(el("p", { class: "error", text: `No image: ${cand?.finishReason || answer.promptFeedback?.blockReason || "the model returned nothing"}.` }));
      $("#play-result").replaceChildren(...out);
      const usage = answer.usageMetadata || {};
      const meta = [["Cost", creditsText(resp.headers.get("x-nanogate-cost"))], ["Latency", `${(latency / 1000).toFixed(2)} s`],
        ["Tokens", num(usage.totalTokenCount)], ["Model", answer.modelVersion || model], ["Request id", resp.headers.get("x-request-id") || "–"]];
      $("#play-meta").replaceChildren(...meta.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: v })]));
      $("#play-meta").hidden = false;
    } catch (e) {
      say(e.message, true);
      $("#play-result").replaceChildren(empty);
    } finally {
      clearInterval(timer);
      progress.hidden = true;
      go.disabled = false;
      $(".play-right").removeAttribute("aria-busy");
    }
  });

  guarded(async () => {
    await loadModels();
    // Shut-down models are not offered; the first GA one is the default.
    const images = models.filter((m) => m.kind === "image" && m.status !== "shut_down");
    $("#play-model").replaceChildren(...images.map((m) => el("option", { value: m.name, text: m.display_name || m.name })));
    const current = images.find((m) => m.status === "ga");
    if (current) $("#play-model").value = current.name;
    fillModel();
    const { data: accounts } = await api("GET", "/admin/accounts");
    $("#play-account").replaceChildren(...accounts.filter((a) => a.name !== "admin").map((a) => el("option", { value: a.name, text: `${a.name}: ${creditsText(a.balance)}` })));
    document.body.dataset.loaded = "playground";
  });
}

// ---- start -----------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  const logout = $("#logout");
  if (logout) {
    logout.addEventListener("click", async () => {
      try { await api("DELETE", "/admin/session"); } catch (e) { /* already gone */ }
      location.href = "/console/login";
    });
  }
  const pages = { login: loginPage, overview: overviewPage, keys: keysPage, usage: usagePage,
    tasks: tasksPage, upstreams: upstreamsPage, playground: playgroundPage };
  pages[document.body.dataset.page]?.();
});
