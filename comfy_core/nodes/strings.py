"""String utility nodes (ComfyUI's comfy_extras.nodes_string) and PreviewAny.

Regex nodes use the stdlib `re` with ComfyUI's flag inputs. As in ComfyUI, RegexMatch / RegexExtract treat a bad
pattern as "no match"; RegexReplace reports it as a clear node error. Subject, pattern and replacement output sizes
are capped so that one node cannot take the process's memory (the stdlib engine cannot bound backtracking time).
"""
from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from typing import Any

from ..errors import NodeExecutionError
from .inputs import ANY_TYPE, combo_input

log = logging.getLogger(__name__)

MAX_SUBJECT_CHARS = 1_000_000  # a regex subject beyond this is refused (prompts are far smaller)
MAX_PATTERN_CHARS = 10_000
MAX_REPLACE_OUTPUT_CHARS = 10_000_000  # RegexReplace stops once its result would grow past this

_JOIN = "\n"  # RegexExtract joins several results with newlines, as ComfyUI


def _text(multiline: bool = True) -> tuple[str, dict[str, Any]]:
    return ("STRING", {"multiline": multiline})


def _flag(default: bool, **extra: Any) -> tuple[str, dict[str, Any]]:
    return ("BOOLEAN", {**extra, "default": default})


class _StringNode:
    """Shared class attributes of the V3 string nodes."""

    RETURN_TYPES: tuple[str, ...] = ("STRING",)
    FUNCTION = "execute"
    CATEGORY = "utils/string"
    INFO_V3 = True
    RELATIVE_PYTHON_MODULE = "comfy_extras.nodes_string"


class StringConcatenate(_StringNode):
    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"string_a": _text(), "string_b": _text(),
                             "delimiter": ("STRING", {"default": "", "multiline": False})}}

    def execute(self, string_a: str, string_b: str, delimiter: str) -> tuple[str]:
        return (f"{string_a}{delimiter}{string_b}",)


class StringSubstring(_StringNode):
    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"string": _text(), "start": ("INT", {}), "end": ("INT", {})}}

    def execute(self, string: str, start: int, end: int) -> tuple[str]:
        return (string[start:end],)  # Python slice rules: negative counts from the end, out of range clips


class StringLength(_StringNode):
    RETURN_TYPES = ("INT",)
    RETURN_NAMES = ("length",)

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"string": _text()}}

    def execute(self, string: str) -> tuple[int]:
        return (len(string),)


_CASES: dict[str, Callable[[str], str]] = {
    "UPPERCASE": str.upper, "lowercase": str.lower, "Capitalize": str.capitalize, "Title Case": str.title,
}


class CaseConverter(_StringNode):
    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"string": _text(), "mode": combo_input(list(_CASES))}}

    def execute(self, string: str, mode: str) -> tuple[str]:
        convert = _CASES.get(mode)
        return (convert(string) if convert else string,)  # an unknown mode leaves the text as it is


_TRIMS: dict[str, Callable[[str], str]] = {"Both": str.strip, "Left": str.lstrip, "Right": str.rstrip}


class StringTrim(_StringNode):
    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"string": _text(), "mode": combo_input(list(_TRIMS))}}

    def execute(self, string: str, mode: str) -> tuple[str]:
        trim = _TRIMS.get(mode)
        return (trim(string) if trim else string,)


class StringReplace(_StringNode):
    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"string": _text(), "find": _text(), "replace": _text()}}

    def execute(self, string: str, find: str, replace: str) -> tuple[str]:
        return (string.replace(find, replace),)


class StringContains(_StringNode):
    RETURN_TYPES = ("BOOLEAN",)
    RETURN_NAMES = ("contains",)

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"string": _text(), "substring": _text(), "case_sensitive": _flag(True)}}

    def execute(self, string: str, substring: str, case_sensitive: bool) -> tuple[bool]:
        if not case_sensitive:
            string, substring = string.lower(), substring.lower()
        return (substring in string,)


_COMPARES: dict[str, Callable[[str, str], bool]] = {
    "Starts With": str.startswith, "Ends With": str.endswith, "Equal": str.__eq__,
}


class StringCompare(_StringNode):
    RETURN_TYPES = ("BOOLEAN",)

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"string_a": _text(), "string_b": _text(), "mode": combo_input(list(_COMPARES)),
                             "case_sensitive": _flag(True)}}

    def execute(self, string_a: str, string_b: str, mode: str, case_sensitive: bool) -> tuple[bool]:
        compare = _COMPARES.get(mode)
        if compare is None:
            raise NodeExecutionError(f"StringCompare: unknown mode {mode!r}; expected one of {', '.join(_COMPARES)}")
        if not case_sensitive:
            string_a, string_b = string_a.lower(), string_b.lower()
        return (compare(string_a, string_b),)


# --- regular expressions -----------------------------------------------------------------------------------------

def _flags(case_insensitive: bool, multiline: bool, dotall: bool) -> int:
    return ((re.IGNORECASE if case_insensitive else 0) | (re.MULTILINE if multiline else 0)
            | (re.DOTALL if dotall else 0))


def _check_sizes(node: str, pattern: str, string: str) -> None:
    if len(pattern) > MAX_PATTERN_CHARS:
        raise NodeExecutionError(f"{node}: the regex pattern has {len(pattern)} characters; at most "
                                 f"{MAX_PATTERN_CHARS} are allowed")
    if len(string) > MAX_SUBJECT_CHARS:
        raise NodeExecutionError(f"{node}: the text has {len(string)} characters; regex nodes take at most "
                                 f"{MAX_SUBJECT_CHARS}")


def _compile(node: str, pattern: str, string: str, flags: int) -> re.Pattern[str]:
    """The compiled pattern; oversized inputs and invalid patterns raise NodeExecutionError."""
    _check_sizes(node, pattern, string)
    try:
        return re.compile(pattern, flags)
    except re.error as exc:
        raise NodeExecutionError(f"{node}: invalid regex pattern {pattern!r}: {exc}") from exc


def _compile_or_none(node: str, pattern: str, string: str, flags: int) -> re.Pattern[str] | None:
    """As ComfyUI, RegexMatch / RegexExtract take an invalid pattern as matching nothing (logged, not raised);
    oversized inputs still raise."""
    _check_sizes(node, pattern, string)
    try:
        return re.compile(pattern, flags)
    except re.error as exc:
        log.warning("%s: invalid regex pattern %r (%s); treated as no match", node, pattern, exc)
        return None


class RegexMatch(_StringNode):
    RETURN_TYPES = ("BOOLEAN",)
    RETURN_NAMES = ("matches",)

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"string": _text(), "regex_pattern": _text(), "case_insensitive": _flag(True),
                             "multiline": _flag(False), "dotall": _flag(False)}}

    def execute(self, string: str, regex_pattern: str, case_insensitive: bool, multiline: bool,
                dotall: bool) -> tuple[bool]:
        compiled = _compile_or_none("RegexMatch", regex_pattern, string, _flags(case_insensitive, multiline, dotall))
        return (compiled is not None and compiled.search(string) is not None,)


def _extract(compiled: re.Pattern[str], string: str, mode: str, group_index: int) -> str:
    """RegexExtract's four modes; a group beyond the pattern's groups yields nothing."""
    if mode == "First Match":
        match = compiled.search(string)
        return match.group(0) if match else ""
    if mode == "All Matches":  # with groups, findall gives tuples (or the one group): ComfyUI keeps element 0
        found = compiled.findall(string)
        return _JOIN.join(m[0] if isinstance(m, tuple) else m for m in found)
    if mode == "First Group":
        match = compiled.search(string)
        return (match.group(group_index) or "") if match and compiled.groups >= group_index else ""
    if mode == "All Groups":
        if not compiled.groups or compiled.groups < group_index:
            return ""
        return _JOIN.join(m.group(group_index) or "" for m in compiled.finditer(string))
    return ""


class RegexExtract(_StringNode):
    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "string": _text(), "regex_pattern": _text(),
            "mode": combo_input(["First Match", "All Matches", "First Group", "All Groups"]),
            "case_insensitive": _flag(True), "multiline": _flag(False), "dotall": _flag(False),
            "group_index": ("INT", {"default": 1, "min": 0, "max": 100}),
        }}

    def execute(self, string: str, regex_pattern: str, mode: str, case_insensitive: bool, multiline: bool,
                dotall: bool, group_index: int) -> tuple[str]:
        compiled = _compile_or_none("RegexExtract", regex_pattern, string,
                                    _flags(case_insensitive, multiline, dotall))
        return (_extract(compiled, string, mode, group_index) if compiled is not None else "",)


class RegexReplace(_StringNode):
    DESCRIPTION = "Rewrites every part of the text that a regular expression matches with a replacement template."

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {"string": _text(), "regex_pattern": _text(), "replace": _text()},
            "optional": {
                "case_insensitive": _flag(True),
                "multiline": _flag(False),
                "dotall": ("BOOLEAN", {"tooltip": "Let `.` match line breaks too (otherwise it stops at them).",
                                       "default": False}),
                "count": ("INT", {"tooltip": "Replace at most this many matches, from the left; 0 replaces all.",
                                  "default": 0, "min": 0, "max": 100}),
            },
        }

    def execute(self, string: str, regex_pattern: str, replace: str, case_insensitive: bool = True,
                multiline: bool = False, dotall: bool = False, count: int = 0) -> tuple[str]:
        compiled = _compile("RegexReplace", regex_pattern, string, _flags(case_insensitive, multiline, dotall))
        try:
            compiled.sub(replace, "", count=1)  # checks the template (group references, escapes) up front, as re.sub
        except re.error as exc:
            raise NodeExecutionError(f"RegexReplace: invalid replacement {replace!r}: {exc}") from exc
        grown = 0

        def expand(match: re.Match[str]) -> str:  # re.sub's own template rules, with a bound on the growth
            nonlocal grown
            text = match.expand(replace)
            grown += len(text) - (match.end() - match.start())
            if len(string) + grown > MAX_REPLACE_OUTPUT_CHARS:
                raise NodeExecutionError(f"RegexReplace: the result would exceed {MAX_REPLACE_OUTPUT_CHARS} "
                                         "characters")
            return text

        return (compiled.sub(expand, string, count=count),)


class PreviewAny:
    """Shows any value as text in the UI: strings as they are, numbers and booleans by str(), the rest as JSON."""

    RETURN_TYPES = ()
    FUNCTION = "main"
    OUTPUT_NODE = True
    CATEGORY = "utils"
    RELATIVE_PYTHON_MODULE = "comfy_extras.nodes_preview_any"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"source": (ANY_TYPE, {})}}

    def main(self, source: Any = None) -> dict[str, Any]:
        return {"ui": {"text": [preview_text(source)]}}


def preview_text(source: Any) -> str:
    """ComfyUI's PreviewAny rendering: str as is, int/float/bool by str(), JSON when possible, else str()."""
    if source is None:
        return "None"
    if isinstance(source, str):
        return source
    if isinstance(source, (int, float, bool)):
        return str(source)
    try:
        return json.dumps(source)
    except Exception:  # noqa: BLE001 - tensors, models, circular data...: anything json cannot write
        try:
            return str(source)
        except Exception:  # noqa: BLE001 - a __str__ that raises still gets a preview line
            return "source exists, but could not be serialized."


NODE_CLASS_MAPPINGS = {
    "StringConcatenate": StringConcatenate,
    "StringSubstring": StringSubstring,
    "StringLength": StringLength,
    "CaseConverter": CaseConverter,
    "StringTrim": StringTrim,
    "StringReplace": StringReplace,
    "StringContains": StringContains,
    "StringCompare": StringCompare,
    "RegexMatch": RegexMatch,
    "RegexExtract": RegexExtract,
    "RegexReplace": RegexReplace,
    "PreviewAny": PreviewAny,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "StringConcatenate": "Concatenate",
    "StringSubstring": "Substring",
    "StringLength": "Length",
    "CaseConverter": "Case Converter",
    "StringTrim": "Trim",
    "StringReplace": "Replace",
    "StringContains": "Contains",
    "StringCompare": "Compare",
    "RegexMatch": "Regex Match",
    "RegexExtract": "Regex Extract",
    "RegexReplace": "Regex Replace",
    "PreviewAny": "Preview Any",
}
