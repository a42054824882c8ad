"""What a person reads: the analysis of one Terms of Service as a terminal table and as one
self-contained HTML page (no external assets) with the flagged clauses highlighted in the
document, a summary per category, and what each category means."""
from __future__ import annotations

import html
from collections import Counter

from tosguard.components.labels import CATEGORIES

# Plain language: what the clause does, and why EU consumer law may treat it as unfair
# (Unfair Contract Terms Directive 93/13/EEC and its Annex of indicative terms; the
# Brussels Ia and Rome I Regulations for courts and law). Indications, not legal advice.
EXPLANATIONS = {
    "Limitation of liability": (
        "The provider limits or excludes its responsibility for losses or damage you suffer, "
        "for example from faults, data loss or the service being unavailable.",
        "Terms that exclude or limit a consumer's legal rights when the trader fails to perform "
        "are listed as possibly unfair in the Directive's Annex (point 1(b)); liability for death "
        "or injury caused by the trader cannot be excluded (1(a)).",
        "Look for: 'in no event shall we be liable', 'as is', caps on damages."),
    "Unilateral termination": (
        "The provider may suspend or close your account or end the service whenever it decides, "
        "possibly without a reason or notice.",
        "Ending an open-ended contract without reasonable notice and without serious grounds is "
        "listed as possibly unfair (Annex 1(g)), as is a right to end it the consumer does not have (1(f)).",
        "Look for: 'at any time', 'for any reason or no reason', 'without notice'."),
    "Unilateral change": (
        "The provider may change the terms, or the service itself, on its own, and your continued "
        "use counts as accepting the change.",
        "Altering terms or the service unilaterally without a valid reason stated in the contract is "
        "listed as possibly unfair (Annex 1(j) and 1(k)).",
        "Look for: 'we may modify these terms', 'continued use constitutes acceptance'."),
    "Content removal": (
        "The provider may delete or change what you uploaded or wrote, at its own discretion and "
        "without telling you.",
        "Removing a consumer's content without reason or notice is a unilateral change to what the "
        "service delivers (Annex 1(k)) and may hinder the consumer's rights over that content.",
        "Look for: 'we may remove any content', 'in our sole discretion'."),
    "Contract by using": (
        "You are bound by the terms simply by using the website or app, without clearly agreeing to them.",
        "Binding a consumer to terms they had no real opportunity to read before the contract was "
        "concluded is listed as possibly unfair (Annex 1(i)).",
        "Look for: 'by using this site you agree', 'by accessing'."),
    "Choice of law": (
        "A law other than that of your country governs the contract.",
        "A choice of law may not deprive a consumer of the protection of the mandatory rules of the "
        "country where they live (Rome I Regulation, Article 6(2)).",
        "Look for: 'governed by the laws of', a named state or country."),
    "Jurisdiction": (
        "Disputes must be brought before courts of a place chosen by the provider, often far from you.",
        "A consumer may always sue, and may only be sued, in the courts where they live (Brussels Ia "
        "Regulation, Articles 18 and 19); hindering access to justice is listed as unfair (Annex 1(q)).",
        "Look for: 'exclusive jurisdiction', 'courts of', a named city."),
    "Arbitration": (
        "Disputes must go to arbitration instead of a court, often binding and on an individual basis.",
        "Requiring a consumer to take disputes exclusively to arbitration not covered by legal "
        "provisions is listed as possibly unfair (Annex 1(q)).",
        "Look for: 'binding arbitration', 'waive your right to a jury trial', 'class action waiver'."),
}
COLOURS = ["#f4a261", "#e76f51", "#e9c46a", "#2a9d8f", "#8ab17d", "#a29bfe", "#74b9ff", "#fd79a8"]
COLOUR = dict(zip(CATEGORIES, COLOURS))


def category_counts(report: dict) -> Counter:
    return Counter(c for clause in report["flagged"] for c in clause["categories"])


def table(report: dict, name: str, width: int = 100) -> str:
    """The terminal view: one line per flagged clause, then the count per category."""
    flagged = report["flagged"]
    lines = [f"{name}: {report['sentences']} clauses, {len(flagged)} potentially unfair"]
    if flagged:
        lines.append(f"{'#':>3}  {'offset':>7}  {'category':26}  {'score':>5}  clause")
        for i, clause in enumerate(flagged, start=1):
            for j, category in enumerate(clause["categories"]):
                text = " ".join(clause["clause"].split())
                excerpt = text if len(text) <= width - 50 else text[: width - 53] + "..."
                lines.append(f"{i if j == 0 else '':>3}  {clause['start'] if j == 0 else '':>7}  {category:26}  "
                             f"{clause['scores'][category]:5.2f}  {excerpt if j == 0 else ''}")
                words = clause.get("words", {}).get(category)
                if words:
                    lines.append(f"{'':48}  driven by " + ", ".join(f"'{w['word']}' +{w['weight']:.2f}" for w in words))
        lines.append("per category: " + ", ".join(f"{c} {n}" for c, n in category_counts(report).most_common()))
    return "\n".join(lines)


# The report's stylesheet, shared by html_page and the predictor's web page.
STYLE = """body{font:15px/1.55 system-ui,sans-serif;margin:0;color:#222;background:#fafafa}
header{background:#264653;color:#fff;padding:16px 24px} header h1{margin:0;font-size:20px}
main{display:grid;grid-template-columns:320px 1fr;gap:24px;padding:24px}
aside table{border-collapse:collapse;width:100%} td{padding:3px 6px} td.n{text-align:right}
.dot{display:inline-block;width:10px;height:10px;border-radius:50%;margin-right:6px}
.badge{font-size:11px;color:#fff;border-radius:3px;padding:1px 4px;margin-left:3px;vertical-align:super}
article{background:#fff;padding:20px 28px;border-radius:6px;box-shadow:0 1px 3px #0002}
mark.flagged{color:inherit;padding:1px 0} details{margin:8px 0} summary{cursor:pointer;font-weight:600}
b.why{font-weight:700;text-decoration:underline;text-decoration-thickness:2px;text-underline-offset:2px}
mark,.badge,h1,b.why{unicode-bidi:isolate}
footer{padding:8px 24px;color:#666;font-size:12px}
"""


def html_page(document: str, report: dict, name: str, model: str) -> str:
    """One self-contained HTML page: summary, explanations, and the document with every
    flagged clause highlighted in its category's colour, its scores on hover."""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>tosguard: {html.escape(name)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
{STYLE}</style></head><body>
{html_body(document, report, name, model)}</body></html>
"""


def html_body(document: str, report: dict, name: str, model: str) -> str:
    """The report's body (header, summary and explanations, the highlighted document,
    footer): the inside of html_page's <body>, and what the predictor's web page shows."""
    counts = category_counts(report)
    pieces, position = [], 0
    for number, clause in enumerate(report["flagged"], start=1):
        pieces.append(html.escape(document[position : clause["start"]]))
        first = clause["categories"][0]
        tip = "; ".join(f"{c} {clause['scores'][c]:.2f}" + _driven_by(clause, c) for c in clause["categories"])
        badges = "".join(f'<span class="badge" style="background:{COLOUR[c]}">{html.escape(c)}</span>'
                         for c in clause["categories"])
        pieces.append(f'<mark id="c{number}" class="flagged" style="background:{COLOUR[first]}55;'
                      f'border-bottom:3px solid {COLOUR[first]}" title="{html.escape(tip)}" '
                      f'data-categories="{html.escape(",".join(clause["categories"]))}">'
                      f'{_clause_html(document, clause, first)}</mark>{badges}')
        position = clause["end"]
    pieces.append(html.escape(document[position:]))
    body = "".join(pieces).replace("\n", "<br>\n")
    summary = "".join(
        f'<tr><td><span class="dot" style="background:{COLOUR[c]}"></span>{html.escape(c)}</td>'
        f'<td class="n">{counts.get(c, 0)}</td></tr>' for c in CATEGORIES)
    explained = "".join(
        f'<details{" open" if counts.get(c) else ""}><summary><span class="dot" style="background:{COLOUR[c]}">'
        f'</span>{html.escape(c)} ({counts.get(c, 0)})</summary><p>{html.escape(what)}</p>'
        f'<p><b>Why it may be unfair:</b> {html.escape(why)}</p><p><i>{html.escape(look)}</i></p></details>'
        for c, (what, why, look) in EXPLANATIONS.items())
    n = report["sentences"]
    verdict = (f"{len(report['flagged'])} of {n} clauses are potentially unfair"
               if report["flagged"] else f"No potentially unfair clause found in {n} clause{'' if n == 1 else 's'}")
    return f"""<header><h1>tosguard: {html.escape(name)}</h1><div id="verdict">{html.escape(verdict)}</div></header>
<main><aside><h2>Per category</h2><table id="summary">{summary}</table>
<h2>What the categories mean</h2>{explained}</aside>
<article id="document">{body}</article></main>
<footer>Model: {html.escape(model)}. Categories of LexGLUE UNFAIR-ToS (CLAUDETTE).{_hover_note(report)}
An indication for a reader, not legal advice.</footer>
"""


def _driven_by(clause: dict, category: str) -> str:
    words = clause.get("words", {}).get(category)
    return (" (driven by " + ", ".join(f"'{w['word']}' +{w['weight']:.2f}" for w in words) + ")") if words else ""


def _clause_html(document: str, clause: dict, category: str) -> str:
    """The clause's text, escaped, with the words that drove `category` in bold underline
    (their weight, the score lost without them, in each word's tooltip)."""
    words = sorted(clause.get("words", {}).get(category, []), key=lambda w: w["start"])
    pieces, position = [], clause["start"]
    for w in words:
        if not clause["start"] <= position <= w["start"] < w["end"] <= clause["end"]:
            continue  # overlapping or outside the clause: leave it unmarked
        pieces.append(html.escape(document[position : w["start"]]))
        tip = f"without this word the {category} score drops by {w['weight']:.2f}"
        pieces.append(f'<b class="why" title="{html.escape(tip)}">{html.escape(document[w["start"]:w["end"]])}</b>')
        position = w["end"]
    pieces.append(html.escape(document[position : clause["end"]]))
    return "".join(pieces)


def _hover_note(report: dict) -> str:
    if not report["flagged"]:
        return ""
    note = " Hover a highlighted clause for its scores."
    done = report.get("attribution")
    if not done or not done["explained"]:
        return note
    partly = f" (the {done['explained']} highest-scored of {done['of']} clauses)" if done["explained"] < done["of"] else ""
    return (note + " Underlined words drove the decision" + partly + ": each one's weight is how much the "
            f"clause's score for its category drops when that word alone is deleted (occlusion; the first "
            f"{done.get('max_words', 48)} words of a clause).")
