"""GPU work estimated on the CPU: the device operations an MN layer dispatches.

On the GPU an MN layer is launch-bound, so its speed targets (issue 3: MN/BN <= 4x per
layer) depend on how many device operations and host syncs each step needs.  These
tests count them with the array-module stand-in of ``bench/_opcount.py`` (the numbers
``bench/bench_ops.py`` reports) and fail if a change adds many: a loop over points or
channels, per-component kernels in the fit, or a host sync in the inner loop.
"""
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                'bench'))

import _opcount  # noqa: E402
import bench_ops  # noqa: E402


def test_counter_counts_launches_copies_and_syncs():
    a = _opcount.to_device(np.arange(12.0).reshape(3, 4))
    with _opcount.counting():
        xp = _opcount.XP

        def work():
            b = a * 2                    # launch
            c = b[:, 1:]                 # view: nothing
            d = c.sum(axis=0)            # launch
            e = xp.asarray(np.ones(3))   # host-to-device copy
            f = a[xp.asarray([0, 2])]    # copy + gather launch
            float(d[0])                  # device-to-host copy (a sync)
            return e, f
        got = _opcount.tally(work)
    assert got == {'launch': 3, 'h2d': 2, 'd2h': 1}


@pytest.mark.parametrize('K,max_launches', [(1, 40), (3, 110), (5, 150)])
def test_training_step_launch_budget(K, max_launches):
    r = bench_ops.count((64, 32, 4, 4), K)
    assert r['train_launch'] <= max_launches, r
    # syncs: fitting frame, one per K-means/EM M-step, one per normalizing pass
    assert r['train_syncs'] <= (2 if K == 1 else 5), r
    # the fit's cost does not grow with the data: no per-point or per-channel loops
    assert bench_ops.count((128, 64, 4, 4), K) == dict(r, shape='128x64x4x4')


def test_inference_launch_budget():
    r = bench_ops.count((64, 32, 4, 4), 3)
    assert r['test_launch'] <= 40 and r['test_copies'] <= 10, r
