"""Text cleaning: regex clean-up, stopwords, PII masking and docstring extraction."""

import pytest

from cookbook.data import clean


def test_clean_text_and_stopwords():
    raw = "<p>Visit   https://example.org/x?y=1 &amp; WIN a Ｃａｒ!</p>"
    assert clean.clean_text(raw) == "visit & win a car!"
    assert clean.clean_text(raw, lowercase=False, strip_punctuation=True) == "Visit WIN a Car"
    assert clean.remove_stopwords("This is not the best of the tests") == "not best tests"
    assert clean.remove_stopwords("a cat", stopwords=["cat"]) == "a"
    assert len(clean.STOPWORDS) > 100 and "not" not in clean.STOPWORDS
    with pytest.raises(TypeError, match="expected str, got float"):
        clean.clean_text(float("nan"))


def test_mask_pii_finds_emails_ips_and_phones_but_not_dates_or_versions():
    text = ("Mail jane.doe+ml@mail.example.co.uk, call +1 (555) 123-4567 or 020 7946 0958, host 10.0.0.255 / "
            "fe80::1ff:fe23:4567:890a. Python 3.11.7 released 2024-03-01, port 8080, 999.1.1.1 is no IP.")
    assert clean.find_pii(text) == [("email", "jane.doe+ml@mail.example.co.uk"), ("phone", "+1 (555) 123-4567"),
                                         ("phone", "020 7946 0958"), ("ip", "10.0.0.255"),
                                         ("ip", "fe80::1ff:fe23:4567:890a")]
    assert clean.mask_pii(text).startswith("Mail <EMAIL>, call <PHONE> or <PHONE>, host <IP> / <IP>. Python 3.11.7")
    assert clean.mask_pii("no pii here") == "no pii here"


def test_docstrings_extracts_summaries_in_order():
    code = 'def f():\n    """Add two\n    numbers.\n\n    Details here."""\n\nclass C:\n    """A class."""\n    x = 1\n'
    assert clean.docstrings(code) == ["Add two numbers.", "A class."]
    assert clean.docstrings(code, first_line=False)[0] == "Add two\nnumbers.\n\nDetails here."
    assert clean.docstrings("def broken(:") == []


def test_phone_digit_count_bounds_7_to_15():
    # E.164 allows at most 15 digits; 7 is the shortest local number taken as a phone here
    assert clean.find_pii("call 555 1234 now") == [("phone", "555 1234")]  # 7 digits
    assert clean.find_pii("call 55 1234 now") == []  # 6 digits
    assert clean.find_pii("+1 234 567 8901 2345") == [("phone", "+1 234 567 8901 2345")]  # 1 + 14 = 15 digits
    assert clean.find_pii("+12 234 567 8901 2345") == []  # 16 digits: no phone number


def test_pii_spans_that_touch_do_not_overlap():
    # "fe80::" is a valid IPv6 address (ipaddress agrees); the next span starts exactly where it ends
    assert clean.find_pii("fe80::(20) 7946 0958") == [("ip", "fe80::"), ("phone", "(20) 7946 0958")]
    assert clean.find_pii("fe80::+x@example.com") == [("ip", "fe80::"), ("email", "+x@example.com")]
    assert clean.mask_pii("fe80::(20) 7946 0958") == "<IP><PHONE>"


def test_remove_stopwords_reads_a_one_shot_iterable_once():
    assert clean.remove_stopwords("the cat and the dog", iter(["the", "and"])) == "cat dog"
    assert clean.remove_stopwords("The cat", (w for w in ["the"])) == "cat"  # case-insensitive, generator
