"""Clause splitting (components/serving/split.py): the structure of real Terms of Service,
offsets that point back into the text, and linear time on hostile input."""
from __future__ import annotations

import random
import time

import pytest

from tosguard.components.documents import categories_on_gold
from tosguard.components.serving.split import CHUNK_CHARS, MAX_SPAN_CHARS, split_sentences


def parts(text: str) -> list[str]:
    spans = split_sentences(text)
    for (s, e), (s2, _) in zip(spans, spans[1:]):
        assert s < e <= s2, spans
    for s, e in spans:
        assert text[s:e] == text[s:e].strip() != "", (s, e)
    return [text[s:e] for s, e in spans]


@pytest.mark.parametrize("text, expected", [
    # a numbered ALL-CAPS heading run into its first sentence (HTML flattened to one line)
    ("13. OUR LIABILITY We will do our best. 14. APPLICABLE LAW These conditions are governed by Dutch law.",
     ["13.", "OUR LIABILITY", "We will do our best.", "14.", "APPLICABLE LAW",
      "These conditions are governed by Dutch law."]),
    # Title-Case headings: cut before the word that opens the sentence
    ("Governing Law If you live in Germany, German law applies. Terminations by You You may stop at any time.",
     ["Governing Law", "If you live in Germany, German law applies.", "Terminations by You",
      "You may stop at any time."]),
    ("Controlling Law These Terms will be governed by California law.",
     ["Controlling Law", "These Terms will be governed by California law."]),
    # a heading, then a numbered sub-heading, then the sentence
    ("Introduction 1.1 Contract When you use our Services you agree to these terms.",
     ["Introduction", "1.1 Contract", "When you use our Services you agree to these terms."]),
    # a sentence-case heading after a section number; a heading before an ALL-CAPS sentence
    ("7. User content Our products may include interactive features. "
     "18. Limitation of liability THE PARTIES SHALL HAVE NO LIABILITY.",
     ["7.", "User content", "Our products may include interactive features.", "18.", "Limitation of liability",
      "THE PARTIES SHALL HAVE NO LIABILITY."]),
    # headings on lines of their own, with and without a blank line after them
    ("TERMS OF SERVICE\nLast updated: May 1, 2024\n\nPlease read these terms carefully.",
     ["TERMS OF SERVICE", "Last updated: May 1, 2024", "Please read these terms carefully."]),
])
def test_headings_are_cut_from_the_sentence_they_open(text, expected):
    assert parts(text) == expected


@pytest.mark.parametrize("text, expected", [
    # not headings: a sentence starting with a capitalised name, a determiner before "You",
    # a question, a sentence opening with "By"
    ("Amazon Prime Video may change its catalogue.", ["Amazon Prime Video may change its catalogue."]),
    ("Any Content You submit remains yours.", ["Any Content You submit remains yours."]),
    ("Keeping Your Account Secure. You are responsible for it.",
     ["Keeping Your Account Secure.", "You are responsible for it."]),
    ("Will These Terms Ever Change? Yes.", ["Will These Terms Ever Change?", "Yes."]),
    ("By using the Services You agree to these Terms.", ["By using the Services You agree to these Terms."]),
    ("EU Users have the right to withdraw.", ["EU Users have the right to withdraw."]),
])
def test_sentences_that_only_look_like_headings_stay_whole(text, expected):
    assert parts(text) == expected


@pytest.mark.parametrize("text, expected", [
    # a title block flattened into one line: title, two dated stamps, then the notice
    ("Terms of service Effective October 7, 2020 Last Amended October 7, 2020 IMPORTANT NOTICE: "
     "DISPUTES MUST BE RESOLVED BY ARBITRATION.",
     ["Terms of service", "Effective October 7, 2020", "Last Amended October 7, 2020",
      "IMPORTANT NOTICE: DISPUTES MUST BE RESOLVED BY ARBITRATION."]),
    # a stamp with a colon stays whole (no heading cut after "Effective:")
    ("Posted: April 17, 2018 Effective: May 25, 2018 You can see our previous terms here.",
     ["Posted: April 17, 2018", "Effective: May 25, 2018", "You can see our previous terms here."]),
    ("Last updated 5 May 2021. Welcome!", ["Last updated 5 May 2021.", "Welcome!"]),
    # dates inside a sentence are not stamps
    ("These Terms are effective October 7, 2020 and replace the old ones.",
     ["These Terms are effective October 7, 2020 and replace the old ones."]),
    ("This version is Effective October 7, 2020 for all users.",
     ["This version is Effective October 7, 2020 for all users."]),
    # a stamp that a sentence, a list item or a bracket goes on from is not cut out
    ("We may change fees: (a) Effective May 1, 2020, the basic plan costs $5; and (b) Effective June 1, 2020, "
     "the pro plan costs $9.",
     ["We may change fees:", "(a) Effective May 1, 2020, the basic plan costs $5; and (b) Effective June 1, 2020, "
                             "the pro plan costs $9."]),
    ("The prior terms (Effective May 1, 2020) continue to apply.",
     ["The prior terms (Effective May 1, 2020) continue to apply."]),
    ("This Agreement is made Effective as of March 1, 2021 between you and Acme.",
     ["This Agreement is made Effective as of March 1, 2021 between you and Acme."]),
    ('Read the page titled "Terms Effective May 1, 2020" before you buy.',
     ['Read the page titled "Terms Effective May 1, 2020" before you buy.']),
    ("These Terms were Last updated on May 5, 2021 Acme may change them again.",
     ["These Terms were Last updated on May 5, 2021 Acme may change them again."]),
])
def test_date_stamps_stand_alone(text, expected):
    assert parts(text) == expected


ROVIO = ("Rovio may change the Services. You can write to Rovio. Players who buy from Rovio get receipts. "
         "Rovio will tell you first. Rovio reserves the right to stop. ")


@pytest.mark.parametrize("text, expected", [
    # the document's own subject after a heading
    (ROVIO + "Availability of the Services Rovio may limit the Services.",
     ["Availability of the Services", "Rovio may limit the Services."]),
    (ROVIO + "Modifications Rovio may change these Terms.", ["Modifications", "Rovio may change these Terms."]),
    # not after a determiner or a quantifier, and not as the start of a name
    (ROVIO + "The Rovio account is yours.", ["The Rovio account is yours."]),
    (ROVIO + "All Rovio games are free.", ["All Rovio games are free."]),
    # a sentence's adverbial before the name is not a heading
    (ROVIO + "Under the DMCA Rovio may remove content.", ["Under the DMCA Rovio may remove content."]),
    (ROVIO + "Outside the EEA Rovio may transfer your data.", ["Outside the EEA Rovio may transfer your data."]),
    (ROVIO + "Alternatively Rovio may refund you.", ["Alternatively Rovio may refund you."]),
    (ROVIO + "Your Rovio Account Rovio may close it.", ["Your Rovio Account Rovio may close it."]),
])
def test_a_heading_before_the_documents_own_name_is_cut(text, expected):
    assert parts(text)[5:] == expected


def test_a_common_word_is_not_taken_for_the_documents_name():
    """"Service" is written in lower case too, and "the Service may" has a determiner: not a
    name, so "Terms of Service Service may..." is left to the other rules."""
    text = ("The Service may change. Our service is free. Users of the Service agree. The Service is new. "
            "Privacy Service Service may log your visits.")
    assert parts(text)[-1] == "Privacy Service Service may log your visits."


@pytest.mark.parametrize("text, expected", [
    # a Title-Case heading that opens with a pronoun, before a sentence opening with "By"
    ("You and Acme Both Agree to Arbitrate By accepting these Terms, you agree to arbitrate.",
     ["You and Acme Both Agree to Arbitrate", "By accepting these Terms, you agree to arbitrate."]),
    ("We Price Match Introduction TCs These terms apply to all our services.",
     ["We Price Match Introduction TCs", "These terms apply to all our services."]),
    # a lettered appendix heading
    ("Appendix A: Acme Shopping By shopping with us, you agree to these terms.",
     ["Appendix A:", "Acme Shopping", "By shopping with us, you agree to these terms."]),
])
def test_more_headings(text, expected):
    assert parts(text) == expected


@pytest.mark.parametrize("text, expected", [
    # a list whose line breaks were lost: each item opens with a capitalised sentence opener
    ("The parties will go to court to resolve disputes Relating to your intellectual property; or "
     "Where the only relief sought is an injunction.",
     ["The parties will go to court to resolve disputes", "Relating to your intellectual property; or",
      "Where the only relief sought is an injunction."]),
    # not after a capitalised word (a title), and not before a name
    ("You may read the section on Disputes Not Subject to Arbitration below.",
     ["You may read the section on Disputes Not Subject to Arbitration below."]),
    ("Some Rights Relating to the Service are ours.", ["Some Rights Relating to the Service are ours."]),
    ("You agree to the terms of Within Ltd.", ["You agree to the terms of Within Ltd."]),
    ("Put Copyright Notice in the Subject line of your message.",
     ["Put Copyright Notice in the Subject line of your message."]),
    ("Tap the Please cancel link.", ["Tap the Please cancel link."]),
    ("For details please see Where we store your data below.", ["For details please see Where we store your data below."]),
    ("Invoices are due Within thirty (30) days of receipt.", ["Invoices are due Within thirty (30) days of receipt."]),
])
def test_line_breaks_lost_in_flattening(text, expected):
    assert parts(text) == expected


@pytest.mark.parametrize("text, expected", [
    # a list flattened into one line, its items starting with capitals after a colon
    ("To the extent the Dispute arises from: A violation of our intellectual property rights in any manner; "
     "Any claim related to theft or piracy of the games; Any claim for equitable relief; then both parties "
     "may go to court.",
     ["To the extent the Dispute arises from:", "A violation of our intellectual property rights in any manner;",
      "Any claim related to theft or piracy of the games;",
      "Any claim for equitable relief; then both parties may go to court."]),
    # not a list: a sentence after the colon, headings with semicolons, a colon before one sentence
    ("Enable global access: To operate our Products, we store data. 2. Eligibility; Registration and account "
     "The Products are for adults.",
     ["Enable global access: To operate our Products, we store data.", "2.", "Eligibility; Registration and account",
      "The Products are for adults."]),
    ("Note: your account is yours; You may close it.", ["Note: your account is yours; You may close it."]),
    # a colon in an earlier sentence opens no list; short items (names, addresses) are not cut
    ("Last updated: March 3, 2024. If you do not pay the Fees when they fall due; Acme may suspend the Services.",
     ["Last updated: March 3, 2024.", "If you do not pay the Fees when they fall due; Acme may suspend the Services."]),
    ("Third parties, including: Apple; Google; Microsoft and Amazon, may process your data.",
     ["Third parties, including: Apple; Google; Microsoft and Amazon, may process your data."]),
    ("Payment methods (e.g.: Visa; Mastercard; American Express) are listed on the page.",
     ["Payment methods (e.g.: Visa; Mastercard; American Express) are listed on the page."]),
    ("Send notices to: Attn: Legal Department; Acme Inc., 1 Main St.",
     ["Send notices to: Attn: Legal Department; Acme Inc., 1 Main St."]),
])
def test_lists_flattened_into_one_line(text, expected):
    assert parts(text) == expected


def test_numbered_and_lettered_lists():
    text = ("We may end your account: (a) if you breach these Terms; (b) if the law requires it. "
            "1. You agree to pay. 2. You agree to arbitration. It covers: a. claims; and b. disputes. "
            "ii. The second item.")
    assert parts(text) == [
        "We may end your account:",  # a colon before a list item ends the lead-in
        "(a) if you breach these Terms; (b) if the law requires it.",  # a semicolon alone does not cut
        "1.", "You agree to pay.", "2.", "You agree to arbitration.",  # a lone section number stands alone
        "It covers: a. claims; and b. disputes.",
        "ii. The second item.",  # a lower-case list marker after a sentence end opens a clause
    ]
    lines = "You must not:\n- copy the app;\n- sell it\n(c) or rent it\n• nor lend it • nor lease it"
    assert parts(lines) == ["You must not:", "- copy the app;", "- sell it", "(c) or rent it", "• nor lend it",
                            "• nor lease it"]


def test_all_caps_blocks_stay_whole_and_end_at_their_full_stops():
    text = ('THE SERVICES ARE PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, AND IN THE U.S. ONLY. '
            "IN NO EVENT WILL WE BE LIABLE FOR LOST PROFITS. YOU AGREE THAT YOUR SOLE REMEDY IS TO STOP.")
    assert parts(text) == [
        'THE SERVICES ARE PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, AND IN THE U.S. ONLY.',
        "IN NO EVENT WILL WE BE LIABLE FOR LOST PROFITS.",
        "YOU AGREE THAT YOUR SOLE REMEDY IS TO STOP.",
    ]
    # an ALL-CAPS heading before an ALL-CAPS sentence: nothing tells where it ends, so no cut
    numbered = "15. AGREEMENT TO ARBITRATE THIS SECTION APPLIES TO YOU. (i) THE USE OR THE INABILITY TO USE THE APP;"
    assert parts(numbered) == ["15.", "AGREEMENT TO ARBITRATE THIS SECTION APPLIES TO YOU.",
                               "(i) THE USE OR THE INABILITY TO USE THE APP;"]
    assert parts("9. ARBITRATION IN SECTION 9. U.S. USERS MUST ARBITRATE.") == [
        "9.", "ARBITRATION IN SECTION 9.", "U.S. USERS MUST ARBITRATE."]


@pytest.mark.parametrize("text, expected", [
    ("Use tools (e.g. robots) or data (i.e. Prices) only if allowed. E.g. Amazon Prime is a service.",
     ["Use tools (e.g. robots) or data (i.e. Prices) only if allowed.", "E.g. Amazon Prime is a service."]),
    ("The U.S. Government may ask. We are based in the U.S. If you live there, U.S. law applies.",
     ["The U.S. Government may ask.", "We are based in the U.S.", "If you live there, U.S. law applies."]),
    ("Acme Inc. and its affiliates provide it. This is Acme, Inc. We run the service.",
     ["Acme Inc. and its affiliates provide it.", "This is Acme, Inc.", "We run the service."]),
    ("See Sec. 512(f) and No. 5 of Art. 6 of the GDPR. Write to John F. Kennedy Avenue, Mr. Smith or Dr. Who.",
     ["See Sec. 512(f) and No. 5 of Art. 6 of the GDPR.", "Write to John F. Kennedy Avenue, Mr. Smith or Dr. Who."]),
    ("We collect photos, videos, etc. You own them.", ["We collect photos, videos, etc.", "You own them."]),
    ('He is a "repeat infringer." We end his account. Really?! Yes.',
     ['He is a "repeat infringer."', "We end his account.", "Really?!", "Yes."]),
])
def test_abbreviations_initials_and_quotes(text, expected):
    assert parts(text) == expected


def test_urls_emails_and_decimals_are_never_cut():
    text = ("Visit https://www.example.co.uk/terms?id=3.5&v=2.0 for details. Write to legal.team@mail.example.com "
            "or j.doe@example.org. The fee is 4.99 USD and rises by 2.5% a year. See https://example.com/terms. "
            "Version 1.2.3 applies.")
    assert parts(text) == [
        "Visit https://www.example.co.uk/terms?id=3.5&v=2.0 for details.",
        "Write to legal.team@mail.example.com or j.doe@example.org.",
        "The fee is 4.99 USD and rises by 2.5% a year.",
        "See https://example.com/terms.",
        "Version 1.2.3 applies.",
    ]


def test_wrapped_lines_join_and_paragraphs_split():
    text = "We may suspend\nyour account if\nyou break the rules\n\nand we may delete it;\nor keep it"
    assert parts(text) == ["We may suspend\nyour account if\nyou break the rules", "and we may delete it;", "or keep it"]


def test_table_cells_are_read_one_by_one_and_a_marker_keeps_its_clause():
    """A flattened tab-separated table (as in Spotify's choice-of-law chart) is cut at its
    tabs, so no row borrows the categories of another; a tab after a list marker is not a
    cell boundary."""
    text = "See the chart. Country\tChoice of Law\tJurisdiction Turkey\tLaws of Sweden\tCourts of Turkey"
    assert parts(text) == ["See the chart.", "Country", "Choice of Law", "Jurisdiction Turkey", "Laws of Sweden",
                             "Courts of Turkey"]
    assert parts("(a)\tYou may cancel. ii.\tWe may stop.") == ["(a)\tYou may cancel.", "ii.\tWe may stop."]
    assert parts("•\tWe may change these terms. -\tYou may leave.") == ["•\tWe may change these terms.",
                                                                      "-\tYou may leave."]


def test_an_overlong_span_is_chunked_at_whitespace():
    text = "word " * 3000 + "End."
    spans = split_sentences(text)
    assert len(spans) >= len(text) // CHUNK_CHARS
    assert all(e - s <= MAX_SPAN_CHARS for s, e in spans) and all(e - s <= CHUNK_CHARS for s, e in spans)
    assert all(text[s:e].split() and not text[s:e].startswith(" ") for s, e in spans)


def test_offsets_point_into_the_text_on_random_input():
    rng = random.Random(14)
    pieces = ["We may", " terminate", ". ", "\n", "\n\n", "(a) ", "1. ", "U.S. ", "e.g. ", "•", ": ", "; ", "THE ",
              "Governing Law ", "If ", "“quoted.” ", "https://x.example/a.b ", "\t", "  ", "Inc. ", "ii. "]
    for _ in range(50):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 200)))
        parts(text)  # asserts ordered, non-overlapping, trimmed, non-empty spans


N = 1_000_000


@pytest.mark.parametrize("name, text", [
    ("full stops", "." * N),
    ("full stops and spaces", ". " * (N // 2)),
    ("abbreviations", "e.g. " * (N // 5)),
    ("initialisms", "U.S. " * (N // 5)),
    ("section numbers", "1. " * (N // 3)),
    ("list items after colons", ": (a) " * (N // 6)),
    ("headings", "Governing Law " * (N // 14)),
    ("ALL CAPS", "ABC " * (N // 4)),
    ("short lines", "A\n" * (N // 2)),
    ("bullets", "•" * (N // 2)),
    ("whitespace", " \t" * (N // 2)),
    ("table cells", "a\t" * (N // 2)),
    ("markers before tabs", "(a)\t" * (N // 4)),
    ("the served pathological document", "No. " * 41_000 + "Hi! " * 80_000),
    ("date stamps", "Updated 5 May 2020 X " * (N // 21)),
    ("stamp words before spaces", "Effective" + " " * N),
    ("names before verbs", "Acme may. Title Acme may go. " * (N // 29)),
    ("lost line breaks", "disputes Relating to " * (N // 21)),
    ("colons before capitals", "from: A b " * (N // 10)),
    ("semicolon items", "a: " + "one two three four five; Any " * (N // 30)),
])
def test_a_megabyte_of_hostile_text_splits_in_bounded_time(name, text):
    """Each decision looks at a bounded window, and no pattern backtracks over a run: a
    quadratic splitter takes minutes on these, this one about a second (a shared CI core)."""
    started = time.perf_counter()
    spans = split_sentences(text)
    elapsed = time.perf_counter() - started
    assert elapsed < 15, f"{name}: {elapsed:.1f} s for {len(text)} characters"
    assert all(e - s <= MAX_SPAN_CHARS for s, e in spans)


def test_time_grows_linearly_with_the_text():
    def best(text):
        times = []
        for _ in range(3):
            started = time.perf_counter()
            split_sentences(text)
            times.append(time.perf_counter() - started)
        return min(times)

    unit = "13. OUR LIABILITY We will. e.g. U.S. Inc. (a) x; y: (b) z\n• Governing Law If you "
    small, large = best(unit * 2_000), best(unit * 8_000)
    assert large < 10 * small + 0.05, (small, large)  # 4x the text; a quadratic splitter takes 16x


def test_document_mode_maps_flagged_clauses_onto_gold_sentences():
    gold = [(0, 10), (11, 20), (21, 30)]
    flagged = [{"start": 0, "end": 20, "categories": ["Arbitration"]},  # spans two gold sentences
               {"start": 21, "end": 25, "categories": ["Jurisdiction"]},  # two pieces of one sentence
               {"start": 26, "end": 30, "categories": ["Choice of law"]}]
    assert categories_on_gold(gold, flagged) == [{"Arbitration"}, {"Arbitration"}, {"Jurisdiction", "Choice of law"}]
    assert categories_on_gold(gold, [{"start": 10, "end": 11, "categories": ["Arbitration"]}]) == [set(), set(), set()]
