// One thread: its branch tree (GET /v1/threads/{id}/tree), the path shown (one branch, chosen
// with the "2 / 3" arrows or in the tree view), and replies streamed from
// POST /v1/threads/{id}/continue: after the branch's newest turn, after any turn ("continue
// from here"), an edited user turn or a regenerated answer (both new branches).

import { api, streamReply } from "/ui/api.js";
import { renderMarkdown } from "/ui/markdown.js";

const $ = (id) => document.getElementById(id);
const ROOT = "root";

function el(tag, cls, textValue) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (textValue !== undefined) node.textContent = textValue;
  return node;
}

function button(label, onClick, aria) {
  const b = el("button", "small", label);
  b.type = "button";
  if (aria) b.setAttribute("aria-label", aria);
  b.addEventListener("click", onClick);
  return b;
}

function preview(text, n = 48) {
  const flat = text.replace(/\s+/g, " ").trim();
  return flat.length > n ? `${flat.slice(0, n - 1)}…` : flat || "(empty)";
}

export class ThreadView {
  constructor({ guarded, onChange }) {
    this.guarded = guarded;
    this.onChange = onChange;
    this.thread = null;
    this.tree = null;
    this.byId = new Map();
    this.choice = new Map(); // parent id (or ROOT) -> the child shown
    this.anchor = null; // a turn picked with "continue from here"
    this.trimmed = null; // {leaf, dropped}: the last prompt left out its `dropped` oldest turns
    this.streaming = null;
    $("composer").addEventListener("submit", (e) => {
      e.preventDefault();
      this.send($("prompt").value);
    });
    $("prompt").addEventListener("keydown", (e) => {
      if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
        e.preventDefault();
        $("composer").requestSubmit();
      }
    });
    $("stop").addEventListener("click", () => this.stop());
    $("cancel-anchor").addEventListener("click", () => this.setAnchor(null));
  }

  async open(thread) {
    if (this.thread?.id !== thread.id) {
      this.choice = new Map();
      this.anchor = null;
      this.trimmed = null;
      $("stats").textContent = "";
    }
    this.thread = thread;
    await this.reload();
  }

  setThread(thread) {
    this.thread = thread;
    this.renderComposer();
  }

  close() {
    this.thread = null;
    this.tree = null;
    $("messages").replaceChildren();
    $("tree").replaceChildren();
    $("tree-box").hidden = true;
    $("composer").hidden = true;
    $("stats").textContent = "";
  }

  async reload() {
    const tree = await api.tree(this.thread.id);
    this.tree = tree;
    this.byId = new Map(tree.nodes.map((n) => [n.id, n]));
    this.render();
  }

  // ---- the path shown ------------------------------------------------------------------------

  children(id) {
    return id === ROOT ? this.tree.roots : this.byId.get(id)?.children ?? [];
  }

  chosen(id) {
    const kids = this.children(id);
    const picked = this.choice.get(id);
    return kids.includes(picked) ? picked : kids[0];
  }

  path() {
    const out = [];
    let at = this.chosen(ROOT);
    while (at) {
      out.push(this.byId.get(at));
      at = this.chosen(at);
    }
    return out;
  }

  // Shows the branch through `id` (and on to its first leaf).
  reveal(id) {
    let at = this.byId.get(id);
    while (at) {
      this.choice.set(at.parent_id ?? ROOT, at.id);
      at = at.parent_id ? this.byId.get(at.parent_id) : null;
    }
  }

  leaf() {
    const p = this.path();
    return p.length ? p[p.length - 1] : null;
  }

  // ---- rendering -----------------------------------------------------------------------------

  render() {
    const path = this.path();
    const ol = $("messages");
    ol.replaceChildren();
    const dropped = this.trimmed && this.trimmed.leaf === this.leaf()?.id ? this.trimmed.dropped : 0;
    let skipped = 0;
    for (const node of path) {
      const trimmed = node.role !== "system" && skipped < dropped;
      if (trimmed) skipped += 1;
      ol.append(this.message(node, trimmed));
    }
    if (!path.length) ol.append(el("li", "muted", "No messages yet: write the first one below."));
    this.renderTree(new Set(path.map((n) => n.id)));
    this.renderComposer();
  }

  message(node, trimmed) {
    const li = el("li", `msg ${node.role}`);
    li.dataset.id = node.id;
    const head = el("div", "msg-head");
    head.append(el("span", "role", node.role));
    const siblings = this.children(node.parent_id ?? ROOT);
    if (siblings.length > 1) head.append(this.branchNav(node, siblings));
    const info = `${node.tokens} tokens${node.on_thread ? "" : " · branch"}`;
    head.append(el("span", "muted small", info));
    if (trimmed) {
      const badge = el("span", "badge trimmed", "trimmed");
      badge.title = "left out of the last prompt by the trimming strategy";
      head.append(badge);
    }
    li.append(head);
    if (node.reasoning) {
      const details = el("details", "reasoning");
      details.append(el("summary", "", "Reasoning"), renderMarkdown(node.reasoning));
      li.append(details);
    }
    const body = el("div", "content");
    if (node.kind === "compaction") {
      // A summary that stands in for every turn before it: folded, as it is not a message.
      li.classList.add("compaction");
      const details = el("details", "compaction");
      details.append(el("summary", "", "Compacted: the conversation so far, summarised"));
      details.append(renderMarkdown(node.content));
      body.append(details);
    } else {
      body.append(renderMarkdown(node.content));
    }
    li.append(body);
    li.append(this.actions(node));
    return li;
  }

  branchNav(node, siblings) {
    const nav = el("span", "branch-nav");
    nav.setAttribute("role", "group");
    nav.setAttribute("aria-label", "Branches at this turn");
    const i = siblings.indexOf(node.id);
    const go = (j) => () => {
      this.choice.set(node.parent_id ?? ROOT, siblings[j]);
      this.anchor = null;
      this.render();
      document.querySelector(`.msg[data-id="${siblings[j]}"] .branch-nav button`)?.focus();
    };
    const prev = button("‹", go(i - 1), "Previous branch");
    prev.disabled = i === 0;
    const next = button("›", go(i + 1), "Next branch");
    next.disabled = i === siblings.length - 1;
    const where = el("span", "branch-pos", `${i + 1} / ${siblings.length}`);
    nav.append(prev, where, next);
    return nav;
  }

  actions(node) {
    const bar = el("div", "msg-actions");
    const open = this.thread.state === "open";
    if (!open) return bar;
    bar.append(button("Continue from here", () => this.setAnchor(node.id)));
    if (node.role === "user") bar.append(button("Edit", () => this.edit(node)));
    if (node.role === "assistant" && node.parent_id) {
      const question = this.byId.get(node.parent_id);
      if (question && question.role === "user") {
        bar.append(button("Regenerate", () => this.regenerate(question)));
      }
    }
    return bar;
  }

  renderTree(onPath) {
    const box = $("tree");
    box.replaceChildren();
    $("tree-box").hidden = !this.tree.nodes.length;
    const build = (ids) => {
      const ul = el("ul");
      for (const id of ids) {
        // A run of single continuations is one line; the tree branches where turns do.
        const li = el("li");
        let node = this.byId.get(id);
        const run = [node];
        while (node.children.length === 1) {
          node = this.byId.get(node.children[0]);
          run.push(node);
        }
        const line = el("div", "tree-run");
        for (const n of run) {
          const b = button(`${n.role === "user" ? "U" : n.role === "assistant" ? "A" : "S"}: ${preview(n.content, 24)}`, () => {
            this.reveal(n.id);
            this.anchor = null;
            this.render();
          });
          b.className = `tree-node ${n.role}${onPath.has(n.id) ? " on-path" : ""}`;
          b.title = preview(n.content, 200);
          if (onPath.has(n.id)) b.setAttribute("aria-current", "true");
          line.append(b);
        }
        li.append(line);
        if (node.children.length > 1) li.append(build(node.children));
        ul.append(li);
      }
      return ul;
    };
    if (this.tree.roots.length) box.append(build(this.tree.roots));
  }

  renderComposer() {
    const open = this.thread && this.thread.state === "open";
    $("composer").hidden = !this.thread;
    $("prompt").disabled = !open || !!this.streaming;
    $("send").disabled = !open || !!this.streaming;
    $("stop").disabled = !this.streaming;
    const anchor = $("anchor");
    $("cancel-anchor").hidden = !this.anchor;
    if (!open) {
      anchor.textContent = `This thread is ${this.thread?.state}: it takes no new messages.`;
    } else if (this.anchor) {
      const n = this.byId.get(this.anchor);
      anchor.textContent = `New branch after ${n.role} turn “${preview(n.content)}”.`;
    } else {
      const leaf = this.leaf();
      anchor.textContent =
        !leaf || leaf.id === this.tree.head
          ? "Replying in the thread."
          : "Continuing this branch (the thread itself stays as it is).";
    }
  }

  setAnchor(id) {
    this.anchor = id;
    this.renderComposer();
    $("prompt").focus();
  }

  // ---- replies -------------------------------------------------------------------------------

  after() {
    if (this.anchor) return this.anchor;
    const leaf = this.leaf();
    return leaf && leaf.id !== this.tree.head ? leaf.id : "head";
  }

  edit(node) {
    const li = document.querySelector(`.msg[data-id="${node.id}"]`);
    const form = el("form", "edit");
    const label = el("label", "", "Edited message (sent as a new branch)");
    const area = el("textarea");
    area.id = `edit-${node.id}`;
    label.htmlFor = area.id;
    area.value = node.content;
    area.rows = 3;
    const send = el("button", "", "Send as new branch");
    send.type = "submit";
    const cancel = button("Cancel", () => this.render());
    form.append(label, area, send, cancel);
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      this.send(area.value, node.parent_id ?? ROOT);
    });
    li.querySelector(".content").replaceWith(form);
    area.focus();
  }

  regenerate(question) {
    this.send(question.content, question.parent_id ?? ROOT);
  }

  async send(text, after = this.after()) {
    if (!text.trim() || this.streaming) return;
    const ol = $("messages");
    if (after !== "head" && after !== this.leaf()?.id) {
      // A new branch: show the path up to its parent, then the new turns.
      const upTo = after === ROOT ? [] : this.pathTo(after);
      ol.replaceChildren(...upTo.map((n) => this.message(n, false)));
    }
    const user = el("li", "msg user pending");
    user.append(el("div", "msg-head", "user"));
    const userBody = el("div", "content");
    userBody.append(renderMarkdown(text));
    user.append(userBody);
    const reply = el("li", "msg assistant pending streaming");
    reply.append(el("div", "msg-head", "assistant"));
    const replyBody = el("div", "content");
    reply.append(replyBody);
    reply.setAttribute("aria-busy", "true");
    ol.append(user, reply);
    reply.scrollIntoView({ block: "nearest" });

    const controller = new AbortController();
    this.streaming = { controller, responseId: null };
    this.renderComposer();
    $("prompt").value = "";
    $("stats").textContent = "Generating…";
    const sent = performance.now();
    let firstAt = null;
    let deltas = 0;
    let done = null;
    let reasoning = "";
    let answer = "";
    try {
      await streamReply(
        this.thread.id,
        { input: [{ role: "user", content: text }], after },
        (name, data) => {
          if (name === "reply.started") this.streaming.responseId = data.response_id;
          else if (name === "reply.delta") {
            if (firstAt === null) firstAt = performance.now();
            deltas += 1;
            reply.dataset.deltas = String(deltas);
            if (data.reasoning) reasoning += data.text;
            else answer += data.text;
            replyBody.textContent = answer;
          } else if (name === "reply.done") done = data.reply;
          else if (name === "reply.error") throw new Error(data.message);
        },
        controller.signal,
      );
    } catch (err) {
      if (err.name !== "AbortError") {
        this.streaming = null;
        $("stats").textContent = "";
        this.renderComposer();
        await this.guarded(() => Promise.reject(err), $("thread-error"));
        await this.guarded(() => this.reload(), $("thread-error"));
        return;
      }
    }
    const stopped = !done;
    const responseId = this.streaming.responseId;
    this.streaming = null;
    reply.classList.remove("streaming");
    reply.removeAttribute("aria-busy");
    if (stopped) {
      $("stats").textContent = "Stopped. Waiting for the reply to be stored…";
      const status = await this.waitStored(responseId);
      $("stats").textContent = `Stopped: the reply was stored as ${status}.`;
    } else {
      this.showStats(done, sent, firstAt);
    }
    this.anchor = null;
    await this.guarded(async () => {
      await this.reload();
      const turn = done?.turn_id ?? this.findResponseTurn(responseId);
      if (turn && this.byId.has(turn)) {
        this.reveal(turn);
        if (done) this.trimmed = { leaf: turn, dropped: done.messages_dropped };
        this.render();
      }
      if (this.onChange) await this.onChange();
    }, $("thread-error"));
    $("prompt").focus();
  }

  findResponseTurn(responseId) {
    if (!responseId) return null;
    return this.tree.nodes.find((n) => n.response_id === responseId)?.id;
  }

  pathTo(id) {
    const out = [];
    let at = this.byId.get(id);
    while (at) {
      out.unshift(at);
      at = at.parent_id ? this.byId.get(at.parent_id) : null;
    }
    return out;
  }

  async waitStored(responseId) {
    if (!responseId) return "not stored";
    for (let i = 0; i < 100; i += 1) {
      try {
        const r = await api.response(responseId);
        if (r.status !== "in_progress") return r.status;
      } catch {
        /* not there yet */
      }
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    return "unknown (still being stored)";
  }

  showStats(r, sent, firstAt) {
    const u = r.usage;
    const parts = [
      `${r.status}`,
      `prompt ${u.prompt_tokens} tokens (${u.cached_tokens} cached)`,
      `reply ${u.completion_tokens} tokens`,
    ];
    const ttft = r.time_to_first_token_s;
    if (ttft != null) parts.push(`TTFT ${(ttft * 1000).toFixed(0)} ms`);
    else if (firstAt !== null) parts.push(`TTFT ${(firstAt - sent).toFixed(0)} ms (page)`);
    const rate = r.decode_tokens_per_s;
    if (rate != null) parts.push(`${rate.toFixed(1)} tok/s`);
    const dropped = r.messages_dropped;
    parts.push(dropped ? `${dropped} older messages trimmed from the prompt` : "nothing trimmed");
    if (r.branch) parts.push("new branch");
    $("stats").textContent = parts.join(" · ");
  }

  stop() {
    if (this.streaming) this.streaming.controller.abort();
  }
}
