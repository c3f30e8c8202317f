"""One run pipeline for every kind of run, and its command line.

As Chainer's Trainer runs any Updater with any Extensions, :func:`run` runs any
:class:`Kind` of run.  The classifier (:class:`experiments.train.Classifier`) and the
GAN (:class:`experiments.gan.GAN`) each give their data, their trainer (models,
optimizers, updater, extensions) and the fields of their summary; the steps around them
are the same for every kind, with one process or several (:mod:`experiments.parallel`):

1. prepare: whether to train, resume or keep a finished run
   (:func:`experiments.rundir.prepare_run`, rank 0 decides for all);
2. build: device and seeds, then the data (:meth:`Kind.prepare`, each process alone),
   then the trainer (:meth:`Kind.build`), all known to be good before the run
   directory appears or is cleared;
3. begin: :func:`experiments.rundir.begin` (``config.yaml``);
4. resume: the newest snapshot every process can read
   (:func:`experiments.rundir.load_snapshot`);
5. loop: ``trainer.run()`` (:func:`train_loop`); ``summary.json``
   (:func:`experiments.runs.summarize` around :meth:`Kind.summary_fields`) at the
   start, after each snapshot, on Ctrl-C and at the end, written by rank 0.

Every process takes the steps; what one process does alone and may fail at (its
device, its data) is agreed collectively (``par.agree``), what rank 0 decides for
all (``par.decide``) is broadcast.

:func:`main` is the command line of every kind (``python -m experiments.train`` and
``python -m experiments.gan``): one parser (:func:`run_parser`, with
:func:`add_run_arguments`, which ``scripts/reproduce.py`` shares), the kind's own
options and subcommands (:class:`Command`) added the same way.
"""
from mixnorm import _compat  # noqa: F401

import argparse
import os
import re
import sys
import time
from typing import Callable, NamedTuple

import numpy

import chainer
from chainer import training

from experiments import cli
from experiments import config as config_lib
from experiments import data as data_lib
from experiments import environment
from experiments import parallel as parallel_lib
from experiments import rundir, runs


class Command(NamedTuple):
    """A subcommand of a kind's command line besides training a config, e.g.
    ``python -m experiments.gan compare BN_RUN MN_RUN``: ``description`` (one line),
    ``add_arguments(parser)`` and ``run(args)``."""
    description: str
    add_arguments: Callable
    run: Callable


class Kind:
    """A kind of run: what :func:`run` and :func:`main` take from it (one instance per
    run: a hook may keep what a later one needs).

    The hooks of a run, in the order :func:`run` calls them:

    * :meth:`check`: refuse a config this kind cannot train, before anything else;
    * :meth:`prepare`: what each process does alone: the data (unless given) and what
      derives from the data and the config alone, checked against each other;
    * :meth:`build`: models, optimizers, updater and extensions: the trainer writing
      into the run directory, before the run directory begins (a bad layer name or
      FID network leaves none);
    * :meth:`snapshot_trigger`, :meth:`summary_fields`: when the trainer snapshots
      (``summary.json`` is rewritten after each) and what the summary holds.

    Attributes: ``unit``, what progress is told in (``'epoch'``: epochs and
    iterations; ``'update'``: updates); ``one_process``, why this kind trains in one
    process only (None: it trains data-parallel too); ``start``, the decision of
    :func:`experiments.rundir.prepare_run` (train, or resume from which snapshots),
    set before :meth:`build`.

    The command line (:func:`main`): ``prog``, ``description``, ``config_help``;
    :meth:`add_arguments` and :meth:`config_overrides`, the kind's own options;
    :meth:`load_config`; :meth:`describe_result`, the closing line; ``commands``, its
    other subcommands (name -> :class:`Command`); ``elsewhere``, names of commands that
    other scripts have (name -> the line that says which).
    """
    unit = 'epoch'
    one_process = None
    start = None
    prog = None
    description = None
    config_help = 'configs/<table>/<dataset>/<row>.yaml'
    commands = {}
    elsewhere = {}

    # ----------------------------------------------------------- the run's hooks

    def check(self, cfg, par):
        """Refuse a config this kind cannot train: a
        :class:`~experiments.config.ConfigError` that names the right entry point."""

    def prepare(self, cfg, device, dataset, par):
        """What each process does alone before the run directory begins: load the data
        (unless ``dataset`` is given) and check it against ``cfg``; returns the dataset."""
        raise NotImplementedError

    def build(self, cfg, dataset, out, device, progress, par):
        """The trainer (models, optimizers, updater, extensions) writing into ``out``,
        built before the run directory begins; may need every process (a synchronized
        model, a multi-node optimizer)."""
        raise NotImplementedError

    def snapshot_trigger(self, cfg):
        """When its trainer takes a snapshot (``summary.json`` is rewritten after each)."""
        raise NotImplementedError

    def summary_fields(self, cfg, log, trainer, finished):
        """What this kind of run measures, for :func:`experiments.runs.summarize`."""
        raise NotImplementedError

    # ------------------------------------------------------ the command line's

    def add_arguments(self, parser):
        """The options of this kind's command line beside :func:`add_run_arguments`."""

    def config_overrides(self, args):
        """Those options as config overrides (``key=value`` strings)."""
        return []

    def load_config(self, path, presets=(), overrides=()):
        """The validated config of ``path`` (:func:`experiments.config.load_config`)."""
        return config_lib.load_config(path, presets, overrides)

    def describe_result(self, summary, out):
        """The line a command ends with."""
        raise NotImplementedError


# ----------------------------------------------------------------------------- run

def run(kind, cfg, out=None, device='cpu', resume='auto', progress=True, dataset=None,
        force=False, log=print, start=None, par=None):
    """Train ``cfg`` (a validated config dict) as a run of ``kind``; returns the summary
    dict.

    ``resume``: ``'auto'`` (skip a finished run, resume an interrupted one), or a
    snapshot path; ``force``: start over; ``start``: that decision already taken by
    :func:`experiments.rundir.prepare_run`.  ``dataset``: an already loaded
    :class:`experiments.data.Dataset` (tests).  ``par``: the processes
    (:class:`experiments.parallel.Parallel`; default one); rank 0 writes the run
    directory.
    """
    par = par or parallel_lib.create(None)
    kind.check(cfg, par)
    if kind.one_process and par.size > 1:
        raise config_lib.ConfigError(kind.one_process)
    cfg = par.agree(lambda: par.record(cfg))
    if not par.writer:
        log = _quiet
    out = out or rundir.run_dir(cfg)
    start = start or par.decide(lambda: rundir.prepare_run(cfg, out, resume, force))
    if start.action == 'skip':
        log(start.message)
        return start.summary
    device, dataset = par.agree(lambda: prepare_local(kind, cfg, device, dataset, par))
    kind.start = start
    trainer = kind.build(cfg, dataset, out, device, progress, par)
    # the run directory appears (or is cleared) only once device, data and trainer are
    # known to be good
    par.decide(lambda: rundir.begin(out, cfg, start, log))
    resumed = resume_snapshot(trainer, start, par, log)
    if resumed:
        log('resumed from %s (%s)' % (resumed, position(trainer, kind.unit)))
    session_start = time.time()
    env = environment.describe()

    def write_summary(finished):
        if not par.writer:
            return None
        log_path = os.path.join(out, 'log.json')
        entries = rundir.read_json(log_path) if os.path.exists(log_path) else []
        summary = runs.summarize(
            cfg, entries, kind.summary_fields(cfg, entries, trainer, finished),
            dataset_source=dataset.source,
            dataset_size={'train': dataset.n_train, 'test': dataset.n_test},
            backend='cupy' if device.xp is not numpy else 'numpy',
            device_name=device_name(device), wall_time_s=elapsed_time(trainer), env=env)
        summary['session_wall_time_s'] = time.time() - session_start
        summary['resumed_from'] = os.path.relpath(resumed, out) if resumed else None
        rundir.write_json(os.path.join(out, 'summary.json'), summary)
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
    snaps = rundir.complete_snapshots(out, size)
    again = 'the same command' if size == 1 else 'the same mpiexec -n %d command' % size
    then = ('run %s again to resume from %s' % (again, os.path.basename(snaps[-1]))
            if snaps else 'no snapshot yet, so %s starts it again from scratch' % again)
    return 'interrupted at %s; the run is in %s: %s' % (at, out, then)


def train_loop(trainer, out, write_summary, unit='epoch', size=1):
    """``trainer.run()``; on Ctrl-C write the summary of the run so far and raise
    :class:`experiments.rundir.RunInterrupted` saying where it stopped."""
    try:
        trainer.run(show_loop_exception_msg=False)
    except KeyboardInterrupt:
        write_summary(finished=False)
        raise rundir.RunInterrupted(interrupted_message(out, trainer, unit, size)) from None


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
    """Load the newest snapshot every process has complete (:func:`rundir.load_snapshot`);
    its errors are the same on every process, agreed on (printed by rank 0).  Returns its
    path or None."""
    return par.agree(lambda: rundir.load_snapshot(trainer, start, log=log, par=par))


# ---------------------------------------------------------------------- command line

def add_run_arguments(p):
    """The options every command that trains has (``experiments.train``,
    ``experiments.gan``, ``scripts/reproduce.py``); :func:`config_overrides` turns them
    into config overrides."""
    p.add_argument('--preset', action='append', default=[],
                   help='merge configs/presets/<name>.yaml (e.g. smoke)')
    p.add_argument('--synthetic', action='store_true',
                   help='train on generated images instead of CIFAR (no data needed; '
                        'records and tables mark such runs NOT COMPARABLE)')
    p.add_argument('--set', dest='overrides', action='append', default=[],
                   metavar='KEY=VALUE', help='override a config value, e.g. train.epochs=3')
    p.add_argument('--device', default='cpu', help="'cpu' (default) or a GPU id, e.g. 0")
    p.add_argument('--data-dir', help='folder with the CIFAR archives or extracted batches, '
                   'or the Fashion-MNIST IDX files')
    p.add_argument('--download', action='store_true',
                   help='allow Chainer to download the data when it is not found locally')
    p.add_argument('--seed', type=int, help='override train.seed')
    p.add_argument('--force', action='store_true',
                   help='start over: discard what an earlier run wrote into the run '
                        'directory (a finished run is otherwise kept, an interrupted '
                        'one resumed)')
    p.add_argument('--no-progress', action='store_true')
    p.add_argument('--communicator', metavar='NAME',
                   help='train data-parallel under mpiexec with this ChainerMN communicator '
                        '(naive on CPUs, pure_nccl on GPUs); the config\'s batch size is '
                        'the global batch')
    return p


def config_overrides(args):
    """--set, then --synthetic / --data-dir / --download / --seed as config overrides."""
    sets = list(args.overrides)
    if args.synthetic:
        sets.append('data.dataset=synthetic')
    if args.data_dir:
        sets.append('data.data_dir=%s' % os.path.abspath(args.data_dir))
    if args.download:
        sets.append('data.download=true')
    if args.seed is not None:
        sets.append('train.seed=%d' % args.seed)
    return sets


def command_parser(kind, name):
    """The parser of ``kind``'s subcommand ``name`` (:class:`Command`)."""
    command = kind.commands[name]
    p = argparse.ArgumentParser(prog='%s %s' % (kind.prog, name),
                                description=command.description)
    command.add_arguments(p)
    return p


def run_parser(kind):
    """The parser of ``kind``'s command line: a config to train, where its run goes,
    the kind's own options (:meth:`Kind.add_arguments`) and :func:`add_run_arguments`;
    its other subcommands are named below the options."""
    others = ['%s: %s' % (command_parser(kind, name).format_usage().strip()[len('usage: '):],
                          command.description)
              for name, command in kind.commands.items()]
    p = argparse.ArgumentParser(prog=kind.prog, description=kind.description,
                                epilog='Also: %s' % '; '.join(others) if others else None)
    p.add_argument('config', help=kind.config_help)
    p.add_argument('--out', help='run directory (default results/runs/...)')
    p.add_argument('--resume', default='auto',
                   help="'auto' (default: resume an interrupted run, keep a finished one) "
                        'or a snapshot path')
    kind.add_arguments(p)
    add_run_arguments(p)
    return p


def main(kind, argv=None):
    """The command line of ``kind``: ``CONFIG [options]`` trains the config through
    :func:`run` and prints :meth:`Kind.describe_result`; ``NAME ...`` runs the kind's
    subcommand ``NAME`` (:attr:`Kind.commands`), or says which script has it
    (:attr:`Kind.elsewhere`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in kind.elsewhere:
        raise cli.UsageError(kind.elsewhere[argv[0]])
    if argv and argv[0] in kind.commands:
        return kind.commands[argv[0]].run(command_parser(kind, argv[0]).parse_args(argv[1:]))
    args = run_parser(kind).parse_args(argv)
    if args.communicator and kind.one_process:
        raise config_lib.ConfigError(kind.one_process)
    par = parallel_lib.create(args.communicator)
    cfg = par.agree(lambda: kind.load_config(
        args.config, args.preset, config_overrides(args) + kind.config_overrides(args)))
    out = args.out or rundir.run_dir(cfg)
    summary = run(kind, cfg, out=out, device=args.device, resume=args.resume,
                  progress=not args.no_progress, force=args.force, par=par)
    if par.writer:
        print(kind.describe_result(summary, out))
