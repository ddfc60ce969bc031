// The server's JSON API, as the page uses it. The API key lives in sessionStorage only (gone
// when the tab closes) and goes out as `Authorization: Bearer`.

const KEY = "threadloom.apiKey";

export class AuthError extends Error {}

export class ApiError extends Error {
  constructor(status, body) {
    super(body?.error?.message || `HTTP ${status}`);
    this.status = status;
    this.param = body?.error?.param ?? null;
  }
}

export function apiKey() {
  return sessionStorage.getItem(KEY);
}

export function setApiKey(key) {
  if (key) sessionStorage.setItem(KEY, key);
  else sessionStorage.removeItem(KEY);
}

function headers(json) {
  const h = {};
  const key = apiKey();
  if (key) h.Authorization = `Bearer ${key}`;
  if (json) h["Content-Type"] = "application/json";
  return h;
}

async function check(response) {
  if (response.status === 401) throw new AuthError("sign-in needed");
  if (!response.ok) {
    let body = null;
    try {
      body = await response.json();
    } catch {
      /* not JSON */
    }
    throw new ApiError(response.status, body);
  }
  return response;
}

export async function call(method, path, body) {
  const response = await fetch(path, {
    method,
    headers: headers(body !== undefined),
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  await check(response);
  return response.json();
}

export const api = {
  listThreads: ({ hidden, cursor, limit = 20 }) => {
    const q = new URLSearchParams({ limit: String(limit), visible_in_ui: String(!hidden) });
    if (cursor) q.set("cursor", cursor);
    return call("GET", `/v1/threads?${q}`);
  },
  createThread: (id, metadata) => call("POST", "/v1/threads", { ...(id ? { id } : {}), metadata }),
  updateThread: (id, patch) => call("PATCH", `/v1/threads/${encodeURIComponent(id)}`, patch),
  deleteThread: (id) => call("DELETE", `/v1/threads/${encodeURIComponent(id)}`),
  getThread: (id) => call("GET", `/v1/threads/${encodeURIComponent(id)}`),
  tree: (id) => call("GET", `/v1/threads/${encodeURIComponent(id)}/tree`),
  response: (id) => call("GET", `/v1/responses/${encodeURIComponent(id)}`),
};

// Streams a reply (`POST /v1/threads/{id}/continue` with `stream: true`), calling
// `on(eventName, data)` for each server-sent event. `signal` aborts it (the stop button): the
// server then stores what was generated as an incomplete reply.
export async function streamReply(threadId, body, on, signal) {
  const response = await fetch(`/v1/threads/${encodeURIComponent(threadId)}/continue`, {
    method: "POST",
    headers: headers(true),
    body: JSON.stringify({ ...body, stream: true }),
    signal,
  });
  await check(response);
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let name = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event: ")) name = line.slice(7);
        else if (line.startsWith("data: ")) data.push(line.slice(6));
      }
      if (data.length) on(name, JSON.parse(data.join("\n")));
    }
  }
}
