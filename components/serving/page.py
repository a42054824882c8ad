"""The predictor's web page: a person pastes or opens a Terms of Service and reads the same
report as `tosguard analyze --html` (components/report.py renders both).

- ``GET /`` answers this page when the request's Accept header rates text/html above
  application/json (a browser); probes, curl and HTTP libraries (no Accept, ``*/*``) keep
  getting the JSON liveness answer.
- The page posts ``{"document": text, "name": label}`` to ``POST /report`` (relative to the
  page, so it also works behind a path prefix); the answer is the report's body as an HTML
  fragment (report.html_body: every piece of the document escaped there), which the page
  puts in place. ``/report`` has the validation, limits and bearer token of the other
  scoring routes; its errors are JSON ``{"error": message}`` like theirs.
- One self-contained response: the stylesheet and script are inline and allowed by their
  SHA-256 in the Content-Security-Policy; nothing else may run or load (no external
  assets, no inline event handlers). Only inline style attributes are allowed, because the
  report colours its highlights with them.
- Files are read in the browser: .txt and .md as they are, .html through the browser's
  inert DOMParser with the same elements dropped as documents.py drops (scripts, styles,
  navigation...). PDF is left to `tosguard analyze`: its text layer is read server-side
  there and nowhere else.
- With a bearer token configured the page shows a token field; the token stays in the
  tab's sessionStorage and goes out only as the Authorization header of ``/report``.
"""
from __future__ import annotations

import base64
import hashlib
import html
import re

from tosguard.components.documents import _BLOCK, _SKIP
from tosguard.components.report import STYLE, html_body
from tosguard.components.serving.validate import MAX_BODY_BYTES, RequestError, check_text, validate_document

REPORT_PATH = "/report"
MAX_NAME_CHARS = 200
PASTED = "pasted text"

PAGE_STYLE = """form.ask{max-width:1100px;margin:24px auto 0;padding:20px 28px;background:#fff;border-radius:6px;
box-shadow:0 1px 3px #0002} form.ask h1{margin:0 0 4px;font-size:20px;color:#264653}
form.ask textarea{box-sizing:border-box;width:100%;min-height:14em;padding:8px;font:14px/1.45 ui-monospace,monospace}
form.ask .row{display:flex;flex-wrap:wrap;gap:16px;align-items:center;margin-top:10px}
form.ask button{background:#264653;color:#fff;border:0;border-radius:4px;padding:8px 22px;font-size:15px;cursor:pointer}
form.ask button:disabled{opacity:.6;cursor:wait} .hint{color:#666;font-size:13px;margin:4px 0 8px}
#status{min-height:1.5em;margin:10px 0 0} #status[data-kind=error]{color:#b00020;font-weight:600}
#report{margin-top:24px}
"""

# Inline and constant: the CSP allows exactly this text by its hash. Text reaches the DOM
# through textContent and .value only; the one innerHTML is the server's escaped report.
SCRIPT = r"""
"use strict";
(() => {
  const form = document.getElementById("ask");
  const text = document.getElementById("tos-text");
  const file = document.getElementById("tos-file");
  const token = document.getElementById("tos-token");  // absent when the server needs none
  const button = document.getElementById("analyze");
  const status = document.getElementById("status");
  const report = document.getElementById("report");
  const maxBytes = Number(form.dataset.maxBytes);
  const skip = new Set(form.dataset.skip.split(" "));
  const block = new Set(form.dataset.block.split(" "));
  const TOKEN_KEY = "tosguard-token";
  let name = "pasted text";

  const say = (message, kind) => { status.textContent = message; status.dataset.kind = kind || ""; };

  if (token) {
    token.value = sessionStorage.getItem(TOKEN_KEY) || "";
    token.addEventListener("input", () => sessionStorage.setItem(TOKEN_KEY, token.value.trim()));
  }
  text.addEventListener("paste", () => { name = "pasted text"; });

  // The readable text of an HTML file, as documents.py reads it: skipped elements dropped,
  // block elements on lines of their own, <main> or <article> preferred. DOMParser builds
  // an inert document: nothing in it runs or loads. Iterative, so deep nesting is no risk.
  function htmlText(markup) {
    const parsed = new DOMParser().parseFromString(markup, "text/html");
    const main = parsed.querySelector("main, article");
    const root = main && main.textContent.trim() ? main : parsed.body;
    const out = [], stack = root ? [root] : [];
    while (stack.length) {
      const item = stack.pop();
      if (typeof item === "string") { out.push(item); continue; }
      if (item.nodeType === Node.TEXT_NODE) { out.push(item.data); continue; }
      if (item.nodeType !== Node.ELEMENT_NODE || skip.has(item.localName)) continue;
      if (block.has(item.localName)) { out.push("\n"); stack.push("\n"); }
      for (let child = item.lastChild; child; child = child.previousSibling) stack.push(child);
    }
    return out.join("").split("\n").map((line) => line.replace(/[ \t\r\f\v]+/g, " ").trim())
      .filter(Boolean).join("\n\n");
  }

  file.addEventListener("change", async () => {
    const chosen = file.files[0];
    if (!chosen) return;
    if (chosen.size > maxBytes) {
      say(`${chosen.name} has ${chosen.size} bytes; this server takes at most ${maxBytes}.`, "error");
      return;
    }
    try {
      const raw = await chosen.text();
      if (raw.startsWith("%PDF-")) {
        say("PDF files are not read here: run `tosguard analyze FILE.pdf`, or paste the text.", "error");
        return;
      }
      const isHtml = /\.html?$/i.test(chosen.name) || chosen.type === "text/html"
        || /^\s*(<!doctype html|<html)/i.test(raw.slice(0, 200));
      text.value = isHtml ? htmlText(raw) : raw;
      name = chosen.name;
      say(`Read ${chosen.name}. Press Analyze.`);
    } catch (error) {
      say(`Could not read ${chosen.name}: ${error.message}`, "error");
    } finally {
      file.value = "";  // choosing the same file again fires change again
    }
  });

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (!text.value.trim()) { say("Paste a Terms of Service or open a file first.", "error"); return; }
    const body = JSON.stringify({document: text.value, name});
    const size = new Blob([body]).size;
    if (size > maxBytes) {
      say(`The document is ${size} bytes; this server takes at most ${maxBytes}.`, "error");
      return;
    }
    const headers = {"Content-Type": "application/json", "Accept": "text/html"};
    if (token && token.value.trim()) headers.Authorization = "Bearer " + token.value.trim();
    button.disabled = true;
    report.replaceChildren();
    report.dataset.state = "busy";
    report.setAttribute("aria-busy", "true");
    say("Analyzing…");
    try {
      const response = await fetch("report", {method: "POST", headers, body, cache: "no-store"});
      const answer = await response.text();
      if (!response.ok) {
        let message = answer;
        try { message = JSON.parse(answer).error || answer; } catch (_) { /* not JSON: show it as it came */ }
        if ((response.status === 401 || response.status === 403) && token) {
          message += ". Enter the access token of this server.";
          token.focus();
        }
        report.dataset.state = "error";
        say(`Error ${response.status}: ${message}`, "error");
        return;
      }
      report.innerHTML = answer;  // the server's report: document text escaped there
      report.dataset.state = "done";
      const verdict = document.getElementById("verdict");
      say(verdict ? verdict.textContent + "." : "Done.");
      report.scrollIntoView({block: "start"});
    } catch (error) {
      report.dataset.state = "error";
      say(`The request failed: ${error.message}`, "error");
    } finally {
      button.disabled = false;
      report.removeAttribute("aria-busy");
    }
  });
})();
"""

_TOKEN_FIELD = """<label>Access token <input type="password" id="tos-token" autocomplete="off" spellcheck="false"
 size="28"></label>"""


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii") + "'"


_CSS = STYLE + PAGE_STYLE
PAGE_CSP = "; ".join([
    "default-src 'none'",
    f"script-src {_sha256(SCRIPT)}",
    f"style-src {_sha256(_CSS)}",
    "style-src-attr 'unsafe-inline'",  # the report's highlight colours
    "connect-src 'self'",
    "base-uri 'none'",
    "form-action 'none'",  # the script posts the form; without it nothing is submitted
    "frame-ancestors 'none'",
])
REPORT_CSP = "default-src 'none'; sandbox"  # a fragment: it runs and loads nothing on its own
_COMMON = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"),
           (b"cache-control", b"no-store")]


def page(token_required: bool) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """(the page, its headers)."""
    token_field = _TOKEN_FIELD if token_required else ""
    token_hint = (" This server needs an access token: it is kept in this tab only." if token_required else "")
    body = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>tosguard: check a Terms of Service</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>{_CSS}</style></head><body>
<form id="ask" class="ask" data-max-bytes="{MAX_BODY_BYTES}" data-skip="{html.escape(" ".join(sorted(_SKIP)))}"
 data-block="{html.escape(" ".join(sorted(_BLOCK)))}">
<h1>tosguard: is this Terms of Service fair?</h1>
<p class="hint">Paste the text, or open a .txt, .md or .html file, then press Analyze. Potentially unfair
clauses are highlighted in the colour of their category. The text goes to this server only.{token_hint}</p>
<label for="tos-text">Terms of Service</label>
<textarea id="tos-text" spellcheck="false" placeholder="Paste a Terms of Service here"></textarea>
<div class="row"><label>Or open a file <input type="file" id="tos-file"
 accept=".txt,.md,.markdown,.html,.htm,text/plain,text/markdown,text/html"></label>
{token_field}<button type="submit" id="analyze">Analyze</button></div>
<p id="status" role="status" aria-live="polite"></p>
</form>
<div id="report" data-state="empty"></div>
<script>{SCRIPT}</script>
</body></html>
"""
    headers = [(b"content-security-policy", PAGE_CSP.encode()), (b"x-frame-options", b"DENY"),
               (b"vary", b"Accept"), *_COMMON]
    return body.encode("utf-8"), headers


def wants_html(accept: bytes) -> bool:
    """True when an Accept header rates text/html above application/json. Each is rated by
    its most specific matching range (exact, type/*, */*); ties (*/*, no header) are JSON."""
    rating = {"text/html": (-1, 0.0), "application/json": (-1, 0.0)}  # (specificity, q)
    for item in accept.decode("latin-1").split(","):
        media, *params = [part.strip() for part in item.split(";")]
        media = media.lower()
        q = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                value = value.strip()
                q = float(value) if re.fullmatch(r"0(\.[0-9]{0,3})?|1(\.0{0,3})?", value) else 0.0
        for wanted, (specificity, _) in rating.items():
            kind = wanted.split("/")[0]
            level = 2 if media == wanted else 1 if media == f"{kind}/*" else 0 if media == "*/*" else -1
            if level > specificity:
                rating[wanted] = (level, q)
    return rating["text/html"][1] > rating["application/json"][1]


def report_request(payload) -> tuple[str, str]:
    """A /report body -> (document, name to show); RequestError when it is not one."""
    if not isinstance(payload, dict) or "document" not in payload:
        raise RequestError('request body must be a JSON object like {"document": "text", "name": "terms.txt"}')
    document = validate_document(payload["document"])
    name = payload.get("name", PASTED)
    if not isinstance(name, str):
        raise RequestError(f'"name" must be a string, got {type(name).__name__}')
    if len(name) > MAX_NAME_CHARS:
        raise RequestError(f'"name" has {len(name)} characters; the limit is {MAX_NAME_CHARS}')
    return document, " ".join(check_text(name, '"name"').split()) or PASTED


def report_fragment(document: str, report: dict, name: str, model: str) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """(the report as an HTML fragment, its headers)."""
    headers = [(b"content-security-policy", REPORT_CSP.encode()), *_COMMON]
    return html_body(document, report, name, model).encode("utf-8"), headers


def model_label(name: str, card: dict) -> str:
    """What the report's footer names as the model: never a path or URI of this server."""
    details = ", ".join(str(card[key]) for key in ("method", "base_model") if card.get(key))
    return f"{name} ({details})" if details else name
