"""Write random AltDiffusion models to disk in the layouts users really have.

The folders written here copy the BAAI Hub repositories (BAAI/AltDiffusion, BAAI/AltDiffusion-m9,
BAAI/AltDiffusion-m18; see docs/altdiffusion.md), not what ``save_pretrained`` writes today:

- ``model_index.json`` names ``["alt_diffusion", "RobertaSeriesModelWithTransformation"]`` as text encoder, a
  module diffusers 0.42 can't import, so ``DiffusionPipeline.from_pretrained`` fails on these folders;
- ``safety_checker/`` and ``feature_extractor/`` exist but hold garbage bytes, so a loader that opens them fails loudly;
- the tokenizer folder holds ``sentencepiece.bpe.model`` and no ``tokenizer.json``;
- the text encoder config has the transformers 4.24 key set and the weights carry ``pre_LN.*`` (and the then persistent
  ``roberta.embeddings.position_ids``) even for m2/m9, which never use ``pre_LN``;
- UNet/VAE configs are the old 0.8-era ones (``sample_size 32``, no ``use_linear_projection`` for SD1.x);
- ``weights="bin"`` writes pickled state dicts (plain dicts of tensors) and the VAE with pre-0.14 attention key names
  (``query``/``key``/``value``/``proj_attn``).

``text_encoder=TextEncoderLayout(writer="diffusers", …)`` writes the text encoder as diffusers saves it instead
(``RobertaSeriesModelWithTransformation.save_pretrained``, as fine-tune and DreamBooth scripts and
``AltDiffusionPipeline.save_pretrained`` do: no ``pre_LN`` for m2/m9, no ``position_ids``), with the
``model_index.json`` such a pipeline save writes; its other fields add or leave out the keys writers disagree about.

Weights are random (seeded) and every architecture is shrunk for ``size="tiny"``; the output widths that the UNet
sees (768 for m2/m9, 1024 for m18) stay real. ``size="full"`` builds the real architectures for benchmarks.
The tokenizer is a ~1,000-piece XLM-R-style sentencepiece model trained offline on ``LANGUAGE_SAMPLES``.

Nothing here touches the network; everything is written under the ``dest`` folder the caller gives.
"""

from __future__ import annotations

import functools
import io
import json
import math
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors.torch
import sentencepiece
import torch

# --------------------------------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------------------------------

#: A few prompt-like sentences in each of the 18 m18 languages (m2 and m9 use subsets); the tiny tokenizer is trained
#: on them with full character coverage, so every character below is a piece of its own.
LANGUAGE_SAMPLES: dict[str, tuple[str, ...]] = {
    "en": (
        "A photo of a cat sitting on a wooden table, highly detailed, 4k.",
        "An astronaut riding a horse on the moon, digital art.",
        "A beautiful landscape with mountains, a lake and a red sunset.",
        "Portrait of an old man with a white beard, oil painting.",
    ),
    "zh": (
        "一只猫坐在木桌上，高清，细节丰富。",
        "宇航员在月球上骑马，数字艺术。",
        "美丽的山水风景，有湖泊和红色的日落。",
        "一位白胡子老人的肖像，油画风格。",
    ),
    "ja": (
        "木のテーブルの上に座っている猫の写真、高精細。",
        "月面で馬に乗る宇宙飛行士、デジタルアート。",
        "山と湖と赤い夕日のある美しい風景。",
        "白いひげの老人の肖像画、油絵。",
    ),
    "th": (
        "ภาพถ่ายแมวนั่งอยู่บนโต๊ะไม้ รายละเอียดสูง",
        "นักบินอวกาศขี่ม้าบนดวงจันทร์ ศิลปะดิจิทัล",
        "ทิวทัศน์ที่สวยงามมีภูเขา ทะเลสาบ และพระอาทิตย์ตกสีแดง",
        "ภาพเหมือนของชายชราเคราขาว ภาพวาดสีน้ำมัน",
    ),
    "ko": (
        "나무 탁자 위에 앉아 있는 고양이 사진, 고화질.",
        "달에서 말을 타는 우주비행사, 디지털 아트.",
        "산과 호수와 붉은 노을이 있는 아름다운 풍경.",
        "흰 수염을 기른 노인의 초상화, 유화.",
    ),
    "hi": (
        "लकड़ी की मेज़ पर बैठी एक बिल्ली की तस्वीर, बहुत विस्तृत।",
        "चाँद पर घोड़े की सवारी करता एक अंतरिक्ष यात्री, डिजिटल कला।",
        "पहाड़ों, झील और लाल सूर्यास्त वाला एक सुंदर दृश्य।",
        "सफ़ेद दाढ़ी वाले एक बूढ़े आदमी का चित्र, तेल चित्रकला।",
    ),
    "uk": (
        "Фотографія кота, що сидить на дерев'яному столі, висока деталізація.",
        "Астронавт їде верхи на коні на Місяці, цифрове мистецтво.",
        "Гарний краєвид з горами, озером і червоним заходом сонця.",
        "Портрет старого чоловіка з білою бородою, олійний живопис.",
    ),
    "ar": (
        "صورة قطة تجلس على طاولة خشبية، تفاصيل عالية.",
        "رائد فضاء يركب حصانا على القمر، فن رقمي.",
        "منظر طبيعي جميل مع جبال وبحيرة وغروب شمس أحمر.",
        "صورة شخصية لرجل عجوز بلحية بيضاء، لوحة زيتية.",
    ),
    "tr": (
        "Ahşap bir masada oturan bir kedinin fotoğrafı, yüksek ayrıntılı.",
        "Ay'da ata binen bir astronot, dijital sanat.",
        "Dağlar, bir göl ve kırmızı bir gün batımı olan güzel bir manzara.",
        "Beyaz sakallı yaşlı bir adamın portresi, yağlı boya tablo.",
    ),
    "vi": (
        "Ảnh một con mèo ngồi trên bàn gỗ, độ chi tiết cao.",
        "Phi hành gia cưỡi ngựa trên mặt trăng, nghệ thuật kỹ thuật số.",
        "Phong cảnh đẹp với núi, hồ nước và hoàng hôn đỏ.",
        "Chân dung một ông già râu trắng, tranh sơn dầu.",
    ),
    "pl": (
        "Zdjęcie kota siedzącego na drewnianym stole, wysoka szczegółowość.",
        "Astronauta jadący konno na księżycu, sztuka cyfrowa.",
        "Piękny krajobraz z górami, jeziorem i czerwonym zachodem słońca.",
        "Portret starego mężczyzny z białą brodą, obraz olejny.",
    ),
    "nl": (
        "Een foto van een kat die op een houten tafel zit, zeer gedetailleerd.",
        "Een astronaut die op een paard rijdt op de maan, digitale kunst.",
        "Een prachtig landschap met bergen, een meer en een rode zonsondergang.",
        "Portret van een oude man met een witte baard, olieverfschilderij.",
    ),
    "pt": (
        "Uma foto de um gato sentado numa mesa de madeira, muito detalhada.",
        "Um astronauta andando a cavalo na lua, arte digital.",
        "Uma bela paisagem com montanhas, um lago e um pôr do sol vermelho.",
        "Retrato de um homem idoso com barba branca, pintura a óleo.",
    ),
    "it": (
        "Una foto di un gatto seduto su un tavolo di legno, molto dettagliata.",
        "Un astronauta che cavalca un cavallo sulla luna, arte digitale.",
        "Un bellissimo paesaggio con montagne, un lago e un tramonto rosso.",
        "Ritratto di un uomo anziano con la barba bianca, pittura a olio.",
    ),
    "es": (
        "Una foto de un gato sentado en una mesa de madera, muy detallada.",
        "Un astronauta montando a caballo en la luna, arte digital.",
        "Un hermoso paisaje con montañas, un lago y una puesta de sol roja.",
        "Retrato de un anciano con barba blanca, pintura al óleo.",
    ),
    "de": (
        "Ein Foto einer Katze, die auf einem Holztisch sitzt, sehr detailliert.",
        "Ein Astronaut, der auf dem Mond ein Pferd reitet, digitale Kunst.",
        "Eine schöne Landschaft mit Bergen, einem See und einem roten Sonnenuntergang.",
        "Porträt eines alten Mannes mit weißem Bart, Ölgemälde.",
    ),
    "fr": (
        "Une photo d'un chat assis sur une table en bois, très détaillée.",
        "Un astronaute à cheval sur la lune, art numérique.",
        "Un beau paysage avec des montagnes, un lac et un coucher de soleil rouge.",
        "Portrait d'un vieil homme à la barbe blanche, peinture à l'huile.",
    ),
    "ru": (
        "Фотография кошки, сидящей на деревянном столе, высокая детализация.",
        "Космонавт верхом на лошади на Луне, цифровое искусство.",
        "Красивый пейзаж с горами, озером и красным закатом.",
        "Портрет старика с белой бородой, картина маслом.",
    ),
}

#: Prompt syntax the pack's users type (weights, brackets, digits, ASCII punctuation), so these are pieces too.
PROMPT_SYNTAX_SAMPLES: tuple[str, ...] = (
    "(masterpiece:1.2), [best quality], {sharp focus}, (((detailed eyes))), 8k uhd, 0123456789",
    "embedding:style_v2, <lora:detail:0.5>, a_b-c/d\\e !?;'\" | @ # $ % & * + = ~ ` ^",
)

#: Sentencepiece trainer options. XLM-R's model is a unigram model whose pieces 0/1/2 are <unk>/<s>/</s> and that
#: has no pad piece (fairseq adds <pad> and <mask> around it); nmt_nfkc folds full-width punctuation.
SENTENCEPIECE_TRAINER_OPTIONS: dict[str, Any] = {
    "model_type": "unigram",
    "vocab_size": 1000,
    "hard_vocab_limit": False,  # a small corpus may not yield 1000 pieces; take what it yields
    "character_coverage": 1.0,
    "normalization_rule_name": "nmt_nfkc",
    "byte_fallback": False,
    "unk_id": 0,
    "bos_id": 1,
    "eos_id": 2,
    "pad_id": -1,
    "num_threads": 1,  # keeps the trained model byte-identical between runs
    "minloglevel": 2,
}

#: fairseq ids XLM-R puts around the sentencepiece pieces: <s> <pad> </s> <unk>, then piece i at i + 1, then <mask>.
FAIRSEQ_OFFSET = 1
FAIRSEQ_SPECIAL_IDS: dict[str, int] = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}

_MASK_TOKEN: dict[str, Any] = {
    "__type": "AddedToken",
    "content": "<mask>",
    "lstrip": True,
    "normalized": True,
    "rstrip": False,
    "single_word": False,
}


@dataclass(frozen=True)
class TextEncoderLayout:
    """Who wrote ``text_encoder/`` and which of the keys that writers disagree about its weights hold.

    Attributes:
        writer: "baai" — as the BAAI Hub repos have it (transformers 4.24 config key set, a trained-like random
            ``pre_LN`` for every variant, ``position_ids`` saved); "diffusers" — what diffusers'
            ``RobertaSeriesModelWithTransformation(...).save_pretrained(...)`` writes (transformers 5 config, ``pre_LN``
            only for m18, no ``position_ids``). For ``weights="bin"`` the same state dict is pickled to
            ``pytorch_model.bin``, as transformers 4's ``save_pretrained(safe_serialization=False)`` wrote it
            (transformers 5 writes safetensors only).
        pre_ln: None = the writer's own choice; True = add the ``pre_LN`` the BAAI layout has; False = leave it out.
        pooler: keep ``roberta.pooler.*`` (both writers save it; conversion scripts may drop it).
        position_ids: None = the writer's own choice (BAAI yes; diffusers no: transformers made it non-persistent in
            4.31); True = saved, as transformers < 4.31 did; False = left out.
        drop: more key prefixes to leave out (for files missing weights a variant uses, which must be refused).
    """

    writer: str = "baai"
    pre_ln: bool | None = None
    pooler: bool = True
    position_ids: bool | None = None
    drop: tuple[str, ...] = ()

    def apply(
        self, state_dict: dict[str, torch.Tensor], pre_ln: dict[str, torch.Tensor], max_positions: int
    ) -> dict[str, torch.Tensor]:
        """`state_dict` as the writer saved it, with the optional keys added or left out as this layout says."""
        out = dict(state_dict)
        if self.pre_ln:
            out.update(pre_ln)
        if self.pre_ln is False:
            out = {k: v for k, v in out.items() if not k.startswith("pre_LN.")}
        if self.position_ids:
            out[POSITION_IDS_KEY] = torch.arange(max_positions).unsqueeze(0)
        if self.position_ids is False:
            out.pop(POSITION_IDS_KEY, None)
        drop = self.drop + (() if self.pooler else ("roberta.pooler.",))
        return {k: v for k, v in out.items() if not k.startswith(drop)}


POSITION_IDS_KEY = "roberta.embeddings.position_ids"
TEXT_ENCODER_WRITERS = ("baai", "diffusers")


@dataclass(frozen=True)
class VariantSpec:
    """What differs between the three AltDiffusion releases on disk."""

    tokenizer_max_length: int  # what tokenizer_config.json says (m9's 512 is what the repo ships, not what to use)
    project_dim: int  # width of the conditioning fed to the UNet
    has_pre_transformation: bool  # m18: transformation_pre(pre_LN(hidden_states[-2]))
    unet_family: str  # key of UNET_CONFIGS
    diffusers_version: str  # `_diffusers_version` stamped in model_index.json and the component configs


VARIANTS: dict[str, VariantSpec] = {
    "m2": VariantSpec(77, 768, False, "sd1", "0.8.0.dev0"),
    "m9": VariantSpec(512, 768, False, "sd1", "0.8.0.dev0"),
    # m18 was published in 2023 on an SD 2.1-base UNet; its exact diffusers stamp is not recorded in our docs.
    "m18": VariantSpec(77, 1024, True, "sd21", "0.15.0.dev0"),
}

#: XLM-R trunk shapes. "full" is XLM-R large (560 M parameters with the real 250002-id vocabulary); "tiny" has
#: vocab_size None, meaning "exactly the ids the tiny tokenizer can produce".
TEXT_ENCODER_SIZES: dict[str, dict[str, Any]] = {
    "tiny": {
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 37,
        "vocab_size": None,
    },
    "full": {
        "hidden_size": 1024,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "intermediate_size": 4096,
        "vocab_size": 250002,
    },
}

#: text_encoder/config.json as the BAAI repos have it (written by transformers 4.24), less the sized keys above.
TEXT_ENCODER_BASE_CONFIG: dict[str, Any] = {
    "_name_or_path": "",
    "architectures": ["RobertaSeriesModelWithTransformation"],
    "attention_probs_dropout_prob": 0.1,
    "bos_token_id": 0,
    "classifier_dropout": None,
    "eos_token_id": 2,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "layer_norm_eps": 1e-05,
    "learn_encoder": False,
    "max_position_embeddings": 514,
    "model_type": "xlm-roberta",
    "output_past": True,
    "pad_token_id": 1,
    "pooler_fn": "cls",
    "position_embedding_type": "absolute",
    "transformers_version": "4.24.0.dev0",
    "type_vocab_size": 1,
    "use_attention_mask": True,
    "use_cache": True,
}

_UNET_COMMON: dict[str, Any] = {
    "_class_name": "UNet2DConditionModel",
    "act_fn": "silu",
    "center_input_sample": False,
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
}
_SD_DOWN_BLOCKS = ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"]
_SD_UP_BLOCKS = ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]
_TINY_UNET_BLOCKS: dict[str, Any] = {
    "block_out_channels": [32, 64],
    "layers_per_block": 1,
    "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
}
_FULL_UNET_BLOCKS: dict[str, Any] = {
    "block_out_channels": [320, 640, 1280, 1280],
    "layers_per_block": 2,
    "down_block_types": _SD_DOWN_BLOCKS,
    "up_block_types": _SD_UP_BLOCKS,
}
# SD 1.x (0.8-era config: no use_linear_projection, sample_size 32 as in the AltDiffusion repos) and SD 2.1-base.
_SD1_UNET: dict[str, Any] = {**_UNET_COMMON, "cross_attention_dim": 768, "sample_size": 32}
_SD21_UNET: dict[str, Any] = {
    **_UNET_COMMON,
    "cross_attention_dim": 1024,
    "dual_cross_attention": False,
    "num_class_embeds": None,
    "only_cross_attention": False,
    "sample_size": 64,
    "upcast_attention": False,
    "use_linear_projection": True,
}

#: unet/config.json per (family, size); `attention_head_dim` is the head COUNT in these old configs.
UNET_CONFIGS: dict[tuple[str, str], dict[str, Any]] = {
    ("sd1", "tiny"): {**_SD1_UNET, **_TINY_UNET_BLOCKS, "attention_head_dim": 2},
    ("sd1", "full"): {**_SD1_UNET, **_FULL_UNET_BLOCKS, "attention_head_dim": 8},
    ("sd21", "tiny"): {**_SD21_UNET, **_TINY_UNET_BLOCKS, "attention_head_dim": [2, 4]},
    ("sd21", "full"): {**_SD21_UNET, **_FULL_UNET_BLOCKS, "attention_head_dim": [5, 10, 20, 20]},
}

_VAE_COMMON: dict[str, Any] = {
    "_class_name": "AutoencoderKL",
    "act_fn": "silu",
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3,
    "latent_channels": 4,
    "out_channels": 3,
    "scaling_factor": 0.18215,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}

#: vae/config.json per size; both downsample by 8 (four blocks) and normalise over diffusers' default 32 groups, as
#: every real SD VAE does and ComfyUI's own VAE (``comfy.sd.VAE``, which the native loader builds) hard-codes; the tiny
#: one's last level is 64 wide so that a 1×1 latent still has two values per group.
VAE_CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": {**_VAE_COMMON, "block_out_channels": [32, 32, 64, 64], "layers_per_block": 1, "sample_size": 64},
    "full": {**_VAE_COMMON, "block_out_channels": [128, 256, 512, 512], "layers_per_block": 2, "sample_size": 512},
}

SCHEDULER_CONFIG: dict[str, Any] = {
    "_class_name": "PNDMScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}

ALT_DIFFUSION_MODEL_INDEX: dict[str, Any] = {
    "_class_name": "AltDiffusionPipeline",
    "feature_extractor": ["transformers", "CLIPFeatureExtractor"],
    "safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"],
    "scheduler": ["diffusers", "PNDMScheduler"],
    "text_encoder": ["alt_diffusion", "RobertaSeriesModelWithTransformation"],
    "tokenizer": ["transformers", "XLMRobertaTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}

#: model_index.json as ``AltDiffusionPipeline(..., safety_checker=None, feature_extractor=CLIPImageProcessor(),
#: requires_safety_checker=False).save_pretrained`` writes it (diffusers 0.42.1; ``tests/test_text_encoder_layouts.py``
#: compares it with a real save).
DIFFUSERS_SAVED_MODEL_INDEX: dict[str, Any] = {
    "_class_name": "AltDiffusionPipeline",
    "feature_extractor": ["transformers", "CLIPImageProcessor"],
    "image_encoder": [None, None],
    "requires_safety_checker": False,
    "safety_checker": [None, None],
    "scheduler": ["diffusers", "PNDMScheduler"],
    "text_encoder": ["diffusers", "RobertaSeriesModelWithTransformation"],
    "tokenizer": ["transformers", "XLMRobertaTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}
DIFFUSERS_SAVE_VERSION = "0.42.1"

SD_CLIP_MODEL_INDEX: dict[str, Any] = {
    **ALT_DIFFUSION_MODEL_INDEX,
    "_class_name": "StableDiffusionPipeline",
    "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
}

#: A tiny CLIP text tower, 768 wide so that the SD1 UNet's cross-attention accepts its output.
CLIP_TEXT_CONFIG: dict[str, Any] = {
    "architectures": ["CLIPTextModel"],
    "attention_dropout": 0.0,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "hidden_act": "quick_gelu",
    "hidden_size": 768,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "intermediate_size": 64,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 77,
    "model_type": "clip_text_model",
    "num_attention_heads": 12,
    "num_hidden_layers": 1,
    "pad_token_id": 1,
    "projection_dim": 768,
    "torch_dtype": "float32",
    "transformers_version": "4.22.0.dev0",
}

#: Words whose BPE merges the hand-made CLIP vocabulary contains (everything else splits into single characters).
CLIP_MERGE_WORDS: tuple[str, ...] = ("a", "photo", "of", "cat", "dog", "the", "painting", "astronaut", "horse")

#: File names per weight format: (transformers-side file, diffusers-side file).
WEIGHT_FILES: dict[str, tuple[str, str]] = {
    "safetensors": ("model.safetensors", "diffusion_pytorch_model.safetensors"),
    "bin": ("pytorch_model.bin", "diffusion_pytorch_model.bin"),
}

#: Added to `seed` per component so that each gets its own stream, independent of the weight format.
_SEED_OFFSETS: dict[str, int] = {"text_encoder": 0, "unet": 1_000, "vae": 2_000, "clip_text": 3_000, "pre_ln": 4_000}

#: pre-0.14 VAE attention names -> current names (diffusers renames them back on load).
_OLD_VAE_ATTENTION_NAMES: dict[str, str] = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}

_GARBAGE = b"\x00GARBAGE: this file deliberately is not a model; a loader must not open it.\xff\xfe" * 4


# --------------------------------------------------------------------------------------------------------------------
# Tokenizers
# --------------------------------------------------------------------------------------------------------------------


@functools.cache
def _trained_sentencepiece_model() -> bytes:
    """Train the tiny XLM-R-style sentencepiece model once per process; returns the serialized model proto."""
    sentences = [s for samples in LANGUAGE_SAMPLES.values() for s in samples] + list(PROMPT_SYNTAX_SAMPLES)
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences), model_writer=model, **SENTENCEPIECE_TRAINER_OPTIONS
    )
    return model.getvalue()


def tokenizer_vocab_size() -> int:
    """Number of fairseq ids the tiny tokenizer can produce: pieces + <pad> + <mask> (XLM-R: 250000 + 2)."""
    processor = sentencepiece.SentencePieceProcessor(model_proto=_trained_sentencepiece_model())
    return processor.get_piece_size() + FAIRSEQ_OFFSET + 1


def write_tokenizer(dest: Path, model_max_length: int = 77) -> Path:
    """Write an XLM-R tokenizer folder as the BAAI repos ship it: sentencepiece model + two JSONs, no tokenizer.json."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "sentencepiece.bpe.model").write_bytes(_trained_sentencepiece_model())
    special_tokens = {
        "bos_token": "<s>",
        "cls_token": "<s>",
        "eos_token": "</s>",
        "mask_token": {k: v for k, v in _MASK_TOKEN.items() if k != "__type"},
        "pad_token": "<pad>",
        "sep_token": "</s>",
        "unk_token": "<unk>",
    }
    _write_json(dest / "special_tokens_map.json", special_tokens)
    tokenizer_config = {
        **special_tokens,
        "mask_token": _MASK_TOKEN,
        "model_max_length": model_max_length,
        "name_or_path": "xlm-roberta-large",
        "sp_model_kwargs": {},
        "special_tokens_map_file": None,
        "tokenizer_class": "XLMRobertaTokenizer",
    }
    _write_json(dest / "tokenizer_config.json", tokenizer_config)
    return dest


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte -> printable character table (adapted from openai/CLIP `simple_tokenizer.py`)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def write_clip_tokenizer(dest: Path) -> Path:
    """Write a tiny hand-made CLIP BPE tokenizer folder (vocab.json, merges.txt, two JSONs)."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    characters = list(_bytes_to_unicode().values())
    vocab = characters + [c + "</w>" for c in characters]
    merges: list[str] = []
    for word in CLIP_MERGE_WORDS:
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        merged = pieces[0]
        for piece in pieces[1:]:
            if f"{merged} {piece}" not in merges:
                merges.append(f"{merged} {piece}")
                vocab.append(merged + piece)
            merged += piece
    vocab = list(dict.fromkeys(vocab)) + ["<|startoftext|>", "<|endoftext|>"]
    _write_json(dest / "vocab.json", {token: i for i, token in enumerate(vocab)})
    (dest / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    special_tokens = {
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
    }
    _write_json(dest / "special_tokens_map.json", special_tokens)
    tokenizer_config = {
        **special_tokens,
        "add_prefix_space": False,
        "do_lower_case": True,
        "errors": "replace",
        "model_max_length": 77,
        "name_or_path": "openai/clip-vit-large-patch14",
        "tokenizer_class": "CLIPTokenizer",
    }
    _write_json(dest / "tokenizer_config.json", tokenizer_config)
    return dest


# --------------------------------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------------------------------


def write_altdiffusion_folder(
    dest: Path,
    variant: str = "m9",
    *,
    weights: str = "safetensors",
    size: str = "tiny",
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    unet_size: str | None = None,
    unet_file: Path | None = None,
    text_encoder: TextEncoderLayout = TextEncoderLayout(),
) -> Path:
    """Write a random AltDiffusion diffusers folder laid out like the BAAI repo of `variant`; returns `dest`.

    `text_encoder` says who wrote the text encoder and which optional keys it holds (``TextEncoderLayout``); with
    ``writer="diffusers"`` the folder is laid out as ``AltDiffusionPipeline.save_pretrained`` lays it out
    (its ``model_index.json``, no ``safety_checker/``), except that the tokenizer stays the sentencepiece folder
    transformers 4 saved (transformers 5 saves only a ``tokenizer.json``). The weights the two writers share are
    equal for equal `seed`.

    `weights` is "safetensors" or "bin" (pickled plain dicts, old VAE attention key names). The same `seed` gives the
    same weights whatever `weights` and `dtype` say (before the cast to `dtype`).

    `unet_size` ("tiny"/"full", default `size`) sizes the UNet alone: ``unet_size="full"`` with the tiny text encoder
    (its output width is the real one) and tiny VAE gives a folder whose UNet ComfyUI's ``UNETLoader`` also recognises.
    Its weights equal ``write_component_file(..., "unet", family=<the variant's>, seed=seed)`` (same seed, same init
    order). `unet_file`, a file that ``write_component_file`` wrote with the same family and `unet_size`, is used as
    the folder's UNet weights instead of building the UNet again (hard-linked, else copied; needs
    ``weights="safetensors"``): the full UNet takes about a minute to build, so tests build it once for both.
    """
    spec = _lookup(VARIANTS, variant, "variant")
    _lookup(WEIGHT_FILES, weights, "weights")
    _lookup(TEXT_ENCODER_SIZES, size, "size")
    unet_size = size if unet_size is None else unet_size
    _lookup(TEXT_ENCODER_SIZES, unet_size, "unet_size")
    if unet_file is not None and weights != "safetensors":
        raise ValueError(f"unet_file is a .safetensors file; it can't stand in for weights={weights!r}")
    if text_encoder.writer not in TEXT_ENCODER_WRITERS:
        raise ValueError(f"unknown text encoder writer {text_encoder.writer!r}; expected one of {TEXT_ENCODER_WRITERS}")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    if text_encoder.writer == "diffusers":
        _write_json(dest / "model_index.json", {**DIFFUSERS_SAVED_MODEL_INDEX, "_diffusers_version": DIFFUSERS_SAVE_VERSION})
    else:
        _write_json(dest / "model_index.json", {**ALT_DIFFUSION_MODEL_INDEX, "_diffusers_version": spec.diffusers_version})
        _write_garbage_components(dest)
    _write_json(dest / "scheduler" / "scheduler_config.json", {**SCHEDULER_CONFIG, "_diffusers_version": spec.diffusers_version})
    write_tokenizer(dest / "tokenizer", model_max_length=spec.tokenizer_max_length)
    _write_roberta_text_encoder(dest / "text_encoder", variant, size, weights, seed, dtype, text_encoder)
    if unet_file is None:
        _write_unet(dest / "unet", spec.unet_family, unet_size, spec.diffusers_version, weights, seed, dtype)
    else:
        _link_unet(dest / "unet", spec.unet_family, unet_size, spec.diffusers_version, Path(unet_file))
    _write_vae(dest / "vae", size, spec.diffusers_version, weights, seed, dtype)
    return dest


def write_sd_clip_folder(dest: Path, *, seed: int = 0) -> Path:
    """Write a tiny Stable Diffusion 1.x folder with a CLIP text encoder (NOT AltDiffusion); returns `dest`."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    version = "0.8.0"
    _write_json(dest / "model_index.json", {**SD_CLIP_MODEL_INDEX, "_diffusers_version": version})
    _write_garbage_components(dest)
    _write_json(dest / "scheduler" / "scheduler_config.json", {**SCHEDULER_CONFIG, "_diffusers_version": version})
    write_clip_tokenizer(dest / "tokenizer")
    _write_clip_text_encoder(dest / "text_encoder", seed)
    _write_unet(dest / "unet", "sd1", "tiny", version, "safetensors", seed, torch.float32)
    _write_vae(dest / "vae", "tiny", version, "safetensors", seed, torch.float32)
    return dest


def text_encoder_config(variant: str, size: str = "tiny", dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """The text_encoder/config.json written for `variant` and `size` (transformers 4.24 key set)."""
    spec = _lookup(VARIANTS, variant, "variant")
    sized = dict(_lookup(TEXT_ENCODER_SIZES, size, "size"))
    if sized["vocab_size"] is None:
        sized["vocab_size"] = tokenizer_vocab_size()
    config = {
        **TEXT_ENCODER_BASE_CONFIG,
        **sized,
        "project_dim": spec.project_dim,
        "torch_dtype": str(dtype).removeprefix("torch."),
    }
    if spec.has_pre_transformation:
        config["has_pre_transformation"] = True
    return dict(sorted(config.items()))


def _write_roberta_text_encoder(
    dest: Path, variant: str, size: str, weights: str, seed: int, dtype: torch.dtype, layout: TextEncoderLayout
) -> None:
    from diffusers.pipelines.deprecated.alt_diffusion.modeling_roberta_series import (
        RobertaSeriesConfig,
        RobertaSeriesModelWithTransformation,
    )

    config = text_encoder_config(variant, size, dtype)
    model_kwargs = {
        k: v
        for k, v in config.items()
        if k not in ("architectures", "model_type", "torch_dtype", "transformers_version", "_name_or_path")
    }
    with _seeded(seed, "text_encoder"):
        model = RobertaSeriesModelWithTransformation(RobertaSeriesConfig(**model_kwargs))
    hidden = config["hidden_size"]
    # The real checkpoints carry a trained pre_LN for every variant (diffusers only builds it for m18); random values,
    # not the identity, so that a loader that skips it (m18) or applies it (m2/m9) is caught by a test.
    with _seeded(seed, "pre_ln"):
        pre_ln = {"pre_LN.weight": 1.0 + 0.1 * torch.randn(hidden), "pre_LN.bias": 0.1 * torch.randn(hidden)}
    max_positions = config["max_position_embeddings"]
    if layout.writer == "diffusers":
        if model.has_pre_transformation:  # a trained m18 saved by diffusers: its pre_LN is the trained one
            model.pre_LN.load_state_dict({name.removeprefix("pre_LN."): t for name, t in pre_ln.items()})
        model.to(dtype).save_pretrained(dest)  # config.json + model.safetensors, exactly as diffusers writes them
        saved_file = dest / WEIGHT_FILES["safetensors"][0]
        saved = safetensors.torch.load_file(str(saved_file))
        state_dict = layout.apply(saved, pre_ln, max_positions)
        if weights == "safetensors" and state_dict.keys() == saved.keys():
            return  # the file save_pretrained wrote, untouched
        saved_file.unlink()
    else:
        state_dict = {**model.state_dict(), **pre_ln}
        # transformers 4.24 saved position_ids as a persistent buffer.
        state_dict[POSITION_IDS_KEY] = torch.arange(max_positions).unsqueeze(0)
        state_dict = layout.apply(state_dict, pre_ln, max_positions)
        _write_json(dest / "config.json", config)
    _save_state_dict(state_dict, dest / WEIGHT_FILES[weights][0], weights, dtype)


def _write_clip_text_encoder(dest: Path, seed: int) -> None:
    from transformers import CLIPTextConfig, CLIPTextModel

    vocab = json.loads((dest.parent / "tokenizer" / "vocab.json").read_text(encoding="utf-8"))
    config = {
        **CLIP_TEXT_CONFIG,
        "vocab_size": len(vocab),
        "bos_token_id": vocab["<|startoftext|>"],
        "eos_token_id": vocab["<|endoftext|>"],
    }
    model_kwargs = {
        k: v for k, v in config.items() if k not in ("architectures", "model_type", "torch_dtype", "transformers_version")
    }
    with _seeded(seed, "clip_text"):
        model = CLIPTextModel(CLIPTextConfig(**model_kwargs))
    _write_json(dest / "config.json", config)
    _save_state_dict(model.state_dict(), dest / WEIGHT_FILES["safetensors"][0], "safetensors", torch.float32)


def _write_unet(dest: Path, family: str, size: str, version: str, weights: str, seed: int, dtype: torch.dtype) -> None:
    from diffusers import UNet2DConditionModel

    config = {**UNET_CONFIGS[family, size], "_diffusers_version": version}
    with _seeded(seed, "unet"):
        model = UNet2DConditionModel.from_config(config)
    _write_json(dest / "config.json", config)
    _save_state_dict(model.state_dict(), dest / WEIGHT_FILES[weights][1], weights, dtype)


def _link_unet(dest: Path, family: str, size: str, version: str, unet_file: Path) -> None:
    """unet/config.json for (family, size) and `unet_file` as its weights: a hard link where possible, else a copy."""
    config = {**UNET_CONFIGS[family, size], "_diffusers_version": version}
    _write_json(dest / "config.json", config)
    target = dest / WEIGHT_FILES["safetensors"][1]
    target.unlink(missing_ok=True)
    try:
        os.link(unet_file, target)
    except OSError:
        shutil.copyfile(unet_file, target)


def _write_vae(dest: Path, size: str, version: str, weights: str, seed: int, dtype: torch.dtype) -> None:
    from diffusers import AutoencoderKL

    config = {**VAE_CONFIGS[size], "_diffusers_version": version}
    with _seeded(seed, "vae"):
        model = AutoencoderKL.from_config(config)
    state_dict = model.state_dict()
    if weights == "bin":
        state_dict = _old_vae_attention_names(state_dict)
    _write_json(dest / "config.json", config)
    _save_state_dict(state_dict, dest / WEIGHT_FILES[weights][1], weights, dtype)


def write_component_file(
    path: Path, component: str, *, family: str = "sd1", size: str = "full", seed: int = 0, dtype: torch.dtype = torch.float16
) -> Path:
    """One diffusers-format ``.safetensors`` file holding a random UNet ("unet") or VAE ("vae"), as users drop them into
    ComfyUI's ``models/diffusion_models`` and ``models/vae`` for ``UNETLoader`` / ``VAELoader``.

    ComfyUI recognises a UNet or VAE only by its real shapes, so ``size`` is "full" unless the file is meant to be
    refused. The weights equal those of ``write_altdiffusion_folder(..., size=size, seed=seed)``.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel

    builders = {
        "unet": (UNet2DConditionModel, lambda: UNET_CONFIGS[family, size]),
        "vae": (AutoencoderKL, lambda: VAE_CONFIGS[size]),
    }
    cls, config = _lookup(builders, component, "component")
    with _seeded(seed, component):
        model = cls.from_config(config())
    _save_state_dict(model.state_dict(), Path(path), "safetensors", dtype)
    return Path(path)


def _old_vae_attention_names(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename `*.mid_block.attentions.N.to_q.*` etc. to the pre-0.14 `query`/`key`/`value`/`proj_attn` names."""
    renamed = {}
    for key, tensor in state_dict.items():
        if ".mid_block.attentions." in key:
            for new, old in _OLD_VAE_ATTENTION_NAMES.items():
                key = key.replace(f".{new}.", f".{old}.")
        renamed[key] = tensor
    return renamed


def _write_garbage_components(dest: Path) -> None:
    """safety_checker/ and feature_extractor/ as listed in model_index.json, with unusable contents."""
    _write_json(
        dest / "feature_extractor" / "preprocessor_config.json",
        {
            "crop_size": 224,
            "do_center_crop": True,
            "do_normalize": True,
            "do_resize": True,
            "feature_extractor_type": "CLIPFeatureExtractor",
            "image_mean": [0.48145466, 0.4578275, 0.40821073],
            "image_std": [0.26862954, 0.26130258, 0.27577711],
            "resample": 3,
            "size": 224,
        },
    )
    _write_json(
        dest / "safety_checker" / "config.json",
        {
            "_name_or_path": "CompVis/stable-diffusion-safety-checker",
            "architectures": ["StableDiffusionSafetyChecker"],
            "model_type": "clip",
            "projection_dim": 768,
            "transformers_version": "4.22.0.dev0",
        },
    )
    (dest / "safety_checker" / "pytorch_model.bin").write_bytes(_GARBAGE)


# --------------------------------------------------------------------------------------------------------------------
# Reference loading
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class ReferenceComponents:
    """An AltDiffusion folder loaded component by component with diffusers'/transformers' own classes (fp32, eval)."""

    text_encoder: Any  # RobertaSeriesModelWithTransformation
    tokenizer: Any  # transformers XLMRobertaTokenizer (built from sentencepiece.bpe.model)
    unet: Any  # diffusers UNet2DConditionModel
    vae: Any  # diffusers AutoencoderKL
    scheduler: Any  # diffusers PNDMScheduler


def reference_components(folder: Path) -> ReferenceComponents:
    """Load `folder` (as written by `write_altdiffusion_folder`) the reference way, one class per component.

    `AltDiffusionPipeline.from_pretrained` can't be used: model_index.json names the module "alt_diffusion", which
    diffusers 0.42 can't import.
    """
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from diffusers.pipelines.deprecated.alt_diffusion.modeling_roberta_series import (
        RobertaSeriesModelWithTransformation,
    )
    from transformers import XLMRobertaTokenizer

    folder = Path(folder)
    text_encoder = RobertaSeriesModelWithTransformation.from_pretrained(folder / "text_encoder", dtype=torch.float32)
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", torch_dtype=torch.float32)
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", torch_dtype=torch.float32)
    return ReferenceComponents(
        text_encoder=text_encoder.eval(),
        tokenizer=XLMRobertaTokenizer.from_pretrained(folder / "tokenizer"),
        unet=unet.eval(),
        vae=vae.eval(),
        scheduler=PNDMScheduler.from_pretrained(folder, subfolder="scheduler"),
    )


# --------------------------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------------------------


def _lookup(table: dict[str, Any], key: str, what: str) -> Any:
    if key not in table:
        raise ValueError(f"unknown {what} {key!r}; expected one of {sorted(table)}")
    return table[key]


@contextmanager
def _seeded(seed: int, component: str) -> Iterator[None]:
    """Seed torch's global generator for one component's init, leaving the caller's RNG state untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + _SEED_OFFSETS[component])
        yield


def _save_state_dict(state_dict: dict[str, torch.Tensor], path: Path, weights: str, dtype: torch.dtype) -> None:
    """Save floating tensors as `dtype` (others unchanged), contiguous and unshared, as safetensors or a pickle."""
    tensors = {key: (t.to(dtype) if t.is_floating_point() else t).detach().contiguous().clone() for key, t in state_dict.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    if weights == "safetensors":
        safetensors.torch.save_file(tensors, str(path), metadata={"format": "pt"})
    else:
        torch.save(tensors, path)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------------------------------------------------
# LoRA files, in the key names real trainers write
# --------------------------------------------------------------------------------------------------------------------

#: UNet LoRA naming schemes → how a diffusers UNet module name (``down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q``)
#: becomes the LoRA's module name, and the suffixes of its (down, up) factors. kohya's sd-scripts (``lora_unet_`` + the
#: module with ``_``, with ``.alpha``); diffusers' 2023 attention processors (``save_attn_procs``/``save_lora_weights``
#: before 0.22: ``unet.<attention>.processor.to_q_lora.down.weight``); diffusers ≥ 0.22 (``save_lora_weights`` after
#: ``convert_state_dict_to_diffusers``: ``unet.<module>.lora.down.weight``); and PEFT's own names
#: (``get_peft_model_state_dict``: ``unet.<module>.lora_A.weight``).
UNET_LORA_SCHEMES = ("kohya", "diffusers_attn_procs", "diffusers", "peft")
#: Text-encoder LoRA naming schemes for AltDiffusion's ``text_encoder`` (module names as in
#: ``RobertaSeriesModelWithTransformation``: ``roberta.encoder.layer.0.attention.self.query``, ``transformation``):
#: PEFT as diffusers' training scripts save it (``text_encoder.<module>.lora_A.weight``), diffusers 0.14–0.21
#: (``text_encoder.<module>.lora_linear_layer.down.weight``), a bare PEFT save of the encoder
#: (``base_model.model.<module>.lora_A.weight``) and kohya (``lora_te_`` + the module with ``_``, with ``.alpha``).
TEXT_ENCODER_LORA_SCHEMES = ("peft", "diffusers_linear_layer", "base_model", "kohya")
_ATTENTION_PROJECTIONS = {"to_q": "to_q_lora", "to_k": "to_k_lora", "to_v": "to_v_lora", "to_out.0": "to_out_lora"}
#: SD 1.x's CLIP-L text encoder: module (in ``text_model.encoder.layers.N``) → (out, in) of its Linear.
CLIP_L_LORA_MODULES = {
    "self_attn.q_proj": (768, 768),
    "self_attn.k_proj": (768, 768),
    "self_attn.v_proj": (768, 768),
    "self_attn.out_proj": (768, 768),
    "mlp.fc1": (3072, 768),
    "mlp.fc2": (768, 3072),
}


@dataclass
class LoraLayers:
    """A random LoRA: what its file holds and, per module it patches, the factors a loader must apply.

    ``factors`` maps the patched module's own name (diffusers names for the UNet, e.g.
    ``down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q``; the text encoder's, e.g.
    ``roberta.encoder.layer.0.attention.self.query``; CLIP-L's ``text_model.encoder.layers.0.self_attn.q_proj``) to
    ``(up, down, scale)``: the weight becomes ``W + strength · scale · (up.flatten(1) @ down.flatten(1)).reshape(W.shape)``,
    ``scale = alpha / rank`` when the file stores an alpha, else 1.
    """

    tensors: dict[str, torch.Tensor]
    factors: dict[str, tuple[torch.Tensor, torch.Tensor, float]]

    def __add__(self, other: LoraLayers) -> LoraLayers:
        return LoraLayers({**self.tensors, **other.tensors}, {**self.factors, **other.factors})


def _weight_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    with safetensors.safe_open(str(path), framework="pt") as f:
        return {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}


def _lora_factors(modules: dict[str, tuple[int, ...]], rank: int, seed: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(up, down) per module of shape (out, in[, 1, 1]): down ~ N(0, 1/in), up ~ N(0, 0.1²), so up @ down is about
    as large as the tiny models' weights."""
    generator = torch.Generator().manual_seed(seed)
    factors = {}
    for name, shape in sorted(modules.items()):
        kernel = tuple(shape[2:])
        down = torch.randn((rank, shape[1], *kernel), generator=generator) / shape[1] ** 0.5
        up = 0.1 * torch.randn((shape[0], rank, *((1,) * len(kernel))), generator=generator)
        factors[name] = (up, down)
    return factors


def _lora_layers(
    modules: dict[str, tuple[int, ...]], names: dict[str, tuple[str, str, str]], rank: int, alpha: float | None, seed: int
) -> LoraLayers:
    """``names``: module → (LoRA module name, down suffix, up suffix); ``alpha`` None = the file stores none."""
    tensors, factors = {}, {}
    for module, (up, down) in _lora_factors(modules, rank, seed).items():
        base, down_suffix, up_suffix = names[module]
        tensors[base + down_suffix] = down
        tensors[base + up_suffix] = up
        if alpha is not None:
            tensors[base + ".alpha"] = torch.tensor(float(alpha))
        factors[module] = (up, down, alpha / rank if alpha is not None else 1.0)
    return LoraLayers(tensors, factors)


def unet_lora(folder: Path, scheme: str, *, rank: int = 4, alpha: float = 2.0, seed: int = 0) -> LoraLayers:
    """A random LoRA for the UNet of the diffusers ``folder`` (its shapes), named as ``scheme`` (``UNET_LORA_SCHEMES``).

    kohya patches every Linear and 1×1 conv of the transformer blocks (attention, feed-forward, ``proj_in``/``proj_out``)
    and stores ``alpha``; the diffusers and PEFT schemes patch the attention projections ``to_q``/``to_k``/``to_v``/
    ``to_out.0`` (the ``target_modules`` of diffusers' LoRA training scripts) and store no alpha.
    """
    if scheme not in UNET_LORA_SCHEMES:
        raise ValueError(f"unknown UNet LoRA scheme {scheme!r}; expected one of {UNET_LORA_SCHEMES}")
    shapes = _weight_shapes(Path(folder) / "unet" / WEIGHT_FILES["safetensors"][1])
    modules = {
        key.removesuffix(".weight"): shape
        for key, shape in shapes.items()
        if ".attentions." in key and key.endswith(".weight") and len(shape) in (2, 4) and shape[2:] in ((), (1, 1))
    }
    if scheme != "kohya":
        projections = tuple(f".attn{i}.{projection}" for i in (1, 2) for projection in _ATTENTION_PROJECTIONS)
        modules = {m: s for m, s in modules.items() if m.endswith(projections)}
    names = {}
    for module in modules:
        if scheme == "kohya":
            names[module] = ("lora_unet_" + module.replace(".", "_"), ".lora_down.weight", ".lora_up.weight")
        elif scheme == "diffusers_attn_procs":
            attention, projection = module.split(".to_", 1)
            processor = _ATTENTION_PROJECTIONS["to_" + projection]
            names[module] = (f"unet.{attention}.processor.{processor}", ".down.weight", ".up.weight")
        elif scheme == "diffusers":
            names[module] = (f"unet.{module}", ".lora.down.weight", ".lora.up.weight")
        else:
            names[module] = (f"unet.{module}", ".lora_A.weight", ".lora_B.weight")
    return _lora_layers(modules, names, rank, alpha if scheme == "kohya" else None, seed)


def text_encoder_lora(
    folder: Path, scheme: str, *, rank: int = 4, alpha: float = 2.0, seed: int = 1, unused_head: bool = False
) -> LoraLayers:
    """A random LoRA for AltDiffusion's text encoder in the diffusers ``folder`` (its shapes), named as ``scheme``
    (``TEXT_ENCODER_LORA_SCHEMES``): every Linear of XLM-R (query, key, value, attention and feed-forward dense) and
    of the head the variant computes with (m2/m9 ``transformation``; m18 ``transformation_pre``, not the
    ``transformation`` its file also carries and never uses, unless ``unused_head``); kohya stores ``alpha``, the
    others none."""
    if scheme not in TEXT_ENCODER_LORA_SCHEMES:
        raise ValueError(f"unknown text-encoder LoRA scheme {scheme!r}; expected one of {TEXT_ENCODER_LORA_SCHEMES}")
    shapes = _weight_shapes(Path(folder) / "text_encoder" / WEIGHT_FILES["safetensors"][0])
    m18 = "transformation_pre.weight" in shapes
    modules = {
        key.removesuffix(".weight"): shape
        for key, shape in shapes.items()
        if key.endswith(".weight")
        and len(shape) == 2
        and ".embeddings." not in key
        and not key.startswith("roberta.pooler.")
        and (unused_head or not (m18 and key == "transformation.weight"))
    }
    prefix, down, up = {
        "peft": ("text_encoder.", ".lora_A.weight", ".lora_B.weight"),
        "diffusers_linear_layer": ("text_encoder.", ".lora_linear_layer.down.weight", ".lora_linear_layer.up.weight"),
        "base_model": ("base_model.model.", ".lora_A.weight", ".lora_B.weight"),
        "kohya": ("lora_te_", ".lora_down.weight", ".lora_up.weight"),
    }[scheme]
    names = {m: (prefix + (m.replace(".", "_") if scheme == "kohya" else m), down, up) for m in modules}
    return _lora_layers(modules, names, rank, alpha if scheme == "kohya" else None, seed)


def clip_l_lora(scheme: str = "kohya", *, layers: int = 12, rank: int = 4, alpha: float = 2.0, seed: int = 2) -> LoraLayers:
    """The text-encoder part of a Stable Diffusion 1.x LoRA: CLIP-L's attention and MLP Linears of ``layers`` layers,
    as kohya (``lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight`` + ``.alpha``) or diffusers
    (``text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_linear_layer.down.weight``) name them."""
    if scheme not in ("kohya", "diffusers"):
        raise ValueError(f"unknown CLIP-L LoRA scheme {scheme!r}; expected 'kohya' or 'diffusers'")
    modules = {
        f"text_model.encoder.layers.{i}.{module}": shape for i in range(layers) for module, shape in CLIP_L_LORA_MODULES.items()
    }
    if scheme == "kohya":
        names = {m: ("lora_te_" + m.replace(".", "_"), ".lora_down.weight", ".lora_up.weight") for m in modules}
    else:
        names = {m: ("text_encoder." + m, ".lora_linear_layer.down.weight", ".lora_linear_layer.up.weight") for m in modules}
    return _lora_layers(modules, names, rank, alpha if scheme == "kohya" else None, seed)


def write_lora(dest: Path, lora: LoraLayers) -> Path:
    """Save ``lora.tensors`` as a ``.safetensors`` LoRA file at ``dest``; returns ``dest``."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tensors = {key: t.detach().contiguous().clone() for key, t in lora.tensors.items()}
    safetensors.torch.save_file(tensors, str(dest), metadata={"format": "pt"})
    return dest


# --------------------------------------------------------------------------------------------------------------------
# ControlNets
# --------------------------------------------------------------------------------------------------------------------

CONTROLNET_FAMILIES = {"sd1": (768, False), "sd21": (1024, True)}
"""UNet family → (cross-attention width, linear proj_in/proj_out in the transformers) of its ControlNet."""


def controlnet_state_dict(family: str, seed: int = 0, dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    """A random ControlNet for a full-size SD 1.x ("sd1") or SD 2.1-base ("sd21") UNet in the ControlNet-v1.1
    single-file layout (``control_model.input_hint_block.*``, ``.input_blocks.*``, ``.zero_convs.*``,
    ``.middle_block.*``, ``.middle_block_out.*``, ``.time_embed.*``), which ComfyUI's ``load_controlnet`` recognises
    by shape. Weights are N(0, 1/fan_in) (activations stay O(1) through 1280 channels), norms 1, biases 0; the zero
    convolutions are random too, so the control changes the UNet's result."""
    context, linear = CONTROLNET_FAMILIES[family]
    generator = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}

    def dense(name: str, out_c: int, in_c: int, kernel: int | None = None, bias: bool = True) -> None:
        shape = (out_c, in_c) if kernel is None else (out_c, in_c, kernel, kernel)
        fan_in = in_c * (kernel or 1) ** 2
        sd[f"{name}.weight"] = torch.randn(shape, generator=generator, dtype=dtype).mul_(1 / math.sqrt(fan_in))
        if bias:
            sd[f"{name}.bias"] = torch.zeros(out_c, dtype=dtype)

    def norm(name: str, channels: int) -> None:
        sd[f"{name}.weight"] = torch.ones(channels, dtype=dtype)
        sd[f"{name}.bias"] = torch.zeros(channels, dtype=dtype)

    def resblock(name: str, in_c: int, out_c: int) -> None:
        norm(f"{name}.in_layers.0", in_c)
        dense(f"{name}.in_layers.2", out_c, in_c, 3)
        dense(f"{name}.emb_layers.1", out_c, 1280)
        norm(f"{name}.out_layers.0", out_c)
        dense(f"{name}.out_layers.3", out_c, out_c, 3)
        if in_c != out_c:
            dense(f"{name}.skip_connection", out_c, in_c, 1)

    def transformer(name: str, channels: int) -> None:
        norm(f"{name}.norm", channels)
        projection = None if linear else 1
        dense(f"{name}.proj_in", channels, channels, projection)
        dense(f"{name}.proj_out", channels, channels, projection)
        block = f"{name}.transformer_blocks.0"
        for attention, kv_width in (("attn1", channels), ("attn2", context)):
            dense(f"{block}.{attention}.to_q", channels, channels, bias=False)
            dense(f"{block}.{attention}.to_k", channels, kv_width, bias=False)
            dense(f"{block}.{attention}.to_v", channels, kv_width, bias=False)
            dense(f"{block}.{attention}.to_out.0", channels, channels)
        dense(f"{block}.ff.net.0.proj", channels * 8, channels)  # GEGLU: two halves of 4× width
        dense(f"{block}.ff.net.2", channels, channels * 4)
        for index in (1, 2, 3):
            norm(f"{block}.norm{index}", channels)

    base = 320
    dense("time_embed.0", 1280, base)
    dense("time_embed.2", 1280, 1280)
    hint = [3, 16, 16, 32, 32, 96, 96, 256, base]
    for index in range(len(hint) - 1):
        dense(f"input_hint_block.{2 * index}", hint[index + 1], hint[index], 3)
    dense("input_blocks.0.0", base, 4, 3)
    dense("zero_convs.0.0", base, base, 1)
    channels, block = base, 1
    multipliers = (1, 2, 4, 4)
    for level, multiplier in enumerate(multipliers):
        for _ in range(2):
            resblock(f"input_blocks.{block}.0", channels, base * multiplier)
            channels = base * multiplier
            if level < len(multipliers) - 1:  # SD's last level has no attention
                transformer(f"input_blocks.{block}.1", channels)
            dense(f"zero_convs.{block}.0", channels, channels, 1)
            block += 1
        if level < len(multipliers) - 1:
            dense(f"input_blocks.{block}.0.op", channels, channels, 3)
            dense(f"zero_convs.{block}.0", channels, channels, 1)
            block += 1
    resblock("middle_block.0", channels, channels)
    transformer("middle_block.1", channels)
    resblock("middle_block.2", channels, channels)
    dense("middle_block_out.0", channels, channels, 1)
    return {f"control_model.{key}": value for key, value in sd.items()}
