"""The step logger's totals: samples of steps trained again after a rollback count once as kept, beside the work."""
from types import SimpleNamespace

import numpy as np
from omegaconf import OmegaConf

from divcfg.common.config.schema import TrainConfig
from divcfg.job.step_log import StepLogger


class _Batch(SimpleNamespace):
    def __len__(self):
        return len(self.diversity_reward)


def _batch(n: int) -> _Batch:
    return _Batch(codes=np.zeros((n, 2, 3), dtype=np.int64), diversity_reward=np.ones(n), quality=np.full(n, np.nan),
                  group_id=np.repeat(np.arange(n // 2), 2), generate_s=np.ones(n))


def test_steps_redone_after_a_rollback_count_once_in_the_kept_samples(tmp_path):
    cfg = OmegaConf.structured(TrainConfig)
    cfg.logging.progress, cfg.logging.audio_every, cfg.checkpoint.every = False, 0, 1000
    learner = SimpleNamespace(nonfinite_in_a_row=0)
    log = StepLogger(cfg, tmp_path, learner, stream=None, judges=None, start_step=0, steps=1000)
    acct = SimpleNamespace(used=0, stale=0, dropped=0, generated=0)
    for i in [0, 1, 2, 3, 2, 3, 4]:  # lost after step 3, back to the checkpoint after step 2 (so 2 and 3 again)
        log(i, _batch(4), {}, acct)
    rates = log.rates()
    log.writer.close()
    assert rates["samples"] == 5 * 4 and rates["samples_redone"] == 2 * 4
