"""runs/planning.py: the time a long run announces (measured here), the plan text."""

import torch

from mkdlib.config import Execution, MKDConfig
from mkdlib.runs.planning import duration_text, measure_speed, plan_text
from mkdlib.train import build


def test_plan_text_and_speed_measurement():
    assert plan_text(601, 209, 21.0) == ("601 epochs x 209 images = 125,609 image passes: about 1 h 40 min at "
                                         "21 img/s measured here")
    assert plan_text(2, 8, 1000.0).endswith("under a minute at 1e+03 img/s measured here")
    assert duration_text(59) == "under a minute" and duration_text(3 * 3600 + 60) == "about 3 h 1 min"
    cfg = MKDConfig(image_size=32, batch_size=4)
    source, cloner, loss = build(cfg, weights=None)
    before = {k: v.clone() for k, v in cloner.state_dict().items()}
    for cached in (True, False):
        assert measure_speed(cloner, source, cfg, Execution(), loss, cached=cached, steps=1) > 0
    assert all(torch.equal(before[k], v) for k, v in cloner.state_dict().items())  # the run's cloner untouched
