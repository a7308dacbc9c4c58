"""Entities highlighted in their text, as HTML (notebooks, `--mode=predict` reports).

    html = render_entities_html(text, extractor.extract(text))    # IPython.display.HTML(html)

One colour per label (a fixed palette in label order, so a label keeps its colour across
documents when the same `labels` list is passed). Nested entities become nested <span>s: each
span is padded by the depth of what it contains, so the borders of inner spans stay visible.
Two CROSSING spans (a < c < b < d) cannot both be elements of one HTML tree: the later one is
split at the boundary of the earlier, and every piece of a split entity carries the class
`sener-split` (dashed border) and a title saying which entity it belongs to.
"""
from __future__ import annotations

import bisect
import colorsys
import dataclasses
import html
import os
import pathlib
import tempfile
from typing import Iterable, Mapping, Sequence

from sener_jax.prediction_io import iter_inputs, iter_predictions

# Light backgrounds that keep black text readable; after these, hues by the golden angle.
PALETTE = (
    "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94",
    "#f7b6d2", "#dbdb8d", "#9edae5", "#fdd0a2", "#c7e9c0", "#dadaeb",
)

# Marks a page as a report of ours: only such a file is ever replaced by a new report.
REPORT_MARKER = '<meta name="generator" content="sener_jax predictions report">'

STYLE = """<style>
.sener-doc { white-space: pre-wrap; line-height: 2.6; font-family: sans-serif; }
.sener-ent { border: 1.5px solid; border-radius: 4px; margin: 0 1px; }
.sener-split { border-style: dashed; }
.sener-label { font-size: 0.65em; font-weight: bold; margin-left: 3px; padding: 0 2px;
               border-radius: 3px; background: rgba(255,255,255,0.75); vertical-align: middle; }
.sener-legend { margin: 0.4em 0; font-family: sans-serif; font-size: 0.9em; }
.sener-legend span { display: inline-block; padding: 1px 6px; margin: 2px 4px 2px 0; border-radius: 4px;
                     border: 1.5px solid; }
</style>"""


def label_color(index: int) -> str:
    """The background colour of the `index`-th label (deterministic)."""
    if index < len(PALETTE):
        return PALETTE[index]
    hue = (index * 0.618033988749895) % 1.0
    r, g, b = colorsys.hls_to_rgb(hue, 0.82, 0.6)
    return "#{:02x}{:02x}{:02x}".format(round(r * 255), round(g * 255), round(b * 255))


def _darker(color: str, factor: float = 0.55) -> str:
    r, g, b = (int(color[i : i + 2], 16) for i in (1, 3, 5))
    return "#{:02x}{:02x}{:02x}".format(*(round(c * factor) for c in (r, g, b)))


def label_colors(entities: Iterable[Mapping], labels: Sequence[str] | None = None) -> dict[str, str]:
    """{label: colour}: `labels` in order first, then other labels found in `entities`, sorted."""
    ordered = list(dict.fromkeys(labels or ()))
    extra = sorted({str(e["label"]) for e in entities} - set(ordered))
    return {label: label_color(i) for i, label in enumerate(ordered + extra)}


@dataclasses.dataclass
class _Piece:
    start: int
    end: int
    entity: int  # index into the entity list
    split: bool = False
    children: list["_Piece"] = dataclasses.field(default_factory=list)

    def sort_key(self):
        return (self.start, -self.end, self.entity)


def _check(text: str, entities: Sequence[Mapping]) -> None:
    for i, entity in enumerate(entities):
        for field in ("start", "end", "label"):
            if field not in entity:
                raise ValueError(f"entity {i} ({dict(entity)!r}) has no field {field!r}")
        start, end = entity["start"], entity["end"]
        if not (isinstance(start, int) and isinstance(end, int) and 0 <= start < end <= len(text)):
            raise ValueError(
                f"entity {i} ({dict(entity)!r}): expected integer character offsets 0 <= start < end <= "
                f"len(text) = {len(text)}"
            )


def nest_pieces(entities: Sequence[Mapping]) -> list[_Piece]:
    """The entities as a forest of properly nested pieces (roots in text order).

    Sorted by (start, longest first), each piece goes under the innermost open piece that contains
    its start; if it reaches past that piece's end (a crossing), it is cut there and the rest is
    queued as a new piece, which is placed the same way (it may cross again further out).
    """
    pending = sorted((_Piece(int(e["start"]), int(e["end"]), i) for i, e in enumerate(entities)), key=_Piece.sort_key)
    crossing = set()
    roots: list[_Piece] = []
    stack: list[_Piece] = []
    while pending:
        piece = pending.pop(0)
        while stack and stack[-1].end <= piece.start:
            stack.pop()
        if stack and piece.end > stack[-1].end:
            cut = stack[-1].end
            crossing.add(piece.entity)
            rest = _Piece(cut, piece.end, piece.entity)
            piece = _Piece(piece.start, cut, piece.entity)
            keys = [p.sort_key() for p in pending]
            pending.insert(bisect.bisect(keys, rest.sort_key()), rest)
        (stack[-1].children if stack else roots).append(piece)
        stack.append(piece)

    def mark(pieces):
        for p in pieces:
            p.split = p.entity in crossing
            mark(p.children)

    mark(roots)
    return roots


def _depth(piece: _Piece) -> int:
    return 1 + max((_depth(c) for c in piece.children), default=0)


def _render(text: str, pieces: list[_Piece], lo: int, hi: int, entities, colors, out: list[str]) -> None:
    position = lo
    for piece in pieces:
        out.append(html.escape(text[position : piece.start]))
        entity = entities[piece.entity]
        label = str(entity["label"])
        color = colors[label]
        pad = 1 + 3 * (_depth(piece) - 1)  # outer spans grow so that inner borders stay visible
        title = f"{label} [{entity['start']}:{entity['end']}]"
        if "score" in entity and entity["score"] is not None:
            title += f" score {float(entity['score']):.3f}"
        if piece.split:
            title += f" (part {piece.start}:{piece.end} of an entity that crosses another)"
        classes = "sener-ent sener-split" if piece.split else "sener-ent"
        out.append(
            f'<span class="{classes}" data-label="{html.escape(label)}" title="{html.escape(title)}" '
            f'style="background: {color}; border-color: {_darker(color)}; padding: {pad}px 2px;">'
        )
        _render(text, piece.children, piece.start, piece.end, entities, colors, out)
        out.append(f'<span class="sener-label">{html.escape(label)}</span></span>')
        position = piece.end
    out.append(html.escape(text[position:hi]))


def legend_html(colors: Mapping[str, str]) -> str:
    items = "".join(
        f'<span style="background: {c}; border-color: {_darker(c)};">{html.escape(label)}</span>' for label, c in colors.items()
    )
    return f'<div class="sener-legend">{items}</div>'


def render_entities_html(text: str, entities: Sequence[Mapping], labels: Sequence[str] | None = None,
                         *, legend: bool = True, style: bool = True) -> str:
    """`text` with `entities` ({"start", "end" (character offsets, end exclusive), "label", optional
    "score"}) highlighted, as an HTML fragment: a legend, then the text in a <div class="sener-doc">.

    `labels` fixes the colour order (and the legend) so that several documents agree; labels not
    in it are added after, sorted. All text is HTML-escaped.
    """
    if not isinstance(text, str):
        raise TypeError(f"render_entities_html: text must be a str, got {type(text).__name__}")
    entities = list(entities)
    _check(text, entities)
    colors = label_colors(entities, labels)
    out = [STYLE] if style else []
    if legend:
        out.append(legend_html(colors))
    out.append('<div class="sener-doc">')
    _render(text, nest_pieces(entities), 0, len(text), entities, colors, out)
    out.append("</div>")
    return "".join(out)


def render_report_html(documents: Iterable[tuple[str, str, Sequence[Mapping]]], labels: Sequence[str] | None = None,
                       title: str = "SeNER entities", note: str = "") -> str:
    """A standalone HTML page: one section per (id, text, entities), one shared legend."""
    documents = list(documents)
    colors = label_colors([e for _, _, ents in documents for e in ents], labels)
    ordered = list(colors)
    sections = [
        f"<h2>{html.escape(str(doc_id))}</h2>"
        + render_entities_html(text, entities, ordered, legend=False, style=False)
        for doc_id, text, entities in documents
    ]
    return (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8">{REPORT_MARKER}<title>{html.escape(title)}</title>{STYLE}</head>'
        f"<body><h1>{html.escape(title)}</h1><p>{html.escape(note)}</p>{legend_html(colors)}{''.join(sections)}"
        "</body></html>\n"
    )


def report_path_for(output: str | os.PathLike) -> pathlib.Path:
    """Where `--mode=predict` writes the report of `output`: X.jsonl -> X.html, and X.html (an
    output that already ends in .html) -> X.report.html, so the report is never the output."""
    output = pathlib.Path(output)
    report = output.with_suffix(".html")
    return output.with_suffix(".report.html") if report == output else report


def is_our_report(path: str | os.PathLike) -> bool:
    try:
        with open(path, "rb") as handle:
            return REPORT_MARKER.encode() in handle.read(4096)
    except OSError:
        return False


def check_report_path(report: str | os.PathLike, *others: str | os.PathLike) -> pathlib.Path:
    """Raises unless `report` may be (re)written: not one of `others` (the predictions, the input)
    and not an existing file other than a report of ours."""
    report = pathlib.Path(report)
    for other in others:
        other = pathlib.Path(other)
        if report.resolve() == other.resolve() or (report.exists() and other.exists() and os.path.samefile(report, other)):
            raise ValueError(f"the HTML report path {report} is also {other}; choose another predict.output")
    if report.exists() and not (report.is_file() and is_our_report(report)):
        raise FileExistsError(
            f"{report}: exists and is not a sener_jax predictions report; refusing to replace it: move it away or "
            "choose another predict.output (the report goes to the output path with .html)"
        )
    return report


def write_predictions_report(input_path, predictions_path, html_path, *, labels: Sequence[str] | None = None,
                             max_documents: int = 200) -> pathlib.Path:
    """The HTML page of a `--mode=predict` run: the texts of `input_path` (JSON lines, "text" and
    optional "id") with the entities written to `predictions_path` ({"id", "entities"} per line).

    Only the first `max_documents` inputs go into the page (the page says so): it is for reading.
    Both files are streamed. The page replaces only an earlier report of ours (`check_report_path`),
    atomically.
    """
    path = check_report_path(html_path, predictions_path, input_path)
    shown, total = [], 0
    for _, item_id, text in iter_inputs(input_path):
        total += 1
        if len(shown) < max_documents:
            shown.append((item_id, text))
    wanted = {item_id for item_id, _ in shown}
    entities_by_id, errors, predicted = {}, {}, 0
    for _, record in iter_predictions(predictions_path):
        predicted += 1
        item_id = str(record["id"])
        if item_id in wanted:
            entities_by_id[item_id] = record["entities"]
            if record.get("error"):
                errors[item_id] = record["error"]
    missing = max(total - predicted, 0)
    note = f"{len(shown)} of {total} documents shown" + (f"; {missing} have no predictions yet" if missing else "")
    if errors:
        note += "; not processed: " + "; ".join(f"{i}: {e}" for i, e in errors.items())
    page = render_report_html([(i, text, entities_by_id.get(i, [])) for i, text in shown], labels,
                              title=f"SeNER entities: {pathlib.Path(input_path).name}", note=note)
    fd, staging = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent if str(path.parent) else ".")
    try:
        # "replace": a text with a lone surrogate (reported as an error record) still renders.
        with os.fdopen(fd, "w", encoding="utf-8", errors="replace") as handle:
            handle.write(page)
        os.replace(staging, path)
    finally:
        if os.path.exists(staging):
            os.unlink(staging)
    return path
