"""Parsers on literal model outputs."""
import pytest

from editharm.tasks.conll03 import entity_list
from editharm.tasks.parsers import first_line, first_word, letter, number, one_of, run_chain, strip_prefix
from editharm.tasks.spec import load_spec


@pytest.mark.parametrize("out,expected", [(" True", "true"), (" false.", "false"), ("\n Yes, it is", "yes"),
                                          ("", None), ("  ", None), (" '", None)])
def test_first_word(out, expected):
    assert first_word(out) == expected


@pytest.mark.parametrize("out,expected", [(" B", "B"), (" (C)", "C"), ("D.", "D"), (" But", None), (" All", None),
                                          (" b", None), (" (", None), (":", None)])
def test_letter_must_stand_alone(out, expected):
    assert letter(out) == expected


@pytest.mark.parametrize("out,which,expected", [(" 42 apples", "first", "42"), (" $1,200.00 in total", "first", "1200"),
                                                ("-3.50", "first", "-3.5"), ("so 7 and then 9.", "last", "9"),
                                                (" none", "first", None)])
def test_number(out, which, expected):
    assert number(out, which) == expected


def test_lines_and_prefixes():
    assert first_line("\n\nParis\nmore text") == "Paris"
    assert first_line(" \n ") is None
    assert strip_prefix("Answer: Paris", ["Answer:", "A:"]) == "Paris"
    assert strip_prefix("A:", ["Answer:", "A:"]) is None
    assert strip_prefix("Paris", ["Answer:"]) == "Paris"
    assert one_of("yes", ["yes", "no"]) == "yes" and one_of("not", ["yes", "no"]) is None


def test_entity_list():
    assert entity_list(" EU, German; British\nnext line, ignored") == ("EU", "German", "British")
    assert entity_list(" None") == () and entity_list("") == ()
    assert entity_list(' "Peter Blackburn".') == ("Peter Blackburn",)


@pytest.mark.parametrize("protocol,name,out,expected", [
    ("gu2024", "rte", " True", "true"),
    ("gu2024", "rte", " untrue", None),
    ("gu2024", "boolq", " no", "no"),
    ("gu2024", "boolq", " not", None),
    ("gu2024", "sst2", " negatively", None),
    ("gu2024", "mutual", " (B)", "B"),
    ("gu2024", "gsm8k", " 42.\n\n", "42"),
    ("gu2024", "nq_open", "\nAnswer: William Shakespeare\nQuestion: next", "William Shakespeare"),
    ("harness", "gsm8k", " He has 5 + 4 = 9. The answer is 1,209.", "1209"),
    ("harness", "gsm8k", " He has 9 toys.", None),
    ("gu2024", "samsum", " Anna brings cake. ", "Anna brings cake."),
])
def test_task_parse_chains(protocol, name, out, expected):
    assert run_chain(list(load_spec(name, protocol).parse), out) == expected
