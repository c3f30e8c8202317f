"""Config -> Chainer Trainer -> run directory.

    python -m experiments.train configs/table2/cifar10/MN-2.yaml [--preset smoke]
        [--device 0] [--data-dir DIR] [--download] [--out DIR] [--resume auto|PATH]
        [--set train.epochs=3 ...]

Construction is split into :func:`build_model`, :func:`build_optimizer`,
:func:`build_iterators` and :func:`build_trainer` so that a data-parallel variant
(ChainerMN: a communicator wrapping the optimizer and scattering the dataset) can reuse
them.  Resuming (``--resume``) continues bit-for-bit on the CPU: the data order is a
function of the serialized iterator state (``EpochOrderSampler``), the augmentation RNG
is serialized with the updater, and the MN fits are seeded from persistent counters.
"""
from mixnorm import _compat  # noqa: F401

import argparse
import glob
import math
import os
import re
import sys
import time

import numpy

import chainer
import chainer.links as L
from chainer import training
from chainer.training import extensions

import mixnorm
from experiments import config as config_lib
from experiments import data as data_lib
from experiments import environment
from experiments import models
from experiments import optimizers
from experiments import records


# ------------------------------------------------------------------------- pieces

def place_mn(cfg, model):
    """Replace the BNs named by ``cfg['mn']['layers']`` in ``model`` with MN links
    (no-op without an ``mn`` section); returns the replaced BN paths."""
    mn = cfg.get('mn')
    if not mn:
        return []
    config_lib.check_layers(cfg, model)
    kwargs = {k: mn[k] for k in ('n_components', 'em_iters', 'fit_fraction', 'min_weight',
                                 'queue_length', 'decay', 'affine', 'lambda_scaling')}
    paths = mixnorm.replace_batch_normalization(model, mn['layers'], **kwargs)
    # distinct, reproducible GMM seeds per layer (persistent, so resumable)
    links = dict(model.namedlinks(skipself=True))
    for i, p in enumerate(paths):
        links['/' + p].seed = cfg['train']['seed'] * 1009 + i
    return paths


def serialize_random_state(serializer, rng, prefix='rng'):
    """Save or restore a ``numpy.random.RandomState`` with a Chainer serializer."""
    name, keys, pos, has_gauss, cached = rng.get_state()
    keys = serializer(prefix + '_keys', keys)
    pos = serializer(prefix + '_pos', int(pos))
    has_gauss = serializer(prefix + '_has_gauss', int(has_gauss))
    cached = serializer(prefix + '_cached_gaussian', float(cached))
    if isinstance(serializer, chainer.serializer.Deserializer):
        rng.set_state((name, numpy.asarray(keys, dtype=numpy.uint32), int(pos),
                       int(has_gauss), float(cached)))


def build_model(cfg, n_classes):
    """The classifier for ``cfg``: the registry's model, MN placed at ``mn.layers``."""
    model = models.build_model(cfg['model']['name'], n_classes, **cfg['model']['kwargs'])
    place_mn(cfg, model)
    return L.Classifier(model)


def build_optimizer(cfg, classifier):
    opt_cfg = {k: v for k, v in cfg['optimizer'].items() if v is not None}
    name = opt_cfg['name']
    keep = {'rmsprop_momentum': ('name', 'lr', 'momentum', 'weight_decay', 'rho', 'eps'),
            'nesterov': ('name', 'lr', 'momentum', 'weight_decay'),
            'momentum_sgd': ('name', 'lr', 'momentum', 'weight_decay'),
            'adam': ('name', 'lr', 'weight_decay', 'beta1', 'beta2', 'eps')}[name]
    return optimizers.setup_optimizer({k: v for k, v in opt_cfg.items() if k in keep},
                                      classifier)


def build_iterators(cfg, dataset):
    return data_lib.iterators(dataset, cfg['data']['batch_size'], cfg['train']['seed'],
                              test_batch_size=cfg['data']['test_batch_size'])


class AugmentingUpdater(training.updaters.StandardUpdater):
    """StandardUpdater that applies ``random_crop_flip`` to each training batch on the
    device, drawing from a RandomState that is saved in snapshots (exact resume)."""

    def __init__(self, iterator, optimizer, device, seed, augment=True):
        super().__init__(iterator, optimizer, device=device)
        self.augment = augment
        self.rng = numpy.random.RandomState(seed)

    def update_core(self):
        iterator = self._iterators['main']
        batch = iterator.next()
        x, t = self.converter(batch, self.device)
        if self.augment:
            x = data_lib.random_crop_flip(x, self.rng, pad=4)
        optimizer = self._optimizers['main']
        optimizer.update(optimizer.target, x, t)
        if self.auto_new_epoch and iterator.is_new_epoch:
            optimizer.new_epoch(auto=True)

    def serialize(self, serializer):
        super().serialize(serializer)
        serialize_random_state(serializer, self.rng)


def mn_links(model):
    return [(p.lstrip('/'), link) for p, link in model.namedlinks(skipself=True)
            if isinstance(link, mixnorm.MixtureNormalization)]


class ReportMixtureComponents(training.Extension):
    """Reports ``mn/<layer>/components``, the effective K' of every MN layer's last fit
    (LogReport averages it over the epoch: Sec. 5.3, Figure 9)."""
    trigger = 1, 'iteration'
    priority = training.PRIORITY_WRITER

    def __init__(self, model):
        self.links = mn_links(model)

    def __call__(self, trainer):
        chainer.report({'mn/%s/components' % p: link.effective_components
                        for p, link in self.links if link.effective_components is not None})


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


def build_trainer(cfg, classifier, optimizer, train_iter, test_iter, out, device,
                  progress=True):
    updater = AugmentingUpdater(train_iter, optimizer, device, cfg['train']['seed'] + 17,
                                augment=cfg['data']['augment'])
    epochs = cfg['train']['epochs']
    stop = (cfg['train']['max_iterations'], 'iteration') if cfg['train']['max_iterations'] \
        else (epochs, 'epoch')
    trainer = training.Trainer(updater, stop, out=out)
    base_lr = cfg['optimizer']['lr']
    attr = 'alpha' if cfg['optimizer']['name'] == 'adam' else 'lr'
    schedule = optimizers.make_schedule(
        {k: v for k, v in cfg['schedule'].items() if v is not None}, base_lr, epochs)
    trainer.extend(optimizers.LearningRateSchedule(schedule, attr=attr))
    trainer.extend(extensions.Evaluator(test_iter, classifier, device=device),
                   trigger=(1, 'epoch'))
    trainer.extend(extensions.observe_value(
        'lr', lambda t: getattr(t.updater.get_optimizer('main'), attr)),
        trigger=(1, 'iteration'))
    if mn_links(classifier.predictor):
        trainer.extend(ReportMixtureComponents(classifier.predictor))
    if cfg['train']['save_mixtures']:
        total = cfg['train']['max_iterations'] or int(
            epochs * math.ceil(len(train_iter.dataset) / cfg['data']['batch_size']))
        trainer.extend(SaveMixtures(classifier.predictor, cfg['train']['save_mixtures'],
                                    total, out))
    trainer.extend(extensions.LogReport(trigger=(1, 'epoch'), filename='log.json'))
    trainer.extend(extensions.snapshot(filename='snapshot_epoch_{.updater.epoch}'),
                   trigger=(cfg['train']['snapshot_every'], 'epoch'))
    if progress:
        trainer.extend(extensions.PrintReport(
            ['epoch', 'iteration', 'main/loss', 'main/accuracy', 'validation/main/loss',
             'validation/main/accuracy', 'lr', 'elapsed_time']))
        trainer.extend(extensions.ProgressBar(update_interval=1))
    return trainer


# ----------------------------------------------------------------------------- run

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
        return chainer.get_device(spec)
    except Exception as e:
        raise SystemExit('cannot use device %r: %s (is CuPy installed with a GPU? see '
                         'README "GPU")' % (spec, e))


def latest_snapshot(out, prefix='snapshot_epoch_'):
    """The snapshot ``<prefix><n>`` in ``out`` with the largest n, or None."""
    snaps = [p for p in glob.glob(os.path.join(out, prefix + '*'))
             if p.rsplit('_', 1)[1].isdigit()]
    if not snaps:
        return None
    return max(snaps, key=lambda p: int(p.rsplit('_', 1)[1]))


def resume_trainer(trainer, out, resume, prefix='snapshot_epoch_'):
    """Load ``resume`` (a path, ``'auto'`` = the latest snapshot in ``out`` if any, or
    None) into ``trainer``; returns the path loaded or None."""
    if resume == 'auto':
        resume = latest_snapshot(out, prefix)
    if not resume:
        return None
    if not os.path.exists(resume):
        raise FileNotFoundError('--resume: no snapshot at %s' % resume)
    chainer.serializers.load_npz(resume, trainer)
    print('resumed from %s (epoch %d, iteration %d)'
          % (resume, trainer.updater.epoch, trainer.updater.iteration))
    return resume


def device_name(device):
    if device.xp is numpy:
        return environment.cpu_name()
    gpu = environment.gpu_description()
    return gpu['name'] if gpu else str(device)


def run(cfg, out=None, device='cpu', resume=None, progress=True, dataset=None):
    """Train ``cfg`` (a validated config dict); returns the summary dict.

    ``resume``: None, ``'auto'`` (latest snapshot in ``out`` if any) or a path.
    ``dataset``: an already loaded :class:`experiments.data.Dataset` (tests).
    """
    out = out or records.run_dir(cfg)
    device = resolve_device(device) if not isinstance(device, chainer.backend.Device) \
        else device
    seed = cfg['train']['seed']
    numpy.random.seed(seed)
    if device.xp is not numpy:
        device.xp.random.seed(seed)
    device.use()

    if dataset is None:
        dataset = data_lib.load_dataset(cfg['data']['dataset'], cfg['data']['data_dir'],
                                        subset=cfg['data']['subset'], seed=seed,
                                        allow_download=cfg['data']['download'])
    classifier = build_model(cfg, dataset.n_classes)    # validates mn.layers
    # the run directory appears only once device, data and model are known to be good
    records.write_config(out, cfg)
    classifier.to_device(device)
    optimizer = build_optimizer(cfg, classifier)
    train_iter, test_iter = build_iterators(cfg, dataset)
    trainer = build_trainer(cfg, classifier, optimizer, train_iter, test_iter, out, device,
                            progress=progress)
    resume = resume_trainer(trainer, out, resume)
    start = time.time()
    trainer.run()
    env = environment.describe()
    log = records.read_json(os.path.join(out, 'log.json')) \
        if os.path.exists(os.path.join(out, 'log.json')) else []
    summary = records.summarize(
        cfg, log, dataset_source=dataset.source,
        backend='cupy' if device.xp is not numpy else 'numpy',
        device_name=device_name(device), wall_time_s=trainer.elapsed_time, env=env)
    summary['session_wall_time_s'] = time.time() - start
    summary['resumed_from'] = os.path.relpath(resume, out) if resume else None
    records.write_json(os.path.join(out, 'summary.json'), summary)
    return summary


def add_run_arguments(p):
    """Arguments shared by ``experiments.train`` and ``scripts/reproduce.py``."""
    p.add_argument('--preset', action='append', default=[],
                   help='merge configs/presets/<name>.yaml (e.g. smoke)')
    p.add_argument('--set', dest='overrides', action='append', default=[],
                   metavar='KEY=VALUE', help='override a config value, e.g. train.epochs=3')
    p.add_argument('--device', default='cpu', help="'cpu' (default) or a GPU id, e.g. 0")
    p.add_argument('--data-dir', help='folder with the CIFAR archives or extracted batches')
    p.add_argument('--download', action='store_true',
                   help='allow Chainer to download CIFAR when it is not found locally')
    p.add_argument('--seed', type=int, help='override train.seed')
    p.add_argument('--no-progress', action='store_true')
    return p


def config_overrides(args):
    """--data-dir / --download / --seed as config overrides."""
    sets = list(args.overrides)
    if args.data_dir:
        sets.append('data.data_dir=%s' % os.path.abspath(args.data_dir))
    if args.download:
        sets.append('data.download=true')
    if args.seed is not None:
        sets.append('train.seed=%d' % args.seed)
    return sets


def main(argv=None):
    p = argparse.ArgumentParser(description='Train one config (one row of a paper table).')
    p.add_argument('config', help='configs/<table>/<dataset>/<row>.yaml')
    p.add_argument('--out', help='run directory (default results/runs/...)')
    p.add_argument('--resume', help="'auto' or a snapshot path")
    add_run_arguments(p)
    args = p.parse_args(argv)
    try:
        cfg = config_lib.load_config(args.config, args.preset, config_overrides(args))
        summary = run(cfg, out=args.out, device=args.device, resume=args.resume,
                      progress=not args.no_progress)
    except (config_lib.ConfigError, FileNotFoundError) as e:
        sys.exit('error: %s' % e)
    print('best test accuracy %.2f%% (final %.2f%%) in %.0f s; record: %s' % (
        summary['best_test_accuracy'] or float('nan'),
        summary['final_test_accuracy'] or float('nan'), summary['wall_time_s'],
        args.out or records.run_dir(cfg)))


if __name__ == '__main__':
    main()
