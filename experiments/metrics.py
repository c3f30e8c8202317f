"""Numbers read off a run's log: every metric of the tables, the reports and
``summary.json``, computed here only.

A log is Chainer's LogReport (``log.json``): a list of entries, one per evaluation, with
``epoch``, ``iteration`` and the reported values.  Accuracies in a log are fractions;
every metric here gives them in percent.

* classifier runs: the best and the final test accuracy, the maximum test accuracy after
  each fraction of the epochs (Tables 2 and 4), and the paper's acceleration metric, the
  gradient updates to first reach a target test accuracy (Tables 3, 5, 6), with the
  reduction in percent against a reference row;
* GAN runs: the FID curve, its lowest point, and the steps to reach a target FID (at an
  evaluation, or interpolated between evaluations);
* over the seeds of a row: the mean, the sample standard deviation and their number.

This module imports nothing of the kit: it is arithmetic on logs.
"""
import math

#: The test accuracy with the inference statistics (the paper's).
TEST_ACC = 'validation/main/accuracy'
TEST_LOSS = 'validation/main/loss'
#: The test accuracy with each test batch's own statistics
#: (:class:`experiments.train.BatchStatisticsEvaluator`).
BATCH_ACC = 'validation_batchstats/main/accuracy'
FID_KEY = 'fid'


# ------------------------------------------------------------------- accuracies

def accuracies(log, key=TEST_ACC):
    """The values of ``key`` in ``log`` (fractions), in the order evaluated."""
    return [e[key] for e in log if key in e]


def best_accuracy(log, key=TEST_ACC):
    """The highest test accuracy (%) of the run, None if it has none."""
    accs = accuracies(log, key)
    return 100.0 * max(accs) if accs else None


def final_accuracy(log, key=TEST_ACC):
    """The test accuracy (%) at the last evaluation, None if it has none."""
    accs = accuracies(log, key)
    return 100.0 * accs[-1] if accs else None


def final_loss(log, key=TEST_LOSS):
    """The test loss at the last evaluation that reports one, None if none does."""
    return next((e[key] for e in reversed(log) if key in e), None)


def checkpoint_epoch(fraction, epochs):
    """The epoch that closes ``fraction`` of ``epochs``: the first one at or after it
    (25 % of 2 epochs is epoch 1, of 100 epochs epoch 25), at least 1."""
    return max(1, int(math.ceil(fraction * epochs - 1e-9)))


def max_accuracy_at(log, fractions, epochs, key=TEST_ACC):
    """{percent: max test accuracy (%) over the epochs <= :func:`checkpoint_epoch`}."""
    out = {}
    for f in fractions:
        limit = checkpoint_epoch(f, epochs)
        accs = [e[key] for e in log if key in e and e['epoch'] <= limit]
        out[str(int(round(100 * f)))] = 100.0 * max(accs) if accs else None
    return out


def steps_to_accuracy(log, target_percent, key=TEST_ACC):
    """The paper's acceleration metric: gradient updates at the first evaluation with
    test accuracy >= target (%), or None if never reached."""
    for e in log:
        if key in e and 100.0 * e[key] >= target_percent - 1e-9:
            return int(e['iteration'])
    return None


def reduction_percent(steps, reference):
    """How many percent fewer updates ``steps`` is than ``reference`` (the BN row's);
    None if either is unknown (or the reference is 0)."""
    if steps is None or not reference:
        return None
    return 100.0 * (1 - steps / reference)


def classifier_fields(cfg, log, finished=None, iterations=None, epochs_done=None):
    """What a classifier run measures, for ``summary.json``: its processes, progress and
    test accuracies (``finished`` / ``iterations`` / ``epochs_done``: the trainer's own
    state; default: read off the log)."""
    epochs = cfg['train']['epochs']
    target = cfg['train'].get('target_accuracy')
    done_epochs = epochs_done if epochs_done is not None else (log[-1]['epoch'] if log else 0)
    if finished is None:
        finished = bool(log) and done_epochs >= math.floor(epochs)
    return {
        'world_size': cfg.get('world_size', 1),
        'communicator': cfg.get('communicator'),
        'per_rank_batch_size': cfg.get('per_rank_batch_size') or cfg['data']['batch_size'],
        'epochs_planned': epochs,
        'epochs_done': done_epochs,
        'iterations': iterations if iterations is not None else
        (log[-1]['iteration'] if log else 0),
        'finished': bool(finished),
        'max_test_accuracy': max_accuracy_at(log, cfg['train']['checkpoints'], epochs),
        'best_test_accuracy': best_accuracy(log),
        'final_test_accuracy': final_accuracy(log),
        'final_test_loss': final_loss(log),
        'target_accuracy': target,
        'steps_to_target': steps_to_accuracy(log, target) if target is not None else None,
    }


# -------------------------------------------------------------------------- FID

def fid_curve(log):
    """[(step, fid)] of the evaluations in a GAN run's LogReport log."""
    return [(int(e['iteration']), float(e[FID_KEY])) for e in log
            if e.get(FID_KEY) is not None and math.isfinite(e[FID_KEY])]


def lowest_fid(curve):
    """``(step, fid)`` of the lowest FID of ``curve`` (the first if tied);
    ``(None, None)`` for an empty curve."""
    return min(curve, key=lambda sv: sv[1]) if curve else (None, None)


def steps_to_fid(curve, target):
    """First evaluated step with FID <= target (None if never)."""
    for step, value in curve:
        if value <= target + 1e-12:
            return step
    return None


def interpolated_steps_to_fid(curve, target):
    """Step at which the piecewise-linear FID curve first reaches ``target`` (the paper's
    "25K" lies between evaluations, read off its curve); None if never."""
    prev = None
    for step, value in curve:
        if value <= target + 1e-12:
            if prev is None or prev[1] == value:
                return float(step)
            s0, v0 = prev
            return s0 + (v0 - target) / (v0 - value) * (step - s0)
        prev = (step, value)
    return None


# ----------------------------------------------------------------- over seeds

def mean_std(values):
    """(mean, sample std or None for fewer than two values, n) of the values that are
    not None."""
    values = [v for v in values if v is not None]
    if not values:
        return None, None, 0
    m = sum(values) / len(values)
    s = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 \
        else None
    return m, s, len(values)
