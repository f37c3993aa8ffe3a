"""Prompts shared by tests that compare text encoders: every script the models know, weights, escapes, long."""

PROMPTS = {
    "empty": "",
    "english": "a cat wearing a red hat, oil painting",
    "chinese": "一只戴着红色围巾的橘猫坐在雪地里，油画风格",
    "japanese": "雪の中に座っている赤いマフラーをした猫、油絵",
    "korean": "눈 속에 앉아 있는 빨간 목도리를 한 고양이",
    "arabic": "قطة ترتدي وشاحًا أحمر تجلس في الثلج",
    "russian": "кошка в красном шарфе сидит в снегу",
    "thai_hindi_emoji": "แมวในหิมะ बर्फ में बिल्ली 🐱✨",
    "weights": "a (red:1.4) cat, ((snow)), [blue] (sky:0.5)",
    "nested_weights": "(a (very (fluffy:1.3) cat:1.2) in snow:0.8)",
    "escapes": r"a \(not weighted\) cat \\ (weighted:1.2)",
    "long_commas": ", ".join(f"detail number {i} of the scene" for i in range(40)),
    "long_one_word": "supercalifragilistic" * 60,
}
"""Prompts the native CLIP must encode as the engine does: every script, ComfyUI's weight syntax, escapes, empty,
and prompts of several 75-token windows (broken at commas, and inside one long word)."""
