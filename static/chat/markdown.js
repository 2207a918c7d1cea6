// The chat page's Markdown renderer: markdown-it (CommonMark + GFM tables/strikethrough) turns
// the source into HTML, DOMPurify turns that HTML into inert DOM nodes, and a short walk gives
// the nodes the page's own shape (code blocks with a copy button and highlight.js colours,
// headings one level down, links that open in a new tab without a referrer). The libraries are
// vendored in static/vendor/
// (`make vendor`, pinned in frontend/package.json): no CDN, no eval, nothing inline, so the
// page's strict CSP holds.
//
// Safety, in layers: markdown-it runs with `html: false` (raw HTML in model or user text is shown
// as text, never parsed), no images (`![alt](url)` stays text and a link: a remote image would
// leak the reader's address, and the renderer never had them) and a link validator that admits
// only absolute http(s) URLs; DOMPurify then removes anything executable that could remain and
// returns a DocumentFragment (parsed in an inert document: nothing loads or runs while it is
// built); the walk finally re-checks every href. The page never assigns innerHTML.
//
// Highlighting: a fenced block whose language highlight.js knows (its common languages; no
// guessing, which would run every grammar) and that is at most HIGHLIGHT_MAX_CHARS long is
// coloured: highlight.js's HTML (spans with hljs-* classes, the code escaped) goes through
// DOMPurify again, admitting only <span class>. Larger or unknown blocks stay plain text, which
// keeps rendering linear in the input.
//
// (Until the "production fidelity" issue this was a hand-written regex parser that took ~6 s
// for 100,000 characters of `**a `. tests/browser/test_markdown.py bounds such inputs.)

import MarkdownIt from "../vendor/markdown-it/markdown-it.min.js";
import DOMPurify from "../vendor/dompurify/purify.es.js";
import hljs from "../vendor/highlight.js/highlight.min.js";

const FENCE_RE = /^ {0,3}(`{3,}|~{3,})\s*([\w+#.-]*)[^\n]*$/;

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

const md = new MarkdownIt({ html: false, linkify: true, breaks: true, typographer: false });
md.disable("image");
// Bare URLs only with their scheme (no "example.com" guessing, no e-mail addresses).
md.linkify.set({ fuzzyLink: false, fuzzyEmail: false, fuzzyIP: false });
md.validateLink = (url) => safeHttpUrl(url) !== null;

const PURIFY = {
  RETURN_DOM_FRAGMENT: true,
  ALLOWED_URI_REGEXP: /^https?:/i,
  FORBID_TAGS: ["img", "style", "form", "input", "button", "textarea", "select", "iframe", "object", "embed", "svg", "math"],
  FORBID_ATTR: ["style", "id", "name"],
};

// --- Code blocks ----------------------------------------------------------------------------

const HIGHLIGHT_MAX_CHARS = 20_000;
const HIGHLIGHT_PURIFY = { RETURN_DOM_FRAGMENT: true, ALLOWED_TAGS: ["span"], ALLOWED_ATTR: ["class"] };

/** `code` as highlight.js colours it (a fragment of spans and text), or null (plain text). */
export function highlightCode(code, lang) {
  const language = lang && code.length <= HIGHLIGHT_MAX_CHARS ? hljs.getLanguage(lang) : null;
  if (!language) return null;
  try {
    const html = hljs.highlight(code, { language: lang, ignoreIllegals: true }).value;
    return DOMPurify.sanitize(html, HIGHLIGHT_PURIFY);
  } catch (_) {
    return null;
  }
}

export async function copyText(text) {
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
  const codeEl = el("code", lang ? `lang-${lang.replace(/[^\w-]/g, "")}` : "");
  const colours = highlightCode(code, lang);
  if (colours) {
    codeEl.classList.add("hljs");
    codeEl.append(colours);
  } else {
    codeEl.textContent = code;
  }
  pre.append(codeEl);
  wrap.append(head, pre);
  return wrap;
}


// --- Shaping the sanitized nodes -------------------------------------------------------------

function replaceWith(node, replacement) {
  node.parentNode.replaceChild(replacement, node);
}

function unwrap(node) {
  const parent = node.parentNode;
  while (node.firstChild) parent.insertBefore(node.firstChild, node);
  parent.removeChild(node);
}

function shape(fragment) {
  for (const pre of [...fragment.querySelectorAll("pre")]) {
    const code = pre.querySelector("code");
    const lang = (code?.className.match(/(?:^|\s)language-([\w+#.-]+)/) || [])[1] || "";
    replaceWith(pre, codeBlock((code || pre).textContent.replace(/\n$/, ""), lang));
  }
  for (const code of fragment.querySelectorAll("code:not(.code-block code)")) code.className = "inline-code";
  for (const table of [...fragment.querySelectorAll("table")]) {
    const wrap = el("div", "md-table-wrap"); // a wide table scrolls, the message does not
    replaceWith(table, wrap);
    wrap.append(table);
  }
  for (const h of [...fragment.querySelectorAll("h1, h2, h3, h4, h5, h6")]) {
    const level = Math.min(6, Number(h.tagName[1]) + 1);
    const heading = el(`h${level}`, "md-heading");
    while (h.firstChild) heading.append(h.firstChild);
    replaceWith(h, heading);
  }
  for (const a of [...fragment.querySelectorAll("a")]) {
    const href = safeHttpUrl(a.getAttribute("href") || "");
    if (!href) {
      unwrap(a);
      continue;
    }
    a.href = href;
    a.rel = "noopener noreferrer nofollow";
    a.target = "_blank";
    a.removeAttribute("title");
  }
  return fragment;
}

/** Render Markdown source to a DocumentFragment of safe DOM nodes. */
export function renderMarkdown(source) {
  const text = String(source ?? "");
  if (!text.trim()) return document.createDocumentFragment();
  return shape(DOMPurify.sanitize(md.render(text), PURIFY));
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
