"""A tiny random Stable Diffusion pipeline with the real layout of a hub checkpoint.

UNet, VAE, CLIP text encoder and PNDM scheduler are the classes (and the scheduler config)
of Stable Diffusion v1.x, shrunk so that 2 steps at 64x64 take a fraction of a second on a
CPU. The CLIP tokenizer is built from a hand-written vocabulary (every byte, alone and at
the end of a word, plus a few merges), so no download is needed.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

HIDDEN = 32
MAX_TOKENS = 77
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
# A few whole words, so that common prompts do not fall apart into single bytes.
WORDS = ["a", "cat", "dog", "photo", "of", "red", "blue", "blurry", "sky"]


def build(path: Path) -> None:
    """Write a pipeline directory that `StableDiffusionPipeline.from_pretrained` loads."""
    torch.manual_seed(0)
    tokenizer = _tokenizer(path / "tokenizer")
    pipeline = StableDiffusionPipeline(
        vae=_vae(),
        text_encoder=_text_encoder(tokenizer),
        tokenizer=tokenizer,
        unet=_unet(),
        scheduler=_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.save_pretrained(path, safe_serialization=True)


def _byte_alphabet() -> list[str]:
    """GPT-2/CLIP's printable stand-in for each of the 256 bytes, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = iter(range(256, 512))
    return [chr(byte if byte in printable else next(extra)) for byte in range(256)]


def _vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    """Bytes, bytes ending a word, then merges building each of WORDS left to right."""
    alphabet = _byte_alphabet()
    tokens = [*alphabet, *(char + "</w>" for char in alphabet)]
    merges: list[str] = []
    for word in WORDS:
        pieces = [*word[:-1], word[-1] + "</w>"]
        while len(pieces) > 1:
            merged = pieces[0] + pieces[1]
            if merged not in tokens:
                merges.append(f"{pieces[0]} {pieces[1]}")
                tokens.append(merged)
            pieces = [merged, *pieces[2:]]
    tokens += [BOS, EOS]
    return {token: index for index, token in enumerate(tokens)}, merges


def _tokenizer(folder: Path) -> CLIPTokenizer:
    """Write vocab.json and merges.txt as a hub checkpoint has them, and load them from there."""
    vocab, merges = _vocab_and_merges()
    folder.mkdir(parents=True)
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return CLIPTokenizer(vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"), model_max_length=MAX_TOKENS)


def _text_encoder(tokenizer: CLIPTokenizer) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=HIDDEN,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=MAX_TOKENS,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(config).eval()


def _unet() -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=32,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=HIDDEN,
        attention_head_dim=8,
        norm_num_groups=32,
    ).eval()


def _vae() -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(32, 64),
        latent_channels=4,
        sample_size=64,
        norm_num_groups=32,
    ).eval()


def _scheduler() -> PNDMScheduler:
    """Stable Diffusion v1.5's scheduler config."""
    return PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        set_alpha_to_one=False,
        skip_prk_steps=True,
        steps_offset=1,
    )
