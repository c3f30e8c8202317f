"""DCGAN on CIFAR-10 with BN or MN in the generator (paper Sec. 4.5, Figures 6-7).

    python -m experiments.gan configs/dcgan/cifar10/mn.yaml [--preset gan_smoke]
        [--synthetic] [--device 0] [--resume auto|PATH] [--force] [--out DIR]
        [--inception-weights NPZ] [--no-fid] [--fid-cache DIR] [--data-dir DIR]
        [--download] [--seed K] [--set key=value ...]
    python -m experiments.gan compare BN_RUN_DIR MN_RUN_DIR

Figures 6-7 are drawn from these runs by :mod:`experiments.figures.dcgan`
(``python scripts/figures.py fig6|fig7``); ``compare`` sets their numbers beside the
paper's (:func:`experiments.compare.compare_dcgan`).

Setting (the paper's, which are exactly Chainer-GAN-lib's ``train.py`` defaults for its
DCGAN; models in :mod:`experiments.models.dcgan`):

* Adam, alpha 2e-4, beta1 0, beta2 0.9, for generator and discriminator; batch 64
  (Chainer-GAN-lib's default; the paper does not state it); ``gan.updates`` = 100K
  generator updates.  One trainer iteration draws one batch of real images and one of
  noise, updates the generator, then the discriminator (Chainer-GAN-lib
  ``dcgan/updater.py``), so there are as many discriminator as generator updates.
* Loss: the standard non-saturating GAN loss with logits y = D(x):
  L_D = mean softplus(-y_real) + mean softplus(y_fake),  L_G = mean softplus(-y_fake)
  (Goodfellow et al. 2014, "-log D" trick; Chainer-GAN-lib's DCGAN loss).
* Real images: the CIFAR-10 training images in [-1, 1] (``x / 127.5 - 1`` of the uint8
  pixels, recovered exactly from :func:`experiments.data.load_dataset`'s per-channel
  normalised images with ``dataset.mean`` / ``dataset.std``); no augmentation.  Noise
  z ~ U(-1, 1)^128, drawn on the host from a RandomState that snapshots save.
* Every ``gan.fid.every`` updates (and after the last): a ``gan.grid`` x ``gan.grid``
  sample grid from fixed noise (``samples/step_<k>.png``, Figure 7) and, unless
  ``gan.fid.enabled`` is false, the FID of ``gan.fid.n_samples`` images from fixed noise
  (:mod:`experiments.fid`), generator in inference mode (BN: population statistics; MN:
  its inference queue).  The generator of the lowest FID is kept
  (``generator_best.npz``).  Snapshots (``snapshot_iter_<k>``, the last
  :data:`SNAPSHOTS_KEPT`) every ``gan.snapshot_every`` updates; rerunning the command
  (``--resume auto``, the default) continues an interrupted run bit-for-bit on the CPU
  (data order from the serialized iterator, noise RNG and MN seeds in the snapshot) and
  keeps a finished one (:func:`experiments.rundir.prepare_run`).
* Records: ``config.yaml``, ``log.json`` (every ``gan.log_every`` updates and at every
  evaluation: ``gen/loss``, ``dis/loss``, ``dis/loss_real``, ``dis/loss_fake``, ``fid``
  at evaluations, MN's K'), ``summary.json`` (:func:`summary_fields`).

Without the FID weights a run stops before training with instructions
(:func:`experiments.fid.missing_weights_message`); ``--no-fid`` trains without FID.
``gan.fid.random_weights: true`` (the ``gan_smoke`` preset) uses an untrained Inception:
every record, comparison and figure then says "RANDOM-WEIGHTS ... NOT FID".
"""
from mixnorm import _compat  # noqa: F401

import os
import time

import numpy

import chainer
import chainer.functions as F
from chainer import training
from chainer.training import extensions

from experiments import cli
from experiments import compare
from experiments import config as config_lib
from experiments import data as data_lib
from experiments import fid as fid_lib
from experiments import paper
from experiments import pipeline
from experiments import metrics, rundir, verdict as verdict_lib
from experiments.models import dcgan
from experiments.trainer_parts import (ReportMixtureComponents, build_optimizer, mn_links,
                                       place_mn, progress_extensions,
                                       serialize_random_state)

SNAPSHOT_PREFIX = 'snapshot_iter_'
SNAPSHOTS_KEPT = 3
SAMPLES_DIR = 'samples'
GAN_SMOKE_PRESET = 'gan_smoke'
NOT_FID = 'RANDOM-WEIGHTS'


# ---------------------------------------------------------------------- config

def load_config(path, presets=(), overrides=()):
    """:func:`experiments.config.load_config` for GAN configs: the generic ``smoke``
    preset is followed by ``gan_smoke`` (which makes a GAN smoke run short and its FID a
    labelled random-weights one); then :func:`check_config`."""
    presets = list(presets)
    if 'smoke' in presets and GAN_SMOKE_PRESET not in presets:
        presets.insert(presets.index('smoke') + 1, GAN_SMOKE_PRESET)
    cfg = config_lib.load_config(path, presets, overrides)
    check_config(cfg)
    return cfg


#: the datasets the DCGAN (3-channel generator) and its FID statistics are set up for
GAN_DATASETS = ('cifar10', 'cifar100', 'synthetic')


def check_config(cfg):
    """A config this entry point can train: one with a ``gan`` section (the schema checks
    its values), and, for a smoke run, the ``gan_smoke`` preset."""
    where = ', '.join(cfg.get('_sources', [])) or '<config>'
    if not cfg.get('gan'):
        raise config_lib.ConfigError('%s: not a GAN config (no gan section); train '
                                     'classifiers with experiments.train' % where)
    dataset = cfg.get('data', {}).get('dataset')
    if dataset not in GAN_DATASETS:
        set_by = (cfg.get('_origins') or {}).get('data.dataset', where)
        raise config_lib.ConfigError(
            '%s: the DCGAN generates 3-channel 32x32 images and is set up for %s, not %r; '
            'Fashion-MNIST is a dataset of the classifiers (reproduce.py table2 --dataset '
            'fashion-mnist)' % (set_by, ' or '.join(GAN_DATASETS), dataset))
    sources = cfg.get('_sources')
    if cfg.get('smoke') and sources and not any(
            s.endswith(GAN_SMOKE_PRESET + '.yaml') for s in sources):
        raise config_lib.ConfigError(
            '%s: a GAN smoke run needs the %s preset (load the config with '
            'experiments.gan.load_config, which adds it to --preset smoke, or pass '
            '--preset %s)' % (where, GAN_SMOKE_PRESET, GAN_SMOKE_PRESET))
    return cfg


# ---------------------------------------------------------------------- pieces

def training_images(dataset):
    """The training images as uint8 (N, 3, H, W), recovered exactly from the normalised
    ones (``(x * std + mean) * 255`` rounded)."""
    x = dataset.train_x
    out = numpy.empty(x.shape, numpy.uint8)
    for s in range(0, len(x), 4096):
        v = x[s:s + 4096].astype(numpy.float64)
        v = v * dataset.std.astype(numpy.float64)[:, None, None] \
            + dataset.mean.astype(numpy.float64)[:, None, None]
        out[s:s + 4096] = numpy.rint(numpy.clip(v * 255.0, 0, 255))
    return out


def to_model_range(x_uint8):
    """uint8 pixels -> float32 in [-1, 1] (``x / 127.5 - 1``), on x's device."""
    return x_uint8.astype(numpy.float32) / 127.5 - 1


def to_uint8(x):
    """Generator output in [-1, 1] (host array) -> uint8 pixels."""
    return numpy.rint(numpy.clip((numpy.asarray(x) + 1) * 127.5, 0, 255)).astype(numpy.uint8)


def build_models(cfg):
    """(generator, discriminator); MN at ``mn.layers`` of the generator."""
    gen, dis = dcgan.build_dcgan(**cfg['model']['kwargs'])
    place_mn(cfg, gen)
    return gen, dis


class GANUpdater(training.updaters.StandardUpdater):
    """One iteration = one generator and one discriminator Adam step on a batch of real
    images (uint8 from the iterator) and a batch of noise from ``self.rng`` (serialized).

    Non-saturating loss on the discriminator's logits; the generator step uses the
    discriminator before its own step (Chainer-GAN-lib's DCGAN updater).
    """

    def __init__(self, iterator, gen_optimizer, dis_optimizer, device, seed):
        super().__init__(iterator, {'gen': gen_optimizer, 'dis': dis_optimizer},
                         device=device)
        self.rng = numpy.random.RandomState(seed)

    def update_core(self):
        iterator = self.get_iterator('main')
        opt_gen, opt_dis = self.get_optimizer('gen'), self.get_optimizer('dis')
        gen, dis = opt_gen.target, opt_dis.target
        x_real = to_model_range(self.converter(iterator.next(), self.device))
        batch = len(x_real)
        z = self.device.send(gen.sample_z(self.rng, batch))
        y_real = dis(x_real)
        x_fake = gen(z)
        y_fake = dis(x_fake)
        loss_gen = F.sum(F.softplus(-y_fake)) / batch
        loss_real = F.sum(F.softplus(-y_real)) / batch
        loss_fake = F.sum(F.softplus(y_fake)) / batch
        loss_dis = loss_real + loss_fake

        gen.cleargrads()
        loss_gen.backward()
        opt_gen.update()
        x_fake.unchain_backward()
        dis.cleargrads()
        loss_dis.backward()
        opt_dis.update()
        chainer.report({'gen/loss': loss_gen, 'dis/loss': loss_dis,
                        'dis/loss_real': loss_real, 'dis/loss_fake': loss_fake})
        if self.auto_new_epoch and iterator.is_new_epoch:
            opt_gen.new_epoch(auto=True)
            opt_dis.new_epoch(auto=True)

    def serialize(self, serializer):
        super().serialize(serializer)
        serialize_random_state(serializer, self.rng)


class StepTrigger:
    """Fires at every multiple of ``every`` and at the given extra iterations."""

    def __init__(self, every, points=()):
        self.every = int(every)
        self.points = frozenset(int(p) for p in points)

    def __call__(self, trainer):
        it = trainer.updater.iteration
        return it > 0 and (it % self.every == 0 or it in self.points)


def generate(gen, z, batch_size=100):
    """uint8 images (N, 3, H, W) from host noise ``z``, generator in inference mode."""
    device = gen.device
    out = []
    with chainer.using_config('train', False), chainer.using_config('enable_backprop', False):
        for s in range(0, len(z), batch_size):
            x = gen(device.send(z[s:s + batch_size])).array
            out.append(to_uint8(chainer.backend.CpuDevice().send(x)))
    return numpy.concatenate(out)


def save_grid(images, path, rows):
    """A rows x rows grid PNG of uint8 images (N >= rows^2, 3, H, W)."""
    from PIL import Image
    n, c, h, w = images.shape
    x = images[:rows * rows].reshape(rows, rows, c, h, w).transpose(0, 3, 1, 4, 2)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(x.reshape(rows * h, rows * w, c)).save(path)
    return path


def sample_path(out, step):
    return os.path.join(out, SAMPLES_DIR, 'step_%07d.png' % step)


class GANEvaluation(training.Extension):
    """Sample grid (fixed noise) and, with an extractor, the FID (fixed noise) of the
    generator; reports ``fid``; keeps the best generator."""

    priority = training.PRIORITY_WRITER
    name = 'GANEvaluation'

    def __init__(self, generator, out, seed, grid, n_samples=0, batch_size=100,
                 extractor=None, real_mu=None, real_sigma=None, log=print):
        self.generator = generator
        self.out = out
        self.grid = grid
        self.grid_z = generator.sample_z(numpy.random.RandomState([seed, 1]), grid * grid)
        self.fid_z_seed = [seed, 2]
        self.n_samples = n_samples
        self.batch_size = batch_size
        self.extractor = extractor
        self.real_mu, self.real_sigma = real_mu, real_sigma
        self.best_fid = float('inf')
        self.best_step = -1
        self.log = log

    def __call__(self, trainer):
        step = trainer.updater.iteration
        gen = self.generator
        save_grid(generate(gen, self.grid_z, self.batch_size), sample_path(self.out, step),
                  self.grid)
        if self.extractor is None:
            return
        start = time.time()
        z = gen.sample_z(numpy.random.RandomState(self.fid_z_seed), self.n_samples)
        value = fid_lib.fid_of_images(self.extractor, generate(gen, z, self.batch_size),
                                      self.real_mu, self.real_sigma)
        chainer.report({metrics.FID_KEY: value, 'fid_time': time.time() - start})
        if self.log:
            self.log('step %d: %s %.4f (%.1f s)' % (step, 'FID' if not
                                                   self.extractor.random_weights else
                                                   'random-weights "FID" (NOT FID)', value,
                                                   time.time() - start))
        if value < self.best_fid:
            self.best_fid, self.best_step = value, step
            chainer.serializers.save_npz(os.path.join(self.out, 'generator_best.npz'), gen)

    def serialize(self, serializer):
        self.best_fid = float(serializer('best_fid', self.best_fid))
        self.best_step = int(serializer('best_step', self.best_step))


def build_extractor(fid_cfg, device):
    """The FID feature extractor of ``gan.fid`` (None when disabled)."""
    if not fid_cfg['enabled']:
        return None
    extractor = fid_lib.load_extractor(
        fid_cfg['weights'], random_weights=fid_cfg['random_weights'], dims=fid_cfg['dims'],
        image_size=fid_cfg['image_size'], batch_size=fid_cfg['batch_size'])
    return extractor.to_device(device)


def real_images_for_fid(images, n_real):
    """All training images, or the first ``n_real`` after a fixed shuffle (seed 0)."""
    if n_real is None or n_real >= len(images):
        return images
    return images[numpy.sort(numpy.random.RandomState(0).permutation(len(images))[:n_real])]


def real_statistics(cfg, extractor, images, progress=True):
    """The real images' FID statistics ``(mu, sigma)`` (cached,
    :func:`experiments.fid.real_statistics`) and the FID's description for the summary;
    ``(None, {... 'FID disabled'})`` without an extractor."""
    if extractor is None:
        return None, {'enabled': False, 'label': 'FID disabled'}
    fcfg = cfg['gan']['fid']
    real = real_images_for_fid(images, fcfg['n_real'])
    mu, sigma, cache = fid_lib.real_statistics(
        extractor, real, cache_dir=fcfg['cache_dir'], tag=cfg['data']['dataset'],
        log=print if progress else None)
    return (mu, sigma), dict(extractor.describe(), enabled=True, n_samples=fcfg['n_samples'],
                             n_real=int(len(real)), real_statistics=cache)


def snapshot_trigger(cfg):
    """Every ``gan.snapshot_every`` updates."""
    return cfg['gan']['snapshot_every'], 'iteration'


def build_trainer(cfg, gen, dis, images, out, device, extractor=None, real_stats=None,
                  progress=True):
    gcfg, fcfg = cfg['gan'], cfg['gan']['fid']
    seed = cfg['train']['seed']
    opt_gen = build_optimizer(cfg, gen)
    opt_dis = build_optimizer(cfg, dis)
    iterator = chainer.iterators.SerialIterator(
        images, cfg['data']['batch_size'], repeat=True,
        order_sampler=data_lib.EpochOrderSampler(seed))
    updater = GANUpdater(iterator, opt_gen, opt_dis, device, seed + 17)
    updates = gcfg['updates']
    trainer = training.Trainer(updater, (updates, 'iteration'), out=out)
    evaluation = GANEvaluation(
        gen, out, seed, gcfg['grid'], n_samples=fcfg['n_samples'],
        batch_size=fcfg['batch_size'], extractor=extractor,
        real_mu=real_stats[0] if real_stats else None,
        real_sigma=real_stats[1] if real_stats else None,
        log=print if progress else None)
    eval_trigger = StepTrigger(fcfg['every'], [updates])
    trainer.extend(evaluation, trigger=eval_trigger)
    if mn_links(gen):
        trainer.extend(ReportMixtureComponents(gen))
    trainer.extend(extensions.LogReport(
        trigger=StepTrigger(gcfg['log_every'], list(range(fcfg['every'], updates + 1,
                                                          fcfg['every'])) + [updates]),
        filename='log.json'))
    trainer.extend(extensions.snapshot(filename=SNAPSHOT_PREFIX + '{.updater.iteration}',
                                       n_retains=SNAPSHOTS_KEPT),
                   trigger=snapshot_trigger(cfg))
    if progress:
        progress_extensions(trainer, ['epoch', 'iteration', 'gen/loss', 'dis/loss',
                                      metrics.FID_KEY, 'elapsed_time'], bar_interval=10)
    return trainer, evaluation


# ------------------------------------------------------------------------ records

def summary_fields(cfg, log, fid_info=None, finished=None, updates_done=None):
    """What a GAN run measures, for :func:`experiments.runs.summarize`: its FID
    network, updates and FID curve (``finished`` / ``updates_done``: the trainer's own
    state; default: read off the log)."""
    curve = metrics.fid_curve(log)
    low = metrics.lowest_fid(curve)
    target = cfg['gan']['target_fid']
    paper_bn = paper.rows('sections', 'cifar10')['dcgan']['bn_lowest_fid']
    done = updates_done if updates_done is not None else \
        (int(log[-1]['iteration']) if log else 0)
    if finished is None:
        finished = done >= cfg['gan']['updates']
    fid_info = fid_info or {'enabled': False, 'label': 'FID disabled'}
    return {
        'fid_label': fid_info.get('label'),
        'fid_random_weights': bool(fid_info.get('random_weights')),
        'fid': fid_info,
        'mn_layers': cfg['mn']['layers'] if cfg.get('mn') else None,
        'updates_planned': cfg['gan']['updates'],
        'updates_done': done,
        'finished': bool(finished),
        'fid_curve': [{'step': s, 'fid': v} for s, v in curve],
        'lowest_fid': low[1],
        'lowest_fid_step': low[0],
        'final_fid': curve[-1][1] if curve else None,
        'target_fid': target,
        'steps_to_target_fid': (metrics.steps_to_fid(curve, target) if target is not None
                                else None),
        'paper_bn_lowest_fid': paper_bn,
        # only meaningful with the standard FID network
        'steps_to_paper_bn_lowest_fid': (metrics.steps_to_fid(curve, paper_bn)
                                         if fid_info.get('standard') else None),
        'final_gen_loss': metrics.final_loss(log, 'gen/loss'),
        'final_dis_loss': metrics.final_loss(log, 'dis/loss'),
    }


# ----------------------------------------------------------------------------- CLI

def add_fid_arguments(p):
    """The FID's options of the command line: --inception-weights, --no-fid, --fid-cache
    (:func:`fid_overrides`)."""
    p.add_argument('--inception-weights', metavar='NPZ',
                   help='FID Inception weights (scripts/convert_fid_weights.py output); '
                   'default %s' % fid_lib.default_weights_path())
    p.add_argument('--no-fid', action='store_true', help='train without FID evaluations')
    p.add_argument('--fid-cache', metavar='DIR', help='cache folder of the real-image FID '
                   'statistics (default %s)' % fid_lib.default_cache_dir())
    return p


def fid_overrides(args):
    """The FID's options as config overrides (``scripts/reproduce.py`` has no
    --fid-cache)."""
    sets = []
    if args.inception_weights:
        sets.append('gan.fid.weights=%s' % os.path.abspath(args.inception_weights))
    if args.no_fid:
        sets.append('gan.fid.enabled=false')
    if getattr(args, 'fid_cache', None):
        sets.append('gan.fid.cache_dir=%s' % os.path.abspath(args.fid_cache))
    return sets


def compare_arguments(p):
    p.add_argument('bn_run')
    p.add_argument('mn_run')
    p.add_argument('--json', help='also write the comparison as JSON here')


def compare_runs(args):
    """``compare BN_RUN MN_RUN [--json PATH]``: :func:`experiments.compare.compare_dcgan`."""
    result = compare.compare_dcgan(args.bn_run, args.mn_run)
    if args.json:
        rundir.write_json(args.json, result)


# ----------------------------------------------------------------------------- run

#: Why --communicator stops a GAN run.
NOT_PARALLEL = ('DCGAN training and its FID run in one process: the data-parallel path '
                '(--communicator) covers the classifier tables (2-6, DenseNet), not the '
                'GAN of Sec. 4.5; run it without --communicator (on one GPU: --device 0)')


class GAN(pipeline.Kind):
    """The GAN as a kind of run (:class:`experiments.pipeline.Kind`): the training
    images of ``cfg``'s data; then generator and discriminator (first, so that their
    initial weights come from the seeded RNG), the FID network, the real images' FID
    statistics and the trainer (:func:`build_trainer`); its summary fields are
    :func:`summary_fields`, its closing line :func:`describe_result`.  One process
    (:data:`NOT_PARALLEL`); its command line also has ``compare`` (:func:`compare_runs`)."""
    unit = 'update'
    one_process = NOT_PARALLEL
    prog = 'python -m experiments.gan'
    description = 'Train DCGAN-BN or DCGAN-MN (paper Sec. 4.5).'
    config_help = 'configs/dcgan/cifar10/{bn,mn}.yaml'
    commands = {'compare': pipeline.Command('Our DCGAN-BN/MN numbers beside the paper.',
                                            compare_arguments, compare_runs)}
    elsewhere = {'figures': 'Figures 6-7 are drawn by scripts/figures.py: python '
                            'scripts/figures.py fig6 --bn BN_RUN --mn MN_RUN (and fig7)'}

    def check(self, cfg, par):
        check_config(cfg)

    def prepare(self, cfg, device, dataset, par):
        if dataset is None:
            dataset = pipeline.load_data(cfg)
        config_lib.check_batch_size(cfg, dataset.n_train)
        self.images = training_images(dataset)
        return dataset

    def build(self, cfg, dataset, out, device, progress, par):
        self.gen, self.dis = build_models(cfg)
        if self.gen.image_size != self.images.shape[-1]:
            raise config_lib.ConfigError('the generator makes %d px images but the data are '
                                         '%d px' % (self.gen.image_size, self.images.shape[-1]))
        extractor = build_extractor(cfg['gan']['fid'], device)
        real_stats, self.fid_info = real_statistics(cfg, extractor, self.images, progress)
        self.gen.to_device(device)
        self.dis.to_device(device)
        trainer, _ = build_trainer(cfg, self.gen, self.dis, self.images, out, device,
                                   extractor, real_stats, progress=progress)
        return trainer

    def snapshot_trigger(self, cfg):
        return snapshot_trigger(cfg)

    def summary_fields(self, cfg, log, trainer, finished):
        return summary_fields(cfg, log, self.fid_info, finished=finished,
                              updates_done=trainer.updater.iteration)

    def add_arguments(self, parser):
        add_fid_arguments(parser)

    def config_overrides(self, args):
        return fid_overrides(args)

    def load_config(self, path, presets=(), overrides=()):
        return load_config(path, presets, overrides)

    def describe_result(self, summary, out):
        return describe_result(summary, out)


def run(cfg, out=None, device='cpu', resume='auto', progress=True, dataset=None,
        force=False, log=print, start=None, par=None):
    """Train the GAN of ``cfg`` (validated; see :func:`load_config`) through the run
    pipeline (:func:`experiments.pipeline.run`); returns the summary.  ``resume``:
    ``'auto'`` (skip a finished run, resume an interrupted one) or a snapshot path;
    ``force``: start over; ``start``: that decision already taken by
    :func:`experiments.rundir.prepare_run`; ``dataset``: a loaded
    :class:`experiments.data.Dataset` (tests); ``par``: the processes
    (:mod:`experiments.parallel`), only one (see :data:`NOT_PARALLEL`)."""
    return pipeline.run(GAN(), cfg, out=out, device=device, resume=resume,
                        progress=progress, dataset=dataset, force=force, log=log,
                        start=start, par=par)


def describe_result(summary, out):
    """The closing line of a GAN run."""
    verdict = verdict_lib.Assessment.recorded(summary)
    if summary['lowest_fid'] is None:
        what = 'no FID (%s)' % summary['fid_label']
    else:
        what = 'lowest %s %.2f at step %d' % (
            'FID' if not summary['fid_random_weights'] else 'random-weights "FID" (NOT FID)',
            summary['lowest_fid'], summary['lowest_fid_step'])
    return '%s: %d updates, %s, %.0f s; record: %s [%s]' % (
        verdict.status, summary['updates_done'], what, summary['wall_time_s'] or 0.0, out,
        verdict.label())


@cli.entry_point
def main(argv=None):
    """``python -m experiments.gan CONFIG [options]`` or ``compare BN_RUN MN_RUN``
    (:func:`experiments.pipeline.main`)."""
    pipeline.main(GAN(), argv)


if __name__ == '__main__':
    main()
