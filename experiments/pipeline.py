"""One run pipeline for every kind of run: prepare, build, begin, resume, loop, summary.

As Chainer's Trainer runs any Updater with any Extensions, :func:`run` runs any
:class:`Kind` of run.  The classifier (:class:`experiments.train.Classifier`) and the
GAN (:class:`experiments.gan.GAN`) each give their model, updater and extensions
(assembled into a trainer) and the fields of their summary; the steps around them are
the same for every kind, with one process or several (:mod:`experiments.parallel`):

1. prepare: whether to train, resume or keep a finished run
   (:func:`experiments.records.prepare_run`, rank 0 decides for all);
2. build: device, seeds and data (:meth:`Kind.prepare`, each process alone), model
   and trainer pieces (:meth:`Kind.build`), all known to be good before the run
   directory appears or is cleared;
3. begin: :func:`experiments.records.begin` (``config.yaml``), then the trainer
   (:meth:`Kind.trainer`);
4. resume: the newest snapshot every process can read
   (:func:`experiments.records.load_snapshot`);
5. loop: ``trainer.run()`` (:func:`train_loop`); ``summary.json``
   (:func:`experiments.records.summarize` around :meth:`Kind.summary_fields`) at the
   start, after each snapshot, on Ctrl-C and at the end, written by rank 0.

Every process takes the steps; what one process does alone and may fail at (its
device, its data) is agreed collectively (``par.agree``), what rank 0 decides for
all (``par.decide``) is broadcast.
"""
from mixnorm import _compat  # noqa: F401

import os
import re
import time

import numpy

import chainer
from chainer import training

from experiments import config as config_lib
from experiments import data as data_lib
from experiments import environment
from experiments import parallel as parallel_lib
from experiments import records


class Kind:
    """What a kind of run gives :func:`run` (one instance per run: its steps may keep
    what :meth:`trainer` needs).  ``unit``: what its progress is told in (``'epoch'``:
    epochs and iterations; ``'update'``: updates).  ``start``: the decision of
    :func:`experiments.records.prepare_run` (train or resume from which snapshots),
    set before :meth:`build`."""
    unit = 'epoch'
    start = None

    def check(self, cfg, par):
        """Refuse a config (or a number of processes) this kind cannot train: a
        :class:`~experiments.config.ConfigError` that names the right entry point."""

    def prepare(self, cfg, device, dataset, par):
        """What each process does alone before the run directory begins: load the data
        (unless ``dataset`` is given) and check it against ``cfg``; returns the dataset."""
        raise NotImplementedError

    def build(self, cfg, dataset, out, device, progress, par):
        """What must be known to be good before the run directory begins and may need
        every process (a synchronized model, a multi-node optimizer)."""

    def trainer(self, cfg, out, device, progress):
        """The trainer (model, updater, extensions) writing into ``out``, once the run
        directory has begun."""
        raise NotImplementedError

    def snapshot_trigger(self, cfg):
        """When its trainer takes a snapshot (``summary.json`` is rewritten after each)."""
        raise NotImplementedError

    def summary_fields(self, cfg, log, trainer, finished):
        """What this kind of run measures, for :func:`experiments.records.summarize`."""
        raise NotImplementedError


# ----------------------------------------------------------------------------- run

def run(kind, cfg, out=None, device='cpu', resume='auto', progress=True, dataset=None,
        force=False, log=print, start=None, par=None):
    """Train ``cfg`` (a validated config dict) as a run of ``kind``; returns the summary
    dict.

    ``resume``: ``'auto'`` (skip a finished run, resume an interrupted one), or a
    snapshot path; ``force``: start over; ``start``: that decision already taken by
    :func:`experiments.records.prepare_run`.  ``dataset``: an already loaded
    :class:`experiments.data.Dataset` (tests).  ``par``: the processes
    (:class:`experiments.parallel.Parallel`; default one); rank 0 writes the run
    directory.
    """
    par = par or parallel_lib.create(None)
    kind.check(cfg, par)
    cfg = par.agree(lambda: par.record(cfg))
    if not par.writer:
        log = _quiet
    out = out or records.run_dir(cfg)
    start = start or par.decide(lambda: records.prepare_run(cfg, out, resume, force))
    if start.action == 'skip':
        log(start.message)
        return start.summary
    device, dataset = par.agree(lambda: prepare_local(kind, cfg, device, dataset, par))
    kind.start = start
    kind.build(cfg, dataset, out, device, progress, par)
    # the run directory appears (or is cleared) only once device, data and model are
    # known to be good
    par.decide(lambda: records.begin(out, cfg, start, log))
    trainer = kind.trainer(cfg, out, device, progress)
    resumed = resume_snapshot(trainer, start, par, log)
    if resumed:
        log('resumed from %s (%s)' % (resumed, position(trainer, kind.unit)))
    session_start = time.time()
    env = environment.describe()

    def write_summary(finished):
        if not par.writer:
            return None
        log_path = os.path.join(out, 'log.json')
        entries = records.read_json(log_path) if os.path.exists(log_path) else []
        summary = records.summarize(
            cfg, entries, kind.summary_fields(cfg, entries, trainer, finished),
            dataset_source=dataset.source,
            dataset_size={'train': dataset.n_train, 'test': dataset.n_test},
            backend='cupy' if device.xp is not numpy else 'numpy',
            device_name=device_name(device), wall_time_s=elapsed_time(trainer), env=env)
        summary['session_wall_time_s'] = time.time() - session_start
        summary['resumed_from'] = os.path.relpath(resumed, out) if resumed else None
        records.write_json(os.path.join(out, 'summary.json'), summary)
        return summary

    write_summary(finished=False)
    if par.writer:
        trainer.extend(WriteSummary(write_summary), trigger=kind.snapshot_trigger(cfg))
    train_loop(trainer, out, write_summary, kind.unit, size=par.size)
    return par.decide(lambda: write_summary(finished=True))


def _quiet(*args, **kwargs):
    """The log of the processes other than rank 0."""


# ------------------------------------------------------------------------- pieces

def resolve_device(spec):
    """``'cpu'``/``-1``/``'@numpy'`` -> NumPy; ``0``/``'gpu'`` -> CuPy device 0."""
    spec = str(spec)
    if spec in ('cpu', '-1', '@numpy'):
        return chainer.get_device('@numpy')
    if spec == 'gpu':
        spec = '0'
    if re.fullmatch(r'\d+', spec):
        spec = '@cupy:' + spec
    try:
        device = chainer.get_device(spec)
        if device.xp is not numpy:
            # CuPy without a usable driver or device fails only at its first call (a
            # CUDARuntimeError from cupy.random.seed): ask now
            import cupy
            count = cupy.cuda.runtime.getDeviceCount()
            if device.device.id >= count:
                raise RuntimeError('CuPy sees %d CUDA device(s)' % count)
        return device
    except Exception as e:
        why = ' '.join(str(e).split())          # Chainer's message runs lines together
        why = why.replace(').No module', '). No module')
        raise config_lib.ConfigError(
            'cannot use device %r: %s. Is CuPy installed for a GPU of this machine? See '
            'the README, "GPU"; --device cpu trains on the CPU' % (spec, why)) from None


def device_name(device):
    if device.xp is numpy:
        return environment.cpu_name()
    gpu = environment.gpu_description()
    return gpu['name'] if gpu else str(device)


def seed_everything(device, seed):
    """Seed NumPy (and CuPy on a GPU) and make ``device`` current."""
    numpy.random.seed(seed)
    if device.xp is not numpy:
        device.xp.random.seed(seed)
    device.use()


def load_data(cfg):
    """The dataset of ``cfg['data']``."""
    d = cfg['data']
    return data_lib.load_dataset(d['dataset'], d['data_dir'], subset=d['subset'],
                                 seed=cfg['train']['seed'], allow_download=d['download'])


def elapsed_time(trainer):
    """Training time so far (including earlier sessions of a resumed run), also before
    ``trainer.run`` has started."""
    try:
        return trainer.elapsed_time
    except RuntimeError:                    # not started: what the snapshot carried
        return float(getattr(trainer, '_snapshot_elapsed_time', 0.0))


def position(trainer, unit):
    """Where a trainer stands: ``'epoch 3, iteration 588'`` or ``'update 40'``."""
    u = trainer.updater
    return 'epoch %d, iteration %d' % (u.epoch, u.iteration) if unit == 'epoch' \
        else 'update %d' % u.iteration


def interrupted_message(out, trainer, unit='epoch', size=1):
    """Where an interrupted run stopped and how to go on (``size`` processes: the
    newest snapshot all of them completed)."""
    u = trainer.updater
    at = 'epoch %.2f, iteration %d' % (u.epoch_detail, u.iteration) if unit == 'epoch' \
        else 'update %d' % u.iteration
    snaps = records.complete_snapshots(out, size)
    again = 'the same command' if size == 1 else 'the same mpiexec -n %d command' % size
    then = ('run %s again to resume from %s' % (again, os.path.basename(snaps[-1]))
            if snaps else 'no snapshot yet, so %s starts it again from scratch' % again)
    return 'interrupted at %s; the run is in %s: %s' % (at, out, then)


def train_loop(trainer, out, write_summary, unit='epoch', size=1):
    """``trainer.run()``; on Ctrl-C write the summary of the run so far and raise
    :class:`experiments.records.RunInterrupted` saying where it stopped."""
    try:
        trainer.run(show_loop_exception_msg=False)
    except KeyboardInterrupt:
        write_summary(finished=False)
        raise records.RunInterrupted(interrupted_message(out, trainer, unit, size)) from None


class WriteSummary(training.Extension):
    """Rewrites ``summary.json`` right after each snapshot (``write(finished=False)``),
    so that the record of a killed run is as current as its newest snapshot."""
    priority = -101         # after the snapshot (-100) and LogReport

    def __init__(self, write):
        self.write = write

    def __call__(self, trainer):
        self.write(finished=False)


def prepare_local(kind, cfg, device, dataset, par):
    """The steps every process takes alone before building: its device (seeded), then
    the kind's data (:meth:`Kind.prepare`); returns ``(device, dataset)``."""
    if not isinstance(device, chainer.backend.Device):
        device = resolve_device(par.device(device))
    seed_everything(device, cfg['train']['seed'])
    return device, kind.prepare(cfg, device, dataset, par)


def resume_snapshot(trainer, start, par, log):
    """Load the newest snapshot every process has complete (:func:`records.load_snapshot`);
    its errors are the same on every process, agreed on (printed by rank 0).  Returns its
    path or None."""
    return par.agree(lambda: records.load_snapshot(trainer, start, log=log, par=par))
