// A small, SAFE Markdown renderer.
//
// Model and user text never reaches the DOM as HTML: the source is split into blocks and
// inline spans by hand, and every piece of text is inserted with textContent / text nodes
// (which escapes everything). Nothing here ever assigns innerHTML. Links are created only for
// http(s) URLs, with rel="noopener noreferrer"; anything else stays literal text.
//
// Supported: paragraphs (single newlines become line breaks), ATX headings, **bold**,
// *italic*/_italic_, ~~strike~~, `inline code`, fenced code blocks (``` or ~~~) with a copy
// button, bullet and numbered lists, > quotes, --- rules, [links](https://…) and bare URLs.

const FENCE_RE = /^ {0,3}(`{3,}|~{3,})\s*([\w+#.-]*)[^\n]*$/;
const HEADING_RE = /^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$/;
const HR_RE = /^ {0,3}([-*_])(\s*\1){2,}\s*$/;
const UL_RE = /^(\s*)[-*+]\s+(.*)$/;
const OL_RE = /^(\s*)(\d{1,9})[.)]\s+(.*)$/;
const QUOTE_RE = /^ {0,3}>\s?(.*)$/;

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

export function safeHttpUrl(raw) {
  try {
    const url = new URL(raw);
    if (url.protocol === "http:" || url.protocol === "https:") return url.href;
  } catch (_) {
    /* not a URL */
  }
  return null;
}

function link(href, children) {
  const a = el("a");
  a.href = href;
  a.rel = "noopener noreferrer nofollow";
  a.target = "_blank";
  for (const child of children) a.append(child);
  return a;
}

// --- Inline ---------------------------------------------------------------------------------

const INLINE_RE = new RegExp(
  [
    "(`+)([^`]|[^`][\\s\\S]*?[^`])\\1(?!`)", // 1,2 code span
    "\\[([^\\]\\n]+)\\]\\(\\s*([^()\\s]+)\\s*\\)", // 3,4 link
    "\\*\\*(?=\\S)([\\s\\S]*?\\S)\\*\\*", // 5 bold
    "__(?=\\S)([\\s\\S]*?\\S)__", // 6 bold
    "~~(?=\\S)([\\s\\S]*?\\S)~~", // 7 strike
    "\\*(?=[^\\s*])([^*]*?[^\\s*])\\*", // 8 italic (single char handled below)
    "\\*([^\\s*])\\*", // 9 italic, one character
    "(?<![\\w])_(?=[^\\s_])([^_]*?[^\\s_]|[^\\s_])_(?![\\w])", // 10 italic
    "(https?:\\/\\/[^\\s<>\"'`]*[^\\s<>\"'`.,;:!?)\\]])", // 11 bare URL
  ].join("|"),
);

/** Append the inline Markdown of `text` to `parent` as safe DOM nodes. */
export function renderInline(text, parent, depth = 0) {
  let rest = text;
  while (rest.length) {
    const m = depth > 8 ? null : INLINE_RE.exec(rest);
    if (!m) {
      parent.append(document.createTextNode(rest));
      return;
    }
    if (m.index > 0) parent.append(document.createTextNode(rest.slice(0, m.index)));
    if (m[1] !== undefined) {
      parent.append(el("code", "inline-code", m[2].replace(/^ (.*) $/s, "$1")));
    } else if (m[3] !== undefined) {
      const href = safeHttpUrl(m[4]);
      if (href) {
        const label = document.createDocumentFragment();
        renderInline(m[3], label, depth + 1);
        parent.append(link(href, [label]));
      } else {
        parent.append(document.createTextNode(m[0]));
      }
    } else if (m[5] !== undefined || m[6] !== undefined) {
      const strong = el("strong");
      renderInline(m[5] ?? m[6], strong, depth + 1);
      parent.append(strong);
    } else if (m[7] !== undefined) {
      const del = el("del");
      renderInline(m[7], del, depth + 1);
      parent.append(del);
    } else if (m[8] !== undefined || m[9] !== undefined || m[10] !== undefined) {
      const em = el("em");
      renderInline(m[8] ?? m[9] ?? m[10], em, depth + 1);
      parent.append(em);
    } else if (m[11] !== undefined) {
      const href = safeHttpUrl(m[11]);
      parent.append(href ? link(href, [document.createTextNode(m[11])]) : document.createTextNode(m[11]));
    }
    rest = rest.slice(m.index + m[0].length);
  }
}

function renderLines(lines, parent) {
  lines.forEach((line, i) => {
    if (i > 0) parent.append(el("br"));
    renderInline(line, parent);
  });
}

// --- Code blocks ----------------------------------------------------------------------------

async function copyText(text) {
  if (navigator.clipboard && window.isSecureContext) {
    try {
      await navigator.clipboard.writeText(text);
      return true;
    } catch (_) {
      /* fall back below */
    }
  }
  const area = el("textarea");
  area.value = text;
  area.setAttribute("readonly", "");
  area.className = "offscreen";
  document.body.append(area);
  area.select();
  let ok = false;
  try {
    ok = document.execCommand("copy");
  } catch (_) {
    ok = false;
  }
  area.remove();
  return ok;
}

export function codeBlock(code, lang) {
  const wrap = el("div", "code-block");
  const head = el("div", "code-head");
  head.append(el("span", "code-lang", lang || "text"));
  const button = el("button", "btn ghost small copy-btn", "Copy");
  button.type = "button";
  button.setAttribute("aria-label", `Copy ${lang || "code"} to clipboard`);
  button.addEventListener("click", async () => {
    const ok = await copyText(code);
    button.textContent = ok ? "Copied" : "Copy failed";
    setTimeout(() => {
      button.textContent = "Copy";
    }, 1500);
  });
  head.append(button);
  const pre = el("pre");
  const codeEl = el("code", lang ? `lang-${lang.replace(/[^\w-]/g, "")}` : "", code);
  pre.append(codeEl);
  wrap.append(head, pre);
  return wrap;
}

// --- Blocks ---------------------------------------------------------------------------------

function isBlockStart(line) {
  return FENCE_RE.test(line) || HEADING_RE.test(line) || HR_RE.test(line) || QUOTE_RE.test(line) ||
    UL_RE.test(line) || OL_RE.test(line);
}

function renderBlocks(lines, parent, depth) {
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    if (!line.trim()) {
      i += 1;
      continue;
    }
    let m = FENCE_RE.exec(line);
    if (m) {
      const fence = m[1];
      const body = [];
      i += 1;
      while (i < lines.length && !(lines[i].trim().startsWith(fence[0].repeat(fence.length)) &&
        lines[i].trim().replace(new RegExp(`^\\${fence[0]}+`), "").trim() === "")) {
        body.push(lines[i]);
        i += 1;
      }
      i += 1; // closing fence (or end of input)
      parent.append(codeBlock(body.join("\n"), m[2]));
      continue;
    }
    m = HEADING_RE.exec(line);
    if (m) {
      const h = el(`h${Math.min(6, m[1].length + 1)}`, "md-heading");
      renderInline(m[2], h);
      parent.append(h);
      i += 1;
      continue;
    }
    if (HR_RE.test(line)) {
      parent.append(el("hr"));
      i += 1;
      continue;
    }
    if (QUOTE_RE.test(line) && depth < 4) {
      const inner = [];
      while (i < lines.length && lines[i].trim() && QUOTE_RE.test(lines[i])) {
        inner.push(QUOTE_RE.exec(lines[i])[1]);
        i += 1;
      }
      const quote = el("blockquote");
      renderBlocks(inner, quote, depth + 1);
      parent.append(quote);
      continue;
    }
    const ul = UL_RE.exec(line);
    const ol = ul ? null : OL_RE.exec(line);
    if (ul || ol) {
      const ordered = Boolean(ol);
      const list = el(ordered ? "ol" : "ul");
      if (ordered && ol[2] !== "1") list.start = Number(ol[2]);
      const itemRe = ordered ? OL_RE : UL_RE;
      let item = null;
      let itemLines = [];
      const flush = () => {
        if (!item) return;
        renderLines(itemLines, item);
        list.append(item);
      };
      while (i < lines.length) {
        const cur = lines[i];
        const im = itemRe.exec(cur);
        if (im) {
          flush();
          item = el("li");
          itemLines = [ordered ? im[3] : im[2]];
        } else if (cur.trim() && /^\s+/.test(cur) && item) {
          itemLines.push(cur.trim());
        } else if (cur.trim() && item && !isBlockStart(cur) && !/^\s*$/.test(lines[i - 1] || "")) {
          itemLines.push(cur.trim()); // lazy continuation
        } else {
          break;
        }
        i += 1;
      }
      flush();
      parent.append(list);
      continue;
    }
    // Paragraph: until a blank line or the start of another block.
    const para = [];
    while (i < lines.length && lines[i].trim() && (para.length === 0 || !isBlockStart(lines[i]))) {
      para.push(lines[i]);
      i += 1;
    }
    const p = el("p");
    renderLines(para, p);
    parent.append(p);
  }
}

/** Render Markdown source to a DocumentFragment of safe DOM nodes. */
export function renderMarkdown(source) {
  const fragment = document.createDocumentFragment();
  renderBlocks(String(source ?? "").replace(/\r\n?/g, "\n").split("\n"), fragment, 0);
  return fragment;
}

/**
 * Where `text` can be cut so that everything before the cut is complete Markdown blocks
 * (after a blank line outside any code fence). Returns the cut offset, or 0.
 */
export function stableBoundary(text) {
  let inFence = null;
  let offset = 0;
  let cut = 0;
  const lines = text.split("\n");
  for (let n = 0; n < lines.length - 1; n += 1) {
    const line = lines[n];
    const m = FENCE_RE.exec(line);
    if (m) {
      if (!inFence) inFence = m[1][0];
      else if (line.trim()[0] === inFence) inFence = null;
    }
    offset += line.length + 1;
    if (!inFence && !line.trim() && n > 0 && !/^\s/.test(lines[n + 1] || "x")) cut = offset;
  }
  return cut;
}
