"""The predictor's web page in a real headless Chromium against the real server process.

The page (GET / for a browser) and its call (POST /report) are driven as a person would:
paste a Terms of Service, press Analyze, read the highlighted clauses; open an HTML file.
Asserted: the highlighted clauses and their category labels are exactly those the JSON
endpoint flags for the same text; the report is report.py's (summary, explanations);
the bearer token is asked for and kept in the tab; document text and file names holding
markup are shown as text and nothing in them runs; the page's own script and styles pass
its Content-Security-Policy; probes, curl and HTTP libraries still get JSON at /.
A screenshot is kept in test-artifacts/web_page.png.

Chromium is Debian's package (scripts/setup.sh test installs it); without it this test
fails, unless TOSGUARD_SKIP_BROWSER=1 says to skip it.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.conftest import free_port

V1 = "/v1/models/tosguard:predict"
TOKEN = "page-test-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
DOCUMENT = """Terms of Service of Example Cloud

Welcome to Example Cloud. Our offices are open Monday to Friday.
We may terminate your account at any time and for any reason, without notice.
In no event shall Example Cloud be liable for any loss of data, lost profits or damages of any kind.
You can contact support by email.
Any dispute will be settled by binding arbitration, and you waive your right to a jury trial.
We may change these terms at any time; continued use of the service means you accept the change.
Thank you for choosing us.
"""
HOSTILE = """Terms with markup in them.
You must not post <script>window.__xss = 1</script> or <img src=x onerror="window.__xss = 2"> here.
Nor <svg onload="window.__xss = 3"></svg> and <a href="javascript:window.__xss = 4">links</a>.
We may terminate your account at any time and for any reason, without notice.
"""
# An uploaded HTML file whose name and text carry markup; the <script> and the navigation
# are dropped on reading, the escaped <img> in the text must stay text.
UPLOAD_NAME = 'terms"<img src=x onerror="window.__xss = 5">.html'
UPLOAD = (b"<!doctype html><html><head><script>window.__xss = 6</script><title>T</title></head><body>"
          b"<nav>Home | Pricing</nav><main><h1>Our terms</h1><p>We may terminate your account at any time."
          b" Do not write &lt;img src=x onerror=&quot;window.__xss = 7&quot;&gt; in your profile.</p></main>"
          b"</body></html>")


def _chromium() -> str | None:
    return os.environ.get("TOSGUARD_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def browser():
    if os.environ.get("TOSGUARD_SKIP_BROWSER") == "1":
        pytest.skip("TOSGUARD_SKIP_BROWSER=1: the web page's browser test is skipped on request")
    path = _chromium()
    if not path:
        pytest.fail("no chromium found: the web page is tested in a real headless browser. Run "
                    "`bash scripts/setup.sh test` (it installs Debian's chromium package), or point "
                    "TOSGUARD_CHROMIUM at a Chromium binary; TOSGUARD_SKIP_BROWSER=1 skips this test.", pytrace=False)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is not installed: run `bash scripts/setup.sh test`", pytrace=False)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=path, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def page_model(trained_model_dir, tmp_path_factory) -> Path:
    """The session's tiny model flags nothing at its shipped thresholds (0.5). A copy whose
    thresholds make a few clauses of DOCUMENT unfair: for the categories whose top-scoring
    clause stands out most, a threshold halfway between that clause and the next one (that
    clause alone is flagged); every other category at 1.0 (never: a sigmoid stays below)."""
    from tosguard.components.serving.scorer import ClauseScorer
    from tosguard.components.serving.split import split_sentences

    scorer = ClauseScorer(str(trained_model_dir), "fp32")
    results = scorer.score([DOCUMENT[s:e] for s, e in split_sentences(DOCUMENT)])
    candidates = []
    for category in scorer.categories:
        (top, index), (second, _) = sorted(((r["scores"][category], i) for i, r in enumerate(results)),
                                           reverse=True)[:2]
        candidates.append((top - second, category, (top + second) / 2, index))
    thresholds, flagged = dict.fromkeys(scorer.categories, 1.0), set()
    for _, category, threshold, index in sorted(candidates, reverse=True):
        if len(flagged) >= 2:
            break
        thresholds[category] = threshold
        flagged.add(index)
    assert len(flagged) >= 2, f"every category's top clause is the same one: {candidates}"
    out = tmp_path_factory.mktemp("page_model") / "model"
    shutil.copytree(trained_model_dir, out)
    card = json.loads((out / "tosguard.json").read_text())
    card["thresholds"] = [thresholds[c] for c in card["categories"]]
    (out / "tosguard.json").write_text(json.dumps(card))
    return out


@pytest.fixture(scope="module")
def server(page_model, tmp_path_factory):
    """The predictor process on 127.0.0.1, with a bearer token, in fp32 (as page_model scored)."""
    from tests.servers import _wait, stop

    port = free_port()
    log = tmp_path_factory.mktemp("page_server") / "server.log"
    env = dict(os.environ, TOSGUARD_AUTH_TOKEN=TOKEN, TOSGUARD_SERVE_PRECISION="fp32", TOSGUARD_ACCESS_LOG="0")
    env.pop("TOSGUARD_AUTH_TOKEN_FILE", None)
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "tosguard.components.serving", "--model-dir", str(page_model),
                                 "--host", "127.0.0.1", "--http-port", str(port)],
                                stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(f"{url}/v2/health/ready", proc, "the predictor", timeout=120)
    except RuntimeError:
        stop(proc)
        raise AssertionError(log.read_text()) from None
    yield url
    stop(proc)


@pytest.fixture
def page(browser):
    """A fresh tab; fails the test on a CSP violation, a script error or a dialog."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    tab = context.new_page()
    problems: list[str] = []
    tab.on("console", lambda m: problems.append(m.text) if "Content Security Policy" in m.text else None)
    tab.on("pageerror", lambda e: problems.append(f"script error: {e}"))
    tab.on("dialog", lambda d: (problems.append(f"dialog: {d.message}"), d.dismiss()))
    yield tab
    context.close()
    assert not problems, problems


def _analyze(page, state: str = "done") -> None:
    page.click("#analyze")
    page.wait_for_selector(f"#report[data-state={state}]", state="attached", timeout=30_000)


def _marks(page) -> list[dict]:
    """Each highlighted clause: its text, the category badges after it, its colour."""
    return page.eval_on_selector_all("#report mark.flagged", """marks => marks.map(mark => {
        const badges = [];
        for (let next = mark.nextElementSibling; next && next.classList.contains("badge");
             next = next.nextElementSibling) badges.push(next.textContent);
        return {text: mark.textContent, categories: mark.dataset.categories, badges,
                background: getComputedStyle(mark).backgroundColor};
    })""")


def test_probes_and_http_clients_still_get_json_at_root(server):
    for headers in ({}, {"accept": "*/*"}, {"accept": "application/json"},
                    {"accept": "text/html;q=0.5, application/json"}):
        answer = requests.get(f"{server}/", headers=headers, timeout=10)
        assert answer.status_code == 200 and answer.json() == {"status": "alive", "live": True}, headers
        assert answer.headers["vary"] == "Accept"
    browser_accept = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,*/*;q=0.8"
    answer = requests.get(f"{server}/", headers={"accept": browser_accept}, timeout=10)  # no token needed
    assert answer.status_code == 200 and answer.headers["content-type"] == "text/html; charset=utf-8"
    csp = dict(d.strip().partition(" ")[::2] for d in answer.headers["content-security-policy"].split(";"))
    assert csp["default-src"] == "'none'" and csp["connect-src"] == "'self'"
    assert csp["script-src"].startswith("'sha256-") and "'unsafe" not in csp["script-src"]
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert not any(marker in answer.text for marker in ("http://", "https://", " src=", "<link"))  # no assets
    # /report is guarded and validated like the other scoring routes
    assert requests.post(f"{server}/report", json={"document": "A clause."}, timeout=10).status_code == 401
    assert requests.post(f"{server}/report", json={"document": 5}, headers=AUTH, timeout=10).status_code == 400
    assert requests.post(f"{server}/report", data=b"document=x", timeout=10,
                         headers={**AUTH, "content-type": "application/x-www-form-urlencoded"}).status_code == 415
    assert requests.get(f"{server}/report", headers=AUTH, timeout=10).status_code == 405
    # No Content-Type: refused, so a cross-site page cannot send this costly call as a
    # "simple" request without a preflight.
    bare = requests.Request("POST", f"{server}/report", headers=AUTH, data=b'{"document": "A clause."}').prepare()
    bare.headers.pop("Content-Type", None)
    assert requests.Session().send(bare, timeout=10).status_code == 415


@pytest.mark.parametrize("accept, html", [
    ("", False), ("*/*", False), ("application/json", False), ("text/html", True), ("TEXT/HTML", True),
    ("text/*", True), ("text/html;q=0.2, */*;q=0.5", False), ("application/json;q=0.4, text/html;q=0.5", True),
    ("text/html;q=abc", False), ("text/html;q=nan, application/json;q=0.1", False), ("text/html;q=0", False),
])
def test_content_negotiation_at_root(accept, html):
    from tosguard.components.serving.page import wants_html

    assert wants_html(accept.encode()) is html


def test_the_page_without_a_token_has_no_token_field():
    from tosguard.components.serving.page import page

    assert b'id="tos-token"' not in page(token_required=False)[0]
    assert b'id="tos-token"' in page(token_required=True)[0]


def test_a_pasted_document_is_reported_as_the_json_endpoint_flags_it(page, server, page_model):
    from tosguard.components.report import EXPLANATIONS

    response = page.goto(f"{server}/")
    assert response.ok and response.headers["content-security-policy"].startswith("default-src 'none'")
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server)
    page.evaluate("text => navigator.clipboard.writeText(text)", DOCUMENT)
    page.focus("#tos-text")
    page.keyboard.press("Control+V")  # a real paste
    assert page.input_value("#tos-text") == DOCUMENT

    _analyze(page, "error")  # no token yet: the server's 401, said on the page
    assert "401" in page.text_content("#status") and "token" in page.text_content("#status")
    page.fill("#tos-token", TOKEN)
    _analyze(page)

    expected = requests.post(f"{server}{V1}", json={"document": DOCUMENT}, headers=AUTH, timeout=30).json()["document"]
    assert 2 <= len(expected["flagged"]) < expected["sentences"]
    marks = _marks(page)
    assert [(m["text"], m["badges"]) for m in marks] == [(f["clause"], f["categories"]) for f in expected["flagged"]]
    assert all(m["categories"] == ",".join(m["badges"]) for m in marks)
    assert all(m["background"] not in ("", "rgba(0, 0, 0, 0)") for m in marks), "highlight colours were blocked"
    verdict = f"{len(expected['flagged'])} of {expected['sentences']} clauses are potentially unfair"
    assert page.text_content("#verdict") == verdict and page.text_content("#status") == verdict + "."
    assert page.text_content("#report header h1") == "tosguard: pasted text"
    counts = dict(page.eval_on_selector_all("#summary tr", "rows => rows.map(r => [r.cells[0].textContent, "
                                                           "Number(r.cells[1].textContent)])"))
    assert counts == {c: sum(c in f["categories"] for f in expected["flagged"]) for c in EXPLANATIONS}
    explained = page.eval_on_selector_all("#report details p:first-of-type", "ps => ps.map(p => p.textContent)")
    assert explained == [what for what, _, _ in EXPLANATIONS.values()]
    assert "lora" in page.text_content("#report footer") and str(page_model.parent) not in page.content()

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "web_page.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000

    page.reload()  # the token stays in the tab (sessionStorage), not in a cookie
    assert page.input_value("#tos-token") == TOKEN and not page.context.cookies()


def test_markup_in_a_document_or_a_file_name_is_shown_as_text_and_never_runs(page, server):
    page.goto(f"{server}/")
    page.fill("#tos-token", TOKEN)
    page.fill("#tos-text", HOSTILE)
    _analyze(page)
    shown = page.text_content("#report #document")
    assert '<script>window.__xss = 1</script>' in shown and '<img src=x onerror="window.__xss = 2">' in shown
    assert '<a href="javascript:window.__xss = 4">' in shown
    assert page.eval_on_selector_all("#report script, #report img, #report svg, #report a, #report iframe",
                                     "els => els.length") == 0

    page.set_input_files("#tos-file", files=[{"name": UPLOAD_NAME, "mimeType": "text/html", "buffer": UPLOAD}])
    page.wait_for_function("() => document.getElementById('tos-text').value.startsWith('Our terms')")
    text = page.input_value("#tos-text")
    assert text == ('Our terms\n\nWe may terminate your account at any time. Do not write '
                    '<img src=x onerror="window.__xss = 7"> in your profile.')
    _analyze(page)
    assert page.text_content("#report header h1") == "tosguard: " + UPLOAD_NAME
    assert '<img src=x onerror="window.__xss = 7">' in page.text_content("#report #document")
    assert page.eval_on_selector_all("#report img, #report script", "els => els.length") == 0
    assert page.evaluate("window.__xss") is None
