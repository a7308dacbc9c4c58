"""Document-level micro/per-type P/R/F1 (SPEC section 9)."""
import pytest

from sener_jax.metrics import evaluate_entities, format_table, precision_recall_f1


def test_counts_exact_matches_per_document_and_type():
    gold = {"a": [(0, 2, "X"), (3, 4, "Y"), (3, 4, "X")], "b": [(0, 1, "X")]}
    pred = {"a": [(0, 2, "X", 0.9), (3, 4, "Y", 0.8), (5, 6, "Y", 0.7)], "b": [(0, 1, "Y")]}
    r = evaluate_entities(gold, pred)
    assert r["micro"]["tp"] == 2 and r["micro"]["predicted"] == 4 and r["micro"]["gold"] == 4
    assert r["micro"]["precision"] == pytest.approx(0.5) and r["micro"]["recall"] == pytest.approx(0.5)
    assert r["per_type"]["X"] == precision_recall_f1(1, 1, 3)
    assert r["per_type"]["Y"]["tp"] == 1 and r["per_type"]["Y"]["predicted"] == 3
    # The same span in another document is a different entity.
    assert evaluate_entities({"a": [(0, 1, "X")], "b": []}, {"b": [(0, 1, "X")]})["micro"]["tp"] == 0


def test_unrepresentable_gold_counts_as_miss_and_is_reported():
    gold = {"d": [(0, 3, "X"), (0, 200, "X")]}
    r = evaluate_entities(gold, {"d": [(0, 3, "X")]}, max_span_words=129)
    assert r["micro"]["recall"] == pytest.approx(0.5)
    assert r["unrepresentable"]["gold"] == 1 and r["unrepresentable"]["by_type"] == {"X": 1}
    assert "cannot be" in format_table(r)


def test_empty_and_unknown_documents():
    assert evaluate_entities({"d": []}, {})["micro"]["f1"] == 0.0
    with pytest.raises(ValueError, match="no gold entry"):
        evaluate_entities({"d": []}, {"e": [(0, 1, "X")]})


def test_table_lists_every_type_and_micro():
    r = evaluate_entities({"d": [(0, 1, "Method"), (2, 3, "Task")]}, {"d": [(0, 1, "Method")]})
    table = format_table(r, title="dev")
    assert "Method" in table and "Task" in table and "micro" in table and "100.00" in table
