"""Target specs: values on known logits and clear errors."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from mmexplain import targets as T

LOGITS = torch.tensor([[1.0, 3.0, 2.0], [0.5, -1.0, 4.0]])
SEQ = torch.log(torch.tensor([[[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]]]))  # (1, 2, 3) log-probs


def test_logits_are_found_in_common_output_types():
    for output in (LOGITS, (LOGITS, "aux"), {"logits": LOGITS}, SimpleNamespace(logits=LOGITS)):
        assert T.logits_of(output) is LOGITS
    with pytest.raises(TypeError, match="model output"):
        T.logits_of("text")


def test_class_logit_and_answer_score():
    assert torch.equal(T.ClassLogit(1)(LOGITS), torch.tensor([3.0, -1.0]))
    assert torch.equal(T.ClassLogit([2, 0])(LOGITS), torch.tensor([2.0, 0.5]))
    assert torch.equal(T.AnswerScore(2)(LOGITS), torch.tensor([2.0, 4.0]))
    with pytest.raises(ValueError, match="AnswerScore index 3 out of range for 3"):
        T.AnswerScore(3)(LOGITS)
    with pytest.raises(ValueError, match="index -1 out of range"):
        T.ClassLogit(-1)(LOGITS)
    with pytest.raises(ValueError, match="one index per sample"):
        T.ClassLogit([0, 1, 2])(LOGITS)
    with pytest.raises(TypeError, match="expected an int"):
        T.ClassLogit(1.5)(LOGITS)


def test_top_class_follows_the_ranking():
    assert torch.equal(T.TopClass(0)(LOGITS), torch.tensor([3.0, 4.0]))
    assert torch.equal(T.TopClass(2)(LOGITS), torch.tensor([1.0, -1.0]))
    assert torch.equal(T.TopClass(1).indices(LOGITS), torch.tensor([2, 0]))
    with pytest.raises(ValueError, match="rank"):
        T.TopClass(-1)


def test_word_and_sequence_log_probs():
    assert torch.allclose(T.WordLogProb(0, 0)(SEQ), torch.log(torch.tensor([0.7])))
    assert torch.allclose(T.WordLogProb(1, 2)(SEQ), torch.log(torch.tensor([0.8])))
    whole = T.SequenceLogProb([0, 2])(SEQ)
    assert torch.allclose(whole, torch.log(torch.tensor([0.7 * 0.8])))
    # sub-word merge: tokens read at chosen positions
    assert torch.allclose(T.SequenceLogProb([2], positions=[1])(SEQ), torch.log(torch.tensor([0.8])))
    with pytest.raises(ValueError, match="position 5 out of range"):
        T.WordLogProb(5, 0)(SEQ)
    with pytest.raises(ValueError, match="token"):
        T.WordLogProb(0, 7)(SEQ)
    with pytest.raises(ValueError, match="positions"):
        T.SequenceLogProb([0, 1], positions=[0])
    with pytest.raises(ValueError, match="tokens"):
        T.SequenceLogProb([])


def test_counterfactual_and_scalar():
    assert torch.equal(T.Counterfactual(T.ClassLogit(0))(LOGITS), torch.tensor([-1.0, -0.5]))
    assert torch.equal(T.Scalar(lambda out: out[:, 0] + out[:, 1])(LOGITS), torch.tensor([4.0, -0.5]))
    with pytest.raises(TypeError, match="Scalar fn"):
        T.Scalar(3)
    with pytest.raises(TypeError, match="Counterfactual target"):
        T.Counterfactual(None)
