"""A whole Terms of Service in: files of every kind a person has, the analysis as a table,
JSON and a self-contained HTML page, and `tosguard eval` on labelled files."""
from __future__ import annotations

import json

import pytest

from tosguard.components.documents import html_text, markdown_text, pdf_text, read_document, read_labelled, to_text
from tosguard.pipelines.cli import main

TERMS = ("Terms of Service. We may terminate your account at any time without notice. "
         "You agree that all disputes will be resolved by binding arbitration. Thank you for reading.")


def _pdf(text: str) -> bytes:
    """A one-page PDF with a real text layer (Helvetica), written by hand."""
    stream = f"BT /F1 11 Tf 72 720 Td ({text}) Tj ET".encode()
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
               b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
               b"/Resources << /Font << /F1 5 0 R >> >> >>",
               b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
               b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def test_html_markdown_and_pdf_become_the_text_a_person_reads():
    page = ("<html><head><title>T</title><style>p{color:red}</style><script>var x = 'We may sell';</script></head>"
            "<body><nav>Home | Login</nav><main><h1>Terms</h1><p>We may terminate your account &amp; data.</p>"
            "<ul><li>First item.</li><li>Second item.</li></ul></main><footer>(c) Acme</footer></body></html>")
    text = html_text(page)
    assert text.splitlines()[0] == "Terms" and "We may terminate your account & data." in text
    assert "First item." in text and "Second item." in text
    assert not any(junk in text for junk in ("var x", "Home | Login", "color:red", "(c) Acme"))
    assert to_text(page.encode(), "terms.html") == text
    md = markdown_text("# Terms\n\nWe may **terminate** your [account](https://x.example) at any time.\n")
    assert md.splitlines()[0] == "Terms" and "We may terminate your account at any time." in md
    assert "We may terminate your account at any time." in pdf_text(_pdf("We may terminate your account at any time."))
    with pytest.raises(ValueError, match="not a readable PDF"):
        pdf_text(b"%PDF-1.4 garbage")


def test_an_html_construct_left_open_at_the_end_is_dropped_in_one_pass(monkeypatch):
    """A page ending in a tag, comment or end tag that never closes reads as a browser reads
    it: the open construct is dropped, the text before it kept. Python 3.11's parser instead
    reparsed such a tail at close() once per '<', each pass scanning to the end (quadratic:
    CVE-2025-6069); counting the parser's tag scans shows the tail is scanned once, not per '<'."""
    from html.parser import HTMLParser

    assert html_text("<p>We may end your account.</p><a href='https://x.example") == "We may end your account."
    assert html_text("<p>Fees apply.</p><!-- a comment that never closes <p>hidden</p>") == "Fees apply."
    assert html_text("<p>If x < y, we pay.</p></") == "If x < y, we pay."
    assert html_text("<p>Caf&eacute; &amp; co") == "Caf\u00e9 & co"  # open text and charrefs still flushed
    scans = {"n": 0}
    for name in ("parse_starttag", "parse_endtag", "parse_comment"):
        real = getattr(HTMLParser, name)

        def counted(self, i, _real=real):
            scans["n"] += 1
            return _real(self, i)
        monkeypatch.setattr(HTMLParser, name, counted)
    for tail in ("<a " * 3000, "<!--" * 3000, "</a " * 3000, "<a b='" * 3000):
        scans["n"] = 0
        assert html_text("<p>Terms.</p>" + tail) == "Terms."
        assert scans["n"] <= 3, (tail[:6], scans["n"])  # <p>, </p> and the open tail once; was ~3,000


def test_analyze_reads_every_kind_and_writes_table_json_and_a_self_contained_page(trained_model_dir, tmp_path, capsys):
    files = {"terms.txt": TERMS.encode(), "terms.md": ("# Terms\n\n" + TERMS).encode(),
             "terms.html": f"<html><body><main><p>{TERMS}</p></main></body></html>".encode(),
             "terms.pdf": _pdf(TERMS)}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        out_json, out_html = tmp_path / f"{name}.json", tmp_path / f"{name}.report.html"
        assert main(["analyze", str(tmp_path / name), "--model", str(trained_model_dir), "--json", str(out_json),
                     "--html", str(out_html)]) == 0, name
        printed = capsys.readouterr().out
        report = json.loads(out_json.read_text())
        assert printed.startswith(f"{name}: {report['sentences']} clauses") and report["sentences"] >= 3
        page = out_html.read_text()
        assert 'id="document"' in page and "What the categories mean" in page
        assert "<script" not in page and "src=" not in page and "stylesheet" not in page  # no external assets
        assert page.count('class="flagged"') == len(report["flagged"])
        for flagged in report["flagged"]:
            assert flagged["clause"] in TERMS
    assert main(["analyze", str(tmp_path / "missing.txt"), "--model", str(trained_model_dir)]) == 2
    assert "no such file" in capsys.readouterr().err
    for flag in ("--json", "--html"):
        assert main(["analyze", str(tmp_path / "terms.txt"), "--model", "/nonexistent", flag, str(tmp_path)]) == 2
        assert f"{flag} {tmp_path}: name a file in an existing folder" in capsys.readouterr().err


def test_predict_scores_in_process_from_arguments_files_and_stdin(trained_model_dir, tmp_path, capsys, monkeypatch):
    import io

    (tmp_path / "clauses.txt").write_text("We may terminate your account at any time.\n\nWelcome!\n")
    assert main(["predict", "--model", str(trained_model_dir), "--json", "--file", str(tmp_path / "clauses.txt"),
                 "One more clause."]) == 0
    predictions = json.loads(capsys.readouterr().out)["predictions"]
    assert len(predictions) == 3 and all(set(p) == {"unfair", "categories", "scores", "truncated"} for p in predictions)
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"From standard input.\n")))
    assert main(["predict", "--model", str(trained_model_dir), "--file", "-"]) == 0
    assert "<- From standard input." in capsys.readouterr().out


def test_eval_scores_labelled_clauses_and_documents(trained_model_dir, tmp_path, capsys):
    clauses = [{"text": "We may terminate your account at any time.", "labels": [1]},
               {"text": "Welcome to the service.", "labels": []}]
    (tmp_path / "clauses.jsonl").write_text("".join(json.dumps(c) + "\n" for c in clauses))
    text = " ".join(c["text"] for c in clauses)
    (tmp_path / "Acme.txt").write_text(text)
    spans, start = [], 0
    for c in clauses:
        spans.append({"start": start, "end": start + len(c["text"]), "labels": c["labels"]})
        start += len(c["text"]) + 1
    (tmp_path / "Acme.labels.jsonl").write_text("".join(json.dumps(s) + "\n" for s in spans))
    assert read_labelled(str(tmp_path / "Acme.txt"))["clauses"] == [c["text"] for c in clauses]
    assert main(["eval", str(tmp_path / "clauses.jsonl"), "--model", str(trained_model_dir), "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["rows"] == 2 and 0 <= scores["clauses"]["macro_f1"] <= 100 and "documents" not in scores
    assert main(["eval", str(tmp_path / "Acme.txt"), "--model", str(trained_model_dir), "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert set(scores) >= {"clauses", "documents"} and scores["rows"] == 2
    (tmp_path / "bad.jsonl").write_text('{"text": "ok", "labels": [0]}\n{"text": "x", "labels": [9]}\n')
    assert main(["eval", str(tmp_path / "bad.jsonl"), "--model", str(trained_model_dir)]) == 2
    assert "bad.jsonl:2: 'labels' must be a list of category indices" in capsys.readouterr().err


def test_text_in_any_common_encoding_is_read_and_binary_files_are_refused(tmp_path):
    """A ToS saved as UTF-16 (Windows Notepad's 'Unicode') reads as the same text as UTF-8;
    Windows-1252 curly quotes survive; archives, compressed and binary files are refused by
    name instead of being scored as mojibake."""
    import gzip
    import zipfile

    sentence = "We’ll terminate your account at any time — without notice."
    for codec, bom in (("utf-16-le", b"\xff\xfe"), ("utf-16-be", b"\xfe\xff"), ("utf-32-le", b"\xff\xfe\x00\x00"),
                       ("utf-8", b"\xef\xbb\xbf"), ("utf-8", b"")):
        assert to_text(bom + sentence.encode(codec), "t.txt") == sentence, codec
    assert to_text(sentence.encode("cp1252"), "t.txt") == sentence
    # A page's declared charset wins where the bytes fit it (Shift_JIS would read as cp1252 otherwise).
    japanese = "\u5229\u7528\u898f\u7d04\u3092\u5909\u66f4\u3059\u308b\u3053\u3068\u304c\u3042\u308a\u307e\u3059\u3002"
    page = f'<html><head><meta charset="shift_jis"></head><body><p>{japanese}</p></body></html>'
    assert to_text(page.encode("shift_jis"), "terms.html") == japanese
    body = f"<html><body><p>{japanese}</p></body></html>".encode("euc-jp")
    assert to_text(body, "https://x.example/terms", "text/html; charset=EUC-JP") == japanese
    assert to_text("caf\u00e9 terms".encode("utf-8"), "t.html", "text/html; charset=nonsense") == "caf\u00e9 terms"
    assert to_text("caf\u00e9 terms".encode("utf-8"), "t.html", "text/html; charset=iso-8859-1") == "caf\u00e9 terms"
    assert to_text("Conditions générales.".encode("latin-1"), "t.txt") == "Conditions générales."
    docx = tmp_path / "terms.docx"
    with zipfile.ZipFile(docx, "w") as archive:
        archive.writestr("word/document.xml", "<w:t>" + sentence + "</w:t>")
    refused = {"terms.docx": (docx.read_bytes(), "zip archive"),
               "terms.txt.gz": (gzip.compress(sentence.encode()), "gzip"),
               "u16-no-bom.txt": (sentence.encode("utf-16-le"), "binary data"),
               "random.bin": (bytes(range(256)) * 4, "binary data")}
    for name, (data, message) in refused.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ValueError, match=message):
            read_document(str(tmp_path / name))
    # Text that carries terminal codes, man-page overstrikes or a stray NUL is still text.
    coloured = "".join(f"\x1b[1mSection {i}.\x1b[0m We may end your account.\n" for i in range(20))
    assert to_text(coloured.encode(), "t.txt").startswith("Section 0. We may end your account.\nSection 1.")
    assert to_text(b"W\x08We\x08e may end it.", "man.txt") == "We may end it."
    assert to_text(("We may end it.\n" * 30 + "\0").encode(), "t.txt") == "We may end it.\n" * 30
    (tmp_path / "broken.pdf").write_bytes(b"%PDF-1.4 garbage")
    with pytest.raises(ValueError, match="broken.pdf: not a readable PDF"):
        read_document(str(tmp_path / "broken.pdf"))


def test_eval_checks_every_file_before_scoring_and_counts_a_document_once(trained_model_dir, tmp_path, capsys):
    (tmp_path / "typo.jsonl").write_text('{"text": "We may end it.", "label": [2]}\n')
    (tmp_path / "empty.jsonl").write_text("\n")
    (tmp_path / "latin.jsonl").write_bytes('{"text": "résiliation", "labels": []}\n'.encode("latin-1"))
    for name, message in (("typo.jsonl", "typo.jsonl:1: no 'labels' field"), ("empty.jsonl", "empty.jsonl: no labelled rows"),
                          ("latin.jsonl", "latin.jsonl: not UTF-8")):
        assert main(["eval", str(tmp_path / name), "--model", "/nonexistent-model"]) == 2, name
        assert message in capsys.readouterr().err  # named before the (missing) model is looked at
    clauses = ["We may terminate your account at any time.", "Welcome to the service."]
    (tmp_path / "Acme.txt").write_text(" ".join(clauses))
    rows = [{"start": 0, "end": len(clauses[0]), "labels": [1]},
            {"start": len(clauses[0]) + 1, "end": len(clauses[0]) + 1 + len(clauses[1]), "labels": []}]
    (tmp_path / "Acme.labels.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["eval", str(tmp_path / "Acme.txt"), str(tmp_path / "Acme.labels.jsonl"),
                 "--model", str(trained_model_dir), "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["files"] == 1 and scores["rows"] == 2


def _keyword_scorer(keyword: str, category: str):
    """A model whose `category` score is 0.9 with `keyword` in the clause and 0.1 without:
    occlusion must give that word the whole 0.8 and no other word any weight."""
    from tosguard.components.labels import CATEGORIES

    def score(texts):
        return [{"scores": {c: (0.9 if c == category and keyword in t.lower().split() else 0.1) for c in CATEGORIES}}
                for t in texts]
    return score


def test_occlusion_finds_the_word_that_drives_a_category_and_marks_it_in_the_report():
    from tosguard.components.attribution import explain
    from tosguard.components.report import html_page, table

    document = "Intro. We may terminate <your> account at any time. Bye."
    start = document.index("We may")
    clause = "We may terminate <your> account at any time."
    report = {"sentences": 3, "unfair": True, "flagged": [{
        "clause": clause, "start": start, "end": start + len(clause), "unfair": True,
        "categories": ["Unilateral termination"],
        "scores": {"Unilateral termination": 0.9}}]}
    explain(report, _keyword_scorer("terminate", "Unilateral termination"))
    words = report["flagged"][0]["words"]["Unilateral termination"]
    assert [(w["word"], w["weight"]) for w in words] == [("terminate", 0.8)]
    assert document[words[0]["start"]:words[0]["end"]] == "terminate"  # document offsets
    assert report["attribution"] == {"method": "occlusion", "explained": 1, "of": 1, "max_words": 48}

    page = html_page(document, report, "t", "m")
    assert '<b class="why" title="without this word the Unilateral termination score drops by 0.80">terminate</b>' in page
    assert "&lt;your&gt;" in page and "<your>" not in page  # the rest of the clause is still escaped
    assert "(driven by &#x27;terminate&#x27; +0.80)" in page and "occlusion" in page  # tooltip, method note
    assert "driven by 'terminate' +0.80" in table(report, "t")


def test_occlusion_is_bounded_per_clause_and_per_report():
    from tosguard.components import attribution

    long_clause = " ".join(f"w{i}" for i in range(500))
    report = {"flagged": [{"clause": long_clause, "start": 0, "end": len(long_clause), "categories": ["Arbitration"],
                           "scores": {"Arbitration": 0.5 + i / 1000}} for i in range(100)]}
    texts, plan = attribution.variants(report)
    assert len(plan) == attribution.MAX_CLAUSES and len(texts) == attribution.MAX_CLAUSES * attribution.MAX_WORDS
    assert plan[0][0] == 99, "the highest-scored clauses are explained first"
    # The server's row budget: only whole clauses that fit, highest score first.
    texts, plan = attribution.variants(report, max_rows=100)
    assert [i for i, _ in plan] == [99, 98] and len(texts) == 2 * attribution.MAX_WORDS


def test_a_one_word_clause_is_not_occluded_into_an_empty_text():
    """Deleting the only word leaves "", which a server refuses (400) and would sink the
    whole `analyze --url`: such a clause is left unexplained."""
    from tosguard.components import attribution

    report = {"flagged": [{"clause": "Arbitration.", "start": 0, "end": 12, "categories": ["Arbitration"],
                           "scores": {"Arbitration": 0.9}},
                          {"clause": "Binding arbitration.", "start": 13, "end": 33, "categories": ["Arbitration"],
                           "scores": {"Arbitration": 0.8}}]}
    texts, plan = attribution.variants(report)
    assert [i for i, _ in plan] == [1] and "" not in texts and len(texts) == 2


def test_gold_offsets_count_a_byte_order_mark_as_written(tmp_path):
    """A labelled document saved with a UTF-8 BOM keeps it as its first character, so gold
    offsets written against the file's text still land on the same sentences."""
    text = "\ufeffWe may end it. Welcome."
    (tmp_path / "Bom.txt").write_bytes(text.encode("utf-8"))
    (tmp_path / "Bom.labels.jsonl").write_text(json.dumps({"start": 1, "end": 15, "labels": [1]}) + "\n")
    assert read_labelled(str(tmp_path / "Bom.txt"))["clauses"] == ["We may end it."]


def test_words_keep_their_accents_and_only_inner_apostrophes_and_hyphens():
    from tosguard.components.attribution import _words

    text = "te\u0301rminate the users' third-party don't notice--- ok"
    assert [text[a:b] for a, b in _words(text)] == ["te\u0301rminate", "the", "users", "third-party", "don't",
                                                     "notice", "ok"]


def test_analyze_explains_flagged_clauses_with_the_real_model(trained_model_dir, tmp_path, capsys):
    (tmp_path / "t.txt").write_text(TERMS)
    assert main(["analyze", str(tmp_path / "t.txt"), "--model", str(trained_model_dir),
                 "--json", str(tmp_path / "t.json")]) == 0
    report = json.loads((tmp_path / "t.json").read_text())
    assert report["attribution"]["method"] == "occlusion"
    for clause in report["flagged"]:
        assert set(clause["words"]) == set(clause["categories"])
        for words in clause["words"].values():
            assert all(clause["start"] <= w["start"] < w["end"] <= clause["end"] and w["weight"] >= 0.01 for w in words)
    assert main(["analyze", str(tmp_path / "t.txt"), "--model", str(trained_model_dir), "--no-explain",
                 "--json", str(tmp_path / "plain.json")]) == 0
    assert "attribution" not in json.loads((tmp_path / "plain.json").read_text())


def test_serve_starts_a_server_that_requires_a_bearer_token(trained_model_dir, tosguard_home, monkeypatch, capsys):
    """`tosguard serve` waits for readiness on an open route, so a token-guarded server is
    seen ready (it used to poll a guarded route, get 401s and kill the server after 180 s)."""
    import requests

    from tests.servers import free_port

    port = free_port()
    monkeypatch.setenv("TOSGUARD_AUTH_TOKEN", "s3cret-token")
    try:
        assert main(["serve", "--model", str(trained_model_dir), "--port", str(port)]) == 0
        url = capsys.readouterr().out.strip().splitlines()[-1]
        assert requests.get(f"{url}/v1/models/tosguard", timeout=5).status_code == 401
        answer = requests.get(f"{url}/v1/models/tosguard", timeout=5,
                              headers={"Authorization": "Bearer s3cret-token"})
        assert answer.status_code == 200 and answer.json()["ready"] is True
    finally:
        main(["serve", "--stop"])
