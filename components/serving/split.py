"""Clause splitting: a Terms of Service text -> the character spans of its clauses.

Chosen by measurement (benchmarks/split_study.py, issue #14): on the shared newer ToS the
costly mistakes were never extra cuts but missing ones, above all a section heading glued to
the first sentence of its section ("13. OUR LIABILITY We will...", "Governing Law If you
are..."), so that the heading took the categories of the sentence. The rules, in order:

1. Sentence ends: . ! ? (with any closing quotes or brackets) before whitespace, unless the
   next word starts in lower case (other than a list marker such as "a." or "ii."), or the
   word before is an abbreviation: always ("e.g.", "i.e.", "cf.", "Mr."), before a number
   ("No. 5", "Sec. 512", "Jan. 5"), or before anything but a word that usually opens a
   sentence ("U.S.", "Inc.", "Ltd.", an initial: "Acme Inc. We..." is cut, "U.S.
   Government" and "John F. Kennedy" are not). A lone section number ("12.") is a clause
   of its own; a lone letter or roman marker ("(a)", "iv.") stays with the clause it
   opens, as in LexGLUE's training text. URLs, e-mail addresses and decimals never hold a
   full stop followed by whitespace, so they are never cut.
2. Layout: a blank line always ends a clause; a single line break does when the line before
   ends in . ! ? : ; or looks like a heading (short, capitalised, no final punctuation), or
   the next line opens with a bullet or list marker; a bullet (•) ends a clause wherever
   it stands; a tab separates table cells and ends a clause, unless all before it is a
   list marker or a bullet ("(a)\tYou may...", "•\tWe may..."). Other line breaks are
   wrapped lines. Where a flattened page lost its line breaks, a word that opens sentences
   and never continues one ("If", "Where", "Relating", ...) capitalised right after a
   lower-case word (not a small word, not "see" or "titled") starts a clause ("...resolve
   disputes Relating to your...").
   A semicolon alone does not cut (LexGLUE sentences and the gold sentences of the shared
   documents keep "...; or (b)..." whole), a colon only before a list item ("...terminate
   your account: (a) if you..."), except in a list flattened into one line whose items
   start with capitals ("...arises from: A violation of...; Any claim for...;"): the colon
   opens it when its first item (four words or more) ends at a "; Capital" before any
   sentence end, and in the same sentence each "; Capital" ends an item of four words or more.
3. Headings run into the text (HTML or PDF flattened into one line): at each clause start,
   after an optional section marker, an ALL-CAPS heading followed by a mixed-case word or
   a section number, a Title-Case heading followed by a word that opens sentences ("We",
   "If", "These", "You", ...), by an ALL-CAPS sentence or by a section number, is cut off;
   after a section marker also a sentence-case heading ("7. User content Our products...").
   A heading is also cut before the document's own name when a verb follows it
   ("Modifications TripAdvisor may change..."): the names are the capitalised words the
   document itself uses as a subject and never writes in lower case (_subject_names).
4. Date stamps ("Effective October 7, 2020", "Last updated: 5 May 2021") are clauses of their
   own, so a flattened title block does not take the categories of the notice after it.

Linear in the text's length: every decision looks at a bounded window around one candidate
(LOOK_BACK / LOOK_AHEAD / HEADING_WINDOW characters), and no pattern backtracks over more
than one run of the same characters. A span longer than MAX_SPAN_CHARS (a text without
sentence boundaries) is cut at whitespace into pieces of at most CHUNK_CHARS, so no document
is ever scored as one giant clause.
"""
from __future__ import annotations

import re

MAX_SPAN_CHARS = 2_000
CHUNK_CHARS = 1_000
LOOK_BACK = 32  # longer than any abbreviation the rules look at
LOOK_AHEAD = 32
LIST_LOOK_AHEAD = 400  # how far after a colon a flattened list's next item is looked for
LIST_ITEM_WORDS = 4  # the fewest words of a flattened list's item
LIST_LOOK_BACK = 1_000  # how far before a semicolon the colon that opened the list is looked for
HEADING_WINDOW = 200  # a heading and the first words after it
HEADING_WORDS = 14
HEADING_PEELS = 3  # "Introduction 1.1 Contract When you use..." holds two headings

# Candidate cuts, each a match whose start ends the clause before and whose end starts the
# next: sentence punctuation (a run of it is tried only from its first character, so a long
# run costs one pass), a line break with the whitespace after it, or the place of a bullet.
_BULLETS = "•●▪◦■□►‣⁃"
_CLOSERS = "\"'”’»)]"
_CANDIDATE = re.compile(
    rf"(?<![.!?:;])[.!?:;]+[{re.escape(_CLOSERS)}]*(?P<ws>\s+)"
    r"|(?P<nl>\n)\s*"
    r"|(?P<tab>\t)[^\S\n]*"
    rf"|(?P<bullet>)(?=[{_BULLETS}])"
    r"|(?<=[a-z])(?P<lost>[^\S\n]+)(?=(?:If|When|Where|Unless|Except|Relating|Without|Notwithstanding"
    r"|Although|While|Because|Whether|Please)[^\S\n]+[a-z])"
)

# Abbreviations (lower case, without the final full stop): never a sentence end...
_ALWAYS = {"e.g", "i.e", "eg", "ie", "cf", "viz", "vs", "mr", "mrs", "ms", "dr", "prof", "approx", "incl", "esp",
           "resp", "w.r.t", "a.k.a"}
# ...not before a number or a bracket ("No. 5", "Sec. 512(f)", "Jan. 5")...
_BEFORE_NUMBER = {"no", "nos", "art", "arts", "sec", "secs", "s", "ss", "para", "paras", "p", "pp", "fig", "vol",
                  "ch", "cl", "reg", "ref", "tel", "ph", "fax", "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep",
                  "sept", "oct", "nov", "dec", "ver", "v", "op", "ed", "rev"}
# ...and a sentence end only before a word that opens sentences ("Acme Inc. We may...").
_WEAK = {"inc", "ltd", "corp", "co", "llc", "llp", "lp", "plc", "gmbh", "ag", "sa", "sarl", "bv", "nv", "pty", "pte",
         "jr", "sr", "st", "al", "dept", "univ", "assn", "bros", "ave", "blvd", "rd", "ste", "fl"}
_INITIALISM = re.compile(r"(?:[a-z]\.)+[a-z]")  # u.s, u.s.c, b.v, r.l
# Words that open sentences far more often than they continue a capitalised name.
_OPENERS = {"we", "you", "your", "our", "us", "if", "these", "this", "the", "those", "that", "when", "where", "unless",
            "please", "by", "in", "to", "for", "any", "all", "each", "every", "nothing", "no", "except", "subject",
            "notwithstanding", "without", "upon", "under", "at", "as", "it", "its", "there", "such", "some",
            "certain", "neither", "although", "while", "because", "since", "before", "after", "during", "whether",
            "once", "from", "on", "with", "a", "an", "i", "my", "they", "their", "he", "she", "here", "what", "how",
            "who", "why", "also", "both", "either", "many", "most", "not", "only", "other", "note", "further",
            "additionally", "however", "therefore", "accordingly", "finally", "then", "occasionally", "sometimes",
            "generally", "currently", "periodically", "otherwise", "instead", "thus"}
# Words that open sentences and not headings.
_SENTENCE_ONLY = {"we", "you", "i", "if", "when", "where", "unless", "please", "by", "to", "in", "except", "nothing",
                  "notwithstanding", "subject", "although", "while", "because", "neither", "it", "there", "they",
                  "he", "she", "without", "upon", "once", "whether"}
# Words a heading does not end on.
_FUNCTION = {"a", "an", "the", "of", "and", "or", "to", "for", "in", "on", "with", "by", "at", "from", "as", "that",
             "under", "about", "into", "than", "via", "per", "between", "against", "&", "-", "/", "–", "—", "nor",
             "its", "their", "our", "your", "this", "these", "and/or"}
# Words of a sentence, never of a heading ("Will These Terms Ever Change?" is a question)...
_AUXILIARIES = {"may", "will", "shall", "must", "can", "could", "would", "should", "is", "are", "was", "were", "be",
                "been", "do", "does", "did", "have", "has", "had"}
# ...and, in lower case, not of a sentence-case heading either.
_SENTENCE_VERBS = _AUXILIARIES | {"not", "agree", "agrees", "acknowledge", "understand", "accept", "reserve", "reserves"}
# "Any Content You submit..." is a sentence, not the heading "Any Content".
_DETERMINERS = {"any", "all", "each", "every", "the", "this", "these", "that", "those", "such", "some", "no", "certain",
                "other", "a", "an"}
_PRONOUNS = {"you", "we", "i", "they", "us"}
# Verbs after which a capitalised word at a sentence start is the document's own subject
# ("TripAdvisor may...", "Skyscanner reserves...", "WhatsApp is...").
_NAME_VERBS = _AUXILIARIES | {"might", "cannot", "reserves", "agrees", "uses", "provides", "offers", "owns", "grants",
                              "makes", "allows", "collects", "processes", "respects", "wants", "works", "retains"}
# Words that open a sentence's adverbial ("Outside the EEA Acme may...", "Likewise Acme
# may..."), not a heading before the document's name.
_NOT_HEADING_START = {"outside", "inside", "within", "beyond", "throughout", "among", "across", "following",
                      "regardless", "likewise", "nevertheless", "nonetheless", "thereafter", "hereafter", "henceforth",
                      "meanwhile", "moreover", "furthermore", "hence", "consequently", "again", "still", "yet", "so",
                      "now", "today", "between", "besides", "despite", "against", "via", "per", "into", "onto",
                      "towards", "toward", "until", "till", "unlike", "like", "near", "beside", "along", "around",
                      "about", "above", "below", "behind", "over", "through", "where", "whereas", "whenever"}
_NAME = re.compile(r"[A-Z][A-Za-z0-9]{0,30}[a-z][A-Za-z0-9]{0,30}!?")
# A date stamp: "Effective October 7, 2020", "Last updated: 5 May 2021", "Last Revised 2021-05-05".
_MONTH = (r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?|Sep(?:t(?:ember)?)?"
          r"|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)\.?")
_GAP = r"[^\S\n]{1,3}"  # a few spaces or tabs, no line break (bounded: no backtracking over long runs)
_DATE = (rf"(?:{_MONTH}{_GAP}\d{{1,2}}(?:st|nd|rd|th)?,?{_GAP}\d{{4}}|\d{{1,2}}(?:st|nd|rd|th)?{_GAP}{_MONTH},?{_GAP}\d{{4}}"
         r"|\d{4}-\d{2}-\d{2}|\d{1,2}[/.]\d{1,2}[/.]\d{2,4})")
_STAMP = re.compile(
    r"(?<![\w,])(?:Effective(?:[^\S\n]{1,3}(?:[Dd]ate|as[^\S\n]{1,3}of|from|on))?|Last[^\S\n]{1,3}(?:[Uu]pdated|[Aa]mended|[Mm]odified|[Rr]evised|[Cc]hanged)"
    rf"(?:{_GAP}on)?|Updated|Revised|Posted|Published|Version{_GAP}[Dd]ate)[^\S\n]{{0,3}}:?[^\S\n]{{0,3}}{_DATE}(?![\w/.-]\w)")

_NUMBER_MARKER = r"\(?\d{1,3}(?:\.\d{1,3}){0,3}"
_LETTER_MARKER = r"\(?(?:[a-zA-Z]|[ivxlcIVXLC]{1,6})[.)]"
_MARKER = re.compile(rf"{_NUMBER_MARKER}[.)]?|{_LETTER_MARKER}|§+\d[\d.]*")  # opens a clause: 1 1.2 (a) iv. §3
_LONE_MARKER = re.compile(rf"{_NUMBER_MARKER}[.)]|{_LETTER_MARKER}")
_SECTION_NUMBER = re.compile(r"\d{1,3}(?:\.\d{1,3}){1,3}\.?|\d{1,3}\.")
_LIST_ITEM = re.compile(rf"(?:\(?(?:[a-z]|[ivx]{{1,5}}|\d{{1,2}})\)|\d{{1,3}}(?:\.\d{{1,3}}){{1,3}}\.?|[{_BULLETS}])\s")
_NEXT_LIST_MARKER = re.compile(r"\(?(?:[a-z]|[ivxlc]{1,6})[.)]\s")
_LINE_LIST_MARKER = re.compile(rf"[-*{_BULLETS}]|(?:{_NUMBER_MARKER}[.)]|{_LETTER_MARKER})\s")
_INTRODUCE_TITLES = {"see", "titled", "entitled", "called", "named", "heading", "headed", "section", "film", "book",
                     "game", "song", "show", "series", "app", "page", "tab", "link", "button", "menu", "due"}
_NOT_AFTER_SECTION = {"section", "sections", "article", "articles", "clause", "clauses", "paragraph", "part", "schedule",
                      "appendix", "annex", "exhibit", "chapter", "version", "no", "item", "step", "rule", "page"}
_WORD = re.compile(r"\S+")
_NEXT_ITEM = re.compile(r";[^\S\n]+(?!(?:You|We|I|They|It|He|She)\b)[A-Z][a-z]")  # an item, not "; You may..."
_SENTENCE_STOP = re.compile(r"[.!?]\s")
_TAB_BULLET = re.compile(rf"[-*–—{_BULLETS}]+")  # "•\tWe may..." is one list item
_EDGE = "\"'“”‘’«»()[]{}*_"


def _bare(word: str) -> str:
    return word.strip(_EDGE)


def _previous_word(text: str, start: int, cut: int) -> str:
    """The word before the final punctuation at `cut`, lower case, quotes and brackets off."""
    window = text[max(start, cut - LOOK_BACK):cut]
    word = window.rsplit(None, 1)[-1] if window.strip() else ""
    return word.lstrip(_EDGE).rstrip(_CLOSERS).rstrip(".!?").lower()


def _sentence_end(text: str, start: int, match: re.Match) -> bool:
    """Whether the punctuation in `match` ends the clause begun at `start`."""
    after = match.end()
    following = text[after:after + LOOK_AHEAD]
    if not following or text.count("\n", match.start("ws"), after) >= 2:
        return True
    first = following[0]
    mark = text[match.start():match.start("ws")].rstrip(_CLOSERS)[-1]
    if mark in ":;":  # at the end of a line, or a colon before a list: "...where: (a) you..."
        if "\n" in text[match.start("ws"):after] or (mark == ":" and bool(_LIST_ITEM.match(following))):
            return True
        return _inline_item(text, start, match, following, mark)
    if first.islower():
        return bool(_NEXT_LIST_MARKER.match(following))
    cut = match.start("ws")
    if text[cut - 1] != ".":
        return True  # ! ? and punctuation inside quotes or brackets end clauses
    if cut - start <= 12 and _LONE_MARKER.fullmatch(text[start:cut].strip()):
        return text[start:cut].lstrip()[0].isdigit()  # "12." stands alone; "(a)" "iv." open what follows
    word = _previous_word(text, start, cut)
    next_word = _bare(following.split(None, 1)[0]).lower()
    if word in _ALWAYS:
        return False
    if word in _BEFORE_NUMBER and (first.isdigit() or first == "("):
        return False
    if word in _WEAK or _INITIALISM.fullmatch(word) or (len(word) == 1 and text[cut - 2].isupper()):
        return next_word in _OPENERS  # "U.S. Government", "John F. Kennedy", but "...in the U.S. If you..."
    return True


def _inline_item(text: str, start: int, match: re.Match, following: str, mark: str) -> bool:
    """A list flattened into one line, its items starting with capitals: "...arises from: A
    violation of...; Any claim for...; then both parties...". Items have at least
    LIST_ITEM_WORDS words ("including: Apple; Google" and addresses stay whole). A colon
    followed by a capital opens such a list when its first item ends at a "; Capital" within
    LIST_LOOK_AHEAD characters, before any sentence end; a semicolon followed by a capital
    ends an item when the colon that opened the list stands within LIST_LOOK_BACK characters
    before it, in the same sentence."""
    word = following.split(None, 1)[0] if following.strip() else ""
    if not word or not word[0].isupper() or (len(_bare(word)) > 1 and _is_caps(word)) or _lower(word) in _PRONOUNS:
        return False  # an item starts with a capital, not ALL CAPS, not a pronoun ("...; You may...")
    at = match.start("ws")
    if mark == ":":  # the first item: up to the next semicolon, which a capitalised item follows
        end = text.find(";", at, at + LIST_LOOK_AHEAD)
        return (end > 0 and _NEXT_ITEM.match(text, end) is not None and _SENTENCE_STOP.search(text, at, end) is None
                and len(text[at:end].split()) >= LIST_ITEM_WORDS)
    window_start = max(0, at - LIST_LOOK_BACK)
    colon = text.rfind(": ", window_start, at)
    if colon < 0 or _SENTENCE_STOP.search(text, colon, at) is not None:
        return False  # no colon opened a list in this sentence ("Last updated: ... . If you...")
    item_start = max(colon, text.rfind(";", colon, at - 1)) + 1
    return len(text[item_start:at].split()) >= LIST_ITEM_WORDS


def _line_break_ends(text: str, start: int, at: int, after: int) -> bool:
    """Whether a single line break at `at` ends the clause begun at `start`."""
    following = text[after:after + LOOK_AHEAD]
    if not following or _LINE_LIST_MARKER.match(following):
        return True
    window = text[max(start, at - 120):at]
    line = window[window.rfind("\n") + 1:].strip()
    if not line:
        return False
    if line[-1] in ".!?:;" or (line[-1] in _CLOSERS and len(line) > 1 and line[-2] in ".!?"):
        return True
    whole_line = "\n" in window or at - start <= 120
    return (whole_line and len(line) <= 80 and (following[0].isupper() or following[0].isdigit())
            and _looks_like_heading(line))


def _looks_like_heading(line: str) -> bool:
    words = [w for w in (_bare(w) for w in line.split()) if w]
    if len(words) > 1 and _MARKER.fullmatch(words[0]):
        words = words[1:]
    if not words or len(words) > HEADING_WORDS or words[-1].lower() in _FUNCTION:
        return False
    return all(w[0].isupper() or w[0].isdigit() or w.lower() in _FUNCTION for w in words)


def _stamp_cuts(text: str) -> list[int]:
    """Cuts around date stamps run into the text ("Terms of service Effective October 7, 2020
    Last Amended October 7, 2020 IMPORTANT NOTICE: ..."): before the stamp and after its date,
    only when the stamp stands alone: after whitespace, not after a small word, a list marker
    or a bracket ("This Agreement is made Effective as of...", "(a) Effective May 1, ...",
    "(Effective May 1, 2020)"), and before the end of the text, a full stop, or a capitalised
    word or a number ("Effective May 1, 2020, the plan costs..." goes on: no cut)."""
    cuts = []
    for m in _STAMP.finditer(text):
        window = text[max(0, m.start() - LOOK_BACK):m.start()]
        before = window.split()
        if window and not window[-1].isspace():
            continue
        if before and (before[-1].lower().strip(",") in _FUNCTION | _AUXILIARIES or _MARKER.fullmatch(before[-1])
                       or _TAB_BULLET.fullmatch(before[-1]) or before[-1][-1] in "([{\"'“‘«"):
            continue
        rest = text[m.end():m.end() + 3]
        following = rest.strip()[:1]
        if rest and not (rest[0] in ".;" or (rest[0].isspace() and (not following or following.isupper()
                                                                    or following.isdigit()))):
            continue
        cuts.append(m.start())
        if rest[:1].isspace() and following:
            cuts.append(m.end())
    return cuts


def _subject_names(text: str) -> frozenset[str]:
    """The names the document uses as the subject of its own sentences: capitalised words
    that stand after a lower-case word at least twice (so not just capitalised at a sentence
    start), come before a verb such as "may", "is" or "reserves" at least twice with no
    determiner or other capitalised word before them, and are
    (almost) never written in lower case ("Service" and "Content" are defined terms whose
    words also appear as "service" and "content"): "Skyscanner", "TripAdvisor", "YouTube"."""
    seen: dict[str, list[int]] = {}  # word -> [uses, after a lower-case word, before a verb]
    lower: dict[str, int] = {}
    words = text.split()
    for i, raw in enumerate(words):
        word = raw.strip(_EDGE).rstrip(".,;:!?")
        if word.islower():
            lower[word] = lower.get(word, 0) + 1
            continue
        if not _NAME.fullmatch(word) or word.lower() in _OPENERS or word.lower() in _FUNCTION:
            continue
        counts = seen.setdefault(word, [0, 0, 0])
        counts[0] += 1
        counts[1] += i > 0 and words[i - 1].isalpha() and words[i - 1].islower()
        # a subject on its own: "Skyscanner may", ". Rovio may", not "the Service may",
        # "Some Services may" or "Skype WiFi is"
        before = words[i - 1] if i else "."
        alone = before[-1] in ".!?:" or (before.islower() and before.strip(_EDGE) not in _DETERMINERS)
        counts[2] += alone and raw == word and i + 1 < len(words) and words[i + 1] in _NAME_VERBS
    return frozenset(w for w, (uses, mid, verb) in seen.items()
                     if mid >= 2 and verb >= 2 and lower.get(w.lower(), 0) * 10 <= uses)


def _raw_spans(text: str) -> list[tuple[int, int]]:
    spans, start = [], 0
    stamps, next_stamp = _stamp_cuts(text), 0
    for match in _CANDIDATE.finditer(text):
        while next_stamp < len(stamps) and stamps[next_stamp] < match.start():
            cut = stamps[next_stamp]
            next_stamp += 1
            if cut > start:
                spans.append((start, cut))
                start = cut
        if match.group("nl") is not None:
            at = match.start("nl")
            blank = text.count("\n", at + 1, match.end()) > 0
            if not (blank or _line_break_ends(text, start, at, match.end())):
                continue
            cut = at
        elif match.group("bullet") is not None:
            cut = match.start()
        elif match.group("lost") is not None:
            # A line break lost when the page was flattened: a word that opens sentences, capitalised
            # after a lower-case word ("...go to court to resolve disputes Relating to your..."),
            # not in a title ("...Disputes Not Subject to Arbitration").
            before = text[max(start, match.start() - LOOK_BACK):match.start()].split()
            if (not before or not before[-1].isalpha() or not before[-1].islower()
                    or before[-1] in _FUNCTION - {"and", "or", "nor"} or before[-1] in _INTRODUCE_TITLES):
                continue  # "...in the Please cancel link"; but a list's "...relief; or Within the..."
            cut = match.start()
        elif match.group("tab") is not None:
            # A tab separates table cells: each cell is read on its own, unless all before
            # the tab is a list marker or a bullet ("(a)\tYou may...", "•\tWe may...").
            before = text[start:match.start()].strip()
            if not before or _MARKER.fullmatch(before) or _TAB_BULLET.fullmatch(before):
                continue
            cut = match.start()
        else:
            if not _sentence_end(text, start, match):
                continue
            cut = match.start("ws")
        if cut > start:
            spans.append((start, cut))
        start = match.end()
    for cut in stamps[next_stamp:]:
        if cut > start:
            spans.append((start, cut))
            start = cut
    spans.append((start, len(text)))
    return spans


# ------------------------------------------------------------------------------ headings


def _is_caps(word: str) -> bool:
    return any(c.isalpha() for c in word) and not any(c.islower() for c in word)


def _lower(word: str) -> str:
    return _bare(word).rstrip(":").lower()


def _heading_cut(text: str, start: int, end: int, after_marker: bool = False,
                 names: frozenset[str] = frozenset()) -> int | None:
    """Where a heading at the start of the clause [start, end) ends and the clause proper
    begins, or None. Looks at HEADING_WINDOW characters only."""
    window_end = min(end, start + HEADING_WINDOW)
    words = [(m.start(), m.group()) for m in _WORD.finditer(text, start, window_end)]
    if window_end < end and words:
        words.pop()  # the window may cut the last word
    marked = bool(words) and _MARKER.fullmatch(words[0][1]) is not None
    words = words[1:] if marked else words
    marked = marked or after_marker
    words = words[:HEADING_WORDS + 1]
    if len(words) < 2:
        return None
    if _is_caps(words[0][1]):
        return _caps_heading_cut(words)
    return _title_heading_cut(words, marked, names)


def _caps_heading_cut(words: list[tuple[int, str]]) -> int | None:
    """An ALL-CAPS heading: cut before the first mixed-case word or section number after it
    ("OUR LIABILITY We will...", "CHANGES TO THE TERMS 3.1 Skype may..."). A heading before
    an ALL-CAPS sentence is left alone: nothing tells where one ends and the other begins."""
    letters = 0
    for i, (at, word) in enumerate(words):
        bare = _bare(word)
        if i and (_SECTION_NUMBER.fullmatch(word) or (bare[:1].isupper() and not _is_caps(bare))):
            before = _lower(words[i - 1][1])
            if (letters >= 5 or i >= 2) and before not in _FUNCTION and before not in _NOT_AFTER_SECTION:
                return at
            return None
        if not (_is_caps(word) or bare in ("&", "-", "/", "–", "—")):
            return None
        if word[-1] in ",.!?":
            return None
        letters += sum(c.isalpha() for c in word)
    return None


def _title_heading_cut(words: list[tuple[int, str]], marked: bool, names: frozenset[str] = frozenset()) -> int | None:
    """A Title-Case heading (or a short sentence-case one): cut before an ALL-CAPS sentence or
    a section number that follows it, or before the word of the run that opens the sentence
    ("Governing Law If you...", "Controlling Law These Terms will...")."""
    title = _heading_run(words, lowercase=False)
    cut = _cut_after_run(words, title, names=names) if title else None
    if cut is not None or not marked:
        return cut
    # After a section marker, sentence case too ("7. User content Our products may..."):
    # the first opener after an acceptable heading.
    run = _heading_run(words, lowercase=True)
    cut = _cut_after_run(words, run, openers=False) if run else None
    if cut is not None:
        return cut
    for i in range(1, run):
        if _opens_sentence(_bare(words[i][1])) and _heading_ok(words, i):
            return words[i][0]
    return None


def _heading_run(words: list[tuple[int, str]], lowercase: bool) -> int:
    """How many words from the start can belong to a heading: capitalised words, numbers and
    small words (and lower-case words when asked), up to a full stop or an ALL-CAPS sentence."""
    run = 0
    for i, (_, word) in enumerate(words):
        core = _bare(word).rstrip(",;:")
        if not core or word[-1] in ".!?":
            break
        if i and len(words) >= i + 3 and all(_is_caps(w) and len(_bare(w)) >= 2 for _, w in words[i:i + 3]):
            break  # an ALL-CAPS sentence starts here
        if not (core[0].isupper() or core.isdigit() or core.lower() in _FUNCTION
                or (lowercase and core.replace("-", "").isalpha() and core.islower())):
            break
        run += 1
        if word[-1] == ":":
            break
    return run


def _heading_ok(words: list[tuple[int, str]], i: int) -> bool:
    """Whether words[:i] can be a heading, with the sentence starting at words[i]."""
    head = [_lower(w) for _, w in words[:i]]
    lettered = re.fullmatch(r"[A-Z0-9]{1,3}:", _bare(words[i - 1][1])) is not None  # "Appendix A:"
    if not head[-1] or (head[-1] in _FUNCTION and not lettered) or head[-1][-1] in ",;":
        return False
    if head[0] in _SENTENCE_ONLY and not (
            head[0] in ("you", "we") and i >= 3
            and all(_bare(w)[:1].isupper() or _lower(w) in _FUNCTION for _, w in words[:i])):
        return False  # "By using the Services You...", but "You and Zynga Both Agree to Arbitrate By..."
    if any(w.rstrip(",;") in _AUXILIARIES for w in head):
        return False  # "Will These Terms Ever Change?" is a question, not a heading
    lowercase = [h for h, (_, w) in zip(head, words) if _bare(w).islower() and h not in _FUNCTION]
    if any(w.rstrip(",;") in _SENTENCE_VERBS for w in lowercase):
        return False
    opener = _lower(words[i][1]) if i < len(words) else ""
    return not (opener in _PRONOUNS and head[0] in _DETERMINERS)  # "Any Content You submit..."


def _cut_after_run(words: list[tuple[int, str]], run: int, openers: bool = True,
                   names: frozenset[str] = frozenset()) -> int | None:
    """Where the clause proper begins after words[:run], a possible heading: at an ALL-CAPS
    sentence or a section number right after it (or after a colon), or (openers) at the run's
    last sentence opener, when lower-case words go on after the run."""
    if run < len(words):
        next_at, next_word = words[run]
        caps_sentence = len(words) >= run + 3 and all(_is_caps(w) and len(_bare(w)) >= 2 for _, w in words[run:run + 3])
        if words[run - 1][1].endswith(":") or caps_sentence:
            return next_at if _bare(next_word)[:1].isupper() and _heading_ok(words, run) else None
        if _SECTION_NUMBER.fullmatch(next_word):
            ok = _heading_ok(words, run) and _lower(words[run - 1][1]) not in _NOT_AFTER_SECTION
            return next_at if ok else None
    if not openers or run >= len(words) or not _bare(words[run][1])[:1].islower():
        return None  # "Keeping Your Account Secure." is all heading: no sentence goes on after it
    # Title Case stops within a few words of the sentence: its last opener
    openers = [i for i in range(max(1, run - 4), run) if _opens_sentence(_bare(words[i][1]))]
    # the document's own subject ("Modifications TripAdvisor may change...")
    if (run >= 2 and _bare(words[run - 1][1]) in names and _lower(words[run][1]) in _NAME_VERBS
            and _lower(words[0][1]) not in _OPENERS | _NOT_HEADING_START and not _lower(words[0][1]).endswith("ly")
            and _lower(words[run - 2][1]) not in _OPENERS):
        openers.append(run - 1)
    return words[openers[-1]][0] if openers and _heading_ok(words, openers[-1]) else None


def _opens_sentence(bare: str) -> bool:
    return (bare.lower() in _OPENERS and bare[0].isupper() and not _is_caps(bare)) or bare == "I"


# ------------------------------------------------------------------------------ assembly


def _chunks(text: str, start: int, end: int):
    """Cut an overlong span at whitespace into pieces of at most CHUNK_CHARS."""
    while end - start > CHUNK_CHARS:
        cut = text.rfind(" ", start + CHUNK_CHARS // 2, start + CHUNK_CHARS)
        cut = cut if cut > start else start + CHUNK_CHARS
        yield start, cut
        start = cut
    yield start, end


def _trim(text: str, start: int, end: int) -> tuple[int, int] | None:
    piece = text[start:end]
    stripped = piece.strip()
    if not stripped:
        return None
    lead = len(piece) - len(piece.lstrip())
    return start + lead, start + lead + len(stripped)


def split_sentences(text: str) -> list[tuple[int, int]]:
    """Character spans (start, end) of the sentences (clauses) of a document, whitespace trimmed."""
    out = []
    names = _subject_names(text)
    for s, e in _raw_spans(text):
        span = _trim(text, s, e)
        if span is None:
            continue
        s, e = span
        pieces = []
        # a heading after a lone "12." is a numbered one, as in "12. LIABILITY"
        after_marker = bool(out and out[-1][1] - out[-1][0] <= 12 and _LONE_MARKER.fullmatch(text[out[-1][0]:out[-1][1]]))
        stamp = _STAMP.match(text, s)
        for _ in range(HEADING_PEELS if stamp is None or stamp.end() < e else 0):  # "Effective: May 25, 2018"
            cut = _heading_cut(text, s, e, after_marker and not pieces, names)
            if cut is None or cut <= s or cut >= e:
                break
            pieces.append((s, cut))
            s = cut
        pieces.append((s, e))
        for ps, pe in pieces:
            for cs, ce in (_chunks(text, ps, pe) if pe - ps > MAX_SPAN_CHARS else [(ps, pe)]):
                chunk = _trim(text, cs, ce)
                if chunk:
                    out.append(chunk)
    return out
