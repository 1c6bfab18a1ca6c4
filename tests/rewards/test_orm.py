"""Tests for rewards/orm.py: the ORM's input text and its metrics."""

import math

import pytest

from rewards.orm import classification_metrics, orm_text, reliability_bins

RECORD = {"task": {"instruction": "Where was Ada born?"}, "text": "<whole episode>",
          "turns": [{"action": " open(Ada) ", "observation": "Ada: born in Lyon"},
                    {"action": "answer(Lyon)", "observation": "Answer recorded."}]}


def test_webrl_input_is_instruction_actions_and_the_final_observation_only():
    text = orm_text(RECORD, "webrl")
    assert text == ("Task: Where was Ada born?\nActions:\n1. open(Ada)\n2. answer(Lyon)\n"
                    "Final observation: Answer recorded.\nSuccess?")
    assert "born in Lyon" not in text  # intermediate observations are left out (WebRL)
    assert orm_text(RECORD, "full") == "<whole episode>"
    with pytest.raises(ValueError, match="webrl"):
        orm_text(RECORD, "xml")


def test_webrl_final_observation_is_the_last_one_the_agent_saw():
    # The turn that ends an episode adds no observation to the context; its record holds "".
    ended = {**RECORD, "turns": [RECORD["turns"][0], {"action": "answer(Lyon)", "observation": ""}]}
    assert orm_text(ended, "webrl").endswith("Final observation: Ada: born in Lyon\nSuccess?")


def test_the_environments_answer_to_the_last_action_is_shown_where_it_was_recorded():
    ended = {**RECORD, "turns": [RECORD["turns"][0], {"action": "take coin", "observation": ""}],
             "final_observation": "You take the coin. You won!"}
    assert orm_text(ended, "webrl").endswith("Final observation: Ada: born in Lyon\n"
                                             "Answer to the last action: You take the coin. You won!\nSuccess?")
    assert orm_text(ended, "full") == "<whole episode>\nAnswer to the last action: You take the coin. You won!\n"


def test_classification_metrics_against_hand_computed_values():
    probs = [0.9, 0.8, 0.3, 0.6, 0.1]
    labels = [True, False, True, False, False]
    m = classification_metrics(probs, labels, bins=2)
    assert m["accuracy"] == pytest.approx(2 / 5)  # 0.9 right, 0.8 wrong, 0.3 wrong, 0.6 wrong, 0.1 right
    # positives {0.9, 0.3} against negatives {0.8, 0.6, 0.1}: 0.9 beats 3, 0.3 beats 1 -> 4 / 6
    assert m["auc"] == pytest.approx(4 / 6)
    # bin [0, .5): {0.3 (1), 0.1 (0)} conf .2 freq .5; bin [.5, 1]: {.9 (1), .8 (0), .6 (0)} conf .7667 freq .3333
    assert m["ece"] == pytest.approx(2 / 5 * 0.3 + 3 / 5 * (0.7666667 - 1 / 3), rel=1e-5)
    assert m["brier"] == pytest.approx((0.01 + 0.64 + 0.49 + 0.36 + 0.01) / 5)
    assert m["base_rate"] == 0.4 and m["majority_accuracy"] == 0.6
    assert math.isnan(classification_metrics([0.2, 0.7], [False, False])["auc"])  # one class: undefined
    bins = reliability_bins(probs, labels, bins=2)
    assert [(round(p, 4), round(rate, 4), n) for p, rate, n in bins] == [(0.2, 0.5, 2), (0.7667, 0.3333, 3)]
