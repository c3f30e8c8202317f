"""Config -> Chainer Trainer -> run directory.

    python -m experiments.train configs/table2/cifar10/MN-2.yaml [--preset smoke]
        [--synthetic] [--device 0] [--data-dir DIR] [--download] [--out DIR]
        [--resume auto|PATH] [--force] [--set train.epochs=3 ...]

Rerunning a command continues its run: a finished run is not trained again (``--force``
starts it over), an interrupted one resumes from its latest readable snapshot, and a
run directory holding a run of another config is left alone with the differing keys
named (:func:`experiments.rundir.prepare_run`).  Ctrl-C stops with one line saying
where the run stopped; the same command resumes it.

:func:`build` assembles a run (:func:`build_model`,
:func:`experiments.trainer_parts.build_optimizer`, :func:`build_iterators`,
:func:`build_trainer`) in one place, so that a data-parallel variant (ChainerMN: a
communicator wrapping the optimizer and scattering the dataset) changes only that
function.  Resuming continues bit-for-bit on the CPU: the data order
is a function of the serialized iterator state (``EpochOrderSampler``), the
augmentation RNG is serialized with the updater, and the MN fits are seeded from
persistent counters.

The steps of a run (prepare, build, begin, resume, loop, summary) and the command line
are :mod:`experiments.pipeline`'s, the same for the GAN; :class:`Classifier` gives them
the classifier's data, trainer, summary fields and closing line.  The trainer parts
both kinds use are :mod:`experiments.trainer_parts`'.
"""
from mixnorm import _compat  # noqa: F401

import copy
import math
import os

import numpy

import chainer
import chainer.links as L
from chainer import training
from chainer.training import extensions

from experiments import cli
from experiments import config as config_lib
from experiments import data as data_lib
from experiments import models
from experiments import optimizers
from experiments import parallel as parallel_lib
from experiments import pipeline
from experiments import metrics, rundir, verdict as verdict_lib
from experiments.trainer_parts import (ReportMixtureComponents, build_optimizer, mn_links,
                                       place_mn, progress_extensions,
                                       serialize_random_state)


# ------------------------------------------------------------------------- pieces

def build_model(cfg, n_classes, par=None, converted=False):
    """The classifier for ``cfg``: the registry's model taking the dataset's channels,
    MN placed at ``mn.layers`` (with ``mn.convert_at_epoch``, only when ``converted``:
    the run resumes past the conversion); with several processes (``par``) the
    normalization is synchronized."""
    par = par or parallel_lib.create(None)
    kwargs = dict({'in_channels': data_lib.channels_of(cfg['data']['dataset'])},
                  **cfg['model']['kwargs'])
    model = models.build_model(cfg['model']['name'], n_classes, **kwargs)
    place_mn(cfg, model, par.mn_comm(cfg), converting=converted)
    return L.Classifier(par.normalization(model, cfg))


def resumes_converted(cfg, start):
    """Whether a run with ``mn.convert_at_epoch`` resumes from a snapshot taken after
    its conversion (the newest one it will try), so its model is built with MN."""
    at = (cfg.get('mn') or {}).get('convert_at_epoch')
    if not at or start is None or start.action != 'resume' or not start.snapshots:
        return False
    m = rundir.SNAPSHOT_RE.match(os.path.basename(start.snapshots[0]))
    return bool(m) and int(m.group(1)) >= at


class ConvertToMixture(training.Extension):
    """At the end of epoch ``mn.convert_at_epoch`` (after that epoch's evaluation and
    log, before its snapshot), replace the BNs of ``mn.layers`` with MN as configured:
    the running averages, gamma, beta and their optimizer state carried over
    (:func:`mixnorm.replace_batch_normalization`), each layer's seed as
    :func:`place_mn` gives it.  A model built already converted (a resumed run) is left
    as it is."""
    priority = 0

    def __init__(self, cfg, model, comm=None):
        self.cfg, self.model, self.comm = cfg, model, comm
        self.trigger = (cfg['mn']['convert_at_epoch'], 'epoch')

    def __call__(self, trainer):
        if not mn_links(self.model):
            place_mn(self.cfg, self.model, self.comm, converting=True)


def build_iterators(cfg, dataset, par=None):
    """This process's iterators: its shard of the data, its part of the batch."""
    par = par or parallel_lib.create(None)
    seed = cfg['train']['seed']

    def shard(ds, equal):           # the same cut on every process
        return par.shard(ds, seed + (0 if equal else 1), equal)
    return data_lib.iterators(dataset, par.per_rank_batch_size(cfg),
                              seed + parallel_lib.RANK_SEED * par.rank,
                              test_batch_size=cfg['data']['test_batch_size'], shard=shard)


class AugmentingUpdater(training.updaters.StandardUpdater):
    """StandardUpdater that applies ``random_crop_flip`` to each training batch on the
    device, drawing from a RandomState that is saved in snapshots (exact resume).
    ``pad``, ``flip``: the config's ``data.crop_pad`` / ``data.flip``; ``fill``: what the
    crops pad with (:attr:`experiments.data.Dataset.crop_fill`)."""

    def __init__(self, iterator, optimizer, device, seed, augment=True, pad=4, flip=True,
                 fill=None):
        super().__init__(iterator, optimizer, device=device)
        self.augment = augment
        self.pad, self.flip, self.fill = pad, flip, fill
        self.rng = numpy.random.RandomState(seed)

    def update_core(self):
        iterator = self._iterators['main']
        batch = iterator.next()
        x, t = self.converter(batch, self.device)
        if self.augment:
            x = data_lib.random_crop_flip(x, self.rng, pad=self.pad, flip=self.flip,
                                          fill=self.fill)
        optimizer = self._optimizers['main']
        optimizer.update(optimizer.target, x, t)
        if self.auto_new_epoch and iterator.is_new_epoch:
            optimizer.new_epoch(auto=True)

    def serialize(self, serializer):
        super().serialize(serializer)
        serialize_random_state(serializer, self.rng)


class BatchStatisticsEvaluator(extensions.Evaluator):
    """The test set evaluated with each test batch normalized by its own statistics
    (BN's and MN's training-mode forward), beside the usual evaluation with the
    inference statistics (BN's running averages, MN's queue): reported as
    ``validation_batchstats/main/accuracy`` (and ``.../loss``).

    A gap between the two is a lag of the inference statistics, not a difference in
    what the network has learned.  The evaluation runs on a copy of the classifier, so
    that the running averages, the MN queue and fit counters of the trained model are
    untouched (an exact resume stays exact).  The paper's metric stays the inference
    one."""
    default_name = 'validation_batchstats'

    def __call__(self, trainer=None):
        target = self._targets['main']
        self._targets['main'] = copy.deepcopy(target)
        try:
            return super().__call__(trainer)
        finally:
            self._targets['main'] = target

    def evaluate(self):
        with chainer.using_config('train', True):
            return super().evaluate()


class SaveMixtures(training.Extension):
    """Saves the last fitted mixture of chosen MN layers at 20/40/60/80/100 % of the
    planned iterations (paper Sec. 5.2, Figure 8) to
    ``mixtures/<layer with / as ->_iter<k>.npz`` (weights, means, variances, sorted by
    weight, heaviest first)."""
    trigger = 1, 'iteration'
    priority = training.PRIORITY_WRITER
    FRACTIONS = (0.2, 0.4, 0.6, 0.8, 1.0)

    def __init__(self, model, layers, total_iterations, out):
        links = dict(mn_links(model))
        missing = [p for p in layers if p.strip('/') not in links]
        if missing:
            raise ValueError('train.save_mixtures: %s are not MN layers; MN layers: %s'
                             % (missing, ', '.join(links) or '(none)'))
        self.links = [(p.strip('/'), links[p.strip('/')]) for p in layers]
        self.at = sorted({max(1, int(round(f * total_iterations))) for f in self.FRACTIONS})
        self.out = os.path.join(out, 'mixtures')

    def __call__(self, trainer):
        it = trainer.updater.iteration
        if it not in self.at:
            return
        os.makedirs(self.out, exist_ok=True)
        for path, link in self.links:
            g = link.last_gmm
            if g is None:
                continue
            numpy.savez(os.path.join(self.out, '%s_iter%d.npz' % (path.replace('/', '-'), it)),
                        weights=chainer.backends.cuda.to_cpu(g.weights),
                        means=chainer.backends.cuda.to_cpu(g.means),
                        variances=chainer.backends.cuda.to_cpu(g.variances),
                        iteration=it, layer=path)


def snapshot_trigger(cfg):
    """Every ``train.snapshot_every`` epochs."""
    return cfg['train']['snapshot_every'], 'epoch'


def build_trainer(cfg, classifier, optimizer, train_iter, test_iter, out, device,
                  progress=True, par=None, crop_fill=None):
    par = par or parallel_lib.create(None)
    updater = AugmentingUpdater(train_iter, optimizer, device, cfg['train']['seed'] + 17
                                + parallel_lib.RANK_SEED * par.rank,
                                augment=cfg['data']['augment'], pad=cfg['data']['crop_pad'],
                                flip=cfg['data']['flip'], fill=crop_fill)
    epochs = cfg['train']['epochs']
    stop = (cfg['train']['max_iterations'], 'iteration') if cfg['train']['max_iterations'] \
        else (epochs, 'epoch')
    trainer = training.Trainer(updater, stop, out=out)
    attr = optimizers.lr_attr(optimizer)
    schedule = optimizers.make_schedule(cfg['schedule'], cfg['optimizer']['lr'], epochs)
    trainer.extend(optimizers.LearningRateSchedule(schedule, attr=attr))
    trainer.extend(par.evaluator(extensions.Evaluator(test_iter, classifier, device=device)),
                   trigger=(1, 'epoch'))
    if par.size == 1:   # with several processes, ranks' test shards may differ in batches
        trainer.extend(BatchStatisticsEvaluator(test_iter, classifier, device=device),
                       trigger=(1, 'epoch'))
    trainer.extend(extensions.observe_value(
        'lr', lambda t: getattr(t.updater.get_optimizer('main'), attr)),
        trigger=(1, 'iteration'))
    if mn_links(classifier.predictor) or (cfg.get('mn') or {}).get('convert_at_epoch'):
        trainer.extend(ReportMixtureComponents(classifier.predictor))
    if (cfg.get('mn') or {}).get('convert_at_epoch'):
        trainer.extend(ConvertToMixture(cfg, classifier.predictor, par.mn_comm(cfg)))
    if cfg['train']['save_mixtures'] and par.writer:
        total = cfg['train']['max_iterations'] or int(
            epochs * math.ceil(len(train_iter.dataset) / train_iter.batch_size))
        trainer.extend(SaveMixtures(classifier.predictor, cfg['train']['save_mixtures'],
                                    total, out))
    if par.writer:
        trainer.extend(extensions.LogReport(trigger=(1, 'epoch'), filename='log.json'))
    # every process keeps its own snapshot (its shard's iterator and RNG state)
    trainer.extend(par.snapshot('snapshot_epoch_{.updater.epoch}'),
                   trigger=snapshot_trigger(cfg))
    if progress and par.writer:
        progress_extensions(trainer, ['epoch', 'iteration', 'main/loss', 'main/accuracy',
                                      'validation/main/loss', 'validation/main/accuracy',
                                      'validation_batchstats/main/accuracy', 'lr',
                                      'elapsed_time'], bar_interval=1)
    return trainer


def build(cfg, dataset, out, device, progress=True, par=None, start=None):
    """Everything a run of ``cfg`` on ``dataset`` needs, assembled in one place: the
    classifier (on ``device``), its optimizer, the iterators and the trainer writing
    into ``out``, for one process or for this one of several (``par``,
    :mod:`experiments.parallel`).  Returns ``(classifier, trainer)``."""
    classifier = build_model(cfg, dataset.n_classes, par,    # validates mn.layers
                             converted=resumes_converted(cfg, start))
    classifier.to_device(device)
    optimizer = build_optimizer(cfg, classifier, par)
    train_iter, test_iter = build_iterators(cfg, dataset, par)
    trainer = build_trainer(cfg, classifier, optimizer, train_iter, test_iter, out, device,
                            progress=progress, par=par, crop_fill=dataset.crop_fill)
    return classifier, trainer


# ----------------------------------------------------------------------------- run

class Classifier(pipeline.Kind):
    """The classifier as a kind of run (:class:`experiments.pipeline.Kind`): the data of
    ``cfg`` checked against its batch size, then :func:`build` (model, optimizer,
    iterators, trainer); its summary fields are
    :func:`experiments.metrics.classifier_fields`, its closing line
    :func:`describe_result`."""
    prog = 'python -m experiments.train'
    description = 'Train one config (one row of a paper table).'

    def check(self, cfg, par):
        if cfg.get('gan'):
            raise config_lib.ConfigError('%s: a GAN config; train it with python -m '
                                         'experiments.gan'
                                         % ', '.join(cfg.get('_sources', [])))

    def prepare(self, cfg, device, dataset, par):
        if dataset is None:
            dataset = pipeline.load_data(cfg)
        config_lib.check_batch_size(cfg, dataset.n_train)
        return dataset

    def build(self, cfg, dataset, out, device, progress, par):
        self.classifier, trainer = build(cfg, dataset, out, device, progress, par,
                                         self.start)
        return trainer

    def snapshot_trigger(self, cfg):
        return snapshot_trigger(cfg)

    def summary_fields(self, cfg, log, trainer, finished):
        return metrics.classifier_fields(cfg, log, finished=finished,
                                         iterations=trainer.updater.iteration,
                                         epochs_done=trainer.updater.epoch)

    def describe_result(self, summary, out):
        return describe_result(summary, out)


def run(cfg, out=None, device='cpu', resume='auto', progress=True, dataset=None,
        force=False, log=print, start=None, communicator=None, par=None):
    """Train ``cfg`` (a validated config dict) through the run pipeline
    (:func:`experiments.pipeline.run`); returns the summary dict.

    ``resume``: ``'auto'`` (skip a finished run, resume an interrupted one), or a
    snapshot path; ``force``: start over; ``start``: that decision already taken by
    :func:`experiments.rundir.prepare_run`.  ``dataset``: an already loaded
    :class:`experiments.data.Dataset` (tests).  ``communicator``: a ChainerMN
    communicator name to train data-parallel under ``mpiexec`` (or ``par``, an
    :class:`experiments.parallel.Parallel`); rank 0 writes the run directory.
    """
    return pipeline.run(Classifier(), cfg, out=out, device=device, resume=resume,
                        progress=progress, dataset=dataset, force=force, log=log,
                        start=start, par=par or parallel_lib.create(communicator))


# ----------------------------------------------------------------------------- CLI

def describe_result(summary, out):
    """The closing line of a classifier run."""
    best, final = summary.get('best_test_accuracy'), summary.get('final_test_accuracy')
    acc = ('best test accuracy %.2f%% (final %.2f%%)' % (best, final) if best is not None
           else 'no test evaluation yet')
    verdict = verdict_lib.Assessment.recorded(summary)
    return '%s, %s in %.0f s; record: %s [%s]' % (
        verdict.status, acc, summary.get('wall_time_s') or 0.0, out, verdict.label())


@cli.entry_point
def main(argv=None):
    """``python -m experiments.train CONFIG [options]`` (:func:`experiments.pipeline.main`)."""
    pipeline.main(Classifier(), argv)


if __name__ == '__main__':
    main()
