// The page's entry point: sign-in, the thread list (paging, filters, hidden toggle), creating
// threads and changing their state. The open thread's view is thread.js.

import { api, apiKey, AuthError, call, setApiKey } from "/ui/api.js";
import { ThreadView } from "/ui/thread.js";

const $ = (id) => document.getElementById(id);
// The hidden record of a thread's branches (threadloom/branches.py) is not a conversation.
const REGISTRY_MARK = "threadloom_branches_of";

const list = { cursor: null, more: false, threads: [], current: null };
let view = null;

function message(err) {
  return err instanceof Error ? err.message : String(err);
}

async function guarded(work, errorBox) {
  try {
    if (errorBox) errorBox.textContent = "";
    return await work();
  } catch (err) {
    if (err instanceof AuthError) {
      showSignIn(apiKey() ? "That key is not accepted." : "");
      return undefined;
    }
    if (errorBox) errorBox.textContent = message(err);
    else console.error(err);
    return undefined;
  }
}

// ---- sign-in ---------------------------------------------------------------------------------

function showSignIn(problem) {
  $("app").hidden = true;
  $("sign-out").hidden = true;
  $("sign-in").hidden = false;
  $("sign-in-error").textContent = problem || "";
  $("api-key").focus();
}

async function start() {
  $("sign-in").hidden = true;
  try {
    await api.listThreads({ hidden: false, limit: 1 });
  } catch (err) {
    if (err instanceof AuthError) {
      showSignIn(apiKey() ? "That key is not accepted." : "");
      return;
    }
    throw err;
  }
  $("app").hidden = false;
  $("sign-out").hidden = !apiKey();
  guarded(async () => {
    const models = await call("GET", "/v1/models");
    $("model").textContent = models.data.length ? `model: ${models.data[0].id}` : "";
  });
  await reloadThreads();
  const wanted = decodeURIComponent(location.hash.slice(1));
  if (wanted) openThread(wanted);
}

$("sign-in-form").addEventListener("submit", (event) => {
  event.preventDefault();
  setApiKey($("api-key").value.trim());
  $("api-key").value = "";
  start();
});

$("sign-out").addEventListener("click", () => {
  setApiKey(null);
  location.hash = "";
  showSignIn("");
});

// ---- the thread list -------------------------------------------------------------------------

function matches(t) {
  const state = $("filter-state").value;
  if (state && t.state !== state) return false;
  const needle = $("filter-text").value.trim().toLowerCase();
  if (!needle) return true;
  return `${t.id} ${JSON.stringify(t.metadata)}`.toLowerCase().includes(needle);
}

function title(t) {
  const named = t.metadata && typeof t.metadata.title === "string" && t.metadata.title.trim();
  return named || t.id;
}

function when(seconds) {
  return new Date(seconds * 1000).toLocaleString();
}

function renderList() {
  const ul = $("thread-list");
  ul.replaceChildren();
  const shown = list.threads.filter(matches);
  for (const t of shown) {
    const li = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.className = "thread-item";
    button.dataset.id = t.id;
    if (list.current === t.id) button.setAttribute("aria-current", "true");
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = title(t);
    const badge = document.createElement("span");
    badge.className = `badge ${t.state}`;
    badge.textContent = t.state;
    const info = document.createElement("span");
    info.className = "muted small";
    info.textContent = `${t.messageCount} messages · ${when(t.lastActivityAt)}`;
    button.append(name, badge, info);
    button.addEventListener("click", () => openThread(t.id));
    li.append(button);
    ul.append(li);
  }
  if (!shown.length) {
    const li = document.createElement("li");
    li.className = "muted";
    li.textContent = list.threads.length ? "No thread matches the filters." : "No threads yet.";
    ul.append(li);
  }
  $("more-threads").hidden = !list.more;
}

async function loadPage() {
  const page = await api.listThreads({ hidden: $("filter-hidden").checked, cursor: list.cursor });
  list.threads.push(...page.data.filter((t) => !(t.metadata && REGISTRY_MARK in t.metadata)));
  list.cursor = page.nextCursor;
  list.more = page.hasMore;
}

async function reloadThreads() {
  list.cursor = null;
  list.threads = [];
  await guarded(async () => {
    await loadPage();
    // With filters on, read on a little so a page is not empty just because of them.
    for (let i = 0; i < 5 && list.more && list.threads.filter(matches).length < 10; i += 1) {
      await loadPage();
    }
  });
  renderList();
}

$("more-threads").addEventListener("click", async () => {
  await guarded(loadPage);
  renderList();
});
$("filter-state").addEventListener("change", renderList);
$("filter-text").addEventListener("input", renderList);
$("filter-hidden").addEventListener("change", reloadThreads);

$("new-thread-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const box = $("new-error");
  await guarded(async () => {
    let metadata;
    try {
      metadata = JSON.parse($("new-meta").value || "{}");
    } catch {
      throw new Error("metadata must be a JSON object");
    }
    if (metadata === null || typeof metadata !== "object" || Array.isArray(metadata)) {
      throw new Error("metadata must be a JSON object");
    }
    const t = await api.createThread($("new-id").value.trim(), metadata);
    $("new-id").value = "";
    $("new-thread").open = false;
    await reloadThreads();
    await openThread(t.id);
  }, box);
});

// ---- one thread ------------------------------------------------------------------------------

function confirmDialog(text, okLabel) {
  const dialog = $("confirm");
  $("confirm-text").textContent = text;
  $("confirm-ok").textContent = okLabel;
  return new Promise((resolve) => {
    const done = (answer) => {
      $("confirm-ok").onclick = null;
      $("confirm-cancel").onclick = null;
      dialog.onclose = null;
      if (dialog.open) dialog.close();
      resolve(answer);
    };
    $("confirm-ok").onclick = () => done(true);
    $("confirm-cancel").onclick = () => done(false);
    dialog.onclose = () => done(false);
    dialog.showModal();
    $("confirm-cancel").focus();
  });
}

function showThread(t) {
  $("thread-title").textContent = title(t);
  $("thread-state").textContent = t.state;
  $("thread-state").className = `badge ${t.state}`;
  $("thread-meta").textContent =
    `id ${t.id} · ${t.visibleInUi ? "visible" : "hidden"} · metadata ${JSON.stringify(t.metadata)}`;
  $("thread-actions").hidden = false;
  $("lock").hidden = t.state !== "open";
  $("unlock").hidden = t.state !== "locked";
  $("archive").hidden = t.state === "archived";
}

async function openThread(id) {
  list.current = id;
  renderList();
  document.body.classList.add("has-thread");
  location.hash = encodeURIComponent(id);
  await guarded(async () => {
    const t = await api.getThread(id);
    showThread(t);
    view = view || new ThreadView({ guarded, onChange: refreshThread });
    await view.open(t);
    $("thread").focus();
  }, $("thread-error"));
}

async function refreshThread() {
  if (!list.current) return;
  await guarded(async () => {
    const t = await api.getThread(list.current);
    showThread(t);
    const i = list.threads.findIndex((x) => x.id === t.id);
    if (i >= 0) list.threads[i] = t;
    renderList();
    if (view) view.setThread(t);
  }, $("thread-error"));
}

async function setState(state) {
  await guarded(async () => {
    await api.updateThread(list.current, { state });
    await refreshThread();
    if (view) await view.reload();
  }, $("thread-error"));
}

$("lock").addEventListener("click", () => setState("locked"));
$("unlock").addEventListener("click", () => setState("open"));
$("archive").addEventListener("click", async () => {
  const ok = await confirmDialog(
    "Archiving is permanent: an archived thread can be read but never takes a new message " +
      "or branch again, and it cannot be unarchived.",
    "Archive for good",
  );
  if (ok) await setState("archived");
});
$("delete").addEventListener("click", async () => {
  const ok = await confirmDialog(
    "Deleting removes the thread and its messages. This cannot be undone.",
    "Delete",
  );
  if (!ok) return;
  await guarded(async () => {
    await api.deleteThread(list.current);
    list.current = null;
    location.hash = "";
    document.body.classList.remove("has-thread");
    $("thread-title").textContent = "No thread open";
    $("thread-state").textContent = "";
    $("thread-meta").textContent = "";
    $("thread-actions").hidden = true;
    if (view) view.close();
    await reloadThreads();
  }, $("thread-error"));
});
$("back").addEventListener("click", () => {
  document.body.classList.remove("has-thread");
  $("threads").querySelector("button, input, select")?.focus();
});

start().catch((err) => {
  $("sign-in").hidden = false;
  $("sign-in-error").textContent = message(err);
});
