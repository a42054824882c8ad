"""Documents as people have them: a Terms of Service file (.txt, .md, .html, .pdf), a URL
or standard input, turned into the plain text that document analysis splits and scores;
and labelled files for `tosguard eval` (clauses JSONL, or documents with gold offsets).
"""
from __future__ import annotations

import html
import io
import json
import re
import sys
from html.parser import HTMLParser
from pathlib import Path

MAX_DOCUMENT_BYTES = 20 << 20  # a ToS is tens of kB; a PDF of one is at most a few MB

# Elements whose text is never the document's (HTML).
_SKIP = {"script", "style", "noscript", "template", "svg", "head", "nav", "footer", "header", "aside", "form",
         "button", "select", "iframe"}
# Elements that end a line of text.
_BLOCK = {"p", "div", "br", "li", "ul", "ol", "h1", "h2", "h3", "h4", "h5", "h6", "tr", "table", "section",
          "article", "main", "blockquote", "pre", "dd", "dt", "dl", "hr", "td", "th"}


class _TextOfHtml(HTMLParser):
    """The readable text of an HTML page: scripts, styles, navigation and page furniture
    dropped, block elements on lines of their own, a <main> or <article> preferred."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.main_parts: list[str] | None = None
        self.skipping = 0
        self.in_main = 0

    def handle_starttag(self, tag, attrs):
        if tag in _SKIP:
            self.skipping += 1
        if tag in ("main", "article"):
            self.in_main += 1
            if self.main_parts is None:
                self.main_parts = []
        if tag in _BLOCK:
            self._emit("\n")

    def handle_endtag(self, tag):
        if tag in _SKIP and self.skipping:
            self.skipping -= 1
        if tag in ("main", "article") and self.in_main:
            self.in_main -= 1
        if tag in _BLOCK:
            self._emit("\n")

    def handle_data(self, data):
        if not self.skipping:
            self._emit(data)

    def _emit(self, text: str) -> None:
        self.parts.append(text)
        if self.in_main and self.main_parts is not None:
            self.main_parts.append(text)

    def text(self) -> str:
        chosen = self.main_parts if self.main_parts and "".join(self.main_parts).strip() else self.parts
        raw = "".join(chosen)
        lines = [re.sub(r"[ \t\r\f\v]+", " ", line).strip() for line in raw.split("\n")]
        return "\n\n".join(line for line in lines if line)


def html_text(markup: str) -> str:
    parser = _TextOfHtml()
    parser.feed(markup)
    # What feed() leaves unparsed and starts with '<' is a construct that never closes ('<a ',
    # '<!--', '</' with no end before the end of the page). Browsers (HTML5) drop it, and so
    # does Python from 3.13.4; older ones (3.11.7 here) reparse it at close() one '<' at a
    # time, each pass scanning to the end: quadratic, 12 s for 30 kB of '<a ' (CVE-2025-6069).
    # Dropping it first makes every Python read the page as a browser does, in linear time.
    if parser.rawdata.startswith("<"):
        parser.rawdata = ""
    parser.close()
    return parser.text()


def markdown_text(markdown: str) -> str:
    """Markdown without its markup: headings, emphasis, links and list markers dropped."""
    # Every pattern stays within one line and a bounded span, so crafted input ('[' * N,
    # '_a ' * N) costs linear time, not quadratic.
    text = re.sub(r"```.*?```", "", markdown, flags=re.S)
    text = re.sub(r"!\[[^\[\]\n]*\]\([^()\n]*\)", "", text)  # images
    text = re.sub(r"\[([^\[\]\n]+)\]\([^()\n]*\)", r"\1", text)  # links: keep the words
    text = re.sub(r"^[ \t]{0,3}#{1,6}[ \t]*", "", text, flags=re.M)  # headings
    text = re.sub(r"(\*\*|__|\*|_|`)(\S[^\n]{0,400}?\S|\S)\1", r"\2", text)  # emphasis, code
    text = re.sub(r"^[ \t]*>[ \t]?", "", text, flags=re.M)  # quotes
    return html.unescape(text)


def pdf_text(data: bytes) -> str:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(io.BytesIO(data))
        pages = [page.extract_text() or "" for page in reader.pages]
    except (PdfReadError, ValueError, KeyError) as exc:
        raise ValueError(f"not a readable PDF: {exc}") from None
    text = "\n\n".join(p.strip() for p in pages if p.strip())
    if not text:
        raise ValueError("the PDF has no text layer (a scanned document needs OCR first)")
    # Lines of a PDF page are layout, not sentences: join wrapped lines, keep blank lines.
    return re.sub(r"(?<![.!?:;])\n(?!\n)", " ", text)


def _kind(name: str, content_type: str = "") -> str:
    lower = name.lower().split("?")[0]
    for suffix, kind in ((".pdf", "pdf"), (".html", "html"), (".htm", "html"), (".md", "md"), (".markdown", "md")):
        if lower.endswith(suffix):
            return kind
    if "pdf" in content_type:
        return "pdf"
    if "html" in content_type:
        return "html"
    return "txt"


# Byte-order marks, longest first (UTF-32 LE starts with UTF-16 LE's).
_BOMS = ((b"\xff\xfe\x00\x00", "utf-32-le"), (b"\x00\x00\xfe\xff", "utf-32-be"),
         (b"\xff\xfe", "utf-16-le"), (b"\xfe\xff", "utf-16-be"), (b"\xef\xbb\xbf", "utf-8"))
# Containers people save Terms of Service in that are not text: what to do instead.
_NOT_TEXT = ((b"PK\x03\x04", "a zip archive (a .docx, .odt or .zip): save it as text, HTML or PDF"),
             (b"\x1f\x8b", "gzip-compressed: decompress it first"),
             (b"\xd0\xcf\x11\xe0", "an old Word or Office file: save it as text, HTML or PDF"),
             (b"{\\rtf", "RTF: save it as text, HTML or PDF"))


def declared_charset(data: bytes, content_type: str = "") -> str | None:
    """The encoding a page declares: the HTTP Content-Type's charset, else an HTML <meta>
    charset in the first 4 KB; None when it declares none Python knows."""
    import codecs

    found = re.search(r"charset=[\"']?([A-Za-z0-9._:-]+)", content_type or "", re.I)
    if not found:
        found = re.search(rb"<meta[^>]{0,200}?charset\s*=\s*[\"']?\s*([A-Za-z0-9._:-]+)", data[:4096], re.I)
    if not found:
        return None
    name = found.group(1).decode("ascii") if isinstance(found.group(1), bytes) else found.group(1)
    try:
        info = codecs.lookup(name)
    except LookupError:
        return None
    # Only text encodings: not base64/zlib/rot13 (bytes-to-bytes), nor codecs that rewrite text.
    if not getattr(info, "_is_text_encoding", True) or info.name in _NOT_CHARSETS:
        return None
    return info.name


_NOT_CHARSETS = {"undefined", "unicode-escape", "raw-unicode-escape", "idna", "punycode"}


def decode_text(data: bytes, name: str, declared: str | None = None) -> str:
    """Bytes -> text: UTF-16/32 with a byte-order mark, else UTF-8, else the declared
    encoding (an HTTP or HTML charset) when the bytes fit it, else Windows-1252 (legacy
    pages), else Latin-1. Binary data is refused (scoring it would print confident
    nonsense): NUL bytes or control characters in more than 1 in 20 characters, once
    terminal colour codes and backspace overstrikes (man-page output) are taken out.
    Stray NULs and other control characters in text are dropped."""
    for magic, what in _NOT_TEXT:
        if data.startswith(magic):
            raise ValueError(f"{name}: {what}")
    text = None
    for bom, codec in _BOMS:
        if data.startswith(bom):
            try:
                text = data[len(bom):].decode(codec)
                break
            except UnicodeDecodeError as exc:
                raise ValueError(f"{name}: starts with a {codec} byte-order mark but is not {codec} "
                                 f"({exc.reason} at byte {exc.start + len(bom)})") from None
    if text is None:
        # Valid UTF-8 beyond ASCII is almost never another encoding, and pages that declare
        # Latin-1 while sending UTF-8 are common: UTF-8 first, then what the page declares.
        order = ["utf-8"] + ([declared] if declared else []) + ["cp1252", "latin-1"]
        if declared and declared.startswith(("utf-16", "utf-32")) and b"\x00" in data:
            # UTF-16 text in the ASCII range is valid UTF-8 too (NUL is a byte of UTF-8):
            # a page that declares it is read as declared first (big-endian without a mark).
            order = [{"utf-16": "utf-16-be", "utf-32": "utf-32-be"}.get(declared, declared)] + order
        for codec in order:
            try:
                text = data.decode(codec)
                break
            except (UnicodeError, LookupError):
                continue
    text = _ANSI.sub("", text)
    text = _OVERSTRIKE.sub("", text)
    controls = sum(1 for ch in text if ord(ch) < 32 and ch not in "\t\n\r\f\v")
    if controls > max(2, len(text) // 20):
        raise ValueError(f"{name}: binary data, not a text, HTML, Markdown or PDF file "
                         "(UTF-16 and UTF-32 need a byte-order mark)")
    return _CONTROL.sub("", text) if controls else text


_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]?[@-~]")  # terminal colour and cursor codes (CSI)
_OVERSTRIKE = re.compile(r".\x08")  # nroff bold/underline: a character, backspace, the character
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f]")


def to_text(data: bytes, name: str, content_type: str = "") -> str:
    kind = _kind(name, content_type)
    if kind == "pdf" or data[:5] == b"%PDF-":
        try:
            return pdf_text(data)
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from None
    declared = declared_charset(data, content_type) if kind == "html" or content_type else None
    text = decode_text(data, name, declared)
    if kind == "html" or (kind == "txt" and re.match(r"\s*(<!doctype html|<html)", text[:200], re.I)):
        return html_text(text)
    if kind == "md":
        return markdown_text(text)
    return text


def read_document(source: str) -> tuple[str, str]:
    """(plain text, where it came from) for a path, an https:// URL or '-' (standard input)."""
    if source == "-":
        data = sys.stdin.buffer.read(MAX_DOCUMENT_BYTES + 1)
        name, content_type = "stdin", ""
    elif source.startswith(("https://", "http://")):
        data, content_type = _fetch(source)
        name = source
    else:
        path = Path(source)
        if path.is_dir():
            raise ValueError(f"{source}: a folder; name a file (text, HTML, Markdown or PDF)")
        if not path.is_file():
            raise FileNotFoundError(f"{source}: no such file")
        if path.stat().st_size > MAX_DOCUMENT_BYTES:
            raise ValueError(f"{source}: over {MAX_DOCUMENT_BYTES >> 20} MB; a Terms of Service is far smaller")
        data, name, content_type = path.read_bytes(), path.name, ""
    if len(data) > MAX_DOCUMENT_BYTES:
        raise ValueError(f"{source}: over {MAX_DOCUMENT_BYTES >> 20} MB; a Terms of Service is far smaller")
    text = to_text(data, name, content_type)
    if not text.strip():
        raise ValueError(f"{source}: no text found")
    return text, name


def _fetch(url: str) -> tuple[bytes, str]:
    import requests

    from tosguard.components.storage import insecure_http_allowed, redact

    if not url.startswith("https://") and not insecure_http_allowed():
        raise ValueError(f"{redact(url)}: plain http is refused; use https (or set TOSGUARD_ALLOW_HTTP=1)")
    try:
        with requests.get(url, stream=True, timeout=(10, 60), headers={"User-Agent": "tosguard"}) as reply:
            reply.raise_for_status()
            chunks, size = [], 0
            for chunk in reply.iter_content(1 << 16):
                size += len(chunk)
                if size > MAX_DOCUMENT_BYTES:
                    raise ValueError(f"{redact(url)}: over {MAX_DOCUMENT_BYTES >> 20} MB")
                chunks.append(chunk)
            return b"".join(chunks), reply.headers.get("Content-Type", "")
    except requests.HTTPError as exc:
        raise ValueError(f"{redact(url)}: could not fetch it: HTTP {exc.response.status_code}") from None
    except requests.RequestException as exc:  # the message may carry the URL's secrets: its kind only
        raise ValueError(f"{redact(url)}: could not fetch it: {type(exc).__name__}") from None


# ------------------------------------------------------------------------------ labelled files


def read_labelled(path: str) -> dict:
    """A labelled file for `tosguard eval`: clauses JSONL ({"text", "labels"} per line), or a
    document `<name>.txt` with gold sentences in `<name>.labels.jsonl` ({"start", "end",
    "labels"} per line, as in the shared newer ToS set). Returns {"kind", "clauses",
    "labels", "text" (documents), "spans" (documents)}; a bad line names file and line."""
    file = Path(path)
    if file.suffix == ".txt" or file.name.endswith(".labels.jsonl"):
        stem = file.name[: -len(".labels.jsonl")] if file.name.endswith(".labels.jsonl") else file.stem
        text_file, labels_file = file.with_name(stem + ".txt"), file.with_name(stem + ".labels.jsonl")
        if not text_file.is_file() or not labels_file.is_file():
            raise FileNotFoundError(f"{path}: a labelled document needs {text_file.name} and {labels_file.name}")
        text = _utf8(text_file, keep_bom=True)  # the gold offsets count every character of the file
        spans, labels = [], []
        for number, row in _jsonl(labels_file):
            if not (isinstance(row.get("start"), int) and isinstance(row.get("end"), int)
                    and 0 <= row["start"] < row["end"] <= len(text)):
                raise ValueError(f"{labels_file}:{number}: start/end must be offsets into {text_file.name}")
            spans.append((row["start"], row["end"]))
            labels.append(_labels(row, labels_file, number))
        return {"kind": "document", "source": str(text_file.resolve()), "text": text, "spans": spans, "labels": labels,
                "clauses": [text[s:e] for s, e in spans]}
    clauses, labels = [], []
    for number, row in _jsonl(file):
        if not isinstance(row.get("text"), str) or not row["text"].strip():
            raise ValueError(f"{file}:{number}: 'text' must be a non-empty string")
        clauses.append(row["text"])
        labels.append(_labels(row, file, number))
    return {"kind": "clauses", "source": str(file.resolve()), "clauses": clauses, "labels": labels}


def _utf8(path: Path, keep_bom: bool = False) -> str:
    try:
        return path.read_bytes().decode("utf-8" if keep_bom else "utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 ({exc.reason} at byte {exc.start})") from None


def _jsonl(path: Path):
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    for number, line in enumerate(_utf8(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{number}: expected a JSON object")
        yield number, row


def _labels(row: dict, path: Path, number: int) -> list[int]:
    from tosguard.components.labels import NUM_CATEGORIES

    if "labels" not in row:
        raise ValueError(f"{path}:{number}: no 'labels' field (an empty list [] marks a fair clause)")
    labels = row["labels"]
    if not isinstance(labels, list) or any(isinstance(l, bool) or not isinstance(l, int)
                                           or not 0 <= l < NUM_CATEGORIES for l in labels):
        raise ValueError(f"{path}:{number}: 'labels' must be a list of category indices 0-{NUM_CATEGORIES - 1}")
    return labels


def categories_on_gold(spans: list[tuple[int, int]], flagged: list[dict]) -> list[set[str]]:
    """Document mode on gold sentences: per gold (start, end), the categories of every
    flagged clause ({"start", "end", "categories"}, as `analyze` reports them) that overlaps
    it by at least one character. A clause spanning two gold sentences gives its categories
    to both; a gold sentence cut into several clauses takes the union of theirs."""
    return [{c for f in flagged if f["start"] < end and f["end"] > start for c in f["categories"]}
            for start, end in spans]
