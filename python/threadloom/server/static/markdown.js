// A small, safe markdown renderer: it builds DOM nodes and only ever sets text with
// textContent, so no text from a conversation can become markup or script. Links keep their
// href only for http(s) URLs (opened with rel="noopener noreferrer"); any other link is shown
// as inert text. Supported: paragraphs, headings, fenced and inline code, bold, italic,
// strike-through, links, bullet and numbered lists, block quotes and rules.

const SAFE_URL = /^https?:\/\/[^\s]+$/i;

function el(tag, cls) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  return node;
}

export function safeHref(url) {
  const trimmed = url.trim();
  if (!SAFE_URL.test(trimmed)) return null;
  try {
    const parsed = new URL(trimmed);
    return parsed.protocol === "http:" || parsed.protocol === "https:" ? parsed.href : null;
  } catch {
    return null;
  }
}

// Inline spans: `code`, **bold**, *italic* / _italic_, ~~strike~~, [text](url), bare URLs.
const INLINE = [
  { re: /`([^`]+)`/, make: (m) => text(el("code"), m[1]) },
  { re: /\*\*([^*]+)\*\*|__([^_]+)__/, make: (m) => inline(el("strong"), m[1] ?? m[2]) },
  { re: /\*([^*\s][^*]*)\*|\b_([^_\s][^_]*)_\b/, make: (m) => inline(el("em"), m[1] ?? m[2]) },
  { re: /~~([^~]+)~~/, make: (m) => inline(el("del"), m[1]) },
  { re: /\[([^\]]+)\]\(([^)\s]*)\)/, make: (m) => link(m[1], m[2]) },
  { re: /\bhttps?:\/\/[^\s<>()]+[^\s<>().,;:!?'"]/, make: (m) => link(m[0], m[0]) },
];

function text(node, value) {
  node.textContent = value;
  return node;
}

function link(label, url) {
  const href = safeHref(url);
  if (href === null) {
    // Inert: the label and the refused target as plain text, nothing to click.
    const span = el("span", "inert-link");
    span.title = "link not followed: only http and https links are";
    span.textContent = `${label} (${url})`;
    return span;
  }
  const a = el("a");
  a.href = href;
  a.rel = "noopener noreferrer nofollow";
  a.target = "_blank";
  a.textContent = label;
  return a;
}

function inline(parent, source) {
  let rest = source;
  while (rest.length) {
    let best = null;
    for (const rule of INLINE) {
      const m = rule.re.exec(rest);
      if (m && (best === null || m.index < best.m.index)) best = { m, rule };
    }
    if (best === null) {
      parent.append(document.createTextNode(rest));
      break;
    }
    if (best.m.index > 0) parent.append(document.createTextNode(rest.slice(0, best.m.index)));
    parent.append(best.rule.make(best.m));
    rest = rest.slice(best.m.index + best.m[0].length);
  }
  return parent;
}

function paragraph(lines) {
  const p = el("p");
  lines.forEach((line, i) => {
    if (i) p.append(el("br"));
    inline(p, line);
  });
  return p;
}

const FENCE = /^\s*(```|~~~)\s*([\w+-]*)\s*$/;
const HEADING = /^(#{1,6})\s+(.*)$/;
const BULLET = /^\s*[-*+]\s+(.*)$/;
const NUMBERED = /^\s*(\d{1,9})[.)]\s+(.*)$/;
const QUOTE = /^\s*>\s?(.*)$/;
const RULE = /^\s*([-*_])(\s*\1){2,}\s*$/;

// Renders `source` into a new DocumentFragment.
export function renderMarkdown(source) {
  const out = document.createDocumentFragment();
  const lines = String(source).replace(/\r\n?/g, "\n").split("\n");
  let i = 0;
  let para = [];
  const flush = () => {
    if (para.length) out.append(paragraph(para));
    para = [];
  };
  while (i < lines.length) {
    const line = lines[i];
    const fence = FENCE.exec(line);
    if (fence) {
      flush();
      const body = [];
      i += 1;
      while (i < lines.length && !lines[i].trim().startsWith(fence[1])) body.push(lines[(i += 1) - 1]);
      i += 1;
      const pre = el("pre");
      const code = text(el("code"), body.join("\n"));
      if (fence[2]) code.dataset.lang = fence[2];
      pre.append(code);
      out.append(pre);
      continue;
    }
    if (!line.trim()) {
      flush();
      i += 1;
      continue;
    }
    const heading = HEADING.exec(line);
    if (heading) {
      flush();
      // Headings inside a message stay below the page's own (h1-h2).
      const level = Math.min(6, heading[1].length + 2);
      out.append(inline(el(`h${level}`), heading[2]));
      i += 1;
      continue;
    }
    if (RULE.test(line)) {
      flush();
      out.append(el("hr"));
      i += 1;
      continue;
    }
    const listKind = BULLET.test(line) ? BULLET : NUMBERED.test(line) ? NUMBERED : null;
    if (listKind) {
      flush();
      const list = el(listKind === BULLET ? "ul" : "ol");
      const first = NUMBERED.exec(line);
      if (listKind === NUMBERED && first && first[1] !== "1") list.start = Number(first[1]);
      while (i < lines.length && listKind.test(lines[i])) {
        const m = listKind.exec(lines[i]);
        list.append(inline(el("li"), m[m.length - 1]));
        i += 1;
      }
      out.append(list);
      continue;
    }
    if (QUOTE.test(line)) {
      flush();
      const quoted = [];
      while (i < lines.length && QUOTE.test(lines[i])) quoted.push(QUOTE.exec(lines[(i += 1) - 1])[1]);
      const block = el("blockquote");
      block.append(renderMarkdown(quoted.join("\n")));
      out.append(block);
      continue;
    }
    para.push(line);
    i += 1;
  }
  flush();
  return out;
}
