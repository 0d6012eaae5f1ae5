"""The one option checker (speakertrip.options) as encoders, losses, miners and configs see it."""

from typing import Literal

import pytest

from speakertrip.errors import ConfigError
from speakertrip.losses import AnchorSetMiner, HardestKMiner, build_loss
from speakertrip.options import check_count, construct


@pytest.mark.parametrize("make", [lambda k: HardestKMiner(k=k), lambda k: AnchorSetMiner(hardest_negatives=k)])
@pytest.mark.parametrize("k", [True, 0, 1.5, "2"])
def test_counts_refuse_bools_and_non_integers_in_every_miner(make, k):
    with pytest.raises(ConfigError, match="an integer >= 1"):
        make(k)


def test_check_count():
    assert check_count(3, "k") == 3 and check_count(None, "k", optional=True) is None
    with pytest.raises(ConfigError, match="k must be an integer >= 2, got 1"):
        check_count(1, "k", minimum=2)


def test_construct_checks_names_missing_and_annotated_types():
    def factory(size: int, mode: Literal["a", "b"] = "a", scale: float = 1.0, tag: str | None = None):
        return size, mode, scale, tag

    assert construct(factory, {"size": 2, "scale": 3}, "thing") == (2, "a", 3.0, None)
    for options, message in [({"size": 2, "sise": 1}, "thing: unknown option 'sise'; valid options: size, mode"),
                             ({}, "thing: missing option 'size'"),
                             ({"size": 2, "mode": "c"}, "thing: key 'mode' must be one of a, b, not 'c'"),
                             ({"size": 2, "tag": 5}, "thing: key 'tag' must be str or None, got int 5")]:
        with pytest.raises(ConfigError, match=message):
            construct(factory, options, "thing")


def test_loss_options_are_type_checked():
    with pytest.raises(ConfigError, match="loss 'triplet': key 'margin' must be float, got str 'wide'"):
        build_loss("triplet", margin="wide")
    with pytest.raises(ConfigError, match="loss 'multi_positive': key 'hardest_negatives' must be int or None"):
        build_loss("multi_positive", hardest_negatives=True)
