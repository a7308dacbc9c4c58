"""HTML rendering of entities: text preserved and escaped, nesting, crossing spans, colours, legend."""
import html.parser
import re

import pytest
from hypothesis import given, settings, strategies as st

from sener_jax.render import (
    label_color,
    nest_pieces,
    render_entities_html,
    render_report_html,
    write_predictions_report,
)


class Pieces(html.parser.HTMLParser):
    """Reads a rendering back: the plain text (label tags excluded) and every entity span as
    (start, end, label, classes, depth, padding, title, parent index)."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.text = ""
        self.stack = []  # (kind, piece index or None)
        self.pieces = []
        self.in_label = 0
        self.in_style = False
        self.legend = []
        self.in_legend = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "style":
            self.in_style = True
        if tag == "div" and attrs.get("class") == "sener-legend":
            self.in_legend = True
        if tag != "span":
            self.stack.append((tag, None))
            return
        classes = (attrs.get("class") or "").split()
        if "sener-label" in classes:
            self.in_label += 1
            self.stack.append(("label", None))
        elif "sener-ent" in classes:
            parents = [i for kind, i in self.stack if kind == "ent"]
            padding = int(re.search(r"padding: (\d+)px", attrs["style"]).group(1))
            background = re.search(r"background: (#[0-9a-f]{6})", attrs["style"]).group(1)
            self.pieces.append(dict(start=len(self.text), end=None, label=attrs["data-label"], classes=classes,
                                    depth=len(parents), padding=padding, title=attrs["title"],
                                    parent=parents[-1] if parents else None, color=background))
            self.stack.append(("ent", len(self.pieces) - 1))
        else:
            self.stack.append(("span", None))

    def handle_endtag(self, tag):
        if tag == "style":
            self.in_style = False
        kind, index = self.stack.pop()
        if kind == "label":
            self.in_label -= 1
        elif kind == "ent":
            self.pieces[index]["end"] = len(self.text)
        elif kind == "div" and self.in_legend:
            self.in_legend = False

    def handle_data(self, data):
        if self.in_style:
            return
        if self.in_legend:
            self.legend.append(data)
        elif not self.in_label:
            self.text += data


def parse(markup: str) -> Pieces:
    parser = Pieces()
    parser.feed(markup)
    parser.close()
    assert not parser.stack, "unbalanced tags"
    return parser


def entity_of(piece) -> tuple[int, int]:
    start, end = re.search(r"\[(\d+):(\d+)\]", piece["title"]).groups()
    return int(start), int(end)


def test_plain_text_is_escaped_and_preserved():
    text = 'a <b>bold</b> & "quoted" claim\nnext line'
    entities = [{"start": 2, "end": 13, "label": "<tag>", "score": 0.9}]
    markup = render_entities_html(text, entities)
    assert "<b>" not in markup and "&lt;b&gt;" in markup and "&lt;tag&gt;" in markup
    parsed = parse(markup)
    assert parsed.text == text
    (piece,) = parsed.pieces
    assert (piece["start"], piece["end"], piece["label"]) == (2, 13, "<tag>")
    assert "score 0.900" in piece["title"]
    assert parsed.legend == ["<tag>"]


def test_nested_entities_are_nested_spans_with_growing_padding():
    text = "Professor Alice Smith of Kestrin College"
    entities = [
        {"start": 0, "end": 21, "label": "person"},
        {"start": 10, "end": 15, "label": "first"},
        {"start": 10, "end": 21, "label": "name"},
        {"start": 25, "end": 40, "label": "org"},
    ]
    parsed = parse(render_entities_html(text, entities))
    assert parsed.text == text
    by_label = {p["label"]: p for p in parsed.pieces}
    assert [by_label[k]["depth"] for k in ("person", "name", "first", "org")] == [0, 1, 2, 0]
    assert parsed.pieces[by_label["first"]["parent"]]["label"] == "name"
    assert by_label["person"]["padding"] > by_label["name"]["padding"] > by_label["first"]["padding"]
    assert all("sener-split" not in p["classes"] for p in parsed.pieces)
    for p in parsed.pieces:
        assert entity_of(p) == (p["start"], p["end"])


def test_crossing_spans_split_the_later_one_and_mark_its_parts():
    text = "0123456789abcdefghij"
    entities = [{"start": 0, "end": 10, "label": "A"}, {"start": 5, "end": 15, "label": "B"}]
    parsed = parse(render_entities_html(text, entities))
    assert parsed.text == text
    a = [p for p in parsed.pieces if p["label"] == "A"]
    b = sorted((p for p in parsed.pieces if p["label"] == "B"), key=lambda p: p["start"])
    assert [(p["start"], p["end"]) for p in a] == [(0, 10)] and "sener-split" not in a[0]["classes"]
    assert [(p["start"], p["end"]) for p in b] == [(5, 10), (10, 15)]
    assert all("sener-split" in p["classes"] and entity_of(p) == (5, 15) for p in b)
    assert b[0]["depth"] == 1 and b[1]["depth"] == 0


def test_colours_are_per_label_deterministic_and_follow_the_given_order():
    text = "x y z w"
    entities = [{"start": 0, "end": 1, "label": "b"}, {"start": 2, "end": 3, "label": "a"},
                {"start": 4, "end": 5, "label": "b"}]
    first = parse(render_entities_html(text, entities))
    assert first.legend == ["a", "b"]
    colors = {p["label"]: p["color"] for p in first.pieces}
    assert colors == {"a": label_color(0), "b": label_color(1)}
    assert len({p["color"] for p in first.pieces if p["label"] == "b"}) == 1
    given_order = parse(render_entities_html(text, entities, labels=["b", "zz", "a"]))
    assert given_order.legend == ["b", "zz", "a"]
    assert {p["label"]: p["color"] for p in given_order.pieces} == {"b": label_color(0), "a": label_color(2)}
    assert render_entities_html(text, entities) == render_entities_html(text, entities)
    many = [label_color(i) for i in range(40)]
    assert len(set(many)) == 40 and all(re.fullmatch(r"#[0-9a-f]{6}", c) for c in many)


@pytest.mark.parametrize(
    "entity, message",
    [
        ({"start": 3, "end": 3, "label": "x"}, "entity 0"),
        ({"start": 0, "end": 99, "label": "x"}, "len\\(text\\) = 5"),
        ({"start": -1, "end": 2, "label": "x"}, "0 <= start"),
        ({"start": 0, "end": 2}, "no field 'label'"),
    ],
)
def test_bad_entities_are_rejected_with_the_entity_named(entity, message):
    with pytest.raises(ValueError, match=message):
        render_entities_html("hello", [entity])


def test_report_page_has_every_document_and_one_shared_legend():
    page = render_report_html([("d<1>", "Alice Smith", [{"start": 0, "end": 5, "label": "name"}]),
                               ("d2", "ACME", [{"start": 0, "end": 4, "label": "org"}])], labels=["org"])
    assert page.startswith("<!DOCTYPE html>") and "d&lt;1&gt;" in page
    assert page.count('class="sener-legend"') == 1 and page.count('class="sener-doc"') == 2
    parsed = parse(page.split("<body>", 1)[1].rsplit("</body>", 1)[0])
    assert parsed.legend == ["org", "name"]
    assert {p["label"]: p["color"] for p in parsed.pieces} == {"org": label_color(0), "name": label_color(1)}


@st.composite
def text_and_entities(draw):
    text = draw(st.text(alphabet="ab <&>\n", min_size=1, max_size=30))
    n = len(text)
    entities = []
    for _ in range(draw(st.integers(0, 8))):
        start = draw(st.integers(0, n - 1))
        end = draw(st.integers(start + 1, n))
        entities.append({"start": start, "end": end, "label": draw(st.sampled_from(["p", "q", "<r>"]))})
    return text, entities


@settings(max_examples=150, deadline=None)
@given(text_and_entities())
def test_any_entities_render_as_a_proper_tree_covering_each_entity_exactly(case):
    text, entities = case
    parsed = parse(render_entities_html(text, entities))
    assert parsed.text == text
    # Each entity's pieces tile exactly its [start, end); pieces of one entity are split iff > 1.
    covered = {}
    for piece in parsed.pieces:
        assert piece["start"] < piece["end"]
        covered.setdefault((entity_of(piece), piece["label"]), []).append((piece["start"], piece["end"]))
        if piece["parent"] is not None:
            parent = parsed.pieces[piece["parent"]]
            assert parent["start"] <= piece["start"] and piece["end"] <= parent["end"]
            assert parent["padding"] > piece["padding"]
    expected = {}
    for e in entities:
        expected[((e["start"], e["end"]), e["label"])] = expected.get(((e["start"], e["end"]), e["label"]), 0) + 1
    assert set(covered) == set(expected)
    for (span, label), parts in covered.items():
        positions = sorted(i for s, t in parts for i in range(s, t))
        assert positions == sorted(list(range(*span)) * expected[span, label])
    # The forest that the HTML came from agrees: pieces are strictly nested.
    def check(pieces, lo, hi):
        last = lo
        for piece in pieces:
            assert last <= piece.start < piece.end <= hi
            check(piece.children, piece.start, piece.end)
            last = piece.end

    check(nest_pieces(entities), 0, len(text))


def test_predictions_report_pairs_texts_and_entities_by_id(tmp_path):
    import json

    inputs = tmp_path / "in.jsonl"
    inputs.write_text("".join(json.dumps(r) + "\n" for r in [{"id": "a", "text": "Alice & Bob"}, {"text": "ACME Corp"},
                                                              {"id": "c", "text": "not predicted"}]))
    predictions = tmp_path / "out.jsonl"
    predictions.write_text("".join(json.dumps(r) + "\n" for r in [
        {"id": "a", "entities": [{"start": 0, "end": 5, "label": "name", "text": "Alice", "score": 0.9}]},
        {"id": "2", "entities": [{"start": 0, "end": 9, "label": "org", "text": "ACME Corp", "score": 0.8}]},
    ]))
    page = write_predictions_report(inputs, predictions, tmp_path / "out.html", labels=["org", "name"]).read_text()
    assert "3 of 3 documents shown; 1 have no predictions yet" in page
    parsed = parse(page.split("<body>", 1)[1].rsplit("</body>", 1)[0])
    assert [(p["label"], entity_of(p), parsed.text[p["start"] : p["end"]]) for p in parsed.pieces] == [
        ("name", (0, 5), "Alice"), ("org", (0, 9), "ACME Corp")]
    assert " &amp; Bob" in page and "not predicted" in parsed.text and parsed.legend == ["org", "name"]
    assert "1 of 3 documents shown" in write_predictions_report(inputs, predictions, tmp_path / "one.html",
                                                                max_documents=1).read_text()
    predictions.write_text("{not json\n")
    with pytest.raises(ValueError, match="out.jsonl:1"):
        write_predictions_report(inputs, predictions, tmp_path / "bad.html")


def test_predict_mode_writes_an_html_report_beside_the_json_lines(tmp_path):
    """`--mode=predict` end to end on an export of a randomly initialised tiny model (no training)."""
    import json

    import jax

    from configs import demo
    from sener_jax import modes, run_setup, train_step
    from sener_jax.data import load_tokenizer
    from sener_jax.export import export_model
    from sener_jax.models.sener import init_params

    config = demo.get_config("tiny")
    tokenizer = load_tokenizer("synthetic")
    labels = ["name", "organization"]
    model_config = train_step.model_config_from(config, tokenizer.vocab_size, len(labels))
    params = init_params(model_config, jax.random.PRNGKey(0))
    export_model(tmp_path / "export", model_config, params, tokenizer, labels, run_setup.inference_settings(config))
    texts = {"a": "Ulric Brandt <works> at Norvale Institute of Technology.", "b": "Phone: +27 (428) 891-6513"}
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"id": k, "text": v}) + "\n" for k, v in texts.items()))
    config.eval.threshold = 0.0  # random weights: a zero threshold so that spans come out
    config.predict.input = str(tmp_path / "in.jsonl")
    modes.run_mode("predict", config, tmp_path)
    header, *records = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert header["sener_jax_predictions"] == 1 and header["input"]["path"] == str((tmp_path / "in.jsonl").resolve())
    page = (tmp_path / "predictions.html").read_text()
    parsed = parse(page.split("<body>", 1)[1].rsplit("</body>", 1)[0])
    assert "<works>" in parsed.text and "<works>" not in page and "2 of 2 documents shown" in page
    assert parsed.legend[:2] == labels
    n_entities = sum(len(r["entities"]) for r in records)
    assert n_entities > 0 and len({(p["title"]) for p in parsed.pieces}) >= 1
    for record in records:
        for entity in record["entities"]:
            assert f'{entity["label"]} [{entity["start"]}:{entity["end"]}]' in page
