"""The offline protocol setups: the recbole default, and ablation variants that change one thing."""

import pytest

from recallstream.consumers.evaluate import ABLATIONS, protocol_setup


def test_recbole_default_is_the_full_catalogue_softmax_with_full_batch_epochs():
    setup = protocol_setup("recbole")
    assert setup.train.loss == "catalog_softmax"
    assert setup.model.hidden is None and setup.model.output_dim == 256
    assert setup.epochs >= 100 and setup.patience >= 10  # one step per epoch


def test_in_batch_is_the_in_batch_softmax_with_log_q_and_accidental_hits_removed():
    setup = protocol_setup("recbole", "in_batch")
    assert setup.train.loss == "softmax" and setup.train.use_log_q
    assert setup.train.remove_accidental_hits


@pytest.mark.parametrize("variant", [v for v in ABLATIONS if v not in ("default", "in_batch")])
def test_each_variant_changes_the_in_batch_setup(variant):
    base, setup = protocol_setup("recbole", "in_batch"), protocol_setup("recbole", variant)
    assert (setup.model, setup.train, setup.history_dropout) != \
        (base.model, base.train, base.history_dropout)
    assert setup.epochs == base.epochs


def test_unknown_variant_is_a_value_error():
    with pytest.raises(ValueError, match="unknown variant"):
        protocol_setup("recbole", "bigger")
