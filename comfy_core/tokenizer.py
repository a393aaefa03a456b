"""CLIP's byte-pair tokenizer plus ComfyUI's prompt syntax, producing the token chunks the text encoders take.

Two layers:

- `ClipBPE`: text -> CLIP token ids. The BPE itself runs in the `tokenizers` package, built from CLIP's merge list
  (package data, MIT, see data/CLIP_BPE_LICENSE.txt). Text cleaning is the one ComfyUI gets from transformers' slow
  `CLIPTokenizer` when ftfy is not installed, i.e. BERT's BasicTokenizer: NFC, control characters dropped, runs of
  whitespace collapsed, lowercase, CJK ideographs split into words, accents kept, punctuation not split, no HTML
  unescaping.
- `PromptTokenizer`: ComfyUI's `SDTokenizer.tokenize_with_weights`: `(text:1.3)` / `((text))` emphasis, `\\(`
  escapes, `embedding:name` textual inversion, 77-token chunks (BOS + 75 + EOS) padded per encoder, word ids.

A chunk is a list of `(token, weight, word_id)`; `token` is an int id or a 1-D tensor (an embedding vector).
"""
from __future__ import annotations

import functools
import gzip
import importlib.resources
import logging
import re
import unicodedata
from collections.abc import Callable, Sequence

import torch
from tokenizers import AddedToken, Regex, Tokenizer, models, pre_tokenizers

log = logging.getLogger(__name__)

START_TOKEN = 49406  # <|startoftext|>
END_TOKEN = 49407  # <|endoftext|>
VOCAB_SIZE = 49408
NUM_MERGES = VOCAB_SIZE - 2 * 256 - 2
MAX_LENGTH = 77
MAX_WORD_LENGTH = 8  # a word group at least this long may be split across chunks
EMBEDDING_PREFIX = "embedding:"
# CLIP's pre-tokenizer split: special tokens, English contractions, letter runs, single digits, symbol runs.
_CLIP_SPLIT = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""

Token = int | torch.Tensor
Chunk = list[tuple[Token, float, int]]
EmbeddingLookup = Callable[[str], "torch.Tensor | None"]


# ---------------------------------------------------------------------------------------------------------------
# BPE vocabulary and cleaning


def _byte_alphabet() -> list[str]:
    """The 256 printable characters byte-level BPE uses for the bytes 0..255, in CLIP's vocabulary order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    codes = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


def _read_merges() -> list[tuple[str, str]]:
    path = importlib.resources.files("comfy_core").joinpath("data/clip_bpe_merges.txt.gz")
    with path.open("rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")[1 : 1 + NUM_MERGES]  # line 0 is the version header
    merges = [tuple(line.split(" ")) for line in lines]
    if len(merges) != NUM_MERGES or any(len(m) != 2 for m in merges):
        raise RuntimeError("comfy_core/data/clip_bpe_merges.txt.gz is damaged")
    return merges  # type: ignore[return-value]


def clip_vocab(merges: Sequence[tuple[str, str]]) -> dict[str, int]:
    """CLIP's vocabulary: bytes, bytes + </w>, one token per merge, then the two special tokens (49408 in all)."""
    alphabet = _byte_alphabet()
    words = alphabet + [c + "</w>" for c in alphabet] + ["".join(m) for m in merges]
    words += ["<|startoftext|>", "<|endoftext|>"]
    return {w: i for i, w in enumerate(words)}


def _is_cjk(cp: int) -> bool:
    return (
        0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF or 0x2A700 <= cp <= 0x2B73F
        or 0x2B740 <= cp <= 0x2B81F or 0x2B820 <= cp <= 0x2CEAF or 0xF900 <= cp <= 0xFAFF
        or 0x2F800 <= cp <= 0x2FA1F
    )


def _clean_char(ch: str) -> str:
    if ch in " \t\n\r":
        return " "
    if ord(ch) in (0, 0xFFFD):
        return ""
    category = unicodedata.category(ch)
    if category.startswith("C"):
        return ""
    if category == "Zs":
        return " "
    if _is_cjk(ord(ch)):
        return f" {ch} "
    return ch


def clean_text(text: str) -> str:
    """BERT BasicTokenizer cleaning as transformers' CLIPTokenizer applies it without ftfy (see module doc)."""
    text = unicodedata.normalize("NFC", "".join(_clean_char(ch) for ch in text))
    return " ".join(word.lower() for word in text.split())


class ClipBPE:
    """CLIP's BPE over cleaned text; `encode` returns ids without BOS/EOS."""

    def __init__(self) -> None:
        merges = _read_merges()
        self.vocab = clip_vocab(merges)
        bpe = models.BPE(vocab=self.vocab, merges=merges, end_of_word_suffix="</w>", continuing_subword_prefix="",
                         unk_token="<|endoftext|>", fuse_unk=False)
        tok = Tokenizer(bpe)
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(_CLIP_SPLIT), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
        # Special tokens typed in a prompt map to their ids, as in transformers' tokenizer.
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                for t in ("<|startoftext|>", "<|endoftext|>")])
        self._tok = tok

    def encode(self, text: str) -> list[int]:
        cleaned = clean_text(text)
        if not cleaned:
            return []
        return self._tok.encode(cleaned, add_special_tokens=False).ids

    def decode_token(self, token_id: int) -> str:
        return self._tok.id_to_token(token_id) or ""


@functools.cache
def clip_bpe() -> ClipBPE:
    """The shared, immutable BPE (building it reads the vocabulary: ~0.3 s, so it is built once per process)."""
    return ClipBPE()


# ---------------------------------------------------------------------------------------------------------------
# ComfyUI prompt syntax


def _escape(text: str) -> str:
    return text.replace("\\)", "\0\1").replace("\\(", "\0\2")


def _unescape(text: str) -> str:
    return text.replace("\0\1", ")").replace("\0\2", "(")


def _top_level_pieces(text: str) -> list[str]:
    """Split into plain runs and top-level `( ... )` groups; unbalanced parentheses stay literal text."""
    pieces: list[str] = []
    current, depth = "", 0
    for ch in text:
        if ch == "(" and depth == 0:
            if current:
                pieces.append(current)
            current = ""
        if ch == ")" and depth == 1:
            pieces.append(current + ch)
            current, depth = "", 0
            continue
        current += ch
        depth += {"(": 1, ")": -1}.get(ch, 0)
    if current:
        pieces.append(current)
    return pieces


def parse_weights(text: str, weight: float = 1.0) -> list[tuple[str, float]]:
    """ComfyUI emphasis: `(x)` multiplies by 1.1 per level, `(x:w)` sets w; `[x]` is plain text."""
    out: list[tuple[str, float]] = []
    for piece in _top_level_pieces(text):
        if len(piece) < 2 or piece[0] != "(" or piece[-1] != ")":
            out.append((piece, weight))
            continue
        inner, inner_weight = piece[1:-1], weight * 1.1
        colon = inner.rfind(":")
        if colon > 0:
            try:
                inner_weight = float(inner[colon + 1 :])
                inner = inner[:colon]
            except ValueError:
                pass
        out += parse_weights(inner, inner_weight)
    return out


def _split_embedding_words(segment: str) -> list[str]:
    """`a embedding:x b` -> ["a", "embedding:x b"]: an embedding reference starts at a space or newline."""
    parts = re.split(f" {EMBEDDING_PREFIX}|\n{EMBEDDING_PREFIX}", segment)
    words = parts[:1] + [EMBEDDING_PREFIX + p for p in parts[1:]]
    return [w for w in words if w != ""]


class PromptTokenizer:
    """ComfyUI's per-encoder prompt tokenizer (SD1 CLIP-L pads with EOS; OpenCLIP H / bigG pad with 0)."""

    def __init__(self, *, pad_token: int = END_TOKEN, embedding_size: int = 768, embedding_key: str = "clip_l",
                 bpe: ClipBPE | None = None, max_length: int = MAX_LENGTH) -> None:
        self.bpe = bpe or clip_bpe()
        self.pad_token = pad_token
        self.embedding_size = embedding_size
        self.embedding_key = embedding_key
        self.max_length = max_length

    def _embedding_group(self, word: str, weight: float, lookup: EmbeddingLookup) -> tuple[list, str]:
        """Token group for `embedding:name rest` (empty if missing) and the text left to tokenize."""
        name = word[len(EMBEDDING_PREFIX):].strip("\n")
        first, *rest = name.split() or [""]
        leftover = " ".join(rest)
        embed = lookup(first) if first else None
        if embed is None:
            stripped = first.strip(",")
            if len(stripped) < len(first):  # "embedding:name," — retry without the comma, keep the comma as text
                embed = lookup(stripped) if stripped else None
                leftover = f"{first[len(stripped):]} {leftover}"
        if embed is None:
            log.warning("warning, embedding:%s does not exist, ignoring", name)
            return [], leftover
        rows = [embed] if embed.ndim == 1 else list(embed.reshape(-1, embed.shape[-1]))
        return [(row, weight) for row in rows], leftover

    def _word_groups(self, text: str, lookup: EmbeddingLookup) -> list[list[tuple[Token, float]]]:
        groups: list[list[tuple[Token, float]]] = []
        for segment, weight in parse_weights(_escape(text)):
            for word in _split_embedding_words(_unescape(segment)):
                if word.startswith(EMBEDDING_PREFIX):
                    group, word = self._embedding_group(word, weight, lookup)
                    if group:
                        groups.append(group)
                    if word == "":
                        continue
                groups.append([(t, weight) for t in self.bpe.encode(word)])
        return groups

    def _chunk(self, groups: list[list[tuple[Token, float]]]) -> list[Chunk]:
        """Pack word groups into chunks of `max_length` (BOS ... EOS pad...); long groups may straddle chunks."""
        room = self.max_length - 1  # tokens before the EOS
        batch: Chunk = [(START_TOKEN, 1.0, 0)]
        chunks = [batch]
        for i, group in enumerate(groups):
            word_id, splittable = i + 1, len(group) >= MAX_WORD_LENGTH
            while group:
                if len(batch) + len(group) <= room:
                    batch.extend((t, w, word_id) for t, w in group)
                    break
                free = room - len(batch)
                if splittable:
                    batch.extend((t, w, word_id) for t, w in group[:free])
                    group = group[free:]
                    batch.append((END_TOKEN, 1.0, 0))
                else:
                    batch.append((END_TOKEN, 1.0, 0))
                    batch.extend([(self.pad_token, 1.0, 0)] * free)
                batch = [(START_TOKEN, 1.0, 0)]
                chunks.append(batch)
        batch.append((END_TOKEN, 1.0, 0))
        batch.extend([(self.pad_token, 1.0, 0)] * (self.max_length - len(batch)))
        return chunks

    def tokenize_with_weights(self, text: str, lookup: EmbeddingLookup | None = None,
                              return_word_ids: bool = False) -> list[list[tuple]]:
        """`text` -> chunks of (token, weight[, word_id]); `lookup(name)` resolves `embedding:name` (None: missing)."""
        chunks = self._chunk(self._word_groups(text, lookup or (lambda name: None)))
        if return_word_ids:
            return chunks
        return [[(t, w) for t, w, _ in chunk] for chunk in chunks]
