"""String utility nodes and PreviewAny: exact outputs, ComfyUI's edge cases, regex errors and size guards."""
import logging

import pytest
from fixtures_nodes import engine_config
import torch

from comfy_core import Engine, NodeExecutionError, PromptError
from comfy_core.nodes import strings
from comfy_core.nodes.strings import (
    CaseConverter,
    PreviewAny,
    RegexExtract,
    RegexMatch,
    RegexReplace,
    StringCompare,
    StringConcatenate,
    StringContains,
    StringLength,
    StringReplace,
    StringSubstring,
    StringTrim,
)


def test_concatenate_substring_length():
    assert StringConcatenate().execute("ab", "cd", ", ") == ("ab, cd",)
    assert StringConcatenate().execute("", "x", "") == ("x",)
    assert StringSubstring().execute("abcdef", 1, 4) == ("bcd",)
    assert StringSubstring().execute("abcdef", -3, 100) == ("def",)  # Python slicing, clipped
    assert StringSubstring().execute("abcdef", 4, 2) == ("",)
    assert StringLength().execute("héllo\n") == (6,)


@pytest.mark.parametrize("mode, expected", [
    ("UPPERCASE", "HELLO WORLD-X"), ("lowercase", "hello world-x"),
    ("Capitalize", "Hello world-x"), ("Title Case", "Hello World-X"), ("unknown", "hELLO wORLD-x"),
])
def test_case_converter(mode, expected):
    assert CaseConverter().execute("hELLO wORLD-x", mode) == (expected,)


@pytest.mark.parametrize("mode, expected", [("Both", "a b"), ("Left", "a b \n"), ("Right", "\t a b")])
def test_trim(mode, expected):
    assert StringTrim().execute("\t a b \n", mode) == (expected,)


def test_replace_and_contains():
    assert StringReplace().execute("a.b.c", ".", "::") == ("a::b::c",)
    assert StringContains().execute("Hello", "ELL", True) == (False,)
    assert StringContains().execute("Hello", "ELL", False) == (True,)


@pytest.mark.parametrize("a, b, mode, case_sensitive, expected", [
    ("Hello", "he", "Starts With", True, False), ("Hello", "he", "Starts With", False, True),
    ("Hello", "LO", "Ends With", False, True), ("Hello", "hello", "Equal", True, False),
    ("Hello", "hello", "Equal", False, True),
])
def test_compare(a, b, mode, case_sensitive, expected):
    assert StringCompare().execute(a, b, mode, case_sensitive) == (expected,)


def test_compare_unknown_mode_is_a_clear_error():
    with pytest.raises(NodeExecutionError, match="unknown mode"):
        StringCompare().execute("a", "b", "Contains", True)


def test_regex_match_flags():
    assert RegexMatch().execute("Cat", "cat", True, False, False) == (True,)
    assert RegexMatch().execute("Cat", "cat", False, False, False) == (False,)
    assert RegexMatch().execute("a\nb", "^b$", False, False, False) == (False,)
    assert RegexMatch().execute("a\nb", "^b$", False, True, False) == (True,)  # multiline
    assert RegexMatch().execute("a\nb", "a.b", False, False, True) == (True,)  # dotall


@pytest.mark.parametrize("mode, group, expected", [
    ("First Match", 1, "a1"),
    ("All Matches", 1, "a\nB\nc"),  # with groups, findall's first element of each match (ComfyUI)
    ("First Group", 2, "1"),
    ("First Group", 0, "a1"),
    ("First Group", 3, ""),  # beyond the pattern's groups
    ("All Groups", 2, "1\n22\n333"),
    ("All Groups", 0, "a1\nB22\nc333"),
])
def test_regex_extract_modes(mode, group, expected):
    assert RegexExtract().execute("a1 B22 c333", r"([a-z])(\d+)", mode, True, False, False, group) == (expected,)


def test_regex_extract_without_groups():
    assert RegexExtract().execute("x1 y2", r"\d", "All Matches", True, False, False, 1) == ("1\n2",)
    assert RegexExtract().execute("x1 y2", r"\d", "All Groups", True, False, False, 1) == ("",)
    assert RegexExtract().execute("xyz", r"\d", "First Match", True, False, False, 1) == ("",)


def test_invalid_pattern_matches_nothing_in_match_and_extract(caplog):
    """ComfyUI answers False / "" for a pattern `re` cannot compile; we do the same and log why."""
    with caplog.at_level(logging.WARNING, logger=strings.__name__):
        assert RegexMatch().execute("abc", "(unclosed", True, False, False) == (False,)
        assert RegexExtract().execute("abc", "[z-a]", "First Match", True, False, False, 1) == ("",)
    assert "invalid regex pattern" in caplog.text


def test_regex_replace():
    assert RegexReplace().execute("Hello World hello", "hello", r"<\g<0>>") == ("<Hello> World <hello>",)
    assert RegexReplace().execute("Hello hello", "hello", "x", case_insensitive=False) == ("Hello x",)
    assert RegexReplace().execute("a1b2c3", r"(\d)", r"[\1]", count=2) == ("a[1]b[2]c3",)
    assert RegexReplace().execute("x\ny", "x.y", "-", dotall=True) == ("-",)
    assert RegexReplace().execute("ab", "", "-") == ("-a-b-",)  # empty matches, as re.sub


@pytest.mark.parametrize("pattern, replace, what", [
    ("(a", "x", "invalid regex pattern"),
    ("a", r"\2", "invalid replacement"),  # group that does not exist, refused even without a match
    ("z", r"\q", "invalid replacement"),
])
def test_regex_replace_errors_are_node_errors(pattern, replace, what):
    with pytest.raises(NodeExecutionError, match=what):
        RegexReplace().execute("abc", pattern, replace)


def test_regex_size_guards(monkeypatch):
    monkeypatch.setattr(strings, "MAX_SUBJECT_CHARS", 10)
    monkeypatch.setattr(strings, "MAX_PATTERN_CHARS", 5)
    monkeypatch.setattr(strings, "MAX_REPLACE_OUTPUT_CHARS", 20)
    with pytest.raises(NodeExecutionError, match="at most 10"):
        RegexMatch().execute("x" * 11, "x", True, False, False)
    with pytest.raises(NodeExecutionError, match="at most 5"):
        RegexExtract().execute("x", "x" * 6, "First Match", True, False, False, 1)
    assert RegexReplace().execute("abcd", "", "--") == ("--a--b--c--d--",)  # 14 chars: under the bound
    with pytest.raises(NodeExecutionError, match="exceed 20"):
        RegexReplace().execute("abcdefghij", "", "--")  # would be 32 chars


@pytest.mark.parametrize("source, text", [
    ("plain", "plain"), (3, "3"), (2.5, "2.5"), (True, "True"), (None, "None"),
    ({"a": [1, 2]}, '{"a": [1, 2]}'), ([1, "x"], '[1, "x"]'),
])
def test_preview_any_text(source, text):
    assert PreviewAny().main(source) == {"ui": {"text": [text]}}


def test_preview_any_falls_back_to_str():
    out = PreviewAny().main(torch.tensor([1.0]))["ui"]["text"][0]
    assert out == str(torch.tensor([1.0]))


@pytest.fixture
def engine(tmp_path):
    config = engine_config(tmp_path)
    with Engine(config) as eng:
        yield eng


def test_string_workflow_through_engine(engine):
    """A model-free graph: concatenate, regex replace, case convert, length, preview (any-typed input takes INT)."""
    prompt = {
        "1": {"class_type": "StringConcatenate", "inputs": {"string_a": "foo 12", "string_b": "bar 345",
                                                            "delimiter": " / "}},
        "2": {"class_type": "RegexReplace", "inputs": {"string": ["1", 0], "regex_pattern": r"\d+",
                                                       "replace": "#"}},
        "3": {"class_type": "CaseConverter", "inputs": {"string": ["2", 0], "mode": "UPPERCASE"}},
        "4": {"class_type": "PreviewAny", "inputs": {"source": ["3", 0]}},
        "5": {"class_type": "StringLength", "inputs": {"string": ["3", 0]}},
        "6": {"class_type": "PreviewAny", "inputs": {"source": ["5", 0]}},
    }
    result = engine.run(prompt)
    assert result.outputs["4"] == {"text": ["FOO # / BAR #"]}
    assert result.outputs["6"] == {"text": ["13"]}


def test_regex_error_fails_the_prompt_cleanly(engine):
    prompt = {"1": {"class_type": "RegexReplace", "inputs": {"string": "abc", "regex_pattern": "(", "replace": ""}},
              "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}}}
    with pytest.raises(NodeExecutionError, match="invalid regex pattern"):
        engine.run(prompt)
    ok = {"1": {"class_type": "StringLength", "inputs": {"string": "abc"}},
          "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}}}
    assert engine.run(ok).outputs["2"] == {"text": ["3"]}  # the engine keeps working


def test_combo_choices_are_validated(engine):
    """V3 COMBO inputs list their choices under "options"; a value outside them fails validation as in ComfyUI."""
    prompt = {"1": {"class_type": "CaseConverter", "inputs": {"string": "a", "mode": "SHOUTING"}},
              "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}}}
    with pytest.raises(PromptError) as err:
        engine.run(prompt)
    (error,) = err.value.node_errors["1"]["errors"]
    assert error["type"] == "value_not_in_list"
    assert error["details"] == "mode: 'SHOUTING' not in ['UPPERCASE', 'lowercase', 'Capitalize', 'Title Case']"
