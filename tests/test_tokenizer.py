"""CLIP tokenizer + ComfyUI prompt syntax against ComfyUI's own output (tests/data/tokens.json)."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from comfy_core.tokenizer import (
    END_TOKEN,
    START_TOKEN,
    PromptTokenizer,
    clean_text,
    clip_bpe,
    parse_weights,
)

DATA = Path(__file__).parent / "data"
TOKENS = json.loads((DATA / "tokens.json").read_text())
CLEANING = json.loads((DATA / "tokenizer_cleaning.json").read_text())


@pytest.fixture(scope="module")
def sd1_tokenizer() -> PromptTokenizer:
    return PromptTokenizer()


def test_tokenizer_facts_match_comfyui():
    facts = TOKENS["tokenizer"]
    bpe = clip_bpe()
    assert (START_TOKEN, END_TOKEN) == (facts["start_token"], facts["end_token"])
    assert len(bpe.vocab) == 49408
    assert bpe.vocab["<|startoftext|>"] == 49406 and bpe.vocab["<|endoftext|>"] == 49407
    assert PromptTokenizer().pad_token == facts["pad_token"]


@pytest.mark.parametrize("case", TOKENS["prompts"], ids=lambda c: repr(c["prompt"])[:40])
def test_prompt_matches_comfyui(sd1_tokenizer, case, caplog):
    with caplog.at_level(logging.WARNING, logger="comfy_core.tokenizer"):
        chunks = sd1_tokenizer.tokenize_with_weights(case["prompt"], return_word_ids=True)
    assert len(chunks) == case["num_chunks"]
    assert [[t for t, _, _ in c] for c in chunks] == case["chunks_ids"]
    assert [[w for _, w, _ in c] for c in chunks] == case["chunks_weights"]  # exact floats, e.g. 1.1**3
    assert [[i for _, _, i in c] for c in chunks] == case["chunks_word_ids"]
    assert [r.getMessage() for r in caplog.records] == case["log_messages"]


@pytest.mark.parametrize("case", CLEANING["cases"], ids=lambda c: repr(c["text"])[:30])
def test_cleaning_matches_transformers(case):
    assert clip_bpe().encode(case["text"]) == case["ids"]


def test_cleaning_rules():
    assert clean_text("  A\u00a0B\tc\u200b\x07 Café 東京 &amp; ") == "a b c café 東 京 &amp;"


def test_weights_parse():
    assert parse_weights("a (b:1.5) ((c)) [d] \\(e\\)") == [
        ("a ", 1.0), ("b", 1.5), (" ", 1.0), ("c", 1.1 * 1.1), (" [d] \\", 1.0), ("e\\", 1.1)
    ]  # escapes are applied by the tokenizer, not by parse_weights
    assert parse_weights("(x:notanumber)") == [("x:notanumber", 1.1)]


def test_clip_g_pads_with_zero():
    chunk = PromptTokenizer(pad_token=0, embedding_size=1280, embedding_key="clip_g").tokenize_with_weights("cat")[0]
    assert [t for t, _ in chunk[:4]] == [START_TOKEN, 2368, END_TOKEN, 0]
    assert len(chunk) == 77 and all(t == 0 for t, _ in chunk[3:])


def test_embedding_splice_and_chunking():
    vectors = torch.arange(3 * 768, dtype=torch.float32).reshape(3, 768)
    found = {"emb": vectors}
    tok = PromptTokenizer()
    chunks = tok.tokenize_with_weights("a (embedding:emb:1.2) cat", lookup=found.get, return_word_ids=True)
    tokens = [t for t, _, _ in chunks[0]]
    assert tokens[:2] == [START_TOKEN, 320]
    assert all(torch.equal(tokens[2 + i], vectors[i]) for i in range(3))
    assert [w for _, w, _ in chunks[0][2:5]] == [1.2] * 3
    assert tokens[5] == 2368 and tokens[6] == END_TOKEN
    # a trailing comma is retried without it and kept as text; a missing one is dropped
    chunks = tok.tokenize_with_weights("embedding:emb, x embedding:nope y", lookup=found.get, return_word_ids=True)
    assert [i for _, _, i in chunks[0][:8]] == [0, 1, 1, 1, 2, 2, 3, 0]
    assert [t for t, _, _ in chunks[0][4:7]] == [267, 343, 344]  # ",", "x", "y"


def test_long_word_groups_split_across_chunks():
    text = "(" + " ".join(["cat"] * 100) + ":1.0)"  # one group of 100 tokens >= 8: split at the boundary
    chunks = PromptTokenizer().tokenize_with_weights(text, return_word_ids=True)
    assert len(chunks) == 2 and all(len(c) == 77 for c in chunks)
    assert chunks[0][-1][0] == END_TOKEN and chunks[0][-2][0] == 2368
    assert sum(1 for c in chunks for t, _, _ in c if t == 2368) == 100
