#!/usr/bin/env python3
"""Writes the expectations of crates/pipeline/tests/sentencepiece.rs (not run by the tests).

Made with sentencepiece 0.2.3 and transformers 4.28.0 (the slow `LlamaTokenizer` the Video-LLaMA
reference uses; only its pure-Python tokenizer code runs, no `tokenizers` is needed):

    python3 -m venv /tmp/spm && /tmp/spm/bin/pip install sentencepiece==0.2.3 protobuf
    /tmp/spm/bin/pip download --no-deps transformers==4.28.0 -d /tmp/spm/whl
    (cd /tmp/spm && unzip -q whl/transformers-4.28.0-py3-none-any.whl -d t428)
    # transformers 4.28 refuses newer `tokenizers` at import: its version check may be disabled
    # in that scratch copy (transformers/dependency_versions_check.py), nothing else is changed.
    PYTHONPATH=/tmp/spm/t428 /tmp/spm/bin/python crates/pipeline/tests/data/sentencepiece_gen.py --train

Files in this folder:
* `mistral-7b-v0.1.tokenizer.model`: `mistral_common/data/tokenizer.model.v1` from the PyPI
  wheel mistral-common 1.13.1 (Apache-2.0), the Mistral-7B-v0.1 tokenizer: a LLaMA-style
  SentencePiece BPE (32000 pieces, byte_fallback, identity normalisation, dummy prefix, and the
  whitespace-run pieces `▁▁`…`▁`×16 that all share the score -1e9, as in LLaMA's).
* `spm-bpe-rules.model` (`--train`): BPE with custom normalisation rules (a small precompiled
  charsmap), remove_extra_whitespaces=true, user-defined and control symbols, byte_fallback.
* `spm-bpe-nobytes.model` (`--train`): BPE without byte_fallback (unknown characters become one
  fused `<unk>`), no dummy prefix, character_coverage < 1.
* `sentencepiece_expected.json`: for each model, texts with the ids of
  `SentencePieceProcessor.encode` and of the slow `LlamaTokenizer` (transformers 4.28, loaded
  with `from_pretrained` as the reference does), and id lists with `SentencePieceProcessor.decode`
  and `LlamaTokenizer.decode`.
"""
import json
import os
import random
import sys
import tempfile

import sentencepiece as spm

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "../../../.."))
FIXTURE_LLM = os.path.join(ROOT, "tests/golden/video-llama-tiny/checkpoint/llm")

# Custom normalisation rules: fullwidth A-Z/a-z/0-9 → ASCII, ligatures, tab / NBSP /
# ideographic space → space. Codepoints in hex, as sentencepiece's rule TSV wants.
RULES = (
    [f"{0xFF21 + i:X}\t{0x41 + i:X}" for i in range(26)]
    + [f"{0xFF41 + i:X}\t{0x61 + i:X}" for i in range(26)]
    + [f"{0xFF10 + i:X}\t{0x30 + i:X}" for i in range(10)]
    + ["FB01\t66 69", "FB02\t66 6C", "9\t20", "A0\t20", "3000\t20", "2026\t2E 2E 2E"]
)


def corpus_text():
    parts = []
    for rel in ["README.md", "tests/golden/README.md", "docs/performance.md", "docs/kernels.md"]:
        p = os.path.join(ROOT, rel)
        if os.path.exists(p):
            with open(p, encoding="utf-8") as f:
                parts.append(f.read())
    parts.append("café naïve résumé Über straße ﬁne ﬂow Ｆｕｌｌｗｉｄｔｈ ０１２\n" * 3)
    return "\n".join(parts)


def train():
    with tempfile.TemporaryDirectory() as tmp:
        corpus = os.path.join(tmp, "corpus.txt")
        with open(corpus, "w", encoding="utf-8") as f:
            f.write(corpus_text())
        rules = os.path.join(tmp, "rules.tsv")
        with open(rules, "w", encoding="utf-8") as f:
            f.write("\n".join(RULES) + "\n")
        spm.SentencePieceTrainer.train(
            input=corpus, model_prefix=os.path.join(HERE, "spm-bpe-rules"), model_type="bpe",
            vocab_size=500, character_coverage=1.0, byte_fallback=True, num_threads=1,
            normalization_rule_tsv=rules, remove_extra_whitespaces=True, add_dummy_prefix=True,
            user_defined_symbols=["<ref>", "[[", "]]"], control_symbols=["<ctl>"],
            minloglevel=2)
        spm.SentencePieceTrainer.train(
            input=corpus, model_prefix=os.path.join(HERE, "spm-bpe-nobytes"), model_type="bpe",
            vocab_size=300, character_coverage=0.98, byte_fallback=False, num_threads=1,
            normalization_rule_name="identity", remove_extra_whitespaces=False,
            add_dummy_prefix=False, minloglevel=2)
    for name in ["spm-bpe-rules", "spm-bpe-nobytes"]:
        os.remove(os.path.join(HERE, name + ".vocab"))


FIXED_TEXTS = [
    "", " ", "  ", "a", " a", "a ", "  a  b  ", "hello world", "Hello World!",
    "The quick brown fox jumps over the lazy dog.",
    "###Human: <Video>", "</Video> The video contains 8 frames.###Assistant:",
    "tabs\tand\nnewlines\r\n", "\n\n\n", "multiple     spaces   inside",
    " " * 16 + "sixteen", " " * 17 + "x", " " * 31 + "y" + " " * 40,
    "café naïve résumé Über straße", "ﬁne ﬂow Ｆｕｌｌｗｉｄｔｈ ０１２…",
    "中文日本語한국어", "emoji 😀🎉 ok", "▁literal▁marks▁", "a▁ b", "€100 ¥200 £300",
    "digits 1234567890 3.14159", "<ref> [[link]] <ctl> <unk>", "x<ref>y", "@@ ## $$ %%",
    "\u0000\u0001\u001f\u007f", "\u200b\u200d zero width", "ＡＢＣ\u3000ｄｅｆ", "a\u00a0b",
    "ThisIsAVeryLongWordWithoutSpacesThatGoesOnAndOnAndOn",
    "def f(x):\n    return x ** 2  # comment\n",
    "I'm sure he'll say \"yes\" -- or won't?",
]


def random_texts(n, seed):
    rng = random.Random(seed)
    alpha = list(" " * 12 + "\n\t" + "abcdefghijklmnopqrstuvwxyz" + "ABCXYZ" + "0123456789"
                 + ".,!?-_'\"()[]<>#:/" + "éüßçñ" + "中文日本語" + "😀🎉" + "▁" + "ﬁＡ\u3000\u00a0")
    words = ["the", "hello", "world", "  ", "    ", " \n", "\n\n", "ing", "tion", "  the",
             "http://", "...", "```", "    def", "video", "Assistant:", "###", "<ref>",
             "[[", "]]", " " * 16, " " * 9]
    out = []
    for i in range(n):
        if i % 2:
            out.append("".join(rng.choice(alpha) for _ in range(rng.randint(1, 48))))
        else:
            out.append("".join(rng.choice(words + alpha) for _ in range(rng.randint(1, 16))))
    return out


SPECIAL_TEXTS = [
    "hello</s><s>[INST] x", "hello </s> <s> [INST] x", "a <s> b", "<s>", " <s> ", "<unk>x",
    "[/INST] answer </s><s>[INST] next [/INST]", "</s>\n<s>\n", "a<s>b</s>c<unk>d",
]


def decode_cases(sp, n, seed):
    rng = random.Random(seed)
    size = sp.get_piece_size()
    byte_ids = [i for i in range(size) if sp.is_byte(i)]
    special = [i for i in range(size) if sp.is_control(i) or sp.is_unknown(i)]
    cases = [[], list(range(min(size, 40)))]
    for _ in range(n):
        ids = []
        for _ in range(rng.randint(1, 20)):
            r = rng.random()
            if r < 0.3 and byte_ids:
                ids.append(rng.choice(byte_ids))
            elif r < 0.4 and special:
                ids.append(rng.choice(special))
            else:
                ids.append(rng.randrange(size))
        cases.append(ids)
    if byte_ids:
        b = {sp.id_to_piece(i): i for i in byte_ids}
        def ids_of(bs):
            return [b[f"<0x{x:02X}>"] for x in bs]
        # valid multi-byte, truncated, invalid lead, overlong, surrogate, U+FFFD itself
        for bs in [b"\xe2\x96\x81", b"iF\xfc", b"\xe3\x81", b"\xf0\x9f\x98\x80", b"\xc0\xaf",
                   b"\xed\xa0\x80", b"\xef\xbf\xbd", b"\xf4\x90\x80\x80", b" a", b"\xff\xfe"]:
            cases.append(ids_of(bs))
            cases.append([sp.piece_to_id("▁the") if sp.piece_to_id("▁the") else 5] + ids_of(bs))
    return cases


def slow_tokenizer(model_path, folder=None):
    from transformers import LlamaTokenizer
    if folder is None:
        folder = tempfile.mkdtemp()
        import shutil
        shutil.copy(model_path, os.path.join(folder, "tokenizer.model"))
    return LlamaTokenizer.from_pretrained(folder)


def model_entry(name, path, slow_folder, n_random, use_slow):
    sp = spm.SentencePieceProcessor(model_file=path)
    texts = FIXED_TEXTS + random_texts(n_random, seed=len(name))
    entry = {"model": name, "encode": [], "encode_slow": [], "decode": []}
    for t in texts:
        entry["encode"].append({"text": t, "ids": sp.encode(t)})
    slow = slow_tokenizer(path, slow_folder) if use_slow else None
    if slow is not None:
        for t in SPECIAL_TEXTS + FIXED_TEXTS[:12]:
            ids = slow(t, add_special_tokens=False).input_ids
            entry["encode_slow"].append({"text": t, "ids": ids})
    for ids in decode_cases(sp, 60, seed=len(name)):
        d = {"ids": ids, "text": sp.decode(ids)}
        if slow is not None:
            d["slow"] = slow.decode(ids)
            d["slow_skip"] = slow.decode(ids, skip_special_tokens=True)
        entry["decode"].append(d)
    return entry


def main():
    if "--train" in sys.argv:
        train()
    models = [
        ("video-llama-tiny", FIXTURE_LLM + "/tokenizer.model", FIXTURE_LLM, 150, True),
        ("mistral-7b-v0.1", os.path.join(HERE, "mistral-7b-v0.1.tokenizer.model"), None, 250, True),
        ("spm-bpe-rules", os.path.join(HERE, "spm-bpe-rules.model"), None, 150, False),
        ("spm-bpe-nobytes", os.path.join(HERE, "spm-bpe-nobytes.model"), None, 100, False),
    ]
    out = {
        "_generated_by": "crates/pipeline/tests/data/sentencepiece_gen.py (see its docstring); "
                         "sentencepiece 0.2.3, transformers 4.28.0 slow LlamaTokenizer",
        "models": [model_entry(*m) for m in models],
    }
    with open(os.path.join(HERE, "sentencepiece_expected.json"), "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=True, separators=(",", ":"))
        f.write("\n")


if __name__ == "__main__":
    main()
